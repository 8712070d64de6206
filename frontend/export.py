"""The first half of the import: ``torch.export`` of a model, and where its nodes came from.

Only torch: no torch-mlir, no MLIR. The compile cache (``cache.py``) keys a model by the graph
this stage gives, so that a model found in the cache is never handed to torch-mlir, and neither
torch-mlir nor the MLIR bindings are even imported for it (issue 14). ``importer.py`` takes the
exported program from here to linalg on tensors.
"""

from __future__ import annotations

import os
import re
import warnings

import torch
import torch.export

from quartet.errors import QuartetError

_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__))
_FRAME = re.compile(r'File "([^"]+)", line (\d+)')


def export_model(module: torch.nn.Module, example_inputs: tuple) -> torch.export.ExportedProgram:
    """``torch.export.export`` (non-strict) of ``module`` on ``example_inputs``, before any
    decomposition; what torch.export refuses is one QuartetError at the user's line."""
    check_call(module, example_inputs)
    where = module_location(module)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return torch.export.export(module, tuple(example_inputs), strict=False)
    except QuartetError:
        raise
    except Exception as e:  # torch.export raises many kinds; all mean "this model won't export"
        raise QuartetError(
            f"torch.export failed for {type(module).__name__}: {first_line(e)}",
            traceback_location(e) or where,
        ) from e


def check_call(module, example_inputs: tuple) -> None:
    """A module and tensors, or a one-line QuartetError."""
    if not isinstance(module, torch.nn.Module):
        raise QuartetError(f"expected a torch.nn.Module, got {type(module).__name__}")
    for i, x in enumerate(example_inputs):
        if not isinstance(x, torch.Tensor):
            raise QuartetError(
                f"example input {i} is a {type(x).__name__}; Quartet takes tensors",
                module_location(module),
            )


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def pick_user_frame(frames: list[tuple[str, int]]) -> str | None:
    """The innermost frame in the user's code: not generated (``<eval_with_key>``), not torch.

    ``frames`` runs from innermost to outermost.
    """
    real = [(f, line) for f, line in frames if not f.startswith("<")]
    for f, line in real:
        if not os.path.abspath(f).startswith(_TORCH_DIR + os.sep):
            return f"{f}:{line}"
    return f"{real[0][0]}:{real[0][1]}" if real else None


def node_location(node: torch.fx.Node) -> str | None:
    """``file:line`` of the user's model code an fx node came from, if the node records it."""
    trace = node.meta.get("stack_trace") or ""
    frames = [(f, int(line)) for f, line in _FRAME.findall(trace)]
    return pick_user_frame(frames[::-1])


def traceback_location(error: BaseException) -> str | None:
    """The innermost frame of the user's code in an exception raised while tracing it."""
    import traceback

    here = {os.path.abspath(__file__), os.path.abspath(__file__).replace("export.py", "importer.py")}
    frames = [(f.filename, f.lineno) for f in traceback.extract_tb(error.__traceback__)
              if os.path.abspath(f.filename) not in here]
    return pick_user_frame(frames[::-1])


def module_location(module: torch.nn.Module) -> str | None:
    import inspect

    try:
        forward = type(module).forward
        return f"{inspect.getsourcefile(forward)}:{inspect.getsourcelines(forward)[1]}"
    except (TypeError, OSError):
        return None
