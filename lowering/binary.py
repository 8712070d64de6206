"""The shared back end: ``func.func``s holding ``gpu.launch`` on memrefs -> native kernels.

Every kernel builder of Quartet (SIMT, GEMM, persistent) ends in the same form, the one that
transform ``gpu.map_forall_to_blocks {generate_gpu_launch}`` produces: functions on memref
arguments whose bodies hold ``gpu.launch`` ops with constant grid and block sizes. This module
takes that form to binaries in a few named stages, each one upstream pass pipeline (the
staged-driver shape of Triton's ``make_ttir``/``make_llir``/``make_ptx``/``make_cubin``):

* ``outline``  - ``gpu-kernel-outlining``: one ``gpu.module`` per launch; the launch becomes a
  ``gpu.launch_func`` whose constant grid / block / dynamic shared-memory operands are read here.
* NVIDIA (``sm_90``, ``sm_80``): ``nvvm-attach-target`` (``+ptx80``), the kernel half of
  ``gpu-lower-to-nvvm-pipeline`` nested on ``gpu.module`` with the bare-pointer calling
  convention for kernels, then ``gpu-module-to-binary{format=bin toolkit=...}`` with the ptxas
  (and libdevice) of the pip package ``nvidia-cuda-nvcc``; ``format=isa`` gives the PTX.
* AMD (``gfx942``): ``lowering/rocm.py`` - rocdl, LLVM IR, llvmlite, ``ld.lld`` -> hsaco.

The result is one :class:`~quartet.lowering.kernel.KernelSpec` per launch, its arguments in
bare-pointer order (the kernel's operands after outlining). Binaries are cached in memory by a
hash of the kernel module text and the options (Triton's content-keyed cache).

Assumes: grid, block and dynamic shared-memory sizes are constants; the kernels read only
memref arguments of the enclosing function (constants are sunk into the kernel by outlining).
Which function argument is an input or an output is read from the ``quartet.role`` argument
attribute (``"input"``/``"output"``) when present, else from ``num_inputs``. A kernel function
may name the chip its binary needs in ``quartet.chip`` (``sm_90a`` for Hopper ``wgmma``).
"""

from __future__ import annotations

import glob
import hashlib
import os
import subprocess
import tempfile
from dataclasses import dataclass

from mlir import ir
from mlir.dialects import gpu
from mlir.passmanager import PassManager

from quartet.errors import QuartetError, location_of
from quartet.runtime import targets
from quartet.runtime.dtypes import mlir_name_to_dtype

from . import device_math
from .kernel import KernelArg, KernelSpec


@dataclass(frozen=True)
class Target:
    """A code-generation target: its name, its back end and the chip options of that back end."""

    name: str          # "sm_90"
    backend: str       # "nvvm" | "rocdl"
    chip: str          # what the attach-target pass takes
    features: str = ""
    warp_size: int = 32

    @property
    def is_nvidia(self) -> bool:
        return self.backend == "nvvm"


def get_target(name, location: str | None = None) -> Target:
    """The code-generation :class:`Target` of a target name or :class:`Chip` (from the target
    table, ``runtime/targets.py``); a :class:`QuartetError` for an unknown or non-GPU target."""
    if isinstance(name, Target):
        return name
    chip = targets.get(name, location=location)
    if not chip.is_gpu:
        raise QuartetError(f"'{chip.target}' is not a GPU target (known: "
                           f"{', '.join(targets.GPU_TARGETS)})", location)
    return Target(chip.target, "nvvm" if chip.kind == "cuda" else "rocdl", chip.isa,
                  chip.isa_features, chip.warp_size)


# ---------------------------------------------------------------------------------------------
# Tools: the CUDA toolkit of nvidia-cuda-nvcc (llvmlite and ld.lld: rocm.py)


def find_cuda_toolkit(toolkit: str | None = None) -> str:
    """The folder holding ``bin/ptxas`` (and ``nvvm/libdevice``): ``toolkit`` if given, else
    ``$QUARTET_CUDA_TOOLKIT``, else the ``nvidia-cuda-nvcc`` pip package."""
    candidates = []
    if toolkit is not None:
        candidates = [toolkit]
    elif os.environ.get("QUARTET_CUDA_TOOLKIT"):
        candidates = [os.environ["QUARTET_CUDA_TOOLKIT"]]
    else:
        try:
            import nvidia  # namespace package of the NVIDIA pip wheels
            roots = list(getattr(nvidia, "__path__", []))
        except ImportError:
            roots = []
        for root in roots:
            # CUDA 13 wheels: nvidia/cu13/bin/ptxas; CUDA 12 wheels: nvidia/cuda_nvcc/bin/ptxas.
            candidates += sorted(glob.glob(os.path.join(root, "cu*"))) + \
                [os.path.join(root, "cuda_nvcc")]
    for folder in candidates:
        if os.access(os.path.join(folder, "bin", "ptxas"), os.X_OK):
            return os.path.abspath(folder)
    where = f" in '{toolkit}'" if toolkit is not None else ""
    raise QuartetError(f"ptxas not found{where}: the NVIDIA back end needs it to assemble PTX "
                       f"into a cubin; install it with `pip install nvidia-cuda-nvcc`")


# ---------------------------------------------------------------------------------------------
# Stage pipelines (pass lists as data)

# The kernel half of upstream gpu-lower-to-nvvm-pipeline (GPUToNVVMPipeline.cpp), nested on
# gpu.module so that host functions are left as they are.
_KERNEL_PREP = ["convert-vector-to-scf", "convert-scf-to-cf", "expand-strided-metadata",
                "lower-affine", "convert-arith-to-llvm", "convert-index-to-llvm",
                "canonicalize", "cse"]


def _nvvm_pipeline(target: Target, opt_level: int, fast_math: bool) -> str:
    # fast_math: libdevice's fast paths (__nvvm_reflect: approximate division, square root and
    # exponentials, fp32 denormals flushed to zero). Memory-bound kernels gain little speed from
    # it, but their code shrinks and ptxas runs ~30% faster (the 0.5 s compile budget).
    fast = " fast=true ftz=true" if fast_math else ""
    nested = ["convert-nvgpu-to-nvvm"] + _KERNEL_PREP[:2] + ["convert-nvvm-to-llvm"] + \
        _KERNEL_PREP[2:] + ["convert-gpu-to-nvvm{use-bare-ptr-memref-call-conv=1}",
                            "canonicalize", "cse", "reconcile-unrealized-casts"]
    return (f"builtin.module(nvvm-attach-target{{chip={target.chip} features={target.features} "
            f"O={opt_level}{fast}}}, gpu.module({','.join(nested)}))")


# ---------------------------------------------------------------------------------------------
# Launch information


@dataclass
class _Launch:
    func: str
    kernel_module: str
    kernel: str
    func_args: tuple
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    shared_bytes: int
    args: tuple[KernelArg, ...]
    location: str | None
    chip: str | None = None         # the function's ``quartet.chip`` (``sm_90a`` for wgmma)


def _constant(value: ir.Value, what: str, where) -> int:
    owner = value.owner
    if isinstance(owner, ir.Operation) or hasattr(owner, "name"):
        op = owner.operation if hasattr(owner, "operation") else owner
        if op.name == "arith.constant":
            return ir.IntegerAttr(op.attributes["value"]).value
    raise QuartetError(f"'gpu.launch' op {what} must be a constant", location_of(where))


def _arg_roles(fn, num_inputs: int | None) -> list[tuple[str, int]]:
    """(role, index) of each argument of ``fn``."""
    n = len(fn.arguments)
    roles = []
    attrs = fn.attributes["arg_attrs"] if "arg_attrs" in fn.attributes else None
    for i in range(n):
        role = None
        if attrs is not None:
            d = ir.DictAttr(ir.ArrayAttr(attrs)[i])
            if "quartet.role" in d:
                role = ir.StringAttr(d["quartet.role"]).value
        if role is None:
            k = num_inputs if num_inputs is not None else n - 1
            role = "input" if i < k else "output"
        roles.append(role)
    counters = {"input": 0, "output": 0}
    out = []
    for role in roles:
        out.append((role, counters[role]))
        counters[role] += 1
    return out


def _dtype_name(t: ir.Type) -> str:
    return mlir_name_to_dtype(str(t))


def _launches(module: ir.Module, num_inputs: int | None) -> list[_Launch]:
    found: list[_Launch] = []
    for fn in module.body.operations:
        if fn.operation.name != "func.func":
            continue
        fn = fn.opview
        roles = _arg_roles(fn, num_inputs)
        chip = ir.StringAttr(fn.attributes["quartet.chip"]).value \
            if "quartet.chip" in fn.attributes else None
        args_of = {}
        for i, a in enumerate(fn.arguments):
            args_of[a] = i

        ops = []

        def visit(op, ops=ops):
            if op.operation.name == "gpu.launch_func":
                ops.append(op.operation)
            return ir.WalkResult.ADVANCE

        fn.operation.walk(visit)
        for op in ops:   # (an exception raised inside a walk comes out as a RuntimeError)
            lf = op.opview
            grid = tuple(_constant(v, "grid size", op) for v in
                         (lf.gridSizeX, lf.gridSizeY, lf.gridSizeZ))
            block = tuple(_constant(v, "block size", op) for v in
                          (lf.blockSizeX, lf.blockSizeY, lf.blockSizeZ))
            smem = lf.dynamicSharedMemorySize
            shared = _constant(smem, "dynamic shared memory size", op) \
                if smem is not None else 0
            kargs, numbers = [], []
            for v in lf.kernelOperands:
                if v not in args_of or not isinstance(v.type, ir.MemRefType):
                    raise QuartetError("a kernel may only read memref arguments of its "
                                       f"function (got a value of type {v.type})",
                                       location_of(op))
                role, index = roles[args_of[v]]
                numbers.append(args_of[v])
                mt = ir.MemRefType(v.type)
                kargs.append(KernelArg(role, index, tuple(mt.shape),
                                       _dtype_name(mt.element_type)))
            path = list(ir.SymbolRefAttr(lf.kernel).value)   # [gpu.module, gpu.func]
            root, leaf = path[0], path[-1]
            found.append(_Launch(ir.StringAttr(fn.sym_name).value, root, leaf, tuple(numbers),
                                 grid, block, shared, tuple(kargs), location_of(op), chip))
    return found


# ---------------------------------------------------------------------------------------------
# The driver


_CACHE: dict[str, bytes] = {}


def outline(module) -> ir.Module:
    """A copy of ``module`` in a private Context, every ``gpu.launch`` outlined into a
    ``gpu.module`` kernel. (A private Context: pass managers cannot run in the Context of a
    running pass, and quartet-opt calls this from passes.)"""
    op = module.operation if hasattr(module, "operation") else module
    from quartet.dialects import context as quartet_context   # the module may hold tiles too

    # The generic form: some custom assembly formats do not read back what they print (MLIR
    # 22.1's ``nvvm.barrier`` with a thread count swallows the location alias after it).
    text = op.get_asm(enable_debug_info=True, print_generic_op_form=True)
    context = quartet_context()
    with context, ir.Location.unknown():
        copy = ir.Module.parse(text)
        _pin_arguments(copy)
        _run(copy, "builtin.module(gpu-launch-sink-index-computations, gpu-kernel-outlining)",
             "kernel outlining")
    return copy


def _pin_arguments(module: ir.Module) -> None:
    """Make every kernel take every memref argument of its function, in the function's order.

    ``gpu-kernel-outlining`` gives a kernel the values its body reads, in order of first use, so
    a builder's kernel that never reads one input (the init of a result nobody uses) would take
    one argument fewer than the tile has inputs. A dead use of every memref argument at the top
    of each launch body (erased after outlining by canonicalization) keeps the one convention of
    :class:`KernelSpec`: the function's memref arguments, in order."""
    from mlir.dialects import memref

    for fn in module.body.operations:
        if fn.operation.name != "func.func" or not len(fn.regions[0].blocks):
            continue
        args = [a for a in fn.regions[0].blocks[0].arguments if isinstance(a.type, ir.MemRefType)]
        if not args:
            continue
        launches = []

        def visit(op, launches=launches):
            if op.operation.name == "gpu.launch":
                launches.append(op.operation)
                return ir.WalkResult.SKIP
            return ir.WalkResult.ADVANCE

        fn.operation.walk(visit, ir.WalkOrder.PRE_ORDER)
        for launch in launches:
            body = launch.regions[0].blocks[0]
            with ir.InsertionPoint.at_block_begin(body), launch.location:
                for a in args:
                    memref.extract_aligned_pointer_as_index(a)


def compile_launch_module(module: ir.Module, target, *, emit: str = "bin",
                          toolkit: str | None = None, num_inputs: int | None = None,
                          name_prefix: str = "", opt_level: int = 3,
                          fast_math: bool = True) -> list[KernelSpec]:
    """Compile every ``gpu.launch`` of ``module`` for ``target``; one KernelSpec each.

    ``emit``: ``"bin"`` (cubin / hsaco), ``"ptx"`` (NVIDIA: the PTX text as bytes, also put in
    ``notes["ptx"]``) or ``"obj"`` (AMD: the relocatable ELF object, before linking).
    ``module`` is not changed.
    """
    target = get_target(target)
    if emit not in ("bin", "ptx", "obj"):
        raise QuartetError(f"unknown emit kind '{emit}' (bin, ptx, obj)")
    if emit == "ptx" and not target.is_nvidia:
        raise QuartetError(f"PTX exists only for NVIDIA targets, not '{target.name}'")
    if emit == "obj" and target.is_nvidia:
        raise QuartetError(f"'obj' is the AMDGPU object; use 'bin' or 'ptx' for '{target.name}'")
    tk = find_cuda_toolkit(toolkit) if target.is_nvidia else None
    outlined = outline(module)
    launches = _launches(outlined, num_inputs)
    if not launches:
        raise QuartetError("no 'gpu.launch' to compile in the module")
    chips = {launch.kernel_module: _chip_target(target, launch.chip) for launch in launches}
    binaries = _binaries(outlined, target, emit, tk, opt_level, fast_math, chips)
    specs = []
    for launch in launches:
        blob = binaries[launch.kernel_module]
        notes = {"func": launch.func, "func_args": launch.func_args}
        if emit == "ptx":
            notes["ptx"] = blob.decode()
        specs.append(KernelSpec(name=f"{name_prefix}{launch.kernel_module}",
                                entry=launch.kernel, target=target.name, binary=blob,
                                grid=launch.grid, block=launch.block,
                                shared_bytes=launch.shared_bytes, args=launch.args,
                                notes=notes))
    return specs


def _chip_target(target: Target, chip: str | None) -> Target:
    """``target`` built for ``chip`` when a kernel function names one: ``sm_90a`` (wgmma,
    setmaxnreg) is ``sm_90`` plus architecture-specific instructions, so its cubin runs on the
    same GPUs; any other chip of another family is refused."""
    if chip is None or chip == target.chip:
        return target
    if not target.is_nvidia or chip.rstrip("a") != target.chip:
        raise QuartetError(f"a kernel built for chip '{chip}' cannot run on target "
                           f"'{target.name}'")
    return Target(target.name, target.backend, chip, target.features, target.warp_size)


def _binaries(outlined: ir.Module, target: Target, emit: str, toolkit: str | None,
              opt_level: int, fast_math: bool,
              chips: dict[str, Target] | None = None) -> dict[str, bytes]:
    """gpu.module name -> binary bytes, for every gpu.module of ``outlined`` (built for the
    chip ``chips`` names for it, else for ``target``)."""
    context = outlined.context
    result: dict[str, bytes] = {}
    with context, ir.Location.unknown():
        for op in outlined.body.operations:
            if op.operation.name != "gpu.module":
                continue
            name = ir.StringAttr(op.operation.attributes["sym_name"]).value
            tgt = (chips or {}).get(name, target)
            single = ir.Module.create()
            single.operation.attributes["gpu.container_module"] = ir.UnitAttr.get()
            with ir.InsertionPoint(single.body):
                op.operation.clone()
            if tgt.is_nvidia:
                device_math.legalize(single)
            text = str(single)
            key = hashlib.sha256(
                f"{tgt}|{emit}|{toolkit}|{opt_level}|{fast_math}|{text}".encode()).hexdigest()
            if key not in _CACHE:
                if tgt.is_nvidia:
                    _CACHE[key] = _nvvm_binary(single, tgt, emit, toolkit, opt_level,
                                               fast_math)
                else:
                    from . import rocm
                    _CACHE[key] = rocm.rocdl_binary(single, tgt, emit, opt_level)
            result[name] = _CACHE[key]
    return result


def _run(module: ir.Module, pipeline: str, stage: str) -> None:
    """Run an upstream pipeline; failures become one QuartetError naming the stage."""
    messages: list[tuple[str, str]] = []

    def on(diag):
        if diag.severity == ir.DiagnosticSeverity.ERROR:
            messages.append((str(diag.location), str(diag.message)))
        return True

    handler = module.context.attach_diagnostic_handler(on)
    try:
        PassManager.parse(pipeline, module.context).run(module.operation)
    except ir.MLIRError as e:
        diags = getattr(e, "error_diagnostics", None) or []
        if diags:
            d = diags[0]
            raise QuartetError(f"{stage} failed: {d.message.splitlines()[0]}",
                               location_of(d.location)) from None
        if messages:
            loc, msg = messages[0]
            raise QuartetError(f"{stage} failed: {msg.splitlines()[0]}",
                               location_of(loc)) from None
        raise QuartetError(f"{stage} failed: {str(e).splitlines()[0]}") from None
    finally:
        handler.detach()


def _nvvm_binary(single: ir.Module, target: Target, emit: str, toolkit: str,
                 opt_level: int, fast_math: bool) -> bytes:
    _run(single, _nvvm_pipeline(target, opt_level, fast_math),
         f"lowering to NVVM ({target.name})")
    fmt = "isa" if emit == "ptx" else "bin"
    _run(single, f"builtin.module(gpu-module-to-binary{{format={fmt} toolkit={toolkit}}})",
         f"{'PTX generation' if fmt == 'isa' else 'ptxas'} ({target.name})")
    binary = next(o for o in single.body.operations if o.operation.name == "gpu.binary")
    return bytes(gpu.ObjectAttr(binary.opview.objects[0]).object)


# ---------------------------------------------------------------------------------------------
# Checks of the binaries (used by the tests and by --emit checks)


def ptxas_check(ptx: str, chip: str, toolkit: str | None = None) -> str:
    """Assemble ``ptx`` with ptxas for ``chip``; return its ``-v`` resource report, or raise."""
    tk = find_cuda_toolkit(toolkit)
    with tempfile.TemporaryDirectory(prefix="quartet-ptxas-") as tmp:
        src = os.path.join(tmp, "kernel.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        done = subprocess.run([os.path.join(tk, "bin", "ptxas"), "-v", f"-arch={chip}", src,
                               "-o", os.path.join(tmp, "kernel.cubin")],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise QuartetError(f"ptxas rejected the PTX: {done.stderr.strip()}")
        return done.stderr


EM_CUDA = 190
EM_AMDGPU = 224
EF_AMDGPU_MACH = {"gfx942": 0x04C, "gfx90a": 0x03F, "gfx908": 0x030}


def elf_header(blob: bytes) -> dict:
    """e_type, e_machine and e_flags of a little-endian ELF64 file."""
    import struct

    if blob[:4] != b"\x7fELF" or blob[4] != 2:
        raise QuartetError("not an ELF64 file")
    e_type, e_machine = struct.unpack_from("<HH", blob, 16)
    (e_flags,) = struct.unpack_from("<I", blob, 48)
    return {"type": e_type, "machine": e_machine, "flags": e_flags, "osabi": blob[7]}


def cubin_resources(blob: bytes, entry: str) -> dict:
    """Registers per thread and static shared memory of kernel ``entry`` in a cubin, read from
    the ELF as ``cuobjdump -res-usage`` does: the register count is the ``EIATTR_REGCOUNT``
    (0x2f) attribute of the kernel's symbol in ``.nv.info``, the static shared memory the size
    of ``.nv.shared.<entry>``. Empty for anything but an NVIDIA cubin."""
    import struct

    if blob[:4] != b"\x7fELF" or blob[4] != 2 or elf_header(blob)["machine"] != EM_CUDA:
        return {}
    shoff, = struct.unpack_from("<Q", blob, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", blob, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", blob, shoff + i * shentsize)
                for i in range(shnum)]

    def cstr(table_offset, index):
        start = table_offset + index
        return blob[start:blob.index(b"\0", start)].decode(errors="replace")

    names = {cstr(sections[shstrndx][4], sec[0]): sec for sec in sections}
    out = {}
    if f".nv.shared.{entry}" in names:
        out["static_shared"] = names[f".nv.shared.{entry}"][5]
    symtab, strtab, info = names.get(".symtab"), names.get(".strtab"), names.get(".nv.info")
    if symtab is None or strtab is None or info is None:
        return out
    symbol = None
    for k in range(symtab[5] // 24):
        name_index, = struct.unpack_from("<I", blob, symtab[4] + 24 * k)
        if cstr(strtab[4], name_index) == entry:
            symbol = k
    pos, end = info[4], info[4] + info[5]
    while pos + 4 <= end:
        fmt, attr, size = blob[pos], blob[pos + 1], struct.unpack_from("<H", blob, pos + 2)[0]
        if fmt != 0x04:                 # EIFMT_HVAL/BVAL/NVAL: the value is in the header
            pos += 4
            continue
        if attr == 0x2F and size == 8:   # EIATTR_REGCOUNT: (symbol, registers)
            sym, regs = struct.unpack_from("<II", blob, pos + 4)
            if sym == symbol:
                out["registers"] = regs
        pos += 4 + size
    return out
