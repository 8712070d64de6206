"""A GEMM whose rows go on into a row program, as one kernel (``gemm_rows``).

After a linear layer come the bias, the residual add and a layer norm (BERT's "add & norm"):
element-wise ops and reductions over each output row. The row reduction consumer forces whole
rows into the tile (Welder, section 3.1): one block computes ``BM`` complete rows of the GEMM
(``BN`` = N), so the row program can run on them without their going through global memory.

**What the tile must hold** (``analyze``): one contraction (``gemm_problem.analyze`` takes it
with its accumulator's fill), then ops that ``rows.analyze_rows`` takes as a row program over
the GEMM's ``[M, N]`` result with at least one reduction over the rows (element-wise ops reading
other tensors - bias, residual, gamma, beta - row reductions, row-space ops, casts). Nothing
after the contraction may read a value computed before it.

**The kernel**: the tensor-core GEMM main loop of ``gemm_tc.emit_body`` (wgmma with 64-row
blocks and one warpgroup per 256 columns, or mma.sync with 16- or 32-row blocks) parks the f32
accumulators of the block's rows in shared memory (its staged epilogue); then each warp takes
rows in turn and runs the row program on them with ``rows.py``'s emitter - each lane holds
``N / 32`` elements of the row in registers, reductions by ``shfl.xor`` across the warp -
reading the accumulators from shared memory instead of a tensor from global memory, and writes
the rows' results. The shared memory holds ``BM x (N + 8)`` f32 accumulators, which bounds N
(about 850 at BM = 64, 1700 at BM = 32 on a 227 KB block).
"""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

from mlir import ir
from mlir.dialects import arith, func, gpu, scf, vector

from quartet.dialects import TileOp, captures, linalg_info, yield_

from . import gemm as gemm_mod
from . import gemm_tc, rows
from .common import Unsupported, kernel_func, kernel_inputs
from .fused import SHARED, REGISTERS, Choice, FusedPlan, contraction_roles, is_contraction
from .gemm_epilogue import StagedEpilogue
from .gemm_ir import Emitter, flat_view, i32
from .gemm_problem import analyze as gemm_analyze


class _Part:
    """A run of a tile's ops seen as a tile of its own (what the row analysis reads)."""

    def __init__(self, tile, ops, yielded):
        self.operation = tile.operation
        self.computation = list(ops)
        self.terminator = SimpleNamespace(operands=list(yielded))
        self.results = list(yielded)

    @property
    def inputs(self) -> list[ir.Value]:
        inside = {r for op in self.computation for r in op.results}
        seen: list[ir.Value] = []
        for op in self.computation:
            for v in list(op.operands) + captures(op):
                if v not in inside and v not in seen:
                    seen.append(v)
        return seen


def _gemm_of(tile, fill, con):
    """The GEMM problem of ``[fill,] con`` (a scratch tile, erased again), with its operands'
    argument positions those of the fused tile's kernel."""
    with tile.operation.location, ir.InsertionPoint(tile.operation):
        scratch = TileOp([con.results[0].type])
    try:
        mapping = {}
        ip = ir.InsertionPoint(scratch.entry)
        with tile.operation.location, ip:
            for op in ([fill] if fill is not None else []) + [con]:
                new = op.clone(ip=ip)
                from quartet.dialects import remap
                remap(new, mapping)
                mapping.update(zip(op.results, new.results))
            yield_([mapping[con.results[0]]])
        prob = gemm_analyze(scratch)
        if isinstance(prob, str):
            raise Unsupported(f"the GEMM: {prob}")
        fused_ins = kernel_inputs(tile)
        scratch_ins = kernel_inputs(scratch)
        where = {i: fused_ins.index(v) for i, v in enumerate(scratch_ins)}
        prob.a = replace(prob.a, arg=where[prob.a.arg])
        prob.b = replace(prob.b, arg=where[prob.b.arg])
        prob.out = replace(prob.out, arg=len(fused_ins))
        return prob
    finally:
        scratch.operation.erase()


def analyze(tile, chip) -> FusedPlan:
    ops = tile.computation
    cons = [o for o in ops if linalg_info.is_linalg(o) and is_contraction(o)]
    if len(cons) != 1:
        raise Unsupported(f"{len(cons)} contractions, a GEMM with a row program has 1")
    con = cons[0]
    pos = ops.index(con)
    before = [o for o in ops[:pos] if linalg_info.is_linalg(o)]
    fill = None
    if before:
        if len(before) != 1 or before[0].name != "linalg.fill" or \
                before[0].results[0] != con.operands[2]:
            raise Unsupported("only the accumulator's fill may come before the GEMM")
        fill = before[0]
    after = ops[pos + 1:]
    part = _Part(tile, after, tile.terminator.operands)
    inside_before = {r for o in ops[:pos] for r in o.results}
    if any(v in inside_before for v in part.inputs):
        raise Unsupported("the row program reads a value computed before the GEMM")
    try:
        prog = rows.analyze_rows(part)
    except Unsupported as e:
        raise Unsupported(f"the ops after the GEMM are not a row program: {e}") from None
    if prog.reductions == 0:
        raise Unsupported("no row reduction after the GEMM (the gemm family takes epilogues)")
    prob = _gemm_of(tile, fill, con)
    if prob.batch != 1 or prob.kind != "matmul" or tuple(prog.space) != (prob.m, prob.n):
        raise Unsupported(f"the row program runs over {tuple(prog.space)}, the GEMM's result "
                          f"is [{prob.m}, {prob.n}]")
    if prob.epilogue.init not in ("zero", "scalar") or \
            (prob.epilogue.init == "scalar" and prob.epilogue.init_const is None):
        raise Unsupported("an accumulator that starts from a tensor or an argument")
    if con.results[0] not in part.inputs:
        raise Unsupported("the row program does not read the GEMM's result")
    roles = contraction_roles(con)
    levels = {o: REGISTERS for o in ops if linalg_info.is_linalg(o)}
    levels[con] = SHARED
    choices = _choices(prob, roles, chip)
    if not choices:
        raise Unsupported(f"no GEMM schedule holds rows of {prob.n} columns in a block")
    return FusedPlan("gemm_rows", con, levels, choices, (prob, prog, part, con))


def _configs(prob, chip):
    """(bm, bk, wm, wn, threads) candidates whose block tile spans the whole row."""
    n = prob.n
    out = []
    if chip.wgmma and n % 64 == 0:
        wg = -(-n // 256)
        while wg <= 4 and (n % wg or (n // wg) % 8):
            wg += 1
        if wg <= 4:
            out.append((64, 64, 64, n // wg, 128 * wg))
    for bm in (32, 16):
        for warps in (8, 4, 2, 1):
            wn = n // warps if n % (warps * 16) == 0 else 0
            if wn and (bm // 16) * (wn // 8) * 4 <= 128:
                out.append((bm, 32, bm, wn, 32 * warps))
                break
    return out


def _choices(prob, roles, chip) -> list[Choice]:
    out = []
    for bm, bk, wm, wn, threads in _configs(prob, chip):
        # "wgmma": the cp.async wgmma body this pattern builds on, never the TMA kernel
        force = "wgmma" if wm == 64 else "mma"
        try:
            plan = gemm_mod._build_plan(prob, chip, bm, prob.n, bk, wm, wn, threads, True, None,
                                        None, force, 1)
        except gemm_mod._Refuse:
            continue
        s = plan.schedule
        if s.bn != prob.n:
            continue
        if plan.engine == "wgmma":
            regs = (s.bm // s.wg_m // 64) * (s.bn // s.wg_n) // 2 + 32
        else:
            regs = (s.warp_m // 16) * (s.warp_n // 8) * 4 + 48
        tile = [0] * len(roles.ranges)
        tile[roles.m], tile[roles.n], tile[roles.k] = bm, prob.n, prob.k
        out.append(Choice(tuple(tile), s.threads, plan.shared_bytes, min(255, regs),
                          plan.engine, {"bm": bm, "bk": bk, "wm": wm, "wn": wn,
                                        "threads": threads, "engine": plan.engine}))
    return out


# ---------------------------------------------------------------------------------------------
# The kernel


class _SharedRows(rows._RowEmitter):
    """The row emitter reading the GEMM's result from the parked accumulators."""

    def __init__(self, prog, cfg, in_map, outs, warp, park, staged, row_stride, init):
        super().__init__(prog, cfg, in_map, outs, [], warp)
        self.park, self.staged, self.row_stride, self.init = park, staged, row_stride, init

    def setup_row(self, em: Emitter, r_local, r, lane) -> None:
        self.setup_fused_row(em.c, r, lane)
        self.row_base = arith.muli(r_local, em.c(self.row_stride))

    def operand(self, value, amap, n_loops, chunk, full):
        if value == self.park and value not in self.env:
            vt = ir.VectorType.get([self.p.vector], ir.F32Type.get())
            acc = vector.load(vt, self.staged, [arith.addi(self.row_base, self.j[chunk])])
            if self.init:
                acc = arith.addf(acc, rows._splat(arith.ConstantOp(
                    ir.F32Type.get(), ir.FloatAttr.get(ir.F32Type.get(), self.init)).result,
                    self.p.vector))
            return acc
        return super().operand(value, amap, n_loops, chunk, full)


def build(tile, chip, plan: FusedPlan, params: dict, name: str) -> ir.Module:
    prob, prog, part, con = plan.problem
    bm, bk = int(params["bm"]), int(params["bk"])
    wm, wn, threads = int(params["wm"]), int(params["wn"]), int(params["threads"])
    force = "wgmma" if params.get("engine") == "wgmma" else "mma"
    try:
        gp = gemm_mod._build_plan(prob, chip, bm, prob.n, bk, wm, wn, threads, True, None, None,
                                  force, 1)
    except gemm_mod._Refuse as e:
        raise Unsupported(f"the GEMM schedule: {e}") from None
    s = gp.schedule
    V = prog.vector
    chunks = -(-prog.inner // (V * 32))
    if chunks > 64:
        raise Unsupported(f"rows of {prog.inner} elements do not fit a warp's registers")
    cfg = rows._RowConfig("row", s.threads, 32, s.threads // 32, chunks, 1)
    module = ir.Module.create()
    fn, ins, outs = kernel_func(module, name, tile)
    fn.attributes["quartet.chip"] = ir.StringAttr.get(gp.chip)
    with ir.InsertionPoint(fn.entry_block):
        smem_c = arith.ConstantOp(i32(), gp.shared_bytes).result
        launch = gpu.LaunchOp(gp.grid, gp.block, dynamic_shared_memory_size=smem_c)
        func.ReturnOp([])
    body = launch.regions[0].blocks[0]
    in_map = dict(zip(kernel_inputs(tile), ins))
    init = prob.epilogue.init_const if prob.epilogue.init == "scalar" else 0.0
    park = con.results[0]

    class Writer(StagedEpilogue):
        def flush(self, tid, nthreads):
            em = self.em
            em.barrier()
            warps = nthreads // 32
            warp, lane = em.div(tid, 32), em.rem(tid, 32)
            emitter = _SharedRows(prog, cfg, in_map, outs, chip.warp_size, park, self.smem,
                                  self.row, init)
            loop = scf.ForOp(em.c(warp), em.c(self.bm), em.c(warps))
            with ir.InsertionPoint(loop.body):
                r_local = loop.induction_variable
                r = em.add(self.m0, r_local)
                guard = scf.IfOp(em.lt(r, prob.m)) if prob.m % self.bm else None
                ip = ir.InsertionPoint(guard.then_block) if guard else None
                if ip:
                    ip.__enter__()
                emitter.setup_row(em, r_local, r, lane)
                emitter.run()
                if ip:
                    scf.YieldOp([])
                    ip.__exit__(None, None, None)
                scf.YieldOp([])

    with ir.InsertionPoint(body):
        em = Emitter(body)
        args = list(fn.entry_block.arguments)
        flat = {i: flat_view(a) for i, a in enumerate(args)}
        gemm_tc.emit_body(em, prob, s, args, flat, epilogue=Writer)
        gpu.TerminatorOp()
    return module
