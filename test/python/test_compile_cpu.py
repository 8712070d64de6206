"""``quartet.compile(model, inputs, target="cpu")`` on the model zoo, end to end (issue 4).

Each zoo model (``frontend/models.py``: MLP, attention, BERT layer, conv block, an LSTM cell in a
``while_loop``, a residual block under ``torch.cond``) is compiled once per session through the
public API: torch-mlir import, ``quartet-outline-tiles`` and ``roller-config{target=cpu}``, the
CPU lowering to one shared object, the artifact, and calls through ``quartet.runtime`` (what
``CompiledModule`` does under the hood). Results are compared with PyTorch eager on inputs the
compile never saw; both branches of the ``torch.cond`` model are taken. The artifact is saved as
one ``.qrt`` file and as a folder, loaded back, and run in a process where ``import mlir``
fails. The imported linalg of every model also goes through ``roller-config`` for every target:
each tile must get a schedule that ``check_fits`` accepts.

Error metric: max |out - ref| / max |ref| (f32, tolerance 1e-4). Cost: one compile per model
(about 2-5 s each on 2 cores, the first one paying torch.export's warm-up), shared by
module-scoped fixtures.
"""

# `mlir` before torch_mlir (through the frontend): the other order makes the CPU JIT resolve
# symbols against torch_mlir's copy of LLVM.
import mlir.ir as ir  # noqa: I001  (order matters)

import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from quartet.dialects import TileOp
from quartet.frontend import models
from quartet.frontend.compile import CompiledModule, compile, run_passes
from quartet.runtime import targets
from quartet.passes.roller.config import check_fits, loop_info, row_program
from quartet.runtime import load
from test_roller_policy import check_threads  # the same thread rules as the policy tests

TOLERANCE = 1e-4
ZOO = list(models.ZOO)
TARGETS = ("sm_90", "sm_80", "gfx942", "cpu")


def relative_error(out, ref) -> float:
    out = torch.as_tensor(np.asarray(out)) if not isinstance(out, torch.Tensor) else out
    ref = ref.detach()
    assert tuple(out.shape) == tuple(ref.shape) and out.dtype == ref.dtype
    scale = max(float(ref.abs().max()), 1e-30)
    return float((out.double() - ref.double()).abs().max()) / scale


def fresh_inputs(name: str, model, seed: int, shift: float = 0.0):
    """Inputs like the model's examples, drawn anew (the compile saw other values)."""
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(x.shape, generator=gen, dtype=x.dtype) + shift
                 for x in model.example_inputs())


class Zoo:
    """Zoo models compiled for the CPU once per module, on first use."""

    def __init__(self):
        self._built: dict[str, tuple] = {}

    def __call__(self, name: str) -> tuple:
        if name not in self._built:
            model, inputs = models.build(name)
            started = time.perf_counter()
            compiled = compile(model, inputs, target="cpu")
            self._built[name] = (model, compiled, time.perf_counter() - started)
        return self._built[name]


@pytest.fixture(scope="module")
def zoo():
    return Zoo()


# ---------------------------------------------------------------------------------------------
# Numerics against PyTorch


@pytest.mark.parametrize("name", [n for n in ZOO if n != "cond_residual"])
def test_zoo_model_matches_pytorch(zoo, name):
    model, compiled, _ = zoo(name)
    assert isinstance(compiled, CompiledModule) and compiled.target == "cpu"
    for seed in (1, 2):
        inputs = fresh_inputs(name, model, seed)
        with torch.no_grad():
            ref = model(*inputs)
        out = compiled(*inputs)
        assert isinstance(out, torch.Tensor)        # torch in, torch out
        assert relative_error(out, ref) <= TOLERANCE, name
        # numpy arrays work too, and give the same values
        out_np = compiled(*[x.numpy() for x in inputs])
        assert isinstance(out_np, np.ndarray)
        np.testing.assert_array_equal(out_np, out.numpy())


@pytest.mark.parametrize("shift,taken", [(1.0, True), (-1.0, False)])
def test_cond_residual_takes_each_branch(zoo, shift, taken):
    """``torch.cond(x.mean() > 0, block, skip)``: the predicate is computed by the compiled
    program (scf.if in the artifact's one kernel), on data it never saw at compile time."""
    model, compiled, _ = zoo("cond_residual")
    (x,) = fresh_inputs("cond_residual", model, 3, shift)
    assert bool(x.mean() > model.threshold) == taken
    with torch.no_grad():
        ref = model(x)
    out = compiled(x)
    assert relative_error(out, ref) <= TOLERANCE
    # The skipped block returns x itself; the taken one adds a residual.
    assert torch.equal(out, x) != taken


def test_lstm_loop_runs_every_step(zoo):
    """The while_loop runs ``steps`` iterations inside the compiled program: stopping one step
    early or late would give a different hidden state."""
    model, compiled, _ = zoo("lstm_loop")
    (xs,) = fresh_inputs("lstm_loop", model, 4)
    out = compiled(xs)
    with torch.no_grad():
        ref = model(xs)
        shorter = model(xs[:-1])
    assert relative_error(out, ref) <= TOLERANCE
    assert relative_error(out, shorter) > 1e-3


def test_wrong_input_is_a_one_line_error(zoo):
    from quartet.errors import QuartetError

    model, compiled, _ = zoo("mlp")
    (x,) = model.example_inputs()
    with pytest.raises(QuartetError, match=r"expected shape \[2, 8, 64\] float32"):
        compiled(x[:1])
    with pytest.raises(QuartetError, match="float32"):
        compiled(x.double())


# ---------------------------------------------------------------------------------------------
# The artifact: save, load, run without MLIR


@pytest.mark.parametrize("form", ["model.qrt", "model_folder"])
def test_save_and_load_round_trip(zoo, tmp_path, form):
    model, compiled, _ = zoo("mlp")
    path = compiled.save(tmp_path / form)
    assert path.exists() and (path.is_file() == form.endswith(".qrt"))
    program = load(path)
    try:
        assert program.manifest.backend == "cpu" and program.manifest.target == "cpu"
        (x,) = fresh_inputs("mlp", model, 5)
        np.testing.assert_array_equal(program(x.numpy()), compiled(x.numpy()))
        with torch.no_grad():
            assert relative_error(program(x), model(x)) <= TOLERANCE
    finally:
        program.close()


def test_control_flow_artifacts_round_trip(zoo, tmp_path):
    for name in ("lstm_loop", "cond_residual"):
        model, compiled, _ = zoo(name)
        program = load(compiled.save(tmp_path / f"{name}.qrt"))
        try:
            inputs = fresh_inputs(name, model, 6)
            with torch.no_grad():
                assert relative_error(program(*inputs), model(*inputs)) <= TOLERANCE, name
        finally:
            program.close()


RUN_WITHOUT_MLIR = textwrap.dedent("""
    import importlib.abc, sys

    class NoMLIR(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("mlir", "torch_mlir", "torch"):
                raise ImportError(f"{name} is not available here")
            return None

    sys.meta_path.insert(0, NoMLIR())
    try:
        import mlir
    except ImportError:
        pass
    else:
        raise SystemExit("import mlir should have failed")

    import numpy as np
    import quartet.runtime as runtime

    artifact, x_path, out_path = sys.argv[1:4]
    program = runtime.load(artifact)
    y = program(np.load(x_path))
    program.close()
    np.save(out_path, y)
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("mlir", "torch_mlir", "torch"))
    assert not loaded, loaded
    print("ran without mlir")
""")


def test_runtime_runs_a_saved_artifact_where_mlir_cannot_be_imported(zoo, tmp_path):
    model, compiled, _ = zoo("mlp")
    artifact = compiled.save(tmp_path / "mlp.qrt")
    (x,) = fresh_inputs("mlp", model, 7)
    np.save(tmp_path / "x.npy", x.numpy())
    script = tmp_path / "run.py"
    script.write_text(RUN_WITHOUT_MLIR)
    env = dict(os.environ)
    run = subprocess.run([sys.executable, str(script), str(artifact), str(tmp_path / "x.npy"),
                          str(tmp_path / "y.npy")], capture_output=True, text=True, timeout=120,
                         env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "ran without mlir" in run.stdout
    y = np.load(tmp_path / "y.npy")
    with torch.no_grad():
        assert relative_error(y, model(x)) <= TOLERANCE


# ---------------------------------------------------------------------------------------------
# roller-config on every tile of every zoo model, for every target


def _tiles(module) -> list[TileOp]:
    found = []

    def visit(op):
        if op.operation.name == "quartet.tile":
            found.append(op.operation.opview)
        return ir.WalkResult.ADVANCE

    module.operation.walk(visit)
    return found


@pytest.mark.parametrize("target", TARGETS)
def test_roller_config_configures_every_zoo_tile(zoo, target):
    hw = targets.get(target)
    for name in ZOO:
        _, compiled, _ = zoo(name)
        module = run_passes(compiled.result.linalg, "roller", target)   # outline, roller-config
        tiles = _tiles(module)
        assert tiles, name
        with module.context:
            for tile in tiles:
                where = f"{name}: {tile.root.operation.name}"
                assert tile.target == target and tile.block_tile is not None, where
                schedule = check_fits(tile, hw)
                assert schedule.threads == tile.threads and tuple(tile.grid) == schedule.grid
                info = loop_info(tile.root)
                prog = row_program(tile, info) if hw.kind != "cpu" else None
                if prog is not None and prog.reductions:
                    # roller-fuse made a row program (softmax, layer norm): the row policy
                    # (passes/roller/rows.py) keeps whole rows in a block, whole warps.
                    assert tile.block_tile[-1] == info.loop_ranges[-1], where
                    assert tile.threads % hw.warp_size == 0, where
                    continue
                if prog is not None:
                    # an element-wise chain: the flat layout (rows.flat_schedule) in whole
                    # warps, or the plain policy's tile where the flat one has no exact tile
                    assert tile.threads % hw.warp_size == 0, where
                    continue
                check_threads(info, hw, schedule)


# ---------------------------------------------------------------------------------------------
# Compile time


def test_mlp_compiles_in_seconds(zoo):
    """Import, passes, lowering and the artifact: well under 10 s on 2 cores (about 3 s warm)."""
    _, compiled, seconds = zoo("mlp")
    assert set(compiled.result.seconds) >= {"import", "passes", "lower"}
    model, inputs = models.build("mlp", seed=9)
    started = time.perf_counter()
    compile(model, inputs, target="cpu")
    assert time.perf_counter() - started < 10.0, compiled.result.seconds
