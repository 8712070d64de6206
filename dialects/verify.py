"""Verification of the Quartet dialect beyond what IRDL checks.

IRDL checks the kinds of operands and results and that vtask/uvirtual carry their integer
attributes. This verifier checks the rest of DESIGN.md's semantics:

* the region of each of the three region ops is one block without arguments;
* every region ends in ``gpu.yield`` whose operand types are the parent's result types
  (``dialects/quartet.py`` says why the terminator is upstream's);
* a tile holds at least one linalg op; its per-loop schedule attributes (``block_tile``,
  ``thread_tile``) have one positive entry per loop of its root op, ``smem_padding`` one
  non-negative entry per input of the root op, ``edge_levels`` one memory level (0/1/2) per
  linalg op other than the root (``TileOp.root``: the op with the most loops, the last of
  them), ``candidates`` dictionaries of the same attributes, ``kernel`` one of the block-program
  families (``KERNEL_FAMILIES``);
* a vtask lies inside a uvirtual and its vEU range ``[veu_begin, veu_begin + veu_count)`` lies
  inside that uvirtual's ``num_veus``.

``quartet-opt`` runs it after parsing and after every pass.
"""

from __future__ import annotations

from mlir import ir

from quartet.errors import QuartetError, location_of

from . import linalg_info
from .quartet import KERNEL_FAMILIES, anchor_of

REGION_OPS = ("quartet.tile", "quartet.vtask", "quartet.uvirtual")


def verify(root) -> None:
    """Raise :class:`QuartetError` at the first op that breaks a rule; return None if none does."""
    root = root.operation if hasattr(root, "operation") else root
    error: list[QuartetError] = []

    def visit(op):
        op = op.operation if hasattr(op, "operation") else op
        name = op.name
        try:
            if name in REGION_OPS:
                _verify_region(op)
                if name == "quartet.tile":
                    _verify_tile(op)
                elif name == "quartet.vtask":
                    _verify_vtask(op)
                else:
                    _verify_uvirtual(op)
            elif name == "gpu.yield" and op.parent is not None and op.parent.name in REGION_OPS:
                _verify_yield(op)
        except QuartetError as e:
            error.append(e)
            return ir.WalkResult.INTERRUPT
        return ir.WalkResult.ADVANCE

    root.walk(visit)
    if error:
        raise error[0]


def _fail(op, message: str):
    raise QuartetError(f"'{op.name}' op {message}", location_of(op))


def _verify_region(op) -> None:
    block = op.regions[0].blocks[0]
    if len(block.arguments):
        _fail(op, f"region must have no block arguments (it reads values of the enclosing "
                  f"function directly), got {len(block.arguments)}")
    ops = list(block.operations)
    if not ops or ops[-1].operation.name != "gpu.yield":
        _fail(op, "region must end with 'gpu.yield'")


def _verify_yield(op) -> None:
    parent = op.parent
    got = [v.type for v in op.operands]
    want = [r.type for r in parent.results]
    if got != want:
        _fail(op, f"types ({', '.join(map(str, got))}) do not match the results of its parent "
                  f"'{parent.name}' ({', '.join(map(str, want))})")


def _linalg_ops(op) -> list[ir.Operation]:
    return [o.operation for o in op.regions[0].blocks[0].operations
            if linalg_info.is_linalg(o)]


def _verify_tile(op) -> None:
    ops = _linalg_ops(op)
    if not ops:
        _fail(op, "holds no linalg op")
    attrs = op.attributes
    if "kernel" in attrs:
        kernel = attrs["kernel"]
        if not isinstance(kernel, ir.StringAttr) or \
                ir.StringAttr(kernel).value not in KERNEL_FAMILIES:
            _fail(op, f"attribute 'kernel' must name a block-program family "
                      f"({', '.join(KERNEL_FAMILIES)}), got {kernel}")
    if not any(name in attrs for name in ("block_tile", "thread_tile", "smem_padding",
                                          "edge_levels", "candidates")):
        return
    try:
        root = anchor_of(ops)
        loops = linalg_info.info(root)
    except ValueError as e:
        _fail(op, f"root op '{root.name}': {e}")
    _verify_schedule(op, {name: attrs[name] for name in attrs}, loops, len(ops) - 1,
                     what="")
    if "candidates" in attrs:
        for i, cand in enumerate(ir.ArrayAttr(attrs["candidates"])):
            if not isinstance(cand, ir.DictAttr):
                _fail(op, f"candidate #{i} must be a dictionary")
            d = ir.DictAttr(cand)
            fields = {}
            for name in ("block_tile", "thread_tile", "smem_padding"):
                if name in d:
                    fields[name] = d[name]
            _verify_schedule(op, fields, loops, len(ops) - 1, what=f"candidate #{i} ")


def _verify_schedule(op, attrs: dict, loops, num_edges: int, what: str) -> None:
    def array(name):
        attr = attrs[name]
        if not isinstance(attr, ir.DenseI64ArrayAttr):
            _fail(op, f"{what}attribute '{name}' must be an array<i64>")
        return list(ir.DenseI64ArrayAttr(attr))

    for name in ("block_tile", "thread_tile"):
        if name in attrs:
            values = array(name)
            if len(values) != loops.num_loops:
                _fail(op, f"{what}attribute '{name}' has {len(values)} entries, but the root op "
                          f"'{loops.name}' has {loops.num_loops} loops")
            if any(v < 1 for v in values):
                _fail(op, f"{what}attribute '{name}' entries must be positive")
    if "block_tile" in attrs and "thread_tile" in attrs:
        for i, (b, t) in enumerate(zip(array("block_tile"), array("thread_tile"))):
            if t > b:
                _fail(op, f"{what}thread_tile[{i}] = {t} exceeds block_tile[{i}] = {b}")
    if "smem_padding" in attrs:
        values = array("smem_padding")
        if len(values) != loops.num_inputs:
            _fail(op, f"{what}attribute 'smem_padding' has {len(values)} entries, but the root "
                      f"op '{loops.name}' has {loops.num_inputs} inputs")
        if any(v < 0 for v in values):
            _fail(op, f"{what}attribute 'smem_padding' entries must be non-negative")
    if "edge_levels" in attrs:
        values = array("edge_levels")
        if len(values) != num_edges:
            _fail(op, f"attribute 'edge_levels' has {len(values)} entries, but the tile has "
                      f"{num_edges} internal values (linalg ops other than the root)")
        if any(v not in (0, 1, 2) for v in values):
            _fail(op, "attribute 'edge_levels' entries must be 0 (global), 1 (shared) or "
                      "2 (register)")


def _enclosing(op, name: str):
    parent = op.parent
    while parent is not None and parent.name != "builtin.module":
        if parent.name == name:
            return parent
        parent = parent.parent
    return None


def _verify_vtask(op) -> None:
    uv = _enclosing(op, "quartet.uvirtual")
    if uv is None:
        _fail(op, "must be nested in a 'quartet.uvirtual'")
    attrs = op.attributes
    begin = ir.IntegerAttr(attrs["veu_begin"]).value
    count = ir.IntegerAttr(attrs["veu_count"]).value
    step = ir.IntegerAttr(attrs["step"]).value
    if begin < 0 or count < 1 or step < 0:
        _fail(op, f"needs veu_begin >= 0, veu_count >= 1 and step >= 0 (got {begin}, {count}, "
                  f"{step})")
    num = ir.IntegerAttr(uv.attributes["num_veus"]).value
    if begin + count > num:
        _fail(op, f"vEU range [{begin}, {begin + count}) lies outside the {num} vEUs of its "
                  f"'quartet.uvirtual'")


def _verify_uvirtual(op) -> None:
    num = ir.IntegerAttr(op.attributes["num_veus"]).value
    if num < 1:
        _fail(op, f"needs num_veus >= 1 (got {num})")
