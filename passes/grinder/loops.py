"""Static trip counts and unrolling of loops around tiles (Cocktailer's frontend, 3.2 step 2).

**Trip counts.** ``torch.while_loop`` reaches the IR as an ``scf.while`` whose condition is
computed by tiles on carried tensors (``t < steps`` on a ``tensor<i64>`` counter). When the
predicate's backward slice - through the carried values - holds only constants and small
tiles of scalar arithmetic, the loop's trip count is known at compile time: :func:`trip_count`
runs that slice (and nothing else) with a small interpreter until the predicate is false. A
slice that reads any other value (a token decoded by the body, an input) is data-dependent:
``None``.

**Static loops.** A while loop with a static trip count ``N`` whose ``before`` region only
forwards its arguments (the form ``while_loop`` imports to) becomes ``scf.for 0..N`` carrying
the same values (:func:`to_for`); the predicate's tiles then feed nothing and are erased.

**Unrolling** by ``U`` (:func:`unroll`): the body of an ``scf.for`` whose induction variable no
tile reads is cloned ``U`` times per iteration, each copy reading what the previous one
yields; ``N mod U`` copies follow the loop, and a loop unrolled by ``U >= N`` disappears. Reads
of one part of a concatenation the previous copy built (``h[l]`` of a stacked state) are
pointed at that part's producer (:func:`forward_concat_parts`), so that Rammer's wavefront sees
the real dependencies: layer ``l`` of step ``t + 1`` waits for layer ``l`` of step ``t`` and
layer ``l - 1`` of step ``t + 1`` only (the LSTM's diagonal wavefront, Rammer 5.3).
"""

from __future__ import annotations

import numpy as np
from mlir import ir
from mlir.dialects import arith, scf

from quartet.dialects import remap

#: iterations the trip-count interpreter runs at most before it gives up
MAX_TRIPS = 1 << 20
#: elements of a tensor the interpreter evaluates at most (control slices are scalars)
MAX_ELEMENTS = 64


class NotStatic(Exception):
    """The value depends on something the interpreter does not evaluate."""


# ---------------------------------------------------------------------------------------------
# The interpreter of control slices


_INT_CMP = {0: np.equal, 1: np.not_equal, 2: np.less, 3: np.less_equal, 4: np.greater,
            5: np.greater_equal, 6: np.less, 7: np.less_equal, 8: np.greater,
            9: np.greater_equal}
_FLOAT_CMP = {1: np.equal, 2: np.greater, 3: np.greater_equal, 4: np.less, 5: np.less_equal,
              6: np.not_equal, 8: np.equal, 9: np.greater, 10: np.greater_equal, 11: np.less,
              12: np.less_equal, 13: np.not_equal}


def _np_dtype(t: ir.Type):
    if isinstance(t, ir.IntegerType):
        width = ir.IntegerType(t).width
        return np.bool_ if width == 1 else {8: np.int8, 16: np.int16, 32: np.int32,
                                             64: np.int64}[width]
    if isinstance(t, ir.IndexType):
        return np.int64
    if isinstance(t, ir.F32Type):
        return np.float32
    if isinstance(t, ir.F64Type):
        return np.float64
    raise NotStatic(f"type {t}")


def _element_type(t: ir.Type) -> ir.Type:
    return ir.ShapedType(t).element_type if isinstance(t, ir.ShapedType) else t


class Interpreter:
    """Evaluates values of a loop's control slice; ``env`` holds block arguments."""

    def __init__(self):
        self.env: dict = {}
        self.memo: dict = {}

    def value(self, v: ir.Value):
        if v in self.env:
            x = self.env[v]
            return x.get() if isinstance(x, _Lazy) else x
        key = v
        if key in self.memo:
            return self.memo[key]
        owner = v.owner
        if isinstance(owner, ir.Block):
            raise NotStatic("a block argument outside the slice")
        op = owner.operation
        results = self.op(op)
        for r, x in zip(op.results, results):
            self.memo[r] = x
        return self.memo[key]

    def op(self, op: ir.Operation) -> list:
        name = op.name
        if name == "arith.constant":
            attr = op.attributes["value"]
            t = op.results[0].type
            if isinstance(t, ir.RankedTensorType):
                dense = ir.DenseElementsAttr(attr)
                shape = tuple(ir.RankedTensorType(t).shape)
                if int(np.prod(shape)) > MAX_ELEMENTS:
                    raise NotStatic("a large constant")
                if dense.is_splat:
                    return [np.full(shape, _scalar_attr(dense.get_splat_value()),
                                    dtype=_np_dtype(ir.RankedTensorType(t).element_type))]
                return [np.array(dense, dtype=_np_dtype(ir.RankedTensorType(t).element_type))
                        .reshape(shape)]
            return [np.array(_scalar_attr(attr), dtype=_np_dtype(t))]
        if name in ("quartet.tile", "quartet.vtask"):
            block = op.regions[0].blocks[0]
            for inner in list(block.operations)[:-1]:
                inner = inner.operation
                for r, x in zip(inner.results, self.op(inner)):
                    self.memo[r] = x
            term = block.operations[len(block.operations) - 1].operation
            return [self.value(v) for v in term.operands]
        if name == "tensor.empty":
            t = ir.RankedTensorType(op.results[0].type)
            if t.has_static_shape and int(np.prod(t.shape)) <= MAX_ELEMENTS:
                return [np.zeros(tuple(t.shape), dtype=_np_dtype(t.element_type))]
            raise NotStatic("a large tensor")
        if name in ("tensor.expand_shape", "tensor.collapse_shape"):
            shape = tuple(ir.RankedTensorType(op.results[0].type).shape)
            return [np.reshape(self.value(op.operands[0]), shape)]
        if name == "tensor.extract":
            src = self.value(op.operands[0])
            index = tuple(int(self.value(v)) for v in list(op.operands)[1:])
            return [np.array(src[index])]
        if name == "linalg.fill":
            out = np.array(self.value(op.operands[1]))
            out[...] = self.value(op.operands[0])
            return [out]
        if name == "linalg.generic":
            return self.generic(op)
        if name.startswith("arith."):
            return [self.arith(op, [self.value(v) for v in op.operands])]
        raise NotStatic(f"'{name}'")

    def generic(self, op: ir.Operation) -> list:
        maps = [ir.AffineMapAttr(m).value for m in ir.ArrayAttr(op.attributes["indexing_maps"])]
        segments = list(ir.DenseI32ArrayAttr(op.attributes["operandSegmentSizes"]))
        operands = list(op.operands)
        ins, outs = operands[:segments[0]], operands[segments[0]:]
        values = [self.value(v) for v in ins + outs]
        results = [np.array(v, copy=True) for v in values[len(ins):]]
        shapes = [np.shape(v) for v in values]
        ranges = [1] * maps[0].n_dims
        for m, shape in zip(maps, shapes):
            for k, expr in enumerate(m.results):
                if ir.AffineDimExpr.isinstance(expr):
                    ranges[ir.AffineDimExpr(expr).position] = shape[k]
        if int(np.prod(ranges)) > MAX_ELEMENTS:
            raise NotStatic("a large iteration space")
        body = op.regions[0].blocks[0]
        for point in np.ndindex(*ranges):
            local: dict = {}
            for arg, m, v in zip(body.arguments, maps, values[:len(ins)] + results):
                local[arg] = np.array(v[_at(m, point)])
            yielded = self.body(body, local, point)
            for r, m, y in zip(results, maps[len(ins):], yielded):
                r[_at(m, point)] = y
        return results

    def body(self, block: ir.Block, local: dict, point) -> list:
        for inner in block.operations:
            inner = inner.operation
            if inner.name == "linalg.yield":
                return [local[v] if v in local else self.value(v) for v in inner.operands]
            if inner.name == "linalg.index":
                local[inner.results[0]] = np.array(point[ir.IntegerAttr(
                    inner.attributes["dim"]).value], dtype=np.int64)
                continue
            args = [local[v] if v in local else self.value(v) for v in inner.operands]
            if inner.name == "arith.constant":
                local[inner.results[0]] = self.op(inner)[0]
            elif inner.name.startswith("arith."):
                local[inner.results[0]] = self.arith(inner, args)
            else:
                raise NotStatic(f"'{inner.name}' in a linalg body")
        raise NotStatic("a linalg body without yield")

    def arith(self, op: ir.Operation, args: list):
        name = op.name.split(".", 1)[1]
        out_type = _element_type(op.results[0].type)
        if name in ("addi", "addf"):
            r = args[0] + args[1]
        elif name in ("subi", "subf"):
            r = args[0] - args[1]
        elif name in ("muli", "mulf"):
            r = args[0] * args[1]
        elif name in ("andi",):
            r = np.logical_and(args[0], args[1]) if args[0].dtype == np.bool_ else \
                args[0] & args[1]
        elif name in ("ori",):
            r = np.logical_or(args[0], args[1]) if args[0].dtype == np.bool_ else \
                args[0] | args[1]
        elif name in ("xori",):
            r = np.logical_xor(args[0], args[1]) if args[0].dtype == np.bool_ else \
                args[0] ^ args[1]
        elif name == "select":
            r = np.where(args[0], args[1], args[2])
        elif name in ("extui", "extsi", "trunci", "index_cast", "sitofp", "fptosi"):
            r = args[0]
        elif name == "cmpi":
            r = _INT_CMP[ir.IntegerAttr(op.attributes["predicate"]).value](args[0], args[1])
        elif name == "cmpf":
            pred = ir.IntegerAttr(op.attributes["predicate"]).value
            if pred not in _FLOAT_CMP:
                raise NotStatic("an unordered float comparison")
            r = _FLOAT_CMP[pred](args[0], args[1])
        else:
            raise NotStatic(f"'{op.name}'")
        return np.array(r).astype(_np_dtype(out_type))


def _scalar_attr(attr):
    if isinstance(attr, ir.BoolAttr):
        return ir.BoolAttr(attr).value
    if isinstance(attr, ir.IntegerAttr):
        return ir.IntegerAttr(attr).value
    if isinstance(attr, ir.FloatAttr):
        return ir.FloatAttr(attr).value
    raise NotStatic(f"constant {attr}")


def _at(m, point) -> tuple:
    out = []
    for expr in m.results:
        if ir.AffineDimExpr.isinstance(expr):
            out.append(point[ir.AffineDimExpr(expr).position])
        elif ir.AffineConstantExpr.isinstance(expr):
            out.append(ir.AffineConstantExpr(expr).value)
        else:
            raise NotStatic("an indexing map that is not a projection")
    return tuple(out)


# ---------------------------------------------------------------------------------------------
# Trip counts


def trip_count(op: ir.Operation) -> int | None:
    """Iterations of an ``scf.for`` with constant bounds or of an ``scf.while`` whose predicate
    the interpreter can follow (None when they depend on data)."""
    if op.name == "scf.for":
        bounds = [_constant(v) for v in list(op.operands)[:3]]
        if any(b is None for b in bounds):
            return None
        lb, ub, step = bounds
        return max(0, -(-(ub - lb) // step)) if step > 0 else None
    if op.name != "scf.while":
        return None
    try:
        return _while_trips(op)
    except (NotStatic, KeyError, IndexError, ValueError, TypeError):
        return None


def _constant(v: ir.Value) -> int | None:
    owner = v.owner
    if isinstance(owner, ir.Block) or owner.operation.name != "arith.constant":
        return None
    attr = owner.operation.attributes["value"]
    return ir.IntegerAttr(attr).value if isinstance(attr, ir.IntegerAttr) else None


def _while_trips(op: ir.Operation) -> int:
    before, after = op.regions[0].blocks[0], op.regions[1].blocks[0]
    condition = before.operations[len(before.operations) - 1].operation
    yielded = after.operations[len(after.operations) - 1].operation
    outer = Interpreter()
    state = [_lazy(outer, v) for v in op.operands]
    for trips in range(MAX_TRIPS + 1):
        inner = Interpreter()
        inner.memo.update(outer.memo)
        for arg, x in zip(before.arguments, state):
            inner.env[arg] = x
        if not bool(inner.value(condition.operands[0])):
            return trips
        for arg, v in zip(after.arguments, list(condition.operands)[1:]):
            inner.env[arg] = _lazy(inner, v)
        state = [_lazy(inner, v) for v in yielded.operands]
    raise NotStatic("more than MAX_TRIPS iterations")


class _Lazy:
    """A value evaluated when (and if) the slice reads it."""

    def __init__(self, interp: Interpreter, value: ir.Value):
        self.interp, self.v, self.done, self.x = interp, value, False, None

    def get(self):
        if not self.done:
            self.x = self.interp.value(self.v)
            self.done = True
        return self.x


def _lazy(interp: Interpreter, v: ir.Value) -> _Lazy:
    return _Lazy(interp, v)


# ---------------------------------------------------------------------------------------------
# Static while loops as counted loops, and unrolling


def trivial_before(op: ir.Operation) -> list[int] | None:
    """For an ``scf.while`` whose ``before`` region only forwards its arguments: for the
    predicate and each forwarded value, the index of the argument it is; else None."""
    before = op.regions[0].blocks[0]
    if len(before.operations) != 1:
        return None
    condition = before.operations[0].operation
    args = list(before.arguments)
    out = []
    for v in condition.operands:
        match = [i for i, a in enumerate(args) if a == v]
        if not match:
            return None
        out.append(match[0])
    return out


def to_for(op: ir.Operation, trips: int) -> ir.Operation:
    """Rewrite the static ``scf.while`` ``op`` (trivial ``before`` region, ``trips``
    iterations) into ``scf.for 0..trips`` carrying the before region's arguments; returns the
    loop. Values only the predicate needed become dead and are erased (:func:`erase_dead`)."""
    forward = trivial_before(op)
    if forward is None:
        raise ValueError("the while loop's before region computes something")
    after = op.regions[1].blocks[0]
    index = ir.IndexType.get()
    with op.location, ir.InsertionPoint(op):
        lb = arith.constant(index, 0)
        ub = arith.constant(index, trips)
        step = arith.constant(index, 1)
        loop = scf.ForOp(lb, ub, step, list(op.operands))
    carried = list(loop.inner_iter_args)
    mapping = {a: carried[forward[1 + k]] for k, a in enumerate(after.arguments)}
    body = loop.body
    yielded = None
    with op.location, ir.InsertionPoint(body):
        for inner in list(after.operations):
            inner = inner.operation
            if inner.name == "scf.yield":
                yielded = [mapping.get(v, v) for v in inner.operands]
                continue
            clone = inner.clone()
            remap(clone, mapping)
            for old, new in zip(inner.results, clone.results):
                mapping[old] = new
        scf.YieldOp(yielded)
    for k, r in enumerate(op.results):
        r.replace_all_uses_with(loop.results[forward[1 + k]])
    op.erase()
    drop_unread_carries(loop)
    return loop.operation


def drop_unread_carries(loop) -> None:
    """Erase the dead ops of the loop body (``erase_dead``); a carried value that neither the
    body nor the code after the loop reads stays carried but feeds nothing."""
    erase_dead(loop.body if hasattr(loop, "body") else loop.regions[0].blocks[0])


#: ops erased when nothing reads their results (tiles have no side effects)
PURE = ("quartet.tile", "quartet.vtask", "tensor.expand_shape", "tensor.collapse_shape",
        "tensor.extract_slice", "tensor.concat", "tensor.extract", "tensor.empty",
        "arith.constant", "arith.trunci", "arith.extui")


def erase_dead(block: ir.Block) -> int:
    """Erase, until none is left, the pure ops of ``block`` whose results nothing reads, and
    loop-carried values of ``scf.for`` ops in it that only feed themselves."""
    erased = 0
    changed = True
    while changed:
        changed = False
        for op in reversed(list(block.operations)):
            op = op.operation
            if op.name in PURE and all(not len(list(r.uses)) for r in op.results):
                op.erase()
                erased += 1
                changed = True
            elif op.name == "scf.for":
                if _drop_self_carried(op):
                    changed = True
    return erased


def _drop_self_carried(loop: ir.Operation) -> bool:
    """In ``loop`` (an ``scf.for``), a carried value read by nothing (neither the body nor the
    code after the loop) gets its yielded value replaced by the iteration argument itself, so
    that what computed it dies. Returns whether anything changed."""
    body = loop.regions[0].blocks[0]
    term = body.operations[len(body.operations) - 1].operation
    changed = False
    for k, arg in enumerate(list(body.arguments)[1:]):
        yielded = term.operands[k]
        if yielded == arg:
            continue
        if len(list(arg.uses)) == 0 and len(list(loop.results[k].uses)) == 0:
            term.operands[k] = arg
            changed = True
    if changed:
        erase_dead(body)
    return changed


def unroll(loop_op: ir.Operation, factor: int) -> list[ir.Operation]:
    """Unroll the ``scf.for`` ``loop_op`` (constant bounds, induction variable unread) by
    ``factor``: ``floor(N / factor)`` iterations of ``factor`` chained copies of the body, then
    ``N mod factor`` copies after the loop (all ``N`` copies, no loop, when ``factor >= N``).
    Returns the ops that replace it (the loop, if any, first)."""
    trips = trip_count(loop_op)
    if trips is None or factor < 2:
        return [loop_op]
    loop = loop_op.opview
    body = loop.body
    term = body.operations[len(body.operations) - 1].operation
    out: list[ir.Operation] = []
    values = list(loop.initArgs) if hasattr(loop, "initArgs") else list(loop_op.operands)[3:]
    index = ir.IndexType.get()
    main = trips // factor
    with loop_op.location, ir.InsertionPoint(loop_op):
        if main > 1 or (main == 1 and trips % factor):
            new = scf.ForOp(arith.constant(index, 0), arith.constant(index, main),
                            arith.constant(index, 1), values)
            with ir.InsertionPoint(new.body):
                carried = list(new.inner_iter_args)
                for _ in range(factor):
                    carried = _copy_body(body, term, carried)
                scf.YieldOp(carried)
            forward_concat_parts(new.body)
            values = list(new.results)
            out.append(new.operation)
            left = trips % factor
        else:
            left = trips
        for _ in range(left):
            values = _copy_body(body, term, values)
    for r, v in zip(loop_op.results, values):
        r.replace_all_uses_with(v)
    loop_op.erase()
    return out


def _copy_body(body: ir.Block, term: ir.Operation, carried: list) -> list:
    """Clone the ops of ``body`` (not its terminator) at the insertion point, reading
    ``carried`` for its iteration arguments; return what the copy yields."""
    args = list(body.arguments)[1:]
    mapping = dict(zip(args, carried))
    for inner in list(body.operations):
        inner = inner.operation
        if inner == term:
            break
        clone = inner.clone()
        remap(clone, mapping)
        for old, new in zip(inner.results, clone.results):
            mapping[old] = new
    return [mapping.get(v, v) for v in term.operands]


# ---------------------------------------------------------------------------------------------
# Parts of concatenations


def _bytes(t: ir.Type) -> int:
    from quartet.lowering.prepare import dtype_of, nbytes, shape_of

    return nbytes(shape_of(t), dtype_of(t))


def _place(value: ir.Value) -> tuple[ir.Value, int] | None:
    """(the concatenation ``value``'s bytes lie in, byte offset) through reshapes and
    contiguous slices, or None."""
    from quartet.lowering.prepare import contiguous_slice

    offset = 0
    while True:
        owner = value.owner
        if isinstance(owner, ir.Block):
            return None
        op = owner.operation
        if op.name == "tensor.concat":
            return value, offset
        if op.name in ("tensor.expand_shape", "tensor.collapse_shape"):
            value = op.operands[0]
        elif op.name == "tensor.extract_slice":
            at = contiguous_slice(op)
            if at is None:
                return None
            offset += at
            value = op.operands[0]
        else:
            return None


def forward_concat_parts(block: ir.Block) -> int:
    """Point every view in ``block`` whose bytes are exactly one operand of a contiguous
    concatenation, and whose type is that operand's, at the operand itself; returns how many.
    (After unrolling, step ``t + 1`` reads ``h[l]`` from step ``t``'s stacked state: it then
    depends on the tile that computed ``h[l]``, not on the whole stack.)"""
    from quartet.lowering.prepare import concat_offsets

    count = 0
    for op in list(block.operations):
        op = op.operation
        if op.name not in ("tensor.expand_shape", "tensor.collapse_shape",
                           "tensor.extract_slice"):
            continue
        value = op.results[0]
        place = _place(value)
        if place is None:
            continue
        concat, offset = place
        offsets = concat_offsets(concat.owner.operation)
        if offsets is None:
            continue
        size = _bytes(value.type)
        for operand, at in zip(concat.owner.operation.operands, offsets):
            if at == offset and _bytes(operand.type) == size and operand.type == value.type:
                if len(list(value.uses)):
                    value.replace_all_uses_with(operand)
                    count += 1
                break
    erase_dead(block)
    return count
