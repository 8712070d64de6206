"""quartet.driver: the pass registry, the named pipelines and the pipeline runner.

It sits above the passes and the lowering (layers: frontend -> driver -> passes -> lowering ->
dialects -> runtime), so that neither of those layers knows about pipelines: ``catalog.py``
lists every pass, ``pipelines.py`` the named pipelines, ``run.py`` parses MLIR and runs a
pipeline of Quartet and upstream passes in one PassManager.
"""

from .run import parse, run_pipeline  # noqa: F401
