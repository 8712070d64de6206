"""Element types shared by the artifact format and the runtime.

One vocabulary names the element type of a tensor (an input, an output, a weight), of a scalar
kernel argument and of a predicate: the numpy spellings ``float32``, ``int64``, ``bool``... plus
``bfloat16``, which numpy spells only through the optional ``ml_dtypes`` package. Conversions to
numpy, ctypes and torch types live here so that no other module guesses sizes.

torch and ml_dtypes are optional: they are imported only when a caller asks for their types.
"""

from __future__ import annotations

import ctypes
import sys

import numpy as np

from quartet.errors import QuartetError

#: element type name -> size in bytes
ITEMSIZE: dict[str, int] = {
    "bool": 1,
    "int8": 1,
    "uint8": 1,
    "int16": 2,
    "uint16": 2,
    "int32": 4,
    "uint32": 4,
    "int64": 8,
    "uint64": 8,
    "float16": 2,
    "bfloat16": 2,
    "float32": 4,
    "float64": 8,
}

#: the types a scalar kernel argument may have, with the C type it is passed as
SCALAR_CTYPES: dict[str, type] = {
    "int8": ctypes.c_int8,
    "uint8": ctypes.c_uint8,
    "int16": ctypes.c_int16,
    "uint16": ctypes.c_uint16,
    "int32": ctypes.c_int32,
    "uint32": ctypes.c_uint32,
    "int64": ctypes.c_int64,
    "uint64": ctypes.c_uint64,
    "float32": ctypes.c_float,
    "float64": ctypes.c_double,
}

INTEGER_TYPES = frozenset(n for n in SCALAR_CTYPES if "int" in n)
FLOAT_TYPES = frozenset(("float32", "float64"))

#: the types a predicate (a one-element device buffer read by ``if``/``while``) may have
PREDICATE_TYPES = frozenset(("bool", *SCALAR_CTYPES))

_TORCH_NAMES = {
    "bool": "bool",
    "int8": "int8",
    "uint8": "uint8",
    "int16": "int16",
    "uint16": "uint16",
    "int32": "int32",
    "uint32": "uint32",
    "int64": "int64",
    "uint64": "uint64",
    "float16": "float16",
    "bfloat16": "bfloat16",
    "float32": "float32",
    "float64": "float64",
}


#: MLIR element type (as printed) -> element type name. Signless MLIR integers are signed here;
#: ``ui8`` is the unsigned byte torch's ``uint8`` imports as.
MLIR_NAMES: dict[str, str] = {
    "i1": "bool",
    "i8": "int8",
    "ui8": "uint8",
    "i16": "int16",
    "ui16": "uint16",
    "i32": "int32",
    "ui32": "uint32",
    "i64": "int64",
    "ui64": "uint64",
    "f16": "float16",
    "bf16": "bfloat16",
    "f32": "float32",
    "f64": "float64",
}


def mlir_name_to_dtype(mlir_name: str) -> str:
    """The element type name of an MLIR element type (``f16`` -> ``float16``); unknown types
    come back unchanged (the caller reports them where it knows the location)."""
    return MLIR_NAMES.get(mlir_name, mlir_name)


def check_dtype(name: object, where: str) -> str:
    """Return ``name`` if it is a known element type, else raise a QuartetError naming ``where``."""
    if not isinstance(name, str) or name not in ITEMSIZE:
        known = ", ".join(ITEMSIZE)
        raise QuartetError(f"{where}: unknown element type {name!r} (known: {known})")
    return name


def numpy_dtype(name: str) -> np.dtype:
    """The numpy dtype for an element type; bfloat16 needs the ``ml_dtypes`` package."""
    if name == "bfloat16":
        try:
            import ml_dtypes
        except ImportError:
            raise QuartetError(
                "bfloat16 tensors need torch tensors or the ml_dtypes package for numpy"
            ) from None
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def name_of_numpy(dtype: np.dtype) -> str:
    """The element type name of a numpy dtype (``str(dtype)`` for every type we know)."""
    return str(np.dtype(dtype))


def torch_dtype(name: str):
    """The torch dtype for an element type (torch must be importable)."""
    import torch

    return getattr(torch, _TORCH_NAMES[name])


def name_of_torch(dtype) -> str:
    """The element type name of a torch dtype, e.g. ``torch.float32`` -> ``float32``."""
    return str(dtype).removeprefix("torch.")


def is_torch_tensor(value: object) -> bool:
    """True for a torch.Tensor, without importing torch when the caller never did."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)
