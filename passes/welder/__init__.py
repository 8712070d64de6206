"""quartet.passes.welder: Welder (OSDI'23), tile-graph fusion.

* ``views.py``: ``welder-collapse-views``, reshape views between operators removed.
* ``graph.py``: the tile graph (tiles of a block, edges through views).
* ``propagate.py``: output tiles propagated back over indexing maps and views (intervals).
* ``cost.py``, ``bestfit.py``: traffic per memory level, best-fit footprint, latency.
* ``group.py``: greedy grouping by estimated (or measured) latency; merging tiles.
* ``fuse.py``: the ``welder-fuse`` pass; ``record.py``: tuning records;
  ``standalone.py``: one tile as a program (tuning artifacts, emulator checks).

The fused kernels are in ``lowering/kernels/fused*.py``; the pipeline in ``driver/pipelines.py``.
"""
