"""Run the OpInfo differential test (``harness.py``) over many ops; write JSON lines and a summary.

    .venv/bin/python test/opinfo/run.py --dtype float32 --out .artifacts/opinfo/cpu_f32.jsonl
    .venv/bin/python test/opinfo/run.py --dtype float16 --ops abs,add,softmax
    .venv/bin/python test/opinfo/run.py --target sm_90 --only-right .artifacts/opinfo/cpu_f32.jsonl \
        --folder .artifacts/opinfo_sm90 --out .artifacts/opinfo/sm90_f32.jsonl

Results already in ``--out`` are kept and their cases skipped (a run can be resumed); ``--fresh``
starts over. ``--samples N`` compiles each op's first N usable samples. Every case runs in the
harness's worker process (a crash there is recorded, the run goes on).
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import ROOT, Outcome, Pool, all_cases  # noqa: E402


def read(path: Path) -> list[Outcome]:
    if not path.exists():
        return []
    return [Outcome(**json.loads(line)) for line in path.read_text().splitlines() if line]


def op_outcome(results: list[Outcome]) -> str:
    """One op's outcome: its first sample's, unless a later one is wrong or crashed."""
    worst = [r.outcome for r in results if r.outcome in ("wrong", "crash")]
    return worst[0] if worst else results[0].outcome


def summary(results: list[Outcome]) -> dict:
    by_case = collections.defaultdict(list)
    for r in results:
        by_case[(r.op, r.dtype, r.target)].append(r)
    return dict(collections.Counter(op_outcome(v) for v in by_case.values()))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dtype", default="float32")
    p.add_argument("--target", default="cpu")
    p.add_argument("--ops", help="comma-separated case names (default: every op of op_db)")
    p.add_argument("--only-right", type=Path,
                   help="a CPU results file: only its ops that were right in this dtype")
    p.add_argument("--samples", type=int, default=1)
    p.add_argument("--folder", type=Path, default=ROOT / ".artifacts" / "opinfo_sm90",
                   help="GPU targets: where the artifacts go")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--fresh", action="store_true")
    p.add_argument("--rerun", metavar="OUTCOME",
                   help="run again the cases of --out whose outcome is OUTCOME (e.g. refused, "
                        "after a fix), replacing their lines")
    p.add_argument("--timeout", type=float, default=180.0)
    args = p.parse_args(argv)

    cases = args.ops.split(",") if args.ops else all_cases()
    if args.only_right:
        right = {r.op for r in read(args.only_right)
                 if r.outcome == "right" and r.dtype == args.dtype}
        cases = [c for c in cases if c in right]
    if args.fresh and args.out.exists():
        args.out.unlink()
    if args.rerun and args.out.exists():
        kept = read(args.out)
        again = {r.op for r in kept if r.outcome == args.rerun}
        args.out.write_text("".join(r.to_json() + "\n" for r in kept if r.op not in again))
        cases = [c for c in cases if c in again]
    done = {(r.op, r.dtype, r.target) for r in read(args.out)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    pool = Pool(timeout=args.timeout)
    t0 = time.perf_counter()
    extra = {"folder": str(args.folder.resolve())} if args.target != "cpu" else {}
    try:
        with args.out.open("a") as f:
            for n, case in enumerate(cases):
                if (case, args.dtype, args.target) in done:
                    continue
                results = pool.run(case, args.dtype, args.target, samples=args.samples, **extra)
                for r in results:
                    f.write(r.to_json() + "\n")
                f.flush()
                print(f"[{n + 1}/{len(cases)} {time.perf_counter() - t0:6.0f}s] {case}: "
                      f"{op_outcome(results)} {results[0].reason[:100]}", flush=True)
    finally:
        pool.close()
    print(json.dumps(summary(read(args.out))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
