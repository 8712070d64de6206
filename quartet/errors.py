"""User-facing errors.

Every mistake a user can make (bad IR, an unknown pass, a shape a kernel cannot take, a corrupt
artifact) is raised as a :class:`QuartetError`. The tools print it as one line,
``<location>: error: <message>``, and exit with status 1; they never show a traceback for it.
Internal bugs stay ordinary exceptions so that they are not mistaken for user mistakes.
"""

from __future__ import annotations


class QuartetError(Exception):
    """A user mistake, reported as one line that names the problem and where it is."""

    def __init__(self, message: str, location: str | None = None):
        super().__init__(message)
        self.message = message
        self.location = location

    def __str__(self) -> str:
        where = f"{self.location}: " if self.location else ""
        return f"{where}error: {self.message}"


class BoundWarning(UserWarning):
    """A loop stopped at the bound its compilation gave it (``grinder{max_iterations=N}``) with
    its predicate still true: the result is the state after that many iterations."""


def location_of(op) -> str | None:
    """``file:line:col`` of an MLIR operation (or value's owner), or None when it has none.

    Works on ``mlir.ir.Location`` objects and on ops; imports nothing from MLIR itself so the
    runtime can import this module too.
    """
    loc = getattr(op, "location", op)
    text = str(loc)
    # Forms: loc("file":3:7), loc(callsite(... at "file":3:7)), loc(fused[...]), loc(unknown)
    import re

    m = re.search(r'"([^"]*)":(\d+):(\d+)', text)
    if not m:
        return None
    return f"{m.group(1)}:{m.group(2)}:{m.group(3)}"
