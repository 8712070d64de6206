"""Time Roller's construction policy per operator and print the schedule it chooses.

    python -m quartet.passes.roller.bench_policy [--target sm_90] [--topk 1] [--repeat 20]

For each operator of the issue's benchmark (and the small and irregular shapes of the tests)
this builds the linalg op, reads its loops once (``linalg_info``, timed apart: it runs an
upstream pass in a scratch context) and then times ``policy.construct`` alone, ``--repeat``
times from a fresh op model each time (nothing cached between runs). It prints the median and
the slowest wall-clock run and the median CPU time of the process (less sensitive to other load
on a shared machine), in milliseconds, and the top schedule. Roller's paper reports 0.41 s per operator
for top-1 including code generation; the policy alone should take well under 50 ms.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from mlir import ir

from quartet.dialects import context, linalg_info
from quartet.runtime import targets
from quartet.passes.roller import policy


def _func(args: list[str], body: str) -> str:
    params = ", ".join(f"%a{i}: {t}" for i, t in enumerate(args))
    return f"func.func @f({params}) {{\n  {body}\n  return\n}}\n"


def matmul(m, n, k, t="f16", acc="f32") -> str:
    a, b, c = f"tensor<{m}x{k}x{t}>", f"tensor<{k}x{n}x{t}>", f"tensor<{m}x{n}x{acc}>"
    return _func([a, b, c], f"%0 = linalg.matmul ins(%a0, %a1 : {a}, {b}) outs(%a2 : {c}) -> {c}")


def conv(n, c, h, w, f, r, stride=1, t="f16", acc="f32") -> str:
    ho, wo = (h - r) // stride + 1, (w - r) // stride + 1
    x, k, y = (f"tensor<{n}x{c}x{h}x{w}x{t}>", f"tensor<{f}x{c}x{r}x{r}x{t}>",
               f"tensor<{n}x{f}x{ho}x{wo}x{acc}>")
    return _func([x, k, y], f"%0 = linalg.conv_2d_nchw_fchw {{strides = dense<{stride}> : "
                            f"tensor<2xi64>, dilations = dense<1> : tensor<2xi64>}} "
                            f"ins(%a0, %a1 : {x}, {k}) outs(%a2 : {y}) -> {y}")


def depthwise(n, c, h, w, t="f16") -> str:
    x, k, y = (f"tensor<{n}x{c}x{h + 2}x{w + 2}x{t}>", f"tensor<{c}x3x3x{t}>",
               f"tensor<{n}x{c}x{h}x{w}x{t}>")
    return _func([x, k, y], f"%0 = linalg.depthwise_conv_2d_nchw_chw {{strides = dense<1> : "
                            f"tensor<2xi64>, dilations = dense<1> : tensor<2xi64>}} "
                            f"ins(%a0, %a1 : {x}, {k}) outs(%a2 : {y}) -> {y}")


def row_reduce(m, n, t="f16") -> str:
    """The reduction at the heart of softmax and layernorm: a sum over the contiguous axis."""
    x, y = f"tensor<{m}x{n}x{t}>", f"tensor<{m}x{t}>"
    return _func([x, y], f"%0 = linalg.reduce ins(%a0 : {x}) outs(%a1 : {y}) dimensions = [1]\n"
                         f"    (%x: {t}, %y: {t}) {{ %s = arith.addf %x, %y : {t}\n"
                         f"      linalg.yield %s : {t} }}")


def gelu_like(m, n, t="f16") -> str:
    """(x + b) * s with a broadcast bias: the issue's elementwise chain, one generic."""
    x, b, y = f"tensor<{m}x{n}x{t}>", f"tensor<{n}x{t}>", f"tensor<{m}x{n}x{t}>"
    return _func([x, b, y], "%0 = linalg.generic {indexing_maps = [affine_map<(d0, d1) -> (d0, d1)>, "
                            "affine_map<(d0, d1) -> (d1)>, affine_map<(d0, d1) -> (d0, d1)>], "
                            "iterator_types = [\"parallel\", \"parallel\"]} "
                            f"ins(%a0, %a1 : {x}, {b}) outs(%a2 : {y}) {{\n"
                            f"  ^bb0(%p: {t}, %q: {t}, %o: {t}):\n"
                            f"    %s = arith.addf %p, %q : {t}\n    %u = arith.mulf %s, %p : {t}\n"
                            f"    linalg.yield %u : {t}\n  }} -> {y}")


OPS = {
    "matmul 4096^3 f32": matmul(4096, 4096, 4096, "f32", "f32"),
    "matmul 4096^3 f16": matmul(4096, 4096, 4096),
    "matmul 8192x768 @ 768x3072 f16": matmul(8192, 3072, 768),
    "matmul 16x4096x4096 f16": matmul(16, 4096, 4096),
    "matmul 1000x30522x197 f16": matmul(1000, 30522, 197),
    "conv 32x64x56x56 3x3 f16": conv(32, 64, 58, 58, 64, 3),
    "conv 32x256x56x56 1x1 f16": conv(32, 256, 56, 56, 64, 1),
    "conv 32x64x57x57 3x3 s2 f16": conv(32, 64, 57, 57, 128, 3, 2),
    "depthwise 32x64x56x56 3x3 f16": depthwise(32, 64, 56, 56),
    "softmax-reduce 8192x4096 f16": row_reduce(8192, 4096),
    "layernorm-reduce 16384x1024 f16": row_reduce(16384, 1024),
    "gelu(x+b)*s 8192x8192 f16": gelu_like(8192, 8192),
    "row reduce 197x1000 f32": row_reduce(197, 1000, "f32"),
}


def _describe(s: policy.Schedule) -> str:
    return (f"block={list(s.block_tile)} thread={list(s.thread_tile)} threads={s.threads} "
            f"grid={list(s.grid)} tc={str(s.tensor_core).lower()} smem={s.smem_bytes}x{s.stages} "
            f"pad={list(s.smem_padding)} est={s.estimate * 1e6:.1f}us ({s.policy})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default="sm_90")
    parser.add_argument("--topk", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args(argv)
    hw = targets.get(args.target)
    ctx = context()
    medians = []
    print(f"Roller policy on {hw.name} ({hw.description}), top-{args.topk}, "
          f"{args.repeat} runs per op; times in ms")
    print(f"{'operator':34} {'info':>7} {'median':>7} {'max':>7} {'cpu':>7}  schedule")
    for name, text in OPS.items():
        with ctx, ir.Location.unknown():
            module = ir.Module.parse(text)
            fn = module.body.operations[0]
            op = next(o for o in fn.regions[0].blocks[0].operations
                      if linalg_info.is_linalg(o))
            started = time.perf_counter()
            info = linalg_info.info(op)
            info_ms = (time.perf_counter() - started) * 1e3
        times, cpu = [], []
        for _ in range(args.repeat):
            policy.forget()                 # time the construction, not the memo
            started, started_cpu = time.perf_counter(), time.process_time()
            schedules = policy.construct(info, hw, args.topk)
            times.append((time.perf_counter() - started) * 1e3)
            cpu.append((time.process_time() - started_cpu) * 1e3)
        medians.append(statistics.median(times))
        print(f"{name:34} {info_ms:7.1f} {statistics.median(times):7.2f} {max(times):7.2f} "
              f"{statistics.median(cpu):7.2f}  {_describe(schedules[0])}")
    print(f"median over operators: {statistics.median(medians):.2f} ms, "
          f"slowest operator: {max(medians):.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
