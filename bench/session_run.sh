#!/usr/bin/env bash
# Check and time on the GPU machine, in one device call, what bench/session_build.sh built:
#
#     run(command="bash bench/session_run.sh 540 [STEP ...]", carry=[".artifacts"], timeout_s=600)
#
# The first argument is the seconds this script may take; each step gets at most its own cap and
# what is left (steps that no longer fit are skipped and said so). Steps, in order (default all):
# selftest (runtime), welder (bench/e2e/welder.py: fused kernels checked and timed), rammer and
# welder_rows (bench/run.py: every peer), grinder (bench/grinder/run.py), rows
# (bench/rows/bandwidth.py; rows_rms: only the RMSNorm cases of .artifacts/h13b_rms), profile
# (bench/profile_call.py: host time of one call, issue 14), quartet_rows (bench/run.py on the
# quartet pipeline's artifacts: session_build.sh quartet), opinfo (test/opinfo/run_gpu.py). Each step runs in its own process
# under `timeout`, so a trap or a hang ends only that step. SYSTEMS=eager,quartet limits the
# peers of the benchmark rows (torch.compile's compiles cost about a minute for the Welder rows). Everything is written under
# /tmp/quartet-session/ and packed into $OUT/session.tgz (the device tool returns at most 8 files); the
# summary ($OUT/summary.txt) is also the end of the output.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
source bench/device_env.sh
total=${1:-540}; shift || true
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(selftest welder grinder welder_rows profile rows rammer)
out=${OUT:-/tmp/out}; w=/tmp/quartet-session; rm -rf "$w"; mkdir -p "$w" "$out"
deadline=$(( $(date +%s) + total ))
summary="$out/summary.txt"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv > "$w/gpu.txt" 2>&1
echo "session $(date -u +%Y-%m-%dT%H%MZ) $(head -2 "$w/gpu.txt" | tail -1)" > "$summary"
cap_of() { case "$1" in selftest) echo 40;; welder) echo 110;; rammer) echo 90;;
  welder_rows) echo 200;; grinder) echo 110;; rows) echo 110;; rows_rms) echo 40;; opinfo) echo 330;;
  profile) echo 60;; quartet_rows) echo 240;;
  *) echo 60;; esac; }
for step in "${steps[@]}"; do
  left=$(( deadline - $(date +%s) - 5 ))
  cap=$(cap_of "$step"); [ $cap -gt $left ] && cap=$left
  if [ $cap -lt 20 ]; then echo "$step: skipped (no time left)" >> "$summary"; continue; fi
  budget=$(( cap - 15 ))
  start=$(date +%s)
  case "$step" in
    selftest) cmd=(python3 -m quartet.bench.selftest) ;;
    welder) cmd=(python3 bench/e2e/welder.py run .artifacts/welder --out "$w") ;;
    rammer) cmd=(python3 bench/run.py --artifacts .artifacts/bench --only rammer --out "$w/rammer"
                 --budget-s "$budget" --compile-cap-s 40) ;;
    welder_rows) cmd=(python3 bench/run.py --artifacts .artifacts/bench --only welder
                      --out "$w/welder_rows" --budget-s "$budget" --compile-cap-s 40
                      --systems "${SYSTEMS:-eager,compile,compile_ro,quartet}") ;;
    grinder) cmd=(python3 bench/grinder/run.py --artifacts .artifacts/grinder --out "$w"
                  --budget-s "$budget") ;;
    rows) cmd=(python3 bench/rows/bandwidth.py run .artifacts/h13b --out "$w") ;;
    profile) cmd=(python3 -m quartet.bench.profile_call) ;;
    quartet_rows) cmd=(python3 bench/run.py --artifacts .artifacts/bench_quartet
                       --only welder,rammer,grinder --out "$w/quartet_rows" --budget-s "$budget"
                       --compile-cap-s 40 --systems "${SYSTEMS:-eager,compile,compile_ro,quartet}") ;;
    rows_rms) mkdir -p "$w/rms"
              cmd=(python3 bench/rows/bandwidth.py run .artifacts/h13b_rms --only rmsnorm --out "$w/rms") ;;
    opinfo) cmd=(python3 test/opinfo/run_gpu.py .artifacts/opinfo_sm90 --out "$w/opinfo_gpu.json"
                 --table "$w/opinfo_gpu.md" --budget "$budget") ;;
    *) echo "$step: unknown step" >> "$summary"; continue ;;
  esac
  mkdir -p "$w/rammer" "$w/welder_rows" "$w/quartet_rows"
  timeout -k 5 "$cap" "${cmd[@]}" > "$w/$step.log" 2>&1
  rc=$?
  echo "$step: exit $rc after $(( $(date +%s) - start )) s (cap $cap s)" >> "$summary"
  tail -25 "$w/$step.log" | sed "s/^/  $step| /" >> "$summary"
done
tar -czf "$out/session.tgz" -C /tmp quartet-session
cat "$summary"
