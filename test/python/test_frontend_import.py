"""quartet.frontend: PyTorch models -> linalg on tensors, weights as arguments.

Checks every zoo model imports and parses with the upstream bindings, that parameters are
function arguments (inputs first, then state-dict order) and never constants, that torch.cond
becomes scf.if and while_loop scf.while, that unsupported ops give one-line errors with the
model's file:line, and that the imported IR computes what PyTorch computes. The numerics run the
linalg text on torch-mlir's own MLIR (bufferize, loops, LLVM, its ExecutionEngine): an oracle
independent of Quartet's CPU path, and one whose MLIR lowers ``i1`` memrefs (the upstream
22.1.8 wheel aborts on them in finalize-memref-to-llvm).
"""

from __future__ import annotations

import inspect
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
from torch._higher_order_ops.while_loop import while_loop

from mlir import ir

from quartet.errors import QuartetError
from quartet.frontend import emit_lit_inputs
from quartet.frontend import importer
from quartet.frontend.importer import UPSTREAM_DIALECTS, import_module
from quartet.frontend.models import ZOO, build

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


@pytest.fixture(scope="module")
def zoo():
    """name -> (model, example inputs, ImportedProgram), imported once for the whole file."""
    out = {}
    for name in ZOO:
        model, inputs = build(name)
        out[name] = (model, inputs, import_module(model, inputs))
    return out


def _ops(module: ir.Module):
    """Every op under ``module`` (or an op), nested ones too; keep ``module`` alive meanwhile."""
    def walk(op):
        for region in op.regions:
            for block in region.blocks:
                for child in block.operations:
                    yield child.operation
                    yield from walk(child.operation)

    return list(walk(module.operation))


# ------------------------------------------------------------------------------------------
# A reference executor for linalg on tensors, on torch-mlir's MLIR (test only)
# ------------------------------------------------------------------------------------------

# The reference executor runs in a subprocess that loads torch-mlir's MLIR only: with the
# upstream ``mlir`` libraries in the same process, torch-mlir's JIT resolves garbled symbol
# names (two LLVM copies). One-shot bufferization goes through the transform dialect, which
# (unlike the pass) makes copies linalg.copy: no copy then needs MLIR's runtime library.
_REFERENCE_RUNNER = r'''
import ctypes, sys
import numpy as np
from torch_mlir import ir
from torch_mlir.dialects.transform import interpreter
from torch_mlir.execution_engine import ExecutionEngine
from torch_mlir.passmanager import PassManager
from torch_mlir.runtime import (as_ctype, get_ranked_memref_descriptor,
                                make_nd_memref_descriptor, ranked_memref_to_numpy)

BUFFERIZE = """
module attributes {transform.with_named_sequence} {
  transform.named_sequence @__transform_main(%root: !transform.any_op {transform.consumed}) {
    %0 = transform.bufferization.one_shot_bufferize %root {bufferize_function_boundaries = true,
      function_boundary_type_conversion = 1 : i32, memcpy_op = "linalg.copy",
      allow_return_allocs_from_loops = true} : (!transform.any_op) -> !transform.any_op
    transform.yield
  }
}"""
TO_LLVM = ("builtin.module(func.func(convert-linalg-to-loops),expand-strided-metadata,"
           "lower-affine,convert-scf-to-cf,func.func(math-expand-ops),convert-math-to-llvm,"
           "convert-math-to-libm,finalize-memref-to-llvm,convert-func-to-llvm,"
           "convert-arith-to-llvm,convert-cf-to-llvm,convert-index-to-llvm,"
           "reconcile-unrealized-casts)")

folder = sys.argv[1]
job = np.load(folder + "/job.npz")
with ir.Context():
    module = ir.Module.parse(open(folder + "/program.mlir").read())
    for op in module.body.operations:
        if op.operation.name == "func.func":
            op.attributes["llvm.emit_c_interface"] = ir.UnitAttr.get()
    script = ir.Module.parse(BUFFERIZE)
    interpreter.apply_named_sequence(module, script.body.operations[0], script)
    PassManager.parse(TO_LLVM).run(module.operation)
    engine = ExecutionEngine(module, opt_level=0)
    results = {}
    for run in range(int(job["runs"])):
        arrays = [np.ascontiguousarray(job[f"{run}_{i}"]) for i in range(int(job["args"]))]
        out = make_nd_memref_descriptor(int(job["rank"]), as_ctype(np.float32))()
        args = [ctypes.pointer(ctypes.pointer(out))]
        args += [ctypes.pointer(ctypes.pointer(get_ranked_memref_descriptor(a))) for a in arrays]
        engine.invoke(str(job["func"]), *args)
        results[str(run)] = ranked_memref_to_numpy(ctypes.pointer(out)).copy()
np.savez(folder + "/results.npz", **results)
'''


def run_reference(program, runs: list[list[np.ndarray]], tmp_path) -> list[np.ndarray]:
    """Run the imported linalg (one f32 result) once per argument list, on torch-mlir's JIT."""
    (result,) = program.results
    assert result.dtype == "f32"
    (tmp_path / "program.mlir").write_text(program.mlir_text)
    job = {"runs": len(runs), "args": len(runs[0]), "rank": len(result.shape),
           "func": program.func_name}
    job.update({f"{r}_{i}": a for r, arrays in enumerate(runs) for i, a in enumerate(arrays)})
    np.savez(tmp_path / "job.npz", **job)
    done = subprocess.run([sys.executable, "-c", _REFERENCE_RUNNER, str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    results = np.load(tmp_path / "results.npz")
    return [results[str(r)] for r in range(len(runs))]


def _arrays(program, inputs):
    return [x.numpy() for x in inputs] + [a.value for a in program.weights]


# ------------------------------------------------------------------------------------------
# Every zoo model
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_model_imports_to_upstream_linalg(zoo, name):
    model, inputs, program = zoo[name]
    with ir.Context() as ctx:
        module = program.parse(ctx)
        dialects = {op.name.split(".")[0] for op in _ops(module)}
        funcs = [op for op in _ops(module) if op.name == "func.func"]
    assert dialects <= UPSTREAM_DIALECTS, dialects
    assert "linalg" in dialects
    assert len(funcs) == 1  # branch and loop bodies are inlined, no private functions left
    assert "func.call" not in program.mlir_text
    expected = model(*inputs)
    assert [r.shape for r in program.results] == [tuple(expected.shape)]
    assert [r.dtype for r in program.results] == ["f32"]


@pytest.mark.parametrize("name", list(ZOO))
def test_parameters_are_arguments_in_state_dict_order(zoo, name):
    model, inputs, program = zoo[name]
    state = model.state_dict()
    assert [a.kind for a in program.inputs] == ["input"] * len(inputs)
    assert [a.index for a in program.arguments] == list(range(len(program.arguments)))
    # User inputs first, then the weights in state-dict order.
    assert program.arguments[: len(inputs)] == program.inputs
    assert [a.name for a in program.weights] == list(state)
    assert {a.kind for a in program.weights} == {"parameter"}
    for arg, x in zip(program.inputs, inputs):
        assert arg.shape == tuple(x.shape) and arg.value is None
    for arg in program.weights:
        np.testing.assert_array_equal(arg.value, state[arg.name].numpy())
        assert arg.shape == tuple(state[arg.name].shape) and arg.dtype == "f32"
    with ir.Context() as ctx:
        module = program.parse(ctx)
        (func,) = [op for op in _ops(module) if op.name == "func.func"]
        ftype = ir.FunctionType(ir.TypeAttr(func.attributes["function_type"]).value)
        assert [tuple(ir.RankedTensorType(t).shape) for t in ftype.inputs] == \
            [a.shape for a in program.arguments]


@pytest.mark.parametrize("name", list(ZOO))
def test_no_weights_baked_into_ir(zoo, name):
    _, _, program = zoo[name]
    text = program.mlir_text
    assert "dense_resource" not in text and "ml_program" not in text and "torch." not in \
        re.sub(r"torch\.assume_strict_symbolic_shapes", "", text)
    with ir.Context() as ctx:
        module = program.parse(ctx)
        for op in _ops(module):
            if op.name != "arith.constant":
                continue
            value = op.attributes["value"]
            if isinstance(value, ir.DenseElementsAttr):
                # Only splats (zero init of a state, a fill) or a few scalars, never a weight.
                assert value.is_splat or len(value) <= 4, str(op)


def test_op_locations_are_lines_of_the_model(zoo):
    """Later errors (quartet.errors.location_of) must point at the model, not into torch."""
    from quartet.errors import location_of
    from quartet.frontend import models

    model, _, program = zoo["mlp"]
    with ir.Context() as ctx:
        module = program.parse(ctx)  # keep it alive while its ops are used
        where = {location_of(op) for op in _ops(module)
                 if op.name.startswith("linalg.") and op.name != "linalg.yield"}
    lines = {f"{models.__file__}:{_line_of(models.MLP.forward, code)}:0"
             for code in ("self.fc2(F.gelu", "self.norm(x + y)")}
    assert where == lines


@pytest.mark.parametrize("name", list(ZOO))
def test_imported_linalg_computes_what_pytorch_computes(zoo, name, tmp_path):
    model, inputs, program = zoo[name]
    (got,) = run_reference(program, [_arrays(program, inputs)], tmp_path)
    want = model(*inputs).detach().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dim,correction,keepdim", [
    (None, None, False), ([1], 0, True), ([-1], 1, False), ([0, 2], 2, True)])
def test_var_mean_decomposition_matches_torch(dim, correction, keepdim):
    """The f32 var_mean that replaces torch-mlir's f64 one (LayerNorm, GroupNorm, ...)."""
    x = torch.randn(3, 4, 5) * 10 + 3
    got = importer._var_mean_same_precision(x, dim, correction=correction, keepdim=keepdim)
    want = torch.var_mean(x, dim, correction=correction, keepdim=keepdim)
    for g, w in zip(got, want):
        assert g.dtype == torch.float32 and g.shape == w.shape
        torch.testing.assert_close(g, w)


def test_bf16_weights_are_raw_bits():
    model = nn.Linear(4, 4).to(torch.bfloat16).eval()
    program = import_module(model, (torch.randn(2, 4, dtype=torch.bfloat16),))
    weight = program.weights[0]
    assert weight.dtype == "bf16" and weight.value.dtype == np.uint16
    np.testing.assert_array_equal(weight.value, model.weight.detach().view(torch.int16).numpy()
                                  .view(np.uint16))


def test_buffers_are_arguments_and_batchnorm_imports(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 3), nn.BatchNorm1d(3)).eval()
    model[1].running_mean.uniform_(-1, 1)
    model[1].running_var.uniform_(0.5, 2)
    x = torch.randn(4, 6)
    program = import_module(model, (x,))
    assert [(a.kind, a.name) for a in program.weights] == [
        ("parameter", "0.weight"), ("parameter", "0.bias"), ("parameter", "1.weight"),
        ("parameter", "1.bias"), ("buffer", "1.running_mean"), ("buffer", "1.running_var"),
        ("buffer", "1.num_batches_tracked")]
    assert "cf.assert" not in program.mlir_text
    (got,) = run_reference(program, [_arrays(program, (x,))], tmp_path)
    np.testing.assert_allclose(got, model(x).detach().numpy(), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------
# Control flow
# ------------------------------------------------------------------------------------------


def test_cond_becomes_scf_if_with_both_branches(zoo, tmp_path):
    model, (x,), program = zoo["cond_residual"]
    with ir.Context() as ctx:
        module = program.parse(ctx)
        (if_op,) = [op for op in _ops(module) if op.name == "scf.if"]
        then_ops = {op.name for op in if_op.regions[0].blocks[0].operations}
        assert str(if_op.results[0].type) == "tensor<4x64xf32>"
    assert "linalg.matmul" in then_ops
    samples = (x.abs(), -x.abs())  # mean > 0 runs the block, mean < 0 skips it
    got = run_reference(program, [_arrays(program, (s,)) for s in samples], tmp_path)
    for sample, result in zip(samples, got):
        np.testing.assert_allclose(result, model(sample).detach().numpy(), rtol=1e-5, atol=1e-5)
    assert not np.allclose(got[0], samples[0].numpy())  # the block ran


def test_while_loop_becomes_scf_while(zoo):
    _, _, program = zoo["lstm_loop"]
    with ir.Context() as ctx:
        module = program.parse(ctx)
        names = [op.name for op in _ops(module)]
    assert names.count("scf.while") == 1
    assert "scf.for" not in names


class _CountDown(nn.Module):
    """A loop whose trip count is an input: ``h = tanh(W h + b)`` ``n`` times."""

    def __init__(self):
        super().__init__()
        self.cell = nn.Linear(8, 8)

    def forward(self, n, h):
        def cond(i, h):
            return i > 0

        def body(i, h):
            return i - 1, torch.tanh(self.cell(h))

        return while_loop(cond, body, (n, h))[1]


def test_while_loop_with_data_dependent_trip_count(tmp_path):
    torch.manual_seed(0)
    model = _CountDown().eval()
    h = torch.randn(2, 8)
    program = import_module(model, (torch.tensor(3), h))
    assert [(a.kind, a.name, a.dtype) for a in program.inputs] == [
        ("input", "n", "i64"), ("input", "h", "f32")]
    counts = [torch.tensor(trips) for trips in (0, 1, 5)]
    got = run_reference(program, [_arrays(program, (n, h)) for n in counts], tmp_path)
    for n, result in zip(counts, got):
        np.testing.assert_allclose(result, model(n, h).detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got[0], h.numpy())  # zero trips: the input comes back


class _BranchyRecurrence(nn.Module):
    """A loop whose body branches on its state: ``h = tanh(a(h)) if sum(h) > 0 else sigmoid(b(h))``."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 8)
        self.b = nn.Linear(8, 8)

    def forward(self, n, h):
        def cond(i, h):
            return i > 0

        def body(i, h):
            h = torch.cond(h.sum() > 0, lambda h: torch.tanh(self.a(h)),
                           lambda h: torch.sigmoid(self.b(h) - 0.5), (h,))
            return i - 1, h

        return while_loop(cond, body, (n, h))[1]


def test_cond_nested_in_while_loop(tmp_path):
    torch.manual_seed(1)
    model = _BranchyRecurrence().eval()
    h = torch.randn(2, 8)
    program = import_module(model, (torch.tensor(1), h))
    with ir.Context() as ctx:
        module = program.parse(ctx)
        (loop,) = [op for op in _ops(module) if op.name == "scf.while"]
        assert [op.name for op in _ops(loop)].count("scf.if") == 1
    counts = [torch.tensor(trips) for trips in (0, 3, 6)]
    got = run_reference(program, [_arrays(program, (n, h)) for n in counts], tmp_path)
    for n, result in zip(counts, got):
        np.testing.assert_allclose(result, model(n, h).detach().numpy(), rtol=1e-5, atol=1e-6)


def test_counted_loop_from_folded_entry_test_is_caught(monkeypatch):
    """Without the opaque entry test, torch-mlir lowers LSTMLoop to a never-ending scf.for."""
    from quartet.frontend.control_flow import ControlFlowGraphNodeImporter

    monkeypatch.setattr(ControlFlowGraphNodeImporter, "_initial_condition",
                        lambda self, loc, cond: self._to_torch_bool(loc, cond))
    model, inputs = build("lstm_loop", steps=2, input_size=4, hidden=4)
    with pytest.raises(RuntimeError, match="counted loop"):
        import_module(model, inputs)


# ------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------


def _line_of(fn, needle: str) -> int:
    lines, start = inspect.getsourcelines(fn)
    return start + next(i for i, line in enumerate(lines) if needle in line)


class _Unsupported(nn.Module):
    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        y = self.fc(x)
        if self.kind == "no-torch-op":
            y = torch.special.polygamma(1, y)  # torch-mlir has no torch-dialect op
        elif self.kind == "no-lowering":
            y = torch.erfinv(y)  # torch-dialect op without a linalg lowering
        elif self.kind == "not-linalg":
            y = torch.sort(y, 1).values  # lowers to tm_tensor.sort
        return y * 2


@pytest.mark.parametrize("kind,op", [
    ("no-torch-op", "aten.polygamma"),
    ("no-lowering", "torch.aten.erfinv"),
    ("not-linalg", "tm_tensor.sort"),
])
def test_unsupported_op_names_op_and_model_line(kind, op):
    with pytest.raises(QuartetError) as info:
        import_module(_Unsupported(kind).eval(), (torch.randn(2, 4),))
    error = info.value
    needle = {"no-torch-op": "polygamma", "no-lowering": "erfinv", "not-linalg": "sort"}[kind]
    assert error.location == f"{__file__}:{_line_of(_Unsupported.forward, needle)}"
    assert f"'{op}" in error.message or f"{op}'" in error.message
    assert "unsupported op" in error.message
    text = str(error)
    assert "\n" not in text and text.startswith(f"{__file__}:")


class _UnsupportedInBranch(nn.Module):
    def forward(self, x):
        def taken(x):
            return torch.erfinv(x * 0.5)

        def skipped(x):
            return x.clone()

        return torch.cond(x.sum() > 0, taken, skipped, (x,))


def test_unsupported_op_inside_cond_branch_points_at_the_cond():
    with pytest.raises(QuartetError) as info:
        import_module(_UnsupportedInBranch(), (torch.randn(3),))
    assert "torch.aten.erfinv" in info.value.message
    # Branch bodies are re-traced code; the user frame the trace keeps is the torch.cond call.
    assert info.value.location == \
        f"{__file__}:{_line_of(_UnsupportedInBranch.forward, 'torch.cond')}"


def test_state_mutation_is_a_user_error():
    model = nn.BatchNorm1d(3).train()
    with pytest.raises(QuartetError, match=r"mutates 'running_mean'.*\.eval\(\)"):
        import_module(model, (torch.randn(4, 3),))


def test_value_dependent_shape_is_a_user_error():
    class DataDependentShape(nn.Module):
        def forward(self, x):
            return x[x > 0]  # output shape depends on values

    with pytest.raises(QuartetError) as info:
        import_module(DataDependentShape(), (torch.randn(5),))
    assert "'aten.index.Tensor'" in info.value.message
    assert "depends on tensor values" in info.value.message
    assert info.value.location == f"{__file__}:{_line_of(DataDependentShape.forward, 'x > 0')}"
    assert "\n" not in str(info.value)


class _PythonBranchOnData(nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # a Python branch on a tensor value: torch.export cannot trace it
            return x * 2
        return x


def test_model_that_does_not_export_is_a_user_error_at_its_line():
    with pytest.raises(QuartetError) as info:
        import_module(_PythonBranchOnData(), (torch.randn(5),))
    assert info.value.message.startswith("torch.export failed for _PythonBranchOnData:")
    assert info.value.location == \
        f"{__file__}:{_line_of(_PythonBranchOnData.forward, 'if x.sum()')}"
    assert "\n" not in str(info.value)


def test_non_tensor_input_is_a_user_error():
    with pytest.raises(QuartetError, match="example input 0 is a int"):
        import_module(nn.Identity(), (3,))


# ------------------------------------------------------------------------------------------
# Lit inputs
# ------------------------------------------------------------------------------------------


def test_lit_inputs_are_current_and_small():
    assert emit_lit_inputs.main(["--check"]) == 0
    for name in emit_lit_inputs.LIT_INPUTS:
        with open(f"{emit_lit_inputs.DEFAULT_FOLDER}/{name}.mlir") as f:
            text = f.read()
        assert text.count("\n") < 200
        with ir.Context():
            ir.Module.parse(text)


def test_location_picks_the_innermost_user_frame():
    frames = [("<eval_with_key>.6", 7), ("/x/site-packages/torch/nn/modules/linear.py", 134),
              ("/home/me/model.py", 12), ("/home/me/train.py", 40)]
    from quartet.frontend import export      # where the export half of the import lives

    frames[1] = (f"{export._TORCH_DIR}/nn/modules/linear.py", 134)
    assert importer._pick_user_frame(frames) == "/home/me/model.py:12"
    assert importer._pick_user_frame([("<eval_with_key>.1", 3)]) is None
