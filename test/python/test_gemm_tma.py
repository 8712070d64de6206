"""The TMA warp-specialised GEMM (lowering/kernels/gemm_tma.py) and tensor-map arguments
from the lowering through the manifest to the runtime (issue 13).

No GPU here: tensor maps of every operand layout, the schedule's shared-memory budget, ptxas
accepting the kernel (no spills, the copies, barriers and register hand-over in the PTX), the
manifest arguments ``lower`` writes, their JSON and checks, and the interpreter re-encoding a
map when its buffer is bound elsewhere. The GPU check and timing against cuBLAS is
``bench/gemm/tma.py`` (build here, run there)."""

import json
import re

import pytest
from mlir import ir

import quartet.dialects as qd
from quartet.bench.gemm import cases
from quartet.bench.gemm.shapes import gemm_tile
from quartet.errors import QuartetError
from quartet.lowering import binary
from quartet.lowering.kernels import gemm, gemm_tma
from quartet.lowering.lower import lower
from quartet.runtime import targets
from quartet.runtime.artifact import ArtifactWriter
from quartet.runtime.interpreter import Interpreter
from quartet.runtime.manifest import Launch, TensorMapArg
from quartet.runtime.parse import manifest_from_json
from quartet.runtime.tensormap import encode_arguments

H200 = targets.get("sm_90")


@pytest.fixture
def ctx():
    context = qd.context()
    with context, ir.Location.unknown():
        yield context


def plan_of(**kw):
    module = ir.Module.parse(gemm_tile(**kw)[0])
    return module, gemm.plan(cases.tile_of(module), "sm_90")


# ---------------------------------------------------------------------------------------------
# Tensor maps of the operands


@pytest.mark.parametrize("a,b,want_a,want_b", [
    # A [M, K] row-major: K inner; B [K, N]: N inner, two 64-column boxes
    ("mk", "kn", ((136, 200), (272,), (64, 128), 1), ((264, 136), (528,), (64, 64), 2)),
    # A stored [K, M]: M inner, two 64-row boxes; B stored [N, K]: K inner, one box
    ("km", "nk", ((200, 136), (400,), (64, 64), 2), ((136, 264), (272,), (64, 128), 1)),
])
def test_operand_maps_of_each_layout(ctx, a, b, want_a, want_b):
    _, p = plan_of(m=200, n=264, k=136, a=a, b=b, bt=(128, 128, 64))
    assert p.engine == "wgmma_tma"
    (_, ma), (_, mb) = gemm_tma.operand_maps(p.problem, p.schedule)
    for m, (dims, strides, box, boxes) in ((ma, want_a), (mb, want_b)):
        assert (m.dims, m.strides, m.box, len(m.boxes)) == (dims, strides, box, boxes)
        assert m.swizzle == 128
    # the boxes of one operand tile its shared-memory tile exactly
    lay = gemm_tma.layout(p.problem, p.schedule)
    assert sum(m.box[0] * m.box[1] * 2 * len(m.boxes) for m in (ma, mb)) == lay.stage


def test_batched_operands_get_a_third_dimension(ctx):
    _, p = plan_of(m=200, n=264, k=136, batch=8, a="bmk", b="bnk", bt=(128, 128, 64))
    (_, ma), (_, mb) = gemm_tma.operand_maps(p.problem, p.schedule)
    assert ma.dims == (136, 200, 8) and ma.strides == (272, 200 * 136 * 2) and ma.batched
    assert mb.dims == (136, 264, 8) and mb.box == (64, 128, 1)


@pytest.mark.parametrize("kw,reason", [
    (dict(m=300, n=264, k=136, a="km"), "operand A: a stride of 600 bytes"),
    (dict(m=256, n=264, k=130), "operand A: a stride of 260 bytes"),
    (dict(m=256, n=256, k=128, dt="f32", out="f32"), "TMA kernels take f16 or bf16"),
])
def test_refusals_leave_the_problem_to_cp_async(ctx, kw, reason):
    module = ir.Module.parse(gemm_tile(**kw)[0])
    tile = cases.tile_of(module)
    from quartet.lowering.kernels.gemm_problem import analyze

    assert reason in gemm_tma.refusal(analyze(tile))
    if kw.get("dt") != "f32":
        assert gemm.plan(tile, "sm_90").engine == "wgmma"


def test_conv_is_not_a_tma_problem(ctx):
    module = ir.Module.parse(cases.conv2d(N=2, C=64, H=10, W=10, F=64, KH=3, KW=3,
                                          bt=(1, 64, 1, 128, 64, 1, 1),
                                          tt=(1, 64, 1, 128, 64, 1, 1), threads=128)[0])
    tile = cases.tile_of(module)
    assert gemm.plan(tile, "sm_90").engine == "wgmma"


# ---------------------------------------------------------------------------------------------
# Schedules


@pytest.mark.parametrize("bt,consumers,threads", [((128, 256, 64), 2, 384),
                                                   ((256, 128, 64), 2, 384),
                                                   ((64, 32, 64), 1, 256)])
def test_schedule_fits_shared_memory(ctx, bt, consumers, threads):
    _, p = plan_of(m=4096, n=4096, k=4096, bt=bt)
    s = p.schedule
    assert (s.bm, s.bn, s.consumers, s.threads) == (bt[0], bt[1], consumers, threads)
    assert s.stages >= 4 and p.shared_bytes <= H200.smem_per_block
    assert p.grid == (min(H200.num_units * max(1, H200.blocks_per_unit(threads, p.shared_bytes,
                                                                       0)),
                          (4096 // bt[0]) * (4096 // bt[1])), 1, 1)
    assert p.block == (threads, 1, 1) and p.chip == "sm_90a"


def test_a_deeper_pipeline_is_asked_for(ctx):
    _, p = plan_of(m=16, n=4096, k=4096, bt=(64, 32, 64), threads=128, stages=10)
    assert p.schedule.stages == 10 and p.grid == (128, 1, 1)


def test_small_grids_take_one_block_per_tile(ctx):
    _, p = plan_of(m=256, n=512, k=128)
    assert p.grid == (4, 1, 1)


# ---------------------------------------------------------------------------------------------
# The kernel


def test_ptxas_accepts_the_tma_kernel(ctx):
    module, p = plan_of(m=1000, n=520, k=200, bias=True, relu=True, bt=(128, 256, 64))
    kernel = gemm.build_gemm_kernel(cases.tile_of(module), "sm_90")
    (spec,) = binary.compile_launch_module(kernel, H200, emit="ptx")
    ptx = spec.notes["ptx"]
    report = binary.ptxas_check(ptx, "sm_90a")
    assert "0 bytes spill stores" in report
    # one copy of A (K inner) and four 64-column boxes of B per step, on the full barrier
    assert ptx.count("cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier") == 5
    assert "mbarrier.try_wait.parity" in ptx and "mbarrier.arrive.expect_tx" in ptx
    assert "setmaxnreg.inc.sync.aligned.u32 \t232" in ptx
    assert "setmaxnreg.dec.sync.aligned.u32 \t40" in ptx
    assert re.search(r"bar\.sync\s+1, 256;", ptx)      # the consumers' own barrier
    assert "wgmma.mma_async.sync.aligned.m64n256k16.f32.f16.f16" in ptx
    assert "st.global.v4.b32" in ptx                # 16-byte epilogue stores
    assert [a.role for a in spec.args][-2:] == ["tensormap", "tensormap"]


def test_lower_writes_tensor_map_arguments(ctx, tmp_path):
    module = ir.Module.parse(gemm_tile(m=304, n=264, k=136, a="km", b="nk")[0])
    writer = lower(module, "sm_90")
    m = writer.manifest()
    assert m.version == 3
    (k,) = m.kernels
    maps = [a for a in k.args if isinstance(a, TensorMapArg)]
    assert [(a.buffer, a.dims, a.strides, a.box, a.swizzle) for a in maps] == [
        ("in0", (304, 136), (608,), (64, 64), 128),
        ("in1", (136, 264), (272,), (64, 256), 128)]
    writer.save(tmp_path / "art")
    again = manifest_from_json(json.loads((tmp_path / "art" / "manifest.json").read_text()))
    assert again.kernels[0].args == k.args


# ---------------------------------------------------------------------------------------------
# The runtime side


def _writer(arg: TensorMapArg, backend_target="sm_90"):
    w = ArtifactWriter(backend_target)
    w.add_input("a", (64, 64), "float16")
    w.add_output("y", (64, 64), "float16")
    w.add_kernel("k", b"\0" * 16, "k", (1, 1, 1), (128, 1, 1), args=["a", "y", arg],
                 binary_format="cubin" if backend_target != "cpu" else "so")
    w.add_step(Launch("k"))
    return w


GOOD = TensorMapArg("a", "float16", (64, 64), (128,), (64, 64), 128)


@pytest.mark.parametrize("arg,words", [
    (TensorMapArg("a", "float16", (64, 64), (120,), (64, 64), 128), "multiples of 16"),
    (TensorMapArg("a", "float16", (64, 64), (128,), (64, 300), 128), "box sizes"),
    (TensorMapArg("a", "float16", (64, 64), (128,), (128, 64), 128), "at least the innermost"),
    (TensorMapArg("a", "float16", (64, 65), (128,), (64, 64), 128), "reaches byte"),
    (TensorMapArg("a", "float16", (64, 64), (128,), (64, 64), 128, offset=8), "offset"),
    (TensorMapArg("a", "float16", (64,), (128,), (64,), 0), "one stride fewer"),
    (TensorMapArg("nope", "float16", (64, 64), (128,), (64, 64), 128), "nope"),
])
def test_manifest_checks_tensor_maps(arg, words):
    with pytest.raises(QuartetError, match=words):
        _writer(arg).manifest()


def test_tensor_maps_are_cuda_only():
    with pytest.raises(QuartetError, match="only on the cuda backend"):
        _writer(GOOD, "cpu").manifest()


def test_encoder_arguments():
    args = encode_arguments(GOOD, 0x7000_0000)
    assert args == (6, 2, 0x7000_0000, (64, 64), (128,), (64, 64), (1, 1), 0, 3, 2, 0)
    bf = TensorMapArg("a", "bfloat16", (64, 64), (128,), (32, 64), 64)
    assert encode_arguments(bf, 0x100)[0] == 9 and encode_arguments(bf, 0x100)[8] == 2
    with pytest.raises(QuartetError, match="16-byte aligned"):
        encode_arguments(GOOD, 0x7000_0008)


class MapBackend:
    """Records launches and the tensor maps the interpreter asks for."""

    name = "record"

    def __init__(self):
        self.maps: list[tuple] = []
        self.launches: list[list] = []

    def tensor_map(self, arg, address):
        self.maps.append((arg.buffer, address))
        return 0xD000 + len(self.maps)

    def launch(self, prepared, args):
        self.launches.append(list(args))


def test_interpreter_encodes_maps_at_load_and_rebind():
    m = _writer(GOOD).manifest()
    backend = MapBackend()
    interp = Interpreter(m, backend, {"a": 0x1000, "y": 0x2000}, {"k": "K"})
    assert backend.maps == [("a", 0x1000)]
    interp.run()
    assert backend.launches == [[0x1000, 0x2000, 0xD001]]
    interp.rebind("a", 0x9000)
    assert backend.maps[-1] == ("a", 0x9000)
    interp.rebind("a", 0x9000)                      # same address: nothing to encode
    assert len(backend.maps) == 2
    interp.run()
    assert backend.launches[-1] == [0x9000, 0x2000, 0xD002]
