#!/usr/bin/env bash
# Stop the single-node Slurm started by slurm/dev/start.sh: cancel its jobs, then stop slurmd, slurmctld,
# slurmdbd, MariaDB and munged by the pids in $LCR_SLURM_DIR/run (never by process name).
#
#   slurm/dev/stop.sh            # keep the state dir (accounting history, job ids): the next start takes ~3 s
#   slurm/dev/stop.sh --purge    # also delete the state dir (default /tmp/lcr-slurm)
#
# Environment: LCR_SLURM_DIR (default /tmp/lcr-slurm). Safe to run when nothing is running.
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=common.sh
source "$HERE/common.sh"

purge=0
case "${1:-}" in
  "") ;;
  --purge) purge=1 ;;
  *) die "unknown argument '$1' (usage: stop.sh [--purge])" ;;
esac

# Cancel jobs first so that no slurmstepd or job process is left behind.
if alive slurmctld && ctld_up; then
  scancel --full --quiet 2>/dev/null || true
  wait_for 20 test -z "$(squeue -h 2>/dev/null)" || log "jobs still listed after 20 s: $(squeue -h | wc -l)"
fi

for d in "${DAEMONS[@]}"; do
  alive "$d" || { rm -f "$RUN/$d.pid"; continue; }
  pid=$(cat "$RUN/$d.pid")
  kill -TERM "$pid"
  if ! wait_for 20 bash -c "! kill -0 $pid"; then
    log "$d ($pid) did not stop in 20 s, sending KILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  log "stopped $d ($pid)"
  rm -f "$RUN/$d.pid"
done

if [ "$purge" = 1 ] && [ -d "$ROOT" ]; then
  rm -rf -- "$ROOT"
  log "deleted $ROOT"
fi
