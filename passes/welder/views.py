"""``welder-collapse-views``: element-wise and row ops read a producer's result without its view.

torch-mlir runs a linear layer on a ``[batch, tokens, dim]`` activation as a 2-D GEMM between a
``tensor.collapse_shape`` and a ``tensor.expand_shape``; everything after it (bias, GELU, the
residual add and layer norm, attention's scale and softmax over the ``[batch, heads, ...]``
view of a batched product) is a ``linalg.generic`` over the expanded shape. The expansion is a
view (no data moves), but it stands between the producer and its consumers: a tile's fused
epilogue, a row program or Welder's tile propagation would all have to look through it.

This pass removes the view, the way MLIR's reshape propagation "by collapsing" does
(``populateFoldReshapeOpsByCollapsingPatterns``, here in Python): a ``linalg.generic`` G that
reads ``E = tensor.expand_shape %src`` (or whose one result is read only by a
``tensor.collapse_shape``: a layer norm in front of a linear layer) is rebuilt over the
collapsed loops of the reshape's groups when every operand of G sees each group either whole
(its loops as consecutive dimensions, in order) or not at all. The rebuilt op
reads ``%src`` itself, its other operands through ``tensor.collapse_shape`` (an ``expand_shape``
with the same grouping is looked through, a ``tensor.empty`` or a ``linalg.fill`` of one is made
again in the collapsed shape), and its results are expanded back for the users it had; those
users are rewritten in turn, so a chain of element-wise ops and row reductions ends up in the
producer's own shape. Chains of reshapes left between ops are composed into one
(:func:`compose_reshapes`), and views nobody reads are erased.

The values are unchanged: collapsing loops renumbers the iteration space (row-major order is the
same on both sides); reductions are only ever over a group of one loop.

Not rewritten (left as they are): groups of several reduction loops, a group some operand sees
only partly (a per-batch tensor read by one loop of a merged pair), maps that are not projected
permutations with constants, ``linalg.index`` of a merged loop, dynamic shapes.

Assumes: plain linalg on tensors, run before ``quartet-outline-tiles``; ops inside a
``quartet.tile`` are left alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlir import ir
from mlir.dialects import linalg, tensor

from quartet.dialects import collect, defining_op, remap
from quartet.passes.base import ModulePass

RESHAPES = ("tensor.expand_shape", "tensor.collapse_shape")


def _in_tile(op: ir.Operation) -> bool:
    parent = op.parent
    while parent is not None:
        if parent.name == "quartet.tile":
            return True
        parent = parent.parent
    return False


def reassociation(op: ir.Operation) -> list[list[int]]:
    """The reassociation groups of an expand_shape / collapse_shape."""
    return [[ir.IntegerAttr(d).value for d in ir.ArrayAttr(g)]
            for g in ir.ArrayAttr(op.attributes["reassociation"])]


def reassociation_attr(groups: list[list[int]]) -> ir.ArrayAttr:
    i64 = ir.IntegerType.get_signless(64)
    return ir.ArrayAttr.get([ir.ArrayAttr.get([ir.IntegerAttr.get(i64, d) for d in g])
                             for g in groups])


def _shape(v: ir.Value) -> list[int]:
    return list(ir.RankedTensorType(v.type).shape)


def _collapsed_type(t: ir.Type, groups: list[list[int]]) -> ir.RankedTensorType:
    rt = ir.RankedTensorType(t)
    shape = []
    for g in groups:
        n = 1
        for d in g:
            n *= rt.shape[d]
        shape.append(n)
    return ir.RankedTensorType.get(shape, rt.element_type)


def collapse(value: ir.Value, groups: list[list[int]]) -> ir.Value:
    """``value`` seen with ``groups`` merged, at the current insertion point: the source of an
    expand_shape with that grouping, a fresh empty / fill for those, else a collapse_shape."""
    if all(len(g) == 1 for g in groups):
        return value
    owner = defining_op(value)
    new_type = _collapsed_type(value.type, groups)
    if owner is not None and owner.name == "tensor.expand_shape" and \
            reassociation(owner) == groups:
        return owner.operands[0]
    if owner is not None and owner.name == "tensor.empty":
        return tensor.EmptyOp(list(new_type.shape), new_type.element_type).result
    if owner is not None and owner.name == "linalg.fill":
        init = collapse(owner.operands[1], groups)
        return linalg.fill(owner.operands[0], outs=[init])
    return tensor.CollapseShapeOp(new_type, value, reassociation_attr(groups)).result


def expand(value: ir.Value, groups: list[list[int]], shape: list[int]) -> ir.Value:
    """``value`` expanded back to ``shape`` by ``groups`` (static shapes)."""
    if all(len(g) == 1 for g in groups):
        return value
    t = ir.RankedTensorType.get(shape, ir.RankedTensorType(value.type).element_type)
    owner = defining_op(value)
    if owner is not None and owner.name == "tensor.collapse_shape" and \
            reassociation(owner) == groups and _shape(owner.operands[0]) == shape:
        return owner.operands[0]
    return tensor.ExpandShapeOp(t, value, reassociation_attr(groups), [], shape).result


# ---------------------------------------------------------------------------------------------
# The rule for one generic


@dataclass
class Plan:
    """How one generic collapses: loop groups, and per operand its new map and dim grouping."""

    loop_groups: list[list[int]]
    maps: list[ir.AffineMap]
    operand_groups: list[list[list[int]]]
    iterators: list[str]


def _iterators(op: ir.Operation) -> list[str]:
    return ["reduction" if "reduction" in str(a) else "parallel"
            for a in ir.ArrayAttr(op.attributes["iterator_types"])]


def _maps(op: ir.Operation) -> list[ir.AffineMap]:
    return [ir.AffineMapAttr(a).value for a in ir.ArrayAttr(op.attributes["indexing_maps"])]


def _dim(expr: ir.AffineExpr) -> int | None:
    e = expr.maybe_downcast() if hasattr(expr, "maybe_downcast") else expr
    return e.position if isinstance(e, ir.AffineDimExpr) else None


def _is_const(expr: ir.AffineExpr) -> bool:
    e = expr.maybe_downcast() if hasattr(expr, "maybe_downcast") else expr
    return isinstance(e, ir.AffineConstantExpr)


def loop_groups(op: ir.Operation, operand: int, dim_groups: list[list[int]]):
    """The groups of ``op``'s loops that ``dim_groups`` of operand ``operand``'s dimensions
    merge (each dimension a loop or a constant), loops the operand does not index alone;
    None when they are not consecutive loops in order."""
    amap = _maps(op)[operand]
    n = len(_iterators(op))
    dims = [_dim(e) for e in amap.results]
    groups, seen = [], set()
    for g in dim_groups:
        loops = [dims[d] for d in g if dims[d] is not None]
        if any(not _is_const(amap.results[d]) and dims[d] is None for d in g):
            return None
        if len(loops) > 1 and loops != list(range(loops[0], loops[0] + len(loops))):
            return None
        if loops:
            groups.append(loops)
            seen.update(loops)
    groups += [[d] for d in range(n) if d not in seen]
    groups.sort(key=lambda g: g[0])
    if sorted(d for g in groups for d in g) != list(range(n)):
        return None
    return groups


def plan_collapse(op: ir.Operation, operand: int, groups: list[list[int]]) -> Plan | None:
    """The collapse of generic ``op`` by ``groups`` of its loops (read off an operand that an
    expand_shape feeds or a collapse_shape reads: :func:`loop_groups`), or None when the rule
    does not apply."""
    maps = _maps(op)
    iters = _iterators(op)
    n = len(iters)
    if groups is None or sorted(d for g in groups for d in g) != list(range(n)):
        return None
    if all(len(g) == 1 for g in groups):
        return None
    group_of = {}
    for k, g in enumerate(groups):
        kinds = {iters[d] for d in g}
        if len(g) > 1 and kinds != {"parallel"}:
            return None
        for d in g:
            group_of[d] = k
    new_maps, operand_groups = [], []
    for m in maps:
        results = list(m.results)
        exprs, ogroups = [], []
        p = 0
        while p < len(results):
            d = _dim(results[p])
            if d is None:
                if not _is_const(results[p]):
                    return None
                exprs.append(results[p])
                ogroups.append([p])
                p += 1
                continue
            g = groups[group_of[d]]
            if len(g) > 1:
                if d != g[0] or [_dim(e) for e in results[p:p + len(g)]] != g:
                    return None
                ogroups.append(list(range(p, p + len(g))))
                p += len(g)
            else:
                ogroups.append([p])
                p += 1
            exprs.append(ir.AffineDimExpr.get(group_of[d]))
        used = {_dim(e) for e in results if _dim(e) is not None}
        for g in groups:
            if len(g) > 1 and 0 < len(used & set(g)) < len(g):
                return None
        new_maps.append(ir.AffineMap.get(len(groups), 0, exprs))
        operand_groups.append(ogroups)
    merged = {d for g in groups if len(g) > 1 for d in g}
    for inner in op.regions[0].blocks[0].operations:
        if inner.operation.name == "linalg.index" and \
                ir.IntegerAttr(inner.operation.attributes["dim"]).value in merged:
            return None
    return Plan(groups, new_maps, operand_groups, [iters[g[0]] for g in groups])


def rewrite(op: ir.Operation, plan: Plan) -> ir.Operation:
    """Build the collapsed generic in front of ``op``, point ``op``'s users at its results
    (expanded back), erase ``op``; return the new op."""
    nin = ir.DenseI32ArrayAttr(op.attributes["operandSegmentSizes"])[0]
    operands = list(op.operands)
    with op.location, ir.InsertionPoint(op):
        new_operands = [collapse(v, g) for v, g in zip(operands, plan.operand_groups)]
        inputs, inits = new_operands[:nin], new_operands[nin:]
        iterators = [ir.Attribute.parse(f"#linalg.iterator_type<{t}>") for t in plan.iterators]
        new = linalg.GenericOp([v.type for v in inits], inputs, inits,
                               ir.ArrayAttr.get([ir.AffineMapAttr.get(m) for m in plan.maps]),
                               ir.ArrayAttr.get(iterators))
        old_block = op.regions[0].blocks[0]
        block = new.regions[0].blocks.append(*[a.type for a in old_block.arguments],
                                             arg_locs=[op.location] * len(old_block.arguments))
        mapping = dict(zip(old_block.arguments, block.arguments))
        loop_of = {g[0]: k for k, g in enumerate(plan.loop_groups)}
        ip = ir.InsertionPoint(block)
        for inner in old_block.operations:
            clone = inner.operation.clone(ip=ip)
            remap(clone, mapping)
            if clone.name == "linalg.index":
                old_dim = ir.IntegerAttr(clone.attributes["dim"]).value
                clone.attributes["dim"] = ir.IntegerAttr.get(ir.IntegerType.get_signless(64),
                                                             loop_of[old_dim])
            mapping.update(zip(inner.operation.results, clone.results))
        for k, (old, res) in enumerate(zip(op.results, new.results)):
            if not any(True for _ in old.uses):
                continue
            groups = plan.operand_groups[nin + k]
            old.replace_all_uses_with(expand(res, groups, _shape(old)))
    op.erase()
    return new.operation


# ---------------------------------------------------------------------------------------------
# Reshape chains


def _reassociation_between(src: list[int], dst: list[int]) -> list[list[int]] | None:
    """Groups of ``src``'s dims whose products are ``dst`` (collapse), or None. Unit dims join
    the group before them (the first group when they lead)."""
    if len(dst) > len(src):
        return None
    groups, i = [], 0
    for size in dst:
        g, prod = [], 1
        while i < len(src):
            prod *= src[i]
            g.append(i)
            i += 1
            if prod >= size:
                break
        if prod != size or not g:
            return None
        groups.append(g)
    while i < len(src):           # trailing unit dims
        if src[i] != 1 or not groups:
            return None
        groups[-1].append(i)
        i += 1
    return groups


def compose_reshapes(op: ir.Operation) -> bool:
    """Replace a reshape whose source is another reshape by one reshape of the first source
    (a collapse or an expand); True if it did."""
    src_op = defining_op(op.operands[0])
    if src_op is None or src_op.name not in RESHAPES or _in_tile(src_op):
        return False
    source = src_op.operands[0]
    a, b = _shape(source), _shape(op.results[0])
    with op.location, ir.InsertionPoint(op):
        if a == b:
            new = source
        elif (g := _reassociation_between(a, b)) is not None:
            new = tensor.CollapseShapeOp(op.results[0].type, source,
                                         reassociation_attr(g)).result
        elif (g := _reassociation_between(b, a)) is not None:
            new = tensor.ExpandShapeOp(op.results[0].type, source, reassociation_attr(g), [],
                                       b).result
        else:
            return False
    op.results[0].replace_all_uses_with(new)
    op.erase()
    return True


def erase_dead(module) -> None:
    """Erase reshapes, empties and fills that nothing reads (outside tiles)."""
    changed = True
    while changed:
        changed = False
        for op in collect(module, lambda o: o.name in RESHAPES + ("tensor.empty", "linalg.fill")
                          and not _in_tile(o)):
            if not any(True for r in op.results for _ in r.uses):
                op.erase()
                changed = True


def collapse_views(module) -> int:
    """Apply the rule until nothing changes; return the number of generics rewritten."""
    count = 0
    changed = True
    while changed:
        changed = False
        for exp in collect(module, lambda o: o.name == "tensor.expand_shape" and not _in_tile(o)):
            groups = reassociation(exp)
            for use in list(exp.results[0].uses):
                user = use.owner.operation
                if user.name != "linalg.generic" or _in_tile(user):
                    continue
                nin = ir.DenseI32ArrayAttr(user.attributes["operandSegmentSizes"])[0]
                if use.operand_number >= nin:
                    continue
                plan = plan_collapse(user, use.operand_number,
                                     loop_groups(user, use.operand_number, groups))
                if plan is None:
                    continue
                rewrite(user, plan)
                count += 1
                changed = True
                break
            if changed:
                break
        if not changed:       # a collapse_shape reading a generic's result: collapse the generic
            for col in collect(module, lambda o: o.name == "tensor.collapse_shape" and
                               not _in_tile(o)):
                producer = defining_op(col.operands[0])
                if producer is None or producer.name != "linalg.generic" or \
                        _in_tile(producer) or len(producer.results) != 1:
                    continue
                readers = [u.owner.operation for u in producer.results[0].uses]
                if any(r.name != "tensor.collapse_shape" or
                       reassociation(r) != reassociation(col) for r in readers):
                    continue
                nin = ir.DenseI32ArrayAttr(producer.attributes["operandSegmentSizes"])[0]
                plan = plan_collapse(producer, nin, loop_groups(producer, nin,
                                                                reassociation(col)))
                if plan is None:
                    continue
                rewrite(producer, plan)
                count += 1
                changed = True
                break
        if not changed:
            for op in collect(module, lambda o: o.name in RESHAPES and not _in_tile(o)):
                if compose_reshapes(op):
                    changed = True
                    break
    erase_dead(module)
    return count


@dataclass(frozen=True)
class WelderCollapseViews(ModulePass):
    name = "welder-collapse-views"
    summary = ("rebuild element-wise and row ops over a producer's own shape so that they read "
               "its result without the reshape view in between")

    def apply(self, module) -> None:
        with module.context:
            collapse_views(module)
