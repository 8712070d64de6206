"""Targets and backends: which artifact can run where.

A target names the machine code in an artifact: ``sm_90`` / ``sm_90a`` / ``sm_80`` (NVIDIA, run
by the ``cuda`` backend), ``gfx942`` (AMD, the ``hip`` backend) or ``cpu`` (shared libraries run
by the ``cpu`` backend). The rules follow NVIDIA's compatibility promises:

- a cubin for ``sm_XY`` runs on a GPU ``sm_XZ`` with Z >= Y (same major version only);
- an arch-specific cubin (``sm_90a``) runs only on exactly that architecture;
- PTX is compiled by the driver for the GPU at hand, so it runs on any GPU at least as new.
"""

from __future__ import annotations

import re

from quartet.errors import QuartetError

BACKENDS = ("cuda", "hip", "cpu")

#: binary formats each backend can load
BINARY_FORMATS: dict[str, tuple[str, ...]] = {
    "cuda": ("cubin", "ptx", "fatbin"),
    "hip": ("hsaco",),
    "cpu": ("so",),
}

_SM = re.compile(r"^sm_(\d+)(\d)([af]?)$")
_GFX = re.compile(r"^gfx[0-9a-f]{3,4}$")


def backend_of(target: str) -> str | None:
    """The backend that runs ``target``: ``cuda``, ``hip`` or ``cpu``; None if unknown."""
    if _SM.match(target):
        return "cuda"
    if _GFX.match(target):
        return "hip"
    if target == "cpu":
        return "cpu"
    return None


def parse_sm(target: str) -> tuple[int, int, str]:
    """``sm_90a`` -> (9, 0, "a"). The target must be an NVIDIA one."""
    m = _SM.match(target)
    if not m:
        raise QuartetError(f"not an NVIDIA target: {target!r} (expected e.g. sm_90)")
    return int(m.group(1)), int(m.group(2)), m.group(3)


def sm_name(major: int, minor: int) -> str:
    """(9, 0) -> ``sm_90``."""
    return f"sm_{major}{minor}"


def cuda_compatible(target: str, device: str, formats: set[str]) -> bool:
    """Whether kernels built for ``target`` in the given binary formats run on GPU ``device``."""
    t_major, t_minor, t_suffix = parse_sm(target)
    d_major, d_minor, _ = parse_sm(device)
    if formats <= {"ptx"}:
        return (d_major, d_minor) >= (t_major, t_minor)
    if t_suffix:
        return (d_major, d_minor) == (t_major, t_minor)
    return d_major == t_major and d_minor >= t_minor


def check_runnable(
    target: str,
    artifact_backend: str,
    formats: set[str],
    backend: str | None,
    device_arch: str | None,
    location: str | None,
) -> None:
    """Raise a QuartetError when an artifact for ``target`` cannot run on ``backend``/``device_arch``.

    ``backend`` is the runtime backend about to run it (None: the artifact's own);
    ``device_arch`` the device's architecture (``sm_80``...; None: not checked).
    """
    if backend is not None and backend != artifact_backend:
        raise QuartetError(
            f"artifact is built for target {target} (backend {artifact_backend}); "
            f"the {backend} backend cannot run it",
            location,
        )
    if device_arch is None or artifact_backend == "cpu":
        return
    if artifact_backend == "cuda":
        ok = cuda_compatible(target, device_arch, formats)
    else:
        ok = target == device_arch
    if not ok:
        raise QuartetError(
            f"artifact is built for {target} and cannot run on this device ({device_arch}); "
            f"compile it again with --target {device_arch}",
            location,
        )
