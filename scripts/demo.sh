#!/usr/bin/env bash
# Install (scripts/setup.sh), then run the main job: import a small PyTorch model with torch-mlir,
# outline it into Quartet tiles, configure them with Roller and print the IR.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
python -m quartet.tools.demo "$@"
