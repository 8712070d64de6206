"""``quartet-outline-tiles`` and ``quartet-inline-tiles``: linalg ops in and out of tiles.

Outline wraps every linalg op of every function (named ops such as matmul, batch_matmul,
conv_2d_*, pooling, fill, and linalg.generic, also inside ``scf`` regions) in its own
``quartet.tile`` whose region holds the op and a ``gpu.yield`` of its results; users of the op's
results read the tile's results instead. This is the first step of every Quartet pipeline:
one tile per operator, the unit that Roller configures and Welder later merges (Roller's rTile
is a per-operator tile; DESIGN.md, "Data flow"). A result nobody reads stays inside the tile.

Inline is the exact inverse: the ops of each tile move back in front of it, in order, and the
tile's results are replaced by the yielded values. Outline then inline gives back the input IR.

An op whose read results have different types (torch-mlir's max/min with indices: an f32 value
and an i64 index; adaptive pooling) cannot be one tile, since all results of one Quartet op
share a type (IRDL in MLIR 22, dialects/README.md). It becomes one tile per result type, each
holding its own copy of the op and yielding that type's results (issue 18): the op is computed
once per type, which costs time, not correctness. Inlining then gives back one copy per type
(``cse`` merges them).

Assumes: linalg ops are not already inside a ``quartet.tile`` (those are left alone), and
ops nested in a linalg op's own region (``linalg.yield``, ``linalg.index``) are not operators.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlir import ir

from quartet.dialects import TileOp, collect, linalg_info, yield_

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


def _yielded_results(op: ir.Operation) -> list[list[ir.Value]]:
    """The results tiles must return, one group per result type in order of first result:
    those read after the op (all of them if none is). Dead results stay inside the tile.
    """
    used = [r for r in op.results if any(True for _ in r.uses)]
    groups: dict[str, list[ir.Value]] = {}
    for r in used or list(op.results):
        groups.setdefault(str(r.type), []).append(r)
    return list(groups.values())


def _wrap(op: ir.Operation, yielded: list, replaced: list) -> TileOp:
    """Move ``op`` into a new tile yielding ``yielded``; readers of ``replaced`` read the
    tile's results instead."""
    with op.location, ir.InsertionPoint(op):
        tile = TileOp([r.type for r in yielded])
    with op.location, ir.InsertionPoint(tile.entry):
        terminator = yield_(yielded)
    op.move_before(terminator)
    for i, result in enumerate(replaced):
        result.replace_all_uses_with(tile.results[i])
    for i, value in enumerate(yielded):
        terminator.operation.operands[i] = value   # the yield itself read the op's result
    return tile


def outline_op(op: ir.Operation) -> TileOp:
    """Wrap one linalg op in a ``quartet.tile`` in place (one per result type, see the module
    docstring); return the tile holding the op itself (the last one)."""
    groups = _yielded_results(op)
    positions = {r: i for i, r in enumerate(op.results)}
    for group in groups[:-1]:
        copy = op.clone(ip=ir.InsertionPoint(op))
        _wrap(copy, [copy.results[positions[r]] for r in group], group)
    return _wrap(op, groups[-1], groups[-1])


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
