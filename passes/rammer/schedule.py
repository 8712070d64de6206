"""``rammer-schedule{target=sm_90}``: independent tiles side by side on the vEUs of a uvirtual.

For every segment of every block (``graph.py``: a run of configured tiles and the views between
them, in functions and in host loop and branch bodies), the pass

1. builds the segment's data-flow graph of tiles and each tile's kernel versions
   (``versions.py``: Roller's top-k ``candidates``);
2. schedules them (``wavefront.py``): waves, vEU ranges, a version per tile, the number of vEUs
   (occupancy x SMs for the kernel's resource envelope) and the synchronisation (completion
   counters or grid barriers between waves);
3. keeps the schedule where the model expects it to beat one kernel per operator (Rammer's own
   rule: the persistent kernel's estimated time against the sum of the kernels' times and their
   launches; ``always=true`` keeps every one, and the CPU target always does);
4. rewrites the segment into one ``quartet.uvirtual {num_veus}`` holding one ``quartet.vtask
   {veu_begin, veu_count, step}`` per tile, in execution order (step = wave), the views between
   them, and ``gpu.yield`` of what the rest of the function reads. Constants, and views of values
   from outside, move in front of it.

The uvirtual also records the envelope the vEU count was computed for (``threads``,
``shared_bytes``, ``registers``, ``blocks_per_unit``), the synchronisation (``sync``) and the
model's times in microseconds (``estimate_us``; ``alone_us``: one kernel per operator).
Segments larger than ``max_tasks`` tiles are cut into several uvirtuals (compile time and the
kernel's parameter space grow with the tasks).
"""

from __future__ import annotations

from dataclasses import dataclass

from mlir import ir

from quartet.dialects import UVirtualOp, VTaskOp, collect, yield_
from quartet.errors import QuartetError
from quartet.passes.base import ModulePass
from quartet.runtime import targets
from quartet.runtime.targets import Chip

from . import versions as kernel_versions
from .graph import FREE_OPS, VIEW_OPS, Segment, contains, escaping, graph_of, nested_blocks, segments
from .wavefront import SYNC_CHOICES, Job, Plan, schedule

#: kernel parameters a uvirtual may take (4 KiB of parameter space, 8-byte pointers, a margin)
MAX_KERNEL_ARGS = 480


@dataclass(frozen=True)
class RammerSchedule(ModulePass):
    name = "rammer-schedule"
    summary = ("Rammer: schedule the tiles of each segment side by side on the vEUs of one "
               "quartet.uvirtual (waves, vEU ranges, kernel versions, counters or barriers)")

    target: str = "sm_90"
    chip: str = ""
    sync: str = "auto"           # auto | counters | barrier
    max_tasks: int = 128
    max_per_unit: int = 0        # cap on vEUs per SM (0: what occupancy allows)
    always: bool = False         # keep every schedule, even where the model prefers kernels
    measure: bool = True         # the launch shapes the kernel families build (versions.py)

    def __post_init__(self):
        if self.sync not in SYNC_CHOICES:
            raise ValueError(f"sync must be one of {', '.join(SYNC_CHOICES)}, got '{self.sync}'")
        if self.max_tasks < 2:
            raise ValueError(f"max_tasks must be at least 2, got {self.max_tasks}")
        targets.get(self.target, self.chip or None)

    def apply(self, module) -> None:
        hw = targets.get(self.target, self.chip or None)
        op = module.operation if hasattr(module, "operation") else module
        fns = [f.operation for f in op.regions[0].blocks[0].operations
               if f.operation.name == "func.func" and len(f.operation.regions[0].blocks)]
        with op.context:
            for fn in fns:
                for block in nested_blocks(fn):
                    for segment in segments(block):
                        for part in _parts(segment, self.max_tasks):
                            for piece in _one_type(part):
                                self._schedule(piece, hw)

    def _schedule(self, segment: Segment, hw: Chip) -> None:
        graph = graph_of(segment)
        levels = graph.levels
        jobs = []
        for k, tile in enumerate(graph.tiles):
            found = kernel_versions.versions_of(tile, hw)
            if self.measure:
                found = kernel_versions.measured(tile, found, hw)
            if not found:           # an unconfigured tile: left to the lowering, alone
                return
            jobs.append(Job(_name(tile), tuple(found), graph.deps[k], levels[k]))
        plan = schedule(jobs, hw, self.sync, self.max_per_unit or None)
        if plan is None:
            return
        if hw.is_gpu and not self.always and \
                plan.makespan + hw.launch_seconds >= plan.alone:
            return
        for p in plan.placed:
            kernel_versions.apply(graph.tiles[p.job], p.version, hw)
        build_uvirtual(segment, graph.tiles, plan)


def _name(tile) -> str:
    try:
        return tile.root.operation.name
    except ValueError:
        return "quartet.tile"


def _parts(segment: Segment, max_tasks: int) -> list[Segment]:
    """``segment`` cut between tiles into parts of at most ``max_tasks`` tiles and
    :data:`MAX_KERNEL_ARGS` distinct tensors read or written."""
    from quartet.dialects import captures

    parts, start, tiles, values = [], 0, 0, set()
    ops = segment.ops
    for i, op in enumerate(ops):
        if op.name != "quartet.tile":
            continue
        mine = {v for v in captures(op) if isinstance(v.type, ir.RankedTensorType)}
        mine |= set(op.results)
        if tiles and (tiles + 1 > max_tasks or len(values | mine) > MAX_KERNEL_ARGS):
            parts.append(_trim(ops[start:i]))
            start, tiles, values = i, 0, set()
        tiles += 1
        values |= mine
    parts.append(_trim(ops[start:]))
    return [p for p in parts if p is not None and len(p.tiles) >= 2]


def _trim(ops: list) -> Segment | None:
    idx = [i for i, op in enumerate(ops) if op.name == "quartet.tile"]
    if not idx:
        return None
    end = idx[-1] + 1
    while end < len(ops) and ops[end].name in VIEW_OPS:
        end += 1
    return Segment(ops[idx[0]:end])


def _one_type(segment: Segment) -> list[Segment]:
    """``segment`` cut so that what each part yields has one type: the results of one Quartet
    op share a type (an IRDL limit of MLIR 22, dialects/README.md). Cut after the last tile
    that leaves one type behind; the rest is cut the same way."""
    body = [op for op in segment.ops if op.name not in FREE_OPS]
    if len({str(v.type) for v in escaping(body)}) <= 1:
        return [segment]
    ops = segment.ops
    tiles = [i for i, op in enumerate(ops) if op.name == "quartet.tile"]
    for k in range(len(tiles) - 1, 1, -1):
        head = _trim(ops[:tiles[k]])
        body = [op for op in head.ops if op.name not in FREE_OPS]
        if len({str(v.type) for v in escaping(body)}) <= 1:
            rest = _trim(ops[tiles[k]:])
            tail = _one_type(rest) if rest is not None and len(rest.tiles) >= 2 else []
            return [head] + tail
    rest = _trim(ops[tiles[1]:])
    return _one_type(rest) if rest is not None and len(rest.tiles) >= 2 else []


# ---------------------------------------------------------------------------------------------
# The rewrite


def _contains(body: list, op) -> bool:
    return contains(body, op)


def _defined_in(value: ir.Value, body: list) -> bool:
    owner = value.owner
    op = owner.owner if isinstance(owner, ir.Block) else owner.operation
    return _contains(body, op)


def build_uvirtual(segment: Segment, tiles: list, plan: Plan) -> UVirtualOp:
    """Rewrite ``segment`` into one ``quartet.uvirtual`` following ``plan`` (see the module
    docstring); returns it."""
    ops = segment.ops
    first = ops[0]
    body = []
    for op in ops:                   # constants first, then views of outside values
        if op.name in FREE_OPS:
            op.move_before(first)
        else:
            body.append(op)
    changed = True
    while changed:
        changed = False
        for op in list(body):
            if op.name != "quartet.tile" and \
                    not any(_defined_in(v, body) for v in op.operands):
                op.move_before(first if first in body else body[0])
                body.remove(op)
                changed = True
    results = escaping(body)
    anchor = body[0]
    with anchor.location, ir.InsertionPoint(anchor):
        uv = UVirtualOp([r.type for r in results], num_veus=plan.num_veus)
    with anchor.location, ir.InsertionPoint(uv.entry):
        term = yield_(results)
    # the tasks in execution order, each view as soon as its operands exist
    views = [op for op in body if op.name != "quartet.tile"]
    moved: list = []

    def flush():
        progress = True
        while progress:
            progress = False
            for view in list(views):
                if all(not _defined_in(v, body) or _defined_in(v, moved) for v in view.operands):
                    view.move_before(term)
                    moved.append(view)
                    views.remove(view)
                    progress = True

    for p in plan.placed:
        tile = tiles[p.job].operation
        flush()
        tile.move_before(term)
        moved.append(tile)
        _wrap(tile, p)
    flush()
    if views:
        raise QuartetError("rammer-schedule could not order the views of a segment")
    for i in range(len(results)):
        r = term.operation.operands[i]          # the vtask's result once its tile is wrapped
        for use in list(r.uses):
            if not _contains([uv.operation], use.owner.operation):
                use.owner.operands[use.operand_number] = uv.results[i]
    _annotate(uv, plan)
    return uv


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


def _annotate(uv: UVirtualOp, plan: Plan) -> None:
    i64 = ir.IntegerType.get_signless(64)
    attrs = uv.operation.attributes
    attrs["sync"] = ir.StringAttr.get(plan.sync)
    attrs["threads"] = ir.IntegerAttr.get(i64, plan.threads)
    attrs["shared_bytes"] = ir.IntegerAttr.get(i64, plan.shared_bytes)
    attrs["registers"] = ir.IntegerAttr.get(i64, plan.registers)
    attrs["blocks_per_unit"] = ir.IntegerAttr.get(i64, plan.per_unit)
    attrs["estimate_us"] = ir.FloatAttr.get_f64(round(plan.makespan * 1e6, 3))
    attrs["alone_us"] = ir.FloatAttr.get_f64(round(plan.alone * 1e6, 3))


def uvirtuals(module) -> list[UVirtualOp]:
    return [op.opview for op in collect(module, lambda o: o.name == "quartet.uvirtual")]
