"""``roller-fold-casts``: a mixed-precision contraction read straight from its fp16/bf16 operands.

Roller (OSDI'22) builds one tile program per *operator*, and on tensor-core hardware the operator
of an fp16 ``F.linear`` is an fp16 x fp16 -> fp32-accumulate GEMM (its rTile aligned to the
tensor-core shape). torch-mlir spells that operator differently: a ``linalg.transpose`` of the
weight, three element-wise ``linalg.generic``s that cast the activation, the transposed weight
and the bias from f16 to f32 (``arith.extf``), then ``linalg.fill`` + ``linalg.matmul`` on f32
tensors. Configured as written, the GEMM sees f32 operands (CUDA cores, not tensor cores) and every
cast and the transpose is its own kernel writing an f32 (or transposed) copy to memory. The casts
and the transpose are how the operator was spelled, not part of it; this pass takes them back
out, so that Roller sees the operator it was written for.

Rule 1. A ``linalg.matmul`` / ``linalg.batch_matmul`` (any ``indexing_maps``), or a matmul-like
``linalg.generic`` (two inputs, one init, projected-permutation maps, body ``[extf ...] mulf,
addf(acc, product), yield``), whose input is produced, through a chain of

* an element-wise cast: a ``linalg.generic`` with one input, identity (or permutation) maps,
  all loops parallel, body only ``arith.extf`` from f16/bf16 to f32 (at most one per chain);
* a transpose: ``linalg.transpose``, or a ``linalg.generic`` with one input, permutation maps,
  all loops parallel, whose body only yields the input (or casts it, as above);
* a ``tensor.collapse_shape`` of a transpose whose permutation keeps every collapsed group's
  dimensions adjacent and in order (attention's ``q @ k.transpose(-1, -2)`` on 4-D tensors: the
  transpose of the head dimensions is folded, the collapse rebuilt on the untransposed tensor),

is replaced by ONE ``linalg.generic`` over the same loops that reads the chain's source tensor
directly through the composed (permuted) indexing map, with body ``extf(a), extf(b), mulf,
addf``, accumulating into the same init (usually the ``linalg.fill``). The value is identical:
``extf`` is exact, a transpose moves values, and ``extf`` of an ``extf`` is the one ``extf``.
The new generic is what ``lowering/gemm_problem.analyze`` takes (projected-permutation maps,
payload less extf/truncf ``[mulf, addf, yield]``); its fp16/bf16 operands reach tensor cores.

Rule 2, for the epilogue. An element-wise (all-parallel) ``linalg.generic`` that reads a
contraction's result and a cast (as above, identity maps) of an f16/bf16 tensor, such as the bias
of ``F.linear``, reads the f16/bf16 tensor instead with the ``extf`` moved into its body (the op
is changed in place). Without it the bias cast stays a kernel of its own: ``roller-fuse`` puts
nothing but the accumulator's fill in front of a GEMM, and the cast has no producer to join.

Reading the source is valid whether or not the cast or transposed value has other users; the
chain's ops (and their ``tensor.empty`` inits) are erased once nothing reads them any more, so a
cast shared with another consumer stays for that consumer. A contraction with no such chain, or
one this rule does not cover (an accumulator narrower than an input, dynamic shapes, a body
that is not a multiply-accumulate), is left unchanged; the pass never fails.

Assumes: plain linalg on tensors, run BEFORE ``quartet-outline-tiles`` (the Roller pipeline:
``roller-fold-casts,quartet-outline-tiles,roller-fuse,roller-config``). Ops inside a
``quartet.tile`` are left alone: a tile's inputs are the interface its schedule was made for.
Casts in front of other ops (softmax, layer norm) are left to ``roller-fuse``'s row programs.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlir import ir
from mlir.dialects import arith, linalg, tensor

from quartet.dialects import collect, defining_op, linalg_info
from quartet.passes.base import ModulePass

CONTRACTIONS = ("linalg.matmul", "linalg.batch_matmul", "linalg.generic")
NARROW = ("f16", "bf16")
FLOAT_WIDTH = {"bf16": 16, "f16": 16, "f32": 32, "f64": 64}


# ---------------------------------------------------------------------------------------------
# Small readers of the IR.


def _used(op: ir.Operation) -> bool:
    return any(any(True for _ in r.uses) for r in op.results)


def _in_tile(op: ir.Operation) -> bool:
    parent = op.parent
    while parent is not None:
        if parent.name == "quartet.tile":
            return True
        parent = parent.parent
    return False


def _element(value: ir.Value) -> str | None:
    t = value.type
    if not isinstance(t, ir.RankedTensorType):
        return None
    rt = ir.RankedTensorType(t)
    return str(rt.element_type) if rt.has_static_shape else None


def _map_dims(attr: ir.Attribute) -> list[int] | None:
    """The loop of each result of a pure-dimension affine map, or None."""
    amap = ir.AffineMapAttr(attr).value
    dims = []
    for expr in amap.results:
        e = expr.maybe_downcast() if hasattr(expr, "maybe_downcast") else expr
        if not isinstance(e, ir.AffineDimExpr):
            return None
        dims.append(e.position)
    return dims


def _parallel(op: ir.Operation) -> bool:
    return all("parallel" in str(t) for t in ir.ArrayAttr(op.attributes["iterator_types"]))


def _body(op: ir.Operation) -> tuple[ir.Block, list[ir.Operation]]:
    block = op.regions[0].blocks[0]
    return block, [o.operation for o in block.operations]


def _is_arg(value: ir.Value, block: ir.Block, index: int) -> bool:
    owner = value.owner
    return isinstance(owner, ir.Block) and owner == block and \
        ir.BlockArgument(value).arg_number == index


# ---------------------------------------------------------------------------------------------
# The producers a chain may pass through.


@dataclass(frozen=True)
class Step:
    """One producer op looked through: ``source`` is read instead of its result.

    ``perm[j]`` is the source dimension that the result's dimension j reads (identity for a plain
    cast); ``cast`` says whether the op extends f16/bf16 to f32 on the way.
    """

    op: ir.Operation
    source: ir.Value
    perm: tuple[int, ...]
    cast: bool


def _unary_generic(op: ir.Operation) -> Step | None:
    """A one-input, all-parallel ``linalg.generic`` with permutation maps whose body yields its
    input, or ``extf`` of it from f16/bf16 to f32."""
    if op.name != "linalg.generic" or len(op.results) != 1 or len(op.operands) != 2:
        return None
    if not _parallel(op):
        return None
    maps = [_map_dims(a) for a in ir.ArrayAttr(op.attributes["indexing_maps"])]
    if len(maps) != 2 or any(m is None for m in maps):
        return None
    loops = len(ir.ArrayAttr(op.attributes["iterator_types"]))
    in_map, out_map = maps
    if sorted(in_map) != list(range(loops)) or sorted(out_map) != list(range(loops)):
        return None
    block, ops = _body(op)
    terminator = ops[-1]
    yielded = terminator.operands[0]
    if len(ops) == 1:
        cast = False
        if not _is_arg(yielded, block, 0):
            return None
    elif len(ops) == 2 and ops[0].name == "arith.extf" and ops[0].results[0] == yielded:
        if not _is_arg(ops[0].operands[0], block, 0):
            return None
        if _element(op.operands[0]) not in NARROW or _element(op.results[0]) != "f32":
            return None
        cast = True
    else:
        return None
    if _element(op.operands[0]) is None or _element(op.results[0]) is None:
        return None
    # Result dim j is indexed by loop out_map[j]; source dim k by loop in_map[k].
    perm = tuple(in_map.index(out_map[j]) for j in range(loops))
    return Step(op, op.operands[0], perm, cast)


def _transpose(op: ir.Operation) -> Step | None:
    if op.name != "linalg.transpose" or _element(op.operands[0]) is None:
        return None
    perm = tuple(ir.DenseI64ArrayAttr(op.attributes["permutation"]))
    return Step(op, op.operands[0], perm, False)


def _producer_step(value: ir.Value) -> Step | None:
    op = defining_op(value)
    if op is None:
        return None
    return _transpose(op) or _unary_generic(op)


@dataclass
class Chain:
    """What a contraction operand becomes: ``source`` read through ``dims`` (the contraction
    loop of each source dimension), ``looked_through`` the ops it no longer needs."""

    source: ir.Value
    dims: list[int]
    looked_through: list[ir.Operation]
    collapse: tuple | None = None     # (source, reassociation) of a collapse to rebuild


def _groups(op: ir.Operation) -> list[list[int]]:
    return [[int(ir.IntegerAttr(i).value) for i in ir.ArrayAttr(g)]
            for g in ir.ArrayAttr(op.attributes["reassociation"])]


def _through_collapse(value: ir.Value, dims: list[int]) -> Chain | None:
    """``collapse_shape(transpose(x))`` read with ``dims`` as ``collapse_shape(x)`` read with
    permuted dims, when every collapsed group is a run of adjacent dims of ``x``, in order."""
    collapse = defining_op(value)
    if collapse is None or collapse.name != "tensor.collapse_shape":
        return None
    step = _producer_step(collapse.operands[0])
    if step is None or step.cast or step.perm == tuple(range(len(step.perm))):
        return None
    groups = _groups(collapse)
    sources = [[step.perm[j] for j in g] for g in groups]
    if any(s != list(range(s[0], s[0] + len(s))) for s in sources):
        return None
    order = sorted(range(len(groups)), key=lambda g: sources[g][0])   # groups in x's order
    new_dims = [dims[g] for g in order]
    reassociation = [sources[g] for g in order]
    return Chain(step.source, new_dims, [collapse, step.op], (step.source, reassociation))


def operand_chain(value: ir.Value, dims: list[int]) -> Chain:
    """Look through casts and transposes in front of a contraction operand read with ``dims``."""
    chain = Chain(value, list(dims), [])
    cast_seen = False
    while True:
        step = _producer_step(chain.source)
        if step is not None and not (step.cast and cast_seen):
            new = [None] * len(chain.dims)
            for j, p in enumerate(step.perm):
                new[p] = chain.dims[j]
            chain = Chain(step.source, new, chain.looked_through + [step.op])
            cast_seen = cast_seen or step.cast
            continue
        folded = _through_collapse(chain.source, chain.dims)
        if folded is not None:
            folded.looked_through = chain.looked_through + folded.looked_through
            return folded
        return chain


# ---------------------------------------------------------------------------------------------
# The contraction.


@dataclass(frozen=True)
class Contraction:
    """A multiply-accumulate over ``iterators`` with operand maps ``maps`` (A, B, init)."""

    op: ir.Operation
    iterators: tuple[str, ...]
    maps: tuple[list[int], list[int], list[int]]


def _multiply_accumulate_body(op: ir.Operation) -> bool:
    """``[extf(in_i) ...] mulf(a, b), addf(acc, product), yield`` with a, b the two inputs."""
    block, ops = _body(op)
    acc_type = str(block.arguments[2].type)
    read: dict = {}          # value -> input index it stands for
    for i in range(2):
        read[block.arguments[i]] = i
    mul = add = None
    for inner in ops[:-1]:
        if inner.name == "arith.extf" and inner.operands[0] in read \
                and str(inner.results[0].type) == acc_type and mul is None:
            read[inner.results[0]] = read[inner.operands[0]]
        elif inner.name == "arith.mulf" and mul is None:
            if sorted(read.get(v, -1) for v in inner.operands) != [0, 1]:
                return False
            if any(str(v.type) != acc_type for v in inner.operands):
                return False
            mul = inner
        elif inner.name == "arith.addf" and mul is not None and add is None:
            operands = list(inner.operands)
            if not ((operands[0] == block.arguments[2] and operands[1] == mul.results[0]) or
                    (operands[1] == block.arguments[2] and operands[0] == mul.results[0])):
                return False
            add = inner
        else:
            return False
    terminator = ops[-1]
    return add is not None and len(terminator.operands) == 1 and \
        terminator.operands[0] == add.results[0]


def contraction(op: ir.Operation) -> Contraction | None:
    """The op as a :class:`Contraction` this pass may rebuild, or None."""
    if op.name not in CONTRACTIONS or len(op.operands) != 3 or len(op.results) != 1:
        return None
    types = [_element(v) for v in op.operands]
    if any(t not in FLOAT_WIDTH for t in types):
        return None
    if any(FLOAT_WIDTH[t] > FLOAT_WIDTH[types[2]] for t in types[:2]):
        return None          # a named op would truncate its inputs: not an exact extension
    if op.name == "linalg.generic":
        if "reduction" not in str(op.attributes["iterator_types"]):
            return None
        if not _multiply_accumulate_body(op):
            return None
    try:
        info = linalg_info.info(op)
    except (ValueError, ir.MLIRError, StopIteration):
        return None
    maps = []
    for exprs in info.indexing_maps:
        dims = []
        for e in exprs:
            if not (e.startswith("d") and e[1:].isdigit()):
                return None
            dims.append(int(e[1:]))
        maps.append(dims)
    if len(maps) != 3:
        return None
    return Contraction(op, info.iterator_types, tuple(maps))


def _affine_map(num_loops: int, dims: list[int]) -> ir.AffineMap:
    return ir.AffineMap.get(num_loops, 0, [ir.AffineDimExpr.get(d) for d in dims])


def _rebuild(c: Contraction, chains: list[Chain]) -> ir.Operation:
    """The multiply-accumulate generic that replaces ``c.op`` (inserted in front of it)."""
    op = c.op
    init = op.operands[2]
    acc = ir.RankedTensorType(init.type).element_type
    n = len(c.iterators)
    with op.location, ir.InsertionPoint(op):
        inputs = []
        for chain in chains:
            if chain.collapse is not None:
                source, reassociation = chain.collapse
                src_t = ir.RankedTensorType(source.type)
                shape = []
                for group in reassociation:
                    size = 1
                    for d in group:
                        size *= src_t.shape[d]
                    shape.append(size)
                result = ir.RankedTensorType.get(shape, src_t.element_type)
                inputs.append(tensor.CollapseShapeOp(
                    result, source,
                    ir.ArrayAttr.get([ir.ArrayAttr.get(
                        [ir.IntegerAttr.get(ir.IntegerType.get_signless(64), d) for d in g])
                        for g in reassociation])).result)
            else:
                inputs.append(chain.source)
        maps = [_affine_map(n, ch.dims) for ch in chains] + [_affine_map(n, c.maps[2])]
        iterators = [ir.Attribute.parse(f"#linalg.iterator_type<{t}>") for t in c.iterators]
        generic = linalg.GenericOp([init.type], inputs, [init],
                                   ir.ArrayAttr.get([ir.AffineMapAttr.get(m) for m in maps]),
                                   ir.ArrayAttr.get(iterators))
        types = [ir.RankedTensorType(v.type).element_type for v in inputs] + [acc]
        block = generic.regions[0].blocks.append(*types, arg_locs=[op.location] * 3)
        with ir.InsertionPoint(block):
            a, b = (arith.extf(acc, x) if x.type != acc else x for x in list(block.arguments)[:2])
            product = arith.mulf(a, b)
            total = arith.addf(block.arguments[2], product)
            linalg.YieldOp([total])
    return generic.operation


def fold_contraction(c: Contraction) -> ir.Operation | None:
    """Rewrite one contraction by the module docstring's rule; return the new generic, or None
    (nothing to fold, or a chain this rule does not cover: the IR is unchanged)."""
    op = c.op
    chains = [operand_chain(op.operands[i], c.maps[i]) for i in range(2)]
    if not any(ch.looked_through for ch in chains):
        return None
    acc_width = FLOAT_WIDTH[_element(op.operands[2])]
    for ch in chains:
        t = _element(ch.source)
        if t not in FLOAT_WIDTH or FLOAT_WIDTH[t] > acc_width:
            return None
    new = _rebuild(c, chains)
    op.results[0].replace_all_uses_with(new.results[0])
    op.erase()
    erase_dead([o for ch in chains for o in ch.looked_through])
    return new


def _reads_contraction(op: ir.Operation) -> bool:
    for value in op.operands:
        producer = defining_op(value)
        if producer is None:
            continue
        if producer.name in ("linalg.matmul", "linalg.batch_matmul"):
            return True
        if producer.name == "linalg.generic" and \
                "reduction" in str(producer.attributes["iterator_types"]):
            return True
    return False


def fold_epilogue_casts(op: ir.Operation) -> list[ir.Operation]:
    """Rule 2 (module docstring): an element-wise ``linalg.generic`` reading a contraction's
    result reads the f16/bf16 source of a cast operand instead, with the ``extf`` moved into its
    body. Rewrites ``op`` in place; returns the casts it no longer reads (not erased here: the
    caller erases them with :func:`erase_dead` once every consumer has been rewritten)."""
    if op.name != "linalg.generic" or not _parallel(op) or not _reads_contraction(op):
        return []
    num_inputs = list(ir.DenseI32ArrayAttr(op.attributes["operandSegmentSizes"]))[0]
    block = op.regions[0].blocks[0]
    casts = []
    for i in range(num_inputs):
        step = _producer_step(op.operands[i])
        if step is None or not step.cast or step.perm != tuple(range(len(step.perm))):
            continue
        arg = block.arguments[i]
        wide = arg.type
        op.operands[i] = step.source
        arg.set_type(ir.RankedTensorType(step.source.type).element_type)
        with op.location, ir.InsertionPoint.at_block_begin(block):
            extended = arith.extf(wide, arg)
        arg.replace_all_uses_except(extended, extended.owner.operation)
        casts.append(step.op)
    return casts


def erase_dead(candidates: list[ir.Operation]) -> int:
    """Erase the candidate ops (and ``tensor.empty`` inits they read) that nothing reads, until
    none is left; return how many ops were erased."""
    pending = []
    for op in candidates:
        if op not in pending:
            pending.append(op)
    erased = 0
    changed = True
    while changed:
        changed = False
        for op in list(pending):
            if _used(op):
                continue
            inits = [defining_op(v) for v in op.operands]
            pending.remove(op)
            op.erase()
            erased += 1
            changed = True
            for init in inits:
                if init is not None and init.name == "tensor.empty" and init not in pending:
                    pending.append(init)
    return erased


@dataclass(frozen=True)
class RollerFoldCasts(ModulePass):
    name = "roller-fold-casts"
    summary = ("read a matmul/batch_matmul straight from the f16/bf16 tensors that torch-mlir "
               "casts (arith.extf) and transposes in front of it: one mixed-precision "
               "linalg.generic contraction (run before quartet-outline-tiles)")

    def apply(self, module) -> None:
        # Find every contraction first: folding erases casts, which are linalg.generic ops too.
        found = [contraction(op) for op in
                 collect(module, lambda o: o.name in CONTRACTIONS and not _in_tile(o))]
        for c in found:
            if c is not None:
                fold_contraction(c)
        unread = []
        for op in collect(module, lambda o: o.name == "linalg.generic" and not _in_tile(o)):
            unread += fold_epilogue_casts(op)
        erase_dead(unread)
