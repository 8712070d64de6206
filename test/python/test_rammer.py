"""Rammer (issue 11): independent tiles side by side in one persistent kernel per uvirtual.

* the pass: segments of the data-flow graph become one ``quartet.uvirtual`` of ``quartet.vtask``s
  whose schedule the checker accepts, on every model of the zoo and every benchmark workload
  (the pipeline ends with ``rammer-check``);
* the wavefront scheduler: waves, disjoint vEU ranges for independent tasks, kernel versions;
* the lowering: one cooperative kernel per uvirtual, its manifest record (vEUs, blocks per SM,
  a zeroed synchronisation buffer, its tasks), PTX with acquire/release synchronisation and no
  non-coherent loads, narrow bodies on a barrier of their own;
* numerics: the CPU target runs the schedule's tasks in order; the GPU artifact's CPU twin runs
  the persistent kernel's tasks in schedule order on the very buffers the kernel binds.

The GPU run of the same artifacts: ``bench/e2e`` (``branchy_cells_f32@rammer``,
``inception_f32@rammer``, ``branchy_cells_f32@rammer{sync=barrier}``), built here and run on the
GPU machine, which has no MLIR.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
from mlir import ir

import quartet.dialects as qd
from quartet.errors import QuartetError
from quartet.runtime import manifest as mf
from quartet.runtime import targets

ZOO = ("mlp", "attention", "bert_layer", "conv_block", "lstm_loop", "cond_residual")


def _workloads():
    from quartet.bench import suite

    return [w.name for w in suite.WORKLOADS]


@functools.lru_cache(maxsize=None)
def scheduled(name: str, target: str = "sm_90") -> str:
    """The IR after the rammer pipeline (which ends with rammer-check) of a zoo model or of a
    benchmark workload at its tiny sizes."""
    from quartet.frontend.compile import import_linalg, run_passes

    if name in ZOO:
        from quartet.frontend import models

        model, inputs = models.build(name, seed=0)
    else:
        from quartet.bench import suite

        w = suite.get(name)
        model, inputs = w.module(0, tiny=True, form=w.quartet_form), w.inputs(0, tiny=True)
    return str(run_passes(import_linalg(model, inputs).mlir_text, "rammer", target))


@pytest.mark.parametrize("name", ZOO + tuple(_workloads()))
def test_every_scheduled_program_passes_the_checker(name):
    """rammer-check ran at the end of the pipeline; here it runs again on the printed IR."""
    from quartet.driver import run_pipeline
    from quartet.passes.rammer.check import device_program
    from quartet.lowering.compose.vdevice import check

    text = scheduled(name)
    with qd.context(), ir.Location.unknown():
        module = ir.Module.parse(text)
        run_pipeline(module, "builtin.module(rammer-check)")
        for uv in qd.collect(module, lambda o: o.name == "quartet.uvirtual"):
            program = device_program(uv.opview)
            assert check(program, grids=(program.num_veus, 7, 1)) == []
            assert len(program.tasks) >= 2


def test_branchy_cells_are_one_uvirtual_in_waves():
    text = scheduled("branchy_cells_f32")
    assert text.count('"quartet.uvirtual"') == 1 and "tensor.concat" in text
    with qd.context(), ir.Location.unknown():
        module = ir.Module.parse(text)
        (uv,) = qd.collect(module, lambda o: o.name == "quartet.uvirtual")
        from quartet.lowering.uvirtual import tasks_of

        tasks = tasks_of(uv.opview)
        assert len(tasks) == text.count('"quartet.tile"')
        n = ir.IntegerAttr(uv.attributes["num_veus"]).value
        chip = targets.get("sm_90")
        per = ir.IntegerAttr(uv.attributes["blocks_per_unit"]).value
        assert n == per * chip.num_units
        # tasks of one wave run on disjoint vEU ranges, each inside the device
        for a in tasks:
            assert 0 <= a.veu_begin and a.veu_begin + a.veu_count <= n
        # a task comes after every task it reads, and its wave after theirs
        for k, t in enumerate(tasks):
            assert all(d < k and tasks[d].step < t.step for d in t.deps)
        convs = [t for t in tasks if "conv" in t.name]
        first = [t for t in convs if t.step == min(c.step for c in convs)]
        ranges = sorted((t.veu_begin, t.veu_begin + t.veu_count) for t in first)
        assert len(first) >= 2 and any(b1 <= a2 for (a1, b1), (a2, b2) in zip(ranges, ranges[1:]))


def test_the_scheduler_places_independent_jobs_side_by_side():
    from quartet.passes.rammer.versions import Version
    from quartet.passes.rammer.wavefront import Job, schedule

    chip = targets.get("sm_90")

    def version(index, blocks, seconds, threads=128):
        return Version(index, None, blocks, threads, 0, 32, seconds, min(blocks, 8 * 132))

    small = (version(0, 64, 4e-6),)
    jobs = [Job("a", small, (), 0), Job("b", small, (), 0), Job("c", small, (0, 1), 1)]
    plan = schedule(jobs, chip, "counters")
    a, b = [p for p in plan.placed if p.job in (0, 1)]
    assert a.veu_begin + a.veu_count <= b.veu_begin or b.veu_begin + b.veu_count <= a.veu_begin
    (c,) = [p for p in plan.placed if p.job == 2]
    assert c.start >= max(a.finish, b.finish) and plan.placed[-1].job == 2
    assert plan.makespan < plan.alone
    # a wide job and a version of it with fewer blocks: beside a neighbour that holds most
    # of the vEUs, the version that packs finishes first
    wide = (version(0, 1000, 10e-6), version(1, 100, 12e-6))
    busy = Job("busy", (version(0, 900, 40e-6),), (), 0)
    plan = schedule([busy, Job("w", wide, (), 0)], chip, "counters", max_per_unit=2)
    (w,) = [p for p in plan.placed if p.job == 1]
    assert w.version.index == 1
    barrier = schedule(jobs, chip, "barrier")
    assert barrier.sync == "barrier" and [p.wave for p in barrier.placed] == [0, 0, 1]


class _Conv3x3(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(64, 64, 3, padding=1, bias=False)

    def forward(self, x):
        return self.conv(x)


class _TwoBranches(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(16, 16), torch.nn.Linear(16, 16)

    def forward(self, x):
        return torch.stack([torch.relu(self.a(x)), torch.tanh(self.b(x))]).mean(0)


def test_gemm_versions_take_a_reduction_step_the_body_builds():
    """Roller's top schedules of a 3x3 convolution of 64 channels step 32 or 16 channels x 9
    taps through K (288, 144): more than the CUDA-core GEMM body takes (64), which then builds
    its default tile (13 blocks). Rammer adds twins with a shorter step and keeps, of the
    measured versions, those built as scheduled."""
    from quartet.frontend.compile import import_linalg, run_passes
    from quartet.passes.rammer import versions as kv
    from quartet.passes.roller import policy

    torch.manual_seed(0)
    model, x = _Conv3x3().eval(), torch.randn(1, 64, 28, 28)
    text = str(run_passes(import_linalg(model, (x,)).mlir_text, "roller{topk=4}", "sm_90"))
    chip = targets.get("sm_90")
    with qd.context(), ir.Location.unknown():
        module = ir.Module.parse(text)
        (tile,) = [t.opview for t in qd.collect(module, lambda o: o.name == "quartet.tile")]
        assert tile.kernel == "gemm"
        found = kv.versions_of(tile, chip)
        model_ = policy.model_of(kv.roller_config.loop_info(tile.root))

        def step(v):
            return math.prod(v.schedule.block_tile[r] for r in model_.reduction)

        assert step(found[0]) > kv.GEMM_STEP          # Roller's best: the body refuses it
        shorter = [v for v in found if step(v) <= kv.GEMM_STEP]
        assert shorter and all(not v.schedule.tensor_core for v in shorter)
        assert len({v.index for v in found}) == len(found)
        kept = kv.measured(tile, found, chip)
    # only versions built as scheduled: many blocks of 128 threads, not the default's 13 of 64
    assert kept and {v.index for v in kept} <= {v.index for v in shorter}
    assert all(v.blocks >= 100 and v.threads == 128 for v in kept)


def test_cpu_target_runs_the_schedule_in_order():
    from quartet.bench import suite
    from quartet.frontend.compile import compile_to_artifact
    import quartet.runtime as rt

    w = suite.get("branchy_cells_f32")
    model, inputs = w.module(0, tiny=True), w.inputs(3, tiny=True)
    writer, result, _ = compile_to_artifact(model, inputs, pipeline="rammer", target="cpu")
    assert '"quartet.uvirtual"' in result.quartet
    prog = rt.load(writer.save(_tmp("cpu")))
    try:
        out = prog(*[x.numpy() for x in inputs])
    finally:
        prog.close()
    with torch.no_grad():
        ref = model.double()(*[x.double() for x in inputs]).numpy()
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 1e-5


def _tmp(name):
    import tempfile
    from pathlib import Path

    return Path(tempfile.mkdtemp(prefix="quartet-rammer-")) / name


@functools.lru_cache(maxsize=None)
def gpu_artifact(name: str):
    from quartet.bench import suite
    from quartet.frontend.compile import compile_to_artifact

    w = suite.get(name)
    model = w.module(0, tiny=True)
    writer, result, _ = compile_to_artifact(model, w.inputs(1, tiny=True), pipeline="rammer",
                                            target="sm_90")
    return w, model, writer, result


@pytest.mark.parametrize("name", ["branchy_cells_f32", "inception_f32"])
def test_one_persistent_kernel_and_its_twin_computes_the_model(name):
    import quartet.runtime as rt
    from quartet.bench.e2e.cpu_twin import cpu_twin

    w, model, writer, result = gpu_artifact(name)
    m = writer.manifest()
    (k,) = m.kernels
    launches = [s for _, s in m.steps() if isinstance(s, mf.Launch)]
    assert launches == [mf.Launch(k.name)] and k.cooperative and k.persistent is not None
    p = k.persistent
    chip = targets.get("sm_90")
    assert k.grid[0] <= p.veus and p.blocks_per_sm == math.ceil(k.grid[0] / chip.num_units)
    assert len(p.tasks) == result.quartet.count('"quartet.tile"')
    sync = m.buffer_map[p.sync]
    assert sync.zeroed and sync.kind == "scalar" and k.args[-1] == mf.BufferArg(p.sync)
    assert sync.size == 8 * (4 + len(p.tasks))
    for t in p.tasks:
        assert 0 <= t.veu_begin and t.veu_begin + t.veu_count <= p.veus and t.blocks >= 1
    twin = cpu_twin(writer, result.quartet)
    prog = rt.load(twin.save(_tmp(name)))
    xs = w.inputs(5, tiny=True)
    try:
        out = prog(*[x.numpy() for x in xs])
    finally:
        prog.close()
    with torch.no_grad():
        ref = model.double()(*[x.double() for x in xs]).numpy()
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 1e-5


def test_the_persistent_kernel_synchronises_with_acquire_and_release():
    """The PTX of the branchy kernel: acquire spins, release adds, fences, a watchdog; no
    non-coherent (read-only cache) loads of what other tasks wrote; the narrow bodies'
    barriers on barrier 1 with their thread count, the kernel's own on barrier 0."""
    import re

    from quartet.bench import suite
    from quartet.frontend.compile import import_linalg, run_passes
    from quartet.lowering.host import lower_module_plans

    w = suite.get("branchy_cells_f32")
    module = run_passes(import_linalg(w.module(0, tiny=True), w.inputs(0, tiny=True)).mlir_text,
                        "rammer", "sm_90")
    _, plans = lower_module_plans(module, "sm_90", emit="ptx")
    (plan,) = plans.values()
    (use,) = plan.launches
    ptx = use.kernel.binary.decode()
    assert "ld.acquire.gpu.u64" in ptx and "red.release.gpu.add.u64" in ptx
    assert "fence.acq_rel.gpu" in ptx and "atom.acq_rel.gpu.add.u64" in ptx
    assert "%globaltimer" in ptx and "trap;" in ptx
    assert ".nc" not in ptx
    per_sm = use.persistent.blocks_per_sm
    assert f".minnctapersm {per_sm}" in ptx
    barriers = set(re.findall(r"(?:bar|barrier)\.sync(?:\.aligned)?\s+(\d+)(?:,\s*(\d+))?", ptx))
    assert ("0", "") in barriers
    narrow = {int(n) for b, n in barriers if b == "1"}
    assert all(n % 32 == 0 and n < use.kernel.block[0] for n in narrow)


def test_a_bad_schedule_is_a_compiler_error_naming_the_tasks():
    """Two dependent tasks in one wave of a barrier-synchronised uvirtual."""
    text = """
func.func @f(%x: tensor<64xf32>) -> tensor<64xf32> {
  %e = tensor.empty() : tensor<64xf32>
  %r = "quartet.uvirtual"() ({
    %a = "quartet.vtask"() ({
      %t = "quartet.tile"() ({
        %v = linalg.add ins(%x, %x : tensor<64xf32>, tensor<64xf32>) outs(%e : tensor<64xf32>) -> tensor<64xf32>
        gpu.yield %v : tensor<64xf32>
      }) {grid = array<i64: 2>} : () -> tensor<64xf32>
      gpu.yield %t : tensor<64xf32>
    }) {veu_begin = 0 : i64, veu_count = 2 : i64, step = 0 : i64} : () -> tensor<64xf32>
    %b = "quartet.vtask"() ({
      %t = "quartet.tile"() ({
        %v = linalg.mul ins(%a, %x : tensor<64xf32>, tensor<64xf32>) outs(%e : tensor<64xf32>) -> tensor<64xf32>
        gpu.yield %v : tensor<64xf32>
      }) {grid = array<i64: 2>} : () -> tensor<64xf32>
      gpu.yield %t : tensor<64xf32>
    }) {veu_begin = 2 : i64, veu_count = 2 : i64, step = 0 : i64} : () -> tensor<64xf32>
    gpu.yield %b : tensor<64xf32>
  }) {num_veus = 4 : i64, sync = "barrier", resultSegmentSizes = array<i32: 1, 0, 0, 0, 0, 0, 0, 0>} : () -> tensor<64xf32>
  return %r : tensor<64xf32>
}
"""
    from quartet.driver import run_pipeline

    with qd.context(), ir.Location.unknown():
        module = ir.Module.parse(text)
        with pytest.raises(QuartetError, match=r"unsound \(order\): task 1 \(linalg.mul.*"
                                               r"depends on task 0 \(linalg.add"):
            run_pipeline(module, "builtin.module(rammer-check)")


def test_torch_compile_backend_takes_the_rammer_pipeline():
    """torch.compile(backend="quartet", options={"pipeline": "rammer"}) on CPU tensors."""

    class Branches(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(16, 16), torch.nn.Linear(16, 16)

        def forward(self, x):
            return torch.stack([torch.relu(self.a(x)), torch.tanh(self.b(x))]).mean(0)

    torch.manual_seed(0)
    model, x = Branches().eval(), torch.randn(4, 16)
    torch._dynamo.reset()
    with torch.no_grad():
        y = torch.compile(model, backend="quartet", dynamic=False,
                          options={"pipeline": "rammer"})(x)
        ref = model(x)
    assert torch.allclose(y, ref, rtol=1e-5, atol=1e-5)


def test_quartet_compile_takes_the_rammer_pipeline():
    """quartet.compile(..., pipeline="rammer{...}") on the CPU target: the schedule's tasks in
    order, the same numbers as eager."""
    import quartet

    torch.manual_seed(0)
    model, x = _TwoBranches().eval(), torch.randn(4, 16)
    compiled = quartet.compile(model, (x,), pipeline="rammer{topk=2}", target="cpu")
    assert compiled.result.pipeline == "rammer{topk=2}"
    assert compiled.result.quartet.count('"quartet.vtask"') >= 3
    with torch.no_grad():
        assert torch.allclose(compiled(x), model(x), rtol=1e-4, atol=1e-4)


def test_quartet_opt_lists_and_expands_the_rammer_pipeline():
    from quartet.driver.registry import PIPELINES, expand, load_all

    load_all()
    assert "rammer" in PIPELINES and "max_per_unit" in PIPELINES["rammer"].options
    steps = expand("builtin.module(rammer{target=sm_90 topk=3 sync=barrier max_per_unit=2})")
    names = [s.name for kind, s in steps if kind == "quartet"]
    assert names[-3:] == ["roller-config", "rammer-schedule", "rammer-check"]
    sched = [s for kind, s in steps if kind == "quartet" and s.name == "rammer-schedule"][0]
    assert (sched.sync, sched.max_per_unit) == ("barrier", 2)
    with pytest.raises(QuartetError, match="sync must be one of"):
        expand("builtin.module(rammer{sync=sometimes})")


def test_barrier_synchronised_kernel_has_grid_barriers_and_no_counters():
    from quartet.driver import run_pipeline
    from quartet.lowering.host import lower_module_plans

    text = open(__file__.replace("python/test_rammer.py",
                                 "lit/rammer/persistent-kernel.mlir")).read()
    with qd.context(), ir.Location.unknown():
        module = ir.Module.parse(text)
        run_pipeline(module, "builtin.module(rammer{target=sm_90 sync=barrier})")
        assert 'sync = "barrier"' in str(module)
        _, plans = lower_module_plans(module, "sm_90", emit="ptx")
    (plan,) = plans.values()
    (use,) = plan.launches
    ptx = use.kernel.binary.decode()
    # one grid barrier between the two waves: generation read, count added, reset, release
    assert ptx.count("atom.acq_rel.gpu.add.u64") == 1 and ptx.count("st.release.gpu.u64") == 1
    assert "st.relaxed.gpu.u64" in ptx and "red.release" not in ptx and "trap;" in ptx
