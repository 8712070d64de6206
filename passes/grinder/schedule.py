"""Rammer's scheduler inside loops and branches: the tiles of a device program become vtasks.

A lifted uvirtual holds blocks (its own, and the regions of the ``scf`` ops in it, at any
depth). Each block is cut into *phases* at its control-flow ops: a phase is the tiles and views
between two ``scf`` ops, and it runs as a straight line of waves. Within a phase the tiles'
data-flow graph (``rammer/graph.py``, through views) gives each tile its BFS level, as in a
Rammer segment; tiles of different phases never share a wave, because a loop or a branch (and
the grid barrier around it) lies between them.

All phases of all blocks are scheduled together by Rammer's wavefront scheduler
(``rammer/wavefront.py``) in barrier mode, each phase's levels offset past the previous ones:
one call gives every tile a kernel version and a vEU range under *one* resource envelope - the
persistent kernel has one block size, one shared-memory size and one number of vEUs for all its
loops. The plan's waves become the vtasks' ``step`` (increasing along each block, so the region
order is the execution order); between two steps the lowering puts a grid barrier.

Assumes the tiles are configured (``roller-config``, with ``topk`` candidates as kernel
versions) and that :mod:`liftable` accepted every op.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlir import ir

from quartet.dialects import VTaskOp, yield_
from quartet.passes.rammer import versions as kernel_versions
from quartet.passes.rammer.graph import Segment, graph_of
from quartet.passes.rammer.wavefront import Job, Plan, schedule
from quartet.runtime.targets import Chip

from .liftable import CONTROL_OPS


@dataclass
class Phase:
    """Ops of one block between two control-flow ops (tiles, views, constants, scalars), the
    op that ends it (a control-flow op or the block's terminator), and the level offset of its
    tiles in the combined schedule."""

    ops: list
    end: ir.Operation
    block: ir.Block = None
    offset: int = 0
    tiles: list = None
    deps: list = None
    levels: list = None


def blocks_of(op: ir.Operation) -> list[ir.Block]:
    """Blocks of ``op``'s regions and, depth first, of the control-flow ops in them."""
    out = []
    for region in op.regions:
        for block in region.blocks:
            out.append(block)
            for inner in block.operations:
                if inner.operation.name in CONTROL_OPS:
                    out += blocks_of(inner.operation)
    return out


def _phases_in_order(root: ir.Operation) -> list[Phase]:
    """The phases of every block under ``root`` in execution order: a block's phase, then the
    phases of the control-flow op that ends it (its regions in order), then the block's next
    phase. (Waves must increase along the order every vEU walks.)"""
    out: list[Phase] = []
    for region in root.regions:
        for block in region.blocks:
            for phase in phases_of(block):
                out.append(phase)
                if phase.end.name in CONTROL_OPS:
                    out += _phases_in_order(phase.end)
    return out


def phases_of(block: ir.Block) -> list[Phase]:
    out, run = [], []
    for op in block.operations:
        op = op.operation
        if op.name in CONTROL_OPS or op == _last(block):
            out.append(Phase(run, op, block))
            run = []
        else:
            run.append(op)
    return out


def _last(block: ir.Block) -> ir.Operation:
    return block.operations[len(block.operations) - 1].operation


def _name(tile) -> str:
    try:
        return tile.root.operation.name
    except ValueError:
        return "quartet.tile"


@dataclass
class Trial:
    """A schedule of every tile of a device program, not yet written into the IR."""

    phases: list[Phase]
    tiles: list                 # every tile, in job order
    jobs: list                  # their jobs (kernel versions, dependencies, levels)
    plan: Plan


def plan_device_program(root: ir.Operation, hw: Chip, measure: bool = True,
                        max_per_unit: int | None = None) -> Trial | None:
    """Schedule the tiles of the blocks of ``root`` (a uvirtual, or an op to be lifted; its own
    block is not included for an op that is not a uvirtual) as one persistent kernel; None when
    a tile has no kernel version or no envelope fits."""
    phases: list[Phase] = []
    tiles: list = []
    jobs: list[Job] = []
    offset = 0
    for phase in _phases_in_order(root):
        graph = graph_of(Segment(phase.ops))
        phase.tiles, phase.deps, phase.levels = graph.tiles, graph.deps, graph.levels
        phase.offset = offset
        base = len(tiles)
        for k, tile in enumerate(graph.tiles):
            found = kernel_versions.versions_of(tile, hw)
            if measure:
                found = kernel_versions.measured(tile, found, hw)
            if not found:
                return None
            found = [_whole_warp(v, hw) for v in found]
            jobs.append(Job(_name(tile), tuple(found),
                            tuple(base + d for d in graph.deps[k]),
                            offset + graph.levels[k]))
            tiles.append(tile)
        offset += 1 + max(graph.levels, default=-1)
        phases.append(phase)
    if not jobs:
        return None
    plan = schedule(jobs, hw, "barrier", max_per_unit)
    if plan is None:
        return None
    return Trial(phases, tiles, jobs, plan)


def _whole_warp(v, hw: Chip):
    """A version narrower than a warp (the one-thread bodies of scalar tiles: a loop counter,
    a predicate) seen by the scheduler as one warp wide, so that it shares a kernel with wider
    bodies: it runs on the warp's first threads and the others skip it. The lowering refuses
    such a body if it holds a barrier (``compose/device_loops.py``)."""
    from dataclasses import replace

    warp = max(1, hw.warp_size)
    return replace(v, threads=warp) if hw.is_gpu and v.threads < warp else v


def write_schedule(trial: Trial, hw: Chip) -> None:
    """Give every tile its version and wrap it in a vtask on its vEUs at its wave; within each
    phase, the vtasks in wave order and every other op right after what it reads."""
    placed = {p.job: p for p in trial.plan.placed}
    index = {id(t): k for k, t in enumerate(trial.tiles)}
    for k, tile in enumerate(trial.tiles):
        kernel_versions.apply(tile, placed[k].version, hw)
    for phase in trial.phases:
        order = sorted(phase.tiles, key=lambda t: (placed[index[id(t)]].wave, index[id(t)]))
        _reorder(phase, [t.operation for t in order])
        for tile in order:
            _wrap(tile.operation, placed[index[id(tile)]])


def _reorder(phase: Phase, tiles: list) -> None:
    """Move the phase's ops in front of its end: ``tiles`` in that order, every other op as
    soon as the values it reads exist (values from outside the phase exist from the start)."""
    members = list(phase.ops)      # lists, not sets: an op's hash is not stable in the bindings
    others = [op for op in phase.ops if op.name != "quartet.tile"]
    placed: list = []

    def ready(op) -> bool:
        for v in op.operands:
            owner = v.owner
            if isinstance(owner, ir.Block):
                continue
            src = owner.operation
            if src in members and src not in placed:
                return False
        return True

    def flush():
        progress = True
        while progress:
            progress = False
            for op in list(others):
                if ready(op):
                    op.move_before(phase.end)
                    placed.append(op)
                    others.remove(op)
                    progress = True

    flush()
    for tile in tiles:
        tile.move_before(phase.end)
        placed.append(tile)
        flush()
    if others:
        raise RuntimeError("grinder: could not order the ops of a phase")


def _wrap(tile: ir.Operation, p) -> None:
    with tile.location, ir.InsertionPoint(tile):
        vt = VTaskOp([r.type for r in tile.results], veu_begin=p.veu_begin,
                     veu_count=p.veu_count, step=p.wave)
    with tile.location, ir.InsertionPoint(vt.entry):
        y = yield_(list(tile.results))
    tile.move_before(y)
    for i, r in enumerate(tile.results):
        for use in list(r.uses):
            if use.owner.operation != y.operation:
                use.owner.operands[use.operand_number] = vt.results[i]
