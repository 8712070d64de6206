"""What a device program can hold: the ops Grinder lifts into a ``quartet.uvirtual``, and why not.

Cocktailer's rule (OSDI'23, 3.1): control flow moves onto the device when every uTask of its body
can run there and the control decision is made at operator granularity - one predicate or trip
count that every parallel uTask can read for itself. In Quartet's IR that is an ``scf.while``,
``scf.for`` or ``scf.if`` (at any depth) whose regions hold only

* configured ``quartet.tile`` ops that a kernel family takes (each becomes a vtask);
* views the lowering resolves to byte ranges (reshapes, contiguous ``extract_slice``,
  ``tensor.concat`` of contiguous slices) and constants;
* scalars read from tensors at constant indices (``tensor.extract``: predicates) and the
  ``i8 <-> i1`` conversions of those;
* nested ``scf`` ops of the same kind, with static loop bounds (``scf.for``) and loop-carried
  values that are statically shaped tensors or scalars;

and whose carried values stay the same shape from one iteration to the next (static shapes).
:func:`device_reason` says, for one op, why it cannot be on the device (``None`` when it can):
the remark ``grinder-lift-control-flow{verbose=true}`` prints for a loop that stays on the host.
"""

from __future__ import annotations

from mlir import ir

from quartet.lowering.prepare import concat_offsets, contiguous_slice
from quartet.runtime.targets import Chip

#: ops of a device program other than tiles and control flow
VIEW_OPS = ("tensor.expand_shape", "tensor.collapse_shape", "tensor.extract_slice",
            "tensor.concat")
FREE_OPS = ("arith.constant", "tensor.empty")
SCALAR_OPS = ("tensor.extract", "arith.trunci", "arith.extui")
CONTROL_OPS = ("scf.while", "scf.for", "scf.if")
TERMINATORS = ("scf.yield", "scf.condition")


def _static_tensor(t: ir.Type) -> bool:
    return isinstance(t, ir.RankedTensorType) and ir.RankedTensorType(t).has_static_shape


def _scalar(t: ir.Type) -> bool:
    return isinstance(t, (ir.IntegerType, ir.F16Type, ir.BF16Type, ir.F32Type, ir.F64Type))


def _constant_int(value: ir.Value) -> int | None:
    owner = value.owner
    if isinstance(owner, ir.Block) or owner.operation.name != "arith.constant":
        return None
    attr = owner.operation.attributes["value"]
    return ir.IntegerAttr(attr).value if isinstance(attr, ir.IntegerAttr) else None


def _carried_reason(values, what: str) -> str | None:
    for v in values:
        if not (_static_tensor(v.type) or _scalar(v.type)):
            return f"{what} of type {v.type} (a device loop carries static tensors and scalars)"
    return None


def tile_reason(tile, hw: Chip) -> str | None:
    """Why ``tile`` cannot be a task of a persistent kernel on ``hw`` (None when it can)."""
    attrs = tile.operation.attributes
    if "block_tile" not in attrs or "grid" not in attrs:
        return "a tile without a schedule (run roller-config first)"
    if hw.is_gpu and "kernel" not in attrs:
        return "a tile that no kernel family takes"
    for r in tile.results:
        if not _static_tensor(r.type):
            return f"a tile result of type {r.type} (dynamic shape)"
    return None


def device_reason(op: ir.Operation, hw: Chip) -> str | None:
    """Why ``op`` (and what it holds) cannot be part of a device program on ``hw``, or None."""
    name = op.name
    if name == "quartet.tile":
        return tile_reason(op.opview, hw)
    if name in FREE_OPS or name in TERMINATORS:
        return None
    if name in ("tensor.expand_shape", "tensor.collapse_shape"):
        return None if _static_tensor(op.results[0].type) else "a reshape of dynamic shape"
    if name == "tensor.extract_slice":
        try:
            ok = contiguous_slice(op) is not None
        except Exception:          # noqa: BLE001 - dynamic offsets or sizes
            ok = False
        return None if ok else "a strided or dynamic 'tensor.extract_slice' (not a view)"
    if name == "tensor.concat":
        return None if concat_offsets(op) is not None else \
            "a 'tensor.concat' of strided slices (run quartet-outline-data-movement first)"
    if name == "tensor.extract":
        if any(_constant_int(v) is None for v in list(op.operands)[1:]):
            return "'tensor.extract' at an index computed at run time"
        return None if _static_tensor(op.operands[0].type) else \
            "'tensor.extract' from a tensor of dynamic shape"
    if name in ("arith.trunci", "arith.extui"):
        widths = {ir.IntegerType(v.type).width for v in (op.operands[0], op.results[0])
                  if isinstance(v.type, ir.IntegerType)}
        return None if widths == {1, 8} else f"'{name}' other than between i8 and i1"
    if name == "scf.if":
        return _regions_reason(op, hw) or _carried_reason(op.results, "a result")
    if name == "scf.while":
        reason = _carried_reason(op.operands, "a carried value") or \
            _carried_reason(op.results, "a result")
        return reason or _regions_reason(op, hw)
    if name == "scf.for":
        bounds = list(op.operands)[:3]
        if any(_constant_int(v) is None for v in bounds):
            return "an 'scf.for' whose bounds are computed at run time"
        body = op.regions[0].blocks[0]
        if len(list(body.arguments[0].uses)):
            return "an 'scf.for' whose induction variable is read (tiles take no scalars)"
        return _carried_reason(list(op.operands)[3:], "a carried value") or \
            _regions_reason(op, hw)
    return f"'{name}' cannot run in a device program"


def _regions_reason(op: ir.Operation, hw: Chip) -> str | None:
    for region in op.regions:
        for block in region.blocks:
            for inner in block.operations:
                reason = device_reason(inner.operation, hw)
                if reason is not None:
                    return reason
    return None
