#!/usr/bin/env bash
# Set up if needed, lint, and run the whole test suite (slow tests are left out; add -m slow).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export QT_QPA_PLATFORM=offscreen
.venv/bin/python -m ruff check bone_apps tests benchmarks
.venv/bin/lint-imports --no-cache
.venv/bin/python -m pytest "$@"
