#!/usr/bin/env python3
"""Issue 16 on the GPU: tiny zoo models, the concat tile and the index bounds checks, for real.

Build here (MLIR, torchvision, transformers), run there (torch, numpy, cuda-bindings only):

    python scripts/gpu_check_zoo.py build .artifacts/zoo_check [CASES]    # here
    source runtime/device_env.sh && python3 scripts/gpu_check_zoo.py run .artifacts/zoo_check

``build`` compiles, for sm_90, every tiny zoo model that compiles for it (frontend/zoo.py) plus
two small cases (an embedding whose index is checked, three concatenations), and stores with
each artifact its inputs and the outputs of eager PyTorch in float32 on the CPU (``case.npz``).
``run`` loads each artifact with ``quartet.runtime`` (no MLIR, no torchvision), runs it on CUDA
tensors and prints one line per case: the error relative to the largest expected output
(``ok`` below 1e-3: the GPU kernels may contract multiply-adds), and for the bounds-check case
that an index out of range raises ``QuartetError`` naming the op instead of returning. Exit
status 1 when any case fails.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _small_cases():
    import torch
    import torch.nn as nn

    class LookupThenAdd(nn.Module):
        def __init__(self):
            super().__init__()
            self.table = nn.Embedding(16, 8)
            self.pos = nn.Embedding(4, 8)

        def forward(self, ids):
            return self.table(ids) + self.pos(torch.arange(4)[None])

    class Concats(nn.Module):
        def forward(self, a, b):
            return torch.cat([a, b * 2, a], 1) + 1

    torch.manual_seed(0)
    yield "lookup", LookupThenAdd().eval(), (torch.tensor([[1, 2, 3, 15]]),), \
        [torch.tensor([[1, 2, 16, 3]]), torch.tensor([[-1, 0, 0, 0]])]
    yield "concat", Concats().eval(), (torch.randn(2, 3, 5), torch.randn(2, 4, 5)), []


def build(out: Path, only: list[str] | None = None) -> int:
    import numpy as np
    import torch

    from quartet.frontend import zoo
    from quartet.frontend.compile import compile as quartet_compile

    out.mkdir(parents=True, exist_ok=True)
    cases = [c for c in _small_cases() if not only or c[0] in only]
    for name in [n for n in zoo.ZOO if not only or n in only]:
        model, inputs = zoo.build(name, tiny=True)
        cases.append((name, model, inputs, []))
    index = []
    for name, model, inputs, bad in cases:
        try:
            compiled = quartet_compile(model, inputs, target="sm_90")
        except Exception as e:     # noqa: BLE001 - recorded, the run skips it
            print(f"{name}: not compiled: {str(e).splitlines()[0][:200]}", flush=True)
            continue
        compiled.save(out / name)
        with torch.no_grad():
            want = model(*inputs)
        arrays = {f"in{i}": x.numpy() for i, x in enumerate(inputs)}
        arrays["want"] = want.float().numpy()
        for k, b in enumerate(bad):
            arrays[f"bad{k}"] = b.numpy()
        np.savez(out / name / "case.npz", **arrays)
        index.append({"name": name, "inputs": len(inputs), "bad": len(bad)})
        print(f"{name}: built, {len(compiled.manifest.kernels)} kernels, "
              f"{len(compiled.manifest.checks)} checks", flush=True)
    (out / "cases.json").write_text(json.dumps(index, indent=1))
    return 0


def run(folder: Path) -> int:
    import numpy as np
    import torch

    from quartet.errors import QuartetError
    from quartet.runtime import load

    failed = 0
    for case in json.loads((folder / "cases.json").read_text()):
        name = case["name"]
        try:
            data = np.load(folder / name / "case.npz")
            prog = load(folder / name)
            xs = [torch.from_numpy(data[f"in{i}"]).cuda() for i in range(case["inputs"])]
            got = prog(*xs)
            torch.cuda.synchronize()
            want = data["want"]
            err = float(np.abs(got.float().cpu().numpy() - want).max() / np.abs(want).max())
            line = f"{name}: rel err {err:.2e} {'ok' if err < 1e-3 else 'WRONG'}"
            failed += err >= 1e-3
            for k in range(case["bad"]):
                try:
                    prog(torch.from_numpy(data[f"bad{k}"]).cuda())
                    line += f"; bad index {k}: NOT REPORTED"
                    failed += 1
                except QuartetError as e:
                    line += f"; bad index {k} reported: {e}"
            print(line, flush=True)
        except Exception:      # noqa: BLE001 - one line per case, then the next
            failed += 1
            print(f"{name}: FAILED {traceback.format_exc().strip().splitlines()[-1]}", flush=True)
    print(f"{failed} failure(s)")
    return 1 if failed else 0


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] not in ("build", "run"):
        sys.exit(__doc__)
    if sys.argv[1] == "build":      # build FOLDER [case names...]
        sys.exit(build(Path(sys.argv[2]), sys.argv[3:]))
    sys.exit(run(Path(sys.argv[2])))
