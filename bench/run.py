"""Run step of the benchmark (runs on the GPU machine): every system on every workload, one process.

``PYTHONPATH=. python bench/run.py --artifacts .artifacts/bench --out $OUT``

Needs torch (with CUDA) and numpy; Quartet rows also need ``quartet.runtime`` (cuda-bindings),
imported from this checkout without installing it; never MLIR.  For each workload of
:mod:`bench.suite`:

- **systems**: ``eager`` (PyTorch eager), ``compile`` (``torch.compile``, default mode),
  ``compile_ro`` (``torch.compile(mode="reduce-overhead")``) and ``quartet`` (the artifact that
  ``python -m bench.build`` wrote, through ``quartet.runtime.load``; its row says "not compiled:
  ..." when the build step has none).  Everything runs under ``torch.no_grad()`` with PyTorch's
  default numerics flags (recorded in the JSON).
- **inputs**: a pool of ``--pool`` fresh random input sets per workload (seeds 1..pool, drawn on
  the GPU), rotated call by call and shared by all systems, so that data-dependent control flow
  sees the same inputs everywhere; one more fresh set (seed 1000) for the correctness check.
- **end-to-end time**: synchronize, record a CUDA event, call, record an event, wait; the median
  over many calls (``--target-s`` of calls, at least ``--min-reps``) after ``--warmup`` calls.
  This is the latency of one call from an idle GPU: launch overhead, host round trips and
  kernels.
- **kernel-only time**: the torch profiler (CUPTI) over a few calls; the union of the device
  intervals of kernels, copies and memsets, per call.  It sees the runtime's driver-API
  launches too.  Beside it, ``graph_ms``: eager captured as one CUDA graph and replayed (where
  the call does not synchronize with the host), and for Quartet the runtime's own ``bench()``
  of the host program, in graph mode (``load(path, graph=True)``) where the program allows it.
- **check**: outputs on the check inputs against the same module in float64 on the GPU (the
  fp16/fp32 weights upcast), printed as ``||out - ref|| / ||ref||``; integer outputs (decoded
  tokens) as a count of mismatches.  Quartet's output buffers are filled with 0xFF (NaN) before
  its check call when the runtime exposes their addresses.
- **torch.compile compile time**: the wall time of the first call, capped at
  ``--compile-cap-s`` (SIGALRM); a compile that runs over is recorded as a timeout.  The whole
  run keeps to ``--budget-s``: compiles that would not fit are recorded as skipped.
- **ceilings**, once per run: a 1 GiB device-to-device copy (bytes read + written per second),
  an 8192^3 fp16 matrix product and an 8192^3 fp32 one (FLOP/s).  Each workload's roofline
  limit is ``max(flops / matmul rate of its dtype, bytes / copy bandwidth)``.

The JSON (device, date, versions, every number) goes to ``--out`` (``$OUT`` on the device
tool) after every measurement, so a run cut short keeps what it measured; a short table is
printed last.  ``--device cpu --tiny`` runs the same code on the CPU at tiny sizes (tests).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as _dt
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable

if __package__ in (None, ""):  # run as a script: make ``bench`` importable as a package
    sys.path.append(str(Path(__file__).resolve().parents[1]))  # after device_env.sh's site
    __package__ = "bench"

import torch  # noqa: E402

from . import artifact_weights, suite  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SYSTEMS = ("eager", "compile", "compile_ro", "quartet")
LABELS = {"eager": "PyTorch eager", "compile": "torch.compile",
          "compile_ro": "torch.compile reduce-overhead", "quartet": "Quartet"}
FORMAT = "quartet-bench-run"
VERSION = 1
CHECK_SEED = 1000


class CompileTimeout(BaseException):
    """Raised by SIGALRM inside a compile (a BaseException, so torch's handlers let it through)."""


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    msg = text[0] if text else ""
    return (f"{type(e).__name__}: {msg}" if msg else type(e).__name__)[:300]


@contextlib.contextmanager
def _alarm(seconds: float):
    if seconds <= 0 or not hasattr(signal, "setitimer"):
        yield
        return

    def handler(signum, frame):
        raise CompileTimeout()

    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# --------------------------------------------------------------------------------------------
# Clocks
# --------------------------------------------------------------------------------------------


class Clock:
    """CUDA events on the GPU, perf_counter on the CPU; every time in milliseconds."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def call(self, fn: Callable, args: tuple) -> tuple[float, Any]:
        """Time one call from an idle device to the end of its device work."""
        if self.cuda:
            torch.cuda.synchronize()
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            out = fn(*args)
            end.record()
            end.synchronize()
            return start.elapsed_time(end), out
        t0 = time.perf_counter()
        out = fn(*args)
        return (time.perf_counter() - t0) * 1e3, out

    def repeat(self, fn: Callable, reps: int) -> list[float]:
        """Time ``fn()`` ``reps`` times back to back (for replays and ceilings)."""
        out = []
        for _ in range(reps):
            ms, _ = self.call(fn, ())
            out.append(ms)
        return out


def _stats(samples: list[float]) -> dict:
    s = sorted(samples)
    return {"median_ms": statistics.median(s), "min_ms": s[0],
            "p90_ms": s[min(len(s) - 1, int(round(0.9 * (len(s) - 1))))], "n": len(s)}


def time_e2e(clock: Clock, fn: Callable, pool: list[tuple], *, warmup: int, target_s: float,
             min_reps: int, max_reps: int, before: Callable | None = None) -> dict:
    """Median end-to-end time of ``fn`` over the input pool, after warm-up."""
    est = None
    for i in range(warmup):
        if before:
            before()
        est, out = clock.call(fn, pool[i % len(pool)])
        del out
    reps = max_reps if not est else int(min(max_reps, max(min_reps, target_s * 1e3 / est)))
    samples = []
    for i in range(reps):
        if before:
            before()
        ms, out = clock.call(fn, pool[i % len(pool)])
        del out
        samples.append(ms)
    return _stats(samples)


def kernel_time(clock: Clock, fn: Callable, pool: list[tuple], *, calls: int,
                before: Callable | None = None) -> dict:
    """Device-busy time per call from the torch profiler: the union of the device intervals of
    kernels, copies and memsets (user annotations excluded), divided by ``calls``."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    clock.sync()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for i in range(calls):
            if before:
                before()
            out = fn(*pool[i % len(pool)])
            del out
        clock.sync()
    spans = []
    for e in prof.events():
        if e.device_type != DeviceType.CUDA or getattr(e, "is_user_annotation", False):
            continue
        spans.append((e.time_range.start, e.time_range.end))
    if not spans:
        return {"kernel_ms": None, "kernels_per_call": 0,
                "kernel_note": "the profiler saw no device activity"}
    spans.sort()
    busy, cur_s, cur_e = 0.0, spans[0][0], spans[0][1]
    for s, e in spans[1:]:
        if s > cur_e:
            busy += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    busy += cur_e - cur_s
    return {"kernel_ms": busy / 1e3 / calls, "kernels_per_call": len(spans) / calls}


def graph_replay_ms(clock: Clock, fn: Callable, args: tuple, *, reps: int) -> float:
    """Capture one call of ``fn(*args)`` as a CUDA graph; median replay time."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            fn(*args)
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = fn(*args)
    g.replay()
    torch.cuda.synchronize()
    ms = statistics.median(clock.repeat(g.replay, reps))
    del g, out
    return ms


# --------------------------------------------------------------------------------------------
# Correctness
# --------------------------------------------------------------------------------------------


def compare(outputs: Any, reference: list[torch.Tensor]) -> dict:
    """Relative error of float outputs (all together), mismatches of integer ones."""
    outs = suite.flatten_outputs(outputs)
    if len(outs) != len(reference):
        return {"error": f"{len(outs)} outputs, the reference has {len(reference)}"}
    num = den = 0.0
    mismatch, finite, has_float = 0, True, False
    for o, r in zip(outs, reference):
        o = torch.as_tensor(o)
        if tuple(o.shape) != tuple(r.shape):
            return {"error": f"output shape {list(o.shape)}, expected {list(r.shape)}"}
        o = o.to(r.device)
        if r.is_floating_point():
            has_float = True
            od = o.to(torch.float64)
            finite = finite and bool(torch.isfinite(od).all())
            num += float(torch.sum((od - r) ** 2))
            den += float(torch.sum(r ** 2))
        else:
            mismatch += int((o.to(r.dtype) != r).sum())
    out: dict = {"finite": finite}
    if has_float:
        out["rel_err"] = math.sqrt(num) / math.sqrt(den) if den > 0 else math.sqrt(num)
        if not finite:
            out["rel_err"] = float("nan")
    if any(not r.is_floating_point() for r in reference):
        out["int_mismatch"] = mismatch
    return out


def _to_f64(args: tuple) -> tuple:
    return tuple(a.to(torch.float64) if a.is_floating_point() else a for a in args)


# --------------------------------------------------------------------------------------------
# Environment and ceilings
# --------------------------------------------------------------------------------------------


def environment(device: torch.device) -> dict:
    env: dict = {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                 "host": platform.node()}
    v = {"python": platform.python_version(), "torch": torch.__version__,
         "cuda_runtime": torch.version.cuda}
    for mod, name in (("numpy", "numpy"), ("triton", "triton"), ("cuda.bindings", "cuda_bindings")):
        try:
            m = __import__(mod, fromlist=["__version__"])
            v[name] = getattr(m, "__version__", "present")
        except Exception:
            v[name] = None
    try:
        v["cudnn"] = torch.backends.cudnn.version()
    except Exception:
        v["cudnn"] = None
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        env["device"] = {"name": p.name, "capability": f"sm_{p.major}{p.minor}",
                         "sms": p.multi_processor_count, "memory_gib": p.total_memory / 2**30,
                         "l2_mib": getattr(p, "L2_cache_size", 0) / 2**20}
        try:
            q = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm",
                                "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
            drv, clk = [x.strip() for x in q.stdout.strip().splitlines()[0].split(",")][:2]
            v["driver"], env["device"]["max_sm_clock"] = drv, clk
        except Exception:
            v["driver"] = None
    else:
        env["device"] = {"name": f"CPU ({platform.processor() or platform.machine()})",
                         "capability": "cpu", "threads": torch.get_num_threads()}
    env["versions"] = v
    env["numerics"] = {
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "fp16_reduced_precision_reduction":
            torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction,
    }
    return env


def ceilings(clock: Clock, device: torch.device, small: bool) -> dict:
    """Copy bandwidth and fp16/fp32 matrix-product rates, measured here."""
    out: dict = {}
    n = (1 << 24) if small else (1 << 28)  # float32 elements: 64 MiB / 1 GiB
    src = torch.empty(n, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    ms = statistics.median(clock.repeat(lambda: dst.copy_(src), 5 if small else 20))
    out["copy_bytes"] = 2 * src.numel() * src.element_size()
    out["copy_ms"] = ms
    out["copy_GBps"] = out["copy_bytes"] / (ms * 1e-3) / 1e9
    del src, dst
    for dt, key in ((torch.float16, "mm_f16"), (torch.float32, "mm_f32")):
        s = 512 if small else 8192
        if small and dt == torch.float16 and device.type == "cpu":
            s = 256
        a = torch.randn(s, s, device=device, dtype=dt)
        b = torch.randn(s, s, device=device, dtype=dt)
        for _ in range(2):
            torch.matmul(a, b)
        reps = 3 if small else (20 if dt == torch.float16 else 6)
        ms = statistics.median(clock.repeat(lambda: torch.matmul(a, b), reps))
        out[f"{key}_size"] = s
        out[f"{key}_ms"] = ms
        out[f"{key}_TFLOPs"] = 2.0 * s ** 3 / (ms * 1e-3) / 1e12
        del a, b
    return out


def roofline(cost: suite.Cost, dtype: torch.dtype, ceil: dict | None) -> dict:
    if not ceil:
        return {"limit_ms": None, "bound": None}
    peak = ceil["mm_f16_TFLOPs"] if dtype in (torch.float16, torch.bfloat16) else ceil["mm_f32_TFLOPs"]
    t_compute = cost.flops / (peak * 1e12) * 1e3
    t_memory = cost.bytes / (ceil["copy_GBps"] * 1e9) * 1e3
    return {"limit_ms": max(t_compute, t_memory),
            "bound": "compute" if t_compute >= t_memory else "memory",
            "compute_ms": t_compute, "memory_ms": t_memory,
            "peak_TFLOPs": peak, "bandwidth_GBps": ceil["copy_GBps"]}


# --------------------------------------------------------------------------------------------
# Quartet
# --------------------------------------------------------------------------------------------


def import_runtime():
    """``quartet.runtime`` from this checkout, installed or not (the device has no install)."""
    try:
        import quartet.runtime as rt
        return rt
    except ImportError:
        pass
    import quartet

    if str(ROOT) not in list(quartet.__path__):
        quartet.__path__.append(str(ROOT))  # quartet.<folder> -> <root>/<folder>
    import quartet.runtime as rt
    return rt


def _poison_outputs(prog) -> bool:
    """Fill the program's output buffers with 0xFF bytes (NaN for floats) when reachable."""
    try:
        from cuda.bindings import driver

        for spec in prog.manifest.outputs:
            (err,) = driver.cuMemsetD8(prog.addresses[spec.buffer], 0xFF, spec.nbytes)
            if err != driver.CUresult.CUDA_SUCCESS:
                return False
        (err,) = driver.cuCtxSynchronize()
        return err == driver.CUresult.CUDA_SUCCESS
    except Exception:
        return False


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


class Run:
    def __init__(self, args):
        self.args = args
        self.device = torch.device(args.device)
        self.clock = Clock(self.device)
        self.t0 = time.monotonic()
        self.deadline = self.t0 + args.budget_s
        self.workloads = suite.select(args.only)
        self.systems = [s for s in args.systems.split(",") if s]
        for s in self.systems:
            if s not in SYSTEMS:
                raise SystemExit(f"unknown system {s!r}; known: {', '.join(SYSTEMS)}")
        self.state: dict[str, dict] = {}
        self.build = self._read_build()
        self.record: dict = {"format": FORMAT, "version": VERSION, **environment(self.device),
                             "settings": {k: (str(v) if isinstance(v, Path) else v)
                                          for k, v in vars(args).items()},
                             "systems": {s: LABELS[s] for s in self.systems},
                             "ceilings": None, "build": None, "workloads": []}
        if self.build is not None:
            self.record["build"] = {k: self.build.get(k) for k in
                                    ("date", "host", "target", "seed", "git_commit", "versions")}
        out_dir = Path(args.out)
        out_dir.mkdir(parents=True, exist_ok=True)
        stamp = self.record["date"].replace(":", "").replace("+0000", "Z")
        slug = "".join(c if c.isalnum() else "-" for c in self.record["device"]["name"]).strip("-")
        self.path = out_dir / f"run-{stamp}-{slug}.json"

    # -- bookkeeping -----------------------------------------------------------------------

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def save(self) -> None:
        self.record["wall_s"] = time.monotonic() - self.t0
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.record, indent=1, default=_json_default))
        os.replace(tmp, self.path)

    def log(self, msg: str) -> None:
        print(f"[{time.monotonic() - self.t0:6.1f}s] {msg}", flush=True)

    def _read_build(self) -> dict | None:
        p = Path(self.args.artifacts) / "build.json"
        if not p.is_file():
            return None
        try:
            return json.loads(p.read_text())
        except (OSError, ValueError):
            return None

    def build_row(self, name: str) -> dict | None:
        if self.build is None:
            return None
        """The build row Quartet runs: the workload's own pipeline when it compiled, else another
        compiled one (e.g. ``roller`` for a model whose family pipeline does not exist yet)."""
        family = suite.get(name).family
        rows = [r for r in self.build.get("rows", []) if r.get("workload") == name]
        rows.sort(key=lambda r: r.get("pipeline") != family)
        compiled = [r for r in rows if r.get("artifact")]
        return (compiled or rows or [None])[0]

    # -- phases ----------------------------------------------------------------------------

    def run(self) -> dict:
        self.log(f"device: {self.record['device']['name']}; torch {torch.__version__}")
        try:
            self.record["ceilings"] = ceilings(self.clock, self.device, small=self.args.tiny)
            c = self.record["ceilings"]
            self.log(f"ceilings: copy {c['copy_GBps']:.0f} GB/s, fp16 mm {c['mm_f16_TFLOPs']:.1f} "
                     f"TFLOP/s, fp32 mm {c['mm_f32_TFLOPs']:.1f} TFLOP/s")
        except Exception as e:
            self.record["ceilings"] = None
            self.record["ceilings_error"] = _one_line(e)
            self.log(f"ceilings failed: {_one_line(e)}")
        self.save()
        with torch.no_grad():
            for w in self.workloads:
                self.prepare(w)
                if "eager" in self.systems:
                    self.measure_eager(w)
                if "quartet" in self.systems:
                    self.measure_quartet(w)
                self.save()
            order = sorted(self.workloads, key=_compile_rank)
            for w in order:
                for system, mode in (("compile", "default"), ("compile_ro", "reduce-overhead")):
                    if system in self.systems:
                        self.measure_compiled(w, system, mode)
                        self.save()
                self.release(w)
        self.save()
        return self.record

    def prepare(self, w: suite.Workload) -> None:
        a, dev, tiny = self.args, self.device, self.args.tiny
        t = time.monotonic()
        module = w.module(a.seed, device=dev, tiny=tiny)
        pool = [w.inputs(a.seed * 1_000_003 + 1 + i, device=dev, tiny=tiny) for i in range(a.pool)]
        check_inputs = w.inputs(a.seed * 1_000_003 + CHECK_SEED, device=dev, tiny=tiny)
        ref_module = copy.deepcopy(module).to(torch.float64)
        ref = [r.clone() for r in suite.flatten_outputs(ref_module(*_to_f64(check_inputs)))]
        del ref_module
        cost = w.cost(tiny=tiny)
        rec = {"name": w.name, "family": w.family, "title": w.title,
               "dtype": str(w.dtype).replace("torch.", ""), "sizes": w.sizes_for(tiny),
               "forms": {"peers": w.forms[0], "quartet": w.quartet_form}, "notes": w.notes,
               "flops_static": cost.flops, "bytes_static": cost.bytes, "trip": None}
        if w.trip is not None:
            trips = [w.trip(module, inp, tuple(suite.flatten_outputs(module(*inp)))) for inp in pool]
            rec["trip"] = {"values": trips, "mean": statistics.fmean(trips),
                           "max": w.trip_max(w.sizes_for(tiny)),
                           "check": w.trip(module, check_inputs, tuple(suite.flatten_outputs(
                               module(*check_inputs))))}
            cost = w.cost(tiny=tiny, trip=rec["trip"]["mean"])
        rec.update({"flops": cost.flops, "bytes": cost.bytes, "mm_flops": cost.mm_flops,
                    "intensity": cost.intensity,
                    **roofline(cost, w.dtype, self.record["ceilings"]), "systems": {}})
        self.record["workloads"].append(rec)
        self.state[w.name] = {"module": module, "pool": pool, "check": check_inputs, "ref": ref,
                              "rec": rec}
        self.clock.sync()
        self.log(f"{w.name}: prepared in {time.monotonic() - t:.1f} s "
                 f"({cost.flops / 1e9:.3g} GFLOP, {cost.bytes / 1e6:.3g} MB, limit "
                 f"{_fmt_ms(rec['limit_ms'])})")

    def release(self, w: suite.Workload) -> None:
        self.state.pop(w.name, None)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _measure(self, w, system: str, fn: Callable, *, before: Callable | None = None,
                 extra: dict | None = None) -> dict:
        """Check, end-to-end time and kernel time of ``fn`` on workload ``w``."""
        st, a = self.state[w.name], self.args
        res: dict = dict(extra or {})
        if before:
            before()
        out = fn(*st["check"])
        res["check"] = compare(out, st["ref"])
        del out
        res["e2e"] = time_e2e(self.clock, fn, st["pool"], warmup=a.warmup, target_s=a.target_s,
                              min_reps=a.min_reps, max_reps=a.max_reps, before=before)
        if self.device.type == "cuda" and not a.no_profile:
            calls = 3 if res["e2e"]["median_ms"] < 20 else 1
            try:
                res.update(kernel_time(self.clock, fn, st["pool"], calls=calls, before=before))
            except Exception as e:
                res["kernel_ms"], res["kernel_note"] = None, f"profiler failed: {_one_line(e)}"
        res["status"] = "ok"
        chk = res["check"]
        err = chk.get("rel_err")
        self.log(f"{w.name}: {system:10s} e2e {_fmt_ms(res['e2e']['median_ms'])}  kernels "
                 f"{_fmt_ms(res.get('kernel_ms'))}  rel err "
                 f"{'-' if err is None else f'{err:.2e}'}"
                 + (f"  token mismatches {chk['int_mismatch']}" if "int_mismatch" in chk else "")
                 + (f"  CHECK ERROR {chk['error']}" if "error" in chk else ""))
        return res

    def _sdpa_graph(self, w: suite.Workload, st: dict) -> dict:
        """For a model with attention: the same model with PyTorch's fused SDPA in place of the
        attention ops (``suite.sdpa_twin``), captured as one CUDA graph and replayed - the hand-
        written reference of issue 10 - with its error on the check inputs."""
        module = st["module"]
        try:
            with suite.sdpa_twin(module) as has, torch.no_grad():
                if not has:
                    return {}
                ms = graph_replay_ms(self.clock, module, st["pool"][0], reps=20)
                err = compare(module(*st["check"]), st["ref"]).get("rel_err")
            self.log(f"{w.name}: sdpa graph {_fmt_ms(ms)}  rel err "
                     f"{'-' if err is None else f'{err:.2e}'}")
            return {"sdpa_graph_ms": ms, "sdpa_rel_err": err}
        except Exception as e:
            return {"sdpa_graph_ms": None, "sdpa_note": f"failed: {_one_line(e)}"}

    def measure_eager(self, w: suite.Workload) -> None:
        st = self.state[w.name]
        module = st["module"]
        try:
            res = self._measure(w, "eager", module)
            if self.device.type == "cuda" and not w.host_sync:
                try:
                    res["graph_ms"] = graph_replay_ms(self.clock, module, st["pool"][0], reps=20)
                    res["graph_note"] = "eager captured as one CUDA graph, replayed"
                except Exception as e:
                    res["graph_ms"], res["graph_note"] = None, f"capture failed: {_one_line(e)}"
                res.update(self._sdpa_graph(w, st))
        except Exception as e:
            res = {"status": f"error: {_one_line(e)}", "traceback": traceback.format_exc(limit=4)}
            self.log(f"{w.name}: eager failed: {_one_line(e)}")
        st["rec"]["systems"]["eager"] = res

    def measure_quartet(self, w: suite.Workload) -> None:
        st = self.state[w.name]
        row = self.build_row(w.name)
        res: dict = {}
        if row is None:
            res["status"] = ("not compiled: no build manifest (run python -m bench.build)"
                             if self.build is None else "not compiled: no build row")
        elif not row.get("artifact"):
            res["status"] = row.get("status") or "not compiled"
            res["compile_s"] = row.get("compile_s")
        if "status" in res:
            res["pipeline"] = row.get("pipeline") if row else None
            st["rec"]["systems"]["quartet"] = res
            self.log(f"{w.name}: quartet    {res['status']}")
            return
        res.update({"pipeline": row["pipeline"], "compile_s": row.get("compile_s"),
                    "stage_s": row.get("stage_s"), "kernels": row.get("kernels"),
                    "form": row.get("form"),
                    "launches_per_call": row.get("launches_per_call"),
                    "persistent": row.get("persistent")})
        if row.get("global_bytes_model"):       # welder rows: the cost model's bytes per call
            res["global_bytes_model"] = row["global_bytes_model"]
        if bool(row.get("tiny")) != bool(self.args.tiny):
            res["status"] = ("not run: artifact built at "
                             + ("tiny sizes" if row.get("tiny") else "the real sizes")
                             + ("; this run is --tiny" if self.args.tiny else ""))
            st["rec"]["systems"]["quartet"] = res
            self.log(f"{w.name}: quartet    {res['status']}")
            return
        try:
            if row.get("seed", 0) != self.args.seed:
                raise RuntimeError(f"artifact built with seed {row.get('seed')}, run uses "
                                   f"{self.args.seed}: different weights")
            rt = import_runtime()
            path = Path(self.args.artifacts) / row["artifact"]
            if artifact_weights.needs_restore(path):
                cpu_module = w.module(row.get("seed", 0), form=row.get("form"), tiny=self.args.tiny)
                scratch = Path(tempfile.mkdtemp(prefix="bench-artifact-"))
                path = artifact_weights.restore(path, cpu_module, scratch / w.name)
                res["weights"] = "rebuilt from the seed on this machine"
                del cpu_module
            prog = rt.load(str(path))
            res["poisoned"] = _poison_outputs(prog) if self.device.type == "cuda" else False
            if res["poisoned"]:
                # The poisoned output buffers are the program's own: a call with host (numpy)
                # inputs writes them and copies them out (a call with CUDA tensors writes
                # straight into fresh tensors instead), so this call shows any unwritten byte.
                host = prog(*[x.detach().cpu().numpy() for x in st["check"]])
                host = host if isinstance(host, tuple) else (host,)
                host = tuple(torch.from_numpy(h).to(self.device) for h in host)
                res["check_poisoned"] = compare(host[0] if len(host) == 1 else host, st["ref"])
            res.update(self._measure(w, "quartet", prog))
            try:
                r = prog.bench(*st["pool"][0], warmup=3, repeat=20)
                res["program_ms"] = r.median_ms
            except Exception as e:
                res["program_note"] = f"bench failed: {_one_line(e)}"
            if self.device.type == "cuda":
                try:
                    gprog = rt.load(str(path), graph=True)
                    res["graph_ms"] = gprog.bench(*st["pool"][0], warmup=3, repeat=20).median_ms
                    res["graph_note"] = "runtime graph mode, host program alone"
                    gprog.close()
                except Exception as e:
                    res["graph_ms"], res["graph_note"] = None, f"graph mode: {_one_line(e)}"
            prog.close()
        except Exception as e:
            res["status"] = f"error: {_one_line(e)}"
            res["traceback"] = traceback.format_exc(limit=4)
            self.log(f"{w.name}: quartet    failed: {_one_line(e)}")
        st["rec"]["systems"]["quartet"] = res

    def measure_compiled(self, w: suite.Workload, system: str, mode: str) -> None:
        st = self.state[w.name]
        rec = st["rec"]["systems"]
        left = self.remaining()
        if left < self.args.reserve_s:
            rec[system] = {"status": f"skipped: run time budget ({self.args.budget_s:.0f} s) spent",
                           "mode": mode}
            self.log(f"{w.name}: {system:10s} skipped (budget)")
            return
        cap = min(self.args.compile_cap_s, left - self.args.reserve_s / 2)
        torch._dynamo.reset()
        res: dict = {"mode": mode, "compile_cap_s": cap}
        before = None
        if mode == "reduce-overhead":
            before = torch.compiler.cudagraph_mark_step_begin
        try:
            t = time.monotonic()
            compiled = torch.compile(st["module"], mode=mode)
            res["wrap_s"] = time.monotonic() - t  # torch.compile() itself (imports, once)
            t = time.monotonic()
            try:
                with _alarm(cap):
                    if before:
                        before()
                    out = compiled(*st["pool"][0])
                    self.clock.sync()
                    del out
            except CompileTimeout:
                res["status"] = f"timeout: compile did not finish in {cap:.0f} s"
                res["compile_s"] = None
                rec[system] = res
                self.log(f"{w.name}: {system:10s} compile timeout after {cap:.0f} s")
                _after_timeout()
                return
            res["compile_s"] = time.monotonic() - t
            self.log(f"{w.name}: {system:10s} compiled in {res['compile_s']:.1f} s")
            res.update(self._measure(w, system, compiled, before=before,
                                     extra={"compile_s": res["compile_s"]}))
        except Exception as e:
            res["status"] = f"error: {_one_line(e)}"
            res["traceback"] = traceback.format_exc(limit=4)
            self.log(f"{w.name}: {system:10s} failed: {_one_line(e)}")
        finally:
            torch._dynamo.reset()
        rec[system] = res


def _after_timeout() -> None:
    """Clean up after an interrupted compile: drop dynamo state and inductor's compile workers."""
    try:
        torch._dynamo.reset()
    except Exception:
        pass
    try:
        from torch._inductor import async_compile

        shutdown = getattr(async_compile, "shutdown_compile_workers", None)
        if shutdown:
            shutdown()
    except Exception:
        pass


def _compile_rank(w: suite.Workload) -> tuple:
    """Order for the torch.compile phase: quick compiles first, the unrolled LSTM last."""
    if w.family == "roller":
        return (0, w.name)
    if w.name.startswith("bert"):
        return (3, w.name)
    if w.name.startswith("lstm"):
        return (4, w.name)
    return ({"welder": 1, "rammer": 1, "grinder": 2}[w.family], w.name)


def _json_default(o):
    if isinstance(o, torch.dtype):
        return str(o)
    if isinstance(o, Path):
        return str(o)
    return repr(o)


def _fmt_ms(v) -> str:
    if v is None:
        return "-"
    if v >= 100:
        return f"{v:.0f} ms"
    if v >= 10:
        return f"{v:.1f} ms"
    if v >= 1:
        return f"{v:.2f} ms"
    return f"{v:.3f} ms"


def table(record: dict) -> str:
    """A short text table: end-to-end medians, the roofline limit, the best share of it."""
    systems = [s for s in SYSTEMS if s in record.get("systems", {})]
    short = {"eager": "eager", "compile": "compile", "compile_ro": "compile-RO", "quartet": "quartet"}
    head = f"{'workload':26s}" + "".join(f"{short[s]:>12s}" for s in systems) + f"{'limit':>11s}{'best%':>7s}"
    lines = [head, "-" * len(head)]
    for w in record["workloads"]:
        cells, best = [], None
        for s in systems:
            r = w["systems"].get(s, {})
            if r.get("status") == "ok":
                ms = r["e2e"]["median_ms"]
                best = ms if best is None else min(best, ms)
                cells.append(f"{_fmt_ms(ms):>12s}")
            else:
                st = (r.get("status") or "-").split(":")[0]
                cells.append(f"{st[:11]:>12s}")
        pct = f"{100 * w['limit_ms'] / best:.0f}%" if best and w.get("limit_ms") else "-"
        lines.append(f"{w['name'][:26]:26s}" + "".join(cells) + f"{_fmt_ms(w.get('limit_ms')):>11s}{pct:>7s}")
    c = record.get("ceilings") or {}
    if c:
        lines.append(f"ceilings: copy {c['copy_GBps']:.0f} GB/s (read+write), fp16 mm "
                     f"{c['mm_f16_TFLOPs']:.0f} TFLOP/s, fp32 mm {c['mm_f32_TFLOPs']:.1f} TFLOP/s")
    lines.append(f"{record['device']['name']}, {record['date']}, torch {record['versions']['torch']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python bench/run.py", description=__doc__.split("\n")[0])
    ap.add_argument("--artifacts", type=Path, default=ROOT / ".artifacts" / "bench")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or ROOT / "bench" / "results"))
    ap.add_argument("--only", default="", help="workload or family names, comma-separated")
    ap.add_argument("--systems", default=",".join(SYSTEMS))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="tiny sizes (tests on the CPU)")
    ap.add_argument("--seed", type=int, default=0, help="weights (must match the build's)")
    ap.add_argument("--pool", type=int, default=4, help="input sets rotated while timing")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--target-s", type=float, default=0.4, help="time spent per measurement")
    ap.add_argument("--min-reps", type=int, default=5)
    ap.add_argument("--max-reps", type=int, default=200)
    ap.add_argument("--compile-cap-s", type=float, default=90.0, help="per torch.compile")
    ap.add_argument("--budget-s", type=float, default=420.0, help="whole run")
    ap.add_argument("--reserve-s", type=float, default=20.0,
                    help="no compile starts with less than this left")
    ap.add_argument("--no-profile", action="store_true", help="skip the profiler's kernel time")
    ap.add_argument("--verbose", action="store_true", help="keep torch's compile warnings")
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: no CUDA device (use --device cpu --tiny for a CPU dry run)", file=sys.stderr)
        return 1
    warnings.filterwarnings("ignore", category=UserWarning)
    if not args.verbose:  # graph-break and recompile warnings would bury the table
        import logging

        torch._logging.set_logs(dynamo=logging.ERROR, inductor=logging.ERROR)
    run = Run(args)
    run.run()
    run.save()
    print(f"wrote {run.path}")
    print(table(run.record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
