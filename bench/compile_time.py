"""Roller's compile time per operator: linalg on tensors -> cubin, in a running compiler.

    python -m bench.compile_time [--only NAMES] [--reps 3] [--out bench/results]

For every single-operator workload of :mod:`bench.suite` (family ``roller``), the module is
imported with torch-mlir once; then, ``--reps`` times, the whole ``roller{target=sm_90}``
pipeline runs on the imported text and every kernel is built down to a cubin (NVVM, LLVM,
ptxas), with the binary cache and the policy's memo cleared before each repetition, so each
repetition compiles from scratch. What is excluded is what a running compiler pays once: the
Python imports, the first MLIR context and pass registration (the first repetition after a
warm-up on another operator). Reported per operator: the median over repetitions of the
process's CPU time plus ptxas's (children's CPU time), and of wall time, divided by the
kernels made. This is the measurement of issue 3 ("per-operator compile time from linalg to
cubin"); ``bench.build``'s column is the cold one (a fresh process per workload).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import mlir.ir  # noqa: F401  (before torch_mlir, see frontend/compile.py)

from bench import suite


def _cpu() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def measure(workload: suite.Workload, reps: int, target: str = "sm_90") -> dict:
    from quartet.frontend.compile import import_linalg, pipeline_passes
    from quartet.lowering import binary, host
    from quartet.passes.roller import policy
    import quartet.dialects as qd
    from quartet.driver import parse, run_pipeline

    imported = import_linalg(workload.module(0), workload.inputs(0))
    text = imported.mlir_text
    cpu, wall, kernels = [], [], None
    for _ in range(reps):
        binary._CACHE.clear()
        policy.forget()
        c0, w0 = _cpu(), time.perf_counter()
        module = parse(text, qd.context(), "<model>")
        run_pipeline(module, pipeline_passes("roller", target))
        _, plans = host.lower_module_plans(module, target)
        cpu.append(_cpu() - c0)
        wall.append(time.perf_counter() - w0)
        kernels = sum(len(p.launches) for p in plans.values())
    return {"workload": workload.name, "kernels": kernels,
            "cpu_s_per_kernel": statistics.median(cpu) / kernels,
            "wall_s_per_kernel": statistics.median(wall) / kernels,
            "cpu_s": cpu, "wall_s": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    names = [n for n in args.only.split(",") if n]
    rows = [w for w in suite.WORKLOADS if w.family == "roller" and (not names or w.name in names)]
    if not rows:
        raise SystemExit("error: no roller workload matches --only")
    measure(rows[0], 1)                                   # warm-up: imports, first context
    results = []
    for w in rows:
        r = measure(w, args.reps)
        results.append(r)
        print(f"{w.name:28s} kernels {r['kernels']}  CPU {r['cpu_s_per_kernel']:.2f} s/kernel  "
              f"wall {r['wall_s_per_kernel']:.2f} s/kernel", flush=True)
    per = sorted(r["cpu_s_per_kernel"] for r in results)
    print(f"median CPU per kernel over {len(results)} operators: {statistics.median(per):.2f} s; "
          f"load average {os.getloadavg()[0]:.1f}")
    stamp = datetime.now(timezone.utc)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"compile-time-{stamp.strftime('%Y-%m-%dT%H%M%SZ')}.json"
    path.write_text(json.dumps({"when": stamp.isoformat(), "load_average": os.getloadavg()[0],
                                "cpus": os.cpu_count(), "rows": results}, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
