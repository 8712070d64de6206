"""What a lowering hands to the host plan and the artifact: one compiled kernel.

A configured ``quartet.tile`` becomes one GPU kernel (or one CPU function). The host side needs
to know only this: the binary, its entry symbol, the launch shape and the order of its pointer
arguments. Every kernel Quartet emits uses the bare-pointer calling convention: one device
pointer per memref argument, in the order of ``args`` (the tile's inputs in order of first use,
then its outputs), then immediate scalars if any.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class KernelArg:
    """One kernel argument: a tensor the tile reads or writes, or an immediate scalar."""

    role: str                  # "input" | "output" | "scalar"
    index: int                 # position among the tile's inputs / outputs
    shape: tuple[int, ...] = ()
    dtype: str = ""            # numpy-style name: "float16", "float32", "int64", ...
    value: float | int | None = None   # for scalars


@dataclass(frozen=True)
class KernelSpec:
    """A compiled kernel and how to launch it."""

    name: str                           # unique within a program
    entry: str                          # symbol in the binary
    target: str                         # "sm_90", "sm_80", "gfx942", "cpu"
    binary: bytes                       # cubin / hsaco / shared object
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    shared_bytes: int                   # dynamic shared memory
    args: tuple[KernelArg, ...]
    cooperative: bool = False
    notes: dict = field(default_factory=dict, compare=False)   # e.g. ptxas register report
