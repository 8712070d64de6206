"""The host plan's side of a Grinder uvirtual: buffers for its values, one cooperative Launch.

``host.py`` names every value of a function with a buffer (or a view into one, or an element of
one for scalars). For a uvirtual holding control flow this module does the same inside it,
with the host plan's own rules (``device_program.py`` states them): vtask results get buffers
(or their slice of a concatenation they write in place, ``device_program.concat_claims``), a
loop's carried values buffers of their own, its ``after`` arguments and results the buffers of
what the condition forwards, a branch's results buffers of their own. Then each slot of the
kernel (``device_program.Plan.slots``) is bound to a buffer and byte offset, the device program
is checked once more with the real byte ranges its tasks read and write
(``compose/vdevice.py``), and the uvirtual becomes one ``Launch`` of its kernel with a zeroed
synchronisation buffer; the manifest's ``persistent`` record carries the device program
(``runtime/FORMAT.md``: what the CPU twin runs, and the word the runtime reads for bounds).
"""

from __future__ import annotations

import json

from mlir import ir
from mlir.dialects import arith, bufferization, gpu

from quartet.errors import QuartetError, location_of
from quartet.runtime import manifest as mf

from . import device_program as dp
from .build import index_constant, insert_binary
from .host import (Buffer, KernelUse, _alias, _buffer_of, _carrier, _carrier_like, _extract_scalar,
                   _Host, _result_buffer, _scalar, _to_buffer)
from .prepare import concat_offsets, contiguous_slice, dtype_of, shape_of


def lower_device_program(uv, target: str, module, host: _Host, specs: list, emit: str,
                         steps: list) -> None:
    (spec,) = specs
    notes = spec.notes
    plan = dp.plan(uv)
    _name_block(uv.operation.regions[0].blocks[0], host)
    term = _last(uv.operation.regions[0].blocks[0])
    for r, v in zip(uv.operation.results, term.operands):
        host.names[r] = _buffer_of(v, host)
    bound = [_bind(plan, k, host, uv) for k in range(len(plan.slots))]
    sync = host.fresh("sync")
    info = notes["persistent"]
    host.plan.buffers.append(Buffer(sync, (info["sync_words"],), "int64", "scalar",
                                    zeroed=True))
    _check(notes, plan, bound, host, uv)
    kname = f"k{len(host.plan.kernels)}_{spec.name}"
    args = tuple(mf.BufferArg(storage, offset) for storage, offset in bound) + \
        (mf.BufferArg(sync, 0),)
    program = notes["device_program"]
    tasks = tuple(mf.PersistentTask(name, tuple(a), t.blocks, t.veu_begin, t.veu_count, t.wave)
                  for name, a, t in zip(notes["task_names"], notes["task_args"],
                                        program.tasks))
    bounded = any(isinstance(s, dp.While) and s.bound for s in plan.walk())
    record = mf.Persistent(info["veus"], info["blocks_per_sm"], sync, tasks,
                           program=json.dumps(_steps_json(plan.steps, plan),
                                              separators=(",", ":")),
                           bound_word=info["bound_word"] if bounded else None)
    host.plan.kernels[kname] = KernelUse(kname, spec, args, record)
    steps.append(mf.Launch(kname))
    _rewrite(uv, target, module, host, spec, plan, bound, sync, emit)


def _last(block: ir.Block) -> ir.Operation:
    return block.operations[len(block.operations) - 1].operation


# ---------------------------------------------------------------------------------------------
# Naming the values of the device program (the host plan's rules)


def _name_block(block: ir.Block, host: _Host) -> None:
    for concat, k, result in dp.concat_claims(block):
        storage = _concat_storage(concat, host)
        host.redirects[result] = (storage, concat_offsets(concat.owner.operation)[k])
    for op in list(block.operations)[:-1]:
        op = op.operation
        name = op.name
        if name == "quartet.vtask":
            tile = [o.operation for o in op.regions[0].blocks[0].operations][0].opview
            for i, r in enumerate(tile.results):
                host.names[r] = _result_buffer(r, host)
                host.names[op.results[i]] = host.names[r]
        elif name in ("tensor.expand_shape", "tensor.collapse_shape"):
            host.view(_buffer_of(op.operands[0], host), op.results[0])
        elif name == "tensor.extract_slice":
            host.view(_buffer_of(op.operands[0], host), op.results[0], contiguous_slice(op))
        elif name == "tensor.concat":
            host.names[op.results[0]] = _concat_storage(op.results[0], host)
        elif name == "tensor.extract":
            _extract_scalar(op, host)
        elif name in ("arith.trunci", "arith.extui"):
            host.scalars[op.results[0]] = _scalar(op.operands[0], host, op)
        elif name == "scf.while":
            before, after = op.regions[0].blocks[0], op.regions[1].blocks[0]
            for arg in before.arguments:
                _carrier(arg, host, "carry")
            _name_block(before, host)
            forwarded = list(_last(before).operands)[1:]
            for arg, v in zip(after.arguments, forwarded):
                _alias(arg, v, host, op)
            _name_block(after, host)
            for r, v in zip(op.results, forwarded):
                _alias(r, v, host, op)
        elif name == "scf.for":
            body = op.regions[0].blocks[0]
            carries = list(body.arguments)[1:]
            for arg in carries:
                _carrier(arg, host, "carry")
            _name_block(body, host)
            for r, arg in zip(op.results, carries):
                _alias(r, arg, host, op)
        elif name == "scf.if":
            for r in op.results:
                buffer = _carrier_like(r, host)
                if isinstance(r.type, ir.RankedTensorType):
                    host.names[r] = buffer
                else:
                    host.scalars[r] = (buffer, 0, dtype_of(r.type))
            for region in op.regions:
                if len(region.blocks):
                    _name_block(region.blocks[0], host)


def _concat_storage(value: ir.Value, host: _Host) -> str:
    if value not in host.concats:
        t = value.type
        host.concats[value] = host.new_buffer("cat", shape_of(t), dtype_of(t))
    return host.concats[value]


def _bind(plan: dp.Plan, k: int, host: _Host, uv) -> tuple[str, int]:
    """(storage buffer, byte offset) of slot ``k``."""
    s = plan.slots[k]
    if s.value < 0:                       # a staging buffer of its own
        return host.new_buffer("stage", s.shape, s.dtype), 0
    v = plan.values[s.value]
    if isinstance(v.type, ir.RankedTensorType):
        base, offset = _buffer_of(v, host), 0
    else:
        base, offset, _ = _scalar(v, host, uv.operation)
    storage, at = host.plan.storage(base)
    return storage, at + offset + s.offset


def _check(notes, plan: dp.Plan, bound: list, host: _Host, uv) -> None:
    """The device program with each task's real byte ranges (its slots' bytes): no two tasks
    of one wave may touch the same bytes unordered (``vdevice.check``)."""
    from dataclasses import replace

    from .compose.vdevice import Region, check_or_raise

    program = notes["device_program"]
    tasks = []
    for task, t in zip(program.tasks, plan.tasks):
        reads = tuple(_region(plan, k, bound, Region) for k in t.inputs)
        writes = tuple(_region(plan, k, bound, Region) for k in t.outputs)
        tasks.append(replace(task, reads=reads, writes=writes))
    check_or_raise(replace(program, tasks=tuple(tasks)), "this device program",
                   location_of(uv.operation))


def _region(plan: dp.Plan, k: int, bound: list, region_type):
    storage, offset = bound[k]
    return region_type(storage, offset, offset + plan.slots[k].nbytes)


def _steps_json(steps, plan: dp.Plan) -> list:
    """The device program in the manifest's words: kernel argument positions for slots."""
    out = []
    for s in steps:
        if isinstance(s, dp.Wave):
            out.append({"op": "wave", "tasks": list(s.tasks)})
        elif isinstance(s, dp.Copies):
            out.append({"op": "copies", "copies": [
                {"dst": c.dst, "src": c.src, "size": plan.slots[c.dst].nbytes}
                for c in s.copies]})
        elif isinstance(s, dp.While):
            out.append({"op": "while", "cond": _steps_json(s.cond, plan), "pred": s.pred,
                        "dtype": plan.slots[s.pred].dtype, "body": _steps_json(s.body, plan),
                        "bound": s.bound, "loop": s.loop})
        elif isinstance(s, dp.For):
            out.append({"op": "for", "count": s.count, "body": _steps_json(s.body, plan)})
        elif isinstance(s, dp.If):
            out.append({"op": "if", "pred": s.pred, "dtype": plan.slots[s.pred].dtype,
                        "then": _steps_json(s.then, plan),
                        "else": _steps_json(s.else_, plan)})
    return out


# ---------------------------------------------------------------------------------------------
# The IR: one gpu.launch_func of the binary on memrefs


def _rewrite(uv, target: str, module, host: _Host, spec, plan: dp.Plan, bound: list, sync: str,
             emit: str) -> None:
    from quartet.dialects.quartet import defined_inside

    from .compose.kernel import _element

    op = uv.operation
    i64 = ir.IntegerType.get_signless(64)
    with op.location, ir.InsertionPoint(op):
        operands = []
        for k, s in enumerate(plan.slots):
            v = plan.values[s.value] if s.value >= 0 else None
            if v is not None and isinstance(v.type, ir.RankedTensorType) and s.offset == 0 \
                    and not defined_inside(v, op) and tuple(shape_of(v.type)) == s.shape:
                operands.append(_to_buffer(v))
                continue
            mt = ir.MemRefType.get(list(s.shape), _element(s.dtype))
            storage, offset = bound[k]
            name = host.alias(storage, offset, s.shape, s.dtype) if offset else storage
            operands.append(host.memref_of(name, mt))
        operands.append(host.memref_of(sync, ir.MemRefType.get(
            [host.plan.buffer(sync).shape[0]], i64)))
        insert_binary(module.body, spec.name, spec, target, emit)
        smem = arith.constant(ir.IntegerType.get_signless(32), spec.shared_bytes) \
            if spec.shared_bytes else None
        gpu.LaunchFuncOp([spec.name, spec.entry], tuple(index_constant(g) for g in spec.grid),
                         tuple(index_constant(b) for b in spec.block), operands,
                         dynamic_shared_memory_size=smem)
        results = []
        for r in uv.results:
            t = ir.RankedTensorType(r.type)
            mt = ir.MemRefType.get(list(t.shape), t.element_type)
            results.append(bufferization.to_tensor(r.type, host.memref_of(host.names[r], mt),
                                                   restrict=True, writable=True))
    for r, new in zip(uv.results, results):
        host.names[new] = host.names[r]
        r.replace_all_uses_with(new)
    op.erase()


__all__ = ["lower_device_program", "QuartetError"]
