"""Layers that hold (issue 9): the import-linter contracts of pyproject.toml, enforced in CI.

The top-level folders (``dialects/``, ``passes/``, ...) are ``quartet.<folder>`` only through
the package mapping of pyproject.toml, which import-linter's scanner does not follow. So the
test lays the sources out as they are installed - ``quartet/<folder>/...`` - in a temporary
folder and runs ``lint-imports`` there: a wrong-way import (the lowering importing a pass, the
runtime importing MLIR) fails it, naming the import chain.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = ("dialects", "driver", "passes", "lowering", "runtime", "frontend", "tools", "bench")


def installed_layout(dest: Path) -> Path:
    pkg = dest / "quartet"
    pkg.mkdir(parents=True)
    for f in (ROOT / "quartet").glob("*.py"):
        shutil.copy(f, pkg / f.name)
    for folder in FOLDERS:
        for src in (ROOT / folder).rglob("*.py"):
            target = pkg / folder / src.relative_to(ROOT / folder)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, target)
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")
    return dest


def lint(dest: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("lint-imports")
    env = {**os.environ, "PYTHONPATH": str(dest)}
    return subprocess.run([str(exe), "--no-cache"], cwd=dest, env=env, capture_output=True,
                          text=True, timeout=600)


def test_layers_hold(tmp_path):
    done = lint(installed_layout(tmp_path))
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "Contracts: 2 kept, 0 broken" in done.stdout


def test_a_wrong_way_import_breaks_the_contract(tmp_path):
    dest = installed_layout(tmp_path)
    bad = dest / "quartet" / "lowering" / "wrong_way.py"
    bad.write_text("from quartet.passes import base  # noqa: F401\n")
    done = lint(dest)
    assert done.returncode != 0
    assert "quartet.lowering.wrong_way -> quartet.passes.base" in done.stdout
