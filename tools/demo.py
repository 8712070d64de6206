"""The README's main job, end to end on a machine without a GPU: a PyTorch MLP imported with
torch-mlir, compiled by the ``roller`` pipeline for the CPU target into an artifact, run by
``quartet.runtime`` and checked against PyTorch eager; the Quartet IR (tiles with Roller's
schedules) is printed first.

    python -m quartet.tools.demo [--target cpu] [-o mlp.qrt]
"""

from __future__ import annotations

import sys

from quartet.tools.cli import ToolParser, run_main


def main(argv: list[str]) -> int:
    import mlir.ir  # noqa: F401  (before torch_mlir: see test/python/conftest.py)

    parser = ToolParser("quartet-demo", __doc__)
    parser.add_argument("-o", dest="output", default=None, help="also save the artifact here")
    args = parser.parse_args(argv)

    import numpy as np

    from quartet.frontend import models
    from quartet.frontend.compile import CompiledModule, compile_to_artifact

    model, inputs = models.build("mlp", seed=0)
    writer, result, _ = compile_to_artifact(model, inputs, pipeline="roller", target="cpu")
    print("// Quartet IR of the MLP after quartet-outline-tiles and roller-config{target=cpu}")
    print(result.quartet)
    compiled = CompiledModule(writer, result)
    out = compiled(*inputs)
    out = out[0] if isinstance(out, (tuple, list)) else out
    ref = model(*inputs).detach().double().numpy()
    err = np.linalg.norm(np.asarray(out, dtype=np.float64) - ref) / np.linalg.norm(ref)
    times = ", ".join(f"{k} {v:.2f} s" for k, v in result.seconds.items())
    print(f"// compiled for cpu ({times}); max relative error against PyTorch: {err:.3e}")
    if args.output:
        print(f"// artifact saved to {compiled.save(args.output)}")
    return 0 if err < 1e-4 else 1


if __name__ == "__main__":
    sys.exit(run_main(main))
