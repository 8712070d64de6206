"""``quartet.compile`` as a user meets it first (issue 15): the default target, weights after
compilation, keyword inputs, results returned twice, and the runtime calls behind them.

- ``target="auto"``: CPU example tensors give ``cpu``; the rule that maps a visible GPU to a
  Quartet target (``sm_86`` runs ``sm_80`` code, ``sm_120`` runs none of ours);
- weights ``"live"`` (the default) follow in-place changes, ``load_state_dict`` and reassigned
  parameters; ``"frozen"`` keeps the compile-time values until ``load_state_dict``; ``save``
  writes the weights the next call would use; ``Program.load_weights`` for loaded artifacts;
- inputs by keyword, by forward()'s names (CompiledModule) or the manifest's (Program), and the
  one-line errors for unknown, doubled and missing names;
- a model returning one value twice on the CPU target (once a segmentation fault);
- ``Program.bench`` refuses ``repeat=0``; ``.qrt`` files do not depend on the clock.
"""

from __future__ import annotations

import pytest
import torch

import quartet
import quartet.runtime
from quartet.errors import QuartetError
from quartet.frontend import target as qt


class Affine(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(8, 4)
        self.register_buffer("shift", torch.zeros(4))

    def forward(self, x, scale):
        return torch.tanh(self.fc(x) * scale + self.shift)


class Twice(torch.nn.Module):
    def forward(self, x):
        y = torch.tanh(x)
        return y, x * 2, y


def _inputs():
    torch.manual_seed(0)
    return torch.randn(3, 8), torch.randn(3, 4)


@pytest.fixture(scope="module")
def model_and_compiled():
    torch.manual_seed(0)
    model = Affine().eval()
    return model, quartet.compile(model, _inputs())


def _eager(model, x, scale):
    with torch.no_grad():
        return model(x, scale)


# ----------------------------------------------------------------------------------------------
# target auto
# ----------------------------------------------------------------------------------------------


def test_auto_target_follows_cpu_example_inputs(model_and_compiled, capsys):
    _, compiled = model_and_compiled
    assert compiled.target == "cpu"
    choice = qt.choose_for_tensors(_inputs())
    assert choice.target == "cpu" and "on the CPU" in choice.reason
    qt._ANNOUNCED.clear()
    assert qt.resolve_target("auto", _inputs()) == "cpu"
    assert "quartet: target auto: cpu (the example inputs are on the CPU" in capsys.readouterr().err
    assert qt.resolve_target("sm_80", _inputs()) == "sm_80"


@pytest.mark.parametrize("arch, target", [
    ("sm_90", "sm_90"), ("sm_80", "sm_80"), ("sm_86", "sm_80"), ("sm_89", "sm_80"),
    ("sm_120", None), ("sm_75", None), ("gfx942", "gfx942"), ("gfx90a", None),
])
def test_which_quartet_target_runs_on_a_gpu(arch, target):
    assert qt.target_for_gpu(arch) == target


def test_a_gpu_quartet_cannot_target_gives_cpu_and_says_why():
    choice = qt._for_gpu(qt.Gpu("sm_120", "NVIDIA RTX PRO 6000"), "the visible GPU,")
    assert choice.target == "cpu"
    assert "NVIDIA RTX PRO 6000 (sm_120) is not a Quartet target" in choice.reason
    choice = qt._for_gpu(qt.Gpu("sm_89", "NVIDIA L4"), "the visible GPU,")
    assert choice.target == "sm_80" and "which runs sm_80 code" in choice.reason


# ----------------------------------------------------------------------------------------------
# weights
# ----------------------------------------------------------------------------------------------


def test_live_weights_follow_the_model():
    torch.manual_seed(1)
    model = Affine().eval()
    x, scale = _inputs()
    compiled = quartet.compile(model, (x, scale), weights="live")
    assert torch.allclose(compiled(x, scale), _eager(model, x, scale), atol=1e-6)
    before = compiled(x, scale)

    with torch.no_grad():
        model.fc.weight.mul_(-2.0)                     # in place (an optimizer step)
        model.shift.fill_(0.5)                         # a buffer
    assert torch.allclose(compiled(x, scale), _eager(model, x, scale), atol=1e-6)
    assert not torch.allclose(compiled(x, scale), before, atol=1e-3)

    model.load_state_dict({k: torch.randn_like(v) for k, v in model.state_dict().items()})
    assert torch.allclose(compiled(x, scale), _eager(model, x, scale), atol=1e-6)

    model.fc.bias = torch.nn.Parameter(torch.randn(4))  # a new tensor object
    assert torch.allclose(compiled(x, scale), _eager(model, x, scale), atol=1e-6)

    compiled.load_state_dict({k: torch.zeros_like(v) for k, v in model.state_dict().items()})
    assert torch.count_nonzero(model.fc.weight) == 0   # live: loaded into the model itself
    assert torch.allclose(compiled(x, scale), _eager(model, x, scale), atol=1e-6)


def test_frozen_weights_change_only_through_load_state_dict(tmp_path):
    torch.manual_seed(2)
    model = Affine().eval()
    x, scale = _inputs()
    compiled = quartet.compile(model, (x, scale), weights="frozen")
    compiled_then = _eager(model, x, scale)
    with torch.no_grad():
        model.fc.weight.mul_(3.0)
    assert torch.allclose(compiled(x, scale), compiled_then, atol=1e-6)

    compiled.load_state_dict(model.state_dict())
    assert torch.allclose(compiled(x, scale), _eager(model, x, scale), atol=1e-6)

    program = quartet.runtime.load(compiled.save(tmp_path / "frozen.qrt"))
    assert torch.allclose(program(x, scale), _eager(model, x, scale), atol=1e-6)

    with pytest.raises(QuartetError, match=r"state dict does not fit .*missing key\(s\) "
                                           r"'shift', 'fc.bias'"):
        compiled.load_state_dict({"fc.weight": torch.zeros(4, 8)})
    with pytest.raises(QuartetError, match=r"weight 'fc.weight' is float32 \[4, 8\], got "
                                           r"float32 \[8, 4\]"):
        compiled.load_state_dict({"fc.weight": torch.zeros(8, 4)}, strict=False)


def test_save_writes_the_weights_the_next_call_uses(tmp_path):
    torch.manual_seed(3)
    model = Affine().eval()
    x, scale = _inputs()
    compiled = quartet.compile(model, (x, scale))
    with torch.no_grad():
        model.fc.bias.add_(1.0)
    program = quartet.runtime.load(compiled.save(tmp_path / "live.qrt"))
    assert torch.allclose(program(x, scale), _eager(model, x, scale), atol=1e-6)

    program.load_weights({"fc.bias": torch.zeros(4)})
    with torch.no_grad():
        model.fc.bias.zero_()
    assert torch.allclose(program(x, scale), _eager(model, x, scale), atol=1e-6)
    with pytest.raises(QuartetError, match="no weight named 'fc.bais'"):
        program.load_weights({"fc.bais": torch.zeros(4)})
    with pytest.raises(QuartetError, match="weights mode"):
        quartet.compile(model, (x, scale), weights="copied")


# ----------------------------------------------------------------------------------------------
# keyword inputs
# ----------------------------------------------------------------------------------------------


def test_inputs_by_keyword(model_and_compiled, tmp_path):
    model, compiled = model_and_compiled
    x, scale = _inputs()
    want = _eager(model, x, scale)
    assert torch.allclose(compiled(x, scale=scale), want, atol=1e-6)
    assert torch.allclose(compiled(scale=scale, x=x), want, atol=1e-6)
    for call, message in (
            (lambda: compiled(x, sclae=scale), "unexpected input name(s) sclae: the "
                                               "compiled forward takes (x, scale)"),
            (lambda: compiled(x, x=x), "input(s) x given by position and by name"),
            (lambda: compiled(scale=scale), "input 'x' is missing")):
        with pytest.raises(QuartetError) as e:
            call()
        assert message in str(e.value) and "\n" not in str(e.value)

    program = quartet.runtime.load(compiled.save(tmp_path / "named.qrt"))
    assert torch.allclose(program(x, scale=scale), want, atol=1e-6)
    with pytest.raises(QuartetError, match=r"unexpected input name\(s\) y: the program takes "
                                           r"\(x, scale\)"):
        program(x, y=scale)
    with pytest.raises(QuartetError, match="bench: repeat must be a positive number of runs"):
        program.bench(x, scale, repeat=0)


# ----------------------------------------------------------------------------------------------
# one value returned twice
# ----------------------------------------------------------------------------------------------


def test_a_value_returned_twice_on_the_cpu(tmp_path):
    x = torch.randn(4, 8)
    compiled = quartet.compile(Twice(), (x,), target="cpu")
    a, b, c = compiled(x)
    assert torch.allclose(a, torch.tanh(x), atol=1e-6) and torch.equal(a, c)
    assert torch.allclose(b, x * 2)
    assert [type(s).__name__ for s in compiled.manifest.program] == ["Launch", "Copy"]


# ----------------------------------------------------------------------------------------------
# byte-identical artifacts
# ----------------------------------------------------------------------------------------------


def test_qrt_files_do_not_depend_on_the_clock(model_and_compiled, tmp_path, monkeypatch):
    import time

    _, compiled = model_and_compiled
    first = compiled.save(tmp_path / "a.qrt").read_bytes()
    later = time.time() + 86400 * 400
    monkeypatch.setattr(time, "time", lambda: later)
    assert compiled.save(tmp_path / "b.qrt").read_bytes() == first
    folder = compiled.save(tmp_path / "folder")
    assert quartet.runtime.pack(folder, tmp_path / "c.qrt").read_bytes() == first
