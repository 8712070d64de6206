"""Welder's fused kernels at real sizes, checked on the GPU (build here, run there).

    .venv/bin/python -m quartet.bench.e2e.welder build .artifacts/welder [case ...]     # here
    source bench/device_env.sh && python3 bench/e2e/welder.py run .artifacts/welder --out $OUT

``build`` compiles each case (an fp16 PyTorch module of ``bench/suite.py`` at the sizes below,
weights from NumPy's PCG64 of seed 0, ``bench.suite.init_parameters``) with the ``welder``
pipeline for ``sm_90``, saves the artifact with its large weights stripped (rebuilt from the
seed on the GPU machine, ``bench/artifact_weights.py``: the device tool carries 64 MiB) and
writes ``welder.json``: per case its kernels, the fused patterns in it and the cost model's
global bytes before and after fusion (building some cases keeps the other cases' rows).

``run`` (the GPU machine: torch and ``quartet.runtime``, no MLIR) rebuilds each module from the
seed, restores the weights, fills the program's outputs with NaN bytes, runs it on inputs drawn
from NumPy's PCG64 (seed 1) and compares with the same module in float64 on the GPU by
``||out - ref|| / ||ref||`` (fp16 end to end against float64: ok below 2e-2, a wrong fragment
or barrier gives 1e-1 and more, an unwritten element NaN). It also times, with CUDA events, the
median of 30 calls of the program and of the eager fp16 module. Exit status 1 if any case is
wrong.

The cases cover what the fused kernels must handle: sequence lengths 77, 197, 512, 1000 and
1024 (key and query tiles with edges), head dimensions 8 (padded), 64 and 128, a causal mask
(a boolean buffer, ``masked_fill``), the BERT layer at batch 1 and 32 (attention, and GEMM with
residual add and layer norm over 768-wide rows: mma.sync at 16/32-row blocks, wgmma at 64), the
MLP of the benchmark and the ViT and GPT pre-norm blocks.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):       # run as a script on the GPU machine
    sys.path.append(str(Path(__file__).resolve().parents[2]))  # after device_env.sh's site

D = dict(dim=768, heads=12)

#: case -> (module kind, constructor sizes, input shape (batch, tokens, dim))
CASES = {
    "attention_t77": ("attention", D, (4, 77, 768)),
    "attention_t197": ("attention", D, (4, 197, 768)),
    "attention_t512_b8": ("attention", D, (8, 512, 768)),
    "attention_t1000": ("attention", dict(dim=512, heads=8), (2, 1000, 512)),
    "attention_d128": ("attention", dict(dim=256, heads=2), (2, 300, 256)),
    "attention_d8": ("attention", dict(dim=64, heads=8), (2, 130, 64)),
    "causal_t1024": ("causal", dict(D, tokens=1024), (2, 1024, 768)),
    "causal_t77": ("causal", dict(D, tokens=77), (2, 77, 768)),
    "bert_layer_b1": ("bert_layer", dict(D, hidden=3072), (1, 128, 768)),
    "bert_layer_b32": ("bert_layer", dict(D, hidden=3072), (32, 128, 768)),
    "mlp_b64": ("mlp", dict(dim=768, hidden=3072), (64, 128, 768)),
    "vit_block": ("prenorm", dict(D, hidden=3072, tokens=197), (8, 197, 768)),
    "gpt_block": ("prenorm_causal", dict(D, hidden=3072, tokens=1024), (2, 1024, 768)),
}
SEED = 0
TOLERANCE = 2e-2


def make(case: str, device="cpu"):
    """The case's fp16 module (weights from the seed) and its input shape."""
    import torch

    from quartet.bench import suite

    kind, sizes, shape = CASES[case]
    if kind == "attention":
        m = suite.Attention(sizes["dim"], sizes["heads"])
    elif kind == "causal":
        m = suite.CausalAttention(sizes["dim"], sizes["heads"], sizes["tokens"])
    elif kind == "bert_layer":
        m = suite.BertLayer(sizes["dim"], sizes["heads"], sizes["hidden"])
    elif kind == "mlp":
        m = suite.MLP(sizes["dim"], sizes["hidden"])
    else:
        m = suite.PreNormBlock(sizes["dim"], sizes["heads"], sizes["hidden"], sizes["tokens"],
                               causal=kind == "prenorm_causal")
    m = m.to(torch.float64)
    suite.init_parameters(m, SEED)
    return m.to(device=device, dtype=torch.float16).eval(), shape


def inputs(shape, seed: int = 1):
    import numpy as np

    rng = np.random.Generator(np.random.PCG64(seed))
    return rng.standard_normal(shape).astype(np.float16)


# ---------------------------------------------------------------------------------------------
# Build (here, with MLIR)


def build(out: Path, cases: list[str]) -> list[dict]:
    import re

    import torch

    from quartet.bench import artifact_weights
    from quartet.bench.build import model_bytes
    from quartet.frontend.compile import compile_to_artifact

    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for case in cases:
        module, shape = make(case)
        x = torch.from_numpy(inputs(shape))
        t0 = time.perf_counter()
        try:
            writer, result, _ = compile_to_artifact(module, (x,), pipeline="welder",
                                                    target="sm_90")
        except Exception as e:      # noqa: BLE001 - report and go on
            rows.append({"case": case, "error": f"{type(e).__name__}: {e}"})
            print(f"{case:20s} not compiled: {e}", flush=True)
            continue
        seconds = time.perf_counter() - t0
        writer.save(out / case)
        stripped = artifact_weights.strip(out / case, module, workload=case, seed=SEED,
                                          form="plain")
        patterns = re.findall(r'welder\.pattern = "(\w+)"', result.quartet)
        row = {"case": case, "shape": list(shape), "compile_s": round(seconds, 2),
               "kernels": len(writer.manifest().kernels),
               "patterns": {p: patterns.count(p) for p in sorted(set(patterns))},
               "global_bytes_model": model_bytes(result.quartet),
               "stripped_bytes": stripped["stripped_bytes"]}
        rows.append(row)
        print(f"{case:20s} {row['kernels']:3d} kernels {row['patterns']} "
              f"({seconds:.0f} s)", flush=True)
    listing = out / "welder.json"
    built = {r["case"] for r in rows}
    kept = [r for r in (json.loads(listing.read_text()) if listing.is_file() else [])
            if r["case"] not in built and r["case"] in CASES]      # other cases built earlier
    listing.write_text(json.dumps(sorted(kept + rows, key=lambda r: list(CASES).index(r["case"])),
                                  indent=1))
    return rows


# ---------------------------------------------------------------------------------------------
# Run (the GPU machine: torch + quartet.runtime, no MLIR)


def _median_ms(fn, args, n: int = 30) -> float:
    import statistics

    import torch

    for _ in range(3):
        fn(*args)
    times = []
    for _ in range(n):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(*args)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def run(folder: Path, out: Path | None) -> int:
    import tempfile

    import torch

    from quartet.bench import artifact_weights
    from quartet.bench.run import _poison_outputs, import_runtime

    rt = import_runtime()
    rows = json.loads((folder / "welder.json").read_text())
    results, bad = [], 0
    scratch = Path(tempfile.mkdtemp(prefix="welder-e2e-"))
    for row in rows:
        case = row["case"]
        if "error" in row:
            results.append({**row, "ok": False})
            bad += 1
            continue
        module, shape = make(case, "cuda")
        path = folder / case
        if artifact_weights.needs_restore(path):
            path = artifact_weights.restore(path, module, scratch / case)
        prog = rt.load(path)
        x = torch.from_numpy(inputs(shape)).cuda()
        errs = []
        for trial in range(2):
            if not _poison_outputs(prog):
                raise SystemExit("cannot poison the output buffers")
            y = prog(x.cpu().numpy())
            y = torch.from_numpy(y[0] if isinstance(y, (tuple, list)) else y).cuda()
            with torch.no_grad():
                ref = module.double()(x.double())
            module.half()
            err = float((y.double() - ref).norm() / ref.norm())
            errs.append(err if err == err else float("inf"))
            x = torch.from_numpy(inputs(shape, seed=2 + trial)).cuda()
        worst = max(errs)
        ok = worst < TOLERANCE
        bad += not ok
        with torch.no_grad():
            t_prog = _median_ms(prog, (x,))
            t_eager = _median_ms(module, (x,))
        results.append({**row, "rel_err": worst, "ok": ok, "ms": t_prog, "eager_ms": t_eager})
        print(f"{case:20s} {row['kernels']:3d} kernels  rel err {worst:.2e} "
              f"{'ok' if ok else 'WRONG'}  {t_prog:.3f} ms (eager {t_eager:.3f} ms)", flush=True)
        prog.close()
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "welder-run.json").write_text(json.dumps(
            {"device": torch.cuda.get_device_name(), "results": results}, indent=1))
    return 1 if bad else 0


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=("build", "run"))
    ap.add_argument("folder", type=Path)
    ap.add_argument("cases", nargs="*", help=f"subset of {', '.join(CASES)}")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)
    if a.mode == "build":
        unknown = [c for c in a.cases if c not in CASES]
        if unknown:
            ap.error(f"unknown cases {unknown}")
        rows = build(a.folder, a.cases or list(CASES))
        return 0 if all("error" not in r for r in rows) else 1
    return run(a.folder, a.out)


if __name__ == "__main__":
    sys.exit(main())
