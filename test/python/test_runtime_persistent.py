"""The artifact format's persistent kernels (Rammer): the ``persistent`` record of a kernel, buffers
``zeroed`` at load, and what the reader refuses. CPU artifacts with C kernels, as in
``test_runtime.py``; the cuda backend's residency check is exercised with a fake driver."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from quartet.errors import QuartetError
from quartet.runtime import (ArtifactWriter, BufferArg, Launch, Memset, Persistent,
                             PersistentTask, ScalarArg, load, load_manifest)

from test_runtime import N, edit_manifest, expect_error, kernels_so  # noqa: F401


def counter_writer(so: bytes, target: str = "cpu", **persistent) -> ArtifactWriter:
    """A program whose kernel ``dec`` reads and writes a zeroed counter buffer each call."""
    w = ArtifactWriter(target)
    w.add_input("x", (N,), "float32")
    w.add_output("y", (N,), "float32")
    w.add_buffer("sync", 8, "scalar", zeroed=True)
    w.add_buffer("flag", 4, "scalar")
    p = Persistent(4, 1, "sync", (PersistentTask("copy", (0, 1), 2, 0, 2),)) \
        if persistent.get("record", True) else None
    w.add_kernel("k", so, "dec", (1, 1, 1), (1, 1, 1), args=["sync", "flag"],
                 cooperative=persistent.get("cooperative", True), persistent=p)
    w.add_kernel("add", so, "vadd", (1, 1, 1), (1, 1, 1),
                 args=["x", "x", "y", ScalarArg("int32", N)])
    w.add_step(Launch("k"), Launch("add"))
    return w


def test_persistent_record_and_zeroed_buffers_round_trip(kernels_so, tmp_path):
    path = counter_writer(kernels_so).save(tmp_path / "p")
    raw = json.loads((path / "manifest.json").read_text())
    assert raw["buffers"][2] == {"name": "sync", "kind": "scalar", "size": 8, "zeroed": True}
    assert "zeroed" not in raw["buffers"][3]
    assert raw["kernels"][0]["persistent"] == {
        "veus": 4, "blocks_per_sm": 1, "sync": "sync",
        "tasks": [{"name": "copy", "args": [0, 1], "blocks": 2, "veu_begin": 0, "veu_count": 2,
                   "wave": 0}]}
    m = load_manifest(path)
    (k, _) = m.kernels
    assert k.persistent.tasks[0].args == (0, 1) and m.buffer_map["sync"].zeroed


def test_zeroed_buffers_are_zero_after_load_and_keep_their_state(kernels_so, tmp_path):
    """``dec`` decrements an int32 counter in the zeroed buffer on every call: it reads 0 at
    load, -1 after one call, -2 after two (nothing resets it between calls)."""
    prog = load(counter_writer(kernels_so).save(tmp_path / "z"))
    try:
        state = np.empty(2, dtype=np.int32)
        prog.backend.download(prog.addresses["sync"], state)
        assert state.tolist() == [0, 0]
        x = np.ones(N, dtype=np.float32)
        for calls in (1, 2):
            assert np.array_equal(prog(x), 2 * x)
            prog.backend.download(prog.addresses["sync"], state)
            assert state[0] == -calls
    finally:
        prog.close()


def test_the_reader_refuses_unsound_persistent_kernels(kernels_so, tmp_path):
    expect_error(counter_writer(kernels_so, cooperative=False).manifest,
                 "kernels[0]", "must be cooperative")
    path = counter_writer(kernels_so).save(tmp_path / "a")
    edit_manifest(path, lambda d: d["kernels"][0].update(grid=[5, 1, 1]))
    expect_error(lambda: load_manifest(path), "kernels[0]", "at most 4 blocks")
    path = counter_writer(kernels_so).save(tmp_path / "b")
    edit_manifest(path, lambda d: d["buffers"][2].pop("zeroed"))
    expect_error(lambda: load_manifest(path), "sync buffer 'sync' must be a buffer zeroed")
    path = counter_writer(kernels_so).save(tmp_path / "c")
    edit_manifest(path, lambda d: d["kernels"][0]["persistent"]["tasks"][0].update(args=[0, 7]))
    expect_error(lambda: load_manifest(path), "persistent.tasks[0]", "past the kernel's 2")
    path = counter_writer(kernels_so).save(tmp_path / "d")
    edit_manifest(path, lambda d: d["buffers"][0].update(zeroed=True))
    expect_error(lambda: load_manifest(path), "buffers[0]", "only temp and scalar buffers")
    w = counter_writer(kernels_so)
    w.add_step(Memset("sync", 0))
    expect_error(w.manifest, "program[2]", "memset of 'sync', a buffer zeroed at load")


class _FakeDriver:
    """Enough of cuda.bindings.driver for CudaBackend._check_cooperative."""

    class CUresult:
        CUDA_SUCCESS = 0

    def __init__(self, per_sm):
        self.per_sm = per_sm

    def cuOccupancyMaxActiveBlocksPerMultiprocessor(self, function, threads, smem):
        return 0, self.per_sm


def test_a_gpu_that_cannot_hold_the_blocks_is_refused_at_load():
    from quartet.runtime.cuda_backend import CudaBackend
    from quartet.runtime.manifest import Kernel

    k = Kernel("rammer", "k.cubin", "cubin", "entry", (264, 1, 1), (128, 1, 1), 0,
               (BufferArg("sync"),), cooperative=True,
               persistent=Persistent(264, 2, "sync"))
    backend = CudaBackend.__new__(CudaBackend)
    backend.cooperative_ok, backend.sm_count, backend.location = True, 132, "here"
    backend.d = _FakeDriver(per_sm=2)
    backend._check_cooperative(k, None, 128)          # 2 x 132 = 264: fits
    backend.d = _FakeDriver(per_sm=1)
    with pytest.raises(QuartetError, match=r"persistent kernel 'rammer' runs 264 vEUs on 264 "
                                           r"blocks .*\(2 per SM was counted on.* keeps 1 per SM "
                                           r"x 132 SMs = 132"):
        backend._check_cooperative(k, None, 128)
    assert math.prod(k.grid) == 264
