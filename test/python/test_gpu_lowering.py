"""lowering/kernels (SIMT families), build.py and host.py: tiles -> block programs -> kernels ->
gpu.binary + host plan.

Builds IR and binaries only (no GPU needed), except the tests marked ``gpu``, which run the
kernels with cuda-bindings and compare with PyTorch."""

import numpy as np
import pytest
from cuda_launch import run_kernel
from mlir import ir

import quartet.dialects as qd
from quartet.errors import QuartetError
from quartet.lowering import binary, kernels, rocm
from quartet.lowering.compose.kernel import inline_block_programs, standalone
from quartet.runtime.manifest import BufferArg, Copy
from quartet.lowering.host import lower_module_plans

MAPS = """
#id = affine_map<(d0, d1) -> (d0, d1)>
#row = affine_map<(d0, d1) -> (d0)>
#col = affine_map<(d0, d1) -> (d1)>
#bc = affine_map<(d0, d1) -> (d0, 0)>
"""


def softmax_text(R=64, N=256, dt="f16", attrs=""):
    return MAPS + f"""
func.func @softmax(%x: tensor<{R}x{N}x{dt}>) -> tensor<{R}x{N}x{dt}> {{
  %ninf = arith.constant 0xFF800000 : f32
  %zero = arith.constant 0.0 : f32
  %r = "quartet.tile"() ({{
    %e = tensor.empty() : tensor<{R}x{N}xf32>
    %xf = linalg.generic {{indexing_maps = [#id, #id], iterator_types = ["parallel", "parallel"]}}
        ins(%x : tensor<{R}x{N}x{dt}>) outs(%e : tensor<{R}x{N}xf32>) {{
      ^bb0(%a: {dt}, %o: f32):
        %0 = arith.extf %a : {dt} to f32
        linalg.yield %0 : f32
    }} -> tensor<{R}x{N}xf32>
    %e1 = tensor.empty() : tensor<{R}xf32>
    %m0 = linalg.fill ins(%ninf : f32) outs(%e1 : tensor<{R}xf32>) -> tensor<{R}xf32>
    %m = linalg.generic {{indexing_maps = [#id, #row], iterator_types = ["parallel", "reduction"]}}
        ins(%xf : tensor<{R}x{N}xf32>) outs(%m0 : tensor<{R}xf32>) {{
      ^bb0(%a: f32, %o: f32):
        %0 = arith.maximumf %a, %o : f32
        linalg.yield %0 : f32
    }} -> tensor<{R}xf32>
    %mx = tensor.expand_shape %m [[0, 1]] output_shape [{R}, 1] : tensor<{R}xf32> into tensor<{R}x1xf32>
    %ex = linalg.generic {{indexing_maps = [#id, #bc, #id], iterator_types = ["parallel", "parallel"]}}
        ins(%xf, %mx : tensor<{R}x{N}xf32>, tensor<{R}x1xf32>) outs(%e : tensor<{R}x{N}xf32>) {{
      ^bb0(%a: f32, %b: f32, %o: f32):
        %0 = arith.subf %a, %b : f32
        %1 = math.exp %0 : f32
        linalg.yield %1 : f32
    }} -> tensor<{R}x{N}xf32>
    %s0 = linalg.fill ins(%zero : f32) outs(%e1 : tensor<{R}xf32>) -> tensor<{R}xf32>
    %s = linalg.generic {{indexing_maps = [#id, #row], iterator_types = ["parallel", "reduction"]}}
        ins(%ex : tensor<{R}x{N}xf32>) outs(%s0 : tensor<{R}xf32>) {{
      ^bb0(%a: f32, %o: f32):
        %0 = arith.addf %a, %o : f32
        linalg.yield %0 : f32
    }} -> tensor<{R}xf32>
    %eh = tensor.empty() : tensor<{R}x{N}x{dt}>
    %y = linalg.generic {{indexing_maps = [#id, #row, #id], iterator_types = ["parallel", "parallel"]}}
        ins(%ex, %s : tensor<{R}x{N}xf32>, tensor<{R}xf32>) outs(%eh : tensor<{R}x{N}x{dt}>) {{
      ^bb0(%a: f32, %b: f32, %o: {dt}):
        %0 = arith.divf %a, %b : f32
        %1 = arith.truncf %0 : f32 to {dt}
        linalg.yield %1 : {dt}
    }} -> tensor<{R}x{N}x{dt}>
    gpu.yield %y : tensor<{R}x{N}x{dt}>
  }}) {attrs} : () -> tensor<{R}x{N}x{dt}>
  return %r : tensor<{R}x{N}x{dt}>
}}
"""


def sum_text(R, N, dim, dt="f16"):
    out = N if dim == 0 else R
    iters = '["reduction", "parallel"]' if dim == 0 else '["parallel", "reduction"]'
    omap = "#col" if dim == 0 else "#row"
    return MAPS + f"""
func.func @sum(%x: tensor<{R}x{N}x{dt}>) -> tensor<{out}x{dt}> {{
  %zero = arith.constant 0.0 : {dt}
  %r = "quartet.tile"() ({{
    %e = tensor.empty() : tensor<{out}x{dt}>
    %f = linalg.fill ins(%zero : {dt}) outs(%e : tensor<{out}x{dt}>) -> tensor<{out}x{dt}>
    %s = linalg.generic {{indexing_maps = [#id, {omap}], iterator_types = {iters}}}
        ins(%x : tensor<{R}x{N}x{dt}>) outs(%f : tensor<{out}x{dt}>) {{
      ^bb0(%a: {dt}, %o: {dt}):
        %0 = arith.addf %a, %o : {dt}
        linalg.yield %0 : {dt}
    }} -> tensor<{out}x{dt}>
    gpu.yield %s : tensor<{out}x{dt}>
  }}) : () -> tensor<{out}x{dt}>
  return %r : tensor<{out}x{dt}>
}}
"""


def bias_gelu_text(R, N, dt="f32"):
    return MAPS + f"""
func.func @bias_tanh(%x: tensor<{R}x{N}x{dt}>, %b: tensor<{N}x{dt}>) -> tensor<{R}x{N}x{dt}> {{
  %r = "quartet.tile"() ({{
    %e = tensor.empty() : tensor<{R}x{N}x{dt}>
    %y = linalg.generic {{indexing_maps = [#id, #col, #id], iterator_types = ["parallel", "parallel"]}}
        ins(%x, %b : tensor<{R}x{N}x{dt}>, tensor<{N}x{dt}>) outs(%e : tensor<{R}x{N}x{dt}>) {{
      ^bb0(%a: {dt}, %bb: {dt}, %o: {dt}):
        %0 = arith.addf %a, %bb : {dt}
        %1 = math.tanh %0 : {dt}
        linalg.yield %1 : {dt}
    }} -> tensor<{R}x{N}x{dt}>
    gpu.yield %y : tensor<{R}x{N}x{dt}>
  }}) : () -> tensor<{R}x{N}x{dt}>
  return %r : tensor<{R}x{N}x{dt}>
}}
"""


def first_tile(module):
    found = []
    module.operation.walk(lambda op: (found.append(op.opview)
                                      if op.operation.name == "quartet.tile" else None,
                                      ir.WalkResult.ADVANCE)[1])
    return found[0]


@pytest.fixture
def ctx():
    context = qd.context()
    with context, ir.Location.unknown():
        yield context


def simt_kernel(tile, target="sm_90"):
    """The SIMT block program of ``tile`` in its standalone kernel, bodies instantiated."""
    family = kernels.simt_plan(tile)[0]
    module = standalone(kernels.build_block_program(tile, target, "k_body", family), "k")
    inline_block_programs(module)
    return module


def kernel_text(text, target="sm_90"):
    module = ir.Module.parse(text)
    return str(simt_kernel(first_tile(module), target))


def lower_module(module, target, emit="bin"):
    module, plans = lower_module_plans(module, target, emit)
    return module, next(iter(plans.values()))


@pytest.mark.parametrize("text,kind", [
    (softmax_text(), "row"),
    (sum_text(64, 256, 1), "row"),
    (sum_text(64, 256, 0), "colreduce"),
    (bias_gelu_text(64, 256), "row"),
])
def test_builder_choice(ctx, text, kind):
    module = ir.Module.parse(text)
    assert kernels.simt_plan(first_tile(module))[0] == kind


def test_softmax_is_one_row_kernel(ctx):
    text = kernel_text(softmax_text(R=128, N=4096))
    assert text.count("gpu.launch ") == 1
    assert "vector<8xf16>" in text and "alignment = 16" in text
    assert text.count("gpu.shuffle  xor") >= 2          # max and sum across lanes
    assert "memref.view" in text                         # more than a warp per row
    assert "vector.reduction <maximumf>" in text and "vector.reduction <add>" in text


def test_irregular_rows_are_masked(ctx):
    # 1000 elements: V = 8 divides, but the last chunk of a row is partial.
    text = kernel_text(softmax_text(R=197, N=1000))
    assert "arith.select" in text and "scf.if" in text


def test_fp16_sum_accumulates_in_fp32(ctx):
    text = kernel_text(sum_text(256, 512, 1))
    assert "vector.reduction <add>, %" in text and "into f32" in text
    text = kernel_text(sum_text(256, 512, 0))
    assert "-> (vector<8xf32>)" in text


def test_schedule_threads_used_and_checked(ctx):
    text = kernel_text(softmax_text(attrs="{threads = 64 : i64}"))
    assert "%c64" in text
    module = ir.Module.parse(softmax_text(attrs="{threads = 48 : i64}"))
    with pytest.raises(QuartetError, match="threads=48 does not fit the hardware"):
        simt_kernel(first_tile(module), "sm_90")


def test_fallback_for_pooling(ctx):
    text = """
func.func @pool(%x: tensor<2x4x8x8xf32>) -> tensor<2x4x4x4xf32> {
  %ninf = arith.constant 0xFF800000 : f32
  %r = "quartet.tile"() ({
    %e = tensor.empty() : tensor<2x4x4x4xf32>
    %f = linalg.fill ins(%ninf : f32) outs(%e : tensor<2x4x4x4xf32>) -> tensor<2x4x4x4xf32>
    %w = tensor.empty() : tensor<2x2xf32>
    %p = linalg.pooling_nchw_max {dilations = dense<1> : vector<2xi64>, strides = dense<2> : vector<2xi64>}
        ins(%x, %w : tensor<2x4x8x8xf32>, tensor<2x2xf32>) outs(%f : tensor<2x4x4x4xf32>) -> tensor<2x4x4x4xf32>
    gpu.yield %p : tensor<2x4x4x4xf32>
  }) : () -> tensor<2x4x4x4xf32>
  return %r : tensor<2x4x4x4xf32>
}"""
    module = ir.Module.parse(text)
    tile = first_tile(module)
    assert kernels.simt_plan(tile)[0] == "fallback"
    kernel = simt_kernel(tile, "sm_90")
    assert "gpu.launch" in str(kernel) and "quartet.tile" not in str(kernel)
    (spec,) = binary.compile_launch_module(kernel, "sm_90")
    assert [a.role for a in spec.args] == ["input", "output"]


def test_unsupported_tile_names_the_op(ctx):
    # A chain whose reduction runs over the outer loop of a row program: no builder takes it.
    text = MAPS + """
func.func @odd(%x: tensor<64x32xf32>) -> tensor<64x32xf32> {
  %zero = arith.constant 0.0 : f32
  %r = "quartet.tile"() ({
    %e = tensor.empty() : tensor<32xf32>
    %f = linalg.fill ins(%zero : f32) outs(%e : tensor<32xf32>) -> tensor<32xf32>
    %s = linalg.generic {indexing_maps = [#id, #col], iterator_types = ["reduction", "parallel"]}
        ins(%x : tensor<64x32xf32>) outs(%f : tensor<32xf32>) {
      ^bb0(%a: f32, %o: f32):
        %0 = arith.addf %a, %o : f32
        linalg.yield %0 : f32
    } -> tensor<32xf32>
    %e2 = tensor.empty() : tensor<64x32xf32>
    %y = linalg.generic {indexing_maps = [#id, #col, #id], iterator_types = ["parallel", "parallel"]}
        ins(%x, %s : tensor<64x32xf32>, tensor<32xf32>) outs(%e2 : tensor<64x32xf32>) {
      ^bb0(%a: f32, %b: f32, %o: f32):
        %0 = arith.divf %a, %b : f32
        linalg.yield %0 : f32
    } -> tensor<64x32xf32>
    gpu.yield %y : tensor<64x32xf32>
  }) : () -> tensor<64x32xf32>
  return %r : tensor<64x32xf32>
}"""
    module = ir.Module.parse(text, ctx)
    tile = first_tile(module)
    with pytest.raises(kernels.Unsupported):
        kernels.simt_plan(tile)
    with pytest.raises(QuartetError, match="no kernel for 'linalg.generic'") as err:
        lower_module(module, "sm_90")
    assert err.value.location is not None


def test_lower_module_gives_binaries_and_host_plan(ctx):
    module = ir.Module.parse(softmax_text() + sum_text(64, 256, 0).replace("@sum", "@colsum")
                             .replace(MAPS, ""))
    module, plan = lower_module(module, "sm_90")
    text = str(module)
    assert "quartet.tile" not in text
    assert text.count("gpu.binary @") == 2 and text.count("gpu.launch_func") == 2
    assert "bufferization.to_buffer" in text and "memref.alloc()" in text
    assert plan.function == "softmax" and plan.target == "sm_90"
    kinds = {b.name: b.kind for b in plan.buffers}
    assert kinds == {"in0": "input", "t1": "output"}
    (launch,) = plan.launches
    assert launch.args == (BufferArg("in0"), BufferArg("t1"))
    assert launch.kernel.binary[:4] == b"\x7fELF" and plan.results == ["t1"]


def test_emit_ptx_keeps_ptx_text(ctx):
    module = ir.Module.parse(bias_gelu_text(16, 64))
    _, plan = lower_module(module, "sm_80", emit="ptx")
    ptx = plan.launches[0].kernel.binary.decode()
    assert ".target sm_80" in ptx and "ld.global.v4" in ptx
    assert "assembly = " in str(module)
    binary.ptxas_check(ptx, "sm_80")


def test_result_that_is_an_input_is_copied(ctx):
    module = ir.Module.parse(bias_gelu_text(8, 64).replace(
        "-> tensor<8x64xf32> {", "-> (tensor<8x64xf32>, tensor<8x64xf32>) {").replace(
        "return %r : tensor<8x64xf32>", "return %r, %x : tensor<8x64xf32>, tensor<8x64xf32>"))
    _, plan = lower_module(module, "sm_90")
    copies = [s for s in plan.walk() if isinstance(s, Copy)]
    assert [(c.src, c.dst) for c in copies] == [("in0", "out1")]


def test_host_ops_outside_tiles_are_rejected(ctx):
    text = bias_gelu_text(8, 64).replace(
        "return %r : tensor<8x64xf32>",
        "%z = tensor.cast %r : tensor<8x64xf32> to tensor<?x64xf32>\n"
        "  %h = tensor.cast %z : tensor<?x64xf32> to tensor<8x64xf32>\n"
        "  return %h : tensor<8x64xf32>")
    module = ir.Module.parse(text)     # (tensor.concat has a tile of its own: test_concat_tile)
    with pytest.raises(QuartetError, match="'tensor.cast' outside a quartet.tile"):
        lower_module(module, "sm_90")


def test_fp16_max_reduction_shuffles_in_fp32(ctx):
    text = MAPS + """
func.func @amax(%x: tensor<64x512xf16>) -> tensor<64xf16> {
  %ninf = arith.constant 0xFC00 : f16
  %r = "quartet.tile"() ({
    %e = tensor.empty() : tensor<64xf16>
    %f = linalg.fill ins(%ninf : f16) outs(%e : tensor<64xf16>) -> tensor<64xf16>
    %m = linalg.generic {indexing_maps = [#id, #row], iterator_types = ["parallel", "reduction"]}
        ins(%x : tensor<64x512xf16>) outs(%f : tensor<64xf16>) {
      ^bb0(%a: f16, %o: f16):
        %0 = arith.maximumf %a, %o : f16
        linalg.yield %0 : f16
    } -> tensor<64xf16>
    gpu.yield %m : tensor<64xf16>
  }) : () -> tensor<64xf16>
  return %r : tensor<64xf16>
}"""
    module = ir.Module.parse(text)
    kernel = simt_kernel(first_tile(module), "sm_90")
    assert ": f16 to f32" in str(kernel)
    (spec,) = binary.compile_launch_module(kernel, "sm_90")
    assert spec.binary[:4] == b"\x7fELF"


def test_amd_without_device_libraries_names_the_op(ctx):
    # erf is expanded since test_rocm.py's change; sin still needs ROCm's ocml.
    module = ir.Module.parse(bias_gelu_text(8, 64).replace("math.tanh", "math.sin"))
    with pytest.raises(QuartetError, match="'linalg.generic': AMDGPU code calls '__ocml_sin_f32'"):
        lower_module(module, "gfx942")


def test_amd_target_builds_hsaco(ctx):
    try:
        rocm.find_ld_lld()
    except QuartetError as e:
        pytest.skip(str(e))
    module = ir.Module.parse(softmax_text(R=32, N=512))
    _, plan = lower_module(module, "gfx942")
    header = binary.elf_header(plan.launches[0].kernel.binary)
    assert header["machine"] == binary.EM_AMDGPU


# ---------------------------------------------------------------------------------------------
# On a GPU: run the cubins with cuda-bindings and compare with PyTorch (CPU, float64).


def _run_spec(spec, arrays):
    return run_kernel(spec.binary, spec.entry, spec.grid, spec.block, spec.shared_bytes, arrays)


@pytest.mark.gpu
@pytest.mark.parametrize("R,N", [(197, 1000), (64, 4096)])
def test_softmax_numerics_on_gpu(ctx, R, N):
    import torch

    module = ir.Module.parse(softmax_text(R, N))
    _, plan = lower_module(module, "sm_90")
    x = np.random.default_rng(0).standard_normal((R, N)).astype(np.float16)
    out = np.full((R, N), np.nan, dtype=np.float16)
    _run_spec(plan.launches[0].kernel, [x, out])
    ref = torch.softmax(torch.from_numpy(x).double(), dim=-1).numpy()
    assert not np.isnan(out).any()
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 2e-3


@pytest.mark.gpu
@pytest.mark.parametrize("dim", [0, 1])
def test_sum_numerics_on_gpu(ctx, dim):
    module = ir.Module.parse(sum_text(300, 256, dim))
    _, plan = lower_module(module, "sm_90")
    x = np.random.default_rng(1).standard_normal((300, 256)).astype(np.float16)
    out = np.full((256 if dim == 0 else 300,), np.nan, dtype=np.float16)
    _run_spec(plan.launches[0].kernel, [x, out])
    ref = x.astype(np.float64).sum(axis=dim)
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 2e-3
