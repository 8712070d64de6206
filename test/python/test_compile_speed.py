"""Issue 14, the compiler's side: identical tiles built once, builds in worker processes,
progress on a terminal. (The compile cache: test_compile_cache.py; the call path:
test_runtime.py.)"""

import io
import warnings

import pytest
from mlir import ir

import quartet.dialects as qd
from quartet import progress
from quartet.errors import QuartetError
from quartet.lowering import build, jobs
from quartet.lowering.host import lower_module_plans
from quartet.lowering.prepare import tiles_of

MAPS = """
#id = affine_map<(d0, d1) -> (d0, d1)>
#col = affine_map<(d0, d1) -> (d1)>
"""


def add_tile(result, a, b, shape="8x64xf32", attrs="", op="arith.addf", bmap="#id"):
    return f"""
  %{result} = "quartet.tile"() ({{
    %e = tensor.empty() : tensor<{shape}>
    %g = linalg.generic {{indexing_maps = [#id, {bmap}, #id], iterator_types = ["parallel", "parallel"]}}
        ins(%{a}, %{b} : tensor<{shape}>, tensor<{shape if bmap == '#id' else '64xf32'}>)
        outs(%e : tensor<{shape}>) {{
      ^bb0(%p: f32, %q: f32, %o: f32):
        %0 = {op} %p, %q : f32
        linalg.yield %0 : f32
    }} -> tensor<{shape}>
    gpu.yield %g : tensor<{shape}>
  }}) {attrs} : () -> tensor<{shape}>"""


def chain_text(tiles: list[str]) -> str:
    """x, y -> a chain of tiles; returns the last one."""
    last = tiles[-1].split("=")[0].strip().lstrip("%")
    return MAPS + f"""
func.func @chain(%x: tensor<8x64xf32>, %y: tensor<8x64xf32>) -> tensor<8x64xf32> {{
{''.join(tiles)}
  return %{last} : tensor<8x64xf32>
}}
"""


@pytest.fixture
def ctx():
    context = qd.context()
    with context, ir.Location.unknown():
        yield context


def planned(text, chip="sm_90"):
    from quartet.runtime import targets

    module = ir.Module.parse(text)
    fn = next(iter(module.body.operations))
    return jobs.plan_jobs(tiles_of(fn), targets.get(chip), "bin")


def test_same_computation_other_values_is_one_job(ctx):
    """Four tiles: three compute 'p + q' on two f32 8x64 tensors (different values, places
    and results), one computes 'p * q': two jobs."""
    text = chain_text([add_tile("a", "x", "y"), add_tile("b", "a", "y"),
                       add_tile("c", "b", "a", op="arith.mulf"), add_tile("d", "y", "c")])
    found, of_tile = planned(text)
    assert len(found) == 2 and of_tile == [0, 0, 1, 0]
    assert "arith.mulf" in found[1].text and found[0].kernel == "q0"


def test_schedule_and_chip_are_part_of_the_key(ctx):
    text = chain_text([add_tile("a", "x", "y"),
                       add_tile("b", "a", "y", attrs='{threads = 128 : i64}')])
    assert planned(text)[1] == [0, 1]
    # one value read twice is a kernel of one argument: another job
    assert planned(chain_text([add_tile("a", "x", "y"), add_tile("b", "x", "x")]))[1] == [0, 1]
    one = planned(chain_text([add_tile("a", "x", "y")]), "sm_90")[0][0]
    other = planned(chain_text([add_tile("a", "x", "y")]), "sm_80")[0][0]
    assert jobs.job_key(one.text, one) != jobs.job_key(other.text, other)


def test_identical_tiles_share_one_binary(ctx, monkeypatch):
    monkeypatch.setenv("QUARTET_JOBS", "1")
    module = ir.Module.parse(chain_text([add_tile("a", "x", "y"), add_tile("b", "a", "y"),
                                         add_tile("c", "b", "x")]))
    module, plans = lower_module_plans(module, "sm_90")
    plan = plans["chain"]
    text = str(module)
    assert text.count("gpu.binary @") == 1 and text.count("gpu.launch_func") == 3
    binaries = {use.kernel.binary for use in plan.launches}
    assert len(plan.launches) == 3 and len(binaries) == 1
    # each launch keeps its own buffers
    assert [tuple(a.buffer for a in use.args) for use in plan.launches] == [
        ("in0", "in1", "t1"), ("t1", "in1", "t2"), ("t2", "in0", "t3")]


def test_workers_build_what_this_process_builds(ctx, monkeypatch):
    """Three distinct tiles in two processes: the same binaries as in one, in program order."""
    text = chain_text([add_tile("a", "x", "y"), add_tile("b", "a", "y", op="arith.mulf"),
                       add_tile("c", "b", "y", op="arith.subf")])
    found, _ = planned(text)
    monkeypatch.setenv("QUARTET_JOBS", "1")
    here = jobs.run_jobs(found)
    monkeypatch.setenv("QUARTET_JOBS", "2")
    assert jobs.worker_count(len(found)) == 1
    seen = []
    there = jobs.run_jobs(found, progress=lambda done, total: seen.append((done, total)),
                          here=False)
    assert [[s.binary for s in specs] for specs in here] == \
        [[s.binary for s in specs] for specs in there]
    assert [s[0].notes["builder"] for s in there] == ["row"] * 3
    assert seen == [(1, 3), (2, 3), (3, 3)]


def test_worker_errors_name_the_tile(ctx, monkeypatch):
    """A refusal in a worker comes back as the same one-line QuartetError; a worker that dies
    names the tile it was building."""
    bad = add_tile("b", "a", "y", attrs='{kernel = "nonesuch"}')
    found, _ = planned(chain_text([add_tile("a", "x", "y"), bad]))
    monkeypatch.setenv("QUARTET_JOBS", "2")
    with pytest.raises(QuartetError, match="unknown kernel family 'nonesuch'") as err:
        jobs.run_jobs([found[1], found[0]], here=False)
    assert err.value.location is not None
    monkeypatch.setattr(jobs, "WORKER_COMMAND", ["-c", "import sys; sys.exit(3)"])
    with pytest.raises(RuntimeError, match="'linalg.generic'.*exited with status 3"):
        jobs.run_jobs(found, here=False)


def test_warnings_of_a_build_reach_the_caller(ctx, monkeypatch):
    found, _ = planned(chain_text([add_tile("a", "x", "y")]))
    result = jobs.Result(specs=["spec"], warnings=["the GEMM family claimed it"],
                         fallbacks=[("here:1:2", "why")])
    before = list(build.GEMM_FALLBACKS)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert jobs.deliver(found[0], result) == ["spec"]
    assert [str(w.message) for w in caught] == ["the GEMM family claimed it"]
    assert build.GEMM_FALLBACKS[len(before):] == [("here:1:2", "why")]
    del build.GEMM_FALLBACKS[len(before):]


def test_worker_count(monkeypatch):
    monkeypatch.delenv("QUARTET_JOBS", raising=False)
    assert jobs.worker_count(1) == 0 and jobs.worker_count(jobs.MIN_JOBS_FOR_WORKERS - 1) == 0
    monkeypatch.setenv("QUARTET_JOBS", "4")
    assert jobs.worker_count(2) == 1 and jobs.worker_count(10) == 3
    monkeypatch.setenv("QUARTET_JOBS", "many")
    with pytest.raises(QuartetError, match="QUARTET_JOBS"):
        jobs.worker_count(3)


# --------------------------------------------------------------------------------------------
# Progress


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_shows_stage_and_kernels_on_a_terminal(monkeypatch):
    monkeypatch.setattr(progress, "DELAY_S", 0.0)
    monkeypatch.delenv("QUARTET_QUIET", raising=False)
    term = Terminal()
    with progress.reporting(None, term) as shown:
        assert progress.current() is shown
        progress.current().stage("importing")
        progress.current().kernels(3, 12)
    out = term.getvalue()
    assert "quartet: importing" in out and "building kernels 3/12" in out
    assert progress.current() is not shown      # the scope ended


def test_progress_is_silent_off_a_terminal_or_when_quiet(monkeypatch):
    monkeypatch.setattr(progress, "DELAY_S", 0.0)
    pipe = io.StringIO()
    with progress.reporting(None, pipe):
        progress.current().stage("importing")
    assert pipe.getvalue() == ""
    term = Terminal()
    with progress.reporting(False, term):
        progress.current().kernels(1, 2)
    monkeypatch.setenv("QUARTET_QUIET", "1")
    with progress.reporting(None, term):
        progress.current().kernels(1, 2)
    assert term.getvalue() == ""


def test_progress_waits_before_showing(monkeypatch):
    monkeypatch.setattr(progress, "DELAY_S", 60.0)
    term = Terminal()
    with progress.reporting(True, term):
        progress.current().stage("importing")
    assert term.getvalue() == ""


def test_a_compile_reports_its_stages_and_kernels(monkeypatch, capsys):
    """Through quartet's compile: each stage, then kernels built out of distinct ones (the
    three identical cells of the loop are one kernel to build)."""
    import torch

    from quartet.frontend.compile import compile_to_artifact

    class Loop(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(64, 64))

        def forward(self, x):
            for _ in range(3):
                x = torch.tanh(x @ self.w)
            return x

    monkeypatch.setattr(progress, "DELAY_S", 0.0)
    writer, result, _ = compile_to_artifact(Loop(), (torch.randn(8, 64),), target="sm_90",
                                            cache=False, progress=True)
    err = capsys.readouterr().err
    for stage in ("exporting", "importing", "passes", "lowering", "building kernels 1/1"):
        assert f"quartet: {stage}" in err, err
    manifest = writer.manifest()
    assert len(manifest.kernels) == 3 and len({k.binary for k in manifest.kernels}) == 1
