"""In-place ops (issue 16, item 2): ``relu_``, ``+=``, ``&=``, ``mul_`` on values made in the
graph compile as one graph through ``torch.compile(backend="quartet")`` (frontend/functionalize.py)
and through ``quartet.compile`` (torch.export functionalises); a mutated input is refused with a
message that says so, and an in-place op on a view stays eager under torch.compile."""

from __future__ import annotations

import operator
import warnings

import pytest
import torch
import torch.nn as nn

from quartet.errors import QuartetError
from quartet.frontend import backend as qb
from quartet.frontend.compile import compile as quartet_compile
from quartet.frontend.functionalize import functionalize_in_place


class InPlace(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x, m):
        y = self.act(self.fc(x))
        z = y.clone()
        z += x
        z.mul_(2)
        b = m > 0
        b &= x > 0
        torch.relu_(z)
        h = x.half()
        h += z              # in place keeps f16: the functional add would promote to f32
        return z * 3, b, h


def _inputs():
    torch.manual_seed(1)
    return torch.randn(2, 8), torch.randn(2, 8)


def test_torch_compile_takes_in_place_ops_as_one_graph(monkeypatch):
    compiled_parts = []
    real = qb._compile_partition
    monkeypatch.setattr(qb, "_compile_partition",
                        lambda *a: compiled_parts.append(a[1]) or real(*a))
    torch._dynamo.reset()
    model, x = InPlace().eval(), _inputs()
    with warnings.catch_warnings():
        warnings.simplefilter("error", qb.QuartetWarning)
        with torch.no_grad():
            out = torch.compile(model, backend="quartet")(*x)
    assert len(compiled_parts) == 1
    for got, want in zip(out, model(*x)):
        assert got.dtype == want.dtype
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_quartet_compile_takes_in_place_ops():
    model, x = InPlace().eval(), _inputs()
    got = quartet_compile(model, x, target="cpu")(*x)
    for g, want in zip(got, model(*x)):
        torch.testing.assert_close(torch.as_tensor(g), want, rtol=1e-6, atol=1e-6)


class WritesInput(nn.Module):
    def forward(self, x):
        x += 1
        return x * 2


def test_quartet_compile_refuses_a_written_input():
    with pytest.raises(QuartetError, match="WritesInput writes its input 'x' in place; a Quartet "
                                           "program never writes its inputs"):
        quartet_compile(WritesInput(), (torch.randn(3),), target="cpu")


def _graph_of(fn, *inputs):
    graphs = []

    def capture(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    torch.compile(fn, backend=capture)(*inputs)
    return graphs[0]


def test_mutated_inputs_and_views_stay_in_place():
    def fn(x):
        x.add_(1)           # the caller sees this: must stay
        y = x * 2
        v = y[:, :2]        # a view of y ...
        v.mul_(3)           # ... mutated: y changes too, so y's group stays
        return y + 1

    gm = _graph_of(fn, torch.randn(2, 4))
    assert functionalize_in_place(gm) == 0
    assert {n.target for n in gm.graph.nodes if n.op == "call_method"} >= {"add_", "mul_"}


def test_rewrite_reads_the_newest_value():
    def fn(x):
        y = x * 2
        y += 1
        y.relu_()
        return y - 1, y.sum()

    gm = _graph_of(fn, torch.randn(3, 3))
    assert functionalize_in_place(gm) == 2
    targets = [n.target for n in gm.graph.nodes if n.op in ("call_function", "call_method")]
    assert operator.iadd not in targets and "relu_" not in targets
    x = torch.randn(3, 3)
    for got, want in zip(gm(x), fn(x.clone())):
        torch.testing.assert_close(got, want)
