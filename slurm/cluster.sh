#!/usr/bin/env bash
# A Slurm test cluster for a workstation or a CI machine (Debian/Ubuntu, run as root): one node by
# default, or several (--nodes), each node's slurmd started on its host through an ssh-like agent.
#
#   slurm/cluster.sh start  [--dir DIR] [--install]   start munged, slurmctld and slurmd (no-op when running)
#   slurm/cluster.sh start  --dir DIR --nodes H1,H2,... --agent CMD [--port P] [--slurmd-timeout S] [--install]
#                                                     several nodes: `CMD Hi 'slurmd -N Hi ...'` for each
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
#
# Several nodes: each name must resolve (/etc/hosts) to the address slurmctld reaches its slurmd at
# (NodeAddr).  slurmctld and munged run here; the nodes reach slurmctld at this machine's address on the
# route to the first node.  The script makes no hosts or namespaces: tests/nodes makes them (and always
# removes them) and hands over its launch agent, which takes ssh's command line, so `--agent ssh` would
# drive real hosts that share DIR.  DIR must be seen by every node at the same path, so not /tmp (node-local
# in the nodes tier).  Its own ports (SlurmctldPort P, default 6837; SlurmdPort P+1) and pid files, so it
# runs beside the one-node cluster.  The node list is kept in DIR/etc/nodes for stop and status.
# --slurmd-timeout: seconds before slurmctld declares a silent node DOWN (Slurm's default 300), for tests
# that lose a node.
set -euo pipefail

usage() {
    echo "usage: $0 start|stop|status|env [--dir DIR] [--install] [--nodes H1,H2,... --agent CMD [--port P] [--slurmd-timeout S]]" >&2
    exit 2
}

ACTION="${1:-}"; [ -n "$ACTION" ] || usage; shift
DIR=/tmp/hpcpilot-slurm
INSTALL=0
NODES=""
AGENT=""
PORT=6837
SLURMD_TIMEOUT=300
while [ $# -gt 0 ]; do
    case "$1" in
        --dir) [ $# -ge 2 ] || usage; DIR="$2"; shift 2 ;;
        --dir=*) DIR="${1#--dir=}"; shift ;;
        --install) INSTALL=1; shift ;;
        --nodes) [ $# -ge 2 ] || usage; NODES="$2"; shift 2 ;;
        --agent) [ $# -ge 2 ] || usage; AGENT="$2"; shift 2 ;;
        --port) [ $# -ge 2 ] || usage; PORT="$2"; shift 2 ;;
        --slurmd-timeout) [ $# -ge 2 ] || usage; SLURMD_TIMEOUT="$2"; shift 2 ;;
        *) usage ;;
    esac
done
case "$DIR" in /*) ;; *) DIR="$PWD/$DIR" ;; esac
CONF="$DIR/etc/slurm.conf"
RUN="$DIR/run"
HOST="$(hostname -s)"
export SLURM_CONF="$CONF"

die() { echo "slurm/cluster.sh: $*" >&2; exit 1; }
say() { echo "slurm/cluster.sh: $*"; }

# the nodes of a multi-node cluster (from --nodes, else DIR/etc/nodes); nothing for the one-node cluster
multi_nodes() {
    if [ -n "$NODES" ]; then echo "$NODES" | tr ',' ' '
    elif [ -s "$DIR/etc/nodes" ]; then tr '\n' ' ' < "$DIR/etc/nodes"; fi
}

# the node names `start` waits for and `status` shows
node_names() { local m; m="$(multi_nodes)"; echo "${m:-$HOST}"; }

# the daemons' pid files (RUN/NAME.pid) in stop order; start order is the reverse
daemons() {
    local n
    if [ -z "$(multi_nodes)" ]; then echo "slurmd slurmctld munged"; return 0; fi
    for n in $(multi_nodes); do printf 'unshare-%s ' "$n"; done
    echo "slurmctld munged"
}

# pid of a daemon we started (pid file RUN/$1.pid), if it is still alive and still that program
# (unshare-NODE is the unshare that holds NODE's slurmd); empty otherwise
live_pid() {
    local pidfile="$RUN/$1.pid" pid comm
    [ -s "$pidfile" ] || return 0
    pid="$(tr -dc '0-9' < "$pidfile")"
    [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] || return 0
    comm="$(cat "/proc/$pid/comm" 2>/dev/null || true)"
    [ "$comm" = "${1%%-*}" ] && echo "$pid"
    return 0
}

node_state() { sinfo -h -n "$1" -o %t 2>/dev/null | head -n1 || true; }

running() {
    local d
    for d in $(daemons); do [ -n "$(live_pid "$d")" ] || return 1; done
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
    if [ -n "$(multi_nodes)" ]; then write_nodes_config "$mem"; return 0; fi
    { cat <<EOF
# Written by hpcpilot slurm/cluster.sh: a one-node test cluster under $DIR.
ClusterName=hpcpilot
SlurmctldHost=$HOST
SlurmdSpoolDir=$DIR/spool
SlurmdPidFile=$RUN/slurmd.pid
SlurmdLogFile=$DIR/log/slurmd.log
EOF
      shared_settings
      cat <<EOF
NodeName=$HOST CPUs=8 RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=1-00:00:00 State=UP
EOF
    } > "$CONF"
}

# the settings every test cluster has, one node or several
shared_settings() {
    cat <<EOF
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/munge/munge.socket.2
StateSaveLocation=$DIR/state
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
# none on purpose: a plain srun starts singletons, which hpcpilot must detect and refuse (the pilot's
# script names --mpi)
MpiDefault=none
# more CPUs than the machine has, so 4-8 task tests fit on a 2-core CI runner
SlurmdParameters=config_overrides
ReturnToService=2
KillWait=30
InactiveLimit=0
MinJobAge=300
EOF
}

# the address NAME resolves to (/etc/hosts or DNS), or nothing
address_of() { getent hosts "$1" | awk '{print $1; exit}'; }

# this machine's own address on the route to ADDR: where the nodes reach slurmctld
controller_address() { ip -o route get "$1" 2>/dev/null | sed -n 's/.* src \([0-9.]*\).*/\1/p'; }

write_nodes_config() {
    local mem="$1" n addr first="" ctld nodelines=""
    for n in $(multi_nodes); do
        addr="$(address_of "$n")"
        [ -n "$addr" ] || die "node $n does not resolve to an address (add it to /etc/hosts)"
        [ -n "$first" ] || first="$addr"
        nodelines="${nodelines}NodeName=$n NodeAddr=$addr CPUs=8 RealMemory=$mem State=UNKNOWN"$'\n'
        mkdir -p "$DIR/spool/$n"
    done
    ctld="$(controller_address "$first")"
    [ -n "$ctld" ] || die "no route from this machine to node address $first"
    { cat <<EOF
# Written by hpcpilot slurm/cluster.sh: a test cluster of several nodes under $DIR.
ClusterName=hpcpilotnodes
SlurmctldHost=$HOST($ctld)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmdSpoolDir=$DIR/spool/%n
SlurmdPidFile=$RUN/ns/slurmd-%n.pid
SlurmdLogFile=$DIR/log/slurmd-%n.log
SlurmdTimeout=$SLURMD_TIMEOUT
EOF
      shared_settings
      printf '%sPartitionName=debug Nodes=%s Default=YES MaxTime=1-00:00:00 State=UP\n' \
          "$nodelines" "$(multi_nodes | tr -s ' ' ',' | sed 's/,$//')"
    } > "$CONF"
    multi_nodes | tr -s ' ' '\n' | sed '/^$/d' > "$DIR/etc/nodes"
}

# One node's slurmd, through the agent, in a PID namespace of its own (with its own /proc): a node's
# jobs see only that node's processes, as on a real machine, where the nodes sharing one pid space would
# let a batch shell "find" a rank on another node.  slurmd runs in the foreground as the namespace's
# first process under `unshare --kill-child`, whose host pid is the pid file here (slurmd's own, with its
# in-namespace pid, goes to RUN/ns); stopping unshare stops slurmd, and with it every process of the node.
# `ip netns exec` (the nodes tier's agent) gives the node a fresh /sys with nothing mounted on
# /sys/fs/cgroup, and slurmd 22.05 does not start without a cgroup hierarchy there even with
# proctrack/linuxproc: then, and only then, a tmpfs and the named systemd hierarchy are mounted there,
# in the node's own mount namespace.
start_node_slurmd() {
    local n="$1" fix launch i
    fix="grep -qs ' /sys/fs/cgroup ' /proc/mounts || { mount -t tmpfs cgroup-root /sys/fs/cgroup"
    fix="$fix && mkdir -p /sys/fs/cgroup/systemd && mount -t cgroup -o none,name=systemd cgroup /sys/fs/cgroup/systemd; }"
    launch="unshare --pid --fork --mount-proc --kill-child=TERM slurmd -D -N $n -f $CONF"
    $AGENT "$n" "$fix && { $launch </dev/null >>$DIR/log/slurmd-$n.out 2>&1 & echo \$! > $RUN/unshare-$n.pid; }" \
        || die "slurmd of node $n failed to start (see $DIR/log/slurmd-$n.log)"
    for i in $(seq 1 20); do [ -s "$RUN/ns/slurmd-$n.pid" ] && break; sleep 0.25; done
    [ -n "$(live_pid "unshare-$n")" ] || die "slurmd of node $n failed to start (see $DIR/log/slurmd-$n.log and .out)"
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
    local i node="$1" state=""
    for i in $(seq 1 60); do
        state="$(node_state "$node")"
        case "$state" in idle|mix|alloc) return 0 ;; esac
        sleep 0.5
    done
    die "node $node not idle after 30 s (state '${state:-none}'; see $DIR/log/slurmctld.log and slurmd*.log)"
}

check_nodes_options() {
    [ -n "$AGENT" ] || die "--nodes needs --agent (a command that runs a command on a node, as ssh does)"
    case "$DIR" in /tmp|/tmp/*) die "--dir $DIR: several nodes need a directory every node sees, not under /tmp" ;; esac
    case "$PORT" in ''|*[!0-9]*) die "--port $PORT: not a port number" ;; esac
    case "$SLURMD_TIMEOUT" in ''|*[!0-9]*) die "--slurmd-timeout $SLURMD_TIMEOUT: not a number of seconds" ;; esac
}

do_start() {
    local n
    if running && [ -f "$CONF" ]; then say "already running (export SLURM_CONF=$CONF)"; return 0; fi
    [ -z "$NODES" ] || check_nodes_options
    [ "$(id -u)" = 0 ] || die "starting the test cluster needs root"
    # something half-started earlier: stop our leftovers, then start cleanly
    do_stop quiet
    # a one-node start on a directory that held several nodes: forget them (stopped just above)
    [ -n "$NODES" ] || rm -f "$DIR/etc/nodes"
    mkdir -p "$DIR/etc" "$RUN" "$RUN/ns" "$DIR/state" "$DIR/spool" "$DIR/log"
    chmod 0755 "$DIR"
    install_if_missing
    write_config
    start_munge
    slurmctld -c -f "$CONF" || die "slurmctld failed to start (see $DIR/log/slurmctld.log)"
    if [ -n "$NODES" ]; then
        for n in $(multi_nodes); do start_node_slurmd "$n"; done
    else
        slurmd -f "$CONF" || die "slurmd failed to start (see $DIR/log/slurmd.log)"
    fi
    for n in $(node_names); do wait_idle "$n"; done
    say "running on $(node_names) (export SLURM_CONF=$CONF)"
}

# TERM to a daemon; for unshare-NODE to the slurmd it holds (unshare --fork ignores TERM itself, and
# exits once slurmd has)
term_daemon() {
    local d="$1" pid="$2" child
    if [ "${d%%-*}" = unshare ]; then
        for child in $(cat "/proc/$pid/task/$pid/children" 2>/dev/null); do kill -TERM "$child" 2>/dev/null || true; done
    else
        kill -TERM "$pid" 2>/dev/null || true
    fi
}

do_stop() {
    local d pid i stopped=""
    for d in $(daemons); do
        pid="$(live_pid "$d")"
        if [ -n "$pid" ]; then term_daemon "$d" "$pid"; stopped="$stopped $d"; fi
    done
    for d in $(daemons); do
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
    local n states=""
    if running; then
        for n in $(node_names); do states="$states $n:$(node_state "$n")"; done
        say "running, node states${states} (export SLURM_CONF=$CONF)"; return 0
    fi
    say "not running (dir $DIR)"; return 1
}

case "$ACTION" in
    start) do_start ;;
    stop) do_stop ;;
    status) do_status ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    *) usage ;;
esac
