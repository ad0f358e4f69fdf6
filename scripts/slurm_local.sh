#!/usr/bin/env bash
# sudo scripts/slurm_local.sh start|stop|status
# A single-node Slurm cluster on this machine, to try the cluster path (hydra/launcher=slurm) without a cluster:
# munged, a private MariaDB + slurmdbd (so sacct works: submitit reads job states with it), slurmctld and slurmd,
# one partition `local` with all CPUs of this machine. Needs root and Debian's packages:
#   apt-get install -y slurm-wlm slurmdbd munge mariadb-server
# Everything it runs or writes lives in $SLURM_LOCAL_DIR (default /var/lib/prunebench-slurm), except
# /etc/slurm/slurm.conf and slurmdbd.conf, which it writes only if absent or written by it before.
set -euo pipefail

STATE=${SLURM_LOCAL_DIR:-/var/lib/prunebench-slurm}
CONF_DIR=/etc/slurm
MARK="# written by prunebench scripts/slurm_local.sh"
DB_PORT=${SLURM_LOCAL_DB_PORT:-6829}
NODE=$(hostname -s)

die() { echo "slurm_local.sh: $*" >&2; exit 1; }

wait_for() {  # wait_for <seconds> <what> <command...>: retry the command every 0.5 s
  local seconds=$1 what=$2; shift 2
  for _ in $(seq $((seconds * 2))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.5; done
  die "$what did not come up within ${seconds}s (logs: $STATE/log/)"
}

check_tools() {
  [ "$(id -u)" -eq 0 ] || die "needs root (the daemons run as root): sudo $0 $*"
  local missing=()
  for tool in munged slurmctld slurmd slurmdbd sacctmgr mariadbd mariadb-install-db; do
    command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] || missing+=("$tool")
  done
  [ ${#missing[@]} -eq 0 ] || die "missing ${missing[*]}: apt-get install -y slurm-wlm slurmdbd munge mariadb-server"
}

write_conf() {  # write_conf <path> <mode>, text on stdin; never replaces a file this script did not write
  local path=$1 mode=$2 text
  text=$(cat)
  if [ -e "$path" ] && ! grep -qF "$MARK" "$path"; then
    die "$path exists and was not written by this script: not touching it (this machine already has a Slurm config)"
  fi
  printf '%s\n%s\n' "$MARK" "$text" > "$path.tmp"
  chmod "$mode" "$path.tmp"
  mv "$path.tmp" "$path"
}

running() { [ -f "$STATE/$1.pid" ] && kill -0 "$(cat "$STATE/$1.pid")" 2>/dev/null; }

start() {
  check_tools "$@"
  export PATH=$PATH:/usr/sbin
  mkdir -p "$STATE"/{log,ctld,spool,mysql} "$CONF_DIR"
  local cpus mem_mb
  cpus=$(nproc)
  mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 9 / 10 ))   # 90% of the RAM for jobs

  write_conf "$CONF_DIR/slurm.conf" 644 <<CONF
ClusterName=local
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobCompType=jobcomp/none
SchedulerType=sched/backfill
# a requeued job is held cred_expire+1 s, then starts at the next main scheduling pass: every 5 s, not 60
SchedulerParameters=sched_interval=5
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
ReturnToService=2
KillWait=10
DefMemPerCPU=1024
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=local Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
  write_conf "$CONF_DIR/slurmdbd.conf" 600 <<CONF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
LogFile=$STATE/log/slurmdbd.log
PidFile=$STATE/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=slurm-local
StorageLoc=slurm_acct_db
CONF

  # munge: the shared key comes with the Debian package; reuse a munged that is already running
  if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    [ -s /etc/munge/munge.key ] || { mungekey --create --keyfile=/etc/munge/munge.key; chown munge:munge /etc/munge/munge.key; }
    mkdir -p /run/munge && chown munge:munge /run/munge
    runuser -u munge -- munged
    touch "$STATE/munged.ours"
    wait_for 10 munged sh -c 'munge -n | unmunge'
  fi

  # accounting database: a private MariaDB on 127.0.0.1:$DB_PORT, data in $STATE/mysql
  if ! running mariadbd; then
    if [ ! -d "$STATE/mysql/mysql" ]; then
      mariadb-install-db --user=root --datadir="$STATE/mysql" --skip-test-db > "$STATE/log/mariadb-install.log" 2>&1
    fi
    setsid mariadbd --user=root --datadir="$STATE/mysql" --port="$DB_PORT" --bind-address=127.0.0.1 \
      --socket="$STATE/mysqld.sock" --pid-file="$STATE/mariadbd.pid" --log-error="$STATE/log/mariadbd.log" \
      < /dev/null >> "$STATE/log/mariadbd.log" 2>&1 &
    wait_for 30 MariaDB mariadb --socket="$STATE/mysqld.sock" -e 'select 1'
    mariadb --socket="$STATE/mysqld.sock" -e "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm-local';
      GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
  fi

  running slurmdbd || slurmdbd
  wait_for 30 slurmdbd sacctmgr -n list cluster
  sacctmgr -i -Q add cluster local >/dev/null 2>&1 || true
  running slurmctld || slurmctld
  running slurmd || slurmd
  wait_for 60 "node $NODE" sh -c "sinfo -h -n $NODE -o %t | grep -qE '^(idle|mix|alloc)'"
  echo "local Slurm up: partition local, node $NODE, $cpus CPUs, ${mem_mb} MB (logs: $STATE/log/)"
  sinfo
}

stop() {
  [ "$(id -u)" -eq 0 ] || die "needs root: sudo $0 stop"
  for daemon in slurmd slurmctld slurmdbd mariadbd; do
    if running "$daemon"; then
      local pid
      pid=$(cat "$STATE/$daemon.pid")
      kill "$pid"
      for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    fi
    rm -f "$STATE/$daemon.pid"
  done
  if [ -f "$STATE/munged.ours" ]; then
    [ -f /run/munge/munged.pid ] && kill "$(cat /run/munge/munged.pid)" 2>/dev/null || true
    rm -f "$STATE/munged.ours"
  fi
  echo "local Slurm stopped (state and logs kept in $STATE)"
}

case "${1:-}" in
  start) start "$@" ;;
  stop) stop ;;
  status) sinfo && squeue ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
