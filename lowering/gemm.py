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
step in flattened (c, kh, kw)), ``thread_tile`` (tensor cores: the per-warp tile along M/N used by
``mma.sync``; SIMT: the per-thread register tile), ``threads``, ``smem_padding`` (SIMT: elements
added to each shared-memory row; tensor-core kernels use an XOR swizzle instead), ``tensor_core``.
An optional ``stages`` integer sets the shared-memory pipeline depth.

The function carries ``quartet.shared_bytes`` (dynamic shared memory; above 48 KiB the host must
raise the kernel's limit), ``quartet.grid`` and ``quartet.block``. ``supports(tile, target)``
returns True or a one-line reason.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlir import ir
from mlir.dialects import arith, func, gpu

from quartet.errors import QuartetError, location_of

from . import gemm_simt, gemm_tc
from .gemm_ir import Emitter, flat_view, i32
from .gemm_problem import GemmProblem, analyze

TARGETS = ("sm_90", "sm_80")
SMEM_LIMITS = {"sm_90": 227 * 1024, "sm_80": 163 * 1024}
MAX_GRID_YZ = 65535


@dataclass(frozen=True)
class Plan:
    """What will be built for a tile."""

    problem: GemmProblem
    engine: str                     # "wgmma" | "mma" | "simt"
    schedule: object                # gemm_tc.TCSchedule | gemm_simt.SimtSchedule
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    shared_bytes: int
    chip: str                       # what the binary must be built for


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def _pow2(x: int) -> bool:
    return x > 0 and x & (x - 1) == 0


def _tile_extents(tile, prob: GemmProblem, attr: list[int]) -> tuple[int, int, int]:
    """(M, N, K) extents of a per-loop attribute in GEMM terms."""
    roles = prob.loop_roles
    if len(attr) != len(roles):
        raise _Refuse(f"schedule has {len(attr)} entries for {len(roles)} loops")
    get = dict(zip(roles, attr))
    if prob.kind == "conv2d":
        return (get["m"], get["n_img"] * get["oh"] * get["ow"], get["c"] * get["kh"] * get["kw"])
    if "b" in get and get["b"] != 1:
        raise _Refuse("block_tile along the batch loop must be 1")
    return get["m"], get["n"], get["k"]


class _Refuse(Exception):
    pass


def plan(tile, target: str, *, stages: int | None = None, engine: str | None = None) -> Plan:
    """Check the tile and its schedule; raise :class:`QuartetError` naming the op and reason."""
    root_name = _root_name(tile)
    where = location_of(tile)
    if target not in TARGETS:
        raise QuartetError(f"unknown GEMM target '{target}' (known: {', '.join(TARGETS)})", where)
    prob = analyze(tile)
    if isinstance(prob, str):
        raise QuartetError(f"'{root_name}' is not supported by the GEMM lowering: {prob}", where)
    try:
        return _plan(tile, prob, target, stages, engine)
    except _Refuse as e:
        raise QuartetError(f"'{root_name}' schedule not supported: {e}", where) from None


def _plan(tile, prob: GemmProblem, target: str, stages: int | None, force: str | None) -> Plan:
    bt, tt = tile.block_tile, tile.thread_tile
    if bt is None or tt is None or tile.threads is None:
        raise _Refuse("tile is not configured (needs block_tile, thread_tile, threads)")
    bm, bn, bk = _tile_extents(tile, prob, bt)
    wm, wn, _ = _tile_extents(tile, prob, tt)
    threads = tile.threads
    if stages is None and "stages" in tile.operation.attributes:
        stages = ir.IntegerAttr(tile.operation.attributes["stages"]).value
    grid = (_ceil(prob.n, bn), _ceil(prob.m, bm), prob.batch)
    if grid[1] > MAX_GRID_YZ or grid[2] > MAX_GRID_YZ:
        raise _Refuse(f"grid {grid} exceeds the launch limits")
    if threads <= 0 or threads > 1024 or threads % 32:
        raise _Refuse(f"threads = {threads} must be a multiple of 32 up to 1024")
    limit = SMEM_LIMITS[target]
    dtypes = {prob.a.dtype, prob.b.dtype}
    if tile.tensor_core:
        if len(dtypes) != 1 or prob.a.dtype not in ("f16", "bf16"):
            raise _Refuse(f"tensor cores take f16 or bf16 operands, got {sorted(dtypes)}")
        s, engine = _tc_schedule(prob, target, bm, bn, bk, wm, wn, threads, stages, limit, force)
        *_, total = gemm_tc.smem_plan(prob, s)
        chip = "sm_90a" if engine == "wgmma" else target
        return Plan(prob, engine, s, grid, (threads, 1, 1), total, chip)
    s = gemm_simt.schedule(prob, bm, bn, bk, wm, wn, threads, tile.smem_padding, stages, limit)
    if isinstance(s, str):
        raise _Refuse(s)
    return Plan(prob, "simt", s, grid, (threads, 1, 1), gemm_simt.shared_bytes(prob, s), target)


def _tc_schedule(prob, target, bm, bn, bk, wm, wn, threads, stages, limit, force=None):
    for name, v in (("m", bm), ("n", bn)):
        if not (v in (16, 32) or v % 64 == 0):
            raise _Refuse(f"block tile along {name} = {v} must be 16, 32 or a multiple of 64")
    if not (bk in (16, 32) or bk % 64 == 0):
        raise _Refuse(f"reduction step {bk} must be 16, 32 or a multiple of 64")
    for name, op in (("A", prob.a), ("B", prob.b)):
        if op.kind == "im2col":
            continue                 # gathered through registers when cp.async cannot copy it
        if op.contiguous is None or op.granule < 2:
            raise _Refuse(f"operand {name} has no 4-byte aligned contiguous dimension")
    engine = "wgmma" if target == "sm_90" and force != "mma" else "mma"
    if engine == "wgmma":
        ws = _wgmma_split(prob, bm, bn, threads)
        if ws is None:
            engine = "mma"
    if engine == "mma":
        if wm % 16 or wn % 16 or bm % wm or bn % wn:
            raise _Refuse(f"warp tile {wm}x{wn} must divide the block tile {bm}x{bn} in "
                          f"multiples of 16")
        if threads != 32 * (bm // wm) * (bn // wn):
            raise _Refuse(f"threads = {threads} but the warp tiles need "
                          f"{32 * (bm // wm) * (bn // wn)}")
    s = None
    depths = [stages] if stages else [4, 3, 2]
    if gemm_tc.uses_gather(prob):
        depths = [2]          # a register-staged operand double-buffers
    for depth in depths:
        if engine == "wgmma":
            cand = gemm_tc.TCSchedule("wgmma", bm, bn, bk, threads, depth, wg_m=ws[0], wg_n=ws[1])
        else:
            cand = gemm_tc.TCSchedule("mma", bm, bn, bk, threads, depth, warp_m=wm, warp_n=wn)
        *_, total = gemm_tc.smem_plan(prob, cand)
        if total <= limit:
            s = cand
            break
    if s is None:
        raise _Refuse(f"the tile's shared memory exceeds {limit} bytes")
    if s.stages < 2:
        raise _Refuse("stages must be at least 2")
    _check_loads(prob, s)
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


def _check_loads(prob, s):
    a_tile, a_k_inner, b_tile, b_k_inner, *_ = gemm_tc.smem_plan(prob, s)
    for name, op, t in (("A", prob.a, a_tile), ("B", prob.b, b_tile)):
        if op is prob.b and gemm_tc.uses_gather(prob):
            per_row = t.inner // gemm_tc.GatherLoader.V
        else:
            per_row = t.inner // min(op.granule, t.inner)
        if (t.outer * per_row) % s.threads:
            raise _Refuse(f"operand {name} tile {t.outer}x{t.inner} does not split over "
                          f"{s.threads} threads")


def _root_name(tile) -> str:
    try:
        return tile.root.operation.name
    except ValueError:
        return "quartet.tile"


def supports(tile, target: str = "sm_90") -> bool | str:
    """True if ``build_gemm_kernel(tile, target)`` will build a kernel, else the reason."""
    try:
        plan(tile, target)
    except QuartetError as e:
        return e.message
    return True


def kernel_name(prob: GemmProblem, engine: str) -> str:
    op = prob.op_name.split(".")[-1]
    b = f"{prob.batch}x" if prob.batch > 1 else ""
    return f"{op}_{b}{prob.m}x{prob.n}x{prob.k}_{prob.in_dtype}_{engine}"


def build_gemm_kernel(tile, target: str, *, stages: int | None = None,
                      name: str | None = None, engine: str | None = None) -> ir.Module:
    """A new module (in the tile's Context) with one function launching the tile's kernel.

    ``stages`` overrides the pipeline depth; ``engine="mma"`` keeps ``mma.sync`` on sm_90."""
    p = plan(tile, target, stages=stages, engine=engine)
    prob = p.problem
    ctx = tile.operation.context
    with ctx, tile.operation.location:
        module = ir.Module.create()
        with ir.InsertionPoint(module.body):
            fn = func.FuncOp(name or kernel_name(prob, p.engine), (prob.arg_types, []))
            for key, value in (("quartet.shared_bytes", p.shared_bytes),):
                fn.attributes[key] = ir.IntegerAttr.get(ir.IntegerType.get_signless(64), value)
            fn.attributes["quartet.grid"] = ir.DenseI64ArrayAttr.get(list(p.grid))
            fn.attributes["quartet.block"] = ir.DenseI64ArrayAttr.get(list(p.block))
            fn.attributes["quartet.chip"] = ir.StringAttr.get(p.chip)
            fn.attributes["quartet.engine"] = ir.StringAttr.get(p.engine)
            entry = fn.add_entry_block()
            with ir.InsertionPoint(entry):
                smem = arith.ConstantOp(i32(), p.shared_bytes).result
                launch = gpu.LaunchOp(p.grid, p.block, dynamic_shared_memory_size=smem)
                body = launch.regions[0].blocks[0]
                with ir.InsertionPoint(body):
                    em = Emitter(body)
                    args = list(entry.arguments)
                    flat = {i: flat_view(a) for i, a in enumerate(args)
                            if isinstance(a.type, ir.MemRefType)}
                    if p.engine == "simt":
                        gemm_simt.emit_body(em, prob, p.schedule, args, flat)
                    else:
                        gemm_tc.emit_body(em, prob, p.schedule, args, flat)
                    gpu.TerminatorOp()
                func.ReturnOp([])
    return module
