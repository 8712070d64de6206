"""Which block program takes a tile: the verdict the passes record for the lowering to read.

A tile becomes one kernel over one iteration space when a kernel family of the lowering takes
it: a GEMM or implicit-GEMM convolution with its fill and element-wise epilogues (``gemm``), a
row program - element-wise chains and reductions along the innermost loop broadcast back, as in
softmax and layer norm (``row``) -, a reduction over outer loops (``colreduce``), or any single
linalg op through upstream tiling (``fallback``). The families' own structural analyses say
what each can build (``quartet.lowering.kernels``: this layer may ask the one below it); this
module adds what only the passes know - the chip (no GEMM family on gfx942), the preference
order, and which families count as "one operator" for Roller's fusion - and records the verdict
in the tile's ``kernel`` attribute (:func:`record`), which ``lowering/kernels`` obeys.

Used by ``roller-fuse`` (a merge must stay one kernel) and ``roller-config`` (every configured
tile gets its verdict).
"""

from __future__ import annotations

from mlir import ir

from quartet.dialects import TileOp
from quartet.lowering import kernels
from quartet.lowering.kernels import colreduce, fused, gemm_problem, rows
from quartet.runtime import targets
from quartet.runtime.targets import Chip


def _gemm_family(chip: Chip) -> bool:
    """Whether the chip has the GEMM family (the CPU lowering takes any tile of linalg ops)."""
    return chip.kind == "cpu" or kernels.gemm.takes_chip(chip)


def single_kernel(tile: TileOp, target="sm_90") -> str | None:
    """The family that takes ``tile`` as one kernel over one iteration space ('gemm', 'row',
    'colreduce') on ``target`` (a name or :class:`Chip`), or None. A GEMM with a fused fill or
    epilogue needs the GEMM family (not on gfx942)."""
    chip = targets.get(target)
    if not isinstance(gemm_problem.analyze(tile), str):
        return "gemm" if _gemm_family(chip) else None
    for family, analyze in (("row", rows.analyze_rows),
                            ("colreduce", colreduce.analyze_colreduce)):
        try:
            analyze(tile)
            return family
        except kernels.Unsupported:
            pass
    return None


def row_program(tile: TileOp):
    """The row program of ``tile`` (``lowering/kernels/rows.py``'s analysis), or None."""
    try:
        return rows.analyze_rows(tile)
    except kernels.Unsupported:
        return None


def verdict(tile: TileOp, chip: Chip) -> str | None:
    """The family that will build ``tile`` on ``chip`` (a GPU chip), or None if none does:
    the GEMM family, a SIMT family, or a fused pattern of a tile Welder merged across
    iteration spaces (``fused``)."""
    if kernels.gemm_takes(tile, chip):
        return "gemm"
    try:
        return kernels.simt_plan(tile)[0]
    except kernels.Unsupported:
        pass
    return "fused" if fused_pattern(tile, chip) is not None else None


def fused_pattern(tile: TileOp, chip: Chip) -> str | None:
    """The fused pattern (``lowering/kernels/fused.py``) that builds ``tile``, or None."""
    try:
        return fused.analyze(tile, chip).pattern
    except kernels.Unsupported:
        return None


def record(tile: TileOp, chip: Chip) -> None:
    """Write the verdict in the tile's ``kernel`` attribute (nothing for the CPU target, whose
    lowering takes any tile, or when no family takes the tile: the lowering then names why)."""
    if not chip.is_gpu:
        return
    family = verdict(tile, chip)
    if family is not None:
        with tile.operation.context:
            tile.operation.attributes["kernel"] = ir.StringAttr.get(family)
