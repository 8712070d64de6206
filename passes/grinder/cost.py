"""How to run a program's control flow: device loop, host loop or CUDA graph (Cocktailer 3.2).

Cocktailer chooses per control-flow region by building every variant and profiling it (its
``search_best_flags.py``); Quartet estimates the three ways with the chip's figures
(``runtime/targets.py``) and lets a flag override the choice (``control=...``):

* **device** - one persistent kernel (cooperative launch) for the whole region: one launch per
  call, each wave of tasks as scheduled (``schedule.py``: Rammer's estimate of the wave on the
  kernel's vEUs), a grid barrier between waves, before every predicate that all blocks read
  and after the copies of loop-carried values;
* **host** - today's host program: one launch per task, and a host round trip (the predicate
  read back: a stream synchronisation and a copy) per predicate evaluated;
* **graph** - the host program captured as a CUDA graph whose loops and branches are
  conditional nodes (CUDA 12.4+): a graph node per task (cheaper than a launch, more than a
  wave in a persistent kernel) and a small kernel setting the condition per evaluation; no
  round trip, but no cooperative kernels inside conditional bodies either. **Not built**: the runtime has no
  conditional graphs, so this estimate is recorded for comparison and never chosen.

A loop runs its trip count when it is static (``loops.py``), else :data:`ASSUMED_TRIPS`; each
branch of an ``scf.if`` is taken half the time. The three estimates are recorded beside the
choice (``control``, ``device_us``, ``host_us``, ``graph_us``).
"""

from __future__ import annotations

from dataclasses import dataclass

from mlir import ir

from quartet.runtime.targets import Chip

from . import loops
from .liftable import CONTROL_OPS

#: iterations assumed for a loop whose trip count depends on data
ASSUMED_TRIPS = 16
CONTROL_CHOICES = ("auto", "device", "host")


@dataclass(frozen=True)
class Estimate:
    device: float
    host: float
    graph: float

    def best(self) -> str:
        """The cheaper of the two ways Quartet builds (the graph estimate is informative)."""
        return "device" if self.device <= self.host else "host"


class Weights:
    """How many times each block under an op runs per call (blocks compared with ``==``: the
    bindings give no stable hash of a block)."""

    def __init__(self, root: ir.Operation):
        self.pairs: list = []
        self._visit(root.operation if hasattr(root, "operation") else root, 1.0)

    def _visit(self, op: ir.Operation, w: float) -> None:
        for region in op.regions:
            for block in region.blocks:
                self.pairs.append((block, w))
                for inner in block.operations:
                    inner = inner.operation
                    if inner.name in CONTROL_OPS:
                        self._visit(inner, w * _factor(inner))

    def get(self, block: ir.Block, default: float = 1.0) -> float:
        for b, w in self.pairs:
            if b == block:
                return w
        return default


def _factor(op: ir.Operation) -> float:
    if op.name == "scf.if":
        return 0.5
    trips = loops.trip_count(op)
    return float(trips) if trips is not None else float(ASSUMED_TRIPS)


def _control(root: ir.Operation, w: Weights) -> tuple[float, float, float]:
    """(predicate evaluations, phases of carried-value copies, copies) per call under ``root``:
    a while evaluates its predicate once more than it iterates, every iteration (and every
    branch taken) ends with a phase of copies into the carried values' buffers."""
    evaluations = phases = copies = 0.0
    for region in root.regions:
        for block in region.blocks:
            for inner in block.operations:
                inner = inner.operation
                if inner.name not in CONTROL_OPS:
                    continue
                here = w.get(block)
                if inner.name == "scf.if":
                    evaluations += here
                    phases += here
                    copies += here * len(inner.results)
                else:
                    trips = _factor(inner)
                    carried = len(inner.operands) - (3 if inner.name == "scf.for" else 0)
                    evaluations += here * (trips + 1) if inner.name == "scf.while" else 0.0
                    phases += here * trips
                    copies += here * trips * carried
                e, p, c = _control(inner, w)
                evaluations, phases, copies = evaluations + e, phases + p, copies + c
    return evaluations, phases, copies


def estimate(trial, root: ir.Operation, hw: Chip) -> Estimate:
    """The three estimates (seconds per call) of the device program ``trial`` scheduled for
    ``root`` (``schedule.Trial``)."""
    w = Weights(root)
    placed = {p.job: p for p in trial.plan.placed}
    device = hw.launch_seconds
    host = graph = 0.0
    k = 0
    for phase in trial.phases:
        times = w.get(phase.block)
        waves: dict[int, list] = {}
        for _ in phase.tiles:
            p = placed[k]
            waves.setdefault(p.wave, []).append(p)
            alone = min(v.seconds for v in trial.jobs[k].versions)
            host += times * (alone + hw.launch_seconds)
            graph += times * (alone + hw.graph_node_seconds)
            k += 1
        for ps in waves.values():
            start = min(p.start for p in ps)
            device += times * (max(p.finish for p in ps) - start + hw.grid_barrier_seconds)
    evaluations, phases, copies = _control(root, w)
    device += (evaluations + phases) * hw.grid_barrier_seconds
    host += evaluations * hw.host_roundtrip_seconds + copies * hw.launch_seconds
    graph += hw.launch_seconds + copies * hw.graph_node_seconds + \
        evaluations * (hw.graph_node_seconds + hw.conditional_node_seconds)
    return Estimate(device, host, graph)
