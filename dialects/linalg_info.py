"""What Quartet needs to know about a linalg op: its loops, indexing maps and operand shapes.

The MLIR 22 Python bindings expose no ``LinalgOp`` interface (no ``getNumLoops``, no indexing
maps on named ops), so for a named op this module asks upstream MLIR itself: it clones the op
into a scratch module, runs ``linalg-generalize-named-ops`` and reads the ``linalg.generic``
that comes out, once per kind of op (name, types, attributes). A ``linalg.generic`` carries all
of it as attributes and is read directly. Everything the Roller policy, the Welder tile
propagation and the lowerings know about an op's iteration space comes from here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import lru_cache

from mlir import ir
from mlir.dialects import func
from mlir.passmanager import PassManager


@dataclass(frozen=True)
class LinalgInfo:
    """The iteration space of one linalg op (named or generic).

    ``indexing_maps`` has one entry per operand (inputs, then inits), each a tuple of result
    expressions as text over ``d0..dN`` (e.g. ``("d0", "d2")`` or ``("d1 + d4", "d2 * 2 + d5")``).
    ``loop_ranges`` is the static extent of each loop, derived from the operand shapes.
    """

    name: str                         # e.g. "linalg.matmul"
    iterator_types: tuple[str, ...]   # "parallel" | "reduction" per loop
    indexing_maps: tuple[tuple[str, ...], ...]
    operand_shapes: tuple[tuple[int, ...], ...]
    element_types: tuple[str, ...]    # per operand, e.g. "f16"
    num_inputs: int
    loop_ranges: tuple[int, ...]
    payload: tuple[str, ...]          # op names in the generic body, e.g. ("arith.mulf", "arith.addf")

    @property
    def num_loops(self) -> int:
        return len(self.iterator_types)

    @property
    def parallel_loops(self) -> list[int]:
        return [i for i, t in enumerate(self.iterator_types) if t == "parallel"]

    @property
    def reduction_loops(self) -> list[int]:
        return [i for i, t in enumerate(self.iterator_types) if t == "reduction"]


def is_linalg(op) -> bool:
    name = op.operation.name
    return name.startswith("linalg.") and name not in ("linalg.yield", "linalg.index")


def info(op) -> LinalgInfo:
    """The :class:`LinalgInfo` of a linalg op on tensors or memrefs with static shapes.

    A ``linalg.generic`` is read directly. A named op is generalised once per kind (name,
    operand and result types, attributes, body op names): the passes ask about every op of a
    model many times, and cloning, printing and re-parsing each one was most of roller-fuse's
    time (issue 16: DenseNet-121)."""
    op = op.operation
    if op.name == "linalg.generic":
        return _info_of_generic(op)
    key = _named_key(op)
    found = _NAMED.get(key)
    if found is None:
        found = _NAMED[key] = _info_of_text(_standalone_text(op), op.name)
    return found


_NAMED: dict[tuple, LinalgInfo] = {}


def _named_key(op: ir.Operation) -> tuple:
    return (op.name, tuple(str(v.type) for v in op.operands),
            tuple(str(r.type) for r in op.results),
            tuple((name, str(op.attributes[name])) for name in op.attributes),
            tuple(o.operation.name for region in op.regions for block in region.blocks
                  for o in block.operations))


def _info_of_generic(generic: ir.Operation) -> LinalgInfo:
    """What :func:`_info_of_text` reads from the generalised op, read from ``generic`` itself."""
    attrs = generic.attributes
    iterators = tuple(_iterator_name(a) for a in ir.ArrayAttr(attrs["iterator_types"]))
    map_attrs = ir.ArrayAttr(attrs["indexing_maps"])
    maps = tuple(_map_results(ir.AffineMapAttr(a).value) for a in map_attrs)
    shapes, elts = _operand_shapes(generic)
    segs = list(ir.DenseI32ArrayAttr(attrs["operandSegmentSizes"]))
    payload = tuple(o.operation.name for o in generic.regions[0].blocks[0].operations)
    ranges = _loop_ranges(map_attrs, shapes, len(iterators))
    return LinalgInfo(name=generic.name, iterator_types=iterators, indexing_maps=maps,
                      operand_shapes=tuple(shapes), element_types=tuple(elts),
                      num_inputs=segs[0], loop_ranges=ranges, payload=payload)


def _operand_shapes(op: ir.Operation) -> tuple[list, list]:
    shapes, elts = [], []
    for v in op.operands:
        if isinstance(v.type, ir.ShapedType):
            t = ir.ShapedType(v.type)
            shapes.append(tuple(t.shape))
            elts.append(str(t.element_type))
        else:      # a scalar operand (linalg.fill's value): rank 0
            shapes.append(())
            elts.append(str(v.type))
    return shapes, elts


def _standalone_text(op: ir.Operation) -> str:
    """The op alone in a function of its operands (a clone: ``op`` is not touched).

    Values the op's body reads from above (a ``linalg.generic`` using an outer constant)
    become extra function arguments, after the operands; a value that is also an operand (flip's
    body extracts from its own input) is read from that operand's argument.
    """
    from .quartet import captures

    operands = list(op.operands)
    captured = captures(op)
    outer = [v for v in captured if v not in operands]
    with op.context, ir.Location.unknown():
        scratch = ir.Module.create()
        with ir.InsertionPoint(scratch.body):
            # Results are returned so that the rewrite driver does not erase a dead op.
            fn = func.FuncOp("scratch", ([v.type for v in operands + outer],
                                         [r.type for r in op.results]))
            entry = fn.add_entry_block()
            with ir.InsertionPoint(entry):
                clone = op.clone()
                for i in range(len(operands)):
                    clone.operands[i] = entry.arguments[i]
                args = list(entry.arguments)
                inner = [args[operands.index(v)] if v in operands
                         else args[len(operands) + outer.index(v)] for v in captured]
                _rebind(clone, list(captured), inner)
                func.ReturnOp(list(clone.results))
        return str(scratch)


def _rebind(root: ir.Operation, old: list, new: list) -> None:
    """Inside ``root``'s regions, read ``new[i]`` wherever ``old[i]`` was read."""
    if not old:
        return

    def visit(inner):
        inner = inner.operation
        for i, value in enumerate(inner.operands):
            if value in old:
                inner.operands[i] = new[old.index(value)]
        return ir.WalkResult.ADVANCE

    for region in root.regions:
        for block in region.blocks:
            for inner in block.operations:
                inner.operation.walk(visit)


_SCRATCH: ir.Context | None = None


def _scratch_context() -> ir.Context:
    """One Context for every scratch module (creating one costs about 40 ms): it holds only
    upstream dialects, which is all a generalised op needs."""
    global _SCRATCH
    if _SCRATCH is None:
        _SCRATCH = ir.Context()
    return _SCRATCH


@lru_cache(maxsize=4096)
def _info_of_text(text: str, name: str) -> LinalgInfo:
    with _scratch_context(), ir.Location.unknown():
        module = ir.Module.parse(text)
        PassManager.parse("builtin.module(func.func(linalg-generalize-named-ops))").run(
            module.operation)
        fn = module.body.operations[0]
        generic = next(o for o in fn.regions[0].blocks[0].operations
                       if o.operation.name == "linalg.generic").operation
        return dataclasses.replace(_info_of_generic(generic), name=name)


def _iterator_name(attr: ir.Attribute) -> str:
    text = str(attr)  # #linalg.iterator_type<parallel>
    return "reduction" if "reduction" in text else "parallel"


def _map_results(amap: ir.AffineMap) -> tuple[str, ...]:
    return tuple(str(e) for e in amap.results)


def _loop_ranges(maps: ir.ArrayAttr, shapes, num_loops: int) -> tuple[int, ...]:
    """Extent of each loop: the operand dimension indexed by that loop alone (``dK``)."""
    ranges = [None] * num_loops
    for amap_attr, shape in zip(maps, shapes):
        amap = ir.AffineMapAttr(amap_attr).value
        for dim, expr in zip(shape, amap.results):
            if isinstance(expr.maybe_downcast(), ir.AffineDimExpr):
                pos = expr.maybe_downcast().position
                if ranges[pos] is None and dim >= 0:
                    ranges[pos] = dim
    # Loops that only appear in compound expressions (a convolution's filter window over a
    # strided input) take their range from the operand whose map names them alone, which the
    # loop above found; any left are the window loops of a pooling op whose window operand is
    # shaped by them: already covered. A loop still unknown is an unsupported op.
    if any(r is None for r in ranges):
        raise ValueError("cannot derive static loop ranges (dynamic shapes are not supported)")
    return tuple(ranges)
