"""PyTorch's OpInfo database as a differential test of Quartet (issue 18).

Every OpInfo of ``torch.testing._internal.common_methods_invocations.op_db`` is one case per
dtype: its first *usable* sample inputs (eager runs on them; every input tensor and every output
is a dense, non-empty tensor of at most :data:`MAX_ELEMENTS` elements; outputs are a tensor or a
tuple of tensors) become a module ``forward(*tensors)`` calling the op with the sample's other
arguments baked in, compiled by ``quartet.compile``'s stages and run. One outcome per sample:

* ``right``   - the outputs match (``compare.judge``: float64 reference, eager's own error);
* ``wrong``   - they do not (or their shapes / dtypes differ): a silent wrong answer;
* ``refused`` - a :class:`QuartetError` (at compile or at call time), with its message;
* ``crash``   - any other exception, a dead worker (a signal), or a time-out;
* ``nosample``- no usable sample for this dtype (not counted).

Cases run in a worker process (``python harness.py worker``) that imports torch, torch-mlir and
op_db once and answers one JSON line per case; :class:`Pool` restarts a worker that dies and
records the case it was running as a crash, so a crash in torch-mlir cannot kill the test run.

For GPU targets the worker only compiles (``build``): the artifact, the sample's inputs and the
eager and float64 outputs go into a folder that ``run_gpu.py`` runs on the GPU machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
MAX_ELEMENTS = 1 << 16
DTYPES = ("float32", "float16", "bfloat16")


@dataclass
class Outcome:
    op: str                 # "name" or "name.variant"
    dtype: str
    target: str
    outcome: str            # right | wrong | refused | crash | nosample
    reason: str = ""
    sample: int = -1        # index of the sample in op.sample_inputs
    seconds: float = 0.0
    built: str = ""         # GPU build: the artifact folder (relative to the build root)
    extra: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def case_name(op) -> str:
    return op.name + (f".{op.variant_test_name}" if op.variant_test_name else "")


# ------------------------------------------------------------------------------------------
# In the worker: samples, modules, compile, compare
# ------------------------------------------------------------------------------------------


def _torch_dtype(name: str):
    import torch

    return getattr(torch, name)


def _leaves(sample):
    import torch.utils._pytree as pytree

    return pytree.tree_flatten((sample.input, sample.args, sample.kwargs))


def usable(op, sample) -> str | None:
    """None if ``sample`` is a usable sample of ``op``, else why not."""
    import torch

    leaves, _ = _leaves(sample)
    tensors = [x for x in leaves if isinstance(x, torch.Tensor)]
    if not tensors:
        return "no tensor input"
    for t in tensors:
        if t.layout != torch.strided or t.is_complex() or t.is_quantized:
            return "a non-dense or complex input"
        if t.numel() == 0:
            return "an empty input"
        if t.numel() > MAX_ELEMENTS:
            return "a large input"
    return None


def _as_outputs(out):
    import torch

    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)) and out and all(isinstance(o, torch.Tensor) for o in out):
        return list(out)
    return None


class OpModule:
    """Built lazily (torch.nn.Module subclass) so that this file imports without torch."""


def make_module(op, sample):
    """(module, example tensors): ``module(*tensors)`` calls ``op`` on ``sample``."""
    import torch
    import torch.utils._pytree as pytree

    leaves, spec = _leaves(sample)
    slots = [i for i, x in enumerate(leaves) if isinstance(x, torch.Tensor)]
    fixed = [None if isinstance(x, torch.Tensor) else x for x in leaves]
    fn = op.op

    class Module(torch.nn.Module):
        def forward(self, *tensors):
            filled = list(fixed)
            for i, t in zip(slots, tensors):
                filled[i] = t
            x, args, kwargs = pytree.tree_unflatten(filled, spec)
            out = fn(x, *args, **kwargs)
            return tuple(out) if isinstance(out, (tuple, list)) else out

    Module.__name__ = Module.__qualname__ = f"OpInfo_{case_name(op).replace('.', '_')}"
    return Module(), [leaves[i] for i in slots]


def _clone(tensors):
    return [t.detach().clone() for t in tensors]


def _eager(module, tensors, seed=0):
    import torch

    torch.manual_seed(seed)
    with torch.no_grad():
        return _as_outputs(module(*_clone(tensors)))


def _to64(tensors):
    import torch

    return [t.double() if t.is_floating_point() else t for t in tensors]


def _np(t):
    import torch

    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        t = t.float()
    return t.contiguous().numpy()


def pick_samples(op, dtype: str, count: int):
    """The first ``count`` usable samples: [(index, sample, module, tensors, eager)]."""
    import torch

    tdtype = _torch_dtype(dtype)
    if not op.supports_dtype(tdtype, "cpu"):
        return []
    found = []
    try:
        samples = op.sample_inputs("cpu", tdtype, requires_grad=False)
        for i, sample in enumerate(samples):
            if usable(op, sample) is not None:
                continue
            module, tensors = make_module(op, sample)
            try:
                eager = _eager(module, tensors)
            except Exception:
                continue
            if eager is None or any(o.numel() == 0 or o.layout != torch.strided
                                    or o.is_complex() for o in eager):
                continue
            found.append((i, sample, module, tensors, eager))
            if len(found) == count:
                break
    except Exception:
        pass
    return found


def _reference(op, module, tensors, eager):
    """float64 outputs, or None where the op has no float64 kernel or gives other shapes."""
    import torch

    if not op.supports_dtype(torch.float64, "cpu") or \
            not any(t.is_floating_point() for t in tensors):
        return None
    try:
        ref = _eager(module, _to64(tensors))
    except Exception:
        return None
    if ref is None or len(ref) != len(eager) or \
            any(r.shape != e.shape for r, e in zip(ref, eager)):
        return None
    return ref


def _is_random(module, tensors, eager) -> bool:
    """Eager under another seed gives other values: a random op (compared in shape only)."""
    import torch

    try:
        again = _eager(module, tensors, seed=1)
    except Exception:
        return False
    def same(a, b):
        if a.shape != b.shape or a.dtype != b.dtype:
            return False
        if a.is_floating_point():
            return torch.allclose(a, b, rtol=0, atol=0, equal_nan=True)
        return torch.equal(a, b)

    return again is None or len(again) != len(eager) or \
        not all(same(a, b) for a, b in zip(again, eager))


def _quartet_error():
    from quartet.errors import QuartetError

    return QuartetError


def run_cpu_case(op, dtype: str, samples: int = 1) -> list[Outcome]:
    """Compile and run ``op``'s first usable samples on the CPU target."""
    name = case_name(op)
    picked = pick_samples(op, dtype, samples)
    if not picked:
        return [Outcome(name, dtype, "cpu", "nosample")]
    results = []
    for index, sample, module, tensors, eager in picked:
        t0 = time.perf_counter()
        out = _compile_and_run_cpu(op, module, tensors, eager, dtype)
        out.op, out.dtype, out.sample = name, dtype, index
        out.seconds = round(time.perf_counter() - t0, 3)
        results.append(out)
    return results


def _compile_and_run_cpu(op, module, tensors, eager, dtype) -> Outcome:
    import quartet
    from compare import judge

    QuartetError = _quartet_error()
    try:
        compiled = quartet.compile(module, tuple(_clone(tensors)), target="cpu")
        got = _as_outputs(compiled(*_clone(tensors)))
    except QuartetError as e:
        return Outcome("", dtype, "cpu", "refused", e.message)
    except Exception as e:  # noqa: BLE001 - anything else is a crash of Quartet
        return Outcome("", dtype, "cpu", "crash", _crash_text(e))
    if got is None:
        return Outcome("", dtype, "cpu", "wrong", "the program returned no tensors")
    if _is_random(module, tensors, eager):
        bad = [i for i, (g, e) in enumerate(zip(got, eager))
               if g.shape != e.shape or g.dtype != e.dtype]
        if len(got) != len(eager) or bad:
            return Outcome("", dtype, "cpu", "wrong", "random op: shapes or dtypes differ")
        return Outcome("", dtype, "cpu", "right", "random op: shapes and dtypes checked")
    ref = _reference(op, module, tensors, eager)
    why = judge([_np(g) for g in got], [_np(e) for e in eager],
                None if ref is None else [_np(r) for r in ref], dtype)
    if why is None:
        return Outcome("", dtype, "cpu", "right")
    return Outcome("", dtype, "cpu", "wrong", why)


def _crash_text(e: BaseException) -> str:
    frames = traceback.extract_tb(e.__traceback__)
    where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {first[:200]}{where}"


def build_gpu_case(op, dtype: str, target: str, folder: Path, samples: int = 1) -> list:
    """Compile ``op``'s first usable samples for ``target`` into ``folder/<case>/<i>/``:
    ``program`` (the artifact), ``case.npz`` (inputs, eager outputs, float64 outputs)."""
    import numpy as np
    from quartet.frontend.compile import compile_to_artifact

    QuartetError = _quartet_error()
    name = case_name(op)
    picked = pick_samples(op, dtype, samples)
    if not picked:
        return [Outcome(name, dtype, target, "nosample")]
    results = []
    for index, sample, module, tensors, eager in picked:
        t0 = time.perf_counter()
        rel = f"{name}/{dtype}/{index}"
        out = Outcome(name, dtype, target, "built", sample=index)
        try:
            writer, _, _ = compile_to_artifact(module, tuple(_clone(tensors)), target=target)
            dest = folder / rel
            dest.mkdir(parents=True, exist_ok=True)
            writer.save(dest / "program")
            ref = _reference(op, module, tensors, eager)
            arrays = {f"in{i}": _np(t) for i, t in enumerate(tensors)}
            arrays.update({f"eager{i}": _np(e) for i, e in enumerate(eager)})
            if ref is not None:
                arrays.update({f"ref{i}": _np(r) for i, r in enumerate(ref)})
            np.savez(dest / "case.npz", **arrays)
            meta = {"op": name, "dtype": dtype, "sample": index,
                    "inputs": [str(t.dtype).replace("torch.", "") for t in tensors],
                    "outputs": len(eager), "random": _is_random(module, tensors, eager)}
            (dest / "case.json").write_text(json.dumps(meta, indent=1))
            out.built = rel
        except QuartetError as e:
            out.outcome, out.reason = "refused", e.message
        except Exception as e:  # noqa: BLE001
            out.outcome, out.reason = "crash", _crash_text(e)
        out.seconds = round(time.perf_counter() - t0, 3)
        results.append(out)
    return results


# ------------------------------------------------------------------------------------------
# The worker process and the pool that keeps one alive
# ------------------------------------------------------------------------------------------


def _op_table():
    from torch.testing._internal.common_methods_invocations import op_db

    return {case_name(op): op for op in op_db}


def all_cases() -> list[str]:
    """Every case name of op_db (in a fresh process: importing op_db costs ~10 s)."""
    out = subprocess.run([sys.executable, str(HERE / "harness.py"), "list"],
                         capture_output=True, text=True, check=True, cwd=ROOT)
    return out.stdout.split()


def worker() -> None:
    """Read JSON requests from stdin, answer one JSON line (a list of outcomes) each."""
    import warnings

    warnings.simplefilter("ignore")
    import mlir.ir  # noqa: F401  (before torch_mlir: see test/python/conftest.py)
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(HERE))
    table = _op_table()
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        if req["op"] == "__signal__":        # the tests' stand-in for a crash in torch-mlir
            import signal

            os.kill(os.getpid(), signal.SIGSEGV)
        op = table.get(req["op"])
        if op is None:
            print(json.dumps([asdict(Outcome(req["op"], req["dtype"], req["target"],
                                             "nosample", "no such OpInfo"))]), flush=True)
            continue
        try:
            if req["target"] == "cpu":
                res = run_cpu_case(op, req["dtype"], req.get("samples", 1))
            else:
                res = build_gpu_case(op, req["dtype"], req["target"], Path(req["folder"]),
                                     req.get("samples", 1))
        except Exception as e:  # noqa: BLE001 - a bug of the harness itself: report it
            res = [Outcome(req["op"], req["dtype"], req["target"], "crash",
                           "harness: " + _crash_text(e))]
        print(json.dumps([asdict(r) for r in res]), flush=True)


class Pool:
    """One worker process, restarted after a crash; ``run`` gives a case's outcomes."""

    def __init__(self, timeout: float = 180.0, env: dict | None = None):
        self.timeout = timeout
        self.env = dict(os.environ, **(env or {}))
        self.proc = None

    def _start(self):
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "harness.py"), "worker"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT,
            env=self.env)
        ready = self.proc.stdout.readline()
        if not ready:
            raise RuntimeError("the OpInfo worker did not start")

    def run(self, op: str, dtype: str, target: str = "cpu", **kw) -> list[Outcome]:
        import select

        if self.proc is None or self.proc.poll() is not None:
            self._start()
        req = dict(op=op, dtype=dtype, target=target, **kw)
        try:
            self.proc.stdin.write(json.dumps(req) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:        # it died after its last answer: start another
            self._start()
            self.proc.stdin.write(json.dumps(req) + "\n")
            self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], self.timeout)
        line = self.proc.stdout.readline() if ready else ""
        if line:
            return [Outcome(**r) for r in json.loads(line)]
        if ready:          # end of file: the worker died
            code = self.proc.wait()
            why = f"the process died (signal {-code})" if code < 0 else f"exit status {code}"
        else:
            self.proc.kill()
            self.proc.wait()
            why = f"no answer in {self.timeout:.0f} s"
        self.proc = None
        return [Outcome(op, dtype, target, "crash", why)]

    def close(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc = None


if __name__ == "__main__":
    if sys.argv[1:] == ["worker"]:
        worker()
    elif sys.argv[1:] == ["list"]:
        import warnings

        warnings.simplefilter("ignore")
        print("\n".join(_op_table()))
    else:
        sys.exit("usage: harness.py worker | list")
