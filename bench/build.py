"""Build step of the benchmark (runs here, no GPU): compile every workload with Quartet.

``python -m bench.build [--out .artifacts/bench] [--only NAMES] [--pipelines family,...]``

For every workload of :mod:`bench.suite` and every pipeline asked for (``family``, the default,
means the workload's own compiler: ``roller``, ``welder``, ``grinder`` or ``rammer``; any other
name, such as ``quartet``, is passed as it is), one child process builds the workload's module
(seed ``--seed``, the form Quartet compiles), calls
``quartet.compile(module, example_inputs, pipeline=..., target=...)``, times that call (the
Quartet compile time of the row) and saves the result with ``.save(<out>/<workload>/<pipeline>)``.
Weight files of 1 MiB or more that the seed rebuilds exactly are then removed from the artifact
(:mod:`bench.artifact_weights`), so that the folder stays small enough to carry to the GPU
machine (``--max-mib``, default 40, for all artifacts together).

A row records the kernels per call and, for the ``welder`` pipeline, the global-memory bytes
per call before and after fusion by Welder's cost model (``global_bytes_model``).

Every row is written to ``<out>/build.json``, compiled or not: a workload Quartet cannot compile
yet is a row whose status reads ``not compiled: <reason>`` (quartet.compile missing, an
unsupported operator, a crash, a timeout), never a missing row.  ``--only`` rebuilds some rows
and keeps the others of an existing ``build.json``.

The default folder ``.artifacts/bench`` is git-ignored; the device tool carries it with
``carry=[".artifacts"]``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

if __package__ in (None, ""):  # run as a script: make ``bench`` importable as a package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    __package__ = "bench"

from . import artifact_weights, suite  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / ".artifacts" / "bench"
MANIFEST = "build.json"
RESULT_TAG = "BENCH_BUILD_RESULT "
FORMAT = "quartet-bench-build"
VERSION = 1


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    msg = text[0] if text else ""
    return f"{type(e).__name__}: {msg}"[:300] if msg else type(e).__name__


def find_compile() -> Callable:
    """``quartet.compile``, else ``quartet.frontend.compile`` (the function, also when it lives in
    the submodule of that name); LookupError when none exists."""
    import importlib

    import quartet

    fn = getattr(quartet, "compile", None)
    for where in ("quartet.frontend", "quartet.frontend.compile"):
        if callable(fn):
            break
        try:
            fn = getattr(importlib.import_module(where), "compile", None)
        except ImportError as e:
            if where == "quartet.frontend.compile" and e.name != where:
                raise LookupError(f"quartet.compile cannot be imported ({_one_line(e)})") from e
            fn = None
    if not callable(fn):
        raise LookupError("quartet.compile does not exist yet")
    return fn


_WELDER_ATTR = re.compile(r"welder\.(bytes|bytes_unfused|tiles) = (\d+) : i64")


def model_bytes(quartet_ir: str) -> dict | None:
    """Global-memory bytes per call by Welder's cost model, summed over the tiles of the IR the
    passes produced (the ``welder.*`` attributes ``welder-fuse`` writes): ``unfused`` with every
    operator a kernel of its own (``kernels_unfused`` of them), ``fused`` with the kernels
    built; None for a pipeline without them."""
    totals = {"bytes": 0, "bytes_unfused": 0, "tiles": 0}
    found = False
    for name, value in _WELDER_ATTR.findall(quartet_ir):
        totals[name] += int(value)
        found = True
    if not found:
        return None
    return {"unfused": totals["bytes_unfused"], "fused": totals["bytes"],
            "kernels_unfused": totals["tiles"]}


def pipeline_for(workload: suite.Workload, pipeline: str) -> str:
    return workload.family if pipeline == "family" else pipeline


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def build_one(workload: suite.Workload, pipeline: str, out: Path, *, target: str, seed: int,
              compile_fn: Callable | None = None,
              keep_below: int = artifact_weights.KEEP_BELOW, tiny: bool = False) -> dict:
    """Compile one row in this process; returns its row (status ``compiled`` or ``not compiled: ...``)."""
    pipe = pipeline_for(workload, pipeline)
    rel = f"{workload.name}/{pipe}"
    row = {"workload": workload.name, "family": workload.family, "pipeline": pipe,
           "target": target, "seed": seed, "form": workload.quartet_form, "tiny": tiny,
           "status": None, "compile_s": None, "artifact": None}
    adir = Path(out) / rel
    if adir.exists():
        shutil.rmtree(adir)
    try:
        fn = compile_fn or find_compile()
    except LookupError as e:
        row["status"] = f"not compiled: {e}"
        return row
    except Exception as e:
        row["status"] = f"not compiled: {_one_line(e)}"
        return row
    try:
        module = workload.module(seed, form=workload.quartet_form, tiny=tiny)
        example = workload.inputs(seed, tiny=tiny)
        t0 = time.perf_counter()
        compiled = fn(module, example, pipeline=pipe, target=target)
        row["compile_s"] = time.perf_counter() - t0
        # Per stage (import; passes; lowering to binaries) and kernels made: linalg -> cubin
        # per kernel is (passes + lower) / kernels.
        result = getattr(compiled, "result", None)
        row["stage_s"] = dict(getattr(result, "seconds", None) or {})
        manifest = getattr(compiled, "manifest", None)
        row["kernels"] = len(manifest.kernels) if manifest is not None else None
        if manifest is not None:
            row.update(launch_summary(manifest))
        row["global_bytes_model"] = model_bytes(getattr(result, "quartet", "") or "")
    except Exception as e:
        row["status"] = f"not compiled: {_one_line(e)}"
        return row
    try:
        adir.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        compiled.save(str(adir))
        row["save_s"] = time.perf_counter() - t0
        row["bytes_saved"] = dir_bytes(adir)
        row["weights"] = artifact_weights.strip(adir, module, workload=workload.name, seed=seed,
                                                form=workload.quartet_form, keep_below=keep_below)
        row["artifact_bytes"] = dir_bytes(adir)
    except Exception as e:
        shutil.rmtree(adir, ignore_errors=True)
        row["status"] = f"not compiled: saving failed: {_one_line(e)}"
        return row
    row["status"] = "compiled"
    row["artifact"] = rel
    return row


def launch_summary(manifest) -> dict:
    """Launches per call (the host program's launch steps; a host loop's body counted once) and
    each persistent kernel (Rammer): its vEUs, grid, threads, tasks and the SM occupancy its
    resident blocks give on the chip it was compiled for (warps resident per SM / the SM's
    warps; every block of a persistent kernel is resident by construction)."""
    from quartet.runtime import targets

    launches = sum(1 for _, s in manifest.steps() if type(s).__name__ == "Launch")
    out = {"launches_per_call": launches}
    persistent = []
    for k in manifest.kernels:
        if k.persistent is None:
            continue
        chip = targets.get(manifest.target.rstrip("a"))
        warps = -(-k.block[0] // chip.warp_size)
        per_sm = k.persistent.blocks_per_sm
        persistent.append({
            "kernel": k.name, "veus": k.persistent.veus, "blocks": k.grid[0],
            "threads": k.block[0], "shared_memory": k.shared_memory,
            "tasks": len(k.persistent.tasks), "blocks_per_sm": per_sm,
            "occupancy": round(per_sm * warps * chip.warp_size / chip.max_threads_per_unit, 3)})
    if persistent:
        out["persistent"] = persistent
    return out


def _build_in_child(workload: suite.Workload, pipeline: str, out: Path, *, target: str,
                    seed: int, timeout_s: float, tiny: bool) -> dict:
    cmd = [sys.executable, "-m", "bench.build", "--child", workload.name, "--pipelines", pipeline,
           "--out", str(out), "--target", target, "--seed", str(seed)] + (["--tiny"] if tiny else [])
    pipe = pipeline_for(workload, pipeline)
    base = {"workload": workload.name, "family": workload.family, "pipeline": pipe,
            "target": target, "seed": seed, "form": workload.quartet_form, "tiny": tiny,
            "compile_s": None, "artifact": None}
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        shutil.rmtree(Path(out) / workload.name / pipe, ignore_errors=True)
        return {**base, "status": f"not compiled: did not finish in {timeout_s:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1][:300]
    return {**base, "status": f"not compiled: compiler process exited {proc.returncode}: {tail}"}


def _versions() -> dict:
    import torch

    v = {"python": platform.python_version(), "torch": torch.__version__}
    for mod in ("mlir", "torch_mlir", "numpy"):
        try:
            m = __import__(mod)
            v[mod] = getattr(m, "__version__", "present")
        except Exception:
            v[mod] = None
    try:
        import quartet

        v["quartet"] = quartet.__version__
    except Exception:
        pass
    return v


def _git_commit() -> str | None:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head + ("+dirty" if dirty else "") if head else None
    except Exception:
        return None


def enforce_carry_budget(rows: list[dict], out: Path, max_bytes: int) -> None:
    """Drop the largest artifacts until all of them fit in ``max_bytes``; their rows say why."""
    compiled = [r for r in rows if r.get("artifact")]
    total = sum(r.get("artifact_bytes", 0) for r in compiled)
    for r in sorted(compiled, key=lambda r: -r.get("artifact_bytes", 0)):
        if total <= max_bytes:
            break
        shutil.rmtree(Path(out) / r["artifact"], ignore_errors=True)
        total -= r.get("artifact_bytes", 0)
        r["status"] = (f"not carried: artifact of {r['artifact_bytes'] / 2**20:.1f} MiB does not fit "
                       f"the {max_bytes / 2**20:.0f} MiB carry budget")
        r["artifact"] = None


def build(workloads: list[suite.Workload], out: Path, *, pipelines: list[str] = ("family",),
          target: str = "sm_90", seed: int = 0, timeout_s: float = 900.0,
          max_bytes: int = 40 << 20, isolate: bool = True, compile_fn: Callable | None = None,
          tiny: bool = False, keep_below: int = artifact_weights.KEEP_BELOW, log=print) -> dict:
    """Build every (workload, pipeline) row and write ``<out>/build.json``; returns its content.

    ``isolate`` runs each compile in a child process (a crash or a hang costs one row);
    ``compile_fn`` replaces ``quartet.compile`` (in-process only; tests use it).  ``tiny``
    compiles the tiny sizes (for ``run.py --tiny`` dry runs, e.g. with ``target="cpu"``).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    mpath = out / MANIFEST
    old_rows: list[dict] = []
    if mpath.is_file():
        try:
            old_rows = json.loads(mpath.read_text()).get("rows", [])
        except (OSError, ValueError):
            old_rows = []
    new_rows = []
    for w in workloads:
        for p in pipelines:
            if isolate and compile_fn is None:
                row = _build_in_child(w, p, out, target=target, seed=seed, timeout_s=timeout_s,
                                      tiny=tiny)
            else:
                row = build_one(w, p, out, target=target, seed=seed, compile_fn=compile_fn,
                                keep_below=keep_below, tiny=tiny)
            t = f"{row['compile_s']:.2f} s" if row.get("compile_s") is not None else "-"
            log(f"{w.name:28s} {row['pipeline']:8s} {t:>9s}  {row['status']}")
            new_rows.append(row)
    done = {(r["workload"], r["pipeline"]) for r in new_rows}
    rows = [r for r in old_rows if (r.get("workload"), r.get("pipeline")) not in done
            and r.get("workload") in suite.BY_NAME]
    rows += new_rows
    order = {w.name: i for i, w in enumerate(suite.WORKLOADS)}
    rows.sort(key=lambda r: (order.get(r["workload"], 1 << 30), r["pipeline"]))
    # a row whose artifact vanished (an earlier run cleaned it) is no longer compiled
    for r in rows:
        if r.get("artifact") and not (out / r["artifact"]).is_dir():
            r["status"], r["artifact"] = "not compiled: artifact missing from the build folder", None
    enforce_carry_budget(rows, out, max_bytes)
    manifest = {
        "format": FORMAT, "version": VERSION,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(), "target": target, "seed": seed, "git_commit": _git_commit(),
        "versions": _versions(), "max_bytes": max_bytes,
        "total_bytes": sum(r.get("artifact_bytes", 0) for r in rows if r.get("artifact")),
        "rows": rows,
    }
    mpath.write_text(json.dumps(manifest, indent=1))
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.build", description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="artifact folder (%(default)s)")
    ap.add_argument("--only", default="", help="workload or family names, comma-separated")
    ap.add_argument("--pipelines", default="family",
                    help="comma-separated; 'family' = the workload's own compiler (default)")
    ap.add_argument("--target", default="sm_90")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout-s", type=float, default=900.0, help="per compile (%(default)s)")
    ap.add_argument("--max-mib", type=float, default=40.0,
                    help="all artifacts together, to fit the device tool's carry limit")
    ap.add_argument("--in-process", action="store_true", help="no child process per compile")
    ap.add_argument("--tiny", action="store_true",
                    help="tiny sizes, for run.py --tiny dry runs (e.g. with --target cpu)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        row = build_one(suite.get(args.child), args.pipelines, args.out, target=args.target,
                        seed=args.seed, tiny=args.tiny)
        print(RESULT_TAG + json.dumps(row), flush=True)
        return 0
    workloads = suite.select(args.only)
    pipelines = [p for p in args.pipelines.split(",") if p]
    m = build(workloads, args.out, pipelines=pipelines, target=args.target, seed=args.seed,
              timeout_s=args.timeout_s, max_bytes=int(args.max_mib * 2**20),
              isolate=not args.in_process, tiny=args.tiny)
    n = sum(1 for r in m["rows"] if r.get("artifact"))
    print(f"{n} of {len(m['rows'])} rows compiled; {m['total_bytes'] / 2**20:.1f} MiB in "
          f"{os.path.relpath(args.out / MANIFEST)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
