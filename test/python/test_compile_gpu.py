"""Whole models and benchmark operators compiled for sm_90 through ``compile_to_artifact``.

For each zoo model (frontend/models.py) and each single operator of the benchmark (bench/suite.py,
at its ``tiny`` sizes; one at full size for the Hopper GEMM), no GPU needed:

* the artifact's manifest: one kernel per tile, each a cubin (ELF for EM_CUDA) that ptxas wrote;
  the host program launches every kernel; inputs, outputs and weights named as the model's;
  host ``while`` / ``if`` steps for the models with control flow;
* the host program runs: the artifact's CPU twin (``bench/e2e/cpu_twin.py``: the same
  manifest, each kernel swapped for its tile compiled for the CPU) is run by ``quartet.runtime``
  on fresh random inputs and compared with PyTorch eager in float64;
* ptxas accepts the PTX of every kernel (for the chip the PTX names: ``sm_90a`` for wgmma).

On the GPU machine the same artifacts are run by ``bench/e2e/run.py``.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from quartet.lowering import binary
from quartet.runtime import manifest as mf

ZOO = ("mlp", "attention", "bert_layer", "conv_block", "lstm_loop", "cond_residual")
OPS = ("matmul_f32_1024", "matmul_f16_4096", "conv_f16_3x3", "conv_f16_1x1", "softmax_f16",
       "layernorm_f16", "bias_gelu_scale_f16")


def _steps(program):
    for s in program:
        yield s
        for field in ("cond", "body", "then", "else_"):
            yield from _steps(getattr(s, field, ()))


@functools.lru_cache(maxsize=None)
def zoo(name):
    from quartet.frontend import models
    from quartet.frontend.compile import compile_to_artifact

    model, inputs = models.build(name, seed=0)
    writer, result, _ = compile_to_artifact(model, inputs, target="sm_90")
    return model, inputs, writer, result


@functools.lru_cache(maxsize=None)
def op(name, tiny=True):
    from quartet.bench import suite
    from quartet.frontend.compile import compile_to_artifact

    w = {x.name: x for x in suite.WORKLOADS}[name]
    model = w.module(0, tiny=tiny)
    inputs = w.inputs(1, tiny=tiny)
    writer, result, _ = compile_to_artifact(model, inputs, target="sm_90")
    return w, model, writer, result


def check_manifest(writer, result):
    m = writer.manifest()
    assert m.target == "sm_90" and m.backend == "cuda"
    tiles = result.quartet.count('"quartet.tile"')
    # pads and strided slices on the host become kernels of their own
    movement = result.quartet.count("tensor.pad ") + result.quartet.count("tensor.extract_slice")
    assert tiles <= len(m.kernels) <= tiles + movement
    launched = [s.kernel for _, s in m.steps() if isinstance(s, mf.Launch)]
    assert sorted(launched) == sorted(k.name for k in m.kernels)
    files = writer.files()
    for k in m.kernels:
        header = binary.elf_header(files[k.binary])
        assert header["machine"] == binary.EM_CUDA and k.binary_format == "cubin"
        assert all(g >= 1 for g in k.grid) and 1 <= np.prod(k.block) <= 1024
        names = {b.name for b in m.buffers}
        assert all(a.buffer in names for a in k.args)
    return m


def run_twin(writer, result, inputs, tmp_path):
    import quartet.runtime as rt
    from quartet.bench.e2e.cpu_twin import cpu_twin

    twin = cpu_twin(writer, result.quartet)
    prog = rt.load(twin.save(tmp_path / "twin"))
    try:
        out = prog(*[x.numpy() for x in inputs])
    finally:
        prog.close()
    return out[0] if isinstance(out, tuple) else out


def rel_err(out, ref) -> float:
    out = np.asarray(out, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert out.shape == ref.shape and np.isfinite(out).all()
    return float(np.linalg.norm(out - ref) / np.linalg.norm(ref))


@pytest.mark.parametrize("name", ZOO)
def test_zoo_model_compiles_and_its_host_program_runs(name, tmp_path):
    model, inputs, writer, result = zoo(name)
    m = check_manifest(writer, result)
    params = dict(model.named_parameters())
    assert {w.name for w in m.weights} >= set(params)
    assert [t.shape for t in m.inputs] == [tuple(x.shape) for x in inputs]
    steps = list(_steps(m.program))
    assert any(isinstance(s, mf.While) for s in steps) == (name == "lstm_loop")
    assert any(isinstance(s, mf.If) for s in steps) == (name == "cond_residual")
    torch.manual_seed(123)
    fresh = tuple(torch.randn_like(x) for x in inputs)
    cases = [fresh]
    if name == "cond_residual":      # both branches: mean(x) > 0 and mean(-x) < 0
        cases.append(tuple(-x for x in fresh))
    taken = set()
    for xs in cases:
        out = run_twin(writer, result, xs, tmp_path / str(len(taken)))
        with torch.no_grad():
            ref = model.double()(*[x.double() for x in xs]).numpy()
            model.float()
        assert rel_err(out, ref) < 1e-5
        taken.add(bool(xs[0].mean() > 0))
    if name == "cond_residual":
        assert taken == {True, False}


@pytest.mark.parametrize("name", OPS)
def test_benchmark_operator_compiles_and_runs(name, tmp_path):
    w, model, writer, result = op(name)
    check_manifest(writer, result)
    xs = w.inputs(7, tiny=True)
    out = run_twin(writer, result, xs, tmp_path)
    with torch.no_grad():
        ref = model.double()(*[x.double() for x in xs]).numpy()
    assert rel_err(out, ref) < (1e-5 if w.dtype == torch.float32 else 2e-3)


def test_hopper_matmul_uses_wgmma_and_large_shared_memory():
    w, model, writer, result = op("matmul_f16_4096", tiny=False)
    m = check_manifest(writer, result)
    big = [k for k in m.kernels if k.shared_memory > 48 * 1024]
    assert len(big) == 1 and np.prod(big[0].block) % 128 == 0
    cubin = writer.files()[big[0].binary]
    assert b"wgmma" in cubin or b"sm_90a" in cubin


def test_conv_block_pad_is_a_kernel_and_every_ptx_assembles():
    from quartet.lowering import host
    from quartet.dialects import context as quartet_context
    from mlir import ir

    _, _, writer, result = zoo("conv_block")
    with quartet_context(), ir.Location.unknown():
        module = ir.Module.parse(result.quartet)
        _, plans = host.lower_module_plans(module, "sm_90", emit="ptx")
    (plan,) = plans.values()
    ptx = [launch.kernel.binary.decode() for launch in plan.launches]
    assert len(ptx) == result.quartet.count('"quartet.tile"') + 1     # + the pad
    for text in ptx:
        chip = "sm_90a" if ".target sm_90a" in text else "sm_90"
        assert "registers" in binary.ptxas_check(text, chip)


def test_lstm_loop_carries_state_in_buffers():
    _, _, writer, result = zoo("lstm_loop")
    m = writer.manifest()
    (loop,) = [s for _, s in m.steps() if isinstance(s, mf.While)]
    kinds = {b.name: b.kind for b in m.buffers}
    assert kinds[loop.predicate.buffer] == "temp" and loop.predicate.dtype in ("int8", "bool")
    # initial values copied in before the loop, the body's results copied back at its end
    before = m.program[:m.program.index(loop)]
    assert sum(isinstance(s, mf.Copy) for s in before) >= 3
    assert isinstance(loop.body[-1], mf.Copy)
