"""Memory-bound row and element-wise kernels at the copy limit (issue 13, item 3): the IR the
``row`` family builds (no GPU needed). The numerics run on the GPU machine through
``bench/rows/bandwidth.py`` (old and new kernels against PyTorch in float64)."""

import pytest
from mlir import ir

import quartet.dialects as qd
from quartet.lowering import kernels
from quartet.lowering.compose.kernel import inline_block_programs, standalone

MAPS = """
#id = affine_map<(d0, d1) -> (d0, d1)>
#col = affine_map<(d0, d1) -> (d1)>
#bc = affine_map<(d0, d1) -> (d0, 0)>
"""


def scaled_text(R, N, dt, attrs=""):
    """``(x + b) / sqrt(2)``: a division by a value the same for every element."""
    return MAPS + f"""
func.func @scaled(%x: tensor<{R}x{N}x{dt}>, %b: tensor<{N}x{dt}>) -> tensor<{R}x{N}x{dt}> {{
  %two = arith.constant 2.0 : {dt}
  %r = "quartet.tile"() ({{
    %e = tensor.empty() : tensor<{R}x{N}x{dt}>
    %y = linalg.generic {{indexing_maps = [#id, #col, #id], iterator_types = ["parallel", "parallel"]}}
        ins(%x, %b : tensor<{R}x{N}x{dt}>, tensor<{N}x{dt}>) outs(%e : tensor<{R}x{N}x{dt}>) {{
      ^bb0(%a: {dt}, %bb: {dt}, %o: {dt}):
        %s = math.sqrt %two : {dt}
        %0 = arith.addf %a, %bb : {dt}
        %1 = arith.divf %0, %s : {dt}
        linalg.yield %1 : {dt}
    }} -> tensor<{R}x{N}x{dt}>
    gpu.yield %y : tensor<{R}x{N}x{dt}>
  }}) {attrs} : () -> tensor<{R}x{N}x{dt}>
  return %r : tensor<{R}x{N}x{dt}>
}}
"""


@pytest.fixture
def ctx():
    context = qd.context()
    with context, ir.Location.unknown():
        yield context


def first_tile(module):
    found = []
    module.operation.walk(lambda op: (found.append(op.opview)
                                      if op.operation.name == "quartet.tile" else None,
                                      ir.WalkResult.ADVANCE)[1])
    return found[0]


def kernel_text(text, target="sm_90"):
    source = ir.Module.parse(text)
    tile = first_tile(source)
    family = kernels.simt_plan(tile)[0]
    module = standalone(kernels.build_block_program(tile, target, "k_body", family), "k")
    inline_block_programs(module)
    return str(module)


def test_fp16_division_by_a_uniform_value_multiplies_by_its_reciprocal(ctx):
    text = kernel_text(scaled_text(64, 256, "f16"))
    assert "arith.divf" in text and "vector<8xf16>" in text
    assert not any("arith.divf" in line and "vector<" in line for line in text.splitlines())
    assert any("arith.mulf" in line and "vector<8xf32>" in line for line in text.splitlines())
    # the uniform divisor (sqrt 2) is computed once, as a scalar
    assert any("math.sqrt" in line and ": f16" in line for line in text.splitlines())


def test_fp32_division_stays_an_ieee_division(ctx):
    text = kernel_text(scaled_text(64, 256, "f32"))
    assert any("arith.divf" in line and "vector<4xf32>" in line for line in text.splitlines())
