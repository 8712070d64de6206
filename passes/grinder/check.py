"""``grinder-check``: every device program Grinder made is one a persistent kernel can run.

For each ``quartet.uvirtual`` holding control flow: every op of every block is one a device
program holds (``liftable.py``), the device program reads as one (``lowering/device_program.py``:
tasks, predicates, carried values), and its tasks, wave after wave, pass the schedule checker
(``lowering/compose/vdevice.py``: vEU ranges, every block run once, dependencies only on earlier
waves). A program it rejects is a compiler error at the uvirtual, never a kernel that could hang.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from quartet.dialects import collect
from quartet.errors import location_of
from quartet.lowering import device_program as dp
from quartet.lowering.compose.vdevice import DeviceProgram, Region, Task, check_or_raise
from quartet.lowering.uvirtual import num_veus
from quartet.passes.base import ModulePass

from .lift_control_flow import check_blocks


def device_program(uv) -> DeviceProgram:
    """The tasks of ``uv``'s device program, one memory region per task (its results)."""
    plan = dp.plan(uv)
    tasks = []
    for k, t in enumerate(plan.tasks):
        reads = tuple(Region(f"task{d}", 0, 1) for d in t.deps)
        blocks = max(1, math.prod(t.tile.grid or [1]))
        tasks.append(Task(t.name, blocks, t.veu_begin, t.veu_count, t.step, t.deps, reads,
                          (Region(f"task{k}", 0, 1),)))
    return DeviceProgram(num_veus(uv), tuple(tasks), "barrier")


@dataclass(frozen=True)
class GrinderCheck(ModulePass):
    name = "grinder-check"
    summary = ("check every device program of grinder-lift-control-flow (ops it can hold, its "
               "steps, the schedule of its tasks): an error, never a hang on the GPU")

    def apply(self, module) -> None:
        for uv in collect(module, lambda o: o.name == "quartet.uvirtual"):
            if not dp.is_device_program(uv.opview):
                continue
            check_blocks(uv.opview)
            check_or_raise(device_program(uv.opview), "this device program", location_of(uv))
