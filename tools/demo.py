"""The README's main job: a small PyTorch model imported with torch-mlir, outlined into Quartet
tiles, configured by Roller where available, and printed.

    python -m quartet.tools.demo [--target sm_90]
"""

from __future__ import annotations

import argparse
import sys

from quartet.tools.cli import run_main


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="quartet-demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default="sm_90", help="Roller target (sm_90, sm_80, ...)")
    args = parser.parse_args(argv)

    import torch

    import quartet.dialects as qd
    from quartet.passes import registry
    from quartet.passes.driver import parse, run_pipeline

    class MLP(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = torch.nn.Linear(64, 256)
            self.fc2 = torch.nn.Linear(256, 64)

        def forward(self, x):
            return self.fc2(torch.nn.functional.gelu(self.fc1(x))) + x

    torch.manual_seed(0)
    model = MLP().eval()
    x = torch.randn(8, 64)
    linalg_text = _import(model, x)

    ctx = qd.context()
    module = parse(linalg_text, ctx, "<torch-mlir>")
    registry.load_all()
    passes = ["quartet-outline-tiles"]
    if "roller-config" in registry.PASSES:
        passes.append(f"roller-config{{target={args.target}}}")
    run_pipeline(module, "builtin.module(" + ",".join(passes) + ")")
    print(f"// Quartet IR of an MLP (64 -> 256 -> 64, gelu, residual), after {', '.join(passes)}")
    print(module)
    return 0


def _import(model, x) -> str:
    """linalg-on-tensors text of ``model``: Quartet's importer if present, else torch-mlir."""
    try:
        from quartet.frontend.importer import import_module
    except ImportError:
        from torch_mlir import fx

        return str(fx.export_and_import(model, x, output_type="linalg-on-tensors"))
    return import_module(model, (x,)).text


if __name__ == "__main__":
    sys.exit(run_main(main))
