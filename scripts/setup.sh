#!/usr/bin/env bash
# Create .venv and install mdskit with its pinned dependencies, unless an
# earlier run already installed the same pins. Safe to run repeatedly.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
stamp=.venv/.mdskit-installed
wanted=$(cat requirements/pinned.txt pyproject.toml | sha256sum | cut -d' ' -f1)

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ] && .venv/bin/python -c "import mdskit" 2>/dev/null; then
    exit 0
fi

echo "Setting up .venv (first run takes a few minutes)..." >&2
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -r requirements/pinned.txt
.venv/bin/python -m pip install --quiet --no-deps -e .
.venv/bin/python -m pip check >&2 || true
echo "$wanted" > "$stamp"
echo "Set-up done." >&2
