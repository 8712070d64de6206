"""What ``quartet.compile`` checks around the import so that a user mistake reads as one line.

Issue 15, item 5 ("no tracebacks for user mistakes"):

- :func:`quiet_import` keeps torch's own noise out of the way while a model is exported: a
  failing ``torch.export`` prints the partial FX graph to stderr and torch's shape logger warns
  about the same failure, although the failure itself comes back as one QuartetError line.
  What was printed is shown again when the import succeeds, or fails with a non-user error.
- :func:`explain_import_error` turns the exporter's "could not guard on data-dependent
  expression" (a Python ``if``/``while``/``bool()`` on a tensor's value) into advice to write
  the branch with ``torch.cond`` (or the loop with ``while_loop``), which Quartet compiles.
- :func:`check_runs_eagerly` runs the model once in eager PyTorch on the example inputs and
  refuses what eager refuses (an ``i64`` input to a float ``Linear`` exports fine but is not a
  program PyTorch runs: compiling it would give numbers with no reference). The run is under
  ``torch.no_grad()`` with the random-number state restored, after the import succeeded (so a
  model that mutates its state has already been refused).
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import traceback
from pathlib import Path

from quartet.errors import QuartetError

_NOISY_LOGGERS = ("torch.fx.experimental.symbolic_shapes", "torch._subclasses.fake_tensor",
                  "torch.export", "torch._export")


@contextlib.contextmanager
def quiet_import():
    """Hold back torch's stderr output and shape-error logs while a model is imported."""
    loggers = [logging.getLogger(n) for n in _NOISY_LOGGERS]
    levels = [lg.level for lg in loggers]
    held = io.StringIO()
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    failed_as_user_error = False
    try:
        with contextlib.redirect_stderr(held):
            yield
    except QuartetError:
        failed_as_user_error = True
        raise
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
        if not failed_as_user_error and held.getvalue():
            sys.stderr.write(held.getvalue())


def _is_data_dependent_guard(error: BaseException) -> bool:
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if type(error).__name__ in ("GuardOnDataDependentSymNode", "DataDependentOutputException"):
            return True
        error = error.__cause__ or error.__context__
    return False


def explain_import_error(error: QuartetError) -> QuartetError:
    """``error``, or the torch.cond advice when it is a Python branch on a tensor's value."""
    if not _is_data_dependent_guard(error):
        return error
    return QuartetError(
        "Python control flow on a tensor's value (an if, while or bool() on a tensor) cannot "
        "be compiled: write the branch as torch.cond(pred, true_fn, false_fn, (x,)) and a "
        "loop as torch._higher_order_ops.while_loop, which Quartet compiles "
        "(docs/python-api.md, control flow)", error.location)


def check_runs_eagerly(module, example_inputs) -> None:
    """Run ``module(*example_inputs)`` once in eager PyTorch; a QuartetError if it fails."""
    import torch

    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            module(*example_inputs)
    except Exception as e:
        described = ", ".join(_describe(x) for x in example_inputs)
        raise QuartetError(
            f"PyTorch itself refuses the example inputs ({described}): {_one_line(e)}",
            _user_frame(e)) from None


def _describe(x) -> str:
    shape = "x".join(str(d) for d in getattr(x, "shape", ())) or "scalar"
    dtype = str(getattr(x, "dtype", type(x).__name__)).removeprefix("torch.")
    return f"{shape} {dtype}"


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def _user_frame(e: BaseException) -> str | None:
    """``file:line`` of the innermost frame outside torch (the model's line), if any."""
    import torch

    torch_dir = Path(torch.__file__).resolve().parent
    found = None
    for frame in traceback.extract_tb(e.__traceback__):
        path = Path(frame.filename).resolve()
        if path == Path(__file__).resolve() or torch_dir in path.parents:
            continue
        found = f"{frame.filename}:{frame.lineno}"
    return found
