"""``roller-fuse`` on operators imported from PyTorch, and Roller's row policy.

torch-mlir turns one PyTorch operator into several linalg ops; after ``quartet-outline-tiles``
each is a tile, and ``roller-fuse`` must give back one tile per operator where one kernel can
compute it (passes/roller/fuse.py). Checked here on the real import: how many tiles remain, what
the merged tile's root is, that nothing merges where the target has no lowering for the result,
and that inlining the merged tiles gives back the same ops. Numerics of every merged operator
against PyTorch are in test_cpu_numerics.py (``fused``); the row policy's decisions are
checked against the measured-best row schedules (bench/simt/NOTES.md, run 2).
"""

# `mlir` before torch_mlir (through the frontend): see test_compile_cpu.py.
import mlir.ir as ir  # noqa: I001  (order matters)
from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from quartet.dialects import TileOp, collect
from quartet.frontend.compile import import_linalg, run_passes
from quartet.runtime import targets
from quartet.passes.roller import rows

H = torch.float16


class _Fn(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *args):
        return self.fn(*args)


OPERATORS = {
    # name: (function, input shapes, dtype, root op of the merged tile)
    "softmax": (lambda x: torch.softmax(x, -1), [(64, 197)], H, "linalg.generic"),
    "layernorm": (lambda x, w, b: F.layer_norm(x, (96,), w, b), [(33, 96), (96,), (96,)], H,
                  "linalg.generic"),
    "matmul_f16": (lambda a, b: a @ b, [(40, 64), (64, 24)], H, "linalg.matmul"),
    "matmul_bias_gelu": (lambda x, w, b: F.gelu(x @ w + b), [(40, 64), (64, 24), (24,)], H,
                         "linalg.matmul"),
    "bias_gelu_scale": (lambda x, b, s: F.gelu(x + b) * s, [(40, 64), (64,), (64,)], H,
                        "linalg.generic"),
    "conv_relu": (lambda x, w: F.relu(F.conv2d(x, w)), [(2, 8, 10, 10), (16, 8, 1, 1)], H,
                  "linalg.conv_2d_nchw_fchw"),
}


def _imported(name):
    fn, shapes, dtype, _ = OPERATORS[name]
    args = tuple(torch.randn(*s).to(dtype) for s in shapes)
    return import_linalg(_Fn(fn), args).mlir_text


def _tiles(module) -> list[TileOp]:
    return [op.opview for op in collect(module, lambda o: o.name == "quartet.tile")]


def _passes(text: str, pipeline: str):
    import quartet.dialects as qd
    from quartet import driver
    module = driver.parse(text, qd.context(), "<model>")
    driver.run_pipeline(module, f"builtin.module({pipeline})")
    return module


@pytest.mark.parametrize("name", list(OPERATORS))
def test_one_tile_per_operator_on_sm90(name):
    text = _imported(name)
    outlined = _tiles(_passes(text, "quartet-outline-tiles"))
    module = _passes(text, "quartet-outline-tiles,roller-fuse{target=sm_90}")
    tiles = _tiles(module)
    assert len(outlined) > 1, name          # torch-mlir made several ops of it
    assert len(tiles) == 1, (name, len(tiles))
    tile = tiles[0]
    assert tile.root.operation.name == OPERATORS[name][3]
    linalg_ops = [o for o in tile.computation if o.name.startswith("linalg.")]
    assert list(tile.edge_levels) == [2] * (len(linalg_ops) - 1)


def test_gfx942_keeps_contractions_apart():
    # no GEMM lowering on gfx942: fill, matmul and cast stay three tiles there
    text = _imported("matmul_f16")
    assert len(_tiles(_passes(text, "quartet-outline-tiles,roller-fuse{target=gfx942}"))) == 3
    # the row program still merges
    text = _imported("softmax")
    assert len(_tiles(_passes(text, "quartet-outline-tiles,roller-fuse{target=gfx942}"))) == 1


@pytest.mark.parametrize("name", ["softmax", "layernorm", "matmul_bias_gelu"])
def test_inline_after_fuse_gives_back_the_ops(name):
    text = _imported(name)

    def ops(module):
        names = []
        module.operation.walk(lambda op: (names.append(op.operation.name), ir.WalkResult.ADVANCE)[1])
        return Counter(n for n in names if n not in ("builtin.module",))

    before = ops(_passes(text, "canonicalize{max-iterations=0}"))
    after = ops(_passes(text, "quartet-outline-tiles,roller-fuse,quartet-inline-tiles"))
    assert after == before


def test_fp16_linear_is_imported_as_an_f32_matmul():
    """torch-mlir imports an fp16 ``F.linear`` as a transpose and f16->f32 casts of every
    operand feeding an f32 matmul: the casts are producers of the contraction's inputs (not
    an epilogue), so they stay tiles of their own and the product runs on CUDA cores. Folding
    them into a mixed-precision contraction is not done (README, status)."""
    fn = lambda x, w, b: F.gelu(F.linear(x, w, b))    # noqa: E731
    args = (torch.randn(40, 64).to(H), torch.randn(24, 64).to(H), torch.randn(24).to(H))
    text = import_linalg(_Fn(fn), args).mlir_text
    module = _passes(text, "quartet-outline-tiles,roller-fuse")
    tiles = _tiles(module)
    gemm = [t for t in tiles if t.root.operation.name == "linalg.matmul"]
    assert len(gemm) == 1 and len(tiles) == 5
    body = str(gemm[0].operation)
    assert "math.erf" in body and "arith.truncf" in body      # bias, cast, GELU: epilogue
    assert "tensor<40x64xf32>, tensor<64x24xf32>" in body      # the product itself is f32


def test_attention_softmax_absorbs_its_scale_but_not_the_matmuls():
    def attention(q, k, v):
        return torch.softmax(q @ k.transpose(-1, -2) * 0.125, -1) @ v

    args = tuple(torch.randn(2, 4, 16, 8).to(H) for _ in range(3))
    text = import_linalg(_Fn(attention), args).mlir_text
    module = _passes(text, "quartet-outline-tiles,roller-fuse")
    tiles = _tiles(module)
    softmax = [t for t in tiles if "math.exp" in str(t.operation)]
    assert len(softmax) == 1
    ops = [o.name for o in softmax[0].computation]
    assert "linalg.batch_matmul" not in ops and "linalg.matmul" not in ops
    # the scale (a multiply by a constant) joined the row program: no tile of its own
    alone = [t for t in tiles if t not in softmax and "arith.mulf" in str(t.operation)
             and t.root.operation.name == "linalg.generic"
             and "reduction" not in str(t.root.operation.attributes["iterator_types"])]
    assert not alone
    contractions = [t for t in tiles if t.root.operation.name == "linalg.batch_matmul"]
    assert len(contractions) == 2, [t.root.operation.name for t in tiles]


@pytest.mark.parametrize("space,vector,block,thread,threads", [
    ((8192, 4096), 8, (1, 4096), (1, 16), 256),       # softmax, measured best: 2 vectors, G=256
    ((16384, 1024), 8, (4, 1024), (1, 16), 256),      # layernorm: G=64, 4 rows per block
    ((8, 64), 8, (8, 64), (1, 16), 32),               # tiny: one whole warp, 8 rows
    ((1, 197), 1, (1, 197), (1, 2), 128),             # an odd row: scalars, 128 lanes
])
def test_row_policy(space, vector, block, thread, threads):
    s = rows.schedule(space, vector, targets.get("sm_90"), num_inputs=1)
    assert (s.block_tile, s.thread_tile, s.threads) == (block, thread, threads)
    assert s.threads % 32 == 0 and s.threads <= 1024


def test_row_policy_keeps_a_long_row_in_registers():
    s = rows.schedule((64, 30522), 2, targets.get("sm_90"), num_inputs=1)
    assert s.threads == 1024 and s.block_tile[-1] == 30522
    assert s.thread_tile[-1] <= 64 * 2          # the row builder keeps at most 64 vectors


def test_two_matrix_vector_products_stay_apart():
    """After roller-fold-casts an f32 ``F.linear`` is a contraction ``linalg.generic`` that the
    row analysis also reads as rows (one dot product per output): a second product reading
    the first one's results along its reduction loop needs every row's result, so the two must
    not become one row program (found on the H100: SkipNet's gated blocks came out wrong)."""
    def two(x, w1, w2):
        return F.linear(torch.relu(F.linear(x, w1)), w2)

    args = (torch.randn(1, 64), torch.randn(64, 64), torch.randn(64, 64))   # one space
    text = import_linalg(_Fn(two), args).mlir_text
    module = _passes(text, "roller-fold-casts,quartet-outline-tiles,roller-fuse")
    tiles = _tiles(module)
    reducing = [t for t in tiles
                if any(o.name == "linalg.generic"
                       and "reduction" in str(o.attributes["iterator_types"])
                       for o in t.computation)]
    assert len(reducing) == 2
    assert all(sum(1 for o in t.computation if o.name == "linalg.generic"
                   and "reduction" in str(o.attributes["iterator_types"])) == 1
               for t in reducing)
