"""Memory-bound kernels at the copy limit (issue 13, item 3): built here, checked and timed there.

    .venv/bin/python bench/rows/bandwidth.py build .artifacts/h13b              # here (MLIR)
    source bench/device_env.sh && python3 bench/rows/bandwidth.py run .artifacts/h13b --out $OUT

``build`` compiles every case twice, through the PyTorch frontend, the ``roller`` pipeline and
``lowering/lower.py`` (what ``quartet.compile`` does): ``new`` with this checkout and ``old``
with the sources of ``--old`` (a git revision, default ``ecfff18``, the main branch before this
work), exported with ``git archive`` and put first on ``PYTHONPATH`` in a child process. Each
variant goes to ``<folder>/<variant>/<case>`` with a ``cases.json`` (kernels, grid, threads).

``run`` (torch + cuda-bindings + ``quartet.runtime``, no MLIR) takes every case of both
variants, in a worker process watched by the parent (a case that does not finish in
``--case-timeout`` seconds is recorded as a hang; a crashed worker is replaced):

* **check**: inputs drawn on the GPU, the program's output buffer poisoned (0xFF: NaN), one run,
  compared with the PyTorch module in float64 (``||out - ref|| / ||ref||``, NaN fails); twice
  with fresh inputs, then once through a plain call returning a torch tensor.
* **time**: ``reps`` runs captured in one CUDA graph, replayed; median of 7 replays / reps:
  kernel time without launch overhead. The peer is the same module in PyTorch eager, captured
  the same way. ``GB/s`` counts every input and weight read once and the output written once;
  ``of limit`` divides it by 4.21 TB/s (the H200's copy bandwidth, issue 13).

Prints one line per case and variant and a table of old / new / eager; writes
``rows-bandwidth.json`` under ``--out``. The shapes: the benchmark's (``bench/suite.py``), rows
of 64, 1000, 4096 and 65536 elements in fp16 / bf16 / fp32, and 3000 x 777 (chosen by nobody:
odd, not a multiple of any vector width; ``add`` and ``silu`` there run over the flattened
elements in 16-byte vectors, the others with scalar accesses). Weights are functions of the
column index, so the reference module here and there are the same without carrying them.
"""

from __future__ import annotations

import json
import math
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):       # run as a script (GPU machine, or the old-source child)
    import quartet

    _root = str(Path(__file__).resolve().parents[2])
    if not any(Path(p, "runtime").exists() or Path(p, "lowering").exists()
               for p in list(quartet.__path__)) and _root not in list(quartet.__path__):
        quartet.__path__.append(_root)

LIMIT = 4.21e12                     # bytes per second: the H200's copy bandwidth (issue 13)
TOL = {"float16": 3e-3, "bfloat16": 1.2e-2, "float32": 1e-5}
BYTES = {"float16": 2, "bfloat16": 2, "float32": 4}
SHORT = {"float16": "f16", "bfloat16": "bf16", "float32": "f32"}
TARGET_BYTES = 64 << 20             # the main input of a row-length case: 64 MiB

# ---------------------------------------------------------------------------------------------
# The cases (torch only: imported on both machines)


def _modules():
    import torch
    import torch.nn.functional as F

    class BiasGeluScale(torch.nn.Module):
        """``gelu(x + b) * s`` with per-column b and s (inputs), as in ``bench/suite.py``."""

        def forward(self, x, b, s):
            return F.gelu(x + b) * s

    class Softmax(torch.nn.Module):
        def forward(self, x):
            return torch.softmax(x, dim=-1)

    class LayerNorm(torch.nn.Module):
        def __init__(self, n):
            super().__init__()
            self.norm = torch.nn.LayerNorm(n)
            i = torch.arange(n, dtype=torch.float64)
            with torch.no_grad():
                self.norm.weight.copy_(1 + 0.25 * torch.sin(i))
                self.norm.bias.copy_(0.1 * torch.cos(i))

        def forward(self, x):
            return self.norm(x)

    class RMSNorm(torch.nn.Module):
        def __init__(self, n):
            super().__init__()
            i = torch.arange(n, dtype=torch.float64)
            self.weight = torch.nn.Parameter((1 + 0.25 * torch.sin(i)).float())

        def forward(self, x):
            ms = (x * x).mean(dim=-1, keepdim=True)
            return x * torch.rsqrt(ms + 1e-6) * self.weight

    class Add(torch.nn.Module):
        """``x + y``: a contiguous chain (vectors over the flattened elements)."""

        def forward(self, x, y):
            return x + y

    class SiLU(torch.nn.Module):
        def forward(self, x):
            return F.silu(x)

    class RowSum(torch.nn.Module):
        def forward(self, x):
            return x.sum(dim=-1)

    class RowMax(torch.nn.Module):
        def forward(self, x):
            return x.amax(dim=-1)

    class ColSum(torch.nn.Module):
        def forward(self, x):
            return x.sum(dim=0)

    return {"gelu": BiasGeluScale, "add": Add, "silu": SiLU, "softmax": Softmax, "layernorm": LayerNorm,
            "rmsnorm": RMSNorm, "rowsum": RowSum, "rowmax": RowMax, "colsum": ColSum}


def cases() -> list[dict]:
    """name, kind, rows, cols, dtype of every case."""
    out = [dict(kind="gelu", rows=8192, cols=8192, dtype="float16", bench=True),
           dict(kind="softmax", rows=8192, cols=4096, dtype="float16", bench=True),
           dict(kind="layernorm", rows=16384, cols=1024, dtype="float16", bench=True)]
    for n in (64, 1000, 4096, 65536):
        for dt in ("float16", "bfloat16", "float32"):
            rows = max(1, TARGET_BYTES // (n * BYTES[dt]))
            kinds = ["gelu", "softmax", "layernorm", "rmsnorm"] + (["add"] if n == 1000 else [])
            if dt != "bfloat16":
                kinds += ["rowsum", "colsum"]
            if dt == "float32":
                kinds += ["rowmax"]
            out += [dict(kind=k, rows=rows, cols=n, dtype=dt) for k in kinds]
    for dt in ("float16", "float32"):
        out += [dict(kind=k, rows=3000, cols=777, dtype=dt)
                for k in ("gelu", "add", "silu", "softmax", "layernorm", "rmsnorm", "rowsum",
                          "colsum")]
    named = {}
    for c in out:      # the benchmark's softmax is also the 4096-element fp16 row case
        c["name"] = f"{c['kind']}_{SHORT[c['dtype']]}_{c['rows']}x{c['cols']}"
        named.setdefault(c["name"], c)
    return list(named.values())


def make_module(case: dict):
    kind, n = case["kind"], case["cols"]
    cls = _modules()[kind]
    return cls(n) if kind in ("layernorm", "rmsnorm") else cls()


def input_shapes(case: dict) -> list[tuple]:
    r, n = case["rows"], case["cols"]
    if case["kind"] == "gelu":
        return [(r, n), (n,), (n,)]
    return [(r, n), (r, n)] if case["kind"] == "add" else [(r, n)]


# ---------------------------------------------------------------------------------------------
# Build (here, with MLIR)


def _describe(module) -> list[dict]:
    from quartet.dialects import collect

    out = []
    for op in collect(module, lambda o: o.name == "quartet.tile"):
        t = op.opview
        out.append({"kernel": t.kernel, "threads": t.threads,
                    "thread_tile": list(t.thread_tile or []),
                    "block_tile": list(t.block_tile or [])})
    return out


def build_variant(folder: Path, only: str | None) -> None:
    """Build every case with whatever ``quartet`` this process imports."""
    import torch

    from quartet.frontend.compile import _lower, import_linalg, run_passes

    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for case in cases():
        if only and only not in case["name"]:
            continue
        t0 = time.time()
        dt = getattr(torch, case["dtype"])
        module = make_module(case).to(dt)
        xs = [torch.zeros(s, dtype=dt) for s in input_shapes(case)]
        try:
            imported = import_linalg(module, xs)
            mlir_module = run_passes(imported.mlir_text, "roller", "sm_90")
            tiles = _describe(mlir_module)
            writer, _ = _lower(mlir_module, imported, "sm_90", None, None)
            writer.save(folder / case["name"])
            m = writer.manifest()
            launches = [{"entry": k.entry} for k in m.kernels]
            row = {**case, "tiles": tiles, "kernels": len(m.kernels), "launches": launches,
                   "build_s": round(time.time() - t0, 2)}
        except Exception as e:          # noqa: BLE001 - recorded, the build goes on
            row = {**case, "error": f"{type(e).__name__}: {e}".splitlines()[0][:300]}
        rows.append(row)
        print(f"{folder.name:4} {case['name']:34} "
              f"{row.get('error') or [(t['kernel'], t['threads'], t['thread_tile']) for t in tiles]}"
              f" ({row.get('build_s')} s)", flush=True)
    (folder / "cases.json").write_text(json.dumps(rows, indent=1))


def _old_sources(rev: str, where: Path) -> Path:
    """A ``quartet`` package made of revision ``rev``'s folders; returns the PYTHONPATH entry."""
    repo = Path(__file__).resolve().parents[2]
    src, site = where / "src", where / "site" / "quartet"
    src.mkdir(parents=True)
    site.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(repo), "archive", rev], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    for f in ("__init__.py", "errors.py"):
        (site / f).symlink_to(src / "quartet" / f)
    for d in ("dialects", "driver", "passes", "lowering", "runtime", "frontend", "tools", "bench"):
        (site / d).symlink_to(src / d)
    return site.parent


def build(folder: Path, only: str | None, old: str) -> None:
    folder = folder.resolve()
    build_variant(folder / "new", only)
    tmp = Path(tempfile.mkdtemp(prefix="h13b-old-"))
    try:
        site = _old_sources(old, tmp)
        env = dict(os.environ, PYTHONPATH=str(site), PYTHONSAFEPATH="1")
        subprocess.run([sys.executable, str(Path(__file__).resolve()), "build-variant",
                        str(folder / "old")] + (["--only", only] if only else []),
                       env=env, check=True, cwd=str(tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    (folder / "old" / "REVISION").write_text(old + "\n")


# ---------------------------------------------------------------------------------------------
# Run (the GPU machine: torch + quartet.runtime, no MLIR)


def _runtime():
    import quartet.runtime as rt
    return rt


def _inputs(case, gen):
    import torch

    dt = getattr(torch, case["dtype"])
    return [torch.randn(s, generator=gen, device="cuda", dtype=torch.float32).to(dt)
            for s in input_shapes(case)]


def _reference(case, xs):
    import torch

    with torch.no_grad():
        module = make_module(case).to(getattr(torch, case["dtype"])).double().cuda()
        return module(*[x.double() for x in xs])


def _err(out, ref) -> float:
    import torch

    o = out.double()
    if o.shape != ref.shape or torch.isnan(o).any():
        return float("inf")
    return float((o - ref).norm() / ref.norm())


def _poison_and_run(prog, xs):
    import torch
    from cuda.bindings import driver

    spec = prog.manifest.outputs[0]
    address = prog.addresses[spec.buffer]
    (err,) = driver.cuMemsetD8(address, 0xFF, spec.nbytes)
    assert err == driver.CUresult.CUDA_SUCCESS, err
    torch.cuda.synchronize()
    prog.bench(*xs, warmup=0, repeat=1)
    out = torch.empty(spec.shape, dtype=getattr(torch, spec.dtype), device="cuda")
    (err,) = driver.cuMemcpyDtoD(out.data_ptr(), address, spec.nbytes)
    assert err == driver.CUresult.CUDA_SUCCESS, err
    torch.cuda.synchronize()
    return out


def _graph_ms(issue, reps, capture, replay, trials: int = 7) -> float:
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


def _bytes(case, prog) -> int:
    m = prog.manifest
    specs = list(m.inputs) + list(m.outputs)
    total = sum(s.nbytes for s in specs)
    n, b = case["cols"], BYTES[case["dtype"]]
    if case["kind"] == "layernorm":
        total += 2 * n * b               # weight and bias, read once
    elif case["kind"] == "rmsnorm":
        total += n * b
    return total


def run_case(folder: Path, variant: str, case: dict) -> dict:
    import torch

    prog = _runtime().load(folder / variant / case["name"])
    gen = torch.Generator(device="cuda").manual_seed(0)
    errs = []
    for _ in range(2):
        xs = _inputs(case, gen)
        errs.append(_err(_poison_and_run(prog, xs), _reference(case, xs)))
    xs = _inputs(case, gen)
    errs.append(_err(prog(*xs), _reference(case, xs)))
    worst = max(errs)
    res = {"name": case["name"], "variant": variant, "rel_err": worst,
           "ok": worst < TOL[case["dtype"]]}
    nbytes = _bytes(case, prog)
    reps = max(5, min(200, int(2e-3 / (nbytes / LIMIT))))
    backend = prog.backend
    prog.bench(*xs, warmup=1, repeat=1)
    interp = prog._interpreter
    ours = _graph_ms(interp.run, reps, backend.capture,
                     lambda g: (backend.set_stream(torch.cuda.current_stream().cuda_stream),
                                backend.replay(g)))
    res.update(ms=ours, gbs=nbytes / ours / 1e6, of_limit=nbytes / ours / 1e-3 / LIMIT,
               bytes=nbytes, reps=reps)
    if variant == "new":
        module = make_module(case).to(getattr(torch, case["dtype"])).cuda()

        def capture(issue):
            g = torch.cuda.CUDAGraph()
            with torch.no_grad(), torch.cuda.graph(g):
                issue()
            return g

        with torch.no_grad():
            peer = _graph_ms(lambda: module(*xs), reps, capture, lambda g: g.replay())
        res.update(eager_ms=peer, eager_of_limit=nbytes / peer / 1e-3 / LIMIT)
    return res


def worker(folder: Path, jobs: list[str]) -> None:
    table = {}
    for variant in ("old", "new"):
        path = folder / variant / "cases.json"
        if path.exists():
            table[variant] = {c["name"]: c for c in json.loads(path.read_text())}
    for job in jobs:
        variant, name = job.split("/", 1)
        print("START " + job, flush=True)
        case = table[variant][name]
        try:
            if "error" in case:
                raise RuntimeError("build failed: " + case["error"])
            res = run_case(folder, variant, case)
        except Exception as e:          # noqa: BLE001 - one line per failed case
            res = {"name": name, "variant": variant, "ok": False,
                   "error": f"{type(e).__name__}: {e}"[:300]}
            print("RESULT " + json.dumps(res), flush=True)
            sys.exit(3)                 # the CUDA context may be broken: a fresh worker goes on
        print("RESULT " + json.dumps(res), flush=True)


def run(folder: Path, out: Path | None, only: str | None, case_timeout: float) -> int:
    pending = []
    for c in cases():
        if only and only not in c["name"]:
            continue
        for variant in ("old", "new"):
            if (folder / variant / "cases.json").exists():
                pending.append(f"{variant}/{c['name']}")
    results = []
    while pending:
        proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "worker",
                                 str(folder), *pending], stdout=subprocess.PIPE, text=True)
        current, deadline = None, time.time() + case_timeout + 30
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
                    pending.remove(f"{res['variant']}/{res['name']}")
                    _print(res)
                    current = None
            elif time.time() > deadline:
                proc.kill()
                job = current or pending[0]
                variant, name = job.split("/", 1)
                res = {"name": name, "variant": variant, "ok": False,
                       "error": f"hang: no result in {case_timeout} s"}
                results.append(res)
                pending.remove(job)
                _print(res)
                break
        proc.wait()
        if proc.returncode and current is not None and current in pending:
            variant, name = current.split("/", 1)
            res = {"name": name, "variant": variant, "ok": False,
                   "error": f"worker died ({proc.returncode})"}
            results.append(res)
            pending.remove(current)
            _print(res)
    _summary(results)
    _save(out, results)
    bad = [f"{r['variant']}/{r['name']}" for r in results if not r.get("ok")]
    print(f"{len(results) - len(bad)} of {len(results)} runs correct; wrong or failed: {bad}")
    return 1 if any(b.startswith("new/") for b in bad) else 0


def _print(r: dict) -> None:
    tag = f"{r['variant']:3} {r['name']:34}"
    if "error" in r:
        print(f"{tag} FAILED {r['error']}", flush=True)
        return
    eager = f"  eager {r['eager_ms'] * 1e3:8.1f} us ({r['eager_of_limit']:4.0%})" \
        if "eager_ms" in r else ""
    print(f"{tag} rel_err {r['rel_err']:.1e} {'ok ' if r['ok'] else 'WRONG'} "
          f"{r['ms'] * 1e3:8.1f} us {r['gbs']:7.0f} GB/s {r['of_limit']:4.0%} of 4.21 TB/s"
          f"{eager}", flush=True)


def _summary(results: list) -> None:
    by = {}
    for r in results:
        r = dict(r)
        for key in ("ms", "eager_ms"):
            if key in r:
                r[key[:-2] + "us"] = r[key] * 1e3
        by[(r["variant"], r["name"])] = r
    print("\n| case | old us | new us | eager us | old | new | eager | new/old | ok |")
    print("|---|---|---|---|---|---|---|---|---|")
    fracs = []
    for c in cases():
        o, n = by.get(("old", c["name"])), by.get(("new", c["name"]))
        if n is None:
            continue

        def f(r, key, fmt):
            return format(r[key], fmt) if r is not None and key in r else "-"

        speed = f"{o['ms'] / n['ms']:.2f}x" if o and n and "ms" in o and "ms" in n else "-"
        ok = "yes" if n.get("ok") else "NO"
        if "of_limit" in n:
            fracs.append(n["of_limit"])
        print(f"| {c['name']} | {f(o, 'us', '.1f')} | {f(n, 'us', '.1f')} | "
              f"{f(n, 'eager_us', '.1f')} | {f(o, 'of_limit', '.0%')} | {f(n, 'of_limit', '.0%')}"
              f" | {f(n, 'eager_of_limit', '.0%')} | {speed} | {ok} |")
    if fracs:
        fracs.sort()
        print(f"new: median {fracs[len(fracs) // 2]:.0%} of 4.21 TB/s, worst {fracs[0]:.0%}")


def _save(out: Path | None, results: list) -> None:
    if out is None:
        return
    import torch

    out.mkdir(parents=True, exist_ok=True)
    (out / "rows-bandwidth.json").write_text(json.dumps(
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
    ap.add_argument("mode", choices=("build", "build-variant", "run"))
    ap.add_argument("folder", type=Path)
    ap.add_argument("--out", type=Path, default=os.environ.get("OUT") and Path(os.environ["OUT"]))
    ap.add_argument("--only")
    ap.add_argument("--old", default="ecfff18")
    ap.add_argument("--case-timeout", type=float, default=30.0)
    a = ap.parse_args(argv)
    if a.mode == "build":
        build(a.folder, a.only, a.old)
        return 0
    if a.mode == "build-variant":
        build_variant(a.folder, a.only)
        return 0
    return run(a.folder, a.out, a.only, a.case_timeout)


if __name__ == "__main__":
    sys.exit(main())
