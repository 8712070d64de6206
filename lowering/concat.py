"""``tensor.concat`` on the GPU: one gathering tile instead of host data movement (issue 16).

torch-mlir lowers ``torch.cat`` to ``tensor.concat``, which is no linalg op, so no tile holds
it and the host plan has no step for it (GoogLeNet's inception blocks, DenseNet's dense layers
and ViT's class token all concatenate). Like ``tensor.pad`` and non-contiguous slices
(``lowering/prepare.py``), it becomes a tile of its own: a ``linalg.generic`` over the
output whose body, for output index ``i`` along the concatenated dimension ``d``, reads every
source ``k`` at ``clamp(i - offset_k, 0, size_k - 1)`` (always in bounds) and selects the one
whose range holds ``i``. The SIMT fallback builder maps it onto blocks and threads; the reads
of the sources not selected hit the few clamped boundary elements, so the traffic is about one
read and one write per element.

Which concats get this tile is decided in ``lowering/prepare.py`` (issue 11): a concat whose
operands are contiguous runs of its result stays a host op, and the host plan gives it one
buffer that the producing tiles write in place (no copy, no kernel); the gathering tile is for
the rest (strided slices, and in a Rammer persistent kernel an operand that no tile of it
produces).

Assumes static shapes (as the rest of the GPU lowering).
"""

from __future__ import annotations

from mlir import ir

from quartet.errors import QuartetError, location_of
from quartet.dialects import remap


def _shape(t: ir.Type) -> list[int]:
    return list(ir.ShapedType(t).shape)


def _body(dim: int, rank: int, sources: list[ir.Type]) -> list[str]:
    lines = [f"%i{j} = linalg.index {j} : index" for j in range(rank)]
    lines.append("%zero = arith.constant 0 : index")
    offset, offsets = 0, []
    for k, t in enumerate(sources):
        size = _shape(t)[dim]
        offsets.append(offset)
        lines += [f"%off{k} = arith.constant {offset} : index",
                  f"%last{k} = arith.constant {size - 1} : index",
                  f"%rel{k} = arith.subi %i{dim}, %off{k} : index",
                  f"%low{k} = arith.maxsi %rel{k}, %zero : index",
                  f"%at{k} = arith.minsi %low{k}, %last{k} : index"]
        index = ", ".join(f"%at{k}" if j == dim else f"%i{j}" for j in range(rank))
        lines.append(f"%v{k} = tensor.extract %src{k}[{index}] : {t}")
        offset += size
    picked = f"%v{len(sources) - 1}"
    for k in reversed(range(len(sources) - 1)):
        lines += [f"%before{k} = arith.cmpi slt, %i{dim}, %off{k + 1} : index",
                  f"%pick{k} = arith.select %before{k}, %v{k}, {picked} : "
                  f"{ir.ShapedType(sources[k]).element_type}"]
        picked = f"%pick{k}"
    return lines + [f"linalg.yield {picked} : {ir.ShapedType(sources[0]).element_type}"]


def _static_source(v: ir.Value) -> ir.Value:
    """``v``, or the static tensor behind a ``tensor.cast`` to a dynamic type (``torch.roll``
    concatenates its two slices through such casts): the same data."""
    owner = v.owner
    if getattr(owner, "name", None) == "tensor.cast":
        source = owner.operands[0]
        if ir.RankedTensorType(source.type).has_static_shape:
            return source
    return v


def take_static_sources(op: ir.Operation) -> None:
    """Make concat ``op`` read the static tensors behind its operands' casts to dynamic types
    (:func:`_static_source`), erasing casts left unused."""
    for i, v in enumerate(op.operands):
        op.operands[i] = _static_source(v)
        if op.operands[i] != v and not any(True for _ in v.uses):
            v.owner.erase()


def outline_concat(op: ir.Operation) -> None:
    """Replace host op ``tensor.concat`` by a tile that gathers its output (module docstring)."""
    dim = ir.IntegerAttr(op.attributes["dim"]).value
    take_static_sources(op)
    if not all(ir.RankedTensorType(t).has_static_shape
               for t in [v.type for v in op.operands] + [op.results[0].type]):
        raise QuartetError("'tensor.concat' of dynamic shapes cannot be lowered for the GPU "
                           "(static shapes only)", location_of(op))
    sources = [v.type for v in op.operands]
    res_t = op.results[0].type
    rank = len(_shape(res_t))
    dims = ", ".join(f"d{i}" for i in range(rank))
    iters = ", ".join(['"parallel"'] * rank)
    elt = ir.ShapedType(res_t).element_type
    args = ", ".join(f"%src{k}: {t}" for k, t in enumerate(sources))
    body = "\n          ".join(_body(dim, rank, sources))
    text = f"""
func.func @concat({args}) -> {res_t} {{
  %t = "quartet.tile"() ({{
    %e = tensor.empty() : {res_t}
    %g = linalg.generic {{indexing_maps = [affine_map<({dims}) -> ({dims})>],
                         iterator_types = [{iters}]}} outs(%e : {res_t}) {{
        ^bb0(%out: {elt}):
          {body}
    }} -> {res_t}
    gpu.yield %g : {res_t}
  }}) : () -> {res_t}
  return %t : {res_t}
}}"""
    parsed = ir.Module.parse(text, op.context)
    fn = parsed.body.operations[0]
    entry = fn.regions[0].blocks[0]
    template = entry.operations[0]
    with ir.InsertionPoint(op), op.location:
        tile = template.operation.clone()
    remap(tile, dict(zip(entry.arguments, op.operands)))
    op.results[0].replace_all_uses_with(tile.results[0])
    op.erase()
