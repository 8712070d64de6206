"""Welder (passes/welder, lowering/kernels/fused*.py, lowering/emulate.py).

* Unit pieces: interval arithmetic and box propagation over maps and views, best-fit placement,
  transaction counting, strided layouts through views, the view-collapsing pass (numerics on
  the CPU unchanged).
* The emulator of GPU kernels (lowering/emulate.py) is checked first on kernels the GPU has
  already proven right (the mma.sync GEMM, the softmax row program) and on a kernel with a
  missing barrier (a race it must report).
* Every fused pattern the grouping may choose (``fused.PATTERNS``) has a numerical check here:
  its kernel, run on the emulator, against the CPU target on the same inputs (odd sequence
  lengths, masks, absorbed transposes); a pattern without one fails ``test_every_pattern``.
* Grouping: attention, a BERT layer and a causal GPT block end up in the expected kernels; a
  group whose footprint does not fit falls back to smaller groups and says why; a tuning
  record's times replace the model's.
* End to end: ``quartet.compile(pipeline="welder", target="cpu")`` against PyTorch.
"""

# `mlir` before torch_mlir (through the frontend): see test_compile_cpu.py.
import mlir.ir as ir  # noqa: I001  (order matters)

import dataclasses
import json

import numpy as np
import pytest
import torch

import quartet
import quartet.dialects as qd
from quartet.bench import suite
from quartet.dialects import collect
from quartet.driver.run import parse, run_pipeline
from quartet.frontend.compile import import_linalg
from quartet.lowering.kernels import fused
from quartet.lowering.kernels.layout import Layout
from quartet.passes.welder import propagate as P
from quartet.passes.welder.bestfit import best_fit
from quartet.passes.welder.cost import sector_bytes
from quartet.passes.welder.graph import TileGraph, tiles_by_block
from quartet.passes.welder.group import Grouper
from quartet.passes.welder.record import Record, key_of
from quartet.passes.welder.standalone import check_on_emulator
from quartet.runtime import targets

H = torch.float16
SM90 = targets.get("sm_90")
ROLLER = ("builtin.module(roller-fold-casts,welder-collapse-views,quartet-outline-tiles,"
          "roller-fuse{target=sm_90},roller-config{target=sm_90})")


# ---------------------------------------------------------------------------------------------
# Units


def _expr(text: str, n: int) -> ir.AffineExpr:
    dims = ", ".join(f"d{i}" for i in range(n))
    amap = ir.AffineMapAttr(ir.Attribute.parse(f"affine_map<({dims}) -> ({text})>")).value
    return amap.results[0]


def test_interval_arithmetic():
    with ir.Context():
        box = ((2, 5), (0, 3))
        assert P.interval(_expr("d0 * 2 + d1", 2), box) == (4, 13)       # strided window
        assert P.interval(_expr("d0 floordiv 4", 2), box) == (0, 1)
        assert P.interval(_expr("d0 mod 4", 2), box) == (0, 3)           # wraps: whole range
        assert P.interval(_expr("d1 mod 8", 2), box) == (0, 3)           # no wrap: exact
        assert P.interval(_expr("d0 * -1 + 7", 2), box) == (2, 5)


def test_view_boxes():
    with qd.context() as ctx, ir.Location.unknown():
        m = ir.Module.parse("""
        func.func @f(%a: tensor<32x96xf16>) -> (tensor<2x16x96xf16>, tensor<512xf16>, tensor<4x8xf16>) {
          %e = tensor.expand_shape %a [[0, 1], [2]] output_shape [2, 16, 96] : tensor<32x96xf16> into tensor<2x16x96xf16>
          %c = tensor.collapse_shape %e [[0, 1, 2]] : tensor<2x16x96xf16> into tensor<3072xf16>
          %s = tensor.extract_slice %a[8, 16] [4, 8] [1, 2] : tensor<32x96xf16> to tensor<4x8xf16>
          %x = tensor.extract_slice %c[0] [512] [1] : tensor<3072xf16> to tensor<512xf16>
          return %e, %x, %s : tensor<2x16x96xf16>, tensor<512xf16>, tensor<4x8xf16>
        }""", ctx)
        ops = [o.operation for o in m.body.operations[0].regions[0].blocks[0].operations][:4]
        expand, coll, sl, _ = ops
        # rows 3..4 of batch 1 -> rows 19..20 of the source
        assert P.view_source_box(expand, ((1, 1), (3, 4), (0, 95))) == ((19, 20), (0, 95))
        # elements 100..200 of the flat view: one batch, rows 1..2, every column (bounding box)
        assert P.view_source_box(coll, ((100, 200),)) == ((0, 0), (1, 2), (0, 95))
        assert P.view_source_box(sl, ((1, 2), (0, 7))) == ((9, 10), (16, 30))


def test_best_fit_reuses_freed_holes():
    # a (0..1), b (1..2) live together; c (3..4) fits where a was
    placement = best_fit([(1024, 0, 1), (512, 1, 2), (1024, 3, 4)], align=128)
    assert placement.offsets[2] == placement.offsets[0]
    assert placement.peak == 1536


def test_sector_bytes_inflate_uncoalesced_access():
    # 64 rows of 64 halves: 128-byte runs; a column (1 element per row): a sector per row
    assert sector_bytes(((0, 63), (0, 63)), (1024, 1024), 2, 32) == 64 * 128
    assert sector_bytes(((0, 63), (5, 5)), (1024, 1024), 2, 32) == 64 * 32
    # whole rows merge into one run
    assert sector_bytes(((0, 3), (0, 1023)), (1024, 1024), 2, 32) == 4 * 2048


def test_layout_through_views_matches_numpy():
    a = np.arange(32 * 96).reshape(32, 96)
    view = a.reshape(2, 16, 3, 4, 8).transpose(2, 0, 3, 1, 4)[1].reshape(8, 16, 8)
    lay = Layout.row_major((32, 96)).expand([[0, 1], [2, 3, 4]], (2, 16, 3, 4, 8)) \
        .permute([2, 0, 3, 1, 4]).slice([1, 0, 0, 0, 0], [1, 2, 4, 16, 8], [1] * 5, 4) \
        .collapse([[0, 1], [2], [3]])
    assert lay.shape == (8, 16, 8)

    class Em:      # static integer arithmetic, as gemm_ir.Emitter folds it
        add = staticmethod(lambda x, y: x + y)
        mul = staticmethod(lambda x, y: x * y)
        div = staticmethod(lambda x, y: x // y)
        rem = staticmethod(lambda x, y: x % y)

    for z, m, k in ((0, 0, 0), (5, 7, 3), (7, 15, 7), (3, 2, 1)):
        assert a.reshape(-1)[lay.emit_offset(Em, [z, m, k])] == view[z, m, k]
    assert lay.stride(1) == 96 and lay.stride(2) == 1 and lay.stride(0) is None


# ---------------------------------------------------------------------------------------------
# Models


class _Fn(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *args):
        return self.fn(*args)


def _welder_module(model, inputs, pipeline="builtin.module(welder{target=sm_90})"):
    ctx = qd.context()
    m = parse(import_linalg(model, inputs).mlir_text, ctx, "<test>")
    run_pipeline(m, pipeline, source_name="<test>")
    return m


def _tiles(m):
    return [t.opview for t in collect(m, lambda o: o.name == "quartet.tile")]


def _fused(m, pattern):
    return [t for t in _tiles(m) if t.kernel == "fused" and
            ir.StringAttr(t.operation.attributes["welder.pattern"]).value == pattern]


def _attention(tokens=77, dim=64, heads=4, causal=False, batch=2):
    torch.manual_seed(0)
    mod = (suite.CausalAttention(dim, heads, tokens) if causal else
           suite.Attention(dim, heads)).to(H).eval()
    return mod, (torch.randn(batch, tokens, dim, dtype=H),)


def test_collapse_views_keeps_values():
    from quartet.lowering.cpu import run_cpu

    torch.manual_seed(0)
    model = suite.MLP(32, 64).to(H).eval()
    x = torch.randn(2, 5, 32, dtype=H)
    text = import_linalg(model, (x,)).mlir_text
    ctx = qd.context()
    m = parse(text, ctx, "<test>")
    run_pipeline(m, "builtin.module(roller-fold-casts,welder-collapse-views)", source_name="t")
    # the GELU and the layer norm now read the GEMMs' 2-D results: no expand_shape until the end
    body = str(m.body.operations[0])
    assert body.count("tensor.expand_shape") == 1
    inputs = [x.numpy()] + [p.detach().numpy() for p in model.parameters()]
    a = run_cpu(text, inputs)[0].astype(np.float64)
    b = run_cpu(str(m), inputs)[0].astype(np.float64)
    assert np.linalg.norm(a - b) / np.linalg.norm(a) < 1e-3


# ---------------------------------------------------------------------------------------------
# The emulator


def _roller_tile(model, inputs, target):
    from quartet.frontend.compile import run_passes
    from quartet.lowering.prepare import prepare

    m = run_passes(import_linalg(model, inputs).mlir_text, "roller", target)
    prepare(m.operation)
    return m, _tiles(m)[0]


def _emulate_tile(m, tile, chip, inputs):
    from quartet.lowering.build import block_program
    from quartet.lowering.compose.kernel import inline_block_programs, standalone
    from quartet.lowering.emulate import run_kernel
    from quartet.lowering.kernels import kernel_inputs

    fn_args = list(m.body.operations[0].regions[0].blocks[0].arguments)
    with m.context, tile.location:
        bp = block_program(tile, chip, "body")
        k = standalone(bp, "kernel")
        inline_block_programs(k)
    ins = [inputs[fn_args.index(v)].numpy() for v in kernel_inputs(tile)]
    out = np.full(tuple(ir.RankedTensorType(tile.results[0].type).shape), np.nan, np.float16)
    run_kernel(k, ins + [out])
    return out, k


def test_emulator_runs_the_mma_sync_gemm():
    torch.manual_seed(0)
    xs = (torch.randn(77, 96, dtype=H), torch.randn(96, 72, dtype=H))
    m, tile = _roller_tile(_Fn(lambda a, b: a @ b), xs, "sm_80")
    assert tile.tensor_core
    out, _ = _emulate_tile(m, tile, targets.get("sm_80"), xs)
    ref = (xs[0].double() @ xs[1].double()).numpy()
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 2e-3


def test_emulator_runs_the_softmax_row_program():
    torch.manual_seed(0)
    xs = (torch.randn(37, 200, dtype=H),)
    m, tile = _roller_tile(_Fn(lambda x: torch.softmax(x, -1)), xs, "sm_90")
    out, _ = _emulate_tile(m, tile, SM90, xs)
    ref = torch.softmax(xs[0].double(), -1).numpy()
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 2e-3


def test_emulator_reports_a_missing_barrier():
    from quartet.lowering.emulate import Race, run_kernel

    text = """
    func.func @k(%out: memref<64xf32>) {
      %c1 = arith.constant 1 : index
      %c64 = arith.constant 64 : index
      %c256 = arith.constant 256 : i32
      gpu.launch blocks(%bx, %by, %bz) in (%x = %c1, %y = %c1, %z = %c1)
                 threads(%tx, %ty, %tz) in (%sx = %c64, %sy = %c1, %sz = %c1)
                 dynamic_shared_memory_size %c256 {
        %s = gpu.dynamic_shared_memory : memref<?xi8, #gpu.address_space<workgroup>>
        %c0 = arith.constant 0 : index
        %v = memref.view %s[%c0][] : memref<?xi8, #gpu.address_space<workgroup>> to memref<64xf32, #gpu.address_space<workgroup>>
        %f = arith.index_cast %tx : index to i32
        %g = arith.sitofp %f : i32 to f32
        memref.store %g, %v[%tx] : memref<64xf32, #gpu.address_space<workgroup>>
        %c63 = arith.constant 63 : index
        %r = arith.subi %c63, %tx : index
        %w = memref.load %v[%r] : memref<64xf32, #gpu.address_space<workgroup>>
        memref.store %w, %out[%tx] : memref<64xf32>
        gpu.terminator
      }
      return
    }"""
    with qd.context() as ctx:
        bad = ir.Module.parse(text, ctx)
        with pytest.raises(Race):
            run_kernel(bad, [np.zeros(64, np.float32)])
        good = ir.Module.parse(text.replace("%c63 = arith", "gpu.barrier\n %c63 = arith"), ctx)
        out = np.zeros(64, np.float32)
        run_kernel(good, [out])
        assert (out == np.arange(63, -1, -1)).all()


# ---------------------------------------------------------------------------------------------
# Fused kernels on the emulator against the CPU target (one check per pattern at least)


def _check_pattern(pattern, model, inputs, nodes, tol=3e-3, configs=None):
    """Merge the tiles ``nodes`` (indices after Roller's passes) as welder-fuse would, then
    check every configuration the pattern offers that the emulator runs (mma.sync, not wgmma)
    against the CPU target (the first ``configs`` of them when given); return the merged
    tile's ops."""
    from quartet.passes.welder.fuse import configure
    from quartet.passes.welder.group import merged_tile

    ctx = qd.context()
    m = parse(import_linalg(model, inputs).mlir_text, ctx, "<test>")
    run_pipeline(m, ROLLER, source_name="<test>")
    with ctx, ir.Location.unknown():
        graph = TileGraph(tiles_by_block(m)[0])
        tile = merged_tile(graph, [graph.nodes[i] for i in nodes])
        plan = fused.analyze(tile, SM90)
        assert plan.pattern == pattern
        checked = 0
        for choice in plan.choices:
            if choice.engine == "wgmma":
                continue            # not emulated: bench/welder_tune.py checks it on the GPU
            configure(tile, SM90, "fused:" + pattern, choice.params)
            err = check_on_emulator(tile, SM90)
            assert err < tol, f"{pattern} {choice.params}: relative error {err}"
            checked += 1
            if checked == configs:
                break
        assert checked
        return [o.name for o in tile.computation], str(tile.operation)


CHECKS = {
    # pattern -> (model, inputs, tiles to merge after Roller's passes)
    "attention": lambda: _attention(tokens=77, dim=64, heads=4) + ([1, 2, 3, 4, 5],),
    "gemm_rows": lambda: (suite.MLP(64, 128).to(H).eval(),
                          (torch.randn(2, 21, 64, dtype=H),), [1, 2]),
    "gemm_chain": lambda: (torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.GELU(),
                                               torch.nn.Linear(256, 64)).to(H).eval(),
                           (torch.randn(3, 21, 64, dtype=H),), [0, 1]),
    "rows_gemm": lambda: (torch.nn.Sequential(torch.nn.LayerNorm(64), torch.nn.Linear(64, 96),
                                              torch.nn.GELU()).to(H).eval(),
                          (torch.randn(2, 21, 64, dtype=H),), [0, 1]),
}


@pytest.mark.parametrize("pattern", sorted(CHECKS))
def test_fused_kernel_on_the_emulator(pattern):
    torch.manual_seed(0)
    model, inputs, nodes = CHECKS[pattern]()
    _check_pattern(pattern, model, inputs, nodes)


def test_every_pattern_has_a_numerical_check():
    assert set(fused.PATTERNS) <= set(CHECKS), \
        "a fused pattern the grouping may choose has no emulator check in CHECKS"


def test_causal_attention_on_the_emulator():
    model, inputs = _attention(tokens=37, dim=32, heads=4, causal=True)    # head dim 8: padded
    names, text = _check_pattern("attention", model, inputs, [1, 2, 3, 4, 5])
    assert "arith.select" in text                       # masked_fill is inside the kernel
    assert names.count("linalg.transpose") == 2


@pytest.mark.parametrize("tokens", [197, 1000])
def test_attention_at_odd_sequence_lengths_on_the_emulator(tokens):
    """Sequence lengths that are not multiples of the query and key tiles (ViT's 197, 1000):
    the last query block and the last key tile are partial; one head of 16, one configuration
    (the other configurations are checked at 77 tokens above)."""
    model, inputs = _attention(tokens=tokens, dim=16, heads=1, batch=1)
    _check_pattern("attention", model, inputs, [1, 2, 3, 4, 5], configs=1)


# ---------------------------------------------------------------------------------------------
# Grouping


@pytest.fixture(scope="module")
def bert2():
    """A two-layer fp16 BERT through the welder pipeline."""
    torch.manual_seed(0)
    model = suite.Bert(2, 64, 4, 128).to(H).eval()
    return _welder_module(model, (torch.randn(2, 24, 64, dtype=H),))


def test_bert_layer_groups(bert2):
    kinds = [(t.kernel, ir.StringAttr(t.operation.attributes["welder.pattern"]).value
              if "welder.pattern" in t.operation.attributes else None) for t in _tiles(bert2)]
    # per layer: qkv | attention | out-proj + residual + LN | fc1 + GELU + fc2 | residual + LN
    # (at these sizes the model takes the MLP's chain over fc2 with its layer norm)
    layer = [("gemm", None), ("fused", "attention"), ("fused", "gemm_rows"),
             ("fused", "gemm_chain"), ("row", None)]
    assert kinds == layer * 2
    for t in _tiles(bert2):
        a = t.operation.attributes
        assert ir.IntegerAttr(a["welder.bytes"]).value <= ir.IntegerAttr(
            a["welder.bytes_unfused"]).value


def test_identical_layers_share_a_tuning_key(bert2):
    keys = [key_of(t, SM90) for t in _tiles(bert2)]
    assert len(keys) == 10 and keys[:5] == keys[5:]
    assert len(set(keys[:5])) == 5


def test_footprint_refusal_falls_back_and_says_why(capsys):
    torch.manual_seed(0)
    model, inputs = _attention(tokens=77, dim=64, heads=4)
    ctx = qd.context()
    m = parse(import_linalg(model, inputs).mlir_text, ctx, "<test>")
    run_pipeline(m, ROLLER, source_name="<test>")
    small = dataclasses.replace(SM90, smem_per_block=8 * 1024)     # attention needs 10 KB
    with ctx, ir.Location.unknown():
        graph = TileGraph(tiles_by_block(m)[0])
        grouper = Grouper(graph, small)
        groups = grouper.run()
    assert all(len(g.nodes) == 1 or not g.family.startswith("fused:attention") for g in groups)
    whys = " | ".join(d.why for d in grouper.decisions if not d.accepted)
    assert "footprint" in whys and "8192" in whys


def test_verbose_flag_prints_the_decisions(capsys):
    model, inputs = _attention(tokens=20, dim=64, heads=4)
    _welder_module(model, inputs, "builtin.module(welder{target=sm_90 verbose=true})")
    err = capsys.readouterr().err
    assert "welder: fused: tiles [1] + [2, 3, 4]: fused:attention" in err
    assert "welder: group [" in err and "-> fused:attention" in err


def test_tuning_record_replaces_the_model(tmp_path):
    model, inputs = _attention(tokens=77, dim=64, heads=4)
    ctx = qd.context()
    m = parse(import_linalg(model, inputs).mlir_text, ctx, "<test>")
    run_pipeline(m, ROLLER, source_name="<test>")

    def group(record=None):
        with ctx, ir.Location.unknown():
            grouper = Grouper(TileGraph(tiles_by_block(m)[0]), SM90, record)
            found = [g for g in grouper.run() if g.family == "fused:attention"]
        return found[0], grouper

    model_pick, _ = group()
    assert not model_pick.measured and len(model_pick.nodes) == 5
    path = tmp_path / "record.json"
    # Measured: bm = 128 faster than the model's pick.
    record = Record("h200")
    record.add(model_pick.key, model_pick.family, 5, {"bm": 128, "bn": 64}, 1e-9)
    record.add(model_pick.key, model_pick.family, 5, {"bm": 64, "bn": 64}, 2e-9)
    record.save(path)
    assert json.loads(path.read_text())["format"] == "quartet-welder-tuning"
    measured, _ = group(Record.load(path))
    assert measured.measured and measured.params == {"bm": 128, "bn": 64}
    assert measured.latency == 1e-9
    # Measured slow with the transpose back: the group stops before it, and says so.
    record.add(model_pick.key, model_pick.family, 5, {"bm": 128, "bn": 64}, 1.0)
    record.add(model_pick.key, model_pick.family, 5, {"bm": 64, "bn": 64}, 1.0)
    record.save(path)
    smaller, grouper = group(Record.load(path))
    assert len(smaller.nodes) == 4
    assert any(not d.accepted and d.offered == [5] and "1000000.0 us" in d.why
               for d in grouper.decisions)


# ---------------------------------------------------------------------------------------------
# End to end on the CPU target


@pytest.mark.parametrize("name", ["mlp_f16", "attention_f16", "gpt_block_f16"])
def test_welder_cpu_numerics(name):
    w = suite.get(name)
    model = w.module(0, tiny=True)
    xs = w.inputs(0, tiny=True)
    if name == "attention_f16":
        model = suite.Attention(64, 4).to(H).eval()       # head dim 16: the fused pattern
        xs = (torch.randn(2, 19, 64, dtype=H),)
    compiled = quartet.compile(model, xs, pipeline="welder", target="cpu")
    out = torch.as_tensor(compiled(*xs)).double()
    ref = model.double()(*[x.double() for x in xs]).detach()
    assert float((out - ref).norm() / ref.norm()) < 5e-3


@pytest.mark.parametrize("tokens", [77, 197, 1000])
def test_welder_attention_cpu_numerics_at_odd_sequence_lengths(tokens):
    """The fused attention group (scale, softmax, the transposes of Q, K, V and of the result)
    through the CPU target at sequence lengths that are not multiples of 64, against PyTorch."""
    model, xs = _attention(tokens=tokens, dim=32, heads=2, batch=1)
    compiled = quartet.compile(model, xs, pipeline="welder", target="cpu")
    assert 'welder.pattern = "attention"' in compiled.result.quartet     # the group was made
    out = torch.as_tensor(compiled(*xs)).double()
    ref = model.double()(*[x.double() for x in xs]).detach()
    assert float((out - ref).norm() / ref.norm()) < 5e-3


def test_pipeline_name_with_options():
    """``quartet-compile --pipeline`` and ``quartet.compile(pipeline=)`` take a pipeline's
    options (not its target) after its name."""
    from quartet.errors import QuartetError
    from quartet.frontend.compile import pipeline_passes

    assert pipeline_passes("welder", "cpu") == "builtin.module(welder{target=cpu})"
    assert (pipeline_passes("welder{verbose=true tuning=r.json}", "sm_90") ==
            "builtin.module(welder{target=sm_90 verbose=true tuning=r.json})")
    with pytest.raises(QuartetError, match="unknown option 'topk' for pipeline 'welder'"):
        pipeline_passes("welder{topk=2}", "sm_90")
    with pytest.raises(QuartetError, match="the target is not a pipeline option"):
        pipeline_passes("welder{target=cpu}", "sm_90")


def test_tuning_build_writes_candidates(tmp_path):
    from quartet.bench import welder_tune

    rows = welder_tune.build(["mlp_f16"], tmp_path, tiny=True)
    fused_rows = [r for r in rows if r["family"] == "fused:gemm_rows"]
    assert fused_rows and all("artifact" in r for r in fused_rows)
    assert len({tuple(sorted(r["params"].items())) for r in fused_rows}) == len(fused_rows)
    for r in rows:
        assert (tmp_path / r["artifact"] / "manifest.json").is_file()
        assert (tmp_path / r["ref"]).is_file()
    listing = json.loads((tmp_path / "candidates.json").read_text())
    assert listing["chip"] == "h200" and len(listing["candidates"]) == len(rows)


def test_torch_compile_backend_runs_the_welder_pipeline():
    import quartet.frontend.backend  # noqa: F401  (registers the backend)

    torch.manual_seed(0)
    model = suite.MLP(32, 64).to(H).eval()
    x = torch.randn(2, 5, 32, dtype=H)
    torch._dynamo.reset()
    with torch.no_grad():
        y = torch.compile(model, backend="quartet", dynamic=False,
                          options={"pipeline": "welder"})(x)
        ref = model.double()(x.double())
    assert float((y.double() - ref).norm() / ref.norm()) < 5e-3
