"""What a configured ``quartet.tile`` asks of a GEMM kernel: the problem in GEMM terms.

Roller (OSDI'22) builds every tensor-core operator as a tile of one GEMM-shaped iteration space;
this module reads a tile and says how its operands map onto ``C[b, m, n] (+)= sum_k A[b, m, k] *
B[b, k, n]``:

* matmul-like ops (``linalg.matmul`` with or without ``indexing_maps``, ``linalg.batch_matmul``,
  a ``linalg.generic`` with projected-permutation maps and a multiply-add body): every operand is
  an affine function of (b, m, n, k) with static strides (transposed operands are only other
  strides).
* ``linalg.conv_2d_nchw_fchw``: an implicit GEMM with M = filters, N = output pixels (images,
  rows, columns flattened), K = (channel, kernel row, kernel column). The filter is the affine A
  operand; B is the input gathered in place (im2col indexing inside the kernel, never
  materialized): its offset splits into a part of k and a part of the pixel; the output offset
  likewise splits into a part of the filter and a part of the pixel. Padding is a ``tensor.pad``
  before the tile (what torch-mlir emits), so the convolution itself reads no out-of-range input.

A tile may also hold a ``linalg.fill`` of the root's init (the accumulator then starts from that
scalar) and, after the root, element-wise ``linalg.generic`` ops over its result (Welder-fused
epilogues: cast, bias, activation); they are evaluated per output element in the kernel.
Anything else is refused with a reason (``analyze`` returns a string).

Every operand's element offset is written ``row_part(r) + col_part(c)`` (plus a batch part), so
that a kernel computes per-row and per-column terms once per thread and adds them; for affine
operands the parts are ``r * stride``. ``granule`` is the longest vector (in elements, at most
16 bytes) that a loader may move at once along the operand's contiguous dimension.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from mlir import ir

from quartet.dialects import defining_op, linalg_info

from .gemm_ir import Emitter, Ix, bytes_of

FLOAT_TYPES = ("f16", "bf16", "f32")


@dataclass(frozen=True)
class ConvGeom:
    """Geometry of an NCHW/FCHW convolution without padding (the input is already padded)."""

    n: int
    c: int
    h: int
    w: int
    f: int
    kh: int
    kw: int
    oh: int
    ow: int
    stride: tuple[int, int]
    dilation: tuple[int, int]

    @property
    def pixels(self) -> int:
        return self.oh * self.ow

    @property
    def is_pointwise(self) -> bool:
        return (self.kh, self.kw, self.stride, self.oh, self.ow) == (1, 1, (1, 1), self.h, self.w)


@dataclass(frozen=True)
class Operand:
    """How one matrix operand (or the output) sits in memory.

    ``kind``: ``affine`` (offset = b*sb + r*sr + c*sc), ``im2col`` (B of a convolution:
    rows = (channel, kernel row, kernel column), cols = output pixels), ``conv_out`` (the output
    of a convolution: rows = filters, cols = output pixels).
    """

    arg: int                   # kernel argument position
    dtype: str
    rows: int
    cols: int
    kind: str = "affine"
    strides: tuple[int, int, int] = (0, 0, 0)   # (batch, row, col) for affine
    conv: ConvGeom | None = None

    @property
    def contiguous(self) -> str | None:
        """Which of ``row``/``col`` has unit stride (None: neither)."""
        if self.kind == "affine":
            if self.strides[2] == 1:
                return "col"
            if self.strides[1] == 1:
                return "row"
            return None
        if self.kind == "conv_out":
            return "col"
        # im2col: consecutive pixels are consecutive in memory only for a pointwise conv
        return "col" if self.conv.is_pointwise else None

    @property
    def granule(self) -> int:
        """Largest power-of-two run (elements, <= 16 bytes) aligned along the contiguous dim."""
        limit = 16 // bytes_of(self.dtype)
        if self.contiguous is None:
            return 1
        if self.kind == "affine":
            other = [self.strides[0],
                     self.strides[1] if self.contiguous == "col" else self.strides[2]]
            g = limit
            while g > 1 and any(s % g for s in other):
                g //= 2
            return g
        run = self.conv.pixels     # runs of pixels are contiguous within one image
        g = limit
        while g > 1 and run % g:
            g //= 2
        return g

    def k_stride(self, k_is_row: bool) -> int | None:
        """Elements between consecutive K indices when the offset is affine in K, else None."""
        if self.kind == "affine":
            return self.strides[1] if k_is_row else self.strides[2]
        if self.kind == "im2col" and self.conv.is_pointwise:
            return self.conv.pixels
        return None

    def row_part(self, em: Emitter, r: Ix) -> Ix:
        if self.kind == "affine":
            return em.mul(r, self.strides[1])
        cv = self.conv
        if self.kind == "conv_out":
            return em.mul(r, cv.pixels)
        # im2col row k = (channel, kernel row, kernel column)
        kk = cv.kh * cv.kw
        ch, rest = em.div(r, kk), em.rem(r, kk)
        ky, kx = em.div(rest, cv.kw), em.rem(rest, cv.kw)
        return em.add(em.add(em.mul(ch, cv.h * cv.w), em.mul(ky, cv.dilation[0] * cv.w)),
                      em.mul(kx, cv.dilation[1]))

    def col_part(self, em: Emitter, c: Ix) -> Ix:
        if self.kind == "affine":
            return em.mul(c, self.strides[2])
        cv = self.conv
        img, pix = em.div(c, cv.pixels), em.rem(c, cv.pixels)
        if self.kind == "conv_out":
            return em.add(em.mul(img, cv.f * cv.pixels), pix)
        if cv.is_pointwise:
            return em.add(em.mul(img, cv.c * cv.pixels), pix)
        oy, ox = em.div(pix, cv.ow), em.rem(pix, cv.ow)
        return em.add(em.mul(img, cv.c * cv.h * cv.w),
                      em.add(em.mul(oy, cv.stride[0] * cv.w), em.mul(ox, cv.stride[1])))

    def batch_part(self, em: Emitter, b: Ix) -> Ix:
        return em.mul(b, self.strides[0]) if self.kind == "affine" else 0


@dataclass
class Epilogue:
    """Element-wise work between the accumulator and the stored output (see module docstring)."""

    init: str = "zero"                  # "zero" | "scalar" | "tensor"
    init_arg: int | None = None         # kernel arg of the init scalar / tensor
    init_const: float | None = None     # a literal fill value
    init_operand: Operand | None = None
    root_type: str = "f32"              # element type of the root op's result
    # Per epilogue linalg.generic, in order: (op, inputs), inputs[i] = ("chain", None) for the
    # previous result, ("tensor", (arg, map dims)) or ("scalar", arg) for a tile input,
    # ("const", value) for a scalar arith.constant (rebuilt in the kernel).
    generics: list = field(default_factory=list)


@dataclass
class GemmProblem:
    """A tile in GEMM terms. ``loops`` maps each root loop to its GEMM role."""

    kind: str                  # "matmul" | "conv2d"
    op_name: str
    batch: int
    m: int
    n: int
    k: int
    a: Operand
    b: Operand
    out: Operand
    epilogue: Epilogue
    loop_roles: tuple[str, ...]            # per root loop: b|m|n|k, conv: n_img|m|oh|ow|c|kh|kw
    out_dims: tuple[str, ...]              # per output dim: its loop role
    out_shape: tuple[int, ...]
    arg_types: list                        # kernel argument types (memref or scalar), in order
    arg_kinds: list                        # "input" | "output" per kernel argument
    n_inputs: int
    location: str | None = None

    @property
    def in_dtype(self) -> str:
        return self.a.dtype


def _strides(shape) -> list[int]:
    out, acc = [], 1
    for d in reversed(shape):
        out.append(acc)
        acc *= d
    return list(reversed(out))


_DIM = re.compile(r"^d(\d+)$")
_CONV = re.compile(r"^d(\d+)(?: \* (\d+))? \+ d(\d+)(?: \* (\d+))?$")


def _dims(exprs) -> list[int] | None:
    out = []
    for e in exprs:
        m = _DIM.match(e)
        if not m:
            return None
        out.append(int(m.group(1)))
    return out


def _scalar_constant(value: ir.Value) -> bool:
    owner = defining_op(value)
    return (owner is not None and owner.name == "arith.constant"
            and not isinstance(value.type, ir.ShapedType))


def _empty(value: ir.Value) -> bool:
    owner = defining_op(value)
    return owner is not None and owner.name == "tensor.empty"


def analyze(tile) -> GemmProblem | str:
    """The GEMM problem of ``tile``, or a one-line reason why it is not one this lowering takes."""
    comp = tile.computation
    linalg_ops = [op for op in comp if linalg_info.is_linalg(op)]
    others = [op for op in comp if not linalg_info.is_linalg(op)
              and op.name not in ("arith.constant", "tensor.empty")]
    if others:
        return f"tile holds '{others[0].name}', which the GEMM lowering does not take"
    roots = [op for op in linalg_ops
             if op.name in ("linalg.matmul", "linalg.batch_matmul", "linalg.conv_2d_nchw_fchw")
             or (op.name == "linalg.generic"
                 and "reduction" in linalg_info.info(op).iterator_types)]
    if len(roots) != 1:
        return "tile must hold exactly one matmul, batch_matmul, conv_2d_nchw_fchw or " \
               "matmul-like linalg.generic"
    root = roots[0]
    pos = linalg_ops.index(root)
    before, after = linalg_ops[:pos], linalg_ops[pos + 1:]
    if len(before) > 1 or (before and before[0].name != "linalg.fill"):
        return "only a linalg.fill of the accumulator may come before the root op"
    info = linalg_info.info(root)
    if any(t not in FLOAT_TYPES for t in info.element_types):
        return f"element types {info.element_types} are not f16/bf16/f32"
    if info.num_inputs != 2 or len(info.operand_shapes) != 3:
        return "root op must have two inputs and one init"
    payload = [p for p in info.payload if p not in ("arith.extf", "arith.truncf")]
    if payload != ["arith.mulf", "arith.addf", "linalg.yield"]:
        return f"root op body {info.payload} is not a multiply-accumulate"

    # Scalar constants the tile reads (a fill value, a GELU coefficient captured by a fused
    # epilogue's body) are rebuilt inside the kernel, never passed as arguments; tensor.empty
    # results (the outs of a fused fill or epilogue) are never read. The rest are the kernel's
    # inputs in the order of ``simt.kernel_inputs``, which the host plan follows.
    inputs = [v for v in tile.inputs if not _scalar_constant(v) and not _empty(v)]
    outputs = list(tile.outputs)
    if len(outputs) != 1:
        return "tile must have exactly one result"
    arg_types, arg_kinds = [], []
    for v in inputs:
        t = v.type
        if isinstance(t, ir.RankedTensorType):
            rt = ir.RankedTensorType(t)
            if not rt.has_static_shape:
                return "dynamic shapes are not supported"
            arg_types.append(ir.MemRefType.get(rt.shape, rt.element_type))
        elif isinstance(t, (ir.FloatType, ir.IntegerType, ir.IndexType)):
            arg_types.append(t)
        else:
            return f"tile input of type {t} is not a ranked tensor or a scalar"
        arg_kinds.append("input")
    out_t = ir.RankedTensorType(outputs[0].type)
    if not out_t.has_static_shape:
        return "dynamic shapes are not supported"
    arg_types.append(ir.MemRefType.get(out_t.shape, out_t.element_type))
    arg_kinds.append("output")
    out_arg = len(inputs)
    out_dtype = str(out_t.element_type)
    if out_dtype not in FLOAT_TYPES:
        return f"result element type {out_dtype} is not f16/bf16/f32"

    def arg_of(value) -> int | None:
        for i, v in enumerate(inputs):
            if v == value:
                return i
        return None

    a_val, b_val, c_val = (root.operands[0], root.operands[1], root.operands[2])
    a_arg, b_arg = arg_of(a_val), arg_of(b_val)
    if a_arg is None or b_arg is None:
        return "root op inputs must be tile inputs (not computed inside the tile)"

    # The accumulator's start: a fill inside the tile, or an init tensor read from memory.
    ep = Epilogue(root_type=info.element_types[2])
    if before:
        fill = before[0]
        if fill.results[0] != c_val:
            return "the linalg.fill must produce the root op's init"
        value = fill.operands[0]
        owner = value.owner
        if (not isinstance(owner, ir.Block)) and owner.name == "arith.constant":
            ep.init = "scalar"
            ep.init_const = float(ir.FloatAttr(owner.attributes["value"]).value)
        elif arg_of(value) is not None:
            ep.init, ep.init_arg = "scalar", arg_of(value)
        else:
            return "the fill value must be a constant or a tile input"
    elif not isinstance(c_val.owner, ir.Block) and c_val.owner.name == "tensor.empty":
        ep.init = "zero"           # an undefined init: any start value refines it
    else:
        if arg_of(c_val) is None:
            return "root op init must be a tile input or a fill inside the tile"
        ep.init, ep.init_arg = "tensor", arg_of(c_val)

    maps = info.indexing_maps
    common = dict(epilogue=ep, out_shape=tuple(out_t.shape), arg_types=arg_types,
                  arg_kinds=arg_kinds, n_inputs=len(inputs))

    if root.name == "linalg.conv_2d_nchw_fchw" or any("+" in e for m in maps for e in m):
        prob = _conv_problem(root, info, a_arg, b_arg, out_arg, out_dtype, common)
    else:
        prob = _matmul_problem(root, info, a_arg, b_arg, out_arg, out_dtype, common)
    if isinstance(prob, str):
        return prob
    if ep.init == "tensor":
        # The init tensor is read like the output.
        prob.epilogue.init_operand = Operand(ep.init_arg, info.element_types[2], prob.out.rows,
                                             prob.out.cols, prob.out.kind, prob.out.strides,
                                             prob.out.conv)
    reason = _epilogue(prob, root, after, tile, arg_of)
    if reason:
        return reason
    if tuple(out_t.shape) != tuple(info.operand_shapes[2]):
        return "the tile result must have the root op's result shape"
    return prob


def _matmul_problem(root, info, a_arg, b_arg, out_arg, out_dtype, common):
    maps = [_dims(m) for m in info.indexing_maps]
    if any(m is None for m in maps):
        return "matmul-like op with non-permutation indexing maps"
    am, bm, cm = maps
    kinds = info.iterator_types
    roles = []
    for d, kind in enumerate(kinds):
        in_a, in_b, in_c = d in am, d in bm, d in cm
        if kind == "reduction":
            if not (in_a and in_b) or in_c:
                return f"reduction loop d{d} must index both inputs and not the output"
            roles.append("k")
        elif in_c and in_a and in_b:
            roles.append("b")
        elif in_c and in_a:
            roles.append("m")
        elif in_c and in_b:
            roles.append("n")
        else:
            return f"parallel loop d{d} is not a batch, row or column loop"
    if roles.count("m") != 1 or roles.count("n") != 1 or roles.count("k") != 1 \
            or roles.count("b") > 1:
        return f"loops {roles} are not one (batch,) m, n, k nest"
    if len(set(am)) != len(am) or len(set(bm)) != len(bm) or len(set(cm)) != len(cm):
        return "repeated loop in an indexing map"
    dm, dn, dk = roles.index("m"), roles.index("n"), roles.index("k")
    db = roles.index("b") if "b" in roles else None
    out_dims = tuple(roles[d] for d in cm)
    if [r for r in out_dims if r != "b"] != ["m", "n"]:
        return "output must be indexed (batch, m, n) with m before n"
    rng = info.loop_ranges
    batch = rng[db] if db is not None else 1

    def operand(arg, amap, shape, dtype, row_d, col_d):
        st = _strides(shape)
        stride = {d: st[i] for i, d in enumerate(amap)}
        return Operand(arg, dtype, rng[row_d], rng[col_d], "affine",
                       (stride.get(db, 0) if db is not None else 0, stride[row_d], stride[col_d]))

    shapes, types = info.operand_shapes, info.element_types
    a = operand(a_arg, am, shapes[0], types[0], dm, dk)
    b = operand(b_arg, bm, shapes[1], types[1], dk, dn)
    out = operand(out_arg, cm, shapes[2], out_dtype, dm, dn)
    return GemmProblem("matmul", root.name, batch, rng[dm], rng[dn], rng[dk], a, b, out,
                       loop_roles=tuple(roles), out_dims=out_dims, **common)


def _conv_problem(root, info, a_arg, b_arg, out_arg, out_dtype, common):
    xm, wm, om = info.indexing_maps
    if len(xm) != 4 or _dims(wm) is None or _dims(om) is None:
        return "only 2-D NCHW/FCHW convolutions are taken"
    wdims, odims = _dims(wm), _dims(om)
    n_d, f_d, oy_d, ox_d = odims
    if wdims[0] != f_d or _dims(xm[:2]) != [n_d, wdims[1]]:
        return "convolution is not in NCHW/FCHW form"
    c_d, ky_d, kx_d = wdims[1], wdims[2], wdims[3]
    geo = []
    for expr, (o_d, k_d) in zip(xm[2:], ((oy_d, ky_d), (ox_d, kx_d))):
        m = _CONV.match(expr)
        if not m:
            return f"input index '{expr}' is not 'oh * s + kh * d'"
        d1, s1 = int(m.group(1)), int(m.group(2) or 1)
        d2, s2 = int(m.group(3)), int(m.group(4) or 1)
        if (d1, d2) == (o_d, k_d):
            geo.append((s1, s2))
        elif (d1, d2) == (k_d, o_d):
            geo.append((s2, s1))
        else:
            return f"input index '{expr}' does not pair an output and a kernel loop"
    n, c, h, w = info.operand_shapes[0]
    f, c2, kh, kw = info.operand_shapes[1]
    _, _, oh, ow = info.operand_shapes[2]
    if c2 != c:
        return "grouped convolutions are not taken"
    g = ConvGeom(n, c, h, w, f, kh, kw, oh, ow, (geo[0][0], geo[1][0]), (geo[0][1], geo[1][1]))
    kdim = c * kh * kw
    types = info.element_types
    # GEMM A is the filter (the root's second operand), GEMM B the gathered image (its first).
    image_arg, filter_arg = a_arg, b_arg
    a = Operand(filter_arg, types[1], f, kdim, "affine", (0, kdim, 1))
    b = Operand(image_arg, types[0], kdim, n * oh * ow, "im2col", conv=g)
    out = Operand(out_arg, out_dtype, f, n * oh * ow, "conv_out", conv=g)
    roles = ["?"] * 7
    for d, r in ((n_d, "n_img"), (f_d, "m"), (oy_d, "oh"), (ox_d, "ow"), (c_d, "c"),
                 (ky_d, "kh"), (kx_d, "kw")):
        roles[d] = r
    return GemmProblem("conv2d", root.name, 1, f, n * oh * ow, kdim, a, b, out,
                       loop_roles=tuple(roles), out_dims=("n_img", "m", "oh", "ow"), **common)


_EPILOGUE_OPS = ("arith.", "math.", "linalg.yield")


def _epilogue(prob: GemmProblem, root, after, tile, arg_of) -> str | None:
    """Check the element-wise ops after the root; record them in ``prob.epilogue``."""
    current = root.results[0]
    rank = len(prob.out_shape)
    for op in after:
        if op.name != "linalg.generic":
            return f"'{op.name}' after the root op is not an element-wise linalg.generic"
        info = linalg_info.info(op)
        if any(t != "parallel" for t in info.iterator_types) or info.num_loops != rank:
            return "an epilogue linalg.generic must be parallel over the root's result"
        if len(op.results) != 1 or info.num_inputs + 1 != len(op.operands):
            return "an epilogue linalg.generic must have one result"
        for name in info.payload:
            if not name.startswith(_EPILOGUE_OPS):
                return f"epilogue op '{name}' is not arith/math"
        identity = tuple(f"d{i}" for i in range(rank))
        if tuple(info.indexing_maps[-1]) != identity:
            return "an epilogue's output map must be the identity"
        block = op.regions[0].blocks[0]
        uses_out = any(True for _ in block.arguments[-1].uses)
        if uses_out:
            return "an epilogue that reads its own init is not taken"
        seen_current = False
        inputs = []
        for i in range(info.num_inputs):
            v = op.operands[i]
            amap = info.indexing_maps[i]
            if v == current:
                if tuple(amap) != identity:
                    return "the root result must be read with the identity map"
                seen_current = True
                inputs.append(("chain", None))
            elif arg_of(v) is not None:
                if isinstance(v.type, ir.RankedTensorType):
                    if _dims(amap) is None:
                        return "an epilogue operand map must be a projected permutation"
                    inputs.append(("tensor", (arg_of(v), tuple(_dims(amap)),
                                              tuple(ir.RankedTensorType(v.type).shape))))
                else:
                    inputs.append(("scalar", arg_of(v)))
            elif _scalar_constant(v):
                inputs.append(("const", v))
            else:
                return "an epilogue operand is computed inside the tile but is not the chain"
        if not seen_current:
            return "an epilogue linalg.generic does not read the previous result"
        prob.epilogue.generics.append((op, inputs))
        current = op.results[0]
    if tile.terminator.operands[0] != current:
        return "the tile must yield the last op of its chain"
    return None
