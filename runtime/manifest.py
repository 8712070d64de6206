"""The artifact manifest as dataclasses: JSON in, JSON out, and its consistency checks.

``manifest.json`` describes everything the runtime needs to run a compiled program: the tensors
it takes and returns, the device buffers it allocates once, the weights uploaded into some of
them, the kernels (binary, entry symbol, launch shape, arguments) and the host program, a tree of
steps (launch, copy, memset, loop, while, if) that the interpreter walks on every call. The host
program is the "host plan" of DESIGN.md; Grinder's point is that the better a program is
compiled, the fewer host-side ``while``/``if`` steps it keeps.

``runtime/FORMAT.md`` documents every field. This module only knows the format: reading files,
checksums and architectures are :mod:`quartet.runtime.artifact`'s business.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Union

from quartet.errors import QuartetError
from quartet.runtime import dtypes
from quartet.runtime.targets import BACKENDS, BINARY_FORMATS, backend_of

FORMAT_NAME = "quartet-artifact"
FORMAT_VERSION = 1
SUPPORTED_VERSIONS = (1,)

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


# --------------------------------------------------------------------------------------------
# Reading JSON
# --------------------------------------------------------------------------------------------


class _Obj:
    """A JSON object being read at path ``where``; every bad field is a one-line QuartetError."""

    def __init__(self, value: Any, where: str, location: str | None):
        if not isinstance(value, dict):
            raise QuartetError(f"{where}: expected an object, got {_show(value)}", location)
        self.value, self.where, self.location = value, where, location

    def error(self, key: str, what: str) -> QuartetError:
        return QuartetError(f"{self.where}.{key}: {what}", self.location)

    def get(self, key: str, kind: str, default: Any = ...) -> Any:
        if key not in self.value or (self.value[key] is None and default is not ...):
            if default is ...:
                raise self.error(key, "missing")
            return default
        v = self.value[key]
        checks = {
            "str": lambda: isinstance(v, str) and v != "",
            "int": lambda: isinstance(v, int) and not isinstance(v, bool),
            "nat": lambda: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
            "bool": lambda: isinstance(v, bool),
            "num": lambda: isinstance(v, (int, float)) and not isinstance(v, bool),
            "list": lambda: isinstance(v, list),
            "obj": lambda: isinstance(v, dict),
        }
        if not checks[kind]():
            names = {
                "str": "a non-empty string",
                "int": "an integer",
                "nat": "a non-negative integer",
                "bool": "true or false",
                "num": "a number",
                "list": "a list",
                "obj": "an object",
            }
            raise self.error(key, f"expected {names[kind]}, got {_show(v)}")
        return v

    def shape(self, key: str) -> tuple[int, ...]:
        v = self.get(key, "list")
        if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in v):
            raise self.error(key, f"expected a list of non-negative integers, got {_show(v)}")
        return tuple(v)

    def dim3(self, key: str) -> tuple[int, int, int]:
        v = self.get(key, "list")
        if len(v) != 3 or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in v):
            raise self.error(key, f"expected 3 positive integers, got {_show(v)}")
        return tuple(v)

    def choice(self, key: str, allowed, default: Any = ...) -> str:
        v = self.get(key, "str", default)
        if v not in allowed:
            raise self.error(key, f"expected one of {', '.join(sorted(allowed))}, got {_show(v)}")
        return v

    def dtype(self, key: str, allowed=frozenset(dtypes.ITEMSIZE), default: Any = ...) -> str:
        return self.choice(key, allowed, default)

    def items(self, key: str, default: Any = ...) -> list[tuple[Any, str]]:
        v = self.get(key, "list", default)
        return [(x, f"{self.where}.{key}[{i}]") for i, x in enumerate(v)]


def _show(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def manifest_from_json(data: Any, location: str | None = None) -> Manifest:
    """Build a :class:`Manifest` from parsed JSON, checking the format name and version first.

    Raises QuartetError (one line, ``location`` attached) for anything malformed; the cross
    references are checked afterwards by :func:`validate`.
    """
    top = _Obj(data, "manifest", location)
    fmt = data.get("format")
    if fmt != FORMAT_NAME:
        raise QuartetError(
            f"not a Quartet artifact: manifest format is {_show(fmt)}, expected {FORMAT_NAME!r}",
            location,
        )
    version = data.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise QuartetError(f"manifest version must be an integer, got {_show(version)}", location)
    if version not in SUPPORTED_VERSIONS:
        supported = ", ".join(map(str, SUPPORTED_VERSIONS))
        raise QuartetError(
            f"artifact format version {version} is not supported by this runtime "
            f"(it reads version {supported}); rebuild the artifact with this Quartet",
            location,
        )
    target = top.get("target", "str")
    backend = top.get("backend", "str")
    if backend not in BACKENDS:
        raise top.error("backend", f"expected one of {', '.join(BACKENDS)}, got {_show(backend)}")
    if backend_of(target) is None:
        raise top.error("target", f"unknown target {_show(target)} (expected sm_NN, gfxNNN or cpu)")
    if backend_of(target) != backend:
        raise top.error("backend", f"{backend} does not run target {target}")

    def tensor(v, where):
        o = _Obj(v, where, location)
        return TensorSpec(o.get("name", "str"), o.get("buffer", "str"), o.shape("shape"), o.dtype("dtype"))

    def buffer(v, where):
        o = _Obj(v, where, location)
        return Buffer(o.get("name", "str"), o.choice("kind", BUFFER_KINDS), o.get("size", "nat"))

    def weight(v, where):
        o = _Obj(v, where, location)
        return Weight(
            o.get("name", "str"),
            o.get("buffer", "str"),
            o.get("file", "str"),
            o.get("offset", "nat"),
            o.get("size", "nat"),
            o.get("sha256", "str"),
            o.shape("shape"),
            o.dtype("dtype"),
        )

    def file_entry(v, where):
        o = _Obj(v, where, location)
        return FileEntry(o.get("name", "str"), o.get("size", "nat"), o.get("sha256", "str"))

    return Manifest(
        version=version,
        target=target,
        backend=backend,
        producer=top.get("producer", "str", None),
        inputs=tuple(tensor(*x) for x in top.items("inputs")),
        outputs=tuple(tensor(*x) for x in top.items("outputs")),
        buffers=tuple(buffer(*x) for x in top.items("buffers")),
        weights=tuple(weight(*x) for x in top.items("weights", [])),
        kernels=tuple(_kernel_from_json(v, w, location) for v, w in top.items("kernels", [])),
        program=tuple(_step_from_json(v, w, location) for v, w in top.items("program", [])),
        files=tuple(file_entry(*x) for x in top.items("files", [])),
    )


def _arg_from_json(v: Any, where: str, location: str | None) -> KernelArg:
    o = _Obj(v, where, location)
    kind = o.get("kind", "str")
    if kind == "buffer":
        return BufferArg(o.get("buffer", "str"), o.get("offset", "nat", 0))
    if kind == "scalar":
        dtype = o.dtype("dtype", allowed=set(dtypes.SCALAR_CTYPES))
        value = o.get("value", "num")
        return ScalarArg(dtype, value)
    if kind == "index":
        return IndexArg(o.get("loop", "str"), o.dtype("dtype", allowed=dtypes.INTEGER_TYPES, default="int64"))
    raise o.error("kind", f"expected buffer, scalar or index, got {_show(kind)}")


def _kernel_from_json(v: Any, where: str, location: str | None) -> Kernel:
    o = _Obj(v, where, location)
    return Kernel(
        name=o.get("name", "str"),
        binary=o.get("binary", "str"),
        binary_format=o.get("binary_format", "str"),
        entry=o.get("entry", "str"),
        grid=o.dim3("grid"),
        block=o.dim3("block"),
        shared_memory=o.get("shared_memory", "nat", 0),
        args=tuple(_arg_from_json(a, w, location) for a, w in o.items("args", [])),
        cooperative=o.get("cooperative", "bool", False),
    )


def _pred_from_json(v: Any, where: str, location: str | None) -> Predicate:
    o = _Obj(v, where, location)
    return Predicate(
        o.get("buffer", "str"),
        o.dtype("dtype", allowed=dtypes.PREDICATE_TYPES, default="int32"),
        o.get("offset", "nat", 0),
    )


def _step_from_json(v: Any, where: str, location: str | None) -> Step:
    o = _Obj(v, where, location)
    op = o.get("op", "str")

    def block(key):
        return tuple(_step_from_json(x, w, location) for x, w in o.items(key, []))

    if op == "launch":
        return Launch(o.get("kernel", "str"))
    if op == "copy":
        return Copy(
            o.get("dst", "str"),
            o.get("src", "str"),
            o.get("size", "nat"),
            o.get("dst_offset", "nat", 0),
            o.get("src_offset", "nat", 0),
        )
    if op == "memset":
        return Memset(
            o.get("buffer", "str"),
            o.get("value", "nat", 0),
            o.get("size", "nat", None),
            o.get("offset", "nat", 0),
            o.get("width", "nat", 1),
        )
    if op == "loop":
        return Loop(o.get("count", "nat"), block("body"), o.get("index", "str", None))
    if op == "while":
        return While(
            block("cond"),
            _pred_from_json(o.get("predicate", "obj"), f"{where}.predicate", location),
            block("body"),
            o.get("max_iterations", "nat", None),
        )
    if op == "if":
        return If(
            _pred_from_json(o.get("predicate", "obj"), f"{where}.predicate", location),
            block("then"),
            block("else"),
        )
    raise o.error("op", f"expected launch, copy, memset, loop, while or if, got {_show(op)}")


# --------------------------------------------------------------------------------------------
# Cross-reference checks
# --------------------------------------------------------------------------------------------


def validate(m: Manifest, location: str | None = None) -> None:
    """Check that every name a manifest uses is defined and every byte range is in bounds.

    Raises a one-line QuartetError for the first problem found. File contents are not read here.
    """

    def fail(where: str, what: str):
        raise QuartetError(f"{where}: {what}", location)

    def unique(items, table):
        seen = set()
        for i, item in enumerate(items):
            if item.name in seen:
                fail(f"{table}[{i}]", f"duplicate name {item.name!r}")
            seen.add(item.name)

    for items, table in (
        (m.buffers, "buffers"),
        (m.inputs, "inputs"),
        (m.outputs, "outputs"),
        (m.weights, "weights"),
        (m.kernels, "kernels"),
        (m.files, "files"),
    ):
        unique(items, table)
    buffers, files = m.buffer_map, m.file_map
    if "manifest.json" in files:
        fail("files", "manifest.json must not be listed")

    def need_buffer(where, name, kinds=None):
        if name not in buffers:
            fail(where, f"unknown buffer {name!r}")
        if kinds and buffers[name].kind not in kinds:
            fail(where, f"buffer {name!r} is a {buffers[name].kind} buffer, expected {'/'.join(kinds)}")
        return buffers[name]

    def in_bounds(where, buf, offset, size):
        if offset + size > buf.size:
            fail(where, f"bytes [{offset}, {offset + size}) are outside buffer {buf.name!r} of {buf.size} bytes")

    owner: dict[str, str] = {}
    for table, specs, kind in (("inputs", m.inputs, "input"), ("outputs", m.outputs, "output")):
        for i, t in enumerate(specs):
            where = f"{table}[{i}]"
            buf = need_buffer(where, t.buffer, (kind,))
            if buf.size != t.nbytes:
                fail(where, f"{t.name!r} has {t.nbytes} bytes but buffer {buf.name!r} has {buf.size}")
            if t.buffer in owner:
                fail(where, f"buffer {t.buffer!r} is already used by {owner[t.buffer]}")
            owner[t.buffer] = where
    for i, w in enumerate(m.weights):
        where = f"weights[{i}]"
        buf = need_buffer(where, w.buffer, ("weight",))
        if buf.size != w.size:
            fail(where, f"weight {w.name!r} has {w.size} bytes but buffer {buf.name!r} has {buf.size}")
        if w.size != math.prod(w.shape) * dtypes.ITEMSIZE[w.dtype]:
            fail(where, f"size {w.size} does not match shape {list(w.shape)} of {w.dtype}")
        if w.buffer in owner:
            fail(where, f"buffer {w.buffer!r} is already used by {owner[w.buffer]}")
        owner[w.buffer] = where
        if w.file not in files:
            fail(where, f"file {w.file!r} is not listed in files")
        if w.offset + w.size > files[w.file].size:
            fail(where, f"bytes [{w.offset}, {w.offset + w.size}) are outside {w.file} ({files[w.file].size} bytes)")
    for b in m.buffers:
        if b.kind in ("input", "output", "weight") and b.name not in owner:
            fail("buffers", f"{b.kind} buffer {b.name!r} belongs to no {b.kind}")

    formats = BINARY_FORMATS[m.backend]
    for i, k in enumerate(m.kernels):
        where = f"kernels[{i}]"
        if k.binary not in files:
            fail(where, f"binary {k.binary!r} is not listed in files")
        if k.binary_format not in formats:
            fail(where, f"binary format {k.binary_format!r} cannot run on the {m.backend} backend (expected {'/'.join(formats)})")
        for dim in ("grid", "block"):
            v = getattr(k, dim)
            if len(v) != 3 or not all(isinstance(d, int) and d > 0 for d in v):
                fail(where, f"{dim} must be 3 positive integers, got {list(v)}")
        if m.backend != "cpu" and math.prod(k.block) > 1024:
            fail(where, f"block {list(k.block)} has more than 1024 threads")
        for j, a in enumerate(k.args):
            aw = f"{where}.args[{j}]"
            if isinstance(a, BufferArg):
                buf = need_buffer(aw, a.buffer)
                if a.offset > buf.size:
                    fail(aw, f"offset {a.offset} is past the end of buffer {buf.name!r} ({buf.size} bytes)")
            elif isinstance(a, ScalarArg):
                _check_scalar(aw, a, fail)

    _validate_program(m, fail, need_buffer, in_bounds)


def _check_scalar(where, a: ScalarArg, fail) -> None:
    if a.dtype in dtypes.INTEGER_TYPES:
        if not isinstance(a.value, int):
            fail(where, f"{a.dtype} scalar needs an integer value, got {a.value!r}")
        bits = 8 * dtypes.ITEMSIZE[a.dtype]
        lo, hi = (0, 2**bits - 1) if a.dtype.startswith("u") else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
        if not lo <= a.value <= hi:
            fail(where, f"value {a.value} does not fit in {a.dtype}")


def _validate_program(m: Manifest, fail, need_buffer, in_bounds) -> None:
    kernels = m.kernel_map

    def pred(where, p: Predicate):
        in_bounds(where, need_buffer(where, p.buffer), p.offset, dtypes.ITEMSIZE[p.dtype])

    def walk(steps, path, scope):
        for i, s in enumerate(steps):
            where = f"{path}[{i}]"
            if isinstance(s, Launch):
                if s.kernel not in kernels:
                    fail(where, f"unknown kernel {s.kernel!r}")
                for a in kernels[s.kernel].args:
                    if isinstance(a, IndexArg) and a.loop not in scope:
                        fail(where, f"kernel {s.kernel!r} needs the index of loop {a.loop!r}, which does not enclose this launch")
            elif isinstance(s, Copy):
                in_bounds(where, need_buffer(where, s.src), s.src_offset, s.size)
                in_bounds(where, need_buffer(where, s.dst), s.dst_offset, s.size)
                if m.buffer_map[s.dst].kind == "weight":
                    fail(where, f"copy into weight buffer {s.dst!r}")
            elif isinstance(s, Memset):
                buf = need_buffer(where, s.buffer)
                size = buf.size - s.offset if s.size is None else s.size
                if s.width not in (1, 2, 4):
                    fail(where, f"width must be 1, 2 or 4, got {s.width}")
                if s.value >= 2 ** (8 * s.width):
                    fail(where, f"value {s.value} does not fit in {s.width} byte(s)")
                if size < 0 or size % s.width or s.offset % s.width:
                    fail(where, f"offset {s.offset} and size {size} must be multiples of width {s.width}")
                in_bounds(where, buf, s.offset, size)
                if buf.kind == "weight":
                    fail(where, f"memset of weight buffer {s.buffer!r}")
            elif isinstance(s, Loop):
                walk(s.body, f"{where}.body", scope | ({s.index} if s.index else set()))
            elif isinstance(s, While):
                if s.max_iterations == 0:
                    fail(where, "max_iterations must be positive")
                walk(s.cond, f"{where}.cond", scope)
                pred(f"{where}.predicate", s.predicate)
                walk(s.body, f"{where}.body", scope)
            elif isinstance(s, If):
                pred(f"{where}.predicate", s.predicate)
                walk(s.then, f"{where}.then", scope)
                walk(s.else_, f"{where}.else", scope)
            else:
                fail(where, f"not a host-program step: {s!r}")

    walk(m.program, "program", frozenset())


def host_control_flow(m: Manifest) -> str | None:
    """The path of the first data-dependent host step (``while``/``if``), or None if there is none."""
    for path, step in m.steps():
        if isinstance(step, (While, If)):
            return path
    return None
