"""The epilogue of a GEMM kernel: from f32 accumulators to stored output elements.

Per output element (a kernel hands them over in pairs of adjacent columns, the shape of the
tensor-core accumulator fragments): add the accumulator's start (the scalar of a fused
``linalg.fill`` or the init tensor read from memory), convert to the root op's result type,
evaluate the fused element-wise ``linalg.generic`` ops by cloning their bodies on scalars (their
other operands are loaded through their indexing maps: bias rows, broadcast scalars), convert to
the output type and store, with bounds checks where a tile may cross the output's edge.
Pairs are loaded and stored as 2-vectors where the output layout allows it.

:class:`StagedEpilogue` (tensor-core kernels) first parks the raw f32 accumulators of the whole
block tile in shared memory, then the block walks the tile in 16-byte chunks along the output's
contiguous dimension: init loads, element-wise work and stores are then coalesced vectors
instead of the fragments' scattered pairs.
"""

from __future__ import annotations

from mlir import ir
from mlir.dialects import arith, memref, scf, vector

from .gemm_ir import Emitter, Ix, bytes_of, element_type
from .gemm_problem import GemmProblem, Operand, _strides


def _convert(value: ir.Value, to: str) -> ir.Value:
    src = str(value.type)
    if src == to:
        return value
    target = element_type(to)
    if src == "f32":
        return arith.truncf(target, value)
    if to == "f32":
        return arith.extf(target, value)
    return arith.truncf(target, arith.extf(element_type("f32"), value))


class EpilogueWriter:
    """Stores accumulator values of one thread; see the module docstring."""

    def __init__(self, em: Emitter, prob: GemmProblem, args: list[ir.Value],
                 flat: dict[int, ir.Value], batch: Ix):
        self.em, self.prob, self.args, self.flat, self.batch = em, prob, args, flat, batch
        self.out = prob.out
        self.full_m = False
        self.full_n = False
        self._cache: dict = {}
        # Pairs go as 2-vectors when both elements are adjacent and 2-aligned in memory.
        self.pair_ok = (self.out.contiguous == "col" and self.out.granule >= 2
                        and self.out.cols % 2 == 0)
        init = prob.epilogue.init_operand
        self.init_pair_ok = init is not None and init.contiguous == "col" and init.granule >= 2 \
            and init.cols % 2 == 0

    def store_frag(self, r0: Ix, c0: Ix, dr: int, dc: int, values: list[ir.Value]) -> None:
        """``store`` at (r0 + dr, c0 + dc): a thread's fragments share r0/c0."""
        self.store(self.em.add(r0, dr), self.em.add(c0, dc), values)

    def mark_full(self, full_m: bool, full_n: bool) -> None:
        """Tiles never cross the output's edge along m / n: skip those bounds checks."""
        self.full_m, self.full_n = full_m, full_n

    # -- addressing --------------------------------------------------------------------------
    def _part(self, kind: str, op: Operand, v: Ix) -> Ix:
        """Row (with the batch term) or column part of an offset, computed once per value."""
        key = (kind, op.arg, v if isinstance(v, int) else id(v))
        hit = self._cache.get(key)
        if hit is None:
            em = self.em
            if kind == "row":
                part = em.add(op.batch_part(em, self.batch), op.row_part(em, v))
            else:
                part = op.col_part(em, v)
            hit = self._cache[key] = (part, v)
        return hit[0]

    def _offset(self, op: Operand, row: Ix, col: Ix) -> Ix:
        return self.em.add(self._part("row", op, row), self._part("col", op, col))

    def _loop_coords(self, row: Ix, col: Ix) -> list[Ix]:
        """Values of the output's dimensions (in out_dims order) at element (row, col)."""
        em, prob = self.em, self.prob
        if prob.kind == "conv2d":
            cv = prob.out.conv
            img, pix = em.div(col, cv.pixels), em.rem(col, cv.pixels)
            return [img, row, em.div(pix, cv.ow), em.rem(pix, cv.ow)]
        values = {"b": self.batch, "m": row, "n": col}
        return [values[r] for r in prob.out_dims]

    # -- element evaluation ------------------------------------------------------------------
    def _finish(self, acc: ir.Value, init: ir.Value | None, row: Ix, col: Ix) -> ir.Value:
        em, ep = self.em, self.prob.epilogue
        v = acc
        if ep.init == "scalar":
            if ep.init_const is not None:
                if ep.init_const != 0.0:
                    v = arith.addf(v, em.cf(ep.init_const))
            else:
                v = arith.addf(v, _convert(self.args[ep.init_arg], "f32"))
        elif ep.init == "tensor":
            v = arith.addf(v, _convert(init, "f32"))
        v = _convert(v, ep.root_type)
        if ep.generics:
            needs = any(kind == "tensor" for _, inputs in ep.generics for kind, _ in inputs)
            coords = self._loop_coords(row, col) if needs else None
            for op, inputs in ep.generics:
                v = self._apply_generic(op, inputs, v, coords)
        return _convert(v, self.out.dtype)

    def _apply_generic(self, op, inputs, chain: ir.Value, coords: list[Ix]) -> ir.Value:
        em = self.em
        block = op.regions[0].blocks[0]
        mapping: dict = {}
        for i, (kind, what) in enumerate(inputs):
            arg = block.arguments[i]
            if kind == "chain":
                mapping[arg] = chain
            elif kind == "scalar":
                mapping[arg] = self.args[what]
            elif kind == "const":
                mapping[arg] = self._lookup(mapping, what)
            else:
                pos, dims, shape = what
                strides = _strides(shape)
                off: Ix = 0
                for d, s in zip(dims, strides):
                    off = em.add(off, em.mul(coords[d], s))
                mapping[arg] = memref.load(self._flat(pos), [em.c(off)])
        result = None
        for inner in block.operations:
            inner = inner.operation
            if inner.name == "linalg.yield":
                result = self._lookup(mapping, inner.operands[0])
                break
            operands = [self._lookup(mapping, v) for v in inner.operands]  # constants first
            clone = inner.clone()
            for j, operand in enumerate(operands):
                clone.operands[j] = operand
            for old, new in zip(inner.results, clone.results):
                mapping[old] = new
        return result

    def _lookup(self, mapping, value: ir.Value) -> ir.Value:
        if value in mapping:
            return mapping[value]
        owner = value.owner
        if not isinstance(owner, ir.Block) and owner.name == "arith.constant":
            clone = owner.clone()
            mapping[value] = clone.results[0]
            return clone.results[0]
        raise ValueError("epilogue body reads a value defined outside it that is not a constant")

    def _flat(self, pos: int) -> ir.Value:
        return self.flat[pos]

    # -- stores ------------------------------------------------------------------------------
    def store(self, row: Ix, col: Ix, values: list[ir.Value]) -> None:
        """Store ``values`` (f32, one or two) at (row, col) and (row, col + 1)."""
        em, prob, ep = self.em, self.prob, self.prob.epilogue
        pair = len(values) == 2 and self.pair_ok
        # Offsets first, at the current insertion point: they are cached per row and column
        # and must dominate every later use.
        offs = [self._offset(self.out, row, em.add(col, i)) for i in range(len(values))]
        ioffs = [self._offset(ep.init_operand, row, em.add(col, i))
                 for i in range(len(values))] if ep.init == "tensor" else None
        cond = True
        if not self.full_m:
            cond = em.land(cond, em.lt(row, prob.m))
        if not self.full_n:
            cond = em.land(cond, em.lt(col, prob.n))
        if cond is True:
            self._store_now(row, col, values, pair, offs, ioffs)
            return
        if_op = scf.IfOp(cond)
        with ir.InsertionPoint(if_op.then_block):
            self._store_now(row, col, values, pair, offs, ioffs)
            scf.YieldOp([])

    def _store_now(self, row: Ix, col: Ix, values: list[ir.Value], pair: bool, offs,
                   ioffs) -> None:
        em = self.em
        ep = self.prob.epilogue
        if pair:
            inits = [None, None]
            if ep.init == "tensor":
                if self.init_pair_ok:
                    vt = ir.VectorType.get([2], element_type(ep.init_operand.dtype))
                    iv = vector.load(vt, self._flat(ep.init_arg), [em.c(ioffs[0])])
                    inits = [vector.extract(iv, [], [i]) for i in range(2)]
                else:
                    inits = [memref.load(self._flat(ep.init_arg), [em.c(ioffs[i])])
                             for i in range(2)]
            outs = [self._finish(values[i], inits[i], row, em.add(col, i)) for i in range(2)]
            vt = ir.VectorType.get([2], element_type(self.out.dtype))
            vec = vector.from_elements(vt, outs)
            vector.store(vec, self._flat(self.out.arg), [em.c(offs[0])])
            return
        for i, v in enumerate(values):
            c = em.add(col, i)
            if i > 0 and not self.full_n:
                if_op = scf.IfOp(em.lt(c, self.prob.n))
                with ir.InsertionPoint(if_op.then_block):
                    self._store_one(row, c, v, offs[i], ioffs[i] if ioffs else None)
                    scf.YieldOp([])
            else:
                self._store_one(row, c, v, offs[i], ioffs[i] if ioffs else None)

    def _store_one(self, row: Ix, col: Ix, value: ir.Value, off, ioff) -> None:
        em = self.em
        ep = self.prob.epilogue
        init = None
        if ep.init == "tensor":
            init = memref.load(self._flat(ep.init_arg), [em.c(ioff)])
        out = self._finish(value, init, row, col)
        memref.store(out, self._flat(self.out.arg), [em.c(off)])


STAGE_PAD = 8          # f32 elements added to each staged row (bank spreading)


def stage_bytes(bm: int, bn: int) -> int:
    return bm * (bn + STAGE_PAD) * 4


def out_vector(prob: GemmProblem) -> int:
    """Elements per chunk of the staged copy-out: a 16-byte vector where layout allows it."""
    out = prob.out
    if out.contiguous != "col":
        return 1
    v = min(out.granule, 16 // (2 if out.dtype != "f32" else 4), 4 if out.dtype == "f32" else 8)
    while v > 1 and prob.n % v:
        v //= 2
    return max(v, 1)


class StagedEpilogue(EpilogueWriter):
    """Accumulators -> shared memory (``store``), then a coalesced copy-out (``flush``)."""

    def __init__(self, em: Emitter, prob: GemmProblem, args, flat, batch: Ix, smem_f32,
                 smem_base_elems: Ix, bm: int, bn: int, m0: Ix, n0: Ix, splits: int = 1):
        super().__init__(em, prob, args, flat, batch)
        self.smem, self.base = smem_f32, smem_base_elems
        self.splits = splits      # partial sums of a split reduction, one tile each, added here
        self.bm, self.bn, self.m0, self.n0 = bm, bn, m0, n0
        self.row = bn + STAGE_PAD
        self.v = out_vector(prob)

    def store(self, row: Ix, col: Ix, values: list[ir.Value]) -> None:
        """``row``/``col`` are tile-local here."""
        self.store_frag(row, col, 0, 0, values)

    def store_frag(self, r0: Ix, c0: Ix, dr: int, dc: int, values: list[ir.Value]) -> None:
        em = self.em
        key = (r0 if isinstance(r0, int) else id(r0), c0 if isinstance(c0, int) else id(c0))
        hit = self._cache.get(("frag",) + key)
        if hit is None:
            base = em.add(self.base, em.add(em.mul(r0, self.row), c0))
            hit = self._cache[("frag",) + key] = (base, r0, c0)
        idx = em.add(hit[0], dr * self.row + dc)
        vt = ir.VectorType.get([len(values)], element_type("f32"))
        vector.store(vector.from_elements(vt, values), self.smem, [em.c(idx)])

    def flush(self, tid: ir.Value, threads: int) -> None:
        em, prob, v = self.em, self.prob, self.v
        ep = prob.epilogue
        em.barrier()
        per_row = self.bn // v
        total = self.bm * per_row
        loop = scf.ForOp(em.c(tid), em.c(total), em.c(threads))
        with ir.InsertionPoint(loop.body):
            q = loop.induction_variable
            r, c = em.div(q, per_row), em.mul(em.rem(q, per_row), v)
            grow, gcol = em.add(self.m0, r), em.add(self.n0, c)
            cond = True
            if not self.full_m:
                cond = em.land(cond, em.lt(grow, prob.m))
            if not self.full_n:
                cond = em.land(cond, em.lt(gcol, prob.n))
            body = scf.IfOp(cond) if cond is not True else None
            ip = ir.InsertionPoint(body.then_block) if body else None
            if ip:
                ip.__enter__()
            src = em.add(em.mul(r, self.row), c)
            vt = ir.VectorType.get([v], element_type("f32"))
            acc = vector.load(vt, self.smem, [em.c(src)])
            for part in range(1, self.splits):
                more = vector.load(vt, self.smem, [em.c(em.add(src, part * self.bm * self.row))])
                acc = arith.addf(acc, more)
            accs = [vector.extract(acc, [], [e]) for e in range(v)] if v > 1 else \
                [vector.extract(acc, [], [0])]
            inits = [None] * v
            if ep.init == "tensor":
                iop = ep.init_operand
                ioff = self._offset(iop, grow, gcol)
                if v > 1 and iop.contiguous == "col" and iop.granule % v == 0:
                    iv = vector.load(ir.VectorType.get([v], element_type(iop.dtype)),
                                     self._flat(ep.init_arg), [em.c(ioff)],
                                     alignment=v * bytes_of(iop.dtype))
                    inits = [vector.extract(iv, [], [e]) for e in range(v)]
                else:
                    inits = [memref.load(self._flat(ep.init_arg),
                                         [em.c(self._offset(iop, grow, em.add(gcol, e)))])
                             for e in range(v)]
            outs = [self._finish(accs[e], inits[e], grow, em.add(gcol, e)) for e in range(v)]
            off = self._offset(self.out, grow, gcol)
            if v > 1:
                vec = vector.from_elements(ir.VectorType.get([v], element_type(self.out.dtype)),
                                           outs)
                # aligned: the chunk starts at a multiple of v of a buffer row whose length is
                # a multiple of v (out_vector), so the 16-byte vector store is one instruction
                vector.store(vec, self._flat(self.out.arg), [em.c(off)],
                             alignment=v * bytes_of(self.out.dtype))
            else:
                memref.store(outs[0], self._flat(self.out.arg), [em.c(off)])
            if ip:
                scf.YieldOp([])
                ip.__exit__(None, None, None)
            scf.YieldOp([])
