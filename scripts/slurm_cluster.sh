#!/usr/bin/env bash
# scripts/slurm_cluster.sh start|stop|status: a real single-node SLURM cluster on this machine, for the
# SLURM tests (tests/test_slurm.py) and for trying `launcher=submitit_slurm` by hand.
#
#   start   install Debian's slurmctld, slurmd, slurm-client and munge when missing, write
#           /etc/slurm/slurm.conf (one node: this machine, one default partition `debug`, no GPUs), start
#           munged, slurmctld and slurmd, and wait until the node is idle. Does nothing that is already done.
#   stop    cancel this cluster's jobs and stop the three daemons it started (by their pid files).
#   status  print the SLURM version and `sinfo`; exit 1 when the cluster does not answer.
#
# Needs root and no systemd (see ARCHITECTURE.md, "Facts about the dependencies"). A start that fails says
# why on stderr and exits 1; the SLURM tests then skip with a reason (CI goes on).
set -uo pipefail

PARTITION=${SLURM_PARTITION:-debug}
CONF=/etc/slurm/slurm.conf
MARK="# written by lora-sweeps scripts/slurm_cluster.sh"
RUN=/run/slurm-lora-sweeps
LOG=/var/log/slurm

say() { echo "slurm_cluster: $*" >&2; }
fail() { say "$*"; exit 1; }

install_packages() {
  command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
    && command -v munged >/dev/null && return 0
  [ "$(id -u)" = 0 ] || fail "not root: cannot install slurmctld, slurmd, slurm-client, munge"
  say "installing slurmctld slurmd slurm-client munge (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  { apt-get update -qq && apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge; } \
    >/dev/null || fail "apt-get could not install slurmctld slurmd slurm-client munge"
}

start_munge() {
  if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then return 0; fi
  mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge
  if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none || fail "cannot write the munge key"
  fi
  chown munge:munge /etc/munge/munge.key /run/munge /var/lib/munge /var/log/munge
  chmod 400 /etc/munge/munge.key
  chmod 755 /run/munge
  runuser -u munge -- /usr/sbin/munged || fail "munged did not start (see /var/log/munge/munged.log)"
  for _ in $(seq 20); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return 0; sleep 0.5; done
  fail "munged started but munge -n | unmunge fails (see /var/log/munge/munged.log)"
}

write_conf() {
  local host cpus mem_mb
  host=$(hostname)
  cpus=$(nproc)
  # what slurmd may promise jobs: the machine's memory less 2 GiB for everything else
  mem_mb=$(awk '/MemTotal/ {m = int($2 / 1024) - 2048; print (m > 1024 ? m : 1024)}' /proc/meminfo)
  if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
    fail "$CONF exists and was not written by this script; not touching it"
  fi
  mkdir -p /etc/slurm "$LOG" /var/spool/slurmctld /var/spool/slurmd "$RUN"
  cat >"$CONF.new" <<EOF
$MARK
# One node (this machine), one partition without GPUs; jobs run as the submitting user.
ClusterName=lora-sweeps
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10      # a requeued job waits this long before it may start again (default 120 s)
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobRequeue=1
SchedulerParameters=sched_interval=5,bf_interval=5   # a requeued job waits for a scheduling pass (default 60 s / 30 s)
ReturnToService=2
KillWait=30
MinJobAge=300
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
NodeName=$host CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
  mv "$CONF.new" "$CONF"
}

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start_daemons() {
  if ! alive "$RUN/slurmctld.pid"; then
    /usr/sbin/slurmctld || fail "slurmctld did not start (see $LOG/slurmctld.log)"
  fi
  if ! alive "$RUN/slurmd.pid"; then
    /usr/sbin/slurmd || fail "slurmd did not start (see $LOG/slurmd.log)"
  fi
  local host state
  host=$(hostname)
  for _ in $(seq 60); do
    state=$(sinfo -h -n "$host" -o %t 2>/dev/null | head -1)
    case "$state" in
      idle | mix | alloc) return 0 ;;
      down* | drain* | drng*) scontrol update nodename="$host" state=resume >/dev/null 2>&1 ;;
    esac
    sleep 1
  done
  fail "node $host is not idle after 60 s (sinfo says '${state:-nothing}'; see $LOG/slurmctld.log, $LOG/slurmd.log)"
}

stop_daemons() {
  if command -v squeue >/dev/null && scontrol ping >/dev/null 2>&1; then
    scancel --quiet --partition="$PARTITION" 2>/dev/null || true
  fi
  local pidfile
  for pidfile in "$RUN/slurmd.pid" "$RUN/slurmctld.pid"; do
    if alive "$pidfile"; then
      kill "$(cat "$pidfile")"
      for _ in $(seq 20); do alive "$pidfile" || break; sleep 0.5; done
    fi
  done
  if [ -s /run/munge/munged.pid ] && kill -0 "$(cat /run/munge/munged.pid)" 2>/dev/null; then
    kill "$(cat /run/munge/munged.pid)"
  fi
  say "stopped"
}

case "${1:-}" in
  start)
    install_packages
    start_munge
    if ! alive "$RUN/slurmctld.pid"; then write_conf; fi
    start_daemons
    say "up: $(sinfo --version), partition $PARTITION on $(hostname)"
    ;;
  stop) stop_daemons ;;
  status)
    sinfo --version && sinfo || exit 1
    ;;
  *)
    echo "usage: $0 start|stop|status" >&2
    exit 2
    ;;
esac
