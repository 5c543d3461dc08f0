#!/usr/bin/env bash
# GPU validation and timing run for one lent H200 (~8 minutes), or its CPU smoke run (CI, < 1 minute).
#
#   bash bench/gpu/run.sh [--out DIR] [--logs DIR]    # on the GPU; JSON to DIR, else $OUT, else runs/gpu_bench
#   bash bench/gpu/run.sh --cpu-smoke --out /tmp/s    # tiny sizes on CPU
#   bash bench/gpu/run.sh --wheels .whl ...           # first install carried wheels into /tmp/site (README.md)
#
# Other options: python -m bench.gpu.main --help. Writes DIR/gpu_results.json and DIR/gpu_table.txt (the table it
# prints at the end); worker logs and scratch files go to --logs (default DIR/logs).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

args=()
wheels=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --wheels) wheels="$(realpath -m "$2")"; shift 2 ;;
    --out | --logs) args+=("$1" "$(realpath -m "$2")"); shift 2 ;;  # relative to the caller (cd below)
    *) args+=("$1"); shift ;;
  esac
done
cd "$REPO"

if [[ -n "${PYTHON:-}" ]]; then
  PY="$PYTHON"
elif [[ -x .venv/bin/python ]]; then
  PY=.venv/bin/python
else
  PY=python3
fi

if [[ -n "$wheels" ]]; then
  # Offline install of carried wheels (no index, no dependency resolution: carry every missing dependency).
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$wheels"/*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi

export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export PYTORCH_CUDA_ALLOC_CONF="${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}"
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$REPO/.torch_extensions}"

exec "$PY" -m bench.gpu.main ${args[@]+"${args[@]}"}
