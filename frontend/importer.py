"""Import a PyTorch module to linalg on tensors, with its weights as function arguments.

This is the front door of the data flow in DESIGN.md: ``torch.nn.Module`` -> torch-mlir's fx
importer -> linalg on tensors (with tensor/arith/math/scf/func). Every compiler in Quartet
(Roller, Welder, Grinder, Rammer) starts from the text this module produces.

What it does, in order:

1. ``torch.export.export`` the module on the example inputs (non-strict), then
   ``run_decompositions`` with torch-mlir's table plus one override: ``var_mean`` is decomposed
   in the input's own precision (torch-mlir would compute variances in f64, which GPU kernels
   should not inherit), and inference batch norm is one per-channel scale and shift
   (:func:`_batch_norm_inference`).
2. Every lifted placeholder stays a function argument: user inputs first (in ``forward``'s
   order), then parameters and buffers in ``module.state_dict()`` order, then lifted constant
   tensors and non-persistent buffers. Model weights are thus runtime buffers, never
   constants in the IR. (torch-mlir's ``import_frozen_program`` would inline them as
   ``dense_resource`` literals; we import the exported graph module itself, so placeholders
   become block arguments.)
3. Import with torch-mlir's ``FxImporter`` and the node importer of :mod:`.control_flow`
   (``torch.cond`` -> ``torch.prim.If``, a closure-aware ``while_loop``), then run
   ``torchdynamo-export-to-torch-backend-pipeline`` and
   ``torch-backend-to-linalg-on-tensors-backend-pipeline``.
4. Check that only upstream dialects remain, cross to the upstream ``mlir`` bindings as text
   and parse there. torch-mlir objects never leave this module.

Anything torch-mlir cannot import or lower becomes a one-line :class:`QuartetError` naming the
op and the line of the user's model it came from (taken from the fx node's ``stack_trace``).

Assumes: inference (no parameter or buffer mutation, e.g. BatchNorm in eval mode), static
shapes, tensor example inputs.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.export
from torch.export.graph_signature import InputKind, OutputKind, TensorArgument

from mlir import ir as mlir_ir

from quartet.errors import QuartetError

from torch_mlir import ir as torch_ir
from torch_mlir.dialects import torch as torch_d
from torch_mlir.extras.fx_importer import ContextCache, FxImporter
from torch_mlir.ir import Location

from . import bounds_checks, decompositions, guards
from .bounds_checks import IndexCheck
from .control_flow import ControlFlowGraphNodeImporter
from .export import export_model
from .export import first_line as _first_line
from .export import module_location as _module_location
from .export import node_location
from .export import pick_user_frame as _pick_user_frame
from .export import traceback_location as _traceback_location

# The dialects a Quartet program in linalg form may hold.
UPSTREAM_DIALECTS = frozenset({"builtin", "func", "linalg", "tensor", "arith", "math", "scf"})

_INT64_MAX = torch.iinfo(torch.int64).max

_TORCH_BACKEND_PIPELINE = (
    "builtin.module(func.func(torch-match-quantized-custom-ops), "
    "torchdynamo-export-to-torch-backend-pipeline)"
)
_LINALG_BACKEND_PIPELINE = (
    "builtin.module(torch-backend-to-linalg-on-tensors-backend-pipeline{allow-non-finites=true})"
)

_LOC_FRAME = re.compile(r'"([^"]+)":(\d+):(\d+)')


# ------------------------------------------------------------------------------------------
# What the import hands back
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FunctionArgument:
    """One argument of the imported function.

    ``kind`` is ``"input"`` (given by the caller at every call), ``"parameter"``, ``"buffer"``
    or ``"constant"`` (a lifted tensor constant). For all kinds but ``"input"``, ``value`` holds
    the tensor as numpy (bf16 as its raw ``uint16`` bits) and ``name`` is its state-dict key
    (or the constant's name); for inputs ``name`` is the ``forward`` argument name.
    ``dtype`` is the MLIR element type (``f32``, ``f16``, ``bf16``, ``i64``, ``i1``, ...).
    """

    index: int
    kind: str
    name: str
    shape: tuple[int, ...]
    dtype: str
    value: np.ndarray | None = None

    @property
    def is_input(self) -> bool:
        return self.kind == "input"


@dataclass(frozen=True)
class TensorResult:
    shape: tuple[int, ...]
    dtype: str


@dataclass
class ImportedProgram:
    """A model in linalg-on-tensors form plus everything needed to call it.

    ``mlir_text`` is the module as upstream MLIR text, with source locations (``loc(...)``) of
    the user's model code. The function ``func_name`` takes ``arguments`` in order: user inputs
    first, then weights (see :func:`import_module`). It returns ``results`` (the model's
    outputs), then one 0-d ``i32`` flag per entry of ``checks`` (index bounds checks,
    :mod:`.bounds_checks`): a program must report a set flag, not return the outputs.
    """

    mlir_text: str
    func_name: str
    arguments: list[FunctionArgument]
    results: list[TensorResult]
    checks: list[IndexCheck] = field(default_factory=list)
    _parsed: dict = field(default_factory=dict, repr=False)

    @property
    def inputs(self) -> list[FunctionArgument]:
        return [a for a in self.arguments if a.kind == "input"]

    @property
    def weights(self) -> list[FunctionArgument]:
        """Parameters, buffers and constants: the runtime buffers the artifact stores."""
        return [a for a in self.arguments if a.kind != "input"]

    def weight_values(self) -> dict[str, np.ndarray]:
        return {a.name: a.value for a in self.weights}

    def parse(self, context: mlir_ir.Context | None = None) -> mlir_ir.Module:
        """The program as an upstream ``mlir.ir.Module`` (in ``context``, or a fresh one)."""
        context = context or mlir_ir.Context()
        return mlir_ir.Module.parse(self.mlir_text, context)

    def text(self, *, locations: bool = False) -> str:
        """The IR as text, without ``loc(...)`` unless asked for."""
        if locations:
            return self.mlir_text
        with mlir_ir.Context() as ctx:
            module = mlir_ir.Module.parse(self.mlir_text, ctx)
            return module.operation.get_asm(enable_debug_info=False)


# ------------------------------------------------------------------------------------------
# Source locations
# ------------------------------------------------------------------------------------------


def mlir_location(loc) -> str | None:
    """``file:line`` of the user's code from a torch-mlir Location (a callsite chain)."""
    frames = [(f, int(line)) for f, line, _ in _LOC_FRAME.findall(str(loc))]
    return _pick_user_frame(frames)


# ------------------------------------------------------------------------------------------
# Node importer: control flow plus errors that name the op and where it came from
# ------------------------------------------------------------------------------------------


class _NodeImporter(ControlFlowGraphNodeImporter):
    __slots__ = []

    def _import_hop(self, loc, node, hop):
        name = hop.name()
        if getattr(self, f"_import_hop_{name}", None) is None:
            raise QuartetError(
                f"unsupported higher-order op '{name}' (Quartet imports cond and while_loop)",
                node_location(node),
            )
        super()._import_hop(loc, node, hop)

    def _import_torch_op_overload(self, loc, node, concrete_target=None):
        try:
            super()._import_torch_op_overload(loc, node, concrete_target)
        except (NotImplementedError, KeyError, TypeError, AssertionError) as e:
            target = concrete_target or node.target
            raise QuartetError(
                f"unsupported op '{_op_name(target)}': torch-mlir cannot import it "
                f"({_first_line(e)})",
                node_location(node),
            ) from e


class _UserFrameContextCache(ContextCache):
    """Locations of imported ops: the user's ``file:line`` only.

    torch-mlir's default is the whole call stack as a callsite chain whose innermost frame is
    usually inside torch (``torch/nn/modules/linear.py``) or generated code
    (``<eval_with_key>``); every later error (``quartet.errors.location_of``) would point there.
    """

    __slots__ = []

    def get_node_location(self, node):
        where = node_location(node)
        if where is None:
            return super().get_node_location(node)
        filename, line = where.rsplit(":", 1)
        return Location.file(filename, int(line), 0, context=self._c)


class _FxImporter(FxImporter):
    __slots__ = []

    def __init__(self, *, context):
        super().__init__(context=context, graph_node_importer_cls=_NodeImporter)
        self._cc = _UserFrameContextCache(context, py_attr_tracker=self._py_attr_tracker)


def _op_name(target) -> str:
    name = getattr(target, "name", None)
    if callable(name):
        return name().replace("::", ".")
    return str(target)


# ------------------------------------------------------------------------------------------
# Export
# ------------------------------------------------------------------------------------------


def _var_mean_same_precision(x, dim=None, *, correction=None, keepdim=False):
    """``aten.var_mean.correction`` in the input's precision (two-pass: mean, then deviations);
    float16/bfloat16 in float32, rounded once, as eager does (in bfloat16 the variance was 2%
    off: the OpInfo test, issue 18)."""
    if x.dtype in (torch.float16, torch.bfloat16):
        var, mean = _var_mean_same_precision(x.float(), dim, correction=correction,
                                             keepdim=keepdim)
        return var.to(x.dtype), mean.to(x.dtype)
    dims = list(range(x.dim())) if not dim else [d % max(x.dim(), 1) for d in dim]
    mean = torch.mean(x, dims, keepdim=True)
    deviation = x - mean
    count = 1
    for d in dims:
        count *= x.shape[d]
    divisor = max(count - (1 if correction is None else correction), 0)
    var = torch.sum(deviation * deviation, dims, keepdim=keepdim) / divisor
    if not keepdim:
        mean = torch.squeeze(mean, dims)
    return var, mean


def _batch_norm_inference(x, weight, bias, mean, var, momentum, eps):
    """``aten._native_batch_norm_legit_no_training`` as one scale and one shift per channel.

    ``x * s + t`` with ``s = weight / sqrt(var + eps)`` and ``t = bias - mean * s`` computed
    on the channel vectors (in f32 for f16/bf16 models): two ops on the activation where the
    stock decomposition has four, and a third of its graph nodes (issue 16: the export's
    retrace dominated DenseNet-121's import). The saved mean and inverse std are empty, as in
    the stock kernel in eval mode.
    """
    vector_type = torch.float32 if mean.dtype in (torch.float16, torch.bfloat16) else mean.dtype

    def vector(v):
        return v if v.dtype == vector_type else v.to(vector_type)

    def activation(v):
        v = v.reshape([1, -1] + [1] * (x.dim() - 2))
        return v if v.dtype == x.dtype else v.to(x.dtype)

    scale = torch.rsqrt(vector(var) + eps)
    if weight is not None:
        scale = scale * vector(weight)
    shift = vector(mean) * scale
    shift = -shift if bias is None else vector(bias) - shift
    out = x * activation(scale) + activation(shift)
    empty = x.new_zeros((0,))
    return out, empty, empty


def _decomposition_table(upcast=()):
    from torch_mlir.extras.fx_decomp_util import get_decomposition_table

    table = dict(get_decomposition_table())
    table[torch.ops.aten.var_mean.correction] = _var_mean_same_precision
    table[torch.ops.aten._native_batch_norm_legit_no_training.default] = _batch_norm_inference
    table.update(decompositions.overrides(table))    # frontend/decompositions.py (issue 18)
    table.update(decompositions.upcasting(upcast))
    return table


def _decompose(module: torch.nn.Module, exported: torch.export.ExportedProgram,
               upcast=()) -> torch.export.ExportedProgram:
    """The exported program with torch-mlir's decompositions and Quartet's overrides."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return exported.run_decompositions(_decomposition_table(upcast))
    except QuartetError:
        raise
    except Exception as e:  # torch.export raises many kinds; all mean "this model won't export"
        raise QuartetError(
            f"torch.export failed for {type(module).__name__}: {_first_line(e)}",
            _traceback_location(e) or _module_location(module),
        ) from e


# ------------------------------------------------------------------------------------------
# Arguments: which placeholder is what, in which order
# ------------------------------------------------------------------------------------------

_TORCH_TO_MLIR_DTYPE = {
    torch.float32: "f32",
    torch.float16: "f16",
    torch.bfloat16: "bf16",
    torch.float64: "f64",
    torch.int64: "i64",
    torch.int32: "i32",
    torch.int16: "i16",
    torch.int8: "i8",
    torch.uint8: "ui8",
    torch.bool: "i1",
}


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    tensor = tensor.detach().cpu().contiguous()
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.uint16).numpy().copy()
    return tensor.numpy().copy()


@dataclass
class _Placeholder:
    node: torch.fx.Node
    kind: str
    name: str
    value: torch.Tensor | None


def _classify_placeholders(
    module: torch.nn.Module, program: torch.export.ExportedProgram
) -> list[_Placeholder]:
    """The exported graph's placeholders in Quartet's argument order.

    User inputs first, then parameters and buffers in ``module.state_dict()`` order, then
    lifted constants and non-persistent buffers in the order torch.export lists them.
    """
    signature = program.graph_signature
    for spec in signature.output_specs:
        if spec.kind == OutputKind.USER_INPUT_MUTATION:
            raise QuartetError(
                f"{type(module).__name__} writes its input '{spec.target}' in place; a Quartet "
                "program never writes its inputs (compute a new tensor: x = x + y, not x += y)",
                _module_location(module),
            )
        if spec.kind in (OutputKind.BUFFER_MUTATION, OutputKind.PARAMETER_MUTATION):
            raise QuartetError(
                f"{type(module).__name__} mutates '{spec.target}' in forward; Quartet compiles "
                "inference graphs (call .eval() first, or do not update state in forward)",
                _module_location(module),
            )
    _reject_side_effects(module, program)
    nodes = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    inputs, state, others = [], [], []
    for spec in signature.input_specs:
        if not isinstance(spec.arg, TensorArgument):
            raise QuartetError(
                f"{type(module).__name__}: non-tensor input '{spec.arg}' is not supported "
                "(pass tensors as example inputs)",
                _module_location(module),
            )
        node = nodes[spec.arg.name]
        if spec.kind == InputKind.USER_INPUT:
            inputs.append(_Placeholder(node, "input", spec.arg.name, None))
        elif spec.kind == InputKind.PARAMETER:
            state.append(_Placeholder(node, "parameter", spec.target,
                                      program.state_dict[spec.target]))
        elif spec.kind == InputKind.BUFFER and spec.persistent:
            state.append(_Placeholder(node, "buffer", spec.target,
                                      program.state_dict[spec.target]))
        elif spec.kind == InputKind.BUFFER:
            others.append(_Placeholder(node, "buffer", spec.target,
                                       program.constants[spec.target]))
        elif spec.kind == InputKind.CONSTANT_TENSOR:
            others.append(_Placeholder(node, "constant", spec.target,
                                       program.constants[spec.target]))
        else:
            raise QuartetError(
                f"{type(module).__name__}: input kind {spec.kind.name} is not supported",
                _module_location(module),
            )
    order = {key: i for i, key in enumerate(module.state_dict(keep_vars=True).keys())}
    state.sort(key=lambda p: order.get(p.name, len(order)))
    return inputs + state + others


def _reject_side_effects(module: torch.nn.Module, program: torch.export.ExportedProgram) -> None:
    """Ops with side effects (e.g. linalg's error checks) are threaded through effect tokens."""
    for node in program.graph.nodes:
        if node.op == "call_function" and node.target is torch.ops.higher_order.with_effects:
            raise QuartetError(
                f"unsupported op '{_op_name(node.args[1])}': it has side effects",
                node_location(node) or _module_location(module),
            )


def _reject_dynamic_shapes(gm: torch.fx.GraphModule) -> None:
    """Quartet compiles static shapes; a value-dependent shape (``x[x > 0]``) is a user error."""
    for node in gm.graph.nodes:
        vals = node.meta.get("val")
        for val in vals if isinstance(vals, (list, tuple)) else (vals,):
            if isinstance(val, torch.Tensor) and \
                    not all(isinstance(d, int) for d in val.shape):
                raise QuartetError(
                    f"op '{_op_name(node.target)}' gives a tensor of shape "
                    f"{list(val.shape)} that depends on tensor values; Quartet compiles "
                    "static shapes",
                    node_location(node),
                )
    for child in gm.children():
        if isinstance(child, torch.fx.GraphModule):
            _reject_dynamic_shapes(child)


def _reorder_placeholders(graph: torch.fx.Graph, ordered: list[_Placeholder]) -> None:
    anchor = next(n for n in graph.nodes if n.op != "placeholder")
    for p in ordered:
        anchor.prepend(p.node)


# ------------------------------------------------------------------------------------------
# torch-mlir: import, lower, check
# ------------------------------------------------------------------------------------------


def _run_torch_mlir_pipeline(module, pipeline: str, stage: str) -> None:
    """Run a torch-mlir pipeline; its first error diagnostic becomes a QuartetError.

    Errors reach a handler (``emit_error_diagnostics``, as torch-mlir itself runs its passes:
    some passes emit errors without signalling failure), so nothing is printed.
    """
    from torch_mlir.ir import DiagnosticSeverity, MLIRError
    from torch_mlir.passmanager import PassManager

    errors = []

    def on_diagnostic(diag) -> bool:
        if diag.severity == DiagnosticSeverity.ERROR:
            errors.append((diag.location, diag.message, [n.message for n in diag.notes]))
        return True

    with module.context as ctx:
        ctx.emit_error_diagnostics = True
        handler = ctx.attach_diagnostic_handler(on_diagnostic)
        try:
            PassManager.parse(pipeline).run(module.operation)
            failure = None
        except MLIRError as e:
            failure = e
        finally:
            handler.detach()
    if failure is not None or errors:
        raise guards.name_unlowered_op(module, _lowering_error(errors, failure, stage))


_QUOTED_OP = re.compile(r"'((?:torch|aten|prim|tm_tensor|torch_c)\.[\w.]+)'")


def _lowering_error(errors, failure, stage: str) -> QuartetError:
    if not errors:
        return QuartetError(f"torch-mlir {stage} failed: {_first_line(failure)}")
    location, message, notes = errors[0]
    message = message.splitlines()[0]
    op = next((m.group(1) for t in [message] + notes for m in [_QUOTED_OP.search(t)] if m), None)
    if op is not None:
        text = f"unsupported op '{op}': torch-mlir cannot lower it ({stage})"
    else:
        text = f"torch-mlir {stage} failed: {message}"
    return QuartetError(text, mlir_location(location))


def _check_torch_operators(module) -> None:
    """``torch.operator "name"`` is what the importer emits for an op the torch dialect lacks."""
    for op in _walk(module.operation):
        if op.name == "torch.operator":
            name = str(op.attributes["name"]).strip('"')
            raise QuartetError(
                f"unsupported op '{name}': torch-mlir has no torch-dialect op for it",
                mlir_location(op.location),
            )


# Runtime checks torch-mlir adds where PyTorch has none: ``reciprocal`` asserts a non-zero
# input, where PyTorch (and the ``1 / x`` it lowers to) gives inf. Removed, so that e.g.
# BatchNorm's ``1 / sqrt(var + eps)`` stays plain linalg.
_SUPERFLUOUS_ASSERTS = frozenset({"unimplemented: tensor with zero element"})


def _drop_superfluous_asserts(module) -> None:
    doomed = [op for op in _walk(module.operation)
              if op.name == "cf.assert"
              and str(op.attributes["msg"]).strip('"') in _SUPERFLUOUS_ASSERTS]
    for op in doomed:
        op.erase()


def _check_upstream_only(module) -> None:
    for op in _walk(module.operation):
        dialect = op.name.split(".", 1)[0]
        if dialect not in UPSTREAM_DIALECTS:
            raise QuartetError(
                f"unsupported op '{op.name}': torch-mlir lowers it outside linalg on tensors",
                mlir_location(op.location),
            )


def _check_loops(module) -> None:
    """A counted loop up to INT64_MAX is a while_loop torch-mlir took for a for loop."""
    for op in _walk(module.operation):
        if op.name != "scf.for":
            continue
        bound = op.operands[1].owner
        if getattr(bound, "name", "") == "arith.constant" and \
                str(bound.attributes["value"]).startswith(str(_INT64_MAX)):
            raise RuntimeError(
                "torch-mlir lowered a while_loop to a counted loop that ignores its condition "
                f"(at {mlir_location(op.location)}); see control_flow._initial_condition"
            )


def _walk(operation) -> list:
    """Every op nested in ``operation`` (not itself), parents before children, as plain
    ``Operation`` objects: ``Operation.walk`` makes no op views, so walking does not import the
    Python modules of the dialects it meets (torch-mlir's ``linalg`` module alone took about
    half a second of CPU to import; issue 14)."""
    found = []

    def visit(op):
        found.append(op)
        return torch_ir.WalkResult.ADVANCE

    operation.walk(visit, torch_ir.WalkOrder.PRE_ORDER)
    return found[1:]


def _import_to_linalg(gm: torch.fx.GraphModule, func_name: str) \
        -> tuple[str, list[tuple[str, str | None]]]:
    context = torch_ir.Context()
    torch_d.register_dialect(context)
    importer = _FxImporter(context=context)
    try:
        importer.import_graph_module(gm, func_name=func_name)
    except QuartetError:
        raise
    except NotImplementedError as e:
        raise QuartetError(f"torch-mlir cannot import the model: {_first_line(e)}") from e
    module = importer.module
    _check_torch_operators(module)
    _run_torch_mlir_pipeline(module, _TORCH_BACKEND_PIPELINE, "torch backend lowering")
    op_names = bounds_checks.indexing_ops_by_location(module)
    _run_torch_mlir_pipeline(module, _LINALG_BACKEND_PIPELINE, "linalg lowering")
    _drop_superfluous_asserts(module)
    flags = _rewrite_bounds_checks(module, op_names)
    _expand_integer_abs(module)
    _check_upstream_only(module)
    _check_loops(module)
    return _inline_small_resources(module.operation.get_asm(enable_debug_info=True)), flags


_RESOURCE = re.compile(r'^\s*([\w.$-]+): "0x([0-9A-Fa-f]+)",?$', re.MULTILINE)
_INLINE_LIMIT = 1 << 16   # bytes


def _inline_small_resources(text: str) -> str:
    """``dense_resource<name>`` constants that torch-mlir's lowering makes (e.g. the index
    tensors of a grouped convolution; never the weights, which are arguments) -> ``dense<"0x..">``
    literals, so that every later stage can read their values (the GPU host plan stores tensor
    constants as weights; issue 16, ConvNeXt). A blob's first 4 bytes are its alignment."""
    start = text.find("{-#")
    if start < 0:
        return text
    body, resources = text[:start], text[start:]
    kept = []
    for m in _RESOURCE.finditer(resources):
        name, blob = m.group(1), m.group(2)
        if len(blob) // 2 - 4 > _INLINE_LIMIT:
            kept.append(m.group(0))
            continue
        body = body.replace(f"dense_resource<{name}>", f'dense<"0x{blob[8:]}">')
    if kept:
        return body + "{-#\n  dialect_resources: {\n    builtin: {\n" + \
            ",\n".join(k.rstrip(",") for k in kept) + "\n    }\n  }\n#-}\n"
    return body


def _expand_integer_abs(module) -> None:
    """``math.absi x`` -> ``arith.maxsi(x, 0 - x)``: the NVVM conversion has no pattern for
    ``math.absi`` (T5's relative position buckets take the absolute value of an integer)."""
    doomed = [op for op in _walk(module.operation) if op.name == "math.absi"]
    if not doomed:
        return
    from torch_mlir.dialects import arith

    with module.context:
        for op in doomed:
            x = op.operands[0]
            with op.location, torch_ir.InsertionPoint(op):
                zero = arith.ConstantOp(x.type, torch_ir.IntegerAttr.get(x.type, 0)).result
                value = arith.MaxSIOp(x, arith.SubIOp(zero, x).result).result
            op.results[0].replace_all_uses_with(value)
            op.erase()


def _rewrite_bounds_checks(module, op_names) -> list[tuple[str, str | None]]:
    """torch-mlir's index asserts -> flag results the runtime reads (frontend/bounds_checks.py)."""
    if not any(op.name == "cf.assert" for op in _walk(module.operation)):
        return []
    from torch_mlir.dialects import arith, linalg, tensor

    with module.context:
        return bounds_checks.rewrite(module, torch_ir,
                                     {"arith": arith, "linalg": linalg, "tensor": tensor},
                                     op_names, mlir_location)


# ------------------------------------------------------------------------------------------
# The entry point
# ------------------------------------------------------------------------------------------


def _type_info(t) -> tuple[tuple[int, ...], str]:
    tensor = mlir_ir.RankedTensorType(t)
    return tuple(tensor.shape), str(tensor.element_type)


def import_module(
    module: torch.nn.Module, example_inputs: tuple, *, func_name: str = "forward",
    _upcast: tuple = (),
) -> ImportedProgram:
    """Import ``module`` called on ``example_inputs`` to linalg on tensors.

    The function ``func_name`` takes, in order: the user inputs (``forward``'s arguments), then
    the parameters and buffers in ``module.state_dict()`` order, then any lifted constant
    tensors. ``ImportedProgram.arguments`` says which is which and holds the weights' values.
    Raises :class:`QuartetError` (one line, with the model's file:line) for what cannot import.
    """
    if not isinstance(example_inputs, tuple):
        example_inputs = (example_inputs,)
    return import_exported(module, export_model(module, example_inputs), func_name=func_name,
                           _upcast=_upcast)


def import_exported(
    module: torch.nn.Module, exported: torch.export.ExportedProgram, *,
    func_name: str = "forward", _upcast: tuple = (),
) -> ImportedProgram:
    """:func:`import_module` from the program ``export.export_model`` gave for ``module``."""
    program = _decompose(module, exported, _upcast)
    placeholders = _classify_placeholders(module, program)
    gm = program.graph_module
    _reject_dynamic_shapes(gm)
    boundary = guards.prepare_graph(gm, node_location)   # refusals, uint8 (issue 18)
    _reorder_placeholders(gm.graph, placeholders)
    try:
        text, flags = guards.translating_torch_mlir_errors(_import_to_linalg, gm, func_name)
    except QuartetError as e:     # a half-precision op torch-mlir cannot lower: once in f32
        upcast = () if _upcast else guards.half_ops_to_upcast(e, gm)
        if not upcast:
            raise
        return import_exported(module, exported, func_name=func_name, _upcast=upcast)

    with mlir_ir.Context() as ctx:
        try:
            parsed = mlir_ir.Module.parse(text, ctx)
        except mlir_ir.MLIRError as e:  # would be a torch-mlir / upstream mismatch: a bug
            raise RuntimeError(f"upstream MLIR rejects torch-mlir's output: {e}") from e
        func = next(op for op in parsed.body.operations
                    if op.operation.name == "func.func"
                    and mlir_ir.StringAttr(op.attributes["sym_name"]).value == func_name)
        ftype = mlir_ir.FunctionType(mlir_ir.TypeAttr(func.attributes["function_type"]).value)
        arg_types = [_type_info(t) for t in ftype.inputs]
        results = [TensorResult(*boundary.result_type(i, *_type_info(t)))
                   for i, t in enumerate(ftype.results)]
    n_user = len(results) - len(flags)
    checks = [IndexCheck(n_user + k, message, where) for k, (message, where) in enumerate(flags)]
    results = results[:n_user]

    if len(arg_types) != len(placeholders):
        raise RuntimeError(
            f"imported function has {len(arg_types)} arguments for {len(placeholders)} placeholders"
        )
    arguments = []
    for i, (p, (shape, dtype)) in enumerate(zip(placeholders, arg_types)):
        value = None if p.value is None else _to_numpy(p.value)
        shape, dtype = boundary.argument_type(p.node, shape, dtype)
        arguments.append(FunctionArgument(i, p.kind, p.name, shape, dtype, value))
    return ImportedProgram(text, func_name, arguments, results, checks)
