"""Where the host time of one ``Program.__call__`` goes (run on the GPU machine).

    source bench/device_env.sh && python3 -m quartet.bench.profile_call ARTIFACT [--calls N]

Loads the artifact, calls it with fresh CUDA torch tensors of its input shapes, and prints (1)
the wall time per call of back-to-back calls, against the same number of launches of an empty
torch op for scale, and (2) cProfile's top functions by own time over the same calls. The GPU
work of every call is queued asynchronously, so this is the host's cost of a call.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

import torch

from quartet.runtime import dtypes, load


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("artifact")
    ap.add_argument("--calls", type=int, default=2000)
    args = ap.parse_args()
    prog = load(args.artifact)
    xs = [torch.randn(s.shape, device="cuda").to(dtypes.torch_dtype(s.dtype))
          for s in prog.manifest.inputs]
    for _ in range(20):
        prog(*xs)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(args.calls):
        prog(*xs)
    host = (time.perf_counter() - t0) / args.calls
    torch.cuda.synchronize()
    y = torch.empty(1, device="cuda")
    t0 = time.perf_counter()
    for _ in range(args.calls):
        y.add_(1)
    torch_launch = (time.perf_counter() - t0) / args.calls
    torch.cuda.synchronize()
    print(f"host time per call: {host * 1e6:.1f} us; one torch op launch: "
          f"{torch_launch * 1e6:.1f} us; kernels per call: {len(prog.manifest.kernels)}")
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(args.calls):
        prog(*xs)
    prof.disable()
    torch.cuda.synchronize()
    pstats.Stats(prof).sort_stats("tottime").print_stats(18)


if __name__ == "__main__":
    main()
