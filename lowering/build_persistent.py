"""A ``quartet.uvirtual`` -> one persistent kernel (Rammer), compiled and sized for its chip.

For each vtask (in the uvirtual's order) the family the passes chose builds the tile's block
program, exactly as for a standalone kernel (``build.py``); the kernel's arguments are the
distinct tensors the tasks read and write (each once, whichever tasks share it), then the
synchronisation buffer. ``compose/persistent.py`` composes the bodies into the dispatcher of
the device program (``compose/vdevice.py``), which the checker has accepted first
(``check_or_raise``: a schedule it rejects is a compiler error, never a hang).

Sizing: the schedule placed its tasks on ``num_veus`` vEUs, ``blocks_per_unit`` per SM for the
resource envelope it estimated. The kernel is compiled for one block per vEU with PTX's
``.minnctapersm`` set to that many blocks per SM (ptxas keeps its registers within what they
allow), then its real record - threads, shared memory, registers read back from the cubin - is
run through the occupancy rule (``Chip.blocks_per_unit``). If the chip cannot hold every vEU at
once, the kernel is rebuilt on as many blocks as it can hold (each then runs several vEUs in
turn, which stays deadlock-free: ``vdevice.py``), with a warning. The KernelSpec is cooperative
and carries what the manifest states (``notes["persistent"]``).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

from quartet.errors import QuartetError, location_of
from quartet.runtime.targets import Chip

from . import binary, kernels
from .build import GEMM_FALLBACKS, _family, check_resources
from .compose.block_program import BlockProgram, Resources
from .compose.kernel import Part
from .compose.persistent import persistent, sync_words
from .compose.vdevice import DeviceProgram, Task, check_or_raise
from .kernel import KernelArg, KernelSpec
from .kernels import kernel_inputs
from .uvirtual import num_veus, sync_of, tasks_of


def task_program(tile, chip: Chip, name: str) -> BlockProgram:
    """The block program of a task's tile; a GEMM body that fails to build falls back to a SIMT
    family with a warning (as ``build.compile_tile`` does)."""
    family = _family(tile, chip)
    if family == "gemm":
        try:
            with kernels.gemm.without_tma():      # tasks take plain buffers (gemm.without_tma)
                return kernels.build_block_program(tile, chip, name, "gemm")
        except Exception as e:      # noqa: BLE001 - any failure of the claimed family
            reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            where = location_of(tile.operation)
            GEMM_FALLBACKS.append((where, reason))
            warnings.warn(f"{where}: the GEMM family claimed '{tile.root.operation.name}' but "
                          f"failed ({reason}); using a SIMT family", stacklevel=2)
            family = _family(tile, chip, allow_gemm=False)
    return kernels.build_block_program(tile, chip, name, family)


@dataclass
class Composition:
    """What a uvirtual's persistent kernel is made of: its tasks' block programs bound to the
    kernel's arguments, the device program, and where each argument comes from."""

    utasks: list
    programs: list[BlockProgram]
    parts: list[Part]
    program: DeviceProgram
    args: list[KernelArg]
    sources: list[tuple[int, str, int]]      # (task, role, position) of each argument


def compose(uv, chip: Chip, kname: str) -> Composition:
    """Build the block programs of ``uv``'s tasks and bind them to kernel arguments (each
    distinct tensor once); check the device program (a QuartetError naming the tasks)."""
    where = location_of(uv.operation)
    utasks = tasks_of(uv)
    if not utasks:
        raise QuartetError("a quartet.uvirtual without vtasks", where)
    veus = num_veus(uv)
    programs = [task_program(t.tile, chip, f"{kname}_t{i}") for i, t in enumerate(utasks)]
    values, args, sources, parts = [], [], [], []
    for i, (t, bp) in enumerate(zip(utasks, programs)):
        ins, outs = kernel_inputs(t.tile), list(t.tile.results)
        binding = []
        for a in bp.args:
            value = ins[a.index] if a.role == "input" else outs[a.index]
            k = next((j for j, v in enumerate(values) if v == value), None)
            if k is None:
                k = len(values)
                values.append(value)
                args.append(KernelArg(a.role, k, a.shape, a.dtype))
                sources.append((i, a.role, a.index))
            binding.append(k)
        parts.append(Part(bp, tuple(binding)))
    program = DeviceProgram(veus, tuple(
        Task(t.name, bp.resources.blocks, t.veu_begin, t.veu_count, t.step, t.deps)
        for t, bp in zip(utasks, programs)), sync_of(uv))
    check_or_raise(program, "this quartet.uvirtual", where)
    return Composition(utasks, programs, parts, program, args, sources)


def persistent_module(uv, chip: Chip, kname: str):
    """The uvirtual's persistent kernel as IR (bodies and the dispatcher), not compiled: what
    ``quartet-lower-gpu{stop_after=kernels}`` prints."""
    c = compose(uv, chip, kname)
    per_unit = max(1, math.ceil(c.program.num_veus / chip.num_units))
    return persistent(c.parts, c.program, c.args, kname,
                      min_blocks_per_unit=per_unit if chip.kind == "cuda" else None)


def compile_uvirtual(uv, chip: Chip, kname: str, emit: str = "bin") -> KernelSpec:
    """The persistent kernel of ``uv`` (a ``quartet.uvirtual`` of the private copy that
    ``build.compile_all`` compiles), as one cooperative KernelSpec."""
    where = location_of(uv.operation)
    c = compose(uv, chip, kname)
    utasks, programs, parts, program, args, sources = \
        c.utasks, c.programs, c.parts, c.program, c.args, c.sources
    veus = program.num_veus
    threads = max(bp.resources.threads for bp in programs)
    shared = max(bp.resources.shared_bytes for bp in programs)
    per_unit = max(1, math.ceil(veus / chip.num_units))
    spec, registers = _compile(parts, program, args, kname, veus, per_unit, chip, emit)
    fit = chip.blocks_per_unit(threads, shared, registers or 0) * chip.num_units \
        if chip.kind == "cuda" else veus
    physical = veus
    if fit < veus:
        if fit < 1:
            raise QuartetError(f"the persistent kernel of this quartet.uvirtual does not fit "
                               f"{chip.description} once ({threads} threads, {shared} bytes of "
                               f"shared memory, {registers} registers)", where)
        warnings.warn(f"{where}: {chip.description} keeps {fit} blocks of this persistent "
                      f"kernel resident, not {veus}: its vEUs run {math.ceil(veus / fit)} to a "
                      f"block", stacklevel=2)
        physical = fit
        per_unit = max(1, fit // chip.num_units)
        spec, registers = _compile(parts, program, args, kname, physical, per_unit, chip, emit)
    record = Resources(threads, shared, physical, registers)
    check_resources(record, chip)
    blocks_per_sm = chip.blocks_per_unit(threads, shared, registers or 0) \
        if chip.kind == "cuda" else per_unit
    spec.notes.update({
        "builder": "persistent",
        "resources": record,
        "device_program": program,
        "arg_sources": tuple(sources),
        "task_args": tuple(p.args for p in parts),
        "task_roles": tuple(tuple(a.role for a in p.program.args) for p in parts),
        "task_names": tuple(t.name for t in utasks),
        # blocks_per_sm: what the grid needs resident per SM; occupancy: what the chip holds
        "persistent": {"veus": veus, "blocks_per_sm": -(-physical // chip.num_units),
                       "sync_words": sync_words(program), "physical": physical,
                       "occupancy": blocks_per_sm},
    })
    return KernelSpec(spec.name, spec.entry, spec.target, spec.binary, spec.grid, spec.block,
                      spec.shared_bytes, spec.args, cooperative=True, notes=spec.notes)


def _compile(parts, program, args, kname, physical, per_unit, chip, emit):
    kmod = persistent(parts, program, args, kname, physical_blocks=physical,
                      min_blocks_per_unit=per_unit if chip.kind == "cuda" else None)
    specs = binary.compile_launch_module(kmod, chip, emit=emit)
    if len(specs) != 1:
        raise QuartetError(f"a persistent kernel compiled into {len(specs)} kernels")
    spec = specs[0]
    registers = binary.cubin_resources(spec.binary, spec.entry).get("registers") \
        if emit == "bin" else None
    return spec, registers
