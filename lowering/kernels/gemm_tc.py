"""Tensor-core GEMM kernels: Hopper ``wgmma`` (sm_90a) and ``mma.sync`` m16n8k16 (sm_80+).

Roller's rProgram for a tensor-core tile (OSDI'22, section 4): the block tile is staged through
shared memory one reduction step (BK) at a time, warps (or warpgroups) own register tiles of the
block tile and the tensor cores consume fragments from shared memory. Here:

* **Shared-memory layout.** Each operand tile keeps its global contiguous dimension innermost
  (K-major or M/N-major) and is cut into rows of ``chunk`` elements (64 for 16-bit types: 128
  bytes), stored with the hardware's XOR swizzle (``Swizzle<B,4,3>``: 16-byte chunk index XOR
  row bits), the layout ``wgmma`` descriptors name (swizzle modes 128/64/32 B) and on which
  ``ldmatrix`` is free of bank conflicts. The swizzle replaces the schedule's ``smem_padding``
  for tensor-core kernels (padding is not a layout ``wgmma`` can read).
* **Loaders.** Operands that are affine along K are copied with ``cp.async``
  (``nvgpu.device_async_copy``) in granules of up to 16 bytes, zero-filling what lies past the
  edges; an implicit-GEMM (im2col) input of a non-pointwise convolution is gathered element by
  element through registers, with the K-dependent part of its offsets taken from a table built in
  shared memory at kernel start.
* **Pipeline.** ``stages`` shared-memory slots. All-async kernels prefetch ``stages - 1`` steps
  ahead (``mma.sync``) or ``stages - 2`` (``wgmma``, which keeps one group of tensor-core work in
  flight with ``wgmma.wait_group 1``); kernels with a register-staged operand double-buffer.
* **Engines.** ``wgmma``: warpgroups of 128 threads on a ``wg_m x wg_n`` grid; each issues
  ``wgmma.mma_async m64nNk16`` with shared-memory descriptors built here (start address, leading
  and stride byte offsets, swizzle mode), accumulating in an LLVM struct of f32 registers.
  ``mma``: warps on a grid of warp tiles; ``nvgpu.ldmatrix`` (``.trans`` for M/N-major tiles) and
  ``nvgpu.mma.sync`` m16n8k16 with f32 accumulation.
* **Epilogue** (``gemm_epilogue.py``): accumulator fragments are stored straight from registers,
  two adjacent columns at a time.

Assumes 16-bit inputs (f16 or bf16, both operands alike), f32 accumulation, and a schedule that
``check_schedule`` accepted.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlir import ir
from mlir.dialects import arith, llvm, memref, nvgpu, nvvm, scf, vector

from .gemm_epilogue import EpilogueWriter, StagedEpilogue, stage_bytes
from .gemm_ir import Emitter, Ix, element_type, f32, i64, index, struct_type
from .gemm_problem import GemmProblem, Operand

@dataclass(frozen=True)
class TCSchedule:
    """A tensor-core kernel configuration (derived from the tile's schedule in gemm.py)."""

    engine: str          # "wgmma" | "mma"
    bm: int
    bn: int
    bk: int
    threads: int
    stages: int
    warp_m: int = 0      # mma: warp tile
    warp_n: int = 0
    wg_m: int = 1        # wgmma: warpgroup grid
    wg_n: int = 1
    split_k: int = 1     # mma: warps sharing each reduction step (partial sums added at the end)


# ---------------------------------------------------------------------------------------------
# Shared-memory tiles
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SmemTile:
    """An operand tile in shared memory: ``outer`` rows of ``inner`` contiguous elements, cut
    into blocks of ``chunk`` inner elements, each block ``outer x chunk`` swizzled."""

    outer: int
    inner: int
    esize: int
    chunk: int

    @property
    def row_bytes(self) -> int:          # the swizzle width
        return self.chunk * self.esize

    @property
    def block_bytes(self) -> int:
        return self.outer * self.row_bytes

    @property
    def bytes(self) -> int:
        return self.outer * self.inner * self.esize

    @property
    def swizzle_mode(self) -> int:       # wgmma descriptor encoding
        return {128: 1, 64: 2, 32: 3}[self.row_bytes]

    def byte_offset(self, em: Emitter, o: Ix, i: Ix) -> Ix:
        """Byte offset of element (o, i), swizzled."""
        rb = self.row_bytes
        blk, ii = em.div(i, self.chunk), em.rem(i, self.chunk)
        inrow = em.mul(ii, self.esize)
        shift = {128: 0, 64: 1, 32: 2}[rb]
        sw = em.band(em.shr(o, shift), rb // 16 - 1)
        inrow = em.xor(inrow, em.mul(sw, 16))
        return em.add(em.add(em.mul(blk, self.block_bytes), em.mul(o, rb)), inrow)


def tile_for(op: Operand, k_extent: int, other_extent: int,
             k_is_row: bool) -> tuple[SmemTile, bool]:
    """The shared-memory tile of an operand and whether K is its inner (contiguous) dimension.

    ``k_is_row``: whether the operand's rows are the K dimension (B) or its columns (A)."""
    cont = op.contiguous or "col"
    k_inner = (cont == "row") == k_is_row
    inner, outer = (k_extent, other_extent) if k_inner else (other_extent, k_extent)
    esize = 2
    chunk = min(64, inner)
    return SmemTile(outer, inner, esize, chunk), k_inner


# ---------------------------------------------------------------------------------------------
# Loaders
# ---------------------------------------------------------------------------------------------

class _OperandLoader:
    """Common geometry of one operand's loads: which GEMM coordinate is outer/inner."""

    def __init__(self, em: Emitter, op: Operand, tile: SmemTile, k_inner: bool, k_is_row: bool,
                 other_origin: Ix, other_extent: int, k_total: int, bk: int, threads: int,
                 batch: Ix, gmem: ir.Value, smem: ir.Value, smem_base: int, granule: int):
        self.em, self.op, self.tile = em, op, tile
        self.k_inner, self.k_is_row = k_inner, k_is_row
        self.other_origin, self.other_extent = other_origin, other_extent
        self.k_total, self.bk, self.threads = k_total, bk, threads
        self.gmem, self.smem, self.smem_base = gmem, smem, smem_base
        self.g = granule
        self.batch_off = op.batch_part(em, batch)

    def _offset(self, k: Ix, other: Ix) -> Ix:
        em, op = self.em, self.op
        row, col = (k, other) if self.k_is_row else (other, k)
        return em.add(self.batch_off, em.add(op.row_part(em, row), op.col_part(em, col)))


def _thread_items(em: Emitter, tid: ir.Value, outer: int, per_row: int, threads: int, width: int):
    """Items a thread moves, as (outer index, inner element index, j, step, active): items are
    numbered row-major over ``outer x per_row`` and dealt round-robin to the threads. When the
    threads cover whole rows, a thread's items share the inner index and its outer index is
    ``o0 + j * step``; otherwise ``step`` is None. ``active`` is True, or an ``i1`` that is
    false for the threads that have no item in the last, partial round."""
    total = outer * per_row
    count = -(-total // threads)
    out = []
    if threads % per_row == 0:
        o0, i = em.div(tid, per_row), em.mul(em.rem(tid, per_row), width)
        step = threads // per_row
        for j in range(count):
            o = o0 if j == 0 else em.add(o0, j * step)
            active = True if (j + 1) * threads <= total else em.lt(o, outer)
            out.append((o, i, j, step, active))
        return out
    for j in range(count):
        q = em.add(tid, j * threads)
        active = True if (j + 1) * threads <= total else em.lt(q, total)
        out.append((em.div(q, per_row), em.mul(em.rem(q, per_row), width), j, None, active))
    return out


class AsyncLoader(_OperandLoader):
    """``cp.async`` copies of an operand that is affine along K, zero-filling past the edges."""

    def prepare(self, tid: ir.Value) -> None:
        em, t, g = self.em, self.tile, self.g
        k_stride = self.op.k_stride(self.k_is_row)
        assert k_stride is not None, "cp.async loads need an operand affine along K"
        self.k_step = self.bk * k_stride
        other_tile = t.outer if self.k_inner else t.inner
        k_partial = self.k_total % self.bk != 0 or (self.k_inner and self.k_total % g != 0)
        other_partial = self.other_extent % other_tile != 0 or \
            (not self.k_inner and self.other_extent % g != 0)
        self.need_guard = k_partial or other_partial
        self.k_partial = k_partial
        # Stride (elements) of the outer index in global memory, when affine: the first item's
        # offsets then give every other item's by adding constants.
        if self.k_inner:
            o_stride = None if self.op.kind != "affine" else \
                (self.op.strides[2] if self.k_is_row else self.op.strides[1])
        else:
            o_stride = k_stride
        self.items = []
        first = None
        for o, i, j, step, active in _thread_items(em, tid, t.outer, t.inner // g, self.threads,
                                                   g):
            k_local, other_local = (i, o) if self.k_inner else (o, i)
            other = em.add(self.other_origin, other_local)
            if first is not None and step is not None and o_stride is not None \
                    and (step * j) % 8 == 0:
                base = em.add(first[0], j * step * o_stride)
                smem_off = em.add(first[1], j * step * t.row_bytes // t.esize)
            else:
                base = self._offset(k_local, other)       # the offset at reduction step 0
                smem_off = em.div(em.add(self.smem_base, t.byte_offset(em, o, i)), t.esize)
                if j == 0:
                    first = (base, smem_off)
            # elements of the granule inside the operand along the non-K dimension
            if not other_partial:
                other_count = g
            elif self.k_inner:
                other_count = em.select(em.lt(other, self.other_extent), g, 0)
            else:
                other_count = _clamp(em, em.sub(self.other_extent, other), g)
            if other_partial and not k_partial:
                # Only the non-K edge cuts granules, the same at every step: decide once. An
                # empty granule reads from the K offset alone, which stays inside the operand.
                nonzero = em.lt(0, other_count) if isinstance(other_count, int) else \
                    arith.cmpi(arith.CmpIPredicate.sgt, em.c(other_count), em.c(0))
                base = em.select(nonzero, base, 0)
            self.items.append((k_local, base, smem_off, other_count, active))

    def issue(self, kt: Ix, slot_elems: Ix) -> None:
        em, g = self.em, self.g
        k0 = em.mul(kt, self.bk)
        koff = em.mul(kt, self.k_step)
        bypass = True if g * self.tile.esize == 16 else None
        size = ir.IntegerAttr.get(index(), g)
        for k_local, base, smem_off, other_count, active in self.items:
            guard = None
            if active is False:
                continue
            if active is not True:
                guard = scf.IfOp(active)
                guard_ip = ir.InsertionPoint(guard.then_block)
                guard_ip.__enter__()
            self._copy(em, g, k0, koff, k_local, base, smem_off, other_count, slot_elems, size,
                       bypass)
            if guard is not None:
                scf.YieldOp([])
                guard_ip.__exit__(None, None, None)

    def _copy(self, em, g, k0, koff, k_local, base, smem_off, other_count, slot_elems, size,
              bypass) -> None:
        src = em.add(base, koff)
        dst = em.add(slot_elems, smem_off)
        if not self.need_guard:
            nvgpu.DeviceAsyncCopyOp(self.smem, [em.c(dst)], self.gmem, [em.c(src)],
                                    size, bypassL1=bypass)
            return
        if not self.k_partial:
            nvgpu.DeviceAsyncCopyOp(self.smem, [em.c(dst)], self.gmem, [em.c(src)],
                                    size, srcElements=em.c(other_count), bypassL1=bypass)
            return
        k = em.add(k0, k_local)
        if self.k_inner:
            k_count = _clamp(em, em.sub(self.k_total, k), g)
            count = _min(em, k_count, other_count)
        else:
            count = em.select(em.lt(k, self.k_total), other_count, 0)
        src = em.select(em.lt(0, count) if isinstance(count, int) else
                        arith.cmpi(arith.CmpIPredicate.sgt, em.c(count), em.c(0)), src, 0)
        nvgpu.DeviceAsyncCopyOp(self.smem, [em.c(dst)], self.gmem, [em.c(src)],
                                size, srcElements=em.c(count), bypassL1=bypass)


def _min(em: Emitter, a: Ix, b: Ix) -> Ix:
    if isinstance(a, int) and isinstance(b, int):
        return min(a, b)
    if isinstance(b, int) and b >= 16:
        return a
    return arith.minsi(em.c(a), em.c(b))


def _clamp(em: Emitter, v: Ix, hi: int) -> Ix:
    if isinstance(v, int):
        return max(0, min(v, hi))
    return arith.minsi(arith.maxsi(v, em.c(0)), em.c(hi))


class GatherLoader(_OperandLoader):
    """Register-staged loads of an implicit-GEMM input (element gathers), K outer in the tile.

    Each thread owns ``V`` adjacent pixels (tile columns) and a set of K rows; the pixel parts of
    the offsets stay in registers, the K parts come from a shared-memory table."""

    V = 8

    def prepare(self, tid: ir.Value, table: ir.Value) -> None:
        em, t, v = self.em, self.tile, self.V
        assert not self.k_inner
        self.table = table
        self.items = []
        full = self.other_extent % t.inner == 0
        cols: dict = {}
        for o, i, _, _, active in _thread_items(em, tid, t.outer, t.inner // v, self.threads, v):
            key = id(i) if not isinstance(i, int) else i
            if key not in cols:
                parts = []
                for e in range(v):
                    pixel = em.add(em.add(self.other_origin, i), e)
                    inside = True if full else em.lt(pixel, self.other_extent)
                    safe = em.select(inside, pixel, 0)
                    parts.append((em.add(self.batch_off, self.op.col_part(em, safe)), inside))
                cols[key] = parts
            self.items.append((o, i, cols[key], active))
        self.regs = None

    def load(self, kt: Ix) -> None:
        em = self.em
        k0 = em.mul(kt, self.bk)
        etype = element_type(self.op.dtype)
        zero = em.cf(0.0, self.op.dtype)
        self.regs = []
        for o, i, parts, _ in self.items:
            k = em.add(k0, o)
            kin = True if self.k_total % self.bk == 0 else em.lt(k, self.k_total)
            kidx = k if kin is True else _clamp_idx(em, k, self.k_total)
            kpart = arith.index_cast(index(), memref.load(self.table, [em.c(kidx)]))
            vals = []
            for cp, inside in parts:
                x = memref.load(self.gmem, [em.c(em.add(cp, kpart))])
                valid = em.land(kin, inside)
                if valid is False:
                    x = zero
                elif valid is not True:
                    x = arith.select(valid, x, zero)
                vals.append(x)
            self.regs.append(vector.from_elements(ir.VectorType.get([self.V], etype), vals))

    def store(self, slot_bytes: Ix) -> None:
        em, t = self.em, self.tile
        for (o, i, _, active), vec in zip(self.items, self.regs):
            off = em.add(em.add(slot_bytes, self.smem_base), t.byte_offset(em, o, i))
            if active is True:
                vector.store(vec, self.smem, [em.c(em.div(off, t.esize))])
                continue
            if active is False:
                continue
            guard = scf.IfOp(active)
            with ir.InsertionPoint(guard.then_block):
                vector.store(vec, self.smem, [em.c(em.div(off, t.esize))])
                scf.YieldOp([])


def _clamp_idx(em: Emitter, k: Ix, n: int) -> Ix:
    if isinstance(k, int):
        return min(k, n - 1)
    return arith.minui(k, em.c(n - 1))


# ---------------------------------------------------------------------------------------------
# Engines
# ---------------------------------------------------------------------------------------------

def _desc_const(lbo: int, sbo: int, mode: int) -> int:
    return ((lbo >> 4) & 0x3FFF) << 16 | ((sbo >> 4) & 0x3FFF) << 32 | (mode << 62)


class WgmmaEngine:
    """Warpgroup MMA from shared-memory descriptors (sm_90a)."""

    def __init__(self, em: Emitter, s: TCSchedule, a_tile: SmemTile, a_k_inner: bool,
                 b_tile: SmemTile, b_k_inner: bool, dtype: str):
        self.em, self.s = em, s
        self.a_tile, self.b_tile = a_tile, b_tile
        self.a_k_inner, self.b_k_inner = a_k_inner, b_k_inner
        self.dtype = dtype
        self.tm = s.bm // s.wg_m        # rows per warpgroup
        self.tn = s.bn // s.wg_n        # columns per warpgroup
        self.mi = self.tm // 64
        self.acc_type = struct_type(self.tn // 2, f32())

    def prepare(self, tid: ir.Value, smem_base_addr: ir.Value, a_off: int, b_off: int) -> None:
        em, s = self.em, self.s
        wg = em.div(tid, 128)
        self.wg_mi, self.wg_ni = em.div(wg, s.wg_n), em.rem(wg, s.wg_n)
        at, bt = self.a_tile, self.b_tile
        # A: m offset of this warpgroup inside the tile, in bytes
        m0 = em.mul(self.wg_mi, self.tm)
        n0 = em.mul(self.wg_ni, self.tn)
        if self.a_k_inner:
            a_wg = em.mul(m0, at.row_bytes)
            a_desc = _desc_const(16, 8 * at.row_bytes, at.swizzle_mode)
        else:
            a_wg = em.mul(em.div(m0, at.chunk), at.block_bytes)
            a_desc = _desc_const(at.block_bytes, 8 * at.row_bytes, at.swizzle_mode)
        if self.b_k_inner:
            b_wg = em.mul(n0, bt.row_bytes)
            b_desc = _desc_const(16, 8 * bt.row_bytes, bt.swizzle_mode)
        else:
            b_wg = em.mul(em.div(n0, bt.chunk), bt.block_bytes)
            b_desc = _desc_const(bt.block_bytes, 8 * bt.row_bytes, bt.swizzle_mode)
        base4 = arith.shrui(smem_base_addr, em.ci64(4))
        self.a_desc0 = arith.addi(arith.ori(em.ci64(a_desc), base4),
                                  em.to_i64(em.div(em.add(a_off, a_wg), 16)))
        self.b_desc0 = arith.addi(arith.ori(em.ci64(b_desc), base4),
                                  em.to_i64(em.div(em.add(b_off, b_wg), 16)))

    def init_acc(self) -> list[ir.Value]:
        zero = llvm.ZeroOp(self.acc_type).result
        return [zero] * self.mi

    def _a_step(self, mi: int, ks: int) -> int:
        at = self.a_tile
        k = ks * 16
        if self.a_k_inner:
            return (k // at.chunk) * at.block_bytes + mi * 64 * at.row_bytes + (k % at.chunk) * 2
        return mi * (64 // at.chunk) * at.block_bytes + k * at.row_bytes

    def _b_step(self, ks: int) -> int:
        bt = self.b_tile
        k = ks * 16
        if self.b_k_inner:
            return (k // bt.chunk) * bt.block_bytes + (k % bt.chunk) * 2
        return k * bt.row_bytes

    def compute(self, accs: list[ir.Value], slot_bytes16: ir.Value, pending: int) -> list[ir.Value]:
        """Issue the tile's wgmma ops on slot ``slot_bytes16`` (slot byte offset / 16, i64)."""
        em = self.em
        a_base = arith.addi(self.a_desc0, slot_bytes16)
        b_base = arith.addi(self.b_desc0, slot_bytes16)
        nvvm.WgmmaFenceAlignedOp()
        ty = nvvm.WGMMATypes.f16 if self.dtype == "f16" else nvvm.WGMMATypes.bf16
        shape = ir.Attribute.parse(f"#nvvm.shape<m = 64, n = {self.tn}, k = 16>")
        lay_a = nvvm.MMALayout.row if self.a_k_inner else nvvm.MMALayout.col
        lay_b = nvvm.MMALayout.col if self.b_k_inner else nvvm.MMALayout.row
        out = list(accs)
        for ks in range(self.s.bk // 16):
            b_desc = _add_i64(em, b_base, self._b_step(ks) >> 4)
            for mi in range(self.mi):
                a_desc = _add_i64(em, a_base, self._a_step(mi, ks) >> 4)
                out[mi] = nvvm.WgmmaMmaAsyncOp(
                    self.acc_type, out[mi], a_desc, b_desc, shape,
                    ty, ty, nvvm.WGMMATypes.f32,
                    nvvm.WGMMAScaleOut.one, nvvm.WGMMAScaleIn.one, nvvm.WGMMAScaleIn.one,
                    lay_a, lay_b).result
        nvvm.WgmmaGroupSyncAlignedOp()
        nvvm.WgmmaWaitGroupSyncOp(pending)
        return out

    def finish(self) -> None:
        nvvm.WgmmaWaitGroupSyncOp(0)

    def epilogue(self, accs, tid, m_origin: Ix, n_origin: Ix, writer: EpilogueWriter) -> None:
        em = self.em
        lane = em.rem(tid, 32)
        warp = em.rem(em.div(tid, 32), 4)
        r0 = em.add(em.add(m_origin, em.mul(self.wg_mi, self.tm)),
                    em.add(em.mul(warp, 16), em.div(lane, 4)))
        c0 = em.add(em.add(n_origin, em.mul(self.wg_ni, self.tn)), em.mul(em.rem(lane, 4), 2))
        for mi in range(self.mi):
            for h in range(2):
                for j in range(self.tn // 8):
                    vals = [llvm.ExtractValueOp(f32(), accs[mi], [j * 4 + h * 2 + e]).result
                            for e in range(2)]
                    writer.store_frag(r0, c0, mi * 64 + h * 8, j * 8, vals)


def _add_i64(em: Emitter, v: ir.Value, c: int) -> ir.Value:
    return v if c == 0 else arith.addi(v, em.ci64(c))


class MmaSyncEngine:
    """Warp-level ``mma.sync`` m16n8k16 with ``ldmatrix`` fragments (sm_80+)."""

    def __init__(self, em: Emitter, s: TCSchedule, a_tile: SmemTile, a_k_inner: bool,
                 b_tile: SmemTile, b_k_inner: bool, dtype: str):
        self.em, self.s = em, s
        self.a_tile, self.b_tile = a_tile, b_tile
        self.a_k_inner, self.b_k_inner = a_k_inner, b_k_inner
        self.dtype = dtype
        self.mi = s.warp_m // 16
        self.nj = s.warp_n // 8
        self.etype = element_type(dtype)

    def prepare(self, tid: ir.Value, smem_view: ir.Value, a_off: int, b_off: int) -> None:
        em, s = self.em, self.s
        self.smem = smem_view
        self.a_off, self.b_off = a_off, b_off
        warp = em.div(tid, 32)
        lane = em.rem(tid, 32)
        warps_n = s.bn // s.warp_n
        warps_mn = (s.bm // s.warp_m) * warps_n
        # Split reduction: warp group kq takes K slice [kq * kw, (kq + 1) * kw) of each step.
        self.kq = em.div(warp, warps_mn) if s.split_k > 1 else 0
        warp = em.rem(warp, warps_mn) if s.split_k > 1 else warp
        self.kw = s.bk // s.split_k
        kbase = em.mul(self.kq, self.kw)
        self.wm0 = em.mul(em.div(warp, warps_n), s.warp_m)
        self.wn0 = em.mul(em.rem(warp, warps_n), s.warp_n)
        self.lane = lane
        l8, q = em.rem(lane, 8), em.div(lane, 8)
        # Per-lane (outer, inner) coordinates of the ldmatrix row address, per 16x16 block.
        at, bt = self.a_tile, self.b_tile
        self.a_addr = []
        for mi in range(self.mi):
            row = []
            for kk in range(self.kw // 16):
                k16 = em.add(kbase, kk * 16)
                if self.a_k_inner:     # tile [m][k]: rows m, ldmatrix x4
                    o = em.add(em.add(self.wm0, mi * 16), em.add(l8, em.mul(em.rem(q, 2), 8)))
                    i = em.add(k16, em.mul(em.div(q, 2), 8))
                else:                  # tile [k][m]: ldmatrix x4 .trans
                    o = em.add(k16, em.add(l8, em.mul(em.div(q, 2), 8)))
                    i = em.add(em.add(self.wm0, mi * 16), em.mul(em.rem(q, 2), 8))
                row.append(em.div(em.add(a_off, at.byte_offset(em, o, i)), 2))
            self.a_addr.append(row)
        self.b_addr = []
        for nj2 in range(self.nj // 2):
            row = []
            for kk in range(self.kw // 16):
                k16 = em.add(kbase, kk * 16)
                if self.b_k_inner:     # tile [n][k]: ldmatrix x4
                    o = em.add(em.add(self.wn0, nj2 * 16), em.add(l8, em.mul(em.div(q, 2), 8)))
                    i = em.add(k16, em.mul(em.rem(q, 2), 8))
                else:                  # tile [k][n]: ldmatrix x4 .trans
                    o = em.add(k16, em.add(l8, em.mul(em.rem(q, 2), 8)))
                    i = em.add(em.add(self.wn0, nj2 * 16), em.mul(em.div(q, 2), 8))
                row.append(em.div(em.add(b_off, bt.byte_offset(em, o, i)), 2))
            self.b_addr.append(row)

    def init_acc(self) -> list[ir.Value]:
        bt = ir.VectorType.get([2, 2], self.etype)
        self._b_zero = arith.ConstantOp(bt, ir.DenseElementsAttr.get_splat(
            bt, ir.FloatAttr.get(self.etype, 0.0))).result
        vt = ir.VectorType.get([2, 2], f32())
        zero = arith.ConstantOp(vt, ir.DenseElementsAttr.get_splat(
            vt, ir.FloatAttr.get(f32(), 0.0))).result
        return [zero] * (self.mi * self.nj)

    def compute(self, accs: list[ir.Value], slot_elems: ir.Value, pending: int) -> list[ir.Value]:
        em = self.em
        a_vt = ir.VectorType.get([4, 2], self.etype)
        b4_vt = ir.VectorType.get([4, 2], self.etype)
        out = list(accs)
        for kk in range(self.kw // 16):
            afr = [nvgpu.LdMatrixOp(a_vt, self.smem,
                                    [em.c(em.add(slot_elems, self.a_addr[mi][kk]))],
                                    not self.a_k_inner, 4).result for mi in range(self.mi)]
            bfr = []
            for nj2 in range(self.nj // 2):
                b4 = nvgpu.LdMatrixOp(b4_vt, self.smem,
                                      [em.c(em.add(slot_elems, self.b_addr[nj2][kk]))],
                                      not self.b_k_inner, 4).result
                for half in range(2):
                    frag = self._b_zero
                    for r in range(2):
                        frag = vector.insert(vector.extract(b4, [], [2 * half + r]), frag, [], [r])
                    bfr.append(frag)
            for mi in range(self.mi):
                for nj in range(self.nj):
                    idx = mi * self.nj + nj
                    out[idx] = nvgpu.MmaSyncOp(out[idx].type, afr[mi], bfr[nj], out[idx],
                                               ir.ArrayAttr.get([ir.IntegerAttr.get(i64(), x)
                                                                 for x in (16, 8, 16)])).result
        return out

    def finish(self) -> None:
        pass

    def epilogue(self, accs, tid, m_origin: Ix, n_origin: Ix, writer: EpilogueWriter) -> None:
        em = self.em
        lane = self.lane
        r0 = em.add(em.add(m_origin, self.wm0), em.div(lane, 4))
        c0 = em.add(em.add(n_origin, self.wn0), em.mul(em.rem(lane, 4), 2))
        for mi in range(self.mi):
            for nj in range(self.nj):
                acc = accs[mi * self.nj + nj]
                for h in range(2):
                    pair = vector.extract(acc, [], [h])
                    vals = [vector.extract(pair, [], [e]) for e in range(2)]
                    writer.store_frag(r0, c0, mi * 16 + h * 8, nj * 8, vals)


# ---------------------------------------------------------------------------------------------
# The kernel body
# ---------------------------------------------------------------------------------------------

def smem_plan(prob: GemmProblem, s: TCSchedule):
    """Tiles, per-stage bytes and the total dynamic shared memory of a schedule."""
    a_tile, a_k_inner = tile_for(prob.a, s.bk, s.bm, k_is_row=False)
    b_tile, b_k_inner = tile_for(prob.b, s.bk, s.bn, k_is_row=True)
    stage = a_tile.bytes + b_tile.bytes
    table = 0
    if uses_gather(prob):
        table = prob.k * 4
    total = max(s.stages * stage + ((table + 1023) // 1024) * 1024,
                s.split_k * stage_bytes(s.bm, s.bn))
    if s.engine == "wgmma":
        total += 1024        # room to align the base to a swizzle atom at run time
    return a_tile, a_k_inner, b_tile, b_k_inner, stage, table, total


def no_unroll(loop) -> None:
    """Keep a loop rolled down to PTX (``.pragma "nounroll"``): ptxas spends seconds unrolling
    small wgmma loops (measured: 4.4 s against 0.04 s for a 64x32 tile), for no gain."""
    loop.operation.attributes["loop_annotation"] = ir.Attribute.parse(
        "#llvm.loop_annotation<unroll = #llvm.loop_unroll<disable = true>>")


def uses_gather(prob: GemmProblem) -> bool:
    """Whether B is an implicit-GEMM input that cp.async cannot copy (no aligned runs)."""
    return prob.b.kind == "im2col" and (not prob.b.conv.is_pointwise or prob.b.granule < 2)


def emit_body(em: Emitter, prob: GemmProblem, s: TCSchedule, args: list[ir.Value],
              flat: dict[int, ir.Value], epilogue=StagedEpilogue) -> None:
    """The kernel body inside ``gpu.launch``: blocks on (n tiles, m tiles, batch).

    ``epilogue`` is the writer class that receives the parked accumulators (a
    :class:`StagedEpilogue`; Welder's fused row programs pass their own)."""
    a_tile, a_k_inner, b_tile, b_k_inner, stage, table_bytes, _ = smem_plan(prob, s)
    gather = uses_gather(prob)
    tid = em.thread_id()
    bx, by, bz = em.block_id("x"), em.block_id("y"), em.block_id("z")
    m0, n0 = em.mul(by, s.bm), em.mul(bx, s.bn)
    batch = bz if prob.batch > 1 else 0
    kt_total = -(-prob.k // s.bk)

    n16 = s.stages * stage // 2 + table_bytes // 2 + 8
    base_shift: Ix = 0
    if s.engine == "wgmma":
        # wgmma swizzles by absolute shared address: start the tiles on a 1024-byte boundary
        raw = em.smem_address(em.smem(0, n16, prob.in_dtype))
        pad = arith.andi(arith.subi(em.ci64(1024), arith.andi(raw, em.ci64(1023))), em.ci64(1023))
        base_shift = arith.index_cast(index(), pad)
    smem16 = em.smem(base_shift, n16, prob.in_dtype)
    table_off = em.add(base_shift, s.stages * stage)
    a_off, b_off = 0, a_tile.bytes

    a_load = AsyncLoader(em, prob.a, a_tile, a_k_inner, False, m0, prob.m, prob.k, s.bk,
                         s.threads, batch, flat[prob.a.arg], smem16, a_off,
                         min(prob.a.granule, a_tile.inner))
    a_load.prepare(tid)
    if gather:
        # The K parts of the input offsets, once per block.
        table = memref.view(ir.MemRefType.get([prob.k], ir.IntegerType.get_signless(32),
                                              memory_space=ir.Attribute.parse(
                                                  "#gpu.address_space<workgroup>")),
                            em._smem_base, em.c(table_off), [])
        loop = scf.ForOp(em.c(tid), em.c(prob.k), em.c(s.threads))
        with ir.InsertionPoint(loop.body):
            kk = loop.induction_variable
            memref.store(arith.index_cast(ir.IntegerType.get_signless(32),
                                          em.c(prob.b.row_part(em, kk))), table, [kk])
            scf.YieldOp([])
        em.barrier()
        b_load = GatherLoader(em, prob.b, b_tile, b_k_inner, True, n0, prob.n, prob.k, s.bk,
                              s.threads, batch, flat[prob.b.arg], smem16, b_off, 1)
        b_load.prepare(tid, table)
    else:
        b_load = AsyncLoader(em, prob.b, b_tile, b_k_inner, True, n0, prob.n, prob.k, s.bk,
                             s.threads, batch, flat[prob.b.arg], smem16, b_off,
                             min(prob.b.granule, b_tile.inner))
        b_load.prepare(tid)

    if s.engine == "wgmma":
        eng = WgmmaEngine(em, s, a_tile, a_k_inner, b_tile, b_k_inner, prob.in_dtype)
        eng.prepare(tid, em.smem_address(smem16), a_off, b_off)
    else:
        eng = MmaSyncEngine(em, s, a_tile, a_k_inner, b_tile, b_k_inner, prob.in_dtype)
        eng.prepare(tid, smem16, a_off, b_off)

    wgmma = s.engine == "wgmma"
    if gather:
        stages, dist, pending = 2, 1, 0
    elif wgmma:
        stages, dist, pending = s.stages, max(1, s.stages - 2), (1 if s.stages >= 3 else 0)
    else:
        stages, dist, pending = s.stages, s.stages - 1, 0

    def slot_bytes(kt: Ix) -> Ix:
        return em.mul(em.rem(kt, stages), stage)

    def issue_async(kt: Ix) -> None:
        slot = em.div(slot_bytes(kt), 2)
        a_load.issue(kt, slot)
        if not gather:
            b_load.issue(kt, slot)

    # Prologue: the first `dist` steps, one commit group each
    pro = scf.ForOp(em.c(0), em.c(dist), em.c(1))
    with ir.InsertionPoint(pro.body):
        st = pro.induction_variable
        if_op = scf.IfOp(em.lt(st, kt_total))
        with ir.InsertionPoint(if_op.then_block):
            issue_async(st)
            scf.YieldOp([])
        nvvm.CpAsyncCommitGroupOp()
        scf.YieldOp([])
    if gather:
        b_load.load(0)
        b_load.store(0)

    accs = eng.init_acc()
    loop = scf.ForOp(em.c(0), em.c(kt_total), em.c(1), accs)
    no_unroll(loop)
    with ir.InsertionPoint(loop.body):
        kt = loop.induction_variable
        cur = list(loop.inner_iter_args)
        nvvm.CpAsyncWaitGroupOp(dist - 1)
        if wgmma:
            nvvm.FenceProxyOp(nvvm.ProxyKind.async_shared, space=nvvm.SharedSpace.shared_cta)
        em.barrier()
        nxt = em.add(kt, dist)
        if_op = scf.IfOp(em.lt(nxt, kt_total))
        with ir.InsertionPoint(if_op.then_block):
            issue_async(nxt)
            scf.YieldOp([])
        nvvm.CpAsyncCommitGroupOp()
        if gather:
            # the last step reloads its own tile into the unused slot instead of branching
            b_load.load(arith.minui(nxt, em.c(kt_total - 1)))
        slot = slot_bytes(kt)
        if wgmma:
            cur = eng.compute(cur, em.to_i64(em.div(slot, 16)), pending)
        else:
            cur = eng.compute(cur, em.div(slot, 2), pending)
        if gather:
            b_load.store(slot_bytes(nxt))
        scf.YieldOp(cur)
    eng.finish()
    accs = list(loop.results)
    # Staged epilogue: drain the copy pipeline, park the accumulators in shared memory (over the
    # operand tiles), then store the block tile in coalesced chunks.
    nvvm.CpAsyncWaitGroupOp(0)
    em.barrier()
    staged = em.smem(base_shift, s.split_k * stage_bytes(s.bm, s.bn) // 4, "f32")
    split_base = em.mul(eng.kq, stage_bytes(s.bm, s.bn) // 4) if s.split_k > 1 else 0
    writer = epilogue(em, prob, args, flat, batch, staged, split_base, s.bm, s.bn, m0, n0,
                            splits=s.split_k)
    writer.mark_full(prob.m % s.bm == 0, prob.n % s.bn == 0)
    eng.epilogue(accs, tid, 0, 0, writer)
    writer.flush(tid, s.threads)
