#!/usr/bin/env bash
# The model zoo's Python packages for the GPU machine (Python 3.12, no package index there).
#
#   bash bench/zoo_wheels.sh download     # here: wheels into .artifacts/zoo_wheels (~42 MB)
#   bash bench/zoo_wheels.sh install      # there: into /tmp/zoo_site; then
#   export PYTHONPATH=/tmp/zoo_site:$PYTHONPATH
#
# The zoo rows of the benchmark (bench/suite.py, --only zoo) build their eager models and
# rebuild their stripped weights from torchvision's and transformers' own classes, so the run
# step needs both. torchvision's wheel is the CUDA build of 0.28.0 (for torch 2.13); its C++ ops
# will not load beside another torch, which the zoo's import door handles (frontend/zoo.py).
# numpy is left out: the GPU machine has it.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=.artifacts/zoo_wheels
case "${1:-}" in
  download)
    mkdir -p "$DIR"
    PLAT=(--only-binary=:all: --python-version 3.12 --implementation cp
          --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
          --platform manylinux2014_x86_64 --platform any)
    python -m pip download -q -d "$DIR" "${PLAT[@]}" "transformers==5.24.0" pillow
    python -m pip download -q -d "$DIR" "${PLAT[@]}" --no-deps "torchvision==0.28.0"
    rm -f "$DIR"/numpy-*.whl
    du -sh "$DIR" ;;
  install)
    python3 -m pip install -q --no-index --no-deps --target /tmp/zoo_site "$DIR"/*.whl
    echo "export PYTHONPATH=/tmp/zoo_site:\$PYTHONPATH" ;;
  *)
    echo "usage: bash bench/zoo_wheels.sh download|install" >&2; exit 2 ;;
esac
