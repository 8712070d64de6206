"""The Quartet dialect (``quartet.dialects``).

``context()`` gives a Context with the dialect loaded and every Quartet class registered;
``load(ctx)`` loads it into an existing one. Op classes: ``TileOp``, ``VTaskOp``,
``UVirtualOp``; regions end in ``gpu.yield`` (``yield_``) (``dialects/quartet.py``); extra verification: ``verify(module)``.
"""

from mlir import ir
from mlir.dialects._ods_common import _cext

from .quartet import (  # noqa: F401  (registers the classes)
    MEMORY_LEVELS,
    TILE_SCHEDULE_ATTRS,
    KERNEL_FAMILIES,
    UVIRTUAL_GROUPS,
    TileOp,
    UVirtualOp,
    VTaskOp,
    captures,
    collect,
    defining_op,
    remap,
    result_groups,
    load,
    tile,
    uvirtual,
    vtask,
    yield_,
    anchor_of,
)
from .verify import verify  # noqa: F401

# Parsed IR hands back our classes only once MLIR can find a module named `quartet` to import.
_cext.globals.append_dialect_search_prefix(__name__)


def context() -> ir.Context:
    """A new Context with the Quartet dialect loaded and errors reported as diagnostics."""
    ctx = ir.Context()
    ctx.emit_error_diagnostics = True
    load(ctx)
    return ctx
