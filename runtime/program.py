"""A loaded program: ``quartet.runtime.load(path)`` and calling the result.

Loading opens and checks the artifact, picks the backend its manifest names, allocates every
buffer once, uploads the weights, loads every kernel and, with ``graph=True`` on CUDA, records
the whole host program as one CUDA graph. Calling the program checks the inputs against the
manifest (count, shape, element type), binds them, runs the host program on the caller's
stream, and returns the outputs: torch tensors when any input was a torch tensor (on the GPU for
the cuda backend), numpy arrays otherwise. A program with run-time ``checks`` (index bounds of
embeddings and gathers) reads each flag after the run and raises a QuartetError naming the op
and the user's source line instead of returning outputs.

Binding. On the cuda backend without a graph, the caller's tensors are used in place: a CUDA
torch input on the program's device that is contiguous and 16-byte aligned (kernels use 16-byte
vector accesses) is read where it lies, and each torch output is a fresh ``torch.empty`` tensor
that the program writes directly; the buffers are rebound to those addresses for the call
(:meth:`Interpreter.rebind`). This is sound because a program never writes its ``input``
buffers (a rule of the format, runtime/FORMAT.md) and writes every byte of its outputs on each
run. Every other input is copied into the program's own buffer (non-contiguous or misaligned
tensors, CPU tensors, numpy arrays, the cpu backend, graph mode), and outputs returned as numpy
arrays, or in graph mode, are copied out of the program's own buffers. ``Program.addresses``
always names the program's own allocations.

A captured graph has fixed addresses, so ``graph=True`` copies inputs in and outputs out on
every call. A loaded program is not thread-safe.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from quartet.errors import QuartetError
from quartet.runtime import dtypes
from quartet.runtime.artifact import Artifact, open_artifact, read_weight
from quartet.runtime.interpreter import Interpreter
from quartet.runtime.manifest import Manifest, TensorSpec
from quartet.runtime.validate import host_control_flow
from quartet.runtime.targets import check_runnable


# Tensors bound in place must start at a multiple of this many bytes (kernels use 16-byte vector
# loads and stores); others are copied into the program's own (256-byte aligned) buffer.
IN_PLACE_ALIGNMENT = 16


@dataclass(frozen=True)
class BenchResult:
    """Timings of the host program alone (inputs bound once, no input/output copies)."""

    median_ms: float
    min_ms: float
    mean_ms: float
    repeat: int

    def __str__(self) -> str:
        return f"median {self.median_ms:.4f} ms, min {self.min_ms:.4f} ms over {self.repeat} runs"


def load(
    path: str | os.PathLike,
    *,
    device: int = 0,
    graph: bool = False,
    verify: bool = True,
) -> "Program":
    """Load an artifact (folder or .qrt file) and return the callable :class:`Program`.

    ``device``: CUDA device ordinal. ``graph``: capture the host program once as a CUDA graph
    and replay it on every call (cuda backend only; refused for programs with host-side
    ``while``/``if``, whose launches depend on device data). ``verify``: check the SHA-256 of
    every file (sizes are always checked).
    """
    return Program(Path(path), device=device, graph=graph, verify=verify)


@dataclass
class _Call:
    """The bindings of one call: buffer -> address, and the tensors that must stay alive."""

    use_torch: bool
    record: Any = None  # a torch stream other than the current one, for record_stream
    bindings: dict[str, int] = field(default_factory=dict)
    keep: list = field(default_factory=list)


class Program:
    """A loaded artifact; call it as ``prog(*inputs, stream=None)``.

    On the cuda backend (``graph=False``) aligned contiguous CUDA torch inputs are read in place
    and torch outputs are written in place (see the module docstring); with ``graph=True``
    inputs are copied into the program's buffers and outputs copied out, since the captured
    graph holds fixed addresses. ``stream``: a ``torch.cuda.Stream``, a CUstream or an int
    handle; the caller makes the inputs ready on it. When it is a torch stream other than the
    current one, inputs and outputs are marked with ``record_stream`` so that torch does not
    reuse their memory before the program's work on that stream is done; with a raw handle the
    caller keeps inputs and outputs alive until that work is done.
    """

    def __init__(self, path: Path, *, device: int = 0, graph: bool = False, verify: bool = True):
        self.path = path
        self._where = str(path)
        self.backend = None
        art = open_artifact(path, verify=verify)
        try:
            self._init(art, device, graph)
        except BaseException:
            self.close()
            raise
        finally:
            art.close()

    def _init(self, art: Artifact, device: int, graph: bool) -> None:
        m = art.manifest
        self.manifest: Manifest = m
        if graph and (where := host_control_flow(m)):
            raise QuartetError(
                f"graph=True cannot capture this program: {where} is a host-side while/if whose "
                f"launches depend on device data; load it without graph=True",
                self._where,
            )
        if graph and m.backend != "cuda":
            raise QuartetError(
                f"graph=True needs the cuda backend; this artifact is for {m.backend}", self._where
            )
        self.backend = _make_backend(m, device, self._where)
        if m.backend == "cuda":
            check_runnable(
                m.target,
                m.backend,
                {k.binary_format for k in m.kernels},
                "cuda",
                self.backend.device_arch,
                self._where,
            )
        b = self.backend
        self.addresses = {buf.name: b.alloc(buf.size) for buf in m.buffers}
        cache: dict[str, bytes] = {}
        for w in m.weights:
            b.upload(self.addresses[w.buffer], np.frombuffer(read_weight(art, w, cache), dtype=np.uint8))
        prepared = {}
        for k in m.kernels:
            binary = art.path_of(k.binary) if m.backend == "cpu" else art.read(k.binary)
            prepared[k.name] = b.prepare(k, binary)
        self._interpreter = Interpreter(m, b, self.addresses, prepared)
        b.synchronize()
        self._graph = b.capture(self._interpreter.run) if graph else None
        # the caller's tensors are bound in place only where addresses may change between runs
        self._in_place = m.backend == "cuda" and self._graph is None

    # calling -----------------------------------------------------------------------------------

    def __call__(self, *inputs: Any, stream: Any = None, **named: Any):
        """Run the program; returns one output, or a tuple of outputs when there are several.

        Inputs are given in the manifest's order, or by name (``prog(x, mask=m)``)."""
        if named:
            inputs = self._arrange(inputs, named)
        call = self._bind_inputs(inputs, stream)
        specs = self.manifest.outputs
        bound = [self._bind_output(spec, call) for spec in specs]
        self._interpreter.rebind_all(call.bindings)
        self._run()
        self._read_checks()
        outputs = [
            out if out is not None else self._fetch(spec, call) for out, spec in zip(bound, specs)
        ]
        if not call.use_torch or self.manifest.backend != "cuda":
            self.backend.synchronize()
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    def _read_checks(self) -> None:
        """Raise for the first run-time check (an index out of range) the run has set.

        Reading a flag waits for the run (one synchronisation per call on the GPU, only in
        programs that have checks); :meth:`bench` does not read them.
        """
        for c in self.manifest.checks:
            if self.backend.read_scalar(self.addresses[c.buffer] + c.offset, c.dtype):
                raise QuartetError(c.message, c.location or self._where)

    def bench(self, *inputs: Any, warmup: int = 3, repeat: int = 20, stream: Any = None) -> BenchResult:
        """Time the host program alone: inputs are bound once (in place where a call would bind
        them in place), outputs go to the program's own buffers, each timed run is one program
        run (no allocation, no copies). ``repeat`` >= 1 timed runs after ``warmup`` >= 0."""
        if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
            raise QuartetError(f"bench: repeat must be a positive number of runs, got {repeat!r}",
                               self._where)
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
            raise QuartetError(f"bench: warmup must be 0 or more runs, got {warmup!r}", self._where)
        call = self._bind_inputs(inputs, stream)
        for spec in self.manifest.outputs:
            call.bindings[spec.buffer] = self.addresses[spec.buffer]
        self._interpreter.rebind_all(call.bindings)
        for _ in range(warmup):
            self._run()
        times = []
        if self.manifest.backend == "cuda":
            start, stop, release = self.backend.timer()
            try:
                for _ in range(repeat):
                    start()
                    self._run()
                    times.append(stop())
            finally:
                release()
        else:
            for _ in range(repeat):
                t0 = time.perf_counter()
                self._run()
                times.append((time.perf_counter() - t0) * 1e3)
        return BenchResult(statistics.median(times), min(times), statistics.fmean(times), repeat)

    def _arrange(self, inputs: tuple, named: dict) -> tuple:
        """Positional and named inputs in the manifest's order (names: the manifest's)."""
        names = [s.name for s in self.manifest.inputs]
        return arrange_inputs(inputs, named, names, "the program", self._where)

    # weights -----------------------------------------------------------------------------------

    def load_weights(self, weights: dict) -> None:
        """Replace weights by name (the manifest's weight names, which are the model's
        state-dict keys); names not given keep their values. Each value is a numpy array or
        torch tensor of the weight's shape and element type (a CUDA tensor on the program's
        device is copied on the device)."""
        known = {w.name: w for w in self.manifest.weights}
        unknown = [k for k in weights if k not in known]
        if unknown:
            more = f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
            raise QuartetError(f"no weight named {', '.join(map(repr, unknown[:3]))}{more} in "
                               f"this program", self._where)
        for name, value in weights.items():
            self._set_weight(known[name], value)
        if self.manifest.backend != "cuda":
            self.backend.synchronize()

    def _set_weight(self, w, value: Any) -> None:
        if dtypes.is_torch_tensor(value):
            shape, dtype = tuple(value.shape), dtypes.name_of_torch(value.dtype)
        else:
            value = np.asarray(value)
            shape, dtype = tuple(value.shape), dtypes.name_of_numpy(value.dtype)
        if shape != tuple(w.shape) or dtype != w.dtype:
            raise QuartetError(
                f"weight {w.name!r}: the program holds {w.dtype} {list(w.shape)}, got "
                f"{dtype} {list(shape)} (compile again for new shapes or types)", self._where)
        address = self.addresses[w.buffer]
        if self.manifest.backend == "cuda":
            self.backend.activate()
            self.backend.set_stream(_resolve_stream(None, self.backend, self._where))
        if dtypes.is_torch_tensor(value) and value.device.type == "cuda" \
                and self.manifest.backend == "cuda" and value.device.index == self.backend.device:
            self.backend.copy(address, value.detach().contiguous().data_ptr(), w.size)
            return
        if dtypes.is_torch_tensor(value):
            import torch

            t = value.detach().to("cpu").contiguous()
            raw = t.reshape(-1).view(torch.uint8).numpy() if w.size else np.empty(0, np.uint8)
        else:
            raw = np.ascontiguousarray(value).reshape(-1).view(np.uint8)
        self.backend.upload(address, raw)

    def _run(self) -> None:
        if self._graph is not None:
            self.backend.replay(self._graph)
        else:
            self._interpreter.run()

    def _bind_inputs(self, inputs: tuple, stream: Any) -> _Call:
        """Check the inputs and bind each one (in place, or copied into its own buffer)."""
        specs = self.manifest.inputs
        if len(inputs) != len(specs):
            names = ", ".join(s.name for s in specs)
            raise QuartetError(f"expected {len(specs)} input(s) ({names}), got {len(inputs)}", self._where)
        call = _Call(use_torch=any(dtypes.is_torch_tensor(x) for x in inputs))
        if self.manifest.backend == "cuda":
            self.backend.activate()
            handle = _resolve_stream(stream, self.backend, self._where)
            self.backend.set_stream(handle)
            call.record = _foreign_torch_stream(stream, handle, self.backend.device)
        elif stream is not None:
            raise QuartetError("stream= is for the cuda backend; this artifact runs on the cpu", self._where)
        for i, (x, spec) in enumerate(zip(inputs, specs)):
            self._bind(i, x, spec, call)
        return call

    def _bind(self, i: int, x: Any, spec: TensorSpec, call: _Call) -> None:
        address = self.addresses[spec.buffer]
        call.bindings[spec.buffer] = address
        if dtypes.is_torch_tensor(x):
            shape, dtype = tuple(x.shape), dtypes.name_of_torch(x.dtype)
            self._check_input(i, spec, shape, dtype)
            if x.device.type == "cuda":
                if self.manifest.backend != "cuda":
                    raise QuartetError(
                        f"input {spec.name!r} is a CUDA tensor; this artifact runs on the cpu", self._where
                    )
                if x.device.index != self.backend.device:
                    raise QuartetError(
                        f"input {spec.name!r} is on cuda:{x.device.index}; "
                        f"the program is loaded on cuda:{self.backend.device}",
                        self._where,
                    )
                x = x.detach()
                if call.record is not None:
                    x.record_stream(call.record)  # read on that stream, in place or by the copy
                if (
                    self._in_place
                    and spec.nbytes
                    and x.is_contiguous()
                    and x.data_ptr() % IN_PLACE_ALIGNMENT == 0
                ):
                    call.bindings[spec.buffer] = x.data_ptr()
                    call.keep.append(x)
                    return
                if not x.is_contiguous():
                    x = _contiguous_on(x, call.record)
                call.keep.append(x)
                self.backend.copy(address, x.data_ptr(), spec.nbytes)
                return
            import torch

            raw = (
                x.detach().contiguous().reshape(-1).view(torch.uint8).numpy()
                if spec.nbytes
                else np.empty(0, np.uint8)
            )
        else:
            if not isinstance(x, np.ndarray):
                x = np.asarray(x)
            self._check_input(i, spec, tuple(x.shape), dtypes.name_of_numpy(x.dtype))
            raw = np.ascontiguousarray(x).reshape(-1).view(np.uint8)
        self.backend.upload(address, raw)

    def _check_input(self, i: int, spec: TensorSpec, shape: tuple, dtype: str) -> None:
        if shape != spec.shape or dtype != spec.dtype:
            raise QuartetError(
                f"input {i} ({spec.name!r}): expected shape {list(spec.shape)} {spec.dtype}, "
                f"got shape {list(shape)} {dtype}",
                self._where,
            )

    def _bind_output(self, spec: TensorSpec, call: _Call):
        """The output tensor the program writes in place, or None when it is fetched after the run
        from the program's own buffer (numpy outputs, the cpu backend, graph mode, empty tensors)."""
        address = self.addresses[spec.buffer]
        call.bindings[spec.buffer] = address
        if not (call.use_torch and self._in_place and spec.nbytes):
            return None
        import torch

        device = f"cuda:{self.backend.device}"
        out = torch.empty(spec.shape, dtype=dtypes.torch_dtype(spec.dtype), device=device)
        if out.data_ptr() % IN_PLACE_ALIGNMENT:  # not from torch's caching allocator (256 bytes)
            return None
        if call.record is not None:
            out.record_stream(call.record)
        call.bindings[spec.buffer] = out.data_ptr()
        return out

    def _fetch(self, spec: TensorSpec, call: _Call):
        """Copy output ``spec`` out of the program's own buffer into a new tensor or array."""
        address = self.addresses[spec.buffer]
        if call.use_torch:
            import torch

            device = f"cuda:{self.backend.device}" if self.manifest.backend == "cuda" else "cpu"
            out = torch.empty(spec.shape, dtype=dtypes.torch_dtype(spec.dtype), device=device)
            if self.manifest.backend == "cuda":
                self.backend.copy(out.data_ptr(), address, spec.nbytes)
                if call.record is not None:
                    out.record_stream(call.record)
            elif spec.nbytes:
                self.backend.download(address, out.reshape(-1).view(torch.uint8).numpy())
            return out
        out = np.empty(spec.shape, dtype=dtypes.numpy_dtype(spec.dtype))
        self.backend.download(address, out.reshape(-1).view(np.uint8))
        return out

    # lifetime ----------------------------------------------------------------------------------

    def close(self) -> None:
        """Free the program's device memory, modules and graph (also done when it is collected)."""
        if self.backend is not None:
            self.backend.close()
            self.backend = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        m = self.manifest
        return (
            f"<quartet Program {self.path.name}: {m.target}, {len(m.inputs)} input(s), "
            f"{len(m.outputs)} output(s), {len(m.kernels)} kernel(s)>"
        )


def arrange_inputs(inputs: tuple, named: dict, names: list[str], what: str,
                   where: str | None = None) -> tuple:
    """``inputs`` followed by the ``named`` ones, in the order of ``names``; one-line errors
    for an unknown name, a name also given by position and a missing input."""
    expected = f"{what} takes ({', '.join(names)})"
    unknown = [k for k in named if k not in names]
    if unknown:
        raise QuartetError(f"unexpected input name(s) {', '.join(unknown)}: {expected}", where)
    twice = [k for k in named if names.index(k) < len(inputs)]
    if twice:
        raise QuartetError(f"input(s) {', '.join(twice)} given by position and by name: "
                           f"{expected}", where)
    arranged = list(inputs)
    for name in names[len(inputs):]:
        if name not in named:
            raise QuartetError(f"input {name!r} is missing: {expected}", where)
        arranged.append(named[name])
    return tuple(arranged)


def _make_backend(m: Manifest, device: int, where: str):
    if m.backend == "cpu":
        from quartet.runtime.cpu_backend import CpuBackend

        return CpuBackend(where)
    if m.backend == "cuda":
        from quartet.runtime.cuda_backend import CudaBackend

        return CudaBackend(device, where)
    raise QuartetError(f"the {m.backend} backend is not available in this runtime (target {m.target})", where)


def _resolve_stream(stream: Any, backend, where: str) -> int:
    """The CUstream handle (an int) to run on: the caller's, torch's current one, or the legacy default."""
    if stream is None:
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            return int(torch.cuda.current_stream(backend.device).cuda_stream)
        return 0
    if hasattr(stream, "cuda_stream"):  # torch.cuda.Stream, and cupy streams have .ptr
        return int(stream.cuda_stream)
    if isinstance(stream, int) and not isinstance(stream, bool):
        return stream
    if isinstance(stream, backend.d.CUstream):
        return int(stream)
    if hasattr(stream, "ptr"):
        return int(stream.ptr)
    raise QuartetError(
        f"stream must be a torch.cuda.Stream, a CUstream or an int handle, got {type(stream).__name__}", where
    )


def _foreign_torch_stream(stream: Any, handle: int, device: int):
    """``stream`` when it is a torch stream other than torch's current one on ``device``, else None.

    Tensors used on such a stream get ``record_stream(stream)``: torch's caching allocator then
    waits for the work on it before reusing their memory.
    """
    torch = sys.modules.get("torch")
    if stream is None or torch is None or not isinstance(stream, torch.cuda.Stream):
        return None
    if handle == int(torch.cuda.current_stream(device).cuda_stream):
        return None
    return stream


def _contiguous_on(x: Any, stream: Any):
    """A contiguous copy of the CUDA tensor ``x``, made on ``stream`` when one is given (the copy
    is then ordered before the program's work there and its memory belongs to that stream)."""
    if stream is None:
        return x.contiguous()
    import torch

    with torch.cuda.stream(stream):
        return x.contiguous()
