"""Kernels made of block programs: one body, several bodies side by side, or a body in a loop.

* :func:`standalone` - Roller's kernel: ``gpu.launch`` over the body's virtual blocks, each
  physical block running ``body(blockIdx.x)``.
* :func:`side_by_side` - several bodies in one kernel, each on a contiguous range of virtual
  blocks (the first ``n1`` blocks run the first body, the next ``n2`` the second, ...): the seed
  of Rammer's vEU dispatcher, where the bodies are the rTasks of independent operators.
* :func:`looped` - fewer physical blocks than virtual ones: each physical block walks the
  virtual blocks ``b, b + grid, b + 2 grid, ...`` (the persistent-kernel form).

A kernel's block is as wide as its widest body. A narrower body runs on the first threads of the
block, the others skip it; its barriers then count only its own threads (``bar.sync 1, T``, an
NVVM barrier with a thread count, on a barrier of their own) so that the idle warps are never
waited for. Its shared memory
is the largest body's: bodies take theirs from the one dynamic pool (``block_program.py``).

The result is a module holding the bodies (``func.func private @<name>`` with the attribute
``quartet.block_program``) and one ``func.func`` with one ``gpu.launch`` whose arguments carry
``quartet.role`` attributes and whose body calls them: readable IR, the form ``quartet-lower-gpu
{stop_after=kernels}`` prints. :func:`inline_block_programs` replaces each call by a clone of
the body (with the virtual block and the kernel's arguments mapped in) before the kernel is
compiled (``lowering/binary.py``). Upstream's ``inline`` pass would be the natural tool, but in
MLIR 22.1 it does not inline into a ``gpu.launch`` region, and the NVVM ops of the GEMM bodies
have no inliner interface, so calls would survive to the binary.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from mlir import ir
from mlir.dialects import arith, func, gpu, nvvm, scf

from quartet.dialects import remap
from quartet.errors import QuartetError

from ..kernel import KernelArg, arg_attrs
from .block_program import BLOCK_PROGRAM_ATTR, BlockProgram


@dataclass(frozen=True)
class Part:
    """A block program placed in a kernel: ``args[i]`` is the kernel argument bound to the
    program's ``i``-th memref argument; it runs virtual blocks ``[first, first + count)`` of the
    kernel (``count`` defaults to all of the program's blocks)."""

    program: BlockProgram
    args: tuple[int, ...]
    first: int = 0
    count: int | None = None

    @property
    def blocks(self) -> int:
        return self.count if self.count is not None else self.program.resources.blocks


def standalone(bp: BlockProgram, name: str) -> ir.Module:
    """The kernel that runs ``bp`` once per virtual block, ``blockIdx.x`` being the block."""
    return side_by_side([Part(bp, tuple(range(len(bp.args))))], list(bp.args), name)


def side_by_side(parts: list[Part], args: list[KernelArg], name: str,
                 physical_blocks: int | None = None) -> ir.Module:
    """One kernel running every part on its range of virtual blocks.

    ``args`` are the kernel's memref arguments (roles and shapes); with ``physical_blocks``
    the kernel launches that many blocks and each walks its share of the virtual blocks."""
    if not parts:
        raise QuartetError("a kernel needs at least one block program")
    ctx = parts[0].program.module.context
    threads = max(p.program.resources.threads for p in parts)
    shared = max(p.program.resources.shared_bytes for p in parts)
    total = max(p.first + p.blocks for p in parts)
    chips = {p.program.chip for p in parts if p.program.chip}
    if len(chips) > 1:
        raise QuartetError(f"block programs for different chips ({', '.join(sorted(chips))}) "
                           f"cannot share a kernel")
    for p in parts:
        if len(p.args) != len(p.program.args):
            raise QuartetError(f"block program '{p.program.name}' takes {len(p.program.args)} "
                               f"arguments, {len(p.args)} bound")
        for i, (k, a) in enumerate(zip(p.args, p.program.args)):
            if args[k].shape != a.shape or args[k].dtype != a.dtype:
                raise QuartetError(f"argument {i} of block program '{p.program.name}' "
                                   f"({a.dtype}{list(a.shape)}) is bound to a kernel argument "
                                   f"of another type ({args[k].dtype}{list(args[k].shape)})")
    args = _aim_tensormaps(parts, args)
    grid = physical_blocks or total
    index = ir.IndexType.get
    with ctx, ir.Location.unknown():
        module = ir.Module.create()
        for p in parts:          # the bodies, then the kernel function that instantiates them
            if not _has_function(module, p.program.name):
                _copy_function(module, p.program)
        types = [ir.MemRefType.get(list(a.shape), _element(a.dtype)) for a in args]
        with ir.InsertionPoint(module.body):
            fn = func.FuncOp(name, (types, []))
        fn.arg_attrs = ir.ArrayAttr.get([arg_attrs(a) for a in args])
        if chips:
            fn.operation.attributes["quartet.chip"] = ir.StringAttr.get(chips.pop())
        entry = fn.add_entry_block()
        with ir.InsertionPoint(entry):
            smem = arith.constant(ir.IntegerType.get_signless(32), shared) if shared else None
            launch = gpu.LaunchOp((grid, 1, 1), (threads, 1, 1),
                                  dynamic_shared_memory_size=smem)
            func.ReturnOp([])
        body = launch.regions[0].blocks[0]
        kargs = list(entry.arguments)
        with ir.InsertionPoint(body):
            bid = body.arguments[0]
            if physical_blocks is None or physical_blocks >= total:
                _dispatch(module, parts, bid, kargs, threads, total, guard=grid > total)
            else:
                step = arith.constant(index(), grid)
                loop = scf.ForOp(bid, arith.constant(index(), total), step)
                with ir.InsertionPoint(loop.body):
                    _dispatch(module, parts, loop.induction_variable, kargs, threads, total,
                              guard=False)
                    gpu.barrier()       # the next virtual block reuses the shared memory
                    scf.YieldOp([])
            gpu.TerminatorOp()
    return module


def looped(bp: BlockProgram, name: str, physical_blocks: int) -> ir.Module:
    """``bp`` on ``physical_blocks`` blocks, each walking every ``physical_blocks``-th virtual
    block."""
    return side_by_side([Part(bp, tuple(range(len(bp.args))))], list(bp.args), name,
                        physical_blocks=physical_blocks)


# ---------------------------------------------------------------------------------------------


def _aim_tensormaps(parts: list[Part], args: list[KernelArg]) -> list[KernelArg]:
    """A tensor map names its data by position among the kernel's inputs; a body's maps name
    the body's own inputs. Re-aim each map at the kernel input its body's source is bound to."""
    args = list(args)
    number = {}
    for k, a in enumerate(args):
        if a.role == "input":
            number[k] = len(number)
    for p in parts:
        inputs = [j for j, a in enumerate(p.program.args) if a.role == "input"]
        for j, a in enumerate(p.program.args):
            if a.tensormap is None:
                continue
            source = p.args[inputs[a.tensormap.source]]
            if source not in number:
                raise QuartetError(f"block program '{p.program.name}' reads argument {source} "
                                   f"through a tensor map, but it is not a kernel input")
            args[p.args[j]] = replace(args[p.args[j]], role="tensormap",
                                      tensormap=replace(a.tensormap, source=number[source]))
    return args


def _element(dtype: str) -> ir.Type:
    from quartet.runtime.dtypes import MLIR_NAMES

    for mlir_name, name in MLIR_NAMES.items():
        if name == dtype:
            if mlir_name.startswith("ui"):
                return ir.IntegerType.get_unsigned(int(mlir_name[2:]))
            return ir.Type.parse(mlir_name)
    raise QuartetError(f"element type {dtype} has no MLIR spelling")


def _copy_function(module: ir.Module, bp: BlockProgram) -> None:
    """Copy ``bp``'s function into ``module``: a clone in the same Context, else through text
    (an op must never be cloned across Contexts)."""
    fn = bp.function.operation
    if bp.module.context is module.context:
        with ir.InsertionPoint(module.body):
            fn.clone()
        return
    # the generic form: MLIR 22.1's custom form of nvvm.barrier with a thread count does not
    # read back (binary.outline says the same)
    parsed = ir.Module.parse(bp.module.operation.get_asm(enable_debug_info=True,
                                                         print_generic_op_form=True),
                             module.context)
    for op in list(parsed.body.operations):
        if op.operation.name == "func.func" and \
                ir.StringAttr(op.operation.attributes["sym_name"]).value == bp.name:
            module.body.append(op.operation)


def _has_function(module: ir.Module, name: str) -> bool:
    return any(op.operation.name == "func.func" and
               ir.StringAttr(op.operation.attributes["sym_name"]).value == name
               for op in module.body.operations)


def _dispatch(module, parts: list[Part], vb: ir.Value, kargs: list, threads: int, total: int,
              guard: bool) -> None:
    """At the insertion point: run the part whose range holds virtual block ``vb``."""
    index = ir.IndexType.get()
    tid = None
    for p in parts:
        lo, hi = p.first, p.first + p.blocks
        conds = []
        if len(parts) > 1 or lo > 0:
            conds.append(arith.cmpi(arith.CmpIPredicate.uge, vb, arith.constant(index, lo)))
        if len(parts) > 1 or guard or hi < total:
            conds.append(arith.cmpi(arith.CmpIPredicate.ult, vb, arith.constant(index, hi)))
        narrow = p.program.resources.threads < threads
        if narrow:
            tid = tid or gpu.thread_id(gpu.Dimension.x)
            conds.append(arith.cmpi(arith.CmpIPredicate.ult, tid,
                                    arith.constant(index, p.program.resources.threads)))
        local = arith.subi(vb, arith.constant(index, lo)) if lo else vb
        values = [local] + [kargs[k] for k in p.args]
        if not conds:
            func.CallOp([], p.program.name, values)
            continue
        cond = conds[0]
        for c in conds[1:]:
            cond = arith.andi(cond, c)
        branch = scf.IfOp(cond)
        with ir.InsertionPoint(branch.then_block):
            func.CallOp([], p.program.name, values)
            scf.YieldOp([])


def inline_block_programs(module: ir.Module) -> None:
    """Replace every call of a block program inside a ``gpu.launch`` by a clone of its body,
    then erase the block programs (the form the back end compiles)."""
    root = module.operation if hasattr(module, "operation") else module
    bodies = {}
    for op in root.regions[0].blocks[0].operations:
        if op.operation.name == "func.func" and BLOCK_PROGRAM_ATTR in op.operation.attributes:
            bodies[ir.StringAttr(op.operation.attributes["sym_name"]).value] = op.operation
    if not bodies:
        return
    calls = []

    def visit(op):
        if op.operation.name == "gpu.launch":
            threads = _const_index(op.operation.opview.blockSizeX)
            op.operation.walk(lambda inner: (
                calls.append((inner.operation, threads))
                if inner.operation.name == "func.call" else None) or ir.WalkResult.ADVANCE)
            return ir.WalkResult.SKIP
        return ir.WalkResult.ADVANCE

    root.walk(visit, ir.WalkOrder.PRE_ORDER)
    for call, threads in calls:
        callee = ir.FlatSymbolRefAttr(call.attributes["callee"]).value
        if callee not in bodies:
            continue
        body = bodies[callee]
        entry = body.regions[0].blocks[0]
        narrow = ir.IntegerAttr(body.attributes[BLOCK_PROGRAM_ATTR]).value
        narrow = narrow if threads is None or narrow < threads else None
        mapping = dict(zip(entry.arguments, call.operands))
        with ir.InsertionPoint(call), call.location:
            for op in list(entry.operations)[:-1]:          # all but func.return
                new = op.operation.clone()
                remap(new, mapping)
                for old, res in zip(op.operation.results, new.results):
                    mapping[old] = res
                if narrow:
                    _count_barriers(new, narrow)
        call.erase()
    for body in bodies.values():
        body.erase()


def _const_index(value: ir.Value) -> int | None:
    owner = value.owner
    if isinstance(owner, ir.Block) or owner.operation.name != "arith.constant":
        return None
    return ir.IntegerAttr(owner.operation.attributes["value"]).value


#: the hardware barrier a narrow body's barriers use: the kernel's own barriers (after a body, in
#: a loop of virtual blocks, in a persistent kernel's dispatcher) are barrier 0 with every
#: thread, and one barrier shared with another count would release the wrong threads
NARROW_BARRIER = 1


def _count_barriers(op: ir.Operation, threads: int) -> None:
    """Barriers of a body narrower than its kernel wait for the body's threads only."""
    found = []

    def visit(inner):
        if inner.operation.name == "gpu.barrier":
            found.append(inner.operation)
        return ir.WalkResult.ADVANCE

    op.walk(visit)
    for barrier in found:
        with ir.InsertionPoint(barrier), barrier.location:
            i32 = ir.IntegerType.get_signless(32)
            nvvm.BarrierOp(None, barrierId=arith.constant(i32, NARROW_BARRIER),
                           numberOfThreads=arith.constant(i32, threads))
        barrier.erase()
