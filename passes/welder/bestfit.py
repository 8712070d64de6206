"""Best-fit placement of the tiles that live in shared memory at once (Welder's footprint).

Welder (OSDI'23, section 4.1; the artifact's ``bestfit.py``) sizes a fused kernel's shared
memory by placing each tile that lives there, in topological order, in the smallest free hole
that holds it, and freeing it after its last consumer; the footprint is the highest address
used. Tiles whose lives do not overlap share bytes, which a plain sum would count twice.

A request is ``(size, first, last)``: bytes, and the steps (positions in the group's program)
of its producer and its last consumer; a tile is live on ``[first, last]``.
"""

from __future__ import annotations

from dataclasses import dataclass

ALIGN = 128          # bytes: a swizzled tensor-core tile starts on a 128-byte boundary


@dataclass(frozen=True)
class Placement:
    offsets: tuple[int, ...]      # per request
    peak: int                     # bytes


def _align(n: int, a: int = ALIGN) -> int:
    return -(-n // a) * a


def best_fit(requests: list[tuple[int, int, int]], align: int = ALIGN) -> Placement:
    """Offsets of ``requests`` by best fit in the order of their first step (ties: larger
    first), freeing each after its last step."""
    order = sorted(range(len(requests)), key=lambda i: (requests[i][1], -requests[i][0], i))
    free: list[tuple[int, int]] = []            # (offset, size) holes below the top
    live: list[tuple[int, int, int]] = []       # (last, offset, size)
    top = 0
    peak = 0
    offsets = [0] * len(requests)
    for i in order:
        size, first, _last = requests[i]
        size = _align(max(size, 1), align)
        for entry in [e for e in live if e[0] < first]:
            live.remove(entry)
            free.append((entry[1], entry[2]))
            free = _merge(free)
        while free and free[-1][0] + free[-1][1] == top:    # a hole at the top lowers it
            off, sz = free.pop()
            top = off
        best = None
        for k, (off, sz) in enumerate(free):
            if sz >= size and (best is None or sz < free[best][1]):
                best = k
        if best is not None:
            off, sz = free.pop(best)
            if sz > size:
                free.append((off + size, sz - size))
                free = _merge(free)
        else:
            off = top
            top += size
        offsets[i] = off
        live.append((requests[i][2], off, size))
        peak = max(peak, off + size)
    return Placement(tuple(offsets), peak)


def _merge(holes: list[tuple[int, int]]) -> list[tuple[int, int]]:
    holes = sorted(holes)
    out: list[tuple[int, int]] = []
    for off, size in holes:
        if out and out[-1][0] + out[-1][1] == off:
            out[-1] = (out[-1][0], out[-1][1] + size)
        else:
            out.append((off, size))
    return out
