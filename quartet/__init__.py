"""Quartet: Roller, Welder, Grinder and Rammer on one MLIR dialect.

The layers live in top-level folders mapped to ``quartet.<folder>`` by pyproject.toml:
``dialects`` (the IR), ``passes`` (the four compilers), ``lowering`` (to kernels and binaries),
``runtime`` (runs artifacts; imports no MLIR), ``frontend`` (PyTorch import, ``quartet.compile``)
and ``tools`` (command-line programs). Importing ``quartet`` itself loads nothing heavy:
``quartet.compile`` and ``quartet.CompiledModule`` are looked up on first use (PEP 562), and
the torch.compile backend ``"quartet"`` is found by torch through the package's
``torch_dynamo_backends`` entry point.
"""

__version__ = "0.1.0"

_LAZY = {"compile": "quartet.frontend.compile", "CompiledModule": "quartet.frontend.compile"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'quartet' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_LAZY])
