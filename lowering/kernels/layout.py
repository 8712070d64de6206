"""Strided layouts: where a tensor seen through views and transposes lives in its buffer.

A fused kernel reads its operands straight from the buffers of the group's inputs, whatever
views and transposes stood between (attention's ``q``, ``k``, ``v`` are slices of a permuted
reshape of the qkv projection), and writes its result into the group's output buffer through the
transpose that follows it. A :class:`Layout` says where element ``(i_0, ..., i_r)`` of such a
tensor is: each dimension is a list of *modes* ``(size, stride)``, outer first, whose sizes
multiply to the dimension's extent (a dimension that merged non-adjacent dimensions, such as
``batch x heads`` after a transpose, has several), plus a constant element offset:

    offset = base + sum_d sum_k digit_k(i_d) * stride_k

where ``digit_k`` are the mixed-radix digits of ``i_d`` over the dimension's mode sizes. The
layout of a row-major buffer has one mode per dimension. Views act on layouts exactly: an
``expand_shape`` splits modes, a ``collapse_shape`` concatenates them (merging a pair
``(a, b*s), (b, s)`` into ``(a*b, s)``), a transpose permutes dimensions, an ``extract_slice``
adds its offset and scales strides. A split that does not fall on mode boundaries (nor divides
one mode) is refused (:class:`LayoutError`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .gemm_ir import Emitter, Ix

Mode = tuple[int, int]


class LayoutError(ValueError):
    """A view this layout algebra cannot follow."""


def _merge(modes: list[Mode]) -> tuple[Mode, ...]:
    out: list[Mode] = []
    for size, stride in modes:
        if size == 1:
            continue
        if out and out[-1][1] == size * stride:
            out[-1] = (out[-1][0] * size, stride)
        else:
            out.append((size, stride))
    return tuple(out) or ((1, 0),)


@dataclass(frozen=True)
class Layout:
    dims: tuple[tuple[Mode, ...], ...]
    offset: int = 0

    @staticmethod
    def row_major(shape) -> "Layout":
        strides, acc = [], 1
        for d in reversed(shape):
            strides.append(acc)
            acc *= d
        strides.reverse()
        return Layout(tuple(_merge([(s, st)]) for s, st in zip(shape, strides)))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(math.prod(s for s, _ in modes) for modes in self.dims)

    def stride(self, d: int) -> int | None:
        """The one stride of dimension ``d``, or None when it has several modes."""
        modes = [m for m in self.dims[d] if m[0] > 1]
        if not modes:
            return 0
        return modes[0][1] if len(modes) == 1 else None

    # -- views ---------------------------------------------------------------------------
    def expand(self, groups: list[list[int]], shape) -> "Layout":
        """The layout of ``expand_shape`` (each dim split into the sizes of its group)."""
        dims: list = [None] * len(shape)
        for src, group in enumerate(groups):
            modes = list(self.dims[src])
            for d in group:
                need = shape[d]
                take: list[Mode] = []
                while need > 1:
                    if not modes:
                        raise LayoutError("expand_shape splits a dimension past its modes")
                    size, stride = modes[0]
                    if size == 1:
                        modes.pop(0)
                        continue
                    if size <= need and need % size == 0:
                        take.append(modes.pop(0))
                        need //= size
                    elif size > need and size % need == 0:
                        take.append((need, stride * (size // need)))
                        modes[0] = (size // need, stride)
                        need = 1
                    else:
                        raise LayoutError("expand_shape splits a mode unevenly")
                dims[d] = _merge(take)
            if any(s > 1 for s, _ in modes):
                raise LayoutError("expand_shape leaves modes unused")
        return Layout(tuple(dims), self.offset)

    def collapse(self, groups: list[list[int]]) -> "Layout":
        return Layout(tuple(_merge([m for d in g for m in self.dims[d]]) for g in groups),
                      self.offset)

    def permute(self, perm: list[int]) -> "Layout":
        """``linalg.transpose`` with ``permutation``: result dim i is input dim perm[i]."""
        return Layout(tuple(self.dims[p] for p in perm), self.offset)

    def unpermute(self, perm: list[int]) -> "Layout":
        """The inverse: the layout of a transpose's input from its result's layout."""
        dims: list = [None] * len(perm)
        for i, p in enumerate(perm):
            dims[p] = self.dims[i]
        return Layout(tuple(dims), self.offset)

    def slice(self, offsets, sizes, strides, result_rank: int) -> "Layout":
        dropped = len(sizes) - result_rank
        dims, offset = [], self.offset
        for d, (o, s, st) in enumerate(zip(offsets, sizes, strides)):
            modes = [m for m in self.dims[d] if m[0] > 1]
            extent = self.shape[d]
            if (o, s, st) != (0, extent, 1):
                if len(modes) > 1:
                    raise LayoutError("a slice of a dimension with several modes")
                stride = modes[0][1] if modes else 0
                offset += o * stride
                modes = [(s, stride * st)]
            if s == 1 and dropped > 0:
                dropped -= 1
                continue
            dims.append(_merge(modes))
        return Layout(tuple(dims), offset)

    # -- code ----------------------------------------------------------------------------
    def emit_offset(self, em: Emitter, index: list[Ix]) -> Ix:
        """Element offset of ``index`` (one value per dimension), folded where static."""
        total: Ix = self.offset
        for i, modes in zip(index, self.dims):
            q = i
            for k in range(len(modes) - 1, -1, -1):
                size, stride = modes[k]
                digit = q if k == 0 else em.rem(q, size)
                total = em.add(total, em.mul(digit, stride))
                if k > 0:
                    q = em.div(q, size)
        return total

    def divisible(self, g: int, skip_inner: bool = True) -> bool:
        """Whether every stride but the innermost dimension's (and the offset) is a multiple
        of ``g``: rows of ``g``-element vectors then start aligned."""
        dims = self.dims[:-1] if skip_inner else self.dims
        return self.offset % g == 0 and all(st % g == 0 for modes in dims
                                            for size, st in modes if size > 1)
