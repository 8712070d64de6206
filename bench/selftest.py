"""GPU self-test of the cuda backend: ``python -m quartet.bench.selftest``.

Builds small CUDA artifacts from hand-written PTX (assembled to a cubin with ``ptxas`` when one
is found, else loaded as PTX and compiled by the driver), runs them through
:func:`quartet.runtime.load` and compares with numpy. Covers: plain launches, PTX and cubin
images, weights, constant loops with an index argument, host while/if reading device
predicates, a cooperative kernel with a grid-wide barrier, CUDA-graph capture and replay, torch
tensors and streams, and the load-time refusals (architecture, oversized cooperative grid,
graph of a data-dependent program), weights replaced between calls and inputs given by name.
Prints ``N passed, N failed`` and exits non-zero on failure.

The same checks run under pytest as the ``gpu`` tests of test/python/test_runtime.py. Needs
numpy, cuda-bindings and a GPU; torch is used when present. No MLIR.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Callable

import numpy as np

from quartet.errors import QuartetError
from quartet.runtime import (
    ArtifactWriter,
    Copy,
    If,
    IndexArg,
    Launch,
    Loop,
    Memset,
    Predicate,
    ScalarArg,
    While,
    load,
)

PTX = r"""
.version 8.0
.target sm_80
.address_size 64

// c[i] = a[i] + b[i], i < n
.visible .entry vadd(.param .u64 pa, .param .u64 pb, .param .u64 pc, .param .u32 pn)
{
  .reg .pred %p<2>;
  .reg .b32 %r<6>;
  .reg .f32 %f<4>;
  .reg .b64 %rd<8>;
  ld.param.u64 %rd1, [pa];
  ld.param.u64 %rd2, [pb];
  ld.param.u64 %rd3, [pc];
  ld.param.u32 %r1, [pn];
  mov.u32 %r2, %ctaid.x;
  mov.u32 %r3, %ntid.x;
  mov.u32 %r4, %tid.x;
  mad.lo.s32 %r5, %r2, %r3, %r4;
  setp.ge.u32 %p1, %r5, %r1;
  @%p1 bra VADD_DONE;
  cvta.to.global.u64 %rd1, %rd1;
  cvta.to.global.u64 %rd2, %rd2;
  cvta.to.global.u64 %rd3, %rd3;
  mul.wide.u32 %rd4, %r5, 4;
  add.s64 %rd5, %rd1, %rd4;
  add.s64 %rd6, %rd2, %rd4;
  add.s64 %rd7, %rd3, %rd4;
  ld.global.f32 %f1, [%rd5];
  ld.global.f32 %f2, [%rd6];
  add.f32 %f3, %f1, %f2;
  st.global.f32 [%rd7], %f3;
VADD_DONE:
  ret;
}

// y[i] = x[i] * s + t, i < n
.visible .entry axpb(.param .u64 px, .param .u64 py, .param .f32 ps, .param .s64 pt, .param .u32 pn)
{
  .reg .pred %p<2>;
  .reg .b32 %r<6>;
  .reg .f32 %f<5>;
  .reg .b64 %rd<7>;
  ld.param.u64 %rd1, [px];
  ld.param.u64 %rd2, [py];
  ld.param.f32 %f1, [ps];
  ld.param.s64 %rd3, [pt];
  ld.param.u32 %r1, [pn];
  cvt.rn.f32.s64 %f2, %rd3;
  mov.u32 %r2, %ctaid.x;
  mov.u32 %r3, %ntid.x;
  mov.u32 %r4, %tid.x;
  mad.lo.s32 %r5, %r2, %r3, %r4;
  setp.ge.u32 %p1, %r5, %r1;
  @%p1 bra AXPB_DONE;
  cvta.to.global.u64 %rd1, %rd1;
  cvta.to.global.u64 %rd2, %rd2;
  mul.wide.u32 %rd4, %r5, 4;
  add.s64 %rd5, %rd1, %rd4;
  add.s64 %rd6, %rd2, %rd4;
  ld.global.f32 %f3, [%rd5];
  fma.rn.f32 %f4, %f3, %f1, %f2;
  st.global.f32 [%rd6], %f4;
AXPB_DONE:
  ret;
}

// acc[i] += x[i], i < n
.visible .entry accum(.param .u64 pacc, .param .u64 px, .param .u32 pn)
{
  .reg .pred %p<2>;
  .reg .b32 %r<6>;
  .reg .f32 %f<4>;
  .reg .b64 %rd<6>;
  ld.param.u64 %rd1, [pacc];
  ld.param.u64 %rd2, [px];
  ld.param.u32 %r1, [pn];
  mov.u32 %r2, %ctaid.x;
  mov.u32 %r3, %ntid.x;
  mov.u32 %r4, %tid.x;
  mad.lo.s32 %r5, %r2, %r3, %r4;
  setp.ge.u32 %p1, %r5, %r1;
  @%p1 bra ACCUM_DONE;
  cvta.to.global.u64 %rd1, %rd1;
  cvta.to.global.u64 %rd2, %rd2;
  mul.wide.u32 %rd3, %r5, 4;
  add.s64 %rd4, %rd1, %rd3;
  add.s64 %rd5, %rd2, %rd3;
  ld.global.f32 %f1, [%rd4];
  ld.global.f32 %f2, [%rd5];
  add.f32 %f3, %f1, %f2;
  st.global.f32 [%rd4], %f3;
ACCUM_DONE:
  ret;
}

// *counter -= 1; *flag = (*counter > 0)   (one thread)
.visible .entry dec(.param .u64 pcount, .param .u64 pflag)
{
  .reg .pred %p<2>;
  .reg .b32 %r<3>;
  .reg .b64 %rd<3>;
  ld.param.u64 %rd1, [pcount];
  ld.param.u64 %rd2, [pflag];
  cvta.to.global.u64 %rd1, %rd1;
  cvta.to.global.u64 %rd2, %rd2;
  ld.global.s32 %r1, [%rd1];
  sub.s32 %r1, %r1, 1;
  st.global.s32 [%rd1], %r1;
  setp.gt.s32 %p1, %r1, 0;
  selp.s32 %r2, 1, 0, %p1;
  st.global.s32 [%rd2], %r2;
  ret;
}

// Every block b writes data[b] = b + 1, waits at a grid-wide barrier (an atomic counter, which
// only terminates when all blocks are resident: a cooperative launch), then out[b] =
// data[(b + 1) % nblocks]. The counter must be zero on entry.
.visible .entry gridswap(.param .u64 pdata, .param .u64 pcounter, .param .u64 pout)
{
  .reg .pred %p<3>;
  .reg .b32 %r<8>;
  .reg .b64 %rd<9>;
  ld.param.u64 %rd1, [pdata];
  ld.param.u64 %rd2, [pcounter];
  ld.param.u64 %rd3, [pout];
  cvta.to.global.u64 %rd1, %rd1;
  cvta.to.global.u64 %rd2, %rd2;
  cvta.to.global.u64 %rd3, %rd3;
  mov.u32 %r1, %tid.x;
  setp.ne.u32 %p1, %r1, 0;
  @%p1 bra SWAP_DONE;
  mov.u32 %r2, %ctaid.x;
  mov.u32 %r3, %nctaid.x;
  add.u32 %r4, %r2, 1;
  mul.wide.u32 %rd4, %r2, 4;
  add.s64 %rd5, %rd1, %rd4;
  st.global.u32 [%rd5], %r4;
  membar.gl;
  atom.global.add.u32 %r5, [%rd2], 1;
SWAP_SPIN:
  ld.volatile.global.u32 %r6, [%rd2];
  setp.lt.u32 %p2, %r6, %r3;
  @%p2 bra SWAP_SPIN;
  membar.gl;
  rem.u32 %r7, %r4, %r3;
  mul.wide.u32 %rd6, %r7, 4;
  add.s64 %rd7, %rd1, %rd6;
  ld.volatile.global.u32 %r5, [%rd7];
  add.s64 %rd8, %rd3, %rd4;
  st.global.u32 [%rd8], %r5;
SWAP_DONE:
  ret;
}

// One block of n threads: y[i] = x[(i + 1) % n], staged through dynamic shared memory at byte
// offset 61440, past the 48 KiB that a kernel gets without opting in.
.extern .shared .align 16 .b8 dsmem[];
.visible .entry smemrot(.param .u64 px, .param .u64 py)
{
  .reg .b32 %r<8>;
  .reg .f32 %f<2>;
  .reg .b64 %rd<6>;
  ld.param.u64 %rd1, [px];
  ld.param.u64 %rd2, [py];
  cvta.to.global.u64 %rd1, %rd1;
  cvta.to.global.u64 %rd2, %rd2;
  mov.u32 %r1, %tid.x;
  mov.u32 %r2, %ntid.x;
  mul.wide.u32 %rd3, %r1, 4;
  add.s64 %rd4, %rd1, %rd3;
  ld.global.f32 %f1, [%rd4];
  mov.u32 %r3, dsmem;
  add.u32 %r3, %r3, 61440;
  shl.b32 %r4, %r1, 2;
  add.u32 %r5, %r3, %r4;
  st.shared.f32 [%r5], %f1;
  bar.sync 0;
  add.u32 %r6, %r1, 1;
  rem.u32 %r6, %r6, %r2;
  shl.b32 %r6, %r6, 2;
  add.u32 %r7, %r3, %r6;
  ld.shared.f32 %f1, [%r7];
  add.s64 %rd5, %rd2, %rd3;
  st.global.f32 [%rd5], %f1;
  ret;
}
"""

N = 1000
BLOCK = (128, 1, 1)
GRID = ((N + 127) // 128, 1, 1)


def find_ptxas() -> str | None:
    """ptxas from $QUARTET_PTXAS, the nvidia-cuda-nvcc wheel, PATH or /usr/local/cuda."""
    env = os.environ.get("QUARTET_PTXAS")
    if env:
        return env
    try:
        import nvidia

        for root in map(Path, nvidia.__path__):
            for candidate in sorted(root.glob("cu*/bin/ptxas")) + sorted(root.glob("cuda_nvcc/bin/ptxas")):
                if candidate.is_file():
                    return str(candidate)
    except ImportError:
        pass
    found = shutil.which("ptxas")
    if found:
        return found
    default = Path("/usr/local/cuda/bin/ptxas")
    return str(default) if default.is_file() else None


def assemble(ptx: str, arch: str, workdir: Path) -> bytes | None:
    """The cubin of ``ptx`` for ``arch`` (sm_90...), or None when no ptxas is available."""
    ptxas = find_ptxas()
    if ptxas is None:
        return None
    src, out = workdir / "kernels.ptx", workdir / "kernels.cubin"
    src.write_text(ptx)
    subprocess.run([ptxas, f"-arch={arch}", "-o", str(out), str(src)], check=True, capture_output=True)
    return out.read_bytes()


class Context:
    """What every check needs: a scratch folder, the GPU's architecture and the kernel image."""

    def __init__(self, workdir: Path):
        from quartet.runtime.cuda_backend import CudaBackend

        backend = CudaBackend(0)
        self.arch, self.sm_count = backend.device_arch, backend.sm_count
        backend.close()
        self.workdir = workdir
        self.cubin = assemble(PTX, self.arch, workdir)
        self.binary = self.cubin if self.cubin is not None else PTX.encode()
        self.binary_format = "cubin" if self.cubin is not None else "ptx"

    def writer(self) -> ArtifactWriter:
        return ArtifactWriter(self.arch, producer="device_selftest")

    def kernel(self, w: ArtifactWriter, name: str, entry: str, args, grid=GRID, block=BLOCK, **kw) -> str:
        return w.add_kernel(
            name, self.binary, entry, grid, block, args=args, binary_format=self.binary_format, **kw
        )

    def save(self, w: ArtifactWriter, name: str) -> Path:
        return w.save(self.workdir / name)


CHECKS: dict[str, Callable[[Context], None]] = {}


def check(fn: Callable[[Context], None]) -> Callable[[Context], None]:
    CHECKS[fn.__name__] = fn
    return fn


def _rand(seed: int, n: int = N) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(n).astype(np.float32)


def _expect_error(fn: Callable[[], object], *words: str) -> None:
    try:
        fn()
    except QuartetError as e:
        text = str(e)
        missing = [w for w in words if w not in text]
        assert not missing, f"error {text!r} does not mention {missing}"
        assert "\n" not in text, f"error is not one line: {text!r}"
        return
    raise AssertionError(f"expected a QuartetError mentioning {words}")


def _vadd_artifact(ctx: Context, name: str, binary_format: str | None = None) -> Path:
    w = ctx.writer()
    w.add_input("a", (N,), "float32")
    w.add_input("b", (N,), "float32")
    w.add_output("c", (N,), "float32")
    binary = PTX.encode() if binary_format == "ptx" else ctx.binary
    w.add_kernel(
        "add",
        binary,
        "vadd",
        GRID,
        BLOCK,
        args=["a", "b", "c", ScalarArg("int32", N)],
        binary_format=binary_format or ctx.binary_format,
    )
    w.add_step(Launch("add"))
    return ctx.save(w, name)


@check
def vector_add_numpy(ctx: Context) -> None:
    prog = load(_vadd_artifact(ctx, "vadd.qrt"))
    a, b = _rand(1), _rand(2)
    np.testing.assert_allclose(prog(a, b), a + b, rtol=1e-6)
    prog.close()


@check
def vector_add_ptx_jit(ctx: Context) -> None:
    prog = load(_vadd_artifact(ctx, "vadd_ptx", binary_format="ptx"))
    a, b = _rand(3), _rand(4)
    np.testing.assert_allclose(prog(a, b), a + b, rtol=1e-6)
    prog.close()


def _loop_artifact(ctx: Context, name: str) -> Path:
    """acc = sum over i < 4 of (x * 2 + i) + w, with w a weight."""
    w = ctx.writer()
    w.add_input("x", (N,), "float32")
    w.add_weight("w", np.arange(N, dtype=np.float32))
    w.add_output("acc", (N,), "float32")
    w.add_buffer("t", 4 * N)
    n = ScalarArg("int32", N)
    ctx.kernel(w, "axpb", "axpb", ["x", "t", ScalarArg("float32", 2.0), IndexArg("i"), n])
    ctx.kernel(w, "acc_t", "accum", ["acc", "t", n])
    ctx.kernel(w, "acc_w", "accum", ["acc", "w", n])
    w.add_step(Memset("acc", 0), Loop(4, [Launch("axpb"), Launch("acc_t")], index="i"), Launch("acc_w"))
    return ctx.save(w, name)


def _loop_expected(x: np.ndarray) -> np.ndarray:
    return sum(x * 2 + i for i in range(4)) + np.arange(N, dtype=np.float32)


@check
def weights_loop_index(ctx: Context) -> None:
    prog = load(_loop_artifact(ctx, "loop"))
    x = _rand(5)
    np.testing.assert_allclose(prog(x), _loop_expected(x), rtol=1e-5, atol=1e-5)
    prog.close()


@check
def graph_replay(ctx: Context) -> None:
    path = _loop_artifact(ctx, "loop_graph.qrt")
    prog = load(path, graph=True)
    for seed in (6, 7):
        x = _rand(seed)
        np.testing.assert_allclose(prog(x), _loop_expected(x), rtol=1e-5, atol=1e-5)
    graphed = prog.bench(_rand(8), warmup=3, repeat=20)
    assert graphed.min_ms > 0, graphed
    prog.close()
    plain = load(path, graph=False)
    interpreted = plain.bench(_rand(8), warmup=3, repeat=20)
    plain.close()
    print(f"  9 launches + 1 memset: interpreted {interpreted}; as a CUDA graph {graphed}")


def _while_if_artifact(ctx: Context, name: str) -> Path:
    """acc = x * (count - 1) via a host while on a device counter; then, if flag, acc += x again."""
    w = ctx.writer()
    w.add_input("x", (N,), "float32")
    w.add_input("count", (1,), "int32")
    w.add_input("flag", (1,), "int32")
    w.add_output("acc", (N,), "float32")
    w.add_buffer("counter", 4, "scalar")
    w.add_buffer("go", 4, "scalar")
    n = ScalarArg("int32", N)
    ctx.kernel(w, "dec", "dec", ["counter", "go"], grid=(1, 1, 1), block=(1, 1, 1))
    ctx.kernel(w, "acc", "accum", ["acc", "x", n])
    w.add_step(
        Memset("acc", 0),
        Copy("counter", "count", 4),
        While([Launch("dec")], Predicate("go"), [Launch("acc")], max_iterations=100),
        If(Predicate("flag"), [Launch("acc")]),
    )
    return ctx.save(w, name)


@check
def host_while_if(ctx: Context) -> None:
    prog = load(_while_if_artifact(ctx, "while_if"))
    x = _rand(9)
    for count, flag in ((5, 0), (3, 1), (1, 0)):
        got = prog(x, np.array([count], np.int32), np.array([flag], np.int32))
        np.testing.assert_allclose(got, x * (count - 1 + flag), rtol=1e-5, atol=1e-6)
    prog.close()


@check
def graph_refused_for_host_control_flow(ctx: Context) -> None:
    path = _while_if_artifact(ctx, "while_if_graph")
    _expect_error(lambda: load(path, graph=True), "graph=True", "program[2]")


def _gridswap_artifact(ctx: Context, name: str, blocks: int) -> Path:
    w = ctx.writer()
    w.add_output("out", (blocks,), "uint32")
    w.add_buffer("data", 4 * blocks)
    w.add_buffer("counter", 4, "scalar")
    ctx.kernel(
        w,
        "swap",
        "gridswap",
        ["data", "counter", "out"],
        grid=(blocks, 1, 1),
        block=(32, 1, 1),
        cooperative=True,
    )
    w.add_step(Memset("counter", 0), Launch("swap"))
    return ctx.save(w, name)


@check
def cooperative_grid_barrier(ctx: Context) -> None:
    blocks = 2 * ctx.sm_count
    prog = load(_gridswap_artifact(ctx, "coop", blocks))
    for _ in range(2):  # the memset step resets the barrier between calls
        out = prog()
        np.testing.assert_array_equal(out, (np.arange(blocks) + 1) % blocks + 1)
    prog.close()


@check
def cooperative_grid_too_large(ctx: Context) -> None:
    path = _gridswap_artifact(ctx, "coop_big", 1 << 20)
    _expect_error(lambda: load(path), "cooperative", "fit")


@check
def dynamic_shared_memory(ctx: Context) -> None:
    def artifact(name: str, shared_memory: int) -> Path:
        w = ctx.writer()
        w.add_input("x", (256,), "float32")
        w.add_output("y", (256,), "float32")
        ctx.kernel(w, "rot", "smemrot", ["x", "y"], grid=(1, 1, 1), block=(256, 1, 1), shared_memory=shared_memory)
        w.add_step(Launch("rot"))
        return ctx.save(w, name)

    prog = load(artifact("smem", 64 * 1024))
    x = _rand(11, 256)
    np.testing.assert_array_equal(prog(x), np.roll(x, -1))
    prog.close()
    _expect_error(lambda: load(artifact("smem_big", 1 << 20)), "shared memory", "'rot'")


@check
def copies_and_memsets(ctx: Context) -> None:
    w = ctx.writer()
    w.add_input("x", (16,), "float32")
    w.add_output("head", (4,), "float32")
    w.add_output("mask", (16,), "int32")
    w.add_step(
        Copy("head", "x", 16, src_offset=8),
        Memset("mask", 0),
        Memset("mask", 0x01020304, size=16, offset=8, width=4),
        Memset("mask", 0xBEEF, size=4, offset=48, width=2),
        Memset("mask", 0xFF, size=4, offset=60),
    )
    prog = load(ctx.save(w, "copies"))
    x = _rand(12, 16)
    head, mask = prog(x)
    np.testing.assert_array_equal(head, x[2:6])
    expected = np.zeros(16, np.int32)
    expected[2:6] = 0x01020304
    expected[12] = np.int32(np.uint32(0xBEEFBEEF).view(np.int32))
    expected[15] = -1
    np.testing.assert_array_equal(mask, expected)
    prog.close()


@check
def wrong_architecture(ctx: Context) -> None:
    major = int(ctx.arch[3:-1])
    w = ArtifactWriter(f"sm_{major + 1}0")
    w.add_output("c", (N,), "float32")
    w.add_kernel("k", b"\x7fELF not really a cubin", "vadd", GRID, BLOCK, args=["c"], binary_format="cubin")
    w.add_step(Launch("k"))
    path = w.save(ctx.workdir / "future.qrt")
    _expect_error(lambda: load(path), f"sm_{major + 1}0", ctx.arch)


@check
def wrong_input(ctx: Context) -> None:
    prog = load(_vadd_artifact(ctx, "vadd_bad"))
    a = _rand(10)
    _expect_error(lambda: prog(a, a[:10]), "'b'", "[1000]", "[10]")
    _expect_error(lambda: prog(a, a.astype(np.float64)), "'b'", "float64")
    prog.close()


@check
def torch_tensors_and_streams(ctx: Context) -> None:
    try:
        import torch
    except ImportError:
        print("  (torch not installed: skipped)")
        return
    if not torch.cuda.is_available():
        print("  (torch has no CUDA: skipped)")
        return
    prog = load(_vadd_artifact(ctx, "vadd_torch"))
    a = torch.randn(N, device="cuda")
    b = torch.randn(N, device="cuda")
    c = prog(a, b)
    assert isinstance(c, torch.Tensor) and c.is_cuda, type(c)
    torch.testing.assert_close(c, a + b)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        c2 = prog(a, b)  # torch's current stream is now `side`
    c3 = prog(a, b, stream=side)
    side.synchronize()
    torch.testing.assert_close(c2, a + b)
    torch.testing.assert_close(c3, a + b)
    c4 = prog(a, b, stream=int(side.cuda_stream))
    side.synchronize()
    torch.testing.assert_close(c4, a + b)
    # CPU torch tensors on a cuda program: outputs come back as CUDA tensors
    c5 = prog(a.cpu(), b.cpu())
    torch.testing.assert_close(c5, a + b)
    prog.close()
    # a captured graph replayed on the caller's torch stream
    graphed = load(_loop_artifact(ctx, "loop_torch.qrt"), graph=True)
    x = torch.randn(N, device="cuda")
    expected = torch.from_numpy(_loop_expected(x.cpu().numpy())).cuda()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        y = graphed(x)
    side.synchronize()
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
    graphed.close()


def _vadd_chain_artifact(ctx: Context, name: str) -> Path:
    """d = (a + b) + b through a temporary: two launches, so a graph by default."""
    w = ctx.writer()
    w.add_input("a", (N,), "float32")
    w.add_input("b", (N,), "float32")
    w.add_output("d", (N,), "float32")
    w.add_buffer("t", 4 * N)
    n = ScalarArg("int32", N)
    ctx.kernel(w, "add1", "vadd", ["a", "b", "t", n])
    ctx.kernel(w, "add2", "vadd", ["t", "b", "d", n])
    w.add_step(Launch("add1"), Launch("add2"))
    return ctx.save(w, name)


@check
def graph_follows_moving_tensors(ctx: Context) -> None:
    """The default graph of a two-launch program: new CUDA tensors every call are read and
    written in place (kernel nodes updated, nothing copied), numpy goes through the program's
    own buffers, a misaligned input is copied; every answer right."""
    try:
        import torch
    except ImportError:
        print("  (torch not installed: skipped)")
        return
    if not torch.cuda.is_available():
        print("  (torch has no CUDA: skipped)")
        return
    prog = load(_vadd_chain_artifact(ctx, "vadd_chain.qrt"))
    assert prog.call_mode == "graph", prog.call_mode
    for _ in range(5):
        a, b = torch.randn(N, device="cuda"), torch.randn(N, device="cuda")
        d = prog(a, b)
        assert d.data_ptr() not in prog.addresses.values()
        torch.testing.assert_close(d, a + 2 * b)
    an, bn = _rand(15), _rand(16)
    np.testing.assert_allclose(prog(an, bn), an + 2 * bn, rtol=1e-6)
    base = torch.randn(N + 1, device="cuda")
    torch.testing.assert_close(prog(base[1:], b), base[1:] + 2 * b)
    torch.testing.assert_close(prog(a, b), a + 2 * b)
    prog.close()


def _vadd_weight_artifact(ctx: Context, name: str) -> Path:
    """c = a + w, with w a weight (replaced between calls by load_weights)."""
    w = ctx.writer()
    w.add_input("a", (N,), "float32")
    w.add_weight("w", np.arange(N, dtype=np.float32))
    w.add_output("c", (N,), "float32")
    ctx.kernel(w, "add", "vadd", ["a", "w", "c", ScalarArg("int32", N)])
    w.add_step(Launch("add"))
    return ctx.save(w, name)


@check
def weights_replaced_between_calls(ctx: Context) -> None:
    """Program.load_weights: from numpy (host upload), from a CUDA tensor (device copy on
    torch's stream), into a captured graph; a wrong shape is one line."""
    path = _vadd_weight_artifact(ctx, "vadd_weight.qrt")
    a = _rand(11)
    for graph in (False, True):
        prog = load(path, graph=graph)
        np.testing.assert_allclose(prog(a), a + np.arange(N, dtype=np.float32), rtol=1e-6)
        w1 = _rand(12)
        prog.load_weights({"w": w1})
        np.testing.assert_allclose(prog(a), a + w1, rtol=1e-6)
        _expect_error(lambda: prog.load_weights({"w": w1[:10]}), "weight 'w'", "[1000]", "[10]")
        _expect_error(lambda: prog.load_weights({"v": w1}), "no weight named 'v'")
        try:
            import torch
        except ImportError:
            torch = None
        if torch is not None and torch.cuda.is_available():
            w2 = torch.randn(N, device="cuda")
            prog.load_weights({"w": w2})
            x = torch.from_numpy(a).cuda()
            torch.testing.assert_close(prog(x), x + w2)
        prog.close()


@check
def inputs_by_name(ctx: Context) -> None:
    prog = load(_vadd_artifact(ctx, "vadd_named.qrt"))
    a, b = _rand(13), _rand(14)
    np.testing.assert_allclose(prog(a=a, b=b), a + b, rtol=1e-6)
    np.testing.assert_allclose(prog(a, b=b), a + b, rtol=1e-6)
    _expect_error(lambda: prog(a, c=b), "unexpected input name(s) c", "(a, b)")
    _expect_error(lambda: prog(a, a=a, b=b), "given by position and by name")
    _expect_error(lambda: prog.bench(a, b, repeat=0), "repeat must be a positive number")
    prog.close()


def run_check(name: str, workdir: Path) -> None:
    """Run one check (for pytest); raises on failure."""
    CHECKS[name](Context(workdir))


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="quartet-selftest-") as tmp:
        ctx = Context(Path(tmp))
        print(
            f"device {ctx.arch}, {ctx.sm_count} SMs; kernels as {ctx.binary_format}"
            f"{' (ptxas: ' + find_ptxas() + ')' if ctx.cubin else ' (no ptxas found)'}"
        )
        passed = failed = 0
        for name, fn in CHECKS.items():
            try:
                fn(ctx)
            except Exception:
                failed += 1
                print(f"FAIL {name}")
                traceback.print_exc()
            else:
                passed += 1
                print(f"PASS {name}")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
