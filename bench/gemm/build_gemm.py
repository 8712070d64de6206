"""Build GEMM/conv kernels here (no GPU needed) for ``run_gemm.py`` to check and time on the GPU.

    python -m quartet.bench.gemm.build_gemm [--out DIR] [--only SUBSTRING]

Writes ``DIR/<name>.cubin``, ``DIR/<name>.ptx`` and ``DIR/manifest.json`` (launch shape, kernel
arguments, reference description, compile times). ``DIR`` defaults to ``.gemm_artifacts`` at the
repository root (listed in ``.git/info/exclude``; carry it to the device machine).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import time

from mlir import ir

from quartet.dialects import context
from quartet.lowering import binary
from quartet.lowering.gemm import build_gemm_kernel
from quartet.bench.gemm import cases
from quartet.bench.gemm.compile import compile_module

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# name -> (builder, kwargs, target, stages); the schedule is what roller-config would write.
M4 = dict(bt=(128, 128, 64), tt=(64, 64, 64), threads=128)
W256 = dict(bt=(128, 256, 64), tt=(64, 128, 64), threads=256)
W256T = dict(bt=(256, 128, 64), tt=(128, 64, 64), threads=256)
MMA = dict(bt=(128, 128, 32), tt=(64, 64, 32), threads=128)
G4096 = dict(M=4096, N=4096, K=4096, fused=True)
G768 = dict(M=8192, N=3072, K=768, fused=True)
G16 = dict(M=16, N=4096, K=4096, fused=True)
F32 = dict(dt="f32", tc=False, pad=(4, 4))
C3 = dict(N=32, C=64, H=58, W=58, F=64, KH=3, KW=3, fused=True)
C1 = dict(N=32, C=256, H=14, W=14, F=1024, KH=1, KW=1, fused=True)
CASES = {
    # --- fp16 4096^3 (fill + matmul + cast to f16 in one tile) --------------------------------
    "mm4096_wg128x256_s4": (cases.matmul, dict(**G4096, **W256), "sm_90", 4),
    "mm4096_wg128x256_s3": (cases.matmul, dict(**G4096, **W256), "sm_90", 3),
    "mm4096_wg256x128_s4": (cases.matmul, dict(**G4096, **W256T), "sm_90", 4),
    "mm4096_wg256x128_s3": (cases.matmul, dict(**G4096, **W256T), "sm_90", 3),
    "mm4096_wg128x128_s3": (cases.matmul, dict(**G4096, **M4), "sm_90", 3),
    "mm4096_wg128x256_f32out": (cases.matmul, dict(M=4096, N=4096, K=4096, **W256), "sm_90", 4),
    "mm4096_mma128x128_s4": (cases.matmul, dict(**G4096, **MMA), "sm_90", 4),
    # --- fp16 8192x768 @ 768x3072 -----------------------------------------------------------
    "mm768_wg128x128_s3": (cases.matmul, dict(**G768, **M4), "sm_90", 3),
    "mm768_wg128x128_s4": (cases.matmul, dict(**G768, **M4), "sm_90", 4),
    "mm768_wg128x256_s3": (cases.matmul, dict(**G768, **W256), "sm_90", 3),
    "mm768_wg128x256_s4": (cases.matmul, dict(**G768, **W256), "sm_90", 4),
    "mm768_wg256x128_s3": (cases.matmul, dict(**G768, **W256T), "sm_90", 3),
    "mm768_wg128x192_s4": (cases.matmul, dict(**G768, bt=(128, 192, 64), tt=(64, 96, 64),
                                              threads=256), "sm_90", 4),
    "mm768_wg128x128_s6": (cases.matmul, dict(**G768, **M4), "sm_90", 6),
    "mm768_wg128x128_s5": (cases.matmul, dict(**G768, **M4), "sm_90", 5),
    "mm4096_wg128x128_s6": (cases.matmul, dict(**G4096, **M4), "sm_90", 6),
    # --- fp16 16x4096 @ 4096x4096 -----------------------------------------------------------
    "mm16_wg64x32_s6": (cases.matmul, dict(**G16, bt=(64, 32, 64), tt=(64, 32, 64), threads=128),
                        "sm_90", 6),
    "mm16_wg64x32_s8": (cases.matmul, dict(**G16, bt=(64, 32, 64), tt=(64, 32, 64), threads=128),
                        "sm_90", 8),
    "mm16_mma16x64_s6": (cases.matmul, dict(**G16, bt=(16, 64, 128), tt=(16, 32, 128),
                                            threads=64), "sm_90", 6),
    "mm16_mma16x32_s8": (cases.matmul, dict(**G16, bt=(16, 32, 128), tt=(16, 32, 128),
                                            threads=32), "sm_90", 8),
    # --- fp32 (SIMT) ------------------------------------------------------------------------
    "f32_1024_64x64_t4x4": (cases.matmul, dict(M=1024, N=1024, K=1024, bt=(64, 64, 8), tt=(4, 4, 8),
                                               threads=256, **F32), "sm_90", None),
    "f32_1024_64x64_t8x8": (cases.matmul, dict(M=1024, N=1024, K=1024, bt=(64, 64, 16),
                                               tt=(8, 8, 16), threads=64, **F32), "sm_90", None),
    "f32_1024_64x64_t8x4": (cases.matmul, dict(M=1024, N=1024, K=1024, bt=(64, 64, 16),
                                               tt=(8, 4, 16), threads=128, **F32), "sm_90", None),
    "f32_1024_128x64_t8x8": (cases.matmul, dict(M=1024, N=1024, K=1024, bt=(128, 64, 16),
                                                tt=(8, 8, 16), threads=128, **F32), "sm_90", None),
    "f32_1024_64x64_t8x8_k32": (cases.matmul, dict(M=1024, N=1024, K=1024, bt=(64, 64, 32),
                                                   tt=(8, 8, 32), threads=64, **F32), "sm_90", None),
    "f32_1024_64x128_t8x8": (cases.matmul, dict(M=1024, N=1024, K=1024, bt=(64, 128, 16),
                                                tt=(8, 8, 16), threads=128, **F32), "sm_90", None),
    "f32_4096_128x128_k8": (cases.matmul, dict(M=4096, N=4096, K=4096, bt=(128, 128, 8), tt=(8, 8, 8),
                                               threads=256, **F32), "sm_90", None),
    "f32_4096_128x128_k16": (cases.matmul, dict(M=4096, N=4096, K=4096, bt=(128, 128, 16),
                                                tt=(8, 8, 16), threads=256, **F32), "sm_90", None),
    # --- convolutions ----------------------------------------------------------------------
    "conv3x3_wg64x128": (cases.conv2d, dict(**C3, bt=(1, 64, 1, 128, 64, 1, 1),
                                            tt=(1, 64, 1, 128, 64, 1, 1), threads=128), "sm_90", None),
    "conv3x3_wg64x256": (cases.conv2d, dict(**C3, bt=(1, 64, 1, 256, 64, 1, 1),
                                            tt=(1, 64, 1, 256, 64, 1, 1), threads=128), "sm_90", None),
    "conv3x3_wg64x256_t256": (cases.conv2d, dict(**C3, bt=(1, 64, 1, 256, 64, 1, 1),
                                                 tt=(1, 64, 1, 128, 64, 1, 1), threads=256), "sm_90",
                              None),
    "conv3x3_mma64x128": (cases.conv2d, dict(**C3, bt=(1, 64, 1, 128, 32, 1, 1),
                                             tt=(1, 32, 1, 64, 32, 1, 1), threads=128), "sm_90", None),
    "conv1x1_wg128x128": (cases.conv2d, dict(**C1, bt=(1, 128, 1, 128, 64, 1, 1),
                                             tt=(1, 64, 1, 128, 64, 1, 1), threads=128), "sm_90", 4),
    "conv1x1_wg128x256": (cases.conv2d, dict(**C1, bt=(1, 128, 1, 256, 64, 1, 1),
                                             tt=(1, 64, 1, 128, 64, 1, 1), threads=256), "sm_90", 4),
    "conv1x1_wg256x128": (cases.conv2d, dict(**C1, bt=(1, 256, 1, 128, 64, 1, 1),
                                             tt=(1, 128, 1, 64, 64, 1, 1), threads=256), "sm_90", 3),
    # --- correctness: odd shapes, layouts, epilogues, the mma.sync engine ---------------------
    "odd_wg_fused_bias_relu": (cases.matmul, dict(M=1000, N=520, K=200, fused=True, bias=True,
                                                  relu=True, **M4), "sm_90", 3),
    "odd_mma_f32init": (cases.matmul, dict(M=1000, N=520, K=200, bt=(64, 64, 32), tt=(32, 32, 32),
                                           threads=128), "sm_90", 3),
    "transb_wg": (cases.matmul, dict(M=512, N=384, K=256, transb=True, **M4), "sm_90", 3),
    "transb_mma": (cases.matmul, dict(M=512, N=384, K=256, transb=True, **MMA), "sm_90", 3),
    "bmm_wg": (cases.batch_matmul, dict(B=8, M=256, N=192, K=128, bt=(1, 128, 64, 64),
                                        tt=(1, 64, 64, 64), threads=128), "sm_90", 3),
    "bmm_mma": (cases.batch_matmul, dict(B=8, M=256, N=192, K=128, bt=(1, 64, 64, 32),
                                         tt=(1, 32, 32, 32), threads=128), "sm_90", 3),
    "f32_odd_simt": (cases.matmul, dict(M=197, N=1000, K=300, bt=(64, 64, 8), tt=(4, 4, 8),
                                        threads=256, **F32), "sm_90", None),
    "f32_transb_simt": (cases.matmul, dict(M=256, N=192, K=100, transb=True, bt=(64, 64, 8),
                                           tt=(4, 4, 8), threads=256, **F32), "sm_90", None),
    "conv3x3s2_odd_wg": (cases.conv2d, dict(N=3, C=64, H=29, W=29, F=96, KH=3, KW=3, stride=2,
                                            bt=(1, 64, 1, 128, 64, 1, 1), tt=(1, 64, 1, 128, 64, 1, 1),
                                            threads=128), "sm_90", None),
    "conv1x1_odd_mma": (cases.conv2d, dict(N=3, C=64, H=7, W=7, F=96, KH=1, KW=1,
                                           bt=(1, 32, 1, 64, 32, 1, 1), tt=(1, 16, 1, 32, 32, 1, 1),
                                           threads=128), "sm_90", None),
    "conv3x3_simt_f32": (cases.conv2d, dict(N=2, C=8, H=12, W=12, F=16, KH=3, KW=3, dt="f32",
                                            tc=False, bt=(1, 16, 1, 64, 8, 1, 1),
                                            tt=(1, 4, 1, 4, 8, 1, 1), threads=64), "sm_90", None),
}


# Tiles configured by the team's roller-config pass (target=sm_90), as the pipeline would.
# Unfused tiles (matmul or conv alone, f32 result): Roller schedules the contraction itself.
# (A fused tile is scheduled on its element-wise op and gets the lowering's default schedule.)
ROLLER = {
    "roller_mm4096": (cases.matmul, dict(M=4096, N=4096, K=4096)),
    "roller_mm768": (cases.matmul, dict(M=8192, N=3072, K=768)),
    "roller_mm16": (cases.matmul, dict(M=16, N=4096, K=4096)),
    "roller_f32_1024": (cases.matmul, dict(M=1024, N=1024, K=1024, dt="f32", tc=False)),
    "roller_f32_4096": (cases.matmul, dict(M=4096, N=4096, K=4096, dt="f32", tc=False)),
    "roller_conv3x3": (cases.conv2d, dict(N=32, C=64, H=58, W=58, F=64, KH=3, KW=3,
                                          bt=(1,) * 7, tt=(1,) * 7)),
    "roller_conv1x1": (cases.conv2d, dict(N=32, C=256, H=14, W=14, F=1024, KH=1, KW=1,
                                          bt=(1,) * 7, tt=(1,) * 7)),
}
for _name, (_maker, _kw) in ROLLER.items():
    CASES[_name] = (_maker, _kw, "sm_90", "roller")


def _roller_configure(module) -> None:
    from quartet import driver
    from quartet.driver import registry

    registry.load_all()
    tile = cases.tile_of(module)
    for a in ("block_tile", "thread_tile", "threads", "smem_padding", "tensor_core"):
        if a in tile.operation.attributes:
            del tile.operation.attributes[a]
    driver.run_pipeline(module, "builtin.module(roller-config{target=sm_90})")


def build(names, out_dir: str) -> list[dict]:
    os.makedirs(out_dir, exist_ok=True)
    manifest = []
    ctx = context()
    for name in names:
        maker, kw, target, stages = CASES[name]
        with ctx, ir.Location.unknown():
            src, info = maker(**kw)
            module = ir.Module.parse(src)
            if stages == "roller":
                _roller_configure(module)
                stages = None
            tile = cases.tile_of(module)
            sched = {a: str(tile.operation.attributes[a]) for a in
                     ("block_tile", "thread_tile", "threads", "tensor_core")
                     if a in tile.operation.attributes}
            walls, cpus = [], []
            for _ in range(3):                      # median of 3 full compiles
                binary._CACHE.clear()               # measure compiles, not cache hits
                c0 = time.process_time()
                ch0 = resource.getrusage(resource.RUSAGE_CHILDREN)
                t0 = time.perf_counter()
                kernel = build_gemm_kernel(tile, target, stages=stages,
                                           engine="mma" if "mma" in name else None)
                compiled = compile_module(kernel)
                walls.append(time.perf_counter() - t0)
                ch1 = resource.getrusage(resource.RUSAGE_CHILDREN)
                cpus.append(time.process_time() - c0 + (ch1.ru_utime - ch0.ru_utime)
                            + (ch1.ru_stime - ch0.ru_stime))
            fn = kernel.body.operations[0]
            engine = ir.StringAttr(fn.attributes["quartet.engine"]).value
            args = cases.kernel_args(tile, info)
        n_params = compiled.ptx.split(".entry", 1)[1].split(")", 1)[0].count(".param")
        assert n_params == len(args), f"{name}: kernel has {n_params} params for {len(args)} args"
        with open(os.path.join(out_dir, name + ".cubin"), "wb") as f:
            f.write(compiled.cubin)
        with open(os.path.join(out_dir, name + ".ptx"), "w") as f:
            f.write(compiled.ptx)
        regs = [l for l in compiled.ptxas_info.splitlines() if "registers" in l]
        entry = {"name": name, "entry": compiled.name, "chip": compiled.chip, "engine": engine,
                 "grid": list(compiled.grid), "block": list(compiled.block),
                 "smem": compiled.shared_bytes, "args": args, "ref": info["ref"],
                 "schedule": sched,
                 "compile_wall_s": statistics.median(walls),
                 "compile_cpu_s": statistics.median(cpus),
                 "ptxas": regs[0].strip() if regs else ""}
        manifest.append(entry)
        print(f"{name:32s} {engine:6s} grid={entry['grid']} block={entry['block'][0]} "
              f"smem={entry['smem']} wall={entry['compile_wall_s']:.3f}s "
              f"cpu={entry['compile_cpu_s']:.3f}s {entry['ptxas']}", flush=True)
    with open(os.path.join(out_dir, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    return manifest


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(ROOT, ".gemm_artifacts"))
    ap.add_argument("--only", default="")
    a = ap.parse_args()
    names = [n for n in CASES if a.only in n]
    build(names, a.out)


if __name__ == "__main__":
    main()
