"""``welder-fuse{target=sm_90 chip= verbose=false tuning=}``: tile-graph fusion (Welder, OSDI'23).

Runs after ``roller-config``, on configured tiles (one per operator). For each block: the tile
graph (``graph.py``), the greedy grouping by estimated latency (``group.py``, with the cost
model of ``cost.py`` or the times of a tuning record, ``record.py``), then each group of several
tiles is merged into one ``quartet.tile`` that computes the group's results from its operators'
ops and the views between them. The merged tile says what it is:

* ``kernel``: the block program that builds it - ``fused`` for the patterns of
  ``lowering/kernels/fused.py`` (``welder.pattern``: ``attention``, ``gemm_rows``; the chosen
  configuration in ``welder.params``), or a Roller family when the merge stays inside one
  iteration space (``gemm`` with an epilogue, ``row``), which then gets Roller's schedule;
* ``edge_levels``: per linalg op other than the root, where its result lives in the fused
  kernel: 2 registers, 1 shared memory (the GEMM rows a row program reads, a transposed input
  staged in shared memory); ``welder.root_level`` the same for the root op when its result
  stays inside the tile and not in registers;
* ``block_tile`` / ``thread_tile`` / ``threads`` / ``grid``: the root op's loop box for one
  block, from propagating the group's output tile back (``propagate.py``), and the kernel's
  threads;
* ``welder.bytes``: the model's global-memory bytes of the kernel, ``welder.bytes_unfused``: of
  its tiles run apart, ``welder.tiles``: how many tiles it merged, ``welder.model_us``: its
  estimated latency. Tiles left alone get them too, so a module's kernels and bytes before and
  after fusion can be read from the IR (``bench/build.py`` does).

``verbose=true`` (or ``QUARTET_WELDER_VERBOSE=1``) prints every decision to stderr: which
groups were formed and why a consumer was not taken (no kernel family builds the group; its
footprint does not fit any configuration; fusion would be slower). A refusal is never an error:
the smaller group is built instead.

On the CPU target the groups are chosen as for ``sm_90`` (the chip the tiles would run on), so
that the CPU lowering, which takes any tile of linalg ops, checks the numerics of the very
groups a GPU build makes.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass

from mlir import ir

from quartet.dialects import TileOp, linalg_info
from quartet.lowering.kernels import fused
from quartet.passes.analysis import kernels as kernel_analysis
from quartet.passes.base import ModulePass
from quartet.passes.roller import config as roller_config
from quartet.passes.roller.fuse import edge_levels as roller_edge_levels
from quartet.runtime import targets

from . import cost
from .graph import TileGraph, tiles_by_block
from .group import Candidate, Grouper, _anchor_box, commit, merged_tile
from .propagate import affine_maps, propagate
from .record import Record


def _i64(v: int) -> ir.IntegerAttr:
    return ir.IntegerAttr.get(ir.IntegerType.get_signless(64), int(v))


def _f64(v: float) -> ir.FloatAttr:
    return ir.FloatAttr.get(ir.F64Type.get(), float(v))


def write_fused(tile: TileOp, chip, params: dict) -> None:
    """Attributes of a tile merged for a fused pattern (module docstring), at the
    configuration ``params`` (the first one the pattern offers if it offers no such)."""
    plan = fused.analyze(tile, chip)
    choice = next((c for c in plan.choices if c.params == params), plan.choices[0])
    ops = list(tile.computation)
    boxes = cost.output_boxes(ops, plan.anchor, _anchor_box(plan.anchor, choice.anchor_tile),
                              list(tile.terminator.operands))
    prop = propagate(ops, boxes)
    root = tile.root.operation
    _, kinds, ranges = affine_maps(root)
    box = prop.loops.get(root)
    block = [hi - lo + 1 for lo, hi in box] if box is not None else list(ranges)
    block = [r if k == "reduction" else b for b, k, r in zip(block, kinds, ranges)]
    attrs = tile.operation.attributes
    attrs["block_tile"] = ir.DenseI64ArrayAttr.get(block)
    attrs["thread_tile"] = ir.DenseI64ArrayAttr.get(block)
    attrs["threads"] = _i64(choice.threads)
    attrs["grid"] = ir.DenseI64ArrayAttr.get(
        [-(-r // b) for b, k, r in zip(block, kinds, ranges) if k == "parallel"])
    attrs["tensor_core"] = ir.BoolAttr.get(choice.engine != "simt")
    linalg = [o for o in ops if linalg_info.is_linalg(o)]
    attrs["edge_levels"] = ir.DenseI64ArrayAttr.get(
        [plan.levels.get(o, 2) for o in linalg if o != root])
    if root in plan.levels and plan.levels[root] != 2 and \
            any(True for r in root.results for _ in r.uses):
        attrs["welder.root_level"] = _i64(plan.levels[root])   # the root's result is internal
    attrs["kernel"] = ir.StringAttr.get("fused")
    attrs["welder.pattern"] = ir.StringAttr.get(plan.pattern)
    attrs[fused.PARAMS_ATTR] = fused.params_attr(choice.params)


def write_roller(tile: TileOp, chip, family: str) -> None:
    """Attributes of a merge one Roller family builds: Roller's schedule and verdict."""
    hw = chip
    roller_config.write_schedule(tile, roller_config.configure(tile, hw), hw)
    kernel_analysis.record(tile, hw)
    tile.operation.attributes["edge_levels"] = ir.DenseI64ArrayAttr.get(
        roller_edge_levels(tile, family))


def configure(tile: TileOp, chip, family: str, params: dict) -> None:
    """The attributes of a merged tile built by ``family`` (a fused pattern at ``params``, or a
    Roller family)."""
    if family.startswith("fused:"):
        write_fused(tile, chip, params)
    else:
        write_roller(tile, chip, family)


def _label(nodes) -> str:
    return ", ".join(f"#{n.index} {n.name}" for n in sorted(nodes, key=lambda n: n.index))


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


@dataclass(frozen=True)
class WelderFuse(ModulePass):
    name = "welder-fuse"
    summary = ("Welder: group configured tiles by estimated latency (cost model or tuning "
               "record) and merge each group into one tile that keeps its intermediates on chip")

    target: str = "sm_90"
    chip: str = ""
    verbose: bool = False
    tuning: str = ""              # a tuning record (record.py); QUARTET_WELDER_TUNING also

    def __post_init__(self):
        targets.get(self.target, self.chip or None)

    def pricing_chip(self):
        hw = targets.get(self.target, self.chip or None)
        return hw if hw.is_gpu else targets.get("sm_90")

    def apply(self, module) -> None:
        chip = self.pricing_chip()
        target_chip = targets.get(self.target, self.chip or None)
        path = self.tuning or os.environ.get("QUARTET_WELDER_TUNING", "")
        record = Record.load(path) if path else None
        verbose = self.verbose or os.environ.get("QUARTET_WELDER_VERBOSE", "") not in ("", "0")
        with module.context, ir.Location.unknown():
            for block_tiles in tiles_by_block(module):
                graph = TileGraph(block_tiles)
                grouper = Grouper(graph, chip, record)
                groups = grouper.run()
                if verbose:
                    self._report(grouper, groups)
                for cand in groups:
                    self._emit(graph, grouper, cand, chip, target_chip)

    def _emit(self, graph, grouper, cand: Candidate, chip, target_chip) -> None:
        unfused = sum(grouper.single(n).estimate.global_bytes for n in cand.nodes)
        if len(cand.nodes) == 1:
            tile = cand.nodes[0].tile
        else:
            tile = merged_tile(graph, cand.nodes)
            commit(graph, cand.nodes, tile)
            configure(tile, chip, cand.family, cand.params)
            if not target_chip.is_gpu:
                for name in ("kernel",):
                    if name in tile.operation.attributes:
                        del tile.operation.attributes[name]
                tile.operation.attributes["target"] = ir.StringAttr.get(target_chip.target)
        attrs = tile.operation.attributes
        attrs["welder.bytes"] = _i64(cand.estimate.global_bytes)
        attrs["welder.bytes_unfused"] = _i64(unfused)
        attrs["welder.tiles"] = _i64(len(cand.nodes))
        if math.isfinite(cand.latency):
            attrs["welder.model_us"] = _f64(round(cand.latency * 1e6, 3))

    def _report(self, grouper, groups) -> None:
        for d in grouper.decisions:
            verdict = "fused" if d.accepted else "not fused"
            print(f"welder: {verdict}: tiles {d.group} + {d.offered}: {d.why}", file=sys.stderr)
        for cand in groups:
            if len(cand.nodes) > 1:
                unfused = sum(grouper.single(n).estimate.global_bytes for n in cand.nodes)
                src = "measured" if cand.measured else "model"
                print(f"welder: group [{_label(cand.nodes)}] -> {cand.family} {cand.params} "
                      f"({src} {cand.latency * 1e6:.1f} us; global {_mb(unfused)} -> "
                      f"{_mb(cand.estimate.global_bytes)})", file=sys.stderr)
