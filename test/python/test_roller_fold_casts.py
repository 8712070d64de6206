"""``roller-fold-casts`` on what torch-mlir imports for fp16 ``F.linear``, ``bmm`` and attention.

torch-mlir spells an fp16 ``F.linear`` as a transpose of the weight, extf casts of activation,
weight and bias, and an f32 matmul (passes/roller/casts.py). Checked here: after the pass the
transpose and the casts are gone and one mixed-precision ``linalg.generic`` reads the f16
tensors; the GEMM lowering plans that tile on tensor cores (it planned the f32 matmul on CUDA
cores); the whole thing compiles for sm_90 through ``compile_to_artifact`` (the pass inserted in
front of the ``roller`` pipeline); the CPU path computes what PyTorch computes in float64; IR
inside ``quartet.tile``, ops the rule does not cover and casts with other users stay.
"""

# `mlir` before torch_mlir (through the frontend): see test_compile_cpu.py.
import mlir.ir as ir  # noqa: I001  (order matters)

import importlib
import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from quartet.dialects import collect, context, linalg_info
from quartet.frontend.compile import import_linalg
from quartet.lowering import cpu
from quartet.lowering.kernels import gemm, gemm_problem
from quartet.driver import registry
from quartet.driver import parse, run_pipeline

H = torch.float16
FOLD = "roller-fold-casts"


class _Fn(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *args):
        return self.fn(*args)


def _inputs(name, shapes, dtype):
    gen = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    return tuple(torch.randn(s, generator=gen).to(dtype) for s in shapes)


def _import(fn, args) -> str:
    return import_linalg(_Fn(fn), args).mlir_text


def _run(text: str, pipeline: str):
    module = parse(text, context())
    if pipeline:
        run_pipeline(module, f"builtin.module({pipeline})")
    return module


def _ops(module, name):
    return collect(module, lambda o: o.name == name)


def _casts(module):
    """Element-wise generics whose body is only an extf."""
    found = []
    for op in _ops(module, "linalg.generic"):
        body = [o.operation.name for o in op.regions[0].blocks[0].operations]
        if body == ["arith.extf", "linalg.yield"]:
            found.append(op)
    return found


def _contractions(module):
    return [op for op in _ops(module, "linalg.generic")
            if "reduction" in str(op.attributes["iterator_types"])]


# ---------------------------------------------------------------------------------------------
# The rewrite.


def test_linear_f16_becomes_one_mixed_precision_contraction():
    text = _import(lambda x, w, b: F.gelu(F.linear(x, w, b)),
                   _inputs("linear", [(40, 64), (24, 64), (24,)], H))
    before = _run(text, "")
    assert len(_ops(before, "linalg.transpose")) == 1 and len(_casts(before)) == 3
    assert len(_ops(before, "linalg.matmul")) == 1

    module = _run(text, FOLD)
    assert not _ops(module, "linalg.transpose") and not _casts(module)
    assert not _ops(module, "linalg.matmul")
    (root,) = _contractions(module)
    fn = _ops(module, "func.func")[0]
    args = list(fn.regions[0].blocks[0].arguments)
    assert root.operands[0] == args[0] and root.operands[1] == args[1]    # x and w as imported
    info = linalg_info.info(root)
    assert info.element_types == ("f16", "f16", "f32")
    assert info.indexing_maps == (("d0", "d2"), ("d1", "d2"), ("d0", "d1"))   # w read as w^T
    assert info.payload == ("arith.extf", "arith.extf", "arith.mulf", "arith.addf",
                            "linalg.yield")
    # Rule 2: the bias add reads the f16 bias and extends it itself.
    (bias_add,) = [op for op in _ops(module, "linalg.generic") if root.results[0] in
                   list(op.operands)]
    assert bias_add.operands[1] == args[2]
    assert linalg_info.info(bias_add).payload[0] == "arith.extf"


def test_attention_scores_fold_the_transpose_through_the_collapse():
    # q @ k^T on [batch, heads, tokens, head_dim]: torch-mlir transposes k, collapses both to
    # 3-D and runs an f16 batch_matmul. The transpose goes; k is collapsed untransposed.
    text = _import(lambda q, k: q @ k.transpose(-1, -2),
                   _inputs("scores", [(2, 4, 16, 8), (2, 4, 16, 8)], H))
    before = _run(text, "")
    assert len(_ops(before, "linalg.transpose")) == 1
    assert len(_ops(before, "linalg.batch_matmul")) == 1
    module = _run(text, FOLD)
    assert not _ops(module, "linalg.transpose") and not _ops(module, "linalg.batch_matmul")
    (root,) = _contractions(module)
    info = linalg_info.info(root)
    assert info.operand_shapes == ((8, 16, 8), (8, 16, 8), (8, 16, 16))
    assert info.indexing_maps == (("d0", "d1", "d3"), ("d0", "d2", "d3"), ("d0", "d1", "d2"))


def test_plain_f16_bmm_is_left_alone():
    # torch.bmm on f16 arrives as an f16 batch_matmul with nothing in front: nothing to fold.
    text = _import(lambda a, b: torch.bmm(a, b), _inputs("bmm", [(4, 19, 8), (4, 8, 5)], H))
    assert str(_run(text, FOLD)) == str(_run(text, ""))


def test_ops_inside_tiles_are_left_alone():
    text = _import(lambda x, w, b: F.linear(x, w, b),
                   _inputs("linear", [(40, 64), (24, 64), (24,)], H))
    outlined = str(_run(text, "quartet-outline-tiles"))
    assert str(_run(text, f"quartet-outline-tiles,{FOLD}")) == outlined


CAST_SHARED = """
#id = affine_map<(d0, d1) -> (d0, d1)>
func.func @shared(%x: tensor<8x16xf16>, %w: tensor<16x4xf32>) -> (tensor<8x4xf32>, tensor<8x16xf32>) {
  %zero = arith.constant 0.0 : f32
  %e = tensor.empty() : tensor<8x16xf32>
  %xc = linalg.generic {indexing_maps = [#id, #id], iterator_types = ["parallel", "parallel"]}
      ins(%x : tensor<8x16xf16>) outs(%e : tensor<8x16xf32>) {
  ^bb0(%in: f16, %out: f32):
    %c = arith.extf %in : f16 to f32
    linalg.yield %c : f32
  } -> tensor<8x16xf32>
  %o = tensor.empty() : tensor<8x4xf32>
  %f = linalg.fill ins(%zero : f32) outs(%o : tensor<8x4xf32>) -> tensor<8x4xf32>
  %m = linalg.matmul ins(%xc, %w : tensor<8x16xf32>, tensor<16x4xf32>) outs(%f : tensor<8x4xf32>) -> tensor<8x4xf32>
  return %m, %xc : tensor<8x4xf32>, tensor<8x16xf32>
}
"""


def test_a_cast_with_another_user_stays_for_it():
    module = _run(CAST_SHARED, FOLD)
    assert len(_casts(module)) == 1                      # still returned
    (root,) = _contractions(module)
    assert linalg_info.info(root).element_types == ("f16", "f32", "f32")


TRUNCATING = """
#id = affine_map<(d0, d1) -> (d0, d1)>
func.func @truncating(%x: tensor<8x16xf16>, %w: tensor<16x4xf32>) -> tensor<8x4xf16> {
  %zero = arith.constant 0.0 : f16
  %e = tensor.empty() : tensor<8x16xf32>
  %xc = linalg.generic {indexing_maps = [#id, #id], iterator_types = ["parallel", "parallel"]}
      ins(%x : tensor<8x16xf16>) outs(%e : tensor<8x16xf32>) {
  ^bb0(%in: f16, %out: f32):
    %c = arith.extf %in : f16 to f32
    linalg.yield %c : f32
  } -> tensor<8x16xf32>
  %o = tensor.empty() : tensor<8x4xf16>
  %f = linalg.fill ins(%zero : f16) outs(%o : tensor<8x4xf16>) -> tensor<8x4xf16>
  %m = linalg.matmul ins(%xc, %w : tensor<8x16xf32>, tensor<16x4xf32>) outs(%f : tensor<8x4xf16>) -> tensor<8x4xf16>
  return %m : tensor<8x4xf16>
}
"""


def test_a_matmul_that_truncates_its_inputs_is_left_unchanged():
    assert str(_run(TRUNCATING, FOLD)) == str(_run(TRUNCATING, ""))


# ---------------------------------------------------------------------------------------------
# What the GEMM lowering makes of it.

CONFIGURE = "quartet-outline-tiles,roller-fuse{target=sm_90},roller-config{target=sm_90}"


def _gemm_tiles(module):
    with module.context, ir.Location.unknown():
        tiles = [t.opview for t in _ops(module, "quartet.tile")]
        return tiles, [(t, p) for t in tiles
                       if not isinstance(p := gemm_problem.analyze(t), str)]


def test_bert_size_linear_is_planned_on_tensor_cores():
    text = _import(lambda x, w, b: F.gelu(F.linear(x, w, b)),
                   _inputs("linear_bert", [(512, 768), (3072, 768), (3072,)], H))
    # As imported: the f32 matmul goes to CUDA cores, beside a transpose and three cast tiles.
    module = _run(text, CONFIGURE)        # kept alive: the tiles are handles into it
    tiles, gemms = _gemm_tiles(module)
    ((tile, prob),) = gemms
    assert (prob.a.dtype, prob.b.dtype) == ("f32", "f32") and len(tiles) == 5
    assert gemm.plan(tile, "sm_90").engine == "simt"
    # Folded: one tile (fill, contraction, bias, cast back, GELU) on tensor cores.
    module = _run(text, f"{FOLD},{CONFIGURE}")
    tiles, gemms = _gemm_tiles(module)
    ((tile, prob),) = gemms
    assert len(tiles) == 1
    assert (prob.m, prob.n, prob.k, prob.a.dtype, prob.b.dtype) == (512, 3072, 768, "f16", "f16")
    assert prob.b.contiguous == "row"          # w read in place: K is its contiguous dimension
    assert gemm.plan(tile, "sm_90").engine == "wgmma"


def test_linear_compiles_for_sm90_with_the_pass_in_front(monkeypatch):
    compile_mod = importlib.import_module("quartet.frontend.compile")
    roller = compile_mod.pipeline_passes

    def with_fold(pipeline, target):
        return roller(pipeline, target).replace("builtin.module(", f"builtin.module({FOLD},", 1)

    monkeypatch.setattr(compile_mod, "pipeline_passes", with_fold)
    args = _inputs("linear_bert", [(512, 768), (3072, 768), (3072,)], H)
    writer, result, _ = compile_mod.compile_to_artifact(
        _Fn(lambda x, w, b: F.gelu(F.linear(x, w, b))), args, target="sm_90")
    (kernel,) = writer.manifest().kernels
    assert "linalg.transpose" not in result.quartet
    assert kernel.shared_memory > 48 * 1024            # the wgmma schedule's staging
    cubin = writer.files()[kernel.binary]
    assert b"sm_90a" in cubin or b"wgmma" in cubin


def test_bert_layer_f16_compiles_to_fewer_kernels_and_computes_the_same(tmp_path):
    """A small fp16 BERT layer (bench/suite.py's): every GEMM is one tile on tensor cores, the
    transposes and casts of its projections are gone, and the artifact's CPU twin agrees with
    PyTorch in float64."""
    import quartet.runtime as rt
    from quartet.bench.suite import BertLayer
    from quartet.bench.e2e.cpu_twin import cpu_twin

    compile_mod = importlib.import_module("quartet.frontend.compile")
    from quartet.driver import registry
    registry.load_all()
    assert FOLD in registry.PIPELINES["roller"].expand({"target": "sm_90"})   # the pipeline's
    torch.manual_seed(0)
    model = BertLayer(96, 4, 384).to(H).eval()
    (x,) = _inputs("bert_layer", [(2, 16, 96)], H)
    writer, result, _ = compile_mod.compile_to_artifact(model, (x,), target="sm_90")
    # Without the pass: 31 tiles (7 transposes, f32 projections on CUDA cores); with it 14,
    # and 12 once roller-fuse copies the fill two GEMMs share into each of them. Measured.
    assert len(writer.manifest().kernels) == 12
    module = _run(result.quartet, "")
    _, gemms = _gemm_tiles(module)
    assert len(gemms) == 6 and all(p.a.dtype == p.b.dtype == "f16" for _, p in gemms)
    prog = rt.load(cpu_twin(writer, result.quartet).save(tmp_path / "twin"))
    try:
        out = prog(x.numpy())
    finally:
        prog.close()
    out = np.asarray(out[0] if isinstance(out, tuple) else out, dtype=np.float64)
    with torch.no_grad():
        ref = model.double()(x.double()).numpy()
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 2e-3


# ---------------------------------------------------------------------------------------------
# Numerics on the CPU path against PyTorch in float64 (test_cpu_numerics.py's metric).

NUMERICS = {
    # name: (function, shapes, dtype, whether the pass must change the IR)
    "linear_irregular": (lambda x, w, b: F.linear(x, w, b), [(197, 1000), (33, 1000), (33,)], H,
                         True),
    "bmm": (lambda a, b: torch.bmm(a, b), [(4, 197, 64), (4, 64, 50)], H, False),
    "bmm_b_transposed": (lambda a, b: a @ b.transpose(1, 2), [(3, 40, 64), (3, 50, 64)], H,
                         True),
    "attention_scores": (lambda q, k: q @ k.transpose(-1, -2), [(2, 3, 37, 16), (2, 3, 29, 16)],
                         H, True),
    "linear_f32": (lambda x, w: F.linear(x, w), [(37, 70), (50, 70)], torch.float32, True),
}
TOLERANCE = {torch.float16: 1e-2, torch.float32: 1e-4}


def _to_numpy(t):
    return t.contiguous().numpy()


@pytest.mark.parametrize("schedule", ["roller", "fused"])
@pytest.mark.parametrize("name", list(NUMERICS))
def test_cpu_numerics_after_folding(name, schedule):
    fn, shapes, dtype, changes = NUMERICS[name]
    args = _inputs(name, shapes, dtype)
    text = _import(fn, args)
    fold = _run(text, FOLD)
    assert (str(fold) != str(_run(text, ""))) == changes
    registry.load_all()
    steps = ["quartet-outline-tiles"]
    if schedule == "fused":
        steps.append("roller-fuse{target=sm_90}")
    steps.append("roller-config{target=cpu}")
    with context(), ir.Location.unknown():
        module = ir.Module.parse(text)
        run_pipeline(module, f"builtin.module({FOLD},{','.join(steps)})")
        program = cpu.CpuProgram(module, opt_level=0)
    (out,) = program([_to_numpy(t) for t in args])
    with torch.no_grad():
        ref = fn(*[t.double() for t in args]).numpy()
    got = np.asarray(out, dtype=np.float64)
    assert got.shape == ref.shape and np.isfinite(got).all()
    error = float(np.abs(got - ref).max()) / max(float(np.abs(ref).max()), 1e-30)
    assert error <= TOLERANCE[dtype], f"{name} {schedule}: relative error {error:.3g}"
