"""``quartet-outline-tiles`` and ``quartet-inline-tiles``: linalg ops in and out of tiles.

Outline wraps every linalg op of every function (named ops such as matmul, batch_matmul,
conv_2d_*, pooling, fill, and linalg.generic, also inside ``scf`` regions) in its own
``quartet.tile`` whose region holds the op and a ``gpu.yield`` of its results; users of the op's
results read the tile's results instead. This is the first step of every Quartet pipeline:
one tile per operator, the unit that Roller configures and Welder later merges (Roller's rTile
is a per-operator tile; DESIGN.md, "Data flow").

Inline is the exact inverse: the ops of each tile move back in front of it, in order, and the
tile's results are replaced by the yielded values. Outline then inline gives back the input IR.

Assumes: linalg ops are not already inside a ``quartet.tile`` (those are left alone), and
ops nested in a linalg op's own region (``linalg.yield``, ``linalg.index``) are not operators.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlir import ir

from quartet.dialects import TileOp, linalg_info, yield_

from .registry import ModulePass, register


def _outlinable(op: ir.Operation) -> bool:
    if not linalg_info.is_linalg(op):
        return False
    parent = op.parent
    while parent is not None:
        if parent.name == "quartet.tile" or parent.name.startswith("linalg."):
            return False
        parent = parent.parent
    return True


def _collect(module: ir.Operation, predicate) -> list[ir.Operation]:
    found: list[ir.Operation] = []

    def visit(op):
        if predicate(op.operation):
            found.append(op.operation)
        return ir.WalkResult.ADVANCE

    module.walk(visit)
    return found


def outline_op(op: ir.Operation) -> TileOp:
    """Wrap one linalg op in a ``quartet.tile`` in place; return the tile."""
    with op.location, ir.InsertionPoint(op):
        tile = TileOp([r.type for r in op.results])
    with op.location, ir.InsertionPoint(tile.entry):
        terminator = yield_(list(op.results))
    op.move_before(terminator)
    for i, result in enumerate(op.results):
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


@register
@dataclass(frozen=True)
class OutlineTiles(ModulePass):
    name = "quartet-outline-tiles"
    summary = "wrap every linalg op of every function in its own quartet.tile"

    def apply(self, module) -> None:
        for op in _collect(module, _outlinable):
            outline_op(op)


@register
@dataclass(frozen=True)
class InlineTiles(ModulePass):
    name = "quartet-inline-tiles"
    summary = "move the ops of every quartet.tile back in place (the inverse of outlining)"

    def apply(self, module) -> None:
        # Innermost first is not needed (tiles do not nest), but walk order is pre-order.
        for tile in _collect(module, lambda op: op.name == "quartet.tile"):
            inline_tile(tile)
