"""One tile as a program of its own: what the tuning step times and the numerics checks run.

``tile_module(tile)`` builds, in a fresh Context, a module whose one public function takes the
tile's tensor inputs (in the kernel-argument order of ``lowering/kernels/common.kernel_inputs``)
and returns the tile's results, holding a copy of the tile with its attributes: lowered for a GPU
it is exactly the tile's kernel, lowered for the CPU it computes what the tile computes. The
constants and ``tensor.empty`` values the tile reads from its function are copied in.

Used by ``bench/welder_tune.py`` (one artifact per candidate group and configuration) and by the
tests that check each fused kernel on the NumPy emulator (``lowering/emulate.py``) against the
CPU target.
"""

from __future__ import annotations

from mlir import ir
from mlir.dialects import func

from quartet.dialects import defining_op, remap
from quartet.lowering.kernels import kernel_inputs


def tile_module(tile, context: ir.Context | None = None) -> ir.Module:
    """A module ``func @forward(inputs...) -> results`` computing ``tile``."""
    import quartet.dialects as qd

    ctx = context or qd.context()
    ins = kernel_inputs(tile)
    others = [v for v in tile.inputs if v not in ins]
    with tile.operation.context, tile.operation.location:
        scratch = ir.Module.create()
        with ir.InsertionPoint(scratch.body):
            fn = func.FuncOp("forward", ([v.type for v in ins],
                                         [r.type for r in tile.operation.results]))
            entry = fn.add_entry_block()
            mapping = dict(zip(ins, entry.arguments))
            with ir.InsertionPoint(entry):
                for v in others:
                    op = defining_op(v)
                    if op is None or op.name not in ("arith.constant", "tensor.empty"):
                        raise ValueError(f"the tile reads a value made by '{op and op.name}'")
                    new = op.clone()
                    mapping[v] = new.results[0]
                copy = tile.operation.clone()
                remap(copy, mapping)
                func.ReturnOp(list(copy.results))
        text = scratch.operation.get_asm(enable_debug_info=True)
    return ir.Module.parse(text, ctx)


def random_inputs(module: ir.Module, seed: int = 0) -> list:
    """Random arrays for the public function's arguments (normal floats, booleans, small
    integers)."""
    import numpy as np

    from quartet.runtime.dtypes import mlir_name_to_dtype

    rng = np.random.default_rng(seed)
    fn = next(op for op in module.body.operations if op.operation.name == "func.func")
    out = []
    for a in fn.regions[0].blocks[0].arguments:
        t = ir.RankedTensorType(a.type)
        shape = tuple(t.shape)
        dt = mlir_name_to_dtype(str(t.element_type))
        if dt == "bool":
            out.append(rng.random(shape) < 0.5)
        elif dt.startswith("int") or dt.startswith("uint"):
            out.append(rng.integers(0, 4, shape).astype(dt))
        else:
            out.append(rng.standard_normal(shape).astype(dt))
    return out


def check_on_emulator(tile, chip, seed: int = 0) -> float:
    """Relative error (2-norm) of ``tile``'s GPU kernel, run on the NumPy emulator
    (``lowering/emulate.py``), against the CPU target on the same random inputs. Raises what
    the emulator raises (a race, an out-of-bounds access, an op it does not run)."""
    import numpy as np

    from quartet.dialects import collect
    from quartet.lowering.build import block_program
    from quartet.lowering.compose.kernel import inline_block_programs, standalone
    from quartet.lowering.cpu import run_cpu
    from quartet.lowering.emulate import run_kernel
    from quartet.lowering.prepare import prepare

    module = tile_module(tile)
    text = str(module)
    inputs = random_inputs(module, seed)
    ref = run_cpu(text, inputs)
    prepare(module.operation)
    (copy,) = [t.opview for t in collect(module, lambda o: o.name == "quartet.tile")]
    with module.context, copy.location:
        bp = block_program(copy, chip, "body")
        kmod = standalone(bp, "kernel")
        inline_block_programs(kmod)
    outs = [np.full(r.shape, np.nan, r.dtype) for r in ref]
    run_kernel(kmod, [np.array(x, dtype=np.int8 if x.dtype == np.bool_ else x.dtype)
                      for x in inputs] + outs)
    num = sum(float(np.linalg.norm(o.astype(np.float64) - r.astype(np.float64)) ** 2)
              for o, r in zip(outs, ref))
    den = sum(float(np.linalg.norm(r.astype(np.float64)) ** 2) for r in ref)
    return (num / max(den, 1e-300)) ** 0.5
