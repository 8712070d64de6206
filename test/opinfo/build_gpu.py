"""Build the OpInfo cases that are right on the CPU for sm_90, here (no GPU needed).

    .venv/bin/python test/opinfo/build_gpu.py            # every dtype of docs/opinfo/*.jsonl
    .venv/bin/python test/opinfo/build_gpu.py --dtype float32 --ops abs,var_mean

For each dtype, the ops whose CPU outcome (``docs/opinfo/cpu_<dtype>.jsonl``, written by
``run.py``) is ``right`` are compiled for sm_90 into ``.artifacts/opinfo_sm90/<op>/<dtype>/<i>/``
(artifact, inputs, eager and float64 outputs), and each build's outcome (built / refused /
crash) into ``docs/opinfo/sm_90_<dtype>.jsonl``. Then, on the GPU machine, ``run_gpu.py`` runs
the folder in one call. Resumable like ``run.py`` (``--fresh`` starts over).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run  # noqa: E402
from harness import DTYPES, ROOT  # noqa: E402

RESULTS = ROOT / "docs" / "opinfo"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dtype", action="append", help=f"default: {', '.join(DTYPES)}")
    p.add_argument("--ops")
    p.add_argument("--folder", type=Path, default=ROOT / ".artifacts" / "opinfo_sm90")
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--fresh", action="store_true")
    args = p.parse_args(argv)
    for dtype in args.dtype or DTYPES:
        if args.fresh:        # no stale cases of this dtype for run_gpu.py to find
            import shutil

            for old in args.folder.glob(f"*/{dtype}"):
                shutil.rmtree(old)
        cpu = args.results / f"cpu_{dtype}.jsonl"
        if not cpu.exists():
            print(f"no {cpu}: run test/opinfo/run.py --dtype {dtype} first")
            continue
        extra = ["--ops", args.ops] if args.ops else []
        extra += ["--fresh"] if args.fresh else []
        run.main(["--target", "sm_90", "--dtype", dtype, "--only-right", str(cpu),
                  "--folder", str(args.folder),
                  "--out", str(args.results / f"sm_90_{dtype}.jsonl")] + extra)
    return 0


if __name__ == "__main__":
    sys.exit(main())
