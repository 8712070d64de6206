"""Tests of the torch.compile backend ``"quartet"`` (frontend/backend.py), on CPU tensors.

A model that mixes supported ops with one torch-mlir cannot import (``torch.special.i0``) must
give the same numbers as eager, compile the supported partitions with Quartet, run the rest
eagerly and say so in exactly one warning that names the op and the model line. Also: the
backend is found by name, support answers are cached, a partition that fails to compile falls
back to eager with a warning, training-mode graphs compile their forward (AOTAutograd) and
leave backward to PyTorch, and compiled graphs always see the module's current weights.
"""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest
import torch

from quartet.errors import QuartetError
from quartet.frontend import backend as qb

I0_LINE = 35   # the torch.special.i0 line of Mixed.forward below


class Mixed(torch.nn.Module):
    """Supported matmul, relu, tanh, sum, add around one unsupported op (i0)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(16, 8))

    def forward(self, x):
        y = torch.relu(x @ self.w)
        z = torch.special.i0(y)
        a, b = z.chunk(2, dim=1)
        return torch.tanh(a) + b.sum(-1, keepdim=True)


class AllSupported(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(16, 8))

    def forward(self, x):
        return torch.softmax(torch.tanh(x @ self.w) * 2.0, dim=-1)


class Gate(torch.nn.Module):
    """A block taken or skipped under torch.cond: the branches are subgraphs of the graph."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(16, 16) * 0.1)

    def forward(self, x):
        def run(x):
            return x + torch.relu(x @ self.w)

        def skip(x):
            return x * 0.5

        return torch.cond(x.mean() > 0, run, skip, (x,))


def _compile(model, x, **kw):
    """torch.compile with the quartet backend; also return the graph modules it produced."""
    produced = []

    def spy(gm, example_inputs, **options):
        out = qb.quartet_backend(gm, example_inputs, **options)
        produced.append(out)
        return out

    torch._dynamo.reset()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.no_grad():
            compiled = torch.compile(model, backend=spy, dynamic=False, **kw)
            y = compiled(x)
            y_again = compiled(x)
    ours = [w for w in caught if issubclass(w.category, qb.QuartetWarning)]
    return y, y_again, produced, ours


def _compiled_partitions(produced) -> list:
    mods = []
    for gm in produced:
        if isinstance(gm, torch.fx.GraphModule):
            mods += [m for m in gm.modules() if isinstance(m, qb.CompiledPartition)]
    return mods


def test_mixed_model_one_warning_and_eager_numerics():
    torch.manual_seed(0)
    model, x = Mixed().eval(), torch.randn(4, 16)
    y, y_again, produced, warned = _compile(model, x)
    with torch.no_grad():
        ref = model(x)
    assert torch.allclose(y, ref, rtol=1e-5, atol=1e-5)
    assert torch.equal(y, y_again)
    assert len(warned) == 1, [str(w.message) for w in warned]
    text = str(warned[0].message)
    assert text.startswith("quartet: 1 unsupported op(s) run eagerly: torch.special.i0 at ")
    assert f"{__file__}:{I0_LINE}" in text and "torch.aten.i0" in text
    parts = _compiled_partitions(produced)
    assert len(parts) == 2   # before and after the i0
    assert all(p.compiled.target == "cpu" for p in parts)


def test_support_answers_are_cached(monkeypatch):
    torch.manual_seed(0)
    model, x = Mixed().eval(), torch.randn(4, 16)
    _compile(model, x)   # fills the cache (or finds it filled by the test above)
    calls = []
    real = qb._try_import
    monkeypatch.setattr(qb, "_try_import", lambda gm, node: calls.append(node) or real(gm, node))
    y, _, _, warned = _compile(model, x)
    assert calls == []
    assert len(warned) == 1


def test_fully_supported_model_compiles_without_warnings():
    torch.manual_seed(0)
    model, x = AllSupported().eval(), torch.randn(4, 16)
    y, _, produced, warned = _compile(model, x)
    with torch.no_grad():
        ref = model(x)
    assert warned == []
    assert torch.allclose(y, ref, rtol=1e-5, atol=1e-6)
    assert len(_compiled_partitions(produced)) == 1


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_higher_order_op_compiles_with_its_branches(sign):
    torch.manual_seed(0)
    model, x = Gate().eval(), torch.randn(4, 16).abs() * sign
    y, _, produced, warned = _compile(model, x)
    with torch.no_grad():
        ref = model(x)
    assert warned == []
    assert torch.allclose(y, ref, rtol=1e-5, atol=1e-6)
    assert len(_compiled_partitions(produced)) == 1


def test_partition_that_fails_to_compile_runs_eagerly(monkeypatch):
    def refuse(sub, call, target, opts):
        raise QuartetError("no tile configuration fits cpu")

    monkeypatch.setattr(qb, "_compile_partition", refuse)
    torch.manual_seed(0)
    model, x = AllSupported().eval(), torch.randn(4, 16)
    y, _, produced, warned = _compile(model, x)
    with torch.no_grad():
        assert torch.allclose(y, model(x))
    assert _compiled_partitions(produced) == []
    assert len(warned) == 1
    text = str(warned[0].message)
    assert text.startswith("quartet: 1 partition(s) failed to compile and run eagerly: quartet_0")
    assert "no tile configuration fits cpu" in text and "torch.tanh" in text


def _spy_partitions(monkeypatch) -> list:
    """Record every partition the backend compiles (and still compile it)."""
    compiled = []
    real = qb._compile_partition

    def spy(sub, call, target, opts):
        out = real(sub, call, target, opts)
        compiled.append(out)
        return out

    monkeypatch.setattr(qb, "_compile_partition", spy)
    return compiled


def test_training_mode_compiles_the_forward_and_leaves_backward_to_pytorch(monkeypatch):
    """Outside no_grad (the parameters require grad): AOTAutograd's forward graph is compiled
    by Quartet, backward runs in eager PyTorch, gradients are PyTorch's."""
    compiled = _spy_partitions(monkeypatch)
    torch.manual_seed(0)
    model, x = AllSupported(), torch.randn(4, 16)
    torch._dynamo.reset()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y = torch.compile(model, backend="quartet", dynamic=False)(x)
    assert [str(w.message) for w in caught if issubclass(w.category, qb.QuartetWarning)] == []
    assert len(compiled) == 1 and compiled[0].target == "cpu"
    assert y.requires_grad
    y.pow(2).sum().backward()
    grad = model.w.grad.clone()
    model.w.grad = None
    ref = model(x)
    ref.pow(2).sum().backward()
    assert torch.allclose(y, ref, rtol=1e-5, atol=1e-6)
    assert torch.allclose(grad, model.w.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("grad", [False, True])
def test_compiled_graph_sees_the_modules_current_weights(monkeypatch, grad):
    compiled = _spy_partitions(monkeypatch)
    torch.manual_seed(0)
    model, x = AllSupported(), torch.randn(4, 16)
    torch._dynamo.reset()
    run = torch.compile(model, backend="quartet", dynamic=False)
    results = []
    with torch.set_grad_enabled(grad), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for change in (None, "step", "load_state_dict"):
            if change == "step":
                with torch.no_grad():
                    model.w.mul_(-3.0)               # in place, like an optimizer step
            elif change == "load_state_dict":
                model.load_state_dict({"w": torch.randn(16, 8)})
            with torch.no_grad():
                ref = model(x)
            results.append((run(x).detach(), ref))
    assert compiled, "nothing was compiled"
    for got, ref in results:
        assert torch.allclose(got, ref, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(results[0][0], results[1][0])


def test_backend_found_by_name_and_options_checked():
    from torch._dynamo.backends.registry import list_backends, lookup_backend

    assert "quartet" in list_backends()
    assert lookup_backend("quartet") is qb.quartet_backend
    with pytest.raises(QuartetError, match="unknown quartet backend option"):
        qb.Options.from_dict({"targte": "sm_80"})
    assert qb.Options.from_dict({"target": "sm_80"}).target == "sm_80"


def test_backend_name_resolves_without_importing_quartet(tmp_path):
    """The package's torch_dynamo_backends entry point: a fresh process, no quartet import.

    (Run outside the checkout: a stale ``quartet.egg-info`` there, from an older install,
    would shadow the installed metadata.)"""
    code = ("import torch\n"
            "from torch._dynamo.backends.registry import lookup_backend\n"
            "fn = lookup_backend('quartet')\n"
            "assert fn.__module__ == 'quartet.frontend.backend', fn.__module__\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr


@pytest.mark.gpu
def test_cuda_tensors_compile_for_the_cuda_target():
    pytest.importorskip("mlir")   # the GPU machine runs artifacts but cannot compile
    torch.manual_seed(0)
    model, x = AllSupported().eval().cuda(), torch.randn(4, 16, device="cuda")
    y, _, produced, warned = _compile(model, x, options={"target": "sm_90"})
    with torch.no_grad():
        ref = model(x)
    assert y.device.type == "cuda"
    assert torch.allclose(y, ref, rtol=1e-3, atol=1e-3)
    assert [p.compiled.target for p in _compiled_partitions(produced)] == ["sm_90"]
