"""8-bit integers in the exported graph, computed as ``int16`` (issue 18).

torch-mlir lowers ``ui8`` tensors to signless ``i8`` and then picks signed or unsigned
operations op by op: ``x.to(torch.int32)`` extends with ``extui`` (right), ``x.sum()`` with
``extsi`` and ``x.byte()`` of a float with ``fptosi`` to ``i8`` (both wrong: ``[0, 127, 128, 200,
255]`` came back as ``[0, 127, -128, -56, -1]``). No signless ``i8`` op can tell which one the
graph meant. And ``si8`` element-wise division (``x // 3``, ``remainder``) kills the process
inside torch-mlir's ``ConvertElementwiseOp`` (SIGSEGV). So the fx graph is rewritten before
import, where the dtypes are still known:

* every ``uint8`` or ``int8`` value is computed as ``int16``, where every value of both types is
  exact and every operation torch-mlir picks is right: an 8-bit placeholder (input, weight,
  constant) is converted once (``ui8 -> i16``: torch-mlir's ``extui``; ``si8``: ``extsi``), and
  every 8-bit dtype named in an op's arguments (``_to_copy(dtype=uint8)``, ``full(...,
  dtype=int8)``, ``sum(dtype=uint8)``) becomes ``int16``;
* the wrap-around of 8-bit arithmetic (``255 + 1 == 0`` in uint8, ``127 + 1 == -128`` in int8,
  a float past the range converted) is kept by wrapping each computed value back into its 8-bit
  range: a conversion to the 8-bit type and back (``trunci`` then ``extui``/``extsi``). ``int16``
  arithmetic wraps modulo 2**16, so its low eight bits are those of the 8-bit result. Ops that
  only move or select values are not wrapped (:data:`_RANGE_KEEPING`);
* an 8-bit graph output is converted back to its type (``trunci``: the same bits), and a
  ``uint8`` boundary is recorded as ``ui8`` (:func:`output_dtypes`, ``guards.Boundary``), so
  callers give and get ``uint8`` tensors.

Other unsigned types (``uint16``/``uint32``/``uint64``: few ATen kernels exist for them, and
torch-mlir cannot hash a ``uint64`` constant) are refused with an error naming the op.

Assumes: an exported, functional ATen graph whose nodes carry fake tensors in ``meta["val"]``.
"""

from __future__ import annotations

import torch
from torch.fx.passes.fake_tensor_prop import FakeTensorProp

from quartet.errors import QuartetError

_WIDE = torch.int16
_NARROW = (torch.uint8, torch.int8)
_UNSUPPORTED = {torch.uint16: "uint16", torch.uint32: "uint32", torch.uint64: "uint64"}

_aten = torch.ops.aten

#: ops that only move or select values of their operands: an 8-bit result needs no wrapping
#: (wrapping is always right, since it keeps the low eight bits; these just do not need it)
_RANGE_KEEPING = frozenset({
    _aten.view.default, _aten._unsafe_view.default, _aten.reshape.default,
    _aten.permute.default, _aten.transpose.int, _aten.t.default, _aten.expand.default,
    _aten.squeeze.dim, _aten.squeeze.dims, _aten.squeeze.default, _aten.unsqueeze.default,
    _aten.slice.Tensor, _aten.select.int, _aten.clone.default, _aten.alias.default,
    _aten.cat.default, _aten.stack.default, _aten.flip.default, _aten.roll.default,
    _aten.gather.default, _aten.index.Tensor, _aten.index_select.default, _aten.where.self,
    _aten.maximum.default, _aten.minimum.default, _aten.amax.default, _aten.amin.default,
    _aten.max.default, _aten.min.default, _aten.constant_pad_nd.default, _aten.repeat.default,
    _aten.bitwise_and.Tensor, _aten.bitwise_and.Scalar, _aten.bitwise_or.Tensor,
    _aten.bitwise_xor.Tensor, _aten._assert_tensor_metadata.default,
    _aten.lift_fresh_copy.default,
})


def _dtypes(val) -> list:
    vals = val if isinstance(val, (list, tuple)) else (val,)
    return [v.dtype for v in vals if isinstance(v, torch.Tensor)]


def _op_name(target) -> str:
    name = getattr(target, "name", None)
    return name().replace("::", ".") if callable(name) else str(target)


def check_unsigned(gm: torch.fx.GraphModule, where) -> None:
    """A QuartetError for the first node holding a uint16/32/64 tensor or dtype argument."""
    for node in gm.graph.nodes:
        named = [a for a in list(node.args) + list(node.kwargs.values())
                 if isinstance(a, torch.dtype)]
        for dtype in _dtypes(node.meta.get("val")) + named:
            if dtype in _UNSUPPORTED:
                what = (f"input '{node.target}'" if node.op == "placeholder"
                        else f"op '{_op_name(node.target)}'")
                raise QuartetError(f"{what} uses {_UNSUPPORTED[dtype]} tensors; Quartet "
                                   f"supports uint8 as its only unsigned type", where(node))


def _replace_dtype(value):
    if value in _NARROW:
        return _WIDE
    if isinstance(value, (list, tuple)):
        return type(value)(_replace_dtype(v) for v in value)
    return value


def _narrow_type(node: torch.fx.Node):
    """The 8-bit dtype of ``node``'s one tensor value, or None."""
    val = node.meta.get("val")
    if isinstance(val, torch.Tensor) and val.dtype in _NARROW:
        return val.dtype
    return None


def widen(gm: torch.fx.GraphModule) -> bool:
    """Rewrite ``gm`` in place so that 8-bit integer values are computed as int16 (module
    docstring); True when anything changed. Fake values in ``meta`` are recomputed."""
    graph = gm.graph
    narrow = {n: _narrow_type(n) for n in graph.nodes if _narrow_type(n) is not None}
    named = [n for n in graph.nodes if n.op == "call_function" and any(
        _replace_dtype(a) is not a for a in list(n.args) + list(n.kwargs.values()))]
    tuples = [n for n in graph.nodes if any(d in _NARROW for d in _dtypes(n.meta.get("val")))
              and isinstance(n.meta.get("val"), (list, tuple))]
    if not narrow and not named and not tuples:
        return False
    output = next(n for n in graph.nodes if n.op == "output")
    was = output_dtypes(gm)
    for node in named:
        node.args = _replace_dtype(node.args)
        node.kwargs = {k: _replace_dtype(v) for k, v in node.kwargs.items()}
    for node, dtype in narrow.items():
        if node.op == "placeholder":
            _convert_after(graph, node, _WIDE)
        elif node.op == "call_function" and node.target not in _RANGE_KEEPING:
            _wrap_after(graph, node, dtype)
    outs = output.args[0]
    flat = outs if isinstance(outs, (list, tuple)) else (outs,)
    fixed = []
    for value, dtype in zip(flat, was):
        if dtype in _NARROW:
            with graph.inserting_before(output):
                value = graph.call_function(_aten._to_copy.default, (value,), {"dtype": dtype})
        fixed.append(value)
    output.args = (type(outs)(fixed) if isinstance(outs, (list, tuple)) else fixed[0],)
    graph.lint()
    gm.recompile()
    _propagate(gm)
    return True


def _convert_after(graph, node, dtype) -> None:
    with graph.inserting_after(node):
        conv = graph.call_function(_aten._to_copy.default, (node,), {"dtype": dtype})
    node.replace_all_uses_with(conv, delete_user_cb=lambda user: user is not conv)


def _wrap_after(graph, node, dtype) -> None:
    """``node``'s int16 value wrapped into ``dtype``'s range: to ``dtype`` and back."""
    with graph.inserting_after(node):
        narrow = graph.call_function(_aten._to_copy.default, (node,), {"dtype": dtype})
    with graph.inserting_after(narrow):
        wide = graph.call_function(_aten._to_copy.default, (narrow,), {"dtype": _WIDE})
    node.replace_all_uses_with(wide, delete_user_cb=lambda user: user is not narrow)
    for new in (narrow, wide):
        new.meta.update({k: v for k, v in node.meta.items()
                         if k not in ("val", "tensor_meta")})


def _propagate(gm: torch.fx.GraphModule) -> None:
    """Recompute every node's fake value from the placeholders' (the importer reads types
    there)."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    vals = [n.meta["val"] for n in placeholders]
    mode = next((v.fake_mode for v in vals if hasattr(v, "fake_mode")), None)
    FakeTensorProp(gm, mode).propagate_dont_convert_inputs(*vals)
    for node in gm.graph.nodes:     # torch-mlir's importer reads tensor_meta before val
        if "tensor_meta" in node.meta or node.op == "call_function":
            meta = _tensor_meta(node.meta.get("val"))
            if meta is not None:
                node.meta["tensor_meta"] = meta


def _tensor_meta(val):
    from torch.fx.passes.shape_prop import _extract_tensor_metadata

    if isinstance(val, torch.Tensor):
        return _extract_tensor_metadata(val)
    if isinstance(val, (list, tuple)) and all(isinstance(v, torch.Tensor) for v in val):
        return type(val)(_extract_tensor_metadata(v) for v in val)
    return None


def output_dtypes(gm: torch.fx.GraphModule) -> list:
    """The torch dtype of each graph output (None for a non-tensor)."""
    output = next(n for n in gm.graph.nodes if n.op == "output")
    outs = output.args[0]
    flat = outs if isinstance(outs, (list, tuple)) else (outs,)
    return [v.meta["val"].dtype if isinstance(v, torch.fx.Node) and
            isinstance(v.meta.get("val"), torch.Tensor) else None for v in flat]
