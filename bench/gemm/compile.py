"""Compile a module made by ``build_gemm_kernel`` to a cubin, through ``lowering/binary.py``.

The shared back end does outlining, NVVM lowering (bare-pointer kernel arguments) and PTX; the
chip comes from the function's ``quartet.chip`` attribute (``sm_90a`` for wgmma kernels), LLVM
runs at -O2 (for these kernels the PTX is byte-identical to -O3 and NVPTX codegen is about twice
as fast: -O3 adds two GVN runs that dominate on large unrolled blocks). The PTX is then assembled
here with ``ptxas -v`` so that the register report comes along.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

from mlir import ir

from quartet.lowering import binary


@dataclass
class Compiled:
    name: str                   # kernel entry symbol
    chip: str
    ptx: str
    cubin: bytes
    grid: tuple
    block: tuple
    shared_bytes: int
    ptxas_info: str
    spec: object = None         # the KernelSpec of lowering/binary.py (PTX as its binary)
    times: dict = field(default_factory=dict)


def target_of(module) -> binary.Target:
    """The back-end target for the chip named on the kernel function."""
    fn = module.body.operations[0]
    chip = ir.StringAttr(fn.attributes["quartet.chip"]).value
    name = chip[:-1] if chip.endswith("a") else chip
    return binary.Target(name, "nvvm", chip, "+ptx80")


def ptx_to_cubin(ptx: str, chip: str) -> tuple[bytes, str]:
    tk = binary.find_cuda_toolkit()
    with tempfile.TemporaryDirectory() as d:
        src, out = os.path.join(d, "k.ptx"), os.path.join(d, "k.cubin")
        with open(src, "w") as f:
            f.write(ptx)
        r = subprocess.run([os.path.join(tk, "bin", "ptxas"), "-v", f"-arch={chip}", "-O3",
                            src, "-o", out], capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"ptxas failed: {r.stderr[-3000:]}")
        with open(out, "rb") as f:
            return f.read(), r.stderr


def compile_module(module) -> Compiled:
    t0 = time.perf_counter()
    target = target_of(module)
    (spec,) = binary.compile_launch_module(module, target, emit="ptx", opt_level=2)
    ptx = spec.notes["ptx"]
    t1 = time.perf_counter()
    cubin, info = ptx_to_cubin(ptx, target.chip)
    t2 = time.perf_counter()
    return Compiled(spec.entry, target.chip, ptx, cubin, spec.grid, spec.block,
                    spec.shared_bytes, info, spec, {"mlir": t1 - t0, "ptxas": t2 - t1})
