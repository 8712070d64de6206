"""What every SIMT block program shares: the kernel-argument convention, small IR helpers,
reduction combiners and the cloning of ``linalg.generic`` bodies (optionally widened to vectors).

The SIMT families (``rows.py``: element-wise chains and row programs, ``colreduce.py``,
``fallback.py``) are built op by op with upstream gpu/vector/arith/memref/scf ops: upstream has
no transform that fuses a chain of reductions over one row into one kernel with warp shuffles,
nor one that flattens an arbitrary-rank broadcasting element-wise op onto a 1-D grid of 16-byte
vectors. Payload ops of ``linalg.generic`` bodies are cloned (widened to vectors in the ``flat``
and ``row`` programs), so any arith/math payload lowers.

Assumes: static shapes; the tile's non-tensor captures are ``arith.constant`` scalars (cloned
into the kernel); tensor captures (activations and weights alike) are kernel arguments.
"""

from __future__ import annotations

import math

from mlir import ir
from mlir.dialects import arith, func, scf, vector

from quartet.dialects import defining_op
from quartet.errors import QuartetError, location_of
from quartet.runtime import targets
from quartet.runtime.targets import Chip


# ---------------------------------------------------------------------------------------------
# The kernel-argument convention shared by every builder (and gpu.py)


def kernel_inputs(tile) -> list[ir.Value]:
    """The tile's tensor inputs, in order of first use: the kernel's first arguments.

    Results of ``tensor.empty`` are left out: only their shape is read, and builders make them
    inside the kernel function."""
    return [v for v in tile.inputs if isinstance(v.type, ir.RankedTensorType)
            and not _is_empty(v)]


def _is_empty(v: ir.Value) -> bool:
    owner = _owner_op(v)
    return owner is not None and owner.name == "tensor.empty"


def kernel_func(module: ir.Module, name: str, tile) -> tuple[func.FuncOp, list, list]:
    """``func.func @name(inputs..., outputs...)`` on memrefs in ``module``; (fn, ins, outs)."""
    ins = kernel_inputs(tile)
    in_types = [_memref_of(v.type) for v in ins]
    out_types = [_memref_of(r.type) for r in tile.results]
    with ir.InsertionPoint(module.body):
        fn = func.FuncOp(name, (in_types + out_types, []))
    roles = ["input"] * len(in_types) + ["output"] * len(out_types)
    fn.arg_attrs = ir.ArrayAttr.get([
        ir.DictAttr.get({"quartet.role": ir.StringAttr.get(r)}) for r in roles])
    entry = fn.add_entry_block()
    args = list(entry.arguments)
    return fn, args[:len(in_types)], args[len(in_types):]


def _memref_of(t: ir.Type) -> ir.MemRefType:
    t = ir.RankedTensorType(t)
    if any(d < 0 for d in t.shape):
        raise QuartetError(f"dynamic shape {t} is not supported")
    return ir.MemRefType.get(list(t.shape), t.element_type)


def _read_by_live_op(barg) -> bool:
    """Whether a body argument is read by an op whose value is used (the boolean widening
    leaves a dead ``arith.trunci`` of the init behind)."""
    for use in barg.uses:
        owner = use.owner
        if owner.name == "linalg.yield" or any(len(list(r.uses)) for r in owner.results):
            return True
    return False


def _reject_gathers(generics) -> None:
    """Bodies are cloned with only constants from outside: a gather's ``tensor.extract`` of a
    captured table (embeddings, issue 16) is left to the fallback family."""
    for g in generics:
        if any(o.operation.name == "tensor.extract" for o in g.regions[0].blocks[0].operations):
            raise Unsupported("a generic body reads a tensor with tensor.extract (a gather)")


def _non_tensor_captures(tile) -> list[ir.Value]:
    return [v for v in tile.inputs if not isinstance(v.type, ir.RankedTensorType)]


def _loc(op) -> str | None:
    return location_of(op)


def _fail(tile, message: str):
    raise QuartetError(f"'quartet.tile' {message}", _loc(tile.operation))


# ---------------------------------------------------------------------------------------------
# Small IR helpers


def _index(v: int) -> ir.Value:
    return arith.constant(ir.IndexType.get(), v)


def _i32(v: int) -> ir.Value:
    return arith.constant(ir.IntegerType.get_signless(32), v)


def _owner_op(value: ir.Value):
    return defining_op(value)


def _is_float(t: ir.Type) -> bool:
    return isinstance(t, (ir.F16Type, ir.BF16Type, ir.F32Type, ir.F64Type))


def _bytes_of(t: ir.Type) -> int:
    if isinstance(t, ir.IntegerType):
        return max(1, ir.IntegerType(t).width // 8)
    return {"f16": 2, "bf16": 2, "f32": 4, "f64": 8}.get(str(t), 4)


def _vec(t: ir.Type, width: int | None) -> ir.Type:
    return ir.VectorType.get([width], t) if width else t


def _splat(scalar: ir.Value, width: int | None) -> ir.Value:
    if not width or isinstance(scalar.type, ir.VectorType):
        return scalar
    return vector.broadcast(ir.VectorType.get([width], scalar.type), scalar)


def _const_like(attr: ir.Attribute, t: ir.Type, width: int | None) -> ir.Value:
    if width:
        vt = ir.VectorType.get([width], t)
        return arith.ConstantOp(vt, ir.DenseElementsAttr.get_splat(vt, attr)).result
    return arith.ConstantOp(t, attr).result


def _float_attr(t: ir.Type, value: float) -> ir.Attribute:
    return ir.FloatAttr.get(t, value)


# Reduction combiners: op name -> (vector.reduction kind, identity(t))
_INF = float("inf")
COMBINERS = {
    "arith.addf": (vector.CombiningKind.ADD, lambda t: _float_attr(t, 0.0)),
    "arith.mulf": (vector.CombiningKind.MUL, lambda t: _float_attr(t, 1.0)),
    "arith.maximumf": (vector.CombiningKind.MAXIMUMF, lambda t: _float_attr(t, -_INF)),
    "arith.minimumf": (vector.CombiningKind.MINIMUMF, lambda t: _float_attr(t, _INF)),
    "arith.maxnumf": (vector.CombiningKind.MAXNUMF, lambda t: _float_attr(t, -_INF)),
    "arith.minnumf": (vector.CombiningKind.MINNUMF, lambda t: _float_attr(t, _INF)),
    "arith.addi": (vector.CombiningKind.ADD, lambda t: ir.IntegerAttr.get(t, 0)),
    "arith.muli": (vector.CombiningKind.MUL, lambda t: ir.IntegerAttr.get(t, 1)),
    "arith.maxsi": (vector.CombiningKind.MAXSI,
                    lambda t: ir.IntegerAttr.get(t, -(1 << (ir.IntegerType(t).width - 1)))),
    "arith.minsi": (vector.CombiningKind.MINSI,
                    lambda t: ir.IntegerAttr.get(t, (1 << (ir.IntegerType(t).width - 1)) - 1)),
    "arith.ori": (vector.CombiningKind.OR, lambda t: ir.IntegerAttr.get(t, 0)),
    "arith.xori": (vector.CombiningKind.XOR, lambda t: ir.IntegerAttr.get(t, 0)),
    "arith.andi": (vector.CombiningKind.AND, lambda t: ir.IntegerAttr.get(t, -1)),
}


def accumulator_type(combiner: str, t: ir.Type) -> ir.Type:
    """fp32 for fp16/bf16 sums and products (what PyTorch does), else the element type."""
    if combiner in ("arith.addf", "arith.mulf") and isinstance(t, (ir.F16Type, ir.BF16Type)):
        return ir.F32Type.get()
    return t


def _convert(v: ir.Value, t: ir.Type, width: int | None) -> ir.Value:
    """extf / truncf ``v`` (scalar or vector) to element type ``t``."""
    vt = v.type
    elt = ir.VectorType(vt).element_type if isinstance(vt, ir.VectorType) else vt
    if elt == t:
        return v
    target = ir.VectorType.get(ir.VectorType(vt).shape, t) if isinstance(vt, ir.VectorType) \
        else t
    if _bytes_of(t) > _bytes_of(elt):
        return arith.extf(target, v)
    return arith.truncf(target, v)


def _combine(name: str, a: ir.Value, b: ir.Value) -> ir.Value:
    return ir.Operation.create(name, results=[a.type], operands=[a, b]).result


# ---------------------------------------------------------------------------------------------
# Generic bodies: cloned, optionally widened to vectors


def _live_body_ops(block: ir.Block, live_outputs: list[int]) -> list[ir.Operation]:
    """Ops of a linalg body that the yielded values ``live_outputs`` depend on, in order."""
    yield_op = list(block.operations)[-1].operation
    return _body_ops_for(block, [yield_op.operands[i] for i in live_outputs])


def _body_ops_for(block: ir.Block, values: list) -> list[ir.Operation]:
    """Ops of a linalg body that ``values`` depend on, in order."""
    ops = [o.operation for o in block.operations]
    needed = set()
    work = list(values)
    body = {id_of(o) for o in ops}
    while work:
        v = work.pop()
        owner = _owner_op(v)
        if owner is None or id_of(owner) not in body or id_of(owner) in needed:
            continue
        needed.add(id_of(owner))
        work.extend(owner.operands)
    return [o for o in ops[:-1] if id_of(o) in needed]


def id_of(op) -> int:
    """A stable identity of an op for sets (Python wrappers differ between accesses)."""
    return hash(op.operation if hasattr(op, "operation") else op)


def _outside_scalar(value: ir.Value, width: int | None) -> ir.Value:
    """A value a linalg body reads from outside: an ``arith.constant`` scalar, cloned."""
    owner = _owner_op(value)
    if owner is None or owner.name != "arith.constant":
        raise Unsupported("a generic body reads a non-constant value from outside")
    return _const_like(owner.attributes["value"], value.type, width)


def emit_body(block: ir.Block, args: list, width: int | None,
              live_outputs: list[int] | None = None, targets: list | None = None,
              divide_by_reciprocal: bool = False) -> list:
    """Clone a linalg body at the current insertion point; return the (live) yielded values.

    ``args`` gives one value per block argument (None when unused). With ``width`` every scalar
    becomes a ``vector<width x T>``: scalar operands (constants, broadcast row values) are
    splat, results widened. Ops whose operands are all uniform (the same for every element of
    the vector: constants, row values) are emitted once as scalars and splat.

    ``divide_by_reciprocal``: a widened ``arith.divf`` by a uniform divisor becomes one fp32
    reciprocal (IEEE division) and a multiply per element. The caller allows it only where the
    quotient is rounded to 16 bits (the division's own type, or a ``truncf`` right after it):
    the product is within 1.5 fp32 ulp of the quotient, so the 16-bit result differs from the
    correctly rounded one only on a 2^-12 sliver at a rounding midpoint. An IEEE division per
    element costs about ten instructions and made GELU and softmax issue-bound on sm_90.
    """
    ops = [o.operation for o in block.operations]
    yield_op = ops[-1]
    live = list(range(len(yield_op.operands))) if live_outputs is None else live_outputs
    wanted = targets if targets is not None else [yield_op.operands[i] for i in live]
    env: dict = {}
    uniform: dict = {}          # body value -> its scalar (the same for every vector element)
    for barg, value in zip(block.arguments, args):
        if value is not None:
            env[barg] = _splat(value, width) if width else value
            if width and not isinstance(value.type, ir.VectorType):
                uniform[barg] = value
    for op in _body_ops_for(block, wanted):
        if op.name == "arith.constant":
            env[op.results[0]] = _const_like(op.attributes["value"], op.results[0].type, width)
            uniform[op.results[0]] = _const_like(op.attributes["value"], op.results[0].type,
                                                 None)
            continue
        if op.name in ("linalg.index",) or len(op.regions):
            raise Unsupported(f"'{op.name}' in a generic body")
        for v in op.operands:
            if v in env:
                continue
            if isinstance(v.owner, ir.Block) and v.owner == block:
                raise Unsupported("a generic body reads an unused block argument")
            env[v] = _outside_scalar(v, width)
            if width:
                uniform[v] = _outside_scalar(v, None)
        attrs = {key: op.attributes[key] for key in op.attributes}
        if width and len(op.results) == 1 and all(v in uniform for v in op.operands):
            res = ir.Operation.create(op.name, results=[op.results[0].type],
                                      operands=[uniform[v] for v in op.operands],
                                      attributes=attrs).result
            uniform[op.results[0]] = res
            env[op.results[0]] = _splat(res, width)
            continue
        if width and divide_by_reciprocal and op.name == "arith.divf" and \
                op.operands[1] in uniform and _is_float(op.results[0].type):
            env[op.results[0]] = _times_reciprocal(env[op.operands[0]],
                                                   uniform[op.operands[1]], width)
            continue
        new = ir.Operation.create(op.name, results=[_vec(r.type, width) for r in op.results],
                                  operands=[env[v] for v in op.operands], attributes=attrs)
        for old, res in zip(op.results, new.results):
            env[old] = res
    out = []
    for v in wanted:
        if v in env:
            out.append(env[v])
        elif isinstance(v.owner, ir.Block):
            raise Unsupported("a generic body yields an unused block argument")
        else:
            out.append(_outside_scalar(v, width))
    return out


def _times_reciprocal(a: ir.Value, b: ir.Value, width: int) -> ir.Value:
    """``a / b`` for a vector ``a`` and a scalar ``b`` as ``a * (1 / b)``, in fp32 at least."""
    t = b.type
    f32 = ir.F32Type.get()
    wide = f32 if _bytes_of(t) < 4 else t
    one = arith.ConstantOp(wide, ir.FloatAttr.get(wide, 1.0)).result
    r = arith.divf(one, _convert(b, wide, None))
    q = arith.mulf(_convert(a, wide, width), _splat(r, width))
    return _convert(q, t, width)


class Unsupported(Exception):
    """A tile this builder does not take (the dispatcher tries the next one)."""



def _shape(v: ir.Value) -> tuple:
    return tuple(ir.ShapedType(v.type).shape)


def _affine_results(amap: ir.AffineMap) -> list:
    out = []
    for e in amap.results:
        d = e.maybe_downcast() if hasattr(e, "maybe_downcast") else e
        if isinstance(d, ir.AffineDimExpr):
            out.append(("loop", d.position))
        elif isinstance(d, ir.AffineConstantExpr):
            out.append(("const", d.value))
        else:
            raise Unsupported(f"indexing map result '{e}' (only dims and constants)")
    return out


def _maps(op) -> list:
    return [_affine_results(ir.AffineMapAttr(a).value)
            for a in ir.ArrayAttr(op.attributes["indexing_maps"])]


def _iterators(op) -> list[str]:
    return ["reduction" if "reduction" in str(a) else "parallel"
            for a in ir.ArrayAttr(op.attributes["iterator_types"])]


def _loop_ranges(op) -> tuple:
    """Static extent of each loop of a linalg.generic, from its maps and operand shapes.

    (``linalg_info.info`` clones the op alone into a function, which fails for bodies that
    read constants from outside the op, as torch-mlir's do.)"""
    n = len(_iterators(op))
    ranges = [None] * n
    for amap, v in zip(_maps(op), op.operands):
        for (kind, x), extent in zip(amap, _shape(v)):
            if kind == "loop" and ranges[x] is None:
                ranges[x] = extent
    if any(r is None or r < 0 for r in ranges):
        raise Unsupported("loop ranges that are not static")
    return tuple(ranges)


def _num_inputs(op) -> int:
    return list(ir.DenseI32ArrayAttr(op.attributes["operandSegmentSizes"]))[0]



def _check_internal_read(amap, n_loops: int, space_kind: str, value_kind: str | None) -> None:
    """A value computed inside the row program lives with the thread that computed it: a full
    value as that thread's chunk of its row, a row value once per row. It can only be read
    where it lives: a full value through the identity map, a row value through the row loops
    in order (a broadcast along the inner loop). Anything else needs another row's or another
    thread's data (e.g. a second matrix-vector product reading the first one's results along
    its reduction loop), which a row program does not have."""
    positions = [x for kind, x in amap if kind == "loop"]
    if space_kind == "full":
        if value_kind == "full" and positions == list(range(n_loops)):
            return
        if value_kind == "row" and positions == list(range(n_loops - 1)):
            return
    elif value_kind == "row" and positions == list(range(n_loops)):
        return
    raise Unsupported("a value computed in the tile read through another map than where it "
                       "lives (another row's or thread's data)")


def _check_map(amap, n_loops: int, space_kind: str, reduction_init: bool) -> None:
    loops = [d for d in amap if d[0] == "loop"]
    for d in amap:
        if d[0] == "const" and d[1] != 0:
            raise Unsupported("an indexing map with a non-zero constant")
    positions = [d[1] for d in loops]
    if len(set(positions)) != len(positions):
        raise Unsupported("an indexing map repeating a loop")
    if reduction_init and (n_loops - 1) in positions:
        raise Unsupported("a reduction init indexed by the reduced loop")


def _combiner_of(block: ir.Block, nin: int, k: int) -> str:
    """The op name combining output ``k``'s partials: ``yield k = op(x, out_k)``."""
    return _split_reduction(block, nin, k)[0]


def _split_reduction(block: ir.Block, nin: int, k: int) -> tuple[str, ir.Value]:
    """(combiner op name, x) where the body yields ``combiner(x, out_k)`` for output ``k``."""
    yield_op = list(block.operations)[-1].operation
    out_arg = block.arguments[nin + k]
    v = yield_op.operands[k]
    owner = _owner_op(v)
    if owner is None or owner.name not in COMBINERS or len(owner.operands) != 2:
        raise Unsupported("a reduction whose body is not 'combine(f(in), out)'")
    a, b = owner.operands
    if not (a == out_arg) ^ (b == out_arg):
        raise Unsupported("a reduction whose body is not 'combine(f(in), out)'")
    # The other operand must not depend on out_arg.
    other = b if a == out_arg else a
    work, seen = [other], set()
    while work:
        x = work.pop()
        if x == out_arg:
            raise Unsupported("a reduction whose body is not 'combine(f(in), out)'")
        o = _owner_op(x)
        if o is not None and id_of(o) not in seen and o.parent == owner.parent:
            seen.add(id_of(o))
            work.extend(o.operands)
    return owner.name, other



def _and(a, b):
    if a is None:
        return b
    if b is None:
        return a
    return arith.andi(a, b)


def _guarded(cond, emit) -> None:
    if cond is None:
        emit()
        return
    if_op = scf.IfOp(cond)
    with ir.InsertionPoint(if_op.then_block):
        emit()
        scf.YieldOp([])


def _pow2_at_least(x: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(1, x))))



def chip_of(target) -> Chip:
    """The :class:`Chip` of a target name (its default chip), or ``target`` itself."""
    return targets.get(target)
