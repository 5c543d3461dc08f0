#!/usr/bin/env bash
# Train a recipe on a Slurm cluster, one process per GPU, with save-and-requeue before the time limit.
#
#   sbatch slurm/train_1m.sh recipes/qwen2.5-7b-1m/doc_ids.yaml [section.key=value ...]
#   sbatch --nodes=1 --ntasks-per-node=2 --gpus-per-node=0 slurm/train_1m.sh recipes/tiny_cpu/pretrain_1.yaml  # CPU
#   lcr launch recipes/qwen2.5-7b-1m/doc_ids.yaml [--dry-run]   # the same, flags from the recipe's launch section
#
# The #SBATCH lines below fit recipes/qwen2.5-7b-1m (8 nodes x 8 GPUs); sbatch options given on the command line
# override them. Each task is one rank (SLURM_PROCID); rank 0's host is the rendezvous. USR1 arrives 600 s
# (--signal) before the time limit: every rank saves a checkpoint at the next step boundary and exits with code
# 75, and this script requeues the job (at most launch.max_requeues times); the requeued job resumes from
# `latest`. `scontrol requeue` (and preemption) sends SIGTERM, which saves the same way before Slurm requeues.
# A --time shorter than the --signal lead makes the warning fall due at once: give both (lcr launch does).
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
# One Python start resolves the recipe (imports take seconds): run_dir, the collective timeout sized to the
# sequence (10 min + 1 s per 512 tokens of data.seq_len; 1M tokens: ~44 min) and launch.max_requeues.
# NUL-separated, so no character of a user value is ever interpreted.
mapfile -d '' -t VARS < <("$PY" -m lcrecipes.launch.sbatch vars "$RECIPE" "${OVERRIDES[@]}")
if [ "${#VARS[@]}" -ne 3 ]; then
  echo "cannot resolve recipe $RECIPE with overrides (error above)" >&2
  exit 2
fi
RUN_DIR=${VARS[0]} TIMEOUT_S=${VARS[1]} MAX_REQUEUES=${VARS[2]}
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

# tee ignores SIGTERM: on `scontrol requeue` or preemption Slurm signals the batch shell too, and the ranks' last
# lines (written while they save) must still reach the log.
log_tee() { trap '' TERM INT; exec tee -a "$LOG"; }
# --wait, not --kill-on-bad-exit: after a save on a signal every rank exits 75, but not at the same instant, and
# killing the later ones makes srun return 143 instead of 75 (no requeue). A rank that crashes still takes the
# others down, 60 s later, instead of leaving them in a collective until the timeout.
set +e
srun --kill-on-bad-exit=0 --wait=60 "$PY" -m lcrecipes.cli train "$RECIPE" "parallel.timeout_s=$TIMEOUT_S" \
  "${OVERRIDES[@]}" 2>&1 | log_tee
rc=${PIPESTATUS[0]}
set -e

if [ "$rc" -eq 75 ]; then
  if [ "${SLURM_RESTART_COUNT:-0}" -lt "$MAX_REQUEUES" ]; then
    echo "[$(date -u +%FT%TZ)] checkpoint saved on signal; requeueing job $SLURM_JOB_ID" | tee -a "$LOG"
    scontrol requeue "$SLURM_JOB_ID"
    exit 0
  fi
  echo "launch.max_requeues=$MAX_REQUEUES reached; not requeueing" | tee -a "$LOG"
fi
exit "$rc"
