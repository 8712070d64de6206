"""Kernel building: configured tiles -> block programs -> kernels -> binaries.

For each tile: the kernel family that takes it (``kernels.family_of``: the passes' recorded
verdict) builds its block program (``kernels.build_block_program``), a thin standalone kernel
calls the body with ``blockIdx.x`` (``compose.kernel.standalone``), the body is instantiated in
the kernel (``compose.kernel.inline_block_programs``) and ``binary.py`` compiles it. The
compiled kernel's resource record - threads, dynamic shared memory, registers read back from the
cubin, virtual blocks - is checked against the chip before anything can be launched
(:func:`check_resources`): a record that does not fit is a :class:`QuartetError` naming the tile
and the limit.

A tile the GEMM family claims but then fails to build or compile for is built by the SIMT
families instead, with a warning, and recorded in :data:`GEMM_FALLBACKS` (never silent).
``QUARTET_GEMM=0`` in the environment leaves the GEMM family out (every tile SIMT: to tell a GEMM
kernel's fault from the rest).
"""

from __future__ import annotations

import os
import warnings

from mlir import ir
from mlir.dialects import arith, gpu

from quartet.errors import QuartetError, location_of
from quartet.runtime import targets
from quartet.runtime.targets import Chip

from . import binary, kernels
from .compose.block_program import BlockProgram, Resources
from .compose.kernel import inline_block_programs, standalone
from .kernel import KernelSpec
from .prepare import prepare, units_of

#: (tile location, reason) of every GEMM kernel that fell back to SIMT in this process
GEMM_FALLBACKS: list[tuple[str | None, str]] = []


def _family(tile, chip: Chip, allow_gemm: bool = True) -> str:
    if os.environ.get("QUARTET_GEMM", "1") == "0":
        allow_gemm = False
    family = kernels.family_of(tile, chip, allow_gemm=allow_gemm)
    if family == "gemm" and not allow_gemm:
        family = kernels.family_of(tile, chip, allow_gemm=False)
    return family


def block_program(tile, chip: Chip, name: str, allow_gemm: bool = True) -> BlockProgram:
    """The block program of ``tile`` (``name``), by the family that takes it."""
    return kernels.build_block_program(tile, chip, name, _family(tile, chip, allow_gemm))


def compile_tile(tile, chip, kname: str, emit: str = "bin") -> list[KernelSpec]:
    """Build and compile the standalone kernel of one tile: its KernelSpecs (one)."""
    chip = targets.get(chip)
    family = _family(tile, chip)
    if family == "gemm":
        try:
            return _compile(tile, chip, kname, emit, "gemm")
        except Exception as e:      # noqa: BLE001 - any failure of the claimed family
            reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            where = location_of(tile.operation)
            GEMM_FALLBACKS.append((where, reason))
            warnings.warn(f"{where}: the GEMM family claimed '{tile.root.operation.name}' but "
                          f"failed ({reason}); using a SIMT family", stacklevel=2)
            family = _family(tile, chip, allow_gemm=False)
    return _compile(tile, chip, kname, emit, family)


def _compile(tile, chip: Chip, kname: str, emit: str, family: str) -> list[KernelSpec]:
    bp = kernels.build_block_program(tile, chip, f"{kname}_body", family)
    kmod = standalone(bp, kname)
    inline_block_programs(kmod)
    specs = binary.compile_launch_module(kmod, chip, emit=emit)
    for s in specs:
        s.notes["builder"] = bp.family
        s.notes["resources"] = record_of(bp, s)
        check_resources(s.notes["resources"], chip, tile)
    return specs


def record_of(bp: BlockProgram, spec: KernelSpec) -> Resources:
    """The block program's resource record with the registers of its compiled kernel."""
    res = binary.cubin_resources(spec.binary, spec.entry) if spec.target != "cpu" else {}
    return bp.resources.with_registers(res.get("registers"))


def check_resources(r: Resources, chip: Chip, tile=None) -> None:
    """Refuse a resource record that ``chip`` cannot run, naming the tile and the limit."""
    where = location_of(tile.operation) if tile is not None else None
    what = f"'{tile.root.operation.name}'" if tile is not None else "a kernel"

    def refuse(text):
        raise QuartetError(f"the kernel of {what} does not fit {chip.description}: {text}",
                           where)

    if r.threads > chip.max_threads_per_block:
        refuse(f"{r.threads} threads per block, at most {chip.max_threads_per_block}")
    if r.shared_bytes > chip.smem_per_block:
        refuse(f"{r.shared_bytes} bytes of shared memory per block, at most "
               f"{chip.smem_per_block}")
    if r.registers is not None:
        if r.registers > chip.max_regs_per_thread:
            refuse(f"{r.registers} registers per thread, at most {chip.max_regs_per_thread}")
        if r.registers * r.threads > chip.regs_per_block:
            refuse(f"{r.registers} registers x {r.threads} threads per block, at most "
                   f"{chip.regs_per_block}")
    if r.blocks > 2**31 - 1:
        refuse(f"{r.blocks} blocks, at most {2**31 - 1}")


def compile_all(op: ir.Operation, chip: Chip, emit: str = "bin") -> list[list[KernelSpec]]:
    """KernelSpecs of every tile and every uvirtual of ``op`` (one list per unit, in program
    order: :func:`~quartet.lowering.prepare.units_of`). Tiles with the same computation,
    schedule and chip share one build and one list of specs; distinct builds run in this
    process and in worker processes, each in a private Context (``jobs.py``; nested pass
    managers cannot run in the Context of a running pass, and quartet-lower-gpu is such a
    pass). A uvirtual (Rammer's persistent kernel, Grinder's device program) is built here, in
    a private Context too, after the tiles. An error names the tile's op and place."""
    from quartet import progress

    from . import jobs

    chip = targets.get(chip)
    fns = [fn for fn in op.regions[0].blocks[0].operations if fn.operation.name == "func.func"]
    units = [unit for fn in fns for unit in units_of(fn)]
    tiles = [unit for unit in units if unit.operation.name == "quartet.tile"]
    virtual = len(units) - len(tiles)
    planned, job_of_tile = jobs.plan_jobs(tiles, chip, emit)
    reporter = progress.current()
    total = len(planned) + virtual
    reporter.kernels(0, total)
    built = jobs.run_jobs(planned, progress=lambda done, _: reporter.kernels(done, total))
    persistent = _compile_uvirtuals(op, chip, emit, first=len(planned),
                                    report=lambda done: reporter.kernels(done, total)) \
        if virtual else []
    tile_specs = iter(built[j] for j in job_of_tile)
    persistent_specs = iter(persistent)
    return [next(tile_specs) if unit.operation.name == "quartet.tile" else next(persistent_specs)
            for unit in units]


def _compile_uvirtuals(op: ir.Operation, chip: Chip, emit: str, first: int,
                       report) -> list[list[KernelSpec]]:
    """The persistent kernel of every uvirtual of ``op``, in program order, named ``q{first}``
    on (the tile jobs are ``q0`` to ``q{first - 1}``; ``report(builds done)`` after each);
    built in a private Context on a copy of ``op``."""
    from quartet.dialects import context as quartet_context

    from .build_device_program import compile_device_program
    from .build_persistent import compile_uvirtual
    from .device_program import is_device_program

    text = op.get_asm(enable_debug_info=True)
    compiled = []
    with quartet_context(), ir.Location.unknown():
        copy = ir.Module.parse(text)
        for fn in copy.body.operations:
            if fn.operation.name != "func.func":
                continue
            for unit in units_of(fn):
                if unit.operation.name != "quartet.uvirtual":
                    continue
                build_unit = compile_device_program if is_device_program(unit) \
                    else compile_uvirtual
                compiled.append([build_unit(unit, chip, f"q{first + len(compiled)}", emit)])
                report(first + len(compiled))
    return compiled


def build_kernels_into(module, chip) -> None:
    """Append every tile's block program (``func.func private @qN_body``) and its standalone
    kernel (``func.func @qN`` holding a ``gpu.launch`` that calls the body) to ``module``, and
    for every uvirtual its persistent kernel (the tasks' bodies and the dispatcher), tiles left
    in place: the kernel stage of ``quartet-lower-gpu{stop_after=kernels}``."""
    from quartet.dialects import context as quartet_context

    chip = targets.get(chip)
    op = module.operation if hasattr(module, "operation") else module
    prepare(op)
    text = op.get_asm(enable_debug_info=True)
    kernel_texts = []
    with quartet_context() as ctx, ir.Location.unknown():
        copy = ir.Module.parse(text)
        n = 0
        for fn in copy.body.operations:
            if fn.operation.name != "func.func":
                continue
            for unit in units_of(fn):
                if unit.operation.name == "quartet.uvirtual":
                    from .build_device_program import device_program_module
                    from .build_persistent import persistent_module
                    from .device_program import is_device_program

                    kmod = (device_program_module if is_device_program(unit)
                            else persistent_module)(unit, chip, f"q{n}")
                else:
                    bp = block_program(unit, chip, f"q{n}_body")
                    kmod = standalone(bp, f"q{n}")
                # the generic form: nvvm.barrier's custom form does not read back (binary.py)
                kernel_texts.append(kmod.operation.get_asm(enable_debug_info=True,
                                                           print_generic_op_form=True))
                n += 1
        del ctx
    body = op.regions[0].blocks[0]
    with op.context, ir.Location.unknown():
        for text in kernel_texts:
            parsed = ir.Module.parse(text)
            for kop in list(parsed.body.operations):
                kop.operation.move_after(list(body.operations)[-1].operation)


def insert_binary(body: ir.Block, name: str, spec: KernelSpec, chip, emit: str = "bin") -> None:
    """A ``gpu.binary @name`` holding ``spec``'s binary, at the end of ``body``."""
    t = binary.get_target(chip)
    if t.is_nvidia:
        attr = ir.Attribute.parse(f'#nvvm.target<O = 3, chip = "{t.chip}", '
                                  f'features = "{t.features}">')
    else:
        attr = ir.Attribute.parse(f'#rocdl.target<O = 3, chip = "{t.chip}">')
    fmt = {"bin": 3, "ptx": 2, "obj": 3}[emit]     # #gpu.compilation_target: 2 isa, 3 bin
    obj = gpu.ObjectAttr.get(attr, fmt, spec.binary)
    with ir.InsertionPoint(body):
        gpu.BinaryOp(name, ir.ArrayAttr.get([obj]),
                     offloadingHandler=ir.Attribute.parse("#gpu.select_object<0>"))


def index_constant(v: int) -> ir.Value:
    return arith.constant(ir.IndexType.get(), v)


def launches_to_binaries(module, chip, emit: str = "bin") -> list[KernelSpec]:
    """Compile every ``gpu.launch`` of ``module`` (``lowering/binary.py``) and replace each by
    a ``gpu.launch_func`` of a ``gpu.binary``; return the KernelSpecs."""
    op = module.operation if hasattr(module, "operation") else module
    inline_block_programs(module)
    specs = binary.compile_launch_module(op, chip, emit=emit)
    body = op.regions[0].blocks[0]
    launches = []

    def visit(inner):
        if inner.operation.name == "gpu.launch":
            launches.append(inner.operation)
            return ir.WalkResult.SKIP
        return ir.WalkResult.ADVANCE

    op.walk(visit)
    if len(launches) != len(specs):
        raise QuartetError("the kernels compiled do not match the gpu.launch ops")
    with op.context, ir.Location.unknown():
        for launch, spec in zip(launches, specs):
            fn = launch.parent
            while fn.name != "func.func":
                fn = fn.parent
            args = fn.regions[0].blocks[0].arguments
            insert_binary(body, spec.name, spec, chip, emit)
            with launch.location, ir.InsertionPoint(launch):
                smem = arith.constant(ir.IntegerType.get_signless(32), spec.shared_bytes) \
                    if spec.shared_bytes else None
                gpu.LaunchFuncOp([spec.name, spec.entry],
                                 tuple(index_constant(g) for g in spec.grid),
                                 tuple(index_constant(b) for b in spec.block),
                                 [args[i] for i in spec.notes["func_args"]],
                                 dynamic_shared_memory_size=smem)
            launch.erase()
        op.attributes["gpu.container_module"] = ir.UnitAttr.get()
    return specs
