#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for trying and testing hydra/launcher=slurm (time limits, requeues)
# without a real cluster. Debian's slurmctld, slurmd and munge (SLURM 22.05), as root; takes about a minute the
# first time, and returns at once when a cluster already answers. Prints "ready" or why not, exit 0 or 1.
#
#   sudo scripts/local_slurm.sh
#   python run.py -m hydra/launcher=slurm hydra.launcher.partition=debug hydra.launcher.gpus_per_node=0 \
#       hydra.launcher.cpus_per_task=1 hydra.launcher.mem_gb=4 optim.lr=0.1,0.01
set -u
if sinfo -h >/dev/null 2>&1; then echo ready; exit 0; fi
[ "$(id -u)" = 0 ] || { echo "local_slurm.sh: needs root (it installs and starts system daemons)"; exit 1; }
if ! command -v slurmctld >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive \
         apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null 2>&1; } \
    || { echo "local_slurm.sh: cannot install slurmctld, slurmd, slurm-client and munge"; exit 1; }
fi
host=$(hostname -s)
memory_mb=$(( $(free -m | awk '/Mem:/{print $2}') * 8 / 10 ))
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge
# proctrack/linuxproc and task/none: no cgroups needed, so it runs in containers too. ReturnToService=2 brings
# the node back after a restart; KillWait: seconds between a time limit's SIGTERM and SIGKILL; cred_expire: how
# long a requeued job waits before it may start again (120 s by default).
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=local
SlurmctldHost=$host
AuthType=auth/munge
AuthInfo=cred_expire=10
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmdSpoolDir=/var/spool/slurmd
StateSaveLocation=/var/spool/slurmctld
SlurmUser=root
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
JobAcctGatherType=jobacct_gather/none
KillWait=20
NodeName=$host CPUs=$(nproc) RealMemory=$memory_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
[ -s /etc/munge/munge.key ] || mungekey -c >/dev/null 2>&1 \
  || dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 2>/dev/null
chown -R munge:munge /etc/munge /run/munge
chmod 400 /etc/munge/munge.key
pgrep -x munged >/dev/null || su -s /bin/sh munge -c /usr/sbin/munged
sleep 1
pgrep -x slurmctld >/dev/null || /usr/sbin/slurmctld
sleep 2
pgrep -x slurmd >/dev/null || /usr/sbin/slurmd
for _ in $(seq 30); do
  if sinfo -h -o %T 2>/dev/null | grep -qE "idle|mix|alloc"; then echo ready; exit 0; fi
  sleep 1
done
echo "local_slurm.sh: SLURM did not come up; see /var/log/slurm/"
exit 1
