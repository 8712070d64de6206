"""A Grinder uvirtual -> one persistent kernel with device-side loops, compiled for its chip.

The device program (``device_program.py``) gives the tasks, the slots (the kernel's pointer
arguments) and the step tree. Each task's tile becomes its block program as for Rammer
(``build_persistent.task_program``: the family the passes chose, a failing GEMM body falling
back to a SIMT family); the bodies are bound to the slots of their tile's inputs and results,
and ``compose/device_loops.py`` emits the step tree around Rammer's dispatch. Sizing and the
manifest record follow ``build_persistent.compile_uvirtual``: compiled for one block per vEU
(``.minnctapersm`` at the schedule's blocks per SM), rebuilt on fewer blocks with a warning
when the compiled kernel's occupancy cannot keep every vEU resident; cooperative launch.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

from quartet.errors import QuartetError, location_of
from quartet.runtime.targets import Chip

from . import binary
from . import device_program as dp
from .build import check_resources
from .build_persistent import task_program
from .compose.block_program import BlockProgram, Resources
from .compose.device_loops import SYNC_WORDS, BOUND, device_program_kernel
from .compose.kernel import Part
from .compose.vdevice import DeviceProgram, Task, check_or_raise
from .kernel import KernelArg, KernelSpec
from .uvirtual import num_veus


@dataclass
class DeviceComposition:
    plan: dp.Plan
    programs: list[BlockProgram]
    parts: list[Part]
    program: DeviceProgram
    args: list[KernelArg]


def compose(uv, chip: Chip, kname: str) -> DeviceComposition:
    where = location_of(uv.operation)
    plan = dp.plan(uv)
    if not plan.tasks:
        raise QuartetError("a device program without tasks", where)
    programs = [task_program(t.tile, chip, f"{kname}_t{i}") for i, t in enumerate(plan.tasks)]
    args = [KernelArg("output" if k in plan.written else "input", k, s.shape, s.dtype)
            for k, s in enumerate(plan.slots)]
    parts = []
    for t, bp in zip(plan.tasks, programs):
        binding = tuple(t.inputs[a.index] if a.role == "input" else t.outputs[a.index]
                        for a in bp.args)
        parts.append(Part(bp, binding))
    program = DeviceProgram(num_veus(uv), tuple(
        Task(t.name, bp.resources.blocks, t.veu_begin, t.veu_count, t.step, t.deps)
        for t, bp in zip(plan.tasks, programs)), "barrier")
    check_or_raise(program, "this device program", where)
    return DeviceComposition(plan, programs, parts, program, args)


def device_program_module(uv, chip: Chip, kname: str):
    """The kernel as IR, not compiled (``quartet-lower-gpu{stop_after=kernels}``)."""
    c = compose(uv, chip, kname)
    per_unit = max(1, math.ceil(c.program.num_veus / chip.num_units))
    return device_program_kernel(c.parts, c.program, c.plan.steps, c.args, kname,
                                 min_blocks_per_unit=per_unit if chip.kind == "cuda" else None)


def compile_device_program(uv, chip: Chip, kname: str, emit: str = "bin") -> KernelSpec:
    """The cooperative kernel of the Grinder uvirtual ``uv`` (of ``build.compile_all``'s copy)."""
    where = location_of(uv.operation)
    if chip.kind != "cuda":
        raise QuartetError(f"device-side loops need grid barriers, which Quartet emits for "
                           f"NVIDIA GPUs only, not {chip.description} (grinder{{control=host}} "
                           f"keeps control flow on the host)", where)
    c = compose(uv, chip, kname)
    veus = c.program.num_veus
    threads = max(bp.resources.threads for bp in c.programs)
    shared = max(bp.resources.shared_bytes for bp in c.programs)
    per_unit = max(1, math.ceil(veus / chip.num_units))
    spec, registers = _compile(c, kname, veus, per_unit, chip, emit)
    fit = chip.blocks_per_unit(threads, shared, registers or 0) * chip.num_units
    physical = veus
    if fit < veus:
        if fit < 1:
            raise QuartetError(f"the device program of this quartet.uvirtual does not fit "
                               f"{chip.description} once ({threads} threads, {shared} bytes "
                               f"of shared memory, {registers} registers)", where)
        warnings.warn(f"{where}: {chip.description} keeps {fit} blocks of this device program "
                      f"resident, not {veus}: its vEUs run {math.ceil(veus / fit)} to a block",
                      stacklevel=2)
        physical = fit
        per_unit = max(1, fit // chip.num_units)
        spec, registers = _compile(c, kname, physical, per_unit, chip, emit)
    record = Resources(threads, shared, physical, registers)
    check_resources(record, chip)
    occupancy = chip.blocks_per_unit(threads, shared, registers or 0)
    spec.notes.update({
        "builder": "device_program",
        "resources": record,
        "device_program": c.program,
        "plan_steps": c.plan.steps,
        "slots": tuple(c.plan.slots),
        "task_args": tuple(p.args for p in c.parts),
        "task_roles": tuple(tuple(a.role for a in p.program.args) for p in c.parts),
        "task_names": tuple(t.name for t in c.plan.tasks),
        "persistent": {"veus": veus, "blocks_per_sm": -(-physical // chip.num_units),
                       "sync_words": SYNC_WORDS, "physical": physical,
                       "occupancy": occupancy, "bound_word": BOUND,
                       "loops": c.plan.loops},
    })
    return KernelSpec(spec.name, spec.entry, spec.target, spec.binary, spec.grid, spec.block,
                      spec.shared_bytes, spec.args, cooperative=True, notes=spec.notes)


def _compile(c: DeviceComposition, kname, physical, per_unit, chip, emit):
    kmod = device_program_kernel(c.parts, c.program, c.plan.steps, c.args, kname,
                                 physical_blocks=physical,
                                 min_blocks_per_unit=per_unit)
    specs = binary.compile_launch_module(kmod, chip, emit=emit)
    if len(specs) != 1:
        raise QuartetError(f"a device program compiled into {len(specs)} kernels")
    spec = specs[0]
    registers = binary.cubin_resources(spec.binary, spec.entry).get("registers") \
        if emit == "bin" else None
    return spec, registers
