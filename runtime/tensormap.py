"""TMA tensor maps: the arguments of ``cuTensorMapEncodeTiled`` for a manifest ``tensormap``.

A ``tensormap`` kernel argument (runtime/FORMAT.md) names a buffer and how to see it as a tiled
tensor; the copy engine of a Hopper GPU reads the 128-byte map that the driver encodes from
that and the buffer's address. The encoder is a host function of the driver library
(``libcuda``), called through ctypes with the C signature of ``cuda.h``, so that it works
alike under every cuda-bindings version. :func:`encode_arguments` is the pure part (checked
without a GPU); :class:`Encoder` calls the driver.
"""

from __future__ import annotations

import ctypes
import ctypes.util

from quartet.errors import QuartetError
from quartet.runtime.manifest import TENSORMAP_BYTES, TensorMapArg

#: CUtensorMapDataType by element type (bit-for-bit: a copy moves bytes, so signed integers use
#: their unsigned twins and booleans bytes)
DATA_TYPES = {
    "uint8": 0, "int8": 0, "bool": 0, "uint16": 1, "int16": 1, "uint32": 2, "int32": 3,
    "uint64": 4, "int64": 5, "float16": 6, "float32": 7, "float64": 8, "bfloat16": 9,
}
#: CUtensorMapSwizzle by span in bytes
SWIZZLES = {0: 0, 32: 1, 64: 2, 128: 3}
INTERLEAVE_NONE = 0
L2_PROMOTION_128B = 2
OOB_FILL_ZERO = 0          # CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE: elements past the dims read 0
ALIGNMENT = 16             # globalAddress


def encode_arguments(arg: TensorMapArg, address: int) -> tuple:
    """The arguments of ``cuTensorMapEncodeTiled`` after the output pointer: (data type, rank,
    address, dims, strides, box, element strides, interleave, swizzle, L2 promotion, fill)."""
    if address % ALIGNMENT:
        raise QuartetError(f"buffer {arg.buffer!r} + {arg.offset} is read through a tensor map, "
                           f"which needs a {ALIGNMENT}-byte aligned address (got {address:#x})")
    if arg.dtype not in DATA_TYPES:
        raise QuartetError(f"a tensor map cannot describe {arg.dtype} elements")
    rank = len(arg.dims)
    return (DATA_TYPES[arg.dtype], rank, address, tuple(arg.dims), tuple(arg.strides),
            tuple(arg.box), (1,) * rank, INTERLEAVE_NONE, SWIZZLES[arg.swizzle],
            L2_PROMOTION_128B, OOB_FILL_ZERO)


class Encoder:
    """``cuTensorMapEncodeTiled`` of the driver library: 128-byte maps as ``bytes``."""

    def __init__(self):
        name = ctypes.util.find_library("cuda") or "libcuda.so.1"
        try:
            lib = ctypes.CDLL(name)
        except OSError as e:
            raise QuartetError(f"tensor maps need the CUDA driver library ({name}: {e})") from None
        f = lib.cuTensorMapEncodeTiled
        u32, u64 = ctypes.c_uint32, ctypes.c_uint64
        f.restype = ctypes.c_int
        f.argtypes = [ctypes.c_void_p, ctypes.c_int, u32, ctypes.c_void_p, ctypes.POINTER(u64),
                      ctypes.POINTER(u64), ctypes.POINTER(u32), ctypes.POINTER(u32),
                      ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int]
        self._encode = f
        # the map must be written to a 64-byte aligned address
        self._raw = ctypes.create_string_buffer(TENSORMAP_BYTES + 64)
        self._out = (ctypes.addressof(self._raw) + 63) // 64 * 64

    def __call__(self, arg: TensorMapArg, address: int) -> bytes:
        (dtype, rank, addr, dims, strides, box, estrides, interleave, swizzle, l2,
         fill) = encode_arguments(arg, address)
        u32, u64 = ctypes.c_uint32, ctypes.c_uint64
        err = self._encode(self._out, dtype, rank, addr, (u64 * rank)(*dims),
                           (u64 * max(1, rank - 1))(*strides), (u32 * rank)(*box),
                           (u32 * rank)(*estrides), interleave, swizzle, l2, fill)
        if err:
            raise QuartetError(
                f"cuTensorMapEncodeTiled refused the tensor map of buffer {arg.buffer!r} "
                f"(CUresult {err}): {arg.dtype} dims {list(dims)}, strides {list(strides)}, "
                f"box {list(box)}, swizzle {arg.swizzle}, address {address:#x}")
        return ctypes.string_at(self._out, TENSORMAP_BYTES)

