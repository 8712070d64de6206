"""Welder's tuning step: time every candidate group at every configuration on the GPU.

    .venv/bin/python -m quartet.bench.welder_tune build .artifacts/tune bert_f16_b32 [...]   # here
    source bench/device_env.sh && python3 bench/welder_tune.py run .artifacts/tune --out tune.json
    quartet-compile ... --pipeline 'welder{tuning=tune.json}'   (or QUARTET_WELDER_TUNING=tune.json)

``build`` runs the ``welder`` pipeline's grouping on each named workload of ``bench/suite.py``
(full sizes, weights irrelevant: a candidate is one tile whose weights are inputs) and keeps every
candidate it priced - each group it considered, and each tile alone - by its tuning key
(``passes/welder/record.py``: the 12 layers of BERT are one key per structure). Each candidate
is lowered at each configuration its kernel family offers (the fused patterns' choices; Roller's
schedule otherwise) into a small artifact ``<key>/<config>/``, and its result on fixed random
inputs (NumPy PCG64 from the key; see :func:`arrays`) is computed here by the CPU target; up to
65536 of its elements at fixed random positions are kept in ``<key>/ref.npz`` (``--no-ref``
skips this). ``candidates.json`` lists them.

``run`` (the GPU machine: torch and ``quartet.runtime``, no MLIR) loads each artifact as a CUDA
graph, checks its output at the reference's positions (relative error below 2e-2; a wrong
configuration is reported and gets no time), times it (``Program.bench``: the median of 50
replays) and writes the tuning record that ``welder-fuse`` reads: per key, the measured seconds
of each configuration. One process, every candidate in turn, so the whole tuning is one call.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):       # run as a script on the GPU machine
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FORMAT = "quartet-welder-tuning"     # passes/welder/record.py reads this
VERSION = 1
TOLERANCE = 2e-2


def seed_of(key: str) -> int:
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16)


def arrays(specs, seed: int) -> list:
    """Random inputs for ``specs`` (shape, dtype name) - the same on both machines."""
    import numpy as np

    rng = np.random.Generator(np.random.PCG64(seed))
    out = []
    for shape, dtype in specs:
        shape = tuple(shape)
        if dtype == "bool":
            out.append(rng.random(shape) < 0.5)
        elif dtype.startswith(("int", "uint")):
            out.append(rng.integers(0, 4, shape).astype(dtype))
        else:
            out.append(rng.standard_normal(shape).astype(dtype))
    return out


SAMPLES = 1 << 16     # elements of each output kept as the reference (the device tool carries
                      # 64 MiB; a BERT-base MLP activation alone is 50 MB)


def sample_indices(size: int, seed: int):
    """The flat positions of an output that the reference keeps: all of a small output, else
    SAMPLES positions drawn from NumPy's PCG64 (the same on both machines)."""
    import numpy as np

    if size <= SAMPLES:
        return np.arange(size)
    rng = np.random.Generator(np.random.PCG64(seed))
    return np.sort(rng.choice(size, SAMPLES, replace=False))


def sampled(outputs, seed: int) -> dict:
    """{"out{i}": sampled values (f64)} of each output."""
    import numpy as np

    return {f"out{i}": np.asarray(o, np.float64).reshape(-1)[sample_indices(o.size, seed + i)]
            for i, o in enumerate(outputs)}


def _slug(params: dict) -> str:
    return "-".join(f"{k}{v}" for k, v in sorted(params.items())) or "roller"


# ---------------------------------------------------------------------------------------------
# Build (here, with MLIR)


def collect_candidates(names: list[str], target: str = "sm_90", tiny: bool = False) -> dict:
    """tuning key -> (family, standalone module text, tiles, [params...]) of every candidate
    the grouping prices on the named workloads."""
    from mlir import ir

    import quartet.dialects as qd
    from quartet.bench import suite
    from quartet.driver.run import parse, run_pipeline
    from quartet.frontend.compile import import_linalg
    from quartet.passes.welder.graph import TileGraph, tiles_by_block
    from quartet.passes.welder.group import Grouper
    from quartet.runtime import targets

    chip = targets.get(target)
    keep: dict = {}
    for name in names:
        w = suite.get(name)
        module = w.module(0, form=w.quartet_form, tiny=tiny)
        inputs = w.inputs(0, tiny=tiny)
        ctx = qd.context()
        m = parse(import_linalg(module, inputs).mlir_text, ctx, name)
        run_pipeline(m, f"builtin.module(roller-fold-casts,welder-collapse-views,"
                        f"quartet-outline-tiles,roller-fuse{{target={target}}},"
                        f"roller-config{{target={target}}})", source_name=name)
        with ctx, ir.Location.unknown():
            for block_tiles in tiles_by_block(m):
                Grouper(TileGraph(block_tiles), chip, None, keep).run()
    return keep


def build(names: list[str], out: Path, target: str = "sm_90", refs: bool = True,
          tiny: bool = False) -> list[dict]:
    import numpy as np
    from mlir import ir

    import quartet.dialects as qd
    from quartet.dialects import collect
    from quartet.lowering.cpu import run_cpu
    from quartet.lowering.lower import lower
    from quartet.passes.welder.fuse import configure
    from quartet.runtime import targets
    from quartet.runtime.dtypes import mlir_name_to_dtype

    chip = targets.get(target)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    keep = collect_candidates(names, target, tiny)
    for key, (family, text, tiles, params_list) in sorted(keep.items()):
        folder = out / key
        folder.mkdir(exist_ok=True)
        ctx = qd.context()
        probe = ir.Module.parse(text, ctx)
        fn = probe.body.operations[0]
        specs = [(list(ir.RankedTensorType(a.type).shape),
                  mlir_name_to_dtype(str(ir.RankedTensorType(a.type).element_type)))
                 for a in fn.regions[0].blocks[0].arguments]
        ref_file = None
        if refs:
            t0 = time.perf_counter()
            results = run_cpu(text, arrays(specs, seed_of(key)))
            np.savez_compressed(folder / "ref.npz", **sampled(results, seed_of(key)))
            ref_file = f"{key}/ref.npz"
            print(f"{key} reference on the CPU in {time.perf_counter() - t0:.1f} s", flush=True)
        for params in params_list:
            module = ir.Module.parse(text, qd.context())
            (tile,) = [t.opview for t in collect(module, lambda o: o.name == "quartet.tile")]
            try:
                with module.context, ir.Location.unknown():
                    if family != "single":
                        configure(tile, chip, family, params)
                    writer = lower(module, target)
            except Exception as e:      # noqa: BLE001 - a configuration that does not build
                rows.append({"key": key, "family": family, "params": params,
                             "error": f"{type(e).__name__}: {str(e).splitlines()[0]}"})
                continue
            slug = _slug(params)
            writer.save(folder / slug)
            rows.append({"key": key, "family": family, "tiles": tiles, "params": params,
                         "artifact": f"{key}/{slug}", "inputs": specs, "ref": ref_file})
        print(f"{key} {family} ({tiles} tiles): {len(params_list)} configurations", flush=True)
    (out / "candidates.json").write_text(json.dumps({"target": target, "chip": chip.name,
                                                     "candidates": rows}, indent=1))
    return rows


# ---------------------------------------------------------------------------------------------
# Run (the GPU machine)


def run(folder: Path, record_path: Path, repeat: int = 50) -> int:
    import numpy as np
    import torch

    from quartet.bench.run import import_runtime

    rt = import_runtime()
    listing = json.loads((folder / "candidates.json").read_text())
    entries: dict = {}
    wrong = []
    for c in listing["candidates"]:
        if "error" in c:
            wrong.append({**c, "why": c["error"]})
            continue
        prog = rt.load(folder / c["artifact"], graph=True)
        xs = arrays(c["inputs"], seed_of(c["key"]))
        dev = [torch.from_numpy(np.ascontiguousarray(x)).cuda() for x in xs]
        outs = prog(*dev)
        outs = outs if isinstance(outs, (tuple, list)) else [outs]
        if c.get("ref"):
            with np.load(folder / c["ref"]) as ref:
                refs = [ref[f"out{i}"] for i in range(len(ref.files))]
            num = den = 0.0
            for i, (o, r) in enumerate(zip(outs, refs)):
                o = torch.as_tensor(o).double().cpu().numpy().reshape(-1)
                o = o[sample_indices(o.size, seed_of(c["key"]) + i)]
                num += float(np.linalg.norm(o - r) ** 2)
                den += float(np.linalg.norm(r) ** 2)
            err = (num / max(den, 1e-300)) ** 0.5
            if not err < TOLERANCE:
                wrong.append({**c, "why": f"relative error {err:.3e}"})
                print(f"{c['key']} {_slug(c['params']):30s} WRONG ({err:.2e})", flush=True)
                prog.close()
                continue
        seconds = prog.bench(*dev, repeat=repeat).median_ms * 1e-3
        entry = entries.setdefault(c["key"], {"family": c["family"], "tiles": c["tiles"],
                                              "times": []})
        entry["times"].append({"params": c["params"], "seconds": seconds})
        print(f"{c['key']} {_slug(c['params']):30s} {seconds * 1e6:9.1f} us", flush=True)
        prog.close()
    record = {"format": FORMAT, "version": VERSION, "chip": listing.get("chip", ""),
              "device": torch.cuda.get_device_name(), "entries": entries, "wrong": wrong}
    record_path.write_text(json.dumps(record, indent=1, sort_keys=True))
    print(f"{sum(len(e['times']) for e in entries.values())} timed, {len(wrong)} wrong or "
          f"unbuilt; record in {record_path}")
    return 1 if any("relative error" in w["why"] for w in wrong) else 0


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=("build", "run"))
    ap.add_argument("folder", type=Path)
    ap.add_argument("workloads", nargs="*", help="bench/suite.py names (build)")
    ap.add_argument("--out", type=Path, help="the tuning record to write (run)")
    ap.add_argument("--target", default="sm_90")
    ap.add_argument("--no-ref", action="store_true", help="skip the CPU references (build)")
    ap.add_argument("--tiny", action="store_true", help="the workloads' tiny sizes (build)")
    a = ap.parse_args(argv)
    if a.mode == "build":
        if not a.workloads:
            ap.error("name the workloads to tune")
        build(a.workloads, a.folder, a.target, refs=not a.no_ref, tiny=a.tiny)
        return 0
    if a.out is None:
        ap.error("run needs --out RECORD.json")
    return run(a.folder, a.out)


if __name__ == "__main__":
    sys.exit(main())
