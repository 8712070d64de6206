"""Welder's grouping: which tiles become one kernel, decided greedily by estimated latency.

Welder's artifact (``engine/engine.py``, ``_build_fusion_group``) walks the graph in topological
order; an ungrouped node starts a group, and its consumers are offered to it one at a time (with
their ungrouped producers): a consumer joins when the group's latency with it is lower than the
group's without it plus the consumer's own, and the group's outputs are not also read inside it.
Its latencies are measured on the GPU (top-k configurations of each candidate); here they come
from the cost model (``cost.py``), so grouping needs no GPU, unless a tuning record
(``record.py``) holds measured times for the candidate, which then win.

A tile alone is priced at its own schedule (a GEMM at the schedule the GEMM family builds,
``gemm.plan``, which replaces Roller's where it cannot build it), a candidate at each
configuration its family offers. A candidate is built only if a kernel family takes it: the Roller families for a merge inside
one iteration space (``gemm``: a GEMM and its epilogue; ``row``: row programs), or a ``fused``
pattern (``lowering/kernels/fused.py``: attention, a GEMM with a row program). Patterns need all
their operators at once (``Q K^T`` and the softmax are no kernel without ``P V``), so a
consumer that no family takes with the group may pull in further consumers, up to
:data:`LOOKAHEAD` of them, until one does (:func:`closure`). Each candidate is priced at every
configuration its family can build; the cheapest that fits decides. A group whose footprint does
not fit any configuration is refused, and the greedy walk goes on with the smaller group; the
reasons are kept (``Decision``) and printed under ``verbose``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from mlir import ir

from quartet.dialects import TileOp, remap, yield_
from quartet.lowering.kernels import Unsupported, fused
from quartet.passes.analysis.kernels import single_kernel
from quartet.passes.roller import config as roller_config
from quartet.runtime.targets import Chip

from . import cost
from .graph import Node, TileGraph
from .propagate import VIEWS

NO_FIT = "no configuration of"     # a refusal after pricing (resources), not of structure
LOOKAHEAD = 3          # consumers a candidate may pull in to reach a buildable pattern
MAX_GROUP = 12         # tiles per group


@dataclass
class Candidate:
    """A priced group: its nodes, the family that builds it, the chosen configuration."""

    nodes: list[Node]
    family: str                      # "gemm" | "row" | "colreduce" | "fused:<pattern>" | ...
    estimate: cost.Estimate
    params: dict = field(default_factory=dict)
    key: str = ""                    # tuning-record key
    measured: bool = False

    @property
    def latency(self) -> float:
        return self.estimate.latency


@dataclass
class Decision:
    """One step of the walk, for the verbose report."""

    group: list[int]
    offered: list[int]
    accepted: bool
    why: str


# ---------------------------------------------------------------------------------------------
# Merging tiles (scratch or for good)


def group_ops(graph: TileGraph, nodes: list[Node]) -> list[ir.Operation]:
    """Views on the group's internal edges, in program order."""
    views = []
    for e in graph.internal_edges(nodes):
        for v in e.views:
            if v not in views:
                views.append(v)
    return views


def merged_tile(graph: TileGraph, nodes: list[Node]) -> TileOp | None:
    """A new tile in front of the group's last tile computing the group's escaping values from
    clones of its tiles' ops and internal views (the originals stay); None when the group
    cannot be one tile (no escaping value, escaping values of several types, or one read
    before the group's last tile)."""
    nodes = sorted(nodes, key=lambda n: n.index)
    last = nodes[-1].op
    escaping = graph.escaping(nodes)
    if not escaping or len({str(v.type) for v in escaping}) != 1:
        return None
    block_ops = [o.operation for o in last.block.operations]
    position = {op: i for i, op in enumerate(block_ops)}
    for v in escaping:
        for use in v.uses:
            user = use.owner.operation
            top = user
            while top is not None and top.block != last.block:
                top = top.parent
            if top is not None and position.get(top, 1 << 30) < position[last] and \
                    top not in {n.op for n in nodes} and top.name not in VIEWS:
                return None
    members = {n.op for n in nodes}
    views = group_ops(graph, nodes)
    order = sorted([n.op for n in nodes] + views, key=lambda o: position[o])
    with last.location, ir.InsertionPoint(last):
        tile = TileOp([v.type for v in escaping])
    mapping: dict = {}
    ip = ir.InsertionPoint(tile.entry)
    with last.location, ip:
        for op in order:
            if op in members:
                t = op.opview
                for inner in t.computation:
                    new = inner.clone(ip=ip)
                    remap(new, mapping)
                    mapping.update(zip(inner.results, new.results))
                for result, value in zip(op.results, t.terminator.operands):
                    mapping[result] = mapping.get(value, value)
            else:
                new = op.clone(ip=ip)
                remap(new, mapping)
                mapping.update(zip(op.results, new.results))
        yield_([mapping[v] for v in escaping])
    if nodes[-1].tile.target:
        tile.operation.attributes["target"] = ir.StringAttr.get(nodes[-1].tile.target)
    return tile


def commit(graph: TileGraph, nodes: list[Node], tile: TileOp) -> None:
    """Replace the group's tiles by ``tile`` (from :func:`merged_tile`): their escaping results
    by its results, then erase the tiles and the views between them, readers first."""
    escaping = graph.escaping(nodes)
    for old, new in zip(escaping, tile.results):
        old.replace_all_uses_with(new)
    block_ops = [o.operation for o in tile.operation.block.operations]
    position = {op: i for i, op in enumerate(block_ops)}
    doomed = sorted([n.op for n in nodes] + group_ops(graph, nodes),
                    key=lambda o: -position[o])
    while doomed:
        left = []
        for op in doomed:
            if any(True for r in op.results for _ in r.uses):
                left.append(op)
            else:
                op.erase()
        if len(left) == len(doomed):
            raise RuntimeError("welder: a merged tile's ops are still read")
        doomed = left


# ---------------------------------------------------------------------------------------------
# Pricing


def _anchor_box(anchor: ir.Operation, extents) -> tuple:
    from .propagate import affine_maps
    _, kinds, ranges = affine_maps(anchor)
    return tuple((0, min(e, r) - 1) if k == "parallel" else (0, r - 1)
                 for e, k, r in zip(extents, kinds, ranges))


def price_schedule(tile: TileOp, chip: Chip, block_tile, threads: int, tensor_core: bool,
                   shared_bytes: int | None = None, registers: int = 64) -> cost.Estimate:
    """The model's estimate of a tile one Roller family builds with ``block_tile`` (one entry
    per root loop; reductions: the step) as one block's tile."""
    root = tile.root.operation
    kinds = _kinds(root)
    steps = [b for b, k in zip(block_tile, kinds) if k == "reduction"]
    res = cost.Resources(threads=threads, shared_bytes=shared_bytes, registers=registers,
                         engine=("wgmma" if chip.wgmma else "mma") if tensor_core else "simt",
                         rstep=min(steps) if steps else 64)
    return cost.estimate(list(tile.computation), root, _anchor_box(root, block_tile),
                         list(tile.terminator.operands), chip, res, levels={})


def price_gemm(tile: TileOp, chip: Chip) -> cost.Estimate | None:
    """A tile the GEMM family builds, at the schedule it will build (``gemm.plan``: Roller's,
    or the family's own default where it replaces one it cannot build), or None."""
    from quartet.lowering.kernels import gemm

    if not gemm.takes_chip(chip):
        return None
    try:
        with tile.operation.location:
            p = gemm.plan(tile, chip)
    except Exception:       # noqa: BLE001  (the family does not take it)
        return None
    s = p.schedule
    extents = {"m": s.bm, "n": s.bn, "b": 1}
    roles = p.problem.loop_roles
    if p.problem.kind != "matmul":
        return None
    block = [extents.get(r, 1 << 40) for r in roles]      # reductions whole
    regs = 128 if p.engine == "wgmma" else 96
    root = tile.root.operation
    res = cost.Resources(threads=p.block[0], shared_bytes=p.shared_bytes, registers=regs,
                         engine=p.engine, rstep=getattr(s, "bk", 32))
    return cost.estimate(list(tile.computation), root, _anchor_box(root, block),
                         list(tile.terminator.operands), chip, res, levels={})


def price_roller(tile: TileOp, chip: Chip) -> cost.Estimate:
    """A merge one Roller family builds, at the first schedule Roller's policy gives it (a
    GEMM at the schedule the GEMM family builds)."""
    est = price_gemm(tile, chip)
    if est is not None:
        return est
    s = roller_config.configure(tile, chip)[0]
    return price_schedule(tile, chip, s.block_tile, s.threads, s.tensor_core,
                          s.smem_bytes * s.stages, max(32, s.regs_per_thread))


def price_configured(tile: TileOp, chip: Chip) -> cost.Estimate:
    """A tile as roller-config left it (its own schedule attributes; a GEMM at the schedule
    the GEMM family builds)."""
    if tile.kernel == "gemm":
        est = price_gemm(tile, chip)
        if est is not None:
            return est
    if tile.block_tile is None:
        raise Unsupported("the tile has no schedule")
    return price_schedule(tile, chip, tile.block_tile, tile.threads or 128, tile.tensor_core)


def _kinds(op) -> list[str]:
    from .propagate import affine_maps
    return affine_maps(op)[1]


def price_fused(tile: TileOp, chip: Chip, plan: fused.FusedPlan) -> tuple[cost.Estimate, dict]:
    """The best configuration of a fused plan by the model: (estimate, params)."""
    best, best_params, refusals = None, {}, []
    for choice in plan.choices:
        res = cost.Resources(threads=choice.threads, shared_bytes=choice.shared_bytes,
                             registers=choice.registers, engine=choice.engine)
        est = cost.estimate(list(tile.computation), plan.anchor,
                            _anchor_box(plan.anchor, choice.anchor_tile),
                            list(tile.terminator.operands),
                            chip, res, levels=plan.levels)
        if est.refused:
            refusals.append(f"{choice.params}: {est.refused}")
            continue
        if best is None or est.latency < best.latency:
            best, best_params = est, dict(choice.params)
    if best is None:
        est = cost.Estimate(blocks=0, refused="; ".join(refusals) or "no configuration")
        return est, {}
    return best, best_params


def price(tile: TileOp, chip: Chip) -> tuple[str | None, cost.Estimate, dict, str]:
    """(family, estimate, params, why-not) of a (merged) tile: the Roller families first, then
    the fused patterns."""
    with tile.operation.location:
        family = single_kernel(tile, chip)
    if family is not None:
        try:
            return family, price_roller(tile, chip), {}, ""
        except Exception as e:       # noqa: BLE001  (a Roller refusal: no configuration)
            return None, cost.Estimate(0, refused=str(e)), {}, f"{family}: {e}"
    try:
        with tile.operation.location:
            plan = fused.analyze(tile, chip)
    except Unsupported as e:
        return None, cost.Estimate(0, refused=str(e)), {}, str(e)
    est, params = price_fused(tile, chip, plan)
    if est.refused:
        return None, est, {}, f"{NO_FIT} {plan.pattern} fits: {est.refused}"
    return f"fused:{plan.pattern}", est, params, ""


# ---------------------------------------------------------------------------------------------
# The greedy walk


class Grouper:
    """Groups the nodes of one graph; ``record`` (optional) holds measured latencies."""

    def __init__(self, graph: TileGraph, chip: Chip, record=None, keep: dict | None = None):
        self.graph, self.chip, self.record = graph, chip, record
        #: when given: tuning key -> (family, standalone module text, tiles, [params...]) of
        #: every candidate priced (``bench/welder_tune.py`` builds and times them)
        self.keep = keep
        self.decisions: list[Decision] = []
        self._singles: dict = {}
        self._priced: dict = {}           # tuning key -> price(): one pricing per structure

    def single(self, node: Node) -> Candidate:
        """A node as its own kernel, at the schedule roller-config gave it."""
        if node not in self._singles:
            tile = node.tile
            try:
                if tile.target == self.chip.target:
                    est = price_configured(tile, self.chip)
                else:       # configured for another target (the CPU): price Roller's own
                    est = price_roller(tile, self.chip)
            except Exception as e:      # noqa: BLE001  (no schedule: a kernel launch at least)
                est = cost.Estimate(1, refused=str(e))
                est.latency = self.chip.launch_seconds
            cand = Candidate([node], tile.kernel or "single", est, {})
            self._measure(cand, tile)
            if self.keep is not None and cand.key not in self.keep:
                self._keep(cand.key, "single", tile, 1)
            self._singles[node] = cand
        return self._singles[node]

    def _keep(self, key: str, family: str, tile: TileOp, tiles: int) -> None:
        from .standalone import tile_module
        params = [{}]
        if family.startswith("fused:"):
            params = [dict(c.params) for c in fused.analyze(tile, self.chip).choices]
        self.keep[key] = (family, str(tile_module(tile)), tiles, params)

    def _measure(self, cand: Candidate, tile: TileOp) -> None:
        """Measured time (and, for a fused pattern, configuration) from the tuning record."""
        from .record import key_of
        cand.key = key_of(tile, self.chip)
        if self.record is None:
            return
        best = self.record.best(cand.key)
        if best is not None:
            params, seconds = best
            if cand.family.startswith("fused:") and params:
                cand.params = params
            cand.estimate.latency = seconds
            cand.measured = True

    def evaluate(self, nodes: list[Node]) -> tuple[Candidate | None, str]:
        """Price the group of ``nodes``; groups of one structure (the layers of a BERT) are
        priced once (by their tuning key)."""
        tile = merged_tile(self.graph, nodes)
        if tile is None:
            return None, "its results cannot leave one tile (several types, or read early)"
        try:
            from .record import key_of
            key = key_of(tile, self.chip)
            if key not in self._priced:
                self._priced[key] = price(tile, self.chip)
            fam, est, params, why = self._priced[key]
            if fam is None:
                return None, why
            if self.keep is not None and key not in self.keep:
                self._keep(key, fam, tile, len(nodes))
            cand = Candidate(sorted(nodes, key=lambda n: n.index), fam,
                             dataclasses.replace(est), dict(params))
            self._measure(cand, tile)
            return cand, ""
        finally:
            tile.operation.erase()

    def closure(self, group: list[Node], offered: Node, grouped: set) -> tuple:
        """The smallest buildable group containing ``group`` and ``offered``, pulling in the
        offered node's ungrouped producers and up to LOOKAHEAD further consumers."""
        base = list(group) + [offered]
        first = min(n.index for n in group)
        for p in self.graph.producers(offered):
            if p not in base and p not in grouped and p.index > first:
                base.append(p)
        frontier = [base]
        why = ""
        for _ in range(LOOKAHEAD + 1):
            nxt = []
            for nodes in frontier:
                if len(nodes) > MAX_GROUP:
                    continue
                cand, reason = self.evaluate(nodes)
                if cand is not None:
                    return cand, ""
                # A pattern that took the group but found no configuration that fits says
                # more than a partial group no pattern takes.
                if not why or reason.startswith(NO_FIT) and not why.startswith(NO_FIT):
                    why = reason
                for n in nodes:
                    for c in self.graph.consumers(n):
                        if c not in nodes and c not in grouped:
                            ext = nodes + [c]
                            if not any(set(map(id, ext)) == set(map(id, x)) for x in nxt):
                                nxt.append(ext)
            frontier = nxt[:8]
        return None, why

    def run(self) -> list[Candidate]:
        grouped: set = set()
        out: list[Candidate] = []
        for v in self.graph.nodes:
            if v in grouped:
                continue
            best = self.single(v)
            group = [v]
            frontier = list(self.graph.consumers(v))
            while frontier:
                c = frontier.pop(0)
                if c in grouped or c in group:
                    continue
                cand, why = self.closure(group, c, grouped)
                ids = [n.index for n in group]
                if cand is None:
                    self.decisions.append(Decision(ids, [c.index], False, why))
                    continue
                added = [n for n in cand.nodes if n not in group]
                apart = best.latency + sum(self.single(n).latency for n in added)
                if cand.latency < apart:
                    self.decisions.append(Decision(
                        ids, [n.index for n in added], True,
                        f"{cand.family}: {_us(cand.latency)} < {_us(apart)} apart"))
                    group, best = list(cand.nodes), cand
                    for n in added:
                        frontier.extend(x for x in self.graph.consumers(n) if x not in frontier)
                else:
                    self.decisions.append(Decision(
                        ids, [n.index for n in added], False,
                        f"{cand.family}: {_us(cand.latency)} >= {_us(apart)} apart"))
            grouped.update(group)
            out.append(best)
        return out


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:.1f} us" if math.isfinite(seconds) else "inf"
