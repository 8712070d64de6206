"""``roller-fuse``: rebuild operators from torch-mlir's linalg ops before Roller configures them.

Roller (OSDI'22) constructs one tile program per *operator*: a softmax, a layer norm, a matrix
product with its cast and bias. It relies on the rule-based fusion in front of it (Relay / NNFusion)
to hand it such operators: element-wise and broadcast ops are folded into the op that owns the
iteration space, so that they cost no trip through device memory. torch-mlir hands Quartet
something finer: ``aten.softmax`` on fp16 arrives as a cast, a max reduction, a subtraction, an
exponential, a sum, a division and a cast back, each its own ``linalg.generic`` with its own
``linalg.fill``; a fp16 ``aten.mm`` as a fill, a matmul accumulating in f32 and a cast. After
``quartet-outline-tiles`` each is a ``quartet.tile``: 7 to 14 kernels for one operator.

This pass merges a producer tile into its consumer tile when

1. every use of every result of the producer is inside the consumer (directly, or through
   ``tensor.expand_shape`` / ``tensor.collapse_shape`` ops whose results only the consumer reads;
   those views move into the merged tile too), so the intermediate never needs to be in memory;
   A producer that only fills is the exception: it is copied into each consumer that can
   take it (a fill costs nothing to repeat; torch-mlir shares one fill among GEMMs);
2. the merged tile is still *one iteration space* that a single-kernel lowering takes: a GEMM or
   implicit-GEMM convolution with the fill of its accumulator and element-wise epilogues
   (``lowering/gemm_problem.py``), a row program (element-wise ops, and reductions along the
   innermost loop broadcast back along it: softmax, layer norm; ``lowering/kernels/rows.py``), or a
   column reduction. The lowerings' own analyses decide, so a merge never produces a tile that
   no lowering can build; ``target`` matters only there: gfx942 has no GEMM lowering (its
   contractions go to the SIMT builders one op at a time), so nothing joins a GEMM on it.

Consumers are visited from the last tile of a block to the first, each absorbing producers until
none qualifies; the merged tile replaces the consumer (the producer's ops first, in order, then
the views, then the consumer's ops). The merged tile's root (``TileOp.root``) is the op with the
most loops, which Roller configures; ``edge_levels`` records where the lowering keeps each other
op's result: registers (2), or shared memory (1) for the partial sums of a column reduction.

What this is not: Welder's tile-graph fusion. Merging two iteration spaces (a GEMM into the next
GEMM's prologue, attention's matmul-softmax-matmul) with intermediates in shared memory is the
Welder pipeline's job; a merge that would need it is refused here by rule 2. A producer with a
consumer outside the merge stays where it is (no recomputation). Tiles of one block only; tiles
inside ``scf`` regions fuse among themselves.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlir import ir

from quartet.dialects import TileOp, collect, defining_op, linalg_info, remap, yield_
from quartet.runtime import targets
from quartet.passes.analysis.kernels import single_kernel
from quartet.passes.base import ModulePass

VIEW_OPS = ("tensor.expand_shape", "tensor.collapse_shape")

#: Memory levels of ``edge_levels`` (dialects/README.md).
SHARED, REGISTERS = 1, 2


def _inside(op: ir.Operation, region_op: ir.Operation) -> bool:
    parent = op
    while parent is not None:
        if parent == region_op:
            return True
        parent = parent.parent
    return False


def _views_to_consumer(producer: ir.Operation, consumer: ir.Operation) -> list | None:
    """The view ops between ``producer``'s results and ``consumer``, in block order, when every
    use of those results ends inside ``consumer``; None when some use escapes."""
    views: list[ir.Operation] = []
    pending = list(producer.results)
    while pending:
        value = pending.pop()
        for use in value.uses:
            user = use.owner.operation
            if _inside(user, consumer):
                continue
            if user.name in VIEW_OPS and user.block == consumer.block and user not in views:
                views.append(user)
                pending.extend(user.results)
                continue
            if user.name in VIEW_OPS and user in views:
                continue
            return None
    return _in_block_order(views, consumer)


def _in_block_order(ops: list[ir.Operation], anchor: ir.Operation) -> list[ir.Operation]:
    if len(ops) < 2:
        return ops
    order = []
    for o in anchor.block.operations:
        if o.operation in ops:
            order.append(o.operation)
    return order


def _producers(consumer: ir.Operation) -> list[ir.Operation]:
    """Tiles of the consumer's block whose results the consumer reads (maybe through views)."""
    found: list[ir.Operation] = []
    tile = consumer.opview
    for value in tile.inputs:
        op = defining_op(value)
        while op is not None and op.name in VIEW_OPS and op.block == consumer.block:
            op = defining_op(op.operands[0])
        if op is not None and op.name == "quartet.tile" and op.block == consumer.block \
                and op not in found:
            found.append(op)
    return found


def merged_tile(producer: ir.Operation, views: list, consumer: ir.Operation) -> TileOp:
    """A new tile in front of ``consumer`` computing the consumer's results from the
    producer's ops, the views and the consumer's ops (clones; the originals stay)."""
    p, c = producer.opview, consumer.opview
    with consumer.location, ir.InsertionPoint(consumer):
        fused = TileOp([r.type for r in consumer.results])
    mapping: dict = {}
    ip = ir.InsertionPoint(fused.entry)
    with consumer.location, ip:
        for op in p.computation:
            new = op.clone(ip=ip)
            remap(new, mapping)
            mapping.update(zip(op.results, new.results))
        for result, value in zip(producer.results, p.terminator.operands):
            mapping[result] = mapping.get(value, value)
        for op in views + c.computation:
            new = op.clone(ip=ip)
            remap(new, mapping)
            mapping.update(zip(op.results, new.results))
        yield_([mapping.get(v, v) for v in c.terminator.operands])
    if "target" in consumer.attributes:
        fused.operation.attributes["target"] = consumer.attributes["target"]
    return fused


def edge_levels(tile: TileOp, kind: str) -> list[int]:
    """Where the lowering of ``kind`` keeps each linalg op's result other than the root's."""
    ops = [o for o in tile.computation if linalg_info.is_linalg(o)]
    root = tile.root.operation
    levels = []
    for op in ops:
        if op == root:
            continue
        reduces = op.name == "linalg.generic" and any(
            "reduction" in str(t) for t in ir.ArrayAttr(op.attributes["iterator_types"]))
        levels.append(SHARED if kind == "colreduce" and reduces else REGISTERS)
    return levels


def _fill_only(tile_op: ir.Operation) -> bool:
    ops = tile_op.opview.computation
    return any(o.name == "linalg.fill" for o in ops) and \
        all(o.name in ("linalg.fill", "tensor.empty", "arith.constant") for o in ops)


def try_merge(producer: ir.Operation, consumer: ir.Operation,
              target: str = "sm_90") -> tuple[ir.Operation, bool] | None:
    """Merge ``producer`` into ``consumer`` if the module docstring's rules allow it; return
    (the merged tile, which replaced the consumer; whether the producer is gone), or None (the
    IR is unchanged).

    A producer that only fills (torch-mlir shares one ``linalg.fill`` among the GEMMs of one
    output shape) is copied into the consumer instead when others read it too: a fill costs
    nothing to repeat, and each GEMM then starts its accumulator from the scalar."""
    views = _views_to_consumer(producer, consumer)
    copy_only = False
    if views is None:
        if not _fill_only(producer):
            return None
        views, copy_only = [], True
    fused = merged_tile(producer, views, consumer)
    with consumer.location:          # the analyses build scratch IR
        kind = single_kernel(fused, target)
    if kind is None:
        fused.operation.erase()
        return None
    fused.operation.attributes["edge_levels"] = ir.DenseI64ArrayAttr.get(
        edge_levels(fused, kind))
    for old, new in zip(consumer.results, fused.results):
        old.replace_all_uses_with(new)
    consumer.erase()
    for view in reversed(views):
        view.erase()
    if not copy_only or not any(True for r in producer.results for _ in r.uses):
        producer.erase()
        return fused.operation, True
    return fused.operation, False


def fuse_block_tiles(block_tiles: list[ir.Operation], target: str = "sm_90") -> int:
    """Fuse among the tiles of one block (given in block order); return the merges made."""
    merges = 0
    tiles = list(block_tiles)
    i = len(tiles) - 1
    while i >= 0:
        merged = True
        while merged:
            merged = False
            for producer in _producers(tiles[i]):
                j = next(k for k, t in enumerate(tiles) if t == producer)
                done = try_merge(producer, tiles[i], target)
                if done is not None:
                    tiles[i], gone = done
                    if gone:
                        del tiles[j]
                        i -= 1          # the producer came before the consumer
                    merges += 1
                    merged = True
                    break
        i -= 1
    return merges


def _tiles_by_block(module) -> list[list[ir.Operation]]:
    groups: dict = {}
    for op in collect(module, lambda o: o.name == "quartet.tile"):
        groups.setdefault(op.block, []).append(op)
    return list(groups.values())


@dataclass(frozen=True)
class RollerFuse(ModulePass):
    name = "roller-fuse"
    summary = ("merge the tiles of one operator (fills, casts, element-wise and broadcast ops "
               "around a GEMM, row program or column reduction) into one tile")

    target: str = "sm_90"
    chip: str = ""                # default: the target's first chip (runtime/targets.py)

    def __post_init__(self):
        targets.get(self.target, self.chip or None)   # unknown: an error before any IR is read

    def apply(self, module) -> None:
        for tiles in _tiles_by_block(module):
            fuse_block_tiles(tiles, self.target)
        # Merged tiles got their edge levels when merged; a multi-op tile given as input gets
        # them here.
        for op in collect(module, lambda o: o.name == "quartet.tile"):
            tile = op.opview
            if "edge_levels" in op.attributes or \
                    sum(1 for o in tile.computation if linalg_info.is_linalg(o)) < 2:
                continue
            with op.location:
                kind = single_kernel(tile, self.target)
            if kind is not None:
                op.attributes["edge_levels"] = ir.DenseI64ArrayAttr.get(edge_levels(tile, kind))
