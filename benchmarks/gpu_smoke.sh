#!/usr/bin/env bash
# GPU smoke test: bf16 forward and training throughput of a mid-sized random
# Sim4Seg, in a few minutes on one GPU. Without CUDA it runs a small
# configuration to check the script and logs a warning about it.
#
# Usage: bash benchmarks/gpu_smoke.sh [RESULT.json]
# Set PYTHON to the interpreter of the environment (default: .venv/bin/python,
# else python3).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
    if [[ -x "$root/.venv/bin/python" ]]; then python="$root/.venv/bin/python"; else python=python3; fi
fi

export HF_HUB_OFFLINE=1
export PYTHONPATH="$root:$root/plugins${PYTHONPATH:+:$PYTHONPATH}"
if [[ $# -ge 1 ]]; then
    exec "$python" "$root/benchmarks/gpu_smoke.py" --out "$1"
fi
exec "$python" "$root/benchmarks/gpu_smoke.py"
