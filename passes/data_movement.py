"""``quartet-outline-data-movement``: host data movement that no view expresses becomes tiles.

The GPU lowering turns ``tensor.pad``, strided ``tensor.extract_slice`` and concatenations of
strided slices into gather tiles of their own (``lowering/prepare.py``) just before building
kernels, and copies the operands of a contiguous concatenation that no tile writes in place.
Rammer schedules tiles before the lowering, and a persistent kernel has no host copies, so its
pipeline makes these ops tiles first - a pad in front of a 3x3 convolution is then one more task
beside the others instead of a boundary between two kernels:

* ``tensor.pad``, non-contiguous ``tensor.extract_slice`` -> gather tiles;
* ``tensor.concat`` -> a gather tile, unless its slices are contiguous runs of the result and
  every operand is a tile's result that can write its slice in place (what the host plan then
  does, ``lowering/host.py``).

The new tiles carry no schedule: ``roller-config`` (after this pass in ``rammer``) gives them
one. Runs inside ``scf`` regions too. Assumes static shapes (dynamic ones are one-line errors).
"""

from __future__ import annotations

from dataclasses import dataclass

from mlir import ir

from quartet.lowering.prepare import outline_data_movement

from .base import ModulePass


@dataclass(frozen=True)
class OutlineDataMovement(ModulePass):
    name = "quartet-outline-data-movement"
    summary = ("pads, strided slices and concatenations that are not written in place become "
               "gather tiles (what a persistent kernel needs: no host copies)")

    def apply(self, module) -> None:
        op = module.operation if hasattr(module, "operation") else module
        with op.context, ir.Location.unknown():
            for fn in op.regions[0].blocks[0].operations:
                if fn.operation.name == "func.func" and len(fn.regions[0].blocks):
                    outline_data_movement(fn.operation, concats="copied")
