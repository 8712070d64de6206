"""Math that upstream's NVVM lowering gets wrong or refuses, rewritten before it runs (issue 18).

Runs on each outlined ``gpu.module`` of an NVIDIA target (``binary._binaries``), before the
kernel half of ``gpu-lower-to-nvvm-pipeline``:

* ``math.fpowi`` with an exponent that is not ``i32``. ``convert-gpu-to-nvvm`` turns it into a
  call of libdevice's ``__nv_powif(float, int)`` / ``__nv_powi(double, int)`` passing the
  exponent as it is: with torch-mlir's ``i64`` exponent the call's signature does not match the
  declaration, and the H200 computed ``x ** 0``: ``square`` of a vector gave all 1.0, and so did
  ``mse_loss``'s squared difference. The exponent is narrowed to ``i32`` here. A constant (the
  case torch-mlir emits for ``x ** n``) narrows exactly; any other value saturates to the ``i32``
  of the same parity (a float to a power of magnitude 2**31 or more is 0, +-1 or +-inf in f32,
  and in f64 for every base further than 2**-31 from +-1).
* ``arith.remf``. ``convert-arith-to-llvm`` runs before ``convert-gpu-to-nvvm`` (as in
  upstream's pipeline) and makes it ``llvm.frem``, which the NVVM conversion marks illegal
  (``torch.remainder`` / ``fmod`` did not build). It becomes a call of libdevice's C ``fmod``
  (``__nv_fmodf`` / ``__nv_fmod``, what ``arith.remf`` means), one call per element of a
  vector; f16 and bf16 go through f32, where fmod is exact.

Assumes: the module holds ``gpu.module`` ops whose functions are not yet lowered to LLVM.
"""

from __future__ import annotations

from mlir import ir
from mlir.dialects import arith, llvm, vector

_I32_MIN, _I32_MAX = -(1 << 31), (1 << 31) - 1


def legalize(module: ir.Module) -> None:
    """Rewrite the ops above in every ``gpu.module`` of ``module``, in place."""
    found: list[ir.Operation] = []

    def visit(op):
        if op.operation.name in ("math.fpowi", "arith.remf"):
            found.append(op.operation)
        return ir.WalkResult.ADVANCE

    module.operation.walk(visit)
    if not found:
        return
    with module.context, ir.Location.unknown():
        for op in found:
            if op.name == "math.fpowi":
                _narrow_exponent(op)
            else:
                _remf_to_fmod(op)


def _element(t: ir.Type) -> ir.Type:
    return ir.ShapedType(t).element_type if isinstance(t, ir.ShapedType) else t


def _like(t: ir.Type, element: ir.Type) -> ir.Type:
    """``t``'s shape (a vector or a scalar) with ``element``."""
    if isinstance(t, ir.VectorType):
        return ir.VectorType.get(list(ir.VectorType(t).shape), element)
    return element


def _splat(t: ir.Type, value: int) -> ir.Value:
    element = _element(t)
    if isinstance(t, ir.VectorType):
        attr = ir.DenseElementsAttr.get_splat(t, ir.IntegerAttr.get(element, value))
        return arith.constant(t, attr)
    return arith.constant(t, ir.IntegerAttr.get(element, value))


def _constant_value(v: ir.Value) -> int | None:
    owner = v.owner
    if isinstance(owner, ir.Block) or owner.operation.name != "arith.constant":
        return None
    attr = owner.operation.attributes["value"]
    if isinstance(attr, ir.IntegerAttr):
        return ir.IntegerAttr(attr).value
    if isinstance(attr, ir.DenseIntElementsAttr) and ir.DenseElementsAttr(attr).is_splat:
        return ir.IntegerAttr(ir.DenseElementsAttr(attr).get_splat_value()).value
    return None


def _narrow_exponent(op: ir.Operation) -> None:
    base, exponent = op.operands
    etype = _element(exponent.type)
    if ir.IntegerType(etype).width == 32:
        return
    i32 = _like(exponent.type, ir.IntegerType.get_signless(32))
    with ir.InsertionPoint(op), op.location:
        known = _constant_value(exponent)
        if known is not None:
            narrow = _splat(i32, max(_I32_MIN + (known & 1), min(_I32_MAX - 1 + (known & 1),
                                                                  known)))
        else:
            narrow = _saturate(exponent, i32)
    op.operands[1] = narrow


def _saturate(exponent: ir.Value, i32: ir.Type) -> ir.Value:
    """``exponent`` clamped to the i32 range, keeping its parity, then truncated."""
    t = exponent.type
    odd = arith.andi(exponent, _splat(t, 1))
    high = arith.addi(_splat(t, _I32_MAX - 1), odd)
    low = arith.addi(_splat(t, _I32_MIN), odd)
    clamped = arith.maxsi(arith.minsi(exponent, high), low)
    return arith.trunci(i32, clamped)


_FMOD = {"f32": "__nv_fmodf", "f64": "__nv_fmod"}


def _remf_to_fmod(op: ir.Operation) -> None:
    lhs, rhs = op.operands
    t = op.results[0].type
    element = _element(t)
    wide = element if str(element) in _FMOD else ir.F32Type.get()
    callee = _declare(op, _FMOD[str(wide)], wide)
    with ir.InsertionPoint(op), op.location:
        if isinstance(t, ir.VectorType):
            shape = list(ir.VectorType(t).shape)
            result = arith.constant(t, ir.DenseElementsAttr.get_splat(
                t, ir.FloatAttr.get(element, 0.0)))
            for index in _indices(shape):
                a = vector.extract(lhs, [], index)
                b = vector.extract(rhs, [], index)
                result = vector.insert(_fmod(a, b, element, wide, callee), result, [], index)
        else:
            result = _fmod(lhs, rhs, element, wide, callee)
    op.results[0].replace_all_uses_with(result)
    op.erase()


def _fmod(a: ir.Value, b: ir.Value, element: ir.Type, wide: ir.Type, callee: str) -> ir.Value:
    if element != wide:
        a, b = arith.extf(wide, a), arith.extf(wide, b)
    r = llvm.CallOp(wide, [a, b], [], [], callee=ir.FlatSymbolRefAttr.get(callee)).result
    return arith.truncf(element, r) if element != wide else r


def _indices(shape: list[int]):
    if not shape:
        yield []
        return
    for i in range(shape[0]):
        for rest in _indices(shape[1:]):
            yield [i] + rest


def _declare(op: ir.Operation, name: str, t: ir.Type) -> str:
    """Declare ``t name(t, t)`` in the ``gpu.module`` holding ``op`` (once)."""
    parent = op.parent
    while parent.name != "gpu.module":
        parent = parent.parent
    body = parent.regions[0].blocks[0]
    for existing in body.operations:
        if existing.operation.name == "llvm.func" and \
                ir.StringAttr(existing.operation.attributes["sym_name"]).value == name:
            return name
    with ir.InsertionPoint.at_block_begin(body), ir.Location.unknown():
        llvm.LLVMFuncOp(name, ir.TypeAttr.get(ir.Type.parse(f"!llvm.func<{t}({t}, {t})>")))
    return name
