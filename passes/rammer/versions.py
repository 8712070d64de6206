"""Kernel versions of a tile (Rammer's rKernel versions), from Roller's top-k schedules.

``roller-config{topk=K}`` keeps the K best schedules of a tile in its ``candidates`` attribute,
best first. Each is a kernel version with its own launch shape: virtual blocks, threads per
block, shared memory, an estimate of its registers, and the time Roller's micro model gives it
when it runs alone. Rammer chooses among them per operator (``wavefront.py``): the fastest one
alone, or one with fewer blocks or fewer resources that packs beside its neighbours on the vEUs
of one persistent kernel (the paper's "efficient" kernels, chosen there by time x blocks x
threads; here by the estimated finish time in the schedule being built).

The model's estimate includes one kernel launch, which a task of a persistent kernel does not
pay: :attr:`Version.seconds` is the estimate without it.

Roller may give a GEMM tile a reduction step longer than the CUDA-core GEMM body takes (64);
the body then builds its own default tile (few large blocks), a kernel no estimate describes.
Each such schedule gets a twin with a shorter step (:func:`_shorter_steps`), and a version the
family replaced by its default is kept only when no version is built as scheduled
(:func:`measured`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from mlir import ir

from quartet.dialects import TileOp
from quartet.errors import QuartetError
from quartet.runtime.targets import Chip
from quartet.passes.analysis import kernels as kernel_analysis
from quartet.passes.roller import config as roller_config
from quartet.passes.roller.policy import Schedule


@dataclass(frozen=True)
class Version:
    """One schedule of a tile seen as a kernel version."""

    index: int                  # position in the tile's candidates (0 = Roller's best)
    schedule: Schedule
    blocks: int
    threads: int
    shared_bytes: int
    registers: int              # the model's estimate, per thread
    seconds: float              # alone on the chip, no launch
    slots: int                  # blocks resident at once when it runs alone

    def block_seconds(self, in_flight: int) -> float:
        """Seconds one block takes when ``in_flight`` blocks of the version run at once: its
        time alone spread over the blocks it had in flight then, stretched when more are in
        flight now (they share the SMs' throughput)."""
        alone = self.seconds * self.slots / self.blocks
        return alone * max(1.0, in_flight / self.slots)


def _version(index: int, s: Schedule, chip: Chip, floor: float) -> Version:
    blocks = max(1, math.prod(s.grid))
    smem = s.smem_bytes * max(1, s.stages)
    per_unit = s.blocks_per_unit or chip.blocks_per_unit(s.threads, smem, s.regs_per_thread)
    slots = min(blocks, max(1, per_unit) * chip.num_units)
    seconds = max(s.estimate - chip.launch_seconds, floor)
    return Version(index, s, blocks, s.threads, smem, s.regs_per_thread, seconds, slots)


def roofline_seconds(tile: TileOp, chip: Chip) -> float:
    """The least time the tile's bytes take through DRAM: the estimate of a schedule the
    model does not time (row programs)."""
    from quartet.dialects import captures
    from quartet.lowering.prepare import dtype_of, nbytes, shape_of

    values = [v for v in captures(tile) if isinstance(v.type, ir.RankedTensorType)]
    values += list(tile.results)
    total = sum(nbytes(shape_of(v.type), dtype_of(v.type)) for v in values)
    return total / chip.dram_bandwidth


def versions_of(tile: TileOp, chip: Chip) -> list[Version]:
    """The tile's kernel versions, best alone first (its current schedule is the first one
    when it has no candidates, or when it was given by hand)."""
    attrs = tile.operation.attributes
    k = len(ir.ArrayAttr(attrs["candidates"])) if "candidates" in attrs else 1
    try:
        schedules = roller_config.configure(tile, chip, k)
    except QuartetError:
        schedules = []
    current = (tuple(tile.block_tile or ()), tuple(tile.thread_tile or ()), tile.tensor_core)
    if not any(s.key == current for s in schedules):
        try:
            schedules = [roller_config.check_fits(tile, chip)]
        except QuartetError:
            return []
    floor = roofline_seconds(tile, chip)
    schedules = schedules + _shorter_steps(tile, schedules, chip)
    return [_version(i, s, chip, floor) for i, s in enumerate(schedules)]


#: the longest reduction step the CUDA-core GEMM body takes (lowering/kernels/gemm_simt.py)
GEMM_STEP = 64


def _shorter_steps(tile: TileOp, schedules: list[Schedule], chip: Chip) -> list[Schedule]:
    """More versions of a GEMM tile: each of Roller's schedules whose reduction step (the
    product of the reduction loops' block tiles: a convolution's window loops are whole) is
    longer than the GEMM body takes, with its main reduction loop's step cut to the largest
    divisor that fits. The body refuses the longer step and builds its own default tile instead
    (few, large blocks: 13 for a 3x3 convolution of 64 channels at 28x28), which neither Roller's
    estimate nor Rammer's packing can see."""
    if tile.kernel != "gemm" or not chip.is_gpu:
        return []
    from quartet.passes.roller import policy

    try:
        model = policy.model_of(roller_config.loop_info(tile.root))
    except (ValueError, QuartetError):      # no model (policy.Unsupported): no variants
        return []
    main = policy.main_reduction(model)
    if main is None:
        return []
    out, seen = [], {s.key for s in schedules}
    for s in schedules:
        if s.tensor_core:
            continue
        other = math.prod(s.block_tile[r] for r in model.reduction if r != main)
        if other * s.block_tile[main] <= GEMM_STEP or other > GEMM_STEP:
            continue
        step = max(d for d in range(1, GEMM_STEP // other + 1) if model.ranges[main] % d == 0)
        block = list(s.block_tile)
        thread = list(s.thread_tile)
        block[main] = step
        thread[main] = math.gcd(thread[main], step)
        v = policy.derive(model, chip, tuple(block), tuple(thread), False,
                          policy=s.policy if s.policy in ("reuse", "plain") else "reuse")
        if v.key not in seen and policy.fits(chip, v):
            seen.add(v.key)
            out.append(v)
    return out


# ---------------------------------------------------------------------------------------------
# The launch shape the kernel family really builds

#: (chip, tile text with a version's schedule) -> (threads, blocks, shared bytes, whether the
#: family replaced the schedule by its own default), or None when the family cannot build it
_BUILT: dict[tuple[str, str], tuple[int, int, int, bool] | None] = {}


def measured(tile: TileOp, found: list[Version], chip: Chip) -> list[Version]:
    """``found`` with each version's threads, blocks and shared memory as the kernel family
    builds them (the family adjusts Roller's tiles: a fallback block tile shrinks to a divisor
    of its loop, a row program picks its vector width, ...); versions it cannot build are left
    out, and so are those the GEMM family replaced by its own default tile whenever another
    version is built as scheduled (a replaced version's estimate is of something else, and
    several replaced versions are one kernel). Each distinct tile and version is built once per
    process (identical branches, cells and layers share the result), in a private Context: a
    running pass may not run pass managers in its own."""
    if not chip.is_gpu or not found:
        return found
    template = _standalone(tile)
    out = []
    for v in found:
        clone = _tile_in(template)
        apply(clone, v, chip)
        text = str(template)
        key = (chip.name, text)
        if key not in _BUILT:
            _BUILT[key] = _build(text, chip)
        shape = _BUILT[key]
        if shape is not None:
            threads, blocks, shared, replaced = shape
            out.append((replaced, dataclasses.replace(v, threads=threads, blocks=blocks,
                                                      shared_bytes=shared,
                                                      slots=min(v.slots, blocks))))
    as_scheduled = [v for replaced, v in out if not replaced]
    return as_scheduled or [v for _, v in out]


def _standalone(tile: TileOp) -> ir.Module:
    """A module holding ``func @t(<the tile's tensor inputs>)`` returning a copy of the tile."""
    from mlir.dialects import func

    from quartet.dialects import remap
    from quartet.lowering.kernels import kernel_inputs

    inputs = kernel_inputs(tile)
    with tile.operation.context, ir.Location.unknown():
        module = ir.Module.create()
        with ir.InsertionPoint(module.body):
            fn = func.FuncOp("t", ([v.type for v in inputs], [r.type for r in tile.results]))
            entry = fn.add_entry_block()
        env = dict(zip(inputs, entry.arguments))
        with ir.InsertionPoint(entry):
            for v in tile.inputs:
                if v not in env:
                    owner = v.owner
                    if isinstance(owner, ir.Block):
                        raise QuartetError("a tile reads a block argument that is no input")
                    env[v] = owner.operation.clone().results[0]
            clone = tile.operation.clone()
            remap(clone, env)
            func.ReturnOp(list(clone.results))
    return module


def _tile_in(module: ir.Module) -> TileOp:
    fn = module.body.operations[0]
    for op in fn.regions[0].blocks[0].operations:
        if op.operation.name == "quartet.tile":
            return op.operation.opview
    raise QuartetError("no tile in the standalone module")


def _build(text: str, chip: Chip) -> tuple[int, int, int, bool] | None:
    from quartet.dialects import context as quartet_context
    from quartet.lowering.build_persistent import task_program
    from quartet.lowering.kernels import gemm

    replaced_before = len(gemm.SCHEDULE_OVERRIDES)
    try:
        with quartet_context(), ir.Location.unknown():
            module = ir.Module.parse(text)
            bp = task_program(_tile_in(module), chip, "measured")
            r = bp.resources
            replaced = len(gemm.SCHEDULE_OVERRIDES) > replaced_before
            return r.threads, r.blocks, r.shared_bytes, replaced
    except Exception:      # noqa: BLE001 - a version the family cannot build is no version
        return None
    finally:
        del gemm.SCHEDULE_OVERRIDES[replaced_before:]     # a trial, not the program's record


def apply(tile: TileOp, version: Version, chip: Chip) -> None:
    """Make ``version`` the tile's schedule (the candidates stay) and record its kernel
    family again (a version may change it)."""
    keep = tuple(k for k in ("target",) if k in tile.operation.attributes)
    roller_config.write_schedule(tile, [version.schedule], chip, keep=keep)
    kernel_analysis.record(tile, chip)
