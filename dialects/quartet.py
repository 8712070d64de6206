"""The Quartet dialect: ``quartet.tile``, ``quartet.vtask``, ``quartet.uvirtual``.

The ops are defined in IRDL (``IRDL_SOURCE`` below) and loaded into a Context with
``mlir.dialects.irdl.load_dialects``; the Python classes here are registered the way generated
``_ops_gen.py`` files register theirs, so that builders return them and parsed IR hands them back
(``quartet.dialects`` is added as a dialect search prefix, and this module is named ``quartet``).

Semantics (DESIGN.md):

* ``quartet.tile`` - a tensor computation with its tile program (Roller's rTile/rProgram). Its
  region is one block of linalg ops on tensors that read tensors of the enclosing function
  (its inputs), ended by ``quartet.yield``. Schedule attributes (``block_tile``, ``thread_tile``,
  ``smem_padding``, ``tensor_core``, ``target``, Welder's ``edge_levels``) never change what is
  computed.
* ``quartet.vtask`` - the thread blocks of one tile placed on vEUs ``[veu_begin, veu_begin +
  veu_count)`` of the enclosing ``quartet.uvirtual`` at schedule step ``step`` (Rammer's rTask).
* ``quartet.uvirtual`` - a persistent device program on ``num_veus`` virtual execution units
  (Rammer's vDevice made control-flow aware as in Grinder): a region of vtasks and structured
  control flow. Its results come in :data:`UVIRTUAL_GROUPS` groups, each of one type (the
  ``resultSegmentSizes`` attribute; a loop carries values of several types).
The regions end in ``gpu.yield``, whose operands are the parent's results. A ``quartet.yield``
cannot exist: IRDL ops carry no traits in MLIR 22, so an IRDL-defined yield is not a terminator,
and MLIR's own verifier rejects every block that does not end in one ("block with no
terminator"); an unknown op in an IRDL dialect is refused at parse time. ``gpu.yield`` is the
upstream terminator that takes any values and names no parent.

IRDL checks result kinds, region counts and required attributes; what it cannot check
(per-loop attribute lengths, vEU ranges, yield types, parents) is checked in ``verify.py``.
IRDL ops print in generic form only.
"""

from __future__ import annotations

from typing import Sequence

from mlir import ir
from mlir.dialects import gpu, irdl
from mlir.dialects._ods_common import _cext

IRDL_SOURCE = r"""
irdl.dialect @quartet {
  irdl.operation @tile {
    %tensor = irdl.base "!builtin.tensor"
    irdl.results(outputs: variadic %tensor)
    %body = irdl.region with size 1
    irdl.regions(body: %body)
  }
  irdl.operation @vtask {
    %tensor = irdl.base "!builtin.tensor"
    %begin = irdl.base "#builtin.integer"
    %count = irdl.base "#builtin.integer"
    %step = irdl.base "#builtin.integer"
    irdl.attributes {"veu_begin" = %begin, "veu_count" = %count, "step" = %step}
    irdl.results(outputs: variadic %tensor)
    %body = irdl.region with size 1
    irdl.regions(body: %body)
  }
  irdl.operation @uvirtual {
%GROUPS%
    %int = irdl.base "#builtin.integer"
    irdl.attributes {"num_veus" = %int}
    irdl.results(%RESULTS%)
    %body = irdl.region with size 1
    irdl.regions(body: %body)
  }
}
"""

#: result groups of a ``quartet.uvirtual``: IRDL binds one constraint variable across a variadic
#: segment, so each group holds results of one type, and a uvirtual's results are at most this
#: many runs of equal types (its ``resultSegmentSizes`` attribute gives each group's length).
UVIRTUAL_GROUPS = 8
IRDL_SOURCE = IRDL_SOURCE.replace("%GROUPS%", "\n".join(
    f"    %any{i} = irdl.any" for i in range(UVIRTUAL_GROUPS))).replace(
    "%RESULTS%", ", ".join(f"group{i}: variadic %any{i}" for i in range(UVIRTUAL_GROUPS)))

# Schedule attributes a tile may carry, and the attribute kind of each (see dialects/README.md).
TILE_SCHEDULE_ATTRS = {
    "block_tile": "per-loop",      # thread-block tile; for reduction loops the reduction step
    "thread_tile": "per-loop",     # per-thread register tile
    "smem_padding": "per-input",   # elements added to the innermost dim of each staged input
    "edge_levels": "per-edge",     # Welder: 0 global, 1 shared, 2 register, per internal value
    "tensor_core": "bool",
    "target": "string",
    "grid": "array",               # thread blocks per parallel loop, derived by Roller
    "threads": "int",              # threads per block, derived by Roller
    "candidates": "array",         # Roller top-k: array of dictionaries of the keys above
    "kernel": "string",            # the block program that takes the tile (KERNEL_FAMILIES)
}

#: Block-program families a tile's ``kernel`` attribute may name (the verdict of
#: ``passes/analysis/kernels.py``, read by ``lowering/kernels``).
KERNEL_FAMILIES = ("gemm", "row", "colreduce", "fallback", "fused")

MEMORY_LEVELS = {0: "global", 1: "shared", 2: "register"}

_LOADED_ATTR = "quartet.loaded"


def load(context: ir.Context) -> None:
    """Load the IRDL definition into ``context`` once (twice aborts the process in MLIR 22)."""
    key = id(context)
    if key in _loaded_contexts:
        return
    with context, ir.Location.unknown():
        definition = ir.Module.parse(IRDL_SOURCE)
        irdl.load_dialects(definition)
    # Keep the definition module alive as long as the context: the dialect refers to it.
    _loaded_contexts[key] = (context, definition)


_loaded_contexts: dict[int, tuple[ir.Context, ir.Module]] = {}


@_cext.register_dialect
class _Dialect(ir.Dialect):
    DIALECT_NAMESPACE = "quartet"


class _RegionOp(ir.OpView):
    """Shared accessors of the three region ops.

    The region reads values of the enclosing function directly (like ``scf.execute_region``);
    ``inputs`` lists them, in order of first use. (Not operands: IRDL in MLIR 22 binds one
    constraint variable across a whole variadic segment, so a variadic operand list could only
    hold values of one type; see dialects/README.md.)
    """

    _ODS_REGIONS = (1, True)
    _ODS_OPERAND_SEGMENTS = None
    _ODS_RESULT_SEGMENTS = None

    @property
    def inputs(self) -> list[ir.Value]:
        return captures(self.operation)

    @property
    def outputs(self) -> list[ir.Value]:
        return list(self.operation.results)

    @property
    def body(self) -> ir.Region:
        return self.regions[0]

    @property
    def entry(self) -> ir.Block:
        return self.regions[0].blocks[0]

    @property
    def terminator(self) -> gpu.YieldOp:
        return self.entry.operations[len(self.entry.operations) - 1]

    def _int_attr(self, name: str) -> int:
        return ir.IntegerAttr(self.operation.attributes[name]).value


@_cext.register_operation(_Dialect)
class TileOp(_RegionOp):
    """``quartet.tile``: a tensor computation with its tile program."""

    OPERATION_NAME = "quartet.tile"

    def __init__(self, result_types: Sequence[ir.Type], *, loc=None, ip=None):
        super().__init__(self.OPERATION_NAME, self._ODS_REGIONS, None, None,
                         attributes={}, results=list(result_types), operands=[],
                         successors=None, regions=None, loc=loc, ip=ip)
        self.regions[0].blocks.append()

    # Typed accessors of the schedule. None where the tile has not been configured.
    def _i64_array(self, name: str) -> list[int] | None:
        attrs = self.operation.attributes
        return list(ir.DenseI64ArrayAttr(attrs[name])) if name in attrs else None

    @property
    def block_tile(self) -> list[int] | None:
        return self._i64_array("block_tile")

    @property
    def thread_tile(self) -> list[int] | None:
        return self._i64_array("thread_tile")

    @property
    def smem_padding(self) -> list[int] | None:
        return self._i64_array("smem_padding")

    @property
    def edge_levels(self) -> list[int] | None:
        return self._i64_array("edge_levels")

    @property
    def grid(self) -> list[int] | None:
        return self._i64_array("grid")

    @property
    def threads(self) -> int | None:
        attrs = self.operation.attributes
        return ir.IntegerAttr(attrs["threads"]).value if "threads" in attrs else None

    @property
    def tensor_core(self) -> bool:
        attrs = self.operation.attributes
        return "tensor_core" in attrs and ir.BoolAttr(attrs["tensor_core"]).value

    @property
    def target(self) -> str | None:
        attrs = self.operation.attributes
        return ir.StringAttr(attrs["target"]).value if "target" in attrs else None

    @property
    def kernel(self) -> str | None:
        """The block-program family recorded by the passes, or None."""
        attr = self.operation.attributes
        return ir.StringAttr(attr["kernel"]).value if "kernel" in attr else None

    @property
    def computation(self) -> list[ir.Operation]:
        """The ops of the region, terminator excluded."""
        ops = list(self.entry.operations)
        return [op.operation for op in ops[:-1]]

    @property
    def root(self) -> ir.OpView:
        """The op whose loops the per-loop schedule attributes describe (:func:`anchor_of`)."""
        return anchor_of([op for op in self.computation if op.name.startswith("linalg.")]).opview


@_cext.register_operation(_Dialect)
class VTaskOp(_RegionOp):
    """``quartet.vtask``: a tile's thread blocks on vEUs [veu_begin, veu_begin+veu_count)."""

    OPERATION_NAME = "quartet.vtask"

    def __init__(self, result_types: Sequence[ir.Type], *, veu_begin: int, veu_count: int,
                 step: int, loc=None, ip=None):
        i64 = ir.IntegerType.get_signless(64)
        attributes = {
            "veu_begin": ir.IntegerAttr.get(i64, veu_begin),
            "veu_count": ir.IntegerAttr.get(i64, veu_count),
            "step": ir.IntegerAttr.get(i64, step),
        }
        super().__init__(self.OPERATION_NAME, self._ODS_REGIONS, None, None,
                         attributes=attributes, results=list(result_types), operands=[],
                         successors=None, regions=None, loc=loc, ip=ip)
        self.regions[0].blocks.append()

    @property
    def veu_begin(self) -> int:
        return self._int_attr("veu_begin")

    @property
    def veu_count(self) -> int:
        return self._int_attr("veu_count")

    @property
    def step(self) -> int:
        return self._int_attr("step")


@_cext.register_operation(_Dialect)
class UVirtualOp(_RegionOp):
    """``quartet.uvirtual``: one persistent device program on ``num_veus`` vEUs."""

    OPERATION_NAME = "quartet.uvirtual"

    def __init__(self, result_types: Sequence[ir.Type], *, num_veus: int, loc=None, ip=None):
        attributes = {"num_veus": ir.IntegerAttr.get(ir.IntegerType.get_signless(64), num_veus),
                      "resultSegmentSizes": ir.DenseI32ArrayAttr.get(
                          result_groups(result_types))}
        super().__init__(self.OPERATION_NAME, self._ODS_REGIONS, None, None,
                         attributes=attributes, results=list(result_types), operands=[],
                         successors=None, regions=None, loc=loc, ip=ip)
        self.regions[0].blocks.append()

    @property
    def num_veus(self) -> int:
        return self._int_attr("num_veus")


def result_groups(result_types: Sequence[ir.Type]) -> list[int]:
    """The lengths of the runs of equal types in ``result_types``, padded to
    :data:`UVIRTUAL_GROUPS` entries: a uvirtual's ``resultSegmentSizes``. ValueError when the
    types form more runs than that (order results by type to need fewer)."""
    runs: list[int] = []
    previous = None
    for t in result_types:
        if runs and t == previous:
            runs[-1] += 1
        else:
            runs.append(1)
        previous = t
    if len(runs) > UVIRTUAL_GROUPS:
        raise ValueError(f"a quartet.uvirtual yields at most {UVIRTUAL_GROUPS} runs of results "
                         f"of one type, not {len(runs)}")
    return runs + [0] * (UVIRTUAL_GROUPS - len(runs))


def tile(result_types, *, loc=None, ip=None) -> TileOp:
    return TileOp(result_types, loc=loc, ip=ip)


def vtask(result_types, *, veu_begin, veu_count, step, loc=None, ip=None) -> VTaskOp:
    return VTaskOp(result_types, veu_begin=veu_begin, veu_count=veu_count, step=step,
                   loc=loc, ip=ip)


def uvirtual(result_types, *, num_veus, loc=None, ip=None) -> UVirtualOp:
    return UVirtualOp(result_types, num_veus=num_veus, loc=loc, ip=ip)


def num_loops(op: ir.Operation) -> int:
    """Loops of a linalg op on tensors: ``iterator_types`` of a generic, the output rank of a
    fill, else what ``linalg_info`` reads from the generalized op."""
    op = op.operation
    if op.name == "linalg.generic":
        return len(ir.ArrayAttr(op.attributes["iterator_types"]))
    if op.name == "linalg.fill":
        return ir.ShapedType(op.operands[-1].type).rank
    from quartet.dialects import linalg_info
    try:
        return linalg_info.info(op).num_loops
    except Exception:   # noqa: BLE001  an op linalg_info cannot read (e.g. linalg.softmax):
        shaped = [v.type for v in list(op.results) + list(op.operands)  # its output's rank
                  if isinstance(v.type, ir.ShapedType)]
        return ir.ShapedType(shaped[0]).rank if shaped else 0


def anchor_of(linalg_ops: Sequence[ir.Operation]) -> ir.Operation:
    """The root of a tile: the linalg op with the most loops, the last of those.

    For a one-op tile that is the op. For a tile Welder fused it is the op that carries the
    iteration space: the contraction of a GEMM with its fill and element-wise epilogue, the
    last op of a row program (softmax's loops are those of every op but the row reductions'
    fills), the last op of an element-wise chain. Raises ValueError without linalg ops."""
    if not linalg_ops:
        raise ValueError("quartet.tile holds no linalg op")
    best, best_loops = None, -1
    for op in linalg_ops:
        n = num_loops(op)
        if n >= best_loops:
            best, best_loops = op, n
    return best


def collect(root, predicate) -> list[ir.Operation]:
    """Every op nested in ``root`` (``root`` included) for which ``predicate(op)`` holds, in
    pre-order. Collect first, then rewrite: a walk must not see ops it erases."""
    found: list[ir.Operation] = []

    def visit(op):
        if predicate(op.operation):
            found.append(op.operation)
        return ir.WalkResult.ADVANCE

    (root.operation if hasattr(root, "operation") else root).walk(visit)
    return found


def captures(op) -> list[ir.Value]:
    """Values used inside ``op``'s regions but defined outside it, in order of first use."""
    op = op.operation
    seen: list[ir.Value] = []
    known: set = set()

    def visit(inner):
        for value in inner.operation.operands:
            if value not in known:
                known.add(value)
                if not defined_inside(value, op):
                    seen.append(value)
        return ir.WalkResult.ADVANCE

    for region in op.regions:
        for block in region.blocks:
            for inner in block.operations:
                inner.operation.walk(visit)
    return seen


def remap(op, mapping: dict) -> None:
    """Point the operands of ``op`` (a clone, usually) and of the ops nested in it at
    ``mapping``'s values: the IRMapping that ``Operation.clone`` lacks in the 22.1 bindings."""
    def visit(inner):
        operands = inner.operation.operands
        for i in range(len(operands)):
            new = mapping.get(operands[i])
            if new is not None:
                operands[i] = new
        return ir.WalkResult.ADVANCE

    (op.operation if hasattr(op, "operation") else op).walk(visit)


def defining_op(value: ir.Value) -> ir.Operation | None:
    """The op that defines ``value``, or None for a block argument."""
    owner = value.owner
    return None if isinstance(owner, ir.Block) else owner.operation


def defined_inside(value: ir.Value, region_op: ir.Operation) -> bool:
    """Whether ``value`` is defined by an op or block nested in ``region_op``."""
    owner = value.owner
    op = owner.owner if isinstance(owner, ir.Block) else owner.operation
    while op is not None:
        if op == region_op:
            return True
        if op.name == "builtin.module":
            return False
        op = op.parent
    return False


def yield_(values, *, loc=None, ip=None) -> gpu.YieldOp:
    """The terminator of a Quartet region: an upstream ``gpu.yield`` (see the module docstring)."""
    return gpu.YieldOp(list(values), loc=loc, ip=ip)
