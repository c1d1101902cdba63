#!/usr/bin/env bash
# A single-node SLURM cluster for the Dask tests (issue 14): Debian's slurm-wlm, munge for auth,
# slurmctld and slurmd as root on this machine, no cgroups (proctrack/linuxproc, task/none) so that
# it also runs inside a container. Usage: .ci/slurm-single-node.sh DIR — writes DIR/slurm.conf,
# starts the daemons (pids in DIR/*.pid, logs in DIR/*.log) and waits until the node is idle.
# Stop with: kill $(cat DIR/*.pid). Tests find the cluster through SLURM_CONF=DIR/slurm.conf.
set -euo pipefail
dir="$(realpath -m "${1:?usage: $0 DIR}")"
if ! command -v slurmctld >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm >/dev/null
fi
mkdir -p "$dir/state" "$dir/spool" "$dir/munge"
# Two free ports outside the ephemeral range (where other programs' client sockets land).
read -r ctld_port slurmd_port < <(python3 - <<'PY'
import random, socket
low, _ = map(int, open("/proc/sys/net/ipv4/ip_local_port_range").read().split())
ports = []
while len(ports) < 2:
    port = random.randrange(10000, max(10001, low))
    with socket.socket() as s:
        try:
            s.bind(("", port))
        except OSError:
            continue
    if port not in ports:
        ports.append(port)
print(*ports)
PY
)
host="$(hostname -s)"
cpus="$(nproc)"
mem_mb="$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))"
cat > "$dir/slurm.conf" <<CONF
ClusterName=bids2hf-ci
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.socket
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
ReturnToService=2
MpiDefault=none
NodeName=$host CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=ci Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
CONF
# munge: the package's key (created if missing), our own socket (no systemd needed)
[ -f /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key
munged --force --socket="$dir/munge/munge.socket" --pid-file="$dir/munged.pid" \
    --log-file="$dir/munged.log" --seed-file="$dir/munge/seed"
export SLURM_CONF="$dir/slurm.conf"
slurmctld -f "$dir/slurm.conf"
slurmd -f "$dir/slurm.conf"
for _ in $(seq 120); do
    if sinfo -h -o %T 2>/dev/null | grep -qx idle; then
        echo "SLURM_CONF=$dir/slurm.conf"
        exit 0
    fi
    sleep 0.5
done
echo "slurm did not come up in 60 s; logs in $dir" >&2
for log in munged slurmctld slurmd; do
    echo "--- $log.log" >&2
    tail -n 15 "$dir/$log.log" >&2 2>/dev/null || true
done
exit 1
