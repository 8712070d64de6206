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

Assumes static shapes (as the rest of the GPU lowering).
"""

from __future__ import annotations

from mlir import ir


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


def outline_concat(op: ir.Operation) -> None:
    """Replace host op ``tensor.concat`` by a tile that gathers its output (module docstring)."""
    dim = ir.IntegerAttr(op.attributes["dim"]).value
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
    args_to_sources = dict(zip(entry.arguments, op.operands))

    def remap(inner):
        inner = inner.operation
        for i, v in enumerate(inner.operands):
            if v in args_to_sources:
                inner.operands[i] = args_to_sources[v]
        return ir.WalkResult.ADVANCE

    tile.walk(remap)
    op.results[0].replace_all_uses_with(tile.results[0])
    op.erase()
