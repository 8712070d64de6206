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
    TENSORMAP_SWIZZLES,
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
    TensorMapArg,
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
    for i, b in enumerate(m.buffers):
        if b.kind in ("input", "output", "weight") and b.name not in owner:
            fail("buffers", f"{b.kind} buffer {b.name!r} belongs to no {b.kind}")
        if b.zeroed and b.kind not in ("temp", "scalar"):
            fail(f"buffers[{i}]", f"only temp and scalar buffers are zeroed at load, not the "
                                  f"{b.kind} buffer {b.name!r}")

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
            elif isinstance(a, TensorMapArg):
                if m.backend != "cuda":
                    fail(aw, f"tensor maps exist only on the cuda backend, not {m.backend}")
                _check_tensormap(aw, a, need_buffer(aw, a.buffer), fail)
        if k.persistent is not None:
            _check_persistent(where, k, buffers, fail)

    _validate_program(m, fail, need_buffer, in_bounds)
    for i, c in enumerate(m.checks):
        where = f"checks[{i}]"
        buf = need_buffer(where, c.buffer)
        in_bounds(where, buf, c.offset, dtypes.ITEMSIZE[c.dtype])


def _check_tensormap(where, a: TensorMapArg, buf, fail) -> None:
    """The rules of cuTensorMapEncodeTiled that do not depend on the bound address, and that the
    map stays inside its buffer."""
    rank, size = len(a.dims), dtypes.ITEMSIZE[a.dtype]
    if not 1 <= rank <= 5 or len(a.box) != rank or len(a.strides) != rank - 1:
        fail(where, f"a tensor map has 1 to 5 dims, as many box sizes and one stride fewer, "
                    f"got dims {list(a.dims)}, strides {list(a.strides)}, box {list(a.box)}")
    if not all(1 <= d <= 2**31 for d in a.dims):
        fail(where, f"tensor-map dims must lie in [1, 2^31], got {list(a.dims)}")
    if not all(s % 16 == 0 and 0 < s < 2**40 for s in a.strides):
        fail(where, f"tensor-map strides must be positive multiples of 16 bytes below 2^40, "
                    f"got {list(a.strides)}")
    if not all(1 <= b <= 256 for b in a.box) or (a.box[0] * size) % 16:
        fail(where, f"tensor-map box sizes must lie in [1, 256] with a multiple of 16 bytes "
                    f"innermost, got {list(a.box)}")
    if a.swizzle not in TENSORMAP_SWIZZLES or (a.swizzle and a.box[0] * size > a.swizzle):
        fail(where, f"swizzle {a.swizzle} must be one of {list(TENSORMAP_SWIZZLES)} bytes and "
                    f"at least the innermost box ({a.box[0] * size} bytes)")
    if a.offset % 16:
        fail(where, f"a tensor map's offset must be a multiple of 16 bytes, got {a.offset}")
    if a.offset + a.extent > buf.size:
        fail(where, f"the tensor map reaches byte {a.offset + a.extent} of buffer {buf.name!r} "
                    f"({buf.size} bytes)")


def _check_persistent(where, k, buffers, fail) -> None:
    """A persistent kernel is cooperative (all blocks resident), runs its vEUs on at most as
    many blocks, and synchronises through a zeroed buffer among its arguments."""
    p = k.persistent
    blocks = math.prod(k.grid)
    if not k.cooperative:
        fail(where, "a persistent kernel must be cooperative (its blocks wait for each other)")
    if p.veus < 1 or p.blocks_per_sm < 1:
        fail(f"{where}.persistent", f"needs veus >= 1 and blocks_per_sm >= 1, got {p.veus} and "
                                    f"{p.blocks_per_sm}")
    if blocks > p.veus or k.grid[1] != 1 or k.grid[2] != 1:
        fail(where, f"grid {list(k.grid)} must be 1-D with at most {p.veus} blocks (its vEUs)")
    if p.sync not in buffers or not buffers[p.sync].zeroed:
        fail(f"{where}.persistent", f"sync buffer {p.sync!r} must be a buffer zeroed at load")
    if not any(isinstance(a, BufferArg) and a.buffer == p.sync for a in k.args):
        fail(f"{where}.persistent", f"sync buffer {p.sync!r} is not one of the kernel's "
                                    f"arguments")
    if p.bound_word is not None and p.sync in buffers and \
            8 * (p.bound_word + 1) > buffers[p.sync].size:
        fail(f"{where}.persistent", f"bound_word {p.bound_word} past the end of sync buffer "
                                    f"{p.sync!r} ({buffers[p.sync].size} bytes)")
    if p.program:
        _check_device_program(f"{where}.persistent.program", p, k, fail)
    for i, t in enumerate(p.tasks):
        if any(a >= len(k.args) for a in t.args):
            fail(f"{where}.persistent.tasks[{i}]", f"argument positions {list(t.args)} past the "
                                                   f"kernel's {len(k.args)} arguments")
        if t.veu_count < 1 or t.veu_begin + t.veu_count > p.veus:
            fail(f"{where}.persistent.tasks[{i}]", f"vEUs [{t.veu_begin}, "
                                                   f"{t.veu_begin + t.veu_count}) outside the "
                                                   f"kernel's {p.veus}")


def _check_device_program(where, p, k, fail) -> None:
    """A device program (Grinder): JSON steps naming tasks of the kernel and positions of its
    arguments (runtime/FORMAT.md)."""
    import json

    try:
        steps = json.loads(p.program)
    except ValueError as e:
        fail(where, f"is not JSON ({e})")
        return
    ops = {"wave": ("tasks",), "copies": ("copies",), "while": ("cond", "pred", "body"),
           "for": ("count", "body"), "if": ("pred", "then", "else")}

    def arg(position, here):
        if not isinstance(position, int) or isinstance(position, bool) or \
                not 0 <= position < len(k.args):
            fail(here, f"argument position {position!r} outside the kernel's {len(k.args)}")

    def walk(items, here):
        if not isinstance(items, list):
            fail(here, "expected a list of steps")
            return
        for i, s in enumerate(items):
            at = f"{here}[{i}]"
            if not isinstance(s, dict) or s.get("op") not in ops or \
                    any(f not in s for f in ops[s.get("op")]):
                fail(at, f"expected one of the steps {', '.join(ops)} with their fields")
                continue
            if s["op"] == "wave" and any(not isinstance(t, int) or not 0 <= t < len(p.tasks)
                                         for t in s["tasks"]):
                fail(at, f"tasks {s['tasks']} outside the kernel's {len(p.tasks)}")
            if s["op"] == "copies":
                for c in s["copies"]:
                    arg(c.get("dst"), at)
                    arg(c.get("src"), at)
            if "pred" in s:
                arg(s["pred"], at)
            for field in ("cond", "body", "then", "else"):
                if field in s:
                    walk(s[field], f"{at}.{field}")

    walk(steps, where)


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
# Buffers zeroed at load hold persistent kernels' synchronisation state (counters only grow from
# zero across calls): no step may write them.
_SYNC_WHY = "persistent kernels' synchronisation state, which only their kernels write"


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
                if m.buffer_map[s.dst].zeroed:
                    fail(where, f"copy into {s.dst!r}, a buffer zeroed at load ({_SYNC_WHY})")
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
                if buf.zeroed:
                    fail(where, f"memset of {s.buffer!r}, a buffer zeroed at load ({_SYNC_WHY})")
            elif isinstance(s, Loop):
                walk(s.body, f"{where}.body", scope | ({s.index} if s.index else set()))
            elif isinstance(s, While):
                if s.max_iterations == 0:
                    fail(where, "max_iterations must be positive")
                if s.at_bound not in ("error", "stop"):
                    fail(where, f"at_bound must be 'error' or 'stop', not {s.at_bound!r}")
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
