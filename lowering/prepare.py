"""Preparing a module of configured tiles for GPU kernels (the first step of the GPU lowering).

* Boolean tensors become byte tensors (``cpu_i1.py``: MLIR 22's memref-to-LLVM conversion
  aborts on ``i1`` loads and stores; numpy's ``bool`` is one byte too).
* Host data movement that no view can express - ``tensor.pad``, ``tensor.extract_slice`` of
  a non-contiguous part, and ``tensor.concat`` along a dimension whose slices are not contiguous
  runs of the result - becomes a tile of its own: a ``linalg.generic`` gathering each output
  element from its source (``linalg.index`` arithmetic, ``tensor.extract``), which the fallback
  block program maps onto blocks and threads. A concatenation of contiguous slices (along the
  outermost dimension that is not 1: branches stacked, channels concatenated at batch 1) stays:
  the host plan gives it one buffer and each producing tile writes its slice in place
  (:func:`concat_offsets`, :func:`concat_redirects`, ``host.py``).

Also the small facts about tiles and host ops that the kernel builder and the host planner
share (:func:`tiles_of`, :func:`host_ops`, :func:`contiguous_slice`, element types).
"""

from __future__ import annotations

from mlir import ir

from quartet.dialects import remap
from quartet.errors import QuartetError, location_of
from quartet.runtime.dtypes import ITEMSIZE, mlir_name_to_dtype

from . import cpu_i1
from .concat import outline_concat, take_static_sources


def tiles_of(fn) -> list:
    """The ``quartet.tile`` ops of ``fn``, nested ones included, in program order."""
    found = []

    def visit(op):
        if op.operation.name == "quartet.tile":
            found.append(op.opview)
            return ir.WalkResult.SKIP
        return ir.WalkResult.ADVANCE

    fn.operation.walk(visit, ir.WalkOrder.PRE_ORDER)
    return found


def units_of(fn) -> list:
    """What becomes kernels, in program order: ``quartet.tile`` ops (one kernel each) and
    ``quartet.uvirtual`` ops (one persistent kernel each, tiles inside included)."""
    found = []

    def visit(op):
        if op.operation.name in ("quartet.tile", "quartet.uvirtual"):
            found.append(op.opview)
            return ir.WalkResult.SKIP
        return ir.WalkResult.ADVANCE

    fn.operation.walk(visit, ir.WalkOrder.PRE_ORDER)
    return found


def dtype_of(t: ir.Type) -> str:
    """The element type name (``float16``) of a shaped or scalar MLIR type."""
    if isinstance(t, ir.ShapedType):
        t = ir.ShapedType(t).element_type
    return mlir_name_to_dtype(str(t))


def shape_of(t: ir.Type) -> tuple[int, ...]:
    return tuple(ir.ShapedType(t).shape) if isinstance(t, ir.ShapedType) else ()


def nbytes(shape: tuple[int, ...], dtype: str) -> int:
    n = 1
    for d in shape:
        n *= d
    return n * ITEMSIZE[dtype]


def prepare(module) -> None:
    """Make ``module`` ready for kernels, in place (see the module docstring)."""
    op = module.operation if hasattr(module, "operation") else module
    with op.context, ir.Location.unknown():
        cpu_i1.widen_bool_tensors(op)
        for fn in op.regions[0].blocks[0].operations:
            if fn.operation.name == "func.func" and len(fn.regions[0].blocks):
                _outline_data_movement(fn.operation)


def host_ops(root: ir.Operation) -> list[ir.Operation]:
    """Ops of ``root``'s regions outside tiles, in program order (nested ones included); a
    ``quartet.uvirtual`` is one of them, its region is not (one persistent kernel)."""
    found = []

    def visit(op):
        op = op.operation
        if op.name == "quartet.tile":
            return ir.WalkResult.SKIP
        if op != root:
            found.append(op)
        if op.name == "quartet.uvirtual" and op != root:
            return ir.WalkResult.SKIP
        return ir.WalkResult.ADVANCE

    root.walk(visit, ir.WalkOrder.PRE_ORDER)
    return found


def _static(op, name: str) -> list[int]:
    values = list(ir.DenseI64ArrayAttr(op.attributes[name]))
    if any(v == ir.ShapedType.get_dynamic_size() or v < -(1 << 62) for v in values):
        raise QuartetError(f"'{op.name}' with dynamic {name.replace('static_', '')} cannot be "
                           f"lowered for the GPU", location_of(op))
    return values


def _slice_dims(op) -> tuple[list, list, list, list]:
    """(offsets, sizes, strides, result dim of each source dim or None) of an extract_slice."""
    offsets, sizes, strides = (_static(op, f"static_{k}") for k in ("offsets", "sizes", "strides"))
    result = shape_of(op.results[0].type)
    mapping, j = [], 0
    n = len(sizes)
    for i, size in enumerate(sizes):
        if size == 1 and (n - i) > (len(result) - j):
            mapping.append(None)            # a dropped unit dim (rank-reducing slice)
        else:
            mapping.append(j)
            j += 1
    return offsets, sizes, strides, mapping


def contiguous_slice(op) -> int | None:
    """Byte offset of an ``extract_slice`` whose elements are one contiguous run of its
    source, else None."""
    offsets, sizes, strides, _ = _slice_dims(op)
    src = shape_of(op.operands[0].type)
    if any(s != 1 for s in strides):
        return None
    partial = [i for i in range(len(src)) if sizes[i] != src[i]]
    if partial and any(sizes[i] != 1 for i in range(partial[-1])):
        return None
    linear, stride = 0, 1
    for i in reversed(range(len(src))):
        linear += offsets[i] * stride
        stride *= src[i]
    return linear * nbytes((), dtype_of(op.operands[0].type))


def concat_offsets(op) -> list[int] | None:
    """Byte offset in the result of each operand of a ``tensor.concat`` whose operands are
    contiguous runs of its result (every dimension before the concatenated one is 1), else
    None."""
    dim = ir.IntegerAttr(op.attributes["dim"]).value
    result = shape_of(op.results[0].type)
    if any(d < 0 for d in result) or any(d != 1 for d in result[:dim]):
        return None
    offsets, at = [], 0
    for v in op.operands:
        offsets.append(at)
        at += nbytes(shape_of(v.type), dtype_of(v.type))
    return offsets


def tile_result(value: ir.Value):
    """The ``quartet.tile`` result that ``value`` is (directly, or as the result of the
    ``quartet.vtask`` wrapping the tile), or None."""
    owner = value.owner
    if isinstance(owner, ir.Block):
        return None
    op = owner.operation
    if op.name == "quartet.tile":
        return value
    if op.name == "quartet.vtask":
        block = op.regions[0].blocks[0]
        term = block.operations[len(block.operations) - 1].operation
        inner = term.operands[ir.OpResult(value).result_number]
        return tile_result(inner)
    return None


def concat_redirects(op, claimed: set) -> list:
    """For each operand of a contiguous concat: the tile result that can write its slice of
    the concat's buffer in place, or None (the operand is then copied there). A tile result is
    redirected into one slice only (``claimed`` collects those already taken)."""
    out = []
    for v in op.operands:
        r = tile_result(v)
        if r is None or r in claimed:
            out.append(None)
            continue
        claimed.add(r)
        out.append(r)
    return out


def concat_in_place(op, claimed: set) -> bool:
    """Whether every operand of ``op`` can be written in place into its slice of the concat's
    buffer (contiguous slices, each operand a tile result not claimed by another concat)."""
    if concat_offsets(op) is None:
        return False
    trial = set(claimed)
    if any(r is None for r in concat_redirects(op, trial)):
        return False
    claimed |= trial
    return True


def outline_data_movement(fn: ir.Operation, concats: str = "strided") -> None:
    """Turn the host data movement of ``fn`` that no view expresses into gather tiles.
    ``concats``: ``"strided"`` outlines the concatenations whose slices are not contiguous
    (the host plan copies other operands into place); ``"copied"`` also those with an operand
    that is not a tile result written in place (a persistent kernel has no host copies)."""
    claimed: set = set()
    for op in host_ops(fn):
        if op.name == "tensor.pad":
            _gather_tile(op, *_pad_gather(op))
        elif op.name == "tensor.extract_slice" and contiguous_slice(op) is None:
            _gather_tile(op, *_slice_gather(op))
        elif op.name == "tensor.concat":
            take_static_sources(op)        # torch.roll's slices, cast to dynamic shapes
            if concat_offsets(op) is None or (concats == "copied" and
                                              not concat_in_place(op, claimed)):
                outline_concat(op)         # the gathering tile (lowering/concat.py, issue 16)


def _outline_data_movement(fn: ir.Operation) -> None:
    outline_data_movement(fn, "strided")


def _slice_gather(op) -> tuple[list, list, str | None]:
    offsets, sizes, strides, mapping = _slice_dims(op)
    index = []
    for off, stride, j in zip(offsets, strides, mapping):
        index.append(("const", off) if j is None else ("affine", j, stride, off))
    return index, [], None


def _pad_gather(op) -> tuple[list, list, str | None]:
    low, high = _static(op, "static_low"), _static(op, "static_high")
    src = shape_of(op.operands[0].type)
    region = op.regions[0].blocks[0]
    value = region.operations[len(region.operations) - 1].operands[0]
    owner = value.owner
    owner = owner.operation if hasattr(owner, "operation") else owner
    if isinstance(value.owner, ir.Block) or owner.name != "arith.constant":
        raise QuartetError("'tensor.pad' with a padding value that is not a constant cannot be "
                           "lowered for the GPU", location_of(op))
    index, masks = [], []
    for i, (lo, hi) in enumerate(zip(low, high)):
        index.append(("affine", i, 1, -lo))
        if lo or hi:
            masks.append((i, src[i]))
    return index, masks, str(owner.attributes["value"])


def _gather_tile(op, index: list, masks: list, pad: str | None) -> None:
    """Replace host op ``op`` (one source tensor, one result) by a tile computing each output
    element as ``source[index(i)]`` (``pad`` where a masked index leaves the source)."""
    src_t, res_t = op.operands[0].type, op.results[0].type
    elt = str(ir.ShapedType(res_t).element_type)
    rank = len(shape_of(res_t))
    dims = ", ".join(f"d{i}" for i in range(rank))
    iters = ", ".join(['"parallel"'] * rank)
    lines = [f"%i{i} = linalg.index {i} : index" for i in range(rank)]
    names = []
    valid = []
    for k, entry in enumerate(index):
        if entry[0] == "const":
            lines.append(f"%j{k} = arith.constant {entry[1]} : index")
        else:
            _, j, stride, off = entry
            lines.append(f"%s{k} = arith.constant {stride} : index")
            lines.append(f"%o{k} = arith.constant {off} : index")
            lines.append(f"%m{k} = arith.muli %i{j}, %s{k} : index")
            lines.append(f"%j{k} = arith.addi %m{k}, %o{k} : index")
        names.append(f"%j{k}")
    for k, extent in masks:
        lines += [f"%z{k} = arith.constant 0 : index",
                  f"%n{k} = arith.constant {extent} : index",
                  f"%hi{k} = arith.constant {extent - 1} : index",
                  f"%ge{k} = arith.cmpi sge, %j{k}, %z{k} : index",
                  f"%lt{k} = arith.cmpi slt, %j{k}, %n{k} : index",
                  f"%ok{k} = arith.andi %ge{k}, %lt{k} : i1",
                  f"%a{k} = arith.maxsi %j{k}, %z{k} : index",
                  f"%c{k} = arith.minsi %a{k}, %hi{k} : index"]
        names[k] = f"%c{k}"
        valid.append(f"%ok{k}")
    lines.append(f"%v = tensor.extract %src[{', '.join(names)}] : {src_t}")
    result = "%v"
    if valid:
        lines.append(f"%pad = arith.constant {pad}")
        acc = valid[0]
        for n, v in enumerate(valid[1:]):
            lines.append(f"%all{n} = arith.andi {acc}, {v} : i1")
            acc = f"%all{n}"
        lines.append(f"%r = arith.select {acc}, %v, %pad : {elt}")
        result = "%r"
    body = "\n          ".join(lines)
    text = f"""
func.func @gather(%src: {src_t}) -> {res_t} {{
  %t = "quartet.tile"() ({{
    %e = tensor.empty() : {res_t}
    %g = linalg.generic {{indexing_maps = [affine_map<({dims}) -> ({dims})>],
                         iterator_types = [{iters}]}} outs(%e : {res_t}) {{
        ^bb0(%out: {elt}):
          {body}
          linalg.yield {result} : {elt}
    }} -> {res_t}
    gpu.yield %g : {res_t}
  }}) : () -> {res_t}
  return %t : {res_t}
}}"""
    parsed = ir.Module.parse(text)
    gfn = parsed.body.operations[0]
    arg = gfn.regions[0].blocks[0].arguments[0]
    template = gfn.regions[0].blocks[0].operations[0]
    with ir.InsertionPoint(op), op.location:
        tile = template.operation.clone()
    source = op.operands[0]

    remap(tile, {arg: source})
    op.results[0].replace_all_uses_with(tile.results[0])
    op.erase()
