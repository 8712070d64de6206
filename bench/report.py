"""Report step of the benchmark (runs here): RESULTS.md and plots from one run's JSON.

``python -m bench.report [RUN.json] [--results bench/RESULTS.md] [--plots bench/plots]``

Without a file it takes the newest ``bench/results/run-*.json``.  It writes:

- ``bench/RESULTS.md``: the device, date and versions of the run, the two ceilings, and per
  workload the end-to-end median of every system, Quartet's speedup over the best peer (or the
  reason it has no number), the roofline limit and the share of it reached, kernel-only times,
  relative errors against float64, and compile times (Quartet's from the build step, on the
  build machine; torch.compile's from the run).  Every number comes from the JSON; nothing is
  typed in.
- ``bench/plots/speedup_vs_eager.png``: every system's speedup over PyTorch eager;
  ``bench/plots/speedup_quartet.png``: Quartet's speedup over each peer (only when at least one
  Quartet row ran); ``bench/plots/roofline.png``: every workload on the roofline of the measured
  ceilings (fp16 and fp32 roofs), best peer and Quartet.

Plots need matplotlib (not a dependency of Quartet: ``pip install matplotlib``); without it
RESULTS.md is still written and says the plots were not made.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    __package__ = "bench"

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "bench" / "results"
PEERS = ("eager", "compile", "compile_ro")
SYSTEMS = PEERS + ("quartet",)
LABELS = {"eager": "eager", "compile": "torch.compile", "compile_ro": "compile (reduce-overhead)",
          "quartet": "Quartet"}
FAMILY_MARKERS = {"roller": "o", "welder": "s", "grinder": "^", "rammer": "D"}


def newest_run(folder: Path = RESULTS_DIR) -> Path:
    runs = sorted(Path(folder).glob("run-*.json"))
    if not runs:
        raise SystemExit(f"no run-*.json in {folder}; pass the run's JSON file")
    return runs[-1]


def ok(rec: dict, system: str) -> bool:
    return rec["systems"].get(system, {}).get("status") == "ok"


def e2e(rec: dict, system: str) -> float | None:
    return rec["systems"][system]["e2e"]["median_ms"] if ok(rec, system) else None


def quartet_wrong(rec) -> str | None:
    """Why Quartet's result of this row is wrong, or None: its error against float64 more than
    ten times eager PyTorch's and above 1e-2, or more token mismatches than eager's."""
    q = (rec["systems"].get("quartet") or {}).get("check") or {}
    ref = (rec["systems"].get("eager") or {}).get("check") or {}
    err, base = q.get("rel_err"), ref.get("rel_err") or 0.0
    if isinstance(err, float) and (math.isnan(err) or err > max(10 * base, 1e-2)):
        return f"rel. error {err:.2g}, eager {base:.2g}"
    if q.get("int_mismatch", 0) > ref.get("int_mismatch", 0):
        return f"{q['int_mismatch']} token mismatches"
    return None


def best_peer(rec: dict) -> tuple[str | None, float | None]:
    times = [(e2e(rec, s), s) for s in PEERS if ok(rec, s)]
    if not times:
        return None, None
    t, s = min(times)
    return s, t


def ms(v: float | None) -> str:
    if v is None:
        return "-"
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    if v >= 1:
        return f"{v:.2f}"
    if v >= 0.1:
        return f"{v:.3f}"
    return f"{v:.4f}"


def status_cell(rec: dict, system: str) -> str:
    r = rec["systems"].get(system)
    if r is None:
        return "not run"
    if r.get("status") == "ok":
        return ms(r["e2e"]["median_ms"])
    return _escape(r.get("status") or "-")


def _escape(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def _pct(limit: float | None, t: float | None) -> str:
    return f"{100 * limit / t:.0f}%" if limit and t else "-"


def host_us(r: dict) -> float | None:
    """End to end minus kernel-only, in microseconds (issue 14): what one call costs on the
    host beyond the device's busy time."""
    if r.get("status") != "ok" or r.get("kernel_ms") is None or not r.get("e2e"):
        return None
    return (r["e2e"]["median_ms"] - r["kernel_ms"]) * 1e3


def host_overhead_table(run: dict, systems: list[str]) -> list[str]:
    """The host-overhead column per system: end to end minus kernel-only (µs per call)."""
    L = ["## Host overhead per call (µs)", "",
         "End-to-end median minus kernel-only time (the two columns above), per call: "
         "launches, argument handling, host round trips. Issue 14 aims at 10 µs or less for a "
         "single-kernel Quartet program called with CUDA tensors.", ""]
    hdr = ["workload"] + [f"{LABELS[s]} host" for s in systems]
    L.append("| " + " | ".join(hdr) + " |")
    L.append("|" + "---|" * len(hdr))
    for rec in run["workloads"]:
        values = [host_us(rec["systems"].get(s, {})) for s in systems]
        L.append("| " + " | ".join([rec["name"]] + ["-" if v is None else f"{v:.0f}"
                                                     for v in values]) + " |")
    L.append("")
    return L


def _err(r: dict) -> str:
    if r.get("status") != "ok":
        return "-"
    c = r.get("check", {})
    if "error" in c:
        return _escape(c["error"])
    parts = []
    if c.get("rel_err") is not None:
        parts.append("NaN" if isinstance(c["rel_err"], float) and math.isnan(c["rel_err"])
                     else f"{c['rel_err']:.1e}")
    if "int_mismatch" in c:
        parts.append(f"{c['int_mismatch']} tok")
    return ", ".join(parts) or "-"


def welder_table(run: dict, systems: list[str]) -> list[str]:
    """The Welder rows (those whose build recorded ``global_bytes_model``): kernels per call,
    the cost model's global-memory bytes before and after fusion, and Quartet's end-to-end time
    over each peer's, eager's CUDA graph and the SDPA twin's graph (issue 10, "Measured")."""
    L: list[str] = []
    fused = [r for r in run["workloads"]
             if r["systems"].get("quartet", {}).get("global_bytes_model")]
    if fused:
        L.append("## Welder fusion: kernels and global-memory bytes per call")
        L.append("")
        L.append("From the build (`bench.build`): kernels Quartet launches per call with Welder's "
                 "groups, against one kernel per operator, and the global-memory bytes per call "
                 "by Welder's cost model (`welder.bytes`, `welder.bytes_unfused` in the IR), "
                 "before and after fusion. Time ratios: Quartet's end-to-end time over each "
                 "peer's (below 1 is faster).")
        L.append("")
        L.append("*eager graph*: eager captured as one CUDA graph; *SDPA graph*: the same model "
                 "with PyTorch's fused `scaled_dot_product_attention` in its attention, captured "
                 "as one CUDA graph (issue 10's hand-written reference); both against Quartet's "
                 "program in graph mode where it has one.")
        L.append("")
        peers = [s for s in systems if s != "quartet"]
        L.append("| workload | kernels (fused / unfused) | MB before | MB after | "
                 + " | ".join(f"/ {LABELS[s]}" for s in peers)
                 + " | / eager graph | / SDPA graph |")
        L.append("|---|---|---|---|" + "---|" * (len(peers) + 2))
        for rec in fused:
            q = rec["systems"]["quartet"]
            g = q["global_bytes_model"]
            tq = e2e(rec, "quartet")
            eager = rec["systems"].get("eager", {})
            tg = q.get("graph_ms") or tq        # graph against graph where Quartet has one
            pairs = [(tq, e2e(rec, s)) for s in peers] + [(tg, eager.get("graph_ms")),
                                                          (tg, eager.get("sdpa_graph_ms"))]
            ratios = [f"{a / b:.2f}" if a and b else "-" for a, b in pairs]
            L.append(f"| {rec['name']} | {q.get('kernels') or '-'} / "
                     f"{g.get('kernels_unfused', '-')} | {g['unfused'] / 1e6:.4g} | "
                     f"{g['fused'] / 1e6:.4g} | " + " | ".join(ratios) + " |")
        L.append("")
    return L


def markdown(run: dict, run_path: Path, plots: dict[str, Path | None], results: Path) -> str:
    dev, v, c = run["device"], run["versions"], run.get("ceilings") or {}
    when = f"{dev['name']}, {run['date']}"
    systems = [s for s in SYSTEMS if s in run.get("systems", {})]
    L = []
    L.append("# Benchmark results")
    L.append("")
    L.append(f"Written by `python -m bench.report` from `{_rel(run_path, results.parent)}`; "
             f"`bench/README.md` says how to repeat it. Do not edit by hand.")
    L.append("")
    if run["settings"].get("tiny"):
        L.append("**Tiny sizes (`--tiny`): a dry run of the harness, not the benchmark; the titles "
                 "below name the real sizes.**")
        L.append("")
    L.append(f"**Every number below was measured on {dev['name']} on {run['date']} (UTC)**, in one "
             f"process, unless its column says otherwise (Quartet's compile times come from the "
             f"build machine).")
    L.append("")
    vers = ", ".join(f"{k} {v[k]}" for k in ("torch", "cuda_runtime", "driver", "cudnn", "triton",
                                             "python") if v.get(k) is not None)
    L.append(f"- device: {dev['name']} ({dev.get('capability', '?')}"
             + (f", {dev['sms']} SMs, {dev['l2_mib']:.0f} MiB L2" if "sms" in dev else "") + ")")
    L.append(f"- software: {vers}")
    num = run.get("numerics", {})
    if num:
        L.append(f"- PyTorch numerics flags left at their defaults: matmul TF32 "
                 f"{num.get('matmul_allow_tf32')}, cuDNN TF32 {num.get('cudnn_allow_tf32')}, "
                 f"float32 matmul precision '{num.get('float32_matmul_precision')}'")
    if c:
        L.append(f"- ceilings measured in this run: device-to-device copy "
                 f"**{c['copy_GBps']:.0f} GB/s** (bytes read + written, {c['copy_bytes'] / 2**20:.0f} "
                 f"MiB), fp16 matmul {c['mm_f16_size']}^3 **{c['mm_f16_TFLOPs']:.0f} TFLOP/s**, fp32 "
                 f"matmul {c['mm_f32_size']}^3 **{c['mm_f32_TFLOPs']:.1f} TFLOP/s**")
    b = run.get("build")
    if b:
        L.append(f"- Quartet artifacts: built on {b.get('host')} on {b.get('date')} for "
                 f"{b.get('target')}, commit {b.get('git_commit')}")
    else:
        L.append("- Quartet artifacts: none (no build manifest was carried to the run)")
    L.append(f"- whole run: {run.get('wall_s', 0):.0f} s; settings: pool {run['settings'].get('pool')} "
             f"input sets, warm-up {run['settings'].get('warmup')} calls, about "
             f"{run['settings'].get('target_s')} s of calls per median, torch.compile capped at "
             f"{run['settings'].get('compile_cap_s'):.0f} s")
    L.append("")

    # -- table 1: end-to-end --------------------------------------------------------------
    L.append("## End-to-end time per call (ms, median)")
    L.append("")
    L.append("From an idle GPU to the end of the call's device work (CUDA events), median over many "
             "calls on rotating fresh random inputs. *limit*: the roofline limit "
             "max(FLOPs / matmul rate, bytes / copy bandwidth) with the fewest bytes (every input "
             "and weight read once, every output written once); *% limit*: limit / time of the "
             "fastest system. Quartet's speedup is over the fastest peer.")
    L.append("")
    hdr = ["workload", "family"] + [LABELS[s] for s in systems] + \
          ["Quartet vs best peer", "limit (ms)", "bound", "% limit (best)", "% limit (Quartet)"]
    L.append("| " + " | ".join(hdr) + " |")
    L.append("|" + "---|" * len(hdr))
    for rec in run["workloads"]:
        peer, t_peer = best_peer(rec)
        tq = e2e(rec, "quartet") if "quartet" in systems else None
        wrong = quartet_wrong(rec)
        if wrong:
            sp = f"**WRONG** ({wrong}): no speedup claimed"
        elif tq and t_peer:
            sp = f"**{t_peer / tq:.2f}x** (vs {LABELS[peer]})"
        elif "quartet" in systems:
            sp = "no Quartet number"
        else:
            sp = "-"
        times = [t for t in (t_peer, tq) if t]
        best = min(times) if times else None
        name = rec["name"] + (" †" if rec.get("trip") else "")
        row = [name, rec["family"]] + [status_cell(rec, s) for s in systems] + \
              [sp, ms(rec.get("limit_ms")), rec.get("bound") or "-",
               _pct(rec.get("limit_ms"), best), _pct(rec.get("limit_ms"), tq)]
        L.append("| " + " | ".join(row) + " |")
    L.append("")
    trips = [r for r in run["workloads"] if r.get("trip")]
    if trips:
        L.append("† data-dependent work: FLOPs and bytes count the work actually done, averaged "
                 "over the timing inputs: " + "; ".join(
                     f"{r['name']} {r['trip']['mean']:.1f} of at most {r['trip']['max']} "
                     f"({'blocks taken' if 'skip' in r['name'] else 'steps decoded'})" for r in trips) + ".")
        L.append("")

    # -- table 2: kernel-only and errors -----------------------------------------------------
    L.append("## Kernel-only time (ms) and error against float64")
    L.append("")
    L.append("*kernels*: device-busy time per call from the torch profiler (union of the kernels', "
             "copies' and memsets' device intervals), launches per call in brackets. *graph*: for "
             "eager, the call captured once as a CUDA graph and replayed; for Quartet, the "
             "runtime's `bench()` of its host program in graph mode. reduce-overhead copies "
             "the inputs into its graph's static buffers, and those copies count as its device "
             "time. *error*: "
             "||out − ref|| / ||ref|| against the same weights in float64 (tokens: mismatches).")
    L.append("")
    hdr = ["workload"] + [f"{LABELS[s]} kernels" for s in systems] + ["eager graph"] + \
          (["Quartet graph"] if "quartet" in systems else []) + [f"{LABELS[s]} error" for s in systems]
    L.append("| " + " | ".join(hdr) + " |")
    L.append("|" + "---|" * len(hdr))
    for rec in run["workloads"]:
        row = [rec["name"]]
        for s in systems:
            r = rec["systems"].get(s, {})
            if r.get("status") == "ok" and r.get("kernel_ms") is not None:
                row.append(f"{ms(r['kernel_ms'])} ({r.get('kernels_per_call', 0):.0f})")
            else:
                row.append("-")
        row.append(ms(rec["systems"].get("eager", {}).get("graph_ms")))
        if "quartet" in systems:
            row.append(ms(rec["systems"].get("quartet", {}).get("graph_ms")))
        row += [_err(rec["systems"].get(s, {})) for s in systems]
        L.append("| " + " | ".join(row) + " |")
    L.append("")

    # -- table 2b: host overhead ----------------------------------------------------------------
    L += host_overhead_table(run, systems)

    # -- table 3: compile times ---------------------------------------------------------------
    L.append("## Compile time (s)")
    L.append("")
    L.append("Quartet: `quartet.compile(...)` in the build step, on the build machine (no GPU). "
             "torch.compile: wall time of the first call in this run (tracing, Inductor, Triton "
             "builds; Inductor's on-disk caches start empty on a fresh machine, but kernels built "
             "for an earlier workload of the run are reused).")
    L.append("")
    L.append("*linalg -> binary per kernel*: Quartet's passes plus lowering (every kernel built "
             "and assembled), without the torch-mlir import, divided by the kernels made.")
    L.append("")
    L.append("| workload | Quartet pipeline | Quartet | kernels | linalg -> binary per kernel | "
             "torch.compile | compile (reduce-overhead) |")
    L.append("|---|---|---|---|---|---|---|")
    for rec in run["workloads"]:
        q = rec["systems"].get("quartet", {})
        qc = q.get("compile_s")
        cells = []
        for s in ("compile", "compile_ro"):
            r = rec["systems"].get(s)
            if r is None:
                cells.append("not run")
            elif r.get("compile_s") is not None:
                cells.append(f"{r['compile_s']:.1f}")
            else:
                cells.append(_escape(r.get("status") or "-"))
        stages, kernels = q.get("stage_s") or {}, q.get("kernels")
        per = "-"
        if kernels and "passes" in stages and "lower" in stages:
            per = f"{(stages['passes'] + stages['lower']) / kernels:.2f}"
        L.append(f"| {rec['name']} | {q.get('pipeline') or '-'} | "
                 f"{f'{qc:.2f}' if qc is not None else _escape(q.get('status') or '-')} | "
                 f"{kernels if kernels else '-'} | {per} | "
                 + " | ".join(cells) + " |")
    L.append("")
    persistent = [(rec["name"], rec["systems"].get("quartet", {})) for rec in run["workloads"]]
    persistent = [(n, q) for n, q in persistent if q.get("persistent")]
    if persistent:
        L.append("Persistent kernels (Rammer; from the build): launches per call of the host "
                 "program, and each kernel's tasks, vEUs, blocks and the SM occupancy of its "
                 "resident blocks (warps per SM / 64).")
        L.append("")
        L.append("| workload | launches / call | kernel | tasks | vEUs | blocks x threads | "
                 "blocks / SM | occupancy |")
        L.append("|---|---|---|---|---|---|---|---|")
        for name, q in persistent:
            for p in q["persistent"]:
                L.append(f"| {name} | {q.get('launches_per_call', '-')} | {p['kernel']} | "
                         f"{p['tasks']} | {p['veus']} | {p['blocks']} x {p['threads']} | "
                         f"{p['blocks_per_sm']} | {p['occupancy']:.0%} |")
        L.append("")

    L += welder_table(run, systems)

    # -- workloads -----------------------------------------------------------------------------
    L.append("## Workloads")
    L.append("")
    L.append("| workload | family | what | GFLOP | MB moved (min) | FLOP/byte |")
    L.append("|---|---|---|---|---|---|")
    for rec in run["workloads"]:
        L.append(f"| {rec['name']} | {rec['family']} | {_escape(rec['title'])} | "
                 f"{rec['flops'] / 1e9:.4g} | {rec['bytes'] / 1e6:.4g} | {rec['intensity']:.3g} |")
    L.append("")
    notes = [r for r in run["workloads"] if r.get("notes")]
    for r in notes:
        L.append(f"- {r['name']}: {r['notes']}.")
    if notes:
        L.append("")

    # -- plots ----------------------------------------------------------------------------------
    L.append("## Plots")
    L.append("")
    for title, key in (("Speedup over PyTorch eager", "vs_eager"),
                       ("Quartet's speedup over each peer", "quartet"),
                       ("Roofline", "roofline")):
        p = plots.get(key)
        if p is not None:
            L.append(f"![{title}]({_rel(p, results.parent)})")
            L.append("")
        elif key == "quartet":
            L.append("No Quartet row ran in this run, so there is no plot of Quartet's speedup.")
            L.append("")
    if plots.get("missing"):
        L.append(f"Plots not made: {plots['missing']}.")
        L.append("")
    return "\n".join(L)


def _rel(p: Path, base: Path) -> str:
    try:
        return str(Path(p).resolve().relative_to(Path(base).resolve()))
    except ValueError:
        return str(p)


def make_plots(run: dict, folder: Path) -> dict:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return {"missing": "matplotlib is not installed (pip install matplotlib)"}
    folder.mkdir(parents=True, exist_ok=True)
    out: dict = {}
    when = f"{run['device']['name']}, {run['date'][:10]}"
    recs = run["workloads"]
    names = [r["name"] for r in recs]

    # speedup over eager, every system
    colors = {"compile": "C0", "compile_ro": "C1", "quartet": "C3"}
    systems = [s for s in ("compile", "compile_ro", "quartet") if s in run.get("systems", {})
               and any(e2e(r, "eager") and e2e(r, s) for r in recs)]
    fig, ax = plt.subplots(figsize=(max(8, 0.6 * len(recs)), 4.8))
    width = 0.8 / max(1, len(systems))
    for i, s in enumerate(systems):
        xs, ys = [], []
        for j, r in enumerate(recs):
            te, ts = e2e(r, "eager"), e2e(r, s)
            if te and ts:
                xs.append(j + (i - (len(systems) - 1) / 2) * width)
                ys.append(te / ts)
        ax.bar(xs, ys, width, label=LABELS[s], color=colors[s])
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_yscale("log")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("speedup over PyTorch eager (end-to-end)")
    ax.set_title(f"Speedup over PyTorch eager — {when}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    p = folder / "speedup_vs_eager.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    out["vs_eager"] = p

    # Quartet over each peer
    qrecs = [r for r in recs if e2e(r, "quartet")]
    stale = folder / "speedup_quartet.png"
    if qrecs:
        fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(qrecs)), 4.8))
        width = 0.8 / len(PEERS)
        for i, s in enumerate(PEERS):
            xs, ys = [], []
            for j, r in enumerate(qrecs):
                tp, tq = e2e(r, s), e2e(r, "quartet")
                if tp and tq:
                    xs.append(j + (i - (len(PEERS) - 1) / 2) * width)
                    ys.append(tp / tq)
            ax.bar(xs, ys, width, label=f"vs {LABELS[s]}")
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_yscale("log")
        ax.set_xticks(range(len(qrecs)))
        ax.set_xticklabels([r["name"] for r in qrecs], rotation=60, ha="right", fontsize=8)
        ax.set_ylabel("Quartet speedup (end-to-end)")
        ax.set_title(f"Quartet over each peer — {when}")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(stale, dpi=110)
        plt.close(fig)
        out["quartet"] = stale
    elif stale.exists():
        stale.unlink()  # a plot from an older run must not sit beside this one's results

    # roofline
    c = run.get("ceilings")
    if c:
        fig, ax = plt.subplots(figsize=(8, 5.5))
        bw = c["copy_GBps"] * 1e9
        xs = [r["intensity"] for r in recs]
        lo, hi = min(xs + [0.1]) / 2, max(xs + [1e3]) * 2
        grid = [lo * (hi / lo) ** (k / 200) for k in range(201)]
        for key, label, style in (("mm_f16_TFLOPs", "fp16 roof", "-"), ("mm_f32_TFLOPs", "fp32 roof", "--")):
            peak = c[key] * 1e12
            ax.plot(grid, [min(peak, x * bw) / 1e12 for x in grid], style, color="gray", label=label)
        for r in recs:
            m = FAMILY_MARKERS.get(r["family"], "o")
            s, t = best_peer(r)
            if t:
                ax.scatter(r["intensity"], r["flops"] / (t * 1e-3) / 1e12, marker=m, color="C0",
                           s=30)
                ax.annotate(r["name"], (r["intensity"], r["flops"] / (t * 1e-3) / 1e12),
                            fontsize=6, xytext=(3, 3), textcoords="offset points")
            tq = e2e(r, "quartet")
            if tq:
                ax.scatter(r["intensity"], r["flops"] / (tq * 1e-3) / 1e12, marker=m, color="C3",
                           s=30)
        ax.scatter([], [], color="C0", label="best PyTorch peer")
        if any(e2e(r, "quartet") for r in recs):
            ax.scatter([], [], color="C3", label="Quartet")
        for fam, m in FAMILY_MARKERS.items():
            ax.scatter([], [], marker=m, color="k", facecolors="none", label=fam)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("arithmetic intensity (FLOP per byte, fewest bytes)")
        ax.set_ylabel("achieved TFLOP/s (end-to-end)")
        ax.set_title(f"Roofline of the measured ceilings — {when}")
        ax.legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        p = folder / "roofline.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        out["roofline"] = p
    return out


def report(run_path: Path, results: Path, plots_dir: Path) -> Path:
    run = json.loads(Path(run_path).read_text())
    plots = make_plots(run, plots_dir)
    results.write_text(markdown(run, Path(run_path), plots, results) + "\n")
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.split("\n")[0])
    ap.add_argument("run", nargs="?", type=Path, help="a run's JSON (default: newest in bench/results)")
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "RESULTS.md")
    ap.add_argument("--plots", type=Path, default=ROOT / "bench" / "plots")
    args = ap.parse_args(argv)
    path = args.run or newest_run()
    out = report(path, args.results, args.plots)
    print(f"wrote {out} from {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
