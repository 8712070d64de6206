#!/usr/bin/env bash
# Install (scripts/setup.sh), then run the main job: a PyTorch MLP imported with torch-mlir,
# compiled by the roller pipeline for the CPU target, run and checked against PyTorch.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
python -m quartet.tools.demo "$@"
