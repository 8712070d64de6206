"""The CPU twin of a GPU artifact: the same manifest, every kernel replaced by its tile on the CPU.

A GPU artifact's host program (buffers, views at byte offsets, copies, host ``while``/``if``
steps reading predicates back, outputs) is where ``lowering/host.py`` and the artifact writer can
go wrong in ways no single-kernel test sees. The twin checks it on a machine with no GPU: each
kernel of the artifact is the lowering of one tile, and the CPU target (``lowering/cpu.py``)
compiles that same tile into a shared object whose entry takes the same pointers in the same
order (the tile's tensor inputs in order of first use, then its results). So the twin keeps the
GPU manifest's inputs, outputs, buffers, weights and program unchanged, swaps each kernel's
binary for the tile's ``.so`` and runs through ``quartet.runtime``'s interpreter on its CPU
backend. Only the kernels' own code differs from what runs on the GPU.

Assumes: one kernel per tile (every builder makes one launch), in the order
``lowering.prepare.tiles_of`` lists the tiles of the prepared module.
"""

from __future__ import annotations

from mlir import ir

from quartet.errors import QuartetError


def tile_functions(quartet_text: str, entry: str = "forward") -> list[str]:
    """One ``func.func @forward`` per tile of the (pre-lowering) module text, in the order the
    GPU lowering compiles them: arguments = the tile's kernel inputs, results = its results."""
    from quartet.dialects import context as quartet_context
    from quartet.lowering.prepare import prepare, tiles_of

    texts = []
    with quartet_context(), ir.Location.unknown():
        module = ir.Module.parse(quartet_text)
        prepare(module)
        for fn in module.body.operations:
            if fn.operation.name != "func.func":
                continue
            for tile in tiles_of(fn):
                texts.append(_tile_function(tile))
    return texts


def _tile_function(tile) -> str:
    from mlir.dialects import func

    from quartet.dialects import remap
    from quartet.lowering.kernels import kernel_inputs

    inputs = kernel_inputs(tile)
    results = [r.type for r in tile.results]
    m = ir.Module.create()
    with ir.InsertionPoint(m.body):
        f = func.FuncOp("forward", ([v.type for v in inputs], results))
        entry = f.add_entry_block()
    env = dict(zip(inputs, entry.arguments))
    with ir.InsertionPoint(entry):
        for v in tile.inputs:
            if v in env:
                continue
            owner = v.owner
            owner = owner.operation if hasattr(owner, "operation") else owner
            if isinstance(v.owner, ir.Block) or owner.name not in ("arith.constant",
                                                                  "tensor.empty"):
                raise QuartetError(f"tile captures a value of '{owner.name}' that is no kernel "
                                   f"input")
            env[v] = owner.clone().results[0]
        clone = tile.operation.clone()
        remap(clone, env)
        func.ReturnOp(list(clone.results))
    return str(m)


def cpu_twin(writer, quartet_text: str, opt_level: int = 0):
    """An ``ArtifactWriter`` for target ``cpu`` with ``writer``'s program and the tiles of
    ``quartet_text`` (``CompileResult.quartet``) as kernels."""
    from quartet.lowering import cpu
    from quartet.runtime.artifact import ArtifactWriter

    functions = tile_functions(quartet_text)
    if len(functions) != len(writer.kernels):
        raise QuartetError(f"{len(writer.kernels)} kernels for {len(functions)} tiles: the twin "
                           f"needs one kernel per tile")
    twin = ArtifactWriter("cpu", producer=writer.producer)
    twin.inputs, twin.outputs = list(writer.inputs), list(writer.outputs)
    twin.buffers, twin.weights = list(writer.buffers), list(writer.weights)
    twin._weight_bytes = bytearray(writer._weight_bytes)
    twin.program = list(writer.program)
    for k, text in zip(writer.kernels, functions):
        spec = cpu.cpu_kernel(text, name=f"tile_{k.name}", opt_level=opt_level)
        if len(spec.args) != len(k.args):
            raise QuartetError(f"kernel {k.name} takes {len(k.args)} arguments, its tile on the "
                               f"CPU {len(spec.args)}")
        twin.add_kernel(k.name, spec.binary, spec.entry, (1, 1, 1), (1, 1, 1), args=k.args,
                        binary_format="so")
    return twin
