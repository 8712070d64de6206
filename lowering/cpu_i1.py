"""Boolean tensors on the CPU path: ``tensor<...xi1>`` stored as one byte per element.

MLIR 22's memref-to-LLVM conversion packs sub-byte element types, and for ``i1`` its load and
store lowerings abort the process (an assertion: the element width must be at least 8). Boolean
tensors are common in imported models (masks, ``torch.where`` conditions, the predicates of
``torch.cond`` and ``while_loop``), so before bufferization every ``i1`` tensor becomes an ``i8``
tensor holding 0 or 1: exactly numpy's ``bool_`` layout, so the entry's calling convention does
not change. Scalars stay ``i1``; the conversions sit where a scalar meets a tensor:

* a linalg op's payload argument whose operand became ``i8`` is truncated to ``i1`` at the top
  of the body, and ``i1`` values it yields into an ``i8`` output are zero-extended;
* an ``i1`` scalar operand of a linalg op (``linalg.fill``) is zero-extended before the op;
* ``tensor.extract`` from a byte tensor is truncated after it; ``tensor.insert``,
  ``tensor.from_elements``, ``tensor.splat`` and the ``tensor.yield`` of ``tensor.pad`` /
  ``tensor.generate`` zero-extend what they put in;
* ``i1`` tensor constants become ``i8`` constants of the same 0/1 values;
* function signatures follow their block arguments and returned values.

What is computed does not change: every ``i1`` value inside a payload is the same bit as before.

Bufferization brings boolean *buffers* of its own: when a buffer's ownership is only known at run
time (an ``scf.if`` yielding either a fresh buffer or an argument, as SkipNet-style models
import), ``buffer-deallocation-pipeline`` lowers the deallocation to a helper function that
keeps its ownership flags in ``memref<?xi1>``. :func:`widen_bool_memrefs` runs after it and
stores those flags as bytes too (loads truncated, stores zero-extended), before
``finalize-memref-to-llvm``.

Assumes: the module was checked by ``cpu.check_supported`` (no elementwise arith on tensors).
"""

from __future__ import annotations

import numpy as np
from mlir import ir
from mlir.dialects import arith

from quartet.errors import QuartetError, location_of


def _i1(t: ir.Type) -> bool:
    return isinstance(t, ir.IntegerType) and ir.IntegerType(t).width == 1


def _bool_tensor(t: ir.Type) -> bool:
    return isinstance(t, ir.RankedTensorType) and _i1(ir.RankedTensorType(t).element_type)


def _widened(t: ir.Type) -> ir.Type:
    """``tensor<...xi1>`` -> ``tensor<...xi8>``; other types unchanged."""
    if _bool_tensor(t):
        rt = ir.RankedTensorType(t)
        return ir.RankedTensorType.get(rt.shape, ir.IntegerType.get_signless(8), rt.encoding)
    return t


def _byte_tensor(t: ir.Type) -> bool:
    return (isinstance(t, ir.RankedTensorType)
            and ir.RankedTensorType(t).element_type == ir.IntegerType.get_signless(8))


def _all_ops(root: ir.Operation) -> list[ir.Operation]:
    ops: list[ir.Operation] = []

    def visit(op):
        ops.append(op.operation)
        return ir.WalkResult.ADVANCE

    root.walk(visit)
    return ops


def has_bool_tensors(module: ir.Operation) -> bool:
    for op in _all_ops(module):
        if any(_bool_tensor(r.type) for r in op.results):
            return True
        for region in op.regions:
            for block in region.blocks:
                if any(_bool_tensor(a.type) for a in block.arguments):
                    return True
    return False


def widen_bool_tensors(module: ir.Operation) -> None:
    """Rewrite every ``tensor<...xi1>`` of ``module`` into ``tensor<...xi8>`` in place."""
    if not has_bool_tensors(module):
        return
    ops = _all_ops(module)
    i8 = ir.IntegerType.get_signless(8)
    constants = [op for op in ops if op.name == "arith.constant" and _bool_tensor(op.results[0].type)]
    # functions first: step 2 erases ops inside linalg bodies (reductions combined in bytes),
    # and an erased op of `ops` must not be touched again
    functions = [op for op in ops if op.name == "func.func"]
    # 1. Every value of a boolean tensor type changes type.
    for op in ops:
        for result in op.results:
            if _bool_tensor(result.type):
                result.set_type(_widened(result.type))
        for region in op.regions:
            for block in region.blocks:
                for arg in block.arguments:
                    if _bool_tensor(arg.type):
                        arg.set_type(_widened(arg.type))
    # 2. Conversions where scalars meet byte tensors. The ops are chosen before any is
    # rewritten: rewriting a linalg body erases ops of that body, which are in `ops` too.
    chosen = [op for op in ops if (op.name.startswith("linalg.") and len(op.regions)) or
              op.name in ("tensor.extract", "tensor.insert", "tensor.splat",
                          "tensor.from_elements", "tensor.yield")]
    for op in chosen:
        name = op.name
        if name.startswith("linalg.") and len(op.regions) and len(op.regions[0].blocks):
            _fix_linalg(op, i8)
        elif name == "tensor.extract" and _i1(op.results[0].type) \
                and _byte_tensor(op.operands[0].type):
            _truncate_result(op, i8)
        elif name in ("tensor.insert", "tensor.splat") and _byte_tensor(op.results[0].type):
            _extend_operand(op, 0, i8)
        elif name == "tensor.from_elements" and _byte_tensor(op.results[0].type):
            for i in range(len(op.operands)):
                _extend_operand(op, i, i8)
        elif name == "tensor.yield" and op.parent is not None \
                and op.parent.name in ("tensor.pad", "tensor.generate") \
                and _byte_tensor(op.parent.results[0].type):
            _extend_operand(op, 0, i8)
    for op in constants:             # erases the old constants: `ops` is stale after this
        _widen_constant(op, i8)
    for op in functions:
        _fix_signature(op)


def _extend_operand(op: ir.Operation, index: int, i8: ir.Type) -> None:
    value = op.operands[index]
    if not _i1(value.type):
        return
    constant = _constant_of(value)
    if constant is not None:        # a byte constant beside the bit's own (outside the tile): a
        with op.location, ir.InsertionPoint.after(constant):    # row program refuses scalar ops
            bit = int(ir.IntegerAttr(constant.attributes["value"]).value != 0)
            op.operands[index] = arith.ConstantOp(i8, ir.IntegerAttr.get(i8, bit)).result
        return
    with op.location, ir.InsertionPoint(op):
        op.operands[index] = arith.ExtUIOp(i8, value).result


def _constant_of(value: ir.Value) -> ir.Operation | None:
    """The ``arith.constant`` that defines ``value``, or None."""
    owner = value.owner
    if not isinstance(owner, ir.Operation):
        owner = getattr(owner, "operation", None)
    return owner if owner is not None and owner.name == "arith.constant" else None


def _truncate_result(op: ir.Operation, i8: ir.Type) -> None:
    result = op.results[0]
    result.set_type(i8)
    with op.location, ir.InsertionPoint.after(op):
        trunc = arith.TruncIOp(ir.IntegerType.get_signless(1), result)
    result.replace_all_uses_except(trunc.result, trunc.operation)


def _fix_linalg(op: ir.Operation, i8: ir.Type) -> None:
    block = op.regions[0].blocks[0]
    args = list(block.arguments)
    operands = list(op.operands)
    # Payload arguments correspond to the leading operands (ins then outs; linalg.map has
    # arguments for its ins only).
    for k, arg in enumerate(args):
        if k >= len(operands) or not _i1(arg.type):
            continue
        operand_type = operands[k].type
        if _i1(operand_type):                       # an i1 scalar operand (linalg.fill)
            _extend_operand(op, k, i8)
        elif not _byte_tensor(operand_type):
            continue
        arg.set_type(i8)
        if not any(True for _ in arg.uses):     # an unread output: no dead trunci, which the
            continue                            # SIMT builder would take for a read of it
        first = block.operations[0] if len(block.operations) else None
        with op.location, ir.InsertionPoint(first) if first is not None \
                else ir.InsertionPoint(block):
            trunc = arith.TruncIOp(ir.IntegerType.get_signless(1), arg)
        arg.replace_all_uses_except(trunc.result, trunc.operation)
    terminator = block.operations[len(block.operations) - 1].operation
    if terminator.name != "linalg.yield":
        return
    for j, result in enumerate(op.results):
        if j < len(terminator.operands) and _byte_tensor(result.type):
            _extend_operand(terminator, j, i8)
            _combine_in_bytes(block, len(operands) - len(op.results) + j, j, terminator, i8)


#: boolean combiners that are the same bitwise on 0/1 bytes
_BYTE_COMBINERS = {"arith.andi": arith.AndIOp, "arith.ori": arith.OrIOp}


def _combine_in_bytes(block: ir.Block, out_index: int, j: int, terminator: ir.Operation,
                      i8: ir.Type) -> None:
    """``yield extui(andi(x, trunci(out)))`` -> ``yield andi(extui(x), out)`` on bytes.

    A boolean reduction (``torch.all``/``any``) reads its accumulator through a ``trunci`` after
    widening; the GPU's reduction builders take ``combine(f(in), out)`` with ``out`` itself. On
    bytes holding 0 or 1, ``andi``/``ori`` give the same 0 or 1 as on bits."""
    if out_index >= len(block.arguments):
        return
    extended = terminator.operands[j].owner
    if getattr(extended, "name", None) != "arith.extui":
        return
    combine = extended.operands[0].owner
    if getattr(combine, "name", None) not in _BYTE_COMBINERS:
        return
    out_arg = block.arguments[out_index]
    a, b = combine.operands
    truncated = [x for x in (a, b) if getattr(x.owner, "name", None) == "arith.trunci"
                 and x.owner.operands[0] == out_arg]
    if len(truncated) != 1:
        return
    other = b if truncated[0] == a else a
    with combine.location, ir.InsertionPoint(terminator):
        wide = arith.ExtUIOp(i8, other).result
        new = _BYTE_COMBINERS[combine.name](wide, out_arg).result
    terminator.operands[j] = new
    trunc = truncated[0].owner
    for dead in (extended, combine, trunc):
        if not any(True for _ in dead.results[0].uses):
            dead.erase()


def _widen_constant(op: ir.Operation, i8: ir.Type) -> None:
    attr = op.attributes["value"]
    new_type = op.results[0].type     # already the byte tensor type
    if not isinstance(attr, ir.DenseIntElementsAttr):
        raise QuartetError(f"boolean tensor constant '{attr}' is not supported by the CPU "
                           f"target", location_of(op))
    if attr.is_splat:
        splat = attr.get_splat_value()
        value = splat.value if isinstance(splat, ir.BoolAttr) else ir.IntegerAttr(splat).value
        new_attr = ir.DenseElementsAttr.get_splat(new_type, ir.IntegerAttr.get(i8, int(bool(value))))
    else:
        values = np.array([int(bool(v)) for v in attr], dtype=np.int8)
        new_attr = ir.DenseElementsAttr.get(values.reshape(ir.RankedTensorType(new_type).shape),
                                            type=i8)
    with op.location, ir.InsertionPoint(op):
        new = arith.ConstantOp(new_type, new_attr)
    op.results[0].replace_all_uses_with(new.result)
    op.erase()


def _fix_signature(fn: ir.Operation) -> None:
    ftype = ir.FunctionType(ir.TypeAttr(fn.attributes["function_type"]).value)
    blocks = fn.regions[0].blocks
    if len(blocks):
        inputs = [a.type for a in blocks[0].arguments]
    else:
        inputs = [_widened(t) for t in ftype.inputs]
    results = [_widened(t) for t in ftype.results]
    if list(ftype.inputs) != inputs or list(ftype.results) != results:
        fn.attributes["function_type"] = ir.TypeAttr.get(ir.FunctionType.get(inputs, results))


# ---------------------------------------------------------------------------------------------
# Boolean buffers made by bufferization (ownership flags of the deallocation helper).


def _bool_memref(t: ir.Type) -> bool:
    return isinstance(t, ir.MemRefType) and _i1(ir.MemRefType(t).element_type)


def _byte_memref(t: ir.Type) -> ir.Type:
    m = ir.MemRefType(t)
    return ir.MemRefType.get(m.shape, ir.IntegerType.get_signless(8), m.layout, m.memory_space)


def widen_bool_memrefs(module: ir.Operation) -> None:
    """Rewrite every ``memref<...xi1>`` of ``module`` into ``memref<...xi8>`` in place: the
    values loaded are truncated to ``i1``, the values stored zero-extended to ``i8``."""
    ops = _all_ops(module)
    touched = False
    for op in ops:
        for value in list(op.results) + [a for r in op.regions for b in r.blocks
                                         for a in b.arguments]:
            if _bool_memref(value.type):
                value.set_type(_byte_memref(value.type))
                touched = True
    if not touched:
        return
    i8 = ir.IntegerType.get_signless(8)
    for op in ops:
        if op.name == "memref.load" and _i1(op.results[0].type):
            _truncate_result(op, i8)
        elif op.name == "memref.store" and _i1(op.operands[0].type) \
                and ir.MemRefType(op.operands[1].type).element_type == i8:
            _extend_operand(op, 0, i8)
        elif op.name in ("memref.global", "memref.get_global", "memref.atomic_rmw",
                         "memref.generic_atomic_rmw") and any(
                _i1(ir.MemRefType(v.type).element_type) for v in op.operands
                if isinstance(v.type, ir.MemRefType)):
            raise QuartetError(f"'{op.name}' on a boolean buffer is not supported by the CPU "
                               f"target", location_of(op))
    for op in ops:
        if op.name == "func.func":
            _fix_memref_signature(op)


def _fix_memref_signature(fn: ir.Operation) -> None:
    ftype = ir.FunctionType(ir.TypeAttr(fn.attributes["function_type"]).value)
    blocks = fn.regions[0].blocks
    inputs = [a.type for a in blocks[0].arguments] if len(blocks) else \
        [_byte_memref(t) if _bool_memref(t) else t for t in ftype.inputs]
    results = [_byte_memref(t) if _bool_memref(t) else t for t in ftype.results]
    if list(ftype.inputs) != inputs or list(ftype.results) != results:
        fn.attributes["function_type"] = ir.TypeAttr.get(ir.FunctionType.get(inputs, results))
