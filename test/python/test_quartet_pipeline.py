"""The quartet pipeline (issue 17): Roller, Welder, Grinder and Rammer together.

Numerics through the CPU target on the frontend's models, and the sm_90 artifacts of the
benchmark's rows (tiny sizes) through their CPU twins (the persistent kernels' tasks and device
programs run as host steps on the kernels' own buffers), against PyTorch."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

import quartet
from quartet.frontend import models


@pytest.mark.parametrize("name", list(models.ZOO))
def test_frontend_models_match_eager_on_the_cpu(name):
    model, inputs = models.build(name, seed=3)
    compiled = quartet.compile(model, inputs, pipeline="quartet", target="cpu")
    assert compiled.result.pipeline == "quartet"
    with torch.no_grad():
        want = model(*inputs)
        got = compiled(*inputs)
    assert torch.allclose(torch.as_tensor(got), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name,fused,persistent", [
    ("attention_f16", 1, 0),       # Welder: one fused attention tile, a chain (no uvirtual)
    ("branchy_cells_f32", 0, 1),   # Rammer: one persistent kernel
    ("skipnet_f32", 0, 1),         # Grinder: the branch in the device program
])
def test_benchmark_rows_for_sm_90_and_their_cpu_twins(name, fused, persistent):
    import quartet.runtime as rt
    from quartet.bench import suite
    from quartet.bench.e2e.cpu_twin import cpu_twin
    from quartet.frontend.compile import compile_to_artifact

    w = suite.get(name)
    model = w.module(0, tiny=True, form=w.quartet_form)
    writer, result, _ = compile_to_artifact(model, w.inputs(1, tiny=True), pipeline="quartet",
                                            target="sm_90")
    assert result.quartet.count('kernel = "fused"') == fused
    kernels = writer.manifest().kernels
    assert sum(k.persistent is not None for k in kernels) == persistent
    if persistent:
        assert len(kernels) == 1
    folder = Path(tempfile.mkdtemp(prefix="quartet-pipeline-")) / name
    prog = rt.load(cpu_twin(writer, result.quartet).save(folder))
    xs = w.inputs(4, tiny=True)
    try:
        out = prog(*[x.numpy() for x in xs])
    finally:
        prog.close()
    with torch.no_grad():
        ref = model.double()(*[x.double() for x in xs]).numpy()
    tol = 2e-2 if w.dtype == torch.float16 else 1e-5
    assert np.linalg.norm(np.asarray(out, np.float64) - ref) / np.linalg.norm(ref) < tol


def test_torch_compile_backend_takes_the_quartet_pipeline():
    model, inputs = models.build("conv_block", seed=1)
    compiled = torch.compile(model, backend="quartet", dynamic=False,
                             options={"pipeline": "quartet", "target": "cpu"})
    with torch.no_grad():
        assert torch.allclose(compiled(*inputs), model(*inputs), rtol=1e-4, atol=1e-4)
