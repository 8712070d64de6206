"""The default target ``auto``: the visible GPU's architecture, else ``cpu`` (issue 15, item 1).

``quartet.compile``, ``quartet-compile`` (and its ``--emit``) and the torch.compile backend take
``target="auto"`` by default, so that a first try compiles for the machine it runs on instead
of for a GPU that may not be there. :func:`resolve_target` turns ``auto`` into a Quartet target
and says why, in one line that the callers print:

- for a command line tool (no tensors to look at): the first visible GPU when it is a Quartet
  target (or runs one: a cubin for ``sm_80`` runs on ``sm_86`` and ``sm_89``, NVIDIA's
  same-major rule in ``runtime/targets.py``), else ``cpu``;
- for the Python API, when the example inputs are tensors on a GPU: that GPU's architecture;
  tensors on the CPU (or numpy arrays) give ``cpu``, like ``torch.compile``, where code runs
  where the data is. A compiled module is then called with tensors on the same device as the
  example inputs.

The GPU is found through torch (``torch.cuda``, CUDA or ROCm builds) or, with the CPU build of
torch that the compiler pins, through the CUDA driver (``cuda-bindings``); with neither, there
is no visible GPU. Any other target name is returned as given (checked later against the
hardware table). Imports no MLIR.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

AUTO = "auto"


@dataclass(frozen=True)
class Gpu:
    arch: str   # sm_90, gfx942, ...
    name: str   # "NVIDIA H200"


@dataclass(frozen=True)
class Choice:
    """A resolved target and the reason for it (printed as ``target auto: cpu (reason)``)."""

    target: str
    reason: str

    def line(self) -> str:
        return f"target auto: {self.target} ({self.reason})"


def known_targets() -> tuple[str, ...]:
    from quartet.runtime.targets import TARGETS

    return tuple(TARGETS)


def target_for_gpu(arch: str) -> str | None:
    """The Quartet target whose code runs on a GPU of architecture ``arch`` (None: none does).

    The exact architecture when Quartet has it; otherwise, for NVIDIA, the newest known target
    of the same major version and an older or equal minor (cubins run there)."""
    from quartet.runtime.targets import backend_of, cuda_compatible

    known = known_targets()
    if arch in known:
        return arch
    if backend_of(arch) != "cuda":
        return None
    runs = [t for t in known if backend_of(t) == "cuda" and cuda_compatible(t, arch, {"cubin"})]
    return max(runs, key=lambda t: int(t[3:].rstrip("af")), default=None)


def visible_gpu(index: int = 0) -> Gpu | None:
    """GPU ``index`` as torch or the CUDA driver sees it, or None."""
    return _gpu_from_torch(index) or _gpu_from_driver(index)


def _gpu_from_torch(index: int) -> Gpu | None:
    try:
        import torch
    except ImportError:
        return None
    try:
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            return None
        props = torch.cuda.get_device_properties(index)
        if getattr(torch.version, "hip", None):
            arch = str(getattr(props, "gcnArchName", "")).split(":")[0]
        else:
            arch = f"sm_{props.major}{props.minor}"
        return Gpu(arch, props.name) if arch else None
    except Exception:   # a broken CUDA install reads as "no GPU", never as a crash
        return None


def _gpu_from_driver(index: int) -> Gpu | None:
    try:
        from cuda.bindings import driver as d
    except ImportError:
        return None
    try:
        ok = d.CUresult.CUDA_SUCCESS
        if d.cuInit(0)[0] != ok:
            return None
        err, count = d.cuDeviceGetCount()
        if err != ok or index >= count:
            return None
        err, dev = d.cuDeviceGet(index)
        attr = d.CUdevice_attribute
        e1, major = d.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev)
        e2, minor = d.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev)
        e3, raw = d.cuDeviceGetName(64, dev)
        if err != ok or e1 != ok or e2 != ok:
            return None
        name = raw.split(b"\0")[0].decode(errors="replace") if e3 == ok else "NVIDIA GPU"
        return Gpu(f"sm_{major}{minor}", name)
    except Exception:
        return None


def _for_gpu(gpu: Gpu, what: str) -> Choice:
    target = target_for_gpu(gpu.arch)
    if target is None:
        gpus = ", ".join(t for t in known_targets() if t != "cpu")
        return Choice("cpu", f"{what} {gpu.name} ({gpu.arch}) is not a Quartet target "
                             f"(GPU targets: {gpus})")
    same = "" if target == gpu.arch else f", which runs {target} code"
    return Choice(target, f"{what} {gpu.name} ({gpu.arch}{same})")


def choose_for_machine() -> Choice:
    """``auto`` for a tool: the first visible GPU, else cpu."""
    gpu = visible_gpu()
    if gpu is None:
        return Choice("cpu", "no GPU is visible")
    return _for_gpu(gpu, "the visible GPU,")


def choose_for_tensors(tensors) -> Choice:
    """``auto`` for the Python API: where the example inputs are."""
    devices = {getattr(getattr(t, "device", None), "type", "cpu") for t in tensors}
    if "cuda" not in devices:
        return Choice("cpu", "the example inputs are on the CPU; give CUDA tensors, or "
                             "target='sm_90', to compile for a GPU")
    index = next(t.device.index for t in tensors if getattr(t, "device", None) is not None
                 and t.device.type == "cuda")
    gpu = visible_gpu(index or 0)
    if gpu is None:
        raise _error(f"the example inputs are on cuda:{index or 0}, but torch reports no "
                     f"such GPU")
    choice = _for_gpu(gpu, f"the example inputs are on cuda:{index or 0},")
    if choice.target == "cpu":
        raise _error(f"{choice.reason}: compile with CPU tensors, or name a target")
    return choice


def _error(message: str):
    from quartet.errors import QuartetError

    return QuartetError(message)


_ANNOUNCED: set[Choice] = set()


def resolve_target(target: str, tensors=None, *, announce: bool = True) -> str:
    """``target`` itself, or what ``auto`` means here (printed to stderr once per process and
    choice when ``announce``). ``tensors``: the example inputs (Python API), or None (tools)."""
    if target != AUTO:
        return target
    choice = choose_for_machine() if tensors is None else choose_for_tensors(tensors)
    if announce and choice not in _ANNOUNCED:
        _ANNOUNCED.add(choice)
        print(f"quartet: {choice.line()}", file=sys.stderr)
    return choice.target
