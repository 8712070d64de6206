"""SIMT kernels for memory-bound tiles: elementwise chains, row-wise programs (softmax, layernorm,
reductions over the innermost axis), reductions over outer axes, and a generic fallback.

Roller's rTile for a memory-bound operator is a tile of rows (or of flat element vectors) whose
traffic is one read of each input and one write of each output; Welder's fused tiles keep every
intermediate value of such a chain in registers. This module turns a configured ``quartet.tile``
into a ``func.func`` on memrefs (the tile's tensor inputs in order of first use, then its
results) holding one ``gpu.launch``, the form that ``lowering/binary.py`` compiles.

Builders, picked by :func:`plan` (first that applies):

* ``flat`` - the tile is a chain of all-parallel linalg ops over one iteration space: each thread
  computes one vector of ``V`` elements of the innermost loop (16-byte loads/stores), inputs
  read through their indexing maps (contiguous vector loads, broadcasts, gathers for
  transposes); intermediates stay in registers.
* ``row`` - a chain over the same rows whose reductions run over the innermost loop (softmax =
  max, sub+exp, sum, div; layernorm = mean, var, normalize*gamma+beta): a group of ``G``
  threads per row, ``RB`` rows per block, the row kept in registers (``C`` chunks of ``V``
  elements per thread), per-thread partials folded with the reduction body, then
  ``gpu.shuffle xor`` across the group (and a shared-memory step across warps when ``G`` > 32).
  The accumulator type is the reduction's own (fp32 for fp16 data as torch-mlir emits it).
* ``colreduce`` - one reduction over outer loops (innermost loop parallel): each thread owns
  ``V`` adjacent outputs and walks the reduced loops serially; blocks of ``32 x TY`` threads
  split the reduced loops over ``TY`` rows and combine in shared memory.
* ``fallback`` - any single linalg op (plus a ``linalg.fill`` of its init): upstream transform
  dialect ``tile_using_forall`` by ``block_tile`` onto ``#gpu.block<linear_dim_*>``, again by
  ``thread_tile`` onto ``#gpu.thread<linear_dim_*>``, one-shot bufferization,
  ``map_forall_to_blocks {generate_gpu_launch}`` and ``map_nested_forall_to_threads``.

The first three are built op by op with upstream gpu/vector/arith/memref/scf ops: upstream has no
transform that fuses a chain of reductions over one row into one kernel with warp shuffles, nor
one that flattens an arbitrary-rank broadcasting elementwise op onto a 1-D grid of 16-byte
vectors. Payload ops of ``linalg.generic`` bodies are cloned (widened to vectors in the
``flat``/``row`` builders), so any arith/math payload lowers.

Assumes: static shapes; the tile's non-tensor captures are ``arith.constant`` scalars (cloned into
the kernel); tensor captures (activations and weights alike) are kernel arguments.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from mlir import ir
from mlir.dialects import arith, func, gpu, memref, scf, vector

from quartet.dialects import defining_op
from quartet.errors import QuartetError, location_of

from .binary import get_target

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
        raise _Unsupported("a generic body reads a non-constant value from outside")
    return _const_like(owner.attributes["value"], value.type, width)


def emit_body(block: ir.Block, args: list, width: int | None,
              live_outputs: list[int] | None = None, targets: list | None = None) -> list:
    """Clone a linalg body at the current insertion point; return the (live) yielded values.

    ``args`` gives one value per block argument (None when unused). With ``width`` every scalar
    becomes a ``vector<width x T>``: scalar operands (constants, broadcast row values) are
    splat, results widened.
    """
    ops = [o.operation for o in block.operations]
    yield_op = ops[-1]
    live = list(range(len(yield_op.operands))) if live_outputs is None else live_outputs
    wanted = targets if targets is not None else [yield_op.operands[i] for i in live]
    env: dict = {}
    for barg, value in zip(block.arguments, args):
        if value is not None:
            env[barg] = _splat(value, width) if width else value
    for op in _body_ops_for(block, wanted):
        if op.name == "arith.constant":
            env[op.results[0]] = _const_like(op.attributes["value"], op.results[0].type, width)
            continue
        if op.name in ("linalg.index",) or len(op.regions):
            raise _Unsupported(f"'{op.name}' in a generic body")
        operands = []
        for v in op.operands:
            if v in env:
                operands.append(env[v])
            elif isinstance(v.owner, ir.Block) and v.owner == block:
                raise _Unsupported("a generic body reads an unused block argument")
            else:
                env[v] = _outside_scalar(v, width)
                operands.append(env[v])
        attrs = {key: op.attributes[key] for key in op.attributes}
        new = ir.Operation.create(op.name, results=[_vec(r.type, width) for r in op.results],
                                  operands=operands, attributes=attrs)
        for old, res in zip(op.results, new.results):
            env[old] = res
    out = []
    for v in wanted:
        if v in env:
            out.append(env[v])
        elif isinstance(v.owner, ir.Block):
            raise _Unsupported("a generic body yields an unused block argument")
        else:
            out.append(_outside_scalar(v, width))
    return out


class _Unsupported(Exception):
    """A tile this builder does not take (the dispatcher tries the next one)."""


#: Public name of the refusal, for callers of the analyses (``roller-fuse`` asks them).
Unsupported = _Unsupported


# ---------------------------------------------------------------------------------------------
# Analysis of a row program


@dataclass
class _Access:
    """How a loop nest of the row space reaches a memref: one entry per memref dim."""

    dims: list          # per memref dim: ("loop", k) or ("const", c)


@dataclass
class _Step:
    op: ir.Operation
    kind: str                # "empty" | "fill" | "reshape" | "generic"
    space: str = ""          # "full" | "row"
    reduction: bool = False
    live: list = field(default_factory=list)    # live results (generic)


@dataclass
class RowProgram:
    """A tile seen as rows: loops ``S[:-1]`` (flattened to R rows) and the inner loop ``N``."""

    tile: object
    steps: list
    space: tuple            # S
    rows: int               # R
    inner: int              # N
    vector: int             # V
    reductions: int
    full_loads: list        # element types of full-space memory accesses (for V)


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
            raise _Unsupported(f"indexing map result '{e}' (only dims and constants)")
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
        raise _Unsupported("loop ranges that are not static")
    return tuple(ranges)


def _num_inputs(op) -> int:
    return list(ir.DenseI32ArrayAttr(op.attributes["operandSegmentSizes"]))[0]


def analyze_rows(tile) -> RowProgram:
    """The :class:`RowProgram` of ``tile``, or raise ``_Unsupported`` with the reason."""
    ops = tile.computation
    for v in _non_tensor_captures(tile):
        owner = _owner_op(v)
        if owner is None or owner.name != "arith.constant":
            raise _Unsupported("a non-constant scalar captured by the tile")
    generics = [o for o in ops if o.name == "linalg.generic"]
    if generics:
        space = max((_loop_ranges(o) for o in generics), key=lambda s: (math.prod(s), len(s)))
    elif all(o.name in ("linalg.fill", "tensor.empty") for o in ops):
        space = max((_shape(v) for v in tile.terminator.operands), key=math.prod)
    else:
        raise _Unsupported("no linalg.generic")
    if not space:
        raise _Unsupported("a 0-d iteration space")
    R, N = math.prod(space[:-1]), space[-1]
    row_shapes = {space[:-1], space[:-1] + (1,)}
    if N == 1:
        row_shapes = {space}

    def klass(shape):
        if shape == space:
            return "full"
        if shape in row_shapes:
            return "row"
        return None

    steps, reductions, full_loads = [], 0, []
    internal = set()
    for op in ops:
        name = op.name
        if name == "tensor.empty":
            steps.append(_Step(op, "empty"))
        elif name == "linalg.fill":
            if klass(_shape(op.results[0])) is None:
                raise _Unsupported(f"linalg.fill of shape {_shape(op.results[0])}")
            steps.append(_Step(op, "fill", klass(_shape(op.results[0]))))
        elif name in ("tensor.expand_shape", "tensor.collapse_shape"):
            a, b = klass(_shape(op.operands[0])), klass(_shape(op.results[0]))
            if a != "row" or b != "row":
                raise _Unsupported(f"'{name}' that is not a row reshape")
            steps.append(_Step(op, "reshape", "row"))
        elif name == "linalg.generic":
            iters = _iterators(op)
            loops = _loop_ranges(op)
            maps = _maps(op)
            nin = _num_inputs(op)
            if loops == space:
                space_kind = "full"
                if "reduction" in iters:
                    if iters != ["parallel"] * (len(iters) - 1) + ["reduction"]:
                        raise _Unsupported("a reduction that is not over the innermost loop only")
                    if len(space) == 0:
                        raise _Unsupported("0-d reduction")
                    reductions += 1
                red = "reduction" in iters
            elif loops in row_shapes:
                space_kind = "row"
                red = False
                if "reduction" in iters:
                    raise _Unsupported("a reduction over a row-space op")
            else:
                raise _Unsupported(f"a linalg.generic over loops {loops} in a tile over {space}")
            n_loops = len(loops)
            for i, (amap, v) in enumerate(zip(maps, op.operands)):
                body_arg = op.regions[0].blocks[0].arguments[i]
                is_init = i >= nin
                if is_init and not red and len(list(body_arg.uses)) == 0:
                    continue
                _check_map(amap, n_loops, space_kind, red and is_init)
                inside = v in internal
                if inside and not is_init:
                    _check_internal_read(amap, n_loops, space_kind, klass(_shape(v)))
                if space_kind == "full" and not (red and is_init):
                    if not inside and any(d == ("loop", n_loops - 1) for d in amap):
                        full_loads.append(ir.ShapedType(v.type).element_type)
            block = op.regions[0].blocks[0]
            live = [k for k, r in enumerate(op.results) if len(list(r.uses))]
            if red:
                for k in live:
                    _combiner_of(block, nin, k)
            # Check the body is clonable (live part).
            for bop in _live_body_ops(block, live):
                if bop.name == "linalg.index" or len(bop.regions):
                    raise _Unsupported(f"'{bop.name}' in a generic body")
            steps.append(_Step(op, "generic", space_kind, red, live))
            want = "full" if space_kind == "full" and not red else "row"
            for r in op.results:
                if klass(_shape(r)) != want:
                    raise _Unsupported(f"a result of shape {_shape(r)} in a tile over {space}")
        else:
            raise _Unsupported(f"'{name}' in a row program")
        for r in op.results:
            internal.add(r)
    for v in tile.terminator.operands:
        if v not in internal or klass(_shape(v)) is None:
            raise _Unsupported("a yielded value not computed in the tile")
    elt_bytes = [_bytes_of(t) for t in full_loads] or \
        [_bytes_of(ir.ShapedType(r.type).element_type) for r in tile.results]
    V = max(1, 16 // min(elt_bytes))
    while V > 1 and N % V:
        V //= 2
    return RowProgram(tile, steps, space, R, N, V, reductions, full_loads)


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
    raise _Unsupported("a value computed in the tile read through another map than where it "
                       "lives (another row's or thread's data)")


def _check_map(amap, n_loops: int, space_kind: str, reduction_init: bool) -> None:
    loops = [d for d in amap if d[0] == "loop"]
    for d in amap:
        if d[0] == "const" and d[1] != 0:
            raise _Unsupported("an indexing map with a non-zero constant")
    positions = [d[1] for d in loops]
    if len(set(positions)) != len(positions):
        raise _Unsupported("an indexing map repeating a loop")
    if reduction_init and (n_loops - 1) in positions:
        raise _Unsupported("a reduction init indexed by the reduced loop")


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
        raise _Unsupported("a reduction whose body is not 'combine(f(in), out)'")
    a, b = owner.operands
    if not (a == out_arg) ^ (b == out_arg):
        raise _Unsupported("a reduction whose body is not 'combine(f(in), out)'")
    # The other operand must not depend on out_arg.
    other = b if a == out_arg else a
    work, seen = [other], set()
    while work:
        x = work.pop()
        if x == out_arg:
            raise _Unsupported("a reduction whose body is not 'combine(f(in), out)'")
        o = _owner_op(x)
        if o is not None and id_of(o) not in seen and o.parent == owner.parent:
            seen.add(id_of(o))
            work.extend(o.operands)
    return owner.name, other


# ---------------------------------------------------------------------------------------------
# Values of a row program while it is emitted


@dataclass
class _Full:
    chunks: list          # one vector<V x T> per chunk


@dataclass
class _Row:
    value: ir.Value       # a scalar, the same for the whole row


@dataclass
class _Uniform:
    value: ir.Value       # a scalar, the same everywhere (linalg.fill)


@dataclass
class _RowConfig:
    mode: str             # "flat" | "row"
    threads: int          # T
    group: int            # G threads per row (row mode)
    rows_per_block: int   # RB
    chunks: int           # C vectors per thread per row
    grid: int


class _RowEmitter:
    """Emits a :class:`RowProgram` inside a ``gpu.launch`` body."""

    def __init__(self, prog: RowProgram, cfg: _RowConfig, in_memrefs: dict, out_memrefs: list,
                 smem: list, warp: int):
        self.p, self.cfg = prog, cfg
        self.inputs = in_memrefs        # tensor value -> memref block argument
        self.outputs = out_memrefs
        self.smem = smem                # one workgroup memref per reduction (G > warp)
        self.warp = warp
        self.env: dict = {}
        self.red_index = 0

    # --- indices -------------------------------------------------------------------------
    def setup(self, bid: ir.Value, tid: ir.Value) -> None:
        p, cfg = self.p, self.cfg
        V = p.vector
        if cfg.mode == "flat":
            total = p.rows * p.inner
            gid = arith.addi(arith.muli(bid, _index(cfg.threads)), tid)
            e = arith.muli(gid, _index(V))
            self.valid = arith.cmpi(arith.CmpIPredicate.ult, e, _index(total))
            e = arith.minui(e, _index(total - V))
            r = arith.divui(e, _index(p.inner))
            self.j = [arith.remui(e, _index(p.inner))]
            self.chunk_valid = [None]
            self.lane0 = arith.cmpi(arith.CmpIPredicate.eq, self.j[0], _index(0))
        else:
            G, RB = cfg.group, cfg.rows_per_block
            grp = arith.divui(tid, _index(G)) if RB > 1 else _index(0)
            lane = arith.remui(tid, _index(G)) if RB > 1 else tid
            self.lane, self.grp = lane, grp
            r = arith.addi(arith.muli(bid, _index(RB)), grp) if RB > 1 else bid
            if cfg.grid * RB != p.rows:
                self.valid = arith.cmpi(arith.CmpIPredicate.ult, r, _index(p.rows))
                r = arith.minui(r, _index(p.rows - 1))
            else:
                self.valid = None
            self.j, self.chunk_valid = [], []
            for c in range(cfg.chunks):
                j = arith.muli(arith.addi(_index(c * G), lane), _index(V))
                if (c * G + G) * V > p.inner:
                    self.chunk_valid.append(arith.cmpi(arith.CmpIPredicate.ult, j,
                                                       _index(p.inner)))
                    j = arith.minui(j, _index(p.inner - V))
                else:
                    self.chunk_valid.append(None)
                self.j.append(j)
            self.lane0 = arith.cmpi(arith.CmpIPredicate.eq, lane, _index(0))
        # Leading loop indices from the row number.
        lead = list(p.space[:-1])
        self.lead = []
        for k, extent in enumerate(lead):
            stride = math.prod(lead[k + 1:])
            q = arith.divui(r, _index(stride)) if stride > 1 else r
            self.lead.append(arith.remui(q, _index(extent)) if k > 0 else q)
        self.row = r

    # --- memory --------------------------------------------------------------------------
    def _indices(self, amap, n_loops: int, chunk: int | None) -> list[ir.Value]:
        """Memref indices of one access: loop k < n-1 is a leading loop (from the row number);
        the last loop is the inner loop (chunk start) of a full op or the unit loop of a row op."""
        idx = []
        n = len(self.p.space)
        for kind, x in amap:
            if kind == "const":
                idx.append(_index(x))
            elif x < n - 1:
                idx.append(self.lead[x])
            elif chunk is not None:
                idx.append(self.j[chunk])
            else:
                idx.append(_index(0))
        return idx

    def load_full(self, value: ir.Value, amap, chunk: int) -> ir.Value:
        """A vector of V elements of a captured tensor along the inner loop."""
        V, n = self.p.vector, len(self.p.space)
        mem = self.inputs[value]
        elt = ir.MemRefType(mem.type).element_type
        last = ("loop", n - 1)
        idx = self._indices(amap, n, chunk)
        if amap and amap[-1] == last:
            align = V * _bytes_of(elt)
            return vector.load(ir.VectorType.get([V], elt), mem, idx, alignment=align)
        if last not in amap:
            return _splat(memref.load(mem, idx), V)
        # A transposed operand: gather V scalars.
        pos = amap.index(last)
        elems = []
        for k in range(V):
            ik = list(idx)
            ik[pos] = arith.addi(idx[pos], _index(k))
            elems.append(memref.load(mem, ik))
        return vector.from_elements(ir.VectorType.get([V], elt), elems)

    def load_row(self, value: ir.Value, amap, n_loops: int) -> ir.Value:
        mem = self.inputs[value]
        return memref.load(mem, self._indices(amap, n_loops, None))

    def operand(self, value: ir.Value, amap, n_loops: int, chunk: int | None, full: bool):
        """The value of a generic operand for one chunk (full ops) or the row (row ops)."""
        V = self.p.vector
        if value in self.env:
            got = self.env[value]
            if isinstance(got, _Full):
                return got.chunks[chunk]
            return _splat(got.value, V) if full else got.value
        if value not in self.inputs:
            raise _Unsupported("an operand that is neither computed in the tile nor an input")
        if full:
            return self.load_full(value, amap, chunk)
        return self.load_row(value, amap, n_loops)

    # --- steps ---------------------------------------------------------------------------
    def run(self) -> None:
        for step in self.p.steps:
            op = step.op
            if step.kind == "empty":
                continue
            if step.kind == "fill":
                self.env[op.results[0]] = _Uniform(self.scalar_operand(op.operands[0]))
            elif step.kind == "reshape":
                self.env[op.results[0]] = self.env[op.operands[0]]
            elif step.reduction:
                self.reduce(step)
            else:
                self.parallel(step)
        self.store()

    def scalar_operand(self, v: ir.Value) -> ir.Value:
        owner = _owner_op(v)
        if owner is not None and owner.name == "arith.constant":
            return arith.ConstantOp(v.type, owner.attributes["value"]).result
        raise _Unsupported("linalg.fill of a non-constant value")

    def _body_args(self, op, chunk, full: bool, use_inits: bool) -> list:
        block = op.regions[0].blocks[0]
        nin = _num_inputs(op)
        n_loops = len(_iterators(op))
        args = []
        for i, (amap, v) in enumerate(zip(_maps(op), op.operands)):
            barg = block.arguments[i]
            if i >= nin and (not use_inits or not len(list(barg.uses))):
                args.append(None)
                continue
            if not len(list(barg.uses)):
                args.append(None)
                continue
            args.append(self.operand(v, amap, n_loops, chunk, full))
        return args

    def parallel(self, step: _Step) -> None:
        op = step.op
        block = op.regions[0].blocks[0]
        if step.space == "full":
            per_chunk = []
            for c in range(len(self.j)):
                args = self._body_args(op, c, True, True)
                per_chunk.append(emit_body(block, args, self.p.vector, step.live))
            for n, k in enumerate(step.live):
                self.env[op.results[k]] = _Full([vals[n] for vals in per_chunk])
        else:
            args = self._body_args(op, None, False, True)
            vals = emit_body(block, args, None, step.live)
            for n, k in enumerate(step.live):
                self.env[op.results[k]] = _Row(vals[n])

    def reduce(self, step: _Step) -> None:
        """Fold the chunks with the body's f(in), then combine across the row's threads.

        fp16/bf16 sums and products accumulate in fp32 (rounded once at the end)."""
        op = step.op
        block = op.regions[0].blocks[0]
        nin = _num_inputs(op)
        V = self.p.vector
        live = step.live
        kinds, accs, xs = [], [], []
        for k in live:
            name, x = _split_reduction(block, nin, k)
            t = ir.ShapedType(op.results[k].type).element_type
            acc_t = accumulator_type(name, t)
            kinds.append((name, COMBINERS[name][0], t, acc_t))
            accs.append(_const_like(COMBINERS[name][1](acc_t), acc_t, V))
            xs.append(x)
        for c in range(len(self.j)):
            args = self._body_args(op, c, True, False)
            vals = emit_body(block, args[:nin] + [None] * (len(args) - nin), V, targets=xs)
            valid = self.chunk_valid[c]
            for n in range(len(live)):
                name, _, t, acc_t = kinds[n]
                new = _combine(name, _convert(vals[n], acc_t, V), accs[n])
                accs[n] = arith.select(valid, new, accs[n]) if valid is not None else new
        n_loops = len(_iterators(op))
        for n, k in enumerate(live):
            name, kind, t, acc_t = kinds[n]
            s = vector.reduction(acc_t, kind, accs[n])
            if self.cfg.mode == "row":
                s = self.group_combine(name, s)
            init = op.operands[nin + k]
            init_v = self.operand(init, _maps(op)[nin + k], n_loops, None, False)
            total = _combine(name, s, _convert(init_v, acc_t, None))
            self.env[op.results[k]] = _Row(_convert(total, t, None))

    def group_combine(self, name: str, s: ir.Value) -> ir.Value:
        """Combine a per-thread partial across the G threads of the row."""
        G, W = self.cfg.group, self.warp
        # The width is the number of lanes that shuffle: the whole warp, or the whole block when
        # it is smaller. xor offsets below G stay inside each aligned group of G lanes; the NVVM
        # lowering turns the width w into the member mask (1 << w) - 1, so a width of G when
        # other lanes shuffle too is wrong (measured: G = 16 gave a 7e-2 error on the H100).
        width = _i32(min(W, self.cfg.threads))
        offset = min(G, W) // 2
        while offset >= 1:
            other = _shuffle_xor(s, offset, width)
            s = _combine(name, s, other)
            offset //= 2
        if G <= W:
            return s
        # Across the G / W warps of the row: lane 0 of each warp writes its partial to shared
        # memory, then every thread combines the partials of its row.
        warps = G // W
        smem = self.smem[self.red_index]
        self.red_index += 1
        lane_in_warp = arith.remui(self.lane, _index(W))
        warp_in_row = arith.divui(self.lane, _index(W))
        slot = arith.addi(arith.muli(self.grp, _index(warps)), warp_in_row)
        first = arith.cmpi(arith.CmpIPredicate.eq, lane_in_warp, _index(0))
        if_op = scf.IfOp(first)
        with ir.InsertionPoint(if_op.then_block):
            memref.store(s, smem, [slot])
            scf.YieldOp([])
        gpu.barrier()
        base = arith.muli(self.grp, _index(warps))
        total = memref.load(smem, [base])
        for w in range(1, warps):
            total = _combine(name, total, memref.load(smem, [arith.addi(base, _index(w))]))
        return total

    def store(self) -> None:
        p, V = self.p, self.p.vector
        for i, v in enumerate(self.p.tile.terminator.operands):
            mem = self.outputs[i]
            mt = ir.MemRefType(mem.type)
            got = self.env[v]
            if isinstance(got, _Uniform) and tuple(mt.shape) == p.space:
                got = _Full([_splat(got.value, V)] * len(self.j))
            if isinstance(got, _Full):
                align = V * _bytes_of(mt.element_type)
                for c, chunk in enumerate(got.chunks):
                    idx = self.lead + [self.j[c]]
                    cond = _and(self.valid, self.chunk_valid[c])
                    _guarded(cond, lambda chunk=chunk, idx=idx:
                             vector.store(chunk, mem, idx, alignment=align))
            else:
                rank = len(mt.shape)
                idx = self.lead[:rank] + [_index(0)] * (rank - len(self.lead))
                cond = _and(self.valid, self.lane0)
                _guarded(cond, lambda got=got, idx=idx: memref.store(got.value, mem, idx))


def _shuffle_xor(value: ir.Value, offset: int, width: ir.Value) -> ir.Value:
    """``gpu.shuffle xor``; values narrower than 32 bits travel widened (nvvm.shfl.sync takes
    32-bit operands only; 64-bit ones are split by the upstream lowering)."""
    t = value.type
    if _is_float(t) and _bytes_of(t) < 4:
        wide = arith.extf(ir.F32Type.get(), value)
        return arith.truncf(t, gpu.shuffle(wide, _i32(offset), width, gpu.ShuffleMode.XOR)[0])
    if isinstance(t, ir.IntegerType) and ir.IntegerType(t).width < 32:
        wide = arith.extsi(ir.IntegerType.get_signless(32), value)
        return arith.trunci(t, gpu.shuffle(wide, _i32(offset), width, gpu.ShuffleMode.XOR)[0])
    return gpu.shuffle(value, _i32(offset), width, gpu.ShuffleMode.XOR)[0]


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


def row_config(prog: RowProgram, tile, warp: int) -> _RowConfig:
    """Launch shape of a row program: from the tile's schedule where given, else defaults.

    Schedule (Roller): ``threads`` = T; ``thread_tile[-1]`` = elements of the inner loop one
    thread handles (C = that / V chunks); ``block_tile[:-1]`` = rows per block.
    """
    threads = tile.threads
    thread_tile, block_tile = tile.thread_tile, tile.block_tile
    where = _loc(tile.operation)
    if threads is not None and (threads <= 0 or threads > 1024 or
                                (threads % warp and threads & (threads - 1))):
        raise QuartetError(f"'quartet.tile' threads={threads} does not fit the hardware "
                           f"(a multiple of {warp} or a power of two below it, at most 1024)",
                           where)
    V, N, R = prog.vector, prog.inner, prog.rows
    NV = N // V
    if prog.reductions == 0:
        # Flat: one V-element vector per thread over the whole tile, whatever the thread tile
        # says. Row mode with 2-8 vectors per thread was slower on the H100 (gelu(x+b)*s
        # 8192x8192 fp16: 0.121 ms flat, 0.146 ms with 2-4 vectors, 0.262 ms with 8;
        # lowering/device_simt/NOTES.md, run 4).
        T = threads or 256
        total = R * NV
        return _RowConfig("flat", T, 1, 1, 1, max(1, math.ceil(total / T)))
    per_thread = None
    if thread_tile is not None and len(thread_tile) == len(prog.space):
        per_thread = max(1, math.ceil(thread_tile[-1] / V))
    if per_thread is None:      # 2 vectors per thread measured best (NOTES.md, run 2)
        per_thread = 2 if NV >= 2 else NV
    G = min(1024, _pow2_at_least(math.ceil(NV / per_thread)))
    if threads is not None and G > threads:
        G = threads
    C = math.ceil(NV / G)
    if C > 64:
        raise QuartetError(f"'quartet.tile' a row of {N} elements needs {C} vectors per thread "
                           f"with {G} threads per row (at most 64 are kept in registers)", where)
    if threads is not None:
        T = threads
    elif block_tile is not None and len(block_tile) == len(prog.space):
        T = G * max(1, min(1024 // G, math.prod(block_tile[:-1])))
    else:
        T = max(G, 256)
    while T % G:      # a block size the policy chose: fewer threads per row, more rows
        G //= 2
    C = math.ceil(NV / G)
    if C > 64:
        raise QuartetError(f"'quartet.tile' a row of {N} elements needs {C} vectors per thread "
                           f"with {G} threads per row (at most 64 are kept in registers)", where)
    RB = T // G
    return _RowConfig("row", T, G, RB, C, math.ceil(R / RB))


def build_row_kernel(tile, target, prog: RowProgram | None = None, name: str = "kernel"):
    """The ``flat`` / ``row`` builder: a module with ``func @name`` holding one launch."""
    target = get_target(target)
    prog = prog or analyze_rows(tile)
    cfg = row_config(prog, tile, target.warp_size)
    module = ir.Module.create()
    fn, ins, outs = kernel_func(module, name, tile)
    acc_types = []
    if cfg.mode == "row" and cfg.group > target.warp_size:
        for step in prog.steps:
            if step.reduction:
                block = step.op.regions[0].blocks[0]
                for k in step.live:
                    name = _combiner_of(block, _num_inputs(step.op), k)
                    acc_types.append(accumulator_type(
                        name, ir.ShapedType(step.op.results[k].type).element_type))
    with ir.InsertionPoint(fn.entry_block):
        launch = gpu.LaunchOp((cfg.grid, 1, 1), (cfg.threads, 1, 1))
        func.ReturnOp([])
    body = launch.regions[0].blocks[0]
    smem = []
    if acc_types:
        launch.operation.attributes["workgroup_attributions"] = ir.IntegerAttr.get(
            ir.IntegerType.get_signless(64), len(acc_types))
        space = ir.Attribute.parse("#gpu.address_space<workgroup>")
        for t in acc_types:
            mt = ir.MemRefType.get([cfg.rows_per_block * cfg.group // target.warp_size], t,
                                   memory_space=space)
            smem.append(body.add_argument(mt, ir.Location.unknown()))
    in_map = dict(zip(kernel_inputs(tile), ins))
    emitter = _RowEmitter(prog, cfg, in_map, outs, smem, target.warp_size)
    with ir.InsertionPoint(body):
        emitter.setup(body.arguments[0], body.arguments[3])
        emitter.run()
        gpu.TerminatorOp()
    return module, cfg


# ---------------------------------------------------------------------------------------------
# Entry points


BUILDERS = ("row", "colreduce", "fallback")


def plan(tile) -> tuple[str, object]:
    """(builder name, its analysis) for ``tile``; raise ``_Unsupported`` when none applies."""
    reasons = []
    try:
        return "row", analyze_rows(tile)
    except _Unsupported as e:
        reasons.append(f"row: {e}")
    try:
        return "colreduce", analyze_colreduce(tile)
    except _Unsupported as e:
        reasons.append(f"colreduce: {e}")
    try:
        return "fallback", analyze_fallback(tile)
    except _Unsupported as e:
        reasons.append(f"fallback: {e}")
    raise _Unsupported("; ".join(reasons))


def supports(tile) -> bool:
    """Whether one of the SIMT builders takes ``tile``."""
    try:
        plan(tile)
        return True
    except _Unsupported:
        return False


def build_simt_kernel(tile, target, name: str = "kernel") -> ir.Module:
    """A module holding ``func.func @name`` (memrefs: tile inputs, then outputs) with one
    ``gpu.launch`` computing ``tile``. Raises :class:`QuartetError` naming the op it cannot
    take."""
    get_target(target)
    with tile.operation.context, tile.operation.location:
        try:
            kind, analysis = plan(tile)
        except _Unsupported as e:
            root = _root_name(tile)
            raise QuartetError(f"no SIMT kernel for '{root}': {e}",
                               _loc(tile.operation)) from None
        try:
            if kind == "row":
                module, _ = build_row_kernel(tile, target, analysis, name)
            elif kind == "colreduce":
                module, _ = build_colreduce_kernel(tile, target, analysis, name)
            else:
                module, _ = build_fallback_kernel(tile, target, analysis, name)
        except _Unsupported as e:
            module = _fallback_instead(tile, target, name, kind)   # e.g. a body that gathers
            if module is None:
                raise QuartetError(f"no SIMT kernel for '{_root_name(tile)}': {e}",
                                   _loc(tile.operation)) from None
        return module


def _fallback_instead(tile, target, name: str, kind: str):
    """The fallback kernel for a tile whose row or column-reduction analysis passed but whose
    builder refused it (a body with ``linalg.index`` / ``tensor.extract``: flip, interpolate),
    or None."""
    if kind == "fallback":
        return None
    try:
        return build_fallback_kernel(tile, target, analyze_fallback(tile), name)[0]
    except _Unsupported:
        return None


def _root_name(tile) -> str:
    try:
        return tile.root.operation.name
    except ValueError:
        return "quartet.tile"


# ---------------------------------------------------------------------------------------------
# The generic fallback: upstream transform-dialect tiling and mapping of any single linalg op


@dataclass
class FallbackPlan:
    op: ir.Operation            # the linalg op
    fills: list                 # linalg.fill ops producing its inits, inside the tile
    iterators: list
    ranges: tuple


def analyze_fallback(tile) -> FallbackPlan:
    ops = [o for o in tile.computation if o.name != "tensor.empty"]
    fills = [o for o in ops if o.name == "linalg.fill"]
    main = [o for o in ops if o.name != "linalg.fill"]
    if len(main) == 0 and len(fills) == 1:
        main, fills = fills, []
    if len(main) != 1 or not main[0].name.startswith("linalg."):
        raise _Unsupported("the fallback takes one linalg op (and the linalg.fill of its inits)")
    op = main[0]
    yielded = list(tile.terminator.operands)
    if len(yielded) != len(op.results) or any(a != b for a, b in zip(yielded, op.results)):
        raise _Unsupported("the fallback takes an op whose results the tile yields in order")
    inits = list(op.operands)[-len(op.results):]
    for f in fills:
        if f.results[0] not in inits or len(list(f.results[0].uses)) != 1:
            raise _Unsupported("a linalg.fill that is not an init of the tile's op")
    for v in _non_tensor_captures(tile):
        owner = _owner_op(v)
        if owner is None or owner.name != "arith.constant":
            raise _Unsupported("a non-constant scalar captured by the tile")
    iters, ranges = _generic_loops(op)
    return FallbackPlan(op, fills, iters, ranges)


def _generic_loops(op) -> tuple[list, tuple]:
    """Iterator types and loop ranges of any linalg op (named ops are generalized first)."""
    if op.name == "linalg.generic":
        return _iterators(op), _loop_ranges(op)
    from quartet.dialects import linalg_info
    try:
        info = linalg_info.info(op)
    except Exception as e:   # the scratch clone fails for ops reading outer values
        raise _Unsupported(f"cannot analyse '{op.name}': {e}") from None
    return list(info.iterator_types), tuple(info.loop_ranges)


def _divisor_at_most(n: int, k: int) -> int:
    """The largest divisor of ``n`` that is at most ``k`` (at least 1)."""
    for d in range(min(n, max(1, k)), 0, -1):
        if n % d == 0:
            return d
    return 1


def fallback_tiles(tile, fb: FallbackPlan, warp: int) -> tuple[list, list, int]:
    """(block tile sizes, thread tile sizes, threads per block); 0 = not tiled (reductions)."""
    n = len(fb.ranges)
    par = [i for i, t in enumerate(fb.iterators) if t == "parallel"]
    if not par:
        raise _Unsupported("a reduction of every loop (no parallel loop to map to threads)")
    bt, tt = tile.block_tile, tile.thread_tile
    where = _loc(tile.operation)
    if bt is not None and len(bt) == n and tt is not None and len(tt) == n:
        block = [bt[i] if i in par else 0 for i in range(n)]
        thread = [tt[i] if i in par else 0 for i in range(n)]
        for i in par:
            if thread[i] <= 0 or block[i] <= 0:
                raise QuartetError(f"'quartet.tile' block_tile {block[i]} and thread_tile "
                                   f"{thread[i]} on loop {i} must be positive", where)
            # Upstream mapping needs static tiles: a block tile that does not divide its loop
            # (Roller pads irregular extents) shrinks to the largest divisor below it, and a
            # thread tile that does not divide its block tile (Roller sizes them per memory
            # level independently) to their common divisor: more blocks or more threads.
            block[i] = _divisor_at_most(fb.ranges[i], block[i])
            thread[i] = math.gcd(block[i], thread[i])
    else:
        block = [0] * n
        thread = [0] * n
        budget = 256
        for i in reversed(par):
            size = _divisor_at_most(fb.ranges[i], max(1, budget))
            block[i], thread[i] = size, 1
            budget //= size
        for i in par:
            block[i] = block[i] or 1
            thread[i] = thread[i] or 1
    # Loops whose block tile is the whole loop are not tiled over blocks (size 0), and at most 3
    # loops are (x, y, z): outer ones beyond that stay whole per block, and each thread walks
    # them whole too (their thread tile is the loop).
    for i in par:
        if block[i] >= fb.ranges[i]:
            block[i] = 0
    tiled = [i for i in par if block[i]]
    for i in tiled[:-3]:
        block[i] = 0
        thread[i] = fb.ranges[i]
    if not tiled:        # one block: tile the outermost loop whole (an all-zero tiling asserts)
        block[par[0]] = fb.ranges[par[0]]
    extent = [block[i] or fb.ranges[i] for i in range(n)]
    for i in par:
        thread[i] = math.gcd(min(thread[i], extent[i]), extent[i])
    threads = math.prod(math.ceil(extent[i] / thread[i]) for i in par) if par else 1
    if threads > 1024:
        raise QuartetError(f"'quartet.tile' needs {threads} threads per block (at most 1024)",
                           where)
    # The schedule's thread count is a lower bound: fewer threads than thread tiles would leave
    # tiles unmapped, so the block takes one thread per thread tile (at most 1024, checked above).
    return block, thread, max(threads, min(tile.threads or 0, 1024))


def _mapping(kind: str, sizes: list) -> str:
    """Innermost tiled loop -> x. Blocks use x/y/z (``map_forall_to_blocks`` with
    ``generate_gpu_launch`` asserts on linear block ids in MLIR 22); threads use linear ids."""
    tiled = [i for i, s in enumerate(sizes) if s]
    if kind == "block":
        names = [f"#gpu.block<{'xyz'[len(tiled) - 1 - k]}>" for k in range(len(tiled))]
    else:
        names = [f"#gpu.thread<linear_dim_{len(tiled) - 1 - k}>" for k in range(len(tiled))]
    return "[" + ", ".join(names) + "]"


def _fallback_function(tile, fb: FallbackPlan, name: str) -> tuple[ir.Module, list]:
    """``func @name`` on memrefs computing ``fb.op`` on tensors (inputs from ``to_tensor``,
    results materialized in the output memrefs); the ops to fuse with it (fills, copies)."""
    from mlir.dialects import bufferization, linalg

    module = ir.Module.create()
    fn, ins, outs = kernel_func(module, name, tile)
    with ir.InsertionPoint(fn.entry_block):
        env = {}
        for v, m in zip(kernel_inputs(tile), ins):
            env[v] = bufferization.to_tensor(v.type, m, restrict=True)
        for v in _non_tensor_captures(tile) + [v for v in tile.inputs if _is_empty(v)]:
            env[v] = _owner_op(v).clone().results[0]
        for o in tile.computation:       # tensor.empty inside the tile (a pooling window)
            if o.name == "tensor.empty":
                env[o.results[0]] = o.clone().results[0]
        inits = list(fb.op.operands)[-len(fb.op.results):]
        fills = {f.results[0]: f for f in fb.fills}
        fused = ["linalg.fill"] if fb.fills else []
        for k, init in enumerate(inits):
            out_tensor = bufferization.to_tensor(tile.results[k].type, outs[k], restrict=True,
                                                 writable=True)
            if init in fills:
                fill = fills[init].clone()
                fill.operands[len(fill.operands) - 1] = out_tensor
                _remap(fill, env)
                env[init] = fill.results[0]
            elif init not in env or _is_empty(init):
                # a tensor.empty (in the tile or captured from the host): only its shape is
                # read, so the op writes straight into the output
                env[init] = out_tensor
            else:                     # an input: copied into the output, fused like a fill
                env[init] = linalg.copy(env[init], outs=[out_tensor])
                fused.append("linalg.copy")
        op = fb.op.clone()
        _remap(op, env)
        for k, result in enumerate(op.results):
            bufferization.MaterializeInDestinationOp(None, result, outs[k], restrict=True,
                                                     writable=True)
        func.ReturnOp([])
    return module, fused


def build_serial_kernel(tile, target, fb: FallbackPlan | None = None, name: str = "kernel"):
    """An op with no parallel loop -> one block of one thread running its loops.

    Scalars of a host loop or branch (a step counter, a predicate) and reductions of every loop
    (``mean(x) > t``) have no parallel loop for threads: bufferize, lower the op to loops and
    wrap the function body in a 1x1 ``gpu.launch``."""
    from mlir.passmanager import PassManager

    get_target(target)
    fb = fb or analyze_fallback(tile)
    module, _ = _fallback_function(tile, fb, name)
    PassManager.parse("builtin.module(one-shot-bufferize{bufferize-function-boundaries=1}, "
                      "func.func(convert-linalg-to-loops, canonicalize, cse))")\
        .run(module.operation)
    _erase_self_copies(module)
    fn = next(o for o in module.body.operations if o.operation.name == "func.func")
    block = fn.regions[0].blocks[0]
    ops = list(block.operations)
    body_ops, ret = ops[:-1], ops[-1]
    allocs = [o for o in body_ops if o.operation.name == "memref.alloc"]
    if allocs:
        raise _Unsupported("a serial kernel that needs a temporary buffer")
    with ir.InsertionPoint(ret), ret.location:
        launch = gpu.LaunchOp((1, 1, 1), (1, 1, 1))
        kbody = launch.regions[0].blocks[0]
        with ir.InsertionPoint(kbody):
            term = gpu.TerminatorOp()
    for o in body_ops:
        o.operation.move_before(term)
    return module, ([0] * len(fb.ranges), [0] * len(fb.ranges), 1)


def build_fallback_kernel(tile, target, fb: FallbackPlan | None = None, name: str = "kernel"):
    """One linalg op -> tile_using_forall (blocks, threads) -> bufferize -> gpu.launch.

    An op with no parallel loop (a 0-d op, a reduction of every loop) becomes one thread of one
    block running the op's loops (:func:`build_serial_kernel`)."""
    target = get_target(target)
    fb = fb or analyze_fallback(tile)
    if "parallel" not in fb.iterators:
        return build_serial_kernel(tile, target, fb, name)
    block, thread, threads = fallback_tiles(tile, fb, target.warp_size)
    module, fused = _fallback_function(tile, fb, name)
    sizes_b = ", ".join(map(str, block))
    sizes_t = ", ".join(map(str, thread))
    fuse_b = fuse_t = ""
    if fused:
        names = ", ".join(f'"{n}"' for n in sorted(set(fused)))
        fuse_b = (f'%fill = transform.structured.match ops{{[{names}]}} in %arg0 '
                  ': (!transform.any_op) -> !transform.any_op\n'
                  '    %fill_b, %f1b = transform.structured.fuse_into_containing_op %fill into '
                  '%forall_b : (!transform.any_op, !transform.any_op) -> '
                  '(!transform.any_op, !transform.any_op)')
        fuse_t = ('%fill_t, %f1t = transform.structured.fuse_into_containing_op %fill_b into '
                  '%forall_t : (!transform.any_op, !transform.any_op) -> '
                  '(!transform.any_op, !transform.any_op)')
    script = f"""
module attributes {{transform.with_named_sequence}} {{
  transform.named_sequence @__transform_main(%arg0: !transform.any_op {{transform.consumed}}) {{
    %op = transform.structured.match ops{{["{fb.op.name}"]}} in %arg0
      : (!transform.any_op) -> !transform.any_op
    %tiled_b, %forall_b = transform.structured.tile_using_forall %op tile_sizes [{sizes_b}]
      (mapping = {_mapping("block", block)}) : (!transform.any_op) -> (!transform.any_op, !transform.any_op)
    {fuse_b}
    %tiled_t, %forall_t = transform.structured.tile_using_forall %tiled_b tile_sizes [{sizes_t}]
      (mapping = {_mapping("thread", thread)}) : (!transform.any_op) -> (!transform.any_op, !transform.any_op)
    {fuse_t}
    %bufferized = transform.bufferization.one_shot_bufferize %arg0
      {{bufferize_function_boundaries = true}} : (!transform.any_op) -> !transform.any_op
    %fn = transform.structured.match ops{{["func.func"]}} in %bufferized
      : (!transform.any_op) -> !transform.any_op
    %launch = transform.gpu.map_forall_to_blocks %fn {{generate_gpu_launch}}
      : (!transform.any_op) -> !transform.any_op
    transform.gpu.map_nested_forall_to_threads %launch block_dims = [{threads}, 1, 1]
      : (!transform.any_op) -> !transform.any_op
    transform.yield
  }}
}}"""
    from mlir.dialects.transform import interpreter

    schedule = ir.Module.parse(script)
    try:
        interpreter.apply_named_sequence(module.operation,
                                         schedule.body.operations[0], schedule.operation)
    except (ir.MLIRError, ValueError) as e:
        first = e.error_diagnostics[0].message if getattr(e, "error_diagnostics", None) else e
        lines = [ln for ln in str(first).splitlines() if ln.strip()]
        detail = lines[-1] if len(lines) > 1 and "Diagnostic" in lines[-1] else \
            " / ".join(lines[:2])
        raise _Unsupported(f"transform schedule failed: {detail}") from None
    from mlir.passmanager import PassManager
    PassManager.parse("builtin.module(func.func(convert-linalg-to-loops, canonicalize, cse))")\
        .run(module.operation)
    _erase_self_copies(module)
    return module, (block, thread, threads)


def _erase_self_copies(module: ir.Module) -> None:
    """Bufferizing ``tensor.parallel_insert_slice`` into the slice it came from leaves
    ``memref.copy %x, %x``; it does nothing and costs a loop per thread."""
    found = []

    def visit(op):
        op = op.operation
        if op.name == "memref.copy" and op.operands[0] == op.operands[1]:
            found.append(op)
        return ir.WalkResult.ADVANCE

    module.operation.walk(visit)
    for op in found:
        op.erase()


def _remap(op: ir.Operation, env: dict) -> None:
    """Point the operands of a cloned op (and of ops nested in it) at ``env``'s values."""
    def visit(inner):
        inner = inner.operation
        for i, v in enumerate(inner.operands):
            if v in env:
                inner.operands[i] = env[v]
        return ir.WalkResult.ADVANCE
    op.walk(visit)


# ---------------------------------------------------------------------------------------------
# Reductions over outer loops (the innermost loop is parallel): `colreduce`


@dataclass
class ColReduction:
    op: ir.Operation
    par: list            # parallel loop positions, in order (the last is the innermost loop)
    red: list            # reduction loop positions
    ranges: tuple
    vector: int
    combiner: str
    x: ir.Value          # f(in): what the body combines into its output


def analyze_colreduce(tile) -> ColReduction:
    ops = [o for o in tile.computation if o.name not in ("tensor.empty", "linalg.fill")]
    if len(ops) != 1 or ops[0].name != "linalg.generic":
        raise _Unsupported("colreduce takes one linalg.generic (and fills)")
    op = ops[0]
    for f in tile.computation:
        if f.name == "linalg.fill" and (len(list(f.results[0].uses)) != 1 or
                                        f.results[0] not in list(op.operands)):
            raise _Unsupported("a linalg.fill that is not the reduction's init")
    iters = _iterators(op)
    n = len(iters)
    if "reduction" not in iters or iters[-1] != "parallel" or len(op.results) != 1:
        raise _Unsupported("colreduce takes a one-result reduction whose innermost loop is "
                           "parallel")
    if list(tile.terminator.operands) != [op.results[0]]:
        raise _Unsupported("colreduce takes a tile yielding its reduction")
    for v in _non_tensor_captures(tile):
        owner = _owner_op(v)
        if owner is None or owner.name != "arith.constant":
            raise _Unsupported("a non-constant scalar captured by the tile")
    ranges = _loop_ranges(op)
    maps = _maps(op)
    nin = _num_inputs(op)
    par = [i for i in range(n) if iters[i] == "parallel"]
    red = [i for i in range(n) if iters[i] == "reduction"]
    for amap in maps:
        _check_map(amap, n, "full", False)
        if ("loop", n - 1) in amap and amap[-1] != ("loop", n - 1):
            raise _Unsupported("an operand transposed in the innermost loop")
    out_map = maps[nin]
    if [d for d in out_map if d[0] == "loop"] != [("loop", p) for p in par] or \
            out_map[-1] != ("loop", n - 1):
        raise _Unsupported("an output map that is not the parallel loops in order")
    block = op.regions[0].blocks[0]
    combiner, x = _split_reduction(block, nin, 0)
    for bop in _body_ops_for(block, [x]):
        if bop.name == "linalg.index" or len(bop.regions):
            raise _Unsupported(f"'{bop.name}' in a generic body")
    elts = [_bytes_of(ir.ShapedType(v.type).element_type) for v in list(op.operands)[:nin]]
    V = max(1, 16 // min(elts)) if elts else 1
    while V > 1 and ranges[-1] % V:
        V //= 2
    return ColReduction(op, par, red, ranges, V, combiner, x)


def build_colreduce_kernel(tile, target, cr: ColReduction | None = None, name: str = "kernel"):
    """Each thread owns V adjacent outputs and walks the reduced loops with stride TY; the TY
    partials of a block column are combined by a tree in shared memory."""
    target = get_target(target)
    cr = cr or analyze_colreduce(tile)
    op, V = cr.op, cr.vector
    t = ir.ShapedType(op.results[0].type).element_type
    acc_t = accumulator_type(cr.combiner, t)
    P = math.prod(cr.ranges[i] for i in cr.par)
    K = math.prod(cr.ranges[i] for i in cr.red)
    PV = P // V
    TX = min(8, PV)
    cap = min(1024, (32768 // (V * _bytes_of(acc_t))))
    if tile.threads is not None:
        if tile.threads <= 0 or tile.threads > 1024:
            raise QuartetError(f"'quartet.tile' threads={tile.threads} does not fit the "
                               f"hardware (at most 1024)", _loc(tile.operation))
        while tile.threads % TX:
            TX //= 2
        TY = 1 << ((tile.threads // TX).bit_length() - 1)    # a power of two for the tree
    else:
        want = max(1, (132 * 2048) // PV)
        TY = max(1, min(1 << (want.bit_length() - 1), cap // TX, _pow2_at_least(K)))
    T = TX * TY
    grid = math.ceil(PV / TX)
    module = ir.Module.create()
    fn, ins, outs = kernel_func(module, name, tile)
    in_map = dict(zip(kernel_inputs(tile), ins))
    with ir.InsertionPoint(fn.entry_block):
        launch = gpu.LaunchOp((grid, 1, 1), (T, 1, 1))
        func.ReturnOp([])
    body = launch.regions[0].blocks[0]
    space = ir.Attribute.parse("#gpu.address_space<workgroup>")
    smem = None
    if TY > 1:
        launch.operation.attributes["workgroup_attributions"] = ir.IntegerAttr.get(
            ir.IntegerType.get_signless(64), 1)
        smem = body.add_argument(ir.MemRefType.get([T * V], acc_t, memory_space=space),
                                 ir.Location.unknown())
    n = len(cr.ranges)
    nin = _num_inputs(op)
    maps = _maps(op)
    block = op.regions[0].blocks[0]
    kind, ident = COMBINERS[cr.combiner]
    vt = ir.VectorType.get([V], acc_t)
    with ir.InsertionPoint(body):
        bid, tid = body.arguments[0], body.arguments[3]
        tx = arith.remui(tid, _index(TX)) if TY > 1 else tid
        ty = arith.divui(tid, _index(TX)) if TY > 1 else _index(0)
        o = arith.addi(arith.muli(bid, _index(TX)), tx)
        valid = arith.cmpi(arith.CmpIPredicate.ult, o, _index(PV)) if grid * TX != PV else None
        oc = arith.minui(o, _index(PV - 1)) if valid is not None else o
        flat = arith.muli(oc, _index(V))
        loop_idx: dict = {}
        par_extents = [cr.ranges[i] for i in cr.par]
        for k, p in enumerate(cr.par):
            stride = math.prod(par_extents[k + 1:])
            q = arith.divui(flat, _index(stride)) if stride > 1 else flat
            loop_idx[p] = arith.remui(q, _index(par_extents[k])) if k > 0 else q
        init_acc = _const_like(ident(acc_t), acc_t, V)
        loop = scf.ForOp(ty, _index(K), _index(TY), [init_acc])
        with ir.InsertionPoint(loop.body):
            kk = loop.induction_variable
            red_extents = [cr.ranges[i] for i in cr.red]
            idx = dict(loop_idx)
            for k, r in enumerate(cr.red):
                stride = math.prod(red_extents[k + 1:])
                q = arith.divui(kk, _index(stride)) if stride > 1 else kk
                idx[r] = arith.remui(q, _index(red_extents[k])) if k > 0 else q
            args = []
            for i, (amap, v) in enumerate(zip(maps, op.operands)):
                barg = block.arguments[i]
                if i >= nin or not len(list(barg.uses)):
                    args.append(None)
                    continue
                if v not in in_map:
                    raise _Unsupported("an input computed in the tile")
                mem = in_map[v]
                elt = ir.MemRefType(mem.type).element_type
                ix = [_index(c) if kd == "const" else idx[c] for kd, c in amap]
                if amap and amap[-1] == ("loop", n - 1):
                    args.append(vector.load(ir.VectorType.get([V], elt), mem, ix,
                                            alignment=V * _bytes_of(elt)))
                else:
                    args.append(_splat(memref.load(mem, ix), V))
            xval = emit_body(block, args, V, targets=[cr.x])[0]
            acc = _combine(cr.combiner, _convert(xval, acc_t, V), loop.inner_iter_args[0])
            scf.YieldOp([acc])
        acc = loop.results[0]
        if TY > 1:
            slot = arith.muli(tid, _index(V))
            vector.store(acc, smem, [slot])
            gpu.barrier()
            s = TY // 2
            while s >= 1:
                cond = arith.cmpi(arith.CmpIPredicate.ult, ty, _index(s))
                if_op = scf.IfOp(cond)
                with ir.InsertionPoint(if_op.then_block):
                    other = arith.muli(arith.addi(tid, _index(s * TX)), _index(V))
                    a = vector.load(vt, smem, [slot])
                    b = vector.load(vt, smem, [other])
                    vector.store(_combine(cr.combiner, a, b), smem, [slot])
                    scf.YieldOp([])
                gpu.barrier()
                s //= 2
            acc = vector.load(vt, smem, [slot])
        first = arith.cmpi(arith.CmpIPredicate.eq, ty, _index(0)) if TY > 1 else None
        cond = _and(valid, first)
        out = outs[0]
        init = list(op.operands)[nin]
        out_map = maps[nin]

        def store():
            ix = [_index(c) if kd == "const" else loop_idx[c] for kd, c in out_map]
            init_v = _init_vector(init, in_map, out_map, ix, V)
            total = _combine(cr.combiner, acc, _convert(init_v, acc_t, V))
            vector.store(_convert(total, t, V), out, ix, alignment=V * _bytes_of(t))

        _guarded(cond, store)
        gpu.TerminatorOp()
    return module, (grid, T, TX, TY)


def _init_vector(init: ir.Value, in_map: dict, out_map, ix, V: int) -> ir.Value:
    """The init of a reduction's V outputs: a fill constant, or loaded from an input."""
    owner = _owner_op(init)
    if owner is not None and owner.name == "linalg.fill":
        c = _owner_op(owner.operands[0])
        if c is None or c.name != "arith.constant":
            raise _Unsupported("linalg.fill of a non-constant value")
        return _const_like(c.attributes["value"], owner.operands[0].type, V)
    if init in in_map:
        mem = in_map[init]
        elt = ir.MemRefType(mem.type).element_type
        return vector.load(ir.VectorType.get([V], elt), mem, ix)
    raise _Unsupported("a reduction init that is neither a fill nor an input")
