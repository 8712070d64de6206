"""A user's first hour, as a test (issue 15, "Measured"): the README's steps on a fresh clone.

The documents a new user follows first are run as written, in order, each in one bash session
started at the root of a fresh ``git clone`` of this repository (so the test sees what is
committed): every ```` ```sh ```` block of ``README.md`` (set-up, the demo, each "Using it"
command), its ```` ```python ```` example, and the same for ``docs/getting-started-cpu.md`` and
``docs/quartet-opt-walkthrough.md``. A ``python`` block is saved to a file and run with the
environment's ``python``, as a user pasting it into a file would. The test fails when any command
fails or anything prints a Python traceback. ```` ```text ```` blocks are not run.

One README command is not run: ``bash scripts/test.sh`` is the whole test suite, this test
included (CI runs it; here it would recurse).

Re-using the installed environment instead of downloading 3 GB: the clone gets its own
``.venv`` (``python -m venv``), whose site-packages hold one ``.pth`` line naming a folder of
symbolic links to everything installed in the running environment except Quartet itself. Then
the README's ``scripts/setup.sh`` runs unchanged inside the clone, with pip told to use no
package index and no build isolation (``PIP_NO_INDEX``, ``PIP_NO_BUILD_ISOLATION``): every pinned
dependency is found already installed, and the clone is installed editable into its own
``.venv``, so its tools (``quartet-compile`` ...) run the clone's code. Takes three to six
minutes on two cores; marked ``slow`` (deselect with ``-m "not slow"``), run by
``scripts/test.sh``.

Also (fast): every relative link of the README, CONTRIBUTING.md and docs/ resolves inside the
repository.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCUMENTS = ("README.md", "docs/getting-started-cpu.md", "docs/quartet-opt-walkthrough.md")
NOT_RUN = {"bash scripts/test.sh"}   # the test suite itself (see the module docstring)
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
#: linked before they exist: the supported-operator list is written by the OpInfo test of
#: issue 18 (another branch); a missing file here is allowed, a present one is checked
PENDING = {"docs/supported-ops.md"}


def blocks(text: str) -> list[tuple[str, str]]:
    """The fenced code blocks of a Markdown text: (language, code), in order."""
    return [(m.group(1), m.group(2)) for m in FENCE.finditer(text)]


def script_of(document: str, text: str) -> tuple[str, dict[str, str]]:
    """A bash script that runs the document's sh and python blocks in order, and the files
    it needs (each python block, by file name)."""
    lines, files = ["set -euo pipefail"], {}
    for i, (language, code) in enumerate(blocks(text)):
        if language == "sh":
            lines += [ln for ln in code.splitlines() if ln.strip() not in NOT_RUN]
        elif language == "python":
            name = f"first_hour_{Path(document).stem}_{i}.py"
            files[name] = code
            lines.append(f"python {name}")
    return "\n".join(lines) + "\n", files


def _reuse_installed_packages(clone: Path) -> None:
    """A .venv in the clone that sees the running environment's packages, except Quartet (pip
    and setuptools included: the venv is made without its own)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(clone / ".venv")],
                   check=True, capture_output=True, timeout=300)
    farm = clone.parent / "installed"
    farm.mkdir()
    site = Path(sysconfig.get_paths()["purelib"])
    for entry in site.iterdir():
        if "quartet" in entry.name.lower() or entry.suffix == ".pth":
            continue
        (farm / entry.name).symlink_to(entry)
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    target = clone / ".venv" / "lib" / version / "site-packages"
    (target / "_first_hour_reuse.pth").write_text(f"{farm}\n")


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    if shutil.which("git") is None:
        pytest.skip("needs git")
    folder = tmp_path_factory.mktemp("first-hour") / "quartet"
    subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(REPO), str(folder)],
                   check=True, capture_output=True, timeout=300)
    _reuse_installed_packages(folder)
    return folder


def _user_environment() -> dict:
    """The test's environment minus the running venv and Python/pytest settings; pip offline."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTHON", "VIRTUAL_ENV", "PIP_", "PYTEST"))}
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if p != venv_bin)
    env.update(PIP_NO_INDEX="1", PIP_NO_BUILD_ISOLATION="0", PIP_DISABLE_PIP_VERSION_CHECK="1")
    return env


@pytest.mark.slow
@pytest.mark.parametrize("document", DOCUMENTS)
def test_document_runs_as_written(clone, document):
    script, files = script_of(document, (clone / document).read_text())
    for name, code in files.items():
        (clone / name).write_text(code)
    done = subprocess.run(["bash", "-c", script], cwd=clone, env=_user_environment(),
                          capture_output=True, text=True, timeout=1200)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{document}: a step failed\n{script}\n{output[-6000:]}"
    assert "Traceback" not in output, f"{document}: a step printed a traceback\n{output[-6000:]}"


def test_the_users_steps_are_all_run():
    """What the test above runs: the steps a user is told to take."""
    readme, files = script_of("README.md", (REPO / "README.md").read_text())
    for step in ("bash scripts/demo.sh", "quartet-run mlp.qrt --check --bench",
                 "--emit linalg -o model.mlir", "quartet-opt --list-passes"):
        assert step in readme, step
    assert "bash scripts/test.sh" not in readme
    assert any("quartet.compile(" in code for code in files.values())
    walkthrough, _ = script_of("docs/quartet-opt-walkthrough.md",
                               (REPO / "docs" / "quartet-opt-walkthrough.md").read_text())
    assert "--emit linalg -o model.mlir" in walkthrough
    assert "--mlir-print-ir-after-all" in walkthrough


def test_documentation_links_resolve():
    """Every relative link of the README and docs/ names a file of the repository, and none
    leads out of it (the design is docs/design.md, not ../shared/)."""
    pages = [REPO / "README.md", REPO / "CONTRIBUTING.md", *sorted((REPO / "docs").rglob("*.md"))]
    broken = []
    for page in pages:
        for target in LINK.findall(page.read_text()):
            if "://" in target:
                continue
            path = (page.parent / target).resolve()
            inside = REPO in path.parents or path == REPO
            name = path.relative_to(REPO).as_posix() if inside else target
            if not inside or (not path.exists() and name not in PENDING):
                broken.append(f"{page.relative_to(REPO)} -> {target}")
    assert broken == []
    assert "../shared" not in (REPO / "README.md").read_text()
