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


def add_text(R, N, dt, inputs=2):
    """``x + y`` (two streamed inputs) or ``x + x`` (one)."""
    ys = "%y" if inputs == 2 else "%x"
    return MAPS + f"""
func.func @add(%x: tensor<{R}x{N}x{dt}>, %y: tensor<{R}x{N}x{dt}>) -> tensor<{R}x{N}x{dt}> {{
  %r = "quartet.tile"() ({{
    %e = tensor.empty() : tensor<{R}x{N}x{dt}>
    %z = linalg.generic {{indexing_maps = [#id, #id, #id], iterator_types = ["parallel", "parallel"]}}
        ins(%x, {ys} : tensor<{R}x{N}x{dt}>, tensor<{R}x{N}x{dt}>) outs(%e : tensor<{R}x{N}x{dt}>) {{
      ^bb0(%a: {dt}, %b: {dt}, %o: {dt}):
        %0 = arith.addf %a, %b : {dt}
        linalg.yield %0 : {dt}
    }} -> tensor<{R}x{N}x{dt}>
    gpu.yield %z : tensor<{R}x{N}x{dt}>
  }}) : () -> tensor<{R}x{N}x{dt}>
  return %r : tensor<{R}x{N}x{dt}>
}}
"""


def _config(text, chip="sm_90"):
    from quartet.lowering.kernels import rows
    from quartet.runtime import targets

    source = ir.Module.parse(text)
    tile = first_tile(source)
    prog = rows.analyze_rows(tile)
    return rows.stream_bytes(prog), rows.row_config(prog, tile, targets.get(chip))


def test_flat_chunks_follow_the_bytes_in_flight_model(ctx):
    from quartet.lowering.kernels import rows
    from quartet.runtime import targets

    h200 = targets.get("sm_90")
    # 4.16 TB/s x 1 us / 132 SMs / 0.5 = 63 KB per SM; 2048 threads x 16 B = 32 KB a chunk
    assert rows.flat_chunks(h200, 256, 16, 1 << 24) == 2
    assert rows.flat_chunks(h200, 256, 32, 1 << 24) == 1
    assert rows.flat_chunks(h200, 256, 4, 1 << 24) == 8
    # fewer chunks rather than fewer blocks than the chip holds at once (132 x 8)
    assert rows.flat_chunks(h200, 256, 4, 132 * 8 * 256 * 2) == 2
    assert rows.flat_chunks(targets.get("cpu"), 256, 16, 1 << 24) == 1
    # the streamed bytes: a per-column vector is not streamed, a second full input is
    assert _config(scaled_text(8192, 8192, "f16"))[0] == 16
    assert _config(add_text(8192, 8192, "f16"))[0] == 32
    assert _config(add_text(8192, 8192, "f16", inputs=1))[0] == 16
    nbytes, cfg = _config(add_text(8192, 8192, "f32"))
    assert (cfg.mode, cfg.threads, cfg.chunks, cfg.grid) == ("flat", 256, 1, 8192 * 8192 // 1024)
    nbytes, cfg = _config(scaled_text(8192, 8192, "f32"))
    assert (cfg.chunks, cfg.grid) == (2, 8192 * 8192 // (256 * 2 * 4))


def test_roller_writes_the_flat_schedule_for_element_wise_chains(ctx):
    from quartet.driver.run import parse, run_pipeline

    module = parse(scaled_text(8192, 8192, "f16"), ctx, "<t>")
    run_pipeline(module, "builtin.module(roller-config{target=sm_90})", source_name="<t>")
    tile = first_tile(module)
    assert tile.threads == 256 and list(tile.thread_tile) == [1, 16]
    assert list(tile.block_tile) == [1, 4096] and list(tile.grid) == [8192, 2]
    # under one block of work: the plain policy's small tile, as before
    module = parse(scaled_text(4, 64, "f16"), ctx, "<t>")
    run_pipeline(module, "builtin.module(roller-config{target=sm_90})", source_name="<t>")
    assert first_tile(module).threads != 256


def test_rows_too_long_for_registers_are_swept_in_segments(ctx):
    """Rows of 65536 fp16: 1024 threads x 64 elements would spill (ptxas: 432 bytes per thread
    at 64 registers); instead loops over 4 segments of 2 chunks of 8 elements per thread.
    softmax: its max and sum share one loop (online softmax: the running max and the rescaled
    sum carried), a second loop stores; a row sum: one loop that folds."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from test_gpu_lowering import softmax_text, sum_text

    from quartet.lowering.kernels import rows
    from quartet.runtime import targets

    source = ir.Module.parse(softmax_text(R=8, N=65536))
    tile = first_tile(source)
    cfg = rows.row_config(rows.analyze_rows(tile), tile, targets.get("sm_90"))
    assert (cfg.group, cfg.chunks, cfg.segments) == (1024, 2, 4)
    text = kernel_text(softmax_text(R=8, N=65536))
    lines = text.splitlines()
    loops = [i for i, line in enumerate(lines) if "scf.for" in line]
    assert len(loops) == 2
    assert "iter_args" in lines[loops[0]] and "-> (f32, f32)" in lines[loops[0]]
    first = "\n".join(lines[loops[0]:loops[1]])
    # the rescaling exp(m_old - m_new) of the carried sum, a scalar
    assert any("math.exp" in line and ": f32" in line and "vector" not in line
               for line in first.splitlines())
    # every loop re-reads the input (two 16-byte vectors a segment), only the last one stores
    for a, b in zip(loops, loops[1:] + [len(lines)]):
        body = "\n".join(lines[a:b])
        assert body.count("vector.load") == 2 and "alignment = 16" in body
    assert not any("vector.store" in line for line in lines[:loops[1]])
    assert sum("vector.store" in line for line in lines[loops[1]:]) == 2
    # max and sum cross the row's 32 warps after the loop, outside it
    assert text.count("gpu.barrier") == 2
    # a plain reduction: the partials (vectors) carried by the loop
    text = kernel_text(sum_text(8, 65536, 1))
    fors = [line for line in text.splitlines() if "scf.for" in line]
    assert fors and "iter_args" in fors[0] and "vector<8xf32>" in fors[0]
    # rows that fit stay in registers
    source = ir.Module.parse(softmax_text(R=8, N=32768))
    tile = first_tile(source)
    assert rows.row_config(rows.analyze_rows(tile), tile, targets.get("sm_90")).segments == 1


def test_contiguous_chains_vectorise_rows_of_any_length(ctx):
    """x + y over 3000 x 777 fp16: 777 is odd, but every access is the whole space in order,
    so the kernel runs over the 2331000 elements as 16-byte vectors of 1-D views; with a
    per-column vector (777 elements) it cannot, and keeps scalar accesses."""
    text = kernel_text(add_text(3000, 777, "f16"))
    assert "memref.collapse_shape" in text and "memref<2331000xf16>" in text
    loads = [line for line in text.splitlines() if "vector.load" in line]
    assert loads and all("memref<2331000xf16>, vector<8xf16>" in line
                         and "alignment = 16" in line for line in loads)
    assert any("vector.store" in line and "memref<2331000xf16>, vector<8xf16>" in line
               for line in text.splitlines())
    text = kernel_text(scaled_text(3000, 777, "f16"))
    assert "memref.collapse_shape" not in text and "vector<1xf16>" in text


@pytest.mark.parametrize("text", [lambda: add_text(3000, 777, "f16"),
                                  lambda: scaled_text(3000, 777, "f32"),
                                  lambda: add_text(4097, 2048, "bf16")])
def test_row_family_kernels_assemble_for_sm_90(ctx, text):
    from quartet.lowering.host import lower_module_plans

    module = ir.Module.parse(text())
    _, plans = lower_module_plans(module, "sm_90", "bin")
    kernel = next(iter(plans.values())).launches[0].kernel
    assert kernel.binary[:4] == b"\x7fELF"
