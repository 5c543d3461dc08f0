# Shared settings and helpers for slurm/dev/{start,stop,status}.sh (sourced, not run).
#
# Environment (all optional):
#   LCR_SLURM_DIR   state dir: configs, logs, pid files, spool, MariaDB data   (default /tmp/lcr-slurm)
#   LCR_SLURM_NODE  node name slurmd registers as                               (default localhost)
# Ports on 127.0.0.1: slurmctld 6817, slurmd 6818, slurmdbd 6819, MariaDB 3307.

ROOT=${LCR_SLURM_DIR:-/tmp/lcr-slurm}
NODE=${LCR_SLURM_NODE:-localhost}
CLUSTER=lcrdev
ETC=$ROOT/etc RUN=$ROOT/run LOG=$ROOT/log STATE=$ROOT/state SPOOL=$ROOT/spool DB=$ROOT/db
CONF=$ETC/slurm.conf
MUNGE_SOCKET=$RUN/munge.socket
MYSQL_SOCKET=$RUN/mysqld.sock
DB_PORT=3307
DB_PASS=lcrdev
DAEMONS=(slurmd slurmctld slurmdbd mysqld munged)   # stop order; start order is the reverse
export SLURM_CONF=$CONF

log() { echo "[lcr-slurm $(date +%T)] $*"; }
die() {
  echo "[lcr-slurm $(date +%T)] ERROR: $1" >&2
  [ -n "${2:-}" ] && [ -f "$2" ] && { echo "--- last lines of $2:" >&2; tail -n 20 "$2" >&2; }
  echo "[lcr-slurm] logs in $LOG; stop what did start with slurm/dev/stop.sh" >&2
  exit 1
}

# alive NAME: the daemon whose pid is in $RUN/NAME.pid runs (checked by its command name, so that a stale pid
# file whose pid now belongs to another process does not count).
alive() {
  local pid comm=$1
  [ "$1" = mysqld ] && comm=mariadbd
  [ -s "$RUN/$1.pid" ] && pid=$(cat "$RUN/$1.pid") && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$comm" ]
}

# wait_for SECONDS CMD...: run CMD every 0.2 s until it succeeds; fail after SECONDS.
wait_for() {
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -ge "$deadline" ] && return 1
    sleep 0.2
  done
}

node_state() { sinfo -h -n "$NODE" -o %t 2>/dev/null || true; }
# node_registered: slurmd answers (sinfo marks a node that does not with '*'; 'unk' before its first contact).
node_registered() { local s; s=$(node_state); [ -n "$s" ] && [[ $s != *'*' && $s != unk* ]]; }
node_usable() { case "$(node_state)" in idle | mix | alloc) return 0 ;; *) return 1 ;; esac; }
ctld_up() { scontrol ping 2>/dev/null | grep -q UP; }
sacct_answers() { timeout 10 sacct -n -X -S now >/dev/null 2>&1; }

# healthy: every daemon runs, the node takes jobs and sacct answers.
healthy() {
  local d
  for d in "${DAEMONS[@]}"; do alive "$d" || return 1; done
  [ -f "$CONF" ] && ctld_up && node_usable && sacct_answers
}
