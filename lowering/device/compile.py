"""A minimal compile path for GEMM kernels: ``gpu.launch`` module -> PTX -> cubin.

Used by the GEMM tests and device scripts until ``lowering/binary.py`` (the shared step) exists;
it does the same: MLIR's ``gpu-lower-to-nvvm-pipeline`` (outlining, NVVM, bare-pointer kernel
arguments) to PTX, then ``ptxas`` from the ``nvidia-cuda-nvcc`` package to a cubin. The chip
comes from the function's ``quartet.chip`` attribute (``sm_90a`` for wgmma kernels).
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

from mlir import ir
from mlir.passmanager import PassManager


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
    times: dict = field(default_factory=dict)


def ptxas_path() -> str:
    import mlir
    site = os.path.dirname(os.path.abspath(mlir.__path__[0]))
    path = os.path.join(site, "nvidia", "cu13", "bin", "ptxas")
    if not os.path.exists(path):
        raise FileNotFoundError("ptxas not found: pip install nvidia-cuda-nvcc")
    return path


def _attr_ints(fn, name):
    return tuple(ir.DenseI64ArrayAttr(fn.attributes[name]))


def to_ptx(module: ir.Module, chip: str) -> str:
    """Lower a module with one gpu.launch to PTX text (the module is lowered in place)."""
    pm = PassManager.parse(
        "builtin.module(gpu-lower-to-nvvm-pipeline{"
        f"cubin-chip={chip} cubin-features=+ptx80 opt-level=3 cubin-format=isa "
        "kernel-bare-ptr-calling-convention=1})", module.context)
    pm.run(module.operation)
    text = str(module)
    m = re.search(r'assembly = "((?:[^"\\]|\\.)*)"', text)
    if not m:
        raise RuntimeError("no PTX in the lowered module")
    raw = m.group(1)
    return re.sub(r"\\([0-9A-Fa-f]{2})", lambda g: chr(int(g.group(1), 16)),
                  raw.replace('\\"', '"').replace("\\\\", "\\"))


def ptx_to_cubin(ptx: str, chip: str, verbose: bool = True) -> tuple[bytes, str]:
    with tempfile.TemporaryDirectory() as d:
        src, out = os.path.join(d, "k.ptx"), os.path.join(d, "k.cubin")
        with open(src, "w") as f:
            f.write(ptx)
        cmd = [ptxas_path(), f"-arch={chip}", "-O3", src, "-o", out]
        if verbose:
            cmd.insert(1, "-v")
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"ptxas failed: {r.stderr[-3000:]}")
        with open(out, "rb") as f:
            return f.read(), r.stderr


def compile_module(module: ir.Module) -> Compiled:
    """Compile a module made by ``build_gemm_kernel`` (works on a clone)."""
    t0 = time.perf_counter()
    fn = module.body.operations[0]
    name = ir.StringAttr(fn.attributes["sym_name"]).value
    chip = ir.StringAttr(fn.attributes["quartet.chip"]).value
    grid, block = _attr_ints(fn, "quartet.grid"), _attr_ints(fn, "quartet.block")
    smem = ir.IntegerAttr(fn.attributes["quartet.shared_bytes"]).value
    clone = ir.Module.parse(str(module), module.context)
    t1 = time.perf_counter()
    ptx = to_ptx(clone, chip)
    t2 = time.perf_counter()
    cubin, info = ptx_to_cubin(ptx, chip)
    t3 = time.perf_counter()
    entry = re.search(r"\.entry\s+(\w+)", ptx).group(1)
    return Compiled(entry, chip, ptx, cubin, grid, block, smem, info,
                    {"clone": t1 - t0, "mlir": t2 - t1, "ptxas": t3 - t2})
