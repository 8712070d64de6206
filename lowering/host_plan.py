"""The host plan of a lowered function: its buffers and the host program that drives them.

What the artifact writer and the runtime need besides the binaries (DESIGN.md, "lowering ...
host plan: buffers, launches, host-side control flow"): every tensor the host holds on the
device is a named buffer (a function input - user inputs first, then the model's weights, as
the importer passes parameters as arguments -, a tensor constant, an intermediate, a loop-carried
value, or a function result). The host program is a tree of steps, in order:

* :class:`Launch` - a :class:`~quartet.lowering.kernel.KernelSpec` with the buffer bound to each
  of its arguments, in bare-pointer order;
* :class:`Copy` - a device-to-device copy (a result that is an input, a loop's initial values
  and the values its body yields back, the results of a branch);
* :class:`While` - ``scf.while`` kept on the host: run ``cond``, read the predicate (one element
  of a device buffer), run ``body`` while it is nonzero;
* :class:`If` - ``scf.if`` kept on the host: read the predicate, run ``then`` or ``else_``.

Reshapes and contiguous slices between tiles are views: ``aliases`` maps the view's buffer to
the buffer that holds it and ``offsets`` gives its byte offset there. Loops and branches stay
on the host here; Grinder (``grinder-lift-control-flow``) is what moves them onto the device.

Plain data, no MLIR: the runtime may import this module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

from .kernel import KernelSpec

ITEMSIZE = {"bool": 1, "int8": 1, "uint8": 1, "int16": 2, "int32": 4, "int64": 8,
            "float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}


def nbytes(shape: tuple[int, ...], dtype: str) -> int:
    n = 1
    for d in shape:
        n *= d
    return n * ITEMSIZE[dtype]


@dataclass(frozen=True)
class Buffer:
    name: str
    shape: tuple[int, ...]
    dtype: str                          # numpy-style: "float16", ...
    kind: str                           # "input" | "output" | "temp" | "weight"
    index: int = -1                     # position among the function's inputs / results
    data: bytes | None = field(default=None, compare=False, repr=False)   # weights

    @property
    def nbytes(self) -> int:
        return nbytes(self.shape, self.dtype)


@dataclass(frozen=True)
class Launch:
    kernel: KernelSpec
    buffers: tuple[str, ...]            # one buffer (or view) name per kernel argument


@dataclass(frozen=True)
class Copy:
    """Copy ``size`` bytes (None: all of ``dst``) from ``src`` + ``src_offset`` to ``dst`` +
    ``dst_offset``; either name may be a view (its own offset is added)."""

    src: str
    dst: str
    size: int | None = None
    src_offset: int = 0
    dst_offset: int = 0


@dataclass(frozen=True)
class Predicate:
    """One element of ``dtype`` at byte ``offset`` of buffer ``buffer`` (a storage buffer)."""

    buffer: str
    dtype: str
    offset: int = 0


@dataclass
class While:
    cond: list
    predicate: Predicate
    body: list


@dataclass
class If:
    predicate: Predicate
    then: list
    else_: list


Step = Union[Launch, Copy, While, If]


@dataclass
class HostPlan:
    function: str
    target: str
    buffers: list[Buffer] = field(default_factory=list)
    program: list = field(default_factory=list)          # the step tree, in order
    launches: list[Launch] = field(default_factory=list)  # every launch of the tree, in order
    copies: list[Copy] = field(default_factory=list)     # every copy of the tree, in order
    aliases: dict[str, str] = field(default_factory=dict)  # view buffer -> storage buffer
    offsets: dict[str, int] = field(default_factory=dict)  # view buffer -> byte offset in it
    results: list[str] = field(default_factory=list)     # buffer of each function result

    def buffer(self, name: str) -> Buffer:
        for b in self.buffers:
            if b.name == name:
                return b
        raise KeyError(name)

    def storage(self, name: str) -> tuple[str, int]:
        """(storage buffer, byte offset) of a buffer or view."""
        return self.aliases.get(name, name), self.offsets.get(name, 0)

    @property
    def kernels(self) -> list[KernelSpec]:
        return [launch.kernel for launch in self.launches]

    @property
    def has_control_flow(self) -> bool:
        return any(isinstance(s, (While, If)) for s in self.program)

    def walk(self, steps: list | None = None):
        """Every step of the tree, nested ones included, in program order."""
        for s in self.program if steps is None else steps:
            yield s
            if isinstance(s, While):
                yield from self.walk(s.cond)
                yield from self.walk(s.body)
            elif isinstance(s, If):
                yield from self.walk(s.then)
                yield from self.walk(s.else_)
