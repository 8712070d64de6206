"""roller-split-reductions: a column reduction with too few outputs for the chip, split in two.

A reduction over the outer loop of ``[K, P]`` (``x.sum(dim=0)``) is built by the ``colreduce``
family: each block owns ``8 x V`` output columns and walks all K rows, so with few columns the
grid is a handful of blocks - 64 fp16 columns are ONE block, one SM streaming the whole tensor
(issue 13, item 3: memory-bound kernels at the copy limit whatever the shape). Roller's rTile
cannot split the reduced axis inside one kernel without a cross-block combine, so this pass
splits it across two tiles, as split-K does for GEMMs:

    part[b, p] = combine over k < K/B of f(x[b * K/B + k, p])      (B x P, accumulator type)
    out[p]     = init[p] combine (combine over b of part[b, p])     (the original result)

The first reads ``x`` once through a ``tensor.expand_shape`` view ``[B, K/B, P]`` (a host view,
no copy), with ``B`` blocks of rows so that the grid covers every SM twice; the second reads the
``B x P`` partials (a few KB). Both are plain column reductions that ``roller-config`` then
configures like any other. The partials are kept in the accumulator type (fp32 for fp16/bf16
sums, as the one-kernel version accumulates); the second tile rounds each partial to the
result's type before summing them in fp32 again (its body is ``combine(f(in), out)`` in the
result's type), so an fp16 sum is rounded ``B + 1`` times along the way instead of once - the
rounding of any parallel reduction order, within fp16's tolerance.

Assumes: the tile is what ``colreduce.analyze_colreduce`` takes, over two loops ``[K, P]``
(reduction, parallel), its inputs read through ``(k, p)`` or ``(p)``, its init a
``linalg.fill`` of a constant. Anything else is left as it is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mlir import ir
from mlir.dialects import arith, linalg, tensor

from quartet.dialects import TileOp, collect, defining_op, yield_
from quartet.lowering.kernels import Unsupported
from quartet.lowering.kernels import colreduce
from quartet.lowering.kernels.common import (COMBINERS, _body_ops_for, _convert, _maps,
                                             _num_inputs, accumulator_type)
from quartet.passes.base import ModulePass
from quartet.runtime import targets
from quartet.runtime.targets import Chip

#: fewest rows one block of the first tile walks (below it the partials outweigh the saving)
MIN_ROWS_PER_SPLIT = 64


def splits(k: int, p: int, vector: int, hw: Chip) -> int:
    """How many blocks of rows ``B`` (a power of two dividing ``k``) a ``[k, p]`` column
    reduction is split into: enough for the colreduce grid (``ceil(p / V / 8)`` blocks per
    split) to cover every unit twice; 1 when the grid already covers half of them."""
    columns = p // vector
    blocks = math.ceil(columns / min(8, columns))
    if 2 * blocks >= hw.num_units:
        return 1
    want = math.ceil(2 * hw.num_units / blocks)
    b = 1
    while b * 2 <= want and k % (b * 2) == 0 and k // (b * 2) >= MIN_ROWS_PER_SPLIT:
        b *= 2
    return b


def _affine(n: int, dims: list[int]) -> ir.Attribute:
    return ir.AffineMapAttr.get(ir.AffineMap.get(n, 0, [ir.AffineExpr.get_dim(d) for d in dims]))


def _iterators(kinds: list[str]) -> ir.Attribute:
    return ir.ArrayAttr.get([ir.Attribute.parse(f"#linalg.iterator_type<{k}>") for k in kinds])


def _generic(inputs, init, maps, kinds, result_type, body) -> ir.Value:
    """A ``linalg.generic`` whose body ``body(args)`` builds and returns the yielded value."""
    op = ir.Operation.create(
        "linalg.generic", results=[result_type], operands=list(inputs) + [init],
        attributes={"indexing_maps": ir.ArrayAttr.get(maps), "iterator_types": _iterators(kinds),
                    "operandSegmentSizes": ir.DenseI32ArrayAttr.get([len(inputs), 1])},
        regions=1)
    types = [ir.RankedTensorType(v.type).element_type for v in list(inputs) + [init]]
    block = op.regions[0].blocks.append(*types)
    with ir.InsertionPoint(block):
        linalg.YieldOp([body(list(block.arguments))])
    return op.results[0]


def split_tile(tile: TileOp, hw: Chip) -> bool:
    """Split ``tile`` if it is a column reduction with too few blocks; whether it did."""
    try:
        cr = colreduce.analyze_colreduce(tile)
    except Unsupported:
        return False
    if len(cr.ranges) != 2 or cr.red != [0] or cr.par != [1]:
        return False
    k, p = cr.ranges
    b = splits(k, p, cr.vector, hw)
    if b < 2:
        return False
    op = cr.op
    nin = _num_inputs(op)
    maps = _maps(op)
    ident, column = [("loop", 0), ("loop", 1)], [("loop", 1)]
    if any(m not in (ident, column) for m in maps[:nin]):
        return False
    init = op.operands[nin]
    fill = defining_op(init)
    if fill is None or fill.name != "linalg.fill" or defining_op(fill.operands[0]) is None or \
            defining_op(fill.operands[0]).name != "arith.constant":
        return False
    t = ir.RankedTensorType(op.results[0].type).element_type
    acc = accumulator_type(cr.combiner, t)
    body = op.regions[0].blocks[0]
    with tile.operation.location, ir.InsertionPoint(tile.operation):
        views = []
        for m, v in zip(maps[:nin], list(op.operands)[:nin]):
            if m == column:
                views.append(v)
                continue
            elt = ir.RankedTensorType(v.type).element_type
            views.append(tensor.ExpandShapeOp(
                ir.RankedTensorType.get([b, k // b, p], elt), v,
                ir.ArrayAttr.get([ir.ArrayAttr.get([_i64(0), _i64(1)]),
                                  ir.ArrayAttr.get([_i64(2)])]), [], [b, k // b, p]).result)
        part_type = ir.RankedTensorType.get([b, p], acc)
        # constants stay outside tiles (the tiles capture them, as outlining leaves them)
        identity = arith.ConstantOp(acc, COMBINERS[cr.combiner][1](acc)).result
        first = TileOp([part_type])
    with tile.operation.location, ir.InsertionPoint(first.entry):
        empty = tensor.EmptyOp([b, p], acc).result
        start = linalg.fill(identity, outs=[empty])

        def partial(args):
            mapping = dict(zip(list(body.arguments)[:nin], args[:nin]))
            for bop in _body_ops_for(body, [cr.x]):
                new = bop.clone()
                for i, operand in enumerate(new.operands):
                    if operand in mapping:
                        new.operands[i] = mapping[operand]
                mapping.update(zip(bop.results, new.results))
            x = mapping.get(cr.x, cr.x)
            return _combine(cr.combiner, _convert(x, acc, None), args[nin])

        in_maps = [_affine(3, [0, 1, 2]) if m == ident else _affine(3, [2]) for m in maps[:nin]]
        part = _generic(views, start, in_maps + [_affine(3, [0, 2])],
                        ["parallel", "reduction", "parallel"], part_type, partial)
        yield_([part])
    with tile.operation.location, ir.InsertionPoint(tile.operation):
        second = TileOp([r.type for r in tile.results])
    with tile.operation.location, ir.InsertionPoint(second.entry):
        empty = tensor.EmptyOp([p], t).result
        start = linalg.fill(fill.operands[0], outs=[empty])     # the init's constant, outside

        def total(args):
            return _combine(cr.combiner, _convert(args[0], t, None), args[1])

        out = _generic([first.results[0]], start, [_affine(2, [0, 1]), _affine(2, [1])],
                       ["reduction", "parallel"], ir.RankedTensorType.get([p], t), total)
        yield_([out])
    for key in ("target",):
        if key in tile.operation.attributes:
            for new in (first, second):
                new.operation.attributes[key] = tile.operation.attributes[key]
    tile.results[0].replace_all_uses_with(second.results[0])
    tile.operation.erase()
    return True


def _i64(v: int) -> ir.Attribute:
    return ir.IntegerAttr.get(ir.IntegerType.get_signless(64), v)


def _combine(name: str, a: ir.Value, b: ir.Value) -> ir.Value:
    return ir.Operation.create(name, results=[a.type], operands=[a, b]).result


@dataclass(frozen=True)
class RollerSplitReductions(ModulePass):
    name = "roller-split-reductions"
    summary = ("split a column reduction with too few output columns for the chip into "
               "partials over blocks of rows and their reduction (two tiles)")

    target: str = "sm_90"
    chip: str = ""                # default: the target's first chip (runtime/targets.py)

    def __post_init__(self):
        targets.get(self.target, self.chip or None)

    def apply(self, module) -> None:
        hw = targets.get(self.target, self.chip or None)
        if not hw.is_gpu:
            return
        for op in collect(module, lambda o: o.name == "quartet.tile"):
            split_tile(op.opview, hw)
