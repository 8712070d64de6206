"""What ``quartet.compile`` checks around the import so that a user mistake reads as one line.

Issue 15, item 5 ("no tracebacks for user mistakes"):

- :func:`quiet_import` keeps torch's own noise out of the way while a model is exported: a
  failing ``torch.export`` prints the partial FX graph to stderr and torch's shape logger warns
  about the same failure, although the failure itself comes back as one QuartetError line.
  What was printed is shown again when the import succeeds, or fails with a non-user error.
- :func:`explain_import_error` turns the exporter's "could not guard on data-dependent
  expression" (a Python ``if``/``while``/``bool()`` on a tensor's value) into advice to write
  the branch with ``torch.cond`` (or the loop with ``while_loop``), which Quartet compiles.
- :func:`check_runs_eagerly` refuses example inputs that eager PyTorch refuses although
  ``torch.export`` takes them: an ``i64`` input to a float ``Linear`` exports (the meta
  functions of ``mm``/``addmm`` do not compare dtypes), but the CPU and CUDA kernels raise
  "mat1 and mat2 must have the same dtype", so the program would have no reference. The model
  runs once on fake tensors (shapes and dtypes only, no arithmetic: a real eager run of a large
  f16 model on the build machine's CPU could take minutes) with the eager kernels' rule that
  matrix products and convolutions take operands of one dtype. Runs after the import succeeded,
  and not for models with ``torch.cond`` / ``while_loop``: their eager run compiles the
  higher-order op with dynamo, which a dispatch mode disturbs for later eager calls.
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


def _same_dtype_ops():
    """The aten ops whose eager kernels refuse operands of different dtypes, by overload packet."""
    import torch

    aten = torch.ops.aten
    return {aten.mm, aten.addmm, aten.bmm, aten.baddbmm, aten.addbmm, aten.mv, aten.addmv,
            aten.dot, aten.vdot, aten.convolution, aten._convolution}


class MixedDtypes(RuntimeError):
    """What the eager kernels raise for a product or convolution of mixed dtypes."""


class _EagerDtypeRule:
    """A dispatch mode (made on first use: torch is imported lazily) that raises like the eager
    kernels when a product or convolution mixes dtypes."""

    _mode = None

    @classmethod
    def mode(cls):
        if cls._mode is None:
            import torch
            from torch.utils._python_dispatch import TorchDispatchMode
            from torch.utils._pytree import tree_leaves

            ops = _same_dtype_ops()

            class Mode(TorchDispatchMode):
                supports_higher_order_operators = True   # cond, while_loop: passed through

                def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                    if getattr(func, "overloadpacket", None) in ops:
                        dtypes = sorted({str(a.dtype).removeprefix("torch.")
                                         for a in tree_leaves((args, kwargs or {}))
                                         if isinstance(a, torch.Tensor)})
                        if len(dtypes) > 1:
                            raise MixedDtypes(f"{func.overloadpacket.__name__} takes operands "
                                              f"of one dtype, got {' and '.join(dtypes)}")
                    return func(*args, **(kwargs or {}))

            cls._mode = Mode
        return cls._mode()


def check_runs_eagerly(module, example_inputs, imported_text: str = "") -> None:
    """Refuse example inputs that eager PyTorch refuses (see the module docstring);
    ``imported_text``: the model as imported, to skip models with control flow."""
    if "scf.while" in imported_text or "scf.if" in imported_text:
        return
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    try:
        with FakeTensorMode(allow_non_fake_inputs=True) as fake:
            inputs = [fake.from_tensor(x) if isinstance(x, torch.Tensor) else x
                      for x in example_inputs]
            with torch.no_grad(), _EagerDtypeRule.mode():
                module(*inputs)
    except MixedDtypes as e:
        described = ", ".join(_describe(x) for x in example_inputs)
        raise QuartetError(
            f"PyTorch itself refuses the example inputs ({described}): {e}",
            _user_frame(e)) from None
    except Exception:
        # Anything else is the fake run's own limit (an op without a fake kernel, a
        # data-dependent shape): torch.export accepted the model, so it is not refused here.
        pass


def _describe(x) -> str:
    shape = "x".join(str(d) for d in getattr(x, "shape", ())) or "scalar"
    dtype = str(getattr(x, "dtype", type(x).__name__)).removeprefix("torch.")
    return f"{shape} {dtype}"


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
