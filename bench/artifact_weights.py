"""Carry large weights as a seed: strip them from an artifact here, rebuild them byte-exact there.

The device tool carries at most 64 MiB (the repository included); BERT-base's fp16 weights alone
are about 170 MB.  The benchmark's weights all come from :func:`bench.suite.init_parameters`
(NumPy PCG64 from a seed, rounded once to the dtype), so the GPU machine can make the same bytes
again.  This module works on the artifact format of ``runtime/FORMAT.md`` (``manifest.json``
with ``weights[]``: ``file``, ``offset``, ``size``; ``files[]``: ``name``, ``size``,
``sha256``) and nothing else of it:

- :func:`strip` (build step, here): for every weight file of at least ``keep_below`` bytes,
  match each weight's bytes to a parameter or buffer of the module that was compiled (as stored,
  or transposed for 2-D tensors), check that the bytes no weight covers are zero, then delete
  the file and write ``bench_weights.json`` saying how to rebuild it.  Weights of at most
  ``INLINE_MAX`` bytes that match no parameter (constants the compiler made) are written into
  the sidecar as they are.  A file with any other byte that cannot be rebuilt is kept as it is.
- :func:`restore` (run step, on the GPU machine): copy the artifact to a scratch folder and
  rebuild each stripped file there from the same workload and seed, checking every weight's
  SHA-256 and the whole file's SHA-256 against the recorded ones; the result is an artifact
  byte-identical to the one the compiler wrote, which ``quartet.runtime.load`` reads as usual.

No runtime API is needed for this: the runtime loads the rebuilt files like any others.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch

SIDECAR = "bench_weights.json"
KEEP_BELOW = 1 << 20  # weight files smaller than this stay in the artifact
INLINE_MAX = 1 << 16  # a small weight no parameter gives (a constant) is kept in the sidecar


def _sha(data: bytes | bytearray | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def tensor_bytes(t: torch.Tensor) -> bytes:
    """The bytes of ``t`` in row-major order, whatever its dtype (bf16 included)."""
    t = t.detach().to("cpu").contiguous()
    return t.reshape(-1).view(torch.uint8).numpy().tobytes()


def _candidates(module: torch.nn.Module) -> dict[str, tuple[str, str]]:
    """SHA-256 of every parameter/buffer (and of every 2-D one transposed) -> (name, transform)."""
    index: dict[str, tuple[str, str]] = {}
    for name, t in list(module.named_parameters()) + list(module.named_buffers()):
        index.setdefault(_sha(tensor_bytes(t)), (name, "none"))
        if t.ndim == 2:
            index.setdefault(_sha(tensor_bytes(t.t())), (name, "transpose"))
    return index


def _tensor_of(module: torch.nn.Module, name: str, transform: str) -> torch.Tensor:
    tensors = dict(module.named_parameters())
    tensors.update(dict(module.named_buffers()))
    t = tensors[name]
    return t.t() if transform == "transpose" else t


def strip(artifact: Path, module: torch.nn.Module, *, workload: str, seed: int, form: str,
          keep_below: int = KEEP_BELOW) -> dict:
    """Remove the weight files of ``artifact`` that ``module``'s parameters rebuild exactly.

    Returns ``{"stripped": [file...], "kept": {file: reason}, "stripped_bytes": n}`` and writes
    the sidecar when anything was stripped.  An artifact without ``manifest.json`` or without
    ``weights`` is left alone.
    """
    artifact = Path(artifact)
    report: dict = {"stripped": [], "kept": {}, "stripped_bytes": 0}
    mpath = artifact / "manifest.json"
    if not mpath.is_file():
        report["kept"]["*"] = "no manifest.json"
        return report
    manifest = json.loads(mpath.read_text())
    weights = manifest.get("weights") or []
    by_file: dict[str, list[dict]] = {}
    for w in weights:
        by_file.setdefault(w["file"], []).append(w)
    index = _candidates(module) if by_file else {}
    files_json = []
    for fname, ws in sorted(by_file.items()):
        fpath = artifact / fname
        if not fpath.is_file():
            report["kept"][fname] = "file missing"
            continue
        data = fpath.read_bytes()
        if len(data) < keep_below:
            report["kept"][fname] = f"small ({len(data)} bytes)"
            continue
        covered = np.zeros(len(data), dtype=bool)
        entries, why = [], None
        for w in ws:
            off, size = int(w["offset"]), int(w["size"])
            chunk = data[off:off + size]
            if len(chunk) != size:
                why = f"weight {w.get('name')} runs past the end of the file"
                break
            match = index.get(_sha(chunk))
            if match is None and size <= INLINE_MAX:
                # a constant of the program (a loop's initial state): its bytes, inline
                entries.append({"weight": w.get("name"), "offset": off, "size": size,
                                "sha256": _sha(chunk), "inline": base64.b64encode(chunk)
                                .decode("ascii")})
                covered[off:off + size] = True
                continue
            if match is None:
                why = f"weight {w.get('name')} matches no parameter of the module"
                break
            entries.append({"weight": w.get("name"), "offset": off, "size": size,
                            "sha256": _sha(chunk), "param": match[0], "transform": match[1]})
            covered[off:off + size] = True
        if why is None and np.frombuffer(data, dtype=np.uint8)[~covered].any():
            why = "bytes between weights are not zero"
        if why is not None:
            report["kept"][fname] = why
            continue
        files_json.append({"name": fname, "size": len(data), "sha256": _sha(data),
                           "weights": entries})
        report["stripped"].append(fname)
        report["stripped_bytes"] += len(data)
    if files_json:
        sidecar = {"workload": workload, "seed": seed, "form": form,
                   "dtype": str(next(iter(module.parameters())).dtype).replace("torch.", ""),
                   "files": files_json}
        (artifact / SIDECAR).write_text(json.dumps(sidecar, indent=1))
        for f in files_json:
            os.remove(artifact / f["name"])
    return report


def needs_restore(artifact: Path) -> bool:
    return (Path(artifact) / SIDECAR).is_file()


def restore(artifact: Path, module: torch.nn.Module, scratch: Path) -> Path:
    """A copy of ``artifact`` in ``scratch`` with its stripped weight files rebuilt from ``module``
    (which must be the workload's module built with the recorded seed, form and dtype, on any
    device).  Raises ``ValueError`` naming the first weight whose bytes differ."""
    artifact, scratch = Path(artifact), Path(scratch)
    sidecar = json.loads((artifact / SIDECAR).read_text())
    if scratch.exists():
        shutil.rmtree(scratch)
    shutil.copytree(artifact, scratch)
    for f in sidecar["files"]:
        buf = bytearray(int(f["size"]))
        for e in f["weights"]:
            data = base64.b64decode(e["inline"]) if "inline" in e else \
                tensor_bytes(_tensor_of(module, e["param"], e["transform"]))
            if len(data) != e["size"] or _sha(data) != e["sha256"]:
                raise ValueError(f"weight {e['weight']} ({e.get('param', 'inline')}) rebuilt from seed "
                                 f"{sidecar['seed']} differs from the compiled one")
            buf[e["offset"]:e["offset"] + e["size"]] = data
        if _sha(buf) != f["sha256"]:
            raise ValueError(f"rebuilt {f['name']} differs from the compiled file")
        (scratch / f["name"]).write_bytes(bytes(buf))
    return scratch
