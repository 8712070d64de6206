"""lowering/gemm.py: configured matmul / batch_matmul / conv2d tiles -> one gpu.launch kernel.

Builds IR and binaries only (no GPU needed): which engine a schedule gets, what is refused and
why, the kernel function's contract with lowering/binary.py (argument order and roles, launch
shape, shared memory), the copy work of every thread at concrete thread ids, and ptxas accepting
the PTX for sm_90a / sm_80. The tests marked ``gpu`` run kernels with cuda-bindings and compare
with numpy in float64. ``QUARTET_SLOW=1`` adds a ptxas sweep over every configuration of
``bench/gemm/build_gemm.py``.
"""

import os

import numpy as np
import pytest
from cuda_launch import run_kernel
from mlir import ir

import quartet.dialects as qd
from quartet.runtime import targets
from quartet.errors import QuartetError
from quartet.lowering import binary
from quartet.lowering.kernels import gemm, gemm_tc
from quartet.bench.gemm import cases
from quartet.bench.gemm.compile import compile_module, target_of
from quartet.lowering.kernels.gemm_ir import Emitter


@pytest.fixture
def ctx():
    context = qd.context()
    with context, ir.Location.unknown():
        yield context


def tile_of(src):
    module = ir.Module.parse(src)
    return module, cases.tile_of(module)      # keep the module alive with the tile


MM_WG = dict(bt=(128, 256, 64), tt=(64, 128, 64), threads=256)
MM_MMA = dict(bt=(128, 128, 32), tt=(64, 64, 32), threads=128)
F32 = dict(dt="f32", tc=False, pad=(4, 4), bt=(64, 64, 8), tt=(4, 4, 8), threads=256)
CONV3 = dict(N=2, C=64, H=10, W=10, F=64, KH=3, KW=3, bt=(1, 64, 1, 128, 64, 1, 1),
             tt=(1, 64, 1, 128, 64, 1, 1), threads=128)


# ---------------------------------------------------------------------------------------------
# Schedules -> engines


@pytest.mark.parametrize("name,src,target,engine,chip", [
    ("wgmma", cases.matmul(256, 512, 128, **MM_WG)[0], "sm_90", "wgmma", "sm_90a"),
    ("mma-sm80", cases.matmul(256, 512, 128, **MM_MMA)[0], "sm_80", "mma", "sm_80"),
    ("transposed-b", cases.matmul(256, 384, 128, transb=True, **MM_MMA)[0], "sm_80", "mma",
     "sm_80"),
    ("simt-f32", cases.matmul(197, 1000, 300, **F32)[0], "sm_90", "simt", "sm_90"),
    ("batch", cases.batch_matmul(4, 128, 64, 64, bt=(1, 64, 64, 64), tt=(1, 64, 64, 64),
                                 threads=128)[0], "sm_90", "wgmma", "sm_90a"),
    ("conv3x3", cases.conv2d(**CONV3)[0], "sm_90", "wgmma", "sm_90a"),
])
def test_engine_choice(ctx, name, src, target, engine, chip):
    _, tile = tile_of(src)
    assert gemm.supports(tile, target) is True
    p = gemm.plan(tile, target)
    assert (p.engine, p.chip) == (engine, chip)
    assert p.grid == (-(-p.problem.n // p.schedule.bn), -(-p.problem.m // p.schedule.bm),
                      p.problem.batch)


def test_conv_operands_are_filter_and_gathered_image(ctx):
    """GEMM A is the filter (the root's second operand), B the image gathered in place."""
    _, tile = tile_of(cases.conv2d(**CONV3)[0])
    prob = gemm.plan(tile, "sm_90").problem
    assert (prob.m, prob.n, prob.k) == (64, 2 * 8 * 8, 64 * 9)
    assert prob.a.arg == 1 and prob.a.kind == "affine"          # %w
    assert prob.b.arg == 0 and prob.b.kind == "im2col"          # %x
    assert gemm_tc.uses_gather(prob)
    _, tile1 = tile_of(cases.conv2d(N=2, C=64, H=8, W=8, F=128, KH=1, KW=1,
                                    bt=(1, 128, 1, 128, 64, 1, 1), tt=(1, 64, 1, 128, 64, 1, 1),
                                    threads=128)[0])
    p1 = gemm.plan(tile1, "sm_90").problem
    assert not gemm_tc.uses_gather(p1) and p1.b.k_stride(True) == 64   # pointwise: cp.async


def test_split_reduction_schedule(ctx):
    """Roller's warps that share the reduction (thread_tile K < block_tile K) -> mma split-K."""
    _, tile = tile_of(cases.matmul(16, 4096, 4096, bt=(16, 16, 64), tt=(16, 16, 16),
                                   threads=128)[0])
    p = gemm.plan(tile, "sm_90")
    assert p.engine == "mma" and p.schedule.split_k == 4
    # the partial sums of the four warps get one staged tile each
    assert p.shared_bytes >= 4 * 16 * (16 + 8) * 4


def test_schedule_written_for_the_fused_epilogue(ctx):
    """A fused tile whose schedule describes its last (element-wise) op: no reduction step, so
    the lowering uses its parallel tiles where they form a GEMM schedule, else its default."""
    src = cases.matmul(1024, 768, 256, fused=True)[0]
    src = src.replace("block_tile = array<i64: 128, 128, 64>", "block_tile = array<i64: 1, 4096>")
    src = src.replace("thread_tile = array<i64: 64, 64, 64>", "thread_tile = array<i64: 1, 16>")
    _, tile = tile_of(src)
    p = gemm.plan(tile, "sm_90")
    assert (p.engine, p.schedule.bm, p.schedule.bn, p.schedule.bk) == ("wgmma", 128, 256, 64)


def test_large_reduction_step_is_taken_in_sub_steps(ctx):
    _, tile = tile_of(cases.conv2d(N=32, C=64, H=58, W=58, F=64, KH=3, KW=3,
                                   bt=(4, 32, 8, 8, 64, 3, 3), tt=(1, 16, 8, 8, 64, 3, 3),
                                   threads=256)[0])
    p = gemm.plan(tile, "sm_90")
    assert p.schedule.bk == 64 and p.shared_bytes <= targets.get("sm_90").smem_per_block


# ---------------------------------------------------------------------------------------------
# Refusals: one line naming the op and the reason


def test_refusals(ctx):
    _, t = tile_of(cases.matmul(256, 256, 128, bt=(128, 128, 32), tt=(64, 64, 32),
                                threads=256)[0])
    assert gemm.supports(t, "sm_80") == \
        "'linalg.matmul' schedule not supported: threads = 256 but the warp tiles need 128"
    _, t = tile_of(cases.matmul(256, 256, 128, dt="f32", bt=(128, 128, 32), tt=(64, 64, 32),
                                threads=128)[0])
    assert "tensor cores take f16 or bf16 operands" in gemm.supports(t, "sm_90")
    _, t = tile_of(cases.matmul(256, 256, 128, **MM_MMA)[0])
    with pytest.raises(QuartetError, match="unknown target 'gfx1100'"):
        gemm.build_gemm_kernel(t, "gfx1100")
    src = cases.matmul(256, 256, 128, **MM_MMA)[0].replace(
        "block_tile = array<i64: 128, 128, 32>, ", "")
    _, t = tile_of(src)
    assert "tile is not configured" in gemm.supports(t, "sm_90")
    # odd leading dimension: no 4-byte aligned rows for cp.async
    _, t = tile_of(cases.matmul(64, 64, 33, **dict(MM_MMA, bt=(64, 64, 32), tt=(32, 32, 32)))[0])
    assert "no 4-byte aligned contiguous dimension" in gemm.supports(t, "sm_90")


def test_elementwise_tile_is_not_a_gemm(ctx):
    text = open(os.path.join(os.path.dirname(__file__), "..", "lit", "lowering", "inputs",
                             "gemm-elementwise.mlir")).read()
    _, t = tile_of(text)
    reason = gemm.supports(t, "sm_90")
    assert reason.startswith("'linalg.generic' is not supported by the GEMM lowering")


# ---------------------------------------------------------------------------------------------
# The kernel function's contract


def _launch(fn):
    found = []
    fn.operation.walk(lambda op: (found.append(op.opview) if op.operation.name == "gpu.launch"
                                  else None) or ir.WalkResult.ADVANCE)
    return found


def test_kernel_function_contract(ctx):
    src, info = cases.matmul(1000, 520, 200, fused=True, bias=True, relu=True,
                             bt=(128, 128, 64), tt=(64, 64, 64), threads=128)
    _, tile = tile_of(src)
    module = gemm.build_gemm_kernel(tile, "sm_90")
    assert module.operation.verify()
    (fn,) = list(module.body.operations)
    # memref arguments: the tile's inputs in order of first use, then its result
    want = [str(v.type).replace("tensor", "memref") for v in tile.inputs] + \
        [str(tile.outputs[0].type).replace("tensor", "memref")]
    assert [str(a.type) for a in fn.arguments] == want
    roles = [ir.StringAttr(ir.DictAttr(d)["quartet.role"]).value
             for d in ir.ArrayAttr(fn.attributes["arg_attrs"])]
    assert roles == ["input"] * len(tile.inputs) + ["output"]
    (launch,) = _launch(fn)
    grid = tuple(ir.DenseI64ArrayAttr(fn.attributes["quartet.grid"]))
    assert grid == (-(-520 // 128), -(-1000 // 128), 1)
    text = str(module)
    assert "quartet.tile" not in text and "linalg." not in text
    smem = ir.IntegerAttr(fn.attributes["quartet.shared_bytes"]).value
    assert f"arith.constant {smem} : i32" in text


def test_outlining_keeps_the_argument_order(ctx):
    """The bias (a rank-1 memref first read in the epilogue) stays in its place: the kernel's
    parameters are the function's arguments in order."""
    src, info = cases.matmul(1000, 520, 200, fused=True, bias=True, relu=True,
                             bt=(128, 128, 64), tt=(64, 64, 64), threads=128)
    _, tile = tile_of(src)
    kernel = gemm.build_gemm_kernel(tile, "sm_90")
    fn_args = [str(a.type) for a in kernel.body.operations[0].arguments]
    outlined = binary.outline(kernel)
    launches = []
    outlined.operation.walk(lambda op: (launches.append(op.opview)
                                        if op.operation.name == "gpu.launch_func" else None)
                            or ir.WalkResult.ADVANCE)
    (lf,) = launches
    assert [str(v.type) for v in lf.kernelOperands] == fn_args
    assert [v.arg_number for v in lf.kernelOperands] == list(range(len(fn_args)))


# ---------------------------------------------------------------------------------------------
# Every thread's copy work, at concrete thread ids (index arithmetic folds to integers)


def _loaders_of(src, target, blocks):
    """The prepared operand loaders of every thread of the given blocks."""
    found = []
    prepare = gemm_tc.AsyncLoader.prepare

    def record(self, tid):
        prepare(self, tid)
        found.append(self)

    state = {}
    old_tid, old_bid = Emitter.thread_id, Emitter.block_id
    Emitter.thread_id = lambda self: state["tid"]
    Emitter.block_id = lambda self, d="x": state["bid"][d]
    gemm_tc.AsyncLoader.prepare = record
    try:
        _, tile = tile_of(src)
        p = gemm.plan(tile, target)
        for bx, by in blocks:
            for t in range(p.block[0]):
                state.update(tid=t, bid={"x": bx, "y": by, "z": 0})
                gemm.build_gemm_kernel(tile, target)
    finally:
        Emitter.thread_id, Emitter.block_id = old_tid, old_bid
        gemm_tc.AsyncLoader.prepare = prepare
    return p, found


@pytest.mark.parametrize("src", [
    cases.conv2d(N=2, C=64, H=14, W=14, F=128, KH=1, KW=1, bt=(1, 128, 1, 128, 64, 1, 1),
                 tt=(1, 64, 1, 128, 64, 1, 1), threads=128)[0],
    cases.matmul(1000, 520, 200, transb=True, bt=(128, 128, 64), tt=(64, 64, 64),
                 threads=128)[0],
])
def test_copies_cover_each_tile_once(ctx, src):
    p, loaders = _loaders_of(src, "sm_90", [(0, 0)])
    prob = p.problem
    for which, k_is_row in ((prob.a, False), (prob.b, True)):
        mine = [ld for ld in loaders if ld.k_is_row == k_is_row]
        elems = [off + e for ld in mine for (_, _, off, _, _) in ld.items for e in range(ld.g)]
        tile = mine[0].tile
        lo = mine[0].smem_base // tile.esize
        assert sorted(elems) == list(range(lo, lo + tile.bytes // tile.esize))
        size = int(np.prod(ir.MemRefType(prob.arg_types[which.arg]).shape))
        for ld in mine:
            for k_local, base, _, count, _ in ld.items:
                if count != 0:      # granules past the operand's edge copy nothing
                    assert 0 <= base and base + ld.g <= size


# ---------------------------------------------------------------------------------------------
# Down to binaries: ptxas accepts the PTX


PTXAS_CASES = [
    ("wgmma-fused", cases.matmul(512, 512, 256, fused=True, bias=True, **MM_WG)[0], "sm_90"),
    ("mma-transb", cases.matmul(512, 384, 256, transb=True, **MM_MMA)[0], "sm_80"),
    ("simt-f32", cases.matmul(197, 1000, 300, **F32)[0], "sm_80"),
    ("conv3x3-gather", cases.conv2d(**CONV3)[0], "sm_90"),
    ("split-k", cases.matmul(16, 1024, 1024, bt=(16, 16, 64), tt=(16, 16, 16),
                             threads=128)[0], "sm_80"),
]


@pytest.mark.parametrize("name,src,target", PTXAS_CASES, ids=[c[0] for c in PTXAS_CASES])
def test_ptxas_accepts(ctx, name, src, target):
    _, tile = tile_of(src)
    kernel = gemm.build_gemm_kernel(tile, target)
    compiled = compile_module(kernel)
    chip = target_of(kernel).chip
    assert f".target {chip}" in compiled.ptx
    assert compiled.ptx.count('.pragma "nounroll"') >= 1       # the main loop stays rolled
    report = binary.ptxas_check(compiled.ptx, chip)
    assert "0 bytes spill stores" in report
    if chip == "sm_90a":
        assert "wgmma.mma_async" in compiled.ptx
    elif name != "simt-f32":
        assert "mma.sync.aligned.m16n8k16" in compiled.ptx


@pytest.mark.skipif(not os.environ.get("QUARTET_SLOW"), reason="set QUARTET_SLOW=1")
def test_every_device_configuration_assembles(ctx, tmp_path):
    from quartet.bench.gemm import build_gemm

    manifest = build_gemm.build(list(build_gemm.CASES), str(tmp_path))
    assert len(manifest) == len(build_gemm.CASES)


# ---------------------------------------------------------------------------------------------
# On a GPU: run with cuda-bindings, compare with numpy in float64


NP = {"f16": np.float16, "f32": np.float32}


def _gpu_check(src, info, target, reference):
    _, tile = tile_of(src)
    compiled = compile_module(gemm.build_gemm_kernel(tile, target))
    rng = np.random.default_rng(7)
    arrays, named = [], {}
    for a in cases.kernel_args(tile, info):
        x = rng.standard_normal(a["shape"]).astype(NP[a["dtype"]])
        if a["role"] == "out":
            x[...] = np.nan
        arrays.append(x)
        named[a["role"]] = x
    run_kernel(compiled.cubin, compiled.name, compiled.grid, compiled.block,
               compiled.shared_bytes, arrays)
    out = named["out"].astype(np.float64)
    ref = reference(named)
    assert not np.isnan(out).any()
    return float(np.linalg.norm(out - ref) / np.linalg.norm(ref))


@pytest.mark.gpu
def test_wgmma_matmul_on_gpu(ctx):
    src, info = cases.matmul(1000, 520, 200, fused=True, bias=True, relu=True,
                             bt=(128, 128, 64), tt=(64, 64, 64), threads=128)
    err = _gpu_check(src, info, "sm_90", lambda n: np.maximum(
        n["a"].astype(np.float64) @ n["b"].astype(np.float64) + n["bias"], 0))
    assert err < 3e-3


@pytest.mark.gpu
def test_implicit_gemm_conv_on_gpu(ctx):
    src, info = cases.conv2d(N=3, C=64, H=29, W=29, F=96, KH=3, KW=3, stride=2,
                             bt=(1, 64, 1, 128, 64, 1, 1), tt=(1, 64, 1, 128, 64, 1, 1),
                             threads=128)

    def conv(n):
        x, w = n["x"].astype(np.float64), n["w"].astype(np.float64)
        win = np.lib.stride_tricks.sliding_window_view(x, (3, 3), axis=(2, 3))[:, :, ::2, ::2]
        return np.einsum("ncpqhw,fchw->nfpq", win, w) + n["c"]

    assert _gpu_check(src, info, "sm_90", conv) < 1e-5


@pytest.mark.gpu
def test_split_k_mma_on_gpu(ctx):
    src, info = cases.matmul(16, 1024, 1024, bt=(16, 16, 64), tt=(16, 16, 16), threads=128)
    err = _gpu_check(src, info, "sm_90", lambda n: n["a"].astype(np.float64)
                     @ n["b"].astype(np.float64) + n["c"])
    assert err < 1e-5


@pytest.mark.gpu
def test_simt_f32_on_gpu(ctx):
    src, info = cases.matmul(197, 1000, 300, transb=False, **F32)
    err = _gpu_check(src, info, "sm_90", lambda n: n["a"].astype(np.float64)
                     @ n["b"].astype(np.float64) + n["c"])
    assert err < 1e-5


@pytest.mark.parametrize("tm,tn,threads", [(4, 4, 256), (2, 1, 128), (8, 2, 64), (3, 4, 64)])
def test_simt_thread_tiles_cover_the_output(ctx, tm, tn, threads):
    """Every output element of a block is stored by exactly one thread, for thread tiles of any
    shape (index arithmetic folded at concrete thread ids)."""
    from quartet.lowering.kernels import gemm_epilogue

    bm, bn = (16 * tm if tm != 3 else 48), 16 * tn
    src = cases.matmul(100, 60, 40, dt="f32", tc=False, bt=(bm, bn, 8), tt=(tm, tn, 8),
                       threads=(bm // tm) * (bn // tn), pad=(1, 1))[0]
    _, tile = tile_of(src)
    stored, state = [], {}
    old = (Emitter.thread_id, Emitter.block_id, gemm_epilogue.EpilogueWriter.store)
    Emitter.thread_id = lambda self: state["tid"]
    Emitter.block_id = lambda self, d="x": 0
    gemm_epilogue.EpilogueWriter.store = \
        lambda self, row, col, values: stored.extend((row, col + i) for i in range(len(values)))
    try:
        p = gemm.plan(tile, "sm_90")
        for t in range(p.block[0]):
            state["tid"] = t
            gemm.build_gemm_kernel(tile, "sm_90")
    finally:
        Emitter.thread_id, Emitter.block_id, gemm_epilogue.EpilogueWriter.store = old
    assert sorted(stored) == [(r, c) for r in range(bm) for c in range(bn)]
