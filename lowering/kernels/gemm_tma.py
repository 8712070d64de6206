"""Hopper GEMM with TMA loads, an mbarrier pipeline and warp-specialised warpgroups (issue 13).

Roller's rProgram for a tensor-core tile (OSDI'22, section 4) staged the way Hopper wants it:
the copy engine moves the operand tiles, the tensor cores never wait for a thread to load.

* **Loads.** Each operand tile of a reduction step arrives through ``cp.async.bulk.tensor``
  (TMA) boxes described by a *tensor map* (``CUtensorMap``): one box per 64-element run of the
  tile's contiguous dimension, written by the copy engine with the 128/64/32-byte swizzle that
  ``gemm_tc.SmemTile`` lays out and the ``wgmma`` descriptors of ``gemm_tc.WgmmaEngine`` read.
  Out-of-range rows, columns and reduction steps are zero-filled by the copy engine, so the
  edges of any M, N, K need no masks in the main loop.
* **Tensor maps.** ``cuTensorMapEncodeTiled`` is a host function and the kernel takes bare
  pointers, so the kernel takes one more pointer argument per operand (role ``tensormap``,
  a ``memref<16xi64>``: the 128-byte map) whose :class:`~quartet.lowering.kernel.TensorMapDesc`
  tells the runtime how to encode it from the operand's buffer address (manifest argument kind
  ``tensormap``, runtime/FORMAT.md). The runtime encodes when the address is bound (at load,
  and when a call binds the caller's tensor) and keeps the map in device memory; the copy
  engine reads it there, as MLIR's own ``nvgpu.tma.create.descriptor`` runtime does. Chosen
  over building the map on the device (``tensormap.replace`` needs a valid map to start from,
  i.e. the host encoder anyway) and over a ``__grid_constant__`` parameter (the upstream GPU
  lowering has no by-value kernel parameters).
* **Pipeline.** ``stages`` slots, each with a *full* mbarrier (the producer's
  ``arrive.expect_tx`` plus the copies' transaction bytes) and an *empty* mbarrier (one arrival
  per consumer warp once the wgmma reading the slot has retired, ``wgmma.wait_group 1``).
  Producer and consumers count the same sequence of reduction steps across tiles, so a slot's
  phase is ``(step / stages) & 1``.
* **Warp specialisation.** ``consumers`` warpgroups (stacked along M, each ``bm / consumers``
  rows) issue ``wgmma`` and run the epilogue; one more warpgroup is the producer, of which one
  thread issues every copy. The producer runs up to ``stages`` steps ahead, across tile
  boundaries, so the next tile's loads overlap this tile's epilogue.
* **Persistent tiles.** ``ctas`` blocks (at most one wave) walk the output tiles ``b, b + ctas,
  ...`` in grouped order (``group_m`` row tiles per column sweep, for L2 reuse of B).
* **Epilogue through shared memory.** The accumulators of each ``epi_cols``-wide column slice
  are parked in shared memory of their own (not the pipeline's slots, which the producer is
  already refilling) and written out in coalesced 16-byte chunks with the fused element-wise
  ops (``gemm_epilogue.StagedEpilogue``); the consumer warpgroups synchronise on a named
  barrier of their own (``bar.sync 1, 128 * consumers``), never with the producer.

Takes affine operands (matmul, batch_matmul, transposed or batched operands) of f16/bf16 whose
non-contiguous strides are multiples of 16 bytes (the tensor map's rule); anything else is left
to ``gemm_tc`` (:func:`refusal` says why). Assumes a schedule from :func:`schedule`.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlir import ir
from mlir.dialects import arith, llvm, nvvm, scf

from ..kernel import TensorMapDesc
from .gemm_epilogue import StagedEpilogue, stage_bytes
from .gemm_ir import Emitter, Ix, i64, index
from .gemm_problem import GemmProblem, Operand
from .gemm_tc import SmemTile, TCSchedule, WgmmaEngine, no_unroll, tile_for

#: bytes of one tensor map (CUtensorMap), as the kernel argument ``memref<16 x i64>``
TENSORMAP_WORDS = 16
#: the named barrier of the consumer warpgroups (0 is every thread's ``gpu.barrier``)
CONSUMER_BARRIER = 1
#: the mbarrier wait's suspend-time hint (ns)
WAIT_TICKS = 10_000_000
#: registers per thread after ``setmaxnreg`` with two consumer warpgroups (384 threads start
#: at 168): 2 x 128 x 232 + 128 x 40 = 64512 of the SM's 65536
CONSUMER_REGISTERS = 232
PRODUCER_REGISTERS = 40
TMA_MAX_BOX = 256
MAX_STRIDE = 2**40
MAX_DIM = 2**31


@dataclass(frozen=True)
class TmaSchedule:
    """A TMA kernel configuration."""

    bm: int
    bn: int
    bk: int
    consumers: int          # consumer warpgroups, stacked along M
    stages: int
    ctas: int               # persistent blocks (the grid)
    group_m: int            # row tiles per column sweep of the tile order
    epi_cols: int           # columns of the accumulator slice parked per epilogue round

    @property
    def threads(self) -> int:
        return 128 * (self.consumers + 1)

    def engine_schedule(self) -> TCSchedule:
        """The consumers' view: ``gemm_tc.WgmmaEngine`` on a (consumers x 1) warpgroup grid."""
        return TCSchedule("wgmma", self.bm, self.bn, self.bk, 128 * self.consumers, self.stages,
                          wg_m=self.consumers, wg_n=1)


# ---------------------------------------------------------------------------------------------
# Operands as tensor maps
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class OperandMap:
    """One operand's tensor map and the boxes that fill its tile of a reduction step.

    ``desc`` (without the source index) describes the operand in memory, contiguous dimension
    first; each box is ``(smem byte offset in the tile, inner offset)``: box ``j`` loads tile
    block ``j`` at coordinates (inner origin + inner offset, outer origin[, batch])."""

    dtype: str
    dims: tuple[int, ...]
    strides: tuple[int, ...]
    box: tuple[int, ...]
    swizzle: int
    boxes: tuple[tuple[int, int], ...]
    k_inner: bool
    batched: bool

    def desc(self, source: int) -> TensorMapDesc:
        return TensorMapDesc(source, _DTYPE_NAMES[self.dtype], self.dims, self.strides,
                             self.box, self.swizzle)


_DTYPE_NAMES = {"f16": "float16", "bf16": "bfloat16", "f32": "float32"}


def operand_map(op: Operand, tile: SmemTile, k_inner: bool, k_is_row: bool, k_total: int,
                other_total: int, batch: int) -> OperandMap | str:
    """The tensor map of an affine operand whose tile is ``tile``, or why it has none."""
    if op.kind != "affine":
        return "operand is not affine (an implicit-GEMM input)"
    if op.contiguous is None:
        return "operand has no contiguous dimension"
    esize = 2
    sb, sr, sc = op.strides
    # the operand's (inner, outer) GEMM extents and the outer stride, contiguous dim first
    k_stride, other_stride = (sr, sc) if k_is_row else (sc, sr)
    inner_extent, outer_extent = (k_total, other_total) if k_inner else (other_total, k_total)
    outer_stride = other_stride if k_inner else k_stride
    dims = [inner_extent, outer_extent]
    strides = [outer_stride * esize]
    batched = batch > 1 and sb != 0
    if batched:
        dims.append(batch)
        strides.append(sb * esize)
    for s in strides:
        if s % 16 or s <= 0 or s >= MAX_STRIDE:
            return f"a stride of {s} bytes is not a positive multiple of 16 below 2^40"
    if any(d > MAX_DIM for d in dims):
        return "a dimension exceeds 2^31 elements"
    if batched and strides[1] < strides[0]:
        return "the batch stride is smaller than the row stride"
    if tile.outer > TMA_MAX_BOX:
        return f"a box of {tile.outer} rows exceeds {TMA_MAX_BOX}"
    box = [tile.chunk, tile.outer] + ([1] if batched else [])
    boxes = tuple((j * tile.block_bytes, j * tile.chunk) for j in range(tile.inner // tile.chunk))
    return OperandMap(op.dtype, tuple(dims), tuple(strides), tuple(box), tile.row_bytes, boxes,
                      k_inner, batched)


def refusal(prob: GemmProblem) -> str | None:
    """Why this engine does not take ``prob`` (None: it does)."""
    if prob.kind != "matmul":
        return "implicit-GEMM convolutions are gathered, not copied by tensor maps"
    if prob.a.dtype != prob.b.dtype or prob.a.dtype not in ("f16", "bf16"):
        return "TMA kernels take f16 or bf16 operands"
    for name, op, k_is_row in (("A", prob.a, False), ("B", prob.b, True)):
        tile, k_inner = tile_for(op, 64, 64, k_is_row)
        other = prob.m if name == "A" else prob.n
        m = operand_map(op, tile, k_inner, k_is_row, prob.k, other, prob.batch)
        if isinstance(m, str):
            return f"operand {name}: {m}"
    return None


# ---------------------------------------------------------------------------------------------
# Shared memory
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Layout:
    """Byte offsets of everything in the (1024-aligned) dynamic shared memory."""

    a_tile: SmemTile
    a_k_inner: bool
    b_tile: SmemTile
    b_k_inner: bool
    stage: int              # bytes of one slot (A tile then B tile)
    epilogue: int           # offset of the epilogue's f32 slice
    barriers: int           # offset of the mbarriers: full[stages], then empty[stages]
    total: int              # bytes to request (with the alignment slack)


def layout(prob: GemmProblem, s: TmaSchedule) -> Layout:
    a_tile, a_k_inner = tile_for(prob.a, s.bk, s.bm, k_is_row=False)
    b_tile, b_k_inner = tile_for(prob.b, s.bk, s.bn, k_is_row=True)
    stage = a_tile.bytes + b_tile.bytes
    epilogue = s.stages * stage
    barriers = epilogue + stage_bytes(s.bm, s.epi_cols)
    total = 1024 + barriers + 16 * s.stages
    return Layout(a_tile, a_k_inner, b_tile, b_k_inner, stage, epilogue, barriers, total)


def shape_reason(prob: GemmProblem, bm: int, bn: int, bk: int) -> str | None:
    """Why a (bm, bn, bk) tile is not one this engine builds (None: it is)."""
    if bk != 64:
        return f"reduction step {bk}: TMA kernels stage 64 (one 128-byte swizzle row)"
    if bm not in (64, 128, 256):
        return f"block tile along m = {bm} must be 64, 128 or 256"
    if bn % 8 or not 8 <= bn <= 256:
        return f"block tile along n = {bn} must be a multiple of 8 up to 256"
    b_tile, b_k_inner = tile_for(prob.b, bk, bn, k_is_row=True)
    if not b_k_inner and (bn % b_tile.chunk or bn < 16):
        return f"block tile along n = {bn} is not a whole number of {b_tile.chunk}-column boxes"
    if (bm // consumers_for(bm) // 64) * bn // 2 > 128:
        return f"a {bm}x{bn} tile needs more than 128 accumulator registers per thread"
    return None


def consumers_for(bm: int) -> int:
    return 1 if bm == 64 else 2


def schedule(prob: GemmProblem, chip, bm: int, bn: int, bk: int = 64,
             stages: int | None = None, ctas: int | None = None,
             group_m: int = 8) -> TmaSchedule | str:
    """The TMA schedule of a (bm, bn) tile on ``chip``: the deepest pipeline (then the widest
    epilogue slice) that fits the block's shared memory, one persistent block per SM (or fewer when there
    are fewer tiles); a reason string when the tile does not fit."""
    reason = shape_reason(prob, bm, bn, bk)
    if reason:
        return reason
    tiles = -(-prob.m // bm) * -(-prob.n // bn) * prob.batch
    consumers = consumers_for(bm)
    depths = [stages] if stages else [6, 5, 4, 3]
    widths = [c for c in (bn, 128, 64, 32, 16) if c <= bn and bn % c == 0 and c % 8 == 0]
    for depth in depths:
        for cols in widths:
            s = TmaSchedule(bm, bn, bk, consumers, depth, 1, group_m, cols)
            total = layout(prob, s).total
            if total <= chip.smem_per_block:
                per_sm = max(1, chip.blocks_per_unit(s.threads, total, 0))
                grid = min(tiles, ctas or chip.num_units * per_sm)
                return TmaSchedule(bm, bn, bk, consumers, depth, grid, group_m, cols)
    return f"a {bm}x{bn} tile with two stages does not fit {chip.smem_per_block} bytes"


# ---------------------------------------------------------------------------------------------
# The kernel body
# ---------------------------------------------------------------------------------------------

def _ptr(space: int) -> ir.Type:
    return llvm.PointerType.get(space) if space else llvm.PointerType.get()


class _Smem:
    """Shared addresses (``!llvm.ptr<3>``) at byte offsets from the aligned base."""

    def __init__(self, em: Emitter, base: ir.Value):
        self.em, self.base = em, base

    def addr(self, off: Ix) -> ir.Value:
        em = self.em
        a = self.base if isinstance(off, int) and off == 0 else \
            arith.addi(self.base, em.to_i64(off))
        return llvm.inttoptr(_ptr(3), a)


def _tensormap_pointer(arg: ir.Value) -> ir.Value:
    """The generic address of the tensor map that the runtime placed at ``arg``."""
    from mlir.dialects import memref

    p = memref.extract_aligned_pointer_as_index(arg)
    return llvm.inttoptr(_ptr(0), arith.index_cast(i64(), p))


def _i32(em: Emitter, v: Ix) -> ir.Value:
    if isinstance(v, int):
        return em.ci32(v)
    return arith.index_cast(ir.IntegerType.get_signless(32), v)


class _Tiles:
    """Tile ``t`` of the persistent walk -> (batch, row origin, column origin)."""

    def __init__(self, em: Emitter, prob: GemmProblem, s: TmaSchedule):
        self.em, self.prob, self.s = em, prob, s
        self.mt = -(-prob.m // s.bm)
        self.nt = -(-prob.n // s.bn)
        self.count = self.mt * self.nt * prob.batch

    def coords(self, t: ir.Value) -> tuple[Ix, Ix, Ix]:
        em, s = self.em, self.s
        per_batch = self.mt * self.nt
        b = em.div(t, per_batch) if self.prob.batch > 1 else 0
        r = em.rem(t, per_batch) if self.prob.batch > 1 else t
        g = min(s.group_m, self.mt)
        per_group = g * self.nt
        first = em.mul(em.div(r, per_group), g)
        within = em.rem(r, per_group)
        if self.mt % g == 0:
            mt, nt = em.add(first, em.rem(within, g)), em.div(within, g)
        else:
            size = arith.minui(em.c(g), arith.subi(em.c(self.mt), em.c(first)))
            mt = em.add(first, arith.remui(em.c(within), size))
            nt = arith.divui(em.c(within), size)
        return b, em.mul(mt, s.bm), em.mul(nt, s.bn)


class _Barriers:
    """The pipeline's mbarriers: ``full[stages]`` then ``empty[stages]``."""

    def __init__(self, smem: _Smem, offset: int, stages: int):
        self.smem, self.offset, self.stages = smem, offset, stages

    def full(self, slot: Ix) -> ir.Value:
        return self.smem.addr(self.smem.em.add(self.offset, self.smem.em.mul(slot, 8)))

    def empty(self, slot: Ix) -> ir.Value:
        em = self.smem.em
        return self.smem.addr(em.add(self.offset + 8 * self.stages, em.mul(slot, 8)))


def _wait(em: Emitter, barrier: ir.Value, parity: ir.Value) -> None:
    nvvm.MBarrierTryWaitParityOp(barrier, parity, em.ci32(WAIT_TICKS))


def _step_slot(em: Emitter, step: ir.Value, stages: int) -> tuple[ir.Value, ir.Value]:
    """(slot, phase parity as i32) of pipeline step ``step``."""
    slot = em.rem(step, stages)
    phase = em.band(em.div(step, stages), 1)
    return slot, arith.index_cast(ir.IntegerType.get_signless(32), em.c(phase))


def _when(cond) -> scf.IfOp:
    return scf.IfOp(cond)


def emit_body(em: Emitter, prob: GemmProblem, s: TmaSchedule, args: list[ir.Value],
              flat: dict[int, ir.Value], maps: list[tuple[OperandMap, ir.Value]]) -> None:
    """The kernel body inside ``gpu.launch``; ``maps`` = [(A's map, its tensor-map argument),
    (B's map, ...)]."""
    lay = layout(prob, s)
    tid = em.thread_id()
    bid = em.block_id("x")
    tiles = _Tiles(em, prob, s)
    kt_total = -(-prob.k // s.bk)
    consumer_threads = 128 * s.consumers

    # The dynamic shared memory, its base aligned at run time to a 1024-byte swizzle atom.
    raw = em.smem_address(em.smem(0, 8, prob.in_dtype))
    pad = arith.andi(arith.subi(em.ci64(1024), arith.andi(raw, em.ci64(1023))), em.ci64(1023))
    shift = arith.index_cast(index(), pad)
    base = em.smem_address(em.smem(shift, 8, prob.in_dtype))
    smem = _Smem(em, base)
    bars = _Barriers(smem, lay.barriers, s.stages)
    descs = [_tensormap_pointer(arg) for _, arg in maps]

    # One thread initialises the barriers; everybody waits for that.
    with ir.InsertionPoint(_when(em.lt(tid, 1)).then_block):
        for slot in range(s.stages):
            nvvm.MBarrierInitOp(bars.full(slot), em.ci32(1))
            nvvm.MBarrierInitOp(bars.empty(slot), em.ci32(4 * s.consumers))
        nvvm.FenceMbarrierInitOp()
        scf.YieldOp([])
    em.barrier()

    # The roles: one branch each (setmaxnreg needs the warpgroups' roles as one if/else).
    roles = scf.IfOp(em.lt(tid, consumer_threads), has_else=True)
    with ir.InsertionPoint(roles.then_block):
        if s.consumers > 1:
            nvvm.SetMaxRegisterOp(CONSUMER_REGISTERS, nvvm.SetMaxRegisterAction.increase)
        _consumer(em, prob, s, lay, tiles, kt_total, tid, bid, shift, smem, bars, args, flat)
        scf.YieldOp([])
    with ir.InsertionPoint(roles.else_block):
        if s.consumers > 1:
            nvvm.SetMaxRegisterOp(PRODUCER_REGISTERS, nvvm.SetMaxRegisterAction.decrease)
        producer = arith.cmpi(arith.CmpIPredicate.eq, tid, em.c(consumer_threads))
        with ir.InsertionPoint(_when(producer).then_block):
            _producer(em, prob, s, lay, tiles, kt_total, bid, smem, bars, maps, descs)
            scf.YieldOp([])
        scf.YieldOp([])


def _tile_loop(em: Emitter, s: TmaSchedule, tiles: _Tiles, bid: ir.Value) -> scf.ForOp:
    loop = scf.ForOp(em.c(bid), em.c(tiles.count), em.c(s.ctas))
    no_unroll(loop)
    return loop


def _producer(em, prob, s, lay, tiles, kt_total, bid, smem, bars, maps, descs) -> None:
    """One thread: for every tile and reduction step, wait for the slot to be empty, announce
    its bytes on the full barrier and issue the copies."""
    for d in descs:
        nvvm.PrefetchOp(d, tensormap=True)
    a_map, b_map = maps[0][0], maps[1][0]
    loop = _tile_loop(em, s, tiles, bid)
    with ir.InsertionPoint(loop.body):
        t = loop.induction_variable
        b, m0, n0 = tiles.coords(t)
        first = em.mul(em.div(em.sub(t, bid), s.ctas), kt_total)
        kloop = scf.ForOp(em.c(0), em.c(kt_total), em.c(1))
        no_unroll(kloop)
        with ir.InsertionPoint(kloop.body):
            kt = kloop.induction_variable
            step = em.add(first, kt)
            slot, phase = _step_slot(em, step, s.stages)
            _wait(em, bars.empty(slot), arith.xori(phase, em.ci32(1)))
            full = bars.full(slot)
            nvvm.MBarrierArriveExpectTxOp(None, full, em.ci32(lay.stage))
            slot_off = em.mul(slot, lay.stage)
            k0 = em.mul(kt, s.bk)
            for omap, desc, tile_off, other in ((a_map, descs[0], 0, m0),
                                                      (b_map, descs[1], lay.a_tile.bytes, n0)):
                inner0, outer0 = (k0, other) if omap.k_inner else (other, k0)
                for box_off, inner_off in omap.boxes:
                    coords = [_i32(em, em.add(inner0, inner_off)), _i32(em, outer0)]
                    if omap.batched:
                        coords.append(_i32(em, b))
                    dst = smem.addr(em.add(slot_off, tile_off + box_off))
                    nvvm.CpAsyncBulkTensorGlobalToSharedClusterOp(
                        llvm.addrspacecast(_ptr(7), dst), desc, coords, full, [])
            scf.YieldOp([])
        scf.YieldOp([])


class _ConsumerEmitter:
    """``em`` whose ``barrier`` is the consumers' named barrier (the producer never joins)."""

    def __init__(self, em: Emitter, threads: int):
        self._em, self._threads = em, threads

    def __getattr__(self, name):
        return getattr(self._em, name)

    def barrier(self) -> None:
        # inline PTX with a memory clobber (a compiler barrier too): MLIR 22.1 prints
        # nvvm.barrier with a thread count in a form it cannot read back
        llvm.InlineAsmOp(None, [], f"bar.sync {CONSUMER_BARRIER}, {self._threads};",
                         "~{memory}", has_side_effects=True)


def _consumer(em, prob, s, lay, tiles, kt_total, tid, bid, shift, smem, bars, args,
              flat) -> None:
    """The consumer warpgroups: wgmma over the slots as they fill, releasing each slot once
    its wgmma has retired; then the staged epilogue of the tile."""
    eng = WgmmaEngine(em, s.engine_schedule(), lay.a_tile, lay.a_k_inner, lay.b_tile,
                      lay.b_k_inner, prob.in_dtype)
    eng.prepare(tid, smem.base, 0, lay.a_tile.bytes)
    lane_zero = arith.cmpi(arith.CmpIPredicate.eq, em.rem(tid, 32), em.c(0))
    cem = _ConsumerEmitter(em, 128 * s.consumers)
    staged = em.smem(em.add(shift, lay.epilogue), stage_bytes(s.bm, s.epi_cols) // 4, "f32")

    def release(step: Ix) -> None:
        slot = em.rem(step, s.stages)
        with ir.InsertionPoint(_when(lane_zero).then_block):
            nvvm.MBarrierArriveOp(None, bars.empty(slot))
            scf.YieldOp([])

    loop = _tile_loop(em, s, tiles, bid)
    with ir.InsertionPoint(loop.body):
        t = loop.induction_variable
        b, m0, n0 = tiles.coords(t)
        first = em.mul(em.div(em.sub(t, bid), s.ctas), kt_total)
        kloop = scf.ForOp(em.c(0), em.c(kt_total), em.c(1), eng.init_acc())
        no_unroll(kloop)
        with ir.InsertionPoint(kloop.body):
            kt = kloop.induction_variable
            step = em.add(first, kt)
            slot, phase = _step_slot(em, step, s.stages)
            _wait(em, bars.full(slot), phase)
            slot16 = em.to_i64(em.mul(slot, lay.stage // 16))
            accs = eng.compute(list(kloop.inner_iter_args), slot16, 1)
            # the wgmma of the previous step has retired: its slot may be refilled
            with ir.InsertionPoint(_when(em.lt(0, kt)).then_block):
                release(em.sub(step, 1))
                scf.YieldOp([])
            scf.YieldOp(accs)
        eng.finish()
        release(em.add(first, kt_total - 1))
        _epilogue(cem, prob, s, tid, list(kloop.results), staged, args, flat, b, m0, n0)
        scf.YieldOp([])


def _epilogue(cem, prob, s, tid, accs, staged, args, flat, batch, m0, n0) -> None:
    """Column slice by column slice: park the slice's accumulators (f32) in shared memory,
    then write it out coalesced through the fused element-wise chain."""
    tm = s.bm // s.consumers
    lane = cem.rem(tid, 32)
    warp = cem.rem(cem.div(tid, 32), 4)
    wg = cem.div(tid, 128)
    r0 = cem.add(cem.mul(wg, tm), cem.add(cem.mul(warp, 16), cem.div(lane, 4)))
    c0 = cem.mul(cem.rem(lane, 4), 2)
    for first_col in range(0, s.bn, s.epi_cols):
        writer = StagedEpilogue(cem, prob, args, flat, batch, staged, 0, s.bm, s.epi_cols, m0,
                                cem.add(n0, first_col))
        writer.mark_full(prob.m % s.bm == 0, prob.n % s.bn == 0)
        cem.barrier()          # the previous slice (or tile) has been written out
        for mi in range(tm // 64):
            for h in range(2):
                for j in range(first_col // 8, (first_col + s.epi_cols) // 8):
                    vals = [llvm.ExtractValueOp(ir.F32Type.get(), accs[mi],
                                                [j * 4 + h * 2 + e]).result for e in range(2)]
                    writer.store_frag(r0, c0, mi * 64 + h * 8, j * 8 - first_col, vals)
        writer.flush(tid, 128 * s.consumers)


def operand_maps(prob: GemmProblem, s: TmaSchedule) -> list[tuple[Operand, OperandMap]]:
    """[(A, its map), (B, its map)] for schedule ``s`` (the problem passed :func:`refusal`)."""
    lay = layout(prob, s)
    out = []
    for op, tile, k_inner, k_is_row, other in ((prob.a, lay.a_tile, lay.a_k_inner, False, prob.m),
                                               (prob.b, lay.b_tile, lay.b_k_inner, True, prob.n)):
        m = operand_map(op, tile, k_inner, k_is_row, prob.k, other, prob.batch)
        assert not isinstance(m, str), m
        out.append((op, m))
    return out
