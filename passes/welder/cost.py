"""Welder's cost model: memory traffic per level, footprint, and an estimated latency.

Welder (OSDI'23, section 4.1; the artifact's ``policy/default.py``) ranks a fused group's
candidate output tiles by the traffic they cause at each memory level and refuses those whose
footprint does not fit. For one output tile:

* **Traffic, level 0 (global).** Every block reads the box (``propagate.py``) of each tensor
  the group reads from global memory and writes the box of each tensor it produces; bytes are
  counted in whole transactions (32-byte sectors, ``Chip.transaction_bytes``) along the
  tensor's contiguous dimension, so an uncoalesced access (a thin box along the contiguous
  dimension, a transposed read) is inflated to the sectors it touches. Intermediates the group
  keeps on chip add nothing here. Of the global traffic, the *compulsory* part (each tensor
  once) is charged to DRAM and the rest (re-reads by other blocks) to L2.
* **Traffic, level 1 (shared).** Each tile that lives in shared memory is written once and read
  once per block.
* **Footprint.** The shared-memory tiles (level-1 values, and the reduction steps of global
  operands a contraction stages, times the pipeline's stages) placed by best fit
  (``bestfit.py``) in program order, each freed after its last reader; a kernel family that
  knows its own layout (``lowering/kernels``) may give its exact figure instead.
* **Latency.** ``max(memory time, compute time)`` over the SMs the blocks occupy, with the wave
  quantization of ``ceil(blocks / (SMs x resident blocks))``, plus one kernel launch. Tensor-core
  work runs at the table's tensor rate (wgmma), or :data:`MMA_SYNC_SHARE` of it on
  ``mma.sync``. These are model figures, to rank candidates; the tuning record
  (``record.py``) replaces them with times measured on the GPU where it has them.

Assumes: static shapes, row-major tensors in global memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from mlir import ir

from quartet.dialects import linalg_info
from quartet.runtime.targets import Chip

from .bestfit import best_fit
from .propagate import Box, affine_maps, elements, extents, full, propagate, shape_of

#: share of the (wgmma) tensor-core rate that mma.sync kernels reach on Hopper: a model figure
#: (FlashAttention-3, Shah et al. 2024: FA2 on mma.sync reaches 35-50% of H100 peak where FA3 on
#: wgmma reaches 75%)
MMA_SYNC_SHARE = 0.6

SHARED, REGISTERS, GLOBAL = 1, 2, 0


def element_bytes(value: ir.Value) -> int:
    t = ir.ShapedType(value.type).element_type
    if isinstance(t, ir.IntegerType):
        return max(1, ir.IntegerType(t).width // 8)
    return {"f16": 2, "bf16": 2, "f32": 4, "f64": 8}.get(str(t), 4)


def sector_bytes(box: Box, shape, elem: int, sector: int) -> int:
    """Bytes of the sectors a box of a row-major tensor touches: runs along the contiguous
    dimension (merged with outer dimensions while the inner ones are whole), each rounded up to
    whole sectors."""
    if not shape:
        return sector
    ext = extents(box)
    k = len(ext) - 1
    run = ext[k]
    while k > 0 and ext[k] == shape[k]:
        k -= 1
        run *= ext[k]
    runs = math.prod(ext[:k])
    return runs * -(-run * elem // sector) * sector


@dataclass(frozen=True)
class Resources:
    """What one block of the group's kernel takes: a family's figures, or Roller's."""

    threads: int
    shared_bytes: int | None = None    # None: the best-fit footprint
    registers: int = 64
    engine: str = "simt"               # "wgmma" | "mma" | "simt"
    rstep: int = 64                    # reduction step of staged contraction operands
    stages: int = 2


@dataclass
class Estimate:
    """The model's view of one group at one output tile."""

    blocks: int
    traffic: dict = field(default_factory=dict)   # level -> bytes (whole kernel)
    compulsory: int = 0                           # bytes of every global tensor once
    footprint: int = 0                            # best-fit shared bytes per block
    shared_bytes: int = 0                         # what the kernel allocates
    flops_tensor: float = 0.0
    flops_simt: float = 0.0
    latency: float = math.inf
    refused: str | None = None                    # why the tile cannot run, if it cannot

    @property
    def global_bytes(self) -> int:
        return self.traffic.get(GLOBAL, 0)


# ---------------------------------------------------------------------------------------------
# Forward boxes: from the anchor's result to the group's outputs


def forward_box(op: ir.Operation, operand: int, box: Box) -> Box | None:
    """The box of ``op``'s first result that element box ``box`` of operand ``operand`` feeds,
    for per-element ops (all-parallel linalg ops whose map for that operand is a permutation)
    and views; None for anything else."""
    out_shape = shape_of(op.results[0])
    if op.name == "tensor.expand_shape":
        from .views import reassociation
        res: list = [None] * len(out_shape)
        for src_dim, group in enumerate(reassociation(op)):
            lo, hi = box[src_dim]
            inner = math.prod(out_shape[d] for d in group)
            for d in group:
                inner //= out_shape[d]
                q_lo, q_hi = lo // inner, hi // inner
                if q_hi - q_lo + 1 >= out_shape[d] or \
                        q_lo // out_shape[d] != q_hi // out_shape[d]:
                    res[d] = (0, out_shape[d] - 1)
                else:
                    res[d] = (q_lo % out_shape[d], q_hi % out_shape[d])
        return tuple(res)
    if op.name == "tensor.collapse_shape":
        from .views import reassociation
        src_shape = shape_of(op.operands[0])
        res = []
        for group in reassociation(op):
            lo = hi = 0
            for d in group:
                lo = lo * src_shape[d] + box[d][0]
                hi = hi * src_shape[d] + box[d][1]
            res.append((lo, hi))
        return tuple(res)
    if not linalg_info.is_linalg(op) or op.name == "linalg.fill":
        return None
    maps, kinds, ranges = affine_maps(op)
    if "reduction" in kinds:
        return None
    loops: list = [None] * len(ranges)
    for expr, interval in zip(maps[operand].results, box):
        e = expr.maybe_downcast() if hasattr(expr, "maybe_downcast") else expr
        if isinstance(e, ir.AffineDimExpr):
            loops[e.position] = interval
        elif not isinstance(e, ir.AffineConstantExpr):
            return None
    loops = [lb if lb is not None else (0, r - 1) for lb, r in zip(loops, ranges)]
    nin = len(maps) - len(op.results)
    from .propagate import interval as _interval
    return tuple(_interval(e, tuple(loops)) for e in maps[nin].results)


def output_boxes(ops: list[ir.Operation], anchor: ir.Operation, anchor_loops: Box,
                 outputs: list[ir.Value]) -> dict:
    """Boxes of ``outputs`` fed by one block's ``anchor_loops`` of ``anchor``, following the
    per-element ops after it; an output the anchor does not reach is taken whole."""
    maps, _, _ = affine_maps(anchor)
    nin = len(maps) - len(anchor.results)
    from .propagate import interval as _interval
    known = {}
    for k, r in enumerate(anchor.results):
        known[r] = tuple(_interval(e, anchor_loops) for e in maps[nin + k].results)
    start = ops.index(anchor)
    for op in ops[start + 1:]:
        for i, v in enumerate(op.operands):
            if v in known and op.results:
                fb = forward_box(op, i, known[v])
                if fb is not None:
                    known[op.results[0]] = fb
                    break
    return {v: known.get(v, full(shape_of(v))) for v in outputs}


# ---------------------------------------------------------------------------------------------
# The estimate


def _flops_per_point(op: ir.Operation) -> int:
    if not op.regions or not len(op.regions[0].blocks):
        return 1
    payload = [o.operation.name for o in op.regions[0].blocks[0].operations]
    skip = ("linalg.yield", "linalg.index", "arith.extf", "arith.truncf", "arith.constant")
    return max(1, sum(1 for p in payload if p not in skip))


def _is_contraction(op: ir.Operation) -> bool:
    from quartet.lowering.kernels.fused import is_contraction
    return is_contraction(op)


def _narrow_inputs(op: ir.Operation) -> bool:
    types = {str(ir.ShapedType(v.type).element_type) for v in list(op.operands)[:2]}
    return types <= {"f16", "bf16"}


def group_inputs(ops: list[ir.Operation]) -> list[ir.Value]:
    """Tensors the group's ops read that none of them produces (``tensor.empty`` excluded)."""
    inside = {r for op in ops for r in op.results}
    seen = []
    for op in ops:
        for v in op.operands:
            if v in inside or v in seen or not isinstance(v.type, ir.RankedTensorType):
                continue
            owner = v.owner
            if not isinstance(owner, ir.Block) and owner.operation.name == "tensor.empty":
                continue
            seen.append(v)
    return seen


def _readers(ops: list[ir.Operation], value: ir.Value) -> list[int]:
    return [i for i, op in enumerate(ops) if value in list(op.operands)]


def estimate(ops: list[ir.Operation], anchor: ir.Operation, anchor_loops: Box,
             outputs: list[ir.Value], chip: Chip, resources: Resources,
             levels: dict | None = None) -> Estimate:
    """The model's estimate for the group of ``ops`` (program order, views included) when one
    block computes ``anchor_loops`` of ``anchor``; ``outputs`` are the values it writes,
    ``levels`` the memory level of internal values (op -> level of its results; default
    registers), ``resources`` the kernel's threads, registers and (if known) shared memory."""
    levels = levels or {}
    out_boxes = output_boxes(ops, anchor, anchor_loops, outputs)
    prop = propagate(ops, out_boxes)
    # Blocks: how many anchor tiles cover the anchor's parallel loops.
    _, kinds, ranges = affine_maps(anchor)
    blocks = 1
    for (lo, hi), kind, extent in zip(anchor_loops, kinds, ranges):
        if kind == "parallel":
            blocks *= -(-extent // (hi - lo + 1))
    sector = chip.transaction_bytes
    est = Estimate(blocks=blocks)
    reads = 0
    compulsory = 0
    for v in group_inputs(ops):
        box = prop.values.get(v)
        if box is None:
            continue
        reads += sector_bytes(box, shape_of(v), element_bytes(v), sector)
        compulsory += math.prod(shape_of(v)) * element_bytes(v)
    writes = 0
    for v, box in out_boxes.items():
        writes += sector_bytes(box, shape_of(v), element_bytes(v), sector)
        compulsory += math.prod(shape_of(v)) * element_bytes(v)
    est.traffic[GLOBAL] = blocks * (reads + writes)
    est.compulsory = compulsory
    # Compute, recomputation included (a producer's box per block times the blocks).
    for op in ops:
        if op not in prop.loops or op.name == "linalg.fill":
            continue
        points = elements(prop.loops[op]) * blocks
        if _is_contraction(op):
            if _narrow_inputs(op) and resources.engine != "simt":
                est.flops_tensor += 2.0 * points
            else:
                est.flops_simt += 2.0 * points
        elif op.name not in ("linalg.transpose", "linalg.copy"):
            est.flops_simt += float(points * _flops_per_point(op))
    # Shared memory: level-1 values and the staged steps of global contraction operands.
    requests, shared_traffic = [], 0
    for i, op in enumerate(ops):
        if levels.get(op) == SHARED:
            for r in op.results:
                box = prop.values.get(r)
                readers = _readers(ops, r)
                if box is None or not readers:
                    continue
                size = elements(box) * element_bytes(r)
                requests.append((size, i, max(readers)))
                shared_traffic += 2 * size
        if _is_contraction(op) and op in prop.loops:
            step_box = tuple((lo, min(hi, lo + resources.rstep - 1)) if kind == "reduction"
                             else (lo, hi) for (lo, hi), kind in
                             zip(prop.loops[op], affine_maps(op)[1]))
            maps = affine_maps(op)[0]
            from .propagate import interval as _interval
            for m, v in list(zip(maps, op.operands))[:2]:
                if v in {r for o in ops for r in o.results}:
                    continue
                sbox = tuple(_interval(e, step_box) for e in m.results)
                size = elements(sbox) * element_bytes(v)
                requests.append((size * resources.stages, i, i))
                shared_traffic += size * max(1, -(-elements(prop.loops[op]) //
                                                  max(1, elements(step_box))))
    est.footprint = best_fit(requests).peak if requests else 0
    est.traffic[SHARED] = blocks * shared_traffic
    est.shared_bytes = resources.shared_bytes if resources.shared_bytes is not None \
        else est.footprint
    _latency(est, chip, resources)
    return est


def _latency(est: Estimate, chip: Chip, res: Resources) -> None:
    if est.shared_bytes > chip.smem_per_block:
        est.refused = (f"footprint {est.shared_bytes} bytes of shared memory per block, "
                       f"at most {chip.smem_per_block}")
        return
    per_unit = chip.blocks_per_unit(res.threads, est.shared_bytes, res.registers)
    if per_unit < 1:
        est.refused = (f"{res.threads} threads x {res.registers} registers with "
                       f"{est.shared_bytes} bytes of shared memory do not fit one SM")
        return
    sms = chip.num_units
    active = min(sms, est.blocks)
    slots = sms * per_unit
    waves = -(-est.blocks // slots)
    use = est.blocks / (waves * slots) if est.blocks > sms else active / sms
    dram_bw = min(chip.dram_bandwidth, active * chip.unit_bandwidth)
    l2_bw = chip.l2_bandwidth * active / sms
    moved = est.traffic.get(GLOBAL, 0)
    t_memory = est.compulsory / dram_bw + max(0, moved - est.compulsory) / l2_bw
    tensor_rate = chip.peak_flops["tensor_f16"] * (MMA_SYNC_SHARE if res.engine == "mma"
                                                   else 1.0)
    t_compute = (est.flops_tensor / tensor_rate + est.flops_simt / chip.peak_flops["f32"]) / use
    t_shared = est.traffic.get(SHARED, 0) / (chip.smem_bandwidth * active / sms)
    est.latency = max(t_memory, t_compute, t_shared) + chip.launch_seconds
