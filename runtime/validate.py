"""Consistency checks of a manifest: names defined, byte ranges in bounds, loops in scope.

:func:`validate` runs on every manifest the writer saves and the reader loads, so a program
that passes it can be interpreted without further checks: every buffer, kernel and loop index
it names exists, and every copy, memset, predicate and argument offset stays inside its buffer.
It also enforces the read-only rule of ``input`` and ``weight`` buffers for copies and memsets
(no step writes them; kernels are trusted to follow it, as arguments have no access mode).
"""

from __future__ import annotations

import math

from quartet.errors import QuartetError
from quartet.runtime import dtypes
from quartet.runtime.manifest import (
    BufferArg,
    Copy,
    If,
    IndexArg,
    Launch,
    Loop,
    Manifest,
    Memset,
    Predicate,
    ScalarArg,
    While,
)
from quartet.runtime.targets import BINARY_FORMATS


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
            fail(
                where,
                f"bytes [{offset}, {offset + size}) are outside buffer {buf.name!r} of {buf.size} bytes",
            )

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
            fail(
                where,
                f"bytes [{w.offset}, {w.offset + w.size}) are outside {w.file} ({files[w.file].size} bytes)",
            )
    for b in m.buffers:
        if b.kind in ("input", "output", "weight") and b.name not in owner:
            fail("buffers", f"{b.kind} buffer {b.name!r} belongs to no {b.kind}")

    formats = BINARY_FORMATS[m.backend]
    for i, k in enumerate(m.kernels):
        where = f"kernels[{i}]"
        if k.binary not in files:
            fail(where, f"binary {k.binary!r} is not listed in files")
        if k.binary_format not in formats:
            fail(
                where,
                f"binary format {k.binary_format!r} cannot run on the {m.backend} backend (expected {'/'.join(formats)})",
            )
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
    for i, c in enumerate(m.checks):
        where = f"checks[{i}]"
        buf = need_buffer(where, c.buffer)
        in_bounds(where, buf, c.offset, dtypes.ITEMSIZE[c.dtype])


def _check_scalar(where, a: ScalarArg, fail) -> None:
    if a.dtype in dtypes.INTEGER_TYPES:
        if not isinstance(a.value, int):
            fail(where, f"{a.dtype} scalar needs an integer value, got {a.value!r}")
        bits = 8 * dtypes.ITEMSIZE[a.dtype]
        lo, hi = (0, 2**bits - 1) if a.dtype.startswith("u") else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
        if not lo <= a.value <= hi:
            fail(where, f"value {a.value} does not fit in {a.dtype}")


# Buffers the program only reads: the runtime binds a caller's input tensor in place, and weights
# are shared by every call. Copies and memsets are checked here; kernel arguments carry no access
# mode in format version 1, so for launches this is the compiler's guarantee.
_READ_ONLY = ("input", "weight")
_READ_ONLY_WHY = "input and weight buffers are only read by the program"


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
                        fail(
                            where,
                            f"kernel {s.kernel!r} needs the index of loop {a.loop!r}, which does not enclose this launch",
                        )
            elif isinstance(s, Copy):
                in_bounds(where, need_buffer(where, s.src), s.src_offset, s.size)
                in_bounds(where, need_buffer(where, s.dst), s.dst_offset, s.size)
                if m.buffer_map[s.dst].kind in _READ_ONLY:
                    fail(where, f"copy into {m.buffer_map[s.dst].kind} buffer {s.dst!r} ({_READ_ONLY_WHY})")
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
                if buf.kind in _READ_ONLY:
                    fail(where, f"memset of {buf.kind} buffer {s.buffer!r} ({_READ_ONLY_WHY})")
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
