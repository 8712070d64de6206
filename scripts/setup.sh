#!/usr/bin/env bash
# Create .venv (if missing) and install Quartet with the compiler, test and zoo dependencies, pinned
# in pyproject.toml. Safe to run again: pip skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch first and alone: the CPU wheel pinned here (a looser pin would download a CUDA build).
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[compiler,test,zoo]"
