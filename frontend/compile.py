"""``quartet.compile``: a PyTorch module to a compiled program, through one named pipeline.

The whole path in one screen (each stage a short function, as in Triton's staged driver):

    import_linalg   torch.nn.Module -> linalg on tensors (frontend/importer.py; weights are
                    function arguments, not constants)
    run_passes      the named pipeline (roller{target=...}: tiles configured by Roller)
                    through the same registry as quartet-opt (quartet.driver)
    lower           the one lowering stage (lowering/lower.py): GPU tiles -> block programs
                    -> kernels + the host program; CPU: one shared object; -> an artifact

The result is a :class:`CompiledModule`: call it like the original module (CUDA tensors for a
GPU target, CPU tensors or numpy arrays for ``target="cpu"``), ``.save(path)`` it, and load it
again elsewhere with ``quartet.runtime.load(path)``, which needs neither MLIR nor torch-mlir.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from quartet.errors import QuartetError
from quartet.frontend.compiled import CompiledModule, forward_parameters

STAGES = ("linalg", "quartet", "gpu", "llvm", "ptx")


@dataclass
class CompileResult:
    """What every stage produced, kept for ``--emit`` and for reports."""

    target: str
    pipeline: str
    quartet: str = ""
    seconds: dict = field(default_factory=dict)
    cached: bool = False        # taken from the compile cache (no linalg / quartet text then)
    imported: object = field(default=None, repr=False)   # the ImportedProgram

    @property
    def linalg(self) -> str:
        """The imported program's text without locations (printed when asked for: it costs a
        parse of the whole program)."""
        return self.imported.text() if self.imported is not None else ""


def pipeline_passes(pipeline: str, target: str) -> str:
    """The named pipeline for ``target`` as ``builtin.module(...)`` text (pipelines end with
    configured tiles; the lowering is the stage after them). ``pipeline`` is a name, or a name
    with options other than the target (``welder{verbose=true tuning=record.json}``)."""
    from quartet.driver import registry

    registry.load_all()
    name, options = registry.parse_element(pipeline)
    if name not in registry.PIPELINES:
        known = ", ".join(sorted(registry.PIPELINES)) or "none"
        raise QuartetError(f"unknown pipeline '{name}' (known: {known})")
    if "target" in options:
        raise QuartetError(f"pipeline '{pipeline}': the target is not a pipeline option here "
                           f"(give it as --target / target=)")
    unknown = sorted(set(options) - set(registry.PIPELINES[name].options))
    if unknown:
        known = ", ".join(sorted(set(registry.PIPELINES[name].options) - {"target"})) or "none"
        raise QuartetError(f"unknown option '{unknown[0]}' for pipeline '{name}' "
                           f"(options: {known})")
    extra = "".join(f" {k}={v}" for k, v in options.items())
    return f"builtin.module({name}{{target={target}{extra}}})"


def export_program(module, example_inputs):
    """``torch.export`` of the model (frontend/export.py): torch only, no torch-mlir."""
    from quartet.frontend import checks
    from quartet.frontend.export import export_model

    with checks.quiet_import():
        try:
            return export_model(module, tuple(example_inputs))
        except QuartetError as e:
            raise checks.explain_import_error(e) from e


def import_linalg(module, example_inputs, exported=None):
    """The model as linalg on tensors (``exported``: its :func:`export_program`, when the
    caller has it already)."""
    from quartet.frontend import checks

    if exported is None:
        exported = export_program(module, example_inputs)
    with checks.quiet_import():
        try:
            from quartet.frontend.importer import import_exported

            return import_exported(module, exported)
        except QuartetError as e:
            raise checks.explain_import_error(e) from e


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
                        target: str = "auto", stop_after: str | None = None,
                        producer: dict | None = None, imported=None,
                        cache: bool | None = None, progress: bool | None = None):
    """Compile; return ``(ArtifactWriter or None, CompileResult, text of stop_after stage)``.

    ``target="auto"``: where the example inputs are (frontend/target.py), printed once.
    ``imported``: the :func:`import_linalg` result of ``module`` when the caller has it already
    (compiling one model for several targets imports it once; the cache is not used then).
    ``cache``: the compile cache (``frontend/cache.py``) is used unless False or
    ``QUARTET_CACHE=0``; only whole artifacts are cached (not ``stop_after`` stages).
    ``progress``: the stage and kernels built on a terminal (``quartet/progress.py``; None:
    when stderr is a terminal and ``QUARTET_QUIET`` is unset)."""
    from quartet import progress as shown

    with shown.reporting(progress):
        return _compile_to_artifact(module, example_inputs, pipeline, target, stop_after,
                                    producer, imported, cache)


def _compile_to_artifact(module, example_inputs, pipeline, target, stop_after, producer,
                         imported, cache):
    from quartet import progress
    from quartet.frontend.target import resolve_target

    if stop_after is not None and stop_after not in STAGES:
        raise QuartetError(f"unknown stage '{stop_after}' (stages: {', '.join(STAGES)})")
    target = resolve_target(target, example_inputs)
    _check_target(target)
    result = CompileResult(target, pipeline)
    report = progress.current()
    t0 = time.perf_counter()
    store = None
    if imported is None:
        report.stage("exporting")
        exported = export_program(module, example_inputs)
        result.seconds["export"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        if stop_after is None:
            writer, store = _look_up(cache, exported, module, pipeline, target, producer)
            if writer is not None:
                result.cached = True
                result.seconds["cache"] = time.perf_counter() - t0
                return writer, result, None
        report.stage("importing")
        imported = import_linalg(module, example_inputs, exported)
    from quartet.frontend.checks import check_runs_eagerly

    check_runs_eagerly(module, example_inputs, imported.mlir_text)
    result.imported = imported
    result.seconds["import"] = time.perf_counter() - t0
    if stop_after == "linalg":
        return None, result, result.linalg

    t0 = time.perf_counter()
    report.stage("passes")
    mlir_module = run_passes(imported.mlir_text, pipeline, target)
    result.quartet = str(mlir_module)
    result.seconds["passes"] = time.perf_counter() - t0
    if stop_after == "quartet":
        return None, result, result.quartet

    t0 = time.perf_counter()
    report.stage("lowering")
    writer, text = _lower(mlir_module, imported, target, stop_after, producer)
    result.seconds["lower"] = time.perf_counter() - t0
    if store is not None and writer is not None:
        entries, key, values = store
        entries.store(key, writer, values)
    return writer, result, text


def _look_up(cache, exported, module, pipeline, target, producer):
    """(the cached artifact's writer or None, what storing the new one needs, or None when
    the cache is off)."""
    from quartet.frontend import cache as compile_cache
    from quartet.runtime import targets
    from quartet.runtime.artifact import producer_text

    entries = compile_cache.open_cache(cache)
    if entries is None:
        return None, None
    key = compile_cache.model_key(exported, module, pipeline, target, targets.get(target).name)
    values = compile_cache.model_values(module, exported)
    return entries.load(key, values, producer_text(producer)), (entries, key, values)


def _lower(mlir_module, imported, target, stop_after, producer):
    """The lowering stage (``quartet.lowering.lower``), or the text of an ``--emit`` stage."""
    from quartet.lowering import build, cpu, host
    from quartet.lowering.lower import lower
    from quartet.runtime.dtypes import mlir_name_to_dtype

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
    checks = {c.result: (c.message, c.location) for c in imported.checks}
    # The program's boundary types as PyTorch sees them: uint8 where the kernels see i8.
    results = [mlir_name_to_dtype(r.dtype) for r in imported.results]
    return lower(mlir_module, target, arguments=_arguments(imported), producer=producer,
                 checks=checks, result_dtypes=results), None


def _arguments(imported) -> list:
    """The imported function's arguments for the lowering: inputs, and weights with values."""
    from quartet.lowering.lower import Argument
    from quartet.runtime.dtypes import mlir_name_to_dtype

    return [Argument(a.name, None if a.is_input else _weight_value(a.value, a.dtype),
                     mlir_name_to_dtype(a.dtype)) for a in imported.arguments]


def _weight_value(value, mlir_dtype: str):
    """The importer keeps bf16 weights as their uint16 bits: hand them over as bfloat16, so the
    manifest records the weight's real type (quartet-run --check loads it into the model)."""
    if mlir_dtype != "bf16":
        return value
    import torch

    return torch.from_numpy(np.ascontiguousarray(value).reshape(np.shape(value))).view(torch.bfloat16)


def compile(module, example_inputs, pipeline: str = "roller", target: str = "auto", *,
            graph: bool | None = None, weights: str = "live", cache: bool | None = None,
            progress: bool | None = None) -> CompiledModule:
    """Compile ``module`` for calls like ``module(*example_inputs)``.

    ``pipeline`` names a pipeline of ``quartet-opt --list-passes`` (``roller``, ``welder``,
    ``rammer``, ``grinder``); ``target`` is ``auto`` (where the example inputs are: their GPU's
    architecture for CUDA tensors, else ``cpu``; printed), ``sm_90``, ``sm_80``, ``gfx942`` or ``cpu``. ``weights="live"`` follows
    the module's current weights at every call; ``"frozen"`` keeps those of compile time (new
    ones through ``load_state_dict``). ``graph``: CUDA graphs as in
    ``quartet.runtime.load`` (None: a graph for two or more launches without host control
    flow; True: always; False: never). ``cache=False`` bypasses the compile cache
    (``frontend/cache.py``; ``QUARTET_CACHE=0`` too); ``progress``: the stage and kernels built
    on a terminal (None: when stderr is one; False: silent).
    """
    from quartet.frontend.weights import check_mode

    check_mode(weights)
    if not isinstance(example_inputs, (tuple, list)):
        example_inputs = (example_inputs,)
    producer = {"model": f"{type(module).__module__}.{type(module).__qualname__}"}
    writer, result, _ = compile_to_artifact(module, example_inputs, pipeline=pipeline,
                                            target=target, producer=producer, cache=cache,
                                            progress=progress)
    return CompiledModule(writer, result, graph=graph, name=producer["model"], model=module,
                          weights=weights,
                          parameters=forward_parameters(module, len(example_inputs)))
