"""One output buffer per distinct returned value, for the CPU target.

A function may return one value more than once: ``return y, y`` in a model, and in every
forward graph that AOTAutograd hands the torch.compile backend (an output that is also saved
for the backward pass comes back twice, once through ``aten.detach``). The CPU lowering gives
each result its own out-parameter, and upstream MLIR 22's buffer-results-to-out-params crashes
the process on a repeated result (a segmentation fault, not an error). So, before the CPU
lowering, :func:`merge_repeated_results` makes the entry function return each value once and
says which original result repeats which kept one; the artifact then copies the kept output
into the repeated ones after the kernel (a ``copy`` step). The GPU host plan already copies
repeated results itself.

Used by ``lower.py``'s CPU path on the function it lowers.
"""

from __future__ import annotations

from mlir import ir
from mlir.dialects import func


def merge_repeated_results(fn) -> list[int]:
    """Rewrite function ``fn`` to return each value once; return ``kept``: for every original
    result, the index (among the new results) of the value it is."""
    fn = fn.operation
    block = fn.regions[0].blocks[0]
    ret = list(block.operations)[-1]
    values = list(ret.operands)
    unique, kept = [], []
    for v in values:
        for j, u in enumerate(unique):
            if u == v:
                kept.append(j)
                break
        else:
            kept.append(len(unique))
            unique.append(v)
    if len(unique) == len(values):
        return kept
    with fn.context, ret.location:
        ftype = ir.FunctionType(ir.TypeAttr(fn.attributes["function_type"]).value)
        new_type = ir.FunctionType.get(list(ftype.inputs), [v.type for v in unique])
        fn.attributes["function_type"] = ir.TypeAttr.get(new_type)
        if "res_attrs" in fn.attributes:
            first = [kept.index(j) for j in range(len(unique))]
            attrs = ir.ArrayAttr(fn.attributes["res_attrs"])
            fn.attributes["res_attrs"] = ir.ArrayAttr.get([attrs[i] for i in first])
        with ir.InsertionPoint(ret):
            func.ReturnOp(unique)
        ret.erase()
    return kept
