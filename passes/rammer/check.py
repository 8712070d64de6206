"""``rammer-check``: the schedule checker on the CPU, run on every ``quartet.uvirtual``.

Each uvirtual becomes the device program its persistent kernel will run
(``lowering/compose/vdevice.py``): its vtasks in order with their vEU ranges, waves and blocks
(the tile's ``grid``), the tasks each waits for (the results its tile reads, through views), and
as memory the value each task writes and the values it reads. The checker executes the per-vEU
task lists with their waits in a simulated interleaving, on as many blocks as vEUs and on one,
and reports deadlocks, waits for later tasks, counters that do not reach their target,
uncovered blocks and read-before-write races, naming the tasks; any of them is a compiler error
(one line, at the uvirtual). The lowering checks the kernel it builds once more, with the real
buffers and block counts of the host plan.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from quartet.dialects import collect
from quartet.errors import location_of
from quartet.lowering.compose.vdevice import DeviceProgram, Region, Task, check_or_raise
from quartet.lowering.device_program import is_device_program
from quartet.lowering.uvirtual import num_veus, sync_of, tasks_of
from quartet.passes.base import ModulePass


def device_program(uv) -> DeviceProgram:
    """The device program of ``uv``, with one memory region per task (its results)."""
    out = []
    for k, t in enumerate(tasks_of(uv)):
        reads = tuple(Region(f"task{d}", 0, 1) for d in t.deps)
        blocks = max(1, math.prod(t.tile.grid or [1]))
        out.append(Task(t.name, blocks, t.veu_begin, t.veu_count, t.step, t.deps, reads,
                        (Region(f"task{k}", 0, 1),)))
    return DeviceProgram(num_veus(uv), tuple(out), sync_of(uv))


@dataclass(frozen=True)
class RammerCheck(ModulePass):
    name = "rammer-check"
    summary = ("check every quartet.uvirtual's schedule on the CPU (deadlocks, missing waits, "
               "races): a schedule it rejects is an error, never a hang on the GPU")

    def apply(self, module) -> None:
        for uv in collect(module, lambda o: o.name == "quartet.uvirtual"):
            if is_device_program(uv):
                continue            # Grinder's: grinder-check checks its steps
            check_or_raise(device_program(uv.opview), "this quartet.uvirtual",
                           location_of(uv))

