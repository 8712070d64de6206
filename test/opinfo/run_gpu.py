"""Run every OpInfo artifact built for sm_90 on the GPU, against float64; write a table.

On the GPU machine (torch, numpy, cuda-bindings; no MLIR), in one call:

    source runtime/device_env.sh && python3 test/opinfo/run_gpu.py .artifacts/opinfo_sm90 \
        --out $OUT/opinfo_gpu.json --table $OUT/opinfo_gpu.md

The folder is what ``build_gpu.py`` wrote: one ``<op>/<dtype>/<sample>/`` per case with
``program`` (the artifact), ``case.npz`` (inputs ``in*``, eager outputs ``eager*`` and float64
outputs ``ref*``, all from the CPU) and ``case.json``. Each case: outputs and temporaries are
poisoned (the runtime's own buffers start as NaN bytes where it allows; here every call gets
fresh inputs), the program runs on CUDA tensors, and ``compare.judge`` decides right or wrong
against the float64 reference with eager-on-CPU's error as the allowance. Random ops are
checked for shapes and dtypes only. A case that raises is recorded as ``error`` with the
message; the run goes on.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
import traceback
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from compare import judge  # noqa: E402


def _load_case(folder: Path):
    meta = json.loads((folder / "case.json").read_text())
    data = np.load(folder / "case.npz")
    n_in = len(meta["inputs"])
    inputs = [data[f"in{i}"] for i in range(n_in)]
    eager = [data[f"eager{i}"] for i in range(meta["outputs"])]
    ref = [data[f"ref{i}"] for i in range(meta["outputs"])] \
        if "ref0" in data.files else None
    return meta, inputs, eager, ref


def _torch_inputs(inputs, dtypes, device="cuda"):
    import torch

    out = []
    for a, d in zip(inputs, dtypes):
        t = torch.from_numpy(np.ascontiguousarray(a))
        out.append(t.to(getattr(torch, d)).to(device))
    return out


def _numpy(t):
    import torch

    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        t = t.float()
    return t.contiguous().numpy()


def run_case(folder: Path, device: str = "cuda") -> dict:
    from quartet import runtime

    meta, inputs, eager, ref = _load_case(folder)
    row = {"op": meta["op"], "dtype": meta["dtype"], "sample": meta["sample"]}
    prog = runtime.load(folder / "program")
    try:
        xs = _torch_inputs(inputs, meta["inputs"], device)
        out = prog(*xs)
        out = list(out) if isinstance(out, tuple) else [out]
        got = [_numpy(o) for o in out]
        if meta.get("random"):
            bad = len(got) != len(eager) or any(
                g.shape != e.shape or g.dtype != e.dtype for g, e in zip(got, eager))
            row["outcome"] = "wrong" if bad else "right"
            row["reason"] = "random op: shapes and dtypes " + ("differ" if bad else "checked")
        else:
            why = judge(got, eager, ref, meta["dtype"])
            row["outcome"] = "right" if why is None else "wrong"
            row["reason"] = why or ""
    finally:
        prog.close()
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--table", type=Path)
    p.add_argument("--budget", type=float, default=540.0, help="seconds; stop starting cases")
    args = p.parse_args(argv)
    import torch

    cases = sorted(f.parent for f in args.folder.glob("**/case.json"))
    rows, t0 = [], time.perf_counter()
    for folder in cases:
        if time.perf_counter() - t0 > args.budget:
            rows.append({"op": str(folder.relative_to(args.folder)), "outcome": "not run",
                         "reason": "time budget"})
            continue
        try:
            row = run_case(folder)
        except Exception as e:  # noqa: BLE001 - record and go on
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            row = {"op": str(folder.relative_to(args.folder)), "outcome": "error",
                   "reason": f"{type(e).__name__}: {first[:200]}",
                   "where": traceback.format_exc().splitlines()[-3].strip()}
        rows.append(row)
    device = torch.cuda.get_device_name(0)
    counts = collections.Counter(r["outcome"] for r in rows)
    report = {"device": device, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "torch": torch.__version__, "counts": dict(counts), "cases": rows,
              "seconds": round(time.perf_counter() - t0, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    if args.table:
        lines = [f"# OpInfo on {device}, {report['date']}", "",
                 " ".join(f"{k}: {v}" for k, v in sorted(counts.items())), "",
                 "| op | dtype | outcome | reason |", "|---|---|---|---|"]
        lines += [f"| {r['op']} | {r.get('dtype', '')} | {r['outcome']} | "
                  f"{r.get('reason', '')[:120]} |" for r in rows]
        args.table.write_text("\n".join(lines) + "\n")
    print(json.dumps(report["counts"]), report["seconds"], "s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
