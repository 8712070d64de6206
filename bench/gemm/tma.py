"""Hopper GEMMs (issue 13) as artifacts: built here, checked and timed against cuBLAS there.

    .venv/bin/python -m quartet.bench.gemm.tma build .artifacts/h13 [--only SUBSTRING]
    source bench/device_env.sh && python3 bench/gemm/tma.py run .artifacts/h13 --out $OUT

``build`` writes one artifact per case (``lowering/lower.py``: the same path as
``quartet.compile``; hand-configured tiles from ``shapes.py``, and the three benchmark GEMMs
through the PyTorch frontend and the ``roller`` pipeline: Roller's own top-1), plus
``cases.json`` (reference, engine, schedule, registers). ``run`` needs torch, cuda-bindings
and ``quartet.runtime`` (no MLIR). Per case, in a worker process watched by the parent (a case
that does not finish in ``--case-timeout`` seconds, e.g. a pipeline that deadlocks, is killed,
recorded as ``hang`` and the next case starts in a fresh worker):

* **check**: inputs drawn on the GPU, the program's own output buffers poisoned (0xFF: NaN), one
  run with the inputs bound in place (tensor maps encoded for their addresses), the output
  compared with PyTorch in float64 (``||out - ref|| / ||ref||``; NaN counts as a failure); then
  fresh inputs at other addresses (tensor maps re-encoded), poisoned again, checked again; then
  a plain call returning a torch tensor, checked again.
* **time**: ``reps`` program runs captured in one CUDA graph and the peer (``torch.matmul`` /
  ``torch.bmm`` on the same views: cuBLAS) likewise, each replayed; median of the replays,
  divided by ``reps``: kernel time without launch overhead. ``ratio`` = peer / ours (above 1:
  faster than cuBLAS).

Prints one line per case and writes ``h13-gemm.json`` under ``--out``.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):       # run as a script on the GPU machine
    import quartet

    _root = str(Path(__file__).resolve().parents[2])
    if _root not in list(quartet.__path__):
        quartet.__path__.append(_root)

TOL = {"float16": 3e-3, "bfloat16": 1.2e-2, "float32": 1e-5}

# name -> gemm_tile keyword arguments (``shapes.py``); engine forces one (None: the planner's)
TILES = {
    # correctness across layouts and edges (small)
    "nn_256x512x128": dict(m=256, n=512, k=128),
    "edges_bias_relu_1000x520x200": dict(m=1000, n=520, k=200, bias=True, relu=True,
                                         bt=(128, 128, 64)),
    "tn_km_nk_304x264x136": dict(m=304, n=264, k=136, a="km", b="nk"),
    "nt_mk_nk_1000x384x256": dict(m=1000, n=384, k=256, b="nk", bt=(128, 128, 64)),
    "tt_km_kn_264x200x96": dict(m=264, n=200, k=96, a="km", bt=(128, 128, 64)),
    "bmm_8x200x264x136": dict(m=200, n=264, k=136, batch=8, a="bmk", b="bkn",
                              bt=(128, 128, 64)),
    "bmm_nk_4x512x256x320": dict(m=512, n=256, k=320, batch=4, a="bmk", b="bnk"),
    "bf16_512x512x256": dict(m=512, n=512, k=256, dt="bf16"),
    "f32out_init_512x520x256": dict(m=512, n=520, k=256, out="f32", init=True),
    "bm64_nk_200x136x1000": dict(m=200, n=136, k=1000, b="nk", bt=(64, 136, 64), threads=128),
    "odd_cpasync_300x264x136": dict(m=300, n=264, k=136, a="km", b="nk"),
    # the benchmark GEMMs, hand-configured
    "mm4096_tma128x256": dict(m=4096, n=4096, k=4096),
    "mm4096_tma128x128": dict(m=4096, n=4096, k=4096, bt=(128, 128, 64)),
    "mm4096_tma256x128": dict(m=4096, n=4096, k=4096, bt=(256, 128, 64)),
    "mm4096_cpasync128x256": dict(m=4096, n=4096, k=4096, engine="wgmma"),
    "mm768_tma128x256": dict(m=8192, n=3072, k=768),
    "mm768_tma128x128": dict(m=8192, n=3072, k=768, bt=(128, 128, 64)),
    "mm768_tma256x128": dict(m=8192, n=3072, k=768, bt=(256, 128, 64)),
    "mm768_cpasync128x256": dict(m=8192, n=3072, k=768, engine="wgmma"),
    "mm16_tma64x32": dict(m=16, n=4096, k=4096, bt=(64, 32, 64), threads=128),
    "mm16_tma64x64": dict(m=16, n=4096, k=4096, bt=(64, 64, 64), threads=128),
    "mm16_tma64x32_s10": dict(m=16, n=4096, k=4096, bt=(64, 32, 64), threads=128, stages=10),
}

# name -> (M, N, K): fp16 x @ w through the frontend and the roller pipeline (Roller's top-1)
ROLLER = {"roller_mm4096": (4096, 4096, 4096), "roller_mm768": (8192, 3072, 768),
          "roller_mm16": (16, 4096, 4096)}


# ---------------------------------------------------------------------------------------------
# Build (here, with MLIR)


def _tile_module(kw: dict):
    from mlir import ir

    from quartet.bench.gemm.shapes import gemm_tile

    kw = dict(kw)
    engine = kw.pop("engine", None)
    text, ref = gemm_tile(**kw)
    return ir.Module.parse(text), ref, engine


def _roller_module(m, n, k):
    import torch

    from quartet.frontend.compile import import_linalg, run_passes

    class MatMul(torch.nn.Module):
        def forward(self, a, b):
            return a @ b

    f16 = torch.float16
    text = import_linalg(MatMul(), (torch.randn(m, k, dtype=f16),
                                    torch.randn(k, n, dtype=f16))).mlir_text
    module = run_passes(text, "roller", "sm_90")
    ref = {"kind": "gemm", "m": m, "n": n, "k": k, "batch": 1, "a": "mk", "b": "kn",
           "dtype": "f16", "out": "f16", "bias": False, "relu": False, "init": False,
           "flops": 2 * m * n * k}
    return module, ref


def _describe(module) -> dict:
    """Engine, schedule and launch of the (one) GEMM tile of ``module``, before lowering."""
    from quartet.dialects import collect
    from quartet.lowering.kernels import gemm

    tiles = [op.opview for op in collect(module, lambda o: o.name == "quartet.tile")]
    out = {}
    for t in tiles:
        try:
            p = gemm.plan(t, "sm_90")
        except Exception as e:         # noqa: BLE001 - recorded, the build goes on
            out = {"engine": None, "reason": str(e).splitlines()[0]}
            continue
        out = {"engine": p.engine, "schedule": str(p.schedule), "grid": list(p.grid),
               "block": list(p.block), "shared_bytes": p.shared_bytes}
    return out


def build(folder: Path, only: str | None = None) -> list[dict]:
    from mlir import ir

    from quartet.dialects import context
    from quartet.lowering import binary
    from quartet.lowering.lower import lower

    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    names = [n for n in list(TILES) + list(ROLLER) if only is None or only in n]
    for name in names:
        t0 = time.time()
        with context(), ir.Location.unknown():
            if name in TILES:
                module, ref, engine = _tile_module(TILES[name])
            else:
                module, ref = _roller_module(*ROLLER[name])
                engine = None
            desc = _describe(module)
            old = os.environ.get("QUARTET_GEMM_TMA")
            if engine == "wgmma":
                os.environ["QUARTET_GEMM_TMA"] = "0"
                desc = _describe(module)
            try:
                writer = lower(module, "sm_90")
            finally:
                if engine == "wgmma":
                    if old is None:
                        os.environ.pop("QUARTET_GEMM_TMA", None)
                    else:
                        os.environ["QUARTET_GEMM_TMA"] = old
        writer.save(folder / name)
        m = writer.manifest()
        regs = [binary.cubin_resources(writer.files()[k.binary], k.entry).get("registers")
                for k in m.kernels]
        row = {"name": name, "ref": ref, **desc, "registers": regs,
               "kernels": len(m.kernels), "build_s": round(time.time() - t0, 2)}
        rows.append(row)
        print(f"{name:32} {desc.get('engine')} grid {desc.get('grid')} block "
              f"{desc.get('block')} smem {desc.get('shared_bytes')} regs {regs} "
              f"({row['build_s']} s)", flush=True)
    (folder / "cases.json").write_text(json.dumps(rows, indent=1))
    return rows


# ---------------------------------------------------------------------------------------------
# Run (the GPU machine: torch + quartet.runtime, no MLIR)

TORCH_DTYPES = {"f16": "float16", "bf16": "bfloat16", "f32": "float32"}


def _views(ref, xs):
    """(A as [b,] m x k, B as [b,] k x n) views of the inputs, in the reference's layout."""
    a, b = xs[0], xs[1]
    if ref["a"].endswith("km"):
        a = a.transpose(-1, -2)
    if ref["b"].endswith("nk"):
        b = b.transpose(-1, -2)
    return a, b


def _reference(ref, xs):
    import torch

    a, b = _views(ref, [x.double() for x in xs])
    out = torch.matmul(a, b)
    i = 2
    if ref["init"]:
        out = out + xs[i].double()
        i += 1
    if ref["bias"]:
        out = out + xs[i].double()
        i += 1
    if ref["relu"]:
        out = torch.relu(out)
    return out


def _peer(ref, xs):
    import torch

    a, b = _views(ref, xs)
    return lambda: torch.matmul(a, b)


def _inputs(prog, gen):
    import torch

    xs = []
    for spec in prog.manifest.inputs:
        x = torch.randn(spec.shape, generator=gen, device="cuda", dtype=torch.float32)
        xs.append(x.to(getattr(torch, spec.dtype)))
    return xs


def _poison_and_run(prog, xs, driver):
    """Run once into the program's own (poisoned) output buffer; return that output."""
    import torch

    spec = prog.manifest.outputs[0]
    address = prog.addresses[spec.buffer]
    (err,) = driver.cuMemsetD8(address, 0xFF, spec.nbytes)
    assert err == driver.CUresult.CUDA_SUCCESS, err
    torch.cuda.synchronize()
    prog.bench(*xs, warmup=0, repeat=1)     # inputs in place, outputs to the own buffers
    out = torch.empty(spec.shape, dtype=getattr(torch, spec.dtype), device="cuda")
    (err,) = driver.cuMemcpyDtoD(out.data_ptr(), address, spec.nbytes)
    assert err == driver.CUresult.CUDA_SUCCESS, err
    torch.cuda.synchronize()
    return out


def _err(out, ref) -> float:
    import torch

    o = out.double()
    if torch.isnan(o).any():
        return float("inf")
    return float((o - ref).norm() / ref.norm())


def _graph_ms(issue, reps: int, capture, replay, trials: int = 7) -> float:
    import torch

    graph = capture(lambda: [issue() for _ in range(reps)])
    replay(graph)
    torch.cuda.synchronize()
    times = []
    for _ in range(trials):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        replay(graph)
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e) / reps)
    return sorted(times)[len(times) // 2]


def run_case(folder: Path, row: dict) -> dict:
    import torch
    from cuda.bindings import driver

    from quartet.bench.run import import_runtime

    rt = import_runtime()
    ref = row["ref"]
    prog = rt.load(folder / row["name"])
    gen = torch.Generator(device="cuda").manual_seed(0)
    out_dtype = prog.manifest.outputs[0].dtype
    errs = []
    for trial in range(2):
        xs = _inputs(prog, gen)
        errs.append(_err(_poison_and_run(prog, xs, driver), _reference(ref, xs)))
    xs = _inputs(prog, gen)
    errs.append(_err(prog(*xs), _reference(ref, xs)))
    worst = max(errs)
    result = {"name": row["name"], "engine": row.get("engine"), "rel_err": worst,
              "ok": worst < TOL[out_dtype]}
    # timing: graphs of `reps` runs (ours) and of `reps` peer calls (cuBLAS)
    est = ref["flops"] / 5e14 * 1e3              # ms at 500 TF/s
    reps = max(3, min(200, int(2.0 / max(est, 1e-4))))
    backend = prog.backend
    prog.bench(*xs, warmup=1, repeat=1)          # binds xs in place for the capture
    interp = prog._interpreter
    ours = _graph_ms(interp.run, reps, backend.capture,
                     lambda g: (backend.set_stream(torch.cuda.current_stream().cuda_stream),
                                backend.replay(g)))
    peer_fn = _peer(ref, xs)

    def torch_capture(issue):
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            issue()
        return g

    peer = _graph_ms(peer_fn, reps, torch_capture, lambda g: g.replay())
    result.update(ms=ours, peer_ms=peer, ratio=peer / ours,
                  tflops=ref["flops"] / ours / 1e9, reps=reps)
    prog.close() if hasattr(prog, "close") else None
    return result


def worker(folder: Path, names: list[str]) -> None:
    rows = {r["name"]: r for r in json.loads((folder / "cases.json").read_text())}
    for name in names:
        print("START " + name, flush=True)
        try:
            res = run_case(folder, rows[name])
        except Exception as e:          # noqa: BLE001 - one line per failed case
            res = {"name": name, "ok": False, "error": f"{type(e).__name__}: {e}"[:400]}
            print("RESULT " + json.dumps(res), flush=True)
            sys.exit(3)                 # the CUDA context may be broken: a fresh worker goes on
        print("RESULT " + json.dumps(res), flush=True)


def run(folder: Path, out: Path | None, only: str | None, case_timeout: float) -> int:
    rows = json.loads((folder / "cases.json").read_text())
    pending = [r["name"] for r in rows if only is None or only in r["name"]]
    results = []
    while pending:
        proc = subprocess.Popen([sys.executable, __file__, "worker", str(folder), *pending],
                                stdout=subprocess.PIPE, text=True)
        current, deadline = None, time.time() + case_timeout + 30      # startup
        while True:
            ready, _, _ = select.select([proc.stdout], [], [], 1.0)
            if ready:
                line = proc.stdout.readline()
                if not line:
                    break
                if line.startswith("START "):
                    current, deadline = line.split()[1], time.time() + case_timeout
                elif line.startswith("RESULT "):
                    res = json.loads(line[7:])
                    results.append(res)
                    pending.remove(res["name"])
                    _print(res)
                    current = None
                    _save(out, results)
            elif time.time() > deadline:
                proc.kill()
                name = current or pending[0]
                res = {"name": name, "ok": False, "error": f"hang: no result in {case_timeout} s"}
                results.append(res)
                pending.remove(name)
                _print(res)
                _save(out, results)
                break
        proc.wait()
        if proc.returncode and current is not None and current in pending:
            res = {"name": current, "ok": False, "error": f"worker died ({proc.returncode})"}
            results.append(res)
            pending.remove(current)
            _print(res)
    _save(out, results)
    bad = [r["name"] for r in results if not r.get("ok")]
    print(f"{len(results) - len(bad)} of {len(results)} cases correct; wrong or failed: {bad}")
    return 1 if bad else 0


def _print(r: dict) -> None:
    if "error" in r:
        print(f"{r['name']:32} FAILED {r['error']}", flush=True)
        return
    print(f"{r['name']:32} {str(r.get('engine')):10} rel_err {r['rel_err']:.1e} "
          f"{'ok ' if r['ok'] else 'WRONG'} {r['ms'] * 1e3:9.1f} us  cuBLAS "
          f"{r['peer_ms'] * 1e3:9.1f} us  ratio {r['ratio']:.2f}  {r['tflops']:.0f} TF/s",
          flush=True)


def _save(out: Path | None, results: list) -> None:
    if out is None:
        return
    import torch

    out.mkdir(parents=True, exist_ok=True)
    (out / "h13-gemm.json").write_text(json.dumps(
        {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
         "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
         "torch": torch.__version__, "results": results}, indent=1))


def main(argv=None) -> int:
    import argparse

    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "worker":
        worker(Path(argv[1]), argv[2:])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=("build", "run"))
    ap.add_argument("folder", type=Path)
    ap.add_argument("--out", type=Path, default=os.environ.get("OUT") and Path(os.environ["OUT"]))
    ap.add_argument("--only")
    ap.add_argument("--case-timeout", type=float, default=40.0)
    a = ap.parse_args(argv)
    if a.mode == "build":
        build(a.folder, a.only)
        return 0
    return run(a.folder, a.out, a.only, a.case_timeout)


if __name__ == "__main__":
    sys.exit(main())
