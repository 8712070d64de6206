"""The column-reduction block program: one reduction over outer loops (innermost loop parallel).

Each thread owns ``V`` adjacent outputs and walks the reduced loops serially; blocks of
``32 x TY`` threads split the reduced loops over ``TY`` rows and combine in shared memory.
Built op by op (``common.py`` says why upstream transforms do not serve here).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mlir import ir
from mlir.dialects import arith, func, gpu, memref, scf, vector

from quartet.errors import QuartetError

from .common import (_reject_gathers, COMBINERS, Unsupported, _and, _body_ops_for, _bytes_of, _check_map, _combine, _const_like, _convert, _guarded, _index, _iterators, _loc, _loop_ranges, _maps, _non_tensor_captures, _num_inputs, _owner_op, _pow2_at_least, _splat, _split_reduction, accumulator_type, chip_of, emit_body, kernel_func, kernel_inputs)

#: shared memory the combining tree of a block may take: well inside what a block gets without
#: the opt-in attribute on every chip of the target table (48 KB on NVIDIA, 64 KB on gfx942)
TREE_SMEM_BYTES = 32 * 1024

# ---------------------------------------------------------------------------------------------
# Reductions over outer loops (the innermost loop is parallel): `colreduce`


@dataclass
class ColReduction:
    op: ir.Operation
    par: list            # parallel loop positions, in order (the last is the innermost loop)
    red: list            # reduction loop positions
    ranges: tuple
    vector: int
    combiner: str
    x: ir.Value          # f(in): what the body combines into its output


def analyze_colreduce(tile) -> ColReduction:
    ops = [o for o in tile.computation if o.name not in ("tensor.empty", "linalg.fill")]
    if len(ops) != 1 or ops[0].name != "linalg.generic":
        raise Unsupported("colreduce takes one linalg.generic (and fills)")
    op = ops[0]
    _reject_gathers(ops)
    for f in tile.computation:
        if f.name == "linalg.fill" and (len(list(f.results[0].uses)) != 1 or
                                        f.results[0] not in list(op.operands)):
            raise Unsupported("a linalg.fill that is not the reduction's init")
    iters = _iterators(op)
    n = len(iters)
    if "reduction" not in iters or iters[-1] != "parallel" or len(op.results) != 1:
        raise Unsupported("colreduce takes a one-result reduction whose innermost loop is "
                           "parallel")
    if list(tile.terminator.operands) != [op.results[0]]:
        raise Unsupported("colreduce takes a tile yielding its reduction")
    for v in _non_tensor_captures(tile):
        owner = _owner_op(v)
        if owner is None or owner.name != "arith.constant":
            raise Unsupported("a non-constant scalar captured by the tile")
    ranges = _loop_ranges(op)
    maps = _maps(op)
    nin = _num_inputs(op)
    par = [i for i in range(n) if iters[i] == "parallel"]
    red = [i for i in range(n) if iters[i] == "reduction"]
    for amap in maps:
        _check_map(amap, n, "full", False)
        if ("loop", n - 1) in amap and amap[-1] != ("loop", n - 1):
            raise Unsupported("an operand transposed in the innermost loop")
    out_map = maps[nin]
    if [d for d in out_map if d[0] == "loop"] != [("loop", p) for p in par] or \
            out_map[-1] != ("loop", n - 1):
        raise Unsupported("an output map that is not the parallel loops in order")
    block = op.regions[0].blocks[0]
    combiner, x = _split_reduction(block, nin, 0)
    for bop in _body_ops_for(block, [x]):
        if bop.name == "linalg.index" or len(bop.regions):
            raise Unsupported(f"'{bop.name}' in a generic body")
    elts = [_bytes_of(ir.ShapedType(v.type).element_type) for v in list(op.operands)[:nin]]
    V = max(1, 16 // min(elts)) if elts else 1
    while V > 1 and ranges[-1] % V:
        V //= 2
    return ColReduction(op, par, red, ranges, V, combiner, x)


def build_colreduce_kernel(tile, target, cr: ColReduction | None = None, name: str = "kernel"):
    """Each thread owns V adjacent outputs and walks the reduced loops with stride TY; the TY
    partials of a block column are combined by a tree in shared memory."""
    target = chip_of(target)
    cr = cr or analyze_colreduce(tile)
    op, V = cr.op, cr.vector
    t = ir.ShapedType(op.results[0].type).element_type
    acc_t = accumulator_type(cr.combiner, t)
    P = math.prod(cr.ranges[i] for i in cr.par)
    K = math.prod(cr.ranges[i] for i in cr.red)
    PV = P // V
    TX = min(8, PV)
    most = target.max_threads_per_block
    cap = min(most, (TREE_SMEM_BYTES // (V * _bytes_of(acc_t))))
    if tile.threads is not None:
        if tile.threads <= 0 or tile.threads > most:
            raise QuartetError(f"'quartet.tile' threads={tile.threads} does not fit the "
                               f"hardware (at most {most})", _loc(tile.operation))
        while tile.threads % TX:
            TX //= 2
        TY = 1 << ((tile.threads // TX).bit_length() - 1)    # a power of two for the tree
    else:
        want = max(1, (target.num_units * target.max_threads_per_unit) // PV)
        TY = max(1, min(1 << (want.bit_length() - 1), cap // TX, _pow2_at_least(K)))
    T = TX * TY
    grid = math.ceil(PV / TX)
    module = ir.Module.create()
    fn, ins, outs = kernel_func(module, name, tile)
    in_map = dict(zip(kernel_inputs(tile), ins))
    with ir.InsertionPoint(fn.entry_block):
        launch = gpu.LaunchOp((grid, 1, 1), (T, 1, 1))
        func.ReturnOp([])
    body = launch.regions[0].blocks[0]
    space = ir.Attribute.parse("#gpu.address_space<workgroup>")
    smem = None
    if TY > 1:
        launch.operation.attributes["workgroup_attributions"] = ir.IntegerAttr.get(
            ir.IntegerType.get_signless(64), 1)
        smem = body.add_argument(ir.MemRefType.get([T * V], acc_t, memory_space=space),
                                 ir.Location.unknown())
    n = len(cr.ranges)
    nin = _num_inputs(op)
    maps = _maps(op)
    block = op.regions[0].blocks[0]
    kind, ident = COMBINERS[cr.combiner]
    vt = ir.VectorType.get([V], acc_t)
    with ir.InsertionPoint(body):
        bid, tid = body.arguments[0], body.arguments[3]
        tx = arith.remui(tid, _index(TX)) if TY > 1 else tid
        ty = arith.divui(tid, _index(TX)) if TY > 1 else _index(0)
        o = arith.addi(arith.muli(bid, _index(TX)), tx)
        valid = arith.cmpi(arith.CmpIPredicate.ult, o, _index(PV)) if grid * TX != PV else None
        oc = arith.minui(o, _index(PV - 1)) if valid is not None else o
        flat = arith.muli(oc, _index(V))
        loop_idx: dict = {}
        par_extents = [cr.ranges[i] for i in cr.par]
        for k, p in enumerate(cr.par):
            stride = math.prod(par_extents[k + 1:])
            q = arith.divui(flat, _index(stride)) if stride > 1 else flat
            loop_idx[p] = arith.remui(q, _index(par_extents[k])) if k > 0 else q
        init_acc = _const_like(ident(acc_t), acc_t, V)
        loop = scf.ForOp(ty, _index(K), _index(TY), [init_acc])
        with ir.InsertionPoint(loop.body):
            kk = loop.induction_variable
            red_extents = [cr.ranges[i] for i in cr.red]
            idx = dict(loop_idx)
            for k, r in enumerate(cr.red):
                stride = math.prod(red_extents[k + 1:])
                q = arith.divui(kk, _index(stride)) if stride > 1 else kk
                idx[r] = arith.remui(q, _index(red_extents[k])) if k > 0 else q
            args = []
            for i, (amap, v) in enumerate(zip(maps, op.operands)):
                barg = block.arguments[i]
                if i >= nin or not len(list(barg.uses)):
                    args.append(None)
                    continue
                if v not in in_map:
                    raise Unsupported("an input computed in the tile")
                mem = in_map[v]
                elt = ir.MemRefType(mem.type).element_type
                ix = [_index(c) if kd == "const" else idx[c] for kd, c in amap]
                if amap and amap[-1] == ("loop", n - 1):
                    args.append(vector.load(ir.VectorType.get([V], elt), mem, ix,
                                            alignment=V * _bytes_of(elt)))
                else:
                    args.append(_splat(memref.load(mem, ix), V))
            xval = emit_body(block, args, V, targets=[cr.x])[0]
            acc = _combine(cr.combiner, _convert(xval, acc_t, V), loop.inner_iter_args[0])
            scf.YieldOp([acc])
        acc = loop.results[0]
        if TY > 1:
            slot = arith.muli(tid, _index(V))
            vector.store(acc, smem, [slot])
            gpu.barrier()
            s = TY // 2
            while s >= 1:
                cond = arith.cmpi(arith.CmpIPredicate.ult, ty, _index(s))
                if_op = scf.IfOp(cond)
                with ir.InsertionPoint(if_op.then_block):
                    other = arith.muli(arith.addi(tid, _index(s * TX)), _index(V))
                    a = vector.load(vt, smem, [slot])
                    b = vector.load(vt, smem, [other])
                    vector.store(_combine(cr.combiner, a, b), smem, [slot])
                    scf.YieldOp([])
                gpu.barrier()
                s //= 2
            acc = vector.load(vt, smem, [slot])
        first = arith.cmpi(arith.CmpIPredicate.eq, ty, _index(0)) if TY > 1 else None
        cond = _and(valid, first)
        out = outs[0]
        init = list(op.operands)[nin]
        out_map = maps[nin]

        def store():
            ix = [_index(c) if kd == "const" else loop_idx[c] for kd, c in out_map]
            init_v = _init_vector(init, in_map, out_map, ix, V)
            total = _combine(cr.combiner, acc, _convert(init_v, acc_t, V))
            vector.store(_convert(total, t, V), out, ix, alignment=V * _bytes_of(t))

        _guarded(cond, store)
        gpu.TerminatorOp()
    return module, (grid, T, TX, TY)


def _init_vector(init: ir.Value, in_map: dict, out_map, ix, V: int) -> ir.Value:
    """The init of a reduction's V outputs: a fill constant, or loaded from an input."""
    owner = _owner_op(init)
    if owner is not None and owner.name == "linalg.fill":
        c = _owner_op(owner.operands[0])
        if c is None or c.name != "arith.constant":
            raise Unsupported("linalg.fill of a non-constant value")
        return _const_like(c.attributes["value"], owner.operands[0].type, V)
    if init in in_map:
        mem = in_map[init]
        elt = ir.MemRefType(mem.type).element_type
        return vector.load(ir.VectorType.get([V], elt), mem, ix)
    raise Unsupported("a reduction init that is neither a fill nor an input")

