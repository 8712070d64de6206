"""Quartet's own decompositions, run with torch-mlir's table before import (issue 18).

Each entry replaces an ATen op by ATen ops that torch-mlir lowers right, where its own lowering
of the op is wrong or missing:

* ``aten.gelu`` with ``approximate="tanh"``: torch-mlir's linalg lowering multiplies by the
  constant 0.797724 where ``sqrt(2 / pi)`` is 0.7978846 (a relative error of 2e-4 in the tanh's
  argument; 5.1e-5 absolute error for x between -2.7 and -0.7, where eager is within 4e-7 of
  float64). The decomposition uses the exact constants; half-precision inputs are computed in
  float32 and rounded once, as eager does. ``approximate="none"`` keeps torch-mlir's lowering.

* ``aten.rms_norm``: exported as its composite form in the input's precision, a float16 sum of
  squares overflows (inputs of a few hundred: inf, then rsqrt gives 0, every output 0, found by
  the OpInfo test); eager computes it in float32. Decomposed in float32 for half inputs,
  rounded once.
* ``aten.linalg_vector_norm`` on half inputs: computed in float32 like eager (the float16
  sum of squares overflowed to inf; found by the OpInfo test), through ``upcasting``.
* ``aten.mean`` on half inputs: torch-mlir lowers it as a sum in the input's type, then a
  division; a float16 sum overflows where the mean does not (the mean of squares of 65536
  values of about 1, an RMSNorm over long rows: inf, every output wrong; found by the GPU
  bandwidth rows, issue 13). Computed in float32 like eager and rounded once, through
  ``upcasting``'s float32 copies.
* ``argmax``/``argmin``: the extreme, then the least index holding it (two single-result
  reductions; torch-mlir's one reduction with two results has no GPU kernel). Of a 0-d tensor
  (torch-mlir cannot lower them: its error names their ``torch.constant.bool`` operand): the
  index 0; ``amax``/``amin`` of a 0-d tensor: the value itself.
* ``aten.cumsum``, ``aten.cumprod``, ``aten.logcumsumexp``: torch-mlir lowers the first two to
  ``tm_tensor.scan`` (outside linalg; the last it does not lower at all). As scans over a
  triangular mask, ``out[..., i] = reduce_j<=i x[..., j]`` (a ``where`` and a sum / product /
  logsumexp along a new axis), they are plain linalg that every target takes. The cost is
  quadratic in the scanned extent: up to :data:`SCAN_LIMIT` elements, and up to
  :data:`SCAN_VOLUME` elements of the masked intermediate; longer scans keep the op (and are
  refused, as before). Position ids in transformers (a cumsum over a sequence) are well within.
* every op torch-mlir has no torch-dialect op for (``addmv``, ``hypot``, ``dist``,
  ``narrow_copy``, ``nextafter``, special functions such as ``i0``, ``erfc``, ``lgamma``) and
  PyTorch has a decomposition for (``torch._decomp.decomposition_table``): the importer would
  otherwise emit a ``torch.operator`` and refuse the model. Ops torch-mlir knows keep its own
  lowering (its table comes first).

* ``upcasting(ops)``: for ops torch-mlir refused to lower in float16/bfloat16 (half-precision
  ``addbmm``: torch-mlir's own decomposition skips it), the op computed on float32 copies of its
  half-precision tensors, results rounded back: what eager's kernels do internally. The importer
  asks for it only after torch-mlir refused such an op (``guards.half_ops_to_upcast``).

Assumes: applied through ``ExportedProgram.run_decompositions`` (functional ATen graphs).
"""

from __future__ import annotations

import functools
import math

import torch

_aten = torch.ops.aten


def _opmath(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def gelu(x: torch.Tensor, approximate: str = "none"):
    if approximate != "tanh":
        return NotImplemented          # torch-mlir's erf form is right: keep the op
    y = _opmath(x)
    inner = math.sqrt(2.0 / math.pi) * (y + 0.044715 * (y * y * y))
    return (0.5 * y * (1.0 + torch.tanh(inner))).to(x.dtype)


def rms_norm(x, normalized_shape, weight=None, eps=None):
    dims = list(range(x.dim() - len(normalized_shape), x.dim()))
    y = _opmath(x)
    if eps is None:
        eps = torch.finfo(x.dtype).eps
    out = y * torch.rsqrt((y * y).mean(dims, keepdim=True) + eps)
    if weight is not None:
        out = out * _opmath(weight)
    return out.to(x.dtype)


def _arg_extreme(x, dim=None, keepdim=False, *, largest: bool):
    """``argmax`` (``largest``) / ``argmin`` as two single-result reductions: the extreme along
    ``dim``, then the least index holding it (or holding a NaN, which both propagate: eager
    returns the first NaN). torch-mlir lowers the op itself as one reduction with two results
    (value and index), which no GPU kernel family takes, and which a tile cannot yield whole
    (two result types); the greedy decoder's argmax had no GPU kernel (issue 12). The input is
    read twice instead of once."""
    if x.dim() == 0:
        return torch.zeros((), dtype=torch.int64, device=x.device)
    if dim is None:
        out = _arg_extreme(x.reshape(-1), 0, False, largest=largest)
        return out.reshape([1] * x.dim()) if keepdim else out
    dim = dim % x.dim()
    n = x.shape[dim]
    extreme = (torch.amax if largest else torch.amin)(x, dim, keepdim=True)
    hit = x == extreme
    if x.is_floating_point():
        hit = hit | torch.isnan(x)
    shape = [1] * x.dim()
    shape[dim] = n
    index = torch.arange(n, dtype=torch.int64, device=x.device).reshape(shape)
    return torch.amin(torch.where(hit, index, n), dim, keepdim=keepdim)


def _argmax(x, dim=None, keepdim=False):
    return _arg_extreme(x, dim, keepdim, largest=True)


def _argmin(x, dim=None, keepdim=False):
    return _arg_extreme(x, dim, keepdim, largest=False)


def _extreme_of_scalar(x, dim=(), keepdim=False):
    if x.dim() != 0:
        return NotImplemented
    return x.clone()


SCAN_LIMIT = 4096
SCAN_VOLUME = 1 << 24


def _scan(x: torch.Tensor, dim: int, fill, reduce):
    """``reduce`` over the last axis of ``where(j <= i, x[..., None, j], fill)``, or
    NotImplemented (keep the op) when the scan is too long."""
    if x.dim() == 0:
        return x.clone()
    dim = dim % x.dim()
    n = x.shape[dim]
    if n > SCAN_LIMIT or x.numel() * n > SCAN_VOLUME:
        return NotImplemented
    moved = x.movedim(dim, -1)
    index = torch.arange(n, device=x.device)
    mask = index.unsqueeze(0) <= index.unsqueeze(1)           # [i, j]: j <= i
    masked = torch.where(mask, moved.unsqueeze(-2), fill)     # [..., i, j]
    return reduce(masked).movedim(-1, dim)


def _scan_input(x: torch.Tensor, dtype) -> torch.Tensor:
    if dtype is not None:
        return x.to(dtype)
    if not (x.is_floating_point() or x.is_complex()):
        return x.to(torch.int64)       # torch accumulates integers and booleans in int64
    return x


def cumsum(x, dim, dtype=None):
    x = _scan_input(x, dtype)
    return _scan(x, dim, 0, lambda m: m.sum(-1))


def cumprod(x, dim, dtype=None):
    x = _scan_input(x, dtype)
    return _scan(x, dim, 1, lambda m: m.prod(-1))


def logcumsumexp(x, dim):
    return _scan(x, dim, float("-inf"), lambda m: torch.logsumexp(m, -1))


def _torch_mlir_name(op) -> str:
    base = "torch." + op._schema.name.replace("::", ".")
    return base if op._overloadname == "default" else f"{base}.{op._overloadname}"


@functools.lru_cache(maxsize=1)
def for_ops_torch_mlir_lacks() -> dict:
    """PyTorch's decompositions of the ATen ops that torch-mlir's dialect does not have."""
    from torch._decomp import decomposition_table
    from torch_mlir import ir as torch_ir
    from torch_mlir.dialects import torch as torch_d

    context = torch_ir.Context()
    torch_d.register_dialect(context)
    found = {}
    for op, fn in decomposition_table.items():
        if not isinstance(op, torch._ops.OpOverload) or op.namespace != "aten" or \
                op._overloadname.endswith("out") or "backward" in op._schema.name:
            continue
        # torch._refs entries lower to prims, which torch-mlir lacks too: they would only
        # rename the refusal (aten.i0 -> prims.bessel_i0)
        if fn.__module__.startswith("torch._refs"):
            continue
        if not context.is_registered_operation(_torch_mlir_name(op)):
            found[op] = fn
    return found


def overrides(base: dict) -> dict:
    """ATen overload -> decomposition, to update torch-mlir's table ``base`` with: ours, and
    PyTorch's for ops torch-mlir lacks that ``base`` does not decompose."""
    table = {op: fn for op, fn in for_ops_torch_mlir_lacks().items() if op not in base}
    table[_aten.gelu.default] = gelu
    table[_aten.rms_norm.default] = rms_norm
    norm = _upcast(_aten.linalg_vector_norm.default)
    table[_aten.linalg_vector_norm.default] = \
        lambda x, *a, **k: NotImplemented if k.get("dtype") is not None else norm(x, *a, **k)
    for op in (_aten.mean.dim, _aten.mean.default):
        mean = _upcast(op)
        table[op] = functools.partial(_mean_in_float32, mean)
    table[_aten.argmax.default] = _argmax
    table[_aten.argmin.default] = _argmin
    for op in (_aten.amax.default, _aten.amin.default):
        table[op] = _extreme_of_scalar
    table[_aten.cumsum.default] = cumsum
    table[_aten.cumprod.default] = cumprod
    table[_aten.logcumsumexp.default] = logcumsumexp
    return table


_HALF = (torch.float16, torch.bfloat16)


def _mean_in_float32(mean, x, *args, **kwargs):
    """``aten.mean`` of a half tensor without a ``dtype``: in float32 (see the module
    docstring); with one, the op as it is."""
    if kwargs.get("dtype") is not None:
        return NotImplemented
    return mean(x, *args, **kwargs)


def _upcast(op):
    import torch.utils._pytree as pytree

    def run_in_float32(*args, **kwargs):
        leaves = pytree.tree_leaves((args, kwargs))
        half = next((t.dtype for t in leaves if isinstance(t, torch.Tensor)
                     and t.dtype in _HALF), None)
        if half is None:
            return NotImplemented           # float32 (the call below): the op itself

        def up(t):
            return t.float() if isinstance(t, torch.Tensor) and t.dtype in _HALF else t

        def down(t):
            return t.to(half) if isinstance(t, torch.Tensor) and t.dtype == torch.float32 \
                else t

        a, k = pytree.tree_map(up, (args, kwargs))
        return pytree.tree_map(down, op(*a, **k))

    return run_in_float32


def upcasting(ops) -> dict:
    """Decompositions computing each of ``ops`` (ATen overloads) in float32 on half inputs."""
    return {op: _upcast(op) for op in ops}
