#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for tests/test_slurm.py (and for trying the SLURM profile
# without a cluster):
#
#   tests/slurm_cluster.sh install      Debian's slurmctld, slurmd, slurm-client and munge, where missing
#   tests/slurm_cluster.sh start DIR    write /etc/slurm/slurm.conf, start munged, slurmctld and slurmd
#                                       (their key, socket, state and logs in DIR), wait for the node
#   tests/slurm_cluster.sh stop DIR     cancel every job, stop the three daemons, remove slurm.conf
#
# Exit status 3: this machine cannot have the cluster (no root or sudo, no packages, a SLURM of its
# own); the test skips with the message. Any other failure is an error.
#
# The configuration has to be /etc/slurm/slurm.conf: the SLURM plugin's job step drops SLURM_* from
# the environment of the `srun` it runs inside each job, SLURM_CONF included, so `srun` reads the
# compiled-in path. A machine that already has that file (a real SLURM) is refused, not overwritten.
# No accounting database (AccountingStorageType=accounting_storage/none): `sacct` has nothing to
# report, and a finished job stays visible to `squeue` and `scontrol` for MinJobAge = 600 s (the
# plugin's squeue status queries need at least 3 x its first status-check delay). Processes are tracked without cgroups (proctrack/linuxproc, task/none); memory is enforced
# by jobacct_gather/linux, which kills a job step over its --mem (OverMemoryKill), polling each second.
set -euo pipefail

CONF=/etc/slurm/slurm.conf
MARK="# written by tests/slurm_cluster.sh"
PACKAGES=(slurmctld slurmd slurm-client munge)

die() { echo "slurm_cluster.sh: $*" >&2; exit 1; }
cannot() { echo "slurm_cluster.sh: $*" >&2; exit 3; }

as_root() {
    if [[ $EUID -eq 0 ]]; then "$@"
    elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo -n "$@"
    else cannot "needs root or passwordless sudo to run: $*"
    fi
}

install() {
    local missing=()
    for cmd in slurmctld slurmd sbatch munged; do command -v "$cmd" >/dev/null || missing+=("$cmd"); done
    [[ ${#missing[@]} -eq 0 ]] && return
    command -v apt-get >/dev/null || cannot "${missing[*]} missing and no apt-get to install ${PACKAGES[*]}"
    as_root apt-get update -qq >/dev/null || cannot "apt-get update failed"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" \
        >/dev/null || cannot "apt-get install ${PACKAGES[*]} failed"
}

write_config() {
    local dir=$1 node=$2 memory
    memory=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
    as_root tee "$CONF" >/dev/null <<EOF
$MARK for the cluster in $dir
ClusterName=shortrun-test
SlurmctldHost=$node(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket=$dir/munge.socket
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
MailProg=/bin/true
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=1
JobAcctGatherParams=OverMemoryKill
MinJobAge=600
KillWait=5
ReturnToService=2
NodeName=$node NodeAddr=127.0.0.1 CPUs=$(nproc) RealMemory=$memory State=UNKNOWN
PartitionName=main Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
}

start() {
    local dir=$1
    command -v slurmctld >/dev/null || cannot "SLURM is not installed (run: $0 install)"
    if [[ -e $CONF ]] && ! grep -q "^$MARK" "$CONF"; then
        cannot "$CONF exists: this machine has a SLURM of its own, which the test leaves alone"
    fi
    mkdir -p "$dir/state" "$dir/spool"
    dir=$(cd "$dir" && pwd)
    write_config "$dir" "$(hostname -s)"
    [[ -f $dir/munge.key ]] || dd if=/dev/urandom of="$dir/munge.key" bs=1024 count=1 status=none
    chmod 0400 "$dir/munge.key"
    as_root munged --force --key-file="$dir/munge.key" --socket="$dir/munge.socket" \
        --pid-file="$dir/munged.pid" --log-file="$dir/munged.log" --seed-file="$dir/munged.seed"
    as_root slurmctld -i
    as_root slurmd
    for _ in $(seq 60); do
        if [[ $(sinfo --noheader --format=%t 2>/dev/null) == idle ]]; then
            sinfo --version
            return
        fi
        sleep 0.5
    done
    die "the node did not become idle in 30 s; see $dir/slurmctld.log and $dir/slurmd.log"
}

stop_daemon() {  # SIGTERM the daemon of a pid file, SIGKILL if it is still there 10 s later
    local pidfile=$1 pid
    [[ -f $pidfile ]] || return 0
    pid=$(cat "$pidfile")
    as_root kill "$pid" 2>/dev/null || return 0
    for _ in $(seq 20); do [[ -d /proc/$pid ]] || return 0; sleep 0.5; done
    as_root kill -KILL "$pid" 2>/dev/null || true
}

stop() {
    local dir=$1
    if [[ -f $dir/slurmctld.pid ]] && grep -q "^$MARK" "$CONF" 2>/dev/null; then
        as_root scancel --full --quiet --partition=main 2>/dev/null || true
        for _ in $(seq 20); do  # slurmd ends the cancelled jobs' processes
            [[ -z $(squeue --noheader --states=PENDING,RUNNING,COMPLETING 2>/dev/null) ]] && break
            sleep 0.5
        done
    fi
    stop_daemon "$dir/slurmd.pid"
    stop_daemon "$dir/slurmctld.pid"
    stop_daemon "$dir/munged.pid"
    if grep -q "^$MARK" "$CONF" 2>/dev/null; then as_root rm "$CONF"; fi
}

case ${1:-} in
    install) install ;;
    start) [[ $# -eq 2 ]] || die "usage: $0 start DIR"; start "$2" ;;
    stop) [[ $# -eq 2 ]] || die "usage: $0 stop DIR"; stop "$2" ;;
    *) die "usage: $0 install | start DIR | stop DIR" ;;
esac
