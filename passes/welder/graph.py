"""Welder's tile graph: the configured tiles of one block and the tensors between them.

Welder (OSDI'23, section 3.1) schedules a data-flow graph of operator tiles. Here a node is one
``quartet.tile`` (one operator after ``roller-fuse``: a GEMM with its epilogue, a row program,
a transpose), and an edge is a tensor one tile produces and another reads, possibly through a
chain of views (``expand_shape``, ``collapse_shape``, ``extract_slice``) outside the tiles:
views move no data, so they belong to the edge, not to a node. Values a tile reads that no tile
of the block produces (function arguments, weights, results of host ops) are the graph's inputs.

Nodes are kept in program order, which is a topological order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mlir import ir

from quartet.dialects import TileOp, collect, defining_op, linalg_info

from .propagate import VIEWS


@dataclass(eq=False)
class Node:
    """One tile of the graph."""

    tile: TileOp
    index: int
    inputs: list = field(default_factory=list)     # (value read, Edge or None)

    @property
    def op(self) -> ir.Operation:
        return self.tile.operation

    @property
    def linalg_ops(self) -> list[ir.Operation]:
        return [o for o in self.tile.computation if linalg_info.is_linalg(o)]

    @property
    def name(self) -> str:
        try:
            return self.tile.root.operation.name
        except ValueError:
            return "quartet.tile"

    def __repr__(self) -> str:
        return f"Node({self.index}, {self.name})"


@dataclass(eq=False)
class Edge:
    """``producer``'s result ``source`` read by ``consumer`` as ``value`` through ``views``."""

    producer: Node
    consumer: Node
    source: ir.Value
    value: ir.Value
    views: list          # view ops, program order (source first)


def _in_tile(op: ir.Operation) -> bool:
    parent = op.parent
    while parent is not None:
        if parent.name == "quartet.tile":
            return True
        parent = parent.parent
    return False


def _trace(value: ir.Value, block) -> tuple[ir.Value, list]:
    """Follow views back from ``value``: (the first non-view value, the views in order)."""
    views = []
    while True:
        op = defining_op(value)
        if op is None or op.name not in VIEWS or op.block != block or _in_tile(op):
            return value, list(reversed(views))
        views.append(op)
        value = op.operands[0]


class TileGraph:
    """The tiles of one block and the edges between them."""

    def __init__(self, tiles: list[ir.Operation]):
        self.nodes = [Node(t.opview, i) for i, t in enumerate(tiles)]
        self._by_op = {n.op: n for n in self.nodes}
        self.edges: list[Edge] = []
        for node in self.nodes:
            block = node.op.block
            for v in node.tile.inputs:
                if not isinstance(v.type, ir.RankedTensorType):
                    continue
                source, views = _trace(v, block)
                owner = defining_op(source)
                producer = self._by_op.get(owner) if owner is not None else None
                edge = None
                if producer is not None:
                    edge = Edge(producer, node, source, v, views)
                    self.edges.append(edge)
                node.inputs.append((v, edge))

    @classmethod
    def of_block(cls, block_tiles: list[ir.Operation]) -> "TileGraph":
        return cls(block_tiles)

    def node_of(self, op: ir.Operation) -> Node | None:
        return self._by_op.get(op)

    def consumers(self, node: Node) -> list[Node]:
        seen: list[Node] = []
        for e in self.edges:
            if e.producer is node and e.consumer not in seen:
                seen.append(e.consumer)
        return sorted(seen, key=lambda n: n.index)

    def producers(self, node: Node) -> list[Node]:
        seen: list[Node] = []
        for e in self.edges:
            if e.consumer is node and e.producer not in seen:
                seen.append(e.producer)
        return sorted(seen, key=lambda n: n.index)

    def internal_edges(self, group: list[Node]) -> list[Edge]:
        members = set(map(id, group))
        return [e for e in self.edges
                if id(e.producer) in members and id(e.consumer) in members]

    def escaping(self, group: list[Node]) -> list[ir.Value]:
        """Results of ``group``'s tiles read by anything outside the group (another tile, a
        view chain that ends outside it, a host op, the function's return)."""
        members = {n.op for n in group}
        out = []
        for node in group:
            for r in node.op.results:
                if _read_outside(r, members) and r not in out:
                    out.append(r)
        return out


def _read_outside(value: ir.Value, members: set) -> bool:
    for use in value.uses:
        user = use.owner.operation
        if user.name in VIEWS and not _in_tile(user):
            if any(_read_outside(r, members) for r in user.results):
                return True
            continue
        top = user
        while top is not None and top.name != "quartet.tile":
            top = top.parent
        if top is None or top not in members:
            return True
    return False


def tiles_by_block(module) -> list[list[ir.Operation]]:
    """The tiles of each block of ``module``, in program order."""
    groups: dict = {}
    for op in collect(module, lambda o: o.name == "quartet.tile"):
        groups.setdefault(op.block, []).append(op)
    return list(groups.values())
