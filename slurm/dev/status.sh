#!/usr/bin/env bash
# Show the state of the single-node Slurm started by slurm/dev/start.sh; exit 0 when it is healthy
# (every daemon running, node idle/mix/alloc, sacct answering), 1 otherwise.
#
#   slurm/dev/status.sh          # daemons, node, partition, queue
#   slurm/dev/status.sh -q       # quiet: only the exit status
#
# Environment: LCR_SLURM_DIR (default /tmp/lcr-slurm).
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=common.sh
source "$HERE/common.sh"

if [ "${1:-}" = -q ]; then
  command -v sinfo >/dev/null && healthy
  exit
fi
echo "state dir: $ROOT   (source $ROOT/env.sh)"
for d in "${DAEMONS[@]}"; do
  if alive "$d"; then echo "  $d: running (pid $(cat "$RUN/$d.pid"))"; else echo "  $d: not running"; fi
done
if ! command -v sinfo >/dev/null; then echo "Slurm is not installed (run slurm/dev/start.sh)"; exit 1; fi
if ctld_up; then
  sinfo -N -o "%N %P %t %c %m" 2>/dev/null
  squeue 2>/dev/null
fi
if healthy; then echo "healthy"; exit 0; fi
echo "not healthy (logs in $LOG)"
exit 1
