"""Wavefront scheduling of independent tasks onto the vEUs of one persistent kernel (Rammer 3.2).

Each tile of a segment is a *job* with its kernel versions (``versions.py``) and the jobs it
reads from. The scheduler places every job on a contiguous range of vEUs - its thread blocks
(rTasks) round-robin over the range - and keeps, per vEU, the time at which it becomes free:

* **waves**: the BFS levels of the data-flow graph (the paper's wavefront); jobs are placed
  level after level, each as early as its inputs and a range of free vEUs allow (Rammer's
  ``RangeScheduler``: the range of ``min(blocks, vEUs)`` vEUs whose latest free time is the
  earliest);
* **kernel versions**: for each job, every version that fits the kernel's resource envelope is
  tried and the one that *finishes* first is kept - the fastest alone when the vEUs are free,
  one with fewer blocks when its neighbours already hold most of them (Rammer's "efficient"
  kernels, 3.4);
* **the envelope**: the kernel's block is as wide as its widest task, its shared memory and
  registers the largest, so the number of vEUs is ``blocks_per_unit(threads, shared memory,
  registers) x SMs`` (``Chip.blocks_per_unit``, the occupancy calculator's rule). Every thread
  count among the versions (and its round-up to whole warps) and every number of blocks per
  SM it allows is tried as the envelope, with the versions that fit it (not wider, not needing
  more registers or shared memory than that occupancy leaves); the shortest schedule wins, the
  fewest vEUs among those within 3% of it;
* **synchronisation**: completion counters (a job waits for the jobs it reads, ``counter_wait_
  seconds`` each level) or a grid barrier after each wave (``grid_barrier_seconds``, waves
  packed from a common start); ``sync=auto`` keeps the cheaper estimate.

The execution order of the jobs (the order every vEU walks, ``compose/vdevice.py``) is by
estimated start time, which is a topological order: a job starts after its inputs finish.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from quartet.runtime.targets import Chip

from .versions import Version

#: registers per thread the dispatcher adds to its largest body (vEU loop, epoch, counters)
DISPATCH_REGISTERS = 16
SYNC_CHOICES = ("auto", "counters", "barrier")
#: schedules this close to the shortest are as good for the model
NEAR = 0.03


@dataclass(frozen=True)
class Job:
    name: str
    versions: tuple[Version, ...]
    deps: tuple[int, ...]
    level: int


@dataclass(frozen=True)
class Placed:
    job: int
    version: Version
    veu_begin: int
    veu_count: int
    wave: int
    start: float
    finish: float


@dataclass(frozen=True)
class Plan:
    placed: tuple[Placed, ...]      # in execution order
    num_veus: int
    per_unit: int                   # vEUs per SM
    threads: int
    shared_bytes: int
    registers: int
    sync: str
    makespan: float                 # seconds, the model's
    alone: float                    # one kernel per operator, launches included


def schedule(jobs: list[Job], chip: Chip, sync: str = "auto",
             max_per_unit: int | None = None) -> Plan | None:
    """The best plan for ``jobs`` on ``chip`` (None when no envelope fits one block per SM)."""
    if sync not in SYNC_CHOICES:
        raise ValueError(f"sync must be one of {', '.join(SYNC_CHOICES)}, got '{sync}'")
    modes = ("counters", "barrier") if sync == "auto" else (sync,)
    plans: list[Plan] = []
    warp = max(1, chip.warp_size)
    widths = {v.threads for j in jobs for v in j.versions}
    widths |= {-(-t // warp) * warp for t in widths}
    for threads in sorted(widths):
        most = max(1, chip.max_threads_per_unit // (-(-threads // warp) * warp)) \
            if chip.is_gpu else 1
        for per_unit in range(1, min(most, max_per_unit or most) + 1):
            envelope = _envelope(jobs, chip, threads, per_unit)
            if envelope is None:
                continue
            for mode in modes:
                plans.append(_place(jobs, chip, envelope, mode))
    if not plans:
        return None
    # Within NEAR of the shortest, the fewest vEUs: more registers per thread for the bodies
    # (the kernel is compiled for that many blocks per SM) and less dispatch per task.
    best = min(p.makespan for p in plans)
    return min((p for p in plans if p.makespan <= best * (1 + NEAR)),
               key=lambda p: (p.num_veus, p.makespan))


def alone_seconds(jobs: list[Job], chip: Chip) -> float:
    """One kernel per operator, each its fastest version alone, launches included."""
    return sum(min(v.seconds for v in j.versions) + chip.launch_seconds for j in jobs)


@dataclass(frozen=True)
class _Envelope:
    threads: int
    shared_bytes: int
    registers: int
    per_unit: int
    eligible: tuple[tuple[Version, ...], ...]


def _fits_width(v: Version, threads: int, warp: int) -> bool:
    # a body narrower than the kernel runs on whole warps (its barriers count its threads)
    return v.threads <= threads and (v.threads == threads or v.threads % warp == 0)


def _resident(v: Version, chip: Chip, threads: int) -> int:
    """Blocks of a kernel of ``threads`` threads an SM keeps when ``v`` is its largest body."""
    if not chip.is_gpu:
        return 1
    return chip.blocks_per_unit(threads, v.shared_bytes, v.registers + DISPATCH_REGISTERS)


def _envelope(jobs, chip: Chip, threads: int, per_unit: int) -> _Envelope | None:
    """The versions of each job that a kernel of ``threads`` threads and ``per_unit`` resident
    blocks per SM can run (wide enough, few enough registers and shared memory: a version
    needing more would cost the kernel its occupancy); None when a job has none."""
    warp = max(1, chip.warp_size)
    eligible = []
    for j in jobs:
        ok = tuple(v for v in j.versions if _fits_width(v, threads, warp)
                   and _resident(v, chip, threads) >= per_unit)
        if not ok:
            return None
        eligible.append(ok)
    smem = max(v.shared_bytes for e in eligible for v in e)
    regs = max(v.registers for e in eligible for v in e) + DISPATCH_REGISTERS
    return _Envelope(threads, smem, regs, per_unit, tuple(eligible))


def _best_range(free: np.ndarray, ready: float, v: Version, chip: Chip, per_unit: int):
    """(finish, begin, count, start) of version ``v`` on the best range of vEUs."""
    n = len(free)
    count = min(v.blocks, n)
    rounds = -(-v.blocks // count)
    latest = np.lib.stride_tricks.sliding_window_view(free, count).max(axis=1)
    start = np.maximum(latest, ready)
    finish = start + rounds * v.block_seconds(count)
    begin = int(np.argmin(finish))
    return float(finish[begin]), begin, count, float(start[begin])


def _commit(free: np.ndarray, ready: float, v: Version, begin: int, count: int,
            chip: Chip, per_unit: int) -> float:
    per_block = v.block_seconds(min(count, v.blocks))
    for i in range(min(count, v.blocks)):
        blocks = len(range(i, v.blocks, count))
        free[begin + i] = max(free[begin + i], ready) + blocks * per_block
    return float(free[begin:begin + count].max())


def _choose(free, ready, versions, chip, per_unit):
    best = None
    for v in versions:
        finish, begin, count, start = _best_range(free, ready, v, chip, per_unit)
        key = (finish, v.blocks * v.threads, v.index)
        if best is None or key < best[0]:
            best = (key, v, begin, count, start)
    return best[1:]


def _place(jobs: list[Job], chip: Chip, env: _Envelope, sync: str) -> Plan:
    n = env.per_unit * chip.num_units
    placed: list[Placed | None] = [None] * len(jobs)
    if sync == "counters":
        free = np.zeros(n)
        for j in sorted(range(len(jobs)), key=lambda j: (jobs[j].level, j)):
            job = jobs[j]
            ready = max((placed[d].finish for d in job.deps), default=0.0)
            if job.deps:
                ready += chip.counter_wait_seconds
            v, begin, count, start = _choose(free, ready, env.eligible[j], chip, env.per_unit)
            finish = _commit(free, ready, v, begin, count, chip, env.per_unit)
            placed[j] = Placed(j, v, begin, count, job.level, start, finish)
        order = sorted(placed, key=lambda p: (p.start, p.wave, p.job))
        makespan = max(p.finish for p in order)
    else:
        t = 0.0
        levels = sorted({j.level for j in jobs})
        for level in levels:
            free = np.full(n, t)
            members = [j for j in range(len(jobs)) if jobs[j].level == level]
            # the longest first: the others pack into the vEUs it leaves
            members.sort(key=lambda j: -min(v.seconds * v.slots for v in env.eligible[j]))
            for j in members:
                v, begin, count, start = _choose(free, t, env.eligible[j], chip, env.per_unit)
                finish = _commit(free, t, v, begin, count, chip, env.per_unit)
                placed[j] = Placed(j, v, begin, count, level, start, finish)
            t = float(free.max()) + (chip.grid_barrier_seconds if level != levels[-1] else 0.0)
        order = sorted(placed, key=lambda p: (p.wave, p.start, p.job))
        makespan = t
    return Plan(tuple(order), n, env.per_unit, env.threads, env.shared_bytes, env.registers,
                sync, makespan, alone_seconds(jobs, chip))


def levels_of(deps: list[tuple[int, ...]]) -> list[int]:
    out: list[int] = []
    for d in deps:
        out.append(1 + max((out[i] for i in d), default=-1))
    return out

