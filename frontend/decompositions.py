"""Quartet's own decompositions, run with torch-mlir's table before import (issue 18).

Each entry replaces an ATen op by ATen ops that torch-mlir lowers right, where its own lowering
of the op is wrong or missing:

* ``aten.gelu`` with ``approximate="tanh"``: torch-mlir's linalg lowering multiplies by the
  constant 0.797724 where ``sqrt(2 / pi)`` is 0.7978846 (a relative error of 2e-4 in the tanh's
  argument; 5.1e-5 absolute error for x between -2.7 and -0.7, where eager is within 4e-7 of
  float64). The decomposition uses the exact constants; ``approximate="none"`` is
  ``x/2 * (1 + erf(x / sqrt 2))`` as before. Half-precision inputs are computed in float32 and
  rounded once, as eager does.

Assumes: applied through ``ExportedProgram.run_decompositions`` (functional ATen graphs).
"""

from __future__ import annotations

import math

import torch

_aten = torch.ops.aten


def _opmath(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def gelu(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    y = _opmath(x)
    if approximate == "tanh":
        inner = math.sqrt(2.0 / math.pi) * (y + 0.044715 * (y * y * y))
        out = 0.5 * y * (1.0 + torch.tanh(inner))
    else:
        out = 0.5 * y * (1.0 + torch.erf(y * (1.0 / math.sqrt(2.0))))
    return out.to(x.dtype)


def overrides() -> dict:
    """ATen overload -> decomposition, to update torch-mlir's decomposition table with."""
    return {_aten.gelu.default: gelu}
