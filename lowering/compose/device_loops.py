"""Grinder's persistent kernel: a device program's steps, loops and branches run on the device.

``device_program_kernel`` composes the block programs of a device program's tasks
(``lowering/device_program.py``) into one kernel whose every block walks the same tree of
steps (Cocktailer's ``kernels/loop.cpp``, ``-fcf_level=1``)::

    for each step of a list, a grid barrier between two steps:
      Wave(tasks)            Rammer's dispatch of each task on this block's vEUs
                             (``persistent.Dispatcher.task``)
      Copies(...)            grid-stride copies (carried values, branch results)
      If(pred, a, b)         p = barrier_value(pred); if p: a else b
      For(n, body)           for i < n: (grid barrier if i > 0) body
      While(cond, pred, b)   loop { cond; p = barrier_value(pred) [and i < bound];
                                    if not p: break; b }

**Uniform control by construction.** A predicate is read through :func:`barrier_value`, a grid
barrier whose last arriving block - the one that knows every block's writes are done - reads
the predicate and publishes it in a word of the synchronisation buffer chosen by the barrier's
generation, before it releases the others; every thread then reads that word. All blocks
therefore see the same value, whatever the program writes to the predicate's own buffer
afterwards, so all take the same branch, run the same number of iterations and meet the same
barriers: the grid cannot split. Deadlock freedom then needs co-residency only, which the
cooperative launch gives (the runtime refuses a grid the GPU cannot hold). Every spin keeps
Rammer's watchdog (``device.py``: trap after 10 s), and a while loop traps when one call has run
it for as long (a runaway loop without a bound is a launch error, never a hung GPU).

**Bounds.** A ``While`` with a bound stops after that many iterations; block 0 then records the
loop's number in the ``BOUND`` word, which the runtime reads after the call and reports.

Synchronisation buffer (``memref<7 x i64>``, zeroed at load; the barrier is self-resetting, so
no call needs to clear it): Rammer's header (epoch, finished, barrier count, barrier
generation), then the two predicate words and the bound word.
"""

from __future__ import annotations

from mlir import ir
from mlir.dialects import arith, func, gpu, memref, scf

from quartet.errors import QuartetError

from ..kernel import KernelArg
from . import device
from .kernel import Part, _element
from .persistent import SYNC_ROLE, Dispatcher, _check_bindings, shared_bodies
from .vdevice import DeviceProgram

#: words of the synchronisation buffer after Rammer's header
PRED0, PRED1, BOUND = device.HEADER_WORDS, device.HEADER_WORDS + 1, device.HEADER_WORDS + 2
SYNC_WORDS = device.HEADER_WORDS + 3


def _index(v: int) -> ir.Value:
    return arith.constant(ir.IndexType.get(), v)


def device_program_kernel(parts: list[Part], program: DeviceProgram, steps: tuple,
                          args: list[KernelArg], name: str,
                          physical_blocks: int | None = None,
                          min_blocks_per_unit: int | None = None) -> ir.Module:
    """The kernel running ``steps`` (``device_program.py``'s step tree; task ``t`` is
    ``parts[t]``'s block program bound to kernel arguments ``parts[t].args``, on the vEUs
    ``program.tasks[t]`` gives) on ``physical_blocks`` blocks (default: one per vEU). The
    kernel takes ``args`` (the plan's slots) and then the synchronisation buffer."""
    if len(parts) != len(program.tasks):
        raise QuartetError(f"{len(parts)} block programs for {len(program.tasks)} tasks")
    physical = physical_blocks or program.num_veus
    if not 1 <= physical <= program.num_veus:
        raise QuartetError(f"a persistent kernel of {program.num_veus} vEUs runs on 1 to "
                           f"{program.num_veus} blocks, not {physical}")
    threads = max([p.program.resources.threads for p in parts] or [128])
    shared = max([p.program.resources.shared_bytes for p in parts] or [0])
    _check_bindings([p for p in parts if not _sub_warp(p, threads)], args, threads)
    _check_sub_warp([p for p in parts if _sub_warp(p, threads)], args)
    chips = {p.program.chip for p in parts if p.program.chip}
    if len(chips) > 1:
        raise QuartetError(f"block programs for different chips ({', '.join(sorted(chips))}) "
                           f"cannot share a kernel")
    ctx = parts[0].program.module.context if parts else ir.Context.current
    i64 = ir.IntegerType.get_signless(64)
    with ctx, ir.Location.unknown():
        module = ir.Module.create()
        parts = shared_bodies(module, parts, threads)
        types = [ir.MemRefType.get(list(a.shape), _element(a.dtype)) for a in args]
        types.append(ir.MemRefType.get([SYNC_WORDS], i64))
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
            emitter = StepEmitter(Dispatcher(program, parts, kargs[:-1], kargs[-1],
                                             body.arguments[0], physical, threads),
                                  kargs[:-1], args)
            emitter.start()
            emitter.steps(steps)
            gpu.TerminatorOp()
    return module


def _sub_warp(part: Part, threads: int) -> bool:
    t = part.program.resources.threads
    return t < threads and t % 32 != 0


def _check_sub_warp(parts: list[Part], args: list[KernelArg]) -> None:
    """A body narrower than a warp (a scalar tile's one thread) runs on the first threads of its
    block with no barrier of its own: a barrier cannot count fewer threads than a warp."""
    for p in parts:
        found = []

        def visit(op):
            if op.operation.name in ("gpu.barrier", "nvvm.barrier", "nvvm.barrier0"):
                found.append(op)
            return ir.WalkResult.ADVANCE

        p.program.function.operation.walk(visit)
        if found:
            raise QuartetError(f"block program '{p.program.name}' runs on "
                               f"{p.program.resources.threads} threads, less than a warp, "
                               f"and holds a barrier: it cannot share a persistent kernel")
    _check_bindings(parts, args, 1)        # argument types, as for every body


class StepEmitter:
    """Emits a device program's steps at the insertion point (see the module docstring)."""

    def __init__(self, dispatcher: Dispatcher, slots: list, args: list[KernelArg]):
        self.d = dispatcher
        self.slots, self.args = slots, args
        self.sync = dispatcher.sync
        self.start_time = None

    def barrier(self) -> None:
        device.grid_barrier(self.sync, self.d.physical)

    def start(self) -> None:
        """Thread 0 notes the time (the watchdog of runaway loops); block 0 clears the bound
        word (only block 0 writes it, after a barrier; the runtime reads it after the call)."""
        zero = arith.cmpi(arith.CmpIPredicate.eq, self.d.block_id, _index(0))
        clear = scf.IfOp(arith.andi(zero, device.thread_zero()))
        with ir.InsertionPoint(clear.then_block):
            device.store_relaxed(device.word(self.sync, BOUND), device.const(0))
            scf.YieldOp([])
        branch = scf.IfOp(device.thread_zero(), [device.i64()], has_else=True)
        with ir.InsertionPoint(branch.then_block):
            scf.YieldOp([device.global_timer()])
        with ir.InsertionPoint(branch.else_block):
            scf.YieldOp([device.const(0)])
        self.start_time = branch.results[0]

    def steps(self, steps) -> None:
        from quartet.lowering import device_program as dp

        first = True
        for s in steps:
            leading = not (isinstance(s, dp.If) or (isinstance(s, dp.While) and not s.cond))
            if not first and leading:
                self.barrier()
            first = False
            self.step(s)

    def step(self, s) -> None:
        from quartet.lowering import device_program as dp

        if isinstance(s, dp.Wave):
            for t in s.tasks:
                self.d.task(t)
        elif isinstance(s, dp.Copies):
            for c in s.copies:
                self.copy(c.dst, c.src)
        elif isinstance(s, dp.If):
            p = self.barrier_value(s.pred)
            branch = scf.IfOp(p, has_else=True)
            with ir.InsertionPoint(branch.then_block):
                self.steps(s.then)
                scf.YieldOp([])
            with ir.InsertionPoint(branch.else_block):
                self.steps(s.else_)
                scf.YieldOp([])
        elif isinstance(s, dp.For):
            if s.count <= 0 or not s.body:
                return
            loop = scf.ForOp(_index(0), _index(s.count), _index(1))
            with ir.InsertionPoint(loop.body):
                later = arith.cmpi(arith.CmpIPredicate.ugt, loop.induction_variable, _index(0))
                branch = scf.IfOp(later)
                with ir.InsertionPoint(branch.then_block):
                    self.barrier()
                    scf.YieldOp([])
                self.steps(s.body)
                scf.YieldOp([])
        elif isinstance(s, dp.While):
            self.while_(s)
        else:
            raise QuartetError(f"not a device step: {s!r}")

    def while_(self, s) -> None:
        i64 = device.i64()
        loop = scf.WhileOp([i64], [device.const(0)])
        before = loop.before.blocks.append(i64)
        with ir.InsertionPoint(before):
            iteration = before.arguments[0]
            if s.cond:
                self.barrier()
                self.steps(s.cond)
            self.watchdog()
            p = self.barrier_value(s.pred)
            if s.bound is not None:
                within = arith.cmpi(arith.CmpIPredicate.ult, iteration, device.const(s.bound))
                hit = arith.andi(p, arith.xori(within, _true()))
                self.record_bound(hit, s.loop)
                p = arith.andi(p, within)
            scf.ConditionOp(p, [iteration])
        after = loop.after.blocks.append(i64)
        with ir.InsertionPoint(after):
            self.steps(s.body)
            scf.YieldOp([arith.addi(after.arguments[0], device.const(1))])

    def watchdog(self) -> None:
        """Thread 0 traps once the kernel has run for ``device.SPIN_LIMIT_NS``."""
        def build():
            late = arith.cmpi(arith.CmpIPredicate.ugt,
                              arith.subi(device.global_timer(), self.start_time),
                              device.const(device.SPIN_LIMIT_NS))
            branch = scf.IfOp(late)
            with ir.InsertionPoint(branch.then_block):
                device._asm(device._void(), [], "trap;", "")
                scf.YieldOp([])
        device.if_thread_zero(build)

    def record_bound(self, hit: ir.Value, loop: int) -> None:
        """Block 0 records that loop ``loop`` stopped at its bound."""
        zero = arith.cmpi(arith.CmpIPredicate.eq, self.d.block_id, _index(0))
        cond = arith.andi(arith.andi(hit, zero), device.thread_zero())
        branch = scf.IfOp(cond)
        with ir.InsertionPoint(branch.then_block):
            device.store_relaxed(device.word(self.sync, BOUND), device.const(loop))
            scf.YieldOp([])

    # -- predicates ----------------------------------------------------------------------------

    def barrier_value(self, slot: int) -> ir.Value:
        """A grid barrier that hands every thread of every block the same truth value of the
        one-element slot ``slot`` (see the module docstring)."""
        gpu.barrier()
        sync = self.sync
        pred = self.slots[slot]
        element = _element(self.args[slot].dtype)

        def build():
            gen_at = device.word(sync, device.BARRIER_GENERATION)
            count_at = device.word(sync, device.BARRIER_COUNT)
            gen = device.load_acquire(gen_at)
            old = device.add_acq_rel(count_at, device.const(1))
            last = arith.cmpi(arith.CmpIPredicate.eq, arith.addi(old, device.const(1)),
                              device.const(self.d.physical))
            branch = scf.IfOp(last, has_else=True)
            with ir.InsertionPoint(branch.then_block):
                device.fence_acq_rel()
                rank = len(ir.MemRefType(pred.type).shape)
                value = memref.load(pred, [_index(0)] * rank)
                nonzero = _nonzero(value, element)
                parity = arith.andi(gen, device.const(1))
                word = device.word(sync, arith.index_cast(
                    ir.IndexType.get(), arith.addi(parity, device.const(PRED0))))
                device.store_relaxed(word, arith.extui(device.i64(), nonzero))
                device.store_relaxed(count_at, device.const(0))
                device.store_release(gen_at, arith.addi(gen, device.const(1)))
                scf.YieldOp([])
            with ir.InsertionPoint(branch.else_block):
                device._spin(lambda: arith.cmpi(arith.CmpIPredicate.eq,
                                                device.load_acquire(gen_at), gen))
                scf.YieldOp([])
            device.fence_acq_rel()
        device.if_thread_zero(build)
        gpu.barrier()
        # every thread: the generation this barrier released (it cannot move again before
        # this block arrives at the next barrier), and the word it chose
        gen = device.load_acquire(device.word(sync, device.BARRIER_GENERATION))
        parity = arith.andi(arith.addi(gen, device.const(1)), device.const(1))
        word = device.word(sync, arith.index_cast(ir.IndexType.get(),
                                                  arith.addi(parity, device.const(PRED0))))
        return arith.cmpi(arith.CmpIPredicate.ne, device.load_acquire(word), device.const(0))

    # -- copies --------------------------------------------------------------------------------

    def copy(self, dst: int, src: int) -> None:
        """Every thread of the grid copies its share of slot ``src`` into slot ``dst``."""
        a, b = self.args[dst], self.args[src]
        n = 1
        for d in a.shape:
            n *= d
        m = 1
        for d in b.shape:
            m *= d
        if n != m or a.dtype != b.dtype:
            raise QuartetError(f"a device copy between {b.dtype}{list(b.shape)} and "
                               f"{a.dtype}{list(a.shape)}")
        flat_dst, flat_src = _flat(self.slots[dst], n), _flat(self.slots[src], n)
        tid = gpu.thread_id(gpu.Dimension.x)
        first = arith.addi(arith.muli(self.d.block_id, _index(self.d.threads)), tid)
        loop = scf.ForOp(first, _index(n), _index(self.d.threads * self.d.physical))
        with ir.InsertionPoint(loop.body):
            i = loop.induction_variable
            memref.store(memref.load(flat_src, [i]), flat_dst, [i])
            scf.YieldOp([])


def _true() -> ir.Value:
    return arith.constant(ir.IntegerType.get_signless(1), 1)


def _nonzero(value: ir.Value, element: ir.Type) -> ir.Value:
    if isinstance(element, ir.IntegerType):
        zero = arith.constant(element, 0)
        return arith.cmpi(arith.CmpIPredicate.ne, value, zero)
    zero = arith.constant(element, 0.0)
    return arith.cmpf(arith.CmpFPredicate.UNE, value, zero)


def _flat(value: ir.Value, n: int) -> ir.Value:
    t = ir.MemRefType(value.type)
    rank = len(t.shape)
    if rank == 1:
        return value
    if rank == 0:
        return memref.expand_shape(ir.MemRefType.get([1], t.element_type), value, [],
                                   [], [1])
    return memref.collapse_shape(ir.MemRefType.get([n], t.element_type), value,
                                 [list(range(rank))])
