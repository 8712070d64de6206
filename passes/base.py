"""The base of every Quartet pass: a frozen dataclass whose fields are its options.

A pass names itself in ``name``, says what it does in one line in ``summary`` and rewrites a
``builtin.module`` in ``apply`` (xDSL's passes-as-data). Passes do not register themselves: the
driver (``driver/catalog.py``), which sits above the passes and the lowering, lists them, so
that no pass module needs to know about the pipelines that use it.
"""

from __future__ import annotations

from typing import ClassVar


class ModulePass:
    """Base of every Quartet pass: options are dataclass fields, the work is ``apply``."""

    name: ClassVar[str]
    summary: ClassVar[str]

    def apply(self, module) -> None:  # module: mlir.ir.Operation (builtin.module)
        raise NotImplementedError


def format_value(value) -> str:
    """An option value as pipeline text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
