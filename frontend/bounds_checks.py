"""Index bounds checks as data: torch-mlir's ``cf.assert`` inside gathers -> a flag result.

Issue 16, item 1. torch-mlir lowers ``aten.embedding``, ``aten.gather``, ``aten.index_select``
and ``aten.index.Tensor`` to a ``linalg.generic`` that reads the table with ``tensor.extract``
at an index taken from a tensor, and guards the read with ``cf.assert``s (``index must be
smaller than dim size``, ``index must be larger or equal to 0``). ``cf`` is no part of linalg on
tensors, and an assert cannot stop a GPU kernel. PyTorch raises on an index out of range, so
dropping the checks would turn a user error into a silent read out of bounds.

This rewrite keeps the check and moves it out of the kernel. For each ``linalg.generic`` of a
function's top level that holds asserts:

1. a new ``linalg.generic`` over the same iteration space reduces the asserted conditions to a
   0-d ``i32`` flag, nonzero where any condition fails (``out | (c1 & c2 & ... ? 0 : code)``): the ops that
   compute the conditions are cloned from the body, reading the same inputs through the same
   indexing maps;
2. the asserts are erased and every ``tensor.extract`` of the body whose index is computed from
   data is clamped into the table (``max(0, min(i, dim - 1))``), so that the kernel never reads
   out of bounds, whatever the index;
3. the flag becomes an extra result of the function, after the user's results.

The importer records each flag (:class:`IndexCheck`: its message names the op and the bound,
its location the user's ``file:line``); the artifact lists them as ``checks`` and the runtime
reads every flag after each call and raises :class:`~quartet.errors.QuartetError` when one is
set (``runtime/FORMAT.md``). The outputs of such a call are not returned.

Asserts elsewhere (inside ``scf.if``/``scf.while`` regions, or outside a ``linalg.generic``)
are not rewritten: they stay, and the importer reports them as unsupported.

Written against the MLIR Python API shared by torch-mlir's bindings (which the importer holds
the module in) and upstream's: the caller passes its ``ir`` and dialect modules.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: ops whose lowering torch-mlir guards with index asserts (named in error messages)
INDEXING_OP = re.compile(r"torch\.aten\.(embedding\w*|gather|index_select|index\.\w+|"
                         r"take\w*|scatter\w*|select_scatter|index_put\w*)$")


@dataclass(frozen=True)
class IndexCheck:
    """A function result that is a bounds-check flag (0-d ``i32``: nonzero = an index was out).

    ``result`` is the position among the function's results; ``message`` says which op and
    which bound; ``location`` is the user's ``file:line`` (or None).
    """

    result: int
    message: str
    location: str | None


def indexing_ops_by_location(module) -> dict[str, list[str]]:
    """``str(location) -> [aten op names]`` of the indexing ops of a torch-dialect module.

    Taken before the linalg lowering, so that a flag can name the op its assert came from.
    """
    found: dict[str, list[str]] = {}

    def visit(op):
        if INDEXING_OP.match(op.name):
            names = found.setdefault(str(op.location), [])
            name = op.name.removeprefix("torch.").split(".hacked_twin")[0]
            if name not in names:
                names.append(name)
        for region in op.regions:
            for block in region.blocks:
                for child in block.operations:
                    visit(child.operation)

    visit(module.operation)
    return found


def rewrite(module, ir, dialects, op_names: dict[str, list[str]], where) -> list[tuple[str, object]]:
    """Rewrite the asserts of ``module`` (see the module docstring); return the flags added.

    ``dialects`` holds the ``arith``, ``linalg`` and ``tensor`` modules of the same bindings as
    ``ir``. ``where(location)`` turns an MLIR location into the user's ``file:line``. Returns
    ``(message, location)`` per flag, in the order of the results added to each function.
    """
    flags = []
    for fn in module.body.operations:
        fn = fn.operation
        if fn.name != "func.func":
            continue
        by_generic: dict = {}
        for op in _asserts(fn):
            generic = op.parent
            if generic.name == "linalg.generic" and generic.parent == fn:
                by_generic.setdefault(generic, []).append(op)
        added = []
        for generic, asserts in by_generic.items():
            flag, bound = _flag_generic(generic, asserts, len(flags) + 1, ir, dialects)
            _clamp_extracts(generic, ir, dialects)
            for a in asserts:
                a.erase()
            _erase_dead(generic)
            names = op_names.get(str(generic.location)) or ["an indexing op"]
            message = (f"index out of range in {' or '.join(names)}: "
                       f"an index is outside {bound}")
            added.append(flag)
            flags.append((message, where(generic.location)))
        if added:
            _append_results(fn, added, ir)
    return flags


def _erase_dead(generic) -> None:
    """Erase the body ops (the conditions) that only the erased asserts used."""
    body = generic.regions[0].blocks[0]
    for op in reversed([o.operation for o in body.operations][:-1]):
        if op.name != "tensor.extract" and all(not list(r.uses) for r in op.results) \
                and not op.regions:
            op.erase()


def _asserts(fn) -> list:
    found = []

    def visit(op):
        for region in op.regions:
            for block in region.blocks:
                for child in block.operations:
                    child = child.operation
                    if child.name == "cf.assert":
                        found.append(child)
                    visit(child)

    visit(fn)
    return found


def _backward_slice(block, roots) -> list:
    """Ops of ``block`` that the values ``roots`` depend on, in block order."""
    needed, work = set(), list(roots)
    while work:
        value = work.pop()
        owner = value.owner
        if not hasattr(owner, "name") or owner.name is None:  # a block argument
            continue
        owner = owner.operation if hasattr(owner, "operation") else owner
        if owner.parent != block.owner or owner in needed:
            continue
        needed.add(owner)
        work.extend(owner.operands)
    return [op.operation for op in block.operations if op.operation in needed]


def _flag_generic(generic, asserts, code: int, ir, d):
    """Build the flag reduction before ``generic``; return (its 0-d result, bound text).

    The flag is ``code`` where a condition fails (0 where none does): every check of a function
    gets its own code, so that ``cse`` never merges two flags into one value returned twice."""
    arith, linalg, tensor = d["arith"], d["linalg"], d["tensor"]
    body = generic.regions[0].blocks[0]
    n_inputs = len(generic.operands) - len(generic.results)
    maps = [str(ir.AffineMapAttr(m).value) for m in ir.ArrayAttr(generic.attributes["indexing_maps"])]
    conditions = [a.operands[0] for a in asserts]
    slice_ops = _backward_slice(body, conditions)
    used = sorted({i for op in slice_ops for v in op.operands
                   for i in [_block_arg_index(v, body)] if i is not None and i < n_inputs})
    dims = sorted({int(x) for i in used for x in _DIM.findall(maps[i].split("->")[1])})
    index_dims = {ir.IntegerAttr(op.attributes["dim"]).value for op in slice_ops
                  if op.name == "linalg.index"}
    if not index_dims <= set(dims):     # the outputs' maps give those dims their extent
        used = sorted(set(used) | set(range(n_inputs, len(generic.operands))))
        dims = sorted({int(x) for i in used for x in _DIM.findall(maps[i].split("->")[1])})
    renumber = {old: new for new, old in enumerate(dims)}
    _i1, i32 = ir.IntegerType.get_signless(1), ir.IntegerType.get_signless(32)
    loc = generic.location
    with loc, ir.InsertionPoint(generic):
        init = tensor.EmptyOp([], i32).result
        zero = arith.ConstantOp(i32, ir.IntegerAttr.get(i32, 0)).result
        filled = linalg.fill(zero, outs=[init])
        new_maps = [_compact_map(maps[i], renumber, ir) for i in used]
        new_maps.append(ir.AffineMapAttr.get(ir.AffineMap.get(len(dims), 0, [])))
        iterators = ir.ArrayAttr.get(
            [ir.Attribute.parse("#linalg.iterator_type<reduction>")] * len(dims))
        flag = linalg.GenericOp([init.type], [generic.operands[i] for i in used], [filled],
                                ir.ArrayAttr.get(new_maps), iterators)
        arg_types = [body.arguments[i].type for i in used] + [i32]
        block = flag.regions[0].blocks.append(*arg_types, arg_locs=[loc] * len(arg_types))
    mapping = {body.arguments[i]: block.arguments[k] for k, i in enumerate(used)}
    with loc, ir.InsertionPoint(block):
        for op in slice_ops:
            clone = op.clone()
            if op.name == "linalg.index":
                old = ir.IntegerAttr(op.attributes["dim"]).value
                clone.attributes["dim"] = ir.IntegerAttr.get(ir.IntegerType.get_signless(64),
                                                             renumber[old])
            for k, v in enumerate(op.operands):
                if v in mapping:
                    clone.operands[k] = mapping[v]
            for old, new in zip(op.results, clone.results):
                mapping[old] = new
        ok = None
        for c in conditions:
            c = mapping.get(c, c)
            ok = c if ok is None else arith.AndIOp(ok, c).result
        zero = arith.ConstantOp(i32, ir.IntegerAttr.get(i32, 0)).result
        failed = arith.ConstantOp(i32, ir.IntegerAttr.get(i32, code)).result
        bad = arith.SelectOp(ok, zero, failed).result
        linalg.YieldOp([arith.OrIOp(block.arguments[-1], bad).result])
    return flag.result, _bound_text(slice_ops, ir)


_DIM = re.compile(r"\bd(\d+)\b")


def _compact_map(text: str, renumber: dict[int, int], ir):
    """``(d0, d1, d2) -> (d0, d2)`` with dims renumbered (``{0: 0, 2: 1}``: ``(d0, d1) -> (d0, d1)``)."""
    results = _DIM.sub(lambda m: f"d{renumber[int(m.group(1))]}", text.split("->", 1)[1])
    header = ", ".join(f"d{i}" for i in range(len(renumber)))
    return ir.Attribute.parse(f"affine_map<({header}) ->{results}>")


def _block_arg_index(value, block):
    try:
        arg = block.arguments
    except Exception:
        return None
    for i, a in enumerate(arg):
        if a == value:
            return i
    return None


def _bound_text(slice_ops, ir) -> str:
    """``[0, N)`` from the ``cmpi slt %i, N`` of the slice, when N is a constant."""
    for op in slice_ops:
        if op.name == "arith.cmpi" and str(op.attributes["predicate"]).startswith("2 "):
            bound = op.operands[1].owner
            if getattr(bound, "name", "") == "arith.constant":
                return f"[0, {ir.IntegerAttr(bound.attributes['value']).value})"
    return "its dimension"


def _clamp_extracts(generic, ir, d) -> None:
    """Clamp every data-dependent index of the body's ``tensor.extract``s into the table."""
    arith = d["arith"]
    body = generic.regions[0].blocks[0]
    index = ir.IndexType.get()
    for op in list(body.operations):
        op = op.operation
        if op.name != "tensor.extract":
            continue
        shape = ir.RankedTensorType(op.operands[0].type).shape
        for k, idx in enumerate(list(op.operands)[1:]):
            producer = getattr(idx.owner, "name", None)
            if producer in ("arith.constant", "linalg.index"):
                continue
            with op.location, ir.InsertionPoint(op):
                low = arith.ConstantOp(index, ir.IntegerAttr.get(index, 0)).result
                high = arith.ConstantOp(index, ir.IntegerAttr.get(index, shape[k] - 1)).result
                clamped = arith.MaxSIOp(arith.MinSIOp(idx, high).result, low).result
            op.operands[k + 1] = clamped


def _append_results(fn, values, ir) -> None:
    """Return ``values`` after the function's results (its return op and type)."""
    block = fn.regions[0].blocks[0]
    ret = list(block.operations)[-1].operation
    operands = list(ret.operands) + list(values)
    with ret.location, ir.InsertionPoint(ret):
        ir.Operation.create("func.return", operands=operands)
    ret.erase()
    ftype = ir.FunctionType(ir.TypeAttr(fn.attributes["function_type"]).value)
    new_type = ir.FunctionType.get(list(ftype.inputs), [v.type for v in operands])
    fn.attributes["function_type"] = ir.TypeAttr.get(new_type)
