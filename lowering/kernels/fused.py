"""The ``fused`` family: block programs for tiles that Welder merged across iteration spaces.

``welder-fuse`` (``passes/welder``) merges the tiles of a group of operators into one
``quartet.tile`` and records ``kernel = "fused"``; this module says which fused kernel builds
such a tile and builds it. Each pattern is one file:

| pattern | file | group |
|---|---|---|
| ``attention`` | ``fused_attention.py`` | ``softmax(chain(Q K^T)) V`` (scale, additive or causal masks: any per-element chain), the transposes of Q, K, V and of the result absorbed; online softmax over key tiles, one kernel at any sequence length |
| ``gemm_rows`` | ``fused_rows.py`` | a GEMM whose result feeds a row program over full rows (bias, residual add and layer norm after a linear layer): the block tile spans whole rows, the row program runs on them in shared memory |
| ``gemm_chain`` | ``fused_chain.py`` | two GEMMs in a chain (the MLP's fc1, GELU, fc2): the hidden activation computed one chunk at a time into shared memory and consumed there |
| ``rows_gemm`` | ``fused_prologue.py`` | a row program whose result is a GEMM's first operand (layer norm in front of a linear layer): the block's rows normalized into shared memory, then the GEMM reads them there |

A pattern's analysis (``analyze``) takes the merged tile and returns a :class:`FusedPlan`: the
op whose loops define the blocks (the *anchor*), the memory level of every internal value, and
the configurations it can build (:class:`Choice`, best-first by the pattern's own rule), each
with its exact resources, so that Welder's grouping can price a group before choosing it. The
pass writes the chosen configuration's ``params`` on the tile (``welder.params``); the builder
reads them back.

Helpers shared by the patterns live here: contraction roles, tracing an operand through the
views and transposes inside the tile to the buffer it is read from (``layout.py``), per-element
ops described for cloning.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mlir import ir

from quartet.dialects import defining_op, linalg_info
from quartet.errors import QuartetError, location_of
from quartet.runtime import targets
from quartet.runtime.targets import Chip

from .common import Unsupported, kernel_inputs
from .layout import Layout, LayoutError

PATTERNS = ("attention", "gemm_rows", "rows_gemm", "gemm_chain")
PARAMS_ATTR = "welder.params"
VIEW_OPS = ("tensor.expand_shape", "tensor.collapse_shape", "tensor.extract_slice")

SHARED, REGISTERS = 1, 2


@dataclass(frozen=True)
class Choice:
    """One configuration a pattern can build: the anchor's block tile (one extent per anchor
    loop; reductions whole), the kernel's resources, and the parameters the builder reads."""

    anchor_tile: tuple[int, ...]
    threads: int
    shared_bytes: int
    registers: int
    engine: str                      # "wgmma" | "mma" | "simt"
    params: dict


@dataclass
class FusedPlan:
    pattern: str
    anchor: ir.Operation
    levels: dict                     # op -> memory level of its results
    choices: list[Choice]
    problem: object
    notes: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Shared analysis


def is_contraction(op: ir.Operation) -> bool:
    """A matmul-like op: ``linalg.matmul`` / ``batch_matmul``, or a generic with one reduction
    whose body multiplies two inputs into the accumulator (casts allowed)."""
    if op.name in ("linalg.matmul", "linalg.batch_matmul"):
        return True
    if op.name != "linalg.generic":
        return False
    if "reduction" not in str(op.attributes["iterator_types"]) or \
            ir.DenseI32ArrayAttr(op.attributes["operandSegmentSizes"])[0] != 2:
        return False
    payload = [o.operation.name for o in op.regions[0].blocks[0].operations
               if o.operation.name != "arith.extf"]
    return payload == ["arith.mulf", "arith.addf", "linalg.yield"]


def dims_of(exprs) -> list[int | None]:
    """Loop of each map result (``dK``), None for a constant; Unsupported otherwise."""
    out = []
    for e in exprs:
        e = e.strip()
        if e.startswith("d") and e[1:].isdigit():
            out.append(int(e[1:]))
        elif e.lstrip("-").isdigit():
            out.append(None)
        else:
            raise Unsupported(f"index expression '{e}' is not a loop or a constant")
    return out


@dataclass(frozen=True)
class Roles:
    """Loops of a contraction by role: batch loops, m, n, k (one each)."""

    batch: tuple[int, ...]
    m: int
    n: int
    k: int
    ranges: tuple[int, ...]
    maps: tuple[tuple[int | None, ...], ...]      # per operand: loop of each dim

    def extent(self, role: str) -> int:
        if role == "b":
            out = 1
            for b in self.batch:
                out *= self.ranges[b]
            return out
        return self.ranges[getattr(self, role)]


def contraction_roles(op: ir.Operation) -> Roles:
    info = linalg_info.info(op)
    maps = [dims_of(m) for m in info.indexing_maps]
    a, b, c = (set(x for x in m if x is not None) for m in maps)
    batch, ms, ns, ks = [], [], [], []
    for d, kind in enumerate(info.iterator_types):
        if kind == "reduction":
            if d in a and d in b and d not in c:
                ks.append(d)
            else:
                raise Unsupported("a reduction loop that is not the contraction's k")
        elif d in a and d in b and d in c:
            batch.append(d)
        elif d in a and d in c:
            ms.append(d)
        elif d in b and d in c:
            ns.append(d)
        else:
            raise Unsupported(f"loop d{d} is not a batch, row or column loop")
    if len(ms) != 1 or len(ns) != 1 or len(ks) != 1:
        raise Unsupported("a contraction that is not one (batch,) m, n, k nest")
    return Roles(tuple(batch), ms[0], ns[0], ks[0], tuple(info.loop_ranges),
                 tuple(map(tuple, maps)))


def _reassociation(op: ir.Operation) -> list[list[int]]:
    return [[ir.IntegerAttr(d).value for d in ir.ArrayAttr(g)]
            for g in ir.ArrayAttr(op.attributes["reassociation"])]


def _shape(v: ir.Value) -> tuple[int, ...]:
    return tuple(ir.ShapedType(v.type).shape)


def transpose_permutation(op: ir.Operation) -> list[int] | None:
    """The permutation of a ``linalg.transpose``, or of a ``linalg.generic`` that only copies
    its one input through permutation maps; None for anything else."""
    if op.name == "linalg.transpose":
        return list(ir.DenseI64ArrayAttr(op.attributes["permutation"]))
    if op.name != "linalg.generic":
        return None
    info = linalg_info.info(op)
    if info.num_inputs != 1 or "reduction" in info.iterator_types or \
            info.payload != ("linalg.yield",):
        return None
    block = op.regions[0].blocks[0]
    yielded = list(block.operations)[-1].operands[0]
    if yielded != block.arguments[0]:
        return None
    src, dst = dims_of(info.indexing_maps[0]), dims_of(info.indexing_maps[1])
    if None in src or None in dst or sorted(dst) != list(range(len(dst))) or \
            sorted(src) != sorted(dst):
        return None
    # result dim i is loop dst[i]; that loop is input dim src.index(dst[i])
    return [src.index(d) for d in dst]


def trace_input(value: ir.Value, tile) -> tuple[ir.Value, Layout, list[ir.Operation]]:
    """Follow ``value`` back through views and transposes inside ``tile`` to a tile input:
    (that input, the layout of ``value`` in its buffer, the ops followed in program order)."""
    chain = []
    v = value
    while True:
        op = defining_op(v)
        if op is None or not _inside(op, tile.operation):
            break
        if op.name in VIEW_OPS or transpose_permutation(op) is not None:
            chain.append(op)
            v = op.operands[0]
            continue
        raise Unsupported(f"an operand computed by '{op.name}' inside the tile")
    layout = Layout.row_major(_shape(v))
    try:
        for op in reversed(chain):
            layout = _forward(layout, op)
    except LayoutError as e:
        raise Unsupported(f"operand layout: {e}") from None
    return v, layout, list(reversed(chain))


def _forward(layout: Layout, op: ir.Operation) -> Layout:
    if op.name == "tensor.expand_shape":
        return layout.expand(_reassociation(op), _shape(op.results[0]))
    if op.name == "tensor.collapse_shape":
        return layout.collapse(_reassociation(op))
    if op.name == "tensor.extract_slice":
        attrs = op.attributes
        offs = list(ir.DenseI64ArrayAttr(attrs["static_offsets"]))
        sizes = list(ir.DenseI64ArrayAttr(attrs["static_sizes"]))
        strides = list(ir.DenseI64ArrayAttr(attrs["static_strides"]))
        if min(offs + sizes + strides) < 0:
            raise LayoutError("a dynamic slice")
        return layout.slice(offs, sizes, strides, len(_shape(op.results[0])))
    return layout.permute(transpose_permutation(op))


def backward(layout: Layout, op: ir.Operation) -> Layout:
    """The layout of ``op``'s input given the layout of its result."""
    if op.name == "tensor.expand_shape":
        return layout.collapse(_reassociation(op))
    if op.name == "tensor.collapse_shape":
        return layout.expand(_reassociation(op), _shape(op.operands[0]))
    perm = transpose_permutation(op)
    if perm is None:
        raise LayoutError(f"'{op.name}' on the output path")
    return layout.unpermute(perm)


def _inside(op: ir.Operation, region_op: ir.Operation) -> bool:
    p = op
    while p is not None:
        if p == region_op:
            return True
        p = p.parent
    return False


def input_index(tile, value: ir.Value) -> int:
    """Position of ``value`` among the kernel's inputs (``kernel_inputs``)."""
    ins = kernel_inputs(tile)
    for i, v in enumerate(ins):
        if v == value:
            return i
    raise Unsupported("an operand that is not a tensor input of the tile")


@dataclass
class ElementOp:
    """A per-element ``linalg.generic`` on a chain value: its other inputs described as
    ("chain",), ("tensor", input index, Layout, loop-or-const per operand dim), ("scalar",
    value) (a constant, cloned) or ("splat", element attribute) (a splat constant tensor)."""

    op: ir.Operation
    inputs: list
    roles: tuple = ()      # the role of each of its loops, where its user names them


def element_op(op: ir.Operation, chain: ir.Value, tile, space: int) -> ElementOp | None:
    """``op`` as a per-element op of ``chain`` over ``space`` loops, or None if it is not one
    (reads the chain through a non-identity map, reduces, has several live results)."""
    if op.name != "linalg.generic":
        return None
    info = linalg_info.info(op)
    if "reduction" in info.iterator_types or info.num_loops != space or len(op.results) != 1:
        return None
    block = op.regions[0].blocks[0]
    for inner in block.operations:
        if inner.operation.name == "linalg.index" or len(inner.operation.regions):
            return None
    if any(True for _ in block.arguments[info.num_inputs].uses):
        return None
    identity = tuple(f"d{i}" for i in range(space))
    if tuple(info.indexing_maps[-1]) != identity:
        return None
    inputs = []
    seen_chain = False
    for i in range(info.num_inputs):
        v = op.operands[i]
        amap = info.indexing_maps[i]
        if v == chain:
            if tuple(amap) != identity:
                return None
            inputs.append(("chain",))
            seen_chain = True
        elif not isinstance(v.type, ir.ShapedType):
            owner = defining_op(v)
            if owner is None or owner.name != "arith.constant":
                return None
            inputs.append(("scalar", v))
        elif _splat_constant(v) is not None:
            inputs.append(("splat", _splat_constant(v)))
        else:
            try:
                src, layout, _ = trace_input(v, tile)
            except Unsupported:
                return None
            inputs.append(("tensor", input_index(tile, src), layout, tuple(dims_of(amap))))
    return ElementOp(op, inputs) if seen_chain else None


def _splat_constant(v: ir.Value):
    """The element attribute of a splat ``arith.constant`` tensor (torch-mlir's 0-d ``-inf`` of
    ``masked_fill``), or None."""
    owner = defining_op(v)
    if owner is None or owner.name != "arith.constant":
        return None
    attr = owner.attributes["value"]
    if not isinstance(attr, ir.DenseElementsAttr) or not ir.DenseElementsAttr(attr).is_splat:
        return None
    return ir.DenseElementsAttr(attr).get_splat_value()


def single_user(value: ir.Value) -> ir.Operation | None:
    users = [u.owner.operation for u in value.uses]
    return users[0] if len(users) == 1 else None


# ---------------------------------------------------------------------------------------------
# Dispatch


def _patterns():
    from . import fused_attention, fused_chain, fused_prologue, fused_rows
    return (("attention", fused_attention.analyze), ("gemm_rows", fused_rows.analyze),
            ("rows_gemm", fused_prologue.analyze), ("gemm_chain", fused_chain.analyze))


def analyze(tile, chip: Chip | str = "sm_90") -> FusedPlan:
    """The plan of the first pattern that takes ``tile``; ``Unsupported`` naming every
    pattern's reason when none does."""
    chip = targets.get(chip)
    if chip.kind != "cuda" or chip.mma_shape is None:
        raise Unsupported(f"fused kernels are built for NVIDIA GPUs with tensor cores, not "
                          f"{chip.description}")
    reasons = []
    for name, fn in _patterns():
        try:
            return fn(tile, chip)
        except Unsupported as e:
            reasons.append(f"{name}: {e}")
    raise Unsupported("; ".join(reasons))


def params_of(tile) -> dict:
    attrs = tile.operation.attributes
    if PARAMS_ATTR not in attrs:
        return {}
    d = ir.DictAttr(attrs[PARAMS_ATTR])
    out = {}
    for i in range(len(d)):
        na = d[i]
        v = na.attr
        out[na.name] = ir.IntegerAttr(v).value if isinstance(v, ir.IntegerAttr) else \
            ir.StringAttr(v).value
    return out


def params_attr(params: dict) -> ir.DictAttr:
    i64 = ir.IntegerType.get_signless(64)
    return ir.DictAttr.get({k: ir.IntegerAttr.get(i64, v) if isinstance(v, int) else
                            ir.StringAttr.get(str(v)) for k, v in params.items()})


def build_fused_kernel(tile, chip, name: str) -> ir.Module:
    """The module holding ``func @name`` with the fused kernel's ``gpu.launch``."""
    chip = targets.get(chip)
    where = location_of(tile.operation)
    try:
        plan = analyze(tile, chip)
    except Unsupported as e:
        raise QuartetError(f"no fused kernel for this tile: {e}", where) from None
    params = params_of(tile) or plan.choices[0].params
    from . import fused_attention, fused_chain, fused_prologue, fused_rows
    build = {"attention": fused_attention.build, "gemm_rows": fused_rows.build,
             "rows_gemm": fused_prologue.build, "gemm_chain": fused_chain.build}[plan.pattern]
    try:
        return build(tile, chip, plan, params, name)
    except Unsupported as e:
        raise QuartetError(f"no {plan.pattern} kernel for this tile: {e}", where) from None
