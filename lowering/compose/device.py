"""Device-side synchronisation of persistent kernels: completion counters and grid barriers.

The building blocks every persistent kernel (Rammer's vEU dispatcher, Grinder's device loops)
needs, emitted at the current insertion point inside a ``gpu.launch`` on NVIDIA targets:

* :func:`word` - the address of a 64-bit word of the kernel's synchronisation buffer (a
  ``memref<W x i64>`` argument, zeroed once when the program is loaded);
* :func:`load_acquire`, :func:`add_release`, :func:`add_acq_rel`, :func:`store_release`,
  :func:`fence_acq_rel` - GPU-scope memory operations with acquire/release semantics;
* :func:`wait_at_least` - thread 0 spins on an acquire load until a counter reaches a value;
* :func:`grid_barrier` - every block of the grid waits for all others (a self-resetting
  barrier: a count and a generation, see its docstring), for wave-separated schedules and for
  Grinder's loop steps, which must also agree on a predicate computed on the device;
* a watchdog on every spin (:data:`SPIN_LIMIT_NS`): a wait that lasts seconds traps, so a bug
  becomes a launch error on the host, never a hung GPU.

Upstream's ``nvvm`` dialect (MLIR 22.1) has ``membar`` and barriers, but no scoped acquire loads,
release stores or release/acq_rel atomics, and ``memref.atomic_rmw`` lowers to a system-scope
relaxed atomic; so these are inline PTX through ``llvm.inline_asm`` (generic addresses: the
synchronisation buffer is global memory, whose generic and global addresses coincide).

Memory-model pattern (PTX ISA, "Memory Consistency Model"; the same one CUDA's cooperative
groups use for ``grid.sync()``): a block's threads finish writing, the block synchronises
(``bar.sync``, CTA scope), then thread 0 makes them visible at GPU scope with a release
(``fence.acq_rel.gpu`` + ``red.release.gpu``). A waiting block's thread 0 spins with
``ld.acquire.gpu`` and fences (``fence.acq_rel.gpu``, which on sm_70+ also invalidates the SM's
L1, so no stale line of an earlier call is read), then the block synchronises before any thread
reads. Deadlock freedom needs every block resident at once: the runtime launches persistent
kernels cooperatively and refuses a grid the GPU cannot hold.
"""

from __future__ import annotations

from mlir import ir
from mlir.dialects import arith, gpu, llvm, memref, scf

#: words of the synchronisation buffer before the task counters
EPOCH, FINISHED, BARRIER_COUNT, BARRIER_GENERATION = 0, 1, 2, 3
HEADER_WORDS = 4


def i64() -> ir.Type:
    return ir.IntegerType.get_signless(64)


def const(value: int) -> ir.Value:
    return arith.constant(i64(), value)


def word(sync: ir.Value, index) -> ir.Value:
    """The generic address (i64) of 64-bit word ``index`` (int or index value) of ``sync``."""
    base = arith.index_cast(i64(), memref.extract_aligned_pointer_as_index(sync))
    if isinstance(index, int):
        return arith.addi(base, const(8 * index)) if index else base
    offset = arith.muli(arith.index_cast(i64(), index), const(8))
    return arith.addi(base, offset)


def _asm(result, operands, text: str, constraints: str):
    return llvm.inline_asm(result, operands, text, constraints, has_side_effects=True)


def _void() -> ir.Type:
    return ir.Type.parse("!llvm.void")


def load_acquire(address: ir.Value) -> ir.Value:
    """``ld.acquire.gpu.u64``: later reads of this thread see what the releaser published."""
    return _asm(i64(), [address], "ld.acquire.gpu.u64 $0, [$1];", "=l,l,~{memory}")


def add_release(address: ir.Value, value: ir.Value) -> None:
    """``red.release.gpu.add.u64``: publish this thread's (and, after a barrier, its block's)
    earlier writes, then add."""
    _asm(_void(), [address, value], "red.release.gpu.add.u64 [$0], $1;", "l,l,~{memory}")


def add_acq_rel(address: ir.Value, value: ir.Value) -> ir.Value:
    """``atom.acq_rel.gpu.add.u64``: the old value; release and acquire in one."""
    return _asm(i64(), [address, value], "atom.acq_rel.gpu.add.u64 $0, [$1], $2;",
                "=l,l,l,~{memory}")


def store_release(address: ir.Value, value: ir.Value) -> None:
    _asm(_void(), [address, value], "st.release.gpu.u64 [$0], $1;", "l,l,~{memory}")


def store_relaxed(address: ir.Value, value: ir.Value) -> None:
    _asm(_void(), [address, value], "st.relaxed.gpu.u64 [$0], $1;", "l,l,~{memory}")


def fence_acq_rel() -> None:
    """``fence.acq_rel.gpu`` (orders this thread's accesses at GPU scope; invalidates L1)."""
    _asm(_void(), [], "fence.acq_rel.gpu;", "~{memory}")


def thread_zero() -> ir.Value:
    tid = gpu.thread_id(gpu.Dimension.x)
    return arith.cmpi(arith.CmpIPredicate.eq, tid, arith.constant(ir.IndexType.get(), 0))


#: a watchdog on every spin: nanoseconds after which a waiting thread traps (``trap``: the
#: launch fails with an error the runtime reports) instead of hanging the GPU. A schedule the
#: checker accepted never waits that long; it turns a compiler bug into an error, not a hang.
SPIN_LIMIT_NS = 10_000_000_000


def global_timer() -> ir.Value:
    """``%globaltimer``: nanoseconds (PTX special register; no upstream op reads it)."""
    return _asm(i64(), [], "mov.u64 $0, %globaltimer;", "=l")


def _spin(keep_waiting) -> None:
    """``while keep_waiting(): check the watchdog`` (``keep_waiting`` builds an i1)."""
    start = global_timer()
    loop = scf.WhileOp([], [])
    before = loop.before.blocks.append()
    with ir.InsertionPoint(before):
        scf.ConditionOp(keep_waiting(), [])
    after = loop.after.blocks.append()
    with ir.InsertionPoint(after):
        late = arith.cmpi(arith.CmpIPredicate.ugt, arith.subi(global_timer(), start),
                          const(SPIN_LIMIT_NS))
        branch = scf.IfOp(late)
        with ir.InsertionPoint(branch.then_block):
            _asm(_void(), [], "trap;", "")
            scf.YieldOp([])
        scf.YieldOp([])


def wait_at_least(address: ir.Value, target: ir.Value) -> None:
    """Spin until the counter at ``address`` is at least ``target`` (call from one thread),
    then fence."""
    _spin(lambda: arith.cmpi(arith.CmpIPredicate.ult, load_acquire(address), target))
    fence_acq_rel()


def if_thread_zero(build) -> None:
    """``build()`` under ``if threadIdx.x == 0``."""
    branch = scf.IfOp(thread_zero())
    with ir.InsertionPoint(branch.then_block):
        build()
        scf.YieldOp([])


def signal(sync: ir.Value, counter: int, amount: int = 1) -> None:
    """Thread 0 publishes the block's writes and adds ``amount`` to counter word ``counter``.
    Call after a block barrier (every thread's writes done)."""
    def build():
        fence_acq_rel()
        add_release(word(sync, counter), const(amount))
    if_thread_zero(build)


def wait_counters(sync: ir.Value, counters: list[tuple[int, int]], epoch: ir.Value) -> None:
    """Thread 0 waits until each counter word ``c`` reaches ``(epoch + 1) * need``, then the
    block synchronises. Counters only grow (``epoch`` counts the calls: see persistent.py)."""
    def build():
        calls = arith.addi(epoch, const(1))
        for counter, need in counters:
            wait_at_least(word(sync, counter), arith.muli(calls, const(need)))
    if_thread_zero(build)
    gpu.barrier()


def grid_barrier(sync: ir.Value, blocks: ir.Value | int) -> None:
    """All ``blocks`` blocks of the grid meet here (every one must call it the same number of
    times). Self-resetting: thread 0 reads the generation, then adds one to the count; the last
    to arrive resets the count and publishes generation + 1 with a release; the others spin
    until the generation changes. A block reads the generation before it arrives, and the
    last cannot arrive before it, so no block can miss a generation; the count is reset before
    the generation moves, so no block of the next barrier counts into this one."""
    gpu.barrier()

    def build():
        gen_at = word(sync, BARRIER_GENERATION)
        count_at = word(sync, BARRIER_COUNT)
        gen = load_acquire(gen_at)
        old = add_acq_rel(count_at, const(1))
        total = const(blocks) if isinstance(blocks, int) else \
            arith.index_cast(i64(), blocks)
        last = arith.cmpi(arith.CmpIPredicate.eq, arith.addi(old, const(1)), total)
        branch = scf.IfOp(last, has_else=True)
        with ir.InsertionPoint(branch.then_block):
            store_relaxed(count_at, const(0))
            store_release(gen_at, arith.addi(gen, const(1)))
            scf.YieldOp([])
        with ir.InsertionPoint(branch.else_block):
            _spin(lambda: arith.cmpi(arith.CmpIPredicate.eq, load_acquire(gen_at), gen))
            scf.YieldOp([])
        fence_acq_rel()
    if_thread_zero(build)
    gpu.barrier()
