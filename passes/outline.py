"""``quartet-outline-tiles`` and ``quartet-inline-tiles``: linalg ops in and out of tiles.

Outline wraps every linalg op of every function (named ops such as matmul, batch_matmul,
conv_2d_*, pooling, fill, and linalg.generic, also inside ``scf`` regions) in its own
``quartet.tile`` whose region holds the op and a ``gpu.yield`` of its results; users of the op's
results read the tile's results instead. This is the first step of every Quartet pipeline:
one tile per operator, the unit that Roller configures and Welder later merges (Roller's rTile
is a per-operator tile; DESIGN.md, "Data flow"). A result nobody reads stays inside the tile.

Inline is the exact inverse: the ops of each tile move back in front of it, in order, and the
tile's results are replaced by the yielded values. Outline then inline gives back the input IR.

Assumes: linalg ops are not already inside a ``quartet.tile`` (those are left alone), and
ops nested in a linalg op's own region (``linalg.yield``, ``linalg.index``) are not operators.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlir import ir

from quartet.dialects import TileOp, collect, linalg_info, yield_
from quartet.errors import QuartetError, location_of

from .base import ModulePass


def _outlinable(op: ir.Operation) -> bool:
    if not linalg_info.is_linalg(op):
        return False
    parent = op.parent
    while parent is not None:
        if parent.name == "quartet.tile" or parent.name.startswith("linalg."):
            return False
        parent = parent.parent
    return True


def _yielded_results(op: ir.Operation) -> list[ir.Value]:
    """The results a tile must return: those read after the op (all of them if none is).

    Dead results stay inside the tile. This matters for ops such as torch-mlir's max-with-index
    ``linalg.generic`` (a value and an i64 index, the index unused): the results of one Quartet
    op share one type (dialects/README.md), so only results of one type can leave a tile.
    """
    used = [r for r in op.results if any(True for _ in r.uses)]
    chosen = used or list(op.results)
    types = {str(r.type) for r in chosen}
    if len(types) > 1:
        raise QuartetError(
            f"cannot outline '{op.name}': it returns values of different types "
            f"({', '.join(sorted(types))}) that are all used, and a quartet.tile's results "
            f"share one type", location_of(op))
    return chosen


def outline_op(op: ir.Operation) -> TileOp:
    """Wrap one linalg op in a ``quartet.tile`` in place; return the tile."""
    results = _yielded_results(op)
    with op.location, ir.InsertionPoint(op):
        tile = TileOp([r.type for r in results])
    with op.location, ir.InsertionPoint(tile.entry):
        terminator = yield_(results)
    op.move_before(terminator)
    for i, result in enumerate(results):
        result.replace_all_uses_with(tile.results[i])
        terminator.operation.operands[i] = result   # the yield itself reads the op again
    return tile


def inline_tile(tile: ir.Operation) -> None:
    """Move a tile's ops in front of it and replace its results by the yielded values."""
    block = tile.regions[0].blocks[0]
    ops = [o.operation for o in block.operations]
    terminator = ops[-1]
    for op in ops[:-1]:
        op.move_before(tile)
    for result, value in zip(tile.results, terminator.operands):
        result.replace_all_uses_with(value)
    terminator.erase()
    tile.erase()


@dataclass(frozen=True)
class OutlineTiles(ModulePass):
    name = "quartet-outline-tiles"
    summary = "wrap every linalg op of every function in its own quartet.tile"

    def apply(self, module) -> None:
        for op in collect(module, _outlinable):
            outline_op(op)


@dataclass(frozen=True)
class InlineTiles(ModulePass):
    name = "quartet-inline-tiles"
    summary = "move the ops of every quartet.tile back in place (the inverse of outlining)"

    def apply(self, module) -> None:
        # Innermost first is not needed (tiles do not nest), but walk order is pre-order.
        for tile in collect(module, lambda op: op.name == "quartet.tile"):
            inline_tile(tile)
