"""The CPU target: configured ``quartet.tile`` ops lowered to loops, JIT-run or exported as a .so.

The same tiled IR that the GPU lowerings turn into kernels is lowered here to scalar loops, so
that every tile program can be checked for numerics on a machine with no GPU (DESIGN.md, "Where
things run"), and so that ``--target cpu`` is an end-to-end path of its own (issue 4, item 6).
The tile program is honoured as a loop nest: Roller's block tile (parallel extents and the
reduction step) becomes the outer ``scf.for`` nest and the thread tile an inner one; as DESIGN.md
says of the schedule attributes, they never change what is computed.

Stages (each a short function; the pass ``quartet-lower-cpu`` runs them all):

1. ``check_supported``: every op and element type must be one this path lowers; anything else is
   a :class:`QuartetError` naming the op, never a miscompile.
2. ``tag_and_inline``: each linalg op gets its tile sizes (its tile's ``block_tile`` /
   ``thread_tile`` for the tile's root op, ``default_block_tile`` otherwise); then the regions of
   ``quartet.tile`` / ``quartet.vtask`` / ``quartet.uvirtual`` are inlined (on one CPU thread a
   persistent program is its tasks in SSA order). Boolean tensors become byte tensors
   (``cpu_i1.py``: MLIR 22 cannot lower ``i1`` memrefs).
3. ``tile_and_bufferize`` then ``bufferize``: transform-dialect scripts: ``tile_using_for`` per
   tile-size group (``stop_after=tile`` ends here), then one-shot bufferization of the whole
   module (function boundaries with identity layouts, copies as ``linalg.copy`` so that no copy
   needs MLIR's runtime library).
4. ``OUT_PARAMS``, ``DEALLOCATION`` and ``LLVM_PIPELINE``: results become out-parameters,
   deallocation (its boolean ownership buffers stored as bytes, ``cpu_i1.py``),
   ``convert-linalg-to-loops``, then the LLVM dialect with the bare-pointer calling convention.
   f16/bf16 arithmetic is computed in f32 and rounded after every op
   (``arith-emulate-unsupported-floats``), which is what LLVM's soft promotion does on x86;
   bf16<->f32 conversions are expanded to integer code (no compiler-rt needed). What the IR
   accumulates in f16/bf16 (torch-mlir's sums and means do; its matmuls and convolutions
   accumulate in f32) is accumulated in f16/bf16 here too.

The lowered module carries ``quartet.cpu_entry = {symbol, inputs, outputs}`` so that a
LLVM-dialect module alone says how to call it.

Calling convention (both the JIT and the exported .so): the entry is
``void f(void* in0, ..., void* inN, void* out0, ..., void* outM)``: one pointer per tensor to
dense row-major data, inputs in the function's argument order, then one caller-allocated buffer
per result, in result order. Chosen over returned memrefs because the caller owns every buffer
(nothing to free across the boundary, no descriptor layout to know) and because it is exactly
what an artifact's runtime can call with ctypes. Inputs are only read (the entry's arguments are
marked non-writable for bufferization, so an op that updates an input in place works on a
copy); output buffers must not overlap each other or an input (the pointers are ``noalias``,
which lets LLVM keep accumulators in registers). It needs static shapes and ranked tensors at
the entry, which is what torch-mlir's import of a traced model gives.

Unconfigured linalg ops (outside any tile, or in a tile with no ``block_tile``) get
``default_block_tile``: 32x32 over the two innermost parallel loops and reduction steps of 16.

Assumes: static shapes at the entry function; bf16 values cross the Python boundary as their
raw 16-bit patterns (``np.uint16``), since numpy has no bfloat16. ``mlir`` is loaded before
``torch_mlir`` in the process: torch_mlir carries its own LLVM, and when its libraries come
first the ExecutionEngine resolves symbols against the wrong copy (``CpuProgram`` says so).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass

import numpy as np
from mlir import ir
from mlir.dialects.transform import interpreter
from mlir.passmanager import PassManager

from quartet.dialects import context as quartet_context
from quartet.dialects import collect, linalg_info
from quartet.errors import QuartetError, location_of
from quartet.lowering.cpu_i1 import widen_bool_memrefs, widen_bool_tensors
from quartet.lowering.kernel import KernelArg, KernelSpec

# ---------------------------------------------------------------------------------------------
# What this target lowers.

SUPPORTED_DIALECTS = ("arith", "math", "scf", "linalg", "func", "cf", "affine", "bufferization",
                      "memref", "index")
# tensor ops that one-shot bufferization handles (not tensor.gather / tensor.scatter).
SUPPORTED_TENSOR_OPS = ("tensor.bitcast", "tensor.cast", "tensor.collapse_shape", "tensor.concat",
                        "tensor.dim", "tensor.empty", "tensor.expand_shape", "tensor.extract",
                        "tensor.extract_slice", "tensor.from_elements", "tensor.generate",
                        "tensor.insert", "tensor.insert_slice", "tensor.pad", "tensor.rank",
                        "tensor.reshape", "tensor.splat", "tensor.yield")
# linalg ops that are not structured (LinalgOp) ops; convert-linalg-to-loops cannot take them.
UNSUPPORTED_LINALG = ("linalg.winograd_filter_transform", "linalg.winograd_input_transform",
                      "linalg.winograd_output_transform", "linalg.pack", "linalg.unpack")
# linalg ops with a decomposition into structured ops (AggregatedOpInterface).
DECOMPOSED_LINALG = ("linalg.softmax",)
REGION_OPS = ("quartet.tile", "quartet.vtask", "quartet.uvirtual")
SUPPORTED_ELEMENT_TYPES = {
    "f16": np.float16, "bf16": np.uint16, "f32": np.float32, "f64": np.float64,
    "i1": np.bool_, "i8": np.int8, "i16": np.int16, "i32": np.int32, "i64": np.int64,
}
ENTRY_ATTR = "quartet.cpu_entry"
_TILE_GROUP_ATTR = "quartet.cpu_tile_group"

# External symbols the lowered code may call: the C allocator and libm (convert-math-to-libm).
_C_SYMBOLS = {"malloc", "free", "aligned_alloc", "memcpy", "memset", "memmove"}


# The reduction step of an unconfigured op. A step of 16 gives LLVM an inner loop it unrolls
# and vectorizes along the next parallel loop: a 128x768x3072 f32 matmul ran at 5.7 GFLOP/s
# with it and at 0.14 GFLOP/s with the whole reduction in one step (0.4 at steps of 32).
DEFAULT_REDUCTION_STEP = 16
DEFAULT_BLOCK = 32


def default_block_tile(loop_ranges, iterator_types) -> list[int]:
    """The tile of an unconfigured op: a 32x32 block over the two innermost parallel loops, one
    iteration of every outer parallel loop per block, and reductions in steps of 16."""
    parallel = [i for i, t in enumerate(iterator_types) if t == "parallel"]
    inner = set(parallel[-2:])
    sizes = []
    for i, (extent, kind) in enumerate(zip(loop_ranges, iterator_types)):
        extent = max(int(extent), 1)
        if kind == "reduction":
            sizes.append(min(DEFAULT_REDUCTION_STEP, extent))
        elif i in inner:
            sizes.append(min(DEFAULT_BLOCK, extent))
        else:
            sizes.append(1)
    return sizes


# ---------------------------------------------------------------------------------------------
# Stage 1: refuse what this target does not lower.


def _fail(op, message: str):
    raise QuartetError(message, location_of(op))


def check_supported(module: ir.Operation) -> None:
    """Raise :class:`QuartetError` at the first op or element type the CPU path does not lower."""
    errors: list[QuartetError] = []

    def visit(op):
        op = op.operation
        try:
            _check_op(op)
        except QuartetError as e:
            errors.append(e)
            return ir.WalkResult.INTERRUPT
        return ir.WalkResult.ADVANCE

    module.walk(visit, ir.WalkOrder.PRE_ORDER)   # an op before the ops in its regions
    if errors:
        raise errors[0]


def _check_op(op: ir.Operation) -> None:
    name = op.name
    dialect = name.split(".", 1)[0]
    if name == "builtin.module" or name in REGION_OPS:
        pass
    elif name == "gpu.yield":
        if op.parent is None or op.parent.name not in REGION_OPS:
            _fail(op, "operation 'gpu.yield' is not supported by the CPU target "
                      "(only as the terminator of a quartet region)")
    elif dialect == "tensor":
        if name not in SUPPORTED_TENSOR_OPS:
            _fail(op, f"operation '{name}' is not supported by the CPU target")
    elif name in UNSUPPORTED_LINALG or dialect not in SUPPORTED_DIALECTS:
        _fail(op, f"operation '{name}' is not supported by the CPU target")
    elif dialect in ("arith", "math") and name != "arith.constant" and any(
            isinstance(v.type, ir.ShapedType) for v in list(op.operands)[name == "arith.select":]):
        _fail(op, f"operation '{name}' on tensors is not supported by the CPU target "
                  f"(elementwise work belongs in a linalg op)")
    for value in list(op.operands) + list(op.results):
        _check_type(op, value.type)
    if name == "func.func":
        ftype = ir.FunctionType(ir.TypeAttr(op.attributes["function_type"]).value)
        for t in list(ftype.inputs) + list(ftype.results):
            _check_type(op, t, f"the signature of '@{_sym_name(op)}'")


def _element_name(t: ir.Type) -> str:
    if isinstance(t, ir.ShapedType):
        t = ir.ShapedType(t).element_type
    return str(t)


def _check_type(op, t: ir.Type, where: str | None = None) -> None:
    where = where or f"operation '{op.name}'"
    if isinstance(t, ir.IndexType):
        return
    if isinstance(t, (ir.ShapedType, ir.FloatType, ir.IntegerType)):
        elem = _element_name(t)
        if elem in SUPPORTED_ELEMENT_TYPES or elem == "index":
            return
        _fail(op, f"element type '{elem}' in {where} is not supported by the CPU target "
                  f"(supported: {', '.join(SUPPORTED_ELEMENT_TYPES)})")
    _fail(op, f"type '{t}' in {where} is not supported by the CPU target")


# ---------------------------------------------------------------------------------------------
# Stage 2: tile sizes from the schedule, then the quartet regions inlined.


def _is_structured(op: ir.Operation) -> bool:
    return (linalg_info.is_linalg(op) and op.name not in UNSUPPORTED_LINALG
            and op.name not in DECOMPOSED_LINALG)


def _inside_linalg(op: ir.Operation) -> bool:
    parent = op.parent
    while parent is not None:
        if parent.name.startswith("linalg."):
            return True
        parent = parent.parent
    return False


def _enclosing_tile(op: ir.Operation):
    parent = op.parent
    while parent is not None:
        if parent.name == "quartet.tile":
            return parent
        parent = parent.parent
    return None


def _i64_array(op: ir.Operation, name: str) -> list[int] | None:
    attrs = op.attributes
    return list(ir.DenseI64ArrayAttr(attrs[name])) if name in attrs else None


def iteration_space(op: ir.Operation) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """(loop extents, iterator kinds) of a structured linalg op with static shapes."""
    try:
        info = linalg_info.info(op)
    except ValueError as e:
        _fail(op, f"operation '{op.name}' cannot be tiled for the CPU: {e}")
    return info.loop_ranges, info.iterator_types


def _tile_sizes(op: ir.Operation, schedule: ir.Operation | None) -> tuple[tuple, tuple]:
    """(block sizes, thread sizes) for ``tile_using_for``; 0 means "not tiled"."""
    ranges, kinds = iteration_space(op)
    block = thread = None
    if schedule is not None:
        block = _i64_array(schedule, "block_tile")
        thread = _i64_array(schedule, "thread_tile")
    if block is None:
        block = default_block_tile(ranges, kinds)
        thread = None
    for attr, sizes in (("block_tile", block), ("thread_tile", thread)):
        if sizes is not None and (len(sizes) != len(ranges) or any(s <= 0 for s in sizes)):
            _fail(schedule, f"'quartet.tile' op {attr} [{', '.join(map(str, sizes))}] must have "
                            f"one positive entry per loop of its root op '{op.name}' "
                            f"({len(ranges)} loops)")
    block_sizes = tuple(0 if extent == 0 or s >= extent else s
                        for s, extent in zip(block, ranges))
    thread_sizes: tuple = ()
    if thread is not None:
        inner = []
        for s, b, extent, kind in zip(thread, block_sizes, ranges, kinds):
            span = b or extent
            inner.append(0 if kind == "reduction" or span == 0 or s >= span else s)
        if any(inner):
            thread_sizes = tuple(inner)
    return block_sizes, thread_sizes


def tag_and_inline(module: ir.Operation) -> dict[tuple, int]:
    """Give every structured linalg op a tile-size group; inline every quartet region.

    Returns {(block sizes, thread sizes): group id}."""
    groups: dict[tuple, int] = {}
    i64 = ir.IntegerType.get_signless(64)
    for op in collect(module, lambda o: _is_structured(o) and not _inside_linalg(o)):
        tile = _enclosing_tile(op)
        schedule = None
        if tile is not None and _root_of(tile) == op:
            schedule = tile
        key = _tile_sizes(op, schedule)
        if not any(key[0]) and not key[1]:
            continue
        group = groups.setdefault(key, len(groups))
        op.attributes[_TILE_GROUP_ATTR] = ir.IntegerAttr.get(i64, group)
    # Tiles first, then vtasks, then uvirtuals: inner regions before the ones around them.
    for name in REGION_OPS:
        for region_op in collect(module, lambda o, name=name: o.name == name):
            inline_region(region_op)
    return groups


def _root_of(tile: ir.Operation) -> ir.Operation | None:
    try:
        return tile.opview.root.operation
    except ValueError:
        return None


def inline_region(op: ir.Operation) -> None:
    """Move the ops of a single-block quartet region in front of it; its results become the
    values its ``gpu.yield`` returns."""
    block = op.regions[0].blocks[0]
    ops = [o.operation for o in block.operations]
    terminator = ops[-1]
    for inner in ops[:-1]:
        inner.move_before(op)
    for result, value in zip(op.results, terminator.operands):
        result.replace_all_uses_with(value)
    terminator.erase()
    op.erase()


# ---------------------------------------------------------------------------------------------
# Stage 3: tiling and bufferization in one transform script.


def transform_script(groups: dict[tuple, int], bufferize: bool) -> str:
    """A transform-dialect schedule: decompose aggregates and tile each group, or bufferize."""
    lines = []
    if bufferize:
        lines.append(
            "%bufferized = transform.bufferization.one_shot_bufferize %root "
            "{bufferize_function_boundaries = true, function_boundary_type_conversion = 1 : i32, "
            "allow_return_allocs_from_loops = true, "
            'memcpy_op = "linalg.copy"} : (!transform.any_op) -> !transform.any_op')
    else:
        for i, name in enumerate(DECOMPOSED_LINALG):
            lines.append(f'%d{i} = transform.structured.match ops{{["{name}"]}} in %root '
                         f": (!transform.any_op) -> !transform.any_op")
            lines.append(f"%dd{i} = transform.structured.decompose_interface %d{i} "
                         f": (!transform.any_op) -> !transform.any_op")
    for (block, thread), group in sorted(groups.items(), key=lambda kv: kv[1]):
        lines.append(
            f"%g{group} = transform.structured.match interface{{LinalgOp}} "
            f"attributes{{{_TILE_GROUP_ATTR} = {group} : i64}} in %root "
            f": (!transform.any_op) -> !transform.any_op")
        handle = f"%g{group}"
        for level, sizes in (("b", block), ("t", thread)):
            loops = sum(1 for s in sizes if s)
            if not loops:
                continue
            outs = ", ".join(["!transform.any_op"] * (loops + 1))
            lines.append(
                f"%{level}{group}, %{level}l{group}:{loops} = transform.structured.tile_using_for "
                f"{handle} tile_sizes [{', '.join(map(str, sizes))}] "
                f": (!transform.any_op) -> ({outs})")
            handle = f"%{level}{group}"
    body = "\n    ".join(lines)
    return f"""
module attributes {{transform.with_named_sequence}} {{
  transform.named_sequence @__transform_main(%root: !transform.any_op {{transform.consumed}}) {{
    {body}
    transform.yield
  }}
}}
"""


def _read_only_arguments(fn: ir.Operation) -> None:
    """The caller's input arrays are never written: bufferization copies before it writes."""
    count = len(ir.FunctionType(ir.TypeAttr(fn.attributes["function_type"]).value).inputs)
    old = list(ir.ArrayAttr(fn.attributes["arg_attrs"])) if "arg_attrs" in fn.attributes \
        else [ir.DictAttr.get({})] * count
    new = []
    for attr in old:
        entries = {a.name: a.attr for a in ir.DictAttr(attr)}
        entries["bufferization.writable"] = ir.BoolAttr.get(False)
        new.append(ir.DictAttr.get(entries))
    fn.attributes["arg_attrs"] = ir.ArrayAttr.get(new)


def _no_alias_arguments(fn: ir.Operation) -> None:
    """The entry's buffers do not overlap (inputs are only read; outputs are distinct fresh
    buffers: the calling convention says so), which lets LLVM keep accumulators in registers."""
    count = len(ir.FunctionType(ir.TypeAttr(fn.attributes["function_type"]).value).inputs)
    old = list(ir.ArrayAttr(fn.attributes["arg_attrs"])) if "arg_attrs" in fn.attributes \
        else [ir.DictAttr.get({})] * count
    new = []
    for attr in old:
        entries = {a.name: a.attr for a in ir.DictAttr(attr)}
        entries["llvm.noalias"] = ir.UnitAttr.get()
        new.append(ir.DictAttr.get(entries))
    fn.attributes["arg_attrs"] = ir.ArrayAttr.get(new)


def tile_and_bufferize(module: ir.Operation, groups: dict[tuple, int]) -> None:
    """Tile every group of linalg ops by its sizes (transform dialect, ``tile_using_for``)."""
    _apply_script(module, transform_script(groups, bufferize=False))
    # The tiled clones keep the group attribute; it means nothing any more.
    for op in collect(module, lambda o: _TILE_GROUP_ATTR in o.attributes):
        del op.attributes[_TILE_GROUP_ATTR]


def bufferize(module: ir.Operation) -> None:
    """One-shot bufferization of the whole module (function boundaries, identity layouts,
    copies as ``linalg.copy`` so that none needs MLIR's runtime library)."""
    _run_pipeline(module, "canonicalize,cse", "cleaning up the tiled loops")
    _apply_script(module, transform_script({}, bufferize=True))


def _apply_script(module: ir.Operation, text: str) -> None:
    script = ir.Module.parse(text, context=module.context)
    entry = script.body.operations[0]
    try:
        interpreter.apply_named_sequence(module, entry, script)
    except ir.MLIRError as e:
        raise _lowering_error(e, "tiling and bufferization") from None
    except ValueError as e:   # the interpreter reports its diagnostics as one text
        raise _interpreter_error(str(e)) from None


# ---------------------------------------------------------------------------------------------
# Stage 4: loops and the LLVM dialect.

# Results become caller-allocated out-parameters (the calling convention above).
OUT_PARAMS = ",".join([
    "canonicalize",
    "cse",
    "buffer-results-to-out-params{hoist-static-allocs=true modify-public-functions=true}",
])
# Deallocation may call a helper of its own, on buffers of dynamic size that the bare-pointer
# calling convention cannot pass: it is inlined. Its ownership flags are boolean buffers:
# cpu_i1.widen_bool_memrefs runs between DEALLOCATION and LLVM_PIPELINE.
DEALLOCATION = "buffer-deallocation-pipeline,inline"
LLVM_PIPELINE = ",".join([
    "func.func(convert-linalg-to-loops)",
    "math-extend-to-supported-types",
    "arith-emulate-unsupported-floats{source-types=bf16,f16 target-type=f32}",
    "arith-expand{include-bf16=true}",
    "expand-strided-metadata",
    "lower-affine",
    "finalize-memref-to-llvm",
    "convert-scf-to-cf",
    "convert-math-to-llvm",
    "convert-math-to-libm",
    "convert-arith-to-llvm",
    "convert-index-to-llvm",
    "convert-func-to-llvm{use-bare-ptr-memref-call-conv=1}",
    "convert-cf-to-llvm",
])
# Run after the check that nothing but LLVM (and the casts between) is left.
RECONCILE = "reconcile-unrealized-casts"


def _run_pipeline(module: ir.Operation, elements: str, stage: str) -> None:
    pm = PassManager.parse(f"builtin.module({elements})", context=module.context)
    try:
        pm.run(module)
    except ir.MLIRError as e:
        raise _lowering_error(e, stage) from None


def _interpreter_error(text: str) -> QuartetError:
    """'Diagnostic message at loc(...): <message>' -> QuartetError at that location."""
    import re

    m = re.search(r"Diagnostic message at (loc\(.*?\)): (.*?)(?:at loc\(|$)", text, re.S)
    if not m:
        return QuartetError(f"CPU lowering failed in tiling and bufferization: "
                            f"{text.splitlines()[-1]}")
    return QuartetError(f"CPU lowering failed in tiling and bufferization: "
                        f"{m.group(2).strip().splitlines()[0]}", location_of(m.group(1)))


def _lowering_error(e: "ir.MLIRError", stage: str) -> QuartetError:
    diags = getattr(e, "error_diagnostics", None) or []
    if not diags:
        return QuartetError(f"CPU lowering failed in {stage}: {str(e).splitlines()[0]}")
    message = diags[0].message.splitlines()[0]
    return QuartetError(f"CPU lowering failed in {stage}: {message}",
                        location_of(diags[0].location))


# ---------------------------------------------------------------------------------------------
# The entry function and its signature.


@dataclass(frozen=True)
class TensorSig:
    shape: tuple[int, ...]
    element: str          # MLIR element type name: "f32", "bf16", ...

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(SUPPORTED_ELEMENT_TYPES[self.element])

    def type_text(self) -> str:
        dims = "x".join(map(str, self.shape))
        return f"tensor<{dims + 'x' if dims else ''}{self.element}>"


@dataclass(frozen=True)
class EntrySig:
    symbol: str
    inputs: tuple[TensorSig, ...]
    outputs: tuple[TensorSig, ...]


def _functions(module: ir.Operation) -> list[ir.Operation]:
    body = module.regions[0].blocks[0]
    return [op.operation for op in body.operations if op.operation.name == "func.func"]


def _sym_name(op: ir.Operation) -> str:
    return ir.StringAttr(op.attributes["sym_name"]).value


def _is_public(op: ir.Operation) -> bool:
    attrs = op.attributes
    if "sym_visibility" in attrs and ir.StringAttr(attrs["sym_visibility"]).value != "public":
        return False
    return len(op.regions[0].blocks) > 0


def find_entry(module: ir.Operation, entry: str | None = None) -> ir.Operation:
    """The function to run: ``entry`` by name, else the only public function, else
    ``forward`` or ``main``."""
    funcs = _functions(module)
    if entry is not None:
        for f in funcs:
            if _sym_name(f) == entry:
                return f
        raise QuartetError(f"no function '@{entry}' in the module")
    public = [f for f in funcs if _is_public(f)]
    if len(public) == 1:
        return public[0]
    for name in ("forward", "main"):
        for f in public:
            if _sym_name(f) == name:
                return f
    names = ", ".join("@" + _sym_name(f) for f in public) or "none"
    raise QuartetError(f"cannot tell which function to run on the CPU (public functions: "
                       f"{names}); name one")


def _tensor_sig(fn: ir.Operation, t: ir.Type, what: str) -> TensorSig:
    if not isinstance(t, ir.RankedTensorType):
        _fail(fn, f"{what} of '@{_sym_name(fn)}' has type '{t}'; the CPU entry takes and "
                  f"returns ranked tensors only")
    rt = ir.RankedTensorType(t)
    if not rt.has_static_shape:
        _fail(fn, f"{what} of '@{_sym_name(fn)}' has dynamic shape '{t}'; the CPU entry needs "
                  f"static shapes")
    return TensorSig(tuple(rt.shape), _element_name(rt))


def entry_signature(fn: ir.Operation) -> EntrySig:
    ftype = ir.FunctionType(ir.TypeAttr(fn.attributes["function_type"]).value)
    inputs = tuple(_tensor_sig(fn, t, f"argument {i}") for i, t in enumerate(ftype.inputs))
    outputs = tuple(_tensor_sig(fn, t, f"result {i}") for i, t in enumerate(ftype.results))
    return EntrySig(_sym_name(fn), inputs, outputs)


def _entry_attr(sig: EntrySig) -> ir.Attribute:
    def types(sigs):
        return "[" + ", ".join(s.type_text() for s in sigs) + "]"
    return ir.Attribute.parse(f'{{symbol = "{sig.symbol}", inputs = {types(sig.inputs)}, '
                              f"outputs = {types(sig.outputs)}}}")


def read_entry(module: ir.Operation) -> EntrySig:
    """The entry signature recorded on a module lowered by ``quartet-lower-cpu``."""
    if ENTRY_ATTR not in module.attributes:
        raise QuartetError(f"module has no '{ENTRY_ATTR}' attribute: it was not lowered by "
                           f"quartet-lower-cpu")
    d = ir.DictAttr(module.attributes[ENTRY_ATTR])

    def sigs(key):
        out = []
        for a in ir.ArrayAttr(d[key]):
            rt = ir.RankedTensorType(ir.TypeAttr(a).value)
            out.append(TensorSig(tuple(rt.shape), _element_name(rt)))
        return tuple(out)

    return EntrySig(ir.StringAttr(d["symbol"]).value, sigs("inputs"), sigs("outputs"))


def is_lowered(module: ir.Operation) -> bool:
    return ENTRY_ATTR in module.attributes


# ---------------------------------------------------------------------------------------------
# The pass.


STAGES = ("tile", "bufferize", "llvm")


def lower_to_llvm(module: ir.Operation, entry: str | None = None,
                  stop_after: str = "llvm") -> EntrySig:
    """Lower ``module`` (linalg on tensors, with or without quartet tiles) in place to the LLVM
    dialect; return and record the entry signature. ``stop_after="tile"`` stops with the tiled
    loops on tensors, ``"bufferize"`` after bufferization (for tests and debugging)."""
    if stop_after not in STAGES:
        raise QuartetError(f"unknown CPU lowering stage '{stop_after}' "
                           f"(stages: {', '.join(STAGES)})")
    with module.context, ir.Location.unknown():
        return _lower_to_llvm(module, entry, stop_after)


def _lower_to_llvm(module: ir.Operation, entry: str | None, stop_after: str) -> EntrySig:
    check_supported(module)
    fn = find_entry(module, entry)
    sig = entry_signature(fn)
    for f in _functions(module):
        if f != fn and _is_public(f):
            f.attributes["sym_visibility"] = ir.StringAttr.get("private")
    _read_only_arguments(fn)
    groups = tag_and_inline(module)
    widen_bool_tensors(module)
    tile_and_bufferize(module, groups)
    if stop_after == "tile":
        _run_pipeline(module, "canonicalize,cse", "cleaning up the tiled loops")
        return sig
    bufferize(module)
    if stop_after == "llvm":
        _run_pipeline(module, OUT_PARAMS, "the LLVM pipeline")
        _no_alias_arguments(find_entry(module, sig.symbol))
        _run_pipeline(module, DEALLOCATION, "the LLVM pipeline")
        widen_bool_memrefs(module)
        _run_pipeline(module, LLVM_PIPELINE, "the LLVM pipeline")
        _check_lowered(module)
        _run_pipeline(module, RECONCILE, "the LLVM pipeline")
        module.attributes[ENTRY_ATTR] = _entry_attr(sig)
    return sig


def _check_lowered(module: ir.Operation) -> None:
    """Safety net: nothing but the LLVM dialect may be left, and no call to a library that is
    not the C library or libm."""
    for op in collect(module, lambda o: not (o.name.startswith("llvm.")
                                              or o.name in ("builtin.module",
                                                            "builtin.unrealized_conversion_cast"))):
        _fail(op, f"operation '{op.name}' is not supported by the CPU target (left after "
                  f"lowering)")
    for op in collect(module, lambda o: o.name == "llvm.func" and not len(o.regions[0].blocks)):
        name = _sym_name(op)
        if name not in _C_SYMBOLS and not _is_libm(name):
            _fail(op, f"the CPU lowering needs the external function '{name}', which is "
                      f"neither in the C library nor in libm")


_LIBM = {"acos", "acosh", "asin", "asinh", "atan", "atan2", "atanh", "cbrt", "ceil", "copysign",
         "cos", "cosh", "erf", "erfc", "exp", "exp2", "expm1", "fabs", "floor", "fma", "fmod",
         "log", "log10", "log1p", "log2", "pow", "rint", "round", "roundeven", "sin", "sinh",
         "sqrt", "tan", "tanh", "trunc", "tgamma", "lgamma", "nearbyint"}


def _is_libm(name: str) -> bool:
    return name in _LIBM or (name.endswith("f") and name[:-1] in _LIBM)


# ---------------------------------------------------------------------------------------------
# Running with MLIR's ExecutionEngine.


def _as_module(module_or_text, entry: str | None) -> tuple[ir.Module, EntrySig]:
    """A lowered copy of the input (the caller's module is never changed)."""
    if isinstance(module_or_text, str):
        ctx = quartet_context()
        with ctx, ir.Location.unknown():
            try:
                module = ir.Module.parse(module_or_text)
            except ir.MLIRError as e:
                diags = getattr(e, "error_diagnostics", None) or []
                msg = diags[0].message.splitlines()[0] if diags else str(e).splitlines()[0]
                raise QuartetError(f"could not parse the module: {msg}") from None
    else:
        source = module_or_text.operation if hasattr(module_or_text, "operation") else None
        if source is None:
            raise TypeError("run_cpu expects MLIR text or an mlir.ir.Module")
        with source.context, source.location:
            module = _copy_module(source)
    with module.context, ir.Location.unknown():
        if is_lowered(module.operation):
            return module, read_entry(module.operation)
        sig = lower_to_llvm(module.operation, entry)
    return module, sig


def _copy_module(source: ir.Operation) -> ir.Module:
    """A deep copy of a ``builtin.module`` (cloned, not printed and re-parsed: a copy must not
    depend on the printed form of every op re-verifying)."""
    module = ir.Module.create()
    for name in source.attributes:          # iterating an op's attributes yields names
        module.operation.attributes[name] = source.attributes[name]
    with ir.InsertionPoint(module.body):
        for op in source.regions[0].blocks[0].operations:
            op.operation.clone()
    return module


class CpuProgram:
    """A module compiled by the ExecutionEngine; call it with numpy arrays."""

    def __init__(self, module_or_text, *, entry: str | None = None, opt_level: int = 2):
        from mlir.execution_engine import ExecutionEngine

        self.module, self.signature = _as_module(module_or_text, entry)
        with self.module.context:
            self._engine = ExecutionEngine(self.module, opt_level=opt_level)
        address = self._engine.raw_lookup(self.signature.symbol)
        if not address:
            # Seen when torch_mlir's MLIR libraries were loaded before `mlir`'s: two copies of
            # LLVM in one process, and the JIT resolves symbols against the wrong one.
            raise QuartetError(
                f"the CPU JIT could not materialize '@{self.signature.symbol}'; if torch_mlir "
                f"was imported before mlir in this process, import mlir (or quartet) first")
        # ExecutionEngine wraps every function as `void _mlir_<name>(void** args)`.
        self._packed = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(address)

    def __call__(self, inputs) -> list[np.ndarray]:
        sig = self.signature
        arrays = check_inputs(sig, inputs)
        outputs = [np.empty(s.shape, s.dtype) for s in sig.outputs]
        pointers = [ctypes.c_void_p(a.ctypes.data) for a in arrays + outputs]
        packed = (ctypes.c_void_p * len(pointers))(
            *[ctypes.cast(ctypes.pointer(p), ctypes.c_void_p) for p in pointers])
        self._packed(packed)
        return outputs


def check_inputs(sig: EntrySig, inputs) -> list[np.ndarray]:
    """Inputs as C-contiguous arrays of the entry's dtypes; a wrong count, shape or dtype is a
    :class:`QuartetError`."""
    inputs = list(inputs)
    if len(inputs) != len(sig.inputs):
        raise QuartetError(f"'@{sig.symbol}' takes {len(sig.inputs)} inputs, got {len(inputs)}")
    arrays = []
    for i, (value, want) in enumerate(zip(inputs, sig.inputs)):
        a = np.asarray(value)
        ok_dtype = a.dtype == want.dtype or (
            want.element == "bf16" and a.dtype.itemsize == 2 and a.dtype.kind in "uiV"
            or want.element == "bf16" and a.dtype.name == "bfloat16")
        if tuple(a.shape) != want.shape or not ok_dtype:
            raise QuartetError(
                f"input {i} of '@{sig.symbol}': expected {want.type_text()}, got shape "
                f"{tuple(a.shape)} dtype {a.dtype}")
        arrays.append(np.ascontiguousarray(a).reshape(np.shape(a)))
    return arrays


_PROGRAMS: dict[tuple, CpuProgram] = {}


def compile_cpu(module_or_text, *, entry: str | None = None, opt_level: int = 2) -> CpuProgram:
    """Lower and JIT-compile; programs compiled from the same text are cached.

    ``opt_level`` is LLVM's: 0 compiles about 20x faster than 2 on a BERT layer (0.3 s against
    6 s) and runs loops about 10x slower (a 128x768x3072 matmul: 0.77 s against 0.08 s)."""
    if isinstance(module_or_text, str):
        key = (hashlib.sha256(module_or_text.encode()).hexdigest(), entry, opt_level)
        if key not in _PROGRAMS:
            _PROGRAMS[key] = CpuProgram(module_or_text, entry=entry, opt_level=opt_level)
        return _PROGRAMS[key]
    return CpuProgram(module_or_text, entry=entry, opt_level=opt_level)


def run_cpu(module_or_text, inputs, *, entry: str | None = None,
            opt_level: int = 2) -> list[np.ndarray]:
    """Run a module on the CPU with MLIR's ExecutionEngine; return its results.

    ``module_or_text``: MLIR text or an ``mlir.ir.Module`` (linalg on tensors, with or without
    quartet tiles, or already lowered by ``quartet-lower-cpu``); it is not modified. ``inputs``:
    one numpy array per entry argument, of its shape and dtype (bf16 as ``np.uint16`` bit
    patterns). Returns one new array per result (bf16 results as ``np.uint16``).
    """
    return compile_cpu(module_or_text, entry=entry, opt_level=opt_level)(inputs)


# ---------------------------------------------------------------------------------------------
# Export: a shared object that runs without MLIR.


def emit_shared_object(module_or_text, *, entry: str | None = None, symbol: str = "forward",
                       cpu: str = "generic", opt_level: int = 2) -> bytes:
    """A Linux shared object exporting ``void <symbol>(void* in0, ..., void* out0, ...)``.

    Lowered as for ``run_cpu``, translated to LLVM IR, compiled with llvmlite (position
    independent, for ``cpu``: "generic" runs on any machine of the host's architecture,
    "native" uses every feature of this one) at LLVM ``opt_level`` 0-3, and linked with
    ``cc -shared -lm``. Loading it needs only libc and libm.
    """
    if opt_level not in (0, 1, 2, 3):
        raise QuartetError(f"opt_level must be 0, 1, 2 or 3, got {opt_level}")
    from mlir.dialects.llvm import translate_module_to_llvmir

    module, sig = _as_module(module_or_text, entry)
    with module.context:
        _rename_entry(module.operation, sig.symbol, symbol)
        llvm_ir = str(translate_module_to_llvmir(module.operation))
    key = (hashlib.sha256(llvm_ir.encode()).hexdigest(), cpu, opt_level)
    if key in _SHARED_OBJECTS:
        return _SHARED_OBJECTS[key]
    so = _link_shared_object(_compile_object(llvm_ir, cpu, opt_level))
    if len(_SHARED_OBJECTS) >= 32:
        _SHARED_OBJECTS.pop(next(iter(_SHARED_OBJECTS)))
    _SHARED_OBJECTS[key] = so
    return so


# Shared objects by (sha256 of the LLVM IR, cpu, opt_level): compiling the same program again
# (the same model with other weights: weights are arguments) skips LLVM, which is most of the
# CPU path's compile time.
_SHARED_OBJECTS: dict[tuple, bytes] = {}


def _link_shared_object(obj: bytes) -> bytes:
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if cc is None:
        raise QuartetError("linking the CPU shared object needs a C compiler: no 'cc' on PATH "
                           "(install gcc)")
    with tempfile.TemporaryDirectory(prefix="quartet-cpu-") as tmp:
        obj_path = os.path.join(tmp, "kernel.o")
        so_path = os.path.join(tmp, "kernel.so")
        with open(obj_path, "wb") as f:
            f.write(obj)
        proc = subprocess.run([cc, "-shared", "-o", so_path, obj_path, "-lm"],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise QuartetError(f"linking the CPU shared object failed: "
                               f"{proc.stderr.strip().splitlines()[0] if proc.stderr else cc}")
        with open(so_path, "rb") as f:
            return f.read()


def _rename_entry(module: ir.Operation, old: str, new: str) -> None:
    if old == new:
        return
    body = module.regions[0].blocks[0]
    for op in body.operations:
        if "sym_name" in op.operation.attributes and _sym_name(op.operation) == new:
            raise QuartetError(f"cannot export '@{old}' as '{new}': the module already has a "
                               f"symbol '{new}'")
    for op in body.operations:
        if "sym_name" in op.operation.attributes and _sym_name(op.operation) == old:
            ir.SymbolTable.replace_all_symbol_uses(old, new, module)
            op.operation.attributes["sym_name"] = ir.StringAttr.get(new)


def _compile_object(llvm_ir: str, cpu: str, opt_level: int) -> bytes:
    try:
        import llvmlite.binding as llvm
    except ImportError:
        raise QuartetError("exporting a CPU shared object needs llvmlite "
                           "(pip install llvmlite)") from None
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    mod = llvm.parse_assembly(llvm_ir)
    mod.verify()
    triple = llvm.get_process_triple()
    mod.triple = triple
    target = llvm.Target.from_triple(triple)
    native = cpu == "native"
    tm = target.create_target_machine(
        cpu=llvm.get_host_cpu_name() if native else cpu,
        features=llvm.get_host_cpu_features().flatten() if native else "",
        opt=min(opt_level, 2), reloc="pic", codemodel="default")
    mod.data_layout = str(tm.target_data)
    if opt_level:
        pto = llvm.create_pipeline_tuning_options(speed_level=opt_level)
        pb = llvm.create_pass_builder(tm, pto)
        pb.getModulePassManager().run(mod, pb)
    return tm.emit_object(mod)


def cpu_kernel(module_or_text, *, name: str = "forward", entry: str | None = None,
               opt_level: int = 2) -> KernelSpec:
    """The whole module as one CPU :class:`~quartet.lowering.kernel.KernelSpec`: the shared
    object of ``emit_shared_object`` with its entry ``name`` and the order of its pointer
    arguments (inputs, then outputs). Grid and block are (1, 1, 1): the loops are inside."""
    module, sig = _as_module(module_or_text, entry)
    binary = emit_shared_object(module, symbol=name, opt_level=opt_level)
    args = tuple(KernelArg("input", i, s.shape, _numpy_name(s)) for i, s in enumerate(sig.inputs))
    args += tuple(KernelArg("output", i, s.shape, _numpy_name(s))
                  for i, s in enumerate(sig.outputs))
    return KernelSpec(name=name, entry=name, target="cpu", binary=binary, grid=(1, 1, 1),
                      block=(1, 1, 1), shared_bytes=0, args=args)


def _numpy_name(sig: TensorSig) -> str:
    return "bfloat16" if sig.element == "bf16" else sig.dtype.name
