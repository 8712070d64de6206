"""Block programs for element-wise chains and row programs (the ``flat`` and ``row`` families).

Roller's rTile for a memory-bound operator is a tile of rows (or of flat element vectors) whose
traffic is one read of each input and one write of each output; Welder's fused tiles keep every
intermediate value of such a chain in registers.

* ``flat`` (element-wise) - the tile is a chain of all-parallel linalg ops over one iteration
  space: each thread computes one vector of ``V`` elements of the innermost loop (16-byte
  loads/stores), inputs read through their indexing maps (contiguous vector loads, broadcasts,
  gathers for transposes); intermediates stay in registers.
* ``row`` - a chain over the same rows whose reductions run over the innermost loop (softmax =
  max, sub+exp, sum, div; layernorm = mean, var, normalize*gamma+beta): a group of ``G``
  threads per row, ``RB`` rows per block, the row kept in registers (``C`` chunks of ``V``
  elements per thread), per-thread partials folded with the reduction body, then
  ``gpu.shuffle xor`` across the group (and a shared-memory step across warps when ``G`` > 32).
  The accumulator type is the reduction's own (fp32 for fp16 data as torch-mlir emits it).

Both are one emitter (:class:`_RowEmitter`): a flat program is a row program without reductions.
Built op by op (``common.py`` says why upstream transforms do not serve here).

At the copy limit (issue 13, item 3):

* a flat thread loads ``C`` vectors, each chunk a coalesced sweep of the block, ``C`` from the
  chip's latency-bandwidth product per SM (:func:`flat_chunks`, ``runtime/targets.py``); every
  thread issues all its loads before any arithmetic (:meth:`_RowEmitter.prefetch`);
* a row longer than ``ROW_REGISTER_ELEMENTS`` per thread is swept in segments: one loop per
  reduction, one that stores (:meth:`_RowEmitter.run_sweeps`), so 64k-element rows do not spill;
  softmax's max and sum share one loop (online softmax, :meth:`_RowEmitter.online_sweep`);
* a division by a value uniform over the vector whose quotient is rounded to 16 bits becomes
  one fp32 reciprocal and a multiply (``common.emit_body``): GELU's ``/ sqrt(2)`` and fp16
  softmax's ``/ sum`` made those kernels issue-bound.

Not done: a row whose length is not a multiple of the vector width is read with scalar accesses
(``V`` halves until it divides the row; 1 for odd rows), unless the chain is element-wise and
reads and writes the whole space in order (then it runs over the flattened elements); a
layer norm's two reductions (mean, then the variance around it) stay two sweeps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from mlir import ir
from mlir.dialects import arith, func, gpu, memref, scf, vector
from mlir.dialects import math as math_d

from quartet.errors import QuartetError
from quartet.runtime.targets import Chip

from .common import (_float_attr, _read_by_live_op, _reject_gathers, COMBINERS, Unsupported, _and, _bytes_of, _check_internal_read, _check_map, _combine, _combiner_of, _const_like, _convert, _guarded, _i32, _index, _is_float, _iterators, _live_body_ops, _loc, _loop_ranges, _maps, _non_tensor_captures, _num_inputs, _owner_op, _pow2_at_least, _shape, _splat, _split_reduction, accumulator_type, chip_of, emit_body, kernel_func, kernel_inputs)

# ---------------------------------------------------------------------------------------------
# Analysis of a row program


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
    flattened: bool = False  # vectors run over the flattened elements (V does not divide N)


def analyze_rows(tile) -> RowProgram:
    """The :class:`RowProgram` of ``tile``, or raise ``Unsupported`` with the reason."""
    ops = tile.computation
    for v in _non_tensor_captures(tile):
        owner = _owner_op(v)
        if owner is None or owner.name != "arith.constant":
            raise Unsupported("a non-constant scalar captured by the tile")
    generics = [o for o in ops if o.name == "linalg.generic"]
    _reject_gathers(generics)
    if generics:
        space = max((_loop_ranges(o) for o in generics), key=lambda s: (math.prod(s), len(s)))
    elif all(o.name in ("linalg.fill", "tensor.empty") for o in ops):
        space = max((_shape(v) for v in tile.terminator.operands), key=math.prod)
    else:
        raise Unsupported("no linalg.generic")
    if not space:
        raise Unsupported("a 0-d iteration space")
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
                raise Unsupported(f"linalg.fill of shape {_shape(op.results[0])}")
            steps.append(_Step(op, "fill", klass(_shape(op.results[0]))))
        elif name in ("tensor.expand_shape", "tensor.collapse_shape"):
            a, b = klass(_shape(op.operands[0])), klass(_shape(op.results[0]))
            if a != "row" or b != "row":
                raise Unsupported(f"'{name}' that is not a row reshape")
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
                        raise Unsupported("a reduction that is not over the innermost loop only")
                    if len(space) == 0:
                        raise Unsupported("0-d reduction")
                    reductions += 1
                red = "reduction" in iters
            elif loops in row_shapes:
                space_kind = "row"
                red = False
                if "reduction" in iters:
                    raise Unsupported("a reduction over a row-space op")
            else:
                raise Unsupported(f"a linalg.generic over loops {loops} in a tile over {space}")
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
                    raise Unsupported(f"'{bop.name}' in a generic body")
            steps.append(_Step(op, "generic", space_kind, red, live))
            want = "full" if space_kind == "full" and not red else "row"
            for r in op.results:
                if klass(_shape(r)) != want:
                    raise Unsupported(f"a result of shape {_shape(r)} in a tile over {space}")
        else:
            raise Unsupported(f"'{name}' in a row program")
        for r in op.results:
            internal.add(r)
    for v in tile.terminator.operands:
        if v not in internal or klass(_shape(v)) is None:
            raise Unsupported("a yielded value not computed in the tile")
    elt_bytes = [_bytes_of(t) for t in full_loads] or \
        [_bytes_of(ir.ShapedType(r.type).element_type) for r in tile.results]
    V = max(1, 16 // min(elt_bytes))
    contiguous = reductions == 0 and _contiguous(tile, steps, space, internal)
    # Vectors along the inner loop; a contiguous element-wise chain runs over the flattened
    # elements, so only their total need be a multiple (7x7 feature maps, odd rows).
    while V > 1 and (R * N if contiguous else N) % V:
        V //= 2
    return RowProgram(tile, steps, space, R, N, V, reductions, full_loads,
                      contiguous and N % V != 0)


def _contiguous(tile, steps, space, internal) -> bool:
    """Whether every tensor the chain reads from outside and every result it yields is the
    whole iteration space in row-major order (identity maps): then element ``e`` of every one
    of them is the same flat offset, and vectors may cross rows."""
    n = len(space)
    identity = [("loop", k) for k in range(n)]
    for step in steps:
        if step.kind == "reshape" or (step.kind == "generic" and step.space != "full"):
            return False
        if step.kind != "generic":
            continue
        op = step.op
        block = op.regions[0].blocks[0]
        for i, (amap, v) in enumerate(zip(_maps(op), op.operands)):
            if v in internal or not len(list(block.arguments[i].uses)):
                continue
            if amap != identity or _shape(v) != tuple(space):
                return False
    return all(_shape(v) == tuple(space) for v in tile.terminator.operands)


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
    chunks: int           # C vectors per thread per row (per segment when segments > 1)
    grid: int
    segments: int = 1     # S: sweeps of C chunks each cover the row (rows too long to hold)


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
        self.loaded: dict = {}          # (input, map, chunk) -> its loaded vector
        self.red_index = 0

    # --- indices -------------------------------------------------------------------------
    def setup(self, bid: ir.Value, tid: ir.Value) -> None:
        p, cfg = self.p, self.cfg
        V = p.vector
        if cfg.mode == "flat":
            # Chunk c of thread t in block b is vector (b * C + c) * T + t: each chunk is one
            # contiguous, coalesced sweep of the block's threads.
            total, C, T = p.rows * p.inner, cfg.chunks, cfg.threads
            exact = cfg.grid * C * T * V == total
            self.valid = None
            self.j, self.chunk_valid, self.leads, self.flat = [], [], [], []
            for c in range(C):
                g = arith.addi(arith.muli(arith.addi(arith.muli(bid, _index(C)), _index(c)),
                                          _index(T)), tid)
                e = arith.muli(g, _index(V))
                if exact:
                    self.chunk_valid.append(None)
                else:
                    self.chunk_valid.append(arith.cmpi(arith.CmpIPredicate.ult, e,
                                                       _index(total)))
                    e = arith.minui(e, _index(total - V))
                self.flat.append(e)
                if p.flattened:         # accesses go through 1-D views (:meth:`_view`)
                    self.j.append(e)
                    self.leads.append([])
                    continue
                r = arith.divui(e, _index(p.inner))
                self.j.append(arith.remui(e, _index(p.inner)))
                self.leads.append(self._lead_indices(r))
            if p.flattened:
                self.views = {id(m): _flat_view(m) for m in
                              list(self.inputs.values()) + list(self.outputs)}
            self.lane0 = arith.cmpi(arith.CmpIPredicate.eq, self.j[0], _index(0))
            return
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
        self.row_lead = self._lead_indices(r)
        self.leads = [self.row_lead] * cfg.chunks

    def setup_fused_row(self, const, r: ir.Value, lane: ir.Value) -> None:
        """Row ``r`` (an index, always valid) for ``lane`` of a fused kernel's row loop (Welder's
        GEMM + rows and rows + GEMM patterns): the lane's chunks of the row, as :meth:`setup`
        lays them out for one row per group. ``const(n)``: the fused kernel's index constants."""
        p, G, V = self.p, self.cfg.group, self.p.vector
        self.lane, self.grp = lane, const(0)
        self.valid = None
        self.j, self.chunk_valid = [], []
        for c in range(self.cfg.chunks):
            j = arith.muli(arith.addi(const(c * G), lane), const(V))
            if (c * G + G) * V > p.inner:
                self.chunk_valid.append(arith.cmpi(arith.CmpIPredicate.ult, j,
                                                   const(p.inner)))
                j = arith.minui(j, const(p.inner - V))
            else:
                self.chunk_valid.append(None)
            self.j.append(j)
        self.lane0 = arith.cmpi(arith.CmpIPredicate.eq, lane, const(0))
        self.row_lead = [r]
        self.leads = [self.row_lead] * self.cfg.chunks
        self.row = r

    def segment(self, s: ir.Value) -> None:
        """The chunks of segment ``s`` (a loop index) of the thread's row: chunk c of it is
        vector ``(s * C + c) * G + lane`` of the row."""
        p, cfg = self.p, self.cfg
        G, C, V = cfg.group, cfg.chunks, p.vector
        exact = cfg.segments * C * G * V == p.inner
        self.j, self.chunk_valid = [], []
        for c in range(C):
            k = arith.addi(arith.muli(s, _index(C)), _index(c))
            j = arith.muli(arith.addi(arith.muli(k, _index(G)), self.lane), _index(V))
            if exact:
                self.chunk_valid.append(None)
            else:
                self.chunk_valid.append(arith.cmpi(arith.CmpIPredicate.ult, j, _index(p.inner)))
                j = arith.minui(j, _index(p.inner - V))
            self.j.append(j)
        self.leads = [self.row_lead] * C

    def _lead_indices(self, r: ir.Value) -> list[ir.Value]:
        """Indices of the leading loops of row number ``r``."""
        lead = list(self.p.space[:-1])
        out = []
        for k, extent in enumerate(lead):
            stride = math.prod(lead[k + 1:])
            q = arith.divui(r, _index(stride)) if stride > 1 else r
            out.append(arith.remui(q, _index(extent)) if k > 0 else q)
        return out

    # --- memory --------------------------------------------------------------------------
    def _indices(self, amap, n_loops: int, chunk: int | None) -> list[ir.Value]:
        """Memref indices of one access: loop k < n-1 is a leading loop (from the row number);
        the last loop is the inner loop (chunk start) of a full op or the unit loop of a row op."""
        idx = []
        n = len(self.p.space)
        lead = self.leads[chunk if chunk is not None else 0]
        for kind, x in amap:
            if kind == "const":
                idx.append(_index(x))
            elif x < n - 1:
                idx.append(lead[x])
            elif chunk is not None:
                idx.append(self.j[chunk])
            else:
                idx.append(_index(0))
        return idx

    def load_full(self, value: ir.Value, amap, chunk: int) -> ir.Value:
        """A vector of V elements of a captured tensor along the inner loop (each loaded once:
        :meth:`prefetch` issues them all before any arithmetic)."""
        key = (value, tuple(amap), chunk)
        if key not in self.loaded:
            self.loaded[key] = self._load_full(value, amap, chunk)
        return self.loaded[key]

    def prefetch(self, steps=None) -> None:
        """Issue the loads of every chunk of every streamed input first, so that a thread has
        all its bytes in flight at once (the stores come last, so nothing orders them).

        In the row layouts an input read along the inner loop only (a layer norm's weight and
        bias: the same vector for every row, from L2) is not streamed and is loaded where it is
        used: held across the row's reductions it cost 14 registers a thread (40 -> 54 for an
        fp16 layer norm of 4096-wide rows: 6 -> 4 blocks per SM; 0.90x of the kernel before the
        prefetch on the H200, 2026-12-03, ``bench/results/rows-bandwidth-*``)."""
        last = ("loop", len(self.p.space) - 1)
        flat = self.cfg.mode == "flat"
        for step in self.p.steps if steps is None else steps:
            if step.kind != "generic" or step.space != "full":
                continue
            op = step.op
            block = op.regions[0].blocks[0]
            for i, (amap, v) in enumerate(zip(_maps(op), op.operands)):
                if i >= _num_inputs(op) or v not in self.inputs or v in self.env:
                    continue
                if not len(list(block.arguments[i].uses)):
                    continue
                if not flat and all(a == last or a[0] != "loop" for a in amap):
                    continue            # per column: the same for every row
                if amap and amap[-1] == last:
                    for c in range(len(self.j)):
                        self.load_full(v, amap, c)

    def _load_full(self, value: ir.Value, amap, chunk: int) -> ir.Value:
        V, n = self.p.vector, len(self.p.space)
        mem = self.inputs[value]
        if self.p.flattened:            # identity maps only (``_contiguous``)
            view = self.views[id(mem)]
            elt = ir.MemRefType(mem.type).element_type
            return vector.load(ir.VectorType.get([V], elt), view, [self.j[chunk]],
                               alignment=V * _bytes_of(elt))
        elt = ir.MemRefType(mem.type).element_type
        last = ("loop", n - 1)
        idx = self._indices(amap, n, chunk)
        if amap and amap[-1] == last:
            align = V * _bytes_of(elt)
            return vector.load(ir.VectorType.get([V], elt), mem, idx, alignment=align)
        if last not in amap:
            return memref.load(mem, idx)    # the same for the whole vector (emit_body splats)
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
            return got.value        # a scalar: emit_body splats it (and knows it uniform)
        if value not in self.inputs:
            raise Unsupported("an operand that is neither computed in the tile nor an input")
        if full:
            return self.load_full(value, amap, chunk)
        return self.load_row(value, amap, n_loops)

    # --- steps ---------------------------------------------------------------------------
    def run(self) -> None:
        if self.cfg.segments > 1:
            self.run_sweeps()
            return
        self.prefetch()
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

    def run_sweeps(self) -> None:
        """A row too long to keep in registers: each reduction is one loop over the row's S
        segments (C chunks each; the full-space steps before it recomputed from the inputs,
        which the block re-reads while its row is still in L2), the row-space steps run
        between the loops, and a last loop computes and stores the full-space results.
        The inputs come from DRAM once; the result is the same arithmetic as in registers."""
        done = set()
        for index, step in enumerate(self.p.steps):
            op = step.op
            if step.kind == "empty":
                continue
            if step.kind == "fill":
                self.env[op.results[0]] = _Uniform(self.scalar_operand(op.operands[0]))
            elif step.kind == "reshape":
                self.env[op.results[0]] = self.env[op.operands[0]]
            elif step.reduction:
                if index in done:
                    continue
                pair = _online_softmax_pair(self.p.steps, index)
                if pair is None:
                    self.sweep(index, step)
                else:
                    self.online_sweep(index, pair)
                    done.add(pair)
            elif step.space == "row":
                self.parallel(step)
        self.sweep(len(self.p.steps), None)
        self.store_rows()

    def online_sweep(self, ia: int, ib: int) -> None:
        """Softmax's max and sum in one sweep (online softmax, Milakov and Gimelshein 2018):
        each thread carries its running max ``m`` and the sum ``s`` of ``exp(y - m)``; a
        segment with a larger max rescales the sum by ``exp(m_old - m_new)``; across the row's
        threads the same rescaling combines the partials. ``_online_softmax_pair`` checked that
        the sum's terms are ``exp(y - max)``, which is what makes the rescaling exact."""
        steps = self.p.steps
        a, b = steps[ia], steps[ib]
        f32 = ir.F32Type.get()
        m_name = _split_reduction(a.op.regions[0].blocks[0], _num_inputs(a.op), a.live[0])[0]
        m_result = a.op.results[a.live[0]]
        for step in steps[ia + 1:ib]:      # fills between them (the sum's init)
            if step.kind == "fill":
                self.env[step.op.results[0]] = _Uniform(self.scalar_operand(step.op.operands[0]))
        outer_env, outer_chunks = self.env, (self.j, self.chunk_valid, self.leads)
        inits = [_const_like(COMBINERS[m_name][1](f32), f32, None),
                 _const_like(_float_attr(f32, 0.0), f32, None)]
        loop = scf.ForOp(_index(0), _index(self.cfg.segments), _index(1), inits)
        with ir.InsertionPoint(loop.body):
            self.env = {k: v for k, v in outer_env.items() if not isinstance(v, _Full)}
            self.loaded = {}
            self.segment(loop.induction_variable)
            self.prefetch(steps[:ib + 1])
            for step in steps[:ia]:
                if step.kind == "generic" and step.space == "full" and not step.reduction:
                    self.parallel(step)
            kinds, accs = self._reduction_start(a)
            acc = self._fold(a, kinds, accs)[0]
            m_old, s_old = loop.inner_iter_args
            m_new = _combine(m_name, m_old, vector.reduction(f32, kinds[0][1], acc))
            self.env[m_result] = _Row(m_new)
            for step in steps[ia + 1:ib]:
                if step.kind == "reshape":
                    self.env[step.op.results[0]] = self.env[step.op.operands[0]]
                elif step.kind == "generic" and step.space == "full" and not step.reduction:
                    self.parallel(step)
            kinds, accs = self._reduction_start(b)
            acc = self._fold(b, kinds, accs)[0]
            seg = vector.reduction(f32, vector.CombiningKind.ADD, acc)
            s_new = arith.addf(arith.mulf(s_old, _rescale(m_old, m_new)), seg)
            scf.YieldOp([m_new, s_new])
        self.env, self.loaded = outer_env, {}
        self.j, self.chunk_valid, self.leads = outer_chunks
        m_t, s_t = loop.results
        m = self.group_combine(m_name, m_t)
        s = self.group_combine("arith.addf", arith.mulf(s_t, _rescale(m_t, m)))
        for step, value in ((a, m), (b, s)):
            op, k = step.op, step.live[0]
            nin = _num_inputs(op)
            init_v = self.operand(op.operands[nin + k], _maps(op)[nin + k],
                                  len(_iterators(op)), None, False)
            name = _split_reduction(op.regions[0].blocks[0], nin, k)[0]
            total = _combine(name, value, _convert(init_v, f32, None))
            self.env[op.results[k]] = _Row(total)

    def sweep(self, upto: int, target: _Step | None) -> None:
        """One loop over the segments: the full-space steps before ``upto``, then fold
        ``target``'s partials (carried by the loop), or store the full-space results."""
        outer_env, outer_chunks = self.env, (self.j, self.chunk_valid, self.leads)
        inits, kinds = [], []
        if target is not None:
            kinds, inits = self._reduction_start(target)
        loop = scf.ForOp(_index(0), _index(self.cfg.segments), _index(1), inits)
        with ir.InsertionPoint(loop.body):
            self.env = {k: v for k, v in outer_env.items() if not isinstance(v, _Full)}
            self.loaded = {}
            self.segment(loop.induction_variable)
            steps = self.p.steps[:upto + (target is not None)]
            self.prefetch(steps)
            for step in self.p.steps[:upto]:
                if step.kind == "generic" and step.space == "full" and not step.reduction:
                    self.parallel(step)
            if target is not None:
                scf.YieldOp(self._fold(target, kinds, list(loop.inner_iter_args)))
            else:
                self.store_full()
                scf.YieldOp([])
        self.env, self.loaded = outer_env, {}
        self.j, self.chunk_valid, self.leads = outer_chunks
        if target is not None:
            self._reduction_finish(target, kinds, list(loop.results))

    def scalar_operand(self, v: ir.Value) -> ir.Value:
        owner = _owner_op(v)
        if owner is not None and owner.name == "arith.constant":
            return arith.ConstantOp(v.type, owner.attributes["value"]).result
        raise Unsupported("linalg.fill of a non-constant value")

    def _body_args(self, op, chunk, full: bool, use_inits: bool) -> list:
        block = op.regions[0].blocks[0]
        nin = _num_inputs(op)
        n_loops = len(_iterators(op))
        args = []
        for i, (amap, v) in enumerate(zip(_maps(op), op.operands)):
            barg = block.arguments[i]
            if i >= nin and (not use_inits or not _read_by_live_op(barg)):
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
            fast = _rounded_to_16_bits(op, step.live)
            for c in range(len(self.j)):
                args = self._body_args(op, c, True, True)
                per_chunk.append(emit_body(block, args, self.p.vector, step.live,
                                           divide_by_reciprocal=fast))
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
        kinds, accs = self._reduction_start(step)
        self._reduction_finish(step, kinds, self._fold(step, kinds, accs))

    def _reduction_start(self, step: _Step) -> tuple[list, list]:
        """(combiner, kind, type, accumulator type, x) per live result, and the identities."""
        op = step.op
        block = op.regions[0].blocks[0]
        nin = _num_inputs(op)
        kinds, accs = [], []
        for k in step.live:
            name, x = _split_reduction(block, nin, k)
            t = ir.ShapedType(op.results[k].type).element_type
            acc_t = accumulator_type(name, t)
            kinds.append((name, COMBINERS[name][0], t, acc_t, x))
            accs.append(_const_like(COMBINERS[name][1](acc_t), acc_t, self.p.vector))
        return kinds, accs

    def _fold(self, step: _Step, kinds: list, accs: list) -> list:
        """The accumulators after folding in f(in) of the current chunks."""
        op = step.op
        block = op.regions[0].blocks[0]
        nin = _num_inputs(op)
        V = self.p.vector
        accs = list(accs)
        for c in range(len(self.j)):
            args = self._body_args(op, c, True, False)
            vals = emit_body(block, args[:nin] + [None] * (len(args) - nin), V,
                             targets=[kd[4] for kd in kinds])
            valid = self.chunk_valid[c]
            for n, (name, _, t, acc_t, _) in enumerate(kinds):
                new = _combine(name, _convert(vals[n], acc_t, V), accs[n])
                accs[n] = arith.select(valid, new, accs[n]) if valid is not None else new
        return accs

    def _reduction_finish(self, step: _Step, kinds: list, accs: list) -> None:
        """Reduce the accumulators across the vector and the row's threads; add the init."""
        op = step.op
        nin = _num_inputs(op)
        n_loops = len(_iterators(op))
        for n, k in enumerate(step.live):
            name, kind, t, acc_t, _ = kinds[n]
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
        self.store_full()
        self.store_rows()

    def _outputs(self):
        for i, v in enumerate(self.p.tile.terminator.operands):
            mem = self.outputs[i]
            got = self.env.get(v)       # after the sweeps: only the row-space results
            full_shape = tuple(ir.MemRefType(mem.type).shape) == self.p.space
            if isinstance(got, _Uniform) and full_shape:
                got = _Full([_splat(got.value, self.p.vector)] * len(self.j))
            yield mem, got

    def store_full(self) -> None:
        """Store the current chunks of the full-space results."""
        V = self.p.vector
        for mem, got in self._outputs():
            if not isinstance(got, _Full):
                continue
            align = V * _bytes_of(ir.MemRefType(mem.type).element_type)
            target = self.views[id(mem)] if self.p.flattened else mem
            for c, chunk in enumerate(got.chunks):
                idx = self.leads[c] + [self.j[c]]
                cond = _and(self.valid, self.chunk_valid[c])
                _guarded(cond, lambda chunk=chunk, idx=idx, target=target:
                         vector.store(chunk, target, idx, alignment=align))

    def store_rows(self) -> None:
        """Store the row-space results (one thread of the row: the first chunk's)."""
        for mem, got in self._outputs():
            if got is None or isinstance(got, _Full) or (isinstance(got, _Uniform) and
                                          tuple(ir.MemRefType(mem.type).shape) == self.p.space):
                continue
            rank = len(ir.MemRefType(mem.type).shape)
            lead = self.leads[0]
            idx = lead[:rank] + [_index(0)] * (rank - len(lead))
            cond = _and(self.valid, _and(self.chunk_valid[0], self.lane0))
            _guarded(cond, lambda got=got, idx=idx, mem=mem: memref.store(got.value, mem, idx))


def _rescale(m_old: ir.Value, m_new: ir.Value) -> ir.Value:
    """``exp(m_old - m_new)``, 1 where they are equal (both -inf before any element)."""
    one = arith.ConstantOp(m_old.type, _float_attr(m_old.type, 1.0)).result
    same = arith.cmpf(arith.CmpFPredicate.OEQ, m_old, m_new)
    return arith.select(same, one, math_d.exp(arith.subf(m_old, m_new)))


def _yielded(op, k: int):
    """The op computing yielded value ``k`` of a generic's body (None for a block argument)."""
    block = op.regions[0].blocks[0]
    return _owner_op(list(block.operations)[-1].operation.operands[k])


def _arg_index(op, value) -> int | None:
    """Which operand of generic ``op`` a body value is the block argument of, else None."""
    block = op.regions[0].blocks[0]
    for i, barg in enumerate(block.arguments):
        if barg == value:
            return i
    return None


def _online_softmax_pair(steps: list, ia: int) -> int | None:
    """The index of the sum a max reduction ``steps[ia]`` can share one sweep with, or None.

    Taken: a max (``maximumf``/``maxnumf``) over fp32 with a ``-inf`` fill as its init and one
    live result ``m``; the next reduction is an fp32 sum with one live result whose terms are
    ``exp(y - m)`` - an ``exp`` generic of a ``subf`` generic (or ``exp(subf)`` in one body)
    whose second operand is ``m`` (through row reshapes) and whose first is computed before
    the max; no row-space op in between."""
    a = steps[ia]
    if len(a.live) != 1:
        return None
    a_op = a.op
    nin = _num_inputs(a_op)
    name = _split_reduction(a_op.regions[0].blocks[0], nin, a.live[0])[0]
    if name not in ("arith.maximumf", "arith.maxnumf") or \
            not isinstance(ir.ShapedType(a_op.results[a.live[0]].type).element_type, ir.F32Type):
        return None
    fill = _owner_op(a_op.operands[nin + a.live[0]])
    if fill is None or fill.name != "linalg.fill":
        return None
    const = _owner_op(fill.operands[0])
    if const is None or const.name != "arith.constant" or \
            ir.FloatAttr(const.attributes["value"]).value != -math.inf:
        return None
    ib = next((i for i in range(ia + 1, len(steps)) if steps[i].reduction), None)
    if ib is None:
        return None
    b = steps[ib]
    if len(b.live) != 1 or any(s.kind == "generic" and s.space == "row"
                               for s in steps[ia + 1:ib]):
        return None
    b_op = b.op
    b_nin = _num_inputs(b_op)
    b_name, x = _split_reduction(b_op.regions[0].blocks[0], b_nin, b.live[0])
    if b_name != "arith.addf" or \
            not isinstance(ir.ShapedType(b_op.results[b.live[0]].type).element_type, ir.F32Type):
        return None
    i = _arg_index(b_op, x)
    if i is None or i >= b_nin:
        return None
    aliases = {a_op.results[a.live[0]]}
    between = {}
    for s in steps[ia + 1:ib]:
        if s.kind == "reshape" and s.op.operands[0] in aliases:
            aliases.add(s.op.results[0])
        elif s.kind == "generic":
            for r in s.op.results:
                between[r] = s.op
    earlier = set()
    for s in steps[:ia]:
        if s.kind == "generic":
            earlier.update(s.op.results)

    def producer_body(value):
        """(generic, body op yielding ``value``) for a full value computed in between."""
        op = between.get(value)
        if op is None:
            return None, None
        k = list(op.results).index(value)
        return op, _yielded(op, k)

    def is_exp_of_sub(op, body_op) -> bool:
        if body_op is None or body_op.name != "math.exp":
            return False
        inner = _owner_op(body_op.operands[0])
        if inner is not None and inner.name == "arith.subf":
            return is_sub(op, inner)
        j = _arg_index(op, body_op.operands[0])
        if j is None or j >= _num_inputs(op):
            return False
        sop, sbody = producer_body(op.operands[j])
        return sbody is not None and sbody.name == "arith.subf" and is_sub(sop, sbody)

    def is_sub(op, sub) -> bool:
        ja, jb = _arg_index(op, sub.operands[0]), _arg_index(op, sub.operands[1])
        if ja is None or jb is None or max(ja, jb) >= _num_inputs(op):
            return False
        y, m = op.operands[ja], op.operands[jb]
        return m in aliases and (y in earlier or (y not in between and y not in aliases))

    eop, ebody = producer_body(b_op.operands[i])
    return ib if eop is not None and is_exp_of_sub(eop, ebody) else None


def _flat_view(mem: ir.Value) -> ir.Value:
    """A 1-D view of a contiguous (identity-layout) memref."""
    mt = ir.MemRefType(mem.type)
    if len(mt.shape) == 1:
        return mem
    flat = ir.MemRefType.get([math.prod(mt.shape)], mt.element_type)
    groups = ir.ArrayAttr.get([ir.ArrayAttr.get(
        [ir.IntegerAttr.get(ir.IntegerType.get_signless(64), k) for k in range(len(mt.shape))])])
    return memref.collapse_shape(flat, mem, groups)


def _is_16_bit_float(t: ir.Type) -> bool:
    return isinstance(t, (ir.F16Type, ir.BF16Type))


def _rounded_to_16_bits(op, live: list[int]) -> bool:
    """Whether every live result of ``op`` is rounded to fp16/bf16: its own element type, or
    read only by element-wise ``truncf`` generics (torch-mlir's fp16 softmax divides in fp32 and
    truncates in the next op). Where it is, a division may multiply by a reciprocal
    (``common.emit_body``)."""
    for k in live:
        r = op.results[k]
        if _is_16_bit_float(ir.ShapedType(r.type).element_type):
            continue
        for use in r.uses:
            user = use.owner
            if user.name != "linalg.generic" or use.operand_number >= _num_inputs(user):
                return False
            body = [o.operation for o in user.regions[0].blocks[0].operations]
            barg = user.regions[0].blocks[0].arguments[use.operand_number]
            truncs = [o for o in body[:-1] if barg in list(o.operands)]
            if len(truncs) != 1 or truncs[0].name != "arith.truncf" or \
                    not _is_16_bit_float(truncs[0].results[0].type):
                return False
    return True


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


#: most elements of its row a thread keeps in registers: 32 (fp32 after conversion) kept
#: softmax on rows of 32768 fp32 at 64 registers without spills under 1024 threads per block
#: (ptxas -v, sm_90); 64 spilled 432 bytes per thread. Longer rows are swept in segments.
ROW_REGISTER_ELEMENTS = 32
#: elements of the row one thread holds per segment of a sweep (16 B of fp32 x 4 in flight)
SEGMENT_ELEMENTS = 16
#: threads per block of an element-wise (flat) kernel: 8 warps, two per scheduler on sm_90
FLAT_THREADS = 256
#: most vectors one thread of a flat kernel loads before it computes (registers, code size)
MAX_FLAT_CHUNKS = 8
#: the part of its life a flat thread has its loads in flight (the rest it computes, stores
#: and is replaced by the next block): the model asks for 1 / this of the latency-bandwidth
#: product in loads
LOAD_DUTY = 0.5


def stream_bytes(prog: RowProgram) -> int:
    """Bytes one vector of the iteration space reads from DRAM: the inputs as large as the
    space (a per-column vector or a row value is read once and then hits the caches)."""
    total = prog.rows * prog.inner
    seen, out = set(), 0
    for step in prog.steps:
        if step.kind != "generic":
            continue
        for v in list(step.op.operands)[:_num_inputs(step.op)]:
            if v in seen or not isinstance(v.type, ir.RankedTensorType):
                continue
            seen.add(v)
            if _in_tile(v, prog.tile):
                continue            # computed in the tile: in registers
            if math.prod(_shape(v)) >= total:
                out += prog.vector * _bytes_of(ir.ShapedType(v.type).element_type)
    return max(out, prog.vector)


def _in_tile(v: ir.Value, tile) -> bool:
    owner = _owner_op(v)
    return owner is not None and owner.parent is not None and \
        owner.parent.operation == tile.operation


def has_row_values(prog: RowProgram) -> bool:
    """Whether the program computes or yields a value per row (then a flat thread keeps one
    vector, so that the thread holding a row's first vector holds its row value)."""
    if any(s.kind == "generic" and s.space == "row" for s in prog.steps):
        return True
    return any(tuple(_shape(v)) != tuple(prog.space) for v in prog.tile.terminator.operands)


def flat_chunks(chip: Chip, threads: int, bytes_per_vector: int, total_vectors: int) -> int:
    """Vectors per thread of a flat kernel (a power of two, at most ``MAX_FLAT_CHUNKS``).

    Little's law: to stream at the chip's copy bandwidth each unit keeps ``bandwidth *
    latency / units`` bytes in flight; a resident thread (full occupancy) has its loads in
    flight ``LOAD_DUTY`` of the time, ``bytes_per_vector`` per chunk. Fewer chunks when the
    grid would not fill every unit once."""
    if not chip.is_gpu:
        return 1
    need = chip.dram_bandwidth * chip.memory_latency_seconds / chip.num_units / LOAD_DUTY
    have = chip.max_threads_per_unit * bytes_per_vector
    chunks = min(MAX_FLAT_CHUNKS, _pow2_at_least(math.ceil(need / have)))
    slots = chip.num_units * max(1, chip.max_threads_per_unit // threads)
    while chunks > 1 and math.ceil(total_vectors / (threads * chunks)) < slots:
        chunks //= 2
    return chunks


def row_config(prog: RowProgram, tile, chip: Chip) -> _RowConfig:
    """Launch shape of a row program: from the tile's schedule where given, else defaults.

    Schedule (Roller): ``threads`` = T; ``thread_tile[-1]`` = elements of the inner loop one
    thread handles (C = that / V chunks); ``block_tile[:-1]`` = rows per block.
    """
    threads = tile.threads
    thread_tile, block_tile = tile.thread_tile, tile.block_tile
    where = _loc(tile.operation)
    warp, most = chip.warp_size, chip.max_threads_per_block
    if threads is not None and (threads <= 0 or threads > most or
                                (threads % warp and threads & (threads - 1))):
        raise QuartetError(f"'quartet.tile' threads={threads} does not fit the hardware "
                           f"(a multiple of {warp} or a power of two below it, at most {most})",
                           where)
    V, N, R = prog.vector, prog.inner, prog.rows
    NV = N // V
    if prog.reductions == 0:
        # Flat: C vectors of V elements per thread, each chunk a coalesced sweep of the block
        # (row mode with 2-8 vectors per thread was slower on the H100 - its per-chunk row
        # indices and 8x unrolled bodies; bench/simt/NOTES.md, run 4). T from the schedule,
        # C from the chip model for that T, whatever the thread tile says (Roller's flat
        # schedule, ``passes/roller/rows.py``, writes the same C; a plain-policy thread tile
        # is not a flat layout).
        T = threads or FLAT_THREADS
        total = R * N // V
        C = flat_chunks(chip, T, stream_bytes(prog), total)
        if has_row_values(prog):
            C = 1           # a row value lives with the thread holding its row's first vector
        C = max(1, min(C, math.ceil(total / T)))
        return _RowConfig("flat", T, 1, 1, C, max(1, math.ceil(total / (T * C))))
    per_thread = None
    if thread_tile is not None and len(thread_tile) == len(prog.space):
        per_thread = max(1, math.ceil(thread_tile[-1] / V))
    if per_thread is None:      # 2 vectors per thread measured best (NOTES.md, run 2)
        per_thread = 2 if NV >= 2 else NV
    G = min(most, _pow2_at_least(math.ceil(NV / per_thread)))
    if threads is not None and G > threads:
        G = threads
    if threads is not None:
        T = threads
    elif block_tile is not None and len(block_tile) == len(prog.space):
        T = G * max(1, min(most // G, math.prod(block_tile[:-1])))
    else:
        T = max(G, 256)
    while T % G:      # a block size the policy chose: fewer threads per row, more rows
        G //= 2
    C = math.ceil(NV / G)
    RB = T // G
    if C * V <= ROW_REGISTER_ELEMENTS:
        return _RowConfig("row", T, G, RB, C, math.ceil(R / RB))
    # Too long for registers: sweeps over S segments of C' chunks each.
    per_segment = max(1, SEGMENT_ELEMENTS // V)
    return _RowConfig("row", T, G, RB, per_segment, math.ceil(R / RB),
                      segments=math.ceil(C / per_segment))


def build_row_kernel(tile, target, prog: RowProgram | None = None, name: str = "kernel"):
    """The ``flat`` / ``row`` builder: a module with ``func @name`` holding one launch."""
    target = chip_of(target)
    prog = prog or analyze_rows(tile)
    cfg = row_config(prog, tile, target)
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


