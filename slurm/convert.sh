#!/usr/bin/env bash
# Convert a training checkpoint to a Hugging Face model (or a HF model to a Megatron checkpoint) on one CPU node.
#
#   sbatch slurm/convert.sh megatron hf runs/qwen2.5-7b-1m/doc_ids/checkpoints/step_1000/model \
#       runs/qwen2.5-7b-1m/doc_ids/hf --dtype bf16 --verify
#   sbatch slurm/convert.sh deepspeed hf runs/x/checkpoints/step_1000 runs/x/hf --verify
#   bash slurm/convert.sh hf megatron /models/Qwen2.5-7B-Instruct-1M runs/x/init     # without Slurm
#
# Everything after DST goes to `lcr convert` unchanged. Conversion streams one safetensors shard at a time (memory
# near one shard plus one layer; `--to megatron` holds the whole model), so --mem is sized for a 7B model in bf16.
# DST appears only when complete; a failed or cancelled job leaves no partial DST, so rerunning is safe.
#SBATCH --job-name=lcr-convert
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=8
#SBATCH --mem=64G
#SBATCH --time=02:00:00
#SBATCH --output=slurm-%x-%j.out
set -euo pipefail

if [ $# -lt 4 ]; then
  echo "usage: sbatch slurm/convert.sh FROM TO SRC DST [lcr convert options ...]" >&2
  exit 2
fi
FROM=$1 TO=$2 SRC=$3 DST=$4
shift 4
LCR_HOME=${LCR_HOME:-${SLURM_SUBMIT_DIR:-$PWD}}
PY=${LCR_PYTHON:-$LCR_HOME/.venv/bin/python}
cd "$LCR_HOME"
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} TOKENIZERS_PARALLELISM=false
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
echo "[$(date -u +%FT%TZ)] job ${SLURM_JOB_ID:-local}: convert $FROM -> $TO: $SRC -> $DST $*"
exec "$PY" -m lcrecipes.cli convert --from "$FROM" --to "$TO" "$SRC" "$DST" "$@"
