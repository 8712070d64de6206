"""What the importer checks and rewrites in the exported graph before torch-mlir sees it (issue 18).

torch-mlir runs in the user's process, and some inputs end that process with a signal, or come
out of it as a bare Python exception that names no op. This module stands in front of it:

* **Refusals of what is known to kill the process**, each a one-line :class:`QuartetError`
  naming the op and the user's source line (:func:`refuse_known_crashes`):
  - an empty tensor anywhere in the graph (an input, a weight or an op's result): torch-mlir's
    linalg lowering divides by a zero extent (``repeat`` with a zero count died with SIGFPE);
    and a sparse one (``to_sparse``: a bare ``AssertionError`` in torch-mlir's importer);
  - ops that mutate or resize a tensor in place (``resize_``, ``set_``, any op whose schema
    writes an argument) left in the exported graph: the functional graph Quartet compiles has
    none, and ``resize_`` on a 0-d tensor died with SIGSEGV in the backend pipeline;
  - unsigned types other than uint8 (``small_ints.check_unsigned``).
* **uint8 semantics** kept by computing uint8 values as int16 (``small_ints.widen``), and
  the program boundary typed ``ui8`` where torch-mlir says ``i8`` (:class:`Boundary`).
* **the op torch-mlir left unlowered** named in its refusals (:func:`name_unlowered_op`): when
  a half-precision ``addbmm`` is not converted, torch-mlir's first error is about its operand
  ``torch.constant.int``; the error now names ``torch.aten.addbmm``.
* **torch-mlir's own exceptions** turned into QuartetErrors naming the op being imported
  (:func:`translating_torch_mlir_errors`): a ``KeyError: torch.uint64`` from its constant
  hashing, a bare ``AssertionError`` from an importer check.

Whether the import should run in a child process instead is answered in
``docs/operators.md`` ("Crashes and isolation"): it does not (measured cost there).

Assumes: an exported, functional ATen graph (``run_decompositions`` done) whose nodes carry
fake tensors in ``meta["val"]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from quartet.errors import QuartetError

from . import small_ints


def _op_name(target) -> str:
    name = getattr(target, "name", None)
    return name().replace("::", ".") if callable(name) else str(target)


def _tensors(val) -> list:
    vals = val if isinstance(val, (list, tuple)) else (val,)
    return [v for v in vals if isinstance(v, torch.Tensor)]


def _what(node: torch.fx.Node) -> str:
    if node.op == "placeholder":
        return f"input '{node.target}'"
    return f"op '{_op_name(node.target)}'"


def _refuse_empty(gm: torch.fx.GraphModule, where: Callable) -> None:
    for node in gm.graph.nodes:
        if node.op == "output":
            continue
        for t in _tensors(node.meta.get("val")):
            if t.layout != torch.strided:
                raise QuartetError(f"{_what(node)} gives a {t.layout} tensor; Quartet "
                                   f"compiles dense (strided) tensors", where(node))
            if all(isinstance(d, int) for d in t.shape) and t.numel() == 0:
                raise QuartetError(f"{_what(node)} gives an empty tensor (shape "
                                   f"{list(t.shape)}); Quartet compiles tensors with at least "
                                   f"one element", where(node))


def _mutates(target) -> bool:
    schema = getattr(target, "_schema", None)
    if schema is None:
        return False
    return any(a.alias_info is not None and a.alias_info.is_write for a in schema.arguments)


def _refuse_mutation(gm: torch.fx.GraphModule, where: Callable) -> None:
    for node in gm.graph.nodes:
        if node.op == "call_function" and _mutates(node.target):
            raise QuartetError(f"op '{_op_name(node.target)}' changes a tensor in place; "
                               f"Quartet compiles functional graphs (use the out-of-place form)",
                               where(node))


def refuse_known_crashes(gm: torch.fx.GraphModule, where: Callable) -> None:
    """The refusals of the module docstring, on ``gm`` and the graphs of its submodules."""
    for g in [gm] + [c for c in gm.modules() if isinstance(c, torch.fx.GraphModule)
                     and c is not gm]:
        small_ints.check_unsigned(g, where)
        _refuse_mutation(g, where)
        _refuse_empty(g, where)


@dataclass
class Boundary:
    """The program boundary's torch dtypes where torch-mlir's signless types lose them."""

    results: list = field(default_factory=list)       # torch dtype of each graph output

    def result_type(self, index: int, shape, dtype: str):
        if dtype == "i8" and index < len(self.results) and self.results[index] == torch.uint8:
            return shape, "ui8"
        return shape, dtype

    @staticmethod
    def argument_type(node: torch.fx.Node, shape, dtype: str):
        val = node.meta.get("val")
        if dtype == "i8" and isinstance(val, torch.Tensor) and val.dtype == torch.uint8:
            return shape, "ui8"
        return shape, dtype


def prepare_graph(gm: torch.fx.GraphModule, where: Callable) -> Boundary:
    """Refuse what would crash, compute uint8 as int16; the boundary's dtypes."""
    refuse_known_crashes(gm, where)
    small_ints.widen(gm)
    return Boundary(small_ints.output_dtypes(gm))


# Exceptions torch-mlir's importer raises for inputs it does not handle (not for its own bugs
# in general: those stay Python exceptions).
_IMPORTER_EXCEPTIONS = (KeyError, AssertionError, NotImplementedError, TypeError, ValueError,
                        IndexError)


def translating_torch_mlir_errors(import_fn: Callable, gm: torch.fx.GraphModule, *args):
    """``import_fn(gm, *args)``; an exception of torch-mlir's importer becomes a QuartetError
    naming the fx node being imported (torch-mlir's tracebacks name none)."""
    from .importer import node_location

    try:
        return import_fn(gm, *args)
    except QuartetError:
        raise
    except _IMPORTER_EXCEPTIONS as e:
        node = _node_being_imported(e, gm)
        what = _what(node) if node is not None else "the model"
        text = str(e).strip().splitlines()[0] if str(e).strip() else ""
        detail = f"{type(e).__name__}: {text}" if text else type(e).__name__
        raise QuartetError(f"torch-mlir cannot import {what} ({detail})",
                           node_location(node) if node is not None else None) from e


def _node_being_imported(error: BaseException, gm: torch.fx.GraphModule):
    """The fx node a frame of ``error``'s traceback was importing (a local named ``node``)."""
    tb = error.__traceback__
    found = None
    while tb is not None:
        node = tb.tb_frame.f_locals.get("node")
        if isinstance(node, torch.fx.Node):
            found = node
        tb = tb.tb_next
    return found


_SYMPTOMS = ("'torch.constant.", "'torch.prim.ListConstruct'", "'torch_c.")


def name_unlowered_op(module, error: QuartetError) -> QuartetError:
    """``error`` (torch-mlir's lowering refusal), naming the first ``torch.aten`` op left in
    ``module`` instead of an operand of it (a constant, a list) where it named one of those."""
    if not any(s in error.message for s in _SYMPTOMS):
        return error
    from .importer import _walk, mlir_location

    import re

    operand = re.search(r"'([\w.]+)'", error.message).group(1)
    for op in _walk(module.operation):
        if op.name.startswith("torch.aten."):
            return QuartetError(f"unsupported op '{op.name}': torch-mlir cannot lower it (it "
                                f"stopped at its operand '{operand}')",
                                mlir_location(op.location) or error.location)
    return error


def half_ops_to_upcast(error: QuartetError, gm: torch.fx.GraphModule) -> tuple:
    """The ATen overloads of ``gm`` with half-precision tensors that ``error`` says torch-mlir
    cannot lower (to be computed in float32: ``decompositions.upcasting``); () if none."""
    import re

    found = re.search(r"unsupported op 'torch\.aten\.([\w.]+)': torch-mlir cannot lower",
                      error.message)
    if found is None:
        return ()
    name = found.group(1)
    ops = []
    for g in [gm] + [c for c in gm.modules() if isinstance(c, torch.fx.GraphModule)]:
        for node in g.graph.nodes:
            if node.op != "call_function" or not isinstance(node.target, torch._ops.OpOverload):
                continue
            if node.target._schema.name.replace("aten::", "") != name.split(".")[0]:
                continue
            vals = [a.meta.get("val") for a in node.all_input_nodes]
            if any(isinstance(v, torch.Tensor) and v.dtype in (torch.float16, torch.bfloat16)
                   for v in vals) and node.target not in ops:
                ops.append(node.target)
    return tuple(ops)
