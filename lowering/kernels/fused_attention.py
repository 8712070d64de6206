"""Attention as one kernel: ``softmax(chain(Q K^T)) V`` with an online softmax (``mma.sync``).

Welder keeps a group's intermediates on chip; for attention the intermediate between the two
products is the score matrix, whose softmax is a row reduction that forces whole rows into the
tile (Welder, section 3.1): at 512 keys that is a row of 512 scores per query, at 4096 no longer
a tile. The online softmax (Milakov and Gimelshein 2018; FlashAttention, Dao et al. 2022) goes
beyond it: the key axis is streamed in tiles of ``BN`` keys with a running maximum ``m`` and sum
``l`` per row, and the accumulated output is rescaled by ``exp(m_old - m_new)`` whenever the
maximum grows, so the kernel's footprint no longer depends on the sequence length.

**What the tile must hold** (``analyze``; ``Unsupported`` with the reason otherwise):
``S = Q K^T`` (a contraction with fill 0 over the head dimension), a chain of per-element ops
on ``S`` (casts, the scale, an additive mask or a ``select`` of a causal mask: any
``linalg.generic`` that reads ``S`` through the identity map and other tensors through
projected maps), the softmax as torch-mlir spells it (max reduction over the key loop,
subtraction, ``exp``, sum reduction, division), per-element ops on the probabilities (the cast
to f16), ``O = P V`` (a contraction with fill 0 over the key loop), per-element ops on ``O`` and
views and transposes up to the tile's result. ``Q``, ``K``, ``V`` and the mask tensors may reach
the products through views and transposes inside the tile (``layout.py``): attention reads the
qkv projection's buffer directly, and writes its result in the ``[batch, tokens, heads, dim]``
order the output projection reads. Head dimensions are multiples of 8 up to 256 (padded with
zero columns to 16, 32 or a multiple of 64 in shared memory); ``Q``, ``K`` and ``V`` are f16 or
bf16 with the head dimension contiguous.

**The kernel** (FlashAttention-2's schedule on ``mma.sync`` m16n8k16, the fragment layouts and
``ldmatrix`` addressing of ``gemm_tc.MmaSyncEngine``): blocks over (query tiles of ``BM`` rows,
batch); each warp owns 16 query rows. The ``Q`` tile is copied to shared memory once and kept in
registers as ``mma`` A fragments; key and value tiles of ``BN`` = 64 rows are double-buffered
with ``cp.async`` (the next pair is in flight while the current one is used; one barrier per key
tile). Per key tile: ``S`` in f32 accumulators; the per-element chain evaluated on each score by
cloning the ops' bodies, with mask tensors loaded at the score's (batch, query, key) coordinates;
scores past the last key set to ``-inf``; row maxima combined across the 4 lanes of a quad
(``shfl.xor`` 1 and 2); ``P = exp(x - m_new)`` converted to f16 and reused in registers as the A
fragments of ``P V`` (two adjacent n8 accumulator tiles are one k16 A fragment); ``O`` rescaled
and accumulated. At the end the row sums are combined across the quad, ``O / l`` passes through
the per-element ops after the second product and is stored through the output layout; rows past
the last query are not stored. Rows whose scores are all ``-inf`` give 0/0 (NaN), as PyTorch's
softmax does; a key tile masked whole for some row (a causal mask) subtracts 0 instead of
``-inf`` and adds nothing.

Numerics differ from the op-by-op program by rounding only: the probabilities are rounded to
f16 before normalization instead of after (FlashAttention's order).
"""

from __future__ import annotations

from dataclasses import dataclass

from mlir import ir
from mlir.dialects import arith, func, gpu, math as mmath, memref, nvgpu, nvvm, scf, vector

from quartet.dialects import defining_op, linalg_info

from .common import Unsupported, emit_body, kernel_func
from .fused import (SHARED, REGISTERS, Choice, FusedPlan, contraction_roles, element_op,
                    input_index, is_contraction, single_user, trace_input, backward,
                    transpose_permutation, VIEW_OPS)
from .gemm_ir import Emitter, element_type, f32, flat_view, i32, index
from .gemm_tc import SmemTile
from .layout import Layout, LayoutError

BN = 64              # keys per tile
MAX_HEAD_DIM = 256


def padded(d: int) -> int:
    """A head dimension rounded up to what the swizzled shared-memory tiles hold (16, 32, or a
    multiple of 64): the extra columns are loaded as zeros and never stored."""
    return 16 if d <= 16 else 32 if d <= 32 else -(-d // 64) * 64


@dataclass
class Operand:
    """An operand read from (or written to) a kernel argument: ``layout`` dims in role order
    (batch, rows, columns)."""

    arg: int
    layout: Layout
    dtype: str


@dataclass
class AttentionProblem:
    z: int                 # batch (all batch loops together)
    m: int                 # queries
    n: int                 # keys
    d: int                 # head dimension of Q and K
    dv: int                # head dimension of V
    dtype: str             # f16 | bf16
    q: Operand
    k: Operand
    v: Operand
    o: Operand             # the output (arg: output index)
    pre: list              # ElementOp on the scores, in order (space: batch?, m, n)
    post: list             # per-element ops on O (scalar operands only)
    score_space: tuple     # role of each loop of the score space: "b" | "m" | "n"
    batch_shape: tuple     # extents of the batch loops (row-major into z)


# ---------------------------------------------------------------------------------------------
# Analysis


def _body_names(op: ir.Operation) -> list[str]:
    return [o.operation.name for o in op.regions[0].blocks[0].operations][:-1]


def _fill_value(v: ir.Value) -> float | None:
    op = defining_op(v)
    if op is None or op.name != "linalg.fill":
        return None
    c = defining_op(op.operands[0])
    if c is None or c.name != "arith.constant":
        return None
    return float(ir.FloatAttr(c.attributes["value"]).value)


def _through_views(v: ir.Value) -> ir.Value:
    """The value under a chain of expand / collapse views (row values re-shaped)."""
    op = defining_op(v)
    while op is not None and op.name in ("tensor.expand_shape", "tensor.collapse_shape"):
        v = op.operands[0]
        op = defining_op(v)
    return v


def _reduction(v: ir.Value, combiners: tuple[str, ...], init: float):
    """The reduction op producing row value ``v`` (through views), with a combiner among
    ``combiners`` over the last loop and an init filled with ``init``; its input."""
    from .common import _split_reduction
    src = _through_views(v)
    op = defining_op(src)
    if op is None or op.name != "linalg.generic":
        raise Unsupported("the softmax's row value is not a reduction")
    info = linalg_info.info(op)
    kinds = info.iterator_types
    if kinds[-1] != "reduction" or "reduction" in kinds[:-1]:
        raise Unsupported("a softmax reduction that is not over the last loop")
    k = list(op.results).index(src)
    name, _ = _split_reduction(op.regions[0].blocks[0], info.num_inputs, k)
    if name not in combiners:
        raise Unsupported(f"a softmax reduction combining with '{name}'")
    if _fill_value(op.operands[info.num_inputs + k]) != init:
        raise Unsupported("a softmax reduction not started from its identity")
    if info.num_inputs != 1 or tuple(info.indexing_maps[0]) != _identity(info.num_loops) or \
            not _row_map(info.indexing_maps[1 + k], info.num_loops):
        raise Unsupported("a softmax reduction that is not one row reduction")
    return op, op.operands[0]


def _identity(n: int) -> tuple[str, ...]:
    return tuple(f"d{i}" for i in range(n))


def _row_map(amap, n: int) -> bool:
    """A row value's map: the leading loops, maybe with a trailing unit dimension."""
    lead = tuple(f"d{i}" for i in range(n - 1))
    return tuple(amap) in (lead, lead + ("0",))


def _binary(op: ir.Operation | None, payload: str) -> tuple[ir.Value, ir.Value]:
    """(full input, row input) of a per-element op ``payload(full, row)``."""
    if op is None or op.name != "linalg.generic" or _body_names(op) != [payload]:
        raise Unsupported(f"the softmax does not {payload.split('.')[-1]} here")
    info = linalg_info.info(op)
    n = info.num_loops
    if info.num_inputs != 2 or "reduction" in info.iterator_types or \
            tuple(info.indexing_maps[0]) != _identity(n) or \
            tuple(info.indexing_maps[2]) != _identity(n) or \
            not _row_map(info.indexing_maps[1], n):
        raise Unsupported(f"the softmax's {payload} is not per element over rows")
    block = op.regions[0].blocks[0]
    body = list(block.operations)[0].operation
    if list(body.operands) != [block.arguments[0], block.arguments[1]]:
        raise Unsupported(f"the softmax's {payload} has its operands swapped")
    return op.operands[0], op.operands[1]


def analyze(tile, chip) -> FusedPlan:
    ops = tile.computation
    linalg = [o for o in ops if linalg_info.is_linalg(o)]
    cons = [o for o in linalg if is_contraction(o)]
    if len(cons) != 2:
        raise Unsupported(f"{len(cons)} contractions, attention has 2")
    c1, c2 = cons
    r1, r2 = contraction_roles(c1), contraction_roles(c2)
    for c in (c1, c2):
        if _fill_value(c.operands[2]) != 0.0:
            raise Unsupported("a product that does not start from zero")
    # P -> ... -> div(e, sum) ; e = exp(sub(x, max)) ; x = pre(S)
    p = c2.operands[0]
    p_chain = []
    v = p
    while True:
        op = defining_op(v)
        if op is not None and op.name == "linalg.generic" and _body_names(op) != ["arith.divf"]:
            eo = element_op(op, op.operands[0], tile, len(linalg_info.info(op).iterator_types))
            if eo is None or len(eo.inputs) != 1:
                raise Unsupported("the probabilities pass through an op that is not a cast")
            p_chain.insert(0, eo)
            v = op.operands[0]
            continue
        break
    div = defining_op(v)
    e_val, sum_val = _binary(div, "arith.divf")
    exp_op = defining_op(e_val)
    if exp_op is None or exp_op.name != "linalg.generic" or \
            _body_names(exp_op) != ["math.exp"] or \
            element_op(exp_op, exp_op.operands[0], tile,
                       linalg_info.info(exp_op).num_loops) is None:
        raise Unsupported("the softmax's numerator is not an exp")
    sub_op = defining_op(exp_op.operands[0])
    x_val, max_val = _binary(sub_op, "arith.subf")
    max_op, max_in = _reduction(max_val, ("arith.maximumf", "arith.maxnumf"), float("-inf"))
    sum_op, sum_in = _reduction(sum_val, ("arith.addf",), 0.0)
    if max_in != x_val or sum_in != e_val:
        raise Unsupported("the softmax's reductions read other values")
    # x back to S through per-element ops
    space = len(linalg_info.info(sub_op).iterator_types)
    pre = []
    v = x_val
    while v != c1.results[0]:
        op = defining_op(v)
        if op is None:
            raise Unsupported("the scores do not come from the first product")
        chain_in = None
        for cand in op.operands:
            if _reaches(cand, c1.results[0]):
                chain_in = cand
                break
        eo = element_op(op, chain_in, tile, space) if chain_in is not None else None
        if eo is None:
            raise Unsupported(f"'{op.name}' between the scores and the softmax is not a "
                              f"per-element op")
        pre.insert(0, eo)
        v = chain_in
    # Score space roles: S's map of c1 output.
    s_dims = r1.maps[2]
    role_of = {d: "b" for d in r1.batch}
    role_of.update({r1.m: "m", r1.n: "n"})
    score_space = tuple(role_of[d] for d in s_dims)
    if score_space[-1] != "n" or score_space[-2] != "m" or len(score_space) != space:
        raise Unsupported("scores not laid out (batch, query, key)")
    # C2 must read P as (batch, m, k2) and its k2 is C1's n.
    if r2.maps[0] != tuple(s_dims_for(r2, ("b", "m", "k"))) or r2.extent("k") != r1.extent("n"):
        raise Unsupported("the second product does not read the probabilities row by row")
    if r2.extent("m") != r1.extent("m") or r2.extent("b") != r1.extent("b"):
        raise Unsupported("the products disagree on batch or rows")
    dtype = str(ir.ShapedType(c1.operands[0].type).element_type)
    for c in (c1, c2):
        for i in range(2):
            if str(ir.ShapedType(c.operands[i].type).element_type) != dtype or \
                    dtype not in ("f16", "bf16"):
                raise Unsupported("products of f16 or bf16 operands of one type only")
    q = _operand(tile, c1, r1, 0, ("b", "m", "k"), dtype)
    k = _operand(tile, c1, r1, 1, ("b", "n", "k"), dtype)
    vv = _operand(tile, c2, r2, 1, ("b", "k", "n"), dtype)
    o, post = _output(tile, c2, r2)
    d, dv = r1.extent("k"), r2.extent("n")
    for what, x in (("Q/K head dimension", d), ("V head dimension", dv)):
        if x % 8 or x > MAX_HEAD_DIM:
            raise Unsupported(f"{what} {x} is not a multiple of 8 up to {MAX_HEAD_DIM}")
    for name, opd in (("Q", q), ("K", k), ("V", vv)):
        if opd.layout.stride(2) != 1 or opd.layout.stride(1) is None or \
                not opd.layout.divisible(8):
            raise Unsupported(f"{name} rows are not contiguous, 16-byte aligned runs")
    if o.layout.stride(1) is None or o.layout.stride(2) is None:
        raise Unsupported("the output's rows or columns are not strided")
    for eo in pre:
        eo.roles = score_space
    batch_shape = tuple(r1.ranges[b] for b in r1.batch)
    prob = AttentionProblem(r1.extent("b"), r1.extent("m"), r1.extent("n"), d, dv, dtype,
                            q, k, vv, o, pre, post, score_space, batch_shape)
    levels = {op: REGISTERS for op in linalg}
    for con, i in ((c1, 0), (c1, 1), (c2, 1)):       # Q, K, V are staged in shared memory
        for op in trace_input(con.operands[i], tile)[2]:
            if linalg_info.is_linalg(op):
                levels[op] = SHARED
    return FusedPlan("attention", c2, levels, _choices(prob, r2), prob,
                     notes={"p_chain": p_chain})


def s_dims_for(roles, order) -> list[int]:
    loops = {"b": roles.batch[0] if roles.batch else None, "m": roles.m, "n": roles.n,
             "k": roles.k}
    return [loops[r] for r in order if not (r == "b" and loops[r] is None)]


def _reaches(v: ir.Value, target: ir.Value) -> bool:
    """Whether ``target`` flows into ``v`` through single-result linalg ops."""
    seen = 0
    work = [v]
    while work and seen < 64:
        x = work.pop()
        seen += 1
        if x == target:
            return True
        op = defining_op(x)
        if op is not None and op.name == "linalg.generic":
            work.extend(op.operands)
    return False


def _operand(tile, con, roles, i, order, dtype) -> Operand:
    src, layout, _ = trace_input(con.operands[i], tile)
    dims = roles.maps[i]
    want = s_dims_for(roles, order)
    if any(d is None for d in dims) or sorted(dims) != sorted(want):
        raise Unsupported("a product operand indexed by constants")
    perm = [dims.index(d) for d in want]
    layout = layout.permute(perm)
    if not roles.batch:
        layout = Layout((((1, 0),),) + layout.dims, layout.offset)
    elif len(roles.batch) > 1:
        raise Unsupported("several batch loops")
    return Operand(input_index(tile, src), layout, dtype)


def _output(tile, c2, roles):
    """The output operand (layout of O in (b, m, n) order) and the per-element ops on O."""
    post, path = [], []
    v = c2.results[0]
    yielded = list(tile.terminator.operands)
    while v not in yielded:
        user = single_user(v)
        if user is None:
            raise Unsupported("the output is read by several ops")
        if user.name in VIEW_OPS[:2] or transpose_permutation(user) is not None:
            path.append(user)
            v = user.results[0]
            continue
        info = linalg_info.info(user) if user.name == "linalg.generic" else None
        eo = element_op(user, v, tile, len(info.iterator_types)) if info else None
        if eo is None or any(x[0] == "tensor" for x in eo.inputs):
            raise Unsupported(f"'{user.name}' after the second product")
        post.append(eo)
        v = user.results[0]
    if len(yielded) != 1:
        raise Unsupported("attention yields one result")
    layout = Layout.row_major(tuple(ir.ShapedType(v.type).shape))
    try:
        for op in reversed(path):
            layout = backward(layout, op)
    except LayoutError as e:
        raise Unsupported(f"output layout: {e}") from None
    dims = roles.maps[2]
    want = s_dims_for(roles, ("b", "m", "n"))
    layout = layout.permute([dims.index(d) for d in want])
    if not roles.batch:
        layout = Layout((((1, 0),),) + layout.dims, layout.offset)
    out_t = str(ir.ShapedType(v.type).element_type)
    return Operand(0, layout, out_t), post


def smem_bytes(prob: AttentionProblem, bm: int) -> int:
    d, dv = padded(prob.d), padded(prob.dv)
    return 2 * (bm * d + 2 * BN * d + 2 * BN * dv)


def _choices(prob: AttentionProblem, r2) -> list[Choice]:
    out = []
    for bm in (64, 128):
        if bm > 64 and prob.m <= 64:
            continue
        tile = [0] * len(r2.ranges)
        for b in r2.batch:
            tile[b] = 1
        tile[r2.m], tile[r2.n], tile[r2.k] = bm, prob.dv, prob.n
        regs = 64 + padded(prob.dv) // 2 + BN // 2 + padded(prob.d) // 4
        out.append(Choice(tuple(tile), bm // 16 * 32, smem_bytes(prob, bm), min(255, regs),
                          "mma", {"bm": bm, "bn": BN}))
    return out


# ---------------------------------------------------------------------------------------------
# The kernel


def _const_scalar(v: ir.Value) -> ir.Value:
    owner = defining_op(v)
    return arith.ConstantOp(v.type, owner.attributes["value"]).result


def _apply(em: Emitter, eo, value: ir.Value, coords: dict, flat: list, clamp: dict) -> ir.Value:
    """One per-element op on ``value`` at ``coords`` (role -> index)."""
    args = []
    for kind, *what in eo.inputs:
        if kind == "chain":
            args.append(value)
        elif kind == "scalar":
            args.append(_const_scalar(what[0]))
        elif kind == "splat":
            args.append(arith.ConstantOp(what[0].type, what[0]).result)
        else:
            arg, layout, dims = what
            space_roles = eo.roles
            idx = []
            for d in dims:
                idx.append(0 if d is None else clamp[space_roles[d]])
            if not layout.dims:          # a 0-d tensor
                args.append(memref.load(flat[arg], []))
                continue
            off = layout.emit_offset(em, idx)
            args.append(memref.load(flat[arg], [em.c(off)]))
    block = eo.op.regions[0].blocks[0]
    args += [None] * (len(block.arguments) - len(args))
    return emit_body(block, args, None)[0]


def _load_tile(em: Emitter, opd: Operand, tile: SmemTile, smem, flat, tid, threads: int,
               z: ir.Value, rows_total: int, cols_total: int):
    """Per-thread cp.async items of a ``rows x cols`` tile: returns ``issue(row0, slot_elems)``
    that copies rows ``[row0, row0 + rows)`` into the slot, zero-filling rows past the end and
    columns past ``cols_total`` (a padded head dimension)."""
    cols = tile.inner
    per_row = cols // 8
    total = tile.outer * per_row
    base_z = opd.layout.emit_offset(em, [z, 0, 0])
    rs = opd.layout.stride(1)
    items = []
    for j in range(-(-total // threads)):
        q = em.add(tid, j * threads)
        active = True if (j + 1) * threads <= total else em.lt(q, total)
        r, c = em.div(q, per_row), em.mul(em.rem(q, per_row), 8)
        col_ok = True if cols_total == cols else em.lt(c, cols_total)
        src = em.add(base_z, em.add(em.mul(r, rs), c))
        dst = em.div(tile.byte_offset(em, r, c), 2)
        items.append((r, src, dst, active, col_ok))
    edge = rows_total % tile.outer or cols_total != cols

    def issue(row0: ir.Value, slot: ir.Value) -> None:
        size = ir.IntegerAttr.get(index(), 8)
        for r, src, dst, active, col_ok in items:
            def copy(r=r, src=src, dst=dst, col_ok=col_ok):
                row = em.add(row0, r)
                ok = em.land(em.lt(row, rows_total) if rows_total % tile.outer else True,
                             col_ok)
                at = em.select(ok, em.add(src, em.mul(row0, rs)), base_z) \
                    if edge else em.add(src, em.mul(row0, rs))
                count = em.select(ok, 8, 0) if edge else 8
                nvgpu.DeviceAsyncCopyOp(smem, [em.c(em.add(slot, dst))], flat[opd.arg],
                                        [em.c(at)], size, srcElements=em.c(count),
                                        bypassL1=True)
            if active is True:
                copy()
            else:
                guard = scf.IfOp(active)
                with ir.InsertionPoint(guard.then_block):
                    copy()
                    scf.YieldOp([])
    return issue


def _shfl_xor(v: ir.Value, offset: int, em: Emitter) -> ir.Value:
    return gpu.shuffle(v, em.ci32(offset), em.ci32(32), gpu.ShuffleMode.XOR)[0]


def build(tile, chip, plan: FusedPlan, params: dict, name: str) -> ir.Module:
    prob: AttentionProblem = plan.problem
    bm = int(params.get("bm", 64))
    if bm % 16 or bm > 128:
        raise Unsupported(f"rows per block {bm} must be a multiple of 16 up to 128")
    warps = bm // 16
    threads = warps * 32
    shared = smem_bytes(prob, bm)
    if shared > chip.smem_per_block:
        raise Unsupported(f"{shared} bytes of shared memory, at most {chip.smem_per_block}")
    module = ir.Module.create()
    fn, ins, outs = kernel_func(module, name, tile)
    fn.attributes["quartet.chip"] = ir.StringAttr.get(chip.isa)
    grid = (-(-prob.m // bm), prob.z, 1)
    with ir.InsertionPoint(fn.entry_block):
        smem_c = arith.ConstantOp(i32(), shared).result
        launch = gpu.LaunchOp(grid, (threads, 1, 1), dynamic_shared_memory_size=smem_c)
        func.ReturnOp([])
    body = launch.regions[0].blocks[0]
    with ir.InsertionPoint(body):
        em = Emitter(body)
        flat = [flat_view(a) if ir.MemRefType(a.type).rank else a for a in ins]
        out_flat = flat_view(outs[0])
        _emit(em, prob, bm, flat, out_flat, plan)
        gpu.TerminatorOp()
    return module


def _emit(em: Emitter, prob: AttentionProblem, bm: int, flat: list, out_flat, plan) -> None:
    et = element_type(prob.dtype)
    warps = bm // 16
    threads = warps * 32
    D, DV = padded(prob.d), padded(prob.dv)
    tid = em.thread_id()
    bx, z = em.block_id("x"), em.block_id("y")
    m0 = em.mul(bx, bm)
    warp, lane = em.div(tid, 32), em.rem(tid, 32)
    l8, quad = em.rem(lane, 8), em.div(lane, 8)
    qt = SmemTile(bm, D, 2, min(64, D))
    kt = SmemTile(BN, D, 2, min(64, D))
    vt = SmemTile(BN, DV, 2, min(64, DV))
    q_off = 0
    k_off = qt.bytes
    v_off = k_off + 2 * kt.bytes
    total = v_off + 2 * vt.bytes
    smem = em.smem(0, total // 2, prob.dtype)
    load_q = _load_tile(em, prob.q, qt, smem, flat, tid, threads, z, prob.m, prob.d)
    load_k = _load_tile(em, prob.k, kt, smem, flat, tid, threads, z, prob.n, prob.d)
    load_v = _load_tile(em, prob.v, vt, smem, flat, tid, threads, z, prob.n, prob.dv)
    n_tiles = -(-prob.n // BN)

    def issue_kv(j, slot):
        row0 = em.mul(j, BN)
        load_k(row0, em.add(k_off // 2, em.mul(slot, kt.bytes // 2)))
        load_v(row0, em.add(v_off // 2, em.mul(slot, vt.bytes // 2)))

    load_q(m0, q_off // 2)
    issue_kv(0, 0)
    nvvm.CpAsyncCommitGroupOp()
    nvvm.CpAsyncWaitGroupOp(0)
    em.barrier()

    # Q fragments (A operand, k inner): ldmatrix x4 per 16-wide k step.
    a_vt = ir.VectorType.get([4, 2], et)
    qfrag = []
    for kk in range(D // 16):
        o = em.add(em.add(em.mul(warp, 16), l8), em.mul(em.rem(quad, 2), 8))
        i = em.add(kk * 16, em.mul(em.div(quad, 2), 8))
        addr = em.div(em.add(q_off, qt.byte_offset(em, o, i)), 2)
        qfrag.append(nvgpu.LdMatrixOp(a_vt, smem, [em.c(addr)], False, 4).result)
    # Per-lane ldmatrix offsets (elements) inside a K tile and a V tile.
    k_addr = [[em.div(kt.byte_offset(em, em.add(em.add(nj2 * 16, l8), em.mul(em.div(quad, 2), 8)),
                                      em.add(kk * 16, em.mul(em.rem(quad, 2), 8))), 2)
               for kk in range(D // 16)] for nj2 in range(BN // 16)]
    v_addr = [[em.div(vt.byte_offset(em, em.add(em.add(kk * 16, l8), em.mul(em.rem(quad, 2), 8)),
                                      em.add(nj2 * 16, em.mul(em.div(quad, 2), 8))), 2)
               for nj2 in range(DV // 16)] for kk in range(BN // 16)]
    row_in_block = [em.add(em.add(em.mul(warp, 16), em.div(lane, 4)), 8 * h) for h in range(2)]
    rows = [em.add(m0, r) for r in row_in_block]
    col_in_tile = em.mul(em.rem(lane, 4), 2)

    acc_vt = ir.VectorType.get([2, 2], f32())
    zero_acc = arith.ConstantOp(acc_vt, ir.DenseElementsAttr.get_splat(
        acc_vt, ir.FloatAttr.get(f32(), 0.0))).result
    b_vt = ir.VectorType.get([2, 2], et)
    b_zero = arith.ConstantOp(b_vt, ir.DenseElementsAttr.get_splat(
        b_vt, ir.FloatAttr.get(et, 0.0))).result
    neg_inf = em.cf(float("-inf"))
    zero = em.cf(0.0)
    shape = ir.ArrayAttr.get([ir.IntegerAttr.get(ir.IntegerType.get_signless(64), x)
                              for x in (16, 8, 16)])

    def mma(a, b, c):
        return nvgpu.MmaSyncOp(acc_vt, a, b, c, shape).result

    def b_frags(b4):
        out = []
        for half in range(2):
            frag = b_zero
            for r in range(2):
                frag = vector.insert(vector.extract(b4, [], [2 * half + r]), frag, [], [r])
            out.append(frag)
        return out

    init = [neg_inf, neg_inf, zero, zero] + [zero_acc] * (DV // 8)
    loop = scf.ForOp(em.c(0), em.c(n_tiles), em.c(1), init)
    with ir.InsertionPoint(loop.body):
        j = loop.induction_variable
        carried = list(loop.inner_iter_args)
        m_old, l_old, acc = carried[0:2], carried[2:4], carried[4:]
        slot = em.rem(j, 2)
        nxt = em.add(j, 1)
        pre = scf.IfOp(em.lt(nxt, n_tiles))
        with ir.InsertionPoint(pre.then_block):
            issue_kv(nxt, em.rem(nxt, 2))
            scf.YieldOp([])
        nvvm.CpAsyncCommitGroupOp()
        k_slot = em.add(k_off // 2, em.mul(slot, kt.bytes // 2))
        v_slot = em.add(v_off // 2, em.mul(slot, vt.bytes // 2))
        # S = Q K^T
        s = [zero_acc] * (BN // 8)
        for kk in range(D // 16):
            for nj2 in range(BN // 16):
                b4 = nvgpu.LdMatrixOp(a_vt, smem, [em.c(em.add(k_slot, k_addr[nj2][kk]))],
                                      False, 4).result
                for half, bf in enumerate(b_frags(b4)):
                    s[2 * nj2 + half] = mma(qfrag[kk], bf, s[2 * nj2 + half])
        # The per-element chain, the key edge, the running maximum.
        n0 = em.mul(j, BN)
        x = [[[None, None] for _ in range(BN // 8)] for _ in range(2)]
        for t in range(BN // 8):
            for h in range(2):
                pair = vector.extract(s[t], [], [h])
                for e in range(2):
                    val = vector.extract(pair, [], [e])
                    col = em.add(em.add(n0, t * 8), em.add(col_in_tile, e))
                    coords = {"b": z, "m": rows[h], "n": col}
                    clamp = {"b": z, "m": arith.minui(em.c(rows[h]), em.c(prob.m - 1))
                             if prob.m % bm else rows[h],
                             "n": arith.minui(em.c(col), em.c(prob.n - 1))
                             if prob.n % BN else col}
                    for eo in prob.pre:
                        val = _apply(em, eo, val, coords, flat, clamp)
                    val = _to_f32(val)
                    if prob.n % BN:
                        val = arith.select(em.lt(col, prob.n), val, neg_inf)
                    x[h][t][e] = val
        m_new, base, alpha, l_new = [], [], [], []
        for h in range(2):
            mx = x[h][0][0]
            for t in range(BN // 8):
                for e in range(2):
                    if t or e:
                        mx = arith.maximumf(mx, x[h][t][e])
            mx = arith.maximumf(mx, _shfl_xor(mx, 1, em))
            mx = arith.maximumf(mx, _shfl_xor(mx, 2, em))
            mn = arith.maximumf(m_old[h], mx)
            is_inf = arith.cmpf(arith.CmpFPredicate.OEQ, mn, neg_inf)
            b = arith.select(is_inf, zero, mn)
            m_new.append(mn)
            base.append(b)
            alpha.append(mmath.exp(arith.subf(m_old[h], b)))
        p = [[[None, None] for _ in range(BN // 8)] for _ in range(2)]
        for h in range(2):
            total = None
            for t in range(BN // 8):
                for e in range(2):
                    pv = mmath.exp(arith.subf(x[h][t][e], base[h]))
                    p[h][t][e] = pv
                    total = pv if total is None else arith.addf(total, pv)
            l_new.append(arith.addf(arith.mulf(l_old[h], alpha[h]), total))
        scale = vector.from_elements(acc_vt, [alpha[0], alpha[0], alpha[1], alpha[1]])
        acc = [arith.mulf(a, scale) for a in acc]
        # P as A fragments: n8 tiles 2kk and 2kk+1 make the k16 fragment kk.
        for kk in range(BN // 16):
            elems = []
            for t in (2 * kk, 2 * kk + 1):
                for h in range(2):
                    for e in range(2):
                        elems.append(arith.truncf(et, p[h][t][e]))
            afrag = vector.from_elements(a_vt, elems)
            for nj2 in range(DV // 16):
                b4 = nvgpu.LdMatrixOp(a_vt, smem, [em.c(em.add(v_slot, v_addr[kk][nj2]))],
                                      True, 4).result
                for half, bf in enumerate(b_frags(b4)):
                    acc[2 * nj2 + half] = mma(afrag, bf, acc[2 * nj2 + half])
        nvvm.CpAsyncWaitGroupOp(0)
        em.barrier()
        scf.YieldOp(m_new + l_new + acc)
    res = list(loop.results)
    l_fin = res[2:4]
    acc = res[4:]
    inv = []
    for h in range(2):
        tot = arith.addf(l_fin[h], _shfl_xor(l_fin[h], 1, em))
        tot = arith.addf(tot, _shfl_xor(tot, 2, em))
        inv.append(arith.divf(em.cf(1.0), tot))
    _store(em, prob, acc, inv, rows, col_in_tile, z, out_flat, bm)


def _to_f32(v: ir.Value) -> ir.Value:
    if str(v.type) == "f32":
        return v
    return arith.extf(f32(), v)


def _store(em, prob: AttentionProblem, acc, inv, rows, col_in_tile, z, out_flat, bm) -> None:
    ot = element_type(prob.o.dtype)
    pair = prob.o.layout.stride(2) == 1 and prob.o.layout.divisible(2)
    for h in range(2):
        def body(h=h):
            for t in range(-(-prob.dv // 8)):     # the padded columns are not stored
                col = em.add(t * 8, col_in_tile)
                row_vals = vector.extract(acc[t], [], [h])
                vals = []
                for e in range(2):
                    v = arith.mulf(vector.extract(row_vals, [], [e]), inv[h])
                    for eo in prob.post:
                        v = _apply(em, eo, v, {}, [], {})
                    if str(v.type) != str(ot):
                        v = arith.truncf(ot, v) if str(ot) != "f32" else arith.extf(ot, v)
                    vals.append(v)
                off = prob.o.layout.emit_offset(em, [z, rows[h], col])
                if pair:
                    vector.store(vector.from_elements(ir.VectorType.get([2], ot), vals),
                                 out_flat, [em.c(off)])
                else:
                    off1 = prob.o.layout.emit_offset(em, [z, rows[h], em.add(col, 1)])
                    memref.store(vals[0], out_flat, [em.c(off)])
                    memref.store(vals[1], out_flat, [em.c(off1)])
        if prob.m % bm:
            guard = scf.IfOp(em.lt(rows[h], prob.m))
            with ir.InsertionPoint(guard.then_block):
                body()
                scf.YieldOp([])
        else:
            body()
