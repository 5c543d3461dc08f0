#!/usr/bin/env bash
# Evaluate one HF model on a suite as a job array: one array task per (task, setting) slice of the suite.
#
#   N=$(.venv/bin/python -m lcrecipes.launch.eval_array count eval/suites/study.yaml)
#   sbatch --array=0-$((N - 1)) slurm/eval.sh runs/qwen2.5-7b-1m/doc_ids/hf eval/suites/study.yaml doc_ids \
#       runs/qwen2.5-7b-1m/doc_ids/eval/study
#   lcr launch recipes/qwen2.5-7b-1m/doc_ids.yaml --eval        # the same, from the recipe's eval section
#
# LABEL names the model in the rows (default: the model dir's name, or its parent's for <run_dir>/hf).
# Array task i writes OUT/slices/<i>/ (resumable: a requeued or rerun task skips its finished rows); each task
# that finishes tries the merge, and the last one writes OUT/predictions.jsonl and OUT/run.json, exactly as a
# single `lcr eval MODEL --suite SUITE --strategy STRATEGY --out OUT` would have. Without --array the job runs
# every slice in turn. `python -m lcrecipes.launch.eval_array merge --suite SUITE --out OUT` merges by hand.
#SBATCH --job-name=lcr-eval
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=1
#SBATCH --cpus-per-task=8
#SBATCH --time=12:00:00
#SBATCH --signal=B:USR1@300
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%A_%a.out
set -euo pipefail

if [ $# -lt 4 ] || [ $# -gt 5 ]; then
  echo "usage: sbatch --array=0-<N-1> slurm/eval.sh MODEL_DIR SUITE STRATEGY OUT_DIR [LABEL]" >&2
  exit 2
fi
MODEL=$1 SUITE=$2 STRATEGY=$3 OUT=$4
LABEL=()
if [ $# -eq 5 ]; then
  LABEL=(--label "$5")
fi
LCR_HOME=${LCR_HOME:-${SLURM_SUBMIT_DIR:-$PWD}}
PY=${LCR_PYTHON:-$LCR_HOME/.venv/bin/python}
cd "$LCR_HOME"
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} TOKENIZERS_PARALLELISM=false
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}

INDEX=()
if [ -n "${SLURM_ARRAY_TASK_ID:-}" ]; then
  INDEX=(--index "$SLURM_ARRAY_TASK_ID")
fi
# The time-limit warning (USR1 to this shell: --signal=B:) or preemption: rows already written are kept (each is
# fsynced), so a requeued task loses at most the row in flight. At most LCR_MAX_REQUEUES (10) requeues.
on_signal() {
  if [ "${SLURM_RESTART_COUNT:-0}" -lt "${LCR_MAX_REQUEUES:-10}" ]; then
    echo "[$(date -u +%FT%TZ)] time-limit signal: requeueing job ${SLURM_JOB_ID}" >&2
    scontrol requeue "${SLURM_JOB_ID}"
    exit 0
  fi
  echo "time-limit signal after ${SLURM_RESTART_COUNT} requeues: not requeueing; rerun to resume" >&2
  exit 1
}
trap on_signal USR1
echo "[$(date -u +%FT%TZ)] job ${SLURM_JOB_ID:-?} slice ${SLURM_ARRAY_TASK_ID:-all}: $MODEL on $SUITE ($STRATEGY) -> $OUT"
# In the background so that the trap runs as soon as the signal arrives (bash defers traps during a foreground
# command); a failure of the slice is this job's exit code.
"$PY" -m lcrecipes.launch.eval_array run "$MODEL" --suite "$SUITE" --strategy "$STRATEGY" --out "$OUT" \
  "${INDEX[@]}" "${LABEL[@]}" &
wait $!
