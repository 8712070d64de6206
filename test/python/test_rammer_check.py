"""The schedule checker (``lowering/compose/vdevice.py``): per-vEU task lists with their waits,
executed in a simulated interleaving; deadlocks, wrong counts, uncovered blocks and races are
reported naming the tasks. Plain Python: no MLIR, no GPU."""

import pytest

from quartet.errors import QuartetError
from quartet.lowering.compose.vdevice import (Barrier, DeviceProgram, Region, Run, Signal, Task,
                                              Wait, check, check_or_raise)


def buf(name, start=0, end=64):
    return Region(name, start, end)


def diamond(sync="counters", **change):
    """a -> (b, c) -> d on 8 vEUs: b and c side by side, d reads both."""
    tasks = [
        Task("a", 8, 0, 8, 0, (), (buf("x"),), (buf("A"),)),
        Task("b", 3, 0, 4, 1, (0,), (buf("A"),), (buf("B"),)),
        Task("c", 6, 4, 4, 1, (0,), (buf("A"),), (buf("C"),)),
        Task("d", 5, 0, 8, 2, (1, 2), (buf("B"), buf("C")), (buf("D"),)),
    ]
    for k, v in change.items():
        i = "abcd".index(k)
        tasks[i] = v(tasks[i])
    return DeviceProgram(8, tuple(tasks), sync)


def test_a_sound_schedule_passes_on_every_grid():
    for sync in ("counters", "barrier"):
        p = diamond(sync)
        assert check(p, grids=(8, 5, 3, 1)) == []


def test_per_veu_lists_follow_the_global_order():
    p = diamond()
    assert p.waits(3) == (1, 2) and p.waits(1) == (0,)
    assert p.waited == {0, 1, 2}
    items = p.items(5, 8)            # vEU 5: a block 5, c block 1 (c starts at 4), d none
    assert items == [Run(0, 5, (5,)), Signal(0, 5), Wait(2, 0, 8), Run(2, 5, (1, 5)),
                     Signal(2, 5)]
    assert p.tasks[1].active == 3 and list(p.tasks[2].blocks_of(5)) == [1, 5]
    # one physical block running every vEU: still task after task
    one = p.items(0, 1)
    runs = [i.task for i in one if isinstance(i, Run)]
    assert runs == sorted(runs)
    barrier = diamond("barrier").items(0, 8)
    assert [type(i) for i in barrier].count(Barrier) == 2


def test_transitive_waits_are_dropped():
    tasks = (Task("a", 2, 0, 2), Task("b", 2, 0, 2, 1, (0,)), Task("c", 2, 0, 2, 2, (0, 1)))
    p = DeviceProgram(2, tasks)
    assert p.waits(2) == (1,)        # b waited for a: b complete implies a complete
    assert check(p) == []


def test_a_read_without_a_wait_is_a_race_naming_both_tasks():
    p = diamond(d=lambda t: Task(t.name, t.blocks, t.veu_begin, t.veu_count, t.wave, (1,),
                                 t.reads, t.writes))
    (problem,) = check(p)
    assert problem.kind == "race" and set(problem.tasks) == {3, 2}
    assert "task 3 (d)" in problem.message and "task 2 (c)" in problem.message
    assert "buffer C" in problem.message


def test_a_task_in_the_same_wave_as_its_input_is_refused_with_barriers():
    p = diamond("barrier", c=lambda t: Task(t.name, t.blocks, t.veu_begin, t.veu_count, 0,
                                             t.deps, t.reads, t.writes))
    problems = check(p)
    assert problems and problems[0].kind == "order" and problems[0].tasks == (2, 0)


def test_waiting_for_a_later_task_is_refused():
    tasks = (Task("a", 2, 0, 2, 0, (1,)), Task("b", 2, 0, 2, 0))
    (problem,) = check(DeviceProgram(2, tasks))
    assert problem.kind == "order" and "does not come before it" in problem.message


def test_a_deadlock_is_found_by_the_simulation():
    """A signal that never comes: task b waits for a, which (wrongly) runs nowhere."""
    p = diamond()

    class Silent(DeviceProgram):
        def items(self, block, physical):
            return [i for i in super().items(block, physical)
                    if not (isinstance(i, Signal) and i.task == 1)]

    silent = Silent(p.num_veus, p.tasks, p.sync)
    (problem,) = check(silent, grids=(8,))
    assert problem.kind == "deadlock" and 1 in problem.tasks and 3 in problem.tasks
    assert "0 of 3 signals" in problem.message


def test_ranges_and_coverage_are_checked():
    bad = DeviceProgram(4, (Task("a", 4, 2, 4),))
    assert check(bad)[0].kind == "range"
    with pytest.raises(QuartetError, match=r"unsound \(range\).*task 0 \(a\)"):
        check_or_raise(bad, "k", "here")


def test_overwriting_bytes_another_task_still_reads_is_a_race():
    """b reads A, c overwrites A without waiting for b (a write after read)."""
    tasks = (Task("a", 1, 0, 1, 0, (), (), (buf("A"),)),
             Task("b", 2, 0, 2, 1, (0,), (buf("A"),), (buf("B"),)),
             Task("c", 2, 2, 2, 1, (0,), (), (buf("A", 32, 40),)))
    (problem,) = check(DeviceProgram(4, tasks))
    assert problem.kind == "race" and set(problem.tasks) == {1, 2}
    assert "bytes [32, 40)" in problem.message


def test_a_larger_program_checks_quickly():
    """48 tasks of 196 blocks on 528 vEUs, three waves, each task reading the one before."""
    import time

    tasks = []
    for i in range(48):
        deps = (i - 8,) if i >= 8 else ()
        reads = (buf(f"T{i - 8}"),) if deps else ()
        tasks.append(Task(f"t{i}", 196, (i % 8) * 66, 66, i // 8, deps, reads, (buf(f"T{i}"),)))
    p = DeviceProgram(528, tuple(tasks))
    t0 = time.perf_counter()
    assert check(p) == []
    assert time.perf_counter() - t0 < 20
    assert all(isinstance(i, (Wait, Run, Signal)) for i in p.items(0, 528))
