"""Roller's sm_90 choices against the H100 measurements (bench/gemm/NOTES.md, run 4).

For each of the six problems measured there, roller-config{target=sm_90} configures the unfused
tile as ``bench/gemm/build_gemm.py`` does for its ``roller_*`` rows, and ``gemm.plan``
(no GPU) says what the lowering builds from it. The engine, the GEMM block tile and the thread
count must be those of the measured-best schedule (NOTES.md "Best per target"): a test of the
policy's decisions, not of timing.
"""

from __future__ import annotations

import pytest
from mlir import ir

from quartet.dialects import context
from quartet.lowering.kernels import gemm
from quartet.bench.gemm import cases
from quartet import driver
from quartet.driver import registry
from quartet.passes.roller import policy

# name -> (builder, kwargs, engine, GEMM block (rows, cols), K step or None, threads)
MEASURED_BEST = {
    # the TMA engine (gemm_tma.py) builds Roller's 128x256 tile with 2 consumer warpgroups
    # and a producer (384 threads) where the cp.async kernel measured best had 256
    "fp16 4096^3": (cases.matmul, dict(M=4096, N=4096, K=4096), "wgmma_tma", (128, 256), 64,
                    384),
    "fp16 8192x768 @ 768x3072": (cases.matmul, dict(M=8192, N=3072, K=768), "wgmma_tma",
                                 (128, 256), 64, 384),
    "fp32 1024^3": (cases.matmul, dict(M=1024, N=1024, K=1024, dt="f32", tc=False), "simt",
                    (64, 64), None, 64),           # k16 and k32 measured alike (0.78)
    "fp32 4096^3": (cases.matmul, dict(M=4096, N=4096, K=4096, dt="f32", tc=False), "simt",
                    (128, 128), 8, 256),
    "fp16 conv 3x3 32x64x56x56": (cases.conv2d, dict(N=32, C=64, H=58, W=58, F=64, KH=3, KW=3,
                                                     bt=(1,) * 7, tt=(1,) * 7),
                                  "wgmma", (64, 128), 64, 128),
    "fp16 conv 1x1 32x256x14x14 1024": (cases.conv2d, dict(N=32, C=256, H=14, W=14, F=1024,
                                                           KH=1, KW=1, bt=(1,) * 7,
                                                           tt=(1,) * 7),
                                        "wgmma", (128, 256), 64, 256),
}


def _configured_plan(maker, kw):
    registry.load_all()
    ctx = context()
    with ctx, ir.Location.unknown():
        src, _ = maker(**kw)
        module = ir.Module.parse(src)
        tile = cases.tile_of(module)
        for a in ("block_tile", "thread_tile", "threads", "smem_padding", "tensor_core"):
            if a in tile.operation.attributes:
                del tile.operation.attributes[a]
        driver.run_pipeline(module, "builtin.module(roller-config{target=sm_90})")
        tile = cases.tile_of(module)
        return tile, gemm.plan(tile, "sm_90")


@pytest.mark.parametrize("name", list(MEASURED_BEST))
def test_sm90_top1_is_the_measured_best(name):
    maker, kw, engine, (rows, cols), step, threads = MEASURED_BEST[name]
    policy.forget()
    tile, plan = _configured_plan(maker, kw)
    s = plan.schedule
    got = (plan.engine, (s.bm, s.bn), s.threads)
    assert got == (engine, (rows, cols), threads), (name, list(tile.block_tile),
                                                   list(tile.thread_tile), s)
    if step is not None:
        assert s.bk == step, s
    if engine == "simt":
        assert (s.tm, s.tn) == (8, 8), s              # 8x8 register tiles (NOTES.md)
    if engine in ("wgmma", "wgmma_tma"):
        assert plan.schedule.stages >= 2
