"""``lower(module, target) -> ArtifactWriter``: the one stage after any pipeline.

The Python API (``quartet.compile``), ``quartet-compile`` and ``quartet-opt -o model.qrt`` all
finish a module of configured tiles here, so an IR file written at any stage of any pipeline can
be finished into a runnable artifact:

    GPU   tiles -> block programs -> kernels -> binaries (``build.py``), the host program in
          the manifest's vocabulary (``host.py``), buffers, weights, kernels, steps
    CPU   the whole function -> one shared object (``cpu.py``) launched once

The function lowered is the module's one public function. Its arguments are the program's
inputs unless ``arguments`` says otherwise: the PyTorch importer passes a model's weights as
arguments too, and hands their names and values here (an :class:`Argument` with a ``value`` is
a weight, stored in the artifact). The target comes from the call, else from the tiles'
``target`` attribute that Roller's passes wrote, else ``sm_90``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from mlir import ir

from quartet.errors import QuartetError
from quartet.runtime import targets
from quartet.runtime.artifact import ArtifactWriter, producer_text
from quartet.runtime.manifest import Copy, Launch

from .prepare import dtype_of, nbytes, shape_of


@dataclass(frozen=True)
class Argument:
    """A function argument of the lowered function: a program input, or a weight (``value``)."""

    name: str
    value: Any = None               # numpy array or torch tensor for a weight
    dtype: str | None = None        # the boundary type when it is not the IR's (uint8 for i8)


def lower(module, target: str | None = None, chip: str | None = None, *,
          arguments: Sequence[Argument] | None = None, producer: dict | None = None,
          emit: str = "bin", checks: dict | None = None,
          result_dtypes: Sequence[str] | None = None) -> ArtifactWriter:
    """The artifact of ``module`` (changed in place: its tiles are lowered) for ``target``.

    ``checks`` maps a result index to ``(message, location)``: that result is not an output
    but a 0-d ``i32`` flag the runtime reads after each call and reports when it is nonzero
    (the index bounds checks of ``frontend/bounds_checks.py``). ``result_dtypes`` (and an
    argument's ``dtype``) name the program's boundary types where the IR's differ: the
    importer computes uint8 as i8/i16 inside and keeps uint8 at the boundary."""
    op = module.operation if hasattr(module, "operation") else module
    target = target or module_target(op) or "sm_90"
    chip_ = targets.get(target, chip)
    fn = _the_function(op)
    types = list(fn.type.inputs)
    if arguments is None:
        arguments = [Argument(f"in{i}") for i in range(len(types))]
    if len(arguments) != len(types):
        raise QuartetError(f"'{_name(fn)}' takes {len(types)} arguments, {len(arguments)} "
                           f"described")
    writer = ArtifactWriter(chip_.target, producer=producer_text(producer))
    boundary = _Boundary(checks or {}, list(result_dtypes or []))
    if chip_.kind == "cpu":
        _lower_cpu(op, fn, arguments, writer, boundary)
    else:
        _lower_gpu(op, fn, chip_, arguments, writer, emit, boundary)
    return writer


@dataclass(frozen=True)
class _Boundary:
    """What the caller says about the function's results: check flags and boundary types."""

    checks: dict
    result_dtypes: list

    def dtype(self, index: int, ir_dtype: str) -> str:
        return self.result_dtypes[index] if index < len(self.result_dtypes) else ir_dtype


def cpu_opt_level() -> int:
    """LLVM's optimisation level for the CPU target: ``QUARTET_CPU_OPT_LEVEL`` (0-3), else 2.

    Level 0 compiles several times faster (the zoo tests use it to check numerics within CI's
    time); programs then run slower."""
    text = os.environ.get("QUARTET_CPU_OPT_LEVEL", "2")
    if text not in ("0", "1", "2", "3"):
        raise QuartetError(f"QUARTET_CPU_OPT_LEVEL must be 0, 1, 2 or 3, not {text!r}")
    return int(text)


def _add_check(writer: ArtifactWriter, buffer: str, check) -> str:
    """A 4-byte flag buffer read after each call (``check`` = (message, location))."""
    message, location = check
    writer.add_buffer(buffer, 4)
    writer.add_check(buffer, message, location, dtype="int32")
    return buffer


def module_target(op) -> str | None:
    """The target the tiles of ``op`` were configured for (Roller's ``target`` attribute)."""
    from quartet.dialects import collect

    found = {ir.StringAttr(t.attributes["target"]).value
             for t in collect(op, lambda o: o.name == "quartet.tile") if "target" in t.attributes}
    if len(found) > 1:
        raise QuartetError(f"the tiles are configured for several targets: "
                           f"{', '.join(sorted(found))}")
    return found.pop() if found else None


def _the_function(op):
    fns = [o.opview for o in op.regions[0].blocks[0].operations
           if o.operation.name == "func.func" and len(o.operation.regions[0].blocks) and
           not ("sym_visibility" in o.operation.attributes and
                ir.StringAttr(o.operation.attributes["sym_visibility"]).value == "private")]
    if len(fns) != 1:
        raise QuartetError(f"an artifact holds one program: expected one public function, "
                           f"found {len(fns)}")
    return fns[0]


def _name(fn) -> str:
    return ir.StringAttr(fn.operation.attributes["sym_name"]).value


def _add_arguments(writer: ArtifactWriter, arguments, types) -> list[str]:
    names = []
    for arg, t in zip(arguments, types):
        if arg.value is None:
            names.append(writer.add_input(arg.name, shape_of(t), arg.dtype or dtype_of(t)))
        else:
            names.append(writer.add_weight(arg.name, arg.value))
    return names


def _lower_cpu(op, fn, arguments, writer: ArtifactWriter, boundary: _Boundary) -> None:
    """One shared object; a value returned more than once is copied into its other outputs
    (``results.py``: the CPU lowering takes each result once)."""
    from . import cpu
    from .results import merge_repeated_results

    results = list(fn.type.results)
    kept = merge_repeated_results(fn)
    spec = cpu.cpu_kernel(op, opt_level=cpu_opt_level())
    names = _add_arguments(writer, arguments, list(fn.type.inputs))
    outs = [_add_check(writer, f"check{i}", boundary.checks[i]) if i in boundary.checks else
            writer.add_output(f"out{i}", shape_of(t), boundary.dtype(i, dtype_of(t)))
            for i, t in enumerate(results)]
    firsts = [kept.index(j) for j in range(len(set(kept)))]
    writer.add_kernel("forward", spec.binary, spec.entry, spec.grid, spec.block,
                      args=names + [outs[i] for i in firsts], binary_format="so")
    writer.add_step(Launch("forward"))
    for i, j in enumerate(kept):
        if firsts[j] != i:
            t = results[i]
            writer.add_step(Copy(outs[i], outs[firsts[j]], nbytes(shape_of(t), dtype_of(t))))


def _lower_gpu(op, fn, chip, arguments, writer: ArtifactWriter, emit: str,
               boundary: _Boundary) -> None:
    from .host import lower_module_plans

    names = [a.name for a in arguments]
    _, plans = lower_module_plans(op, chip, emit, arg_names=names)
    plan = plans[_name(fn)]
    types = list(fn.type.inputs)
    _add_arguments(writer, arguments, types)
    for b in sorted((b for b in plan.buffers if b.kind == "output"), key=lambda b: b.index):
        if b.index in boundary.checks:
            _add_check(writer, b.name, boundary.checks[b.index])
        else:
            writer.add_output(f"out{b.index}", b.shape, boundary.dtype(b.index, b.dtype),
                              buffer=b.name)
    for b in plan.buffers:
        if b.kind in ("input", "output") or b.name in plan.aliases:
            continue
        if b.kind == "weight":
            if b.data is None:
                raise QuartetError(f"weight constant '{b.name}' has no readable data (a "
                                   f"dense_resource blob): import with weights as arguments")
            writer.add_weight(b.name, _weight_array(b))
        else:
            writer.add_buffer(b.name, max(1, nbytes(b.shape, b.dtype)),
                              "scalar" if b.kind == "scalar" else "temp", zeroed=b.zeroed)
    for use in plan.kernels.values():
        k = use.kernel
        writer.add_kernel(use.name, k.binary, k.entry, k.grid, k.block,
                          shared_memory=k.shared_bytes, args=list(use.args),
                          cooperative=k.cooperative, persistent=use.persistent)
    writer.add_step(*plan.program)


def _weight_array(b) -> np.ndarray:
    if b.dtype == "bfloat16":
        import torch

        raw = np.frombuffer(b.data, dtype=np.uint16).reshape(b.shape)
        return torch.from_numpy(raw.copy()).view(torch.bfloat16)
    return np.frombuffer(b.data, dtype=np.dtype(b.dtype)).reshape(b.shape)



