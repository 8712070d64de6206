"""A uvirtual with control flow as a device program: tasks, slots and a tree of device steps.

Grinder's ``quartet.uvirtual`` (``passes/grinder``) holds vtasks, views, predicates read from
tensors and ``scf.while`` / ``scf.for`` / ``scf.if`` around them. Its persistent kernel runs, on
every block, the same tree of *device steps* - the host program's vocabulary moved into the
kernel (Cocktailer's device loop, ``kernels/loop.cpp``)::

    Wave(tasks)                 the blocks of each task, on their vEUs (Rammer's dispatch)
    Copy(dst, src)              a grid-stride copy (loop-carried values, branch results,
                                parts of a concatenation not written in place)
    While(cond, pred, body)     cond; if not pred: stop; body; again   (``scf.while``)
    For(count, body)            body ``count`` times                   (``scf.for``)
    If(pred, then, else)        (``scf.if``)

Between two steps of a list every block meets at a grid barrier, and every predicate is read
through a barrier that also hands every block the same value (``compose/device_loops.py``):
all blocks take the same path and meet the same barriers, which is what keeps a cooperative
grid free of deadlock. The plan mirrors the host plan's rules (``host.py``) so that the two
agree on buffers: a loop's carried values live in buffers of the ``before`` region's (or the
``for`` body's) arguments, written by copies before the loop and at the end of each iteration
(staged when values are swapped); the ``after`` region's arguments and the loop's results are
the values the condition forwards; a branch's results get buffers of their own that each
branch copies into.

The plan is read from the IR alone (:func:`plan`), twice - once by the kernel builder
(``build_device_program.py``) on its private copy, once by the host plan on the module - so
that both name the same *slots*: the kernel's pointer arguments, each an SSA value with a byte
offset, shape and element type, which the host plan binds to its buffers. Plain data below.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mlir import ir

from quartet.dialects import captures, defining_op
from quartet.errors import QuartetError, location_of

from .kernels import kernel_inputs
from .prepare import concat_offsets, dtype_of, nbytes, shape_of

CONTROL = ("scf.while", "scf.for", "scf.if")
VIEWS = ("tensor.expand_shape", "tensor.collapse_shape", "tensor.extract_slice",
         "tensor.concat")
FREE = ("arith.constant", "tensor.empty", "tensor.extract", "arith.trunci", "arith.extui")


@dataclass(frozen=True)
class Slot:
    """A kernel argument: ``shape`` x ``dtype`` at byte ``offset`` of ``value``'s buffer
    (index into :attr:`Plan.values`)."""

    value: int
    offset: int
    shape: tuple[int, ...]
    dtype: str

    @property
    def nbytes(self) -> int:
        return nbytes(self.shape, self.dtype)


@dataclass(frozen=True)
class Wave:
    tasks: tuple[int, ...]


@dataclass(frozen=True)
class Copy:
    dst: int                    # slot indices
    src: int


@dataclass(frozen=True)
class Copies:
    """Copies that run together (no copy reads what another writes)."""

    copies: tuple[Copy, ...]


@dataclass(frozen=True)
class While:
    cond: tuple
    pred: int                   # slot of the predicate (one element)
    body: tuple
    bound: int | None = None    # iterations at most (``quartet.max_iterations``)
    loop: int = 0               # the loop's number (reported when its bound is hit)


@dataclass(frozen=True)
class For:
    count: int
    body: tuple


@dataclass(frozen=True)
class If:
    pred: int
    then: tuple
    else_: tuple


Step = Wave | Copies | While | For | If


@dataclass
class DTask:
    """A vtask: its tile, its vEUs and wave, the tasks of its phase it reads from, and the
    slots of its tile's inputs and outputs (``kernel_inputs`` order, then results)."""

    vtask: ir.Operation
    tile: object
    veu_begin: int
    veu_count: int
    step: int
    deps: tuple[int, ...]
    inputs: tuple[int, ...] = ()
    outputs: tuple[int, ...] = ()

    @property
    def name(self) -> str:
        try:
            root = self.tile.root.operation
            return f"{root.name} at {location_of(self.vtask) or '?'}"
        except ValueError:
            return f"quartet.tile at {location_of(self.vtask) or '?'}"


@dataclass
class Plan:
    tasks: list[DTask] = field(default_factory=list)
    steps: tuple = ()
    values: list = field(default_factory=list)      # ir.Value of each value index
    slots: list[Slot] = field(default_factory=list)
    written: set = field(default_factory=set)       # slots some task or copy writes
    loops: int = 0                                  # while loops (numbered for bounds)

    def value_index(self, v: ir.Value) -> int:
        for i, w in enumerate(self.values):
            if w == v:
                return i
        self.values.append(v)
        return len(self.values) - 1

    def slot(self, v: ir.Value, offset: int = 0, shape=None, dtype=None) -> int:
        shape = tuple(shape_of(v.type)) if shape is None else tuple(shape)
        dtype = dtype or _storage_dtype(v.type)
        if not isinstance(v.type, ir.RankedTensorType):
            shape = (1,)            # a scalar (a predicate read from a tensor): one element
        s = Slot(self.value_index(v), offset, shape, dtype)
        if s in self.slots:
            return self.slots.index(s)
        self.slots.append(s)
        return len(self.slots) - 1

    def walk(self, steps=None):
        for s in self.steps if steps is None else steps:
            yield s
            if isinstance(s, While):
                yield from self.walk(s.cond)
                yield from self.walk(s.body)
            elif isinstance(s, For):
                yield from self.walk(s.body)
            elif isinstance(s, If):
                yield from self.walk(s.then)
                yield from self.walk(s.else_)


def _storage_dtype(t: ir.Type) -> str:
    d = dtype_of(t)
    return "int8" if d == "bool" else d


def is_device_program(uv) -> bool:
    """Whether ``uv`` holds control flow (a Grinder uvirtual), not only Rammer's tasks."""
    op = uv.operation
    if "control" in op.attributes:
        return True
    block = op.regions[0].blocks[0]
    return any(o.operation.name in CONTROL for o in block.operations)


def plan(uv) -> Plan:
    """The device program of ``uv`` (see the module docstring); a QuartetError for an op it
    cannot hold."""
    p = Plan()
    block = uv.operation.regions[0].blocks[0]
    p.steps = flatten(_block(block, p))
    for k, t in enumerate(p.tasks):
        ins = kernel_inputs(t.tile)
        t.inputs = tuple(p.slot(v) for v in ins)
        t.outputs = tuple(p.slot(r) for r in t.tile.results)
        p.written.update(t.outputs)
    return p


def _block(block: ir.Block, p: Plan) -> list:
    """The steps of ``block`` (its terminator is the parent's business)."""
    steps: list = []
    wave: list[int] = []
    wave_step = None
    index: dict = {}                 # vtask result -> task
    phase_start = len(p.tasks)
    ops = [o.operation for o in block.operations]

    def close():
        nonlocal wave, wave_step
        if wave:
            steps.append(Wave(tuple(wave)))
        wave, wave_step = [], None

    for op in ops[:-1]:
        name = op.name
        if name == "quartet.vtask":
            step = ir.IntegerAttr(op.attributes["step"]).value
            if wave_step is not None and step != wave_step:
                close()
            wave_step = step
            wave.append(_task(op, p, index, phase_start))
        elif name in CONTROL:
            close()
            steps.append(_control(op, p))
            index.clear()
            phase_start = len(p.tasks)
        elif name == "tensor.concat":
            copies = _concat_copies(op, p)
            if copies:
                close()
                steps.append(Copies(tuple(copies)))
        elif name in VIEWS or name in FREE:
            continue
        else:
            raise QuartetError(f"'{name}' cannot be part of a device program (it holds vtasks, "
                               f"views, predicates and scf control flow)", location_of(op))
    close()
    return steps


def _task(op: ir.Operation, p: Plan, index: dict, phase_start: int) -> int:
    inner = [o.operation for o in op.regions[0].blocks[0].operations]
    tiles = [o for o in inner if o.name == "quartet.tile"]
    if len(tiles) != 1 or any(o.name not in ("quartet.tile", "gpu.yield") for o in inner):
        raise QuartetError("a quartet.vtask of a device program holds one quartet.tile",
                           location_of(op))
    tile = tiles[0].opview
    deps: set[int] = set()
    for v in captures(tile):
        deps |= _producers(v, index, set())
    attrs = op.attributes
    p.tasks.append(DTask(op, tile, ir.IntegerAttr(attrs["veu_begin"]).value,
                         ir.IntegerAttr(attrs["veu_count"]).value,
                         ir.IntegerAttr(attrs["step"]).value,
                         tuple(sorted(d for d in deps if d >= phase_start))))
    k = len(p.tasks) - 1
    for r in op.results:
        index[r] = k
    return k


def _producers(value: ir.Value, index: dict, seen: set) -> set[int]:
    if value in index:
        return {index[value]}
    op = defining_op(value)
    if op is None or op.name not in VIEWS or value in seen:
        return set()
    seen.add(value)
    found: set[int] = set()
    for operand in op.operands:
        found |= _producers(operand, index, seen)
    return found


def _tile_result(value: ir.Value):
    from .prepare import tile_result

    return tile_result(value)


def _concat_copies(op: ir.Operation, p: Plan) -> list[Copy]:
    """Copies of the operands of a concatenation that no tile writes in place
    (:func:`concat_claims`)."""
    offsets = concat_offsets(op)
    if offsets is None:
        raise QuartetError("a 'tensor.concat' of strided slices in a device program (run "
                           "quartet-outline-data-movement first)", location_of(op))
    claimed = concat_claims(op.block)
    out = []
    for k, (v, at) in enumerate(zip(op.operands, offsets)):
        if any(c == op.results[0] and i == k for c, i, _ in claimed):
            continue
        dst = p.slot(op.results[0], at, shape_of(v.type), _storage_dtype(v.type))
        out.append(Copy(dst, _source(v, p)))
        p.written.add(dst)
    return out


def concat_claims(block: ir.Block) -> list[tuple[ir.Value, int, ir.Value]]:
    """(concatenation, operand position, tile result) for every operand of the contiguous
    concatenations of ``block`` that a tile of ``block`` writes in place: a vtask's result, each
    tile result claimed by the first concatenation that reads it (once). The host plan binds
    such a tile result to its slice of the concatenation's buffer; other operands are copied."""
    out: list = []
    taken: list = []
    for op in block.operations:
        op = op.operation
        if op.name != "tensor.concat" or concat_offsets(op) is None:
            continue
        for k, v in enumerate(op.operands):
            owner = v.owner
            if isinstance(owner, ir.Block) or owner.operation.name != "quartet.vtask" or \
                    owner.operation.block != block:
                continue
            r = _tile_result(v)
            if r is None or any(r == t for t in taken):
                continue
            taken.append(r)
            out.append((op.results[0], k, r))
    return out


def _source(v: ir.Value, p: Plan) -> int:
    return p.slot(v)


def _copies(dsts: list, srcs: list, p: Plan, same: dict | None = None) -> list:
    """Copy each of ``srcs`` into the slot of ``dsts`` (values); a source that is itself one of
    the destinations (values swapped between iterations) is staged through a slot of its own
    first: two steps then. ``same`` maps values that share another's buffer to it (a while
    loop's ``after`` arguments that the condition forwards unchanged are its carried values),
    so that a value yielded unchanged is no copy and a swap is seen as one."""
    same = same or {}
    srcs = [_resolve(s, same) for s in srcs]
    dst_slots = [p.slot(d) for d in dsts]
    src_slots = [p.slot(s) for s in srcs]
    first, second = [], []
    dst_values = {p.slots[d].value for d in dst_slots}
    for d, s, value in zip(dst_slots, src_slots, srcs):
        if d == s:
            continue
        if p.slots[s].value in dst_values:
            stage = _stage_slot(p, s)
            first.append(Copy(stage, s))
            second.append(Copy(d, stage))
            p.written.add(stage)
        else:
            second.append(Copy(d, s))
        p.written.add(d)
    return ([Copies(tuple(first))] if first else []) + \
        ([Copies(tuple(second))] if second else [])


def _resolve(v: ir.Value, same: dict) -> ir.Value:
    for a, b in same.items():
        if a == v:
            return b
    return v


def _stage_slot(p: Plan, s: int) -> int:
    """A slot of a buffer of its own, shaped like slot ``s`` (value index -1 - n: the host
    plan allocates one buffer per staging slot)."""
    src = p.slots[s]
    stage = Slot(-1 - sum(1 for x in p.slots if x.value < 0), 0, src.shape, src.dtype)
    p.slots.append(stage)
    return len(p.slots) - 1


def _control(op: ir.Operation, p: Plan):
    if op.name == "scf.if":
        pred = p.slot(op.operands[0])
        branches = []
        for region in op.regions:
            if not len(region.blocks):
                branches.append(())
                continue
            blk = region.blocks[0]
            steps = _block(blk, p)
            term = blk.operations[len(blk.operations) - 1].operation
            steps += _copies(list(op.results), list(term.operands), p)
            branches.append(tuple(steps))
        return If(pred, branches[0], branches[1])
    if op.name == "scf.for":
        body = op.regions[0].blocks[0]
        carries = list(body.arguments)[1:]
        count = _for_trips(op)
        if count is None:
            raise QuartetError("an 'scf.for' with bounds computed at run time in a device "
                               "program", location_of(op))
        init = _copies(carries, list(op.operands)[3:], p)
        term = body.operations[len(body.operations) - 1].operation
        steps = _block(body, p) + _copies(carries, list(term.operands), p)
        return _Seq(init + [For(count, tuple(steps))])
    before, after = op.regions[0].blocks[0], op.regions[1].blocks[0]
    carries = list(before.arguments)
    init = _copies(carries, list(op.operands), p)
    cond = _block(before, p)
    condition = before.operations[len(before.operations) - 1].operation
    pred = p.slot(condition.operands[0])
    body = _block(after, p)
    term = after.operations[len(after.operations) - 1].operation
    forwarded = list(condition.operands)[1:]
    same = {a: f for a, f in zip(after.arguments, forwarded)
            if isinstance(f.owner, ir.Block) and f.owner == before}
    body += _copies(carries, list(term.operands), p, same)
    bound = None
    if "quartet.max_iterations" in op.attributes:
        bound = ir.IntegerAttr(op.attributes["quartet.max_iterations"]).value or None
    p.loops += 1
    return _Seq(init + [While(tuple(cond), pred, tuple(body), bound, p.loops)])


def _for_trips(op: ir.Operation) -> int | None:
    """Iterations of an ``scf.for`` with constant bounds and a positive step (else None)."""
    bounds = []
    for v in list(op.operands)[:3]:
        owner = v.owner
        if isinstance(owner, ir.Block) or owner.operation.name != "arith.constant":
            return None
        bounds.append(ir.IntegerAttr(owner.operation.attributes["value"]).value)
    lb, ub, step = bounds
    return max(0, -(-(ub - lb) // step)) if step > 0 else None


@dataclass(frozen=True)
class _Seq:
    steps: list


def flatten(steps) -> tuple:
    out = []
    for s in steps:
        if isinstance(s, _Seq):
            out += flatten(s.steps)
        elif isinstance(s, While):
            out.append(While(flatten(s.cond), s.pred, flatten(s.body), s.bound, s.loop))
        elif isinstance(s, For):
            out.append(For(s.count, flatten(s.body)))
        elif isinstance(s, If):
            out.append(If(s.pred, flatten(s.then), flatten(s.else_)))
        else:
            out.append(s)
    return tuple(out)
