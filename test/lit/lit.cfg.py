# lit configuration for Quartet's IR tests: `lit test/lit` (or `bash .ci/run`).
import os
import shutil
import sys

import lit.formats

config.name = "Quartet"
config.test_format = lit.formats.ShTest()  # lit 23 refuses ShTest(True)
config.suffixes = [".mlir", ".py"]
config.excludes = ["inputs", "lit.cfg.py", "Output"]
config.test_source_root = os.path.dirname(__file__)
config.test_exec_root = os.path.join(config.test_source_root, "Output")

# The tools of the Python environment running lit come first on PATH.
bindir = os.path.dirname(sys.executable)
config.environment["PATH"] = os.pathsep.join([bindir, os.environ.get("PATH", "")])
for var in ("HOME", "TMPDIR", "PYTHONPATH"):
    if var in os.environ:
        config.environment[var] = os.environ[var]
# Every compile in a lit test is a real one (no compile cache, frontend/cache.py).
config.environment["QUARTET_CACHE"] = "0"

for tool in ("quartet-opt", "filecheck"):
    if not shutil.which(tool, path=config.environment["PATH"]):
        lit_config.fatal(f"'{tool}' not found next to {sys.executable}: pip install -e .[test]")

config.substitutions.append(("%PYTHON", sys.executable))
config.substitutions.append(("%inputs", os.path.join(config.test_source_root, "frontend",
                                                     "inputs")))
# filecheck with variable scoping as upstream tests expect.
config.substitutions.append(("%filecheck", "filecheck --enable-var-scope"))
