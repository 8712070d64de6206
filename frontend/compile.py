"""``quartet.compile``: a PyTorch module to a compiled program, through one named pipeline.

The whole path in one screen (each stage a short function, as in Triton's staged driver):

    import_linalg   torch.nn.Module -> linalg on tensors (frontend/importer.py; weights are
                    function arguments, not constants)
    run_passes      the pipeline's passes up to its lowering (quartet-outline-tiles,
                    roller-config{target=...}) through the same registry as quartet-opt
    lower           GPU: every tile -> a kernel binary + the host plan (lowering/gpu.py);
                    CPU: the whole function -> one shared object (lowering/cpu.py)
    write_artifact  binaries + weights + manifest (runtime/artifact.py)

The result is a :class:`CompiledModule`: call it like the original module (CUDA tensors for a
GPU target, CPU tensors or numpy arrays for ``target="cpu"``), ``.save(path)`` it, and load it
again elsewhere with ``quartet.runtime.load(path)``, which needs neither MLIR nor torch-mlir.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from quartet.errors import QuartetError

STAGES = ("linalg", "quartet", "gpu", "llvm", "ptx")


@dataclass
class CompileResult:
    """What every stage produced, kept for ``--emit`` and for reports."""

    target: str
    pipeline: str
    linalg: str = ""
    quartet: str = ""
    seconds: dict = field(default_factory=dict)


def pipeline_passes(pipeline: str, target: str) -> str:
    """The named pipeline for ``target`` as ``builtin.module(...)`` text (pipelines end with
    configured tiles; the lowering is the stage after them)."""
    from quartet.driver import registry

    registry.load_all()
    name, options = registry.parse_element(pipeline)   # "rammer{max_per_unit=3}" too
    if name not in registry.PIPELINES:
        known = ", ".join(sorted(registry.PIPELINES)) or "none"
        raise QuartetError(f"unknown pipeline '{name}' (known: {known})")
    options = {"target": target, **{k: v for k, v in options.items() if k != "target"}}
    return f"builtin.module({name}{{{' '.join(f'{k}={v}' for k, v in options.items())}}})"


def import_linalg(module, example_inputs):
    from quartet.frontend.importer import import_module

    return import_module(module, tuple(example_inputs))


def run_passes(text: str, pipeline: str, target: str):
    """Parse the imported IR into a Quartet context and run the pipeline."""
    import quartet.dialects as qd
    from quartet.driver.run import parse, run_pipeline

    ctx = qd.context()
    module = parse(text, ctx, "<model>")
    run_pipeline(module, pipeline_passes(pipeline, target), source_name="<model>")
    return module


def _check_target(target: str) -> None:
    from quartet.runtime import targets

    targets.get(target)   # QuartetError naming the known targets


def compile_to_artifact(module, example_inputs, *, pipeline: str = "roller",
                        target: str = "sm_90", stop_after: str | None = None,
                        producer: dict | None = None):
    """Compile; return ``(ArtifactWriter or None, CompileResult, text of stop_after stage)``."""
    if stop_after is not None and stop_after not in STAGES:
        raise QuartetError(f"unknown stage '{stop_after}' (stages: {', '.join(STAGES)})")
    _check_target(target)
    result = CompileResult(target, pipeline)
    t0 = time.perf_counter()
    imported = import_linalg(module, example_inputs)
    result.linalg = imported.text()
    result.seconds["import"] = time.perf_counter() - t0
    if stop_after == "linalg":
        return None, result, result.linalg

    t0 = time.perf_counter()
    mlir_module = run_passes(imported.mlir_text, pipeline, target)
    result.quartet = str(mlir_module)
    result.seconds["passes"] = time.perf_counter() - t0
    if stop_after == "quartet":
        return None, result, result.quartet

    t0 = time.perf_counter()
    writer, text = _lower(mlir_module, imported, target, stop_after, producer)
    result.seconds["lower"] = time.perf_counter() - t0
    return writer, result, text


def _lower(mlir_module, imported, target, stop_after, producer):
    """The lowering stage (``quartet.lowering.lower``), or the text of an ``--emit`` stage."""
    from quartet.lowering import build, cpu, host
    from quartet.lowering.lower import lower

    if target == "cpu":
        if stop_after in ("gpu", "ptx"):
            raise QuartetError(f"--emit {stop_after} needs a GPU target, not cpu")
        if stop_after == "llvm":
            cpu.lower_to_llvm(mlir_module.operation)
            return None, str(mlir_module)
    elif stop_after == "llvm":
        raise QuartetError("--emit llvm is the CPU path's LLVM dialect; for a GPU target use "
                           "--emit gpu or --emit ptx")
    elif stop_after == "gpu":
        build.build_kernels_into(mlir_module, target)
        return None, str(mlir_module)
    elif stop_after == "ptx":
        _, plans = host.lower_module_plans(mlir_module, target, emit="ptx")
        return None, "\n".join(use.kernel.binary.decode() for plan in plans.values()
                               for use in plan.launches)
    return lower(mlir_module, target, arguments=_arguments(imported), producer=producer), None


def _arguments(imported) -> list:
    """The imported function's arguments for the lowering: inputs, and weights with values."""
    from quartet.lowering.lower import Argument

    return [Argument(a.name, None if a.is_input else _weight_value(a.value, a.dtype))
            for a in imported.arguments]


def _weight_value(value, mlir_dtype: str):
    """The importer keeps bf16 weights as their uint16 bits: hand them over as bfloat16, so the
    manifest records the weight's real type (quartet-run --check loads it into the model)."""
    if mlir_dtype != "bf16":
        return value
    import torch

    return torch.from_numpy(np.ascontiguousarray(value)).view(torch.bfloat16)


class CompiledModule:
    """A compiled program: callable like the original module; ``.save(path)``.

    The artifact is written to a private folder once and run through ``quartet.runtime``
    (loaded on the first call), exactly as a saved and reloaded artifact would be.
    """

    def __init__(self, writer, result: CompileResult, *, graph: bool = False,
                 name: str | None = None):
        self.result = result
        self.name = name   # the model, named in call-time errors instead of the private folder
        self._writer = writer
        self._folder = Path(tempfile.mkdtemp(prefix="quartet-"))
        self._path = writer.save(self._folder / "program")
        self._program = None
        self._graph = graph

    @property
    def target(self) -> str:
        return self.result.target

    @property
    def manifest(self):
        """The artifact's manifest (read from the writer: no runtime, no device needed)."""
        return self._writer.manifest()

    @property
    def program(self):
        if self._program is None:
            from quartet.runtime import load

            self._program = load(self._path, graph=self._graph)
        return self._program

    def __call__(self, *inputs, **kwargs):
        try:
            return self.program(*inputs, **kwargs)
        except QuartetError as e:
            if self.name and e.location == str(self._path):
                raise QuartetError(e.message, f"compiled {self.name}") from None
            raise

    def save(self, path) -> Path:
        """Save the artifact: a folder, or one file when ``path`` ends in ``.qrt``."""
        return self._writer.save(path)

    def __del__(self):
        try:
            if self._program is not None:
                self._program.close()
            shutil.rmtree(self._folder, ignore_errors=True)
        except Exception:
            pass


def compile(module, example_inputs, pipeline: str = "roller", target: str = "sm_90", *,
            graph: bool = False) -> CompiledModule:
    """Compile ``module`` for calls like ``module(*example_inputs)``.

    ``pipeline`` names a pipeline of ``quartet-opt --list-passes`` (``roller``); ``target`` is
    ``sm_90``, ``sm_80``, ``gfx942`` or ``cpu``. ``graph=True`` replays the launch sequence as a
    CUDA graph (GPU targets without host control flow).
    """
    if not isinstance(example_inputs, (tuple, list)):
        example_inputs = (example_inputs,)
    producer = {"model": f"{type(module).__module__}.{type(module).__qualname__}"}
    writer, result, _ = compile_to_artifact(module, example_inputs, pipeline=pipeline,
                                            target=target, producer=producer)
    return CompiledModule(writer, result, graph=graph, name=producer["model"])
