"""Compile time as a user meets it (issue 14): a fresh process per compile, cold and cached.

    python -m bench.compile_speed [--only matmul,bert_tiny,...] [--target sm_90]
                                  [--out bench/results/compile_speed.json]

For every workload: one fresh process compiles it with an empty compile cache (cold: Python
start-up, imports, torch.export, torch-mlir, passes, kernel builds, the cache entry's write),
then a second fresh process compiles it again (cached: start-up, imports, torch.export, the
entry's read). Each row gives the process's wall time from ``python`` to exit, its CPU time
(children included: kernel-build workers, ptxas), the in-process stage times, and the kernels
launched against the distinct binaries built. Wall times on a loaded machine exceed CPU times;
both are written down.

Workloads: ``matmul`` (one 1024^3 f32 matmul), ``bert_tiny`` / ``bert_base`` (the zoo's
BERT, f32, batch 1, 8 / 128 tokens), ``lstm_unrolled`` (the suite's hand-written LSTM in its
Python-loop form, 10 layers, hidden 256, ``--steps`` steps: 10 x steps identical cells that
torch.export unrolls).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

WORKLOADS = ("matmul", "bert_tiny", "bert_base", "lstm_unrolled")


def _model(name: str, steps: int):
    import torch

    if name == "matmul":
        class MatMul(torch.nn.Module):
            def forward(self, a, b):
                return a @ b

        g = torch.Generator().manual_seed(0)
        return MatMul(), (torch.randn(1024, 1024, generator=g),
                          torch.randn(1024, 1024, generator=g))
    if name in ("bert_tiny", "bert_base"):
        from quartet.frontend import zoo

        return zoo.build("bert", tiny=name == "bert_tiny")
    if name == "lstm_unrolled":
        from bench.suite import LSTM

        torch.manual_seed(0)
        model = LSTM(10, 256, 256, "python")
        for p in model.parameters():
            torch.nn.init.uniform_(p, -0.06, 0.06)
        return model.eval(), (torch.randn(steps, 1, 256),)
    raise SystemExit(f"unknown workload {name!r} (known: {', '.join(WORKLOADS)})")


def _cpu() -> float:
    """CPU seconds of this process and its finished children (kernel-build workers, ptxas)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def one(name: str, target: str, steps: int) -> dict:
    """Compile ``name`` in this process; the row's in-process part."""
    t0 = time.perf_counter()
    import torch  # noqa: F401

    from quartet.frontend.compile import compile_to_artifact

    imported = time.perf_counter() - t0
    module, inputs = _model(name, steps)
    t1, c1 = time.perf_counter(), _cpu()
    writer, result, _ = compile_to_artifact(module, inputs, target=target)
    compile_s, compile_cpu = time.perf_counter() - t1, _cpu() - c1
    manifest = writer.manifest()
    return {"cached": getattr(result, "cached", False), "python_imports_s": round(imported, 2),
            "compile_s": round(compile_s, 2), "compile_cpu_s": round(compile_cpu, 2),
            "stages_s": {k: round(v, 2) for k, v in result.seconds.items()},
            "launches": len(manifest.kernels),
            "distinct_binaries": len({k.binary for k in manifest.kernels})}


def fresh(name: str, target: str, steps: int, cache_dir: str) -> dict:
    """``one`` in a fresh process; adds its wall and CPU time (children included)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    env = {**os.environ, "QUARTET_CACHE": "1", "QUARTET_CACHE_DIR": cache_dir}
    done = subprocess.run([sys.executable, "-m", "bench.compile_speed", "--one", name,
                           "--target", target, "--steps", str(steps)],
                          capture_output=True, text=True, env=env,
                          cwd=Path(__file__).resolve().parents[1])
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["?"])[-1]}
    row = json.loads(done.stdout.strip().splitlines()[-1])
    row["process_wall_s"] = round(wall, 2)
    row["process_cpu_s"] = round((after.ru_utime - before.ru_utime)
                                 + (after.ru_stime - before.ru_stime), 2)
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default=",".join(w for w in WORKLOADS if w != "bert_base"))
    p.add_argument("--target", default="sm_90")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--out", default=None)
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(one(args.one, args.target, args.steps)))
        return 0
    rows = []
    for name in args.only.split(","):
        with tempfile.TemporaryDirectory(prefix="quartet-cache-") as cache_dir:
            row = {"workload": name, "target": args.target}
            if name == "lstm_unrolled":
                row["steps"] = args.steps
            row["cold"] = fresh(name, args.target, args.steps, cache_dir)
            row["cached"] = fresh(name, args.target, args.steps, cache_dir)
        print(json.dumps(row), flush=True)
        rows.append(row)
    if args.out:
        record = {"date": datetime.now(timezone.utc).isoformat(timespec="minutes"),
                  "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                  "load_average": os.getloadavg(), "rows": rows}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
