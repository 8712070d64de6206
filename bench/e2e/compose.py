"""Block programs composed into one kernel, checked on the GPU (issue 9: the seed of Rammer).

    .venv/bin/python -m quartet.bench.e2e.compose build .artifacts/compose          # here
    source bench/device_env.sh && python3 bench/e2e/compose.py run .artifacts/compose --out $OUT

``build`` imports small PyTorch operators, runs the ``roller`` pipeline, builds each tile's block
program (``lowering/kernels``) and composes them (``lowering/compose/kernel.py``) into kernels
that no single operator has:

* ``gemm_softmax`` - one kernel holding two different bodies: an fp16 GEMM (wgmma, 128 threads)
  on the first virtual blocks and an fp16 softmax (256 threads) on the rest; the GEMM body is
  narrower than the kernel, so its barriers count only its own 128 threads;
* ``softmax_looped`` / ``gemm_looped`` - one body on fewer physical blocks than it has virtual
  blocks, each physical block walking its share (the persistent form);

each saved as an artifact (inputs, outputs, one kernel). ``run`` loads them with
``quartet.runtime`` (no MLIR), runs fresh random inputs drawn on the GPU with the outputs
poisoned (NaN) first, and compares with PyTorch in float64 by ``||out - ref|| / ||ref||``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

if __package__ in (None, ""):       # run as a script on the GPU machine: quartet.<folder> from
    import quartet                  # this checkout (bench/device_env.sh makes quartet importable)

    _root = str(Path(__file__).resolve().parents[2])
    if _root not in list(quartet.__path__):
        quartet.__path__.append(_root)

#: case -> (operators it holds, in argument order) for the reference on the GPU
CASES = {
    "gemm_softmax": ("matmul", "softmax"),
    "softmax_looped": ("softmax",),
    "gemm_looped": ("matmul",),
}
M, N, K = 256, 512, 384          # the GEMM: (M x K) @ (K x N), fp16
R, C = 200, 1000                 # the softmax rows: not multiples of the row tile


# ---------------------------------------------------------------------------------------------
# Build (here, with MLIR)


def _operators():
    import torch

    class MatMul(torch.nn.Module):
        def forward(self, a, b):
            return a @ b

    class Softmax(torch.nn.Module):
        def forward(self, x):
            return torch.softmax(x, dim=-1)

    f16 = torch.float16
    return {"matmul": (MatMul(), (torch.randn(M, K, dtype=f16), torch.randn(K, N, dtype=f16))),
            "softmax": (Softmax(), (torch.randn(R, C, dtype=f16),))}


def _block_program(name: str, model, inputs, chip):
    """The block program of the operator's one tile, and the tile's argument positions."""
    from quartet.dialects import collect
    from quartet.frontend.compile import import_linalg, run_passes
    from quartet.lowering.build import block_program
    from quartet.lowering.kernels import kernel_inputs

    module = run_passes(import_linalg(model, inputs).mlir_text, "roller", chip.target)
    (tile,) = [op.opview for op in collect(module, lambda o: o.name == "quartet.tile")]
    fn_args = list(module.body.operations[0].regions[0].blocks[0].arguments)
    positions = [fn_args.index(v) for v in kernel_inputs(tile)]
    return block_program(tile, chip, f"{name}_body"), positions, module


def build(out: Path) -> list[dict]:
    from quartet.lowering import binary
    from quartet.lowering.build import check_resources, record_of
    from quartet.lowering.compose.kernel import (Part, inline_block_programs, looped,
                                                 side_by_side)
    from quartet.lowering.kernel import KernelArg
    from quartet.runtime import targets
    from quartet.runtime.artifact import ArtifactWriter
    from quartet.runtime.manifest import Launch

    chip = targets.get("sm_90")
    ops = _operators()
    built = {}
    keep = []          # the modules must outlive the block programs built from them
    for name, (model, inputs) in ops.items():
        bp, positions, module = _block_program(name, model, inputs, chip)
        keep.append(module)
        built[name] = (bp, positions, [tuple(t.shape) for t in inputs])
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for case, names in CASES.items():
        # kernel arguments: each operator's inputs, then its output, operator after operator
        args, parts, first = [], [], 0
        for name in names:
            bp, positions, _ = built[name]
            base = len(args)
            n_in = sum(1 for a in bp.args if a.role == "input")
            args += [KernelArg("input", len(args) + i, a.shape, a.dtype)
                     for i, a in enumerate(bp.args) if a.role == "input"]
            args += [KernelArg("output", len(args) - n_in + i, a.shape, a.dtype)
                     for i, a in enumerate(bp.args) if a.role == "output"]
            parts.append(Part(bp, tuple(range(base, base + len(bp.args))), first))
            first += bp.resources.blocks
        if case == "gemm_softmax":
            kmod = side_by_side(parts, args, case)
        else:
            bp = parts[0].program
            kmod = looped(bp, case, physical_blocks=max(1, bp.resources.blocks // 5))
        inline_block_programs(kmod)
        (spec,) = binary.compile_launch_module(kmod, chip)
        w = ArtifactWriter(chip.target, producer=json.dumps({"tool": "bench.e2e.compose"}))
        names_of = []
        for i, a in enumerate(args):
            nm = f"{a.role}{i}"
            names_of.append(w.add_input(nm, a.shape, a.dtype) if a.role == "input" else
                            w.add_output(nm, a.shape, a.dtype))
        w.add_kernel(case, spec.binary, spec.entry, spec.grid, spec.block,
                     shared_memory=spec.shared_bytes, args=names_of)
        w.add_step(Launch(case))
        w.save(out / case)
        for p in parts:
            check_resources(record_of(p.program, spec), chip)
        rows.append({"case": case, "operators": list(names), "grid": list(spec.grid),
                     "block": list(spec.block), "shared_bytes": spec.shared_bytes,
                     "registers": binary.cubin_resources(spec.binary, spec.entry).get(
                         "registers"),
                     "bodies": [{"name": p.program.name, "family": p.program.family,
                                 "threads": p.program.resources.threads,
                                 "blocks": p.program.resources.blocks,
                                 "first": p.first} for p in parts]})
    (out / "compose.json").write_text(json.dumps(rows, indent=1))
    return rows


# ---------------------------------------------------------------------------------------------
# Run (the GPU machine: torch + quartet.runtime, no MLIR)


def _reference(op: str, xs):
    import torch

    if op == "matmul":
        return xs[0].double() @ xs[1].double()
    return torch.softmax(xs[0].double(), dim=-1)


def run(folder: Path, out: Path | None) -> int:
    import torch

    from quartet.bench.run import _poison_outputs, import_runtime

    rt = import_runtime()
    rows = json.loads((folder / "compose.json").read_text())
    results, bad = [], 0
    for row in rows:
        prog = rt.load(folder / row["case"])
        specs = prog.manifest.inputs
        gen = torch.Generator(device="cuda").manual_seed(0)
        xs = [torch.randn(s.shape, generator=gen, device="cuda",
                          dtype=getattr(torch, s.dtype)) for s in specs]
        errs = []
        for trial in range(3):
            # Poison the program's own output buffers (an unwritten element shows as NaN) and
            # call with host inputs, so that those buffers are the ones written and read back.
            if not _poison_outputs(prog):
                raise SystemExit("cannot poison the output buffers")
            outs = prog(*[x.cpu().numpy() for x in xs])
            outs = outs if isinstance(outs, (tuple, list)) else [outs]
            outs = [torch.from_numpy(o).cuda() for o in outs]
            k = 0
            for op, o in zip(row["operators"], outs):
                n = 2 if op == "matmul" else 1
                ref = _reference(op, xs[k:k + n])
                k += n
                err = float((o.double() - ref).norm() / ref.norm())
                errs.append(err if err == err else float("inf"))
            xs = [torch.randn_like(x) for x in xs]
        worst = max(errs)
        ok = worst < 2e-3
        bad += not ok
        results.append({**row, "rel_err": worst, "ok": ok})
        print(f"{row['case']:16} grid {row['grid']} block {row['block']} smem "
              f"{row['shared_bytes']:6} regs {row['registers']}  rel err {worst:.2e}  "
              f"{'ok' if ok else 'WRONG'}", flush=True)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "compose-run.json").write_text(json.dumps(
            {"device": torch.cuda.get_device_name(), "results": results}, indent=1))
    return 1 if bad else 0


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=("build", "run"))
    ap.add_argument("folder", type=Path)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)
    if a.mode == "build":
        for row in build(a.folder):
            print(row["case"], row["grid"], row["block"], row["shared_bytes"], row["registers"])
        return 0
    return run(a.folder, a.out)


if __name__ == "__main__":
    sys.exit(main())
