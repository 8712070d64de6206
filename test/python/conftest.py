"""pytest set-up: tests marked ``gpu`` run only where an NVIDIA GPU and cuda-bindings are."""

import os

import pytest

# Every compile of the tests is a real one: the compile cache (frontend/cache.py) is off unless a
# test turns it on (test_compile_cache.py, with its own folder). Child processes inherit this.
os.environ.setdefault("QUARTET_CACHE", "0")

# `mlir` before `torch_mlir`: the other order makes MLIR's ExecutionEngine resolve symbols against
# torch_mlir's copy of LLVM (garbled names). Tests import torch_mlir through the frontend.
try:
    import mlir.ir  # noqa: F401
except ImportError:      # the GPU machine runs the runtime tests without MLIR
    pass


def _have_cuda_gpu() -> bool:
    try:
        from cuda.bindings import driver
    except ImportError:
        return False
    try:
        (err,) = driver.cuInit(0)
        if err != driver.CUresult.CUDA_SUCCESS:
            return False
        err, count = driver.cuDeviceGetCount()
        return err == driver.CUresult.CUDA_SUCCESS and count > 0
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    if _have_cuda_gpu():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU and cuda-bindings")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
