"""Named pipelines: each compiler is a pipeline over the same IR (DESIGN.md).

A pipeline ends with configured tiles; it does not lower them. The one stage after any pipeline
is :func:`quartet.lowering.lower.lower` (``quartet.compile``, ``quartet-compile``, and
``quartet-opt -o model.qrt``), so a user can stop after any pass, print the IR, feed it back to
``quartet-opt`` and still finish it into an artifact. To see kernels in the IR, append
``quartet-lower-gpu{target=...}`` (or ``quartet-lower-cpu``) to the pipeline.

``roller{target=T chip=C topk=K}``: linalg on tensors -> casts and transposes in front of
contractions folded into mixed-precision contractions (``roller-fold-casts``) -> one
``quartet.tile`` per linalg op (``quartet-outline-tiles``) -> one per operator (``roller-fuse``:
fills, casts and element-wise ops join the op that owns their iteration space) -> Roller's tile
programs (``roller-config``), which also record on each tile the block program that takes it.

``welder{target=T chip=C verbose=B tuning=R}``: the Roller passes with the reshape views
between operators removed first (``welder-collapse-views``), then Welder's grouping
(``welder-fuse``): groups of tiles merged into one tile each, fused patterns recorded for the
lowering (``kernel = "fused"``).
"""

from __future__ import annotations

from quartet.runtime import targets

from .registry import register_pipeline

TARGET_HELP = f"{', '.join(targets.TARGETS)} (default sm_90)"
CHIP_HELP = ("the chip of the target (runtime/targets.py): " +
             "; ".join(f"{t}: {', '.join(c)}" for t, c in targets.TARGETS.items()) +
             " (default: the first)")


def _target_options(options: dict[str, str]) -> str:
    target = options.get("target", "sm_90")
    chip = options.get("chip", "")
    return f"target={target}" + (f" chip={chip}" if chip else "")


def roller(options: dict[str, str]) -> list[str]:
    where = _target_options(options)
    topk = options.get("topk", "1")
    return ["roller-fold-casts", "quartet-outline-tiles", f"roller-fuse{{{where}}}",
            f"roller-config{{{where} topk={topk}}}"]


def welder(options: dict[str, str]) -> list[str]:
    where = _target_options(options)
    extra = "".join(f" {k}={options[k]}" for k in ("verbose", "tuning") if options.get(k))
    return ["roller-fold-casts", "welder-collapse-views", "quartet-outline-tiles",
            f"roller-fuse{{{where}}}", f"roller-config{{{where}}}",
            f"welder-fuse{{{where}{extra}}}"]


def register_all() -> None:
    register_pipeline("roller", "Roller: outline one tile per operator and give each its tile "
                      "program (one kernel per operator once lowered)",
                      options={"target": TARGET_HELP, "chip": CHIP_HELP,
                               "topk": "schedules kept per tile (default 1)"})(roller)
    register_pipeline("welder", "Welder: Roller's passes, then tile-graph fusion by estimated "
                      "latency; fused groups keep intermediates in shared memory or registers "
                      "(one kernel per group once lowered)",
                      options={"target": TARGET_HELP, "chip": CHIP_HELP,
                               "verbose": "print every grouping decision to stderr",
                               "tuning": "a tuning record of measured latencies "
                                         "(passes/welder/record.py)"})(welder)
