"""Quartet: Roller, Welder, Grinder and Rammer on one MLIR dialect.

The layers live in top-level folders mapped to ``quartet.<folder>`` by pyproject.toml:
``dialects`` (the IR), ``passes`` (the four compilers), ``lowering`` (to kernels and binaries),
``runtime`` (runs artifacts; imports no MLIR), ``frontend`` (PyTorch import, ``quartet.compile``)
and ``tools`` (command-line programs). Importing ``quartet`` itself loads nothing heavy.
"""

__version__ = "0.1.0"
