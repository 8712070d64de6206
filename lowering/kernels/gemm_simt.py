"""SIMT GEMM kernels: f32 FMA register tiles fed from shared memory (any float type).

Roller's rProgram for a non-tensor-core tile (OSDI'22, section 4): the block tile
``BM x BN`` steps through K by ``BK``; both operand tiles are staged in shared memory with the
schedule's padding added to each row (``smem_padding``: bank-conflict avoidance), K outermost:
``A`` as ``[BK][BM + pad_a]`` (transposed on the way in when A is K-major), ``B`` as
``[BK][BN + pad_b]``; each thread owns a ``TM x TN`` register tile (the schedule's
``thread_tile``) whose rows and columns are groups of 4 (2 or 1 when the thread tile is not a
multiple of 4) spread over the block tile, so that shared-memory reads are vectors that
neighbouring threads take from neighbouring addresses. Loads go global -> registers -> shared
memory with two shared-memory slots (the next step's loads are in flight while this step
computes); global loads are vectors along the
operand's contiguous dimension where the layout allows. Accumulation is in f32; the epilogue is
``gemm_epilogue.py``'s.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlir import ir
from mlir.dialects import arith, memref, scf, vector

from .gemm_epilogue import EpilogueWriter
from .gemm_ir import Emitter, Ix, bytes_of, element_type, f32
from .gemm_problem import GemmProblem, Operand
from .gemm_tc import no_unroll


UNROLL = 8            # k values of a reduction step unrolled per inner-loop iteration


@dataclass(frozen=True)
class SimtSchedule:
    bm: int
    bn: int
    bk: int
    tm: int
    tn: int
    threads: int
    pad_a: int
    pad_b: int


def schedule(prob: GemmProblem, bm, bn, bk, tm, tn, threads, padding, stages, limit):
    """A :class:`SimtSchedule`, or the reason the tile's schedule does not fit this kernel."""
    if tm <= 0 or tn <= 0:
        return f"thread tile {tm}x{tn} must be positive"
    if bm % tm or bn % tn:
        return f"thread tile {tm}x{tn} must divide the block tile {bm}x{bn}"
    if (bm // tm) * (bn // tn) != threads:
        return f"threads = {threads} but the thread tiles need {(bm // tm) * (bn // tn)}"
    if bk <= 0 or bk > 64:
        return f"reduction step {bk} must be between 1 and 64"
    pad = list(padding) if padding else [0, 0]
    if len(pad) != 2 or any(p < 0 for p in pad):
        return "smem_padding must have one non-negative entry per input"
    # Roller's padding counts scalar accesses (one element shifts each row by a bank); this
    # kernel reads a thread's rows and columns as vectors of _group(t) elements, which need
    # rows that stay multiples of the vector: round a padding up to one (pad 1 -> 4 for f32).
    # On the H100, fp32 4096^3 with 128x128 k8: 3.5 ms with padding 4 (bench/gemm/NOTES.md)
    # against 4.8 ms for Roller's padding 1 through the pipeline (bench run 2026-11-25 07:37).
    for i, (extent, t) in enumerate(((bm, tm), (bn, tn))):
        w = _group(t)
        if pad[i] and (extent + pad[i]) % w:
            pad[i] = -(-(extent + pad[i]) // w) * w - extent
    s = SimtSchedule(bm, bn, bk, tm, tn, threads, pad[0], pad[1])
    if shared_bytes(prob, s) > limit:
        return f"the tile's shared memory exceeds {limit} bytes"
    return s


def _granule(op: Operand, k_is_row: bool, bk: int, other: int, threads: int = 1) -> int:
    """Elements one thread loads at once (a vector along the contiguous dimension), at most
    what lets the tile split evenly over the threads."""
    g = min(op.granule, 16 // bytes_of(op.dtype))
    while g > 1 and (bk * other // g) % threads:
        g //= 2
    if op.contiguous is None or (op.kind == "im2col" and not op.conv.is_pointwise):
        return 1
    k_inner = (op.contiguous == "row") == k_is_row
    extent = bk if k_inner else other
    while g > 1 and extent % g:
        g //= 2
    return max(g, 1)


def shared_bytes(prob: GemmProblem, s: SimtSchedule) -> int:
    a = s.bk * (s.bm + s.pad_a) * bytes_of(prob.a.dtype)
    b = s.bk * (s.bn + s.pad_b) * bytes_of(prob.b.dtype)
    return 2 * (a + b)


class _Loader:
    """Global -> registers -> shared ``[BK][other + pad]`` for one operand."""

    def __init__(self, em: Emitter, op: Operand, k_is_row: bool, bk: int, other_tile: int,
                 pad: int, other_origin: Ix, other_extent: int, k_total: int, threads: int,
                 batch: Ix, gmem, smem, smem_off: int, tid):
        self.em, self.op, self.k_is_row, self.bk = em, op, k_is_row, bk
        self.row = other_tile + pad                # shared row length (elements)
        self.k_total, self.other_extent = k_total, other_extent
        self.gmem, self.smem, self.smem_off = gmem, smem, smem_off
        full_other = other_extent % other_tile == 0
        self.full_k = k_total % bk == 0
        # Vectors only where no element of a tile can fall outside the operand.
        self.g = _granule(op, k_is_row, bk, other_tile, threads) \
            if full_other and self.full_k else 1
        self.k_inner = op.contiguous is not None and (op.contiguous == "row") == k_is_row
        g = self.g
        inner, outer = (bk, other_tile) if self.k_inner else (other_tile, bk)
        per_row = inner // g
        self.items = []
        batch_off = op.batch_part(em, batch)
        total = inner * outer // g
        for j in range(-(-total // threads)):
            q = em.add(tid, j * threads)
            # the last round may have fewer items than threads: the others load item 0 and
            # store nothing
            active = True if (j + 1) * threads <= total else em.lt(q, total)
            q = em.select(active, q, 0)
            o, i = em.div(q, per_row), em.mul(em.rem(q, per_row), g)
            k_l, oth_l = (i, o) if self.k_inner else (o, i)
            other = em.add(other_origin, oth_l)
            inside = True if full_other else em.lt(other, other_extent)
            safe = em.select(inside, other, 0)
            part = op.col_part(em, safe) if k_is_row else op.row_part(em, safe)
            self.items.append((k_l, oth_l, em.add(batch_off, part), inside, active))

    def _k_part(self, k: Ix) -> Ix:
        op, em = self.op, self.em
        return op.row_part(em, k) if self.k_is_row else op.col_part(em, k)

    def load(self, kt: Ix) -> list:
        em, g = self.em, self.g
        et = element_type(self.op.dtype)
        k0 = em.mul(kt, self.bk)
        regs = []
        for k_l, _, part, inside, _ in self.items:
            k = em.add(k0, k_l)
            if g > 1:
                off = em.add(part, self._k_part(k))
                regs.append(vector.load(ir.VectorType.get([g], et), self.gmem, [em.c(off)]))
                continue
            kin = True if self.full_k else em.lt(k, self.k_total)
            valid = em.land(kin, inside)
            kk = k if kin is True else em.select(kin, k, 0)
            x = memref.load(self.gmem, [em.c(em.add(part, self._k_part(kk)))])
            if valid is False:
                x = em.cf(0.0, self.op.dtype)
            elif valid is not True:
                x = arith.select(valid, x, em.cf(0.0, self.op.dtype))
            regs.append([x])
        return regs

    def store(self, regs, slot_off: Ix) -> None:
        em, g = self.em, self.g
        et = element_type(self.op.dtype)
        base = em.add(slot_off, self.smem_off)
        for (k_l, oth_l, _, _, active), r in zip(self.items, regs):
            guard = None
            if active is False:
                continue
            if active is not True:
                guard = scf.IfOp(active)
                ip = ir.InsertionPoint(guard.then_block)
                ip.__enter__()
            self._store_item(k_l, oth_l, r, base, g, et)
            if guard is not None:
                scf.YieldOp([])
                ip.__exit__(None, None, None)

    def _store_item(self, k_l, oth_l, r, base, g, et) -> None:
        em = self.em
        if self.k_inner:
            vals = r if isinstance(r, list) else [vector.extract(r, [], [e]) for e in range(g)]
            for e in range(g):
                idx = em.add(base, em.add(em.mul(em.add(k_l, e), self.row), oth_l))
                memref.store(vals[e], self.smem, [em.c(idx)])
            return
        if isinstance(r, list):
            r = vector.from_elements(ir.VectorType.get([g], et), r) if g > 1 else r[0]
        idx = em.add(base, em.add(em.mul(k_l, self.row), oth_l))
        if g > 1:
            vector.store(r, self.smem, [em.c(idx)])
        else:
            memref.store(r, self.smem, [em.c(idx)])


def emit_body(em: Emitter, prob: GemmProblem, s: SimtSchedule, args, flat) -> None:
    tid = em.thread_id()
    bx, by, bz = em.block_id("x"), em.block_id("y"), em.block_id("z")
    m0, n0 = em.mul(by, s.bm), em.mul(bx, s.bn)
    batch = bz if prob.batch > 1 else 0
    kt_total = -(-prob.k // s.bk)
    dt_a, dt_b = prob.a.dtype, prob.b.dtype
    a_slot = s.bk * (s.bm + s.pad_a)
    b_slot = s.bk * (s.bn + s.pad_b)
    # One view per operand type; both slots of A, then both of B.
    a_view = em.smem(0, 2 * a_slot, dt_a)
    b_bytes0 = 2 * a_slot * bytes_of(dt_a)
    b_view = em.smem(b_bytes0, 2 * b_slot, dt_b)
    a_ld = _Loader(em, prob.a, False, s.bk, s.bm, s.pad_a, m0, prob.m, prob.k, s.threads, batch,
                   flat[prob.a.arg], a_view, 0, tid)
    b_ld = _Loader(em, prob.b, True, s.bk, s.bn, s.pad_b, n0, prob.n, prob.k, s.threads, batch,
                   flat[prob.b.arg], b_view, 0, tid)

    cols_t = s.bn // s.tn
    tx, ty = em.rem(tid, cols_t), em.div(tid, cols_t)
    # rows of this thread: groups of 4 spread by BM / (TM / 4)
    # A thread's rows: groups of wm consecutive rows (4 where the tile allows) spread by
    # BM * wm / TM, so neighbouring threads read neighbouring vectors; columns alike.
    wm, wn = _group(s.tm), _group(s.tn)
    row_groups = [em.add(em.mul(ty, wm), gi * (s.bm * wm // s.tm)) for gi in range(s.tm // wm)]
    col_groups = [em.add(em.mul(tx, wn), gj * (s.bn * wn // s.tn)) for gj in range(s.tn // wn)]
    a_vec = (s.bm + s.pad_a) % wm == 0
    b_vec = (s.bn + s.pad_b) % wn == 0

    a_ld.store(a_ld.load(0), 0)
    b_ld.store(b_ld.load(0), 0)
    em.barrier()

    vt = ir.VectorType.get([s.tn], f32())
    zero = em.zero_vector(s.tn)
    accs = [zero] * s.tm
    loop = scf.ForOp(em.c(0), em.c(kt_total), em.c(1), accs)
    no_unroll(loop)
    with ir.InsertionPoint(loop.body):
        kt = loop.induction_variable
        cur = list(loop.inner_iter_args)
        nxt = arith.minui(arith.addi(kt, em.c(1)), em.c(kt_total - 1))
        a_regs = a_ld.load(nxt)
        b_regs = b_ld.load(nxt)
        slot = em.rem(kt, 2)
        a_base = em.mul(slot, a_slot)
        b_base = em.mul(slot, b_slot)
        # The step's k values: UNROLL at a time in a rolled loop (a fully unrolled 32-deep
        # step of 8x8 tiles is 2048 FMAs, which ptxas takes over a second to schedule).
        # The unroll factor divides the step: a step of 27 (3x3 conv over 3 channels) taken 8
        # at a time would read k = 27..31 of the slot, which holds stale data.
        unroll = max(d for d in range(1, min(s.bk, UNROLL) + 1) if s.bk % d == 0)
        inner = None
        if s.bk > unroll:
            inner = scf.ForOp(em.c(0), em.c(s.bk), em.c(unroll), cur)
            no_unroll(inner)
            ip = ir.InsertionPoint(inner.body)
            ip.__enter__()
            k0 = inner.induction_variable
            cur = list(inner.inner_iter_args)
            a_base = em.add(a_base, em.mul(k0, s.bm + s.pad_a))
            b_base = em.add(b_base, em.mul(k0, s.bn + s.pad_b))
        for kk in range(unroll):
            a_vals = _frag(em, a_view, em.add(a_base, kk * (s.bm + s.pad_a)), row_groups, wm,
                           a_vec, dt_a)
            b_vals = _frag(em, b_view, em.add(b_base, kk * (s.bn + s.pad_b)), col_groups, wn,
                           b_vec, dt_b)
            bvec = vector.from_elements(vt, b_vals)
            for i in range(s.tm):
                cur[i] = vector.fma(vector.broadcast(vt, a_vals[i]), bvec, cur[i])
        if inner is not None:
            scf.YieldOp(cur)
            ip.__exit__(None, None, None)
            cur = list(inner.results)
        nslot = em.mul(em.rem(em.add(kt, 1), 2), 1)
        a_ld.store(a_regs, em.mul(nslot, a_slot))
        b_ld.store(b_regs, em.mul(nslot, b_slot))
        em.barrier()
        scf.YieldOp(cur)
    accs = list(loop.results)

    writer = EpilogueWriter(em, prob, args, flat, batch)
    writer.mark_full(prob.m % s.bm == 0, prob.n % s.bn == 0)
    pair = 2 if wn % 2 == 0 else 1
    for gi, rg in enumerate(row_groups):
        for e in range(wm):
            row = em.add(em.add(m0, rg), e)
            acc = accs[gi * wm + e]
            for gj, cg in enumerate(col_groups):
                for part in range(wn // pair):
                    vals = [vector.extract(acc, [], [gj * wn + part * pair + x])
                            for x in range(pair)]
                    writer.store(row, em.add(em.add(n0, cg), part * pair), vals)


def _group(t: int) -> int:
    return 4 if t % 4 == 0 else 2 if t % 2 == 0 else 1


def _frag(em: Emitter, view, base: Ix, groups, width: int, vec_ok: bool, dtype: str) -> list:
    """Values at ``base + group + (0..width-1)`` for each group, as f32 scalars."""
    out = []
    for g in groups:
        idx = em.add(base, g)
        if vec_ok and width > 1:
            v = vector.load(ir.VectorType.get([width], element_type(dtype)), view, [em.c(idx)])
            vals = [vector.extract(v, [], [e]) for e in range(width)]
        else:
            vals = [memref.load(view, [em.c(em.add(idx, e))]) for e in range(width)]
        if dtype != "f32":
            vals = [arith.extf(f32(), x) for x in vals]
        out.extend(vals)
    return out
