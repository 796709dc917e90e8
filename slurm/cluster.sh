#!/usr/bin/env bash
# A one-node Slurm cluster for a workstation or a CI machine (Debian/Ubuntu, run as root).
#
#   slurm/cluster.sh start  [--dir DIR] [--install]   start munged, slurmctld and slurmd (no-op when running)
#   slurm/cluster.sh stop   [--dir DIR]               stop what `start` started (no-op when stopped)
#   slurm/cluster.sh status [--dir DIR]               exit 0 when running, 1 when not
#   slurm/cluster.sh env    [--dir DIR]               print the `export SLURM_CONF=...` line
#
# Everything (munge key and socket, slurm.conf, state, spool, pid and log files) lives under DIR
# (default /tmp/hpcpilot-slurm); nothing under /etc is touched.  Clients need SLURM_CONF=DIR/etc/slurm.conf
# (printed by `start` and `env`).  `stop` kills only the daemons whose pid files are under DIR and whose
# command name matches, so a site's own Slurm or munge is never touched.  `--install` runs
# `apt-get install -y --no-install-recommends slurm-wlm munge` when the programs are missing; without it
# nothing is installed.  MpiDefault=none on purpose: a plain `srun -n 4` then starts singletons, which is the
# case hpcpilot must refuse (tests/slurm).  Use `srun --mpi=pmi2` with the pip MPICH wheel.
set -euo pipefail

usage() { echo "usage: $0 start|stop|status|env [--dir DIR] [--install]" >&2; exit 2; }

ACTION="${1:-}"; [ -n "$ACTION" ] || usage; shift
DIR=/tmp/hpcpilot-slurm
INSTALL=0
while [ $# -gt 0 ]; do
    case "$1" in
        --dir) [ $# -ge 2 ] || usage; DIR="$2"; shift 2 ;;
        --dir=*) DIR="${1#--dir=}"; shift ;;
        --install) INSTALL=1; shift ;;
        *) usage ;;
    esac
done
case "$DIR" in /*) ;; *) DIR="$PWD/$DIR" ;; esac
CONF="$DIR/etc/slurm.conf"
RUN="$DIR/run"
HOST="$(hostname -s)"
DAEMONS="slurmd slurmctld munged"   # stop order; start order is the reverse
export SLURM_CONF="$CONF"

die() { echo "slurm/cluster.sh: $*" >&2; exit 1; }
say() { echo "slurm/cluster.sh: $*"; }

# pid of a daemon we started, if it is still alive and still that program; empty otherwise
live_pid() {
    local pidfile="$RUN/$1.pid" pid comm
    [ -s "$pidfile" ] || return 0
    pid="$(tr -dc '0-9' < "$pidfile")"
    [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] || return 0
    comm="$(cat "/proc/$pid/comm" 2>/dev/null || true)"
    [ "$comm" = "$1" ] && echo "$pid"
    return 0
}

node_state() { sinfo -h -n "$HOST" -o %t 2>/dev/null | head -n1 || true; }

running() {
    local d
    for d in $DAEMONS; do [ -n "$(live_pid "$d")" ] || return 1; done
    return 0
}

install_if_missing() {
    local missing=0 p
    for p in munged slurmctld slurmd sinfo srun sbatch; do command -v "$p" >/dev/null 2>&1 || missing=1; done
    [ "$missing" = 1 ] || return 0
    [ "$INSTALL" = 1 ] || die "Slurm or munge is not installed (run with --install, or: apt-get install -y --no-install-recommends slurm-wlm munge)"
    [ "$(id -u)" = 0 ] || die "installing Slurm needs root"
    command -v apt-get >/dev/null 2>&1 || die "no apt-get: install slurm-wlm and munge with this system's package manager"
    say "installing slurm-wlm and munge with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends slurm-wlm munge >"$DIR/log/apt.log" 2>&1 \
        || { apt-get update -q >>"$DIR/log/apt.log" 2>&1 && DEBIAN_FRONTEND=noninteractive \
             apt-get install -y -q --no-install-recommends slurm-wlm munge >>"$DIR/log/apt.log" 2>&1; } \
        || die "apt-get install slurm-wlm munge failed (see $DIR/log/apt.log)"
}

write_config() {
    local mem
    mem=$(( $(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024 * 9 / 10 ))
    cat > "$CONF" <<EOF
# Written by hpcpilot slurm/cluster.sh: a one-node test cluster under $DIR.
ClusterName=hpcpilot
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/munge/munge.socket.2
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
# none on purpose: a plain srun starts singletons, which hpcpilot must detect and refuse
MpiDefault=none
# more CPUs than the machine has, so 4-8 task tests fit on a 2-core CI runner
SlurmdParameters=config_overrides
ReturnToService=2
KillWait=30
InactiveLimit=0
MinJobAge=300
NodeName=$HOST CPUs=8 RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=1-00:00:00 State=UP
EOF
}

start_munge() {
    [ -z "$(live_pid munged)" ] || return 0
    id munge >/dev/null 2>&1 || die "no 'munge' user (is the munge package installed?)"
    install -d -o munge -g munge -m 0755 "$DIR/munge"
    if [ ! -s "$DIR/munge/munge.key" ]; then
        dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
    fi
    chown munge:munge "$DIR/munge/munge.key"; chmod 0400 "$DIR/munge/munge.key"
    # munged writes its pid file itself; the run dir must be writable by munge
    install -d -o munge -g munge -m 0755 "$DIR/munge/run"
    runuser -u munge -- munged --force --key-file="$DIR/munge/munge.key" \
        --socket="$DIR/munge/munge.socket.2" --pid-file="$DIR/munge/run/munged.pid" \
        --log-file="$DIR/munge/munged.log" --seed-file="$DIR/munge/munged.seed" \
        || die "munged failed to start (see $DIR/munge/munged.log)"
    cp "$DIR/munge/run/munged.pid" "$RUN/munged.pid"
}

wait_idle() {
    local i state=""
    for i in $(seq 1 60); do
        state="$(node_state)"
        case "$state" in idle|mix|alloc) return 0 ;; esac
        sleep 0.5
    done
    die "node $HOST not idle after 30 s (state '${state:-none}'; see $DIR/log/slurmctld.log and slurmd.log)"
}

do_start() {
    if running && [ -f "$CONF" ]; then say "already running (export SLURM_CONF=$CONF)"; return 0; fi
    [ "$(id -u)" = 0 ] || die "starting the test cluster needs root"
    # something half-started earlier: stop our leftovers, then start cleanly
    do_stop quiet
    mkdir -p "$DIR/etc" "$RUN" "$DIR/state" "$DIR/spool" "$DIR/log"
    chmod 0755 "$DIR"
    install_if_missing
    write_config
    start_munge
    slurmctld -c -f "$CONF" || die "slurmctld failed to start (see $DIR/log/slurmctld.log)"
    slurmd -f "$CONF" || die "slurmd failed to start (see $DIR/log/slurmd.log)"
    wait_idle
    say "running on $HOST (export SLURM_CONF=$CONF)"
}

do_stop() {
    local d pid i stopped=""
    for d in $DAEMONS; do
        pid="$(live_pid "$d")"
        if [ -n "$pid" ]; then kill -TERM "$pid" 2>/dev/null || true; stopped="$stopped $d"; fi
    done
    for d in $DAEMONS; do
        for i in $(seq 1 40); do [ -n "$(live_pid "$d")" ] || break; sleep 0.25; done
        pid="$(live_pid "$d")"
        [ -z "$pid" ] || kill -KILL "$pid" 2>/dev/null || true
        rm -f "$RUN/$d.pid"
    done
    if [ "${1:-}" != quiet ]; then
        if [ -n "$stopped" ]; then say "stopped$stopped"; else say "not running"; fi
    fi
}

do_status() {
    if running; then say "running on $HOST, node state '$(node_state)' (export SLURM_CONF=$CONF)"; return 0; fi
    say "not running (dir $DIR)"; return 1
}

case "$ACTION" in
    start) do_start ;;
    stop) do_stop ;;
    status) do_status ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    *) usage ;;
esac
