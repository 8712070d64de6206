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

import json
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from mlir import ir

from quartet.errors import QuartetError
from quartet.runtime import targets
from quartet.runtime.artifact import ArtifactWriter
from quartet.runtime.manifest import Launch

from .prepare import dtype_of, nbytes, shape_of


@dataclass(frozen=True)
class Argument:
    """A function argument of the lowered function: a program input, or a weight (``value``)."""

    name: str
    value: Any = None               # numpy array or torch tensor for a weight


def lower(module, target: str | None = None, chip: str | None = None, *,
          arguments: Sequence[Argument] | None = None, producer: dict | None = None,
          emit: str = "bin") -> ArtifactWriter:
    """The artifact of ``module`` (changed in place: its tiles are lowered) for ``target``."""
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
    writer = ArtifactWriter(chip_.target, producer=_producer_text(producer))
    if chip_.kind == "cpu":
        _lower_cpu(op, fn, arguments, writer)
    else:
        _lower_gpu(op, fn, chip_, arguments, writer, emit)
    return writer


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
            names.append(writer.add_input(arg.name, shape_of(t), dtype_of(t)))
        else:
            names.append(writer.add_weight(arg.name, arg.value))
    return names


def _lower_cpu(op, fn, arguments, writer: ArtifactWriter) -> None:
    from . import cpu

    results = list(fn.type.results)
    spec = cpu.cpu_kernel(op)
    names = _add_arguments(writer, arguments, list(fn.type.inputs))
    outs = [writer.add_output(f"out{i}", shape_of(t), dtype_of(t)) for i, t in enumerate(results)]
    writer.add_kernel("forward", spec.binary, spec.entry, spec.grid, spec.block,
                      args=names + outs, binary_format="so")
    writer.add_step(Launch("forward"))


def _lower_gpu(op, fn, chip, arguments, writer: ArtifactWriter, emit: str) -> None:
    from .host import lower_module_plans

    names = [a.name for a in arguments]
    _, plans = lower_module_plans(op, chip, emit, arg_names=names)
    plan = plans[_name(fn)]
    types = list(fn.type.inputs)
    _add_arguments(writer, arguments, types)
    for b in sorted((b for b in plan.buffers if b.kind == "output"), key=lambda b: b.index):
        writer.add_output(f"out{b.index}", b.shape, b.dtype, buffer=b.name)
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


def _producer_text(producer: dict | None) -> str:
    info = {"tool": "quartet"}
    info.update(producer or {})
    return json.dumps(info, sort_keys=True)

