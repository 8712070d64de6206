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

import json
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


def _lowering_names() -> tuple[str, ...]:
    return ("quartet-lower-gpu", "quartet-lower-cpu")


def pipeline_passes(pipeline: str, target: str) -> str:
    """The pipeline's elements before its lowering, as ``builtin.module(...)`` text."""
    from quartet.passes import registry

    registry.load_all()
    if pipeline not in registry.PIPELINES:
        known = ", ".join(sorted(registry.PIPELINES)) or "none"
        raise QuartetError(f"unknown pipeline '{pipeline}' (known: {known})")
    elements = registry.PIPELINES[pipeline].expand({"target": target})
    kept = [e for e in elements if registry.parse_element(e)[0] not in _lowering_names()]
    return "builtin.module(" + ",".join(kept) + ")"


def import_linalg(module, example_inputs):
    from quartet.frontend.importer import import_module

    return import_module(module, tuple(example_inputs))


def run_passes(text: str, pipeline: str, target: str):
    """Parse the imported IR into a Quartet context and run the pipeline up to its lowering."""
    import quartet.dialects as qd
    from quartet.passes.driver import parse, run_pipeline

    ctx = qd.context()
    module = parse(text, ctx, "<model>")
    run_pipeline(module, pipeline_passes(pipeline, target), source_name="<model>")
    return module


def _check_target(target: str) -> None:
    from quartet.passes import hardware

    hardware.get(target)   # QuartetError naming the known targets


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
    if target == "cpu":
        writer, text = _lower_cpu(mlir_module, imported, stop_after, producer)
    else:
        writer, text = _lower_gpu(mlir_module, imported, target, stop_after, producer)
    result.seconds["lower"] = time.perf_counter() - t0
    return writer, result, text


def _lower_cpu(mlir_module, imported, stop_after, producer):
    from quartet.lowering import cpu
    from quartet.runtime.artifact import ArtifactWriter
    from quartet.runtime.manifest import Launch

    if stop_after in ("gpu", "ptx"):
        raise QuartetError(f"--emit {stop_after} needs a GPU target, not cpu")
    if stop_after == "llvm":
        cpu.lower_to_llvm(mlir_module.operation)
        return None, str(mlir_module)
    spec = cpu.cpu_kernel(mlir_module)
    writer = ArtifactWriter("cpu", producer=_producer_text(producer))
    names = _add_arguments(writer, imported)
    outs = [writer.add_output(f"out{i}", r.shape, _numpy_dtype(r.dtype))
            for i, r in enumerate(imported.results)]
    writer.add_kernel("forward", spec.binary, spec.entry, spec.grid, spec.block,
                      args=names + outs, binary_format="so")
    writer.add_step(Launch("forward"))
    return writer, None


def _lower_gpu(mlir_module, imported, target, stop_after, producer):
    from quartet.lowering import gpu

    if stop_after == "llvm":
        raise QuartetError("--emit llvm is the CPU path's LLVM dialect; for a GPU target use "
                           "--emit gpu or --emit ptx")
    if stop_after == "gpu":
        gpu.build_kernels_into(mlir_module, target)
        return None, str(mlir_module)
    if stop_after == "ptx":
        _, plans = gpu.lower_module_plans(mlir_module, target, emit="ptx")
        return None, "\n".join(launch.kernel.binary.decode() for plan in plans.values()
                               for launch in plan.launches)
    _, plans = gpu.lower_module_plans(mlir_module, target, entry=imported.func_name)
    if len(plans) != 1:
        raise QuartetError(f"expected one function with tiles, found {len(plans)}")
    plan = next(iter(plans.values()))
    return _write_plan(plan, imported, target, producer), None


def _write_plan(plan, imported, target, producer):
    """The artifact of a host plan: arguments (inputs, then the weights the importer passes as
    arguments), outputs, constants, temporaries, kernels and the host program's steps."""
    from quartet.lowering import host_plan as hp
    from quartet.runtime.artifact import ArtifactWriter
    from quartet.runtime import manifest as mf

    writer = ArtifactWriter(target, producer=_producer_text(producer))
    arg_names = _add_arguments(writer, imported)
    storage: dict[str, str] = {}
    # Outputs in the function's result order: the runtime returns them in manifest order, and
    # the plan lists buffers in the order kernels write them (var_mean computes its mean first).
    outputs = sorted((b for b in plan.buffers if b.kind == "output"), key=lambda b: b.index)
    if [b.index for b in outputs] != list(range(len(imported.results))):
        raise QuartetError(f"the host plan has outputs {[b.index for b in outputs]} for "
                           f"{len(imported.results)} results")
    for b in outputs:      # the imported result's type: uint8 where the kernels see i8
        storage[b.name] = writer.add_output(f"out{b.index}", b.shape,
                                            _numpy_dtype(imported.results[b.index].dtype))
    for b in plan.buffers:
        if b.kind == "input":
            storage[b.name] = arg_names[b.index]
        elif b.kind == "output":
            continue
        elif b.kind == "weight":
            if b.data is None:
                raise QuartetError(f"weight constant '{b.name}' has no readable data (a "
                                   f"dense_resource blob): import with weights as arguments")
            storage[b.name] = writer.add_weight(
                b.name, np.frombuffer(b.data, dtype=_np(b.dtype)).reshape(b.shape))
        elif b.name not in plan.aliases:
            storage[b.name] = writer.add_buffer(b.name, max(1, _nbytes(b.shape, b.dtype)))

    def place(name: str) -> tuple[str, int]:
        base, offset = plan.storage(name)
        return storage[base], offset

    def arg(name: str):
        base, offset = place(name)
        return mf.BufferArg(base, offset)

    kernels = iter(range(len(plan.launches)))

    def steps(tree) -> list:
        out = []
        for s in tree:
            if isinstance(s, hp.Launch):
                k = s.kernel
                kname = f"k{next(kernels)}_{k.name}"
                writer.add_kernel(kname, k.binary, k.entry, k.grid, k.block,
                                  shared_memory=k.shared_bytes,
                                  args=[arg(n) for n in s.buffers], cooperative=k.cooperative)
                out.append(mf.Launch(kname))
            elif isinstance(s, hp.Copy):
                dst, dst_off = place(s.dst)
                src, src_off = place(s.src)
                size = s.size
                if size is None:
                    b = plan.buffer(s.dst)
                    size = _nbytes(b.shape, b.dtype)
                out.append(mf.Copy(dst, src, size, dst_off + s.dst_offset,
                                   src_off + s.src_offset))
            elif isinstance(s, hp.While):
                out.append(mf.While(steps(s.cond), _predicate(s.predicate, storage),
                                    steps(s.body)))
            elif isinstance(s, hp.If):
                out.append(mf.If(_predicate(s.predicate, storage), steps(s.then),
                                 steps(s.else_)))
            else:
                raise QuartetError(f"unknown host-plan step {s!r}")
        return out

    writer.add_step(*steps(plan.program))
    return writer


def _predicate(p, storage):
    from quartet.runtime import manifest as mf

    return mf.Predicate(storage[p.buffer], p.dtype, p.offset)


def _add_arguments(writer, imported) -> list[str]:
    """One buffer per function argument: inputs in call order, weights with their values."""
    names = []
    for arg in imported.arguments:
        if arg.is_input:
            names.append(writer.add_input(arg.name, arg.shape, _numpy_dtype(arg.dtype)))
        else:
            names.append(writer.add_weight(arg.name, _weight_value(arg.value, arg.dtype)))
    return names


def _weight_value(value, mlir_dtype: str):
    """The importer keeps bf16 weights as their uint16 bits: hand them over as bfloat16, so the
    manifest records the weight's real type (quartet-run --check loads it into the model)."""
    if mlir_dtype != "bf16":
        return value
    import torch

    return torch.from_numpy(np.ascontiguousarray(value)).view(torch.bfloat16)


_DTYPES = {"f32": "float32", "f16": "float16", "bf16": "bfloat16", "f64": "float64",
           "i64": "int64", "i32": "int32", "i16": "int16", "i8": "int8", "i1": "bool",
           "ui8": "uint8"}


def _numpy_dtype(mlir_dtype: str) -> str:
    if mlir_dtype in _DTYPES:
        return _DTYPES[mlir_dtype]
    raise QuartetError(f"element type {mlir_dtype} is not supported at the program boundary")


def _np(dtype: str):
    return np.uint16 if dtype == "bfloat16" else np.dtype(dtype)


def _nbytes(shape, dtype: str) -> int:
    n = int(np.prod(shape)) if len(shape) else 1
    return n * (2 if dtype == "bfloat16" else np.dtype(dtype).itemsize)


def _producer_text(producer: dict | None) -> str:
    info = {"tool": "quartet"}
    info.update(producer or {})
    return json.dumps(info, sort_keys=True)


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
