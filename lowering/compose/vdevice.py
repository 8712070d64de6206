"""The virtual device program of a persistent kernel (Rammer's vDevice), and its checker.

A ``quartet.uvirtual`` runs on ``num_veus`` virtual execution units (vEUs). Each ``quartet.vtask``
is one :class:`Task`: the ``blocks`` virtual blocks of a tile, spread round-robin over the vEUs
``[veu_begin, veu_begin + veu_count)`` - block ``b`` runs on vEU ``veu_begin + b % veu_count``.
The tasks are kept in one global order (the order of the vtasks in the region, a topological
order of the data flow). What each vEU does follows from that order alone:

``counters`` (completion counters in global memory)::

    for each task t, in order:
        if the vEU runs blocks of t:
            for each task d that t waits for: wait until counter[d] == d.active
            run its blocks of t, one after the other
            if a later task waits for t: counter[t] += 1          (a release)

``barrier`` (a grid barrier between waves, where a wave is the tasks of one ``step``)::

    for each wave: run the vEU's blocks of the wave's tasks; grid barrier (not after the last)

``waits(t)`` are the task's dependencies without those implied by another one (a transitive
reduction: once ``d`` is complete, so is everything the blocks of ``d`` waited for).
``d.active = min(veu_count, blocks)`` is the number of vEUs that run blocks of ``d``, so the
counter of ``d`` reaches it exactly when every block of ``d`` is done.

The kernel may run on fewer physical blocks than vEUs (``P`` blocks, block ``p`` taking the vEUs
``p, p + P, ...``): it still walks the tasks in the global order and does, for each task, the
work of each of its vEUs in turn. That order is what makes the program deadlock-free whenever
all ``P`` blocks are resident (a cooperative launch): the earliest incomplete task waits only for
earlier, complete tasks, and every block with work in it is at it or past it.

:func:`check` executes the per-block lists with their waits in a simulated interleaving and
reports, naming the tasks: deadlocks (a block whose wait can never be met, an order that waits
for a later task), counters that do not reach exactly what their waiters expect in one call,
blocks of a task not run exactly once, and races - a task reading (or overwriting) bytes that
another task writes without a chain of waits or barriers ordering the two (``reads`` and
``writes`` are byte ranges of the program's buffers). It runs on ``P = num_veus`` and ``P = 1``
(and any other grids asked for). The lowering checks every persistent kernel before building it,
and ``rammer-check`` checks the schedules in the IR: a schedule it rejects is a compiler error,
never a hang on the GPU. This module is plain Python (no MLIR), like the runtime below it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

SYNC_MODES = ("counters", "barrier")


@dataclass(frozen=True)
class Region:
    """Bytes ``[start, end)`` of buffer ``buffer``."""

    buffer: str
    start: int
    end: int

    def overlaps(self, other: "Region") -> bool:
        return self.buffer == other.buffer and self.start < other.end and other.start < self.end


@dataclass(frozen=True)
class Task:
    """One vtask: a tile's ``blocks`` virtual blocks on vEUs ``[veu_begin, veu_begin+veu_count)``."""

    name: str
    blocks: int
    veu_begin: int
    veu_count: int
    wave: int = 0                       # the vtask's step
    deps: tuple[int, ...] = ()          # tasks whose results it reads (indices in the order)
    reads: tuple[Region, ...] = ()
    writes: tuple[Region, ...] = ()

    @property
    def active(self) -> int:
        """vEUs that run at least one block: what the task's counter reaches when it is done."""
        return min(self.veu_count, self.blocks)

    def runs_on(self, veu: int) -> bool:
        return self.veu_begin <= veu < self.veu_begin + self.active

    def blocks_of(self, veu: int) -> range:
        """The virtual blocks vEU ``veu`` runs (round-robin over the task's range)."""
        if not self.runs_on(veu):
            return range(0)
        return range(veu - self.veu_begin, self.blocks, self.veu_count)


@dataclass(frozen=True)
class Wait:
    task: int          # the task about to run
    on: int            # the task waited for
    need: int          # its counter's value when complete (per call)


@dataclass(frozen=True)
class Run:
    task: int
    veu: int
    blocks: tuple[int, ...]


@dataclass(frozen=True)
class Signal:
    task: int
    veu: int


@dataclass(frozen=True)
class Barrier:
    wave: int          # the wave it closes


Item = Wait | Run | Signal | Barrier


@dataclass(frozen=True)
class Problem:
    kind: str          # deadlock | order | count | coverage | range | race
    message: str
    tasks: tuple[int, ...] = ()


@dataclass(frozen=True)
class DeviceProgram:
    """Tasks in their global order on ``num_veus`` vEUs, synchronised by ``sync``."""

    num_veus: int
    tasks: tuple[Task, ...]
    sync: str = "counters"
    names: dict = field(default_factory=dict, compare=False)   # unused; room for reports

    @cached_property
    def closure(self) -> tuple[int, ...]:
        """Bit mask of every task each task depends on, directly or not."""
        masks: list[int] = []
        for t, task in enumerate(self.tasks):
            m = 0
            for d in task.deps:
                if d < t:
                    m |= (1 << d) | masks[d]
            masks.append(m)
        return tuple(masks)

    def waits(self, t: int) -> tuple[int, ...]:
        """The dependencies of task ``t`` that no other dependency implies (counters mode)."""
        deps = sorted(set(self.tasks[t].deps))
        implied = 0
        for d in deps:
            if d < t:
                implied |= self.closure[d]
        return tuple(d for d in deps if not (implied >> d) & 1)

    @cached_property
    def waited(self) -> frozenset[int]:
        """Tasks some later task waits for: the ones that signal their counter."""
        out = set()
        if self.sync == "counters":
            for t in range(len(self.tasks)):
                out.update(self.waits(t))
        return frozenset(out)

    def veus_of(self, p: int, physical: int) -> range:
        return range(p, self.num_veus, physical)

    def items(self, p: int, physical: int) -> list[Item]:
        """What physical block ``p`` of ``physical`` does, in order (see the module docstring)."""
        out: list[Item] = []
        mine = self.veus_of(p, physical)
        if self.sync == "barrier":
            waves = sorted({task.wave for task in self.tasks})
            for w in waves:
                for t, task in enumerate(self.tasks):
                    if task.wave != w:
                        continue
                    for v in mine:
                        if task.runs_on(v):
                            out.append(Run(t, v, tuple(task.blocks_of(v))))
                if w != waves[-1]:
                    out.append(Barrier(w))
            return out
        for t, task in enumerate(self.tasks):
            for v in mine:
                if not task.runs_on(v):
                    continue
                for d in self.waits(t):
                    out.append(Wait(t, d, self.tasks[d].active))
                out.append(Run(t, v, tuple(task.blocks_of(v))))
                if t in self.waited:
                    out.append(Signal(t, v))
        return out

    def describe(self, t: int) -> str:
        return f"task {t} ({self.tasks[t].name})"


# ---------------------------------------------------------------------------------------------
# The checker


def check(program: DeviceProgram, grids: tuple[int, ...] | None = None) -> list[Problem]:
    """Every problem of ``program``, for each number of physical blocks in ``grids`` (default:
    ``num_veus`` and 1); empty when it is sound."""
    problems = _static_problems(program)
    if problems:
        return problems
    grids = grids or tuple(sorted({program.num_veus, 1}, reverse=True))
    for physical in grids:
        problems = _simulate(program, physical)
        if problems:
            return problems
    return []


def check_or_raise(program: DeviceProgram, where: str = "persistent kernel",
                   location: str | None = None) -> None:
    """Raise a QuartetError naming the first problem of ``program`` and its tasks."""
    problems = check(program)
    if problems:
        from quartet.errors import QuartetError

        p = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise QuartetError(f"the schedule of {where} is unsound ({p.kind}): {p.message}{more}",
                           location)


def _static_problems(program: DeviceProgram) -> list[Problem]:
    out: list[Problem] = []
    d = program.describe
    if program.sync not in SYNC_MODES:
        out.append(Problem("range", f"unknown synchronisation '{program.sync}'"))
    for t, task in enumerate(program.tasks):
        if task.blocks < 1 or task.veu_count < 1 or task.veu_begin < 0 or \
                task.veu_begin + task.veu_count > program.num_veus:
            out.append(Problem("range", f"{d(t)} has {task.blocks} blocks on vEUs "
                               f"[{task.veu_begin}, {task.veu_begin + task.veu_count}) of "
                               f"{program.num_veus}", (t,)))
            continue
        seen = sorted(b for v in range(task.veu_begin, task.veu_begin + task.active)
                      for b in task.blocks_of(v))
        if seen != list(range(task.blocks)):
            out.append(Problem("coverage", f"{d(t)} does not run each of its {task.blocks} "
                               f"blocks exactly once", (t,)))
        for dep in task.deps:
            if not 0 <= dep < t:
                out.append(Problem("order", f"{d(t)} depends on task {dep}, which does not "
                                   f"come before it in the schedule", (t, dep)))
            elif program.sync == "barrier" and program.tasks[dep].wave >= task.wave:
                out.append(Problem("order", f"{d(t)} depends on {d(dep)} of the same or a later "
                                   f"wave: no barrier separates them", (t, dep)))
        if program.sync == "barrier" and t and task.wave < program.tasks[t - 1].wave:
            out.append(Problem("order", f"{d(t)} of wave {task.wave} comes after a task of wave "
                               f"{program.tasks[t - 1].wave}", (t,)))
    if out:
        return out
    if program.sync == "counters":
        for t in range(len(program.tasks)):
            for dep in program.waits(t):
                signals = program.tasks[dep].active if dep in program.waited else 0
                need = program.tasks[dep].active
                if signals != need:
                    out.append(Problem("count", f"{d(t)} waits for {need} signals of {d(dep)}, "
                                       f"which gives {signals} per call", (t, dep)))
    return out


def _required(program: DeviceProgram) -> list[int]:
    """For each task, the mask of tasks that must be complete before any of its blocks runs:
    earlier writers of bytes it reads or writes, earlier readers of bytes it writes."""
    tasks = program.tasks
    need = [0] * len(tasks)
    for t, task in enumerate(tasks):
        for u in range(t):
            other = tasks[u]
            conflict = any(w.overlaps(r) for w in other.writes for r in task.reads) or \
                any(w.overlaps(x) for w in other.writes for x in task.writes) or \
                any(r.overlaps(x) for r in other.reads for x in task.writes)
            if conflict:
                need[t] |= 1 << u
    return need


def _simulate(program: DeviceProgram, physical: int) -> list[Problem]:
    """Run the ``physical`` blocks' lists in an interleaving (each block as far as it can, in
    turn) tracking what each block knows to be complete."""
    d = program.describe
    tasks = program.tasks
    lists = [program.items(p, physical) for p in range(physical)]
    pos = [0] * physical
    counters = [0] * len(tasks)
    known = [0] * physical               # per block: tasks known complete (bit mask)
    at_start = [0] * len(tasks)          # union of what the runs of each task knew
    runs_left = [task.active for task in tasks]
    arrived: dict[int, set[int]] = {}
    required = _required(program)
    problems: list[Problem] = []
    complete = 0                          # mask of tasks all of whose runs are done

    def step(p: int) -> bool:
        nonlocal complete
        if pos[p] >= len(lists[p]):
            return False
        item = lists[p][pos[p]]
        if isinstance(item, Wait):
            if counters[item.on] < item.need:
                return False
            known[p] |= (1 << item.on) | at_start[item.on]
        elif isinstance(item, Run):
            missing = required[item.task] & ~known[p] & ~_own(item, program)
            if missing:
                other = (missing & -missing).bit_length() - 1
                problems.append(Problem(
                    "race", f"{d(item.task)} on vEU {item.veu} may run before {d(other)} is "
                    f"complete, and they touch the same bytes "
                    f"({_overlap(tasks[item.task], tasks[other])})", (item.task, other)))
                return False
            at_start[item.task] |= known[p]
            runs_left[item.task] -= 1
            if runs_left[item.task] == 0:
                complete |= 1 << item.task
        elif isinstance(item, Signal):
            counters[item.task] += 1
        elif isinstance(item, Barrier):
            here = arrived.setdefault(item.wave, set())
            here.add(p)
            if len(here) < physical:
                return False
            released = complete
            for q in range(physical):
                released |= known[q]
            for q in here:
                known[q] |= released
                if q != p:
                    pos[q] += 1
        pos[p] += 1
        return True

    while True:
        progress = False
        for p in range(physical):
            while step(p):
                progress = True
            if problems:
                return problems
        if all(pos[p] >= len(lists[p]) for p in range(physical)):
            return []
        if not progress:
            return [_deadlock(program, physical, lists, pos, counters)]


def _own(item: Run, program: DeviceProgram) -> int:
    return 1 << item.task


def _overlap(a: Task, b: Task) -> str:
    for x in a.reads + a.writes:
        for y in b.reads + b.writes:
            if x.overlaps(y):
                return f"buffer {x.buffer} bytes [{max(x.start, y.start)}, {min(x.end, y.end)})"
    return "?"


def _deadlock(program, physical, lists, pos, counters) -> Problem:
    d = program.describe
    stuck = []
    tasks = set()
    for p in range(physical):
        if pos[p] >= len(lists[p]):
            continue
        item = lists[p][pos[p]]
        if isinstance(item, Wait):
            stuck.append(f"block {p} waits in {d(item.task)} for {d(item.on)} "
                         f"({counters[item.on]} of {item.need} signals)")
            tasks.update((item.task, item.on))
        elif isinstance(item, Barrier):
            stuck.append(f"block {p} waits at the barrier after wave {item.wave}")
        if len(stuck) >= 3:
            break
    return Problem("deadlock", f"with {physical} resident blocks no block can go on: "
                   + "; ".join(stuck), tuple(sorted(tasks)))
