"""``grinder-lift-control-flow``: loops and branches around tiles move into the device program.

Grinder/Cocktailer (OSDI'23) 3.1: control decisions are made at operator granularity, so all
uTasks of a loop body share one trip count or predicate, and the control logic can be copied
into every parallel uTask: each vEU evaluates ``i < N`` or ``pred`` itself and no host round
trip is left. In Quartet's IR:

1. **Runs.** In every block of a function (and in the regions of control flow that stays on the
   host), a *run* is a maximal sequence of ops a device program can hold (``liftable.py``:
   tiles, views, constants, predicates read from tensors, and ``scf.while`` / ``scf.for`` /
   ``scf.if`` whose regions hold only such ops). A run holding control flow is a candidate.
2. **Static loops.** A while loop whose trip count the compiler can follow (``loops.py``)
   becomes ``scf.for``; an ``scf.for`` is unrolled by ``unroll`` (``0``: fully when it holds
   at most ``max_unrolled`` tiles, ``1``: never), so that Rammer's wavefront overlaps
   consecutive iterations.
3. **The uvirtual.** The run moves into one ``quartet.uvirtual`` (its constants, and views of
   values from outside, stay in front of it): loop-carried values stay on the device, and what
   the rest of the function reads is yielded, ordered by type (at most 8 groups of one type,
   the dialect's limit). Every tile of every block is scheduled by Rammer's wavefront
   scheduler as one persistent kernel (``schedule.py``): vtasks with vEU ranges, kernel
   versions and waves (``sync = "barrier"``: a grid barrier between waves, and before every
   predicate every vEU reads alike).
4. **The choice.** ``control=auto`` keeps the cheaper of the device loop and the host loop by
   ``cost.py``'s estimates; ``control=device|host`` overrides it. The choice is recorded:
   ``control`` and the estimates on the uvirtual (``estimate_us`` device, ``host_us``, and
   ``graph_us``: a CUDA graph with conditional nodes, estimated only - that third way is not
   built), ``quartet.control`` on control flow left outside one, with ``quartet.host_reason``
   saying why when the device could not take it; ``verbose=true`` prints each reason as a
   remark. Targets without device-side synchronisation (``gfx942``) keep control flow on the
   host; on the CPU the device program is the compiled function itself (``control=host`` has
   no effect there).
5. **Bounds.** ``max_iterations=N`` bounds every while loop (``quartet.max_iterations``): a
   device or host loop stops after ``N`` iterations and the runtime warns (``BoundWarning``).
   GPU targets only: the CPU target refuses the option (its loops run inside the compiled
   function, where nothing reports).

The lowering turns each uvirtual into one cooperative kernel with device-side loops
(``lowering/device_program.py``).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from mlir import ir

from quartet.dialects import UVirtualOp, collect, result_groups, yield_
from quartet.dialects.quartet import UVIRTUAL_GROUPS
from quartet.errors import QuartetError, location_of
from quartet.passes.base import ModulePass
from quartet.passes.rammer.graph import contains, escaping
from quartet.runtime import targets
from quartet.runtime.targets import Chip

from . import cost, loops
from .liftable import CONTROL_OPS, FREE_OPS, VIEW_OPS, device_reason
from .schedule import blocks_of, plan_device_program, write_schedule

CONTROL_ATTR = "quartet.control"
REASON_ATTR = "quartet.host_reason"
BOUND_ATTR = "quartet.max_iterations"


@dataclass(frozen=True)
class GrinderLift(ModulePass):
    name = "grinder-lift-control-flow"
    summary = ("Grinder: loops and branches around tiles move into one quartet.uvirtual each "
               "(device-side loops, predicates read by every vEU, Rammer's schedule inside), "
               "or stay on the host, by a cost model")

    target: str = "sm_90"
    chip: str = ""
    control: str = "auto"          # auto | device | host
    unroll: int = 0                # static loops: 0 auto, 1 never, N by N
    max_unrolled: int = 64         # tiles of a fully unrolled loop (unroll=0)
    max_iterations: int = 0        # bound on while loops (0: none)
    max_per_unit: int = 0
    measure: bool = True
    verbose: bool = False

    def __post_init__(self):
        if self.control not in cost.CONTROL_CHOICES:
            raise ValueError(f"control must be one of {', '.join(cost.CONTROL_CHOICES)}, "
                             f"got '{self.control}'")
        if self.unroll < 0 or self.max_iterations < 0:
            raise ValueError("unroll and max_iterations must be at least 0")
        if self.max_iterations and not targets.get(self.target, self.chip or None).is_gpu:
            raise ValueError("max_iterations bounds device and host loops of GPU targets; the "
                             "CPU target runs loops inside its compiled function, unbounded")

    def apply(self, module) -> None:
        hw = targets.get(self.target, self.chip or None)
        op = module.operation if hasattr(module, "operation") else module
        fns = [f.operation for f in op.regions[0].blocks[0].operations
               if f.operation.name == "func.func" and len(f.operation.regions[0].blocks)]
        with op.context:
            if self.max_iterations:
                for w in collect(op, lambda o: o.name == "scf.while"):
                    w.attributes[BOUND_ATTR] = ir.IntegerAttr.get(
                        ir.IntegerType.get_signless(64), self.max_iterations)
            for fn in fns:
                self._lift_blocks(fn, hw)

    # -- finding runs ------------------------------------------------------------------------

    def _lift_blocks(self, op: ir.Operation, hw: Chip) -> None:
        for region in op.regions:
            for block in region.blocks:
                for run, reasons in _runs(block, hw):
                    for ctl, reason in reasons:
                        self._keep_on_host(ctl, reason, "host")
                    if run:
                        self._lift(run, hw)
                for inner in list(block.operations):
                    inner = inner.operation
                    if inner.name in CONTROL_OPS and CONTROL_ATTR in inner.attributes and \
                            ir.StringAttr(inner.attributes[CONTROL_ATTR]).value != "device":
                        self._lift_blocks(inner, hw)

    def _keep_on_host(self, ctl: ir.Operation, reason: str | None, mode: str) -> None:
        ctl.attributes[CONTROL_ATTR] = ir.StringAttr.get(mode)
        if reason:
            ctl.attributes[REASON_ATTR] = ir.StringAttr.get(reason)
            self._remark(ctl, f"'{ctl.name}' stays on the host: {reason}")

    def _remark(self, op: ir.Operation, text: str) -> None:
        if self.verbose:
            where = location_of(op) or "<unknown>"
            print(f"{where}: remark: {text}", file=sys.stderr)

    # -- lifting a run -----------------------------------------------------------------------

    def _lift(self, run: list, hw: Chip) -> None:
        controls = [op for op in run if op.name in CONTROL_OPS]
        if hw.is_gpu and hw.kind != "cuda":
            for ctl in controls:
                self._keep_on_host(ctl, f"{hw.description} has no device-side grid barrier in "
                                        f"Quartet (persistent kernels are NVIDIA-only)", "host")
            return
        if self.control == "host" and hw.is_gpu:
            for ctl in controls:
                self._keep_on_host(ctl, None, "host")
            return
        uv = _build_uvirtual(run)
        if uv is None:
            for ctl in controls:
                self._keep_on_host(ctl, f"its results have more than {UVIRTUAL_GROUPS} types",
                                   "host")
            return
        trial = plan_device_program(uv.operation, hw, self.measure, self.max_per_unit or None)
        if trial is None and len(run) > len(controls):
            # the straight-line tiles around the control flow do not share an envelope with
            # it (a one-thread scalar tile beside warp-wide ones): they stay outside as kernels
            # of their own, and each control-flow op is tried alone
            self._unlift(uv, None, mark=False)
            for ctl in controls:
                self._lift([ctl], hw)
            return
        if trial is None:
            self._unlift(uv, "no kernel version of its tiles fits one persistent kernel "
                             "(its tiles' thread counts or resources share no envelope)")
            return
        estimate = cost.estimate(trial, uv.operation, hw)
        choice = self.control
        if choice == "auto":
            choice = estimate.best() if hw.is_gpu else "device"
        if choice != "device" and hw.is_gpu:
            self._unlift(uv, None, choice, estimate)
            return
        if self._static_loops(uv, hw):
            trial = plan_device_program(uv.operation, hw, self.measure,
                                        self.max_per_unit or None)
            if trial is None:
                raise QuartetError("the unrolled device program no longer fits one persistent "
                                   "kernel (try unroll=1)", location_of(uv.operation))
            estimate = cost.estimate(trial, uv.operation, hw)
        write_schedule(trial, hw)
        _annotate(uv, trial, estimate)

    def _static_loops(self, uv: UVirtualOp, hw: Chip) -> bool:
        """In ``uv``, innermost first: static while loops become counted loops, counted loops
        are unrolled (``unroll``; by default fully up to ``max_unrolled`` tiles, on GPUs).
        Returns whether anything changed."""
        changed = False
        for block in reversed(blocks_of(uv.operation)):
            for op in list(block.operations):
                op = op.operation
                if op.name == "scf.while":
                    trips = loops.trip_count(op)
                    if trips is None or loops.trivial_before(op) is None:
                        continue
                    op = loops.to_for(op, trips)
                    changed = True
                if op.name == "scf.for":
                    factor = self._factor(op, hw)
                    if factor >= 2:
                        loops.unroll(op, factor)
                        changed = True
            if changed:
                loops.forward_concat_parts(block)
        return changed

    def _factor(self, loop: ir.Operation, hw: Chip) -> int:
        trips = loops.trip_count(loop)
        if trips is None:
            return 1
        if self.unroll:
            return self.unroll
        if not hw.is_gpu:
            return 1
        tiles = len(collect(loop, lambda o: o.name == "quartet.tile"))
        limit = max(1, self.max_unrolled // max(1, tiles))
        if trips <= limit:
            return trips
        # a divisor of the trip count: no copies left over after the loop
        return max(d for d in range(1, limit + 1) if trips % d == 0)

    def _unlift(self, uv: UVirtualOp, reason: str | None, mode: str = "host",
                estimate: "cost.Estimate | None" = None, mark: bool = True) -> None:
        """Move the ops of ``uv`` back in front of it (control flow then stays on the host)."""
        block = uv.operation.regions[0].blocks[0]
        ops = [o.operation for o in block.operations]
        term = ops[-1]
        for inner in ops[:-1]:
            inner.move_before(uv.operation)
            if inner.name in CONTROL_OPS and mark:
                self._keep_on_host(inner, reason, mode)
                if estimate is not None:
                    _record(inner, estimate)
        for r, v in zip(uv.operation.results, term.operands):
            r.replace_all_uses_with(v)
        uv.operation.erase()


def _runs(block: ir.Block, hw: Chip) -> list[tuple[list, list]]:
    """Maximal runs of device-capable ops of ``block`` holding control flow, each with the
    control-flow ops next to it that cannot be lifted and why."""
    out: list[tuple[list, list]] = []
    run: list = []
    refused: list = []

    def close():
        if any(op.name in CONTROL_OPS for op in run):
            out.append((list(run), list(refused)))
        elif refused:
            out.append(([], list(refused)))
        run.clear()
        refused.clear()

    last = block.operations[len(block.operations) - 1].operation
    for op in block.operations:
        op = op.operation
        if op == last and op.name not in CONTROL_OPS:
            close()
            break
        if op.name in CONTROL_OPS and CONTROL_ATTR in op.attributes:
            close()            # decided already (a second run of the pass)
            continue
        reason = device_reason(op, hw)
        if reason is None:
            run.append(op)
            continue
        close()
        if op.name in CONTROL_OPS:
            refused.append((op, reason))
            close()
    close()
    return out


def _build_uvirtual(run: list) -> UVirtualOp | None:
    """Move ``run`` into a new uvirtual (constants and views of outside values in front of
    it); None when what it yields has too many types."""
    body = []
    first = run[0]
    for op in run:
        if op.name in FREE_OPS:
            op.move_before(first)
        else:
            body.append(op)
    changed = True
    while changed:
        changed = False
        for op in list(body):
            if op.name in VIEW_OPS and not any(_defined_in(v, body) for v in op.operands):
                op.move_before(body[0])
                body.remove(op)
                changed = True
    if not body:
        return None
    results = _by_type(escaping(body))
    types = [r.type for r in results]
    try:
        result_groups(types)
    except ValueError:
        return None
    anchor = body[0]
    with anchor.location, ir.InsertionPoint(anchor):
        uv = UVirtualOp(types, num_veus=1)
    with anchor.location, ir.InsertionPoint(uv.entry):
        term = yield_(results)
    for op in body:
        op.move_before(term)
    for i, r in enumerate(results):
        for use in list(r.uses):
            if not contains([uv.operation], use.owner.operation):
                use.owner.operands[use.operand_number] = uv.results[i]
    return uv


def _defined_in(value: ir.Value, ops: list) -> bool:
    owner = value.owner
    op = owner.owner if isinstance(owner, ir.Block) else owner.operation
    return contains(ops, op)


def _by_type(values: list) -> list:
    """``values`` grouped by type, groups in order of first appearance."""
    order: list = []
    for v in values:
        if str(v.type) not in order:
            order.append(str(v.type))
    return sorted(values, key=lambda v: order.index(str(v.type)))


def _record(op: ir.Operation, estimate: "cost.Estimate") -> None:
    for key, value in (("device_us", estimate.device), ("host_us", estimate.host),
                       ("graph_us", estimate.graph)):
        op.attributes[f"quartet.{key}"] = ir.FloatAttr.get_f64(round(value * 1e6, 3))


def _annotate(uv: UVirtualOp, trial, estimate: "cost.Estimate") -> None:
    plan = trial.plan
    i64 = ir.IntegerType.get_signless(64)
    attrs = uv.operation.attributes
    attrs["num_veus"] = ir.IntegerAttr.get(i64, plan.num_veus)
    attrs["sync"] = ir.StringAttr.get("barrier")
    attrs["control"] = ir.StringAttr.get("device")
    attrs["threads"] = ir.IntegerAttr.get(i64, plan.threads)
    attrs["shared_bytes"] = ir.IntegerAttr.get(i64, plan.shared_bytes)
    attrs["registers"] = ir.IntegerAttr.get(i64, plan.registers)
    attrs["blocks_per_unit"] = ir.IntegerAttr.get(i64, plan.per_unit)
    attrs["estimate_us"] = ir.FloatAttr.get_f64(round(estimate.device * 1e6, 3))
    attrs["host_us"] = ir.FloatAttr.get_f64(round(estimate.host * 1e6, 3))
    attrs["graph_us"] = ir.FloatAttr.get_f64(round(estimate.graph * 1e6, 3))
    for ctl in collect(uv, lambda o: o.name in CONTROL_OPS):
        ctl.attributes[CONTROL_ATTR] = ir.StringAttr.get("device")


def device_uvirtuals(module) -> list:
    """The uvirtuals this pass made (``control = "device"``)."""
    return [op.opview for op in collect(module, lambda o: o.name == "quartet.uvirtual"
                                        and "control" in o.attributes)]


def check_blocks(uv) -> None:
    """Every block of ``uv`` holds only what a device program can (a QuartetError naming the
    first op that is not)."""
    for block in blocks_of(uv.operation):
        for op in block.operations:
            op = op.operation
            if op.name in ("quartet.vtask", "gpu.yield") or op.name in CONTROL_OPS:
                continue
            reason = device_reason(op, targets.get("cpu"))
            if reason is not None:
                raise QuartetError(f"this device program holds {reason}", location_of(op))
