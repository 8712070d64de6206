"""The kernel families: each builds the block program of a configured ``quartet.tile``.

| family | module | takes |
|---|---|---|
| ``gemm`` | ``gemm.py`` (+ ``gemm_tc.py``: wgmma / mma.sync, ``gemm_simt.py``: CUDA cores) | matmul, batch_matmul, mixed-precision contractions, implicit-GEMM conv2d, with a fill and element-wise epilogues |
| ``row`` | ``rows.py`` | element-wise chains (flat 16-byte vectors) and row programs (softmax, layer norm, reductions over the innermost loop) |
| ``colreduce`` | ``colreduce.py`` | one reduction over outer loops |
| ``fallback`` | ``fallback.py`` | any single linalg op, through upstream transform-dialect tiling |
| ``fused`` | ``fused.py`` (+ ``fused_attention.py``, ``fused_rows.py``) | tiles Welder merged across iteration spaces: attention, a GEMM with a row program |

Which family takes a tile is the passes' decision (``passes/analysis/kernels.py`` records it in
the tile's ``kernel`` attribute); :func:`build_block_program` builds that family. A tile without
the attribute (hand-written IR) gets the first family whose own analysis takes it, in the order
above. Every family builds a function holding one ``gpu.launch``, which
:func:`~quartet.lowering.compose.block_program.from_launch` turns into the block program.
"""

from __future__ import annotations

from mlir import ir

from quartet.errors import QuartetError, location_of
from quartet.runtime import targets
from quartet.runtime.targets import Chip

from ..compose.block_program import BlockProgram, from_launch
from . import colreduce, fallback, fused, gemm, rows
from .common import Unsupported, kernel_inputs

__all__ = ["BlockProgram", "FAMILIES", "Unsupported", "build_block_program", "family_of",
           "kernel_inputs", "simt_plan"]

FAMILIES = ("gemm", "row", "colreduce", "fallback", "fused")


def simt_plan(tile) -> tuple[str, object]:
    """(family, its analysis) of the first SIMT family that takes ``tile``; ``Unsupported``
    naming every family's reason when none does."""
    reasons = []
    for family, analyze in (("row", rows.analyze_rows),
                            ("colreduce", colreduce.analyze_colreduce),
                            ("fallback", fallback.analyze_fallback)):
        try:
            return family, analyze(tile)
        except Unsupported as e:
            reasons.append(f"{family}: {e}")
    raise Unsupported("; ".join(reasons))


def gemm_takes(tile, chip: Chip) -> bool:
    """Whether the GEMM family builds ``tile`` on ``chip``."""
    return gemm.takes_chip(chip) and gemm.supports(tile, chip) is True


def family_of(tile, chip: Chip, allow_gemm: bool = True) -> str:
    """The family that builds ``tile``: its recorded verdict, else the first that takes it."""
    if tile.kernel is not None and (allow_gemm or tile.kernel != "gemm"):
        return tile.kernel
    if allow_gemm and gemm_takes(tile, chip):
        return "gemm"
    try:
        return simt_plan(tile)[0]
    except Unsupported as e:
        raise QuartetError(f"no kernel for '{_root_name(tile)}': {e}",
                           location_of(tile.operation)) from None


def build_block_program(tile, chip, name: str, family: str | None = None) -> BlockProgram:
    """The block program ``name`` of ``tile`` for ``chip`` (a :class:`Chip` or target name),
    built by ``family`` (default: :func:`family_of`)."""
    chip = targets.get(chip)
    family = family or family_of(tile, chip)
    with tile.operation.context, tile.operation.location:
        if family == "fused":
            module = fused.build_fused_kernel(tile, chip, name)
            pattern = ir.StringAttr(tile.operation.attributes["welder.pattern"]).value \
                if "welder.pattern" in tile.operation.attributes else "fused"
            return from_launch(module, name, f"fused:{pattern}")
        if family == "gemm":
            module = gemm.build_gemm_kernel(tile, chip, name=name)
            engine = [op for op in module.body.operations][0].attributes["quartet.engine"]
            return from_launch(module, name, f"gemm:{ir.StringAttr(engine).value}")
        analyses = {"row": rows.analyze_rows, "colreduce": colreduce.analyze_colreduce,
                    "fallback": fallback.analyze_fallback}
        if family not in analyses:
            raise QuartetError(f"unknown kernel family '{family}' (known: {', '.join(FAMILIES)})",
                               location_of(tile.operation))
        builders = {"row": rows.build_row_kernel, "colreduce": colreduce.build_colreduce_kernel,
                    "fallback": fallback.build_fallback_kernel}
        try:
            module, _ = builders[family](tile, chip, analyses[family](tile), name)
        except Unsupported as e:
            # A row or column-reduction body the builder refuses after its analysis took it
            # (linalg.index or tensor.extract in a body: flip, interpolate) goes to the fallback.
            if family == "fallback":
                raise QuartetError(f"no {family} kernel for '{_root_name(tile)}': {e}",
                                   location_of(tile.operation)) from None
            try:
                module, _ = fallback.build_fallback_kernel(tile, chip,
                                                           fallback.analyze_fallback(tile), name)
            except Unsupported:
                raise QuartetError(f"no {family} kernel for '{_root_name(tile)}': {e}",
                                   location_of(tile.operation)) from None
            family = "fallback"
        return from_launch(module, name, family)


def _root_name(tile) -> str:
    try:
        return tile.root.operation.name
    except ValueError:
        return "quartet.tile"
