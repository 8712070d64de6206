"""How a compiled op's outputs are judged against eager PyTorch and a float64 reference.

Shared by the CPU differential test (``harness.py``, with MLIR) and the GPU run
(``run_gpu.py``, on the GPU machine: numpy only, no MLIR, no torch).

A float output is right when it is close to the float64 reference (the same op on the sample
cast to float64) within the dtype's tolerance, or no further from it than a small multiple of
eager's own largest distance (an op whose eager result in this dtype is itself far from float64, such
as a sum of many float16 values, may be as far). Where the op has no float64 kernel, eager in the
sample's dtype is the reference. Integer and boolean outputs must equal eager's exactly. NaN and
infinities must sit where the reference has them.
"""

from __future__ import annotations

import numpy as np

#: dtype -> (rtol, atol) against the float64 reference
TOLERANCE = {
    "float32": (1e-5, 1e-5),
    "float64": (1e-10, 1e-10),
    "float16": (2e-3, 2e-3),
    "bfloat16": (1.6e-2, 1.6e-2),
}
#: a compiled result may be this many times further from float64 than eager's
EAGER_SLACK = 10.0


def judge(outputs: list, eager: list, reference: list | None, dtype: str) -> str | None:
    """None when ``outputs`` (numpy arrays) are right, else why they are wrong.

    ``eager``: eager's outputs in the sample's dtype; ``reference``: the float64 outputs (None
    where the op has no float64 kernel); every array is numpy (bfloat16 as float32 values)."""
    if len(outputs) != len(eager):
        return f"{len(outputs)} outputs where eager has {len(eager)}"
    for i, (out, ref_e) in enumerate(zip(outputs, eager)):
        ref64 = reference[i] if reference is not None else None
        why = _judge_one(np.asarray(out), np.asarray(ref_e),
                         None if ref64 is None else np.asarray(ref64), dtype)
        if why is not None:
            return f"output {i}: {why}"
    return None


def _judge_one(out: np.ndarray, eager: np.ndarray, ref64, dtype: str) -> str | None:
    if out.shape != eager.shape:
        return f"shape {list(out.shape)} where eager has {list(eager.shape)}"
    if out.dtype != eager.dtype:
        return f"dtype {out.dtype} where eager has {eager.dtype}"
    if out.dtype.kind in "biu":
        if not np.array_equal(out, eager):
            bad = int(np.sum(out != eager))
            return f"{bad} of {out.size} elements differ from eager"
        return None
    if out.dtype.kind == "c":
        return "complex outputs are not compared"
    out64 = out.astype(np.float64)
    eager64 = eager.astype(np.float64)
    ref = eager64 if ref64 is None else np.asarray(ref64, dtype=np.float64)
    if ref.shape != out.shape:
        ref = eager64
    rtol, atol = TOLERANCE.get(dtype, TOLERANCE["float32"])
    # non-finite values must agree with the reference where eager agrees with it too
    special = ~np.isfinite(ref) | ~np.isfinite(eager64)
    if special.any():
        same_as_eager = (np.isnan(out64) & np.isnan(eager64)) | (out64 == eager64)
        if not same_as_eager[special].all():
            return "NaN or infinity where eager has none (or the reverse)"
    finite = ~special
    if not np.isfinite(out64[finite]).all():
        return "NaN or infinity where eager has a finite value"
    if not finite.any():
        return None
    err = np.abs(out64[finite] - ref[finite])
    eager_err = np.abs(eager64[finite] - ref[finite])
    # eager's largest error, not its error at the same element: in float16 eager is exact at
    # some elements by luck (avg_pool2d: a float32 sum rounded once, against a float16 sum)
    allowed = np.maximum(atol + rtol * np.abs(ref[finite]), EAGER_SLACK * eager_err.max())
    if (err <= allowed).all():
        return None
    worst = int(np.argmax(err - allowed))
    return (f"max error {float(err.max()):.3g} (eager {float(eager_err.max()):.3g}) at "
            f"reference value {float(ref[finite][worst]):.6g}")

