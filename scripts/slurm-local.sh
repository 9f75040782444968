#!/usr/bin/env bash
# Install (Debian) and start a single-node Slurm on this machine, for trying examples/slurm.
# Needs root. Idempotent: a Slurm that already answers is left alone.
#   bash scripts/slurm-local.sh          install if needed, start, wait until the node is idle
#   bash scripts/slurm-local.sh install  install Slurm and munge and start munged only (what the test suite
#                                        needs: it starts a Slurm of its own)
#   bash scripts/slurm-local.sh stop     stop the daemons this script started (by their pid files), nothing else
# The configuration is $SLURM_CONF (default /etc/slurm/slurm.conf); state, logs and pid files go under
# $MANTIK_SLURM_BASE (default /var/tmp/mantik-slurm).
set -euo pipefail

BASE=${MANTIK_SLURM_BASE:-/var/tmp/mantik-slurm}
CONF=${SLURM_CONF:-/etc/slurm/slurm.conf}
export SLURM_CONF="$CONF"  # sinfo and scontrol below ask the cluster of this configuration

# Stop only what this script started: the pid files it configured, and only if that pid is still the daemon
# it started with this configuration (a pid can be reused). Any other slurmctld or slurmd is left running.
stop() {
  local daemon pid_file pid
  for daemon in slurmd slurmctld; do
    pid_file="$BASE/$daemon.pid"
    [ -s "$pid_file" ] || continue
    pid=$(cat "$pid_file")
    if [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' < "/proc/$pid/cmdline" | grep -q -- "$daemon -f $CONF"; then
      kill "$pid"
      for _ in $(seq 1 40); do  # killed daemons may linger as zombies here: treat Z as stopped
        state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null || echo gone)
        [ "$state" = gone ] || [ "$state" = Z ] && break
        sleep 0.25
      done
    fi
    rm -f "$pid_file"
  done
}

if [ "${1:-start}" = "stop" ]; then
  stop
  exit 0
fi

if [ "$(id -u)" != 0 ]; then
  echo "scripts/slurm-local.sh needs root (it installs packages and starts daemons)" >&2
  exit 1
fi

if ! command -v slurmctld >/dev/null 2>&1 || ! command -v munged >/dev/null 2>&1; then
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y slurm-wlm munge
fi

if [ ! -s /etc/munge/munge.key ]; then
  mungekey --create --force --keyfile /etc/munge/munge.key
fi
chown munge:munge /etc/munge/munge.key
chmod 400 /etc/munge/munge.key
mkdir -p /run/munge && chown munge:munge /run/munge && chmod 755 /run/munge
if ! pgrep -x munged >/dev/null; then
  runuser -u munge -- /usr/sbin/munged
fi

if [ "${1:-start}" = "install" ]; then
  echo "slurm: installed, munged running"
  exit 0
fi

# a controller that answers belongs to someone (perhaps this script earlier): never reconfigure or restart it
if scontrol ping 2>/dev/null | grep -q "is UP"; then
  echo "slurm: already up ($CONF)"
  exit 0
fi

mkdir -p "$BASE/state" "$BASE/spool" "$BASE/log" "$(dirname "$CONF")"
host=$(hostname -s)
mem=$(awk '/MemAvailable/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)

cat > "$CONF" <<CONF
ClusterName=local
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$BASE/log/jobcomp.txt
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
StateSaveLocation=$BASE/state
SlurmdSpoolDir=$BASE/spool
SlurmctldPidFile=$BASE/slurmctld.pid
SlurmdPidFile=$BASE/slurmd.pid
SlurmctldLogFile=$BASE/log/slurmctld.log
SlurmdLogFile=$BASE/log/slurmd.log
ReturnToService=2
MaxJobCount=100000
MaxArraySize=10001
MinJobAge=300
KillWait=2
OverTimeLimit=0
SlurmdParameters=config_overrides
NodeName=$host CPUs=8 RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF

stop  # leftovers of an earlier start of this script (a controller that does not answer), and only those
/usr/sbin/slurmctld -f "$CONF"
/usr/sbin/slurmd -f "$CONF"
for _ in $(seq 1 60); do
  if sinfo -h -o %T 2>/dev/null | grep -qx idle; then
    echo "slurm: up (node $host, partition debug, $CONF)"
    exit 0
  fi
  sleep 0.5
done
echo "slurm did not come up; logs in $BASE/log" >&2
tail -20 "$BASE/log/slurmctld.log" "$BASE/log/slurmd.log" >&2 || true
exit 1
