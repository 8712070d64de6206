"""Lowering of configured GEMM-shaped tiles (matmul, batch_matmul, conv2d) to GPU kernels.

``build_gemm_kernel(tile, target)`` turns one configured ``quartet.tile`` (Roller's rTile with its
rProgram, OSDI'22) into a new module holding one ``func.func`` whose memref arguments are the
tile's inputs (in order of first use) and then its result, and whose body is one ``gpu.launch``:

* blocks: ``x`` over column tiles (N / block_tile[n]), ``y`` over row tiles (M / block_tile[m]),
  ``z`` over the batch; threads: the schedule's ``threads``;
* f16/bf16 tiles with ``tensor_core = true`` use the tensor cores (``gemm_tc.py``): Hopper
  ``wgmma`` for ``target = "sm_90"`` (the binary must then be built for ``sm_90a``: the function
  carries ``quartet.chip = "sm_90a"``) or ``mma.sync`` for ``sm_80``;
* other float tiles use f32 FMA thread tiles (``gemm_simt.py``);
* convolutions are implicit GEMMs (``gemm_problem.py``).

Schedule attributes read from the tile (``dialects/quartet.py``): ``block_tile`` (per root loop;
for reduction loops the reduction step, whose product over the K loops of a convolution is the
step in flattened (c, kh, kw); steps whose operand tiles do not fit shared memory twice are taken
in sub-steps), ``thread_tile`` (tensor cores: the per-warp tile along M/N used by ``mma.sync``,
and a reduction extent below the block's means warps share each step - split-K inside the block,
partial sums added in the epilogue; wgmma arranges its warpgroups itself; SIMT: the per-thread
register tile), ``threads``, ``smem_padding`` (SIMT: elements added to each shared-memory row;
tensor-core kernels use an XOR swizzle instead), ``tensor_core``. An optional ``stages`` integer
sets the shared-memory pipeline depth. A Welder-fused tile whose schedule describes its last,
element-wise op (no reduction step) keeps its parallel tiles when they form a GEMM schedule and
otherwise gets :func:`default_schedule` (the configurations measured fastest on the H100,
``bench/gemm/NOTES.md``); its tensor-core choice follows the operand types.

Convolution pixel tiles are contiguous ranges of the flattened (image, row, column) output
pixels, of the size the schedule's box (n x oh x ow) has.

The function carries ``quartet.shared_bytes`` (dynamic shared memory; above 48 KiB the host must
raise the kernel's limit), ``quartet.grid``, ``quartet.block``, ``quartet.chip`` (the chip the
binary must be built for) and ``quartet.engine``; each argument carries ``quartet.role``
(``input``/``output``), as ``lowering/binary.py`` reads them. ``supports(tile, target)``
returns True or a one-line reason; ``python -m quartet.lowering.gemm FILE --target T`` prints
the kernel module of every configured tile of FILE (the IR at the kernel stage).

Why not transform-dialect schedules: the parts that make these kernels fast - wgmma shared-memory
descriptors over a swizzled layout, a cp.async pipeline that keeps one wgmma group in flight,
register-staged im2col gathers, a staged coalesced epilogue - are not what upstream's tiling,
promotion and mapping produce, so the kernels are built directly from nvgpu/nvvm ops.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

from mlir import ir
from mlir.dialects import arith, func, gpu, memref

from quartet.dialects import linalg_info
from quartet.errors import QuartetError, location_of
from quartet.runtime import targets
from quartet.runtime.targets import Chip

from ..kernel import KernelArg, arg_attrs

from . import gemm_simt, gemm_tc, gemm_tma
from .gemm_ir import Emitter, flat_view, i32
from .gemm_problem import GemmProblem, analyze

MAX_GRID_YZ = 65535


@dataclass(frozen=True)
class Plan:
    """What will be built for a tile."""

    problem: GemmProblem
    engine: str                     # "wgmma_tma" | "wgmma" | "mma" | "simt"
    schedule: object                # gemm_tma.TmaSchedule | gemm_tc.TCSchedule | SimtSchedule
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    shared_bytes: int
    chip: str                       # what the binary must be built for


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def _tile_extents(tile, prob: GemmProblem, attr: list[int]) -> tuple[int, int, int | None]:
    """(M, N, K) extents of a per-loop schedule attribute in GEMM terms.

    The attribute has one entry per loop of the tile's root op: the contraction itself, or,
    for a tile whose last op is a fused element-wise epilogue, that op (its loops are the
    output's dimensions and carry no reduction step: K is then None)."""
    roles = prob.loop_roles
    if len(attr) == len(roles):
        get = dict(zip(roles, attr))
    elif len(attr) == len(prob.out_dims) and prob.epilogue.generics:
        get = dict(zip(prob.out_dims, attr))
    else:
        raise _Refuse(f"schedule has {len(attr)} entries for {len(roles)} loops")
    if get.get("b", 1) != 1:
        raise _Refuse("block_tile along the batch loop must be 1")
    if prob.kind == "conv2d":
        k = get["c"] * get["kh"] * get["kw"] if "c" in get else None
        return get["m"], get["n_img"] * get["oh"] * get["ow"], k
    return get["m"], get["n"], get.get("k")


class _Refuse(Exception):
    pass


#: (tile location, reason) of every tile whose schedule this lowering could not take and
#: replaced by :func:`default_schedule` (in this process)
SCHEDULE_OVERRIDES: list[tuple[str | None, str]] = []


def takes_chip(chip: Chip) -> bool:
    """Whether this lowering builds kernels for ``chip`` (NVIDIA chips with tensor cores)."""
    return chip.kind == "cuda" and chip.mma_shape is not None


def plan(tile, target, *, stages: int | None = None, engine: str | None = None) -> Plan:
    """Check the tile and its schedule; raise :class:`QuartetError` naming the op and reason.
    ``target`` is a :class:`~quartet.runtime.targets.Chip` or a target name."""
    with tile.operation.context, tile.operation.location:
        return _checked_plan(tile, targets.get(target), stages, engine)


def _checked_plan(tile, target, stages, engine) -> Plan:
    root_name = _root_name(tile)
    where = location_of(tile)
    if not takes_chip(target):
        raise QuartetError(f"the GEMM lowering has no kernels for {target.description}", where)
    prob = analyze(tile)
    if isinstance(prob, str):
        raise QuartetError(f"'{root_name}' is not supported by the GEMM lowering: {prob}", where)
    try:
        return _plan(tile, prob, target, stages, engine)
    except _Refuse as e:
        refused = str(e)
        if sum(1 for op in tile.computation if linalg_info.is_linalg(op)) < 2:
            raise QuartetError(f"'{root_name}' schedule not supported: {e}", where) from None
    # A fused tile (roller-fuse: the accumulator's fill, element-wise epilogues) whose schedule
    # is outside this lowering's repertoire (e.g. a thread tile that splits an f32 reduction)
    # has no other builder: build the lowering's own measured default instead of refusing.
    # Recorded, never silent. A lone contraction is refused (the SIMT builders take it).
    try:
        chosen = _build_plan(prob, target, *default_schedule(prob, target), engine, 1)
    except _Refuse as e:
        raise QuartetError(f"'{root_name}' schedule not supported: {refused} (and the "
                           f"lowering's default schedule: {e})", where) from None
    SCHEDULE_OVERRIDES.append((where, f"'{root_name}': {refused}"))
    return chosen


def _plan(tile, prob: GemmProblem, target: str, stages: int | None, force: str | None) -> Plan:
    bt, tt = tile.block_tile, tile.thread_tile
    if bt is None or tt is None or tile.threads is None:
        raise _Refuse("tile is not configured (needs block_tile, thread_tile, threads)")
    bm, bn, bk = _tile_extents(tile, prob, bt)
    wm, wn, wk = _tile_extents(tile, prob, tt)
    if stages is None and "stages" in tile.operation.attributes:
        stages = ir.IntegerAttr(tile.operation.attributes["stages"]).value
    tc = tile.tensor_core
    if bk is None:
        # The schedule describes the fused element-wise op (Welder's tile; the root is the last
        # linalg op), which has no reduction step and, from Roller, no tensor-core choice:
        # use it where it forms a GEMM schedule, else the lowering's own default.
        tc = _tensor_core_types(prob)
        try:
            return _build_plan(prob, target, bm, bn, 64 if tc else 16, wm, wn, tile.threads, tc,
                               tile.smem_padding, stages, force, 1)
        except _Refuse:
            d = default_schedule(prob, target)
            return _build_plan(prob, target, *d, force, 1)
    # Warps (threads) cooperating on the reduction: thread_tile's reduction extent divides the
    # block's; each takes a slice of every step and the partial sums are added at the end.
    split = 1
    if wk is not None and wk < bk:
        if bk % wk:
            raise _Refuse(f"thread tile reduction {wk} does not divide the step {bk}")
        split = bk // wk
    return _build_plan(prob, target, bm, bn, bk, wm, wn, tile.threads, tc, tile.smem_padding,
                       stages, force, split)


def _tensor_core_types(prob: GemmProblem) -> bool:
    return prob.a.dtype == prob.b.dtype and prob.a.dtype in ("f16", "bf16")


def default_schedule(prob: GemmProblem, target: Chip):
    """(bm, bn, bk, wm, wn, threads, tensor_core, padding, stages) for a problem: the
    configurations that measured best on the H100 (bench/gemm/NOTES.md)."""
    if _tensor_core_types(prob):
        if target.wgmma:
            if gemm_tc.uses_gather(prob):
                return (64 if prob.m <= 64 else 128), 128, 64, 64, 128, 128, True, None, None
            if prob.m <= 32:
                return 64, 32, 64, 64, 32, 128, True, None, 8
            if prob.m <= 64:
                return 64, 128, 64, 64, 128, 128, True, None, 4
            if prob.n >= 256 and prob.m >= 128:
                return 128, 256, 64, 64, 128, 256, True, None, 4
            return 128, 128, 64, 64, 64, 128, True, None, 4
        if prob.m <= 16:
            return 16, 64, 128, 16, 32, 64, True, None, 4
        return 128, 128, 32, 64, 64, 128, True, None, 4
    if prob.m >= 2048 and prob.n >= 2048:
        return 128, 128, 16, 8, 8, 256, False, (4, 4), None
    return 64, 64, 16, 8, 8, 64, False, (4, 4), None


def _build_plan(prob, target, bm, bn, bk, wm, wn, threads, tc, padding, stages, force,
                split) -> Plan:
    grid = (_ceil(prob.n, bn), _ceil(prob.m, bm), prob.batch)
    if grid[1] > MAX_GRID_YZ or grid[2] > MAX_GRID_YZ:
        raise _Refuse(f"grid {grid} exceeds the launch limits")
    if threads <= 0 or threads > target.max_threads_per_block or threads % target.warp_size:
        raise _Refuse(f"threads = {threads} must be a multiple of {target.warp_size} up to "
                      f"{target.max_threads_per_block}")
    limit = target.smem_per_block
    dtypes = {prob.a.dtype, prob.b.dtype}
    if tc:
        if not _tensor_core_types(prob):
            raise _Refuse(f"tensor cores take f16 or bf16 operands, got {sorted(dtypes)}")
        tma = _tma_plan(prob, target, bm, bn, stages, force, split)
        if tma is not None:
            return tma
        s, engine = _tc_schedule(prob, target, bm, bn, bk, wm, wn, threads, stages, limit, force,
                                 split)
        *_, total = gemm_tc.smem_plan(prob, s)
        chip = target.isa + "a" if engine == "wgmma" else target.isa
        return Plan(prob, engine, s, grid, (threads, 1, 1), total, chip)
    if split > 1:
        raise _Refuse("f32 thread tiles that split the reduction are not supported")
    s = gemm_simt.schedule(prob, bm, bn, bk, wm, wn, threads, padding, stages, limit)
    if isinstance(s, str):
        raise _Refuse(s)
    return Plan(prob, "simt", s, grid, (threads, 1, 1), gemm_simt.shared_bytes(prob, s),
                target.isa)


_WITHOUT_TMA = [0]


@contextlib.contextmanager
def without_tma():
    """GEMMs built inside keep the cp.async engines: the block programs of a persistent kernel's
    tasks (Rammer, Grinder), whose arguments are plain buffers and whose warps are not
    specialised (the TMA kernel takes tensor maps and a warpgroup layout of its own)."""
    _WITHOUT_TMA[0] += 1
    try:
        yield
    finally:
        _WITHOUT_TMA[0] -= 1


def tma_enabled() -> bool:
    """Whether TMA kernels may be chosen (``QUARTET_GEMM_TMA=0`` keeps the cp.async ones; so
    does :func:`without_tma`)."""
    return not _WITHOUT_TMA[0] and os.environ.get("QUARTET_GEMM_TMA", "1") != "0"


def _tma_plan(prob, target, bm, bn, stages, force, split) -> Plan | None:
    """The TMA warp-specialised kernel of a (bm, bn) tile (``gemm_tma.py``), or None when the
    chip, the operands or the tile shape are not ones it takes (the cp.async kernels then do).
    It stages K in 64-element steps whatever the schedule's step: any split of K computes the
    same sums."""
    if force not in (None, "wgmma_tma") or split != 1 or not (target.tma and target.wgmma):
        return None
    if force is None and not tma_enabled():
        return None
    if gemm_tma.refusal(prob) is not None:
        if force:
            raise _Refuse(gemm_tma.refusal(prob))
        return None
    s = gemm_tma.schedule(prob, target, bm, bn, 64, stages)
    if isinstance(s, str):
        if force:
            raise _Refuse(s)
        return None
    total = gemm_tma.layout(prob, s).total
    return Plan(prob, "wgmma_tma", s, (s.ctas, 1, 1), (s.threads, 1, 1), total,
                target.isa + "a")


def _tc_schedule(prob, target, bm, bn, bk, wm, wn, threads, stages, limit, force=None, split=1):
    for name, v in (("m", bm), ("n", bn)):
        if not (v in (16, 32) or v % 64 == 0):
            raise _Refuse(f"block tile along {name} = {v} must be 16, 32 or a multiple of 64")
    for name, op in (("A", prob.a), ("B", prob.b)):
        if op.kind == "im2col":
            continue                 # gathered through registers when cp.async cannot copy it
        if op.contiguous is None or op.granule < 2:
            raise _Refuse(f"operand {name} has no 4-byte aligned contiguous dimension")
    engine = "wgmma" if target.wgmma and force != "mma" and split == 1 else "mma"
    ws = _wgmma_split(prob, bm, bn, threads) if engine == "wgmma" else None
    if ws is None:
        engine = "mma"
    if engine == "mma":
        if wm % 16 or wn % 16 or bm % wm or bn % wn:
            raise _Refuse(f"warp tile {wm}x{wn} must divide the block tile {bm}x{bn} in "
                          f"multiples of 16")
        if threads != 32 * (bm // wm) * (bn // wn) * split:
            raise _Refuse(f"threads = {threads} but the warp tiles need "
                          f"{32 * (bm // wm) * (bn // wn) * split}")
    # The staged reduction step: the schedule's, or sub-steps of it when its operand tiles do
    # not fit (any split of K computes the same sums); each warp of a split takes a slice.
    steps = [x for x in [bk] + [x for x in (128, 64, 32, 16) if x < bk and bk % x == 0]
             if (x in (16, 32) or x % 64 == 0) and x % (16 * split) == 0]
    if not steps:
        raise _Refuse(f"reduction step {bk} cannot be staged in multiples of {16 * split}")
    depths = [stages] if stages else [4, 3, 2]
    if gemm_tc.uses_gather(prob):
        depths = [2]          # a register-staged operand double-buffers
    s = None
    for step in steps:
        for depth in depths:
            if engine == "wgmma":
                cand = gemm_tc.TCSchedule("wgmma", bm, bn, step, threads, depth,
                                          wg_m=ws[0], wg_n=ws[1])
            else:
                cand = gemm_tc.TCSchedule("mma", bm, bn, step, threads, depth, warp_m=wm,
                                          warp_n=wn, split_k=split)
            *_, total = gemm_tc.smem_plan(prob, cand)
            if total <= limit:
                s = cand
                break
        if s is not None:
            break
    if s is None:
        raise _Refuse(f"the tile's shared memory exceeds {limit} bytes")
    if s.stages < 2:
        raise _Refuse("stages must be at least 2")
    return s, engine


def _wgmma_split(prob, bm, bn, threads):
    """A warpgroup grid (wg_m, wg_n) for wgmma, or None when the tile does not fit one."""
    if threads % 128 or bm % 64:
        return None
    nwg = threads // 128
    b_tile, b_k_inner = gemm_tc.tile_for(prob.b, 16, bn, k_is_row=True)
    for wg_n in range(1, nwg + 1):
        if nwg % wg_n:
            continue
        wg_m = nwg // wg_n
        tn = bn // wg_n if bn % wg_n == 0 else 0
        if bm % (64 * wg_m) or tn == 0 or tn > 256 or tn % 8:
            continue
        if not b_k_inner and wg_n > 1 and tn % min(64, bn):
            continue
        # accumulator registers per thread
        if (bm // wg_m // 64) * tn // 2 > 128:
            continue
        return wg_m, wg_n
    return None


def _root_name(tile) -> str:
    try:
        return tile.root.operation.name
    except ValueError:
        return "quartet.tile"


def supports(tile, target="sm_90") -> bool | str:
    """True if ``build_gemm_kernel(tile, target)`` will build a kernel, else the reason."""
    try:
        plan(tile, target)
    except QuartetError as e:
        return e.message
    return True


def pin_argument_order(args) -> None:
    """Use every function argument, in order, at the top of the launch body.

    ``gpu-kernel-outlining`` makes the kernel's parameters from the values the body captures, in
    order of first use; these dead uses (erased after outlining) make that order the function's,
    which is the contract of :class:`quartet.lowering.kernel.KernelSpec`."""
    for a in args:
        t = a.type
        if isinstance(t, ir.MemRefType):
            memref.extract_aligned_pointer_as_index(a)
        elif isinstance(t, ir.FloatType):
            arith.bitcast(ir.IntegerType.get_signless(t.width), a)
        elif isinstance(t, ir.IntegerType):
            arith.addi(a, a)
        else:
            arith.index_cast(ir.IntegerType.get_signless(64), a)


def kernel_name(prob: GemmProblem, engine: str) -> str:
    op = prob.op_name.split(".")[-1]
    b = f"{prob.batch}x" if prob.batch > 1 else ""
    return f"{op}_{b}{prob.m}x{prob.n}x{prob.k}_{prob.in_dtype}_{engine}"


def build_gemm_kernel(tile, target: str, *, stages: int | None = None,
                      name: str | None = None, engine: str | None = None) -> ir.Module:
    """A new module (in the tile's Context) with one function launching the tile's kernel.

    ``stages`` overrides the pipeline depth; ``engine`` forces one: ``"wgmma_tma"`` (TMA,
    warp-specialised), ``"wgmma"`` (cp.async) or ``"mma"`` (``mma.sync``) on sm_90."""
    p = plan(tile, target, stages=stages, engine=engine)
    prob = p.problem
    ctx = tile.operation.context
    with ctx, tile.operation.location:
        maps = gemm_tma.operand_maps(prob, p.schedule) if p.engine == "wgmma_tma" else []
        kargs = [KernelArg(kind, i, (), "") for i, kind in enumerate(prob.arg_kinds)] + \
            [KernelArg("tensormap", i, (gemm_tma.TENSORMAP_WORDS,), "int64",
                       tensormap=m.desc(op.arg)) for i, (op, m) in enumerate(maps)]
        types = prob.arg_types + [ir.MemRefType.get([gemm_tma.TENSORMAP_WORDS],
                                                    ir.IntegerType.get_signless(64))] * len(maps)
        module = ir.Module.create()
        with ir.InsertionPoint(module.body):
            fn = func.FuncOp(name or kernel_name(prob, p.engine), (types, []))
            for key, value in (("quartet.shared_bytes", p.shared_bytes),):
                fn.attributes[key] = ir.IntegerAttr.get(ir.IntegerType.get_signless(64), value)
            fn.attributes["quartet.grid"] = ir.DenseI64ArrayAttr.get(list(p.grid))
            fn.attributes["quartet.block"] = ir.DenseI64ArrayAttr.get(list(p.block))
            fn.attributes["quartet.chip"] = ir.StringAttr.get(p.chip)
            fn.attributes["quartet.engine"] = ir.StringAttr.get(p.engine)
            fn.arg_attrs = ir.ArrayAttr.get([arg_attrs(a) for a in kargs])
            entry = fn.add_entry_block()
            with ir.InsertionPoint(entry):
                smem = arith.ConstantOp(i32(), p.shared_bytes).result
                launch = gpu.LaunchOp(p.grid, p.block, dynamic_shared_memory_size=smem)
                body = launch.regions[0].blocks[0]
                with ir.InsertionPoint(body):
                    em = Emitter(body)
                    args = list(entry.arguments)
                    pin_argument_order(args)
                    flat = {i: flat_view(a) for i, a in enumerate(args)
                            if isinstance(a.type, ir.MemRefType)}
                    if p.engine == "simt":
                        gemm_simt.emit_body(em, prob, p.schedule, args, flat)
                    elif p.engine == "wgmma_tma":
                        n = len(prob.arg_types)
                        gemm_tma.emit_body(em, prob, p.schedule, args[:n], flat,
                                           [(m, args[n + i]) for i, (_, m) in enumerate(maps)])
                    else:
                        gemm_tc.emit_body(em, prob, p.schedule, args, flat)
                    gpu.TerminatorOp()
                func.ReturnOp([])
    return module
