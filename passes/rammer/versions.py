"""Kernel versions of a tile (Rammer's rKernel versions), from Roller's top-k schedules.

``roller-config{topk=K}`` keeps the K best schedules of a tile in its ``candidates`` attribute,
best first. Each is a kernel version with its own launch shape: virtual blocks, threads per
block, shared memory, an estimate of its registers, and the time Roller's micro model gives it
when it runs alone. Rammer chooses among them per operator (``wavefront.py``): the fastest one
alone, or one with fewer blocks or fewer resources that packs beside its neighbours on the vEUs
of one persistent kernel (the paper's "efficient" kernels, chosen there by time x blocks x
threads; here by the estimated finish time in the schedule being built).

The model's estimate includes one kernel launch, which a task of a persistent kernel does not
pay: :attr:`Version.seconds` is the estimate without it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mlir import ir

from quartet.dialects import TileOp
from quartet.errors import QuartetError
from quartet.runtime.targets import Chip
from quartet.passes.analysis import kernels as kernel_analysis
from quartet.passes.roller import config as roller_config
from quartet.passes.roller.policy import Schedule


@dataclass(frozen=True)
class Version:
    """One schedule of a tile seen as a kernel version."""

    index: int                  # position in the tile's candidates (0 = Roller's best)
    schedule: Schedule
    blocks: int
    threads: int
    shared_bytes: int
    registers: int              # the model's estimate, per thread
    seconds: float              # alone on the chip, no launch
    slots: int                  # blocks resident at once when it runs alone

    def block_seconds(self, in_flight: int) -> float:
        """Seconds one block takes when ``in_flight`` blocks of the version run at once: its
        time alone spread over the blocks it had in flight then, stretched when more are in
        flight now (they share the SMs' throughput)."""
        alone = self.seconds * self.slots / self.blocks
        return alone * max(1.0, in_flight / self.slots)


def _version(index: int, s: Schedule, chip: Chip, floor: float) -> Version:
    blocks = max(1, math.prod(s.grid))
    smem = s.smem_bytes * max(1, s.stages)
    per_unit = s.blocks_per_unit or chip.blocks_per_unit(s.threads, smem, s.regs_per_thread)
    slots = min(blocks, max(1, per_unit) * chip.num_units)
    seconds = max(s.estimate - chip.launch_seconds, floor)
    return Version(index, s, blocks, s.threads, smem, s.regs_per_thread, seconds, slots)


def roofline_seconds(tile: TileOp, chip: Chip) -> float:
    """The least time the tile's bytes take through DRAM: the estimate of a schedule the
    model does not time (row programs)."""
    from quartet.dialects import captures
    from quartet.lowering.prepare import dtype_of, nbytes, shape_of

    values = [v for v in captures(tile) if isinstance(v.type, ir.RankedTensorType)]
    values += list(tile.results)
    total = sum(nbytes(shape_of(v.type), dtype_of(v.type)) for v in values)
    return total / chip.dram_bandwidth


def versions_of(tile: TileOp, chip: Chip) -> list[Version]:
    """The tile's kernel versions, best alone first (its current schedule is the first one
    when it has no candidates, or when it was given by hand)."""
    attrs = tile.operation.attributes
    k = len(ir.ArrayAttr(attrs["candidates"])) if "candidates" in attrs else 1
    try:
        schedules = roller_config.configure(tile, chip, k)
    except QuartetError:
        schedules = []
    current = (tuple(tile.block_tile or ()), tuple(tile.thread_tile or ()), tile.tensor_core)
    if not any(s.key == current for s in schedules):
        try:
            schedules = [roller_config.check_fits(tile, chip)]
        except QuartetError:
            return []
    floor = roofline_seconds(tile, chip)
    return [_version(i, s, chip, floor) for i, s in enumerate(schedules)]


def apply(tile: TileOp, version: Version, chip: Chip) -> None:
    """Make ``version`` the tile's schedule (the candidates stay) and record its kernel
    family again (a version may change it)."""
    keep = tuple(k for k in ("target",) if k in tile.operation.attributes)
    roller_config.write_schedule(tile, [version.schedule], chip, keep=keep)
    kernel_analysis.record(tile, chip)
