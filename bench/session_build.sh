#!/usr/bin/env bash
# Build here (MLIR, no GPU) every artifact that bench/session_run.sh checks and times on the GPU
# machine, in one go:
#
#     bash bench/session_build.sh [STEP ...]      # steps: welder bench grinder rows quartet opinfo
#
# welder   bench/e2e/welder.py's cases (fused kernels at real sizes)     -> .artifacts/welder
# bench    the benchmark's Welder and Rammer rows, and the two single-kernel rows that
#          bench/profile_call.py times (bench/build.py)                 -> .artifacts/bench
# grinder  the Grinder rows, device and host loops (bench/grinder)      -> .artifacts/grinder
# rows     memory-bound kernels, old and new (bench/rows/bandwidth.py)  -> .artifacts/h13b
# quartet  the Welder, Rammer and Grinder rows with the quartet pipeline -> .artifacts/bench_quartet
# opinfo   PyTorch's OpInfo samples for sm_90 (test/opinfo/build_gpu.py) -> .artifacts/opinfo_sm90
#
# Everything lands under .artifacts/ (git-ignored); the device call carries it with
# carry=[".artifacts"] (64 MiB with the repository: `du -sh .artifacts` before the call).
set -uo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(welder bench grinder rows)
status=0
for step in "${steps[@]}"; do
  start=$(date +%s)
  case "$step" in
    welder)  python -m quartet.bench.e2e.welder build .artifacts/welder ;;
    bench)   python -m bench.build --out .artifacts/bench --only rammer,welder,softmax_f16,matmul_f32_1024 \
               --max-mib 30 ;;
    grinder) python -m bench.build --out .artifacts/grinder --only grinder \
               --pipelines 'grinder,grinder{control=host}' --max-mib 20 ;;
    rows)    python bench/rows/bandwidth.py build .artifacts/h13b ;;
    quartet) python -m bench.build --out .artifacts/bench_quartet --only welder,rammer,grinder \
               --pipelines quartet --max-mib 30 ;;
    opinfo)  python test/opinfo/build_gpu.py --dtype float32 --fresh ;;
    *) echo "unknown step '$step' (steps: welder bench grinder rows quartet opinfo)" >&2; exit 2 ;;
  esac
  rc=$?
  [ $rc -ne 0 ] && status=1
  echo "== $step: exit $rc after $(( $(date +%s) - start )) s"
done
du -sh .artifacts/* 2>/dev/null
exit $status
