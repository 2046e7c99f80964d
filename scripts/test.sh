#!/usr/bin/env bash
# Sets everything up and runs the test suite (CPU only, a few minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ -z "${VIRTUAL_ENV:-}" ]; then PY=.venv/bin/python; else PY=python; fi
exec "$PY" -m pytest -q "$@"
