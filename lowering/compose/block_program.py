"""Block programs: one thread block's share of a tile, given a *virtual* block index.

The unit the lowering builds is not a kernel but a block program (DESIGN.md, "Kernels as block
programs"): a device function ``func.func @body(%vb: index, %args: memref...)`` that computes
the share of virtual block ``vb`` of one tile, with a resource record (threads per block,
dynamic shared memory, the virtual blocks it needs, registers once compiled). Roller's kernel is
a thin wrapper that calls the body with ``blockIdx.x`` (``compose/kernel.py``); Rammer runs the
bodies of independent tiles side by side on the vEUs of one kernel; Grinder runs them again and
again in a device loop; a body can also be called in a loop over several virtual blocks from one
physical block.

Every kernel family (``lowering/kernels``) builds what it always built, a function holding one
``gpu.launch``; :func:`from_launch` turns that into a block program:

* the launch's block ids (its region arguments and any ``gpu.block_id`` op inside) become the
  delinearised virtual block index (x fastest, the order in which the hardware dispatches a 3-D
  grid), its grid and block sizes constants, its thread ids ``gpu.thread_id`` ops;
* its workgroup attributions (static shared memory of the row and column-reduction programs)
  become views of the dynamic shared memory placed after the body's own dynamic part, so that
  every body of a composed kernel takes its shared memory from one pool whose size is the
  maximum over the bodies, not their sum;
* the launch body's ops move into the new function, its terminator becomes ``func.return``.

Assumes: the launch has a constant grid, a 1-D block of constant size, a constant dynamic
shared-memory size and no private attributions; after ``gpu-launch-sink-index-computations``
the launch reads only arguments of its function (what every family builds).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from mlir import ir
from mlir.dialects import arith, func, gpu, memref
from mlir.passmanager import PassManager

from quartet.errors import QuartetError, location_of

from ..kernel import KernelArg

#: the attribute that marks a block program's function; its value is the body's threads
BLOCK_PROGRAM_ATTR = "quartet.block_program"
#: alignment of each workgroup buffer placed in the dynamic shared memory
SMEM_ALIGN = 16
#: the standard region arguments of gpu.launch: block ids, thread ids, grid and block sizes
_LAUNCH_ARGS = 12


@dataclass(frozen=True)
class Resources:
    """What one block of a block program needs: the record a composition sizes itself by."""

    threads: int                    # threads per block (1-D)
    shared_bytes: int               # dynamic shared memory, workgroup buffers included
    blocks: int                     # virtual blocks that cover the tile
    registers: int | None = None    # per thread, read back from the compiled binary

    def with_registers(self, registers: int | None) -> "Resources":
        return replace(self, registers=registers)


@dataclass
class BlockProgram:
    """A device function computing one virtual block of a tile, and what it needs.

    ``module`` holds ``func.func private @<name>(%vb: index, <args>...)``; ``args`` gives the
    role of each memref argument after ``vb`` (the tile's inputs in order of first use, then its
    results: the bare-pointer convention of :class:`~quartet.lowering.kernel.KernelSpec`).
    ``chip`` names the binary the body needs when it is not the target's own (``sm_90a`` for
    wgmma); ``family`` the kernel family that built it; ``grid`` the virtual grid it was built
    for (x, y, z; ``resources.blocks`` is their product).
    """

    name: str
    module: ir.Module
    args: tuple[KernelArg, ...]
    resources: Resources
    family: str
    grid: tuple[int, int, int]
    chip: str | None = None
    location: str | None = None

    @property
    def function(self) -> func.FuncOp:
        for op in self.module.body.operations:
            if op.operation.name == "func.func" and \
                    ir.StringAttr(op.operation.attributes["sym_name"]).value == self.name:
                return op.opview
        raise QuartetError(f"block program '{self.name}' lost its function")


# ---------------------------------------------------------------------------------------------
# gpu.launch -> block program


def _const_int(value: ir.Value, what: str, where) -> int:
    owner = value.owner
    if not isinstance(owner, ir.Block) and owner.operation.name == "arith.constant":
        return ir.IntegerAttr(owner.operation.attributes["value"]).value
    raise QuartetError(f"a block program needs a constant {what}", location_of(where))


def _the_launch(fn) -> ir.Operation:
    launches = []

    def visit(op):
        if op.operation.name == "gpu.launch":
            launches.append(op.operation)
            return ir.WalkResult.SKIP
        return ir.WalkResult.ADVANCE

    fn.operation.walk(visit, ir.WalkOrder.PRE_ORDER)
    if len(launches) != 1:
        raise QuartetError(f"a block program comes from one gpu.launch, found {len(launches)}",
                           location_of(fn.operation))
    return launches[0]


def _arg_roles(fn) -> tuple[KernelArg, ...]:
    """The role of each memref argument, from ``quartet.role`` argument attributes or, without
    them, the convention (every argument an input but the last)."""
    args = list(fn.arguments)
    roles = []
    attrs = fn.operation.attributes["arg_attrs"] if "arg_attrs" in fn.operation.attributes \
        else None
    for i, a in enumerate(args):
        role = None
        if attrs is not None:
            d = ir.DictAttr(ir.ArrayAttr(attrs)[i])
            if "quartet.role" in d:
                role = ir.StringAttr(d["quartet.role"]).value
        roles.append(role or ("input" if i < len(args) - 1 else "output"))
    counters = {"input": 0, "output": 0}
    out = []
    for a, role in zip(args, roles):
        mt = ir.MemRefType(a.type)
        out.append(KernelArg(role, counters[role], tuple(mt.shape),
                             _dtype_name(mt.element_type)))
        counters[role] += 1
    return tuple(out)


def _dtype_name(t: ir.Type) -> str:
    from quartet.runtime.dtypes import mlir_name_to_dtype
    return mlir_name_to_dtype(str(t))


def _workgroup_bytes(t: ir.MemRefType) -> int:
    n = 1
    for d in t.shape:
        n *= d
    width = ir.IntegerType(t.element_type).width if isinstance(t.element_type, ir.IntegerType) \
        else {"f16": 16, "bf16": 16, "f32": 32, "f64": 64}[str(t.element_type)]
    return n * max(1, width // 8)


def _align(n: int, a: int) -> int:
    return (n + a - 1) // a * a


def from_launch(module: ir.Module, name: str, family: str) -> BlockProgram:
    """Turn the one function of ``module`` holding a ``gpu.launch`` into block program
    ``name`` (in place: the function is replaced by ``func.func private @name``)."""
    PassManager.parse("builtin.module(gpu-launch-sink-index-computations)", module.context) \
        .run(module.operation)
    fns = [op.opview for op in module.body.operations if op.operation.name == "func.func"]
    if len(fns) != 1:
        raise QuartetError(f"a kernel family built {len(fns)} functions, expected one")
    fn = fns[0]
    launch = _the_launch(fn)
    where = launch
    place = location_of(launch)        # before the launch is erased with its function
    lop = launch.opview
    grid = tuple(_const_int(v, "grid size", where) for v in
                 (lop.gridSizeX, lop.gridSizeY, lop.gridSizeZ))
    block = tuple(_const_int(v, "block size", where) for v in
                  (lop.blockSizeX, lop.blockSizeY, lop.blockSizeZ))
    if block[1] != 1 or block[2] != 1:
        raise QuartetError(f"a block program needs a 1-D thread block, got {list(block)}",
                           location_of(where))
    dyn = lop.dynamicSharedMemorySize
    dynamic = _const_int(dyn, "dynamic shared memory size", where) if dyn is not None else 0
    body = launch.regions[0].blocks[0]
    n_workgroup = ir.IntegerAttr(launch.attributes["workgroup_attributions"]).value \
        if "workgroup_attributions" in launch.attributes else 0
    if len(body.arguments) != _LAUNCH_ARGS + n_workgroup:
        raise QuartetError("a block program's launch may not have private attributions",
                           location_of(where))
    roles = _arg_roles(fn)
    chip = ir.StringAttr(fn.operation.attributes["quartet.chip"]).value \
        if "quartet.chip" in fn.operation.attributes else None

    index = ir.IndexType.get()
    with module.context, launch.location:
        new_types = [index] + [a.type for a in fn.arguments]
        with ir.InsertionPoint(fn.operation):
            new = func.FuncOp(name, (new_types, []))
        new.operation.attributes["sym_visibility"] = ir.StringAttr.get("private")
        i64 = ir.IntegerType.get_signless(64)
        new.operation.attributes[BLOCK_PROGRAM_ATTR] = ir.IntegerAttr.get(i64, block[0])
        new.operation.attributes["quartet.family"] = ir.StringAttr.get(family)
        new.operation.attributes["quartet.virtual_grid"] = ir.DenseI64ArrayAttr.get(list(grid))
        if chip:
            new.operation.attributes["quartet.chip"] = ir.StringAttr.get(chip)
        if "arg_attrs" in fn.operation.attributes:
            old = list(ir.ArrayAttr(fn.operation.attributes["arg_attrs"]))
            new.operation.attributes["arg_attrs"] = ir.ArrayAttr.get(
                [ir.DictAttr.get({})] + old)
        entry = new.add_entry_block()
        vb, args = entry.arguments[0], list(entry.arguments)[1:]
        with ir.InsertionPoint(entry):
            ret = func.ReturnOp([])
        with ir.InsertionPoint(ret):
            ids = _delinearize(vb, grid)
            consts = {}

            def c(v):
                if v not in consts:
                    consts[v] = arith.constant(index, v)
                return consts[v]

            tids = [gpu.thread_id(d) for d in (gpu.Dimension.x, gpu.Dimension.y,
                                                gpu.Dimension.z)]
            replacements = ids + tids + [c(g) for g in grid] + [c(b) for b in block]
            offset = _align(dynamic, SMEM_ALIGN)
            if n_workgroup:
                i8 = ir.IntegerType.get_signless(8)
                space = ir.Attribute.parse("#gpu.address_space<workgroup>")
                dyn_t = ir.MemRefType.get([ir.ShapedType.get_dynamic_size()], i8,
                                          memory_space=space)
                base = gpu.dynamic_shared_memory(dyn_t)
                for arg in list(body.arguments)[_LAUNCH_ARGS:]:
                    mt = ir.MemRefType(arg.type)
                    replacements.append(memref.view(mt, base, c(offset), []))
                    offset = _align(offset + _workgroup_bytes(mt), SMEM_ALIGN)
            shared = offset if n_workgroup else dynamic
        ops = list(body.operations)
        term = ops[-1]
        if term.operation.name != "gpu.terminator":
            raise QuartetError("a block program's launch must end in gpu.terminator",
                               location_of(where))
        for op in ops[:-1]:
            op.operation.move_before(ret.operation)
        for old, value in zip(body.arguments, replacements):
            old.replace_all_uses_with(value)
        for old, value in zip(fn.arguments, args):
            old.replace_all_uses_with(value)
        _replace_grid_queries(new, ids, grid, c, ret)
    fn.operation.erase()
    new.operation.attributes["quartet.shared_bytes"] = ir.IntegerAttr.get(
        ir.IntegerType.get_signless(64), shared)
    resources = Resources(threads=block[0], shared_bytes=shared,
                          blocks=grid[0] * grid[1] * grid[2])
    return BlockProgram(name, module, roles, resources, family, grid, chip, place)


def _delinearize(vb: ir.Value, grid: tuple[int, int, int]) -> list[ir.Value]:
    """(x, y, z) of virtual block ``vb`` in ``grid``, x fastest (the hardware's order)."""
    index = ir.IndexType.get()
    gx, gy, gz = grid
    if gy == 1 and gz == 1:
        zero = arith.constant(index, 0)
        return [vb, zero, zero]
    x = arith.remui(vb, arith.constant(index, gx)) if gx > 1 else arith.constant(index, 0)
    rest = arith.divui(vb, arith.constant(index, gx)) if gx > 1 else vb
    y = arith.remui(rest, arith.constant(index, gy)) if gy > 1 else arith.constant(index, 0)
    z = arith.divui(rest, arith.constant(index, gy)) if gy > 1 else rest
    return [x, y, z]


def _replace_grid_queries(fn, ids, grid, const, before) -> None:
    """``gpu.block_id`` / ``gpu.grid_dim`` ops the builders emitted inside the body read the
    virtual block and grid instead of the hardware's."""
    found = []

    def visit(op):
        if op.operation.name in ("gpu.block_id", "gpu.grid_dim", "gpu.global_id"):
            found.append(op.operation)
        return ir.WalkResult.ADVANCE

    fn.operation.walk(visit)
    dims = {"x": 0, "y": 1, "z": 2}
    for op in found:
        if op.name == "gpu.global_id":
            raise QuartetError("a block program may not read gpu.global_id",
                               location_of(op))
        d = dims[str(op.attributes["dimension"]).split()[-1].strip(">").strip()]
        value = ids[d] if op.name == "gpu.block_id" else const(grid[d])
        op.results[0].replace_all_uses_with(value)
        op.erase()
