"""The pass registry and driver from Python: the same names and errors as quartet-opt."""

import pytest

import quartet.dialects as qd
from quartet.errors import QuartetError
from quartet.driver import registry
from quartet.driver import parse, run_pipeline

SOURCE = """
func.func @f(%a: tensor<4x8xf32>, %b: tensor<8x16xf32>) -> tensor<4x16xf32> {
  %cst = arith.constant 0.000000e+00 : f32
  %0 = tensor.empty() : tensor<4x16xf32>
  %1 = linalg.fill ins(%cst : f32) outs(%0 : tensor<4x16xf32>) -> tensor<4x16xf32>
  %2 = linalg.matmul ins(%a, %b : tensor<4x8xf32>, tensor<8x16xf32>) outs(%1 : tensor<4x16xf32>) -> tensor<4x16xf32>
  %3 = scf.execute_region -> tensor<4x16xf32> {
    %4 = linalg.exp ins(%2 : tensor<4x16xf32>) outs(%0 : tensor<4x16xf32>) -> tensor<4x16xf32>
    scf.yield %4 : tensor<4x16xf32>
  }
  return %3 : tensor<4x16xf32>
}
"""


def test_outline_then_inline_is_identity():
    ctx = qd.context()
    module = parse(SOURCE, ctx)
    before = str(module)
    run_pipeline(module, "builtin.module(quartet-outline-tiles)")
    text = str(module)
    assert text.count('"quartet.tile"') == 3          # fill, matmul, and exp inside scf
    run_pipeline(module, "builtin.module(quartet-inline-tiles)")
    assert str(module) == before


def test_outline_twice_wraps_nothing_new():
    ctx = qd.context()
    module = parse(SOURCE, ctx)
    run_pipeline(module, "builtin.module(quartet-outline-tiles,quartet-outline-tiles)")
    assert str(module).count('"quartet.tile"') == 3


def test_mixed_pipeline_with_upstream_passes():
    ctx = qd.context()
    module = parse(SOURCE, ctx)
    run_pipeline(module, "builtin.module(quartet-outline-tiles,canonicalize,func.func(cse))")
    assert '"quartet.tile"' in str(module)


@pytest.mark.parametrize("pipeline,message", [
    ("builtin.module(nope)", "unknown pass or pipeline 'nope'"),
    ("builtin.module(quartet-outline-tiles{x=1})", "unknown option 'x'"),
    ("quartet-outline-tiles", "must have the form 'builtin.module(...)'"),
    ("builtin.module(cse", "must have the form"),
    ("builtin.module(func.func(cse)", "unbalanced"),
])
def test_pipeline_errors(pipeline, message):
    ctx = qd.context()
    module = parse(SOURCE, ctx)
    with pytest.raises(QuartetError, match=message.replace("(", r"\(").replace(")", r"\)")):
        run_pipeline(module, pipeline)


def test_parse_error_has_location():
    ctx = qd.context()
    with pytest.raises(QuartetError) as info:
        parse("func.func @f( {\n", ctx, "model.mlir")
    assert str(info.value).startswith("model.mlir:1:")


def test_registry_lists_the_first_passes():
    registry.load_all()
    assert "quartet-outline-tiles" in registry.PASSES
    assert "quartet-inline-tiles" in registry.PASSES
    for cls in registry.PASSES.values():
        assert cls.summary and cls.__doc__ is not None
