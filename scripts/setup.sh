#!/usr/bin/env bash
# Create or refresh the project's virtual environment in .venv (used by demo.sh and test.sh).
# It is rebuilt only when pyproject.toml changed since the last install.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
stamp=.venv/.installed-from
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"

if [ -x .venv/bin/python ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
  echo "bone_apps needs Python 3.10 or newer; set PYTHON=/path/to/python3.x and try again." >&2
  exit 1
fi
echo "Setting up .venv (first run takes a few minutes: PyTorch is large)..."
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
log=.venv/install.log
if ! { .venv/bin/python -m pip install --upgrade pip &&
       .venv/bin/python -m pip install -e '.[test]'; } > "$log" 2>&1; then
  tail -n 30 "$log" >&2
  echo "Installing bone_apps failed; the whole log is in $log." >&2
  exit 1
fi
echo "$want" > "$stamp"
echo "Environment ready in .venv"
