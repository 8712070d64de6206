"""``quartet-lower-gpu{target=sm_90}``: configured tiles -> kernels in ``gpu.binary`` ops, and
the host function on buffers that launches them (``gpu.launch_func``), with its host plan.

The last step of the ``roller`` pipeline (issue 3: "the module with a gpu.binary holding one
kernel per operator"). For each ``quartet.tile`` of each function, in order:

1. pick a builder: the GEMM/convolution builder (``lowering/gemm.py``, imported lazily) when it
   says it supports the tile, else the SIMT builders (``lowering/simt.py``); a tile neither
   takes is a :class:`QuartetError` naming its op and location;
2. build the kernel (a ``func.func`` with a ``gpu.launch`` on memrefs) and compile it with
   ``lowering/binary.py`` for the target (cubin for sm_90/sm_80, hsaco for gfx942);
3. rewrite the host side: the tile's tensor inputs become buffers (``bufferization.to_buffer``),
   its results fresh ``memref.alloc``s written by ``gpu.launch_func @qN_kernel::@qN_kernel``,
   read back as tensors (``bufferization.to_tensor``) by the rest of the function; one
   ``gpu.binary @qN_kernel`` per kernel holds the binary object.

The same walk records a :class:`~quartet.lowering.host_plan.HostPlan` (buffers, launches in
order, copies), which :func:`lower_module` returns for the artifact writer. Kernel arguments
follow one convention for every builder: the tile's tensor inputs in order of first use
(``simt.kernel_inputs``: ``tensor.empty`` results left out), then its results.

Assumes: tiles sit directly in the function body (no host control flow around them); the only
ops outside tiles are ``arith.constant``, ``tensor.empty``, reshapes (views of a buffer) and
``func.return``.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlir import ir
from mlir.dialects import arith, bufferization, gpu, memref

from quartet.errors import QuartetError, location_of
from quartet.passes.registry import ModulePass, register

from . import binary, simt
from .host_plan import Buffer, Copy, HostPlan, Launch

_HOST_OK = ("arith.constant", "tensor.empty", "tensor.expand_shape", "tensor.collapse_shape",
            "func.return", "quartet.tile")


def _gemm():
    """``lowering/gemm.py`` when it exists (another builder, written separately)."""
    try:
        from . import gemm
    except ImportError:
        return None
    return gemm


def build_kernel(tile, target: str, name: str) -> tuple[ir.Module, str]:
    """(module with ``func @name`` holding one gpu.launch, builder name) for ``tile``."""
    gemm = _gemm()
    if gemm is not None:
        try:    # True, or the reason it does not take the tile
            supported = gemm.supports(tile, target) is True
        except Exception:      # a builder's own analysis failing means it does not take it
            supported = False
        if supported:
            module = gemm.build_gemm_kernel(tile, target)
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


def _tiles_of(fn) -> list:
    found = []

    def visit(op):
        if op.operation.name == "quartet.tile":
            found.append(op.opview)
            return ir.WalkResult.SKIP
        return ir.WalkResult.ADVANCE

    fn.operation.walk(visit)
    return found


def _dtype(t: ir.Type) -> str:
    return binary._dtype_name(ir.ShapedType(t).element_type)


@dataclass
class _Host:
    """Per-function state of the rewrite: value -> buffer name, and the plan."""

    plan: HostPlan
    names: dict
    counter: int = 0

    def fresh(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"


def lower_function(fn, target: str, module: ir.Module, compiled: list,
                   emit: str = "bin") -> HostPlan | None:
    tiles = _tiles_of(fn)
    fname = ir.StringAttr(fn.operation.attributes["sym_name"]).value
    if not tiles:
        return None
    block = fn.regions[0].blocks[0]
    for op in block.operations:
        name = op.operation.name
        if name not in _HOST_OK:
            raise QuartetError(f"'{name}' outside a quartet.tile cannot be lowered for the GPU "
                               f"(host code holds only tiles, constants, empties and reshapes)",
                               location_of(op))
    for t in tiles:
        if t.operation.parent != fn.operation:
            raise QuartetError("a quartet.tile under host control flow cannot be lowered for "
                               "the GPU yet (run grinder-lift-control-flow first)",
                               location_of(t.operation))
    plan = HostPlan(function=fname, target=target)
    host = _Host(plan, {})
    for i, arg in enumerate(block.arguments):
        if isinstance(arg.type, ir.RankedTensorType):
            name = f"in{i}"
            host.names[arg] = name
            plan.buffers.append(Buffer(name, tuple(ir.ShapedType(arg.type).shape),
                                       _dtype(arg.type), "input", i))
    for op in list(block.operations):
        op = op.operation
        if op.name == "quartet.tile":
            _lower_tile(op.opview, target, module, host, compiled.pop(0), emit)
        elif op.name in ("tensor.expand_shape", "tensor.collapse_shape"):
            src = op.operands[0]
            name = host.fresh("view")
            storage = _buffer_of(src, host)
            plan.aliases[name] = plan.aliases.get(storage, storage)
            plan.buffers.append(Buffer(name, tuple(ir.ShapedType(op.results[0].type).shape),
                                       _dtype(op.results[0].type), "temp"))
            host.names[op.results[0]] = name
        elif op.name == "func.return":
            _results(op, host)
    return plan


def _buffer_of(value: ir.Value, host: _Host) -> str:
    """The buffer holding ``value`` (weights get one when first read)."""
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
    host.plan.buffers.append(Buffer(name, tuple(ir.ShapedType(value.type).shape),
                                    _dtype(value.type), "weight", data=data))
    host.names[value] = name
    return name


def compile_tile(tile, target: str, kname: str, emit: str = "bin") -> list:
    """Build and compile the kernel(s) of one tile: its KernelSpecs."""
    kmod, _ = build_kernel(tile, target, kname)
    return binary.compile_launch_module(kmod, target, emit=emit)


def _lower_tile(tile, target: str, module: ir.Module, host: _Host, specs: list,
                emit: str = "bin") -> None:
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
            name = host.fresh("t")
            out_names.append(name)
            host.plan.buffers.append(Buffer(name, tuple(mt.shape), _dtype(r.type), "temp"))
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
            host.plan.launches.append(Launch(spec, tuple(bound)))
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


def _results(ret: ir.Operation, host: _Host) -> None:
    plan = host.plan
    seen = set()
    for i, v in enumerate(ret.operands):
        name = _buffer_of(v, host)
        storage = plan.aliases.get(name, name)
        buf = plan.buffer(storage)
        if buf.kind == "temp" and storage not in seen:
            plan.buffers[plan.buffers.index(buf)] = Buffer(buf.name, buf.shape, buf.dtype,
                                                           "output", i)
            seen.add(storage)
            plan.results.append(name)
        else:       # an input, a weight, or a buffer already returned: copy it out
            out = f"out{i}"
            plan.buffers.append(Buffer(out, buf.shape, buf.dtype, "output", i))
            plan.copies.append(Copy(storage, out))
            plan.results.append(out)


def lower_module(module, target: str = "sm_90", emit: str = "bin") \
        -> tuple[object, HostPlan | None]:
    """Lower every tile of every function of ``module`` in place; return (module, plan of the
    first function holding tiles). :func:`lower_module_plans` gives every function's plan.
    ``emit="ptx"`` keeps PTX text instead of cubins (NVIDIA targets; ``--emit ptx``)."""
    module, plans = lower_module_plans(module, target, emit)
    return module, (next(iter(plans.values())) if plans else None)


def lower_module_plans(module, target: str = "sm_90", emit: str = "bin") \
        -> tuple[object, dict[str, HostPlan]]:
    """Lower in place; return (module, {function name: HostPlan}).

    Kernels are built and compiled in a private Context holding a copy of the module: nested
    pass managers cannot run in the Context of a pass that is running (MLIR asserts while it is
    in multi-threaded execution), and ``quartet-lower-gpu`` is such a pass. Only the host
    rewrite, which builds ops without running passes, happens in the caller's Context.
    """
    binary.get_target(target)
    op = module.operation if hasattr(module, "operation") else module
    body = op.regions[0].blocks[0]
    fns = [o for o in body.operations if o.operation.name == "func.func"]
    if not any(_tiles_of(fn) for fn in fns):
        return module, {}
    compiled = _compile_all(op, target, emit)
    plans: dict[str, HostPlan] = {}

    class _Holder:    # what _insert_binary needs: the module's block
        pass

    holder = _Holder()
    holder.body = body
    with op.context, ir.Location.unknown():
        for fn in fns:
            plan = lower_function(fn, target, holder, compiled, emit)
            if plan is not None:
                plans[plan.function] = plan
        op.attributes["gpu.container_module"] = ir.UnitAttr.get()
    return module, plans


def _compile_all(op: ir.Operation, target: str, emit: str = "bin") -> list:
    """KernelSpecs of every tile, in walk order, compiled in a private Context."""
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
