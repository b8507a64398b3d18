#!/usr/bin/env bash
# A real single-host Slurm cluster (slurmctld, slurmd, slurmdbd + MariaDB for accounting, munge),
# every file under one directory, for the tests and for trying executioner's Slurm modes.
#
#   scripts/slurm-local.sh start     # install the Debian packages if missing (root), start, print:
#                                    #   export SLURM_CONF=/tmp/exec-slurm/etc/slurm.conf
#   scripts/slurm-local.sh stop      # stop every daemon (by the pid in its pid file) and remove the dir
#   scripts/slurm-local.sh status
#
# EXEC_SLURM_DIR (default /tmp/exec-slurm) is the directory. The node declares EXEC_SLURM_CPUS
# (default 8) CPUs whatever the machine has, so several one-CPU jobs run at once on a small box.
set -euo pipefail
D=${EXEC_SLURM_DIR:-/tmp/exec-slurm}
CPUS=${EXEC_SLURM_CPUS:-8}
HOST=$(hostname -s)
PORT_DB=${EXEC_SLURM_DB_PORT:-3307}

pids() { for f in "$D"/run/*.pid; do [ -f "$f" ] && cat "$f"; done 2>/dev/null || true; }

stop() {
  local p
  p=$(pids)
  if [ -n "$p" ]; then
    kill $p 2>/dev/null || true   # all at once: one by one takes ~10 s
    for _ in $(seq 50); do
      kill -0 $p 2>/dev/null || break
      sleep 0.1
    done
    kill -9 $p 2>/dev/null || true
  fi
  rm -rf "$D"
}

install_packages() {
  local need=()
  command -v slurmctld >/dev/null || need+=(slurm-wlm)
  command -v munged >/dev/null || need+=(munge)
  command -v slurmdbd >/dev/null || need+=(slurmdbd)
  command -v mariadbd >/dev/null || need+=(mariadb-server)
  [ ${#need[@]} -eq 0 ] && return 0
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "slurm-local: missing ${need[*]} (needs root and apt-get to install)" >&2
    exit 1
  fi
  echo "slurm-local: installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}"; } >/tmp/exec-slurm-apt.log 2>&1 ||
    { cat /tmp/exec-slurm-apt.log >&2; exit 1; }
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local limit=$1 what=$2
  shift 2
  for _ in $(seq $((limit * 10))); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "slurm-local: $what did not come up; logs in $D/log" >&2
  tail -n 20 "$D"/log/* >&2 || true
  exit 1
}

start() {
  install_packages
  stop
  mkdir -p "$D"/{etc,run,log,state,spool,munge,mysql}
  chmod 755 "$D" "$D/munge"   # munged refuses a socket folder writable by group or others

  # munge: our own key and socket
  dd if=/dev/urandom of="$D/etc/munge.key" bs=1024 count=1 status=none
  chmod 600 "$D/etc/munge.key"
  munged --force --key-file="$D/etc/munge.key" --socket="$D/munge/munge.socket" \
    --pid-file="$D/run/munged.pid" --log-file="$D/log/munged.log" --seed-file="$D/run/munge.seed"
  wait_for 10 munged test -S "$D/munge/munge.socket"

  # MariaDB for slurmdbd: it does not daemonise, so start it detached
  mariadb-install-db --no-defaults --datadir="$D/mysql" --user=root --auth-root-authentication-method=normal \
    >"$D/log/mariadb-install.log" 2>&1
  setsid mariadbd --no-defaults --datadir="$D/mysql" --socket="$D/run/mysql.sock" --pid-file="$D/run/mariadbd.pid" \
    --port="$PORT_DB" --bind-address=127.0.0.1 --user=root --log-error="$D/log/mariadbd.log" \
    </dev/null >/dev/null 2>&1 &
  wait_for 30 mariadbd mariadb --no-defaults --socket="$D/run/mysql.sock" -uroot -e "select 1"
  mariadb --no-defaults --socket="$D/run/mysql.sock" -uroot -e "
    CREATE DATABASE IF NOT EXISTS slurm_acct_db;
    CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
    CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"

  local mem
  mem=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
  mem=$((mem * 9 / 10))   # at or above the real amount the node drains
  cat >"$D/etc/slurm.conf" <<EOF
ClusterName=exec
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$D/munge/munge.socket
CredType=cred/munge
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/spool/%n
SlurmctldPidFile=$D/run/slurmctld.pid
SlurmdPidFile=$D/run/slurmd-%n.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd-%n.log
SlurmctldPort=${EXEC_SLURM_CTLD_PORT:-6817}
SlurmdPort=${EXEC_SLURM_D_PORT:-6818}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
MailProg=/bin/true
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
KillWait=10
MinJobAge=300
DependencyParameters=kill_invalid_depend
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=${EXEC_SLURM_DBD_PORT:-6819}
AccountingStoragePass=$D/munge/munge.socket
Licenses=dl:4
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$mem Features=a100 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  cat >"$D/etc/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$D/munge/munge.socket
DbdHost=$HOST
DbdAddr=127.0.0.1
DbdPort=${EXEC_SLURM_DBD_PORT:-6819}
SlurmUser=root
PidFile=$D/run/slurmdbd.pid
LogFile=$D/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$PORT_DB
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
EOF
  chmod 600 "$D/etc/slurmdbd.conf"   # slurmdbd refuses a readable one
  export SLURM_CONF="$D/etc/slurm.conf"
  mkdir -p "$D/spool/$HOST"

  slurmdbd
  wait_for 30 slurmdbd sacctmgr -i list cluster
  sacctmgr -i add cluster exec >/dev/null 2>&1 || true
  slurmctld
  wait_for 30 slurmctld scontrol ping
  slurmd -N "$HOST"
  wait_for 30 "the node" bash -c "sinfo -h -N -o %t | grep -qE '^(idle|mix|alloc)'"
  echo "export SLURM_CONF=$SLURM_CONF"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status)
    export SLURM_CONF="$D/etc/slurm.conf"
    sinfo && squeue ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
