"""Reading manifest.json into :class:`~quartet.runtime.manifest.Manifest` dataclasses.

Every field is type-checked as it is read; a malformed field is a one-line QuartetError that
names its JSON path (``kernels[2].grid: expected 3 positive integers, got [0, 1, 1]``). The
format name and version are checked first, so a manifest from a future format version is
refused with a clear message before anything else is looked at. Cross references (does this
buffer exist, is this copy in bounds) are :mod:`quartet.runtime.validate`'s job.
"""

from __future__ import annotations

from typing import Any

from quartet.errors import QuartetError
from quartet.runtime import dtypes
from quartet.runtime.manifest import (
    BUFFER_KINDS,
    FORMAT_NAME,
    SUPPORTED_VERSIONS,
    Buffer,
    BufferArg,
    Check,
    Copy,
    FileEntry,
    If,
    IndexArg,
    Kernel,
    KernelArg,
    Launch,
    Loop,
    Manifest,
    Memset,
    Predicate,
    ScalarArg,
    Step,
    TensorSpec,
    Weight,
    While,
)
from quartet.runtime.targets import BACKENDS, backend_of


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

    def check(v, where):
        o = _Obj(v, where, location)
        return Check(o.get("buffer", "str"), o.get("message", "str"),
                     o.get("location", "str", None), o.dtype("dtype", default="int8"),
                     o.get("offset", "nat", 0))

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
        checks=tuple(check(*x) for x in top.items("checks", [])),
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
