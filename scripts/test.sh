#!/usr/bin/env bash
# Install (scripts/setup.sh), then run every test: lit IR tests and pytest. GPU tests are skipped
# on a machine without an NVIDIA GPU. Exits non-zero when either suite fails.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
status=0
lit -sv test/lit || status=1
python -m pytest -q -n "${QUARTET_TEST_WORKERS:-2}" --durations=25 test/python || status=1
exit $status
