"""roller-split-reductions (passes/roller/split.py): column reductions over few columns split
into partials over blocks of rows and their reduction, for GPU targets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from mlir import ir

from quartet.dialects import collect
from quartet.frontend.compile import compile_to_artifact, import_linalg, run_passes
from quartet.lowering.cpu import run_cpu
from quartet.passes.roller.split import splits
from quartet.passes.welder.standalone import check_on_emulator
from quartet.runtime import targets

SM90 = targets.get("sm_90")


class _Reduce(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def _tiles(module):
    return [t.opview for t in collect(module, lambda o: o.name == "quartet.tile")]


def test_how_many_splits():
    """Enough blocks of rows for the colreduce grid to cover every SM twice, a power of two
    dividing the rows, at least 64 rows each; none when the grid covers half the SMs already."""
    assert splits(16384, 64, 8, SM90) == 256          # 1 block of columns -> 256 x 1
    assert splits(33554, 1000, 8, SM90) == 2          # 33554 = 2 x 16777
    assert splits(4096, 4096, 4, SM90) == 1           # 128 blocks of columns already
    assert splits(100, 64, 8, SM90) == 1              # too few rows to split


@pytest.mark.parametrize("shape,dtype,fn", [
    ((16384, 64), torch.float16, lambda x: x.sum(0)),
    ((8192, 200), torch.float32, lambda x: x.sum(0)),
    ((4096, 24), torch.float32, lambda x: x.sum(0)),
    ((2048, 3, 8), torch.float32, lambda x: x.sum(0)),     # 3-D: left alone
])
def test_split_column_reductions_compute_the_same(shape, dtype, fn):
    """The split IR (configured for sm_90) run by the CPU runner, each of its GPU kernels run
    on the NumPy emulator against the CPU target, and the whole model compiled for sm_90."""
    model = _Reduce(fn)
    x = torch.randn(*shape).to(dtype)
    module = run_passes(import_linalg(model, (x,)).mlir_text, "roller", "sm_90")
    with module.context, ir.Location.unknown():
        tiles = _tiles(module)
        split = len(tiles) == 2
        assert split == (len(shape) == 2)
        (out,) = run_cpu(str(module), [x.numpy()])
        want = fn(x.double()).numpy()
        # the CPU runner adds the fp16 partials in fp16, as the IR says (the GPU kernel in fp32)
        error = np.linalg.norm(out.astype(np.float64) - want) / np.linalg.norm(want)
        assert error < (5e-3 if dtype == torch.float16 else 1e-5)
        for tile in tiles:
            assert check_on_emulator(tile, SM90) < 5e-3
    writer, _, _ = compile_to_artifact(model, (x,), pipeline="roller", target="sm_90")
    assert len(writer.manifest().kernels) == len(tiles)


def test_the_cpu_target_does_not_split():
    model = _Reduce(lambda x: x.sum(0))
    x = torch.randn(16384, 64)
    module = run_passes(import_linalg(model, (x,)).mlir_text, "roller", "cpu")
    with module.context:
        assert len(_tiles(module)) == 1
