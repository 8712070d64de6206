"""Roller's tile program for row programs: reductions along the innermost loop, broadcast back.

A softmax or layer norm (one tile after ``roller-fuse``) reduces each row and then reads the
row again with the reduced value. Roller's rTile for such an operator cannot split the reduced
axis across thread blocks (the broadcast needs the whole reduction), so the block tile holds
whole rows: ``block_tile = [rows per block along the row loops..., N]``. What is left to choose
is how the row is spread over threads and how many rows a block takes, by the same rules the
construction policy applies to any tile (``policy.py``):

* memory transactions: each thread moves ``V`` contiguous elements at a time, ``V * bytes`` = the
  widest vector access (16 B), and the inner extent a thread handles is a multiple of ``V``;
* registers: a thread keeps its part of the row in registers between the reduction and the
  broadcast, ``C`` vectors; Roller grows the thread tile while it fits and the tile is not yet
  compute-bound. A row program is always memory-bound, so the growth stops at the point the
  measurements put it: two vectors per thread (``bench/simt/NOTES.md``, run 2: 16
  elements per thread beat 8 and 64 on softmax 8192x4096 and layer norm 16384x1024), fewer
  registers leaving room for more resident warps;
* execution units: threads per row ``G`` a power of two (shuffle trees), the block
  ``G x rows`` a multiple of warp x sub-partitions and at most ``max_threads_per_block``;
* scale-out: rows per block shrink until the grid fills every SM twice over.

The schedule is written on the root's loops (``TileOp.root``), as every schedule is: the
thread tile's last entry is the inner elements per thread, the block tile's leading entries the
rows per block. ``lowering/kernels/rows.py`` (``row_config``) reads exactly these.

An element-wise chain (a row program without reductions, the ``flat`` layout) gets
:func:`flat_schedule`: 256 threads, each loading ``C`` 16-byte vectors before it computes, ``C``
from the chip's latency-bandwidth product (``rows.flat_chunks``: the bytes in flight per SM that
stream at the copy limit), never from a measured benchmark row. The construction policy's
plain-tile estimate is not used for them: on the H200 it moved ``gelu(x + b) * s`` from 256 to
512 threads, which was 5.6% slower (``bench/results/issue9-before-after.md``).
"""

from __future__ import annotations

import math

from quartet.lowering.kernels import rows as row_kernels
from quartet.runtime.targets import Chip
from quartet.passes.roller.policy import Schedule

#: Vectors of the row one thread keeps in registers (module docstring, "registers").
VECTORS_PER_THREAD = 2
#: Threads per block a row program aims at (8 warps: two per sub-partition on sm_90).
TARGET_THREADS = 256


def _pow2_at_least(x: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(1, x))))


def _spread(rows_per_block: int, row_ranges: tuple[int, ...]) -> list[int]:
    """Rows per block as a block tile over the row loops, innermost first."""
    out = [1] * len(row_ranges)
    left = rows_per_block
    for d in reversed(range(len(row_ranges))):
        take = math.gcd(left, row_ranges[d]) if left > row_ranges[d] else left
        take = max(1, min(take, row_ranges[d]))
        out[d] = take
        left = max(1, left // take)
        if left == 1:
            break
    return out


def schedule(space: tuple[int, ...], vector: int, hw: Chip, *, num_inputs: int,
             inner_parallel: bool = True) -> Schedule:
    """The row program's schedule over its loops ``space`` (rows..., N) with vector width V.

    ``num_inputs``: inputs of the root op (one ``smem_padding`` entry each: a row program stages
    nothing in shared memory, so all are 0); ``inner_parallel``: whether the root's innermost
    loop is parallel (then the grid has an entry for it, 1: a block holds whole rows)."""
    row_ranges, n = tuple(space[:-1]), space[-1]
    rows = math.prod(row_ranges)
    vectors = max(1, math.ceil(n / vector))
    per_thread = min(VECTORS_PER_THREAD, vectors)
    lanes = min(hw.max_threads_per_block, _pow2_at_least(math.ceil(vectors / per_thread)))
    per_thread = math.ceil(vectors / lanes)
    threads = max(lanes, min(hw.max_threads_per_block, TARGET_THREADS))
    smallest = max(lanes, hw.warp_size)       # at least one whole warp
    # Scale out: fewer rows per block while the grid does not cover every unit twice.
    while threads > smallest and math.ceil(rows / (threads // lanes)) < 2 * hw.num_units:
        threads //= 2
    rows_per_block = max(1, threads // lanes)
    block_rows = _spread(min(rows_per_block, rows), row_ranges)
    block = tuple(block_rows) + (n,)
    thread = (1,) * len(row_ranges) + (min(n, per_thread * vector),)
    grid = tuple(math.ceil(r / b) for r, b in zip(row_ranges, block_rows)) + \
        ((1,) if inner_parallel else ())
    regs = 16 + 2 * per_thread * vector
    return Schedule(block_tile=block, thread_tile=thread, threads=threads, grid=grid,
                    smem_padding=(0,) * num_inputs, tensor_core=False, smem_bytes=0, stages=1,
                    regs_per_thread=regs, blocks_per_unit=0, estimate=0.0, policy="rows",
                    eps=0.0)


def flat_schedule(prog, hw: Chip, *, num_inputs: int,
                  inner_parallel: bool = True) -> Schedule | None:
    """The schedule of an element-wise chain (a row program ``prog`` without reductions), or
    None when the flat layout has no exact block tile over the root's loops (then the
    construction policy's plain tile is written and the lowering keeps the layout).

    Each block is ``threads x chunks x V`` consecutive elements of the iteration space, laid
    over the loops innermost first; the thread tile's last entry is ``chunks x V``. ``chunks``
    is what the lowering derives for these threads (``rows.flat_chunks``)."""
    space = tuple(prog.space)
    row_ranges, n = space[:-1], space[-1]
    total_vectors = prog.rows * prog.inner // prog.vector
    threads = min(hw.max_threads_per_block, row_kernels.FLAT_THREADS)
    if total_vectors < threads:
        return None             # under one block of work: the plain policy's small tile
    chunks = row_kernels.flat_chunks(hw, threads, row_kernels.stream_bytes(prog), total_vectors)
    if row_kernels.has_row_values(prog):
        chunks = 1
    per_thread = chunks * prog.vector
    elements = threads * per_thread
    if n >= elements:
        block_rows = [1] * len(row_ranges)
        inner = elements
    else:
        if n % per_thread or elements % n:
            return None
        block_rows = _spread(elements // n, row_ranges)
        inner = n
    if math.prod(block_rows) * inner != elements:
        return None
    block = tuple(block_rows) + (inner,)
    thread = (1,) * len(row_ranges) + (per_thread,)
    grid = tuple(math.ceil(r / b) for r, b in zip(row_ranges, block_rows))
    if inner_parallel:
        grid += (math.ceil(n / inner),)
    return Schedule(block_tile=block, thread_tile=thread, threads=threads, grid=grid,
                    smem_padding=(0,) * num_inputs, tensor_core=False, smem_bytes=0, stages=1,
                    regs_per_thread=16 + 2 * per_thread, blocks_per_unit=0,
                    estimate=0.0, policy="flat", eps=0.0)
