"""``tensor.concat`` for the GPU (lowering/concat.py, issue 16): the gathering tile that replaces
it computes the concatenation (checked through the CPU path, which runs tiles as they are), and
models that concatenate compile for sm_90."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import quartet.dialects as qd
from mlir import ir
from quartet.frontend.compile import compile as quartet_compile
from quartet.lowering import cpu
from quartet.lowering.concat import outline_concat

CONCAT = """
func.func @forward(%a: tensor<2x3x4xf32>, %b: tensor<2x1x4xf32>, %c: tensor<2x5x4xf32>)
    -> tensor<2x9x4xf32> {
  %r = tensor.concat dim(1) %a, %b, %c
      : (tensor<2x3x4xf32>, tensor<2x1x4xf32>, tensor<2x5x4xf32>) -> tensor<2x9x4xf32>
  return %r : tensor<2x9x4xf32>
}
"""


def test_concat_tile_computes_the_concatenation():
    ctx = qd.context()
    module = ir.Module.parse(CONCAT, ctx)
    with ctx, ir.Location.unknown():
        fn = module.body.operations[0]
        concat = next(o.operation for o in fn.regions[0].blocks[0].operations
                      if o.operation.name == "tensor.concat")
        outline_concat(concat)
    text = str(module)
    assert "tensor.concat" not in text and "quartet.tile" in text
    rng = np.random.default_rng(0)
    a, b, c = (rng.standard_normal(s).astype(np.float32) for s in ((2, 3, 4), (2, 1, 4), (2, 5, 4)))
    out, = cpu.run_cpu(text, [a, b, c], opt_level=0)
    np.testing.assert_array_equal(out, np.concatenate([a, b, c], axis=1))


class Concats(torch.nn.Module):
    def forward(self, a, b):
        return torch.cat([a, b * 2, a], 1), torch.cat([a, a], 0)


def test_model_with_concat_compiles_for_sm_90():
    compiled = quartet_compile(Concats(), (torch.randn(2, 3, 4), torch.randn(2, 5, 4)),
                               target="sm_90")
    assert len(compiled.manifest.kernels) >= 2


class Roll(torch.nn.Module):
    def forward(self, x):
        return torch.roll(x, 1, 0)


def test_concat_through_dynamic_casts_compiles_for_sm_90():
    """torch.roll concatenates two slices cast to tensor<?x3xf32>: the casts are folded away
    (a concat of dynamic shapes crashed the tile's parser). Its two slices are contiguous: the
    GPU program is two copies into the output, no kernel."""
    from quartet.runtime.manifest import Copy

    compiled = quartet_compile(Roll(), (torch.randn(5, 3),), target="sm_90")
    steps = [s for _, s in compiled.manifest.steps()]
    assert not compiled.manifest.kernels and [type(s) for s in steps] == [Copy, Copy]
    assert sorted(s.size for s in steps) == [12, 48]      # one row and four rows of 3 floats
    x = torch.randn(5, 3)
    cpu_compiled = quartet_compile(Roll(), (x,), target="cpu")
    torch.testing.assert_close(torch.as_tensor(cpu_compiled(x)), torch.roll(x, 1, 0))
