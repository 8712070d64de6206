"""Roller's construction policy: a tile program for one linalg op, built, not searched.

Follows Roller (OSDI'22) sections 4-5 as summarised in ``shared/papers/roller_rammer.md`` 1.2-1.6:

* **Alignment rules (1.2).** Threads per block are a multiple of warp x sub-partitions
  (execution units); the contiguous dimension of each block tile is a multiple of the memory
  transaction or covers the whole dimension; the innermost dimension of every input staged in
  shared memory is padded so that consecutive rows start in different banks; with tensor cores
  every warp tile is a multiple of the mma fragment; a loop of extent N is padded up to a
  multiple of its tile S only if ``ceil(N/S)*S <= N*(1+eps)``.
* **Growth by data-reuse score (1.3, 1.4).** The register (per-thread, or per-warp with tensor
  cores) tile grows from the unit tile one axis at a time, the axis with the best score
  ``S_i = (Q(T) - Q(T'_i)) / (F(T'_i) - F(T))`` first, while it fits the register budget and
  is not yet compute-bound against shared memory; then the block tile grows from it in multiples
  of the register tile while it fits shared memory (double-buffered), threads and registers and
  is not yet compute-bound against L2, by Roller's depth-first search (children best score
  first, a bounded number of nodes). Every aligned tile it meets is a candidate; reduction steps
  are transaction-aligned (``lcm(unit, 32 B / element) * 2^j`` up to a 128-byte row).
* **Micro performance model (1.4).** Each candidate gets an estimated time: compute at the
  target's peak shared among the blocks of an SM (and reduced when too few warps are resident to
  hide latency), global traffic Q(T) over L2 and compulsory traffic over DRAM (with
  transaction-rounding waste), shared-memory traffic of the register tiles, and a cost per
  reduction step. Roller compiles and profiles its top-k; Quartet ranks them with this model.
* **Scale-out and small operators (1.5).** The grid is ``ceil(N_i / block_i)`` per parallel
  loop; reductions stay inside a block. An operator whose grid does not fill the SMs has its
  block tile halved, lowest-reuse axis first (Roller's ``try_shrink``), but never below a block
  that can still hold a full set of sub-partitions; when its register tiles leave fewer threads
  than that, the tiles shrink and threads cooperate on the main reduction. An operator too
  small to fill the SMs with such blocks runs on fewer SMs: a block of a few threads would idle
  most lanes of its warp and three of the four schedulers of its SM.
* **Irregular extents (1.5).** The padding tolerance eps grows from 0 in steps of 0.2 until
  enough candidates exist, one of them with a full set of sub-partitions (197, 1000, 30522
  have few divisors; candidates of eps 0 and 0.2 are always pooled). Ranking charges a padded tile its padding twice (once as wasted work in the
  model, once as a factor ``1 + padding``): it must beat exact tiles by more than it wastes.
* **Ops without reuse (1.4, ``PolicyPlainRT``).** Elementwise ops, pooling, depthwise
  convolution, transposes, copies, fills, broadcasts and reductions gain nothing from large
  tiles: whole warps laid out innermost-first with vector-wide per-thread tiles on the input's
  contiguous axis (coalesced reads) and, when the output's contiguous axis is another loop (a
  transpose), a transaction per thread along it (whole sectors written). Row reductions (the
  contiguous axis is reduced, as in softmax and layernorm) give a block whole rows, with
  threads cooperating on the row; other reductions are serial per thread, with threads
  cooperating when the parallel extent cannot fill the SMs. A block has a full set of
  sub-partitions (``warp x sub_partitions`` threads) whenever the op has that many elements
  (``plain_thread_goal``): an op too small for vector-wide threads on every SM takes fewer
  elements per thread, then fewer SMs, not fewer threads. Thread tiles are cut to the
  register budget (a transpose's tile holds its input and its output).

An op uses the reuse policy when it reduces and some large tensor input (at least 1/8 of the
largest) does not depend on a parallel loop of extent > 1: that input is reused across the loop
(matmul, convolution). Ops without a reduction (a broadcast bias, a fill's scalar, an outer
product) take the plain policy: a broadcast input is re-read from the cache, not staged.
Tensor cores (``tensor_core=true``) are used for f16/bf16 contractions of two inputs (GEMM roles
M, N, K all present) when the target has an mma fragment; per-warp tiles and the reduction step
are then fragment multiples. For a convolution the M role spans several loops (batch and output
pixels): the *product* of the warp tile over the M loops is a multiple of the fragment's m (and
likewise for N and K), each loop carrying the factor that divides its extent, innermost first.
N is a multiple of 16 too, and the block's M and N extents and reduction step are 16, 32 or
multiples of 64 (a Hopper warp group's wgmma tile is 64 rows). Loops both inputs share
(batch_matmul's batch) have block extent 1: a block computes one matrix of the batch.

The schedule attributes written from a :class:`Schedule` follow the contract in
``dialects/quartet.py``: ``block_tile`` (reduction loops: the step), ``thread_tile`` (reduction
loops: elements one thread, or warp, reduces serially per step; block/thread threads cooperate),
``threads`` (times the warp with tensor cores), ``grid`` (per parallel loop), ``smem_padding``
(per input), ``tensor_core``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from quartet.dialects.linalg_info import LinalgInfo
from quartet.passes.footprint import MapError, OpModel, is_padding_ok
from quartet.runtime.targets import CHIPS, Chip

EPS_STEPS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
DFS_NODES = 96          # block tiles the DFS may visit per register tile
DFS_FOUND = 8           # aligned block tiles it collects per register tile
WINDOW = 16             # reduction loops this short (filter windows) are staged whole
BLOCK_MULTIPLES = (1, 2, 4, 8, 16, 32, 64, 128, 256)   # block extent / register tile extent


class Unsupported(ValueError):
    """The policy cannot configure this op; the message says why."""


@dataclass(frozen=True)
class Schedule:
    """One tile program: the schedule attributes plus what the model derived for them."""

    block_tile: tuple[int, ...]
    thread_tile: tuple[int, ...]
    threads: int
    grid: tuple[int, ...]
    smem_padding: tuple[int, ...]
    tensor_core: bool
    smem_bytes: int          # one stage of staged inputs, padding included
    stages: int              # shared-memory stages the model assumed (double buffering)
    regs_per_thread: int     # estimate
    blocks_per_unit: int     # occupancy
    estimate: float          # seconds, the micro performance model
    policy: str              # "reuse" | "plain" | "given"
    eps: float               # padding: max over loops of ceil(N/b)*b/N - 1

    @property
    def key(self):
        return (self.block_tile, self.thread_tile, self.tensor_core)


# ---------------------------------------------------------------------------------------------
# Entry points


def model_of(info: LinalgInfo) -> OpModel:
    try:
        model = OpModel(info)
    except MapError as e:
        raise Unsupported(str(e)) from None
    if not model.outputs:
        raise Unsupported("the op has no output")
    if any(r < 1 for r in model.ranges):
        raise Unsupported("the op has an empty loop")
    return model


_CONSTRUCTED: dict[tuple, list[Schedule]] = {}


def forget() -> None:
    """Drop the remembered schedules (``construct`` builds every one again)."""
    _CONSTRUCTED.clear()


def construct(info: LinalgInfo, hw: Chip, topk: int = 1) -> list[Schedule]:
    """The ``topk`` best tile programs for the op, best first (by the performance model).
    Ops of one shape repeat in a model (every layer of a BERT): results for the built-in
    targets are remembered per ``(info, target, topk)``."""
    key = (info, hw.name, topk) if CHIPS.get(hw.name) is hw else None
    if key is not None and key in _CONSTRUCTED:
        return list(_CONSTRUCTED[key])
    model = model_of(info)
    if has_reuse(model):
        schedules = _reuse_policy(model, hw, topk)
    else:
        schedules = _plain_policy(model, hw, topk)
    if not schedules:
        raise Unsupported(f"no tile configuration fits {hw.label}")
    schedules = schedules[:topk]
    if key is not None:
        if len(_CONSTRUCTED) >= 4096:
            _CONSTRUCTED.clear()
        _CONSTRUCTED[key] = schedules
    return list(schedules)


def has_reuse(model: OpModel) -> bool:
    """Whether a bigger tile cuts traffic: a large input does not vary along a parallel loop,
    and the op reduces (a contraction). Without a reduction every input element meets each
    output element at most once: a broadcast input (a bias, a fill's scalar, one operand of an
    outer product) is re-read from the cache, and staging it buys nothing (plain policy)."""
    tensors = [o for o in model.inputs if o.dims]
    if not tensors or not model.reduction:
        return False
    largest = max(o.bytes for o in tensors)
    for operand in tensors:
        if operand.bytes * 8 < largest:
            continue
        loops = operand.loops
        if any(p not in loops and model.ranges[p] > 1 for p in model.parallel):
            return True
    return False


# ---------------------------------------------------------------------------------------------
# GEMM roles and tensor-core fragments


@dataclass(frozen=True)
class GemmRoles:
    """Loops of a two-input contraction by role, each innermost first."""

    batch: tuple[int, ...]
    m: tuple[int, ...]
    n: tuple[int, ...]
    k: tuple[int, ...]


def _inner_first(loops, operand) -> tuple[int, ...]:
    """``loops`` ordered by the operand dimension they index, innermost first."""
    positions = operand.positions
    return tuple(sorted(loops, key=lambda loop: (-positions.get(loop, -1), -loop)))


def gemm_roles(model: OpModel) -> GemmRoles | None:
    """The op's loops as a GEMM (None unless it is a two-input multiply-accumulate)."""
    key = ("roles",)
    if key not in model._cache:
        model._cache[key] = _gemm_roles(model)
    return model._cache[key]


def _gemm_roles(model: OpModel) -> GemmRoles | None:
    if len(model.inputs) != 2 or len(model.outputs) != 1:
        return None
    payload = set(model.info.payload)
    if not ({"arith.mulf", "arith.addf"} <= payload or {"arith.muli", "arith.addi"} <= payload):
        return None
    a, b = model.inputs
    c = model.outputs[0]
    la, lb, lc = a.loops, b.loops, c.loops
    par = [p for p in model.parallel if model.ranges[p] >= 1]
    batch = [p for p in par if p in la and p in lb]
    m = [p for p in par if p in la and p not in lb]
    n = [p for p in par if p in lb and p not in la]
    k = [r for r in model.reduction if r in la and r in lb]
    if not m or not n or not k or len(batch) + len(m) + len(n) != len(par):
        return None
    if any(p not in lc for p in par):
        return None
    return GemmRoles(_inner_first(batch, c), _inner_first(m, c), _inner_first(n, c),
                     _inner_first(k, a))


def tensor_core_unit(model: OpModel, hw: Chip, eps: float) -> tuple[int, ...] | None:
    """The per-loop unit tile that makes every warp tile a multiple of the mma fragment, or None
    when tensor cores do not apply (types, op structure, or extents beyond the padding rule)."""
    if hw.mma_shape is None:
        return None
    types = {o.dtype for o in model.inputs}
    if len(model.inputs) != 2 or len(types) != 1 or types.pop() not in ("f16", "bf16"):
        return None
    roles = gemm_roles(model)
    if roles is None:
        return None
    unit = [1] * model.num_loops
    main = main_reduction(model)
    frag_m, frag_n, frag_k = hw.mma_shape
    # N is rounded up to M's fragment too: ldmatrix.x4 loads the B fragments of two n8 tiles at
    # once, and an implicit-GEMM lowering may take either operand of a convolution as A.
    for loops, frag in ((roles.m, frag_m), (roles.n, max(frag_n, frag_m)), (roles.k, frag_k)):
        if loops is roles.k:
            # Window loops are staged whole: the fragment factor goes to the main loop.
            loops = (main,) + tuple(k for k in loops if k != main and model.ranges[k] > WINDOW)
        rest = frag
        for loop in loops:
            g = rest
            while g > 1 and model.ranges[loop] % g:
                g //= 2
            unit[loop] = g
            rest //= g
        if rest > 1:
            unit[loops[0]] *= rest
            if not is_padding_ok(model.ranges[loops[0]], unit[loops[0]], eps):
                return None
    return tuple(unit)


def _scalar_unit(model: OpModel, hw: Chip) -> tuple[int, ...]:
    """The unit tile without tensor cores: one element per loop on a GPU thread; on a CPU core
    one vector along the output's contiguous loop (when the extent is a multiple of it)."""
    unit = [1] * model.num_loops
    if hw.kind == "cpu":
        out = model.outputs[0]
        loop = model.contiguous_loop(out)
        lanes = max(1, hw.vector_bytes // max(4, out.elem_bytes))
        if loop is not None and not model.is_reduction[loop] and model.ranges[loop] % lanes == 0:
            unit[loop] = lanes
    return tuple(unit)


def batch_loops(model: OpModel) -> tuple[int, ...]:
    """Loops both inputs of a contraction share (batch_matmul's batch): a block computes one
    matrix of the batch, as a strided-batched GEMM does; batching gains no reuse."""
    roles = gemm_roles(model)
    return roles.batch if roles else ()


def main_reduction(model: OpModel) -> int | None:
    """The reduction loop whose step is grown: the longest, innermost in the first input."""
    if not model.reduction:
        return None
    first = model.inputs[0] if model.inputs else model.outputs[0]
    order = _inner_first(model.reduction, first)
    return max(model.reduction, key=lambda r: (model.ranges[r], -order.index(r)))


# ---------------------------------------------------------------------------------------------
# Resource usage and the micro performance model


def bank_padding(model: OpModel, hw: Chip, block, tensor_core: bool) -> tuple[int, ...]:
    """Rule 3 (memory bank): a staged input whose rows are an even number of access units long
    (4-byte bank words; 16-byte ldmatrix rows with tensor cores) has every row start in the same
    bank group, so threads reading down a column conflict; one access unit of padding makes the
    row stride odd and spreads consecutive rows over the banks. Rows of other lengths already
    start in staggered banks, and a one-row tile has nothing to conflict with: no padding."""
    if hw.kind == "cpu":
        return tuple(0 for _ in model.inputs)
    unit = 16 if tensor_core else hw.bank_bytes
    pads = []
    for operand in model.inputs:
        ext = model.data_tile(operand, block)
        row = ext[-1] * operand.elem_bytes if ext else 0
        if len(ext) < 2 or math.prod(ext[:-1]) == 1 or row % unit or (row // unit) % 2:
            pads.append(0)
        else:
            pads.append(max(1, unit // operand.elem_bytes))
    return tuple(pads)


def register_usage(model: OpModel, hw: Chip, thread, tensor_core: bool,
                   unit=None) -> int:
    """Registers per thread: the thread tile's operands for one reduction unit (1, or the
    fragment's k with tensor cores), accumulators in 32 bits, plus the target's overhead.
    With tensor cores the tile is a warp's, spread over its lanes."""
    t = [thread[k] if not model.is_reduction[k] else (unit[k] if unit else 1)
         for k in range(model.num_loops)]
    total = 0
    for operand in model.inputs:
        total += math.prod(model.data_tile(operand, t)) * operand.elem_bytes
    for operand in model.outputs:
        total += math.prod(model.data_tile(operand, t)) * max(4, operand.elem_bytes)
    words = -(-total // 4)
    if tensor_core:
        words = -(-words // hw.mma_warp_size)
    return words + hw.reg_overhead


def occupancy(hw: Chip, threads: int, smem_bytes: int, regs: int) -> int:
    """Blocks resident per SM (0 when one block does not fit)."""
    limits = [hw.max_blocks_per_unit, hw.max_threads_per_unit // max(1, threads),
              hw.regs_per_unit // max(1, regs * threads)]
    if smem_bytes:
        limits.append(hw.smem_per_unit // smem_bytes)
    return max(0, min(limits))


def estimate(model: OpModel, hw: Chip, block, thread, threads: int, tensor_core: bool,
             blocks_per_unit: int, staged: bool) -> float:
    """Seconds the op takes at this tile, by Roller's micro model (module docstring)."""
    grid = model.num_tiles(block)
    per_unit = -(-grid // hw.num_units)
    active = min(grid, hw.num_units)
    resident = max(1, min(blocks_per_unit, per_unit))
    warps = resident * -(-threads // hw.warp_size)
    needed = hw.warps_for_peak
    if staged and not tensor_core and hw.kind != "cpu" and \
            math.prod(thread[p] for p in model.parallel) >= ILP_ACCUMULATORS:
        # A register tile of many independent accumulators hides the FMA and shared-memory
        # latency by itself: one warp per sub-partition keeps it busy. fp32 1024^3 (NOTES.md):
        # 64x64 with 8x8 tiles, 64 threads and two blocks per SM (4 warps) ran at 0.78 of
        # cuBLAS, 8x4 tiles with 128 threads (8 warps) at 0.71.
        needed = hw.sub_partitions
    efficiency = min(1.0, warps / needed)
    padded = model.padded_ranges(block)
    full = tuple(padded[k] if model.is_reduction[k] else block[k] for k in range(model.num_loops))
    dtype = model.inputs[0].dtype if model.inputs else model.outputs[0].dtype
    peak = hw.peak(dtype, tensor_core)
    t_compute = per_unit * model.flops(full) / (peak / hw.num_units) / efficiency
    q = model.traffic(block)
    q_sector = model.traffic(block, sector=hw.transaction_bytes)
    dram = model.compulsory_bytes() * (q_sector / q if q else 1.0)
    dram_bw = min(hw.dram_bandwidth, active * hw.unit_bandwidth)
    l2_bw = hw.l2_bandwidth * active / hw.num_units
    t_memory = max(q_sector / l2_bw, dram / dram_bw)
    t_smem = 0.0
    if staged:
        inner = model.traffic(thread, space=full)
        t_smem = per_unit * inner / (hw.smem_bandwidth / hw.num_units)
    steps = math.prod(-(-model.ranges[r] // block[r]) for r in model.reduction)
    step_seconds = model.flops(block) / (peak / hw.num_units) / efficiency
    t_sync = -(-per_unit // resident) * steps * exposed_sync(hw, resident, step_seconds)
    return max(t_compute, t_memory, t_smem) + t_sync + hw.launch_seconds


def exposed_sync(hw: Chip, resident: int, step_seconds: float) -> float:
    """Seconds of one reduction step's barrier the SM cannot hide: while a block waits at its
    barrier the other resident blocks compute their own steps, so the cost shrinks by their
    work. fp32 4096^3 (NOTES.md): 128x128 with an 8-deep step (124 registers, two resident
    blocks) ran at 0.79 of cuBLAS, a 16-deep step (137 registers, one block) at 0.73, and
    roller's 64x128 with a 32-deep step and 128 threads at 0.60."""
    return max(0.0, hw.sync_seconds - (resident - 1) * step_seconds)


def derive(model: OpModel, hw: Chip, block, thread, tensor_core: bool, *, padding=None,
           policy: str = "given", unit=None) -> Schedule:
    """Everything that follows from a block and a thread tile (block a multiple of thread)."""
    lanes = math.prod(b // t for b, t in zip(block, thread))
    threads = lanes * (hw.mma_warp_size if tensor_core else 1)
    grid = tuple(-(-model.ranges[p] // block[p]) for p in model.parallel)
    staged = policy != "plain"
    if padding is None:
        padding = bank_padding(model, hw, block, tensor_core) if staged else \
            tuple(0 for _ in model.inputs)
    smem = model.footprint(block, padding) if staged else 0
    steps = math.prod(-(-model.ranges[r] // block[r]) for r in model.reduction)
    stages = hw.pipeline_stages if (staged and steps > 1
                                    and smem * hw.pipeline_stages <= hw.smem_per_block) else 1
    regs = register_usage(model, hw, thread, tensor_core, unit)
    if staged and not tensor_core and hw.kind != "cpu":
        # The CUDA-core GEMM stages its operands global -> registers -> shared memory
        # (lowering/gemm_simt.py): each thread holds its share of the next step's input tiles,
        # with addressing about 1.5 registers per word (ptxas counts of NOTES.md's kernels,
        # results/manifest-run4.json: 128x128x8 / 8x8 123 registers, x16 137; 64x64x16 / 8x8
        # with 64 threads 164, x32 216). A deeper step can cost an SM its second resident block.
        words = -(-model.footprint(block) // 4)
        regs += math.ceil(STAGE_REGS * -(-words // max(1, threads)))
    bpu = occupancy(hw, threads, smem * stages, regs)
    est = estimate(model, hw, block, thread, threads, tensor_core, max(1, bpu), staged)
    padded = max((p / r - 1.0 for p, r in zip(model.padded_ranges(block), model.ranges)),
                  default=0.0)
    return Schedule(tuple(block), tuple(thread), threads, grid, tuple(padding), tensor_core,
                    smem, stages, regs, bpu, est, policy, round(padded, 4))


def fits(hw: Chip, s: Schedule) -> bool:
    return (s.threads <= hw.max_threads_per_block and s.smem_bytes <= hw.smem_per_block
            and s.regs_per_thread <= hw.max_regs_per_thread
            and s.regs_per_thread * s.threads <= hw.regs_per_block and s.blocks_per_unit >= 1)


ILP_ACCUMULATORS = 32   # accumulators per thread from which one warp per sub-partition suffices
STAGE_REGS = 1.5   # registers per staged word in a CUDA-core GEMM thread (see ``derive``)
TIE = 0.03    # estimates this close to the best are ties for the model


def _rank(schedules, topk: int) -> list[Schedule]:
    """Best first by estimated time, charged once more for its padding: a padded tile must
    beat an exact one by more than the padding it adds (Roller pads only when it must).
    Estimates within TIE of the best are a tie, broken by Roller's preferences: less padding,
    256 threads, then the larger block (fewer blocks to schedule)."""
    schedules = list(schedules)
    if not schedules:
        return []

    def cost(s):
        return s.estimate * (1.0 + s.eps)

    best = min(cost(s) for s in schedules)

    def key(s):
        tied = cost(s) <= best * (1 + TIE)
        pref = (s.eps, abs(math.log2(max(1, s.threads) / 256)), -math.prod(s.block_tile))
        return (0, pref, cost(s)) if tied else (1, (), cost(s))

    seen, out = set(), []
    for s in sorted(schedules, key=key):
        if s.key not in seen:
            seen.add(s.key)
            out.append(s)
    return out[:topk]


# ---------------------------------------------------------------------------------------------
# The reuse policy (matmul, convolution)


def _rstep_options(model: OpModel, hw: Chip, unit, eps: float) -> list[dict[int, int]]:
    """Reduction steps: window loops whole, the main loop transaction-aligned, others at unit."""
    main = main_reduction(model)
    if main is None:
        return [{}]
    base = {r: (model.ranges[r] if r != main and model.ranges[r] <= WINDOW else unit[r])
            for r in model.reduction}
    step = unit[main]
    contiguous = [o for o in model.inputs if model.contiguous_loop(o) == main]
    elem = min((o.elem_bytes for o in model.inputs), default=4)
    if contiguous:
        step = math.lcm(step, max(1, hw.transaction_bytes // min(o.elem_bytes
                                                                 for o in contiguous)))
    cap = max(step, hw.line_bytes // elem)
    rng = model.ranges[main]
    options = []
    s = step
    while s <= cap:
        if is_padding_ok(rng, s, eps) and s < 2 * rng:
            options.append(s)
        s *= 2
    if rng <= cap and rng % unit[main] == 0 and rng not in options:
        options.append(rng)            # the whole reduction in one step
    options = sorted(set(options))[-3:]
    return [{**base, main: s} for s in options]


def _with_reduction(tile, steps: dict[int, int]):
    return tuple(steps.get(k, v) for k, v in enumerate(tile))


def _transaction_aligned(model: OpModel, hw: Chip, block) -> bool:
    """Rule 2: the contiguous dimension of every operand indexed by one parallel loop is a
    multiple of the transaction, or covers the whole dimension."""
    for operand in model.operands:
        if not operand.dims or len(operand.dims[-1].terms) != 1:
            continue
        loop = operand.dims[-1].terms[0][0]
        if model.is_reduction[loop]:
            continue
        ext = min(block[loop], model.ranges[loop])
        if ext < model.ranges[loop] and (ext * operand.elem_bytes) % hw.transaction_bytes:
            return False
    return True


def _thread_tiles(model: OpModel, hw: Chip, unit, tensor_core: bool) -> list[tuple]:
    """Grow the register (warp) tile by reuse score until compute-bound against shared memory
    or out of registers; return the path, smallest first."""
    dtype = model.inputs[0].dtype
    threshold = hw.peak(dtype, tensor_core) / hw.smem_bandwidth
    batch = batch_loops(model)
    order = tuple(p for p in _inner_first(model.parallel, model.outputs[0]) if p not in batch)
    tile = list(unit)

    def regs(t):
        return register_usage(model, hw, t, tensor_core, unit)

    def smem_bytes(t):
        return model.footprint(t)

    def bound(t):
        return model.flops(t) >= threshold * max(1, smem_bytes(t))

    def accumulators(t):
        return math.prod(t[p] for p in model.parallel)

    path = [tuple(tile)]
    while not bound(tile) or accumulators(tile) < hw.min_accumulators:
        best, best_score = None, -1.0
        q_now, r_now = model.traffic(tile), regs(tile)
        for loop in order:
            cover = -(-model.ranges[loop] // unit[loop]) * unit[loop]
            if tile[loop] * 2 > cover:
                continue
            grown = list(tile)
            grown[loop] *= 2
            r = regs(grown)
            if r - hw.reg_overhead > hw.reg_tile_budget:
                continue
            score = (q_now - model.traffic(grown)) / max(1, r - r_now)
            if score > best_score:
                best, best_score = grown, score
        if best is None:
            break
        tile = best
        path.append(tuple(tile))
    return path


def _block_options(model: OpModel, loop: int, base: int, eps: float) -> list[int]:
    """Block extents along ``loop`` for a register tile of ``base``: power-of-two multiples
    and the whole (padded) extent, within the padding tolerance."""
    rng = model.ranges[loop]
    cover = -(-rng // base) * base
    opts = {base * m for m in BLOCK_MULTIPLES if base * m <= cover}
    opts.add(cover)
    return sorted(o for o in opts if is_padding_ok(rng, o, eps))


def _block_tiles(model: OpModel, hw: Chip, thread, steps: dict[int, int],
                 tensor_core: bool, eps: float, unit) -> tuple[list[tuple], bool]:
    """Grow the block tile from the register tile by reuse score while it fits (a depth-first
    search, best score first, as in Roller); every aligned tile met is a candidate (the last
    one visited when none is aligned). Returns the candidates and whether they are aligned."""
    block = list(_with_reduction(thread, steps))
    batch = batch_loops(model)
    options = {p: [thread[p]] if p in batch else _block_options(model, p, thread[p], eps)
               for p in model.parallel}
    if any(not options[p] or options[p][0] != thread[p] for p in model.parallel):
        return [], False
    lanes_multiple = hw.sub_partitions if tensor_core else hw.peak_threads_multiple
    threshold = hw.peak(model.inputs[0].dtype, tensor_core) / hw.l2_bandwidth
    regs = register_usage(model, hw, thread, tensor_core, unit)
    warp = hw.mma_warp_size if tensor_core else 1
    order = _inner_first(model.parallel, model.outputs[0])

    def lanes(b):
        return math.prod(b[p] // thread[p] for p in model.parallel)

    def ok(b):
        threads = lanes(b) * warp
        return (threads <= hw.max_threads_per_block and regs * threads <= hw.regs_per_block
                and model.footprint(b) * hw.pipeline_stages <= hw.smem_per_block)

    def aligned(b):
        return lanes(b) % lanes_multiple == 0 and _transaction_aligned(model, hw, b)

    found: dict[tuple, None] = {}     # insertion-ordered set of candidates
    visited: set[tuple] = set()
    last = [tuple(block)]

    def bound(b) -> bool:
        padded = model.padded_ranges(b)
        full = tuple(padded[k] if model.is_reduction[k] else b[k] for k in range(model.num_loops))
        return model.flops(full) >= threshold * model.traffic(b, space=full)

    def enlarge(b: tuple) -> None:
        """Roller's DFS: children in order of reuse score; stop below an aligned tile that is
        compute-bound against L2; stop the search once enough candidates are found."""
        if b in visited or len(visited) >= DFS_NODES or len(found) >= DFS_FOUND:
            return
        visited.add(b)
        last[0] = b
        if aligned(b):
            found[b] = None
            # Roller stops at an aligned tile that is compute-bound against L2. A CUDA-core
            # block stops there only once it has 2 x warp x sub-partitions threads (Roller's
            # preferred 256): fp32 4096^3 measured 0.79 of cuBLAS with 128x128 / 256 threads
            # against 0.60 with the L2-bound 64x128 / 128 threads (NOTES.md).
            if bound(b) and (tensor_core or lanes(b) >= 2 * lanes_multiple):
                return
        q_now, f_now = model.traffic(b), model.footprint(b)
        children = []
        for rank, p in enumerate(order):
            bigger = [o for o in options[p] if o > b[p]]
            if not bigger:
                continue
            grown = b[:p] + (bigger[0],) + b[p + 1:]
            if ok(grown):
                score = (q_now - model.traffic(grown)) / max(1, model.footprint(grown) - f_now)
                children.append((-score, rank, grown))
        for _, _, grown in sorted(children):
            enlarge(grown)

    enlarge(tuple(block))
    if found:
        return list(found), True
    # Capacity-bound and unaligned: the shrink or align step fixes it.
    return ([last[0]] if ok(last[0]) else []), False


def _shrink(model: OpModel, hw: Chip, block, thread, unit, tensor_core: bool,
            eps: float) -> tuple[tuple, tuple]:
    """Roller's try_shrink: halve the block tile, lowest reuse first, until the grid fills the
    SMs, but never below a block that can hold a full set of sub-partitions (threads, or warps
    with tensor cores: unit tiles of its parallel loops times the steps of its main reduction
    they may share); then restore that full set with more threads per block (smaller register
    tiles, then threads cooperating on the main reduction). An operator too small to fill the
    SMs with such blocks keeps fewer of them."""
    block, thread = list(block), list(thread)
    lanes_multiple = hw.sub_partitions if tensor_core else hw.peak_threads_multiple
    main = main_reduction(model)

    def capacity(b) -> int:
        lanes = math.prod(b[p] // unit[p] for p in model.parallel)
        if main is None:
            return lanes
        steps = b[main] // unit[main]
        return lanes * (steps & -steps)     # halving a step splits it only while it is even

    while model.num_tiles(block) < hw.num_units:
        best, best_cost = None, math.inf
        q_now, f_now = model.traffic(block), model.footprint(block)
        for p in model.parallel:
            half = block[p] // 2
            if block[p] % 2 or half < unit[p] or half % unit[p] or \
                    not is_padding_ok(model.ranges[p], half, max(eps, 0.2)):
                continue
            if capacity(block[:p] + [half] + block[p + 1:]) < lanes_multiple:
                continue
            smaller = list(block)
            smaller[p] = half
            cost = (model.traffic(smaller) - q_now) / max(1, f_now - model.footprint(smaller))
            if cost < best_cost:
                best, best_cost = p, cost
        if best is None:
            break
        block[best] //= 2
        if block[best] % thread[best]:
            thread[best] = math.gcd(block[best], thread[best])
    return tuple(block), _align_lanes(model, hw, block, thread, unit, tensor_core)


def _align_lanes(model: OpModel, hw: Chip, block, thread, unit, tensor_core: bool) -> tuple:
    """Rule 1 for a block that cannot grow into it: more threads (or warps) per block until
    they fill the sub-partitions, by halving register tiles (innermost loop first), then by
    threads cooperating on the main reduction."""
    block, thread = list(block), list(thread)
    lanes_multiple = hw.sub_partitions if tensor_core else hw.peak_threads_multiple
    lanes = math.prod(b // t for b, t in zip(block, thread))
    need = lanes_multiple // math.gcd(lanes, lanes_multiple)
    for p in _inner_first(model.parallel, model.outputs[0]):
        while need > 1 and thread[p] % 2 == 0 and (thread[p] // 2) % unit[p] == 0 \
                and thread[p] // 2 >= 1:
            thread[p] //= 2
            need //= 2
    main = main_reduction(model)
    while need > 1 and main is not None and thread[main] % 2 == 0 \
            and (thread[main] // 2) % unit[main] == 0:
        thread[main] //= 2
        need //= 2
    return tuple(thread)


def _reuse_policy(model: OpModel, hw: Chip, topk: int) -> list[Schedule]:
    wgmma = _warpgroup_policy(model, hw, topk) if warpgroup_target(hw) else []
    if len(wgmma) >= topk:
        return wgmma
    rest = [s for s in _general_reuse_policy(model, hw, topk)
            if s.key not in {w.key for w in wgmma}]
    return (wgmma + rest)[:topk]


def _general_reuse_policy(model: OpModel, hw: Chip, topk: int) -> list[Schedule]:
    candidates: dict = {}
    for tensor_core in (True, False):
        for eps in EPS_STEPS:
            unit = tensor_core_unit(model, hw, eps) if tensor_core else _scalar_unit(model, hw)
            if unit is None:
                continue
            rsteps = _rstep_options(model, hw, unit, eps)
            if tensor_core:
                k_loops = gemm_roles(model).k
                rsteps = [r for r in rsteps
                          if math.prod(r[k] for k in k_loops) in (16, 32)
                          or math.prod(r[k] for k in k_loops) % 64 == 0]
            if not rsteps:
                continue
            # The largest register tiles first; smaller ones until two gave aligned blocks.
            aligned_threads = 0
            for thread in reversed(_thread_tiles(model, hw, unit, tensor_core)):
                blocks, aligned = _block_tiles(model, hw, thread, rsteps[0], tensor_core, eps,
                                               unit)
                for block in blocks:
                    for steps in rsteps:
                        _add_reuse(candidates, model, hw, block, thread, steps, tensor_core,
                                   eps, unit)
                aligned_threads += aligned
                if aligned_threads >= 2:
                    break
            aligned = [s for s in candidates.values()
                       if s.threads % hw.peak_threads_multiple == 0
                       or fills_sub_partitions(model, hw, s)]
            # Pad more only while no block has a full set of sub-partitions (33 columns).
            if len(candidates) >= topk and eps >= 0.2 and aligned:
                break
        if candidates:
            break     # tensor cores when they apply; CUDA cores otherwise
    return _rank(aligned or candidates.values(), topk)


def tensor_core_block_ok(model: OpModel, block) -> bool:
    """Tensor-core block shapes: the block's extent along M and along N, and its reduction step
    (each a product over the loops of that GEMM role), are 16, 32 or a multiple of 64: a Hopper
    warp group's wgmma tile is 64 rows, and warp tiles of 16 or 32 make up the smaller blocks."""
    roles = gemm_roles(model)
    for loops in (roles.m, roles.n, roles.k):
        extent = math.prod(block[x] for x in loops)
        if extent not in (16, 32) and extent % 64:
            return False
    return True


def _add_reuse(candidates, model, hw, block, thread, steps, tensor_core, eps, unit):
    block = _with_reduction(block, steps)
    thread = _with_reduction(thread, steps)
    if model.num_tiles(block) < hw.num_units:
        block, aligned = _shrink(model, hw, block, thread, unit, tensor_core, eps)
    else:
        aligned = _align_lanes(model, hw, block, thread, unit, tensor_core)
    if tensor_core and not tensor_core_block_ok(model, block):
        return
    if model.footprint(block) * hw.pipeline_stages > hw.smem_per_block:
        return
    threads = [aligned]
    # CUDA-core tiles may keep their register tile with fewer threads than a full set of
    # sub-partitions when several blocks are resident per SM (``fills_sub_partitions``): the
    # 8x8 tile with 64 threads beat the 8x4 one with 128 on fp32 1024^3 (NOTES.md: 0.78 / 0.71).
    own = tuple(math.gcd(b, t) for b, t in zip(block, thread))
    if not tensor_core and hw.kind != "cpu" and own != tuple(aligned):
        threads.append(own)
    for th in threads:
        key = (tuple(block), tuple(th), tensor_core)
        if key in candidates:
            continue
        s = derive(model, hw, block, th, tensor_core, policy="reuse", unit=unit)
        if fits(hw, s) and (th is aligned or fills_sub_partitions(model, hw, s)):
            candidates[key] = s


def fills_sub_partitions(model: OpModel, hw: Chip, s: Schedule) -> bool:
    """Roller's execution-unit rule per SM rather than per block: whole warps, and the blocks
    the grid gives each SM (as many as are resident) hold ``warp x sub_partitions`` threads
    together, so every warp scheduler has a warp (two resident blocks of 64 threads do what
    one of 128 does)."""
    if s.threads % hw.warp_size or s.threads % hw.peak_threads_multiple == 0:
        return s.threads % hw.peak_threads_multiple == 0
    per_unit = max(1, round(math.prod(s.grid) / hw.num_units))     # what most SMs get
    return s.threads * min(s.blocks_per_unit, per_unit) >= hw.peak_threads_multiple


# ---------------------------------------------------------------------------------------------
# Hopper warpgroup MMA (wgmma): tensor-core tiles as the sm_90 lowering builds them
#
# Calibrated against the H100 measurements in bench/gemm/NOTES.md ("Final run", run 4):
# the schedules Roller built with mma.sync-style warp tiles ran at 0.53-0.57 of cuBLAS/cuDNN
# where hand-picked wgmma tiles reached 0.73-1.36. The lowering (lowering/gemm.py
# ``_tc_schedule``) uses wgmma on sm_90 when the tile's GEMM rows (its operand A: the matmul's
# M; a convolution's filters, gemm_problem.py binds the filter to A) are a multiple of 64 per
# warpgroup and the threads are whole warpgroups; otherwise it falls back to mma.sync. So on a
# warpgroup-MMA target the policy builds its tensor-core candidates in the GEMM's terms:
#
# * a warpgroup is 4 warps, one per sub-partition (``warp x sub_partitions`` = 128 threads: one
#   warpgroup alone already fills Roller's execution-unit rule); its wgmma tile is 64 rows (per
#   instruction) by up to 256 columns, accumulators in its registers;
# * a block has the *fewest* warpgroups whose accumulators (plus a register-staged gather) fit
#   the register-tile budget: 128x256 -> 2 warpgroups of 64x256 (256 threads), 128x128 and
#   64x128 -> 1 (128 threads). More warpgroups add no tensor-core throughput (the four tensor
#   cores of an SM are already fed) and shrink each thread's registers: NOTES.md measured
#   128x256 with 512 threads (4 warpgroups of 64x128) at 0.53 against 0.73 with 256 threads on
#   8192x768x3072, and the 3x3 convolution at 0.57 with roller's 256-thread mma.sync tile
#   against 1.05 with one warpgroup of 64x128;
# * the block's registers (warpgroups x 128 threads x accumulators) must fit the register file:
#   this is what bounds the block at 128x256 / 256x128 (256x256 would need 4 warpgroups of 160
#   registers, more than 64K);
# * a convolution is configured as the implicit GEMM the lowering runs (``gemm_problem.py``):
#   rows = filters, columns = output pixels flattened over (n, oh, ow), K = (c, kh, kw)
#   flattened; the per-loop attributes hold boxes whose products are those extents (the
#   lowering reads the products only);
# * the reduction step is one 128-byte swizzled row of the operand (64 f16), what every
#   measured wgmma kernel used; shared-memory stages are the lowering's (4, 3 or 2 that fit; 2
#   for a register-staged gather);
# * the model: tensor-core compute at the dense wgmma rate, L2 and DRAM traffic of the GEMM,
#   shared-memory reads of the wgmma instructions (both operands come from shared memory, B is
#   read once per 64-row slab: a 64x256 warpgroup tile reads 20 % less per FLOP than a 128x128
#   one), the integer work of a register-staged im2col gather, and the per-step barrier.

WGMMA_ROWS = 64                      # rows of one wgmma instruction (PTX ISA, wgmma.mma_async)
WGMMA_MAX_COLS = 256                 # its largest N
WGMMA_BLOCK_ROWS = (64, 128, 256)
WGMMA_BLOCK_COLS = (16, 32, 64, 128, 256)
# runtime/targets.py takes 2/3 of the dense tensor peak as what mma.sync reaches on Hopper;
# wgmma reaches the dense peak's share: NOTES.md measured 561 TF/s (wgmma 128x256) against
# 386 TF/s (mma.sync 128x128) on 4096^3, a factor 1.45.
WGMMA_OVER_MMA = 1.5
# A register-staged im2col gather (a convolution window without aligned runs, gemm_tc.py
# ``uses_gather``) computes each element's address from (pixel, k): divisions into
# (n, oh, ow) and (c, kh, kw), bounds and the address, about 16 integer operations, at the
# INT32 rate (half the FP32 lanes on Hopper: 64 of 128 per SM). Model figure: it puts the 3x3
# convolution of NOTES.md at 55 us against 64 us measured, where the traffic model says 31 us.
GATHER_INT_OPS = 16


@dataclass(frozen=True)
class ImplicitGemm:
    """A two-input contraction in the terms of the GEMM lowering (rows x cols, K)."""

    rows: tuple[int, ...]      # loops of the lowering's A rows, innermost first
    cols: tuple[int, ...]      # loops of its B columns, innermost first
    k: tuple[int, ...]         # reduction loops, innermost first in the lowering's K order
    batch: tuple[int, ...]
    extents: tuple[int, int, int, int]    # R, C, K, batch
    gathered: bool             # B is an im2col gather staged through registers
    elem: int                  # bytes per input element


def warpgroup_target(hw: Chip) -> bool:
    return hw.wgmma and hw.mma_shape is not None


def implicit_gemm(model: OpModel) -> ImplicitGemm | None:
    """The op as the GEMM lowering sees it (None unless an f16/bf16 two-input contraction).
    A convolution is recognised by its windowed input (an index that adds two loops): that
    input is the gathered B, the other (the filter) is A, as in ``gemm_problem.py``."""
    roles = gemm_roles(model)
    types = {o.dtype for o in model.inputs}
    if roles is None or len(types) != 1 or next(iter(types)) not in ("f16", "bf16"):
        return None
    first, second = model.inputs
    windowed = [o for o in (first, second) if any(len(d.terms) > 1 for d in o.dims)]
    ranges = model.ranges
    if windowed:
        image = windowed[0]
        if image is not first:
            return None
        rows, cols = roles.n, roles.m
        k = _inner_first(roles.k, second)          # (c, kh, kw): kw innermost
        gathered = any(ranges[t[0]] > 1 and model.is_reduction[t[0]]
                       for d in image.dims if len(d.terms) > 1 for t in d.terms) or \
            any(abs(c) > 1 for d in image.dims if len(d.terms) > 1 for _, c in d.terms)
    else:
        rows, cols, k = roles.m, roles.n, roles.k
        gathered = False
    ext = tuple(math.prod(ranges[x] for x in loops) for loops in (rows, cols, k, roles.batch))
    return ImplicitGemm(rows, cols, k, roles.batch, ext, gathered, first.elem_bytes)


def _box(loops, product: int, extents) -> dict[int, int]:
    """Per-loop extents whose product is ``product``: innermost loop first, each taking the
    largest factor that divides its extent (exact tiles); what is left goes to the innermost
    loop (a padded box: the lowering reads only the product, a flattened range)."""
    out, rest = {}, product
    for loop in loops:
        g = math.gcd(rest, extents[loop])
        out[loop] = g
        rest //= g
    if rest > 1:
        out[loops[0]] *= rest
    return out


def _wgmma_layout(rows: int, cols: int, warpgroups: int):
    """The lowering's warpgroup grid (``gemm._wgmma_split``): the first (wg_m, wg_n) by wg_n
    whose warpgroup tile is whole 64-row slabs, at most 256 columns, 128 accumulators."""
    for wg_n in range(1, warpgroups + 1):
        if warpgroups % wg_n or cols % wg_n:
            continue
        wg_m = warpgroups // wg_n
        tn = cols // wg_n
        if rows % (WGMMA_ROWS * wg_m) or tn > WGMMA_MAX_COLS or tn % 8:
            continue
        if (rows // wg_m) * tn // 128 > 128:
            continue
        return wg_m, wg_n
    return None


def _wgmma_schedule(model: OpModel, hw: Chip, g: ImplicitGemm, br: int, bc: int,
                    eps: float):
    """One wgmma candidate of ``br`` x ``bc`` (None when no warpgroup count fits), and its
    padding in GEMM terms."""
    R, C, K, batch = g.extents
    # The step: one 128-byte row (64 f16) or the largest of 32, 16 that pads K within eps.
    bk = next((s for s in (128 // g.elem, 32, 16) if is_padding_ok(K, s, eps)), None)
    if bk is None:
        return None
    warp = hw.warp_size * hw.sub_partitions
    layout = None
    for warpgroups in (1, 2, 4, 8):
        threads = warpgroups * warp
        if threads > hw.max_threads_per_block:
            break
        layout = _wgmma_layout(br, bc, warpgroups)
        if layout is None:
            continue
        acc = br * bc // threads                              # f32 accumulators per thread
        gather = -(-bc * bk * g.elem // (4 * threads)) if g.gathered else 0
        regs = acc + gather + hw.reg_overhead
        if acc + gather <= hw.reg_tile_budget and regs <= hw.max_regs_per_thread \
                and regs * threads <= hw.regs_per_block:
            break
        layout = None
    if layout is None:
        return None
    wg_m, wg_n = layout
    stage = (br + bc) * bk * g.elem
    for stages in ((2,) if g.gathered else (4, 3, 2)):
        if stage * stages <= hw.smem_per_block:
            break
    else:
        return None
    # Per-loop attributes: boxes of the GEMM extents (warp tile: a warp holds 16 rows of each
    # 64-row slab of its warpgroup's tile, all of its columns).
    block = [1] * model.num_loops
    thread = [1] * model.num_loops
    k_box = _box(g.k, bk, model.ranges)
    for loops, extent, per_warp in ((g.rows, br, br // wg_m // 4), (g.cols, bc, bc // wg_n)):
        box = _box(loops, extent, model.ranges)
        sub = _box(loops, per_warp, box)
        for x in loops:
            block[x], thread[x] = box[x], sub[x]
    for x in g.k:
        block[x] = thread[x] = k_box[x]
    for x in model.reduction:
        if x not in g.k:
            block[x] = thread[x] = model.ranges[x]
    block, thread = tuple(block), tuple(thread)
    # The micro model, in GEMM terms.
    tiles_r, tiles_c, steps = -(-R // br), -(-C // bc), -(-K // bk)
    grid_blocks = tiles_r * tiles_c * batch
    per_unit = -(-grid_blocks // hw.num_units)
    active = min(grid_blocks, hw.num_units)
    smem = stage * stages
    bpu = occupancy(hw, threads, smem, regs)
    resident = max(1, min(bpu, per_unit))
    k_pad = steps * bk
    peak = hw.peak(model.inputs[0].dtype, True) * WGMMA_OVER_MMA
    t_compute = per_unit * 2 * br * bc * k_pad / (peak / hw.num_units)
    out_bytes = sum(o.bytes for o in model.outputs)
    l2 = grid_blocks * (br + bc) * k_pad * g.elem + out_bytes
    dram = model.compulsory_bytes()
    t_memory = max(l2 / (hw.l2_bandwidth * active / hw.num_units),
                   dram / min(hw.dram_bandwidth, active * hw.unit_bandwidth))
    rows_wg, cols_wg = br // wg_m, bc // wg_n
    smem_reads = wg_m * wg_n * (rows_wg // WGMMA_ROWS) * (WGMMA_ROWS + cols_wg) * k_pad * g.elem
    t_smem = per_unit * smem_reads / (hw.smem_bandwidth / hw.num_units)
    t_gather = 0.0
    if g.gathered:
        int_rate = hw.peak("f32") / 4          # FMA = 2 FLOP; INT32 lanes = half of FP32's
        t_gather = per_unit * bc * k_pad * GATHER_INT_OPS / (int_rate / hw.num_units)
    step_seconds = 2 * br * bc * bk / (peak / hw.num_units)
    t_sync = -(-per_unit // resident) * steps * exposed_sync(hw, resident, step_seconds)
    est = max(t_compute, t_memory, t_smem, t_gather) + t_sync + hw.launch_seconds
    padding = bank_padding(model, hw, block, True)
    grid = tuple(-(-model.ranges[p] // block[p]) for p in model.parallel)
    per_loop_eps = max((p / r - 1.0 for p, r in zip(model.padded_ranges(block), model.ranges)),
                       default=0.0)
    gemm_eps = max(tiles_r * br / R, tiles_c * bc / C, k_pad / K) - 1.0
    s = Schedule(block, thread, threads, grid, padding, True, stage, stages, regs, bpu, est,
                 "reuse", round(per_loop_eps, 4))
    per_flop = smem_reads / (2 * br * bc * k_pad)
    return s, gemm_eps, per_flop


def grid_short(model: OpModel, hw: Chip, s: Schedule) -> bool:
    """Whether the schedule's blocks leave SMs idle."""
    return math.prod(-(-model.ranges[p] // s.block_tile[p]) for p in model.parallel) \
        < hw.num_units


def _warpgroup_policy(model: OpModel, hw: Chip, topk: int) -> list[Schedule]:
    """wgmma candidates (module docstring of this section), best first; [] when the op has
    none within a padding of 0.2 (rows not a multiple of 64 without more padding, e.g. M=16:
    then the mma.sync-style tiles of the general path apply)."""
    g = implicit_gemm(model)
    if g is None or tensor_core_unit(model, hw, 0.2) is None:
        return []
    R, C, K, _ = g.extents
    found: dict = {}
    for eps in (0.0, 0.2):
        for br in WGMMA_BLOCK_ROWS:
            if not is_padding_ok(R, br, eps):
                continue
            for bc in WGMMA_BLOCK_COLS:
                if not is_padding_ok(C, bc, eps):
                    continue
                made = _wgmma_schedule(model, hw, g, br, bc, eps)
                if made is not None and made[0].key not in found and fits(hw, made[0]):
                    found[made[0].key] = made
    if not found:
        return []
    cost = {key: s.estimate * (1.0 + eps) for key, (s, eps, _) in found.items()}
    best = min(cost.values())

    def rank(key):
        s, eps, per_flop = found[key]
        if cost[key] > best * (1 + TIE):
            return (1, (), cost[key])
        # Ties: a grid that fills every SM (Roller's scale-out rule), fewer shared-memory bytes per FLOP (the widest warpgroup tiles), less padding
        # (already charged in the cost), fewer warpgroups (blocks of one warpgroup are
        # independent: one's barrier does not stall the other), then the larger block.
        return (0, (grid_short(model, hw, s), round(per_flop, 6), round(eps, 3), s.threads,
                    -math.prod(s.block_tile[x] for x in model.parallel)), cost[key])

    return [found[key][0] for key in sorted(found, key=rank)][:topk]


# ---------------------------------------------------------------------------------------------
# The plain policy (no reuse: elementwise, pooling, depthwise, reductions)


def _plain_policy(model: OpModel, hw: Chip, topk: int) -> list[Schedule]:
    tensors = [o for o in model.inputs if o.dims]
    main = max(tensors, key=lambda o: o.bytes) if tensors else model.outputs[0]
    elem = max(o.elem_bytes for o in model.operands)
    vec = max(1, hw.vector_bytes // elem)
    layout = _PlainLayout(model, hw, main)
    counts = [t for t in (32, 64, 128, 256, 512, 1024) if t <= hw.max_threads_per_block]
    if hw.warp_size == 1:
        counts = [1, 4, 16, 64, 256]
    sector = max(1, hw.transaction_bytes // model.outputs[0].elem_bytes)
    per_threads = [(vec, sector), (2 * vec, sector), (4 * vec, sector)]
    # An op too small to give every SM a full set of sub-partitions with a vector (and, on the
    # store side, a transaction) per thread may take fewer elements per thread instead, and
    # so more threads per block.
    points = math.prod(model.ranges[p] for p in model.parallel)
    if layout.row is not None:
        points *= model.ranges[layout.row]
    if points < vec * hw.peak_threads_multiple * hw.num_units:
        per_threads = [(p, p) for p in sorted({1, max(1, vec // 2)}) if p < vec] + per_threads
    goal = plain_thread_goal(model, hw, layout)
    candidates: dict = {}
    tried: set = set()
    for eps in EPS_STEPS:
        for threads in counts:
            for per_thread, store in per_threads:
                for exact in (False, True):
                    tiles = _plain_tile(model, hw, layout, threads, per_thread, store, eps,
                                        exact)
                    key = tiles and (tiles[0], tiles[1], False)
                    if tiles is None or key in candidates or key in tried:
                        continue
                    tried.add(key)
                    s = derive(model, hw, tiles[0], tiles[1], False, policy="plain")
                    if fits(hw, s):
                        candidates[key] = s
        good = [s for s in candidates.values() if _whole_warps(s, hw, goal)]
        if eps >= 0.2 and len(candidates) >= topk and good:
            break
    warps = [s for s in candidates.values() if s.threads % hw.warp_size == 0]
    # what the SIMT lowering launches: whole warps, or a power of two below one (issue 18:
    # interpolate and adaptive pooling got 36 or 54 threads, refused by the lowering)
    launchable = [s for s in candidates.values() if s.threads & (s.threads - 1) == 0]
    return _rank(good or warps or launchable or candidates.values(), topk)


def plain_thread_goal(model: OpModel, hw: Chip, layout: "_PlainLayout | None" = None) -> int:
    """Threads a block of the plain policy should have: a full set of sub-partitions (warp x
    sub-partitions), or, for an op with fewer parallel elements (row elements included, which
    threads share), the largest power of two of them; 0 when the op has less than a warp of
    work (then a power of two below the warp will do)."""
    if layout is None:
        tensors = [o for o in model.inputs if o.dims]
        layout = _PlainLayout(model, hw, max(tensors, key=lambda o: o.bytes) if tensors
                              else model.outputs[0])
    points = math.prod(model.ranges[p] for p in model.parallel)
    if layout.row is not None:
        points *= model.ranges[layout.row]
    if points < hw.warp_size:
        return 0
    return min(hw.peak_threads_multiple, _pow2_at_most(points))


def _whole_warps(s: Schedule, hw: Chip, goal: int) -> bool:
    """Whole warps, at least ``goal`` threads; for an op under a warp, a power of two."""
    if goal == 0:
        return s.threads & (s.threads - 1) == 0
    return s.threads % hw.warp_size == 0 and s.threads >= goal


@dataclass(frozen=True)
class _PlainLayout:
    """Which loops the plain policy lays threads along, innermost first."""

    vector: int | None       # parallel loop contiguous in the main input: vector loads
    row: int | None          # reduction loop contiguous in the main input: a row reduction
    store: int | None        # the output's contiguous loop when it differs from ``vector``
    order: tuple[int, ...]   # loops that take threads, innermost first

    def __init__(self, model: OpModel, hw: Chip, main):
        inner_in = model.contiguous_loop(main)
        inner_out = model.contiguous_loop(model.outputs[0])
        vector = inner_in if inner_in is not None and not model.is_reduction[inner_in] else None
        row = inner_in if inner_in is not None and model.is_reduction[inner_in] else None
        store = inner_out if vector is not None and inner_out not in (None, vector) else None
        rest = [p for p in _inner_first(model.parallel, model.outputs[0])
                if p not in (vector, store)]
        order = tuple(x for x in (row, vector, store) if x is not None) + tuple(rest)
        object.__setattr__(self, "vector", vector)
        object.__setattr__(self, "row", row)
        object.__setattr__(self, "store", store)
        object.__setattr__(self, "order", order)


def _pow2_at_most(n: int) -> int:
    return 1 << (max(1, n).bit_length() - 1)


def _fit_pow2(extent: int, want: int, eps: float) -> int:
    """The largest power of two <= want whose padding of ``extent`` is within eps (1 at least)."""
    t = _pow2_at_most(min(want, extent))
    while t > 1 and not is_padding_ok(extent, t, eps):
        t //= 2
    return t


def _plain_tile(model: OpModel, hw: Chip, layout: _PlainLayout, threads: int,
                per_thread: int, store: int, eps: float, exact: bool):
    """Threads laid out along ``layout.order``, a power of two per loop, or (``exact``) as many
    as cover the loop when that fits; ``per_thread`` elements of the vector loop (and of a row
    reduction) and ``store`` of the output's contiguous loop per thread. None if no tile fits
    the padding rule."""
    ranges = model.ranges
    thread = [1] * model.num_loops
    block = [1] * model.num_loops
    serial = None           # a long non-contiguous reduction, reduced serially in steps
    if layout.vector is not None:
        thread[layout.vector] = _fit_pow2(ranges[layout.vector], per_thread, eps)
    if layout.store is not None and not model.is_reduction[layout.store]:
        thread[layout.store] = _fit_pow2(ranges[layout.store], store, eps)
    for r in model.reduction:
        if r == layout.row:
            thread[r] = min(ranges[r], per_thread)
        elif ranges[r] <= WINDOW:
            thread[r] = ranges[r]
        else:
            thread[r] = _fit_pow2(ranges[r], 8, eps)
            serial = r if serial is None else serial
    if not _fit_registers(model, hw, layout, thread):
        return None
    for r in model.reduction:
        block[r] = thread[r]
    budget = threads
    for loop in layout.order:
        lanes = min(budget, _pow2_at_most(-(-ranges[loop] // thread[loop])))
        while lanes > 1 and not is_padding_ok(ranges[loop], thread[loop] * lanes, eps):
            lanes //= 2
        cover = -(-ranges[loop] // thread[loop])
        if exact and lanes < cover <= budget and \
                is_padding_ok(ranges[loop], thread[loop] * cover, eps):
            lanes = cover           # the whole extent, e.g. 56 = 14 lanes x 4
        if not is_padding_ok(ranges[loop], thread[loop] * lanes, eps):
            return None
        block[loop] = thread[loop] * lanes
        budget //= lanes
    if budget > 1 and serial is not None:   # threads left over cooperate on the reduction
        lanes = min(budget, _pow2_at_most(-(-ranges[serial] // thread[serial])))
        block[serial] = thread[serial] * lanes
    _plain_shrink(model, hw, layout, block, thread, serial)
    return tuple(block), tuple(thread)


def _plain_shrink(model: OpModel, hw: Chip, layout: _PlainLayout, block, thread,
                  serial) -> None:
    """Smaller blocks until the grid fills the SMs (Roller's scale-out for small operators):
    first fewer lanes per block, outermost loops first, while a full set of sub-partitions
    (``warp x sub_partitions`` threads) stays busy, the lanes freed going to a serial
    reduction when there is one (threads cooperate on it, and their number stays); then less
    work per thread. The contiguous loops keep at least one memory transaction per block
    (rule 2). An operator too small to fill the SMs with such blocks keeps fewer blocks: a
    block of a few threads leaves most lanes of its warp, and three of the four schedulers of
    its SM, idle."""

    def minimum(loop):
        if loop in (layout.vector, layout.store):
            elem = model.outputs[0].elem_bytes if loop == layout.store else \
                max(o.elem_bytes for o in model.inputs) if model.inputs else 4
            return min(model.ranges[loop], max(1, hw.transaction_bytes // elem))
        return 1

    def lanes():
        return math.prod(b // t for b, t in zip(block, thread))

    def serial_room():
        return serial is not None and block[serial] * 2 <= \
            -(-model.ranges[serial] // thread[serial]) * thread[serial]

    floor = hw.peak_threads_multiple
    parallel_order = [p for p in layout.order if not model.is_reduction[p]]
    while model.num_tiles(block) < hw.num_units:
        for p in reversed(parallel_order):
            if (block[p] // thread[p]) % 2 == 0 and block[p] // 2 >= minimum(p) \
                    and (serial_room() or lanes() // 2 >= floor):
                block[p] //= 2
                if serial_room():
                    block[serial] *= 2
                break
        else:
            for p in parallel_order:
                if thread[p] % 2 == 0 and block[p] // 2 >= minimum(p):
                    thread[p] //= 2
                    block[p] //= 2
                    break
            else:
                return


def _fit_registers(model: OpModel, hw: Chip, layout: _PlainLayout, thread) -> bool:
    """Halve the thread tile (store loop first, then the vector loop, then the others) until
    its values fit the register tile budget; False if one element per loop does not fit."""
    order = [x for x in (layout.store, layout.vector) if x is not None]
    order += [k for k in range(model.num_loops) if k not in order and not model.is_reduction[k]]
    while register_usage(model, hw, thread, False) - hw.reg_overhead > hw.reg_tile_budget:
        for k in order:
            if thread[k] > 1:
                thread[k] = -(-thread[k] // 2)
                break
        else:
            return False
    return True
