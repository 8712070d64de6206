"""What a lowering hands to the host plan and the artifact: one compiled kernel.

A configured ``quartet.tile`` becomes one GPU kernel (or one CPU function). The host side needs
to know only this: the binary, its entry symbol, the launch shape and the order of its pointer
arguments. Every kernel Quartet emits uses the bare-pointer calling convention: one device
pointer per memref argument, in the order of ``args`` (the tile's inputs in order of first use,
then its outputs, then the TMA tensor maps some GEMM kernels read their inputs through), then
immediate scalars if any.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class KernelArg:
    """One kernel argument: a tensor the tile reads or writes, or an immediate scalar."""

    role: str                  # "input" | "output" | "scalar" | "tensormap"
    index: int                 # position among the tile's arguments of the same role
    shape: tuple[int, ...] = ()
    dtype: str = ""            # numpy-style name: "float16", "float32", "int64", ...
    value: float | int | None = None   # for scalars
    tensormap: "TensorMapDesc | None" = None   # role "tensormap": what the runtime encodes


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


@dataclass(frozen=True)
class TensorMapDesc:
    """How the runtime encodes a TMA tensor map (``CUtensorMap``) of one kernel input.

    A kernel argument of role ``tensormap`` is a pointer to the 128-byte map of input
    ``source`` (its position among the kernel's inputs) at that input's bound address:
    ``dims`` in elements and ``box`` (the copy's box) innermost first, ``strides`` in bytes for
    ``dims[1:]``, ``swizzle`` the shared-memory swizzle span in bytes (0, 32, 64 or 128).
    Elements past the dims read as zero (the copy engine's fill)."""

    source: int
    dtype: str
    dims: tuple[int, ...]
    strides: tuple[int, ...]
    box: tuple[int, ...]
    swizzle: int


def tensormap_attr(desc: TensorMapDesc):
    """``desc`` as the argument attribute ``quartet.tensormap`` (a dictionary)."""
    from mlir import ir

    i64 = ir.IntegerType.get_signless(64)
    return ir.DictAttr.get({
        "source": ir.IntegerAttr.get(i64, desc.source),
        "dtype": ir.StringAttr.get(desc.dtype),
        "dims": ir.DenseI64ArrayAttr.get(list(desc.dims)),
        "strides": ir.DenseI64ArrayAttr.get(list(desc.strides)),
        "box": ir.DenseI64ArrayAttr.get(list(desc.box)),
        "swizzle": ir.IntegerAttr.get(i64, desc.swizzle)})


def tensormap_of(attr) -> TensorMapDesc:
    """The :class:`TensorMapDesc` of a ``quartet.tensormap`` attribute."""
    from mlir import ir

    d = ir.DictAttr(attr)

    def ints(key):
        return tuple(ir.DenseI64ArrayAttr(d[key]))

    return TensorMapDesc(ir.IntegerAttr(d["source"]).value, ir.StringAttr(d["dtype"]).value,
                         ints("dims"), ints("strides"), ints("box"),
                         ir.IntegerAttr(d["swizzle"]).value)


def arg_attrs(arg: "KernelArg"):
    """The argument attribute dictionary of a kernel argument: its role (and tensor map)."""
    from mlir import ir

    entries = {"quartet.role": ir.StringAttr.get(arg.role)}
    if arg.tensormap is not None:
        entries["quartet.tensormap"] = tensormap_attr(arg.tensormap)
    return ir.DictAttr.get(entries)


def kernel_arg_of(attrs, index: int, shape, dtype: str, default_role: str) -> "KernelArg":
    """The :class:`KernelArg` an argument attribute dictionary (or None) describes."""
    from mlir import ir

    role, tmap = default_role, None
    if attrs is not None:
        d = ir.DictAttr(attrs)
        if "quartet.role" in d:
            role = ir.StringAttr(d["quartet.role"]).value
        if "quartet.tensormap" in d:
            tmap = tensormap_of(d["quartet.tensormap"])
    return KernelArg(role, index, tuple(shape), dtype, tensormap=tmap)
