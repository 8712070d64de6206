"""Small IR-building helpers for the GEMM kernel generators (``lowering/gemm*.py``).

The kernels are built op by op inside one ``gpu.launch`` body. Index arithmetic goes through
:class:`Emitter`, which folds Python integers before any op is created (a kernel generator knows
most offsets statically, and every op built from Python costs time: the per-kernel compile budget
is 0.5 s), keeps one ``arith.constant`` per value at the top of the launch body (so constants
dominate every nested loop and the kernel outliner sinks them instead of passing them as kernel
parameters), and names the few machine values the kernels need (thread and block ids, the
dynamic shared-memory buffer).

Values are either Python ``int`` (static) or ``mlir.ir.Value`` of ``index`` type unless a helper
says otherwise.
"""

from __future__ import annotations

from typing import Union

from mlir import ir
from mlir.dialects import arith, gpu, llvm, memref

Ix = Union[int, ir.Value]

DYNAMIC = -(2**63)          # ShapedType's dynamic size


def f16() -> ir.Type:
    return ir.F16Type.get()


def bf16() -> ir.Type:
    return ir.BF16Type.get()


def f32() -> ir.Type:
    return ir.F32Type.get()


def i1() -> ir.Type:
    return ir.IntegerType.get_signless(1)


def i32() -> ir.Type:
    return ir.IntegerType.get_signless(32)


def i64() -> ir.Type:
    return ir.IntegerType.get_signless(64)


def index() -> ir.Type:
    return ir.IndexType.get()


def element_type(name: str) -> ir.Type:
    return {"f16": f16, "bf16": bf16, "f32": f32}[name]()


def bytes_of(name: str) -> int:
    return {"f16": 2, "bf16": 2, "f32": 4}[name]


def workgroup() -> ir.Attribute:
    return ir.Attribute.parse("#gpu.address_space<workgroup>")


class Emitter:
    """Builds index arithmetic and common values inside one ``gpu.launch`` body."""

    def __init__(self, body: ir.Block):
        self.body = body
        # Constants go before the first op of the body, whatever is inserted later.
        self._anchor = arith.ConstantOp(index(), 0, ip=ir.InsertionPoint(body))
        self._consts: dict[tuple[str, object], ir.Value] = {("index", 0): self._anchor.result}
        self._smem_base: ir.Value | None = None

    # ---- constants -------------------------------------------------------------------------
    def _const(self, key, make) -> ir.Value:
        value = self._consts.get(key)
        if value is None:
            with ir.InsertionPoint(self._anchor):
                value = make()
            self._consts[key] = value
        return value

    def c(self, v: Ix) -> ir.Value:
        """``v`` as an ``index`` value."""
        if isinstance(v, ir.Value):
            return v
        return self._const(("index", int(v)), lambda: arith.ConstantOp(index(), int(v)).result)

    def ci32(self, v: int) -> ir.Value:
        return self._const(("i32", int(v)), lambda: arith.ConstantOp(i32(), int(v)).result)

    def ci64(self, v: int) -> ir.Value:
        v = int(v)
        if v >= 2**63:          # bit patterns (descriptors) as signed
            v -= 2**64
        return self._const(("i64", v), lambda: arith.ConstantOp(i64(), v).result)

    def cf(self, v: float, ty_name: str = "f32") -> ir.Value:
        ty = element_type(ty_name)
        return self._const((ty_name, float(v)),
                           lambda: arith.ConstantOp(ty, ir.FloatAttr.get(ty, float(v))).result)


    def zero_vector(self, n: int, ty_name: str = "f32") -> ir.Value:
        ty = element_type(ty_name)
        vt = ir.VectorType.get([n], ty)
        return self._const(("zvec", ty_name, n), lambda: arith.ConstantOp(
            vt, ir.DenseElementsAttr.get_splat(vt, ir.FloatAttr.get(ty, 0.0))).result)

    # ---- index arithmetic with folding -------------------------------------------------------
    def add(self, a: Ix, b: Ix) -> Ix:
        if isinstance(a, int) and isinstance(b, int):
            return a + b
        if isinstance(a, int) and a == 0:
            return b
        if isinstance(b, int) and b == 0:
            return a
        return arith.addi(self.c(a), self.c(b))

    def sub(self, a: Ix, b: Ix) -> Ix:
        if isinstance(a, int) and isinstance(b, int):
            return a - b
        if isinstance(b, int) and b == 0:
            return a
        return arith.subi(self.c(a), self.c(b))

    def mul(self, a: Ix, b: Ix) -> Ix:
        if isinstance(a, int) and isinstance(b, int):
            return a * b
        if isinstance(a, int):
            a, b = b, a
        if isinstance(b, int):
            if b == 0:
                return 0
            if b == 1:
                return a
        return arith.muli(self.c(a), self.c(b))

    def div(self, a: Ix, b: int) -> Ix:
        """``a // b`` for a non-negative ``a``."""
        if isinstance(a, int):
            return a // b
        if b == 1:
            return a
        return arith.divui(a, self.c(b))

    def rem(self, a: Ix, b: int) -> Ix:
        """``a % b`` for a non-negative ``a``."""
        if isinstance(a, int):
            return a % b
        if b == 1:
            return 0
        return arith.remui(a, self.c(b))

    def xor(self, a: Ix, b: Ix) -> Ix:
        if isinstance(a, int) and isinstance(b, int):
            return a ^ b
        if isinstance(b, int) and b == 0:
            return a
        if isinstance(a, int) and a == 0:
            return b
        return arith.xori(self.c(a), self.c(b))

    def band(self, a: Ix, b: int) -> Ix:
        if isinstance(a, int):
            return a & b
        return arith.andi(a, self.c(b))

    def shr(self, a: Ix, b: int) -> Ix:
        if isinstance(a, int):
            return a >> b
        if b == 0:
            return a
        return arith.shrui(a, self.c(b))

    def lt(self, a: Ix, b: Ix):
        """``a < b`` as ``i1``, or a Python bool when both are static."""
        if isinstance(a, int) and isinstance(b, int):
            return a < b
        return arith.cmpi(arith.CmpIPredicate.ult, self.c(a), self.c(b))

    def land(self, a, b):
        if a is True:
            return b
        if b is True:
            return a
        if a is False or b is False:
            return False
        return arith.andi(a, b)

    def select(self, cond, a: Ix, b: Ix) -> Ix:
        if cond is True:
            return a
        if cond is False:
            return b
        return arith.select(cond, self.c(a), self.c(b))


    def to_i64(self, a: Ix) -> ir.Value:
        if isinstance(a, int):
            return self.ci64(a)
        return arith.index_cast(i64(), a)

    # ---- machine values -----------------------------------------------------------------------
    def thread_id(self) -> ir.Value:
        return gpu.thread_id(gpu.Dimension.x)

    def block_id(self, dim: str = "x") -> ir.Value:
        return gpu.block_id(getattr(gpu.Dimension, dim))

    def smem(self, byte_offset: Ix, n_elems: int, ty_name: str) -> ir.Value:
        """A 1-D ``memref<n x ty, workgroup>`` view of the dynamic shared memory at an offset."""
        if self._smem_base is None:
            with ir.InsertionPoint(self._anchor):
                dyn = ir.MemRefType.get([DYNAMIC], ir.IntegerType.get_signless(8),
                                        memory_space=workgroup())
                self._smem_base = gpu.dynamic_shared_memory(dyn)
        ty = ir.MemRefType.get([n_elems], element_type(ty_name), memory_space=workgroup())
        return memref.view(ty, self._smem_base, self.c(byte_offset), [])

    def smem_address(self, view: ir.Value) -> ir.Value:
        """The shared-window address of a shared-memory view, as ``i64``."""
        ptr = memref.extract_aligned_pointer_as_index(view)
        return arith.index_cast(i64(), ptr)

    def barrier(self) -> None:
        gpu.barrier()


def flat_view(arg: ir.Value) -> ir.Value:
    """A static identity-layout memref seen as 1-D (``memref.collapse_shape``)."""
    ty = ir.MemRefType(arg.type)
    if ty.rank == 1:
        return arg
    n = 1
    for d in ty.shape:
        n *= d
    out = ir.MemRefType.get([n], ty.element_type, memory_space=ty.memory_space)
    return memref.collapse_shape(out, arg, ir.ArrayAttr.get([
        ir.ArrayAttr.get([ir.IntegerAttr.get(i64(), i) for i in range(ty.rank)])]))


def struct_type(n: int, elem: ir.Type) -> ir.Type:
    return llvm.StructType.get_literal([elem] * n)
