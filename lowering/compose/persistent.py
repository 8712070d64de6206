"""The persistent kernel of a ``quartet.uvirtual``: every vEU walks its task list (Rammer).

``persistent(parts, program, args, name)`` composes the block programs of a device program's
tasks (``vdevice.py``) into one kernel of ``P`` resident blocks (``P`` = vEUs, or fewer when the
chip cannot hold that many: block ``p`` then takes vEUs ``p, p + P, ...``)::

    epoch = sync[EPOCH]                          # thread 0: calls made so far
    for each task t, in the global order:        # unrolled: one call per task
        for each vEU v of this block:            # one iteration when P = vEUs
            if v runs blocks of t:
                thread 0 waits until counter[d] >= (epoch + 1) * active(d), for d in waits(t)
                barrier
                for b = v - begin(t); b < blocks(t); b += count(t):
                    body_t(b)  (on its first threads(t) threads; barrier after it)
                if a later task waits for t: thread 0 adds 1 to counter[t] (release)
    barrier; thread 0 adds its vEUs to sync[FINISHED]; the last to finish a call sets
    sync[EPOCH] = epoch + 1

or, with ``sync = "barrier"``, the tasks wave after wave with a grid barrier between waves and no
counters. Counters only grow - a call waits for ``(epoch + 1) x active`` - so no call has to
reset them, and the synchronisation buffer (the kernel's last argument, ``memref<W x i64>``,
:func:`sync_words` words) is zeroed once, when the program is loaded. Shared memory is the
largest task's (``block_program.py``: every body takes its own from one dynamic pool); a body
narrower than the kernel runs on its first threads and its barriers count only those (barrier
1, while the kernel's own are barrier 0). Tasks of identical tiles share one device function
(:func:`shared_bodies`), called with each task's arguments.

The emitter (:class:`Dispatcher`) is written for reuse: Grinder's device loops run the same
``task`` steps (or :meth:`Dispatcher.run_waves`) inside ``scf`` loops, separated by
:func:`device.grid_barrier`, with predicates every block computes alike.
"""

from __future__ import annotations

from mlir import ir
from mlir.dialects import arith, func, gpu, scf

from quartet.errors import QuartetError

from ..kernel import KernelArg
from . import device
from .kernel import Part, _copy_function, _element, _has_function
from .vdevice import DeviceProgram

#: the role of the synchronisation buffer among a persistent kernel's arguments
SYNC_ROLE = "output"


def sync_words(program: DeviceProgram) -> int:
    """Words (int64) of the synchronisation buffer: the header, then one counter per task."""
    return device.HEADER_WORDS + len(program.tasks)


def persistent(parts: list[Part], program: DeviceProgram, args: list[KernelArg], name: str,
               physical_blocks: int | None = None, min_blocks_per_unit: int | None = None
               ) -> ir.Module:
    """The kernel running ``program`` (task ``t`` is ``parts[t]``'s block program bound to
    kernel arguments ``parts[t].args``) on ``physical_blocks`` blocks (default: one per vEU).
    The kernel takes ``args`` and then the synchronisation buffer."""
    if len(parts) != len(program.tasks):
        raise QuartetError(f"{len(parts)} block programs for {len(program.tasks)} tasks")
    if not parts:
        raise QuartetError("a persistent kernel needs at least one task")
    physical = physical_blocks or program.num_veus
    if not 1 <= physical <= program.num_veus:
        raise QuartetError(f"a persistent kernel of {program.num_veus} vEUs runs on 1 to "
                           f"{program.num_veus} blocks, not {physical}")
    threads = max(p.program.resources.threads for p in parts)
    shared = max(p.program.resources.shared_bytes for p in parts)
    _check_bindings(parts, args, threads)
    chips = {p.program.chip for p in parts if p.program.chip}
    if len(chips) > 1:
        raise QuartetError(f"block programs for different chips ({', '.join(sorted(chips))}) "
                           f"cannot share a kernel")
    ctx = parts[0].program.module.context
    i64 = ir.IntegerType.get_signless(64)
    with ctx, ir.Location.unknown():
        module = ir.Module.create()
        parts = shared_bodies(module, parts, threads)
        types = [ir.MemRefType.get(list(a.shape), _element(a.dtype)) for a in args]
        types.append(ir.MemRefType.get([sync_words(program)], i64))
        with ir.InsertionPoint(module.body):
            fn = func.FuncOp(name, (types, []))
        roles = [a.role for a in args] + [SYNC_ROLE]
        fn.arg_attrs = ir.ArrayAttr.get([
            ir.DictAttr.get({"quartet.role": ir.StringAttr.get(r)}) for r in roles])
        if chips:
            fn.operation.attributes["quartet.chip"] = ir.StringAttr.get(chips.pop())
        if min_blocks_per_unit:
            fn.operation.attributes["quartet.min_blocks_per_sm"] = ir.IntegerAttr.get(
                i64, min_blocks_per_unit)
        entry = fn.add_entry_block()
        with ir.InsertionPoint(entry):
            smem = arith.constant(ir.IntegerType.get_signless(32), shared) if shared else None
            launch = gpu.LaunchOp((physical, 1, 1), (threads, 1, 1),
                                  dynamic_shared_memory_size=smem)
            func.ReturnOp([])
        body = launch.regions[0].blocks[0]
        kargs = list(entry.arguments)
        with ir.InsertionPoint(body):
            d = Dispatcher(program, parts, kargs[:-1], kargs[-1], body.arguments[0],
                           physical, threads)
            d.run()
            gpu.TerminatorOp()
    return module


def _body_text(bp) -> str:
    """A block program's function as text with its name left out: equal texts compute the
    same thing on their arguments."""
    fn = bp.function.operation
    text = fn.get_asm(print_generic_op_form=True)
    return text.replace(f'"{bp.name}"', '"@"').replace(f"@{bp.name}", "@@")


def shared_bodies(module: ir.Module, parts: list[Part], threads: int) -> list[Part]:
    """Copy one function per distinct body into ``module`` and point the parts at them.

    The tasks of identical tiles (the branches of a cell, the cells of a model) share one
    device function that the dispatcher calls with each task's arguments, instead of a copy per
    task: compile time and code size grow with the kinds of tasks, not their number (LLVM
    still inlines the small ones and those called once). A body narrower than the kernel gets
    counted barriers (``kernel._count_barriers``)."""
    from dataclasses import replace as _replace

    from .block_program import BLOCK_PROGRAM_ATTR
    from .kernel import _count_barriers

    canonical: dict[str, str] = {}
    out = []
    for p in parts:
        key = _body_text(p.program)
        name = canonical.setdefault(key, p.program.name)
        if name == p.program.name and not _has_function(module, name):
            _copy_function(module, p.program)
        program = p.program if name == p.program.name else _replace(p.program, name=name)
        out.append(Part(program, p.args, p.first, p.count))
    for op in module.body.operations:
        fn = op.operation
        if fn.name != "func.func" or BLOCK_PROGRAM_ATTR not in fn.attributes:
            continue
        name = ir.StringAttr(fn.attributes["sym_name"]).value
        _refuse_whole_kernel_state(fn, name)
        body_threads = ir.IntegerAttr(fn.attributes[BLOCK_PROGRAM_ATTR]).value
        if body_threads < threads:
            for inner in fn.regions[0].blocks[0].operations:
                _count_barriers(inner.operation, body_threads)
        del fn.attributes[BLOCK_PROGRAM_ATTR]      # a device function now, not inlined here
    return out


#: ops that change the state of the whole block or kernel: a task sharing a kernel with others
#: may not use them (register reallocation per warpgroup, cluster barriers)
_KERNEL_WIDE = ("nvvm.setmaxregister", "nvvm.cluster.arrive", "nvvm.cluster.wait")


def _refuse_whole_kernel_state(fn: ir.Operation, name: str) -> None:
    found = []

    def visit(op):
        if op.operation.name in _KERNEL_WIDE:
            found.append(op.operation.name)
        return ir.WalkResult.ADVANCE

    fn.walk(visit)
    if found:
        raise QuartetError(f"block program '{name}' uses '{found[0]}', which acts on the whole "
                           f"kernel: it cannot be a task of a persistent kernel")


def _check_bindings(parts: list[Part], args: list[KernelArg], threads: int) -> None:
    for p in parts:
        bp = p.program
        if len(p.args) != len(bp.args):
            raise QuartetError(f"block program '{bp.name}' takes {len(bp.args)} arguments, "
                               f"{len(p.args)} bound")
        for i, (k, a) in enumerate(zip(p.args, bp.args)):
            if args[k].shape != a.shape or args[k].dtype != a.dtype:
                raise QuartetError(f"argument {i} of block program '{bp.name}' "
                                   f"({a.dtype}{list(a.shape)}) is bound to a kernel argument "
                                   f"of another type ({args[k].dtype}{list(args[k].shape)})")
        t = bp.resources.threads
        if t < threads and t % 32:
            raise QuartetError(f"block program '{bp.name}' runs on {t} threads, not whole "
                               f"warps, in a kernel of {threads}: its barriers cannot count "
                               f"its threads")


class Dispatcher:
    """Emits a persistent kernel's body at the insertion point (see the module docstring).

    ``run`` emits the whole program; Grinder's device loops call :meth:`task` and
    :func:`device.grid_barrier` themselves, inside their own loops."""

    def __init__(self, program: DeviceProgram, parts: list[Part], kargs: list, sync,
                 block_id, physical: int, threads: int):
        self.program, self.parts, self.kargs, self.sync = program, parts, kargs, sync
        self.block_id, self.physical, self.threads = block_id, physical, threads
        self.epoch = None

    def index(self, v: int) -> ir.Value:
        return arith.constant(ir.IndexType.get(), v)

    def run(self) -> None:
        program = self.program
        if program.sync == "barrier":
            waves: list[list[int]] = []
            for t, task in enumerate(program.tasks):
                if not waves or program.tasks[waves[-1][-1]].wave != task.wave:
                    waves.append([])
                waves[-1].append(t)
            self.run_waves(waves)
            return
        if program.waited:
            self.read_epoch()
        for t in range(len(program.tasks)):
            self.task(t)
        if program.waited:
            self.finish()

    def run_waves(self, waves: list[list[int]]) -> None:
        """Each wave's tasks, a grid barrier between waves (not after the last): the step
        list Grinder's device loops repeat (every block calls the barriers alike)."""
        for k, wave in enumerate(waves):
            for t in wave:
                self.task(t)
            if k + 1 < len(waves):
                device.grid_barrier(self.sync, self.physical)

    def read_epoch(self) -> None:
        i64 = device.i64()
        branch = scf.IfOp(device.thread_zero(), [i64], has_else=True)
        with ir.InsertionPoint(branch.then_block):
            scf.YieldOp([device.load_acquire(device.word(self.sync, device.EPOCH))])
        with ir.InsertionPoint(branch.else_block):
            scf.YieldOp([device.const(0)])
        self.epoch = branch.results[0]

    def task(self, t: int) -> None:
        """Task ``t``'s work for each vEU of this block."""
        n = self.program.num_veus
        if self.physical >= n:
            self.share(t, self.block_id)
            return
        loop = scf.ForOp(self.block_id, self.index(n), self.index(self.physical))
        with ir.InsertionPoint(loop.body):
            self.share(t, loop.induction_variable)
            scf.YieldOp([])

    def share(self, t: int, veu: ir.Value) -> None:
        """Task ``t``'s blocks on vEU ``veu``: waits, bodies, signal."""
        task, part, program = self.program.tasks[t], self.parts[t], self.program
        lo, hi = task.veu_begin, task.veu_begin + task.active
        conds = [arith.cmpi(arith.CmpIPredicate.ult, veu, self.index(hi))]
        if lo:
            conds.insert(0, arith.cmpi(arith.CmpIPredicate.uge, veu, self.index(lo)))
        cond = conds[0] if len(conds) == 1 else arith.andi(conds[0], conds[1])
        branch = scf.IfOp(cond)
        with ir.InsertionPoint(branch.then_block):
            waits = program.waits(t) if program.sync == "counters" else ()
            if waits:
                device.wait_counters(self.sync, [(device.HEADER_WORDS + d,
                                                  program.tasks[d].active) for d in waits],
                                     self.epoch)
            first = arith.subi(veu, self.index(lo)) if lo else veu
            loop = scf.ForOp(first, self.index(task.blocks), self.index(task.veu_count))
            with ir.InsertionPoint(loop.body):
                self.body(part, loop.induction_variable)
                gpu.barrier()           # shared memory and the signal wait for every thread
                scf.YieldOp([])
            if program.sync == "counters" and t in program.waited:
                device.signal(self.sync, device.HEADER_WORDS + t)
            scf.YieldOp([])

    def body(self, part: Part, vb: ir.Value) -> None:
        values = [vb] + [self.kargs[k] for k in part.args]
        narrow = part.program.resources.threads < self.threads
        if not narrow:
            func.CallOp([], part.program.name, values)
            return
        inside = arith.cmpi(arith.CmpIPredicate.ult, gpu.thread_id(gpu.Dimension.x),
                            self.index(part.program.resources.threads))
        branch = scf.IfOp(inside)
        with ir.InsertionPoint(branch.then_block):
            func.CallOp([], part.program.name, values)
            scf.YieldOp([])

    def finish(self) -> None:
        """The last block to finish a call moves the epoch on (counters mode)."""
        n, physical = self.program.num_veus, self.physical
        gpu.barrier()

        def build():
            p = arith.index_cast(device.i64(), self.block_id)
            mine = arith.divui(arith.subi(device.const(n + physical - 1), p),
                               device.const(physical))
            old = device.add_acq_rel(device.word(self.sync, device.FINISHED), mine)
            calls = arith.addi(self.epoch, device.const(1))
            last = arith.cmpi(arith.CmpIPredicate.eq, arith.addi(old, mine),
                              arith.muli(calls, device.const(n)))
            branch = scf.IfOp(last)
            with ir.InsertionPoint(branch.then_block):
                device.store_release(device.word(self.sync, device.EPOCH), calls)
                scf.YieldOp([])
        device.if_thread_zero(build)
