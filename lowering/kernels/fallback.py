"""The fallback block program: any single linalg op (plus a ``linalg.fill`` of its init).

Upstream transform dialect ``tile_using_forall`` by ``block_tile`` onto
``#gpu.block<linear_dim_*>``, again by ``thread_tile`` onto ``#gpu.thread<linear_dim_*>``,
one-shot bufferization, ``map_forall_to_blocks {generate_gpu_launch}`` and
``map_nested_forall_to_threads``. An op with no parallel loop (a 0-d op, a reduction of every
loop) becomes one thread of one block running the op's loops (:func:`build_serial_kernel`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mlir import ir
from mlir.dialects import func, gpu

from quartet.dialects import remap
from quartet.errors import QuartetError
from quartet.runtime.targets import Chip

from .common import (Unsupported, _is_empty, _iterators, _loc, _loop_ranges, _non_tensor_captures, _owner_op, chip_of, kernel_func, kernel_inputs)

# ---------------------------------------------------------------------------------------------
# The generic fallback: upstream transform-dialect tiling and mapping of any single linalg op


@dataclass
class FallbackPlan:
    op: ir.Operation            # the linalg op
    fills: list                 # linalg.fill ops producing its inits, inside the tile
    iterators: list
    ranges: tuple


def analyze_fallback(tile) -> FallbackPlan:
    ops = [o for o in tile.computation if o.name != "tensor.empty"]
    fills = [o for o in ops if o.name == "linalg.fill"]
    main = [o for o in ops if o.name != "linalg.fill"]
    if len(main) == 0 and len(fills) == 1:
        main, fills = fills, []
    if len(main) != 1 or not main[0].name.startswith("linalg."):
        raise Unsupported("the fallback takes one linalg op (and the linalg.fill of its inits)")
    op = main[0]
    yielded = list(tile.terminator.operands)
    if len(yielded) != len(op.results) or any(a != b for a, b in zip(yielded, op.results)):
        raise Unsupported("the fallback takes an op whose results the tile yields in order")
    inits = list(op.operands)[-len(op.results):]
    for f in fills:
        if f.results[0] not in inits or len(list(f.results[0].uses)) != 1:
            raise Unsupported("a linalg.fill that is not an init of the tile's op")
    for v in _non_tensor_captures(tile):
        owner = _owner_op(v)
        if owner is None or owner.name != "arith.constant":
            raise Unsupported("a non-constant scalar captured by the tile")
    iters, ranges = _generic_loops(op)
    return FallbackPlan(op, fills, iters, ranges)


def _generic_loops(op) -> tuple[list, tuple]:
    """Iterator types and loop ranges of any linalg op (named ops are generalized first)."""
    if op.name == "linalg.generic":
        return _iterators(op), _loop_ranges(op)
    from quartet.dialects import linalg_info
    try:
        info = linalg_info.info(op)
    except Exception as e:   # the scratch clone fails for ops reading outer values
        raise Unsupported(f"cannot analyse '{op.name}': {e}") from None
    return list(info.iterator_types), tuple(info.loop_ranges)


def _divisor_at_most(n: int, k: int) -> int:
    """The largest divisor of ``n`` that is at most ``k`` (at least 1)."""
    for d in range(min(n, max(1, k)), 0, -1):
        if n % d == 0:
            return d
    return 1


def fallback_tiles(tile, fb: FallbackPlan, chip: Chip) -> tuple[list, list, int]:
    """(block tile sizes, thread tile sizes, threads per block); 0 = not tiled (reductions)."""
    n = len(fb.ranges)
    par = [i for i, t in enumerate(fb.iterators) if t == "parallel"]
    if not par:
        raise Unsupported("a reduction of every loop (no parallel loop to map to threads)")
    bt, tt = tile.block_tile, tile.thread_tile
    where = _loc(tile.operation)
    if bt is not None and len(bt) == n and tt is not None and len(tt) == n:
        block = [bt[i] if i in par else 0 for i in range(n)]
        thread = [tt[i] if i in par else 0 for i in range(n)]
        for i in par:
            if thread[i] <= 0 or block[i] <= 0:
                raise QuartetError(f"'quartet.tile' block_tile {block[i]} and thread_tile "
                                   f"{thread[i]} on loop {i} must be positive", where)
            # Upstream mapping needs static tiles: a block tile that does not divide its loop
            # (Roller pads irregular extents) shrinks to the largest divisor below it, and a
            # thread tile that does not divide its block tile (Roller sizes them per memory
            # level independently) to their common divisor: more blocks or more threads.
            block[i] = _divisor_at_most(fb.ranges[i], block[i])
            thread[i] = math.gcd(block[i], thread[i])
    else:
        block = [0] * n
        thread = [0] * n
        budget = 256
        for i in reversed(par):
            size = _divisor_at_most(fb.ranges[i], max(1, budget))
            block[i], thread[i] = size, 1
            budget //= size
        for i in par:
            block[i] = block[i] or 1
            thread[i] = thread[i] or 1
    # Loops whose block tile is the whole loop are not tiled over blocks (size 0), and at most 3
    # loops are (x, y, z): outer ones beyond that stay whole per block, and each thread walks
    # them whole too (their thread tile is the loop).
    for i in par:
        if block[i] >= fb.ranges[i]:
            block[i] = 0
    tiled = [i for i in par if block[i]]
    for i in tiled[:-3]:
        block[i] = 0
        thread[i] = fb.ranges[i]
    if not tiled:        # one block: tile the outermost loop whole (an all-zero tiling asserts)
        block[par[0]] = fb.ranges[par[0]]
    extent = [block[i] or fb.ranges[i] for i in range(n)]
    for i in par:
        thread[i] = math.gcd(min(thread[i], extent[i]), extent[i])
    threads = math.prod(math.ceil(extent[i] / thread[i]) for i in par) if par else 1
    most = chip.max_threads_per_block
    if threads > most:
        raise QuartetError(f"'quartet.tile' needs {threads} threads per block (at most {most})",
                           where)
    # The schedule's thread count is a lower bound: fewer threads than thread tiles would leave
    # tiles unmapped, so the block takes one thread per thread tile (at most 1024, checked above).
    return block, thread, max(threads, min(tile.threads or 0, most))


def _mapping(kind: str, sizes: list) -> str:
    """Innermost tiled loop -> x. Blocks use x/y/z (``map_forall_to_blocks`` with
    ``generate_gpu_launch`` asserts on linear block ids in MLIR 22); threads use linear ids."""
    tiled = [i for i, s in enumerate(sizes) if s]
    if kind == "block":
        names = [f"#gpu.block<{'xyz'[len(tiled) - 1 - k]}>" for k in range(len(tiled))]
    else:
        names = [f"#gpu.thread<linear_dim_{len(tiled) - 1 - k}>" for k in range(len(tiled))]
    return "[" + ", ".join(names) + "]"


def _fallback_function(tile, fb: FallbackPlan, name: str) -> tuple[ir.Module, list]:
    """``func @name`` on memrefs computing ``fb.op`` on tensors (inputs from ``to_tensor``,
    results materialized in the output memrefs); the ops to fuse with it (fills, copies)."""
    from mlir.dialects import bufferization, linalg

    module = ir.Module.create()
    fn, ins, outs = kernel_func(module, name, tile)
    with ir.InsertionPoint(fn.entry_block):
        env = {}
        for v, m in zip(kernel_inputs(tile), ins):
            env[v] = bufferization.to_tensor(v.type, m, restrict=True)
        for v in _non_tensor_captures(tile) + [v for v in tile.inputs if _is_empty(v)]:
            env[v] = _owner_op(v).clone().results[0]
        for o in tile.computation:       # tensor.empty inside the tile (a pooling window)
            if o.name == "tensor.empty":
                env[o.results[0]] = o.clone().results[0]
        inits = list(fb.op.operands)[-len(fb.op.results):]
        fills = {f.results[0]: f for f in fb.fills}
        fused = ["linalg.fill"] if fb.fills else []
        for k, init in enumerate(inits):
            out_tensor = bufferization.to_tensor(tile.results[k].type, outs[k], restrict=True,
                                                 writable=True)
            if init in fills:
                fill = fills[init].clone()
                fill.operands[len(fill.operands) - 1] = out_tensor
                remap(fill, env)
                env[init] = fill.results[0]
            elif init not in env or _is_empty(init):
                # a tensor.empty (in the tile or captured from the host): only its shape is
                # read, so the op writes straight into the output
                env[init] = out_tensor
            else:                     # an input: copied into the output, fused like a fill
                env[init] = linalg.copy(env[init], outs=[out_tensor])
                fused.append("linalg.copy")
        op = fb.op.clone()
        remap(op, env)
        for k, result in enumerate(op.results):
            bufferization.MaterializeInDestinationOp(None, result, outs[k], restrict=True,
                                                     writable=True)
        func.ReturnOp([])
    return module, fused


def build_serial_kernel(tile, target, fb: FallbackPlan | None = None, name: str = "kernel"):
    """An op with no parallel loop -> one block of one thread running its loops.

    Scalars of a host loop or branch (a step counter, a predicate) and reductions of every loop
    (``mean(x) > t``) have no parallel loop for threads: bufferize, lower the op to loops and
    wrap the function body in a 1x1 ``gpu.launch``."""
    from mlir.passmanager import PassManager

    chip_of(target)
    fb = fb or analyze_fallback(tile)
    module, _ = _fallback_function(tile, fb, name)
    PassManager.parse("builtin.module(one-shot-bufferize{bufferize-function-boundaries=1}, "
                      "func.func(convert-linalg-to-loops, canonicalize, cse))")\
        .run(module.operation)
    _erase_self_copies(module)
    fn = next(o for o in module.body.operations if o.operation.name == "func.func")
    block = fn.regions[0].blocks[0]
    ops = list(block.operations)
    body_ops, ret = ops[:-1], ops[-1]
    allocs = [o for o in body_ops if o.operation.name == "memref.alloc"]
    if allocs:
        raise Unsupported("a serial kernel that needs a temporary buffer")
    with ir.InsertionPoint(ret), ret.location:
        launch = gpu.LaunchOp((1, 1, 1), (1, 1, 1))
        kbody = launch.regions[0].blocks[0]
        with ir.InsertionPoint(kbody):
            term = gpu.TerminatorOp()
    for o in body_ops:
        o.operation.move_before(term)
    return module, ([0] * len(fb.ranges), [0] * len(fb.ranges), 1)


def build_fallback_kernel(tile, target, fb: FallbackPlan | None = None, name: str = "kernel"):
    """One linalg op -> tile_using_forall (blocks, threads) -> bufferize -> gpu.launch.

    An op with no parallel loop (a 0-d op, a reduction of every loop) becomes one thread of one
    block running the op's loops (:func:`build_serial_kernel`)."""
    target = chip_of(target)
    fb = fb or analyze_fallback(tile)
    if "parallel" not in fb.iterators:
        return build_serial_kernel(tile, target, fb, name)
    block, thread, threads = fallback_tiles(tile, fb, target)
    module, fused = _fallback_function(tile, fb, name)
    sizes_b = ", ".join(map(str, block))
    sizes_t = ", ".join(map(str, thread))
    fuse_b = fuse_t = ""
    if fused:
        names = ", ".join(f'"{n}"' for n in sorted(set(fused)))
        fuse_b = (f'%fill = transform.structured.match ops{{[{names}]}} in %arg0 '
                  ': (!transform.any_op) -> !transform.any_op\n'
                  '    %fill_b, %f1b = transform.structured.fuse_into_containing_op %fill into '
                  '%forall_b : (!transform.any_op, !transform.any_op) -> '
                  '(!transform.any_op, !transform.any_op)')
        fuse_t = ('%fill_t, %f1t = transform.structured.fuse_into_containing_op %fill_b into '
                  '%forall_t : (!transform.any_op, !transform.any_op) -> '
                  '(!transform.any_op, !transform.any_op)')
    script = f"""
module attributes {{transform.with_named_sequence}} {{
  transform.named_sequence @__transform_main(%arg0: !transform.any_op {{transform.consumed}}) {{
    %op = transform.structured.match ops{{["{fb.op.name}"]}} in %arg0
      : (!transform.any_op) -> !transform.any_op
    %tiled_b, %forall_b = transform.structured.tile_using_forall %op tile_sizes [{sizes_b}]
      (mapping = {_mapping("block", block)}) : (!transform.any_op) -> (!transform.any_op, !transform.any_op)
    {fuse_b}
    %tiled_t, %forall_t = transform.structured.tile_using_forall %tiled_b tile_sizes [{sizes_t}]
      (mapping = {_mapping("thread", thread)}) : (!transform.any_op) -> (!transform.any_op, !transform.any_op)
    {fuse_t}
    %bufferized = transform.bufferization.one_shot_bufferize %arg0
      {{bufferize_function_boundaries = true}} : (!transform.any_op) -> !transform.any_op
    %fn = transform.structured.match ops{{["func.func"]}} in %bufferized
      : (!transform.any_op) -> !transform.any_op
    %launch = transform.gpu.map_forall_to_blocks %fn {{generate_gpu_launch}}
      : (!transform.any_op) -> !transform.any_op
    transform.gpu.map_nested_forall_to_threads %launch block_dims = [{threads}, 1, 1]
      : (!transform.any_op) -> !transform.any_op
    transform.yield
  }}
}}"""
    from mlir.dialects.transform import interpreter

    schedule = ir.Module.parse(script)
    try:
        interpreter.apply_named_sequence(module.operation,
                                         schedule.body.operations[0], schedule.operation)
    except (ir.MLIRError, ValueError) as e:
        first = e.error_diagnostics[0].message if getattr(e, "error_diagnostics", None) else e
        lines = [ln for ln in str(first).splitlines() if ln.strip()]
        detail = lines[-1] if len(lines) > 1 and "Diagnostic" in lines[-1] else \
            " / ".join(lines[:2])
        raise Unsupported(f"transform schedule failed: {detail}") from None
    from mlir.passmanager import PassManager
    PassManager.parse("builtin.module(func.func(convert-linalg-to-loops, canonicalize, cse))")\
        .run(module.operation)
    _erase_self_copies(module)
    return module, (block, thread, threads)


def _erase_self_copies(module: ir.Module) -> None:
    """Bufferizing ``tensor.parallel_insert_slice`` into the slice it came from leaves
    ``memref.copy %x, %x``; it does nothing and costs a loop per thread."""
    found = []

    def visit(op):
        op = op.operation
        if op.name == "memref.copy" and op.operands[0] == op.operands[1]:
            found.append(op)
        return ir.WalkResult.ADVANCE

    module.operation.walk(visit)
    for op in found:
        op.erase()


