"""PyTorch's OpInfo database as a differential test of Quartet, within CI's budget (issue 18).

The harness (``test/opinfo/harness.py``) compiles each OpInfo case on its first usable sample
in a worker process (a crash in torch-mlir kills the worker, not this test) and records right /
wrong / refused / crash. This test fails on any wrong answer or crash not in
``test/opinfo/known.py``.

The full run (every op of op_db, float32, float16 and bfloat16 on the CPU, the CPU-right ones
built for sm_90) takes about 40 minutes on two cores: ``test/opinfo/run.py`` and
``build_gpu.py`` write ``docs/opinfo/*.jsonl``, ``report.py`` writes ``docs/operators.md``. CI
runs a fixed slice of the same cases (every :data:`STRIDE`-th case of op_db in float32, every
``4*STRIDE``-th in float16 and bfloat16, and every :data:`BUILD_STRIDE`-th float32 case that
the committed results say is right, built for sm_90): about five minutes. The environment
variable ``QUARTET_OPINFO_STRIDE=1`` runs every case.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "test" / "opinfo"))

from harness import Pool, all_cases  # noqa: E402
from known import is_known  # noqa: E402

STRIDE = int(os.environ.get("QUARTET_OPINFO_STRIDE", "4"))
BUILD_STRIDE = 5 * STRIDE


@pytest.fixture(scope="module")
def cases():
    return all_cases()


@pytest.fixture(scope="module")
def pool():
    p = Pool(timeout=240)
    yield p
    p.close()


def _run(pool, names, dtype, target="cpu", **kw):
    results = []
    for name in names:
        results += pool.run(name, dtype, target, **kw)
    return results


def _failures(results):
    return [f"{r.op} [{r.dtype}, {r.target}]: {r.outcome}: {r.reason}" for r in results
            if r.outcome in ("wrong", "crash") and not is_known(r.op, r.dtype, r.target)]


@pytest.mark.parametrize("dtype,stride,offset", [("float32", STRIDE, 0),
                                                 ("float16", 4 * STRIDE, 1),
                                                 ("bfloat16", 4 * STRIDE, 2)])
def test_no_wrong_answer_and_no_crash_on_the_cpu(cases, pool, dtype, stride, offset):
    chosen = cases[offset::stride]
    results = _run(pool, chosen, dtype)
    outcomes = {r.outcome for r in results}
    assert "right" in outcomes        # the harness compiled and checked something
    assert not _failures(results), "\n".join(_failures(results))


def test_cpu_right_ops_build_for_sm_90(pool, tmp_path):
    committed = ROOT / "docs" / "opinfo" / "cpu_float32.jsonl"
    right = sorted({json.loads(line)["op"] for line in committed.read_text().splitlines()
                    if line and json.loads(line)["outcome"] == "right"})
    chosen = right[::BUILD_STRIDE]
    results = _run(pool, chosen, "float32", "sm_90", folder=str(tmp_path))
    assert not _failures(results), "\n".join(_failures(results))
    built = [r for r in results if r.outcome == "built"]
    assert len(built) >= 0.8 * len(results), [f"{r.op}: {r.reason}" for r in results
                                              if r.outcome != "built"]
    for r in built:
        assert (tmp_path / r.built / "program").exists()
        assert (tmp_path / r.built / "case.npz").exists()


def test_a_crash_in_the_worker_is_recorded_not_fatal(pool):
    # "__signal__" makes the worker kill itself with SIGSEGV, as torch-mlir did on int8
    # division: the case is a crash, and the next case runs in a new worker.
    died = pool.run("__signal__", "float32")
    assert died[0].outcome == "crash" and "signal 11" in died[0].reason
    assert pool.run("abs", "float32")[0].outcome == "right"


def test_operators_doc_is_generated_from_the_committed_results():
    done = subprocess.run([sys.executable, str(ROOT / "test" / "opinfo" / "report.py"),
                           "--check"], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_gpu_run_script_judges_a_built_case(pool, tmp_path, monkeypatch):
    # run_gpu.py's plumbing without a GPU: a built case, its program replaced by one that
    # returns eager's outputs (right), then one that returns them doubled (wrong).
    import numpy as np
    import torch

    import quartet.runtime
    import run_gpu

    built = pool.run("abs", "float32", "sm_90", folder=str(tmp_path))[0]
    assert built.outcome == "built"
    case = tmp_path / built.built
    eager = np.load(case / "case.npz")["eager0"]

    class Fake:
        def __init__(self, scale):
            self.scale = scale

        def __call__(self, *xs):
            return torch.from_numpy(eager * self.scale)

        def close(self):
            pass

    for scale, outcome in ((1.0, "right"), (2.0, "wrong")):
        monkeypatch.setattr(quartet.runtime, "load", lambda path, s=scale: Fake(s))
        assert run_gpu.run_case(case, device="cpu")["outcome"] == outcome
