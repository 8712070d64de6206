"""Writing and reading Quartet artifacts (a folder, or the same folder as one ``.qrt`` zip file).

The compiler builds an artifact with :class:`ArtifactWriter` (pure Python: no MLIR, no torch
needed) and the runtime opens it with :func:`open_artifact` / :func:`load_manifest`, which check
everything that can be checked without running it: the format name and version, the presence,
size and SHA-256 of every file, the cross references of the manifest, and whether the artifact's
target runs on the backend and device at hand. The layout is documented in runtime/FORMAT.md.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from quartet.errors import QuartetError
from quartet.runtime import dtypes
from quartet.runtime.manifest import (
    CHECKS_VERSION,
    PERSISTENT_VERSION,
    TENSORMAP_VERSION,
    TensorMapArg,
    FORMAT_VERSION,
    Buffer,
    BufferArg,
    Check,
    FileEntry,
    Kernel,
    KernelArg,
    Manifest,
    Persistent,
    Step,
    TensorSpec,
    Weight,
    While,
    _walk,
)
from quartet.runtime.parse import manifest_from_json
from quartet.runtime.validate import validate
from quartet.runtime.targets import BINARY_FORMATS, backend_of, check_runnable

MANIFEST = "manifest.json"
WEIGHTS_FILE = "weights.bin"
SINGLE_FILE_SUFFIX = ".qrt"
WEIGHT_ALIGNMENT = 256

_EXTENSIONS = {"cubin": "cubin", "ptx": "ptx", "fatbin": "fatbin", "hsaco": "hsaco", "so": "so"}


def sha256(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def producer_text(producer: dict | None) -> str:
    """The manifest's ``producer``: ``{"tool": "quartet", ...producer}`` as sorted JSON."""
    info = {"tool": "quartet"}
    info.update(producer or {})
    return json.dumps(info, sort_keys=True)


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


class ArtifactWriter:
    """Collects the pieces of a compiled program and saves them as an artifact.

    Typical use (the compiler's host-plan emitter)::

        w = ArtifactWriter(target="sm_90")
        w.add_input("x", (1024,), "float32")
        w.add_weight("w", weight_array)
        w.add_output("y", (1024,), "float32")
        w.add_kernel("k0", cubin, "main_kernel", grid=(8, 1, 1), block=(128, 1, 1),
                     args=["x", "w", "y", ScalarArg("int32", 1024)])
        w.add_step(Launch("k0"))
        w.save("model.qrt")          # or a folder path

    Inputs, outputs and weights each get a buffer of the same name. Kernel arguments may be
    given as buffer names (plain strings) or as BufferArg / ScalarArg / IndexArg / TensorMapArg.
    """

    def __init__(self, target: str, backend: str | None = None, producer: str | None = None):
        inferred = backend_of(target)
        if inferred is None:
            raise QuartetError(f"unknown target {target!r} (expected sm_NN, gfxNNN or cpu)")
        if backend is not None and backend != inferred:
            raise QuartetError(f"backend {backend!r} does not run target {target!r}")
        self.target, self.backend = target, inferred
        self.producer = producer
        self.inputs: list[TensorSpec] = []
        self.outputs: list[TensorSpec] = []
        self.buffers: list[Buffer] = []
        self.weights: list[Weight] = []
        self.kernels: list[Kernel] = []
        self.program: list[Step] = []
        self.checks: list[Check] = []
        self._binaries: dict[str, bytes] = {}
        self._weight_bytes = bytearray()
        self._weights_sha: str | None = None     # SHA-256 of _weight_bytes, None when changed

    @classmethod
    def from_manifest(cls, manifest: Manifest, binaries: dict[str, bytes],
                      weights: dict[str, Any], producer: str | None = None) -> "ArtifactWriter":
        """A writer holding what ``manifest`` describes again (the compile cache's entries):
        its kernel files from ``binaries`` (name -> bytes), each weight's value from
        ``weights`` (name -> raw bytes, numpy array or torch tensor, of the manifest's shape and
        type). A missing or mismatched file or weight is a QuartetError."""
        writer = cls(manifest.target, manifest.backend, producer)
        writer.inputs, writer.outputs = list(manifest.inputs), list(manifest.outputs)
        writer.buffers = list(manifest.buffers)
        writer.kernels, writer.program = list(manifest.kernels), list(manifest.program)
        writer.checks = list(manifest.checks)
        for k in manifest.kernels:
            if k.binary not in binaries:
                raise QuartetError(f"kernel {k.name!r}: no file {k.binary}", "artifact writer")
            writer._binaries[k.binary] = bytes(binaries[k.binary])
        for w in manifest.weights:
            if w.name not in weights:
                raise QuartetError(f"no value for weight {w.name!r}", "artifact writer")
            value = weights[w.name]
            if isinstance(value, (bytes, bytearray, memoryview)):
                data, shape, dtype = bytes(value), tuple(w.shape), w.dtype
            else:
                data, shape, dtype = _host_bytes(value)
            if shape != tuple(w.shape) or dtype != w.dtype or len(data) != w.size:
                raise QuartetError(f"weight {w.name!r} is {w.dtype} {list(w.shape)}, got "
                                   f"{dtype} {list(shape)}", "artifact writer")
            offset = _align(len(writer._weight_bytes), WEIGHT_ALIGNMENT)
            writer._weight_bytes.extend(b"\0" * (offset - len(writer._weight_bytes)))
            writer._weight_bytes.extend(data)
            writer._weights_sha = None
            writer.weights.append(dataclasses.replace(w, offset=offset, sha256=sha256(data)))
        writer.manifest()       # checked as any writer's
        return writer

    # tensors and buffers ----------------------------------------------------------------------

    def add_buffer(self, name: str, size: int, kind: str = "temp", zeroed: bool = False) -> str:
        """A device buffer of ``size`` bytes; ``kind`` is temp or scalar (others have own methods);
        ``zeroed``: filled with zeros once, when the program is loaded."""
        if any(b.name == name for b in self.buffers):
            raise QuartetError(f"buffer {name!r} is defined twice", "artifact writer")
        self.buffers.append(Buffer(name, kind, int(size), bool(zeroed)))
        return name

    def _tensor(self, table: list, kind: str, name: str, shape, dtype: str,
                buffer: str | None = None) -> str:
        dtypes.check_dtype(dtype, f"{kind} {name!r}")
        buffer = buffer or name
        spec = TensorSpec(name, buffer, tuple(int(d) for d in shape), dtype)
        self.add_buffer(buffer, spec.nbytes, kind)
        table.append(spec)
        return buffer

    def add_input(self, name: str, shape: Iterable[int], dtype: str,
                  buffer: str | None = None) -> str:
        """A program input (positional, in the order added) and its buffer (``buffer``, default
        the input's name); returns the buffer name."""
        return self._tensor(self.inputs, "input", name, shape, dtype, buffer)

    def add_output(self, name: str, shape: Iterable[int], dtype: str,
                   buffer: str | None = None) -> str:
        """A program output (returned in the order added) and its buffer (``buffer``, default
        the output's name); returns the buffer name."""
        return self._tensor(self.outputs, "output", name, shape, dtype, buffer)

    def add_weight(self, name: str, array: Any) -> str:
        """A weight (numpy array or torch tensor), stored in weights.bin and uploaded at load."""
        data, shape, dtype = _host_bytes(array)
        offset = _align(len(self._weight_bytes), WEIGHT_ALIGNMENT)
        self._weight_bytes.extend(b"\0" * (offset - len(self._weight_bytes)))
        self._weight_bytes.extend(data)
        self._weights_sha = None
        self.add_buffer(name, len(data), "weight")
        self.weights.append(Weight(name, name, WEIGHTS_FILE, offset, len(data), sha256(data), shape, dtype))
        return name

    def set_weight(self, name: str, array: Any) -> None:
        """Replace the bytes of weight ``name`` (same shape and element type) before saving."""
        for i, w in enumerate(self.weights):
            if w.name == name:
                break
        else:
            raise QuartetError(f"no weight named {name!r}", "artifact writer")
        data, shape, dtype = _host_bytes(array)
        if shape != tuple(w.shape) or dtype != w.dtype:
            raise QuartetError(f"weight {name!r} is {w.dtype} {list(w.shape)}, got {dtype} "
                               f"{list(shape)}", "artifact writer")
        self._weight_bytes[w.offset : w.offset + w.size] = data
        self._weights_sha = None
        self.weights[i] = dataclasses.replace(w, sha256=sha256(data))

    # kernels -----------------------------------------------------------------------------------

    def add_kernel(
        self,
        name: str,
        binary: bytes,
        entry: str,
        grid: Iterable[int],
        block: Iterable[int],
        shared_memory: int = 0,
        args: Iterable[KernelArg | str] = (),
        cooperative: bool = False,
        binary_format: str | None = None,
        persistent: Persistent | None = None,
    ) -> str:
        """A kernel: ``entry`` in ``binary`` (cubin/PTX/fatbin, hsaco or .so bytes).

        Kernels with identical binaries share one file. ``binary_format`` is guessed from the
        bytes when not given (ELF -> cubin/hsaco/so by backend, fatbin magic, PTX text).
        """
        binary = bytes(binary)
        fmt = binary_format or _guess_format(binary, self.backend)
        if fmt not in BINARY_FORMATS[self.backend]:
            raise QuartetError(
                f"kernel {name!r}: binary format {fmt!r} cannot run on the {self.backend} backend",
                "artifact writer",
            )
        file = f"kernel_{sha256(binary)[:16]}.{_EXTENSIONS[fmt]}"
        self._binaries[file] = binary
        self.kernels.append(
            Kernel(
                name=name,
                binary=file,
                binary_format=fmt,
                entry=entry,
                grid=_dim3(grid),
                block=_dim3(block),
                shared_memory=int(shared_memory),
                args=tuple(BufferArg(a) if isinstance(a, str) else a for a in args),
                cooperative=bool(cooperative),
                persistent=persistent,
            )
        )
        return name

    # the host program --------------------------------------------------------------------------

    def add_step(self, *steps: Step) -> None:
        """Append steps (Launch, Copy, Memset, Loop, While, If) to the host program."""
        self.program.extend(steps)

    def add_check(self, buffer: str, message: str, location: str | None = None,
                  dtype: str = "int8", offset: int = 0) -> None:
        """A flag read after every call: nonzero raises ``QuartetError(message, location)``."""
        self.checks.append(Check(buffer, message, location, dtype, offset))

    # output ------------------------------------------------------------------------------------

    def files(self) -> dict[str, bytes]:
        """The artifact's files other than manifest.json, by name."""
        out = dict(self._binaries)
        if self.weights:
            out[WEIGHTS_FILE] = bytes(self._weight_bytes)
        return out

    def _version(self) -> int:
        """The oldest format version that holds what was added (see runtime/FORMAT.md)."""
        stops = any(isinstance(s, While) and s.at_bound != "error"
                    for _, s in _walk(self.program, "program"))
        if stops or any(k.persistent is not None for k in self.kernels) or \
                any(getattr(b, "zeroed", False) for b in self.buffers):
            return PERSISTENT_VERSION
        if any(isinstance(a, TensorMapArg) for k in self.kernels for a in k.args):
            return TENSORMAP_VERSION
        return CHECKS_VERSION if self.checks else FORMAT_VERSION

    def manifest(self) -> Manifest:
        """The manifest of what was added so far, checked (QuartetError if inconsistent)."""
        m = Manifest(
            version=self._version(),
            target=self.target,
            backend=self.backend,
            producer=self.producer,
            inputs=tuple(self.inputs),
            outputs=tuple(self.outputs),
            buffers=tuple(self.buffers),
            weights=tuple(self.weights),
            kernels=tuple(self.kernels),
            program=tuple(self.program),
            files=self._file_entries(),
            checks=tuple(self.checks),
        )
        validate(m, "artifact writer")
        return m

    def _file_entries(self) -> tuple[FileEntry, ...]:
        """The files' entries, weights.bin hashed in place and once until a weight changes
        (it is the bulk of a large model's artifact)."""
        entries = [FileEntry(n, len(d), sha256(d)) for n, d in self._binaries.items()]
        if self.weights:
            if self._weights_sha is None:
                self._weights_sha = sha256(self._weight_bytes)
            entries.append(FileEntry(WEIGHTS_FILE, len(self._weight_bytes), self._weights_sha))
        return tuple(sorted(entries, key=lambda e: e.name))

    def save(self, path: str | os.PathLike) -> Path:
        """Write the artifact: a folder, or one zip file when ``path`` ends in ``.qrt``.

        An existing artifact at ``path`` is replaced; any other existing file or non-empty
        folder is left alone and reported.
        """
        path = Path(path)
        manifest = self.manifest()
        files = {MANIFEST: (json.dumps(manifest.to_json(), indent=1) + "\n").encode(), **self.files()}
        if path.suffix == SINGLE_FILE_SUFFIX:
            if path.is_dir():
                raise QuartetError(f"{path} is a folder; a .qrt artifact is one file", "artifact writer")
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            _write_zip(tmp, files)
            os.replace(tmp, path)
            return path
        if path.exists() and not (path.is_dir() and (not any(path.iterdir()) or (path / MANIFEST).exists())):
            raise QuartetError(
                f"{path} exists and is not an artifact; refusing to overwrite it", "artifact writer"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=path.name + ".", dir=path.parent))
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
        return path


def pack(folder: str | os.PathLike, file: str | os.PathLike) -> Path:
    """Turn an artifact folder into the single-file form (after checking it)."""
    art = open_artifact(folder)
    file = Path(file)
    try:
        files = {MANIFEST: art.read(MANIFEST), **{f.name: art.read(f.name) for f in art.manifest.files}}
    finally:
        art.close()
    _write_zip(file, files)
    return file


#: every member's timestamp in a .qrt file: the earliest a zip can say (1980-01-01 00:00)
ZIP_TIMESTAMP = (1980, 1, 1, 0, 0, 0)


def _write_zip(path: Path, files: dict[str, bytes]) -> None:
    """The single-file form, byte for byte the same for the same files: manifest.json first,
    then the other members sorted by name, each stored with a fixed timestamp and mode."""
    names = [MANIFEST] + sorted(n for n in files if n != MANIFEST)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for name in names:
            info = zipfile.ZipInfo(name, date_time=ZIP_TIMESTAMP)
            info.compress_type = zipfile.ZIP_STORED
            info.create_system = 3              # Unix, whatever the host
            info.external_attr = 0o644 << 16    # -rw-r--r--
            zf.writestr(info, files[name])


def _align(n: int, a: int) -> int:
    return (n + a - 1) // a * a


def _dim3(v: Iterable[int]) -> tuple[int, int, int]:
    v = tuple(int(x) for x in v)
    return (v + (1, 1, 1))[:3] if len(v) <= 3 else v  # validate() rejects longer ones


def _guess_format(binary: bytes, backend: str) -> str:
    if binary[:4] == b"\x7fELF":
        return {"cuda": "cubin", "hip": "hsaco", "cpu": "so"}[backend]
    if binary[:4] == b"\x50\xed\x55\xba":
        return "fatbin"
    if b".version" in binary[:4096] and b".target" in binary[:4096]:
        return "ptx"
    raise QuartetError("cannot tell the format of a kernel binary; pass binary_format=", "artifact writer")


def _host_bytes(array: Any) -> tuple[bytes, tuple[int, ...], str]:
    """Raw bytes, shape and element type name of a numpy array or a torch tensor."""
    if dtypes.is_torch_tensor(array):
        import torch

        t = array.detach().to("cpu").contiguous()
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        return raw, tuple(t.shape), dtypes.name_of_torch(t.dtype)
    a = np.ascontiguousarray(array).reshape(np.shape(array))   # (ascontiguousarray makes 0-d 1-d)
    name = dtypes.name_of_numpy(a.dtype)
    dtypes.check_dtype(name, "weight")
    return a.tobytes(), tuple(a.shape), name


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


class Artifact:
    """An opened, checked artifact: its manifest and access to its files.

    The files stay where they are (a folder, or members of a .qrt zip); :meth:`path_of` gives a
    file system path, extracting a zip member into a private temporary folder when needed
    (shared libraries must be files to be loaded).
    """

    def __init__(self, location: Path, manifest: Manifest, reader: "_Reader"):
        self.location, self.manifest, self._reader = location, manifest, reader
        self._tmp: tempfile.TemporaryDirectory | None = None

    def read(self, name: str) -> bytes:
        return self._reader.read(name)

    def path_of(self, name: str) -> Path:
        if isinstance(self._reader, _FolderReader):
            return self._reader.root / name
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="quartet-artifact-")
        out = Path(self._tmp.name) / name
        if not out.exists():
            out.write_bytes(self.read(name))
        return out

    def close(self) -> None:
        self._reader.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


class _FolderReader:
    def __init__(self, root: Path):
        self.root = root

    def size(self, name: str) -> int | None:
        p = self.root / name
        return p.stat().st_size if p.is_file() else None

    def read(self, name: str) -> bytes:
        return (self.root / name).read_bytes()

    def close(self) -> None:
        pass


class _ZipReader:
    def __init__(self, path: Path):
        self.path = path
        try:
            self.zf = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as e:
            raise QuartetError(f"artifact file is truncated or corrupt ({e})", str(path)) from None

    def size(self, name: str) -> int | None:
        try:
            return self.zf.getinfo(name).file_size
        except KeyError:
            return None

    def read(self, name: str) -> bytes:
        try:
            return self.zf.read(name)
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise QuartetError(
                f"artifact member {name} is truncated or corrupt ({e})", str(self.path)
            ) from None

    def close(self) -> None:
        self.zf.close()


_Reader = _FolderReader | _ZipReader


def open_artifact(
    path: str | os.PathLike,
    *,
    backend: str | None = None,
    device_arch: str | None = None,
    verify: bool = True,
) -> Artifact:
    """Open an artifact (folder or .qrt file) and check it; see :func:`load_manifest`."""
    path = Path(path)
    if path.is_dir():
        reader: _Reader = _FolderReader(path)
        where = str(path / MANIFEST)
        if reader.size(MANIFEST) is None:
            raise QuartetError(f"not a Quartet artifact: no {MANIFEST} in this folder", str(path))
    elif path.is_file():
        reader = _ZipReader(path)
        where = f"{path}:{MANIFEST}"
        if reader.size(MANIFEST) is None:
            raise QuartetError(f"not a Quartet artifact: no {MANIFEST} in this file", str(path))
    else:
        raise QuartetError("no such artifact (expected a folder or a .qrt file)", str(path))
    try:
        data = json.loads(reader.read(MANIFEST))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise QuartetError(f"{MANIFEST} is not valid JSON ({e}); the artifact is corrupt", where) from None
    manifest = manifest_from_json(data, where)
    validate(manifest, where)
    check_runnable(
        manifest.target,
        manifest.backend,
        {k.binary_format for k in manifest.kernels},
        backend,
        device_arch,
        str(path),
    )
    _check_files(manifest, reader, str(path), verify)
    return Artifact(path, manifest, reader)


def load_manifest(
    path: str | os.PathLike,
    *,
    backend: str | None = None,
    device_arch: str | None = None,
    verify: bool = True,
) -> Manifest:
    """Read and check an artifact's manifest.

    Checks: the format name and version; the manifest's own consistency; that every listed file
    is present with the listed size and (``verify``) SHA-256, naming the weight whose bytes are
    wrong; and, when given, that the artifact runs on ``backend`` (``cuda``/``hip``/``cpu``)
    and on a device of architecture ``device_arch`` (e.g. ``sm_80``). Every failure is one
    QuartetError line naming the artifact.
    """
    art = open_artifact(path, backend=backend, device_arch=device_arch, verify=verify)
    art.close()
    return art.manifest


def _check_files(m: Manifest, reader: _Reader, location: str, verify: bool) -> None:
    for f in m.files:
        size = reader.size(f.name)
        if size is None:
            raise QuartetError(f"file {f.name} is missing from the artifact", location)
        if size != f.size:
            raise QuartetError(
                f"file {f.name} has {size} bytes, the manifest says {f.size}: the artifact is truncated or corrupt",
                location,
            )
    if not verify:
        return
    for f in m.files:
        data = reader.read(f.name)
        if sha256(data) == f.sha256:
            continue
        for w in m.weights:
            if w.file == f.name and sha256(data[w.offset : w.offset + w.size]) != w.sha256:
                raise QuartetError(
                    f"weight {w.name!r} in {f.name} fails its checksum: the artifact is corrupt", location
                )
        raise QuartetError(f"file {f.name} fails its checksum: the artifact is corrupt", location)


def read_weight(art: Artifact, w: Weight, cache: dict[str, bytes] | None = None) -> memoryview:
    """The bytes of weight ``w`` (reading each weights file once when ``cache`` is given)."""
    if cache is None:
        cache = {}
    if w.file not in cache:
        cache[w.file] = art.read(w.file)
    return memoryview(cache[w.file])[w.offset : w.offset + w.size]
