"""quartet.passes.roller: Roller (OSDI'22), analytical tile programs.

* ``policy.py``: the construction policy (alignment rules, growth by data-reuse score per memory
  level, the micro performance model, scale-out and shrinking, padding of irregular extents,
  top-k), on a ``LinalgInfo`` and a ``runtime/targets.py`` description; no IR.
* ``config.py``: the ``roller-config{target=... topk=...}`` pass that writes the schedule
  attributes on every ``quartet.tile`` and validates hand-given ones (``check_fits``).
* ``bench_policy.py``: per-operator policy time, ``python -m quartet.passes.roller.bench_policy``.

Shared analyses live one level up: ``runtime/targets.py`` (targets) and ``passes/footprint.py``
(data tiles, footprint and traffic from indexing maps).
"""
