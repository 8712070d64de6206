"""Tests of ``quartet-compile`` and ``quartet-run``, each run as a subprocess like a user would.

The happy path is the README's main command on a machine with no GPU: compile a zoo model for
``--target cpu``, run it, ``--check`` it against PyTorch eager and ``--bench`` it. Then every
kind of bad input must be ONE line ``location: error: message`` on stderr, exit status 1 and no
traceback: a model file that does not import (syntax error, failing import, missing class, a
constructor that needs arguments or raises), a bad ``--input``, an unknown target, pipeline or
stage, an unsupported op (named, with the model line), wrong input shapes or dtypes at call
time (quartet-run and ``CompiledModule``), and artifacts from another architecture or format
version, truncated or corrupt.

Compiles are shared through module-scoped fixtures (a CPU compile of a small model is a few
seconds, most of it importing torch and torch-mlir).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
MODELS = REPO / "frontend" / "models.py"

MODEL_FILE = textwrap.dedent('''\
    import torch


    class Small(torch.nn.Module):
        def __init__(self, dim: int = 16, out: int = 8):
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(dim, out))
            self.b = torch.nn.Parameter(torch.randn(out))

        def forward(self, x):
            return torch.tanh(x @ self.w + self.b)


    class WithSort(torch.nn.Module):
        def forward(self, x):
            y = x * 2
            return torch.sort(y, dim=-1).values


    class NeedsArgs(torch.nn.Module):
        def __init__(self, dim):
            super().__init__()


    class Raises(torch.nn.Module):
        def __init__(self):
            super().__init__()
            raise ValueError("no such device")


    class SmallRelu(Small):
        def forward(self, x):
            return torch.relu(x @ self.w + self.b)


    class Other(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(16, 8)

        def forward(self, x):
            return self.fc(x)


    class WrongForward(Small):
        def forward(self, x):
            return x @ self.w.T


    class Branchy(torch.nn.Module):
        def forward(self, x):
            if x.sum() > 0:
                return x * 2
            return x - 1


    class ReturnsDict(Small):
        def forward(self, x):
            return {"y": x @ self.w + self.b}


    class ReturnsTwo(Small):
        def forward(self, x):
            y = x @ self.w + self.b
            return y, y


    class ReturnsWider(Small):
        def forward(self, x):
            return torch.cat([x @ self.w, x @ self.w], dim=-1)


    class ConvOfOtherShape(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)

        def forward(self, x):
            return self.conv(x)


    NotAModule = 42
    ''')
SORT_LINE = 17   # the torch.sort line of MODEL_FILE (tm_tensor.sort: refused)
OTHER_FORWARD_LINE = 42   # Other's nn.Linear call
BRANCH_LINE = 52   # the Python if of Branchy


def run(tool: str, *args, cwd=None, check_rc: int | None = None) -> subprocess.CompletedProcess:
    """Run ``quartet-<tool>`` (as ``python -m``) and return the finished process."""
    done = subprocess.run([sys.executable, "-m", f"quartet.tools.quartet_{tool}", *map(str, args)],
                          cwd=cwd, capture_output=True, text=True, timeout=600)
    if check_rc is not None:
        assert done.returncode == check_rc, done.stderr
    return done


def one_line_error(done: subprocess.CompletedProcess) -> str:
    """The single error line of a failed run (asserting exit 1, one line, no traceback)."""
    assert done.returncode == 1, (done.stdout, done.stderr)
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert "error: " in lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cli")
    (folder / "models.py").write_text(MODEL_FILE)
    return folder


@pytest.fixture(scope="module")
def conv_artifact(tmp_path_factory) -> Path:
    """The README's main command, step 1: a zoo model compiled for the CPU, one .qrt file."""
    out = tmp_path_factory.mktemp("conv") / "conv.qrt"
    run("compile", f"{MODELS}:ConvBlock", "--input", "1x3x16x16:f32", "--target", "cpu",
        "-o", out, check_rc=0)
    return out


@pytest.fixture(scope="module")
def small_folder(work) -> Path:
    """``Small`` compiled from a saved state dict into an artifact folder."""
    import torch

    torch.manual_seed(123)
    state = {"w": torch.randn(16, 8), "b": torch.randn(8)}
    torch.save(state, work / "small.pt")
    out = work / "small"
    run("compile", "models.py:Small", "--input", "4x16:f32", "--target", "cpu",
        "--weights", "small.pt", "-o", out, "--seed", "5", cwd=work, check_rc=0)
    return out


# ----------------------------------------------------------------------------------------------
# The main command, end to end on the CPU
# ----------------------------------------------------------------------------------------------


def test_main_command_check_and_bench(conv_artifact):
    done = run("run", conv_artifact, "--check", "--bench", check_rc=0)
    lines = done.stdout.splitlines()
    errors = [ln for ln in lines if ln.startswith("max relative error: ")]
    assert len(errors) == 1
    assert float(errors[0].split(": ")[1]) < 1e-4
    assert any(ln.startswith("median time: ") and " ms " in ln for ln in lines)
    assert lines[0].startswith("out0: float32 [1, 16, 8, 8]")


def test_producer_records_how_to_rebuild_the_reference(conv_artifact):
    from quartet.runtime import load_manifest

    info = json.loads(load_manifest(conv_artifact).producer)
    assert info["tool"] == "quartet-compile"
    assert info["model_file"] == str(MODELS)
    assert info["class"] == "ConvBlock"
    assert info["inputs"] == ["1x3x16x16:f32"]
    assert info["seed"] == 0 and info["target"] == "cpu" and info["pipeline"] == "roller"
    assert "weights" not in info


def test_check_uses_the_artifacts_weights(small_folder, work):
    info = json.loads((small_folder / "manifest.json").read_text())
    producer = json.loads(info["producer"])
    assert producer["weights"] == str(work / "small.pt") and producer["seed"] == 5
    # The state dict is gone: --check still runs eager on the weights stored in the artifact
    # (the seeded constructor's weights would differ and fail the check).
    moved = work / "elsewhere.pt"
    shutil.move(work / "small.pt", moved)
    try:
        done = run("run", small_folder, "--check", cwd=work, check_rc=0)
    finally:
        shutil.move(moved, work / "small.pt")
    err = float(done.stdout.split("max relative error: ")[1].split()[0])
    assert err < 1e-4


def test_check_fails_above_the_tolerance(small_folder, work):
    """--model rebuilds another class with the same weights: a different function, so the
    check prints its error line and fails in one line."""
    done = run("run", small_folder, "--check", "--model", "models.py:SmallRelu", cwd=work)
    err = float(done.stdout.split("max relative error: ")[1].split()[0])
    assert err > 0.1
    assert f"above the tolerance 0.0001 (float32)" in one_line_error(done)


def test_bf16_inputs_make_a_bf16_model(work):
    """--model-dtype auto: bf16 inputs cast the model to bf16; its weights are stored as
    bfloat16 (not their uint16 bits) and --check runs eager in bf16 on them."""
    out = work / "small_bf16.qrt"
    run("compile", "models.py:Small", "--input", "4x16:bf16", "--target", "cpu", "-o", out,
        cwd=work, check_rc=0)
    from quartet.runtime import load_manifest

    m = load_manifest(out)
    assert {w.dtype for w in m.weights} == {"bfloat16"}
    assert json.loads(m.producer)["model_dtype"] == "bfloat16"
    done = run("run", out, "--check", cwd=work, check_rc=0)
    assert done.stdout.startswith("out0: bfloat16 [4, 8]")
    assert float(done.stdout.split("max relative error: ")[1].split()[0]) < 5e-2


def test_inputs_from_npy_files(small_folder, work):
    x = np.random.default_rng(7).standard_normal((4, 16)).astype(np.float32)
    np.save(work / "x.npy", x)
    done = run("run", small_folder, "--input", "x.npy", "--check", cwd=work, check_rc=0)
    assert "max relative error: " in done.stdout


def test_emit_prints_the_ir_of_a_stage_and_writes_no_artifact(work):
    done = run("compile", "models.py:Small", "--input", "4x16:f32", "--target", "cpu",
               "--emit", "quartet", "-o", "small.mlir", cwd=work, check_rc=0)
    text = (work / "small.mlir").read_text()
    assert "quartet.tile" in text and "func.func" in text
    assert not (work / "small.mlir").is_dir() and done.stdout == ""


def test_quartet_run_needs_no_mlir(conv_artifact, tmp_path):
    """quartet-run (with --check, which imports torch) in a process where MLIR cannot load."""
    code = ("import sys; sys.modules['mlir'] = None; sys.modules['torch_mlir'] = None\n"
            "from quartet.tools.quartet_run import entry\n"
            f"sys.argv = ['quartet-run', {str(conv_artifact)!r}, '--check']\n"
            "rc = entry()\n"
            "assert not any(m == 'mlir' or m.startswith(('mlir.', 'torch_mlir'))\n"
            "               for m, v in sys.modules.items() if v is not None)\n"
            "sys.exit(rc)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "max relative error: " in done.stdout


# ----------------------------------------------------------------------------------------------
# Bad input to quartet-compile
# ----------------------------------------------------------------------------------------------


def test_unsupported_op_is_named_with_its_model_line(work):
    line = one_line_error(run("compile", "models.py:WithSort", "--input", "4x8:f32",
                              "--target", "cpu", "-o", "x.qrt", cwd=work))
    assert line.startswith(f"{work / 'models.py'}:{SORT_LINE}")
    assert "unsupported op" in line and "sort" in line
    assert not (work / "x.qrt").exists()


@pytest.mark.parametrize("name, source, expected", [
    ("syntax.py", "import torch\nclass A(torch.nn.Module:\n    pass\n",
     r"syntax.py:2:\d+: error: model file does not import: "),
    ("imports.py", "import torch\nimport no_such_module_here\n",
     r"imports.py:2:0: error: model file does not import: ModuleNotFoundError"),
    ("models.py", None, r"error: model file has no class 'A' \(nn.Module classes in it: "
                        r"Branchy, ConvOfOtherShape, NeedsArgs, Other, Raises, ReturnsDict, "
                        r"ReturnsTwo, ReturnsWider, Small, SmallRelu, WithSort, "
                        r"WrongForward\)"),
    ("missing.py", "", r"missing.py: error: could not open model file: no such file"),
])
def test_model_file_that_does_not_import(work, name, source, expected):
    import re

    if source:
        (work / name).write_text(source)
    line = one_line_error(run("compile", f"{name}:A", "--input", "4:f32", "--target", "cpu",
                              "-o", "x.qrt", cwd=work))
    assert re.search(expected, line), line


def test_constructor_that_needs_arguments(work):
    line = one_line_error(run("compile", "models.py:NeedsArgs", "--input", "4:f32",
                              "--target", "cpu", "-o", "x.qrt", cwd=work))
    assert line.startswith(f"{work / 'models.py'}:20:0: error: NeedsArgs() needs argument(s) dim")


def test_constructor_that_raises(work):
    line = one_line_error(run("compile", "models.py:Raises", "--input", "4:f32",
                              "--target", "cpu", "-o", "x.qrt", cwd=work))
    assert line == (f"{work / 'models.py'}:28:0: error: Raises() failed: "
                    f"ValueError: no such device")


@pytest.mark.parametrize("spec, expected", [
    ("4xz:f32", "dimension 'z' is not a positive integer"),
    ("4x16:f12", "unknown dtype 'f12'"),
    (":f32", "no shape"),
    ("0x16:f32", "dimension '0' is not a positive integer"),
])
def test_bad_input_spec(work, spec, expected):
    line = one_line_error(run("compile", "models.py:Small", "--input", spec, "--target", "cpu",
                              "-o", "x.qrt", cwd=work))
    assert f"bad --input '{spec}'" in line and expected in line


@pytest.mark.parametrize("option, expected", [
    (["--target", "sm_12"], "unknown target 'sm_12' (known targets: sm_90, sm_80, gfx942, cpu)"),
    (["--pipeline", "nope"], "unknown pipeline 'nope'"),
    (["--emit", "asm"], "unknown --emit stage 'asm' (stages: linalg, quartet, gpu, llvm, ptx)"),
    (["--model-dtype", "f8"], "unknown --model-dtype 'f8'"),
    (["--bogus"], "unrecognized arguments: --bogus"),
])
def test_unknown_option_values(work, option, expected):
    line = one_line_error(run("compile", "models.py:Small", "--input", "4x16:f32",
                              "-o", "x.qrt", *option, cwd=work))
    assert expected in line


def test_wrong_number_and_shape_of_inputs(work):
    line = one_line_error(run("compile", "models.py:Small", "--input", "4x16", "--input", "3",
                              "--target", "cpu", "-o", "x.qrt", cwd=work))
    assert "Small.forward(x) takes 1 input(s); 2 --input given" in line
    line = one_line_error(run("compile", "models.py:Small", "--input", "4x15", "--target", "cpu",
                              "-o", "x.qrt", cwd=work))
    assert "models.py:11" in line and "[4, 15] X [16, 8]" in line


def test_weights_that_do_not_fit(work):
    import torch

    torch.save({"w": torch.zeros(3, 3)}, work / "bad.pt")
    line = one_line_error(run("compile", "models.py:Small", "--input", "4x16:f32", "--target",
                              "cpu", "--weights", "bad.pt", "-o", "x.qrt", cwd=work))
    assert ("state dict does not fit Small: missing: b; wrong shape: w [3, 3] (model: [16, 8])"
            in line)


def test_inputs_that_eager_pytorch_refuses(work):
    """An i64 input to a float model exports, but PyTorch itself refuses it: so does Quartet."""
    line = one_line_error(run("compile", "models.py:Other", "--input", "4x16:i64",
                              "--target", "cpu", "-o", "x.qrt", cwd=work))
    assert line.startswith(f"{work / 'models.py'}:{OTHER_FORWARD_LINE}: error: PyTorch itself "
                           f"refuses the example inputs (4x16 int64): addmm takes operands "
                           f"of one dtype, got float32 and int64")
    assert not (work / "x.qrt").exists()


def test_python_branch_on_a_tensor_points_to_torch_cond(work):
    line = one_line_error(run("compile", "models.py:Branchy", "--input", "4x16:f32",
                              "--target", "cpu", "-o", "x.qrt", cwd=work))
    assert line.startswith(f"{work / 'models.py'}:{BRANCH_LINE}: error: Python control flow "
                           f"on a tensor's value")
    assert "torch.cond(pred, true_fn, false_fn, (x,))" in line


@pytest.mark.parametrize("args, expected", [
    (["--input", "4x16:f32", "--emit", "gpu", "--target", "cpu"],
     "--emit gpu needs a GPU target, not cpu"),
    (["--input", "4x16:f32", "--emit", "linalg", "-o", "no/such/x.mlir"],
     "cannot write 'no/such/x.mlir': folder"),
    (["--input", "4x16:f32"], "give the artifact to write with -o OUT"),
    (["-o", "x.qrt"], "give one --input DIMS:DTYPE per forward() argument"),
])
def test_compile_command_line_mistakes(work, args, expected):
    line = one_line_error(run("compile", "models.py:Small", *args, cwd=work))
    assert expected in line


def test_default_target_is_auto_and_printed(work):
    done = run("compile", "models.py:Small", "--input", "4x16:f32", "--emit", "linalg",
               cwd=work, check_rc=0)
    assert "func.func @forward" in done.stdout
    from quartet.frontend.target import choose_for_machine

    assert f"quartet-compile: {choose_for_machine().line()}" in done.stderr


def test_recompiling_gives_a_byte_identical_artifact(conv_artifact, tmp_path):
    again = tmp_path / "again.qrt"
    run("compile", f"{MODELS}:ConvBlock", "--input", "1x3x16x16:f32", "--target", "cpu",
        "-o", again, check_rc=0)
    assert again.read_bytes() == conv_artifact.read_bytes()


@pytest.mark.parametrize("spec, expected", [
    ("Small", "expected FILE.py:ClassName, got 'Small'"),
    ("no_such_package.Model", "cannot import module 'no_such_package'"),
    (".:Small", "could not open model file: it is a folder"),
])
def test_model_spec_mistakes(work, spec, expected):
    line = one_line_error(run("compile", spec, "--input", "4x16:f32", "-o", "x.qrt", cwd=work))
    assert expected in line


def test_weights_file_mistakes(work):
    (work / "junk.pt").write_text("not a pickle")
    import torch

    torch.save([1, 2, 3], work / "list.pt")
    for name, expected in (("absent.pt", "absent.pt: error: could not open weights file: no "
                                         "such file"),
                           ("junk.pt", "junk.pt: error: not a PyTorch state dict"),
                           ("list.pt", "list.pt: error: not a state dict")):
        line = one_line_error(run("compile", "models.py:Small", "--input", "4x16:f32",
                                  "--weights", name, "-o", "x.qrt", cwd=work))
        assert expected in line, line


def test_check_needs_to_know_the_model(conv_artifact, tmp_path):
    folder = _copy_folder(conv_artifact, tmp_path / "anonymous")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["producer"] = json.dumps({"tool": "another compiler"})
    (folder / "manifest.json").write_text(json.dumps(manifest))
    line = one_line_error(run("run", folder, "--check"))
    assert "--check: the artifact does not say which PyTorch model it came from; pass --model" \
        in line

    moved = _copy_folder(conv_artifact, tmp_path / "moved")
    manifest = json.loads((moved / "manifest.json").read_text())
    producer = json.loads(manifest["producer"])
    producer.update(model_file="/no/such/models.py", model_file_arg="no/such/models.py")
    manifest["producer"] = json.dumps(producer)
    (moved / "manifest.json").write_text(json.dumps(manifest))
    line = one_line_error(run("run", moved, "--check", cwd=tmp_path))
    assert "--check: model file /no/such/models.py is not here; pass --model FILE.py:ConvBlock" \
        in line


@pytest.mark.parametrize("tool, hidden, args, expected", [
    ("compile", ("mlir", "torch_mlir"), ["models.py:Small", "--input", "4x16", "-o", "x.qrt"],
     "quartet-compile needs torch_mlir, mlir: install the compiler with pip install "
     "'quartet[compiler]'"),
    ("run", ("torch",), ["ARTIFACT", "--check"],
     "--check runs the PyTorch model: it needs torch, which is not installed here"),
])
def test_a_missing_package_is_named(work, conv_artifact, tool, hidden, args, expected):
    """What a machine without the compiler (or without torch) says, in one line."""
    args = [str(conv_artifact) if a == "ARTIFACT" else a for a in args]
    code = ("import importlib.util, sys\n"
            "real = importlib.util.find_spec\n"
            f"importlib.util.find_spec = lambda n, *a: None if n in {hidden!r} else real(n, *a)\n"
            f"from quartet.tools.quartet_{tool} import entry\n"
            f"sys.argv = ['quartet-{tool}', *{args!r}]\n"
            "sys.exit(entry())\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=work, timeout=300)
    assert expected in one_line_error(done)


def test_not_an_npy_file(conv_artifact, tmp_path):
    (tmp_path / "text.npy").write_text("1 2 3")
    line = one_line_error(run("run", conv_artifact, "--input", tmp_path / "text.npy"))
    assert "text.npy: error: not a .npy array file" in line


@pytest.mark.parametrize("case, expected", [
    ("missing", "could not open input file: no such file"),
    ("folder", "could not open input file: it is a directory"),
    ("binary", "could not read input file: not UTF-8 text"),
    ("syntax", "error: "),
    ("pass", "no-such-pass"),
    ("output", "cannot write"),
])
def test_quartet_opt_mistakes(tmp_path, case, expected):
    good = tmp_path / "good.mlir"
    good.write_text("func.func @f(%a: f32) -> f32 {\n  return %a : f32\n}\n")
    (tmp_path / "bad.mlir").write_text("func.func @f( {\n")
    (tmp_path / "binary.mlir").write_bytes(b"\xff\xfe\x00junk")
    args = {"missing": [tmp_path / "absent.mlir"], "folder": [tmp_path],
            "binary": [tmp_path / "binary.mlir"], "syntax": [tmp_path / "bad.mlir"],
            "pass": [good, "--pass-pipeline=builtin.module(no-such-pass)"],
            "output": [good, "-o", tmp_path / "no" / "such" / "out.mlir"]}[case]
    line = one_line_error(run("opt", *args))
    assert expected in line


# ----------------------------------------------------------------------------------------------
# Every tool: --version, defaults in --help
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tool", ["compile", "run", "opt"])
def test_version_and_help(tool):
    from quartet import __version__

    done = run(tool, "--version", check_rc=0)
    assert done.stdout.strip() == f"quartet-{tool} {__version__}"
    text = run(tool, "--help", check_rc=0).stdout
    assert "``" not in text and "--version" in text
    defaults = {"compile": ["(default: auto)", "(default: roller)", "(default: 0)"],
                "run": ["(default: 20)", "(default: 3)"],
                "opt": ["(default: -)"]}[tool]
    flat = " ".join(text.split())
    for d in defaults:
        assert d in flat, (d, text)


def test_demo_has_a_version():
    from quartet import __version__

    done = subprocess.run([sys.executable, "-m", "quartet.tools.demo", "--version"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == f"quartet-demo {__version__}"


# ----------------------------------------------------------------------------------------------
# Bad input to quartet-run: inputs at call time, foreign and damaged artifacts
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("args, expected", [
    (["--bench", "--repeat", "0"], "argument --repeat: expected a positive integer, got 0"),
    (["--bench", "--warmup", "-1"], "argument --warmup: expected 0 or a positive integer"),
    (["--repeat", "many"], "argument --repeat: expected an integer, got 'many'"),
    (["--device", "-1"], "argument --device: expected 0 or a positive integer"),
    (["--graph"], "graph=True needs the cuda backend; this artifact is for cpu"),
    (["--input", "a.npy", "--input", "b.npy"], "--input given 2 time(s); the program takes 1"),
])
def test_run_command_line_mistakes(conv_artifact, args, expected):
    line = one_line_error(run("run", conv_artifact, *args))
    assert expected in line


@pytest.mark.parametrize("artifact, model, expected", [
    ("conv_artifact", "Other", "--check: Other does not match the artifact: its weights "
                               "fc.weight, fc.bias are not in the artifact"),
    ("conv_artifact", "Branchy", "--check: Branchy does not match the artifact: the artifact's "
                                 "weights conv.weight, conv.bias are not in it"),
    ("small_folder", "WrongForward", "--check: WrongForward.forward fails on the artifact's "
                                     "inputs (RuntimeError: "),
    ("small_folder", "Other", "state dict does not fit Other: missing: fc.weight, fc.bias"),
    ("small_folder", "NoSuchClass", "model file has no class 'NoSuchClass'"),
    ("small_folder", "NotAModule", "'NotAModule' is not a torch.nn.Module subclass"),
    ("small_folder", "ReturnsDict", "--check: the PyTorch model returns dict, not tensors"),
    ("small_folder", "ReturnsTwo", "the artifact returns 1 output(s), the PyTorch model 2"),
    ("small_folder", "ReturnsWider", "output 0 ('out0'): the artifact gives shape [4, 8], the "
                                     "PyTorch model [4, 16]"),
    ("conv_artifact", "ConvOfOtherShape", "--check: weight 'conv.weight' is float32 "
                                          "[16, 3, 3, 3] in the artifact but float32 [8, 3, 3, 3] "
                                          "in the model"),
])
def test_check_with_the_wrong_model(request, work, artifact, model, expected):
    path = request.getfixturevalue(artifact)
    line = one_line_error(run("run", path, "--check", "--model", f"models.py:{model}", cwd=work))
    assert expected in line


# ----------------------------------------------------------------------------------------------
# Bad input to quartet-run: inputs at call time, foreign and damaged artifacts
# ----------------------------------------------------------------------------------------------


def test_wrong_input_shape_and_dtype_at_call_time(conv_artifact, tmp_path):
    np.save(tmp_path / "shape.npy", np.zeros((1, 3, 16, 15), np.float32))
    np.save(tmp_path / "dtype.npy", np.zeros((1, 3, 16, 16), np.float64))
    line = one_line_error(run("run", conv_artifact, "--input", tmp_path / "shape.npy"))
    assert line == (f"{conv_artifact}: error: input 0 ('x'): expected shape [1, 3, 16, 16] "
                    f"float32, got shape [1, 3, 16, 15] float32")
    line = one_line_error(run("run", conv_artifact, "--input", tmp_path / "dtype.npy"))
    assert "got shape [1, 3, 16, 16] float64" in line
    line = one_line_error(run("run", conv_artifact, "--input", tmp_path / "none.npy"))
    assert "none.npy: error: could not open input file: no such file" in line


def _copy_folder(artifact: Path, dest: Path) -> Path:
    """A folder-form copy of a .qrt artifact."""
    import zipfile

    with zipfile.ZipFile(artifact) as zf:
        zf.extractall(dest)
    return dest


def test_artifact_of_another_format_version(conv_artifact, tmp_path):
    folder = _copy_folder(conv_artifact, tmp_path / "v99")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["version"] = 99
    (folder / "manifest.json").write_text(json.dumps(manifest))
    line = one_line_error(run("run", folder))
    assert ("artifact format version 99 is not supported by this runtime (it reads version 1, 2)"
            in line)


def test_cpu_artifact_of_another_machine(conv_artifact, tmp_path):
    folder = _copy_folder(conv_artifact, tmp_path / "other")
    manifest = json.loads((folder / "manifest.json").read_text())
    producer = json.loads(manifest["producer"])
    producer["machine"] = "riscv64"
    manifest["producer"] = json.dumps(producer)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    line = one_line_error(run("run", folder))
    assert "artifact holds cpu code for riscv64; this machine is" in line


@pytest.mark.parametrize("target, expected", [
    ("gfx942", "the hip backend is not available in this runtime (target gfx942)"),
    ("sm_80", "cuda"),
])
def test_gpu_artifact_of_another_architecture(tmp_path, target, expected):
    """An artifact whose machine code cannot run here: refused at load, in one line.

    On a machine without an NVIDIA GPU the sm_80 artifact is refused for lack of the cuda
    backend; on the H100 (sm_90) for its architecture.
    """
    from quartet.runtime import ArtifactWriter, Launch

    w = ArtifactWriter(target, producer=json.dumps({"tool": "test"}))
    w.add_input("x", (4,), "float32")
    w.add_output("y", (4,), "float32")
    fmt = "hsaco" if target.startswith("gfx") else "cubin"
    w.add_kernel("k", b"\x7fELF" + bytes(60), "k", (1, 1, 1), (32, 1, 1), args=["x", "y"],
                 binary_format=fmt)
    w.add_step(Launch("k"))
    path = w.save(tmp_path / f"{target}.qrt")
    line = one_line_error(run("run", path))
    assert expected in line


def test_truncated_and_corrupt_artifacts(conv_artifact, tmp_path):
    data = conv_artifact.read_bytes()
    (tmp_path / "short.qrt").write_bytes(data[: len(data) // 3])
    line = one_line_error(run("run", tmp_path / "short.qrt"))
    assert "artifact file is truncated or corrupt" in line

    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    (tmp_path / "flipped.qrt").write_bytes(bytes(flipped))
    line = one_line_error(run("run", tmp_path / "flipped.qrt"))
    assert "corrupt" in line

    folder = _copy_folder(conv_artifact, tmp_path / "folder")
    weights = bytearray((folder / "weights.bin").read_bytes())
    weights[0] ^= 0xFF
    (folder / "weights.bin").write_bytes(bytes(weights))
    line = one_line_error(run("run", folder))
    assert "weight 'conv.weight' in weights.bin fails its checksum: the artifact is corrupt" in line

    (tmp_path / "junk.qrt").write_text("not an artifact")
    assert "truncated or corrupt" in one_line_error(run("run", tmp_path / "junk.qrt"))
    assert "no such artifact" in one_line_error(run("run", tmp_path / "absent.qrt"))


# ----------------------------------------------------------------------------------------------
# The Python API: quartet.compile, CompiledModule at call time
# ----------------------------------------------------------------------------------------------


def test_compiled_module_rejects_wrong_inputs_in_one_line():
    import torch

    import quartet
    from quartet.errors import QuartetError

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.ReLU()).eval()
    x = torch.randn(4, 8)
    compiled = quartet.compile(model, (x,), target="cpu")
    assert torch.equal(compiled(x), torch.relu(x))
    for bad, got in ((torch.randn(4, 9), "got shape [4, 9] float32"),
                     (torch.randn(4, 8, dtype=torch.float64), "got shape [4, 8] float64")):
        with pytest.raises(QuartetError) as e:
            compiled(bad)
        text = str(e.value)
        assert "\n" not in text
        assert text.startswith("compiled torch.nn.modules.container.Sequential: error: input 0")
        assert got in text
    with pytest.raises(QuartetError, match="expected 1 input"):
        compiled(x, x)


def test_import_quartet_is_cheap():
    code = ("import sys, quartet, quartet.frontend\n"
            "heavy = [m for m in ('torch', 'mlir', 'torch_mlir') if m in sys.modules]\n"
            "assert not heavy, heavy\n"
            "assert callable(quartet.compile) and quartet.compile is quartet.frontend.compile\n"
            "assert quartet.CompiledModule.__name__ == 'CompiledModule'\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
