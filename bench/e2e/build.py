"""Build the end-to-end cases for the GPU machine (runs here, with MLIR): artifacts + references.

    python -m quartet.bench.e2e.build .e2e_build [--tiny] [--twin] [case ...]

Cases: every model of the zoo (frontend/models.py, default sizes, weights from seed 0; a few
``VARIANTS`` at larger sizes, or compiled with the GEMM builder left out), every
single operator of the benchmark (bench/suite.py, family ``roller``, full sizes, weights from
seed 0) and the ``rammer`` workloads with and without Rammer (``NAME@rammer``: one persistent
kernel; ``RAMMER``), each compiled with ``compile_to_artifact(model, inputs, target="sm_90")``
into ``<dir>/<case>/`` (an artifact folder). For the zoo models, ``<dir>/<case>.ref.npz`` also holds
fixed inputs (seed 1234; for ``cond_residual`` also their negation, so that both branches run)
and the model's output on them computed here in float64: a check that needs no model on the
GPU machine. ``<dir>/cases.json`` lists the cases with their compile times and kernel counts.

``bench/e2e/run.py`` runs them on the GPU machine. For a dry run of that script here,
``--tiny`` builds the operators at their tiny sizes and ``--twin`` saves each artifact's CPU twin
(``cpu_twin.py``) instead; ``QUARTET_E2E_DEVICE=cpu python bench/e2e/run.py DIR`` runs
them.
"""

from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ZOO = ("mlp", "attention", "bert_layer", "conv_block", "lstm_loop", "cond_residual")
#: more cases of zoo models: case -> (model, constructor sizes, batch, environment while compiling)
VARIANTS = {
    "conv_block@simt": ("conv_block", {}, None, {"QUARTET_GEMM": "0"}),
    "mlp_large": ("mlp", {"dim": 768, "hidden": 3072, "tokens": 128}, 8, {}),
    "attention_large": ("attention", {"dim": 768, "heads": 12, "tokens": 128}, 8, {}),
}


#: the rammer workloads, one persistent kernel each, beside the same models one kernel per tile
RAMMER = ("branchy_cells_f32@rammer", "inception_f32@rammer",
          "branchy_cells_f32@rammer{sync=barrier}", "branchy_cells_f32", "inception_f32")


def _ops() -> list[str]:
    from quartet.bench import suite

    return [w.name for w in suite.WORKLOADS if w.family == "roller"]


def _summary(writer, result, seconds: float) -> dict:
    from quartet.lowering import build

    m = writer.manifest()
    steps = [s for _, s in m.steps()]
    return {
        "compile_s": round(seconds, 3),
        "stage_s": {k: round(v, 3) for k, v in result.seconds.items()},
        "kernels": len(m.kernels),
        "steps": len(steps),
        "control_flow": sorted({type(s).__name__ for s in steps} & {"While", "If"}),
        "weights_bytes": sum(w.size for w in m.weights),
        "gemm_fallbacks": [list(x) for x in build.GEMM_FALLBACKS],
    }


def _save(writer, result, path: Path, twin: bool) -> None:
    if twin:
        from quartet.bench.e2e.cpu_twin import cpu_twin

        writer = cpu_twin(writer, result.quartet)
    writer.save(path)


def build_zoo(case: str, out: Path, twin: bool = False) -> dict:
    import os

    from quartet.frontend import models
    from quartet.frontend.compile import compile_to_artifact

    name, sizes, batch, env = VARIANTS.get(case, (case, {}, None, {}))
    model, inputs = models.build(name, seed=0, batch=batch, **sizes)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        t0 = time.perf_counter()
        writer, result, _ = compile_to_artifact(model, inputs, target="sm_90")
        seconds = time.perf_counter() - t0
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    _save(writer, result, out / case, twin)
    gen = torch.Generator().manual_seed(1234)
    xs = [torch.randn(x.shape, generator=gen, dtype=x.dtype) for x in inputs]
    sets = [xs] + ([[-x for x in xs]] if name == "cond_residual" else [])
    ref = {}
    m64 = copy.deepcopy(model).double()
    with torch.no_grad():
        for k, s in enumerate(sets):
            y = m64(*[x.double() for x in s])
            for j, x in enumerate(s):
                ref[f"in{k}_{j}"] = x.numpy()
            ref[f"out{k}"] = y.numpy()
    np.savez(out / f"{case}.ref.npz", **ref)
    return {"case": case, "kind": "zoo", "name": name, "seed": 0, "sets": len(sets),
            "sizes": sizes, "batch": batch, "env": env,
            **_summary(writer, result, seconds)}


def build_op(case: str, out: Path, tiny: bool = False, twin: bool = False) -> dict:
    """A workload of the benchmark; ``NAME@PIPELINE`` compiles it with another pipeline than
    roller (``branchy_cells_f32@rammer``: one persistent kernel)."""
    from quartet.bench import suite
    from quartet.frontend.compile import compile_to_artifact

    name, _, pipeline = case.partition("@")
    pipeline = pipeline or "roller"
    w = {x.name: x for x in suite.WORKLOADS}[name]
    model, inputs = w.module(0, tiny=tiny), w.inputs(1, tiny=tiny)
    t0 = time.perf_counter()
    writer, result, _ = compile_to_artifact(model, inputs, pipeline=pipeline, target="sm_90")
    seconds = time.perf_counter() - t0
    _save(writer, result, out / case, twin)
    return {"case": case, "kind": "op", "name": name, "pipeline": pipeline, "seed": 0,
            "tiny": tiny, **_summary(writer, result, seconds), **_persistent(writer)}


def _persistent(writer) -> dict:
    """What the manifest states about persistent kernels (Rammer): vEUs, blocks, occupancy."""
    rows = []
    for k in writer.manifest().kernels:
        if k.persistent is None:
            continue
        rows.append({"kernel": k.name, "veus": k.persistent.veus, "blocks": k.grid[0],
                     "threads": k.block[0], "blocks_per_sm": k.persistent.blocks_per_sm,
                     "shared_memory": k.shared_memory, "tasks": len(k.persistent.tasks)})
    return {"persistent": rows} if rows else {}


def main(argv: list[str]) -> int:
    flags = {a for a in argv if a.startswith("--")}
    argv = [a for a in argv if not a.startswith("--")]
    tiny, twin = "--tiny" in flags, "--twin" in flags
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    wanted = argv[1:] or list(ZOO) + list(VARIANTS) + _ops() + list(RAMMER)
    cases = []
    from quartet.lowering import build

    for name in wanted:
        build.GEMM_FALLBACKS.clear()
        t0 = time.perf_counter()
        try:
            info = build_zoo(name, out, twin) if name in ZOO or name in VARIANTS else \
                build_op(name, out, tiny, twin)
        except Exception as e:      # noqa: BLE001 - report and go on with the other cases
            info = {"case": name, "error": f"{type(e).__name__}: {e}"}
        cases.append(info)
        print(f"{name:28s} {time.perf_counter() - t0:6.1f}s "
              f"{info.get('kernels', '-')!s:>4} kernels {info.get('error', '')}", flush=True)
    (out / "cases.json").write_text(json.dumps(cases, indent=1) + "\n")
    return 0 if all("error" not in c for c in cases) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
