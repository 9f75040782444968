#!/usr/bin/env bash
# Install (Debian) and start a single-node Slurm on this machine, for the test suite
# and for trying examples/slurm. Needs root. Idempotent: a running Slurm is left alone.
#   bash scripts/slurm-local.sh          install if needed, start, wait until the node is idle
#   bash scripts/slurm-local.sh stop
set -euo pipefail

BASE=${MANTIK_SLURM_BASE:-/var/tmp/mantik-slurm}
CONF=/etc/slurm/slurm.conf

stop() {
  pkill -x slurmd 2>/dev/null || true
  pkill -x slurmctld 2>/dev/null || true
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

if sinfo -h -o %T 2>/dev/null | grep -qx idle; then
  echo "slurm: already up"
  exit 0
fi

mkdir -p "$BASE/state" "$BASE/spool" "$BASE/log" /etc/slurm
host=$(hostname -s)
mem=$(awk '/MemAvailable/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)

if [ ! -s /etc/munge/munge.key ]; then
  mungekey --create --force --keyfile /etc/munge/munge.key
fi
chown munge:munge /etc/munge/munge.key
chmod 400 /etc/munge/munge.key
mkdir -p /run/munge && chown munge:munge /run/munge && chmod 755 /run/munge
if ! pgrep -x munged >/dev/null; then
  runuser -u munge -- /usr/sbin/munged
fi

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

stop
sleep 1
/usr/sbin/slurmctld -f "$CONF"
/usr/sbin/slurmd -f "$CONF"
for _ in $(seq 1 60); do
  if sinfo -h -o %T 2>/dev/null | grep -qx idle; then
    echo "slurm: up (node $host, partition debug)"
    exit 0
  fi
  sleep 0.5
done
echo "slurm did not come up; logs in $BASE/log" >&2
tail -20 "$BASE/log/slurmctld.log" "$BASE/log/slurmd.log" >&2 || true
exit 1
