"""quartet.runtime: run compiled Quartet artifacts. Imports neither ``mlir`` nor ``torch_mlir``.

An artifact is a folder (or one ``.qrt`` zip of it) holding ``manifest.json``, the kernel
binaries and the weights; runtime/FORMAT.md documents it. The compiler writes one with
:class:`ArtifactWriter`; :func:`load` opens it on its backend (``cuda`` through the driver API,
or ``cpu`` through shared libraries) and returns a callable :class:`Program`::

    prog = quartet.runtime.load("model.qrt")
    y = prog(x)                   # torch tensors or numpy arrays
    print(prog.bench(x))

numpy is the only hard dependency; torch and cuda-bindings are imported only when used.
"""

from quartet.runtime.artifact import Artifact, ArtifactWriter, load_manifest, open_artifact, pack
from quartet.runtime.manifest import (
    FORMAT_NAME,
    FORMAT_VERSION,
    Buffer,
    BufferArg,
    Copy,
    FileEntry,
    If,
    IndexArg,
    Kernel,
    Launch,
    Loop,
    Manifest,
    Memset,
    Persistent,
    PersistentTask,
    Predicate,
    ScalarArg,
    TensorMapArg,
    TensorSpec,
    Weight,
    While,
)
from quartet.runtime.program import BenchResult, Program, load

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "Artifact",
    "ArtifactWriter",
    "BenchResult",
    "Buffer",
    "BufferArg",
    "Copy",
    "FileEntry",
    "If",
    "IndexArg",
    "Kernel",
    "Launch",
    "Loop",
    "Manifest",
    "Memset",
    "Persistent",
    "PersistentTask",
    "Predicate",
    "Program",
    "ScalarArg",
    "TensorMapArg",
    "TensorSpec",
    "Weight",
    "While",
    "load",
    "load_manifest",
    "open_artifact",
    "pack",
]
