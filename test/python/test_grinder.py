"""Grinder (issue 12): loops and branches moved into the device program.

* the pass ``grinder-lift-control-flow`` (pipeline ``grinder{target=...}``): an ``scf.while`` /
  ``scf.for`` / ``scf.if`` around tiles becomes one ``quartet.uvirtual`` whose vtasks Rammer's
  wavefront scheduled, with the choice (``control``) and the cost model's three estimates
  recorded; ``control=host`` overrides it; what cannot stay on the device stays on the host
  with a remark under ``verbose=true``;
* the lowering (sm_90): one cooperative kernel for the whole loop, its device program recorded
  in the manifest (``persistent.program``), no host step left inside the loop;
* numerics, on this machine: the CPU target (the compiled function runs the lifted IR), and
  the sm_90 artifact's CPU twin (its device program's steps run one by one on the very buffers
  and byte offsets the kernel binds): both branches of every ``if``, loops of 0, 1 and many
  trips, an ``if`` inside a data-dependent ``while``, a static loop unrolled;
* the bound ``max_iterations``: a device (or host) loop stops there and the runtime warns.

The same artifacts on the GPU: ``bench/grinder/run.py`` (see ``bench/grinder/README.md``).
"""

from __future__ import annotations

import functools
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from torch._higher_order_ops.while_loop import while_loop

from quartet.errors import BoundWarning
from quartet.runtime import manifest as mf


class CountedLoop(nn.Module):
    """``h <- tanh(fc(h))``, ``n`` times: ``n`` is an input (a data-dependent trip count)."""

    def __init__(self, width: int = 32):
        super().__init__()
        self.fc = nn.Linear(width, width)

    def forward(self, x, n):
        def cond(i, h):
            return i < n

        def body(i, h):
            return i + 1, torch.tanh(self.fc(h))

        _, h = while_loop(cond, body, (torch.zeros((), dtype=torch.int64), x))
        return h


class GatedLoop(nn.Module):
    """``n`` steps, each running a residual block or ``-h / 2`` (the gate flips) on a data-dependent gate (a
    ``torch.cond`` inside a ``while_loop``)."""

    def __init__(self, width: int = 32):
        super().__init__()
        self.fc = nn.Linear(width, width)
        self.g = nn.Parameter(torch.randn(width))

    def forward(self, x, n):
        def block(h):
            return h + torch.tanh(self.fc(h))

        def skip(h):
            return h * -0.5

        def cond(i, h):
            return i < n

        def body(i, h):
            return i + 1, torch.cond((h * self.g).sum() > 0, block, skip, (h,))

        _, h = while_loop(cond, body, (torch.zeros((), dtype=torch.int64), x))
        return h

    def gates(self, x, n) -> list[bool]:
        taken, h = [], x
        with torch.no_grad():
            for _ in range(n):
                taken.append(bool((h * self.g).sum() > 0))
                h = h + torch.tanh(self.fc(h)) if taken[-1] else h * -0.5
        return taken


def _model(name: str):
    torch.manual_seed(0)
    if name in ("counted", "gated"):
        return (CountedLoop if name == "counted" else GatedLoop)(), \
            (torch.randn(4, 32), torch.tensor(3))
    from quartet.frontend.models import ZOO

    model = ZOO[name]()
    return model, model.example_inputs()


@functools.lru_cache(maxsize=None)
def _compiled(name: str, target: str, pipeline: str = "grinder"):
    from quartet.frontend.compile import compile_to_artifact

    model, inputs = _model(name)
    writer, result, _ = compile_to_artifact(model, inputs, pipeline=pipeline, target=target)
    return model, writer, result


def _program(name: str, target: str, pipeline: str = "grinder"):
    """The loaded artifact (sm_90: its CPU twin) and the model."""
    import quartet.runtime as rt
    from quartet.bench.e2e.cpu_twin import cpu_twin

    model, writer, result = _compiled(name, target, pipeline)
    if target != "cpu":
        writer = cpu_twin(writer, result.quartet)
    path = Path(tempfile.mkdtemp(prefix="quartet-grinder-")) / name
    return model, rt.load(writer.save(path))


def _error(out, ref) -> float:
    return float(np.abs(out - ref).max() / max(1e-6, np.abs(ref).max()))


def _device_kernel(writer) -> mf.Kernel:
    (k,) = [k for k in writer.manifest().kernels if k.persistent and k.persistent.program]
    return k


# ---------------------------------------------------------------------------------------------
# The pass and the choice


def test_a_while_around_tiles_is_one_uvirtual_with_its_choice_recorded():
    _, _, result = _compiled("counted", "sm_90")
    text = result.quartet
    assert text.count('"quartet.uvirtual"') == 1
    assert 'control = "device"' in text and 'quartet.control = "device"' in text
    for key in ("estimate_us", "host_us", "graph_us"):
        assert f"{key} = " in text
    # the while loop is inside the uvirtual, its tiles are vtasks
    uv = text.index('"quartet.uvirtual"')
    assert text.index("scf.while", uv) > uv and '"quartet.vtask"' in text[uv:]


def test_control_host_keeps_the_loop_on_the_host():
    _, writer, result = _compiled("counted", "sm_90", "grinder{control=host}")
    assert '"quartet.uvirtual"' not in result.quartet
    assert 'quartet.control = "host"' in result.quartet
    steps = [s for _, s in writer.manifest().steps()]
    assert any(isinstance(s, mf.While) for s in steps)


def test_the_device_loop_is_one_cooperative_launch_with_no_host_step_in_the_loop():
    _, writer, _ = _compiled("counted", "sm_90")
    m = writer.manifest()
    k = _device_kernel(writer)
    assert k.cooperative and k.persistent.sync in m.buffer_map
    assert not any(isinstance(s, (mf.While, mf.If, mf.Loop)) for _, s in m.steps())
    assert [s for s in m.program if isinstance(s, mf.Launch)][-1] == mf.Launch(k.name)
    assert '"op":"while"' in k.persistent.program


def test_verbose_remark_names_why_a_loop_stays_on_the_host(capsys):
    from mlir import ir

    from quartet.dialects import context
    from quartet.driver import run_pipeline
    from quartet.frontend.compile import compile_to_artifact

    model, inputs = _model("counted")
    _, _, linalg = compile_to_artifact(model, inputs, target="cpu", stop_after="linalg")
    with context(), ir.Location.unknown():
        module = ir.Module.parse(linalg)
        run_pipeline(module, "builtin.module(grinder{target=gfx942 verbose=true})")
        text = str(module)
    err = capsys.readouterr().err
    assert "remark: 'scf.while' stays on the host" in err and "grid barrier" in err
    assert 'quartet.control = "host"' in text and "quartet.host_reason" in text


# ---------------------------------------------------------------------------------------------
# Numerics: the CPU target and the sm_90 artifact's CPU twin


@pytest.mark.parametrize("target", ["cpu", "sm_90"])
def test_both_branches_of_an_if(target):
    model, prog = _program("cond_residual", target)
    x = model.example_inputs()[0]
    try:
        for xs in (x.abs() + 0.1, -x.abs() - 0.1):        # mean > 0, mean < 0
            out = prog(xs.numpy())
            with torch.no_grad():
                ref = model(xs).numpy()
            assert _error(out, ref) < 1e-5
    finally:
        prog.close()


@pytest.mark.parametrize("target", ["cpu", "sm_90"])
@pytest.mark.parametrize("name", ["counted", "gated"])
def test_loops_of_zero_one_and_many_trips(name, target):
    model, prog = _program(name, target)
    x = torch.randn(4, 32)
    seen = set()
    try:
        for n in (0, 1, 6):
            out = prog(x.numpy(), np.array(n, dtype=np.int64))
            with torch.no_grad():
                ref = model(x, torch.tensor(n)).numpy()
            assert _error(out, ref) < 1e-5, n
            if name == "gated":
                seen |= set(model.gates(x, n))
    finally:
        prog.close()
    assert name != "gated" or seen == {True, False}      # both branches ran inside the loop


@pytest.mark.parametrize("target", ["cpu", "sm_90"])
def test_a_static_loop_counted_and_unrolled(target):
    """``lstm_loop`` (8 steps, ``t < steps`` on a carried counter): a static trip count, so the
    while becomes an ``scf.for``, unrolled on the GPU into one persistent kernel."""
    model, writer, result = _compiled("lstm_loop", target)
    assert "scf.while" not in result.quartet
    model, prog = _program("lstm_loop", target)
    xs = model.example_inputs()[0]
    try:
        out = prog(xs.numpy())
    finally:
        prog.close()
    with torch.no_grad():
        assert _error(out, model(xs).numpy()) < 1e-5
    if target == "sm_90":
        assert '"op":"for"' in _device_kernel(writer).persistent.program or \
            result.quartet.count('"quartet.vtask"') > 8 * 4


# ---------------------------------------------------------------------------------------------
# The bound


@pytest.mark.parametrize("control", ["device", "host"])
def test_a_bounded_loop_stops_at_its_bound_and_warns(control):
    import quartet.runtime as rt
    from quartet.bench.e2e.cpu_twin import cpu_twin
    from quartet.frontend.compile import compile_to_artifact

    model, inputs = _model("counted")
    writer, result, _ = compile_to_artifact(
        model, inputs, pipeline=f"grinder{{control={control} max_iterations=2}}",
        target="sm_90")
    assert "quartet.max_iterations = 2" in result.quartet
    if control == "device":
        k = _device_kernel(writer)
        assert k.persistent.bound_word is not None and '"bound":2' in k.persistent.program
    path = Path(tempfile.mkdtemp(prefix="quartet-grinder-")) / "bound"
    prog = rt.load(cpu_twin(writer, result.quartet).save(path))
    x = torch.randn(4, 32)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", BoundWarning)
            out = prog(x.numpy(), np.array(1, dtype=np.int64))       # below the bound
        with torch.no_grad():
            assert _error(out, model(x, torch.tensor(1)).numpy()) < 1e-5
        with pytest.warns(BoundWarning, match="bound"):
            out = prog(x.numpy(), np.array(5, dtype=np.int64))
        with torch.no_grad():
            assert _error(out, model(x, torch.tensor(2)).numpy()) < 1e-5   # two iterations
    finally:
        prog.close()

