"""The CPU backend: kernels are functions of a shared library, buffers are host memory.

Each kernel of a ``cpu`` artifact is a C-ABI function ``void entry(void *p0, ..., T s0, ...)``
in a shared library (``.so``) stored in the artifact; buffer arguments are bare pointers and
scalar arguments are passed by value with the C type of their element type. A launch is one
call of the function (grid and block are recorded but not used: the function covers the whole
iteration space itself). Buffers are 256-byte-aligned numpy allocations.
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

import numpy as np

from quartet.errors import QuartetError
from quartet.runtime import dtypes
from quartet.runtime.manifest import BufferArg, IndexArg, Kernel, ScalarArg

_ALIGN = 256


class CpuBackend:
    """Host memory and ctypes calls; every operation completes before it returns."""

    name = "cpu"
    device_arch = "cpu"

    def __init__(self, location: str | None = None):
        self.location = location
        self._arrays: dict[int, np.ndarray] = {}
        self._libraries: dict[Path, ctypes.CDLL] = {}

    def alloc(self, size: int) -> int:
        raw = np.zeros(size + _ALIGN, dtype=np.uint8)
        address = raw.ctypes.data
        start = (-address) % _ALIGN
        address += start
        self._arrays[address] = raw
        return address

    def free(self, address: int) -> None:
        self._arrays.pop(address, None)

    def upload(self, address: int, data: np.ndarray) -> None:
        ctypes.memmove(address, data.ctypes.data, data.nbytes)

    def download(self, address: int, out: np.ndarray) -> None:
        ctypes.memmove(out.ctypes.data, address, out.nbytes)

    def prepare(self, kernel: Kernel, binary: Path) -> Any:
        lib = self._libraries.get(binary)
        if lib is None:
            try:
                lib = ctypes.CDLL(str(binary))
            except OSError as e:
                raise QuartetError(
                    f"kernel {kernel.name!r}: cannot load {binary.name}: {e}", self.location
                ) from None
            self._libraries[binary] = lib
        try:
            fn = getattr(lib, kernel.entry)
        except AttributeError:
            raise QuartetError(
                f"kernel {kernel.name!r}: entry symbol {kernel.entry!r} not found in {binary.name}",
                self.location,
            ) from None
        argtypes = []
        for a in kernel.args:
            if isinstance(a, BufferArg):
                argtypes.append(ctypes.c_void_p)
            elif isinstance(a, (ScalarArg, IndexArg)):
                argtypes.append(dtypes.SCALAR_CTYPES[a.dtype])
        fn.argtypes, fn.restype = argtypes, None
        return fn

    def launch(self, prepared: Any, args: list[int | float]) -> None:
        prepared(*args)

    def tensor_map(self, arg, address: int) -> int:
        raise QuartetError(f"tensor maps (TMA) exist only on the cuda backend; buffer "
                           f"{arg.buffer!r} is read through one", self.location)

    def copy(self, dst: int, src: int, size: int) -> None:
        ctypes.memmove(dst, src, size)

    def memset(self, address: int, value: int, width: int, count: int) -> None:
        if width == 1:
            ctypes.memset(address, value, count)
            return
        view = np.ctypeslib.as_array((ctypes.c_uint8 * (count * width)).from_address(address))
        view.view({2: np.uint16, 4: np.uint32}[width])[:] = value

    def read_scalar(self, address: int, dtype: str) -> int | float:
        c = dtypes.SCALAR_CTYPES.get(dtype, ctypes.c_uint8)  # bool: one byte
        return c.from_address(address).value

    def synchronize(self) -> None:
        pass

    def close(self) -> None:
        self._arrays.clear()
        self._libraries.clear()
