"""A row program in front of a GEMM, as one kernel (``rows_gemm``): LayerNorm -> Linear.

In a pre-norm transformer block (ViT, GPT-2) each linear layer reads a layer norm of its input.
Welder's propagation from the GEMM's output tile ``BM x BN`` back through the contraction asks
for the rows ``BM x K`` of its first operand whole (K is the contraction's reduction loop), and
back through the layer norm (a row reduction over the same K) for the same rows of its input:
the block computes the normalized rows into shared memory (level 1), then its GEMM tile reads
them from there; they never go through global memory. The rows are recomputed by each of the
``N / BN`` column blocks of a row tile: the cost model (``passes/welder/cost.py``) counts that
work and the extra reads, and refuses the group where they cost more than the round trip.

**What the tile must hold** (``analyze``): ops that ``rows.analyze_rows`` takes as a row program
(element-wise ops, row reductions over the last loop, casts) whose result is the first operand of
the one contraction (``[M, K]``, K contiguous, f16/bf16), the contraction's fill, and element-wise
epilogue ops after it (``gemm_problem.analyze``: bias, activation, cast); the second operand is a
tile input. K is a multiple of 64 and the ``BM x K`` rows fit in shared memory.

**The kernel** (``mma.sync`` m16n8k16, four warps of ``BM/2 x BN/2``): each warp runs the row
program on rows of the block in turn (``rows.py``'s emitter: a lane holds ``K / 32`` elements of
a row, reductions by ``shfl.xor``) and stores the result in the swizzled layout of the GEMM's A
tiles (64-column blocks, ``gemm_tc.SmemTile``), all K of it; after a barrier the GEMM walks K in
steps of 64 with the B tiles double-buffered by ``cp.async`` (``gemm_tc.AsyncLoader``) and the A
fragments read by ``ldmatrix`` from the resident rows; the accumulators go through the GEMM's
staged epilogue (``gemm_epilogue.StagedEpilogue``: bias, activation, coalesced stores).
"""

from __future__ import annotations

from dataclasses import replace

from mlir import ir
from mlir.dialects import arith, func, gpu, nvgpu, nvvm, scf, vector

from quartet.dialects import TileOp, linalg_info, remap, yield_

from . import rows
from .common import Unsupported, kernel_func, kernel_inputs
from .fused import SHARED, REGISTERS, Choice, FusedPlan, contraction_roles, is_contraction
from .fused_rows import _Part
from .gemm_epilogue import StagedEpilogue, stage_bytes
from .gemm_ir import Emitter, flat_view, i32, i64
from .gemm_problem import analyze as gemm_analyze
from .gemm_tc import AsyncLoader, MmaSyncEngine, SmemTile, TCSchedule, tile_for

BK = 64             # the reduction step: one 64-column block of the resident rows
STAGES = 2


def _gemm_of(tile, ops_from_fill):
    """The GEMM problem of the tile's ops from the contraction's fill on (a scratch tile); the
    first operand, computed inside the fused tile, has no kernel argument (``arg = -1``)."""
    with tile.operation.location, ir.InsertionPoint(tile.operation):
        scratch = TileOp([tile.terminator.operands[0].type])
    try:
        mapping, original = {}, {}
        ip = ir.InsertionPoint(scratch.entry)
        with tile.operation.location, ip:
            for op in ops_from_fill:
                new = op.clone(ip=ip)
                remap(new, mapping)
                mapping.update(zip(op.results, new.results))
                original[new] = op
            result = mapping.get(tile.terminator.operands[0])
            if result is None:      # the tile's result is not computed from the GEMM's fill on
                raise Unsupported("the tile's result is not the contraction's epilogue")
            yield_([result])
        prob = gemm_analyze(scratch)
        if isinstance(prob, str):
            raise Unsupported(f"the GEMM: {prob}")
        fused_ins = kernel_inputs(tile)
        scratch_ins = kernel_inputs(scratch)
        where = {i: (fused_ins.index(v) if v in fused_ins else -1)
                 for i, v in enumerate(scratch_ins)}
        if where[prob.a.arg] != -1 or where[prob.b.arg] == -1:
            raise Unsupported("the GEMM's first operand must be the row program's result and "
                              "its second a tile input")
        prob.a = replace(prob.a, arg=-1)
        prob.b = replace(prob.b, arg=where[prob.b.arg])
        prob.out = replace(prob.out, arg=len(fused_ins))
        for k, (op, inputs) in enumerate(prob.epilogue.generics):
            fixed = []
            for kind, what in inputs:
                if kind == "tensor":
                    pos, dims, shape = what
                    if where[pos] == -1:
                        raise Unsupported("an epilogue reads a value computed in the tile")
                    fixed.append((kind, (where[pos], dims, shape)))
                elif kind == "scalar":
                    fixed.append((kind, where[what]))
                else:
                    fixed.append((kind, what))
            # the scratch tile goes: the epilogue ops are the fused tile's own
            prob.epilogue.generics[k] = (original[op.operation], fixed)
        if prob.epilogue.init not in ("zero", "scalar") or \
                (prob.epilogue.init == "scalar" and prob.epilogue.init_const is None):
            raise Unsupported("an accumulator that starts from a tensor or an argument")
        return prob
    finally:
        scratch.operation.erase()


def analyze(tile, chip) -> FusedPlan:
    ops = tile.computation
    cons = [o for o in ops if linalg_info.is_linalg(o) and is_contraction(o)]
    if len(cons) != 1:
        raise Unsupported(f"{len(cons)} contractions, a row program and a GEMM have 1")
    con = cons[0]
    pos = ops.index(con)
    a_val = con.operands[0]
    fill = ops[pos - 1] if pos and ops[pos - 1].name == "linalg.fill" and \
        ops[pos - 1].results[0] == con.operands[2] else None
    start = pos - 1 if fill is not None else pos
    row_ops = [o for o in ops[:start]]
    if not row_ops or not any(a_val == r for o in row_ops for r in o.results):
        raise Unsupported("the GEMM's first operand is not computed by ops in front of it")
    part = _Part(tile, row_ops, [a_val])
    try:
        prog = rows.analyze_rows(part)
    except Unsupported as e:
        raise Unsupported(f"the ops in front of the GEMM are not a row program: {e}") from None
    inside_rows = {r for o in row_ops for r in o.results}
    for o in ops[pos:]:
        for v in o.operands:
            if v in inside_rows and v != a_val:
                raise Unsupported("the GEMM or its epilogue reads the row program's inner values")
    prob = _gemm_of(tile, ops[start:])
    if prob.batch != 1 or prob.kind != "matmul" or tuple(prog.space) != (prob.m, prob.k):
        raise Unsupported(f"the row program runs over {tuple(prog.space)}, the GEMM reads "
                          f"[{prob.m}, {prob.k}]")
    if prob.a.contiguous != "col" or prob.in_dtype not in ("f16", "bf16"):
        raise Unsupported("the row program's result must be the GEMM's row-major f16/bf16 A")
    if str(ir.ShapedType(a_val.type).element_type) != prob.in_dtype:
        raise Unsupported("the row program's result and the weights differ in type")
    if prob.k % BK:
        raise Unsupported(f"K = {prob.k} is not a multiple of {BK}")
    roles = contraction_roles(con)
    levels = {o: REGISTERS for o in ops if linalg_info.is_linalg(o)}
    a_op = next(o for o in row_ops if a_val in list(o.results))
    levels[a_op] = SHARED
    choices = _choices(prob, roles, chip)
    if not choices:
        raise Unsupported(f"rows of {prob.k} elements do not fit shared memory with a GEMM tile")
    return FusedPlan("rows_gemm", con, levels, choices, (prob, prog, part))


def _schedule(prob, bm: int, bn: int) -> TCSchedule:
    return TCSchedule("mma", bm, bn, BK, 128, STAGES, warp_m=bm // 2, warp_n=bn // 2)


def smem_plan(prob, bm: int, bn: int):
    """(A tile, B tile, B k-inner, A bytes, B stage bytes, total bytes)."""
    a_tile = SmemTile(bm, prob.k, 2, 64)
    b_tile, b_k_inner = tile_for(prob.b, BK, bn, k_is_row=True)
    total = max(a_tile.bytes + STAGES * b_tile.bytes, stage_bytes(bm, bn))
    return a_tile, b_tile, b_k_inner, a_tile.bytes, b_tile.bytes, total


def _choices(prob, roles, chip) -> list[Choice]:
    out = []
    for bm, bn in ((64, 128), (64, 64), (32, 64), (32, 128)):
        if bn > 64 and prob.n <= 64:
            continue
        *_, total = smem_plan(prob, bm, bn)
        if total > chip.smem_per_block or prob.b.contiguous is None or prob.b.granule < 2:
            continue
        tile = [0] * len(roles.ranges)
        tile[roles.m], tile[roles.n], tile[roles.k] = bm, bn, prob.k
        regs = (bm // 32) * (bn // 16) * 4 + 64
        out.append(Choice(tuple(tile), 128, total, min(255, regs), "mma", {"bm": bm, "bn": bn}))
    return out


# ---------------------------------------------------------------------------------------------
# The kernel


class _ToShared(rows._RowEmitter):
    """The row emitter storing its result into the resident A tile (shared memory)."""

    def setup_row(self, em: Emitter, r_local, r, lane) -> None:
        self.em_, self.r_local = em, r_local
        self.setup_fused_row(em.c, r, lane)

    def store(self) -> None:
        from .common import _guarded
        em = self.em_
        got = self.env[self.p.tile.terminator.operands[0]]
        for c, chunk in enumerate(got.chunks):
            byte = self.a_tile.byte_offset(em, self.r_local, self.j[c])
            idx = em.c(em.div(byte, 2))
            _guarded(self.chunk_valid[c],
                     lambda chunk=chunk, idx=idx: vector.store(chunk, self.smem_a, [idx]))


class _ResidentA(MmaSyncEngine):
    """``mma.sync`` with A read from the resident rows (one 64-column block per step) and B
    from the step's pipeline slot."""

    def compute2(self, accs, a_elems, b_elems):
        em = self.em
        a_vt = ir.VectorType.get([4, 2], self.etype)
        out = list(accs)
        for kk in range(self.kw // 16):
            afr = [nvgpu.LdMatrixOp(a_vt, self.smem,
                                    [em.c(em.add(a_elems, self.a_addr[mi][kk]))],
                                    not self.a_k_inner, 4).result for mi in range(self.mi)]
            bfr = []
            for nj2 in range(self.nj // 2):
                b4 = nvgpu.LdMatrixOp(a_vt, self.smem,
                                      [em.c(em.add(b_elems, self.b_addr[nj2][kk]))],
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


def build(tile, chip, plan: FusedPlan, params: dict, name: str) -> ir.Module:
    prob, prog, part = plan.problem
    bm, bn = int(params["bm"]), int(params["bn"])
    a_tile, b_tile, b_k_inner, a_bytes, b_bytes, total = smem_plan(prob, bm, bn)
    if total > chip.smem_per_block:
        raise Unsupported(f"{total} bytes of shared memory, at most {chip.smem_per_block}")
    s = _schedule(prob, bm, bn)
    threads = s.threads
    V = prog.vector
    chunks = -(-prog.inner // (V * 32))
    if chunks > 64:
        raise Unsupported(f"rows of {prog.inner} elements do not fit a warp's registers")
    cfg = rows._RowConfig("row", threads, 32, threads // 32, chunks, 1)
    grid = (-(-prob.n // bn), -(-prob.m // bm), 1)
    module = ir.Module.create()
    fn, ins, outs = kernel_func(module, name, tile)
    fn.attributes["quartet.chip"] = ir.StringAttr.get(chip.isa)
    with ir.InsertionPoint(fn.entry_block):
        smem_c = arith.ConstantOp(i32(), total).result
        launch = gpu.LaunchOp(grid, (threads, 1, 1), dynamic_shared_memory_size=smem_c)
        func.ReturnOp([])
    body = launch.regions[0].blocks[0]
    in_map = dict(zip(kernel_inputs(tile), ins))
    args = list(fn.entry_block.arguments)
    with ir.InsertionPoint(body):
        em = Emitter(body)
        flat = {i: flat_view(a) for i, a in enumerate(args)
                if ir.MemRefType(a.type).rank}
        _emit(em, prob, prog, cfg, s, a_tile, b_tile, b_k_inner, a_bytes, b_bytes, in_map,
              outs, args, flat, chip)
        gpu.TerminatorOp()
    return module


def _emit(em, prob, prog, cfg, s, a_tile, b_tile, b_k_inner, a_bytes, b_bytes, in_map, outs,
          args, flat, chip) -> None:
    tid = em.thread_id()
    bx, by = em.block_id("x"), em.block_id("y")
    m0, n0 = em.mul(by, s.bm), em.mul(bx, s.bn)
    warp, lane = em.div(tid, 32), em.rem(tid, 32)
    smem = em.smem(0, (a_bytes + STAGES * b_bytes) // 2, prob.in_dtype)
    # Phase 1: the row program into the resident A rows.
    emitter = _ToShared(prog, cfg, in_map, outs, [], chip.warp_size)
    emitter.a_tile, emitter.smem_a = a_tile, smem
    loop = scf.ForOp(em.c(warp), em.c(s.bm), em.c(cfg.threads // 32))
    with ir.InsertionPoint(loop.body):
        r_local = loop.induction_variable
        r = em.add(m0, r_local)
        guard = scf.IfOp(em.lt(r, prob.m)) if prob.m % s.bm else None
        ip = ir.InsertionPoint(guard.then_block) if guard else None
        if ip:
            ip.__enter__()
        emitter.setup_row(em, r_local, r, lane)
        emitter.run()
        if ip:
            scf.YieldOp([])
            ip.__exit__(None, None, None)
        scf.YieldOp([])
    # Phase 2: the GEMM over the resident rows, B double-buffered.
    b_load = AsyncLoader(em, prob.b, b_tile, b_k_inner, True, n0, prob.n, prob.k, BK, s.threads,
                         0, flat[prob.b.arg], smem, a_bytes, min(prob.b.granule, b_tile.inner))
    b_load.prepare(tid)
    a_block = SmemTile(s.bm, 64, 2, 64)
    eng = _ResidentA(em, s, a_block, True, b_tile, b_k_inner, prob.in_dtype)
    eng.prepare(tid, smem, 0, a_bytes)
    steps = prob.k // BK
    b_load.issue(0, 0)
    nvvm.CpAsyncCommitGroupOp()
    accs = eng.init_acc()
    kloop = scf.ForOp(em.c(0), em.c(steps), em.c(1), accs)
    with ir.InsertionPoint(kloop.body):
        kt = kloop.induction_variable
        cur = list(kloop.inner_iter_args)
        nvvm.CpAsyncWaitGroupOp(0)
        em.barrier()           # the step's B tile has landed; the other slot is free
        nxt = em.add(kt, 1)
        pre = scf.IfOp(em.lt(nxt, steps))
        with ir.InsertionPoint(pre.then_block):
            b_load.issue(nxt, em.mul(em.rem(nxt, STAGES), b_bytes // 2))
            scf.YieldOp([])
        nvvm.CpAsyncCommitGroupOp()
        a_elems = em.mul(kt, a_block.bytes // 2)
        b_elems = em.mul(em.rem(kt, STAGES), b_bytes // 2)
        cur = eng.compute2(cur, a_elems, b_elems)
        scf.YieldOp(cur)
    accs = list(kloop.results)
    nvvm.CpAsyncWaitGroupOp(0)
    em.barrier()
    staged = em.smem(0, stage_bytes(s.bm, s.bn) // 4, "f32")
    writer = StagedEpilogue(em, prob, args, flat, 0, staged, 0, s.bm, s.bn, m0, n0)
    writer.mark_full(prob.m % s.bm == 0, prob.n % s.bn == 0)
    eng.epilogue(accs, tid, 0, 0, writer)
    writer.flush(tid, s.threads)
