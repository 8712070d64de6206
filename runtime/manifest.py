"""The artifact manifest as dataclasses: JSON in, JSON out, and its consistency checks.

``manifest.json`` describes everything the runtime needs to run a compiled program: the tensors
it takes and returns, the device buffers it allocates once, the weights uploaded into some of
them, the kernels (binary, entry symbol, launch shape, arguments) and the host program, a tree of
steps (launch, copy, memset, loop, while, if) that the interpreter walks on every call. The host
program is the "host plan" of DESIGN.md; Grinder's point is that the better a program is
compiled, the fewer host-side ``while``/``if`` steps it keeps.

``runtime/FORMAT.md`` documents every field. Reading JSON is in :mod:`quartet.runtime.parse`,
the consistency checks in :mod:`quartet.runtime.validate`, files, checksums and architectures in
:mod:`quartet.runtime.artifact`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Union

from quartet.runtime import dtypes

FORMAT_NAME = "quartet-artifact"
FORMAT_VERSION = 1
#: version 2 = version 1 + ``checks`` (a runtime that ignored them would skip a user error)
CHECKS_VERSION = 2
SUPPORTED_VERSIONS = (1, 2)

BUFFER_KINDS = ("input", "output", "weight", "temp", "scalar")


# --------------------------------------------------------------------------------------------
# Tables: files, tensors, buffers, weights
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileEntry:
    """A file of the artifact other than manifest.json, with its size and SHA-256."""

    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class TensorSpec:
    """An input or output of the program: a tensor held in the buffer of the same role."""

    name: str
    buffer: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * dtypes.ITEMSIZE[self.dtype]


@dataclass(frozen=True)
class Buffer:
    """A device allocation of ``size`` bytes, made once when the program is loaded."""

    name: str
    kind: str  # one of BUFFER_KINDS
    size: int


@dataclass(frozen=True)
class Weight:
    """A weight: ``size`` bytes at ``offset`` of ``file``, uploaded into ``buffer`` at load."""

    name: str
    buffer: str
    file: str
    offset: int
    size: int
    sha256: str
    shape: tuple[int, ...]
    dtype: str


# --------------------------------------------------------------------------------------------
# Kernels and their arguments
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BufferArg:
    """A kernel argument that is a bare device pointer: ``buffer``'s base address + ``offset``."""

    buffer: str
    offset: int = 0


@dataclass(frozen=True)
class ScalarArg:
    """An immediate scalar kernel argument of element type ``dtype``."""

    dtype: str
    value: int | float


@dataclass(frozen=True)
class IndexArg:
    """The current iteration number of the enclosing ``loop`` step whose ``index`` is ``loop``."""

    loop: str
    dtype: str = "int64"


KernelArg = Union[BufferArg, ScalarArg, IndexArg]


@dataclass(frozen=True)
class Kernel:
    """A kernel: ``entry`` in binary file ``binary``, its launch shape and its arguments."""

    name: str
    binary: str
    binary_format: str
    entry: str
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    shared_memory: int = 0
    args: tuple[KernelArg, ...] = ()
    cooperative: bool = False


# --------------------------------------------------------------------------------------------
# The host program
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Predicate:
    """A device value read by the host: one element of ``dtype`` at ``offset`` of ``buffer``."""

    buffer: str
    dtype: str = "int32"
    offset: int = 0


@dataclass(frozen=True)
class Launch:
    """Launch kernel ``kernel`` on the caller's stream."""

    kernel: str


@dataclass(frozen=True)
class Copy:
    """Device-to-device copy of ``size`` bytes from ``src``+``src_offset`` to ``dst``+``dst_offset``."""

    dst: str
    src: str
    size: int
    dst_offset: int = 0
    src_offset: int = 0


@dataclass(frozen=True)
class Memset:
    """Fill ``size`` bytes of ``buffer`` from ``offset`` with ``value`` repeated every ``width`` bytes.

    ``size`` None means to the end of the buffer.
    """

    buffer: str
    value: int = 0
    size: int | None = None
    offset: int = 0
    width: int = 1


@dataclass(frozen=True)
class Loop:
    """Run ``body`` ``count`` times; ``index`` names the iteration number for IndexArg."""

    count: int
    body: tuple["Step", ...]
    index: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "body", tuple(self.body))


@dataclass(frozen=True)
class While:
    """Run ``cond``, read ``predicate``; while it is nonzero run ``body`` and start again.

    ``max_iterations`` (optional) turns a runaway loop into an error.
    """

    cond: tuple["Step", ...]
    predicate: Predicate
    body: tuple["Step", ...]
    max_iterations: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "cond", tuple(self.cond))
        object.__setattr__(self, "body", tuple(self.body))


@dataclass(frozen=True)
class If:
    """Read ``predicate``; run ``then`` if it is nonzero, else ``else_``."""

    predicate: Predicate
    then: tuple["Step", ...]
    else_: tuple["Step", ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "then", tuple(self.then))
        object.__setattr__(self, "else_", tuple(self.else_))


Step = Union[Launch, Copy, Memset, Loop, While, If]


@dataclass(frozen=True)
class Check:
    """A run-time check read after every call: one element of ``dtype`` at ``offset`` of
    ``buffer``; nonzero means the call failed with ``message`` (the user's code at ``location``).

    The compiler writes them for index bounds checks (an embedding or gather index outside its
    table): the kernels clamp such an index and set the flag instead of reading out of bounds.
    """

    buffer: str
    message: str
    location: str | None = None
    dtype: str = "int8"
    offset: int = 0


# --------------------------------------------------------------------------------------------
# The manifest
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Manifest:
    """Everything manifest.json says; see runtime/FORMAT.md."""

    target: str
    backend: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    buffers: tuple[Buffer, ...]
    weights: tuple[Weight, ...] = ()
    kernels: tuple[Kernel, ...] = ()
    program: tuple[Step, ...] = ()
    files: tuple[FileEntry, ...] = ()
    checks: tuple[Check, ...] = ()
    version: int = FORMAT_VERSION
    producer: str | None = None

    @cached_property
    def buffer_map(self) -> dict[str, Buffer]:
        return {b.name: b for b in self.buffers}

    @cached_property
    def kernel_map(self) -> dict[str, Kernel]:
        return {k.name: k for k in self.kernels}

    @cached_property
    def file_map(self) -> dict[str, FileEntry]:
        return {f.name: f for f in self.files}

    def steps(self):
        """Every step of the program, nested ones included, with its path (``program[2].body[0]``)."""
        yield from _walk(self.program, "program")

    def to_json(self) -> dict[str, Any]:
        """The manifest as a JSON-ready dict (the inverse of :func:`manifest_from_json`)."""
        out: dict[str, Any] = {
            "format": FORMAT_NAME,
            "version": self.version,
            "target": self.target,
            "backend": self.backend,
        }
        if self.producer:
            out["producer"] = self.producer
        out["inputs"] = [_tensor_json(t) for t in self.inputs]
        out["outputs"] = [_tensor_json(t) for t in self.outputs]
        out["buffers"] = [{"name": b.name, "kind": b.kind, "size": b.size} for b in self.buffers]
        out["weights"] = [
            {
                "name": w.name,
                "buffer": w.buffer,
                "file": w.file,
                "offset": w.offset,
                "size": w.size,
                "sha256": w.sha256,
                "shape": list(w.shape),
                "dtype": w.dtype,
            }
            for w in self.weights
        ]
        out["kernels"] = [_kernel_json(k) for k in self.kernels]
        out["program"] = [_step_json(s) for s in self.program]
        out["files"] = [{"name": f.name, "size": f.size, "sha256": f.sha256} for f in self.files]
        if self.checks:
            out["checks"] = [_check_json(c) for c in self.checks]
        return out


def _walk(steps, path):
    for i, step in enumerate(steps):
        here = f"{path}[{i}]"
        yield here, step
        if isinstance(step, Loop):
            yield from _walk(step.body, f"{here}.body")
        elif isinstance(step, While):
            yield from _walk(step.cond, f"{here}.cond")
            yield from _walk(step.body, f"{here}.body")
        elif isinstance(step, If):
            yield from _walk(step.then, f"{here}.then")
            yield from _walk(step.else_, f"{here}.else")


def _tensor_json(t: TensorSpec) -> dict[str, Any]:
    return {"name": t.name, "buffer": t.buffer, "shape": list(t.shape), "dtype": t.dtype}


def _arg_json(a: KernelArg) -> dict[str, Any]:
    if isinstance(a, BufferArg):
        return {"kind": "buffer", "buffer": a.buffer, "offset": a.offset}
    if isinstance(a, ScalarArg):
        return {"kind": "scalar", "dtype": a.dtype, "value": a.value}
    return {"kind": "index", "loop": a.loop, "dtype": a.dtype}


def _kernel_json(k: Kernel) -> dict[str, Any]:
    return {
        "name": k.name,
        "binary": k.binary,
        "binary_format": k.binary_format,
        "entry": k.entry,
        "grid": list(k.grid),
        "block": list(k.block),
        "shared_memory": k.shared_memory,
        "cooperative": k.cooperative,
        "args": [_arg_json(a) for a in k.args],
    }


def _check_json(c: Check) -> dict[str, Any]:
    return {"buffer": c.buffer, "dtype": c.dtype, "offset": c.offset, "message": c.message,
            "location": c.location}


def _pred_json(p: Predicate) -> dict[str, Any]:
    return {"buffer": p.buffer, "dtype": p.dtype, "offset": p.offset}


def _step_json(s: Step) -> dict[str, Any]:
    if isinstance(s, Launch):
        return {"op": "launch", "kernel": s.kernel}
    if isinstance(s, Copy):
        return {
            "op": "copy",
            "dst": s.dst,
            "src": s.src,
            "size": s.size,
            "dst_offset": s.dst_offset,
            "src_offset": s.src_offset,
        }
    if isinstance(s, Memset):
        return {
            "op": "memset",
            "buffer": s.buffer,
            "value": s.value,
            "size": s.size,
            "offset": s.offset,
            "width": s.width,
        }
    if isinstance(s, Loop):
        return {"op": "loop", "count": s.count, "index": s.index, "body": [_step_json(x) for x in s.body]}
    if isinstance(s, While):
        return {
            "op": "while",
            "cond": [_step_json(x) for x in s.cond],
            "predicate": _pred_json(s.predicate),
            "body": [_step_json(x) for x in s.body],
            "max_iterations": s.max_iterations,
        }
    if isinstance(s, If):
        return {
            "op": "if",
            "predicate": _pred_json(s.predicate),
            "then": [_step_json(x) for x in s.then],
            "else": [_step_json(x) for x in s.else_],
        }
    raise TypeError(f"not a host-program step: {s!r}")
