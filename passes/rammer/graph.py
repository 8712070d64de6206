"""The data-flow graph of tiles (Rammer's DFG of rOperators), cut into schedulable segments.

A *segment* is a maximal run of ops in one block that a persistent kernel can hold: tiles, the
views between them (``tensor.expand_shape`` / ``collapse_shape``, contiguous
``tensor.extract_slice``, contiguous concatenations written in place) and constants. Anything
else - a host loop or branch, a scalar read back for a predicate, the return - ends it. Inside a
segment a tile depends on the tiles whose results it reads, directly or through views
(:class:`TileGraph`); the wave of a tile is its BFS level (Rammer's ``ExtractFusionGroups``).

Assumes the GPU lowering's preparation already happened for data movement
(``quartet-outline-data-movement``): pads, strided slices and concatenations that need copies
are tiles, so every view left is a view.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mlir import ir

from quartet.dialects import TileOp, captures, defining_op
from quartet.lowering.prepare import concat_in_place, contiguous_slice

#: ops a segment holds besides tiles: views of tile results, and constants it may hoist
VIEW_OPS = ("tensor.expand_shape", "tensor.collapse_shape", "tensor.extract_slice",
            "tensor.concat")
FREE_OPS = ("arith.constant", "tensor.empty")


@dataclass
class Segment:
    """Ops ``ops`` of one block (the first is a tile, the last a tile or a view), in program
    order."""

    ops: list[ir.Operation]

    @property
    def tiles(self) -> list[TileOp]:
        return [op.opview for op in self.ops if op.name == "quartet.tile"]


@dataclass
class TileGraph:
    """Tiles of a segment in program order, each with the tiles it reads from."""

    tiles: list[TileOp]
    deps: list[tuple[int, ...]] = field(default_factory=list)

    @property
    def levels(self) -> list[int]:
        out: list[int] = []
        for d in self.deps:
            out.append(1 + max((out[i] for i in d), default=-1))
        return out

    @property
    def consumers(self) -> list[tuple[int, ...]]:
        users: list[list[int]] = [[] for _ in self.tiles]
        for t, d in enumerate(self.deps):
            for i in d:
                users[i].append(t)
        return [tuple(u) for u in users]


def _segment_op(op: ir.Operation, claimed: set) -> bool:
    name = op.name
    if name == "quartet.tile":
        # Welder's merged tiles (``kernel = "fused"``, the quartet pipeline) stay kernels of
        # their own: their block programs are not built as persistent-kernel tasks
        return "kernel" not in op.attributes or \
            ir.StringAttr(op.attributes["kernel"]).value != "fused"
    if name in FREE_OPS:
        return True
    if name in ("tensor.expand_shape", "tensor.collapse_shape"):
        return True
    if name == "tensor.extract_slice":
        return contiguous_slice(op) is not None
    if name == "tensor.concat":
        return concat_in_place(op, claimed)
    return False


def segments(block: ir.Block) -> list[Segment]:
    """The segments of ``block`` (not of nested regions), each holding two tiles or more."""
    out: list[Segment] = []
    run: list[ir.Operation] = []
    claimed: set = set()

    def close():
        tiles = [i for i, op in enumerate(run) if op.name == "quartet.tile"]
        if len(tiles) >= 2:
            end = tiles[-1] + 1          # and the views after the last tile (a final concat)
            while end < len(run) and run[end].name in VIEW_OPS:
                end += 1
            out.append(Segment(run[tiles[0]:end]))
        run.clear()

    for op in block.operations:
        op = op.operation
        if _segment_op(op, claimed):
            run.append(op)
        else:
            close()
    close()
    return out


def graph_of(segment: Segment) -> TileGraph:
    """The tiles of ``segment`` and their dependencies through the segment's views."""
    tiles = segment.tiles
    index = {t.results[i]: k for k, t in enumerate(tiles) for i in range(len(t.results))}

    def producers(value: ir.Value, seen: set) -> set[int]:
        if value in index:
            return {index[value]}
        op = defining_op(value)
        if op is None or op.name not in VIEW_OPS or value in seen:
            return set()
        seen.add(value)
        found: set[int] = set()
        for operand in op.operands:
            found |= producers(operand, seen)
        return found

    graph = TileGraph(tiles)
    for k, tile in enumerate(tiles):
        deps: set[int] = set()
        for value in captures(tile):
            deps |= producers(value, set())
        graph.deps.append(tuple(sorted(d for d in deps if d < k)))
    return graph


def contains(ops: list, op) -> bool:
    """Whether ``op`` is one of ``ops`` or nested in one of them."""
    while op is not None:
        if any(op == o for o in ops):
            return True
        if op.name in ("func.func", "builtin.module"):
            return False
        op = op.parent
    return False


def escaping(ops: list) -> list[ir.Value]:
    """Results of ``ops`` read by ops outside them (what a uvirtual of ``ops`` yields)."""
    out = []
    for op in ops:
        for r in op.results:
            if r not in out and any(not contains(ops, u.owner.operation) for u in r.uses):
                out.append(r)
    return out


def nested_blocks(op: ir.Operation) -> list[ir.Block]:
    """Blocks of ``op``'s regions and of the ``scf`` ops nested in them (not inside tiles or
    uvirtuals), outermost first: where segments are looked for."""
    found: list[ir.Block] = []
    for region in op.regions:
        for block in region.blocks:
            found.append(block)
            for inner in block.operations:
                inner = inner.operation
                if inner.name.startswith("scf."):
                    found += nested_blocks(inner)
    return found
