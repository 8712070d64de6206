"""Where the host time of one ``Program.__call__`` goes (issue 14: at most 10 us for one kernel).

    source bench/device_env.sh && python3 -m bench.profile_call [ARTIFACT ...] [--calls N]
    python -m bench.profile_call --fake-driver [ARTIFACT ...]      # here, no GPU

Default artifacts: the softmax and fp32 matmul rows of ``python -m bench.build``
(``.artifacts/bench/softmax_f16/roller`` and ``.artifacts/bench/matmul_f32_1024/roller``).
For each artifact and each call mode (``launches``, and ``graph`` with ``--graph``), the
script loads it, calls it with fresh CUDA torch tensors of its input shapes and prints:

1. the host time per call: batches of ``--batch`` calls issued back to back after a
   synchronisation, so the launch queue never fills and the time is the host's alone (the
   fastest batch: other work on the machine only adds time); beside it one empty torch op launch and one ``torch.empty``, for scale;
2. the same time split by phase, each phase timed alone over the same number of calls:
   binding the inputs (context, stream, checks, addresses), making and binding the outputs
   (``torch.empty``), issuing the work (driver calls), and what is left (the call itself);
3. cProfile's top functions by own time.

``--fake-driver`` runs the real CUDA backend on :mod:`bench.fake_driver` (driver calls that do
nothing) with CPU tensors posing as CUDA tensors (``is_cuda`` and ``torch.empty(device=cuda)``
patched): Quartet's own Python cost, measurable on a machine without a GPU.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``bench`` importable as a package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    __package__ = "bench"

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ARTIFACTS = [ROOT / ".artifacts/bench/softmax_f16/roller",
                     ROOT / ".artifacts/bench/matmul_f32_1024/roller"]


def fake_cuda_tensors() -> None:
    """CPU tensors answer as CUDA tensors on device 0 (for --fake-driver): ``is_cuda``,
    ``get_device``, torch's current stream (0), and ``torch.empty(device=cuda)`` handing out one
    cached tensor per shape and type, as the caching allocator hands back a freed block."""
    torch.Tensor.is_cuda = property(lambda self: True)
    torch.Tensor.get_device = lambda self: 0
    torch.cuda.is_available = lambda: True
    torch._C._cuda_getCurrentRawStream = lambda device: 0
    real_empty = torch.empty
    cache: dict = {}

    def empty(shape, *, dtype=None, device=None):
        key = (tuple(shape) if isinstance(shape, (tuple, list)) else (shape,), dtype)
        if key not in cache:
            cache[key] = real_empty(key[0], dtype=dtype)
        return cache[key]

    torch.empty = empty


def sync(fake: bool) -> None:
    if not fake:
        torch.cuda.synchronize()


def per_call_us(fn, calls: int, batch: int, fake: bool) -> float:
    """Host microseconds per ``fn()``: the fastest of the batches issued after a
    synchronisation (the machine's other work only ever adds time)."""
    times = []
    for _ in range(max(1, calls // batch)):
        sync(fake)
        t0 = time.perf_counter_ns()
        for _ in range(batch):
            fn()
        times.append((time.perf_counter_ns() - t0) / batch / 1e3)
    sync(fake)
    return min(times)


def phases(prog, xs, calls: int, batch: int, fake: bool) -> dict[str, float]:
    """Microseconds per call of each phase of ``Program.__call__``, each timed alone."""
    outputs = prog._outputs
    result = {
        "bind inputs": per_call_us(lambda: prog._bind_inputs(xs, None), calls, batch, fake),
        "outputs (torch.empty + bind)": per_call_us(
            lambda: [prog._bind_output(p, torch, None) for p in outputs], calls, batch, fake),
        "issue (driver)": per_call_us(prog._run, calls, batch, fake),
    }
    return result


def profile(prog, xs, calls: int) -> str:
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(calls):
        prog(*xs)
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(14)
    return out.getvalue()


def inputs_of(prog, fake: bool):
    from quartet.runtime import dtypes

    device = "cpu" if fake else "cuda"
    return [torch.randn(s.shape, device=device).to(dtypes.torch_dtype(s.dtype))
            for s in prog.manifest.inputs]


def report(path: Path, graph, args) -> None:
    from quartet.runtime import load

    prog = load(path, graph=graph)
    xs = inputs_of(prog, args.fake_driver)
    for _ in range(20):
        prog(*xs)
    sync(args.fake_driver)
    total = per_call_us(lambda: prog(*xs), args.calls, args.batch, args.fake_driver)
    print(f"\n{path.parent.name}/{path.name}: {len(prog.manifest.kernels)} kernel(s), "
          f"call mode {prog.call_mode}: host time per call {total:.2f} us")
    parts = phases(prog, xs, args.calls, args.batch, args.fake_driver)
    for name, us in parts.items():
        print(f"  {name:32s} {us:6.2f} us")
    print(f"  {'the call itself (rest)':32s} {total - sum(parts.values()):6.2f} us")
    if args.profile:
        print(profile(prog, xs, args.calls))
    prog.close()


def scale(args) -> None:
    device = "cpu" if args.fake_driver else "cuda"
    y = torch.empty(1, device=device)
    op = per_call_us(lambda: y.add_(1), args.calls, args.batch, args.fake_driver)
    empty = per_call_us(lambda: torch.empty((1024, 1024), dtype=torch.float16, device=device),
                        args.calls, args.batch, args.fake_driver)   # (fake: a cache lookup)
    print(f"for scale: one torch op launch {op:.2f} us; one torch.empty {empty:.2f} us "
          f"({'CPU tensors, fake driver' if args.fake_driver else torch.cuda.get_device_name()}; "
          f"load average {os.getloadavg()[0]:.1f})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.profile_call",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("artifacts", nargs="*", type=Path, default=DEFAULT_ARTIFACTS)
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=100,
                    help="calls per timed batch (few enough that the launch queue never fills)")
    ap.add_argument("--graph", action="store_true", help="also time graph=True")
    ap.add_argument("--profile", action="store_true", help="print cProfile's top functions")
    ap.add_argument("--fake-driver", action="store_true",
                    help="no GPU: driver calls that do nothing, CPU tensors posing as CUDA")
    args = ap.parse_args(argv)
    if args.fake_driver:
        from bench import fake_driver

        fake_driver.install()
        fake_cuda_tensors()
    scale(args)
    for path in args.artifacts:
        if not path.exists():
            print(f"\n{path}: missing (python -m bench.build --only softmax_f16,matmul_f32_1024)")
            continue
        for graph in ([None, True] if args.graph else [None]):
            report(path, graph, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
