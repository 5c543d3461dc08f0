#!/usr/bin/env bash
# Train a recipe on a Slurm cluster, one process per GPU, with save-and-requeue before the time limit.
#
#   sbatch slurm/train_1m.sh recipes/qwen2.5-7b-1m/doc_ids.yaml [section.key=value ...]
#   sbatch --nodes=1 --ntasks-per-node=2 --gpus-per-node=0 slurm/train_1m.sh recipes/tiny_cpu/base.yaml  # CPU
#
# The #SBATCH lines below fit recipes/qwen2.5-7b-1m (8 nodes x 8 GPUs); sbatch options given on the command line
# override them. Each task is one rank (SLURM_PROCID); rank 0's host is the rendezvous. USR1 arrives
# LCR_SIGNAL_S seconds before the time limit (--signal): every rank saves a checkpoint at the next step boundary
# and exits with code 75, and this script requeues the job; the requeued job resumes from `latest`.
# `scontrol requeue` (and preemption) sends SIGTERM, which saves the same way before Slurm requeues.
#SBATCH --job-name=lcr-train
#SBATCH --nodes=8
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=12
#SBATCH --time=24:00:00
#SBATCH --signal=USR1@600
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out
set -euo pipefail

if [ $# -lt 1 ]; then
  echo "usage: sbatch slurm/train_1m.sh RECIPE [section.key=value ...]" >&2
  exit 2
fi
RECIPE=$1
shift
OVERRIDES=("$@")
LCR_HOME=${LCR_HOME:-${SLURM_SUBMIT_DIR:-$PWD}}
PY=${LCR_PYTHON:-$LCR_HOME/.venv/bin/python}
cd "$LCR_HOME"
lcr() { "$PY" -m lcrecipes.cli "$@"; }

RUN_DIR=$(lcr config get "$RECIPE" run_dir "${OVERRIDES[@]}")
SEQ_LEN=$(lcr config get "$RECIPE" data.seq_len "${OVERRIDES[@]}")
# Collective timeout sized to the sequence: 10 min + 1 s per 512 tokens (1M tokens: ~44 min), unless overridden.
TIMEOUT_S=$((600 + SEQ_LEN / 512))
mkdir -p "$RUN_DIR/logs"
LOG="$RUN_DIR/logs/slurm-${SLURM_JOB_ID:-local}.log"

MASTER_ADDR=$(scontrol show hostnames "${SLURM_JOB_NODELIST:-$(hostname)}" | head -n 1)
MASTER_PORT=$((20000 + ${SLURM_JOB_ID:-0} % 20000))
export MASTER_ADDR MASTER_PORT
export TORCH_NCCL_ASYNC_ERROR_HANDLING=1 TORCH_NCCL_HEARTBEAT_TIMEOUT_SEC=$TIMEOUT_S
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$LCR_HOME/.torch_extensions}

{
  echo "[$(date -u +%FT%TZ)] job ${SLURM_JOB_ID:-?} restart ${SLURM_RESTART_COUNT:-0}: $RECIPE ${OVERRIDES[*]}"
  echo "run_dir=$RUN_DIR master=$MASTER_ADDR:$MASTER_PORT timeout_s=$TIMEOUT_S"
} | tee -a "$LOG"

set +e
srun --kill-on-bad-exit=1 "$PY" -m lcrecipes.cli train "$RECIPE" "parallel.timeout_s=$TIMEOUT_S" \
  "${OVERRIDES[@]}" 2>&1 | tee -a "$LOG"
rc=${PIPESTATUS[0]}
set -e

if [ "$rc" -eq 75 ]; then
  max=$(lcr config get "$RECIPE" launch.max_requeues "${OVERRIDES[@]}")
  if [ "${SLURM_RESTART_COUNT:-0}" -lt "$max" ]; then
    echo "[$(date -u +%FT%TZ)] checkpoint saved on signal; requeueing job $SLURM_JOB_ID" | tee -a "$LOG"
    scontrol requeue "$SLURM_JOB_ID"
    exit 0
  fi
  echo "launch.max_requeues=$max reached; not requeueing" | tee -a "$LOG"
fi
exit "$rc"
