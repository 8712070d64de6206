"""Test and benchmark helpers: wrap a whole function of linalg ops in one ``quartet.tile``.

This stands in for Welder's fusion when a test or the device benchmark needs one fused tile
(softmax, layernorm, gelu(x+b)*s as one kernel): every op of the function except its
``arith.constant``s (scalars and weights stay outside, as after outlining) and the
``func.return`` moves into one tile whose results the function returns. Schedule attributes
can be set by hand afterwards. Not used by the compiler itself.
"""

from __future__ import annotations

from mlir import ir

from quartet.dialects import TileOp, yield_


def wrap_function_in_tile(fn) -> TileOp:
    """Move the body of ``fn`` (a ``func.func`` on tensors) into one tile; return the tile."""
    fn = fn.operation if hasattr(fn, "operation") else fn
    block = fn.regions[0].blocks[0]
    ops = [o.operation for o in block.operations]
    ret = ops[-1]
    body = [o for o in ops[:-1] if o.name != "arith.constant"]
    results = list(ret.operands)
    with ret.location, ir.InsertionPoint(ret):
        tile = TileOp([v.type for v in results])
    with ret.location, ir.InsertionPoint(tile.entry):
        terminator = yield_(results)
    for op in body:
        op.move_before(terminator)
    for i in range(len(results)):
        ret.operands[i] = tile.results[i]
    return tile


def set_schedule(tile: TileOp, **attrs) -> None:
    """Set schedule attributes by hand (block_tile=[...], thread_tile=[...], threads=N, grid=[...])."""
    i64 = ir.IntegerType.get_signless(64)
    for key, value in attrs.items():
        if isinstance(value, bool):
            tile.operation.attributes[key] = ir.BoolAttr.get(value)
        elif isinstance(value, int):
            tile.operation.attributes[key] = ir.IntegerAttr.get(i64, value)
        else:
            tile.operation.attributes[key] = ir.DenseI64ArrayAttr.get(list(value))
