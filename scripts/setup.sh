#!/usr/bin/env bash
# Set up a virtual environment in .venv with reviveformer and its test tools.
# torch goes in first and only when missing, so a GPU user's own CUDA build is kept; set TORCH_SPEC to
# choose another (for example TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu124").
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[[ -x .venv/bin/python ]] || "$PYTHON" -m venv .venv
PY=.venv/bin/python
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  # shellcheck disable=SC2086
  "$PY" -m pip install -q ${TORCH_SPEC:-torch==2.13.0}
fi
"$PY" -m pip install -q -e ".[dev]"
