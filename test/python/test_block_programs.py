"""Block programs (issue 9): one virtual block of a tile as a device function, and kernels made
of them - standalone, side by side (a GEMM and a softmax in one kernel), looped.

The GPU run of the same compositions is ``bench/e2e/compose.py`` (build here, run there)."""

import pytest
from mlir import ir

import quartet.dialects as qd
from quartet.driver import run_pipeline
from quartet.errors import QuartetError
from quartet.lowering import binary, kernels
from quartet.lowering.build import check_resources, compile_tile
from quartet.lowering.compose.block_program import Resources
from quartet.lowering.compose.kernel import Part, inline_block_programs, looped, side_by_side, \
    standalone
from quartet.runtime import targets

SOFTMAX = """
#id = affine_map<(d0, d1) -> (d0, d1)>
#row = affine_map<(d0, d1) -> (d0)>
func.func @softmax(%x: tensor<200x1000xf32>) -> tensor<200x1000xf32> {
  %ninf = arith.constant 0xFF800000 : f32
  %zero = arith.constant 0.0 : f32
  %e = tensor.empty() : tensor<200xf32>
  %m0 = linalg.fill ins(%ninf : f32) outs(%e : tensor<200xf32>) -> tensor<200xf32>
  %m = linalg.generic {indexing_maps = [#id, #row], iterator_types = ["parallel", "reduction"]}
      ins(%x : tensor<200x1000xf32>) outs(%m0 : tensor<200xf32>) {
    ^bb0(%a: f32, %o: f32):
      %r = arith.maximumf %a, %o : f32
      linalg.yield %r : f32
  } -> tensor<200xf32>
  %e2 = tensor.empty() : tensor<200x1000xf32>
  %p = linalg.generic {indexing_maps = [#id, #row, #id], iterator_types = ["parallel", "parallel"]}
      ins(%x, %m : tensor<200x1000xf32>, tensor<200xf32>) outs(%e2 : tensor<200x1000xf32>) {
    ^bb0(%a: f32, %b: f32, %o: f32):
      %d = arith.subf %a, %b : f32
      %r = math.exp %d : f32
      linalg.yield %r : f32
  } -> tensor<200x1000xf32>
  %s0 = linalg.fill ins(%zero : f32) outs(%e : tensor<200xf32>) -> tensor<200xf32>
  %s = linalg.generic {indexing_maps = [#id, #row], iterator_types = ["parallel", "reduction"]}
      ins(%p : tensor<200x1000xf32>) outs(%s0 : tensor<200xf32>) {
    ^bb0(%a: f32, %o: f32):
      %r = arith.addf %a, %o : f32
      linalg.yield %r : f32
  } -> tensor<200xf32>
  %y = linalg.generic {indexing_maps = [#id, #row, #id], iterator_types = ["parallel", "parallel"]}
      ins(%p, %s : tensor<200x1000xf32>, tensor<200xf32>) outs(%e2 : tensor<200x1000xf32>) {
    ^bb0(%a: f32, %b: f32, %o: f32):
      %r = arith.divf %a, %b : f32
      linalg.yield %r : f32
  } -> tensor<200x1000xf32>
  return %y : tensor<200x1000xf32>
}
"""

MATMUL = """
func.func @mm(%a: tensor<256x384xf16>, %b: tensor<384x512xf16>) -> tensor<256x512xf32> {
  %zero = arith.constant 0.0 : f32
  %e = tensor.empty() : tensor<256x512xf32>
  %c = linalg.fill ins(%zero : f32) outs(%e : tensor<256x512xf32>) -> tensor<256x512xf32>
  %d = linalg.matmul ins(%a, %b : tensor<256x384xf16>, tensor<384x512xf16>)
                     outs(%c : tensor<256x512xf32>) -> tensor<256x512xf32>
  return %d : tensor<256x512xf32>
}
"""

H200 = targets.get("sm_90")


def tile_of(text: str):  # keep the module: the tile lives as long as it does
    """The one configured tile of ``text`` after the roller pipeline for sm_90, in a Context of
    its own (block programs of different Contexts meet in one kernel)."""
    with qd.context(), ir.Location.unknown():
        module = ir.Module.parse(text)
        run_pipeline(module, "builtin.module(roller{target=sm_90})")
    (tile,) = [op.opview for op in qd.collect(module, lambda o: o.name == "quartet.tile")]
    return module, tile


@pytest.fixture
def ctx():
    context = qd.context()
    with context, ir.Location.unknown():
        yield context


def test_a_block_program_takes_the_virtual_block(ctx):
    module_, tile = tile_of(SOFTMAX)
    assert tile.kernel == "row"               # the passes' verdict, read by the lowering
    bp = kernels.build_block_program(tile, H200, "soft_body")
    fn = bp.function
    assert str(fn.type.inputs[0]) == "index"
    assert [a.role for a in bp.args] == ["input", "output"]
    r = bp.resources
    assert r.blocks * (r.threads // 32) >= 1 and r.registers is None
    text = str(fn)
    assert "gpu.block_id" not in text and "gpu.launch" not in text
    assert "quartet.block_program" in text and 'quartet.family = "row"' in text


def test_standalone_kernel_calls_the_body_with_the_block_id(ctx):
    module_, tile = tile_of(SOFTMAX)
    bp = kernels.build_block_program(tile, H200, "soft_body")
    module = standalone(bp, "soft")
    text = str(module)
    assert text.count("gpu.launch ") == 1 and "func.call @soft_body" in text
    inline_block_programs(module)
    assert "func.call" not in str(module) and "soft_body" not in str(module)
    (spec,) = binary.compile_launch_module(module, H200)
    assert spec.grid == (bp.resources.blocks, 1, 1)
    assert spec.block == (bp.resources.threads, 1, 1)
    assert binary.cubin_resources(spec.binary, spec.entry)["registers"] > 0


def test_gemm_and_softmax_side_by_side(ctx):
    """One kernel, two different bodies: the GEMM on the first blocks, the softmax on the rest;
    the narrower body's barriers count only its threads."""
    gemm_module, gemm_tile = tile_of(MATMUL)
    soft_module, soft_tile = tile_of(SOFTMAX)                   # another Context: copied as text
    assert gemm_tile.kernel == "gemm"
    g = kernels.build_block_program(gemm_tile, H200, "g_body")
    s = kernels.build_block_program(soft_tile, H200, "s_body")
    assert g.family == "gemm:wgmma_tma" and g.chip == "sm_90a"
    assert [a.role for a in g.args] == ["input", "input", "output", "tensormap", "tensormap"]
    args = list(g.args) + list(s.args)
    parts = [Part(g, (0, 1, 2, 3, 4)), Part(s, (5, 6), first=g.resources.blocks)]
    module = side_by_side(parts, args, "both")
    threads = max(g.resources.threads, s.resources.threads)
    narrow = min(parts, key=lambda p: p.program.resources.threads).program
    inline_block_programs(module)
    text = str(module)
    assert text.count("gpu.launch ") == 1 and text.count("scf.if") >= 2
    if narrow.resources.threads < threads:
        assert f"number_of_threads = %c{narrow.resources.threads}_i32" in text
    (spec,) = binary.compile_launch_module(module, H200)
    assert spec.grid == (g.resources.blocks + s.resources.blocks, 1, 1)
    assert spec.block == (threads, 1, 1)
    assert spec.shared_bytes == max(g.resources.shared_bytes, s.resources.shared_bytes)
    assert [a.role for a in spec.args] == ["input", "input", "output", "tensormap",
                                           "tensormap", "input", "output"]
    assert [a.tensormap.source for a in spec.args[3:5]] == [0, 1]


def test_tensor_maps_follow_their_inputs_into_a_composed_kernel(ctx):
    """A GEMM body placed after another body: its maps name the kernel's inputs 1 and 2."""
    gemm_module, gemm_tile = tile_of(MATMUL)
    soft_module, soft_tile = tile_of(SOFTMAX)
    g = kernels.build_block_program(gemm_tile, H200, "g_body")
    s = kernels.build_block_program(soft_tile, H200, "s_body")
    args = list(s.args) + list(g.args)
    parts = [Part(s, (0, 1)), Part(g, (2, 3, 4, 5, 6), first=s.resources.blocks)]
    module = side_by_side(parts, args, "both")
    fn = [op for op in module.body.operations if "quartet.block_program" not in
          op.operation.attributes][0]
    text = str(fn.operation.attributes["arg_attrs"])
    assert text.count("quartet.tensormap") == 2
    assert "source = 1" in text and "source = 2" in text


def test_a_looped_body_walks_several_virtual_blocks(ctx):
    module_, tile = tile_of(SOFTMAX)
    bp = kernels.build_block_program(tile, H200, "soft_body")
    module = looped(bp, "soft_looped", physical_blocks=7)
    inline_block_programs(module)
    text = str(module)
    assert "scf.for" in text and "%c7" in text and "gpu.barrier" in text
    (spec,) = binary.compile_launch_module(module, H200)
    assert spec.grid == (7, 1, 1)


def test_mismatched_bindings_are_refused(ctx):
    module_, tile = tile_of(SOFTMAX)
    bp = kernels.build_block_program(tile, H200, "soft_body")
    with pytest.raises(QuartetError, match="takes 2 arguments, 1 bound"):
        side_by_side([Part(bp, (0,))], list(bp.args), "bad")


def test_a_record_the_chip_cannot_run_is_refused_naming_the_tile(ctx):
    module_, tile = tile_of(SOFTMAX)
    for record, limit in ((Resources(2048, 0, 1), "2048 threads per block, at most 1024"),
                          (Resources(128, 300 * 1024, 1), "at most 232448"),
                          (Resources(1024, 0, 1, registers=128),
                           "128 registers x 1024 threads per block, at most 65536")):
        with pytest.raises(QuartetError, match=limit) as err:
            check_resources(record, H200, tile)
        assert "'linalg.generic'" in err.value.message and err.value.location


def test_compiled_kernels_carry_their_resource_record(ctx):
    module_, tile = tile_of(SOFTMAX)
    (spec,) = compile_tile(tile, H200, "q0")
    r = spec.notes["resources"]
    assert r.registers and r.threads == spec.block[0] and r.blocks == spec.grid[0]
