"""``quartet-run``: run a compiled artifact on random (or given) inputs, check it, time it.

    quartet-run OUT [--check] [--bench] [--seed N] [--graph] [--input FILE.npy ...]
                [--model FILE.py:Class] [--tolerance X] [--device N] [--repeat N] [--warmup N]

Loads the artifact (a folder or a ``.qrt`` file) with :func:`quartet.runtime.load`, draws one
random input per entry of the manifest's ``inputs`` (or reads them from ``.npy`` files), runs the
program once and prints a line per output. CUDA artifacts get CUDA tensors when torch with CUDA
is importable, numpy arrays otherwise.

``--check`` rebuilds the PyTorch model that the artifact came from (``quartet-compile`` stores
the model file, class, dtype, input specs and seed in the manifest's ``producer`` JSON), loads the
ARTIFACT'S weights into it by state-dict name, runs it eagerly on the same inputs and prints

    max relative error: <number>

the largest, over outputs, of ``||out - ref||_2 / ||ref||_2`` computed in float64 (the absolute
``||out - ref||_2`` for an all-zero reference; exact equality for integer and bool outputs, where
the error is 0 or 1). It fails (exit 1) above a tolerance set by the least precise floating type
among the program's inputs, outputs and weights: float64 1e-6, float32 1e-4, float16 2e-2,
bfloat16 5e-2 (``--tolerance`` overrides).

This tool is what runs on the GPU machine, which has torch but no MLIR: it never imports
``mlir`` or ``torch_mlir``; torch is imported only for CUDA inputs, bfloat16 and ``--check``.
The input-spec helpers here (``1x128x768:f16``) are shared with ``quartet-compile``, so both
tools draw the same inputs from the same seed.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from quartet.errors import QuartetError
from quartet.tools.cli import ToolParser, natural_int, positive_int, run_main

# --------------------------------------------------------------------------------------------
# Input specs, shared with quartet-compile
# --------------------------------------------------------------------------------------------

#: short spelling on the command line -> element type of the artifact format
SHORT_DTYPES = {
    "f32": "float32", "f16": "float16", "bf16": "bfloat16", "f64": "float64",
    "i64": "int64", "i32": "int32", "i16": "int16", "i8": "int8", "u8": "uint8",
    "bool": "bool", "i1": "bool",
}
LONG_TO_SHORT = {"float32": "f32", "float16": "f16", "bfloat16": "bf16", "float64": "f64",
                 "int64": "i64", "int32": "i32", "int16": "i16", "int8": "i8", "uint8": "u8",
                 "bool": "bool"}

#: integers are drawn uniformly from [0, INT_HIGH): valid as small indices and counts
INT_HIGH = 8

#: relative-error tolerance of --check by the least precise floating type involved
TOLERANCES = {"float64": 1e-6, "float32": 1e-4, "float16": 2e-2, "bfloat16": 5e-2}
_PRECISION_ORDER = ("bfloat16", "float16", "float32", "float64")


@dataclass(frozen=True)
class InputSpec:
    """One program input: a static shape and an element type (artifact-format spelling)."""

    shape: tuple[int, ...]
    dtype: str

    def __str__(self) -> str:
        dims = "x".join(str(d) for d in self.shape) if self.shape else "scalar"
        return f"{dims}:{LONG_TO_SHORT.get(self.dtype, self.dtype)}"


def parse_input_spec(text: str) -> InputSpec:
    """``1x128x768:f16`` -> InputSpec((1, 128, 768), "float16"); ``scalar:i64`` is rank 0.

    The dtype may be left out (``4x64`` is ``4x64:f32``).
    """
    usage = "expected DIMS:DTYPE, e.g. 1x128x768:f16 or scalar:i64"
    dims, sep, short = text.strip().partition(":")
    short = short.strip() if sep else "f32"
    if short not in SHORT_DTYPES:
        known = ", ".join(k for k in SHORT_DTYPES if k != "i1")
        raise QuartetError(f"bad --input '{text}': unknown dtype '{short}' (known: {known})")
    dims = dims.strip()
    if not dims:
        raise QuartetError(f"bad --input '{text}': no shape ({usage})")
    if dims == "scalar":
        return InputSpec((), SHORT_DTYPES[short])
    shape = []
    for d in dims.split("x"):
        d = d.strip()
        if not d.isdigit() or int(d) < 1:
            raise QuartetError(
                f"bad --input '{text}': dimension '{d}' is not a positive integer ({usage})")
        shape.append(int(d))
    return InputSpec(tuple(shape), SHORT_DTYPES[short])


def random_inputs(specs, seed: int) -> list[np.ndarray]:
    """Numpy inputs for ``specs``, drawn in order from ``numpy.random.default_rng(seed)``.

    Floats: standard normal (drawn in float32, then rounded to the type). Integers: uniform in
    ``[0, INT_HIGH)``. Bool: fair coin. bfloat16 arrays are returned as float32 here;
    :func:`to_torch` / the runtime round them (numpy has no bfloat16 without ml_dtypes).
    """
    rng = np.random.default_rng(seed)
    arrays = []
    for s in specs:
        shape = tuple(s.shape)
        if s.dtype in ("float32", "float16", "float64", "bfloat16"):
            a = rng.standard_normal(shape, dtype=np.float32)
            arrays.append(a if s.dtype in ("float32", "bfloat16") else a.astype(s.dtype))
        elif s.dtype == "bool":
            arrays.append(rng.random(shape) < 0.5)
        else:
            arrays.append(rng.integers(0, INT_HIGH, shape).astype(s.dtype))
    return arrays


def to_torch(arrays, specs, device: str = "cpu") -> list:
    """Torch tensors of the spec types (bfloat16 rounded here) on ``device``."""
    import torch

    from quartet.runtime import dtypes

    out = []
    for a, s in zip(arrays, specs):
        t = torch.from_numpy(np.ascontiguousarray(a).reshape(np.shape(a))).to(dtypes.torch_dtype(s.dtype))
        out.append(t.to(device))
    return out


# --------------------------------------------------------------------------------------------
# The tool
# --------------------------------------------------------------------------------------------


def _arguments() -> argparse.ArgumentParser:
    p = ToolParser("quartet-run", __doc__)
    p.add_argument("artifact", help="artifact folder or .qrt file (from quartet-compile)")
    p.add_argument("--check", action="store_true",
                   help="compare with PyTorch eager on the same inputs and weights")
    p.add_argument("--bench", action="store_true", help="print the program's median time")
    p.add_argument("--seed", type=int, default=None,
                   help="seed of the random inputs (default: the one quartet-compile used, else 0)")
    p.add_argument("--graph", action=argparse.BooleanOptionalAction, default=None,
                   help="replay the launches as one CUDA graph (cuda artifacts; default: when "
                        "the program has two or more launches and no host control flow)")
    p.add_argument("--input", action="append", default=[], metavar="FILE.npy",
                   help="read input i from a .npy file instead of drawing it (once per input)")
    p.add_argument("--model", default=None, metavar="FILE.py:Class",
                   help="--check: the model to rebuild, instead of the one the artifact names")
    p.add_argument("--tolerance", type=float, default=None,
                   help="--check: fail above this max relative error (default by dtype)")
    p.add_argument("--device", type=natural_int, default=0, help="CUDA device ordinal")
    p.add_argument("--warmup", type=natural_int, default=3, help="--bench: untimed runs first")
    p.add_argument("--repeat", type=positive_int, default=20, help="--bench: timed runs")
    return p


def producer_info(manifest) -> dict:
    """The producer JSON of a manifest as a dict ({} when absent or not JSON)."""
    try:
        info = json.loads(manifest.producer or "{}")
    except ValueError:
        return {}
    return info if isinstance(info, dict) else {}


def _torch_cuda():
    """torch when it is importable with a usable CUDA device, else None."""
    try:
        import torch
    except ImportError:
        return None
    return torch if torch.cuda.is_available() else None


def _read_npy(paths: list[str], specs) -> list[np.ndarray]:
    if len(paths) != len(specs):
        raise QuartetError(f"--input given {len(paths)} time(s); the program takes "
                           f"{len(specs)} input(s)")
    arrays = []
    for p in paths:
        try:
            arrays.append(np.load(p, allow_pickle=False))
        except FileNotFoundError:
            raise QuartetError("could not open input file: no such file", p) from None
        except (ValueError, OSError) as e:
            raise QuartetError(f"not a .npy array file ({str(e).splitlines()[0]})", p) from None
    return arrays


def _inputs_for(program, args, seed: int):
    """(inputs to call the program with, the same as numpy/torch for --check)."""
    m = program.manifest
    if args.input:
        arrays = _read_npy(args.input, m.inputs)
    else:
        arrays = random_inputs(m.inputs, seed)
    needs_torch = any(s.dtype == "bfloat16" for s in m.inputs) and not args.input
    torch = _torch_cuda() if m.backend == "cuda" else None
    if torch is not None:
        return to_torch(arrays, m.inputs, f"cuda:{args.device}")
    if needs_torch:
        try:
            return to_torch(arrays, m.inputs)
        except ImportError:
            raise QuartetError("bfloat16 inputs need torch to be drawn; pass them with "
                               "--input FILE.npy or install torch") from None
    return arrays


def _describe(name: str, value) -> str:
    a = _as_float64(value)
    shape = list(getattr(value, "shape", ()))
    dtype = str(getattr(value, "dtype", "")).removeprefix("torch.")
    if a.size == 0:
        return f"{name}: {dtype} {shape}"
    return (f"{name}: {dtype} {shape} mean {a.mean():.6g} std {a.std():.6g} "
            f"max|x| {np.abs(a).max():.6g}")


def _as_float64(value) -> np.ndarray:
    """Any output (numpy array or torch tensor, any device and dtype) as a float64 numpy array."""
    if isinstance(value, np.ndarray):
        return value.astype(np.float64)
    return value.detach().to("cpu", dtype=__import__("torch").float64).numpy()


def relative_error(out, ref) -> float:
    """``||out - ref|| / ||ref||`` in float64 (absolute when ``ref`` is all zeros).

    NaN or infinity where the reference is finite counts as an infinite error; a NaN where the
    reference has one is a match.
    """
    a, b = _as_float64(out), _as_float64(ref)
    both_nan = np.isnan(a) & np.isnan(b)
    same_inf = np.isinf(a) & np.isinf(b) & (np.sign(a) == np.sign(b))
    ok = both_nan | same_inf
    a, b = np.where(ok, 0.0, a), np.where(ok, 0.0, b)
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return math.inf
    diff = float(np.linalg.norm((a - b).ravel()))
    norm = float(np.linalg.norm(b.ravel()))
    return diff / norm if norm > 0 else diff


def tolerance_for(manifest) -> tuple[float, str]:
    """The --check tolerance and the dtype that sets it (0 for integer/bool-only programs)."""
    seen = {t.dtype for t in (*manifest.inputs, *manifest.outputs, *manifest.weights)}
    for dt in _PRECISION_ORDER:
        if dt in seen:
            return TOLERANCES[dt], dt
    return 0.0, "integer"


def eager_outputs(program, inputs, model: str | None = None) -> list:
    """Rebuild the artifact's PyTorch model with the artifact's weights; run it on ``inputs``.

    The model comes from ``model`` (``FILE.py:Class``) or the producer JSON: ``model_file`` and
    ``class`` (quartet-compile), else ``model`` = ``package.module.Class`` (``quartet.compile``),
    built with no arguments under the recorded seed and cast to the recorded ``model_dtype``;
    ``--weights`` of the compile are loaded when that file is still there. Then every artifact
    weight whose name is a key of the model's state dict replaces it (shapes and dtypes must
    agree), so eager runs exactly the artifact's weights. Runs on the inputs' device.
    """
    import torch

    from quartet.tools import quartet_compile as qc

    where = str(program.path)
    info = producer_info(program.manifest)
    seed = int(info.get("seed", 0))
    if model is not None:
        cls = qc.load_model_class(model)
    elif "model_file" in info and "class" in info:
        path = _find_model_file(info, program.path)
        cls = qc.load_model_class(f"{path}:{info['class']}")
    elif isinstance(info.get("model"), str) and "." in info["model"]:
        cls = qc.load_model_class(info["model"])
    else:
        raise QuartetError("--check: the artifact does not say which PyTorch model it came from; "
                           "pass --model FILE.py:Class", where)
    weights = info.get("weights")
    weights = weights if weights and Path(weights).is_file() else None
    module = qc.build_model(cls, seed=seed, weights=weights, dtype=info.get("model_dtype"))
    _check_same_model(module, program, where)
    _load_artifact_weights(module, program, where)

    device = "cpu"
    tensors = []
    for x in inputs:
        if isinstance(x, np.ndarray):
            tensors.append(torch.from_numpy(np.ascontiguousarray(x).reshape(np.shape(x))))
        else:
            tensors.append(x)
            device = x.device
    module = module.to(device)
    try:
        with torch.no_grad():
            result = module(*tensors)
    except Exception as e:
        raise QuartetError(f"--check: {type(module).__name__}.forward fails on the artifact's "
                           f"inputs ({qc._one_line(e)}): is it the model the artifact was "
                           f"compiled from?", where) from None
    if isinstance(result, torch.Tensor):
        return [result]
    if isinstance(result, (tuple, list)) and all(isinstance(r, torch.Tensor) for r in result):
        return list(result)
    raise QuartetError(f"--check: the PyTorch model returns {type(result).__name__}, not "
                       f"tensors", where)


def _check_same_model(module, program, where: str) -> None:
    """The rebuilt model must be the artifact's: every weight of its state dict is in the
    artifact, and forward() takes the artifact's number of inputs."""
    import inspect

    name = type(module).__name__
    have = [w.name for w in program.manifest.weights]
    state = module.state_dict()
    lacking = [k for k in state if k not in have]
    # a dotted name is a submodule's parameter or buffer (lifted constants have no dot)
    foreign = [k for k in have if "." in k and k not in state
               and k not in dict(module.named_buffers())]
    for problem, names in (("its weights {} are not in the artifact", lacking),
                           ("the artifact's weights {} are not in it", foreign)):
        if names:
            more = f" and {len(names) - 3} more" if len(names) > 3 else ""
            raise QuartetError(f"--check: {name} does not match the artifact: " +
                               problem.format(", ".join(names[:3]) + more) +
                               " (pass --model with the class the artifact was compiled from)",
                               where)
    try:
        params = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):
        return
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    needed = [p for p in positional if p.default is inspect.Parameter.empty]
    count = len(program.manifest.inputs)
    if not len(needed) <= count <= len(positional):
        raise QuartetError(f"--check: {name}.forward({', '.join(p.name for p in positional)}) "
                           f"does not match the artifact, which takes {count} input(s)", where)


def _find_model_file(info: dict, artifact: Path) -> str:
    """The model file: its absolute path, else as given on the compile command line relative
    to the current folder (the artifact moved to another machine with the same checkout)."""
    candidates = [info["model_file"]]
    if info.get("model_file_arg"):
        candidates.append(info["model_file_arg"])
    for c in candidates:
        if Path(c).is_file():
            return c
    raise QuartetError(f"--check: model file {info['model_file']} is not here; pass "
                       f"--model FILE.py:{info['class']}", str(artifact))


def _load_artifact_weights(module, program, where: str) -> None:
    import torch

    from quartet.runtime import dtypes
    from quartet.runtime.artifact import open_artifact, read_weight

    state = module.state_dict()
    art = open_artifact(program.path, verify=False)
    try:
        cache: dict = {}
        loaded = {}
        for w in program.manifest.weights:
            if w.name not in state:
                continue  # a lifted constant or non-persistent buffer: the model rebuilds it
            ref = state[w.name]
            wdtype = dtypes.torch_dtype(w.dtype)
            if tuple(ref.shape) != tuple(w.shape) or ref.dtype != wdtype:
                raise QuartetError(
                    f"--check: weight {w.name!r} is {w.dtype} {list(w.shape)} in the artifact "
                    f"but {dtypes.name_of_torch(ref.dtype)} {list(ref.shape)} in the model",
                    where)
            raw = bytearray(read_weight(art, w, cache))
            t = (torch.frombuffer(raw, dtype=torch.uint8).view(wdtype).reshape(w.shape)
                 if raw else torch.empty(w.shape, dtype=wdtype))
            loaded[w.name] = t
    finally:
        art.close()
    module.load_state_dict(loaded, strict=False)


def check(program, inputs, outputs, args) -> float:
    """Run the rebuilt model eagerly; return the max relative error over outputs."""
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        raise QuartetError("--check runs the PyTorch model: it needs torch, which is not "
                           "installed here")
    m = program.manifest
    expected = eager_outputs(program, inputs, model=args.model)
    got = list(outputs) if isinstance(outputs, tuple) else [outputs]
    if len(expected) != len(got):
        raise QuartetError(f"the artifact returns {len(got)} output(s), the PyTorch model "
                           f"{len(expected)}", str(program.path))
    worst = 0.0
    for i, (o, r, spec) in enumerate(zip(got, expected, m.outputs)):
        if tuple(r.shape) != tuple(spec.shape):
            raise QuartetError(f"output {i} ({spec.name!r}): the artifact gives shape "
                               f"{list(spec.shape)}, the PyTorch model {list(r.shape)}",
                               str(program.path))
        if spec.dtype in TOLERANCES:
            err = relative_error(o, r)
        else:  # integers and bool: exact
            err = 0.0 if np.array_equal(_as_float64(o), _as_float64(r)) else 1.0
        worst = max(worst, err)
    return worst


def main(argv: list[str]) -> int:
    args = _arguments().parse_args(argv)
    from quartet.runtime import load

    from quartet.runtime import load_manifest

    _check_host(load_manifest(args.artifact, verify=False), args.artifact)
    program = load(args.artifact, device=args.device, graph=args.graph)
    info = producer_info(program.manifest)
    seed = args.seed if args.seed is not None else int(info.get("seed", 0))
    inputs = _inputs_for(program, args, seed)
    outputs = program(*inputs)
    listed = list(outputs) if isinstance(outputs, tuple) else [outputs]
    for spec, value in zip(program.manifest.outputs, listed):
        print(_describe(spec.name, value))
    status = 0
    if args.check:
        err = check(program, inputs, outputs, args)
        print(f"max relative error: {err:.3e}")
        tol, dtype = tolerance_for(program.manifest)
        if args.tolerance is not None:
            tol, dtype = args.tolerance, "--tolerance"
        if not err <= tol:
            print(str(QuartetError(f"max relative error {err:.3e} is above the tolerance "
                                   f"{tol:g} ({dtype})", str(program.path))), file=sys.stderr)
            status = 1
    if args.bench:
        r = program.bench(*inputs, warmup=args.warmup, repeat=args.repeat)
        print(f"median time: {r.median_ms:.4f} ms (min {r.min_ms:.4f} ms, mean "
              f"{r.mean_ms:.4f} ms over {r.repeat} runs, {program.manifest.target})")
    sys.stdout.flush()
    program.close()
    return status


def _check_host(manifest, where: str) -> None:
    """A cpu artifact holds machine code for the host it was compiled on: refuse another one."""
    import platform

    built = producer_info(manifest).get("machine")
    if manifest.backend == "cpu" and built and built != platform.machine():
        raise QuartetError(f"artifact holds cpu code for {built}; this machine is "
                           f"{platform.machine()}: compile it again here", where)


def entry() -> int:
    return run_main(main)


if __name__ == "__main__":
    sys.exit(entry())
