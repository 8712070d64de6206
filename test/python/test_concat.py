"""``tensor.concat`` and channel slices on every target (issue 11, item 5).

A concatenation of contiguous slices (channels at batch 1, branches stacked) is one buffer that
the producing tiles write in place; an operand that no tile produces is copied there (roller)
or the concat becomes a gather tile (rammer, whose persistent kernels have no host copies); a
concatenation of strided slices (the last dimension) is a gather tile. Channel slices at batch 1
are views, strided slices gather tiles. Checked against PyTorch through the GPU artifact's CPU
twin (the same buffers, views and copies the GPU runs) and through the CPU target."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
import torch.nn as nn

from quartet.runtime import manifest as mf


class Concats(nn.Module):
    def forward(self, x):
        a = torch.relu(x)
        b = x * 2.0
        channels = torch.cat([a, b], dim=1)            # contiguous: written in place
        with_input = torch.cat([x, a], dim=1)          # x is no tile's result
        widths = torch.cat([a, b], dim=3)              # strided: a gather tile
        stacked = torch.stack([a, b, a * b]).mean(0)   # branches averaged
        return (channels[:, 4:12] * 3.0,               # a channel slice: a view
                widths[:, :, :, 2:9] + 1.0,            # a strided slice: a gather tile
                channels, with_input + stacked.repeat(1, 2, 1, 1))


def _inputs():
    return (torch.randn(1, 8, 5, 6, generator=torch.Generator().manual_seed(3)),)


@functools.lru_cache(maxsize=None)
def compiled(pipeline: str, target: str):
    from quartet.frontend.compile import compile_to_artifact

    return compile_to_artifact(Concats(), _inputs(), pipeline=pipeline, target=target)[:2]


def _check(outs):
    with torch.no_grad():
        refs = Concats()(*_inputs())
    assert len(outs) == len(refs)
    for out, ref in zip(outs, refs):
        assert out.shape == tuple(ref.shape)
        assert np.allclose(out, ref.numpy(), rtol=1e-6, atol=1e-6)


def _run(writer, tmp_path):
    import quartet.runtime as rt

    prog = rt.load(writer.save(tmp_path / "a"))
    try:
        return prog(*[x.numpy() for x in _inputs()])
    finally:
        prog.close()


@pytest.mark.parametrize("pipeline", ["roller", "rammer"])
def test_concat_and_slices_on_the_gpu_host_program(pipeline, tmp_path):
    from quartet.bench.e2e.cpu_twin import cpu_twin

    writer, result = compiled(pipeline, "sm_90")
    m = writer.manifest()
    copies = [s for _, s in m.steps() if isinstance(s, mf.Copy)]
    if pipeline == "roller":
        # the function input x is copied into its slice; the outputs that are views too
        assert any(c.src == m.inputs[0].buffer for c in copies)
    else:       # the results of one uvirtual share a type: several persistent kernels here
        assert any(k.persistent is not None for k in m.kernels)
        assert not any(c.src == m.inputs[0].buffer for c in copies)
    _check(_run(cpu_twin(writer, result.quartet), tmp_path))


def test_concat_and_slices_on_the_cpu_target(tmp_path):
    writer, result = compiled("rammer", "cpu")
    _check(_run(writer, tmp_path))
