"""Indexing-map analysis: data tiles, memory footprint and memory traffic of a candidate tile.

Roller (OSDI'22, section 3: rTile) derives everything it knows about a tile from the index
expressions of the computation: the *data tile* of each operand (the region of that tensor a tile
of the iteration space touches), the tile's *memory footprint* F(T) (bytes of its input data
tiles, which must fit the memory level the tile lives in) and the *memory traffic* Q(T) of running
the whole computation tile by tile (bytes moved from the level below). The data-reuse score of
section 1.3 of the paper notes is S_i = (Q(T) - Q(T'_i)) / (F(T'_i) - F(T)).

Here the index expressions are the linalg indexing maps that ``dialects/linalg_info.py`` returns
as text, one tuple of result expressions per operand. Supported expressions are sums of ``dK``,
``dK * c`` (or ``c * dK``) and integer constants, e.g. ``d2 * 2 + d5`` for a strided convolution
window; ``floordiv``, ``mod``, ``ceildiv`` and symbols raise :class:`MapError`. For a sum
``c_1 d_1 + ... + c_n d_n + c_0`` and a tile with extent ``t_k`` along loop ``k`` the data
tile's extent along that dimension is ``sum |c_k| (t_k - 1) + 1`` (a window of stride ``c``),
clipped to the tensor's dimension.

A tile is a tuple with one extent per loop of the op (``LinalgInfo.loop_ranges`` order). For
reduction loops the extent is the reduction step staged per iteration. Traffic counts each input
data tile over the *full* reduction range (the tile loops over all steps), and each output tile
once (written), as in the artifact's ``MemWorkload``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import cached_property

from quartet.dialects.linalg_info import LinalgInfo


class MapError(ValueError):
    """An indexing expression outside the supported form (sums of dK, dK * c, constants)."""


_BYTES = {"f64": 8, "f32": 4, "f16": 2, "bf16": 2, "i64": 8, "i32": 4, "i16": 2, "i8": 1,
          "i1": 1, "index": 8, "f8E4M3FN": 1, "f8E5M2": 1}


def element_bytes(type_name: str) -> int:
    """Bytes of one element of an MLIR scalar type given as text ("f16", "i32", ...)."""
    if type_name in _BYTES:
        return _BYTES[type_name]
    m = re.fullmatch(r"[iuf](\d+)", type_name)
    if m:
        return max(1, int(m.group(1)) // 8)
    raise MapError(f"unsupported element type '{type_name}'")


@dataclass(frozen=True)
class AffineSum:
    """``sum coeff * d_loop + const``: one result expression of an indexing map."""

    terms: tuple[tuple[int, int], ...]   # (loop, coefficient), coefficient != 0
    const: int

    def extent(self, tile) -> int:
        return sum(abs(c) * (tile[loop] - 1) for loop, c in self.terms) + 1

    @property
    def loops(self) -> tuple[int, ...]:
        return tuple(loop for loop, _ in self.terms)


_TOKEN = re.compile(r"\s*(?:(d\d+)|(\d+)|([-+*()])|([A-Za-z_]\w*))")


def parse_expr(text: str) -> AffineSum:
    """Parse one affine result expression as MLIR prints it (``d0``, ``d2 * 2 + d5``, ...)."""
    tokens = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise MapError(f"cannot read indexing expression '{text}'")
        pos = m.end()
        dim, num, punct, word = m.groups()
        if word is not None:
            raise MapError(f"indexing expression '{text}' uses '{word}' (only sums of dK, "
                           f"dK * c and constants are supported)")
        if punct in ("(", ")"):
            raise MapError(f"indexing expression '{text}' is not a flat sum (only sums of dK, "
                           f"dK * c and constants are supported)")
        tokens.append(("d", int(dim[1:])) if dim else ("n", int(num)) if num else ("p", punct))
    coeffs: dict[int, int] = {}
    const = 0
    i = 0
    sign = 1
    expect_term = True
    while i < len(tokens):
        kind, value = tokens[i]
        if expect_term:
            if kind == "p" and value in "+-":
                sign = sign * (-1 if value == "-" else 1)
                i += 1
                continue
            factor, loop = sign, None
            # A product of atoms: dK, integers, joined by '*'.
            while True:
                kind, value = tokens[i] if i < len(tokens) else ("end", None)
                if kind == "d":
                    if loop is not None:
                        raise MapError(f"indexing expression '{text}' is not affine")
                    loop = value
                elif kind == "n":
                    factor *= value
                elif kind == "p" and value == "-":
                    factor = -factor      # 'd0 * -2'
                    i += 1
                    continue
                else:
                    raise MapError(f"cannot read indexing expression '{text}'")
                i += 1
                if i < len(tokens) and tokens[i] == ("p", "*"):
                    i += 1
                    continue
                break
            if loop is None:
                const += factor
            else:
                coeffs[loop] = coeffs.get(loop, 0) + factor
            sign = 1
            expect_term = False
        else:
            if kind != "p" or value not in "+-":
                raise MapError(f"cannot read indexing expression '{text}'")
            sign = -1 if value == "-" else 1
            expect_term = True
            i += 1
    if expect_term and tokens:
        raise MapError(f"cannot read indexing expression '{text}'")
    terms = tuple(sorted((loop, c) for loop, c in coeffs.items() if c != 0))
    return AffineSum(terms, const)


@dataclass(frozen=True)
class Operand:
    """One operand of the op as the tile analysis sees it."""

    index: int                        # position among the op's operands
    is_input: bool
    dims: tuple[AffineSum, ...]       # one per tensor dimension (empty for a scalar)
    shape: tuple[int, ...]
    dtype: str
    elem_bytes: int

    @cached_property
    def loops(self) -> frozenset[int]:
        return frozenset(loop for d in self.dims for loop in d.loops)

    @cached_property
    def positions(self) -> dict[int, int]:
        """For each loop it uses: the last (innermost) dimension whose expression names it."""
        return {loop: i for i, d in enumerate(self.dims) for loop in d.loops}

    @property
    def bytes(self) -> int:
        return math.prod(self.shape) * self.elem_bytes


class OpModel:
    """The loops and operands of one linalg op, with the tile quantities Roller needs."""

    def __init__(self, info: LinalgInfo):
        self.info = info
        self.ranges: tuple[int, ...] = tuple(info.loop_ranges)
        self.num_loops = len(self.ranges)
        self.parallel: tuple[int, ...] = tuple(info.parallel_loops)
        self.reduction: tuple[int, ...] = tuple(info.reduction_loops)
        self.is_reduction = tuple(t == "reduction" for t in info.iterator_types)
        operands = []
        for i, (exprs, shape, dtype) in enumerate(zip(info.indexing_maps, info.operand_shapes,
                                                      info.element_types)):
            dims = tuple(parse_expr(e) for e in exprs)
            if len(dims) != len(shape):
                raise MapError(f"operand #{i} has {len(shape)} dimensions but its indexing map "
                               f"has {len(dims)} results")
            operands.append(Operand(i, i < info.num_inputs, dims, tuple(shape), dtype,
                                    element_bytes(dtype)))
        self.operands = tuple(operands)
        self.inputs = tuple(o for o in operands if o.is_input)
        self.outputs = tuple(o for o in operands if not o.is_input)
        self.flops_per_point = _flops_per_point(info.payload)
        # Per operand: (size, ((loop, |coeff|), ...)) per dimension, for the hot loops below.
        self._dims = tuple(tuple((size, tuple((loop, abs(c)) for loop, c in d.terms))
                                 for d, size in zip(o.dims, o.shape)) for o in operands)
        self._cache: dict = {}

    # -- data tiles ------------------------------------------------------------------------

    def data_tile(self, operand: Operand, tile) -> tuple[int, ...]:
        """Extent of ``operand``'s data tile along each of its dimensions."""
        out = []
        for size, terms in self._dims[operand.index]:
            e = 1
            for loop, c in terms:
                e += c * (tile[loop] - 1)
            out.append(size if e > size else e)
        return tuple(out)

    def tile_bytes(self, operand: Operand, tile, pad: int = 0, sector: int = 0) -> int:
        """Bytes of ``operand``'s data tile; ``pad`` elements added to the innermost dimension,
        rows rounded up to ``sector`` bytes when given (the memory transaction)."""
        ext = self.data_tile(operand, tile)
        if not ext:
            return operand.elem_bytes
        row = (ext[-1] + pad) * operand.elem_bytes
        if sector:
            row = -(-row // sector) * sector
        return math.prod(ext[:-1]) * row

    def footprint(self, tile, padding=None) -> int:
        """F(T): bytes of the input data tiles of one tile step (reduction loops at their step),
        with ``padding[i]`` elements appended to the innermost dimension of input ``i``."""
        key = ("f", tuple(tile), tuple(padding) if padding else None)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        total = 0
        for i, operand in enumerate(self.inputs):
            total += self.tile_bytes(operand, tile, padding[i] if padding else 0)
        self._cache[key] = total
        return total

    def num_tiles(self, tile, space=None) -> int:
        space = space or self.ranges
        n = 1
        for loop in self.parallel:
            n *= -(-space[loop] // tile[loop])
        return n

    def traffic(self, tile, space=None, sector: int = 0) -> int:
        """Q(T): bytes moved from the level below when the computation over ``space`` (the whole
        iteration space by default) runs tile by tile: every tile reads its input data tiles over
        the full reduction range of ``space`` and writes its output tiles once."""
        key = ("q", tuple(tile), tuple(space) if space else None, sector)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        space = space or self.ranges
        full = tuple(space[k] if self.is_reduction[k] else tile[k] for k in range(self.num_loops))
        per_tile = 0
        for operand in self.inputs:
            per_tile += self.tile_bytes(operand, full, 0, sector)
        for operand in self.outputs:
            per_tile += self.tile_bytes(operand, full, 0, sector)
        result = self._cache[key] = self.num_tiles(tile, space) * per_tile
        return result

    def compulsory_bytes(self) -> int:
        """Bytes every schedule must move at least: each input read once, each output written."""
        return sum(o.bytes for o in self.operands)

    def flops(self, tile) -> int:
        """Arithmetic operations of one tile (payload ops per iteration-space point)."""
        return math.prod(tile) * self.flops_per_point

    def reuse_score(self, tile, grown, space=None) -> float:
        """Roller's S_i = (Q(T) - Q(T')) / (F(T') - F(T)) for growing ``tile`` into ``grown``."""
        dq = self.traffic(tile, space) - self.traffic(grown, space)
        df = self.footprint(grown) - self.footprint(tile)
        if df <= 0:
            return math.inf if dq > 0 else 0.0
        return dq / df

    # -- structure -------------------------------------------------------------------------

    def contiguous_loop(self, operand: Operand) -> int | None:
        """The loop that walks ``operand``'s innermost (contiguous) dimension: of the loops in
        that dimension's expression, the one with the largest range."""
        if not operand.dims or not operand.dims[-1].terms:
            return None
        return max(operand.dims[-1].loops, key=lambda k: (self.ranges[k], k))

    def padded_ranges(self, tile) -> tuple[int, ...]:
        """Loop ranges rounded up to a multiple of the tile (what a padded grid covers)."""
        return tuple(-(-r // t) * t for r, t in zip(self.ranges, tile))


_NOT_ARITHMETIC = ("linalg.yield", "linalg.index", "arith.extf", "arith.truncf", "arith.extsi",
                   "arith.extui", "arith.trunci", "arith.sitofp", "arith.uitofp", "arith.fptosi",
                   "arith.fptoui", "arith.bitcast", "arith.index_cast", "arith.constant")


def _flops_per_point(payload) -> int:
    return max(1, sum(1 for name in payload if name not in _NOT_ARITHMETIC))


def is_padding_ok(extent: int, tile: int, eps: float) -> bool:
    """Roller's tensor-shape rule: pad ``extent`` up to a multiple of ``tile`` only if the padded
    size is within ``(1 + eps)`` of the original: ``ceil(N/S) * S <= N * (1 + eps)``."""
    return -(-extent // tile) * tile <= extent * (1.0 + eps) + 1e-9
