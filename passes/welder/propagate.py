"""Welder's tile propagation: from a group's output tile back to every tensor the group touches.

Welder (OSDI'23, section 3.1; the artifact's ``shape_inference``) runs backwards from an output
tile in reverse topological order. For each operator, the output tile gives integer ranges on
its parallel loops, each reduction loop takes its full range (a consumer inside the group needs
the whole reduction before it can finish), the interval bounds of each input's index
expressions give that input's tile, and the tile, clipped to the tensor, becomes the output tile
of the producer. Here the index expressions are the ``AffineExpr`` results of linalg indexing
maps and the index maps of tensor views (``expand_shape``, ``collapse_shape``,
``extract_slice``), evaluated by interval arithmetic (:func:`interval`): sums and products by
constants are exact; ``floordiv``, ``ceildiv`` and ``mod`` give the bounding box (``mod`` the
whole ``[0, c)`` once the range wraps). A strided window (``oh * 2 + kh``) therefore gets its
conservative bounding box, as does a gather: a tensor a body reads with ``tensor.extract`` is
taken whole.

A *box* is one inclusive interval ``(lo, hi)`` per dimension. :func:`propagate` returns the box
of every tensor value of the group: internal values (what a producer must compute per block),
and the group's inputs (what a block reads), plus every linalg op's loop box, which the cost
model (``cost.py``) and the tile written on a fused ``quartet.tile`` (``fuse.py``) read.

Assumes: static shapes; ops given in program order (producers first).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mlir import ir

from quartet.dialects import linalg_info

Box = tuple[tuple[int, int], ...]


# ---------------------------------------------------------------------------------------------
# Interval arithmetic on affine expressions


def _down(expr: ir.AffineExpr):
    return expr.maybe_downcast() if hasattr(expr, "maybe_downcast") else expr


def interval(expr: ir.AffineExpr, dims: Box) -> tuple[int, int]:
    """Inclusive bounds of ``expr`` when each ``d_i`` ranges over ``dims[i]``."""
    e = _down(expr)
    if isinstance(e, ir.AffineDimExpr):
        return dims[e.position]
    if isinstance(e, ir.AffineConstantExpr):
        return (e.value, e.value)
    if isinstance(e, ir.AffineSymbolExpr):
        raise ValueError("symbols in an indexing map are not supported")
    lo_a, hi_a = interval(e.lhs, dims)
    lo_b, hi_b = interval(e.rhs, dims)
    if isinstance(e, ir.AffineAddExpr):
        return (lo_a + lo_b, hi_a + hi_b)
    if isinstance(e, ir.AffineMulExpr):
        products = (lo_a * lo_b, lo_a * hi_b, hi_a * lo_b, hi_a * hi_b)
        return (min(products), max(products))
    if lo_b != hi_b or lo_b <= 0:
        raise ValueError(f"'{expr}' divides by a non-constant or non-positive value")
    c = lo_b
    if isinstance(e, ir.AffineFloorDivExpr):
        return (lo_a // c, hi_a // c)
    if isinstance(e, ir.AffineCeilDivExpr):
        return (-(-lo_a // c), -(-hi_a // c))
    if isinstance(e, ir.AffineModExpr):
        if hi_a - lo_a + 1 >= c or lo_a // c != hi_a // c:
            return (0, c - 1)
        return (lo_a % c, hi_a % c)
    raise ValueError(f"unsupported affine expression '{expr}'")


def clip(box: Box, shape) -> Box:
    """``box`` inside a tensor of ``shape``."""
    return tuple((max(0, lo), min(size - 1, hi)) for (lo, hi), size in zip(box, shape))


def union(a: Box | None, b: Box) -> Box:
    if a is None:
        return b
    return tuple((min(x[0], y[0]), max(x[1], y[1])) for x, y in zip(a, b))


def extents(box: Box) -> tuple[int, ...]:
    return tuple(hi - lo + 1 for lo, hi in box)


def full(shape) -> Box:
    return tuple((0, s - 1) for s in shape)


def elements(box: Box) -> int:
    return math.prod(extents(box))


# ---------------------------------------------------------------------------------------------
# Index maps of ops


def shape_of(value: ir.Value) -> tuple[int, ...]:
    t = value.type
    return tuple(ir.ShapedType(t).shape) if isinstance(t, ir.ShapedType) else ()


def affine_maps(op: ir.Operation) -> tuple[list[ir.AffineMap], list[str], list[int]]:
    """(indexing maps, iterator kinds, loop ranges) of a linalg op, named ops included.

    ``linalg.generic``, ``fill``, ``transpose``, ``matmul`` and ``batch_matmul`` are read from
    their attributes (this runs for every op of every candidate group); other named ops ask
    ``linalg_info`` (which generalizes a copy of the op)."""
    name = op.name
    if name == "linalg.generic":
        maps = [ir.AffineMapAttr(a).value for a in ir.ArrayAttr(op.attributes["indexing_maps"])]
        kinds = ["reduction" if "reduction" in str(a) else "parallel"
                 for a in ir.ArrayAttr(op.attributes["iterator_types"])]
        return maps, kinds, _ranges(maps, op, len(kinds))
    if name == "linalg.fill":
        rank = len(shape_of(op.results[0]))
        out = ir.AffineMap.get_identity(rank) if rank else ir.AffineMap.get(0, 0, [])
        scalar = ir.AffineMap.get(rank, 0, [])
        return [scalar, out], ["parallel"] * rank, list(shape_of(op.results[0]))
    if name == "linalg.transpose":
        # as linalg-generalize-named-ops writes it: loops over the result's dimensions,
        # result[i] = input[perm[i]], so input dimension perm[i] is read by loop i
        perm = list(ir.DenseI64ArrayAttr(op.attributes["permutation"]))
        n = len(perm)
        inverse = [perm.index(j) for j in range(n)]
        src = ir.AffineMap.get(n, 0, [ir.AffineDimExpr.get(i) for i in inverse])
        dst = ir.AffineMap.get_identity(n)
        return [src, dst], ["parallel"] * n, list(shape_of(op.results[0]))
    if name in _NAMED and "indexing_maps" not in op.attributes:
        text, kinds = _NAMED[name]
        maps = [ir.AffineMapAttr(ir.Attribute.parse(t)).value for t in text]
        return maps, list(kinds), _ranges(maps, op, len(kinds))
    info = linalg_info.info(op)
    n = info.num_loops
    names = ", ".join(f"d{i}" for i in range(n))
    maps = [ir.AffineMapAttr(ir.Attribute.parse(f"affine_map<({names}) -> ({', '.join(m)})>"))
            .value for m in info.indexing_maps]
    return maps, list(info.iterator_types), list(info.loop_ranges)


_NAMED = {
    "linalg.matmul": (("affine_map<(d0, d1, d2) -> (d0, d2)>",
                       "affine_map<(d0, d1, d2) -> (d2, d1)>",
                       "affine_map<(d0, d1, d2) -> (d0, d1)>"),
                      ("parallel", "parallel", "reduction")),
    "linalg.batch_matmul": (("affine_map<(d0, d1, d2, d3) -> (d0, d1, d3)>",
                             "affine_map<(d0, d1, d2, d3) -> (d0, d3, d2)>",
                             "affine_map<(d0, d1, d2, d3) -> (d0, d1, d2)>"),
                            ("parallel", "parallel", "parallel", "reduction")),
}


def _ranges(maps, op: ir.Operation, n: int) -> list[int]:
    """Loop extents from the operand dimensions indexed by a loop alone."""
    ranges: list = [None] * n
    for m, v in zip(maps, op.operands):
        for expr, size in zip(m.results, shape_of(v)):
            e = _down(expr)
            if isinstance(e, ir.AffineDimExpr) and ranges[e.position] is None:
                ranges[e.position] = size
    if any(r is None for r in ranges):
        return list(linalg_info.info(op).loop_ranges)
    return ranges


def view_source_box(op: ir.Operation, result_box: Box) -> Box:
    """The box of a view's source that its result box reads."""
    src_shape = shape_of(op.operands[0])
    if op.name == "tensor.expand_shape":
        # source dim = linearization of its group of result dims
        from quartet.passes.welder.views import reassociation
        out_shape = shape_of(op.results[0])
        box = []
        for group in reassociation(op):
            lo = hi = 0
            for d in group:
                lo = lo * out_shape[d] + result_box[d][0]
                hi = hi * out_shape[d] + result_box[d][1]
            box.append((lo, hi))
        return clip(tuple(box), src_shape)
    if op.name == "tensor.collapse_shape":
        from quartet.passes.welder.views import reassociation
        box: list = [None] * len(src_shape)
        for r, group in enumerate(reassociation(op)):
            lo, hi = result_box[r]
            inner = math.prod(src_shape[d] for d in group)
            for d in group:
                inner //= src_shape[d]
                q_lo, q_hi = lo // inner, hi // inner
                if q_hi - q_lo + 1 >= src_shape[d] or q_lo // src_shape[d] != q_hi // src_shape[d]:
                    box[d] = (0, src_shape[d] - 1)
                else:
                    box[d] = (q_lo % src_shape[d], q_hi % src_shape[d])
        return tuple(box)
    if op.name == "tensor.extract_slice":
        offsets = list(ir.DenseI64ArrayAttr(op.attributes["static_offsets"]))
        sizes = list(ir.DenseI64ArrayAttr(op.attributes["static_sizes"]))
        strides = list(ir.DenseI64ArrayAttr(op.attributes["static_strides"]))
        if any(x < 0 for x in offsets + sizes + strides):
            raise ValueError("dynamic slices are not supported")
        out = iter(result_box)
        box = []
        out_rank = len(shape_of(op.results[0]))
        dropped = len(sizes) - out_rank      # rank-reducing: unit dims are dropped
        for o, s, st in zip(offsets, sizes, strides):
            if s == 1 and dropped > 0:
                dropped -= 1
                box.append((o, o))
                continue
            lo, hi = next(out)
            box.append((o + lo * st, o + hi * st))
        return clip(tuple(box), src_shape)
    if op.name in ("tensor.cast",):
        return result_box
    raise ValueError(f"'{op.name}' is not a view Welder propagates through")


VIEWS = ("tensor.expand_shape", "tensor.collapse_shape", "tensor.extract_slice", "tensor.cast")


# ---------------------------------------------------------------------------------------------
# Propagation over a group


@dataclass
class Propagation:
    """Boxes of a group for one output tile."""

    values: dict           # ir.Value -> Box (what one block computes or reads of it)
    loops: dict            # linalg op -> its loop box (reductions whole)


def _gathers(op: ir.Operation) -> list[ir.Value]:
    """Tensors a linalg body reads with ``tensor.extract`` (gathers): read whole."""
    found = []

    def visit(inner):
        if inner.operation.name == "tensor.extract":
            found.append(inner.operation.operands[0])
        return ir.WalkResult.ADVANCE

    for region in op.regions:
        for block in region.blocks:
            for inner in block.operations:
                inner.operation.walk(visit)
    return found


def _reduces(op: ir.Operation) -> bool:
    return "iterator_types" in op.attributes and \
        "reduction" in str(op.attributes["iterator_types"])


def loop_box(op: ir.Operation, result_boxes: list[Box | None], rstep: dict | None = None) -> Box:
    """The loops of linalg ``op`` that produce ``result_boxes`` (one per result, None for a
    result nobody reads): parallel loops from the output maps, reductions whole (or
    ``[0, rstep[loop])`` where given)."""
    maps, kinds, ranges = affine_maps(op)
    nin = len(maps) - len(op.results)
    box: list = [None] * len(ranges)
    for k, rb in enumerate(result_boxes):
        if rb is None:
            continue
        for expr, (lo, hi) in zip(maps[nin + k].results, rb):
            e = _down(expr)
            if isinstance(e, ir.AffineDimExpr):
                d = e.position
                box[d] = (lo, hi) if box[d] is None else (min(lo, box[d][0]), max(hi, box[d][1]))
    for d, (kind, extent) in enumerate(zip(kinds, ranges)):
        if box[d] is None or kind == "reduction":
            step = (rstep or {}).get(d) if kind == "reduction" else None
            box[d] = (0, (step or extent) - 1)
    return tuple(box)


def operand_boxes(op: ir.Operation, loops: Box) -> list[Box]:
    """The box of every operand of linalg ``op`` (inputs, then inits) for its loop box."""
    maps, _, _ = affine_maps(op)
    out = []
    for m, v in zip(maps, op.operands):
        shape = shape_of(v)
        if not shape:
            out.append(())
            continue
        out.append(clip(tuple(interval(e, loops) for e in m.results), shape))
    return out


def propagate(ops: list[ir.Operation], outputs: dict) -> Propagation:
    """Propagate ``outputs`` (value -> box of the group's output tile) back over ``ops`` (the
    group's linalg and view ops, in program order)."""
    values: dict = dict(outputs)
    loops: dict = {}
    for op in reversed(ops):
        boxes = [values.get(r) for r in op.results]
        if all(b is None for b in boxes):
            continue
        if op.name in VIEWS:
            src = view_source_box(op, boxes[0])
            values[op.operands[0]] = union(values.get(op.operands[0]), src)
            continue
        if not linalg_info.is_linalg(op):
            continue
        lb = loop_box(op, boxes)
        loops[op] = lb
        maps, _, _ = affine_maps(op)
        nin = len(maps) - len(op.results)
        for i, (m, v) in enumerate(zip(maps, op.operands)):
            shape = shape_of(v)
            if not shape:
                continue
            if i >= nin:
                block_arg = op.regions[0].blocks[0].arguments[i] if op.regions else None
                if block_arg is not None and not any(True for _ in block_arg.uses) and \
                        not _reduces(op):
                    continue       # an init only read for its shape
            box = clip(tuple(interval(e, lb) for e in m.results), shape)
            values[v] = union(values.get(v), box)
        for v in _gathers(op):
            values[v] = full(shape_of(v))
    return Propagation(values, loops)
