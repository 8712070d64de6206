"""The host plan of a lowered function: its buffers, the kernel launches in order, and copies.

What the artifact writer and the runtime need besides the binaries (DESIGN.md, "lowering ...
host plan: buffers, launches"): every tensor the host holds on the device is a named buffer
(a function input, a weight constant, an intermediate, or a function result); a launch is a
:class:`~quartet.lowering.kernel.KernelSpec` with the buffer bound to each of its arguments, in
bare-pointer order; a copy moves a whole buffer (a result that is an input or another result).
Reshapes between tiles are views: ``aliases`` maps the view's buffer to the one that holds it.

Plain data, no MLIR: the runtime may import this module.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .kernel import KernelSpec


@dataclass(frozen=True)
class Buffer:
    name: str
    shape: tuple[int, ...]
    dtype: str                          # numpy-style: "float16", ...
    kind: str                           # "input" | "output" | "temp" | "weight"
    index: int = -1                     # position among the function's inputs / results
    data: bytes | None = field(default=None, compare=False, repr=False)   # weights


@dataclass(frozen=True)
class Launch:
    kernel: KernelSpec
    buffers: tuple[str, ...]            # one buffer name per kernel argument


@dataclass(frozen=True)
class Copy:
    src: str
    dst: str


@dataclass
class HostPlan:
    function: str
    target: str
    buffers: list[Buffer] = field(default_factory=list)
    launches: list[Launch] = field(default_factory=list)
    copies: list[Copy] = field(default_factory=list)     # after all launches, in order
    aliases: dict[str, str] = field(default_factory=dict)  # view buffer -> storage buffer
    results: list[str] = field(default_factory=list)     # buffer of each function result

    def buffer(self, name: str) -> Buffer:
        for b in self.buffers:
            if b.name == name:
                return b
        raise KeyError(name)

    @property
    def kernels(self) -> list[KernelSpec]:
        return [launch.kernel for launch in self.launches]
