"""The lowering's entry points as passes, for ``quartet-opt`` and lit tests.

The lowering itself (``quartet.lowering``) knows nothing of passes or pipelines; these wrappers
let a user stop at any lowering stage and print the IR:

* ``quartet-lower-gpu{target=sm_90}``: every configured ``quartet.tile`` becomes a kernel in a
  ``gpu.binary``, launched from the host function by ``gpu.launch_func``
  (``stop_after=kernels`` appends the block programs and their standalone kernels instead);
* ``quartet-gpu-to-binary{target=sm_90}``: every ``gpu.launch`` of the module is compiled;
* ``quartet-lower-cpu``: the CPU target's tiled loops in the LLVM dialect.

The artifact a runtime runs is written by :func:`quartet.lowering.lower.lower`, the one stage
after any pipeline (``quartet-opt ... -o model.qrt``, ``quartet.compile``, ``quartet-compile``).
"""

from __future__ import annotations

from dataclasses import dataclass

from quartet.lowering import build, cpu, host
from quartet.passes.base import ModulePass
from quartet.runtime import targets

GPU_STAGES = ("kernels", "binary")


def _check_gpu_target(target: str, chip: str) -> None:
    if target not in targets.GPU_TARGETS:
        raise ValueError(f"unknown GPU target '{target}' (known: {', '.join(targets.GPU_TARGETS)})")
    targets.get(target, chip)


@dataclass(frozen=True)
class LowerGpu(ModulePass):
    name = "quartet-lower-gpu"
    summary = "compile every quartet.tile into a gpu.binary kernel and launch it from the host"
    target: str = "sm_90"
    chip: str = ""                # default: the target's first chip (runtime/targets.py)
    stop_after: str = "binary"    # "kernels": only append the block programs and kernels

    def __post_init__(self):
        _check_gpu_target(self.target, self.chip)
        if self.stop_after not in GPU_STAGES:
            raise ValueError(f"stop_after must be one of {', '.join(GPU_STAGES)}, "
                             f"got '{self.stop_after}'")

    def apply(self, module) -> None:
        chip = targets.get(self.target, self.chip or None)
        if self.stop_after == "kernels":
            build.build_kernels_into(module, chip)
        else:
            host.lower_module_plans(module, chip)


@dataclass(frozen=True)
class GpuToBinary(ModulePass):
    name = "quartet-gpu-to-binary"
    summary = ("compile every gpu.launch into a gpu.binary (cubin/PTX/hsaco) and launch it "
               "with gpu.launch_func")
    target: str = "sm_90"
    emit: str = "bin"             # "bin" | "ptx" (NVIDIA) | "obj" (AMD, before linking)

    def __post_init__(self):
        _check_gpu_target(self.target, "")
        if self.emit not in ("bin", "ptx", "obj"):
            raise ValueError(f"emit must be bin, ptx or obj, got '{self.emit}'")

    def apply(self, module) -> None:
        build.launches_to_binaries(module, self.target, self.emit)


@dataclass(frozen=True)
class LowerCpu(ModulePass):
    """Lower the configured (or default-tiled) tiles of a module to LLVM-dialect loops."""

    name = "quartet-lower-cpu"
    summary = ("lower quartet.tile ops to tiled loops and the LLVM dialect for the CPU "
               "(bare-pointer entry: inputs, then output buffers)")
    entry: str = ""          # the function to export (default: the only public one)
    stop_after: str = "llvm"  # "tile" | "bufferize" | "llvm"

    def __post_init__(self):
        if self.stop_after not in cpu.STAGES:
            raise ValueError(f"stop_after must be one of {', '.join(cpu.STAGES)}, "
                             f"got '{self.stop_after}'")

    def apply(self, module) -> None:
        cpu.lower_to_llvm(module, self.entry or None, self.stop_after)
