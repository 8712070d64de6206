"""The benchmark harness on the CPU: workloads, costs, build manifest, carried weights, run, report.

Every workload builds and runs at tiny sizes; its formulations (Python loop / while_loop,
torch.cond / host if) compute the same function; its byte count equals the bytes of its
tensors and its matrix-product FLOPs equal what torch's FLOP counter counts.  The build step
writes a row per workload when Quartet cannot compile; large weights stripped from an artifact
come back byte-exact from the seed; the run step's CPU dry run and the report work end to end.
"""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from quartet.bench import artifact_weights, build, report, run, suite

TINY_DTYPE = torch.float32  # CPU kernels for every op; the cost checks use each workload's dtype


def _nbytes(t: torch.Tensor, float_itemsize: int) -> int:
    return t.numel() * (float_itemsize if t.is_floating_point() else t.element_size())


@pytest.mark.parametrize("w", suite.WORKLOADS, ids=lambda w: w.name)
def test_workload_runs_tiny_and_forms_agree(w):
    inputs = w.inputs(3, tiny=True, dtype=TINY_DTYPE)
    results = []
    for form in w.forms:
        m = w.module(0, tiny=True, dtype=TINY_DTYPE, form=form)
        with torch.no_grad():
            outs = suite.flatten_outputs(m(*inputs))
        for o in outs:
            if o.is_floating_point():
                assert torch.isfinite(o).all(), (w.name, form)
        results.append(outs)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            if a.is_floating_point():
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
            else:
                assert torch.equal(a, b)


@pytest.mark.parametrize("w", suite.WORKLOADS, ids=lambda w: w.name)
def test_bytes_are_the_tensors_bytes(w):
    """Fewest bytes = inputs + parameters + outputs, each once (counted at maximum work)."""
    isz = w.itemsize()
    m = w.module(0, tiny=True, dtype=TINY_DTYPE)
    inputs = w.inputs(1, tiny=True, dtype=TINY_DTYPE)
    with torch.no_grad():
        outs = suite.flatten_outputs(m(*inputs))
    expected = sum(_nbytes(t, isz) for t in inputs) + sum(_nbytes(p, isz) for p in m.parameters()) \
        + sum(_nbytes(o, isz) for o in outs)
    cost = w.cost(tiny=True)
    assert cost.bytes == expected
    assert cost.flops > 0 and cost.bytes > 0 and cost.mm_flops <= cost.flops
    real = w.cost()
    assert real.flops > cost.flops and real.bytes > cost.bytes and real.intensity > 0


@pytest.mark.parametrize("w", suite.WORKLOADS, ids=lambda w: w.name)
def test_matrix_flops_match_torch_flop_counter(w):
    """mm_flops of the work actually done equals torch.utils.flop_counter's count."""
    form = "python" if "python" in w.forms else w.forms[0]  # host control flow: countable
    m = w.module(0, tiny=True, dtype=TINY_DTYPE, form=form)
    inputs = w.inputs(2, tiny=True, dtype=TINY_DTYPE)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        outs = tuple(suite.flatten_outputs(m(*inputs)))
    trip = w.trip(m, inputs, outs) if w.trip else None
    assert w.cost(tiny=True, trip=trip).mm_flops == counter.get_total_flops()


def test_data_dependent_work_varies_at_real_size():
    """SkipNet takes some blocks and skips others; decodes stop at different steps."""
    skip = suite.get("skipnet_f32")
    m = skip.module(0)
    taken = {m.blocks_taken(skip.inputs(s)[0]) for s in range(12)}
    assert len(taken) > 1 and max(taken) < 8 and min(taken) > 0
    dec = suite.get("decode_f32")
    m = dec.module(0)
    with torch.no_grad():
        steps = {suite.GreedyDecoder.steps_of(m(*dec.inputs(s))[0]) for s in range(12)}
    assert len(steps) > 3 and min(steps) < 64


def test_real_size_costs_closed_form():
    mm = suite.get("matmul_f16_4096").cost()
    assert mm.flops == 2 * 4096**3 and mm.bytes == 3 * 4096**2 * 2
    conv = suite.get("conv_f16_3x3").cost()
    assert conv.flops == 2 * 32 * 64 * 56 * 56 * 64 * 9
    bert = suite.get("bert_f16_b1").cost()
    bert_base_layer_params = 7_087_872  # BERT-base encoder layer
    assert bert.bytes == 2 * (2 * 128 * 768 + 12 * bert_base_layer_params)
    lstm = suite.get("lstm_f32").cost()
    assert lstm.mm_flops == 100 * 10 * 2 * (2 * 256 * 1024)


def test_weights_are_deterministic_and_seeded():
    w = suite.get("mlp_f16")
    a, b, c = (w.module(s, tiny=True) for s in (5, 5, 6))
    for (na, pa), (_, pb), (_, pc) in zip(a.named_parameters(), b.named_parameters(),
                                          c.named_parameters()):
        assert torch.equal(pa, pb), na
        assert not torch.equal(pa, pc), na
    # the first parameter is PCG64(seed)'s first draws, scaled and rounded once to fp16: the
    # GPU machine's NumPy rebuilds exactly these bytes
    u = np.random.Generator(np.random.PCG64(0)).random(4) * 2.0 - 1.0
    expected = torch.from_numpy(u / math.sqrt(768)).to(torch.float16)
    assert torch.equal(w.module(0).fc1.weight.reshape(-1)[:4], expected)


def test_select():
    assert [w.name for w in suite.select("grinder")] == ["skipnet_f32", "decode_f32", "lstm_f32",
                                                         "gru_f32"]
    picked = [w.name for w in suite.select("lstm_f32,roller")]
    assert picked[-1] == "lstm_f32" and len(picked) == 11 and picked[0] == "matmul_f32_1024"
    assert len(suite.select("")) == len(suite.WORKLOADS)
    with pytest.raises(KeyError, match="no workload"):
        suite.select("nope")


def test_build_writes_a_row_per_workload_without_compiler(tmp_path, monkeypatch):
    def missing():
        raise LookupError("quartet.compile does not exist yet")

    monkeypatch.setattr(build, "find_compile", missing)
    m = build.build(list(suite.WORKLOADS), tmp_path, isolate=False, log=lambda s: None)
    names = [r["workload"] for r in m["rows"]]
    assert names == [w.name for w in suite.WORKLOADS]
    for r in m["rows"]:
        assert r["status"] == "not compiled: quartet.compile does not exist yet"
        assert r["pipeline"] == suite.get(r["workload"]).family and r["artifact"] is None
    on_disk = json.loads((tmp_path / "build.json").read_text())
    assert on_disk["rows"] == m["rows"] and on_disk["format"] == build.FORMAT


def test_build_records_compile_errors_and_keeps_other_rows(tmp_path, monkeypatch):
    def failing(module, inputs, pipeline, target):
        raise NotImplementedError(f"{pipeline}: aten.foo is not supported\nmore detail")

    monkeypatch.setattr(build, "find_compile", lambda: pytest.fail("not called"))
    build.build(suite.select("softmax_f16"), tmp_path, isolate=False, compile_fn=failing,
                log=lambda s: None)
    m = build.build(suite.select("layernorm_f16"), tmp_path, isolate=False, compile_fn=failing,
                    log=lambda s: None)
    assert [r["workload"] for r in m["rows"]] == ["softmax_f16", "layernorm_f16"]
    assert m["rows"][1]["status"] == \
        "not compiled: NotImplementedError: roller: aten.foo is not supported"


class _FakeCompiled:
    """A compiled program that saves the module's weights in the runtime's artifact format."""

    def __init__(self, module, transpose: str):
        self.module, self.transpose = module, transpose

    def save(self, path):
        from quartet.runtime import ArtifactWriter

        w = ArtifactWriter("cpu", producer="test")
        w.add_input("x", (1,), "float32")
        for name, p in self.module.named_parameters():
            w.add_weight(name, p.detach().t().contiguous() if name == self.transpose else p.detach())
        w.add_output("y", (1,), "float32")
        return w.save(path)


def test_weights_stripped_at_build_come_back_byte_exact(tmp_path):
    wl = suite.get("mlp_f16")

    def fake_compile(module, inputs, pipeline, target):
        return _FakeCompiled(module, transpose="fc2.weight")

    m = build.build([wl], tmp_path, isolate=False, compile_fn=fake_compile, log=lambda s: None)
    row = m["rows"][0]
    assert row["status"] == "compiled" and row["compile_s"] >= 0
    art = tmp_path / row["artifact"]
    assert row["weights"]["stripped"] == ["weights.bin"]
    assert not (art / "weights.bin").exists() and artifact_weights.needs_restore(art)
    assert row["artifact_bytes"] < 100_000 < row["bytes_saved"]
    entries = json.loads((art / artifact_weights.SIDECAR).read_text())["files"][0]["weights"]
    assert {e["param"]: e["transform"] for e in entries}["fc2.weight"] == "transpose"

    rebuilt = artifact_weights.restore(art, wl.module(0, form=row["form"]), tmp_path / "scratch")
    expected = json.loads((art / "manifest.json").read_text())["files"]
    for f in expected:
        data = (rebuilt / f["name"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == f["sha256"]
    from quartet.runtime import open_artifact

    open_artifact(rebuilt, verify=True).close()

    with pytest.raises(ValueError, match="differs"):
        artifact_weights.restore(art, wl.module(1), tmp_path / "scratch2")


def test_small_constants_beside_parameters_are_kept_inline(tmp_path):
    """A program constant (a loop's initial state) shares the weight file with parameters: it
    is kept in the sidecar, the file is still stripped, and restored byte-exact."""
    wl = suite.get("mlp_f16")

    class WithConstant(_FakeCompiled):
        def save(self, path):
            from quartet.runtime import ArtifactWriter

            w = ArtifactWriter("cpu", producer="test")
            w.add_input("x", (1,), "float32")
            for name, p in self.module.named_parameters():
                w.add_weight(name, p.detach())
            w.add_weight("t0", torch.tensor([7], dtype=torch.int64))
            w.add_output("y", (1,), "float32")
            return w.save(path)

    m = build.build([wl], tmp_path, isolate=False, log=lambda s: None,
                    compile_fn=lambda mod, inp, pipeline, target: WithConstant(mod, ""))
    row = m["rows"][0]
    art = tmp_path / row["artifact"]
    assert row["weights"]["stripped"] == ["weights.bin"] and not (art / "weights.bin").exists()
    rebuilt = artifact_weights.restore(art, wl.module(0, form=row["form"]), tmp_path / "scratch")
    from quartet.runtime import open_artifact

    open_artifact(rebuilt, verify=True).close()


def test_weights_that_match_nothing_are_kept(tmp_path):
    wl = suite.get("mlp_f16")

    class Other(_FakeCompiled):
        def save(self, path):
            from quartet.runtime import ArtifactWriter

            w = ArtifactWriter("cpu")
            w.add_input("x", (1,), "float32")
            w.add_weight("folded", torch.ones(600_000, dtype=torch.float16))
            w.add_output("y", (1,), "float32")
            return w.save(path)

    m = build.build([wl], tmp_path, isolate=False, log=lambda s: None,
                    compile_fn=lambda mod, inp, pipeline, target: Other(mod, ""))
    row = m["rows"][0]
    assert row["weights"]["stripped"] == []
    assert "matches no parameter" in row["weights"]["kept"]["weights.bin"]
    assert (tmp_path / row["artifact"] / "weights.bin").exists()


def test_small_constants_travel_in_the_sidecar(tmp_path):
    """A weight file with a constant the compiler made (a fill value) beside the parameters is
    still stripped: the constant's bytes go into the sidecar."""
    wl = suite.get("mlp_f16")

    class WithConstant(_FakeCompiled):
        def save(self, path):
            from quartet.runtime import ArtifactWriter

            w = ArtifactWriter("cpu")
            w.add_input("x", (1,), "float32")
            w.add_weight("fill", torch.tensor([-3.5], dtype=torch.float16))
            w.add_weight("fc1.weight", self.module.fc1.weight.detach())
            w.add_output("y", (1,), "float32")
            return w.save(path)

    m = build.build([wl], tmp_path, isolate=False, log=lambda s: None,
                    compile_fn=lambda mod, inp, pipeline, target: WithConstant(mod, ""))
    row = m["rows"][0]
    art = tmp_path / row["artifact"]
    assert row["weights"]["stripped"] == ["weights.bin"] and not (art / "weights.bin").exists()
    rebuilt = artifact_weights.restore(art, wl.module(0, form=row["form"]), tmp_path / "scratch")
    from quartet.runtime import open_artifact

    open_artifact(rebuilt, verify=True).close()


def test_carry_budget_drops_largest_artifacts(tmp_path):
    for name, size in (("a", 3000), ("b", 1000)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "f").write_bytes(b"x" * size)
    rows = [{"artifact": "a", "artifact_bytes": 3000, "status": "compiled"},
            {"artifact": "b", "artifact_bytes": 1000, "status": "compiled"}]
    build.enforce_carry_budget(rows, tmp_path, 2000)
    assert rows[0]["artifact"] is None and rows[0]["status"].startswith("not carried")
    assert rows[1]["artifact"] == "b" and not (tmp_path / "a").exists()


def test_run_dry_on_cpu_and_report(tmp_path):
    out = tmp_path / "out"
    rc = run.main(["--device", "cpu", "--tiny", "--systems", "eager,quartet", "--only",
                   "matmul_f32_1024,decode_f32,skipnet_f32", "--out", str(out), "--artifacts",
                   str(tmp_path / "no-artifacts"), "--warmup", "1", "--target-s", "0.01",
                   "--min-reps", "2", "--max-reps", "3", "--budget-s", "60"])
    assert rc == 0
    (path,) = out.glob("run-*.json")
    rec = json.loads(path.read_text())
    assert rec["format"] == run.FORMAT and rec["versions"]["torch"] == torch.__version__
    assert rec["ceilings"]["copy_GBps"] > 0
    names = [w["name"] for w in rec["workloads"]]
    assert names == ["matmul_f32_1024", "skipnet_f32", "decode_f32"]  # suite order
    for w in rec["workloads"]:
        eager = w["systems"]["eager"]
        assert eager["status"] == "ok" and eager["e2e"]["median_ms"] > 0
        assert eager["check"]["rel_err"] < 1e-5
        assert w["systems"]["quartet"]["status"].startswith("not compiled")
        assert w["limit_ms"] > 0 and w["flops"] > 0
    dec = rec["workloads"][2]
    assert dec["systems"]["eager"]["check"]["int_mismatch"] == 0
    assert 1 <= dec["trip"]["mean"] <= dec["trip"]["max"] == 8

    results = tmp_path / "RESULTS.md"
    report.report(path, results, tmp_path / "plots")
    text = results.read_text()
    for n in names:
        assert n in text
    assert "not compiled" in text and rec["device"]["name"] in text and rec["date"] in text
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "Plots not made" in text
    else:
        assert (tmp_path / "plots" / "roofline.png").stat().st_size > 0
        assert (tmp_path / "plots" / "speedup_vs_eager.png").stat().st_size > 0
        assert not (tmp_path / "plots" / "speedup_quartet.png").exists()


@pytest.mark.parametrize("make", [
    lambda: suite.Attention(32, 4),
    lambda: suite.CausalAttention(32, 4, 13),
    lambda: suite.PreNormBlock(32, 4, 64, 13, causal=True),
])
def test_sdpa_twin_computes_the_same(make):
    torch.manual_seed(0)
    model = make().eval()
    x = torch.randn(2, 13, 32)
    with torch.no_grad():
        ref = model(x)
        with suite.sdpa_twin(model) as has:
            twin = model(x)
        assert has and not any(getattr(m, "sdpa", False) for m in model.modules())
    assert torch.allclose(twin, ref, atol=1e-5)
    with suite.sdpa_twin(suite.MLP(8, 16)) as has:
        assert not has


def test_report_welder_table():
    def sys_(ms, **kw):
        return {"status": "ok", "e2e": {"median_ms": ms}, **kw}

    rec = {"name": "attention_f16", "systems": {
        "eager": sys_(0.4, graph_ms=0.2, sdpa_graph_ms=0.05),
        "compile": sys_(0.5),
        "quartet": sys_(0.1, graph_ms=0.08, kernels=3, global_bytes_model={
            "unfused": 40_000_000, "fused": 10_000_000, "kernels_unfused": 7})}}
    lines = report.welder_table({"workloads": [rec, {"name": "x", "systems": {}}]},
                                ["eager", "compile", "quartet"])
    row = next(line for line in lines if line.startswith("| attention_f16"))
    assert row == "| attention_f16 | 3 / 7 | 40 | 10 | 0.25 | 0.20 | 0.40 | 1.60 |"
    assert report.welder_table({"workloads": [{"name": "x", "systems": {}}]}, ["eager"]) == []


def test_compare_reports_errors_nans_and_token_mismatches():
    ref = [torch.tensor([3.0, 4.0], dtype=torch.float64), torch.tensor([1, 2])]
    c = run.compare((torch.tensor([3.0, 4.5]), torch.tensor([1, 0])), ref)
    assert c["rel_err"] == pytest.approx(0.1) and c["int_mismatch"] == 1
    c = run.compare((torch.tensor([math.nan, 4.0]), torch.tensor([1, 2])), ref)
    assert math.isnan(c["rel_err"]) and not c["finite"]
    assert "error" in run.compare(torch.tensor([1.0]), ref)


class _CopyProgram:
    """A cpu artifact that returns its input unchanged (a copy step), with the module's weights."""

    def __init__(self, module, inputs):
        self.module, self.x = module, inputs[0]

    def save(self, path):
        from quartet.runtime import ArtifactWriter, Copy

        dtype = str(self.x.dtype).replace("torch.", "")
        w = ArtifactWriter("cpu", producer="test")
        w.add_input("x", tuple(self.x.shape), dtype)
        for name, p in self.module.named_parameters():
            w.add_weight(name, p.detach())
        w.add_output("y", tuple(self.x.shape), dtype)
        w.add_step(Copy("y", "x", self.x.numel() * self.x.element_size()))
        return w.save(path)


def test_run_measures_a_quartet_artifact_with_rebuilt_weights(tmp_path):
    """The Quartet path of run.py: weights rebuilt from the seed, load, check, time, bench.

    The artifact computes the identity instead of a layer norm, so it runs and its check shows
    a large error: the harness reports what the program does, whatever it is."""
    arts = tmp_path / "arts"
    m = build.build(suite.select("layernorm_f16"), arts, target="cpu", isolate=False, tiny=True,
                    keep_below=0, log=lambda s: None,
                    compile_fn=lambda mod, inp, pipeline, target: _CopyProgram(mod, inp))
    row = m["rows"][0]
    assert row["status"] == "compiled" and row["tiny"] and row["weights"]["stripped"]
    out = tmp_path / "out"
    assert run.main(["--device", "cpu", "--tiny", "--systems", "eager,quartet", "--only",
                     "layernorm_f16", "--out", str(out), "--artifacts", str(arts), "--warmup", "1",
                     "--target-s", "0.01", "--min-reps", "2", "--max-reps", "3"]) == 0
    (path,) = out.glob("run-*.json")
    q = json.loads(path.read_text())["workloads"][0]["systems"]["quartet"]
    assert q["status"] == "ok", q.get("traceback")
    assert q["weights"] == "rebuilt from the seed on this machine"
    assert q["pipeline"] == "roller" and q["compile_s"] >= 0
    assert q["e2e"]["median_ms"] > 0 and q["program_ms"] > 0
    assert q["check"]["rel_err"] > 0.1  # identity is not a layer norm

    # an artifact of the real sizes is not run by a --tiny run
    assert run.main(["--device", "cpu", "--tiny", "--systems", "quartet", "--only",
                     "layernorm_f16", "--out", str(tmp_path / "out2"), "--artifacts",
                     str(arts / "nothing")]) == 0
    rebuilt = json.loads((arts / "build.json").read_text())
    rebuilt["rows"][0]["tiny"] = False
    (arts / "build.json").write_text(json.dumps(rebuilt))
    assert run.main(["--device", "cpu", "--tiny", "--systems", "quartet", "--only",
                     "layernorm_f16", "--out", str(tmp_path / "out3"), "--artifacts",
                     str(arts)]) == 0
    (path,) = (tmp_path / "out3").glob("run-*.json")
    q = json.loads(path.read_text())["workloads"][0]["systems"]["quartet"]
    assert q["status"].startswith("not run: artifact built at the real sizes")


def test_compile_time_measures_each_kernel_from_scratch():
    from quartet.bench import compile_time, suite as bench_suite

    r = compile_time.measure(bench_suite.get("bias_gelu_scale_f16"), reps=2)
    assert r["kernels"] == 1 and len(r["cpu_s"]) == 2
    # the binary cache is cleared: every repetition runs NVVM and ptxas (a cached repetition
    # would take only the passes, ~0.03 s)
    assert all(t > 0.08 for t in r["cpu_s"]), r["cpu_s"]


def test_host_overhead_is_end_to_end_minus_kernel_only():
    ok = {"status": "ok", "e2e": {"median_ms": 0.094}, "kernel_ms": 0.040}
    assert abs(report.host_us(ok) - 54.0) < 1e-9
    assert report.host_us({"status": "ok", "e2e": {"median_ms": 1.0}, "kernel_ms": None}) is None
    assert report.host_us({"status": "not compiled: x"}) is None
    run = {"workloads": [{"name": "softmax_f16", "systems": {"quartet": ok}}]}
    lines = report.host_overhead_table(run, ["quartet"])
    assert "| softmax_f16 | 54 |" in lines
