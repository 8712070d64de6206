"""Parse MLIR and run a pipeline of Quartet and upstream passes: the core of quartet-opt and of
the Python API.

``run_pipeline(module, "builtin.module(...)")`` expands the pipeline through the registry and
runs every step in ONE upstream ``PassManager``: Quartet passes as ``PassManager.add(callable,
name)``, upstream elements as ``PassManager.add(str)``, so that ``enable_ir_printing`` sees them
all. The Quartet verifier runs after parsing, after every Quartet pass and after the pipeline;
MLIR's own verifier runs after every pass. Every failure comes out as one
:class:`QuartetError` with a ``file:line:col`` location.
"""

from __future__ import annotations

import re

from mlir import ir
from mlir.passmanager import PassManager

from quartet.dialects import verify
from quartet.errors import QuartetError, location_of

from . import registry


class Diagnostics:
    """Collects error diagnostics of a Context so that nothing is printed behind our back."""

    def __init__(self, context: ir.Context, source_name: str):
        self.source_name = source_name
        self.errors: list[tuple[str, str]] = []
        self._handler = context.attach_diagnostic_handler(self._on)

    def _on(self, diag) -> bool:
        if diag.severity == ir.DiagnosticSeverity.ERROR:
            self.errors.append((str(diag.location), diag.message))
        return True

    def detach(self) -> None:
        self._handler.detach()

    def location(self, loc_text: str) -> str | None:
        where = location_of(loc_text)
        if where is None:
            return self.source_name if self.source_name else None
        return where.replace("-:", f"{self.source_name}:", 1) if where.startswith("-:") \
            else where

    def first_error(self, fallback: str) -> QuartetError:
        if self.errors:
            loc, message = self.errors[0]
            return QuartetError(message.splitlines()[0], self.location(loc))
        return QuartetError(fallback, self.source_name or None)

    def relocate(self, error: QuartetError) -> QuartetError:
        if error.location and error.location.startswith("-:"):
            error.location = self.source_name + error.location[1:]
        return error


def parse(text: str, context: ir.Context, source_name: str = "-") -> ir.Module:
    """Parse MLIR text and run the Quartet verifier; errors name ``source_name:line:col``."""
    diags = Diagnostics(context, source_name)
    try:
        with context:
            try:
                module = ir.Module.parse(text)
            except ir.MLIRError as e:
                raise _from_mlir_error(e, diags, "could not parse the input") from None
            try:
                verify(module)
            except QuartetError as e:
                raise diags.relocate(e) from None
            return module
    finally:
        diags.detach()


def _from_mlir_error(e: "ir.MLIRError", diags: Diagnostics, fallback: str) -> QuartetError:
    for d in getattr(e, "error_diagnostics", []) or []:
        return QuartetError(d.message.splitlines()[0], diags.location(str(d.location)))
    return diags.first_error(fallback)


def run_pipeline(module: ir.Module, pipeline: str, *, print_ir_after_all: bool = False,
                 source_name: str = "-", print_generic: bool = False) -> None:
    """Run ``pipeline`` (``builtin.module(...)``) on ``module`` in place."""
    try:
        steps = registry.expand(pipeline)
    except QuartetError as e:
        e.location = e.location or "--pass-pipeline"
        raise
    context = module.context
    diags = Diagnostics(context, source_name)
    failures: list[QuartetError] = []
    try:
        with context:
            pm = PassManager("builtin.module")
            for kind, step in steps:
                if kind == "quartet":
                    pm.add(_as_callable(step, failures), step.name)
                else:
                    try:
                        pm.add(step)
                    except (ValueError, ir.MLIRError) as e:
                        error = _unknown_pass(step, e, diags)
                        error.location = "--pass-pipeline"
                        raise error from None
            if print_ir_after_all:
                context.enable_multithreading(False)
                pm.enable_ir_printing(print_after_all=True, print_module_scope=True,
                                      print_generic_op_form=print_generic)
            try:
                pm.run(module.operation)
            except ir.MLIRError as e:
                if failures:
                    raise diags.relocate(failures[0]) from None
                raise _from_mlir_error(e, diags, "pass pipeline failed") from None
            if failures:
                raise diags.relocate(failures[0])
            try:
                verify(module)
            except QuartetError as e:
                raise diags.relocate(e) from None
    finally:
        diags.detach()


def _as_callable(step: registry.ModulePass, failures: list[QuartetError]):
    def run(op, pass_):
        try:
            step.apply(op)
            verify(op)
        except QuartetError as e:
            failures.append(e)
            pass_.signal_pass_failure()
    return run


def _unknown_pass(element: str, error: Exception, diags: Diagnostics) -> QuartetError:
    name, _ = registry.parse_element(element)
    if "(" in name:
        name = name.split("(")[0]
    text = str(error)
    if diags.errors:
        text = diags.errors[0][1]
    m = re.search(r"'([^']+)' does not refer to a registered pass", text)
    if m or "does not refer to a registered pass" in text or "unknown" in text.lower():
        bad = m.group(1) if m else name
        return QuartetError(f"unknown pass or pipeline '{bad}' (see quartet-opt --list-passes)")
    return QuartetError(f"bad pass '{element}': {text.splitlines()[0] if text else 'rejected'}")
