"""Reading a ``quartet.uvirtual`` for the lowering: its tasks and what each one waits for.

The tasks are the region's ``quartet.vtask``s in order (the execution order every vEU walks);
a task depends on the tasks whose results its tile reads, directly or through the views of the
region (reshapes, contiguous slices, concatenations written in place). The vtask's attributes
place it on the vEUs; ``sync`` on the uvirtual says how tasks wait (``counters`` when absent).
The passes record the schedule; this module reads it the same way for the kernel builder
(``build.py``), the host plan (``host.py``) and ``rammer-check``.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlir import ir

from quartet.dialects import captures, defining_op
from quartet.errors import QuartetError, location_of

#: ops a uvirtual's region may hold besides vtasks (views of task results, constants)
REGION_VIEWS = ("tensor.expand_shape", "tensor.collapse_shape", "tensor.extract_slice",
                "tensor.concat")
REGION_FREE = ("arith.constant", "tensor.empty", "gpu.yield")


@dataclass
class UTask:
    vtask: ir.Operation
    tile: object                    # TileOp
    veu_begin: int
    veu_count: int
    step: int
    deps: tuple[int, ...]

    @property
    def name(self) -> str:
        try:
            root = self.tile.root.operation
            return f"{root.name} at {location_of(self.vtask) or '?'}"
        except ValueError:
            return f"quartet.tile at {location_of(self.vtask) or '?'}"


def sync_of(uv) -> str:
    attrs = uv.operation.attributes
    return ir.StringAttr(attrs["sync"]).value if "sync" in attrs else "counters"


def num_veus(uv) -> int:
    return ir.IntegerAttr(uv.operation.attributes["num_veus"]).value


def tasks_of(uv) -> list[UTask]:
    """The tasks of ``uv`` in execution order; a QuartetError for an op a persistent kernel
    cannot hold."""
    block = uv.operation.regions[0].blocks[0]
    index: dict = {}
    tasks: list[UTask] = []
    for op in block.operations:
        op = op.operation
        if op.name == "quartet.vtask":
            inner = [o.operation for o in op.regions[0].blocks[0].operations]
            tiles = [o for o in inner if o.name == "quartet.tile"]
            if len(tiles) != 1 or any(o.name not in ("quartet.tile", "gpu.yield")
                                      for o in inner):
                raise QuartetError("a quartet.vtask of a persistent kernel holds one "
                                   "quartet.tile", location_of(op))
            tile = tiles[0].opview
            deps: set[int] = set()
            for v in captures(tile):
                deps |= _producers(v, index, set())
            attrs = op.attributes
            tasks.append(UTask(op, tile, ir.IntegerAttr(attrs["veu_begin"]).value,
                               ir.IntegerAttr(attrs["veu_count"]).value,
                               ir.IntegerAttr(attrs["step"]).value, tuple(sorted(deps))))
            for r in op.results:
                index[r] = len(tasks) - 1
        elif op.name not in REGION_VIEWS + REGION_FREE:
            raise QuartetError(f"'{op.name}' in a quartet.uvirtual cannot be lowered into a "
                               f"persistent kernel (it holds vtasks, views and constants)",
                               location_of(op))
    return tasks


def _producers(value: ir.Value, index: dict, seen: set) -> set[int]:
    if value in index:
        return {index[value]}
    op = defining_op(value)
    if op is None or op.name not in REGION_VIEWS or value in seen:
        return set()
    seen.add(value)
    found: set[int] = set()
    for operand in op.operands:
        found |= _producers(operand, index, seen)
    return found
