"""The compile cache (issue 14, item 2; frontend/cache.py): keyed by content, shared by every
entry point, written atomically; corrupt, foreign or unwritable means a warning and a rebuild,
never a wrong artifact."""

import json
import os
import subprocess
import sys
import warnings
import zipfile

import numpy as np
import pytest
import torch

import quartet
from quartet.frontend import cache
from quartet.frontend.compile import compile_to_artifact, export_program


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(16, 8)

    def forward(self, x):
        return torch.relu(self.lin(x))


def model(seed=0):
    torch.manual_seed(seed)
    return Net().eval()


X = (torch.randn(2, 16),)


@pytest.fixture
def on(tmp_path, monkeypatch):
    """The cache on, in a folder of this test's own."""
    monkeypatch.setenv("QUARTET_CACHE", "1")
    monkeypatch.setenv("QUARTET_CACHE_DIR", str(tmp_path / "cache"))
    cache._warned.clear()
    return tmp_path / "cache"


def compiled(m, **kw):
    writer, result, _ = compile_to_artifact(m, X, target="cpu", **kw)
    return writer, result


def entries(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def artifact_files(writer) -> dict:
    return {"manifest": json.dumps(writer.manifest().to_json(), sort_keys=True), **writer.files()}


def test_a_second_compile_is_a_hit_with_the_same_artifact(on):
    first, result = compiled(model())
    assert not result.cached and len(entries(on)) == 1
    second, result = compiled(model())
    assert result.cached and set(result.seconds) == {"export", "cache"}
    assert artifact_files(second) == artifact_files(first)


def test_a_hit_takes_the_models_weights_of_now(on):
    compiled(model(0))
    m = model(1)                                   # other weights, same program
    writer, result = compiled(m)
    assert result.cached
    fresh, _ = compiled(m, cache=False)
    assert artifact_files(writer) == artifact_files(fresh)
    out = quartet.compile(m, X, target="cpu", weights="frozen")
    assert out.result.cached and torch.allclose(out(*X), m(*X), atol=1e-5)


def test_the_key_holds_what_changes_the_program():
    m = model()
    ep = export_program(m, X)
    key = cache.model_key(ep, m, "roller", "sm_90", "h200")
    assert key == cache.model_key(export_program(model(3), X), model(3), "roller", "sm_90",
                                  "h200")          # weights are not in the key
    assert key != cache.model_key(ep, m, "roller", "sm_90", "h100")
    assert key != cache.model_key(ep, m, "roller", "cpu", "cpu")
    assert key != cache.model_key(ep, m, "welder", "sm_90", "h200")
    other = (torch.randn(4, 16),)
    assert key != cache.model_key(export_program(m, other), m, "roller", "sm_90", "h200")
    half = model().half()
    assert key != cache.model_key(export_program(half, (X[0].half(),)), half, "roller",
                                  "sm_90", "h200")
    os.environ["QUARTET_GEMM"] = "0"
    try:
        assert key != cache.model_key(ep, m, "roller", "sm_90", "h200")
    finally:
        del os.environ["QUARTET_GEMM"]


def test_a_corrupt_entry_is_ignored_with_a_warning_and_rebuilt(on):
    compiled(model())
    [name] = entries(on)
    (on / name).write_bytes(b"PK\x03\x04 not a zip")
    with pytest.warns(cache.CacheWarning, match=f"ignoring the compile cache entry {name}"):
        _, result = compiled(model())
    assert not result.cached
    _, result = compiled(model())                  # rebuilt: a hit again
    assert result.cached


def test_a_foreign_or_tampered_entry_is_never_loaded(on):
    compiled(model())
    [name] = entries(on)
    path = on / name
    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    members["stored.bin"] += b"x"                  # fails its checksum
    with zipfile.ZipFile(path, "w") as zf:
        for n, data in members.items():
            zf.writestr(n, data)
    with pytest.warns(cache.CacheWarning, match="fails its checksum"):
        assert not compiled(model())[1].cached
    other = on / ("0" * 64 + cache.SUFFIX)         # an entry under another key's name
    path.rename(other)
    entries_cache = cache.open_cache()
    with pytest.warns(cache.CacheWarning, match="its key is not its name"):
        assert entries_cache.load("0" * 64, {}) is None


def test_an_unwritable_folder_is_no_cache_with_one_warning(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("QUARTET_CACHE", "1")
    monkeypatch.setenv("QUARTET_CACHE_DIR", str(blocker / "cache"))
    cache._warned.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert cache.open_cache() is None and cache.open_cache() is None
        _, result = compiled(model())
    assert not result.cached
    assert [str(w.message) for w in caught if w.category is cache.CacheWarning] == [
        f"quartet: the compile cache folder {blocker / 'cache'} cannot be written "
        f"(Not a directory); compiling without a cache"]


def test_bypass_and_clear(on, monkeypatch):
    compiled(model(), cache=False)
    assert entries(on) == []
    monkeypatch.setenv("QUARTET_CACHE", "0")
    assert cache.open_cache() is None and cache.open_cache(True) is not None
    compiled(model(), cache=True)
    (on / ".tmp-left-by-a-crash.qce").write_bytes(b"")
    assert len(entries(on)) == 2 and cache.clear() == 2 and entries(on) == []


def test_a_failed_write_leaves_nothing_behind(on, monkeypatch):
    def crash(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cache.os, "replace", crash)
    with pytest.warns(cache.CacheWarning, match="could not write to the compile cache"):
        compiled(model())
    assert entries(on) == []


def test_stages_are_not_cached(on):
    _, _, text = compile_to_artifact(model(), X, target="cpu", stop_after="linalg")
    assert "linalg" in text and entries(on) == []


HIT_IN_A_NEW_PROCESS = """
import sys, time, torch
sys.path.insert(0, {here!r})
from test_compile_cache import X, model
from quartet.frontend.compile import compile_to_artifact
t0 = time.perf_counter()
writer, result, _ = compile_to_artifact(model(), X, target="cpu")
print(result.cached, sorted(m for m in sys.modules if m.split('.')[0] in ('mlir', 'torch_mlir')))
"""


def test_a_hit_in_a_new_process_needs_neither_mlir_nor_torch_mlir(on):
    compiled(model())
    script = HIT_IN_A_NEW_PROCESS.format(here=os.path.dirname(__file__))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "QUARTET_CACHE_DIR": str(on)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[0] == "True []"


def test_quartet_compile_options(on, tmp_path, capsys):
    from quartet.tools.quartet_compile import main

    model_file = tmp_path / "net.py"
    model_file.write_text("import torch\n\nclass Net(torch.nn.Module):\n"
                          "    def forward(self, x):\n        return x * 2 + 1\n")

    def tool(*args):
        assert main(list(args)) == 0
        return capsys.readouterr().err

    spec = [f"{model_file}:Net", "--input", "4x8:f32", "--target", "cpu"]
    err = tool(*spec, "-o", str(tmp_path / "a.qrt"))
    assert "from the compile cache" not in err and "\r" not in err    # no progress in a pipe
    assert "from the compile cache" in tool(*spec, "--quiet", "-o", str(tmp_path / "b.qrt"))
    assert (tmp_path / "a.qrt").read_bytes() == (tmp_path / "b.qrt").read_bytes()
    assert "from the compile cache" not in tool(*spec, "--no-cache", "-o", str(tmp_path / "c"))
    assert "removed 1 compile cache entries" in tool("--clear-cache")
    assert entries(on) == []
