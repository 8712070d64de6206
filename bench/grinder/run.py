"""Grinder's GPU measurement (issue 12): device loops against host loops and peers, one call.

Build here (MLIR; writes ``.artifacts/grinder``, weights the seed rebuilds stripped)::

    python -m bench.build --out .artifacts/grinder --only grinder \\
        --pipelines 'grinder,grinder{control=host}' --max-mib 20

Run on the GPU machine (torch, numpy, cuda-bindings; no MLIR)::

    PYTHONPATH=. python3 bench/grinder/run.py --artifacts .artifacts/grinder --out $OUT

For each grinder workload of ``bench/suite.py`` (LSTM 10 layers x 100 steps hidden 256, GRU 4
layers x 100 steps, the greedy decoder, SkipNet; batch 1, fp32, weights from seed 0):

* **peers**: PyTorch eager on the Python-loop form (what users write), the same captured as one
  CUDA graph where the call never reads a value back, and cuDNN's ``nn.LSTM`` / ``nn.GRU`` with
  the same weights, eager and as a CUDA graph (torch.compile is left out: it did not finish
  compiling the LSTM in 90 s on 2026-12-03);
* **quartet**: every artifact of the build (``grinder``: the cost model's choice, a device loop
  where it chose one; ``grinder{control=host}``: today's host loop), each in a child process (a
  device-side trap cannot take the others down), timed end to end with CUDA events on the
  caller's tensors, and one call instrumented: **launches** and **host round trips**
  (predicates read back) per call, counted at the runtime's backend;
* **check**: every output against the module in float64 on the GPU (tokens: mismatches);
* times are medians over ``--target-s`` of calls; ratios are Quartet's time over each peer's.

The JSON (``$OUT/grinder-run.json``) is rewritten after every workload; a table ends the log.
The whole run keeps to ``--budget-s`` (default 200 s): rows that would not fit are skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``bench`` importable as a package
    sys.path.append(str(Path(__file__).resolve().parents[2]))  # after device_env.sh's site
    __package__ = "bench.grinder"

import torch  # noqa: E402

from bench import artifact_weights, suite  # noqa: E402
from bench.run import Clock, compare, graph_replay_ms, import_runtime, time_e2e  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
WORKLOADS = ("lstm_f32", "gru_f32", "decode_f32", "skipnet_f32")
CHILD_TAG = "GRINDER_ROW "


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


#: ``--device cpu --tiny``: a dry run of this script on the CPU (artifacts built with
#: ``python -m bench.build --tiny --target cpu``)
DEVICE, TINY = "cuda", False


def _pool(w: suite.Workload, n: int) -> list[tuple]:
    return [w.inputs(seed, device=DEVICE, tiny=TINY) for seed in range(1, n + 1)]


def _reference(w: suite.Workload, inputs: tuple) -> list[torch.Tensor]:
    module = w.module(0, form=w.quartet_form, device=DEVICE, dtype=torch.float64, tiny=TINY)
    with torch.no_grad():
        out = module(*[x.double() if x.is_floating_point() else x for x in inputs])
    return suite.flatten_outputs(out)


# --------------------------------------------------------------------------------------------
# Peers


def _cudnn(w: suite.Workload, module) -> torch.nn.Module | None:
    """cuDNN's nn.LSTM / nn.GRU holding ``module``'s weights, returning the top layer's last
    hidden state like the workload; None for other workloads."""
    s = w.sizes_for(TINY)
    if w.name.startswith("lstm"):
        rnn = torch.nn.LSTM(s["input"], s["hidden"], s["layers"])
    elif w.name.startswith("gru"):
        rnn = torch.nn.GRU(s["input"], s["hidden"], s["layers"])
    else:
        return None
    with torch.no_grad():
        for l in range(s["layers"]):
            getattr(rnn, f"weight_ih_l{l}").copy_(module.w_ih[l])
            getattr(rnn, f"weight_hh_l{l}").copy_(module.w_hh[l])
            if w.name.startswith("lstm"):
                getattr(rnn, f"bias_ih_l{l}").copy_(module.bias[l])
                getattr(rnn, f"bias_hh_l{l}").zero_()
            else:
                getattr(rnn, f"bias_ih_l{l}").copy_(module.b_ih[l])
                getattr(rnn, f"bias_hh_l{l}").copy_(module.b_hh[l])

    class Top(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = rnn

        def forward(self, xs):
            out, _ = self.rnn(xs)
            return out[-1]

    return Top().to(DEVICE).eval()


def measure_peers(w, clock, pool, check, ref, args) -> dict:
    out: dict = {}
    eager = w.module(0, form=w.forms[0], device=DEVICE, tiny=TINY).eval()
    peers = {"eager": eager}
    cudnn = _cudnn(w, eager)
    if cudnn is not None:
        peers["cudnn"] = cudnn
    for name, module in peers.items():
        res: dict = {}
        try:
            with torch.no_grad():
                res.update(time_e2e(clock, module, pool, warmup=2, target_s=args.target_s,
                                    min_reps=3, max_reps=200))
                res["check"] = compare(module(*check), ref)
                try:
                    if DEVICE != "cuda":
                        raise RuntimeError("no CUDA graphs on the CPU")
                    res["graph_ms"] = graph_replay_ms(clock, module, pool[0], reps=20)
                except Exception as e:  # a call that reads a value back cannot be captured
                    res["graph_ms"], res["graph_note"] = None, f"capture failed: {_one_line(e)}"
                    clock.sync()
        except Exception as e:
            res = {"status": f"error: {_one_line(e)}"}
        out[name] = res
        print(f"{w.name}: {name:8s} {res.get('median_ms', '-')} ms, graph "
              f"{res.get('graph_ms', '-')} ms, check {res.get('check', res.get('status'))}",
              flush=True)
    return out


# --------------------------------------------------------------------------------------------
# Quartet (one child per artifact)


def measure_quartet_child(workload: str, row: dict, artifacts: Path, target_s: float) -> dict:
    """Runs in a child process: load, time, count, check one artifact."""
    rt = import_runtime()
    w = suite.get(workload)
    path = artifacts / row["artifact"]
    res: dict = {"pipeline": row["pipeline"], "compile_s": row.get("compile_s"),
                 "kernels": row.get("kernels"), "persistent": row.get("persistent")}
    if artifact_weights.needs_restore(path):
        scratch = Path(tempfile.mkdtemp(prefix="grinder-artifact-"))
        path = artifact_weights.restore(path, w.module(row.get("seed", 0), form=row.get("form"),
                                                       tiny=TINY), scratch / w.name)
    prog = rt.load(str(path))
    clock = Clock(torch.device(DEVICE))
    pool = _pool(w, 4)
    check = w.inputs(1000, device=DEVICE, tiny=TINY)
    res.update(time_e2e(clock, prog, pool, warmup=2, target_s=target_s, min_reps=3,
                        max_reps=300))
    res["check"] = compare(prog(*check), _reference(w, check))
    res.update(_count(prog, pool))
    try:
        b = prog.bench(*pool[0], warmup=2, repeat=10)
        res["runtime_bench_ms"] = getattr(b, "median_ms", None) or str(b)
    except Exception as e:
        res["runtime_bench_ms"] = f"error: {_one_line(e)}"
    prog.close()
    return res


def _count(prog, pool) -> dict:
    """Launches and host round trips (values read back) of calls on each input of the pool,
    counted at the backend the interpreter drives."""
    b = prog.backend
    counts = {"launch": 0, "read_scalar": 0}
    originals = {k: getattr(b, k) for k in counts}

    def counting(name):
        def wrapped(*a, **kw):
            counts[name] += 1
            return originals[name](*a, **kw)
        return wrapped

    for k in counts:
        setattr(b, k, counting(k))
    try:
        per = []
        for inputs in pool:
            before = dict(counts)
            prog(*inputs)
            per.append({k: counts[k] - before[k] for k in counts})
    finally:
        for k, f in originals.items():
            setattr(b, k, f)
    return {"launches_per_call": statistics.median(p["launch"] for p in per),
            "round_trips_per_call": statistics.median(p["read_scalar"] for p in per)}


def measure_quartet(w, rows, args, deadline) -> dict:
    out = {}
    for row in rows:
        key = row["pipeline"]
        if not row.get("artifact"):
            out[key] = {"status": row.get("status") or "not compiled"}
            print(f"{w.name}: quartet {key}: {out[key]['status'][:200]}", flush=True)
            continue
        left = deadline - time.monotonic()
        if left < 25:
            out[key] = {"status": "skipped: out of budget"}
            continue
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", w.name,
               "--row", json.dumps(row), "--artifacts", str(args.artifacts),
               "--target-s", str(args.target_s), "--device", DEVICE] + \
            (["--tiny"] if TINY else [])
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=min(90, left),
                                  env={**os.environ, "PYTHONPATH": os.pathsep.join(
                                      filter(None, [os.environ.get("PYTHONPATH"), str(ROOT)]))})
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(CHILD_TAG)]
            if lines:
                out[key] = json.loads(lines[-1][len(CHILD_TAG):])
            else:
                tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-3:]
                out[key] = {"status": "error: " + " | ".join(tail)[:400]}
        except subprocess.TimeoutExpired:
            out[key] = {"status": "error: timed out (a hung device loop?)"}
        r = out[key]
        print(f"{w.name}: quartet {key}: {r.get('median_ms', '-')} ms, launches "
              f"{r.get('launches_per_call', '-')}, round trips {r.get('round_trips_per_call', '-')}"
              f", check {r.get('check', r.get('status'))}", flush=True)
    return out


# --------------------------------------------------------------------------------------------


def _ratios(record: dict) -> None:
    peers = record["peers"]
    for q in record["quartet"].values():
        if "median_ms" not in q:
            continue
        q["ratio"] = {}
        for name, p in peers.items():
            for key, label in (("median_ms", name), ("graph_ms", f"{name}_graph")):
                if p.get(key):
                    q["ratio"][label] = round(q["median_ms"] / p[key], 3)


def _table(records: dict) -> str:
    lines = ["workload     system                       ms      launches  round trips  vs eager  "
             "vs cudnn_graph"]
    for name, rec in records.items():
        for p, r in rec.get("peers", {}).items():
            lines.append(f"{name:12s} {p:26s} {r.get('median_ms', float('nan')):9.3f}"
                         f"   graph {r.get('graph_ms') or float('nan'):.3f}")
        for p, r in rec.get("quartet", {}).items():
            if "median_ms" not in r:
                lines.append(f"{name:12s} {p:26s} {r.get('status', '')[:80]}")
                continue
            ratio = r.get("ratio", {})
            lines.append(f"{name:12s} {p:26s} {r['median_ms']:9.3f}   {r['launches_per_call']:8}"
                         f"  {r['round_trips_per_call']:11}  {ratio.get('eager', '-'):>8}  "
                         f"{ratio.get('cudnn_graph', '-'):>8}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifacts", type=Path, default=ROOT / ".artifacts" / "grinder")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "."))
    ap.add_argument("--only", default=",".join(WORKLOADS))
    ap.add_argument("--target-s", type=float, default=0.5)
    ap.add_argument("--budget-s", type=float, default=200.0)
    ap.add_argument("--device", default="cuda", help="cpu: a dry run (with --tiny)")
    ap.add_argument("--tiny", action="store_true", help="tiny sizes (a dry run on the CPU)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--row", help=argparse.SUPPRESS)
    args = ap.parse_args()
    global DEVICE, TINY
    DEVICE, TINY = args.device, args.tiny
    if args.child:
        try:
            res = measure_quartet_child(args.child, json.loads(args.row), args.artifacts,
                                        args.target_s)
        except Exception as e:
            res = {"status": f"error: {_one_line(e)}", "traceback": traceback.format_exc(limit=5)}
        print(CHILD_TAG + json.dumps(res, default=str), flush=True)
        return
    deadline = time.monotonic() + args.budget_s
    build = json.loads((args.artifacts / "build.json").read_text())
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"device": torch.cuda.get_device_name(0) if DEVICE == "cuda" else DEVICE,
              "date": time.strftime("%Y-%m-%d %H:%M UTC",
              time.gmtime()), "torch": torch.__version__, "cudnn": torch.backends.cudnn.version(),
              "build_commit": build.get("commit"), "workloads": {}}
    clock = Clock(torch.device(DEVICE))
    torch.backends.cudnn.benchmark = False
    for name in [n for n in args.only.split(",") if n]:
        w = suite.get(name)
        rows = [r for r in build.get("rows", []) if r.get("workload") == name]
        record = {"title": w.title, "peers": {}, "quartet": {}}
        try:
            pool = _pool(w, 4)
            check = w.inputs(1000, device=DEVICE, tiny=TINY)
            ref = _reference(w, check)
            if time.monotonic() < deadline - 30:
                record["peers"] = measure_peers(w, clock, pool, check, ref, args)
            record["quartet"] = measure_quartet(w, rows, args, deadline)
            _ratios(record)
        except Exception as e:
            record["status"] = f"error: {_one_line(e)}"
            print(f"{name}: {record['status']}", flush=True)
        result["workloads"][name] = record
        (args.out / "grinder-run.json").write_text(json.dumps(result, indent=1, default=str))
    print(_table(result["workloads"]), flush=True)


if __name__ == "__main__":
    main()
