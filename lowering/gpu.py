"""``quartet-lower-gpu{target=sm_90}``: configured tiles -> kernels in ``gpu.binary`` ops, and
the host function on buffers that launches them (``gpu.launch_func``), with its host plan.

The last step of the ``roller`` pipeline (issue 3: "the module with a gpu.binary holding one
kernel per operator"). First the module is prepared for kernels (:func:`prepare`):

* boolean tensors become byte tensors (``lowering/cpu_i1.py``: MLIR 22's memref-to-LLVM
  conversion aborts on ``i1`` loads and stores; numpy's ``bool`` is one byte too);
* host data movement that no view can express - ``tensor.pad``, and ``tensor.extract_slice``
  of a non-contiguous part - becomes a tile of its own: a ``linalg.generic`` gathering each
  output element from the source (``linalg.index`` arithmetic, ``tensor.extract``), which the
  SIMT fallback builder maps onto blocks and threads.

Then, for each ``quartet.tile`` of each function, in order:

1. pick a builder: the GEMM/convolution builder (``lowering/gemm.py``, imported lazily) when it
   says it supports the tile, else the SIMT builders (``lowering/simt.py``); a GEMM kernel that
   then fails to build or compile falls back to SIMT with a warning; a tile neither takes is a
   :class:`QuartetError` naming its op and location. ``QUARTET_GEMM=0`` in the environment
   leaves the GEMM builder out (every tile SIMT: to tell a GEMM kernel's fault from the rest);
2. build the kernel (a ``func.func`` with a ``gpu.launch`` on memrefs) and compile it with
   ``lowering/binary.py`` for the target (cubin for sm_90/sm_80, hsaco for gfx942);
3. rewrite the host side: the tile's tensor inputs become buffers (``bufferization.to_buffer``),
   its results fresh ``memref.alloc``s written by ``gpu.launch_func @qN_kernel::@qN_kernel``,
   read back as tensors (``bufferization.to_tensor``) by the rest of the function; one
   ``gpu.binary @qN_kernel`` per kernel holds the binary object.

The same walk records a :class:`~quartet.lowering.host_plan.HostPlan` (buffers and the host
program: launches, copies, host loops and branches), which :func:`lower_module` returns for the
artifact writer. Kernel arguments follow one convention for every builder: the tile's tensor
inputs in order of first use (``simt.kernel_inputs``: ``tensor.empty`` results left out), then
its results.

Host code the plan takes besides tiles: ``arith.constant`` (tensor constants become weight
buffers), ``tensor.empty``, reshapes and contiguous ``tensor.extract_slice`` (views of a buffer
at a byte offset), ``tensor.extract`` at constant indices (a scalar in a buffer: a loop or
branch predicate), ``arith.trunci``/``arith.extui`` between ``i8`` and ``i1`` scalars (the
boolean widening), ``scf.while`` and ``scf.if`` (host :class:`While` / :class:`If` steps whose
predicate the runtime reads back from the device; loop-carried values live in buffers of their
own, written by copies before the loop and at the end of each iteration), ``func.return``.

Assumes: static shapes; scalars crossing the host are loop and branch predicates or carried
scalars that tiles never capture (tiles capture only ``arith.constant`` scalars).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field

from mlir import ir
from mlir.dialects import arith, bufferization, gpu, memref

from quartet.errors import QuartetError, location_of
from quartet.passes.registry import ModulePass, register

from . import binary, simt
from .host_plan import Buffer, Copy, HostPlan, If, Launch, Predicate, While, nbytes

_HOST_OK = ("arith.constant", "tensor.empty", "tensor.expand_shape", "tensor.collapse_shape",
            "tensor.extract_slice", "tensor.extract", "arith.trunci", "arith.extui",
            "scf.while", "scf.if", "scf.condition", "scf.yield", "func.return", "quartet.tile")


def _gemm():
    """``lowering/gemm.py`` when it exists (another builder, written separately)."""
    try:
        from . import gemm
    except ImportError:
        return None
    return gemm


def _gemm_takes(tile, target: str) -> bool:
    gemm = _gemm()
    if gemm is None or os.environ.get("QUARTET_GEMM", "1") == "0":
        return False
    try:    # True, or the reason it does not take the tile
        return gemm.supports(tile, target) is True
    except Exception:      # a builder's own analysis failing means it does not take it
        return False


def build_kernel(tile, target: str, name: str, *, allow_gemm: bool = True) \
        -> tuple[ir.Module, str]:
    """(module with ``func @name`` holding one gpu.launch, builder name) for ``tile``."""
    if allow_gemm and _gemm_takes(tile, target):
        module = _gemm().build_gemm_kernel(tile, target)
        _rename_kernel(module, name)
        return module, "gemm"
    if simt.supports(tile):
        return simt.build_simt_kernel(tile, target, name=name), "simt"
    # Let the SIMT builder name the reason.
    simt.build_simt_kernel(tile, target, name=name)
    raise QuartetError(f"no kernel builder takes '{tile.root.operation.name}'",
                       location_of(tile.operation))


def _rename_kernel(module: ir.Module, name: str) -> None:
    fns = [o for o in module.body.operations if o.operation.name == "func.func"]
    if len(fns) == 1:
        fns[0].operation.attributes["sym_name"] = ir.StringAttr.get(name)


#: (tile location, reason) of every GEMM kernel that fell back to SIMT in this process
GEMM_FALLBACKS: list[tuple[str | None, str]] = []


def compile_tile(tile, target: str, kname: str, emit: str = "bin") -> list:
    """Build and compile the kernel(s) of one tile: its KernelSpecs.

    A tile the GEMM builder claims but then fails to build or compile for is built by the SIMT
    builders instead (recorded in :data:`GEMM_FALLBACKS`, with a warning)."""
    if _gemm_takes(tile, target):
        try:
            kmod, _ = build_kernel(tile, target, kname)
            specs = binary.compile_launch_module(kmod, target, emit=emit)
            for s in specs:
                s.notes["builder"] = "gemm"
            return specs
        except Exception as e:      # noqa: BLE001 - any failure of the claimed builder
            reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            where = location_of(tile.operation)
            GEMM_FALLBACKS.append((where, reason))
            warnings.warn(f"{where}: the GEMM builder claimed '{tile.root.operation.name}' but "
                          f"failed ({reason}); using the SIMT builder", stacklevel=2)
            if not simt.supports(tile):
                raise
    kmod, builder = build_kernel(tile, target, kname, allow_gemm=False)
    specs = binary.compile_launch_module(kmod, target, emit=emit)
    for s in specs:
        s.notes["builder"] = builder
    return specs


def _tiles_of(fn) -> list:
    found = []

    def visit(op):
        if op.operation.name == "quartet.tile":
            found.append(op.opview)
            return ir.WalkResult.SKIP
        return ir.WalkResult.ADVANCE

    fn.operation.walk(visit, ir.WalkOrder.PRE_ORDER)
    return found


def _dtype(t: ir.Type) -> str:
    if isinstance(t, ir.ShapedType):
        t = ir.ShapedType(t).element_type
    return binary._dtype_name(t)


def _shape(t: ir.Type) -> tuple[int, ...]:
    return tuple(ir.ShapedType(t).shape) if isinstance(t, ir.ShapedType) else ()


# ---------------------------------------------------------------------------------------------
# Preparation: byte booleans, data movement as tiles


def prepare(module, entry: str | None = None) -> None:
    """Make ``module`` ready for kernels, in place (see the module docstring); ``entry``: a
    function prepared even without tiles (a program that only copies or views)."""
    from . import cpu_i1

    op = module.operation if hasattr(module, "operation") else module
    with op.context, ir.Location.unknown():
        cpu_i1.widen_bool_tensors(op)
        for fn in op.regions[0].blocks[0].operations:
            if fn.operation.name == "func.func" and (_tiles_of(fn) or _named(fn, entry)):
                _outline_data_movement(fn.operation)


def _host_ops(root: ir.Operation) -> list[ir.Operation]:
    """Ops of ``root``'s regions outside tiles, in program order (nested ones included)."""
    found = []

    def visit(op):
        op = op.operation
        if op.name == "quartet.tile":
            return ir.WalkResult.SKIP
        if op != root:
            found.append(op)
        return ir.WalkResult.ADVANCE

    root.walk(visit, ir.WalkOrder.PRE_ORDER)
    return found


def _static(op, name: str) -> list[int]:
    values = list(ir.DenseI64ArrayAttr(op.attributes[name]))
    if any(v == ir.ShapedType.get_dynamic_size() or v < -(1 << 62) for v in values):
        raise QuartetError(f"'{op.name}' with dynamic {name.replace('static_', '')} cannot be "
                           f"lowered for the GPU", location_of(op))
    return values


def _slice_dims(op) -> tuple[list, list, list, list]:
    """(offsets, sizes, strides, result dim of each source dim or None) of an extract_slice."""
    offsets, sizes, strides = (_static(op, f"static_{k}") for k in ("offsets", "sizes", "strides"))
    result = _shape(op.results[0].type)
    mapping, j = [], 0
    n = len(sizes)
    for i, size in enumerate(sizes):
        if size == 1 and (n - i) > (len(result) - j):
            mapping.append(None)            # a dropped unit dim (rank-reducing slice)
        else:
            mapping.append(j)
            j += 1
    return offsets, sizes, strides, mapping


def contiguous_slice(op) -> int | None:
    """Byte offset of an ``extract_slice`` whose elements are one contiguous run of its
    source, else None."""
    offsets, sizes, strides, _ = _slice_dims(op)
    src = _shape(op.operands[0].type)
    if any(s != 1 for s in strides):
        return None
    partial = [i for i in range(len(src)) if sizes[i] != src[i]]
    if partial and any(sizes[i] != 1 for i in range(partial[-1])):
        return None
    linear, stride = 0, 1
    for i in reversed(range(len(src))):
        linear += offsets[i] * stride
        stride *= src[i]
    return linear * nbytes((), _dtype(op.operands[0].type))


def _outline_data_movement(fn: ir.Operation) -> None:
    for op in _host_ops(fn):
        if op.name == "tensor.pad":
            _gather_tile(op, *_pad_gather(op))
        elif op.name == "tensor.extract_slice" and contiguous_slice(op) is None:
            _gather_tile(op, *_slice_gather(op))


def _slice_gather(op) -> tuple[list, list, str | None]:
    offsets, sizes, strides, mapping = _slice_dims(op)
    index = []
    for off, stride, j in zip(offsets, strides, mapping):
        index.append(("const", off) if j is None else ("affine", j, stride, off))
    return index, [], None


def _pad_gather(op) -> tuple[list, list, str | None]:
    low, high = _static(op, "static_low"), _static(op, "static_high")
    src = _shape(op.operands[0].type)
    region = op.regions[0].blocks[0]
    value = region.operations[len(region.operations) - 1].operands[0]
    owner = value.owner
    owner = owner.operation if hasattr(owner, "operation") else owner
    if isinstance(value.owner, ir.Block) or owner.name != "arith.constant":
        raise QuartetError("'tensor.pad' with a padding value that is not a constant cannot be "
                           "lowered for the GPU", location_of(op))
    index, masks = [], []
    for i, (lo, hi) in enumerate(zip(low, high)):
        index.append(("affine", i, 1, -lo))
        if lo or hi:
            masks.append((i, src[i]))
    return index, masks, str(owner.attributes["value"])


def _gather_tile(op, index: list, masks: list, pad: str | None) -> None:
    """Replace host op ``op`` (one source tensor, one result) by a tile computing each output
    element as ``source[index(i)]`` (``pad`` where a masked index leaves the source)."""
    src_t, res_t = op.operands[0].type, op.results[0].type
    elt = str(ir.ShapedType(res_t).element_type)
    rank = len(_shape(res_t))
    dims = ", ".join(f"d{i}" for i in range(rank))
    iters = ", ".join(['"parallel"'] * rank)
    lines = [f"%i{i} = linalg.index {i} : index" for i in range(rank)]
    names = []
    src_shape = _shape(src_t)
    valid = []
    for k, entry in enumerate(index):
        if entry[0] == "const":
            lines.append(f"%j{k} = arith.constant {entry[1]} : index")
        else:
            _, j, stride, off = entry
            lines.append(f"%s{k} = arith.constant {stride} : index")
            lines.append(f"%o{k} = arith.constant {off} : index")
            lines.append(f"%m{k} = arith.muli %i{j}, %s{k} : index")
            lines.append(f"%j{k} = arith.addi %m{k}, %o{k} : index")
        names.append(f"%j{k}")
    for k, extent in masks:
        lines += [f"%z{k} = arith.constant 0 : index",
                  f"%n{k} = arith.constant {extent} : index",
                  f"%hi{k} = arith.constant {extent - 1} : index",
                  f"%ge{k} = arith.cmpi sge, %j{k}, %z{k} : index",
                  f"%lt{k} = arith.cmpi slt, %j{k}, %n{k} : index",
                  f"%ok{k} = arith.andi %ge{k}, %lt{k} : i1",
                  f"%a{k} = arith.maxsi %j{k}, %z{k} : index",
                  f"%c{k} = arith.minsi %a{k}, %hi{k} : index"]
        names[k] = f"%c{k}"
        valid.append(f"%ok{k}")
    lines.append(f"%v = tensor.extract %src[{', '.join(names)}] : {src_t}")
    result = "%v"
    if valid:
        lines.append(f"%pad = arith.constant {pad}")
        acc = valid[0]
        for n, v in enumerate(valid[1:]):
            lines.append(f"%all{n} = arith.andi {acc}, {v} : i1")
            acc = f"%all{n}"
        lines.append(f"%r = arith.select {acc}, %v, %pad : {elt}")
        result = "%r"
    body = "\n          ".join(lines)
    text = f"""
func.func @gather(%src: {src_t}) -> {res_t} {{
  %t = "quartet.tile"() ({{
    %e = tensor.empty() : {res_t}
    %g = linalg.generic {{indexing_maps = [affine_map<({dims}) -> ({dims})>],
                         iterator_types = [{iters}]}} outs(%e : {res_t}) {{
        ^bb0(%out: {elt}):
          {body}
          linalg.yield {result} : {elt}
    }} -> {res_t}
    gpu.yield %g : {res_t}
  }}) : () -> {res_t}
  return %t : {res_t}
}}"""
    parsed = ir.Module.parse(text)
    gfn = parsed.body.operations[0]
    arg = gfn.regions[0].blocks[0].arguments[0]
    template = gfn.regions[0].blocks[0].operations[0]
    with ir.InsertionPoint(op), op.location:
        tile = template.operation.clone()
    source = op.operands[0]

    def remap(inner):
        inner = inner.operation
        for i, v in enumerate(inner.operands):
            if v == arg:
                inner.operands[i] = source
        return ir.WalkResult.ADVANCE

    tile.walk(remap)
    op.results[0].replace_all_uses_with(tile.results[0])
    op.erase()


# ---------------------------------------------------------------------------------------------
# The host side


@dataclass
class _Host:
    """Per-function state of the rewrite: value -> buffer name, scalars, and the plan."""

    plan: HostPlan
    names: dict
    scalars: dict = field(default_factory=dict)   # scalar value -> (buffer, byte offset, dtype)
    counter: int = 0

    def fresh(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    def new_buffer(self, prefix: str, shape, dtype: str) -> str:
        name = self.fresh(prefix)
        self.plan.buffers.append(Buffer(name, tuple(shape), dtype, "temp"))
        return name

    def view(self, base: str, value: ir.Value, offset: int = 0) -> str:
        storage, off = self.plan.storage(base)
        name = self.fresh("view")
        self.plan.aliases[name] = storage
        self.plan.offsets[name] = off + offset
        self.plan.buffers.append(Buffer(name, _shape(value.type), _dtype(value.type), "temp"))
        self.names[value] = name
        return name


def _emit(host: _Host, steps: list, step) -> None:
    steps.append(step)
    if isinstance(step, Launch):
        host.plan.launches.append(step)
    elif isinstance(step, Copy):
        host.plan.copies.append(step)


def _check_host(fn) -> None:
    for op in _host_ops(fn.operation):
        if op.name not in _HOST_OK:
            raise QuartetError(f"'{op.name}' outside a quartet.tile cannot be lowered for the "
                               f"GPU (host code holds tiles, constants, views, scalar "
                               f"predicates, scf.while and scf.if)", location_of(op))
        if op.name in ("arith.trunci", "arith.extui"):
            widths = {ir.IntegerType(v.type).width for v in (op.operands[0], op.results[0])
                      if isinstance(v.type, ir.IntegerType)}
            if widths != {1, 8}:
                raise QuartetError(f"'{op.name}' on the host converts only between i8 and i1 "
                                   f"predicates", location_of(op))


def _named(fn, name: str | None) -> bool:
    return name is not None and ir.StringAttr(fn.operation.attributes["sym_name"]).value == name


def lower_function(fn, target: str, module: ir.Module, compiled: list,
                   emit: str = "bin", entry: str | None = None) -> HostPlan | None:
    tiles = _tiles_of(fn)
    fname = ir.StringAttr(fn.operation.attributes["sym_name"]).value
    if not tiles and fname != entry:
        return None
    _check_host(fn)
    block = fn.regions[0].blocks[0]
    plan = HostPlan(function=fname, target=target)
    host = _Host(plan, {})
    for i, arg in enumerate(block.arguments):
        if isinstance(arg.type, ir.RankedTensorType):
            name = f"in{i}"
            host.names[arg] = name
            plan.buffers.append(Buffer(name, _shape(arg.type), _dtype(arg.type), "input", i))
    _lower_block(block, target, module, host, compiled, emit, plan.program)
    return plan


def _lower_block(block: ir.Block, target: str, module, host: _Host, compiled: list,
                 emit: str, steps: list) -> None:
    plan = host.plan
    for op in list(block.operations):
        op = op.operation
        name = op.name
        if name == "quartet.tile":
            _lower_tile(op.opview, target, module, host, compiled.pop(0), emit, steps)
        elif name in ("tensor.expand_shape", "tensor.collapse_shape"):
            host.view(_buffer_of(op.operands[0], host), op.results[0])
        elif name == "tensor.extract_slice":
            offset = contiguous_slice(op)
            if offset is None:     # prepare() makes these tiles
                raise QuartetError("a non-contiguous 'tensor.extract_slice' was not turned into "
                                   "a kernel (run gpu.prepare first)", location_of(op))
            host.view(_buffer_of(op.operands[0], host), op.results[0], offset)
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


def _extract_scalar(op, host: _Host) -> None:
    src = op.operands[0]
    shape = _shape(src.type)
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
    dtype = _dtype(src.type)
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
        dtype = _dtype(value.type)
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


def _predicate(value: ir.Value, host: _Host, where) -> Predicate:
    name, offset, dtype = _scalar(value, host, where)
    storage, base = host.plan.storage(name)
    return Predicate(storage, dtype, base + offset)


def _carrier(value: ir.Value, host: _Host, prefix: str) -> str:
    """A fresh buffer for a loop-carried or branch-result ``value`` (tensor or scalar)."""
    if isinstance(value.type, ir.RankedTensorType):
        name = host.new_buffer(prefix, _shape(value.type), _dtype(value.type))
        host.names[value] = name
    else:
        dtype = _dtype(value.type)
        name = host.new_buffer(prefix, (1,), dtype)
        host.scalars[value] = (name, 0, dtype)
    return name


def _copy_into(value: ir.Value, dst: str, host: _Host, steps: list, where) -> None:
    if isinstance(value.type, ir.RankedTensorType):
        src = _buffer_of(value, host)
        if host.plan.storage(src) != host.plan.storage(dst):
            _emit(host, steps, Copy(src, dst))
    else:
        src, offset, dtype = _scalar(value, host, where)
        if host.plan.storage(src) != (dst, 0) or offset:
            _emit(host, steps, Copy(src, dst, nbytes((), dtype), src_offset=offset))


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
    _emit(host, steps, While(cond_steps, predicate, body_steps))


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
            _emit(host, steps, Copy(stage, carry))
        else:
            _copy_into(v, carry, host, steps, where)


def _carrier_like(value: ir.Value, host: _Host) -> str:
    if isinstance(value.type, ir.RankedTensorType):
        return host.new_buffer("stage", _shape(value.type), _dtype(value.type))
    return host.new_buffer("stage", (1,), _dtype(value.type))


def _lower_if(op, target, module, host: _Host, compiled, emit, steps: list) -> None:
    """``scf.if`` -> a host If; each result gets a buffer that both branches copy into."""
    predicate = _predicate(op.operands[0], host, op)
    results = [_carrier_like(r, host) for r in op.results]
    for r, name in zip(op.results, results):
        if isinstance(r.type, ir.RankedTensorType):
            host.names[r] = name
        else:
            host.scalars[r] = (name, 0, _dtype(r.type))
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
    _emit(host, steps, If(predicate, branches[0], branches[1]))


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
    host.plan.buffers.append(Buffer(name, _shape(value.type), _dtype(value.type), "weight",
                                    data=data))
    host.names[value] = name
    return name


def _lower_tile(tile, target: str, module: ir.Module, host: _Host, specs: list,
                emit: str, steps: list) -> None:
    inputs = simt.kernel_inputs(tile)
    loc = tile.operation.location
    with loc, ir.InsertionPoint(tile.operation):
        in_buffers = [_to_buffer(v) for v in inputs]
        in_names = [_buffer_of(v, host) for v in inputs]
        outs, out_names = [], []
        for r in tile.results:
            mt = ir.MemRefType.get(list(ir.ShapedType(r.type).shape),
                                   ir.ShapedType(r.type).element_type)
            outs.append(memref.alloc(mt, [], []))
            out_names.append(host.new_buffer("t", tuple(mt.shape), _dtype(r.type)))
        for spec in specs:
            operands, bound = [], []
            for a in spec.args:
                if a.role == "input":
                    operands.append(in_buffers[a.index])
                    bound.append(in_names[a.index])
                else:
                    operands.append(outs[a.index])
                    bound.append(out_names[a.index])
            bin_name = spec.name
            _insert_binary(module, bin_name, spec, target, emit)
            smem = arith.constant(ir.IntegerType.get_signless(32), spec.shared_bytes) \
                if spec.shared_bytes else None
            gpu.LaunchFuncOp([bin_name, spec.entry],
                             tuple(_idx(g) for g in spec.grid),
                             tuple(_idx(b) for b in spec.block), operands,
                             dynamic_shared_memory_size=smem)
            _emit(host, steps, Launch(spec, tuple(bound)))
        results = [bufferization.to_tensor(r.type, m, restrict=True, writable=True)
                   for r, m in zip(tile.results, outs)]
    for old, new, name in zip(tile.results, results, out_names):
        old.replace_all_uses_with(new)
        host.names[new] = name
    tile.operation.erase()


def _idx(v: int) -> ir.Value:
    return arith.constant(ir.IndexType.get(), v)


def _to_buffer(v: ir.Value) -> ir.Value:
    t = ir.RankedTensorType(v.type)
    mt = ir.MemRefType.get(list(t.shape), t.element_type)
    return bufferization.to_buffer(mt, v, read_only=True)


def _insert_binary(module: ir.Module, name: str, spec, target: str, emit: str = "bin") -> None:
    t = binary.get_target(target)
    if t.is_nvidia:
        attr = ir.Attribute.parse(f'#nvvm.target<O = 3, chip = "{t.chip}", '
                                  f'features = "{t.features}">')
    else:
        attr = ir.Attribute.parse(f'#rocdl.target<O = 3, chip = "{t.chip}">')
    fmt = {"bin": 3, "ptx": 2, "obj": 3}[emit]     # #gpu.compilation_target: 2 isa, 3 bin
    obj = gpu.ObjectAttr.get(attr, fmt, spec.binary)
    with ir.InsertionPoint(module.body):
        gpu.BinaryOp(name, ir.ArrayAttr.get([obj]),
                     offloadingHandler=ir.Attribute.parse("#gpu.select_object<0>"))


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
        shape, dtype = _shape(v.type), _dtype(v.type)
        whole = offset == 0 and buf.nbytes == nbytes(shape, dtype)
        if buf.kind == "temp" and whole and storage not in seen:
            plan.buffers[plan.buffers.index(buf)] = Buffer(buf.name, shape, dtype, "output", i)
            seen.add(storage)
            plan.results.append(storage)
        else:
            out = f"out{i}"
            plan.buffers.append(Buffer(out, shape, dtype, "output", i))
            _emit(host, steps, Copy(name, out))
            plan.results.append(out)


def lower_module(module, target: str = "sm_90", emit: str = "bin") \
        -> tuple[object, HostPlan | None]:
    """Lower every tile of every function of ``module`` in place; return (module, plan of the
    first function holding tiles). :func:`lower_module_plans` gives every function's plan.
    ``emit="ptx"`` keeps PTX text instead of cubins (NVIDIA targets; ``--emit ptx``)."""
    module, plans = lower_module_plans(module, target, emit)
    return module, (next(iter(plans.values())) if plans else None)


def lower_module_plans(module, target: str = "sm_90", emit: str = "bin",
                       entry: str | None = None) -> tuple[object, dict[str, HostPlan]]:
    """Lower in place; return (module, {function name: HostPlan}). Functions with tiles get a
    plan, and so does the function ``entry`` without any (copies and views only).

    Kernels are built and compiled in a private Context holding a copy of the module: nested
    pass managers cannot run in the Context of a pass that is running (MLIR asserts while it is
    in multi-threaded execution), and ``quartet-lower-gpu`` is such a pass. Only the host
    rewrite, which builds ops without running passes, happens in the caller's Context.
    """
    binary.get_target(target)
    op = module.operation if hasattr(module, "operation") else module
    body = op.regions[0].blocks[0]
    fns = [o for o in body.operations if o.operation.name == "func.func"]
    if not any(_tiles_of(fn) or _named(fn, entry) for fn in fns):
        return module, {}
    for fn in fns:     # report host ops the plan cannot take before compiling anything
        if _tiles_of(fn) or _named(fn, entry):
            _check_host_before_prepare(fn)
    prepare(op, entry)
    compiled = _compile_all(op, target, emit)
    plans: dict[str, HostPlan] = {}

    class _Holder:    # what _insert_binary needs: the module's block
        pass

    holder = _Holder()
    holder.body = body
    with op.context, ir.Location.unknown():
        for fn in fns:
            plan = lower_function(fn, target, holder, compiled, emit, entry)
            if plan is not None:
                plans[plan.function] = plan
        op.attributes["gpu.container_module"] = ir.UnitAttr.get()
    return module, plans


def _check_host_before_prepare(fn) -> None:
    for op in _host_ops(fn.operation):
        if op.name not in _HOST_OK and op.name not in ("tensor.pad", "tensor.yield"):
            raise QuartetError(f"'{op.name}' outside a quartet.tile cannot be lowered for the "
                               f"GPU (host code holds tiles, constants, views, scalar "
                               f"predicates, scf.while and scf.if)", location_of(op))


def _compile_all(op: ir.Operation, target: str, emit: str = "bin") -> list:
    """KernelSpecs of every tile, in program order, compiled in a private Context."""
    from quartet.dialects import context as quartet_context

    text = op.get_asm(enable_debug_info=True)
    ctx = quartet_context()
    with ctx, ir.Location.unknown():
        copy = ir.Module.parse(text)
        compiled = []
        n = 0
        for fn in copy.body.operations:
            if fn.operation.name != "func.func":
                continue
            for tile in _tiles_of(fn):
                try:
                    compiled.append(compile_tile(tile, target, f"q{n}", emit))
                except QuartetError as e:      # name the tile's op and place
                    if e.location is None:
                        raise QuartetError(f"'{tile.root.operation.name}': {e.message}",
                                           location_of(tile.operation)) from None
                    raise
                n += 1
    return compiled


def build_kernels_into(module, target: str = "sm_90") -> None:
    """Append the kernel function of every tile (a ``func.func @qN`` on memrefs holding a
    ``gpu.launch``) to ``module``, tiles left in place: the middle stage, for tests."""
    from quartet.dialects import context as quartet_context

    op = module.operation if hasattr(module, "operation") else module
    prepare(op)
    text = op.get_asm(enable_debug_info=True)
    kernels = []
    with quartet_context() as ctx, ir.Location.unknown():
        copy = ir.Module.parse(text)
        n = 0
        for fn in copy.body.operations:
            if fn.operation.name != "func.func":
                continue
            for tile in _tiles_of(fn):
                kmod, _ = build_kernel(tile, target, f"q{n}")
                kernels.append(kmod.operation.get_asm(enable_debug_info=True))
                n += 1
        del ctx
    body = op.regions[0].blocks[0]
    with op.context, ir.Location.unknown():
        for text in kernels:
            parsed = ir.Module.parse(text)
            for kop in list(parsed.body.operations):
                kop.operation.move_after(list(body.operations)[-1].operation)


def launches_to_binaries(module, target: str = "sm_90", emit: str = "bin") -> list:
    """Compile every ``gpu.launch`` of ``module`` (``lowering/binary.py``) and replace each by
    a ``gpu.launch_func`` of a ``gpu.binary``; return the KernelSpecs."""
    op = module.operation if hasattr(module, "operation") else module
    specs = binary.compile_launch_module(op, target, emit=emit)
    body = op.regions[0].blocks[0]
    launches = []

    def visit(inner):
        if inner.operation.name == "gpu.launch":
            launches.append(inner.operation)
            return ir.WalkResult.SKIP
        return ir.WalkResult.ADVANCE

    op.walk(visit)
    if len(launches) != len(specs):
        raise QuartetError("the kernels compiled do not match the gpu.launch ops")

    class _Holder:
        pass

    holder = _Holder()
    holder.body = body
    with op.context, ir.Location.unknown():
        for launch, spec in zip(launches, specs):
            fn = launch.parent
            while fn.name != "func.func":
                fn = fn.parent
            args = fn.regions[0].blocks[0].arguments
            _insert_binary(holder, spec.name, spec, target, emit)
            with launch.location, ir.InsertionPoint(launch):
                smem = arith.constant(ir.IntegerType.get_signless(32), spec.shared_bytes) \
                    if spec.shared_bytes else None
                gpu.LaunchFuncOp([spec.name, spec.entry], tuple(_idx(g) for g in spec.grid),
                                 tuple(_idx(b) for b in spec.block),
                                 [args[i] for i in spec.notes["func_args"]],
                                 dynamic_shared_memory_size=smem)
            launch.erase()
        op.attributes["gpu.container_module"] = ir.UnitAttr.get()
    return specs


STAGES = ("kernels", "binary")


@register
@dataclass(frozen=True)
class LowerGpu(ModulePass):
    name = "quartet-lower-gpu"
    summary = "compile every quartet.tile into a gpu.binary kernel and launch it from the host"
    target: str = "sm_90"
    stop_after: str = "binary"    # "kernels": only append the gpu.launch kernel functions

    def __post_init__(self):
        if self.target not in binary.TARGETS:
            raise ValueError(f"unknown GPU target '{self.target}' "
                             f"(known: {', '.join(binary.TARGETS)})")
        if self.stop_after not in STAGES:
            raise ValueError(f"stop_after must be one of {', '.join(STAGES)}, "
                             f"got '{self.stop_after}'")

    def apply(self, module) -> None:
        if self.stop_after == "kernels":
            build_kernels_into(module, self.target)
        else:
            lower_module_plans(module, self.target)


@register
@dataclass(frozen=True)
class GpuToBinary(ModulePass):
    name = "quartet-gpu-to-binary"
    summary = ("compile every gpu.launch into a gpu.binary (cubin/PTX/hsaco) and launch it "
               "with gpu.launch_func")
    target: str = "sm_90"
    emit: str = "bin"             # "bin" | "ptx" (NVIDIA) | "obj" (AMD, before linking)

    def __post_init__(self):
        if self.target not in binary.TARGETS:
            raise ValueError(f"unknown GPU target '{self.target}' "
                             f"(known: {', '.join(binary.TARGETS)})")
        if self.emit not in ("bin", "ptx", "obj"):
            raise ValueError(f"emit must be bin, ptx or obj, got '{self.emit}'")

    def apply(self, module) -> None:
        launches_to_binaries(module, self.target, self.emit)
