"""Named pipelines: each compiler is a pipeline over the same IR (DESIGN.md).

A pipeline ends with configured tiles; it does not lower them. The one stage after any pipeline
is :func:`quartet.lowering.lower.lower` (``quartet.compile``, ``quartet-compile``, and
``quartet-opt -o model.qrt``), so a user can stop after any pass, print the IR, feed it back to
``quartet-opt`` and still finish it into an artifact. To see kernels in the IR, append
``quartet-lower-gpu{target=...}`` (or ``quartet-lower-cpu``) to the pipeline.

``roller{target=T chip=C topk=K}``: linalg on tensors -> casts and transposes in front of
contractions folded into mixed-precision contractions (``roller-fold-casts``) -> one
``quartet.tile`` per linalg op (``quartet-outline-tiles``) -> one per operator (``roller-fuse``:
fills, casts and element-wise ops join the op that owns their iteration space) -> column
reductions over too few columns split in two (``roller-split-reductions``, GPU targets) ->
Roller's tile programs (``roller-config``), which also record on each tile the block program that takes it.

``rammer{target=T chip=C topk=K sync=S}``: Roller's pipeline with its top-k schedules kept as
kernel versions (``topk``, default 8: enough for versions of 128 threads beside the
256-thread ones of element-wise tiles, so that a kernel of narrow GEMM bodies keeps 4 vEUs per
SM), after host data movement became tiles
(``quartet-outline-data-movement``), then Rammer's wavefront schedule: each segment of
independent tiles becomes one ``quartet.uvirtual`` of ``quartet.vtask``s (``rammer-schedule``),
checked on the CPU (``rammer-check``): one persistent kernel per uvirtual once lowered.

``grinder{target=T chip=C topk=K control=auto unroll=0 max_iterations=0 verbose=false}``:
Rammer's preparation (tiles, data movement as tiles, top-k kernel versions), then loops and
branches around tiles lifted into one ``quartet.uvirtual`` each (``grinder-lift-control-flow``:
static loops counted and unrolled, the body scheduled by Rammer's wavefront, device loop or host
loop chosen by a cost model unless ``control`` says), checked (``grinder-check``): one
cooperative kernel with device-side loops per uvirtual once lowered.
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
            f"roller-split-reductions{{{where}}}", f"roller-config{{{where} topk={topk}}}"]


def rammer(options: dict[str, str]) -> list[str]:
    where = _target_options(options)
    topk = options.get("topk", "8")
    schedule = " ".join(f"{k}={options[k]}" for k in ("sync", "max_per_unit", "max_tasks",
                                                       "always", "measure") if k in options)
    return ["roller-fold-casts", "quartet-outline-tiles", f"roller-fuse{{{where}}}",
            "quartet-outline-data-movement", f"roller-config{{{where} topk={topk}}}",
            f"rammer-schedule{{{where}{' ' + schedule if schedule else ''}}}", "rammer-check"]


def grinder(options: dict[str, str]) -> list[str]:
    where = _target_options(options)
    topk = options.get("topk", "8")
    lift = " ".join(f"{k}={options[k]}" for k in ("control", "unroll", "max_unrolled",
                                                   "max_iterations", "max_per_unit", "measure",
                                                   "verbose") if k in options)
    return ["roller-fold-casts", "quartet-outline-tiles", f"roller-fuse{{{where}}}",
            "quartet-outline-data-movement", f"roller-config{{{where} topk={topk}}}",
            f"grinder-lift-control-flow{{{where}{' ' + lift if lift else ''}}}",
            "grinder-check"]
def welder(options: dict[str, str]) -> list[str]:
    where = _target_options(options)
    extra = "".join(f" {k}={options[k]}" for k in ("verbose", "tuning") if options.get(k))
    return ["roller-fold-casts", "welder-collapse-views", "quartet-outline-tiles",
            f"roller-fuse{{{where}}}", f"roller-config{{{where}}}",
            f"welder-fuse{{{where}{extra}}}"]


def quartet(options: dict[str, str]) -> list[str]:
    """All four (issue 17): Roller's tiles with their top-k versions, Welder's grouping of the
    configured tiles, Grinder's lifting of loops and branches around tiles into device
    programs, then Rammer's schedule of what is left into persistent kernels."""
    where = _target_options(options)
    topk = options.get("topk", "8")
    return ["roller-fold-casts", "welder-collapse-views", "quartet-outline-tiles",
            f"roller-fuse{{{where}}}", f"roller-split-reductions{{{where}}}",
            "quartet-outline-data-movement", f"roller-config{{{where} topk={topk}}}",
            f"welder-fuse{{{where}}}", f"grinder-lift-control-flow{{{where}}}",
            f"rammer-schedule{{{where}}}", "rammer-check", "grinder-check"]


def register_all() -> None:
    register_pipeline("roller", "Roller: outline one tile per operator and give each its tile "
                      "program (one kernel per operator once lowered)",
                      options={"target": TARGET_HELP, "chip": CHIP_HELP,
                               "topk": "schedules kept per tile (default 1)"})(roller)
    register_pipeline("rammer", "Rammer: Roller's tiles, then independent tiles side by side on "
                      "the vEUs of one persistent kernel per segment (quartet.uvirtual)",
                      options={"target": TARGET_HELP, "chip": CHIP_HELP,
                               "topk": "kernel versions kept per tile (default 8)",
                               "sync": "auto, counters or barrier (default auto)",
                               "max_per_unit": "at most this many vEUs per SM (default: what "
                                               "occupancy allows, the fewest within 3% of the "
                                               "best schedule)",
                               "max_tasks": "tiles per persistent kernel (default 128)",
                               "always": "keep every schedule, even where one kernel per "
                                         "operator is estimated faster (default false)",
                               "measure": "build each kernel version to learn its launch "
                                          "shape (default true)"})(rammer)
    register_pipeline("grinder", "Grinder: Roller's tiles, then loops and branches around them "
                      "moved into one persistent kernel each (device-side loops, Rammer's "
                      "schedule inside), or kept on the host, by a cost model",
                      options={"target": TARGET_HELP, "chip": CHIP_HELP,
                               "topk": "kernel versions kept per tile (default 8)",
                               "control": "auto, device or host (default auto: the cost "
                                          "model's choice)",
                               "unroll": "static loops unrolled by this factor (0: fully up "
                                         "to max_unrolled tiles on GPUs, 1: never)",
                               "max_unrolled": "tiles of a loop unrolled by default "
                                               "(default 64)",
                               "max_iterations": "bound on while loops: they stop there and "
                                                 "the runtime warns (default 0: none; GPU "
                                                 "targets)",
                               "max_per_unit": "at most this many vEUs per SM",
                               "measure": "build each kernel version to learn its launch "
                                          "shape (default true)",
                               "verbose": "print why a loop stays on the host (default "
                                          "false)"})(grinder)
    register_pipeline("welder", "Welder: Roller's passes, then tile-graph fusion by estimated "
                      "latency; fused groups keep intermediates in shared memory or registers "
                      "(one kernel per group once lowered)",
                      options={"target": TARGET_HELP, "chip": CHIP_HELP,
                               "verbose": "print every grouping decision to stderr",
                               "tuning": "a tuning record of measured latencies "
                                         "(passes/welder/record.py)"})(welder)
    register_pipeline("quartet", "All four: Roller's tiles and kernel versions, Welder's fusion, "
                      "Grinder's device-side control flow, Rammer's persistent kernels "
                      "(each pass leaves alone what it finds nothing to do for)",
                      options={"target": TARGET_HELP, "chip": CHIP_HELP,
                               "topk": "kernel versions kept per tile (default 8)"})(quartet)
