"""Two GEMMs in a chain as one kernel (``gemm_chain``): the MLP's fc1 -> GELU -> fc2.

Welder's propagation from the second GEMM's output tile ``BM x N2`` back through its
contraction over the hidden dimension H asks for the rows ``BM x H`` of the hidden activation;
the hidden activation is the first GEMM's result with its epilogue (bias, GELU). Taking the whole
output row (``N2`` in one block) means no hidden element is computed twice; the reduction over
H is then streamed: the block computes the hidden activation one chunk of 64 columns at a time
into shared memory and accumulates the second GEMM from it before the next chunk overwrites it,
so the ``M x H`` activation never exists in global memory (its round trip is what fusion saves).
The price is that each block reads both weight matrices whole: the cost model counts those
reads (from L2) and refuses the chain where they cost more than the round trip - the usual
outcome at transformer sizes, where H is 4 x N2; a narrow MLP (or a few rows) gains.

**What the tile must hold** (``analyze``): GEMM 1 (fill, contraction reading a tile input A of
``[M, K1]`` and weights, element-wise epilogue), then GEMM 2 whose first operand is GEMM 1's
result (``[M, H]``) and whose weights are a tile input (fill, contraction, element-wise
epilogue); both weights ``[N, K]`` with K contiguous (``F.linear``), f16/bf16; K1 and H multiples
of 64, N2 a multiple of 32 up to 256 (512 with 32-row blocks).

**The kernel** (``mma.sync`` m16n8k16, four warps in a 2 x 2 grid for both GEMMs): A's rows
``BM x K1`` copied to shared memory once (``cp.async``); per hidden chunk: GEMM 1's tile
``BM x 64`` over K1 in steps of 64 with the weight tiles double-buffered, its epilogue applied
per element (``gemm_epilogue.EpilogueWriter``) and the chunk stored in f16 in the swizzled A
layout of GEMM 2; then GEMM 2's accumulators ``BM x N2`` take the chunk times its weight tile
``N2 x 64``; the accumulators finally go through GEMM 2's staged epilogue (bias, residual,
coalesced stores).
"""

from __future__ import annotations

from dataclasses import replace

from mlir import ir
from mlir.dialects import arith, func, gpu, nvgpu, nvvm, scf, vector

from quartet.dialects import TileOp, linalg_info, remap, yield_

from .common import Unsupported, kernel_func, kernel_inputs
from .fused import SHARED, REGISTERS, Choice, FusedPlan, contraction_roles, is_contraction
from .fused_prologue import _ResidentA
from .gemm_epilogue import EpilogueWriter, StagedEpilogue, stage_bytes
from .gemm_ir import Emitter, element_type, flat_view, i32, index
from .gemm_problem import analyze as gemm_analyze
from .gemm_tc import SmemTile, TCSchedule

HC = 64             # hidden columns per chunk (the second GEMM's reduction step)
BK = 64             # the first GEMM's reduction step


def _problem(tile, ops, result, internal_a: bool):
    """The GEMM problem of ``ops`` (a fill, a contraction, its epilogue) yielding ``result``,
    with argument positions those of the fused tile; ``internal_a``: the first operand is
    computed in the fused tile (``arg = -1``)."""
    with tile.operation.location, ir.InsertionPoint(tile.operation):
        scratch = TileOp([result.type])
    try:
        mapping, original = {}, {}
        ip = ir.InsertionPoint(scratch.entry)
        with tile.operation.location, ip:
            for op in ops:
                new = op.clone(ip=ip)
                remap(new, mapping)
                mapping.update(zip(op.results, new.results))
                original[new] = op
            yield_([mapping[result]])
        prob = gemm_analyze(scratch)
        if isinstance(prob, str):
            raise Unsupported(f"a GEMM of the chain: {prob}")
        fused_ins = kernel_inputs(tile)
        scratch_ins = kernel_inputs(scratch)
        where = {i: (fused_ins.index(v) if v in fused_ins else -1)
                 for i, v in enumerate(scratch_ins)}
        if (where[prob.a.arg] == -1) != internal_a or where[prob.b.arg] == -1:
            raise Unsupported("the chain's operands are not where a chain has them")
        prob.a = replace(prob.a, arg=where[prob.a.arg])
        prob.b = replace(prob.b, arg=where[prob.b.arg])
        prob.out = replace(prob.out, arg=len(fused_ins))
        for k, (op, inputs) in enumerate(prob.epilogue.generics):
            fixed = []
            for kind, what in inputs:
                if kind == "tensor":
                    if where[what[0]] == -1:
                        raise Unsupported("an epilogue reads a value computed in the tile")
                    fixed.append((kind, (where[what[0]],) + tuple(what[1:])))
                elif kind == "scalar":
                    fixed.append((kind, where[what]))
                else:
                    fixed.append((kind, what))
            prob.epilogue.generics[k] = (original[op.operation], fixed)
        if prob.epilogue.init not in ("zero", "scalar") or \
                (prob.epilogue.init == "scalar" and prob.epilogue.init_const is None):
            raise Unsupported("an accumulator that starts from a tensor or an argument")
        if prob.batch != 1 or prob.kind != "matmul" or prob.in_dtype not in ("f16", "bf16"):
            raise Unsupported("chains of 2-D f16/bf16 GEMMs only")
        if prob.b.contiguous != "row":
            raise Unsupported("weights must be [N, K] with K contiguous (F.linear)")
        return prob
    finally:
        scratch.operation.erase()


def analyze(tile, chip) -> FusedPlan:
    ops = tile.computation
    cons = [o for o in ops if linalg_info.is_linalg(o) and is_contraction(o)]
    if len(cons) != 2:
        raise Unsupported(f"{len(cons)} contractions, a chain has 2")
    c1, c2 = cons
    p2 = ops.index(c2)
    start2 = p2 - 1 if p2 and ops[p2 - 1].name == "linalg.fill" and \
        ops[p2 - 1].results[0] == c2.operands[2] else p2
    first, second = ops[:start2], ops[start2:]
    h = first[-1].results[0] if first else None
    if h is None or c2.operands[0] != h:
        raise Unsupported("the second GEMM does not read the first one's result")
    inside_first = {r for o in first for r in o.results}
    for o in second:
        for v in o.operands:
            if v in inside_first and v != h:
                raise Unsupported("the second GEMM reads the first one's inner values")
    if any(not linalg_info.is_linalg(o) for o in first + second):
        raise Unsupported("views or other ops between the GEMMs")
    prob1 = _problem(tile, first, h, internal_a=False)
    prob2 = _problem(tile, second, tile.terminator.operands[0], internal_a=True)
    if prob2.k != prob1.n or prob2.m != prob1.m or prob1.out.dtype != prob2.in_dtype:
        raise Unsupported("the GEMMs of the chain do not match")
    if prob1.k % BK or prob1.n % HC:
        raise Unsupported(f"K1 = {prob1.k} and H = {prob1.n} must be multiples of {BK}")
    if prob1.a.strides[1:] != (prob1.k, 1) or prob1.b.strides[1:] != (1, prob1.k) or \
            prob2.b.strides[1:] != (1, prob2.k):
        raise Unsupported("the chain reads a row-major input and [N, K] weights")
    roles = contraction_roles(c2)
    levels = {o: REGISTERS for o in ops if linalg_info.is_linalg(o)}
    levels[first[-1]] = SHARED
    choices = _choices(prob1, prob2, roles, chip)
    if not choices:
        raise Unsupported(f"no block holds the {prob2.n} output columns of the second GEMM")
    return FusedPlan("gemm_chain", c2, levels, choices, (prob1, prob2))


def smem_plan(prob1, prob2, bm: int):
    x = SmemTile(bm, prob1.k, 2, 64)
    w1 = SmemTile(HC, BK, 2, 64)
    hid = SmemTile(bm, HC, 2, 64)
    w2 = SmemTile(prob2.n, HC, 2, 64)
    offsets = {"x": 0, "w1": x.bytes, "h": x.bytes + 2 * w1.bytes}
    offsets["w2"] = offsets["h"] + hid.bytes
    total = max(offsets["w2"] + w2.bytes, stage_bytes(bm, prob2.n))
    return x, w1, hid, w2, offsets, total


def _choices(prob1, prob2, roles, chip) -> list[Choice]:
    out = []
    for bm in (64, 32):
        n2 = prob2.n
        if n2 % 32 or (bm // 32) * (n2 // 16) * 4 > 128:
            continue
        *_, total = smem_plan(prob1, prob2, bm)
        if total > chip.smem_per_block:
            continue
        tile = [0] * len(roles.ranges)
        tile[roles.m], tile[roles.n], tile[roles.k] = bm, n2, prob2.k
        regs = (bm // 32) * (n2 // 16) * 4 + (bm // 32) * 4 * 4 + 64
        out.append(Choice(tuple(tile), 128, total, min(255, regs), "mma", {"bm": bm}))
    return out


# ---------------------------------------------------------------------------------------------
# The kernel


class TileLoader:
    """``cp.async`` copies of a ``rows x cols`` window of a row-major matrix (``cols`` a
    multiple of 8) into a swizzled :class:`SmemTile`, zero-filling past its edges."""

    def __init__(self, em, flat, rows_total: int, cols_total: int, tile: SmemTile, tid,
                 threads: int, smem):
        self.em, self.flat, self.tile, self.smem = em, flat, tile, smem
        self.rows_total, self.cols_total = rows_total, cols_total
        per_row = tile.inner // 8
        total = tile.outer * per_row
        self.items = []
        for j in range(-(-total // threads)):
            q = em.add(tid, j * threads)
            active = True if (j + 1) * threads <= total else em.lt(q, total)
            r, c = em.div(q, per_row), em.mul(em.rem(q, per_row), 8)
            self.items.append((r, c, em.div(tile.byte_offset(em, r, c), 2), active))

    def issue(self, row0, col0, base_elems) -> None:
        em = self.em
        size = ir.IntegerAttr.get(index(), 8)
        for r, c, dst, active in self.items:
            def copy(r=r, c=c, dst=dst):
                row, col = em.add(row0, r), em.add(col0, c)
                ok = em.land(em.lt(row, self.rows_total), em.lt(col, self.cols_total))
                src = em.select(ok, em.add(em.mul(row, self.cols_total), col), 0)
                count = em.select(ok, 8, 0)
                nvgpu.DeviceAsyncCopyOp(self.smem, [em.c(em.add(base_elems, dst))], self.flat,
                                        [em.c(src)], size, srcElements=em.c(count),
                                        bypassL1=True)
            if active is True:
                copy()
            else:
                guard = scf.IfOp(active)
                with ir.InsertionPoint(guard.then_block):
                    copy()
                    scf.YieldOp([])


class _ToHidden(EpilogueWriter):
    """GEMM 1's epilogue per element into the hidden chunk in shared memory (f16 pairs)."""

    def __init__(self, em, prob, args, flat, smem, hid: SmemTile, h_off: int, m0, c0):
        super().__init__(em, prob, args, flat, 0)
        self.smem, self.hid, self.h_off, self.m0, self.c0 = smem, hid, h_off, m0, c0

    def store_frag(self, r0, c0, dr: int, dc: int, values) -> None:
        em = self.em
        r, c = em.add(r0, dr), em.add(c0, dc)
        grow, gcol = em.add(self.m0, r), em.add(self.c0, c)
        outs = [self._finish(v, None, grow, em.add(gcol, e)) for e, v in enumerate(values)]
        vt = ir.VectorType.get([len(outs)], element_type(self.prob.out.dtype))
        idx = em.div(em.add(self.h_off, self.hid.byte_offset(em, r, c)), 2)
        vector.store(vector.from_elements(vt, outs), self.smem, [em.c(idx)])


def build(tile, chip, plan: FusedPlan, params: dict, name: str) -> ir.Module:
    prob1, prob2 = plan.problem
    bm = int(params["bm"])
    x, w1, hid, w2, off, total = smem_plan(prob1, prob2, bm)
    if total > chip.smem_per_block:
        raise Unsupported(f"{total} bytes of shared memory, at most {chip.smem_per_block}")
    module = ir.Module.create()
    fn, ins, outs = kernel_func(module, name, tile)
    fn.attributes["quartet.chip"] = ir.StringAttr.get(chip.isa)
    grid = (-(-prob2.m // bm), 1, 1)
    with ir.InsertionPoint(fn.entry_block):
        smem_c = arith.ConstantOp(i32(), total).result
        launch = gpu.LaunchOp(grid, (128, 1, 1), dynamic_shared_memory_size=smem_c)
        func.ReturnOp([])
    body = launch.regions[0].blocks[0]
    args = list(fn.entry_block.arguments)
    with ir.InsertionPoint(body):
        em = Emitter(body)
        flat = {i: flat_view(a) for i, a in enumerate(args) if ir.MemRefType(a.type).rank}
        _emit(em, prob1, prob2, bm, x, w1, hid, w2, off, args, flat)
        gpu.TerminatorOp()
    return module


def _emit(em, prob1, prob2, bm, x, w1, hid, w2, off, args, flat) -> None:
    tid = em.thread_id()
    m0 = em.mul(em.block_id("x"), bm)
    smem = em.smem(0, (off["w2"] + w2.bytes) // 2, prob1.in_dtype)
    s1 = TCSchedule("mma", bm, HC, BK, 128, 2, warp_m=bm // 2, warp_n=HC // 2)
    s2 = TCSchedule("mma", bm, prob2.n, HC, 128, 1, warp_m=bm // 2, warp_n=prob2.n // 2)
    eng1 = _ResidentA(em, s1, SmemTile(bm, 64, 2, 64), True, w1, True, prob1.in_dtype)
    eng1.prepare(tid, smem, 0, off["w1"])
    eng2 = _ResidentA(em, s2, SmemTile(bm, 64, 2, 64), True, w2, True, prob2.in_dtype)
    eng2.prepare(tid, smem, off["h"], off["w2"])
    load_x = TileLoader(em, flat[prob1.a.arg], prob1.m, prob1.k, x, tid, 128, smem)
    load_w1 = TileLoader(em, flat[prob1.b.arg], prob1.n, prob1.k, w1, tid, 128, smem)
    load_w2 = TileLoader(em, flat[prob2.b.arg], prob2.n, prob2.k, w2, tid, 128, smem)
    steps = prob1.k // BK
    load_x.issue(m0, 0, off["x"] // 2)
    nvvm.CpAsyncCommitGroupOp()
    acc2 = eng2.init_acc()
    chunks = scf.ForOp(em.c(0), em.c(prob1.n // HC), em.c(1), acc2)
    with ir.InsertionPoint(chunks.body):
        ch = chunks.induction_variable
        acc2 = list(chunks.inner_iter_args)
        c0 = em.mul(ch, HC)
        load_w1.issue(c0, 0, off["w1"] // 2)
        nvvm.CpAsyncCommitGroupOp()
        kloop = scf.ForOp(em.c(0), em.c(steps), em.c(1), eng1.init_acc())
        with ir.InsertionPoint(kloop.body):
            kt = kloop.induction_variable
            acc1 = list(kloop.inner_iter_args)
            nvvm.CpAsyncWaitGroupOp(0)
            em.barrier()        # this step's weights (and A) landed; the other slot is free
            nxt = em.add(kt, 1)
            pre = scf.IfOp(em.lt(nxt, steps))
            with ir.InsertionPoint(pre.then_block):
                load_w1.issue(c0, em.mul(nxt, BK),
                              em.add(off["w1"] // 2, em.mul(em.rem(nxt, 2), w1.bytes // 2)))
                scf.YieldOp([])
            nvvm.CpAsyncCommitGroupOp()
            acc1 = eng1.compute2(acc1, em.mul(kt, (bm * 128) // 2),
                                 em.mul(em.rem(kt, 2), w1.bytes // 2))
            scf.YieldOp(acc1)
        acc1 = list(kloop.results)
        # The hidden chunk: GEMM 1's epilogue into shared memory; this chunk's W2 tile.
        em.barrier()            # every warp is done with the previous chunk's hidden tile
        writer = _ToHidden(em, prob1, args, flat, smem, hid, off["h"], m0, c0)
        eng1.epilogue(acc1, tid, 0, 0, writer)
        load_w2.issue(0, c0, off["w2"] // 2)
        nvvm.CpAsyncCommitGroupOp()
        nvvm.CpAsyncWaitGroupOp(0)
        em.barrier()
        acc2 = eng2.compute2(acc2, 0, 0)
        em.barrier()            # the W2 tile and the W1 slots are reused by the next chunk
        scf.YieldOp(acc2)
    acc2 = list(chunks.results)
    nvvm.CpAsyncWaitGroupOp(0)
    em.barrier()
    staged = em.smem(0, stage_bytes(bm, prob2.n) // 4, "f32")
    out = StagedEpilogue(em, prob2, args, flat, 0, staged, 0, bm, prob2.n, m0, 0)
    out.mark_full(prob2.m % bm == 0, True)
    eng2.epilogue(acc2, tid, 0, 0, out)
    out.flush(tid, 128)
