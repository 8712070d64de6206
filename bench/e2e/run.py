"""Run the end-to-end artifacts on the GPU machine (no MLIR there) and compare with PyTorch eager.

    source bench/device_env.sh && python3 bench/e2e/run.py .e2e_build [--out DIR]

``build.py`` wrote the artifacts here. Each case runs in a process of its own (a GPU fault in one
case cannot take the others down; ``--case NAME`` is that worker), with a time limit. A case:

1. rebuilds the PyTorch model on the GPU from the same seed (zoo: ``frontend/models.py``; benchmark
   operators: ``bench/suite.py``, weights from NumPy's PCG64) and checks that its parameters are
   byte-identical to the artifact's weights (if not, it loads the artifact's weights into the
   model and says so);
2. loads the artifact with ``quartet.runtime.load``, fills its temporaries and outputs with 0xFF
   bytes (NaN) before every checked call, so an element no kernel writes shows as NaN;
3. zoo models: runs the fixed inputs stored by ``build.py`` and compares with the float64 output
   computed there (no model involved);
4. runs fresh random inputs (drawn on the GPU; ``cond_residual`` also their negation, so both
   branches run) and compares, as ``||out - ref|| / ||ref||``, Quartet and eager with the same
   model in float64 on the GPU;
5. times, with CUDA events on torch's current stream, the median of many calls after warm-up:
   eager (``model(*xs)``), Quartet's call (``prog(*xs)``: inputs copied in, outputs copied into
   new tensors), Quartet's host program alone (``prog.bench``) and, for programs without host
   control flow, the same captured as a CUDA graph (``load(path, graph=True)``).

The zoo's ``LSTMLoop`` builds its loop state on the CPU (``torch.zeros`` with no device), so its
eager form on the GPU is the same cell in a Python loop (``lstm_python``); ``CondResidual``'s
eager form is a Python ``if`` on ``x.mean() > threshold`` (``cond_python``). Both compute the
model's function (checked on the CPU by ``test_compile_gpu.py``'s twin and here in float64).

Prints one line per case and a table; writes ``e2e.json`` (and the workers' logs) to ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# "cuda" on the GPU machine; "cpu" for a dry run here on CPU twins (build.py --twin --tiny)
DEVICE = os.environ.get("QUARTET_E2E_DEVICE", "cuda")


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------------------------
# Eager forms


def lstm_python(m, xs):
    """``models.LSTMLoop.forward`` as a Python loop, its state on ``xs``'s device."""
    import torch

    steps, batch = xs.shape[0], xs.shape[1]
    h = torch.zeros(batch, m.hidden, dtype=xs.dtype, device=xs.device)
    c = torch.zeros(batch, m.hidden, dtype=xs.dtype, device=xs.device)
    for t in range(steps):
        gates = m.ih(xs[t]) + m.hh(h)
        i, f, g, o = gates.chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
    return h


def cond_python(m, x):
    """``models.CondResidual.forward`` with a Python ``if`` (one host read of the predicate)."""
    import torch.nn.functional as F

    if bool(x.mean() > m.threshold):
        return x + m.fc2(F.relu(m.fc1(x)))
    return x.clone()


def eager_form(name: str, model):
    if name == "lstm_loop":
        return lambda *xs: lstm_python(model, *xs)
    if name == "cond_residual":
        return lambda *xs: cond_python(model, *xs)
    return model


# ---------------------------------------------------------------------------------------------
# One case (the worker)


def rel_err(out, ref) -> float:
    import torch

    out = torch.as_tensor(out).double().cpu()
    ref = torch.as_tensor(ref).double().cpu()
    if out.shape != ref.shape:
        return float("inf")
    if not torch.isfinite(out).all():
        return float("nan")
    return float((out - ref).norm() / ref.norm())


def time_ms(fn, *, budget_s: float = 0.4, max_reps: int = 200, min_reps: int = 10) -> float:
    import torch

    for _ in range(5):
        fn()
    if DEVICE == "cuda":
        torch.cuda.synchronize()
    times, t0 = [], time.perf_counter()
    while len(times) < max_reps and (len(times) < min_reps or time.perf_counter() - t0 < budget_s):
        if DEVICE != "cuda":
            t1 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t1) * 1e3)
            continue
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def _model(case: dict):
    if case["kind"] == "zoo":
        models = _load("quartet_zoo_models", ROOT / "frontend" / "models.py")
        model, _ = models.build(case["name"], seed=case["seed"], batch=case.get("batch"),
                                **case.get("sizes", {}))
        return model, None
    suite = _load("quartet_bench_suite", ROOT / "bench" / "suite.py")
    w = {x.name: x for x in suite.WORKLOADS}[case["name"]]
    return w.module(case["seed"], tiny=case.get("tiny", False)), w


def _check_weights(model, path: Path) -> tuple[bool, list]:
    """(parameters byte-identical to the artifact's weights, names that differ); on a mismatch
    the artifact's weights are loaded into ``model``. Weights the model does not name are the
    program's tensor constants (initial loop state, ``true``), not parameters: skipped."""
    import numpy as np
    import torch

    from quartet.runtime.artifact import open_artifact, read_weight

    state = model.state_dict()
    art = open_artifact(path)
    differ = []
    try:
        for w in art.manifest.weights:
            raw = bytes(read_weight(art, w))
            if w.name not in state:
                continue
            t = state[w.name].detach().contiguous().cpu()
            if t.numel() * t.element_size() != len(raw) or \
                    t.reshape(-1).view(torch.uint8).numpy().tobytes() != raw:
                differ.append(w.name)
                arr = np.frombuffer(raw, dtype=np.uint8).copy()
                state[w.name].copy_(torch.from_numpy(arr).view(t.dtype).reshape(t.shape))
        named = {w.name for w in art.manifest.weights}
        differ += [f"{n} (not in the artifact)" for n, _ in model.named_parameters()
                   if n not in named]
    finally:
        art.close()
    return not differ, differ


def _poison(prog) -> None:
    # Temps are the program's own buffers in every mode. Outputs are its own only in graph mode
    # (err_graph below): a call with CUDA tensors writes fresh torch tensors in place.
    for b in prog.manifest.buffers:
        if b.kind in ("temp", "output") and b.size:
            prog.backend.memset(prog.addresses[b.name], 0xFF, 1, b.size)
    prog.backend.synchronize()


def _persistent_occupancy(manifest) -> list[dict]:
    """Each persistent kernel's vEUs and blocks, and the SM occupancy its resident blocks give:
    warps resident per SM over the SM's 64 (all blocks are resident by construction)."""
    import torch

    sms = torch.cuda.get_device_properties(0).multi_processor_count if DEVICE == "cuda" else 132
    out = []
    for k in manifest.kernels:
        if k.persistent is None:
            continue
        per_sm = -(-k.grid[0] // sms)
        warps = -(-k.block[0] // 32)
        out.append({"kernel": k.name, "veus": k.persistent.veus, "blocks": k.grid[0],
                    "threads": k.block[0], "tasks": len(k.persistent.tasks),
                    "blocks_per_sm": per_sm, "occupancy": round(per_sm * warps / 64, 3)})
    return out


def run_case(build: Path, case: dict) -> dict:
    import numpy as np
    import torch

    import quartet.runtime as rt

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    name, path = case["name"], build / case["case"]
    res: dict = {"case": case["case"]}
    model, workload = _model(case)
    res["weights_identical"], res["weights_differ"] = _check_weights(model, path)
    model = model.to(DEVICE).eval()
    eager = eager_form(name, model)
    m64 = copy.deepcopy(model).double()
    eager64 = eager_form(name, m64)
    t0 = time.perf_counter()
    prog = rt.load(path)
    res["load_s"] = round(time.perf_counter() - t0, 3)
    res["kernels"] = len(prog.manifest.kernels)
    res["launches_per_call"] = sum(1 for _, st in prog.manifest.steps()
                                   if type(st).__name__ == "Launch")
    if any(k.persistent for k in prog.manifest.kernels):
        res["persistent"] = _persistent_occupancy(prog.manifest)
    with torch.no_grad():
        if case["kind"] == "zoo":
            ref = np.load(build / f"{case['case']}.ref.npz")
            errs = []
            for k in range(case["sets"]):
                xs = [torch.from_numpy(ref[f"in{k}_{j}"]).to(DEVICE)
                      for j in range(len(prog.manifest.inputs))]
                _poison(prog)
                errs.append(rel_err(prog(*xs), ref[f"out{k}"]))
            res["err_stored_ref"] = max(errs)
        gen = torch.Generator(device=DEVICE).manual_seed(2024)
        if workload is not None:
            xs = list(workload.inputs(2024, device=DEVICE, tiny=case.get("tiny", False)))
        else:
            xs = [torch.randn(t.shape, generator=gen, device=DEVICE,
                              dtype=getattr(torch, t.dtype)) for t in prog.manifest.inputs]
        sets = [xs] + ([[-x for x in xs]] if name == "cond_residual" else [])
        errs, eager_errs, branches = [], [], []
        for s in sets:
            _poison(prog)
            out = prog(*s)
            ref64 = eager64(*[x.double() for x in s])
            errs.append(rel_err(out, ref64))
            eager_errs.append(rel_err(eager(*s), ref64))
            if name == "cond_residual":
                branches.append(bool(s[0].mean() > model.threshold))
        res["err"], res["err_eager"] = max(errs), max(eager_errs)
        if branches:
            res["branches_taken"] = branches
        # Timing on the first set.
        res["eager_ms"] = time_ms(lambda: eager(*xs))
        res["quartet_call_ms"] = time_ms(lambda: prog(*xs))
        res["quartet_program_ms"] = prog.bench(*xs, warmup=5, repeat=50).median_ms
        prog.close()
        if not case.get("control_flow") and DEVICE == "cuda":
            try:     # a cooperative launch in a captured graph may be refused: say so
                g = rt.load(path, graph=True)
                res["quartet_graph_ms"] = g.bench(*xs, warmup=5, repeat=50).median_ms
                _poison(g)
                res["err_graph"] = rel_err(g(*xs), eager64(*[x.double() for x in xs]))
                g.close()
            except Exception as e:      # noqa: BLE001
                res["graph_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    return res


# ---------------------------------------------------------------------------------------------
# The driver


def _fmt(v, spec):
    if v is None:
        return "-"
    return format(v, spec)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("build", type=Path)
    ap.add_argument("--case")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")))
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds per case")
    ap.add_argument("--budget", type=float, default=240.0, help="no case starts after this")
    ap.add_argument("--only", nargs="*")
    args = ap.parse_args()
    cases = json.loads((args.build / "cases.json").read_text())
    if args.case:
        case = next(c for c in cases if c["case"] == args.case)
        print("RESULT " + json.dumps(run_case(args.build, case)), flush=True)
        return 0

    import torch

    env = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "torch": torch.__version__,
           "device": torch.cuda.get_device_name(0) if DEVICE == "cuda" else "cpu (twin)",
           "command": " ".join([os.path.basename(sys.executable)] + sys.argv)}
    print(json.dumps(env), flush=True)
    results = []
    args.out.mkdir(parents=True, exist_ok=True)
    logs = open(args.out / "e2e_workers.log", "w")
    started = time.perf_counter()
    for case in cases:
        if time.perf_counter() - started > args.budget:
            results.append({"case": case["case"], "error": f"not run: past the {args.budget:.0f} s budget"})
            continue
        if "error" in case:
            results.append({"case": case["case"], "error": "build: " + case["error"]})
            continue
        if args.only and case["case"] not in args.only:
            continue
        t0 = time.perf_counter()
        try:
            done = subprocess.run([sys.executable, __file__, str(args.build), "--case",
                                   case["case"]], capture_output=True, text=True,
                                  timeout=args.timeout)
            line = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
            if line:
                r = json.loads(line[-1][len("RESULT "):])
            else:
                tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
                r = {"case": case["case"], "error": f"rc {done.returncode}: " + " | ".join(tail)}
            logs.write(f"=== {case['case']}\n{done.stdout}\n{done.stderr}\n")
        except subprocess.TimeoutExpired:
            r = {"case": case["case"], "error": f"timed out after {args.timeout:.0f} s"}
        r["wall_s"] = round(time.perf_counter() - t0, 1)
        results.append(r)
        print(json.dumps(r), flush=True)
    logs.close()
    (args.out / "e2e.json").write_text(json.dumps({"env": env, "results": results}, indent=1))
    print(f"\n{'case':26s} {'err':>9s} {'err_eager':>9s} {'stored':>9s} {'eager ms':>9s} "
          f"{'call ms':>9s} {'prog ms':>9s} {'graph ms':>9s} {'eager/graph':>11s}")
    for r in results:
        if "error" in r:
            print(f"{r['case']:26s} ERROR {r['error'][:150]}")
            continue
        best = r.get("quartet_graph_ms") or r["quartet_program_ms"]
        print(f"{r['case']:26s} {_fmt(r['err'], '9.2e')} {_fmt(r['err_eager'], '9.2e')} "
              f"{_fmt(r.get('err_stored_ref'), '9.2e')} {r['eager_ms']:9.4f} "
              f"{r['quartet_call_ms']:9.4f} {r['quartet_program_ms']:9.4f} "
              f"{_fmt(r.get('quartet_graph_ms'), '9.4f')} {r['eager_ms'] / best:11.2f}")
    for r in results:
        for p in r.get("persistent", []):
            print(f"{r['case']:26s} {r['launches_per_call']} launch(es)/call; persistent "
                  f"{p['kernel']}: {p['tasks']} tasks on {p['veus']} vEUs, {p['blocks']} blocks "
                  f"x {p['threads']} threads, {p['blocks_per_sm']}/SM, occupancy "
                  f"{p['occupancy']:.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
