"""Host planning: the host program that drives a function's kernels, and the IR rewrite that
launches them (the last part of the GPU lowering).

Every tensor the host holds on the device is a named buffer (a function argument - user inputs
first, then the model's weights, as the importer passes parameters as arguments -, a tensor
constant, an intermediate, a loop-carried value, or a function result). The host program is
written in the runtime manifest's own vocabulary (``runtime/manifest.py``: ``Launch``,
``Copy``, ``While``, ``If``, ``Predicate``, ``BufferArg``), with every view already resolved to
its storage buffer and byte offset, so that the artifact writer copies steps as they are:

* a tile -> ``Launch`` of its kernel(s), each bound to ``BufferArg``s in bare-pointer order;
* reshapes and contiguous ``tensor.extract_slice`` -> views (no step);
* ``tensor.concat`` of contiguous slices (``prepare.concat_offsets``) -> one buffer; each
  operand that is a tile's result is written in place by that tile (its result buffer is a view
  of the concat's buffer, ``prepare.concat_redirects``), any other operand is copied there
  (``Copy``); a concat of strided slices was made a gather tile by ``prepare``;
* ``tensor.extract`` at constant indices, ``arith.trunci``/``arith.extui`` between ``i8`` and
  ``i1`` -> scalars in buffers (loop and branch predicates);
* ``scf.while`` / ``scf.if`` -> host ``While`` / ``If`` steps whose predicate the runtime reads
  back; loop-carried values live in buffers of their own, written by ``Copy`` steps before the
  loop and at the end of each iteration (Grinder is what moves loops onto the device);
* ``func.return`` -> results: a temporary that holds exactly one result becomes that output,
  anything else is copied into an output buffer of its own.

The same walk rewrites the IR for ``quartet-lower-gpu``: tiles become ``gpu.launch_func`` of
``gpu.binary`` ops on buffers. Assumes: static shapes; scalars crossing the host are loop and
branch predicates or carried scalars that tiles never capture.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mlir import ir
from mlir.dialects import arith, bufferization, gpu, memref

from quartet.errors import QuartetError, location_of
from quartet.runtime import manifest as mf
from quartet.runtime import targets

from .build import compile_all, index_constant, insert_binary
from .kernel import KernelSpec
from .kernels import kernel_inputs
from .prepare import (concat_offsets, concat_redirects, contiguous_slice, dtype_of, host_ops,
                      nbytes, prepare, shape_of)

#: host ops the GPU lowering takes (everything else must be inside a tile)
HOST_OPS = ("arith.constant", "tensor.empty", "tensor.expand_shape", "tensor.collapse_shape",
            "tensor.cast", "tensor.extract_slice", "tensor.concat", "tensor.extract",
            "arith.trunci", "arith.extui", "scf.while", "scf.if", "scf.condition", "scf.yield",
            "func.return", "quartet.tile", "quartet.uvirtual")


@dataclass(frozen=True)
class Buffer:
    """A device buffer of the plan: its tensor type, kind and (for weights) contents."""

    name: str
    shape: tuple[int, ...]
    dtype: str                          # "float16", ...
    kind: str                           # "input" | "output" | "temp" | "weight" | "scalar"
    index: int = -1                     # position among the function's arguments / results
    data: bytes | None = field(default=None, compare=False, repr=False)   # weights
    zeroed: bool = False                # zeroed at load (a persistent kernel's counters)

    @property
    def nbytes(self) -> int:
        return nbytes(self.shape, self.dtype)


@dataclass(frozen=True)
class KernelUse:
    """A kernel of the plan and the buffers bound to its arguments (``persistent``: what the
    manifest states about a persistent kernel)."""

    name: str                           # the manifest's kernel name
    kernel: KernelSpec
    args: tuple[mf.BufferArg, ...]
    persistent: mf.Persistent | None = None


@dataclass
class HostPlan:
    """Buffers, kernels and the host program (manifest steps) of one lowered function."""

    function: str
    target: str
    buffers: list[Buffer] = field(default_factory=list)
    kernels: dict[str, KernelUse] = field(default_factory=dict)   # in launch order
    program: list = field(default_factory=list)            # manifest steps, in order
    aliases: dict[str, str] = field(default_factory=dict)  # view buffer -> storage buffer
    offsets: dict[str, int] = field(default_factory=dict)  # view buffer -> byte offset in it
    results: list[str] = field(default_factory=list)       # buffer of each function result

    def buffer(self, name: str) -> Buffer:
        for b in self.buffers:
            if b.name == name:
                return b
        raise KeyError(name)

    def storage(self, name: str) -> tuple[str, int]:
        """(storage buffer, byte offset) of a buffer or view."""
        return self.aliases.get(name, name), self.offsets.get(name, 0)

    @property
    def launches(self) -> list[KernelUse]:
        return list(self.kernels.values())


    def walk(self, steps=None):
        """Every step of the tree, nested ones included, in program order."""
        for s in self.program if steps is None else steps:
            yield s
            if isinstance(s, mf.While):
                yield from self.walk(s.cond)
                yield from self.walk(s.body)
            elif isinstance(s, mf.If):
                yield from self.walk(s.then)
                yield from self.walk(s.else_)


@dataclass
class _Host:
    """Per-function state of the rewrite: value -> buffer name, scalars, and the plan."""

    plan: HostPlan
    names: dict
    scalars: dict = field(default_factory=dict)   # scalar value -> (buffer, byte offset, dtype)
    counter: int = 0
    redirects: dict = field(default_factory=dict)  # tile result -> (concat buffer, byte offset)
    storage_ir: dict = field(default_factory=dict)  # storage buffer -> its i8 memref in the IR
    concats: dict = field(default_factory=dict)    # tensor.concat result -> its buffer
    # (keyed by the result: an ir.Operation's hash changes when its operands are replaced)

    def fresh(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    def new_buffer(self, prefix: str, shape, dtype: str) -> str:
        name = self.fresh(prefix)
        self.plan.buffers.append(Buffer(name, tuple(shape), dtype, "temp"))
        return name

    def view(self, base: str, value: ir.Value, offset: int = 0) -> str:
        name = self.alias(base, offset, shape_of(value.type), dtype_of(value.type))
        self.names[value] = name
        return name

    def alias(self, base: str, offset: int, shape, dtype: str) -> str:
        """A view buffer of ``shape``/``dtype`` at byte ``offset`` of ``base``'s storage."""
        storage, off = self.plan.storage(base)
        name = self.fresh("view")
        self.plan.aliases[name] = storage
        self.plan.offsets[name] = off + offset
        self.plan.buffers.append(Buffer(name, tuple(shape), dtype, "temp"))
        return name

    def memref_of(self, name: str, mt: ir.MemRefType) -> ir.Value:
        """The IR memref of plan buffer ``name`` (a storage buffer or a view into one), as
        ``mt``: a ``memref.view`` of the storage's bytes (``memref<N x i8>``, allocated at the
        insertion point where first needed)."""
        storage, offset = self.plan.storage(name)
        base = self.storage_ir.get(storage)
        if base is None:
            i8 = ir.IntegerType.get_signless(8)
            base = memref.alloc(ir.MemRefType.get([self.plan.buffer(storage).nbytes], i8), [], [])
            self.storage_ir[storage] = base
        return memref.view(mt, base, index_constant(offset), [])


def _copy(host: _Host, steps: list, src: str, dst: str, size: int | None = None,
          src_offset: int = 0) -> None:
    """A ``Copy`` step between two buffers or views (``size`` None: all of ``dst``)."""
    plan = host.plan
    dst_storage, dst_off = plan.storage(dst)
    src_storage, src_off = plan.storage(src)
    if size is None:
        size = plan.buffer(dst).nbytes
    steps.append(mf.Copy(dst_storage, src_storage, size, dst_off, src_off + src_offset))


def _check_host(fn) -> None:
    for op in host_ops(fn.operation):
        if op.name not in HOST_OPS:
            raise QuartetError(f"'{op.name}' outside a quartet.tile cannot be lowered for the "
                               f"GPU (host code holds tiles, constants, views, scalar "
                               f"predicates, scf.while and scf.if)", location_of(op))
        if op.name == "tensor.cast" and not _same_static_shape(op):
            raise QuartetError("'tensor.cast' to or from a dynamic shape cannot be lowered for "
                               "the GPU (static shapes only)", location_of(op))
        if op.name in ("arith.trunci", "arith.extui"):
            widths = {ir.IntegerType(v.type).width for v in (op.operands[0], op.results[0])
                      if isinstance(v.type, ir.IntegerType)}
            if widths != {1, 8}:
                raise QuartetError(f"'{op.name}' on the host converts only between i8 and i1 "
                                   f"predicates", location_of(op))


def _same_static_shape(op) -> bool:
    """A ``tensor.cast`` between two static types of one shape: a view of the same buffer."""
    a, b = (ir.RankedTensorType(v.type) for v in (op.operands[0], op.results[0]))
    return a.has_static_shape and b.has_static_shape and list(a.shape) == list(b.shape)


def lower_function(fn, target: str, module: ir.Module, compiled: list,
                   emit: str = "bin", arg_names: list[str] | None = None) -> HostPlan:
    fname = ir.StringAttr(fn.operation.attributes["sym_name"]).value
    _check_host(fn)
    block = fn.regions[0].blocks[0]
    plan = HostPlan(function=fname, target=target)
    host = _Host(plan, {})
    for i, arg in enumerate(block.arguments):
        if isinstance(arg.type, ir.RankedTensorType):
            name = arg_names[i] if arg_names else f"in{i}"
            host.names[arg] = name
            plan.buffers.append(Buffer(name, shape_of(arg.type), dtype_of(arg.type), "input", i))
    _lower_block(block, target, module, host, compiled, emit, plan.program)
    return plan


def _lower_block(block: ir.Block, target: str, module, host: _Host, compiled: list,
                 emit: str, steps: list) -> None:
    _plan_concats(block, host)
    for op in list(block.operations):
        op = op.operation
        name = op.name
        if name == "quartet.tile":
            _lower_tile(op.opview, target, module, host, compiled.pop(0), emit, steps)
        elif name == "quartet.uvirtual":
            from .device_program import is_device_program
            if is_device_program(op):
                from .host_device_program import lower_device_program
                lower_device_program(op.opview, target, module, host, compiled.pop(0), emit,
                                     steps)
            else:
                _lower_uvirtual(op.opview, target, module, host, compiled.pop(0), emit, steps)
        elif name in ("tensor.expand_shape", "tensor.collapse_shape", "tensor.cast"):
            host.view(_buffer_of(op.operands[0], host), op.results[0])
        elif name == "tensor.extract_slice":
            offset = contiguous_slice(op)
            if offset is None:     # prepare() makes these tiles
                raise QuartetError("a non-contiguous 'tensor.extract_slice' was not turned into "
                                   "a kernel (run gpu.prepare first)", location_of(op))
            host.view(_buffer_of(op.operands[0], host), op.results[0], offset)
        elif name == "tensor.concat":
            _lower_concat(op, host, steps)
        elif name == "tensor.extract":
            _extract_scalar(op, host)
        elif name in ("arith.trunci", "arith.extui"):
            host.scalars[op.results[0]] = _scalar(op.operands[0], host, op)
        elif name == "scf.while":
            _lower_while(op, target, module, host, compiled, emit, steps)
        elif name == "scf.if":
            _lower_if(op, target, module, host, compiled, emit, steps)
        elif name == "func.return":
            _results(op, host, steps)
        # arith.constant, tensor.empty: buffers made where they are read;
        # scf.condition, scf.yield: read by the enclosing loop or branch


def _scope_ops(block: ir.Block) -> list[ir.Operation]:
    """The ops of ``block`` and of the ``quartet.uvirtual`` regions in it: one host level (a
    persistent kernel is one step of the block that holds it)."""
    found = []
    for op in block.operations:
        op = op.operation
        found.append(op)
        if op.name == "quartet.uvirtual":
            found += _scope_ops(op.regions[0].blocks[0])
        elif op.name == "quartet.vtask":
            found += list(o.operation for o in op.regions[0].blocks[0].operations)
    return found


def _plan_concats(block: ir.Block, host: _Host) -> None:
    """Give each contiguous ``tensor.concat`` of this level one buffer and let the tiles of the
    same level that produce its operands write their slices in place (before any of them is
    lowered: their result buffers become views of the concat's)."""
    ops = _scope_ops(block)
    tiles = {op for op in ops if op.name == "quartet.tile"}
    claimed = set(host.redirects)
    for op in ops:
        if op.name != "tensor.concat" or op.results[0] in host.concats:
            continue
        offsets = concat_offsets(op)
        if offsets is None:
            raise QuartetError("a 'tensor.concat' of strided slices was not turned into a "
                               "kernel (run gpu.prepare first)", location_of(op))
        t = op.results[0].type
        storage = host.new_buffer("cat", shape_of(t), dtype_of(t))
        host.concats[op.results[0]] = storage
        for value, offset in zip(concat_redirects(op, claimed), offsets):
            if value is not None and value.owner.operation in tiles:
                host.redirects[value] = (storage, offset)


def _lower_concat(op, host: _Host, steps: list | None) -> None:
    """The concat's buffer holds its operands: those not written in place are copied there
    (``steps`` None: inside a persistent kernel, where every operand must be in place)."""
    storage = host.concats[op.results[0]]
    for value, offset in zip(op.operands, concat_offsets(op)):
        src = _buffer_of(value, host)
        if host.plan.storage(src) == (storage, offset):
            continue
        if steps is None:
            raise QuartetError("an operand of a 'tensor.concat' in a persistent kernel is not "
                               "written in place (rammer-outline-data-movement makes such "
                               "concats tiles)", location_of(op))
        _copy(host, steps, src, host.alias(storage, offset, shape_of(value.type),
                                           dtype_of(value.type)))
    host.names[op.results[0]] = storage


def _extract_scalar(op, host: _Host) -> None:
    src = op.operands[0]
    shape = shape_of(src.type)
    index = []
    for v in list(op.operands)[1:]:
        owner = v.owner
        owner = owner.operation if hasattr(owner, "operation") else owner
        if isinstance(v.owner, ir.Block) or owner.name != "arith.constant":
            raise QuartetError("'tensor.extract' on the host needs constant indices",
                               location_of(op))
        index.append(ir.IntegerAttr(owner.attributes["value"]).value)
    linear, stride = 0, 1
    for i in reversed(range(len(shape))):
        linear += index[i] * stride
        stride *= shape[i]
    dtype = dtype_of(src.type)
    host.scalars[op.results[0]] = (_buffer_of(src, host), linear * nbytes((), dtype), dtype)


def _scalar(value: ir.Value, host: _Host, where) -> tuple[str, int, str]:
    if value in host.scalars:
        return host.scalars[value]
    owner = value.owner
    owner = owner.operation if hasattr(owner, "operation") else owner
    if not isinstance(value.owner, ir.Block) and owner.name == "arith.constant":
        # a constant scalar carried into a loop: a one-element weight buffer
        import numpy as np
        attr = owner.attributes["value"]
        dtype = dtype_of(value.type)
        if dtype == "bool":
            data = np.array([ir.BoolAttr(attr).value if isinstance(attr, ir.BoolAttr)
                             else ir.IntegerAttr(attr).value], dtype=np.bool_)
        elif isinstance(attr, ir.FloatAttr):
            data = np.array([ir.FloatAttr(attr).value], dtype=dtype)
        else:
            data = np.array([ir.IntegerAttr(attr).value], dtype=dtype)
        name = host.fresh("w")
        host.plan.buffers.append(Buffer(name, (1,), dtype, "weight", data=data.tobytes()))
        host.scalars[value] = (name, 0, dtype)
        return host.scalars[value]
    raise QuartetError(f"a scalar of type {value.type} computed on the host cannot be lowered "
                       f"for the GPU", location_of(where))


def _predicate(value: ir.Value, host: _Host, where) -> mf.Predicate:
    name, offset, dtype = _scalar(value, host, where)
    storage, base = host.plan.storage(name)
    return mf.Predicate(storage, dtype, base + offset)


def _carrier(value: ir.Value, host: _Host, prefix: str) -> str:
    """A fresh buffer for a loop-carried or branch-result ``value`` (tensor or scalar)."""
    if isinstance(value.type, ir.RankedTensorType):
        name = host.new_buffer(prefix, shape_of(value.type), dtype_of(value.type))
        host.names[value] = name
    else:
        dtype = dtype_of(value.type)
        name = host.new_buffer(prefix, (1,), dtype)
        host.scalars[value] = (name, 0, dtype)
    return name


def _copy_into(value: ir.Value, dst: str, host: _Host, steps: list, where) -> None:
    if isinstance(value.type, ir.RankedTensorType):
        src = _buffer_of(value, host)
        if host.plan.storage(src) != host.plan.storage(dst):
            _copy(host, steps, src, dst)
    else:
        src, offset, dtype = _scalar(value, host, where)
        if host.plan.storage(src) != (dst, 0) or offset:
            _copy(host, steps, src, dst, nbytes((), dtype), src_offset=offset)


def _alias(value: ir.Value, source: ir.Value, host: _Host, where) -> None:
    """``value`` (a block argument or result) holds what ``source`` holds."""
    if isinstance(value.type, ir.RankedTensorType):
        host.names[value] = _buffer_of(source, host)
    else:
        host.scalars[value] = _scalar(source, host, where)


def _lower_while(op, target, module, host: _Host, compiled, emit, steps: list) -> None:
    """``scf.while`` -> copies of the initial values into carry buffers, then a host While:
    cond = the before region's steps, predicate = its ``scf.condition`` operand, body = the
    after region's steps and copies of the yielded values back into the carry buffers."""
    before, after = op.regions[0].blocks[0], op.regions[1].blocks[0]
    carries = []
    for arg, init in zip(before.arguments, op.operands):
        carry = _carrier(arg, host, "carry")
        carries.append(carry)
        _copy_into(init, carry, host, steps, op)
    cond_steps: list = []
    _lower_block(before, target, module, host, compiled, emit, cond_steps)
    condition = before.operations[len(before.operations) - 1].operation
    predicate = _predicate(condition.operands[0], host, condition)
    forwarded = list(condition.operands)[1:]
    for arg, v in zip(after.arguments, forwarded):
        _alias(arg, v, host, condition)
    body_steps: list = []
    _lower_block(after, target, module, host, compiled, emit, body_steps)
    yielded = list(after.operations[len(after.operations) - 1].operation.operands)
    _carry_back(yielded, carries, host, body_steps, op)
    for r, v in zip(op.results, forwarded):
        _alias(r, v, host, condition)
    # grinder{max_iterations=N}: the host loop stops at its bound and reports it, as the
    # device loop does
    bound = ir.IntegerAttr(op.attributes["quartet.max_iterations"]).value \
        if "quartet.max_iterations" in op.attributes else 0
    steps.append(mf.While(cond_steps, predicate, body_steps, bound or None,
                          "stop" if bound else "error"))


def _carry_back(yielded: list, carries: list[str], host: _Host, steps: list, where) -> None:
    """Copy each yielded value into its carry buffer; a value held in another carry buffer
    (values swapped between iterations) is staged through a temporary first."""
    carry_set = set(carries)
    sources = []
    for v, carry in zip(yielded, carries):
        if isinstance(v.type, ir.RankedTensorType):
            storage, _ = host.plan.storage(_buffer_of(v, host))
        else:
            storage, _ = host.plan.storage(_scalar(v, host, where)[0])
        if storage in carry_set and storage != carry:
            stage = _carrier_like(v, host)
            _copy_into(v, stage, host, steps, where)
            sources.append(("buffer", stage, v))
        else:
            sources.append(("value", None, v))
    for (kind, stage, v), carry in zip(sources, carries):
        if kind == "buffer":
            _copy(host, steps, stage, carry)
        else:
            _copy_into(v, carry, host, steps, where)


def _carrier_like(value: ir.Value, host: _Host) -> str:
    if isinstance(value.type, ir.RankedTensorType):
        return host.new_buffer("stage", shape_of(value.type), dtype_of(value.type))
    return host.new_buffer("stage", (1,), dtype_of(value.type))


def _lower_if(op, target, module, host: _Host, compiled, emit, steps: list) -> None:
    """``scf.if`` -> a host If; each result gets a buffer that both branches copy into."""
    predicate = _predicate(op.operands[0], host, op)
    results = [_carrier_like(r, host) for r in op.results]
    for r, name in zip(op.results, results):
        if isinstance(r.type, ir.RankedTensorType):
            host.names[r] = name
        else:
            host.scalars[r] = (name, 0, dtype_of(r.type))
    branches = []
    for region in op.regions:
        branch: list = []
        if len(region.blocks):
            blk = region.blocks[0]
            _lower_block(blk, target, module, host, compiled, emit, branch)
            term = blk.operations[len(blk.operations) - 1].operation
            for v, name in zip(term.operands, results):
                _copy_into(v, name, host, branch, term)
        branches.append(branch)
    steps.append(mf.If(predicate, branches[0], branches[1]))


def _buffer_of(value: ir.Value, host: _Host) -> str:
    """The buffer holding ``value`` (tensor constants get one when first read)."""
    if value in host.names:
        return host.names[value]
    owner = value.owner
    owner = owner.operation if hasattr(owner, "operation") else owner
    if isinstance(value.owner, ir.Block) or owner.name != "arith.constant":
        raise QuartetError(f"no buffer for a value defined by '{getattr(owner, 'name', '?')}'",
                           location_of(owner))
    name = host.fresh("w")
    data = None
    attr = owner.attributes["value"]
    try:
        import numpy as np
        data = np.array(ir.DenseElementsAttr(attr)).tobytes()
    except Exception:      # dense_resource blobs are not readable from the 22.1 bindings
        data = None
    host.plan.buffers.append(Buffer(name, shape_of(value.type), dtype_of(value.type), "weight",
                                    data=data))
    host.names[value] = name
    return name


def _lower_tile(tile, target: str, module: ir.Module, host: _Host, specs: list,
                emit: str, steps: list) -> None:
    inputs = kernel_inputs(tile)
    loc = tile.operation.location
    with loc, ir.InsertionPoint(tile.operation):
        in_buffers = [_to_buffer(v) for v in inputs]
        in_names = [_buffer_of(v, host) for v in inputs]
        outs, out_names = [], []
        for r in tile.results:
            mt = ir.MemRefType.get(list(ir.ShapedType(r.type).shape),
                                   ir.ShapedType(r.type).element_type)
            name = _result_buffer(r, host)
            out_names.append(name)
            outs.append(host.memref_of(name, mt) if r in host.redirects else
                        memref.alloc(mt, [], []))
        for spec in specs:
            operands, bound = [], []
            for a in spec.args:
                if a.role == "input":
                    operands.append(in_buffers[a.index])
                    bound.append(in_names[a.index])
                elif a.role == "tensormap":
                    # the map's buffer stands for the map in the IR; the manifest's argument
                    # says how the runtime encodes it
                    operands.append(in_buffers[a.tensormap.source])
                    bound.append((in_names[a.tensormap.source], a.tensormap))
                else:
                    operands.append(outs[a.index])
                    bound.append(out_names[a.index])
            bin_name = spec.name
            inserted = getattr(module, "binaries", None)   # tiles built once share a binary
            if inserted is None or bin_name not in inserted:
                insert_binary(module.body, bin_name, spec, target, emit)
                if inserted is not None:
                    inserted.add(bin_name)
            smem = arith.constant(ir.IntegerType.get_signless(32), spec.shared_bytes) \
                if spec.shared_bytes else None
            gpu.LaunchFuncOp([bin_name, spec.entry],
                             tuple(index_constant(g) for g in spec.grid),
                             tuple(index_constant(b) for b in spec.block), operands,
                             dynamic_shared_memory_size=smem)
            kname = f"k{len(host.plan.kernels)}_{spec.name}"
            args = tuple(_manifest_arg(host.plan, b, tile) for b in bound)
            host.plan.kernels[kname] = KernelUse(kname, spec, args)
            steps.append(mf.Launch(kname))
        results = [bufferization.to_tensor(r.type, m, restrict=True, writable=True)
                   for r, m in zip(tile.results, outs)]
    for old, new, name in zip(tile.results, results, out_names):
        old.replace_all_uses_with(new)
        host.names[new] = name
    tile.operation.erase()


def _manifest_arg(plan: HostPlan, bound, tile):
    """The manifest argument of a kernel argument bound to a buffer (or a tensor map of one)."""
    if isinstance(bound, str):
        return mf.BufferArg(*plan.storage(bound))
    name, desc = bound
    storage, offset = plan.storage(name)
    if offset % 16:
        raise QuartetError(f"'{tile.root.operation.name}' reads a view at byte offset {offset} "
                           f"through a tensor map, which needs 16-byte aligned data "
                           f"(compile with QUARTET_GEMM_TMA=0)", location_of(tile.operation))
    return mf.TensorMapArg(storage, desc.dtype, desc.dims, desc.strides, desc.box,
                           desc.swizzle, offset)


def _result_buffer(r: ir.Value, host: _Host) -> str:
    """A buffer for tile result ``r``: its slice of a concat's buffer, else a fresh one."""
    if r in host.redirects:
        storage, offset = host.redirects[r]
        return host.alias(storage, offset, shape_of(r.type), dtype_of(r.type))
    return host.new_buffer("t", shape_of(r.type), dtype_of(r.type))


def _lower_uvirtual(uv, target: str, module, host: _Host, specs: list, emit: str,
                    steps: list) -> None:
    """A ``quartet.uvirtual`` -> one ``Launch`` of its persistent kernel: buffers for the
    region's task results and views (as at the host level), the kernel's arguments bound to
    them, the device program checked again with the real byte ranges each task reads and
    writes, and a zeroed synchronisation buffer."""
    from .compose.vdevice import Region, check_or_raise
    from .uvirtual import tasks_of

    (spec,) = specs
    notes = spec.notes
    region = uv.operation.regions[0].blocks[0]
    for op in region.operations:
        op = op.operation
        if op.name == "quartet.vtask":
            tile = [o.operation for o in op.regions[0].blocks[0].operations][0].opview
            for i, r in enumerate(tile.results):
                host.names[r] = _result_buffer(r, host)
                host.names[op.results[i]] = host.names[r]
        elif op.name in ("tensor.expand_shape", "tensor.collapse_shape"):
            host.view(_buffer_of(op.operands[0], host), op.results[0])
        elif op.name == "tensor.extract_slice":
            host.view(_buffer_of(op.operands[0], host), op.results[0], contiguous_slice(op))
        elif op.name == "tensor.concat":
            _lower_concat(op, host, None)
        elif op.name == "gpu.yield":
            for r, v in zip(uv.results, op.operands):
                host.names[r] = _buffer_of(v, host)
    utasks = tasks_of(uv)
    values, bound = [], []
    for task, role, position in notes["arg_sources"]:
        tile = utasks[task].tile
        value = kernel_inputs(tile)[position] if role == "input" else tile.results[position]
        values.append(value)
        bound.append(_buffer_of(value, host))
    words = notes["persistent"]["sync_words"]
    sync = host.fresh("sync")
    host.plan.buffers.append(Buffer(sync, (words,), "int64", "scalar", zeroed=True))
    program = _with_regions(notes["device_program"], notes["task_args"], notes["task_roles"],
                            bound, host, Region)
    check_or_raise(program, "this persistent kernel", location_of(uv.operation))
    kname = f"k{len(host.plan.kernels)}_{spec.name}"
    args = tuple(mf.BufferArg(*host.plan.storage(b)) for b in bound + [sync])
    info = notes["persistent"]
    tasks = tuple(mf.PersistentTask(name, tuple(a), t.blocks, t.veu_begin, t.veu_count, t.wave)
                  for name, a, t in zip(notes["task_names"], notes["task_args"],
                                        program.tasks))
    host.plan.kernels[kname] = KernelUse(kname, spec, args, mf.Persistent(
        info["veus"], info["blocks_per_sm"], sync, tasks))
    steps.append(mf.Launch(kname))
    _rewrite_uvirtual(uv, target, module, host, spec, values, bound + [sync], emit)


def _rewrite_uvirtual(uv, target: str, module, host: _Host, spec, values: list, names: list,
                      emit: str) -> None:
    """In the IR, the uvirtual becomes one ``gpu.launch_func`` of its binary on memrefs: the
    tensors from outside through ``bufferization.to_buffer``, the buffers of its tasks as views
    of their storage (``_Host.memref_of``)."""
    from quartet.dialects.quartet import defined_inside

    op = uv.operation
    i64 = ir.IntegerType.get_signless(64)
    with op.location, ir.InsertionPoint(op):
        operands = []
        for value, name in zip(values + [None], names):
            if value is not None and not defined_inside(value, op):
                operands.append(_to_buffer(value))
                continue
            if value is None:
                mt = ir.MemRefType.get([host.plan.buffer(name).shape[0]], i64)
            else:
                t = ir.RankedTensorType(value.type)
                mt = ir.MemRefType.get(list(t.shape), t.element_type)
            operands.append(host.memref_of(name, mt))
        insert_binary(module.body, spec.name, spec, target, emit)
        smem = arith.constant(ir.IntegerType.get_signless(32), spec.shared_bytes) \
            if spec.shared_bytes else None
        gpu.LaunchFuncOp([spec.name, spec.entry], tuple(index_constant(g) for g in spec.grid),
                         tuple(index_constant(b) for b in spec.block), operands,
                         dynamic_shared_memory_size=smem)
        results = []
        for r in uv.results:
            t = ir.RankedTensorType(r.type)
            mt = ir.MemRefType.get(list(t.shape), t.element_type)
            results.append(bufferization.to_tensor(r.type, host.memref_of(host.names[r], mt),
                                                   restrict=True, writable=True))
    for r, new in zip(uv.results, results):
        host.names[new] = host.names[r]
        r.replace_all_uses_with(new)
    op.erase()


def _with_regions(program, task_args, task_roles, bound: list[str], host: _Host, region_type):
    """``program`` with each task's byte ranges: what its input arguments' buffers hold
    (reads) and its output arguments' (writes)."""
    from dataclasses import replace

    tasks = []
    for task, kargs, roles in zip(program.tasks, task_args, task_roles):
        reads, writes = [], []
        for k, role in zip(kargs, roles):
            name = bound[k]
            storage, offset = host.plan.storage(name)
            r = region_type(storage, offset, offset + host.plan.buffer(name).nbytes)
            (writes if role == "output" else reads).append(r)
        tasks.append(replace(task, reads=tuple(reads), writes=tuple(writes)))
    return replace(program, tasks=tuple(tasks))


def _to_buffer(v: ir.Value) -> ir.Value:
    t = ir.RankedTensorType(v.type)
    mt = ir.MemRefType.get(list(t.shape), t.element_type)
    return bufferization.to_buffer(mt, v, read_only=True)


def _results(ret: ir.Operation, host: _Host, steps: list) -> None:
    """Function results: a temp buffer that holds exactly one result becomes that output;
    anything else (an input, a weight, a part of a buffer, a buffer returned twice) is copied
    into an output buffer of its own."""
    plan = host.plan
    seen = set()
    for i, v in enumerate(ret.operands):
        name = _buffer_of(v, host)
        storage, offset = plan.storage(name)
        buf = plan.buffer(storage)
        shape, dtype = shape_of(v.type), dtype_of(v.type)
        whole = offset == 0 and buf.nbytes == nbytes(shape, dtype)
        if buf.kind == "temp" and whole and storage not in seen:
            plan.buffers[plan.buffers.index(buf)] = Buffer(buf.name, shape, dtype, "output", i)
            seen.add(storage)
            plan.results.append(storage)
        else:
            out = f"out{i}"
            plan.buffers.append(Buffer(out, shape, dtype, "output", i))
            _copy(host, steps, name, out)
            plan.results.append(out)


def _is_private(fn) -> bool:
    attrs = fn.operation.attributes
    return "sym_visibility" in attrs and ir.StringAttr(attrs["sym_visibility"]).value == "private"


def _check_host_before_prepare(fn) -> None:
    for op in host_ops(fn.operation):
        if op.name not in HOST_OPS and op.name not in ("tensor.pad", "tensor.yield",
                                                       "tensor.concat"):
            raise QuartetError(f"'{op.name}' outside a quartet.tile cannot be lowered for the "
                               f"GPU (host code holds tiles, constants, views, scalar "
                               f"predicates, scf.while and scf.if)", location_of(op))


def lower_module_plans(module, chip, emit: str = "bin",
                       arg_names: list[str] | None = None) -> tuple[object, dict[str, HostPlan]]:
    """Lower every tile of every function of ``module`` in place (``gpu.launch_func`` of
    ``gpu.binary`` ops); return (module, {function name: HostPlan}). ``emit="ptx"`` keeps PTX
    text instead of cubins (NVIDIA targets; ``--emit ptx``). ``arg_names`` names the buffers of
    the arguments of the function holding tiles (default ``in0``, ``in1``, ...)."""
    chip = targets.get(chip)
    op = module.operation if hasattr(module, "operation") else module
    body = op.regions[0].blocks[0]
    fns = [o for o in body.operations if o.operation.name == "func.func" and
           len(o.regions[0].blocks) and not _is_private(o)]
    for fn in fns:     # report host ops the plan cannot take before compiling anything
        _check_host_before_prepare(fn)
    prepare(op)
    compiled = compile_all(op, chip, emit)
    plans: dict[str, HostPlan] = {}

    class _Holder:    # what _lower_tile needs of the module: its block
        pass

    holder = _Holder()
    holder.body = body
    holder.binaries = set()
    with op.context, ir.Location.unknown():
        for fn in fns:
            plan = lower_function(fn, chip.target, holder, compiled, emit, arg_names)
            plans[plan.function] = plan
        op.attributes["gpu.container_module"] = ir.UnitAttr.get()
    return module, plans
