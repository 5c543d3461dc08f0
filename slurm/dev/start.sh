#!/usr/bin/env bash
# Start a real single-node Slurm on this machine, for testing sbatch scripts and submitit locally.
#
#   sudo slurm/dev/start.sh                  # ~25 s on a fresh Debian 12 machine, ~3 s when installed
#   source /tmp/lcr-slurm/env.sh             # exports SLURM_CONF for sinfo / sbatch / srun / sacct / submitit
#   slurm/dev/status.sh                      # daemons, node, queue; exit 0 when healthy
#   slurm/dev/stop.sh [--purge]              # cancel jobs, stop daemons; --purge also deletes the state dir
#
# Runs munged, MariaDB, slurmdbd (so `sacct` works; submitit polls it), slurmctld and slurmd as root, without
# systemd or cgroups. One node ($LCR_SLURM_NODE, default localhost) with this machine's CPUs and memory, one
# partition `debug` (default, no time limit), requeue allowed, `--signal` delivered. Installs the Debian packages
# if missing (apt-get update once). Idempotent: a second start with a healthy cluster does nothing.
#
# Environment: LCR_SLURM_DIR  state dir for configs, logs, pids, spool and MariaDB data (default /tmp/lcr-slurm)
#              LCR_SLURM_NODE node name (default localhost)
# Exit status 0 once `sinfo` shows the node idle and `sacct` answers; non-zero with the reason and log tail if not.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=common.sh
source "$HERE/common.sh"
T0=$EPOCHREALTIME

elapsed() { awk -v a="$T0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

install_packages() {
  local need=0 c
  for c in slurmctld slurmd slurmdbd sbatch sacct munged mariadbd mariadb-install-db; do
    command -v "$c" >/dev/null || need=1
  done
  [ "$need" = 0 ] && return 0
  [ "$(id -u)" = 0 ] || die "Slurm packages are missing and installing them needs root"
  command -v apt-get >/dev/null || die "Slurm packages are missing and this is not a Debian/Ubuntu machine"
  log "installing slurmctld slurmd slurm-client slurmdbd munge mariadb-server"
  apt-get update -qq || die "apt-get update failed"
  # Package scripts do not start daemons where /usr/sbin/policy-rc.d forbids it or there is no init system;
  # everything is started below with our own configs.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    slurmctld slurmd slurm-client slurmdbd munge mariadb-server >"$LOG/apt.log" 2>&1 \
    || die "apt-get install failed" "$LOG/apt.log"
  log "packages installed ($(elapsed) s)"
}

# node_line: this machine's CPUs (as the scheduler may use them) and memory (MB, as slurmd measures it).
node_line() {
  local cpus mem
  cpus=$(nproc)
  mem=$(slurmd -C 2>/dev/null | tr ' ' '\n' | sed -n 's/^RealMemory=//p')
  [ -n "$mem" ] || mem=$(awk '/^MemTotal/ { printf "%d", $2 / 1024 }' /proc/meminfo)
  echo "NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN"
}

write_slurm_conf() {
  cat >"$CONF.new" <<EOF
# Written by slurm/dev/start.sh; rewritten on every start.
ClusterName=$CLUSTER
# slurmctld only accepts this machine's hostname or localhost here, whatever the node is called
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire also sets how long a requeued job waits before it may start again (default 120 s)
AuthInfo=socket=$MUNGE_SOCKET,cred_expire=10
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$STATE
SlurmdSpoolDir=$SPOOL
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
MailProg=/bin/true
# no cgroups, no systemd
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
# look at pending jobs every 2 s (default 60 s) so that new and requeued jobs start promptly
SchedulerParameters=sched_interval=2,bf_interval=2
JobRequeue=1
# accounting through slurmdbd + MariaDB, so sacct works
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=6819
# slurmctld takes the munge socket for slurmdbd connections from AccountingStoragePass, not AuthInfo
AccountingStoragePass=$MUNGE_SOCKET
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
MpiDefault=none
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
MinJobAge=300
Waittime=0
$(node_line)
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
  if cmp -s "$CONF.new" "$CONF"; then rm -f "$CONF.new"; return 1; fi
  mv "$CONF.new" "$CONF"
}

write_slurmdbd_conf() {
  # slurmdbd reads slurmdbd.conf next to $SLURM_CONF; it must be mode 600 and owned by SlurmUser.
  cat >"$ETC/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
LogFile=$LOG/slurmdbd.log
PidFile=$RUN/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
  chmod 600 "$ETC/slurmdbd.conf"
}

start_munged() {
  if ! alive munged; then
    [ -s "$ETC/munge.key" ] || dd if=/dev/urandom of="$ETC/munge.key" bs=1024 count=1 status=none
    chmod 600 "$ETC/munge.key"
    rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
    log "starting munged"
    munged --force --key-file="$ETC/munge.key" --socket="$MUNGE_SOCKET" --pid-file="$RUN/munged.pid" \
      --log-file="$LOG/munged.log" --seed-file="$RUN/munged.seed" || die "munged did not start" "$LOG/munged.log"
    wait_for 10 test -S "$MUNGE_SOCKET" || die "munged socket did not appear" "$LOG/munged.log"
  fi
  munge -S "$MUNGE_SOCKET" -n | unmunge -S "$MUNGE_SOCKET" >/dev/null || die "munge self-test failed" "$LOG/munged.log"
}

start_mariadb() {
  if ! alive mysqld; then
    if [ ! -d "$DB/data/mysql" ]; then
      log "initialising MariaDB in $DB/data"
      mkdir -p "$DB"
      mariadb-install-db --user=root --datadir="$DB/data" --skip-test-db >"$LOG/mariadb-install.log" 2>&1 \
        || die "mariadb-install-db failed" "$LOG/mariadb-install.log"
    fi
    log "starting mariadbd (127.0.0.1:$DB_PORT)"
    # setsid + closed stdio: the server must not hold the caller's terminal or pipe (CI waits on it)
    setsid mariadbd --no-defaults --user=root --datadir="$DB/data" --socket="$MYSQL_SOCKET" \
      --pid-file="$RUN/mysqld.pid" --port=$DB_PORT --bind-address=127.0.0.1 --skip-name-resolve \
      --innodb-buffer-pool-size=64M --log-error="$LOG/mariadb.err" </dev/null >/dev/null 2>&1 &
    local pid=$! deadline=$((SECONDS + 30))
    until mariadb-admin --socket="$MYSQL_SOCKET" ping >/dev/null 2>&1; do
      kill -0 "$pid" 2>/dev/null || die "MariaDB exited (port $DB_PORT taken?)" "$LOG/mariadb.err"
      [ "$SECONDS" -lt "$deadline" ] || die "MariaDB did not answer in 30 s" "$LOG/mariadb.err"
      sleep 0.2
    done
    wait_for 5 alive mysqld || die "MariaDB wrote no pid file" "$LOG/mariadb.err"
  fi
  mariadb --socket="$MYSQL_SOCKET" -e "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';" || die "MariaDB refused the slurm user" "$LOG/mariadb.err"
}

start_slurmdbd() {
  if ! alive slurmdbd; then
    log "starting slurmdbd"
    slurmdbd || die "slurmdbd did not start" "$LOG/slurmdbd.log"
  fi
  wait_for 30 sacctmgr -n -P list cluster format=cluster || die "slurmdbd did not answer in 30 s" "$LOG/slurmdbd.log"
  if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
    sacctmgr -i add cluster "$CLUSTER" >/dev/null || die "could not register cluster $CLUSTER" "$LOG/slurmdbd.log"
  fi
}

start_slurmctld() {
  local conf_changed=$1
  if ! alive slurmctld; then
    log "starting slurmctld"
    # -i: ignore unreadable state files. Saved jobs are kept so job ids keep growing (sacct needs unique ids).
    slurmctld -i -f "$CONF" || die "slurmctld did not start" "$LOG/slurmctld.log"
  elif [ "$conf_changed" = 1 ]; then
    log "slurm.conf changed: scontrol reconfigure"
    scontrol reconfigure || true
  fi
  wait_for 30 ctld_up || die "slurmctld did not answer in 30 s" "$LOG/slurmctld.log"
}

start_slurmd() {
  if ! alive slurmd; then
    log "starting slurmd"
    slurmd -N "$NODE" -f "$CONF" || die "slurmd did not start" "$LOG/slurmd.log"
  fi
  wait_for 30 node_registered || die "slurmd did not register in 30 s (node is '$(node_state)')" "$LOG/slurmd.log"
  if ! node_usable; then
    log "node $NODE is '$(node_state)' (left by an earlier run?): resuming it"
    scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true
    wait_for 10 node_usable || { sinfo -R >&2 || true; die "node $NODE is '$(node_state)'" "$LOG/slurmd.log"; }
  fi
}

main() {
  if [ -f "$CONF" ] && command -v sinfo >/dev/null && healthy; then
    log "already running and healthy (source $ROOT/env.sh)"
    return 0
  fi
  [ "$(id -u)" = 0 ] || die "start.sh runs the daemons as root (SlurmUser=root); run it as root"
  mkdir -p "$ETC" "$RUN" "$LOG" "$STATE" "$SPOOL"
  chmod 755 "$ROOT" "$RUN"
  install_packages
  local changed=0
  write_slurm_conf && changed=1
  write_slurmdbd_conf
  echo "export SLURM_CONF=$CONF" >"$ROOT/env.sh"
  start_munged
  start_mariadb
  start_slurmdbd
  start_slurmctld "$changed"
  start_slurmd
  wait_for 30 sacct_answers || die "sacct does not answer" "$LOG/slurmdbd.log"
  log "slurm up in $(elapsed) s: node $NODE is $(node_state), $(nproc) CPUs, partition debug"
  log "use it with: source $ROOT/env.sh"
}

main "$@"
