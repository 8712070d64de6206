"""A loaded program: ``quartet.runtime.load(path)`` and calling the result.

Loading opens and checks the artifact, picks the backend its manifest names, allocates every
buffer once, uploads the weights, loads every kernel, packs every launch's parameters
(``interpreter.py``) and, on CUDA, records a program of two or more launches and no host-side
``while``/``if`` as one CUDA graph (``graph=None``, the default; ``graph=True`` insists,
``graph=False`` never records one). Calling the program checks the inputs against the manifest
(count, shape, element type), binds them, runs the host program on the caller's stream, and
returns the outputs: torch tensors when any input was a torch tensor (on the GPU for the cuda
backend), numpy arrays otherwise. A program with run-time ``checks`` (index bounds of
embeddings and gathers) reads each flag after the run and raises a QuartetError naming the op
and the user's source line instead of returning outputs.

Binding. On the cuda backend the caller's tensors are used in place: a CUDA torch input on the
program's device that is contiguous and 16-byte aligned (kernels use 16-byte vector accesses)
is read where it lies, and each torch output is a fresh ``torch.empty`` tensor that the
program writes directly. The buffer is rebound to that address (:class:`~quartet.runtime.
interpreter.Binding`: the launch-argument slots that hold it are rewritten, only when the
address changes). In graph mode the graph's kernel nodes that read or write such a buffer are
updated instead (``cuGraphExecKernelNodeSetParams``, before the next replay, only for nodes
whose buffers moved), so a graph follows the caller's tensors without copying them; a buffer
that a copy, memset or predicate of the program also touches is not followed that way. This is
sound because a program never writes its ``input`` buffers (a rule of the format,
runtime/FORMAT.md) and writes every byte of its outputs on each run. Every other input is
copied into the program's own buffer (non-contiguous or misaligned tensors, CPU tensors, numpy
arrays, the cpu backend, buffers a graph cannot follow), and outputs returned as numpy arrays,
or not followed by the graph, are copied out of the program's own buffers.
``Program.addresses`` always names the program's own allocations.

The call path does at load what can be done at load (issue 14): shapes, torch dtypes, sizes and
the binding of every input and output are looked up once, and a call is a few attribute reads
per tensor, the ``torch.empty`` of each output and the driver calls (one per launch, or one
graph launch). ``bench/profile_call.py`` measures where its microseconds go. A loaded program
is not thread-safe.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from quartet.errors import QuartetError
from quartet.runtime import dtypes
from quartet.runtime.artifact import Artifact, open_artifact, read_weight
from quartet.runtime.interpreter import Binding, Interpreter
from quartet.runtime.manifest import Manifest, TensorSpec
from quartet.runtime.validate import host_control_flow
from quartet.runtime.targets import check_runnable


# Tensors bound in place must start at a multiple of this many bytes (kernels use 16-byte vector
# loads and stores); others are copied into the program's own (256-byte aligned) buffer.
IN_PLACE_ALIGNMENT = 16

# With graph=None a CUDA program of at least this many launches replays a graph: one graph
# launch (plus a node update where a caller's tensor moved) instead of one launch per kernel.
GRAPH_MIN_LAUNCHES = 2


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
    graph: bool | None = None,
    verify: bool = True,
) -> "Program":
    """Load an artifact (folder or .qrt file) and return the callable :class:`Program`.

    ``device``: CUDA device ordinal. ``graph``: ``None`` (default) replays a CUDA graph for
    programs of :data:`GRAPH_MIN_LAUNCHES` or more launches without host-side ``while``/``if``;
    ``True`` captures one whatever the count (cuda backend only; refused for programs with
    host-side ``while``/``if``, whose launches depend on device data); ``False`` issues every
    launch on every call. ``verify``: check the SHA-256 of every file (sizes are always checked).
    """
    return Program(Path(path), device=device, graph=graph, verify=verify)


class _Port:
    """One input or output of the program, with everything a call needs found at load."""

    __slots__ = ("index", "spec", "binding", "own", "nbytes", "shape", "in_place", "torch_dtype")

    def __init__(self, index: int, spec: TensorSpec, binding: Binding, own: int, in_place: bool):
        self.index, self.spec, self.binding, self.own = index, spec, binding, own
        self.nbytes, self.shape = spec.nbytes, tuple(spec.shape)
        self.in_place = in_place and spec.nbytes > 0
        self.torch_dtype = None       # set once torch is seen (torch is never imported here)


class Program:
    """A loaded artifact; call it as ``prog(*inputs, stream=None)``.

    On the cuda backend aligned contiguous CUDA torch inputs are read in place and torch outputs
    are written in place, in graph mode too (see the module docstring). ``stream``: a
    ``torch.cuda.Stream``, a CUstream or an int handle; the caller makes the inputs ready on it.
    When it is a torch stream other than the current one, inputs and outputs are marked with
    ``record_stream`` so that torch does not reuse their memory before the program's work on
    that stream is done; with a raw handle the caller keeps inputs and outputs alive until that
    work is done. ``call_mode`` says how calls run: ``launches``, ``graph`` (nodes follow the
    caller's tensors) or ``graph, copies`` (the graph's nodes could not be matched with the
    launches: inputs and outputs are copied).
    """

    def __init__(self, path: Path, *, device: int = 0, graph: bool | None = None,
                 verify: bool = True):
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

    def _init(self, art: Artifact, device: int, graph: bool | None) -> None:
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
        self._cuda = m.backend == "cuda"
        if self._cuda:
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
        for buf in m.buffers:
            if buf.zeroed and buf.size:
                b.memset(self.addresses[buf.name], 0, 1, buf.size)
        cache: dict[str, bytes] = {}
        for w in m.weights:
            b.upload(self.addresses[w.buffer], np.frombuffer(read_weight(art, w, cache), dtype=np.uint8))
        prepared = {}
        for k in m.kernels:
            binary = art.path_of(k.binary) if m.backend == "cpu" else art.read(k.binary)
            prepared[k.name] = b.prepare(k, binary)
        self._interpreter = Interpreter(m, b, self.addresses, prepared)
        b.synchronize()
        self._graph, self._nodes, self._dirty = None, [], set()
        followed = set(self.addresses)          # buffers whose address may change per call
        self.call_mode = "launches"
        if self._wants_graph(graph):
            self._graph = b.capture(self._interpreter.run)
            followed = self._follow_with_graph()
            self.call_mode = "graph" if self._nodes else "graph, copies"
        self._inputs = [self._port(i, s, followed) for i, s in enumerate(m.inputs)]
        self._outputs = [self._port(i, s, followed) for i, s in enumerate(m.outputs)]
        self._checks = [(self.addresses[c.buffer] + c.offset, c) for c in m.checks]
        self._torch_device = None
        self._raw_stream = None
        self._device = getattr(self.backend, "device", None)

    def _wants_graph(self, graph: bool | None) -> bool:
        if graph is not None:
            return graph
        if not self._cuda or host_control_flow(self.manifest):
            return False
        return len(self._interpreter.launch_sequence()) >= GRAPH_MIN_LAUNCHES

    def _follow_with_graph(self) -> set[str]:
        """Match the graph's kernel nodes with the program's launches and make the inputs and
        outputs that only kernels touch update those nodes when they move; the set of such
        buffers (empty when the nodes cannot be matched: then everything is copied)."""
        b, interp = self.backend, self._interpreter
        sequence = interp.launch_sequence()
        finder = getattr(b, "kernel_nodes", None)
        nodes = finder(self._graph) if finder is not None else None
        if nodes is None or len(nodes) != len(sequence) or any(
                handle != b.function_handle(plan.prepared)
                for (_, handle), (plan, _) in zip(nodes, sequence)):
            return set()
        m = self.manifest
        followed = {s.buffer for s in m.inputs + m.outputs} & interp.kernel_only_buffers()
        followed -= {name for plan, _ in sequence if plan.kernel.cooperative
                     for _, name, _, _ in plan.buffer_slots}
        users: dict[str, set[int]] = {name: set() for name in followed}
        for k, (plan, _) in enumerate(sequence):
            for _, name, _, _ in plan.buffer_slots:
                if name in users:
                    users[name].add(k)
        self._nodes = [(node, plan, env) for (node, _), (plan, env) in zip(nodes, sequence)]
        dirty = self._dirty
        for name, ks in users.items():
            interp.binding(name).listener = lambda _binding, ks=frozenset(ks): dirty.update(ks)
        return followed

    def _port(self, index: int, spec: TensorSpec, followed: set[str]) -> _Port:
        return _Port(index, spec, self._interpreter.binding(spec.buffer),
                     self.addresses[spec.buffer], self._cuda and spec.buffer in followed)

    # calling -----------------------------------------------------------------------------------

    def __call__(self, *inputs: Any, stream: Any = None, **named: Any):
        """Run the program; returns one output, or a tuple of outputs when there are several.

        Inputs are given in the manifest's order, or by name (``prog(x, mask=m)``)."""
        if named:
            inputs = self._arrange(inputs, named)
        use_torch, record, keep = self._bind_inputs(inputs, stream)
        torch = sys.modules.get("torch") if use_torch else None
        outputs = []
        for port in self._outputs:
            outputs.append(self._bind_output(port, torch, record))
        self._run()
        if self._checks:
            self._read_checks()
        for i, out in enumerate(outputs):
            if out is None:
                outputs[i] = self._fetch(self._outputs[i], use_torch, record)
        if not use_torch or not self._cuda:
            self.backend.synchronize()
        del keep      # the temporaries copied from stay alive until the copies are issued
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    def _read_checks(self) -> None:
        """Raise for the first run-time check (an index out of range) the run has set.

        Reading a flag waits for the run (one synchronisation per call on the GPU, only in
        programs that have checks); :meth:`bench` does not read them.
        """
        for address, c in self._checks:
            if self.backend.read_scalar(address, c.dtype):
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
        _, _, keep = self._bind_inputs(inputs, stream)
        for port in self._outputs:
            port.binding.bind(port.own)
        for _ in range(warmup):
            self._run()
        times = []
        if self._cuda:
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
        del keep
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
            self.backend.set_stream(self._current_stream())
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
        if self._graph is None:
            self._interpreter.run()
            return
        if self._dirty:
            self._update_nodes()
        self.backend.replay(self._graph)

    def _update_nodes(self) -> None:
        """Give the graph's kernel nodes whose buffers moved their new arguments."""
        b, graph = self.backend, self._graph
        for k in sorted(self._dirty):
            node, plan, env = self._nodes[k]
            if plan.index_slots:
                plan.set_indices(env)
            b.update_kernel_node(graph, node, plan.packed or plan.prepared)
        self._dirty.clear()

    def _bind_inputs(self, inputs: tuple, stream: Any) -> tuple[bool, Any, list]:
        """Check the inputs and bind each one (in place, or copied into its own buffer); returns
        (any torch input, the foreign torch stream to record tensors on, temporaries to keep)."""
        ports = self._inputs
        if len(inputs) != len(ports):
            names = ", ".join(p.spec.name for p in ports)
            raise QuartetError(f"expected {len(ports)} input(s) ({names}), got {len(inputs)}", self._where)
        record = None
        if self._cuda:
            b = self.backend
            b.activate()
            if stream is None:
                b.stream = self._current_stream()
            else:
                handle = _resolve_stream(stream, b, self._where)
                b.stream = handle
                record = _foreign_torch_stream(stream, handle, b.device)
        elif stream is not None:
            raise QuartetError("stream= is for the cuda backend; this artifact runs on the cpu", self._where)
        torch = sys.modules.get("torch")
        tensor = torch.Tensor if torch is not None else ()
        use_torch, keep, device = False, [], self._device
        for port, x in zip(ports, inputs):
            if not isinstance(x, tensor):
                self._bind_host(port, x)
                continue
            if not use_torch:
                use_torch = True
                if self._torch_device is None:
                    self._learn_torch(torch)
            # the common case inline: a CUDA tensor of the right type, shape and device,
            # contiguous and aligned, on torch's current stream: bound where it lies
            if (record is None and x.dtype == port.torch_dtype and port.in_place
                    and x.is_cuda and x.get_device() == device and x.shape == port.shape
                    and x.is_contiguous()):
                ptr = x.data_ptr()
                if ptr % IN_PLACE_ALIGNMENT == 0:
                    port.binding.bind(ptr)
                    continue
            self._bind_torch(port, x, record, keep)
        return use_torch, record, keep

    def _bind_torch(self, port: _Port, x: Any, record: Any, keep: list) -> None:
        if x.dtype != port.torch_dtype or x.shape != port.shape:
            self._check_input(port.index, port.spec, tuple(x.shape), dtypes.name_of_torch(x.dtype))
        if x.is_cuda:
            if not self._cuda:
                raise QuartetError(
                    f"input {port.spec.name!r} is a CUDA tensor; this artifact runs on the cpu", self._where
                )
            if x.get_device() != self.backend.device:
                raise QuartetError(
                    f"input {port.spec.name!r} is on cuda:{x.get_device()}; "
                    f"the program is loaded on cuda:{self.backend.device}",
                    self._where,
                )
            if record is not None:
                x = x.detach()
                x.record_stream(record)  # read on that stream, in place or by the copy
            if port.in_place and x.is_contiguous():
                ptr = x.data_ptr()
                if ptr % IN_PLACE_ALIGNMENT == 0:
                    port.binding.bind(ptr)
                    return
            port.binding.bind(port.own)
            if not x.is_contiguous():
                x = _contiguous_on(x, record)
            keep.append(x)
            self.backend.copy(port.own, x.data_ptr(), port.nbytes)
            return
        port.binding.bind(port.own)
        if port.nbytes:
            import torch

            raw = x.detach().contiguous().reshape(-1).view(torch.uint8).numpy()
            self.backend.upload(port.own, raw)

    def _bind_host(self, port: _Port, x: Any) -> None:
        if not isinstance(x, np.ndarray):
            x = np.asarray(x)
        self._check_input(port.index, port.spec, tuple(x.shape), dtypes.name_of_numpy(x.dtype))
        port.binding.bind(port.own)
        self.backend.upload(port.own, np.ascontiguousarray(x).reshape(-1).view(np.uint8))

    def _learn_torch(self, torch) -> None:
        """The torch dtype of every input and output, and the torch device (once torch is seen)."""
        for port in self._inputs + self._outputs:
            try:
                port.torch_dtype = dtypes.torch_dtype(port.spec.dtype)
            except (KeyError, AttributeError):      # no torch type: checked by name, copied
                port.torch_dtype = None
        device = f"cuda:{self.backend.device}" if self._cuda else "cpu"
        self._torch_device = torch.device(device)

    def _current_stream(self) -> int:
        """torch's current stream on the program's device (its raw handle), else the legacy
        default stream."""
        raw = self._raw_stream
        if raw is None:
            torch = sys.modules.get("torch")
            if torch is None or not torch.cuda.is_available():
                return 0
            raw = getattr(torch._C, "_cuda_getCurrentRawStream", None)
            if raw is None:
                device = self.backend.device
                raw = lambda _d: int(torch.cuda.current_stream(device).cuda_stream)  # noqa: E731
            self._raw_stream = raw
        return raw(self.backend.device)

    def _check_input(self, i: int, spec: TensorSpec, shape: tuple, dtype: str) -> None:
        if shape != spec.shape or dtype != spec.dtype:
            raise QuartetError(
                f"input {i} ({spec.name!r}): expected shape {list(spec.shape)} {spec.dtype}, "
                f"got shape {list(shape)} {dtype}",
                self._where,
            )

    def _bind_output(self, port: _Port, torch, record: Any):
        """The output tensor the program writes in place, or None when it is fetched after the run
        from the program's own buffer (numpy outputs, the cpu backend, buffers a graph cannot
        follow, empty tensors)."""
        if torch is not None and port.in_place and port.torch_dtype is not None:
            out = torch.empty(port.shape, dtype=port.torch_dtype, device=self._torch_device)
            ptr = out.data_ptr()
            if ptr % IN_PLACE_ALIGNMENT == 0:   # else not from torch's caching allocator
                if record is not None:
                    out.record_stream(record)
                port.binding.bind(ptr)
                return out
        port.binding.bind(port.own)
        return None

    def _fetch(self, port: _Port, use_torch: bool, record: Any):
        """Copy output ``port`` out of the program's own buffer into a new tensor or array."""
        spec, address = port.spec, port.own
        if use_torch:
            import torch

            device = f"cuda:{self.backend.device}" if self._cuda else "cpu"
            out = torch.empty(spec.shape, dtype=dtypes.torch_dtype(spec.dtype), device=device)
            if self._cuda:
                self.backend.copy(out.data_ptr(), address, spec.nbytes)
                if record is not None:
                    out.record_stream(record)
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
