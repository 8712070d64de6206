"""Build the memory-bound benchmark kernels here (no GPU) for bench/simt/run.py.

Each case is a PyTorch function imported with torch-mlir, its whole body wrapped in one
``quartet.tile`` (what Welder's fusion gives), lowered with ``lowering/kernels/rows.py`` and compiled
with ``lowering/binary.py`` for sm_90. Writes ``<out>/<case>.cubin`` and ``<out>/cases.json``
(entry, grid, block, shared bytes, argument binding, shapes) and prints the compile time of
each kernel (median of 5 fresh builds, binary cache cleared).

    python bench/simt/build.py .device_simt_build
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch_mlir import fx

sys.path.insert(0, os.path.dirname(__file__))
from tiles import set_schedule, wrap_function_in_tile  # noqa: E402

from mlir import ir  # noqa: E402

import quartet.dialects as qd  # noqa: E402
from quartet.lowering import binary, simt  # noqa: E402

H = torch.float16


class Softmax(torch.nn.Module):
    def forward(self, x):
        return torch.softmax(x, dim=-1)


class LayerNorm(torch.nn.Module):
    def forward(self, x, w, b):
        return F.layer_norm(x, (x.shape[-1],), w, b)


class GeluBiasScale(torch.nn.Module):
    def forward(self, x, b, s):
        return F.gelu(x + b) * s


class RowSum(torch.nn.Module):
    def forward(self, x):
        return x.sum(dim=-1)


class ColSum(torch.nn.Module):
    def forward(self, x):
        return x.sum(dim=0)


class MidSum(torch.nn.Module):
    def forward(self, x):
        return x.sum(dim=1)


class MaxPool(torch.nn.Module):
    def forward(self, x):
        return F.max_pool2d(x, 2)


def cases(small: bool = False):
    s = 8 if small else 1
    return {
        "softmax": (Softmax(), [(8192 // s, 4096 // s)]),
        "layernorm": (LayerNorm(), [(16384 // s, 1024 // s), (1024 // s,), (1024 // s,)]),
        "gelu_bias_scale": (GeluBiasScale(), [(8192 // s, 8192 // s), (8192 // s,),
                                              (8192 // s, 8192 // s)]),
        "rowsum": (RowSum(), [(8192 // s, 8192 // s)]),
        "colsum": (ColSum(), [(8192 // s, 8192 // s)]),
        "maxpool": (MaxPool(), [(32, 64, 112 // s, 112 // s)]),
        "softmax_n256": (Softmax(), [(32768 // s, 256)]),
        # bench/suite.py's bias_gelu_scale_f16: b and s per column
        "gelu_colscale": (GeluBiasScale(), [(8192 // s, 8192 // s), (8192 // s,),
                                            (8192 // s,)]),
        "midsum": (MidSum(), [(64, 1024 // s, 512)]),
    }


def import_linalg(module, shapes) -> str:
    args = [torch.randn(*shape, dtype=H) for shape in shapes]
    return str(fx.export_and_import(module, *args, output_type="linalg-on-tensors"))


def compile_case(text: str, schedule: dict | None = None):
    """(KernelSpec, seconds to build + compile) for the function in ``text`` as one tile."""
    ctx = qd.context()
    with ctx, ir.Location.unknown():
        module = ir.Module.parse(text)
        fn = module.body.operations[0]
        t0 = time.perf_counter()
        tile = wrap_function_in_tile(fn)
        if schedule:
            set_schedule(tile, **schedule)
        kernel = simt.build_simt_kernel(tile, "sm_90", name="kernel")
        specs = binary.compile_launch_module(kernel, "sm_90")
        elapsed = time.perf_counter() - t0
        inputs = simt.kernel_inputs(tile)
        arg_index = []
        for v in inputs:
            if not isinstance(v.owner, ir.Block):
                raise RuntimeError("benchmark inputs must be function arguments")
            arg_index.append(ir.BlockArgument(v).arg_number)
        kind = simt.plan(tile)[0]
    assert len(specs) == 1
    return specs[0], elapsed, arg_index, kind


# Schedule variants tried on the device (name@variant): thread_tile[-1] = inner elements per
# thread, threads = block size. The default (no variant) is the builder's own choice.
VARIANTS = {
    "softmax": {"tt16": {"thread_tile": [1, 16], "threads": 256},
                "tt64": {"thread_tile": [1, 64], "threads": 256}},
    "rowsum": {"tt64": {"thread_tile": [1, 64], "threads": 256}},
    # element-wise: C = tt / 8 vectors of 16 B in flight per thread (row mode) instead of one
    "gelu_colscale": {"tt16": {"thread_tile": [1, 16], "threads": 256},
                      "tt32": {"thread_tile": [1, 32], "threads": 256},
                      "tt64": {"thread_tile": [1, 64], "threads": 256},
                      "tt32t512": {"thread_tile": [1, 32], "threads": 512}},
    "layernorm": {"tt16": {"thread_tile": [1, 16], "threads": 256},
                  "tt16t128": {"thread_tile": [1, 16], "threads": 128},
                  "tt32t512": {"thread_tile": [1, 32], "threads": 512},
                  "tt8": {"thread_tile": [1, 8], "threads": 128}},
}


def main(out: str, small: bool = False) -> None:
    os.makedirs(out, exist_ok=True)
    meta = {}
    work = []
    for name, (module, shapes) in cases(small).items():
        text = import_linalg(module, shapes)
        work.append((name, shapes, text, None))
        for variant, schedule in VARIANTS.get(name, {}).items():
            work.append((f"{name}@{variant}", shapes, text, schedule))
    for name, shapes, text, schedule in work:
        times = []
        for _ in range(5 if schedule is None else 1):
            binary._CACHE.clear()
            spec, elapsed, arg_index, kind = compile_case(text, schedule)
            times.append(elapsed)
        with open(os.path.join(out, f"{name}.cubin"), "wb") as f:
            f.write(spec.binary)
        meta[name] = {
            "entry": spec.entry, "grid": spec.grid, "block": spec.block,
            "shared": spec.shared_bytes, "builder": kind, "input_shapes": shapes,
            "args": [{"role": a.role, "index": a.index, "shape": a.shape, "dtype": a.dtype,
                      "func_arg": arg_index[a.index] if a.role == "input" else None}
                     for a in spec.args],
            "compile_s_median": statistics.median(times),
        }
        print(f"{name:18} builder={kind:9} grid={spec.grid} block={spec.block} "
              f"compile median {statistics.median(times) * 1000:.0f} ms "
              f"(min {min(times) * 1000:.0f}, max {max(times) * 1000:.0f})", flush=True)
    with open(os.path.join(out, "cases.json"), "w") as f:
        json.dump(meta, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".device_simt_build",
         small="--small" in sys.argv)
