"""Several "nodes" on one machine, for tests of what only happens across nodes (root only).

A node is a network namespace joined to a bridge on the host by a veth pair, with an address of a /24
that no host interface uses, a hostname (its UTS name, resolvable through ``/etc/hosts`` lines added
here) and a private ``/tmp``: a tmpfs mounted on the host at ``Node.tmp`` and bound over ``/tmp`` in a
fresh mount namespace for every process the node runs, so that two processes of one node share their
``/tmp`` while another node's is not visible.

What this hides, on purpose: inside a node ``/tmp`` is the node's tmpfs, so the host's ``/tmp`` (where
pytest's ``tmp_path`` lives) is *not* visible there.  Work that several nodes must see (pilot work
directories, access points, the test server's files) goes under ``Cluster.shared``, a directory outside
``/tmp`` that every node and the host see at the same path -- the cluster's shared file system.
``Node.run``/``Node.popen`` refuse a ``cwd`` under ``/tmp`` rather than run somewhere confusing.

Every name (namespaces, interfaces, hostnames, the host directory) carries a prefix unique to the call
(pid and counter), so two test runs on one machine never collide; the /24 is picked under a lock.
Cleanup always runs, also after a failed test or a KeyboardInterrupt: every process of every node is
killed, then namespaces, veths, bridge, ``/etc/hosts`` lines (only ours) and mounts are removed.  What a
run killed with SIGKILL left behind is removed by the next ``make_nodes`` (``sweep_stale``: only nodes whose
maker, by pid and start time, is gone).
Nothing here sends a packet anywhere but to the addresses it made.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import itertools
import os
import random
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BASE = Path(os.environ.get("HPCPILOT_NODES_DIR", "/var/tmp/hpcpilot-nodes"))
"""Host directory for the nodes' /tmp mounts, the shared directory and the agent (not under /tmp)."""
HOSTS = Path("/etc/hosts")
LOCK = BASE / ".lock"
TMP_SIZE = "1g"
_counter = itertools.count(1)

ENTER = 'mount --bind "$1" /tmp && hostname "$2" && shift 2 && exec "$@"'
"""Run inside ``unshare --mount --uts``: the node's /tmp over /tmp, the node's hostname, then the command."""


class NodesError(RuntimeError):
    """Nodes could not be made or removed; the message names the step and the tool's own words."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if check and done.returncode != 0:
        raise NodesError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """Serialise subnet picking and /etc/hosts edits between concurrent test runs on this machine."""
    BASE.mkdir(parents=True, exist_ok=True)
    with open(LOCK, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _used_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network the host has an address or a route in (ours must overlap none of them)."""
    used = []
    for line in _ip("-o", "-4", "addr").stdout.splitlines():
        parts = line.split()
        if "inet" in parts:
            used.append(ipaddress.ip_interface(parts[parts.index("inet") + 1]).network)
    for line in _ip("-4", "route").stdout.splitlines():
        target = line.split()[0] if line.split() else "default"
        if target != "default":
            used.append(ipaddress.ip_network(target, strict=False))
    return used


def pick_subnet() -> ipaddress.IPv4Network:
    """A random 10.x.y.0/24 that overlaps no host address or route (call under the lock)."""
    used = _used_networks()
    for _ in range(200):
        net = ipaddress.ip_network(f"10.{random.randint(64, 250)}.{random.randint(0, 255)}.0/24")
        if not any(net.overlaps(other) for other in used):
            return net
    raise NodesError("no free 10.x.y.0/24 left for the nodes' network")


@dataclass
class Node:
    """One node: its hostname, network namespace, address and the host path of its private /tmp."""

    name: str
    netns: str
    address: str
    tmp: Path
    veth: str

    def wrap(self, argv: Sequence[str]) -> list[str]:
        """``argv`` as a command that runs inside this node (netns + its own mount and UTS namespaces)."""
        return ["ip", "netns", "exec", self.netns, "unshare", "--mount", "--uts", "--propagation", "private",
                "sh", "-c", ENTER, "node-enter", str(self.tmp), self.name, *argv]

    def run(self, argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        """``subprocess.run`` of ``argv`` inside the node."""
        _check_cwd(kwargs.get("cwd"))
        return subprocess.run(self.wrap(argv), **kwargs)

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """``subprocess.Popen`` of ``argv`` inside the node."""
        _check_cwd(kwargs.get("cwd"))
        return subprocess.Popen(self.wrap(argv), **kwargs)

    def pids(self) -> list[int]:
        """Every process in the node's network namespace (whatever started it: agent, run, popen)."""
        done = _ip("netns", "pids", self.netns, check=False)
        return [int(pid) for pid in done.stdout.split() if pid.isdigit()]

    def kill_all(self, sig: int = signal.SIGKILL, rounds: int = 20) -> int:
        """Send ``sig`` to every process of the node -- with SIGKILL, a node crash as the others see it.

        With SIGKILL it repeats until the node is empty (a dying parent may still fork), sleeping briefly
        between rounds; returns how many processes were signalled."""
        signalled: set[int] = set()
        for _ in range(rounds):
            pids = [pid for pid in self.pids() if pid != os.getpid()]
            if not pids or (sig != signal.SIGKILL and signalled):
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
                signalled.add(pid)
            if sig != signal.SIGKILL:
                break
            time.sleep(0.05)
        return len(signalled)


def _check_cwd(cwd: Any) -> None:
    if cwd is not None and Path(cwd).resolve().is_relative_to("/tmp"):
        raise ValueError(f"cwd {cwd} is under /tmp, which a node replaces with its own: use Cluster.shared")


@dataclass
class Cluster:
    """The nodes of one ``make_nodes`` call, their bridge and network, the launch agent, a shared directory."""

    prefix: str
    network: ipaddress.IPv4Network
    bridge: str
    directory: Path
    nodes: list[Node] = field(default_factory=list)

    @property
    def agent(self) -> Path:
        """The launch agent: ``ssh``'s command line in, the command run inside the named node."""
        return self.directory / "agent"

    @property
    def shared(self) -> Path:
        """A directory every node and the host see at the same path (outside /tmp): the shared file system."""
        return self.directory / "shared"

    @property
    def bridge_address(self) -> str:
        """The host's address on the nodes' network: where a server the nodes must reach listens."""
        return str(self.network.network_address + 1)

    @property
    def hostnames(self) -> list[str]:
        return [node.name for node in self.nodes]

    def node(self, name: str) -> Node:
        return next(node for node in self.nodes if node.name == name)

    def mpich_args(self, ranks_per_node: int) -> list[str]:
        """Hydra ``mpiexec`` options placing ``ranks_per_node`` ranks on each node through the agent."""
        return ["-hosts", ",".join(self.hostnames), "-ppn", str(ranks_per_node), "-launcher", "ssh",
                "-launcher-exec", str(self.agent), "-iface", self.bridge]

    def openmpi_args(self, ranks_per_node: int) -> list[str]:
        """Open MPI ``mpirun`` options: the nodes as hosts with ``ranks_per_node`` ranks on each, the agent,
        and both the runtime's and the MPI's TCP traffic kept on the nodes' network."""
        hosts = ",".join(f"{name}:{ranks_per_node}" for name in self.hostnames)
        # ppr: with --oversubscribe (the MPI tier's, for 2 cores) PRRTE would otherwise put every rank on one node
        return ["--host", hosts, "--map-by", f"ppr:{ranks_per_node}:node", "--mca", "plm_rsh_agent", str(self.agent),
                "--prtemca", "plm_ssh_no_tree_spawn", "1",
                "--prtemca", "oob_tcp_if_include", str(self.network),
                "--mca", "btl_tcp_if_include", str(self.network)]


def _agent_script(cluster: Cluster) -> str:
    """A POSIX sh script called like ``ssh [options] HOST COMMAND...`` (Hydra's and PRRTE's rsh/ssh
    launch): it drops the options, finds HOST's node and runs COMMAND there through a shell, as sshd would."""
    cases = "\n".join(
        f"  {shlex.quote(n.name)}|{n.address}) set -- {' '.join(map(shlex.quote, n.wrap(['sh', '-c'])))} \"$*\";;"
        for n in cluster.nodes)
    return f"""#!/bin/sh
# Launch agent of the nodes {cluster.prefix} (tests/nodes/netns.py): ssh [options] HOST COMMAND...
while [ $# -gt 0 ]; do case "$1" in -[bcDEeFIiJLlmOoPpQRSWw]) shift 2;; -*) shift;; *) break;; esac; done
host=$1; shift
# The nodes share one kernel, so UCX (the pip MPICH's netmod) takes them for one machine and would join them
# through shared memory; on TCP only, as real nodes are joined (tests/nodes/test_slurm_nodes.py says the same).
export UCX_TLS="${{UCX_TLS:-self,tcp}}"
case "$host" in
{cases}
  *) echo "agent: $host is not a node of {cluster.prefix}" >&2; exit 255;;
esac
exec "$@"
"""


def _add_node(cluster: Cluster, index: int) -> Node:
    prefix = cluster.prefix
    node = Node(name=f"{prefix}-n{index}", netns=f"{prefix}n{index}",
                address=str(cluster.network.network_address + 1 + index),
                tmp=cluster.directory / f"n{index}" / "tmp", veth=f"{prefix}h{index}")
    cluster.nodes.append(node)  # before the first step, so that cleanup removes whatever was made
    peer = f"{prefix}p{index}"
    _ip("netns", "add", node.netns)
    _ip("link", "add", node.veth, "type", "veth", "peer", "name", peer)
    _ip("link", "set", peer, "netns", node.netns)
    _ip("-n", node.netns, "link", "set", peer, "name", "eth0")
    _ip("-n", node.netns, "addr", "add", f"{node.address}/{cluster.network.prefixlen}", "dev", "eth0")
    _ip("-n", node.netns, "link", "set", "eth0", "up")
    _ip("-n", node.netns, "link", "set", "lo", "up")
    _ip("link", "set", node.veth, "master", cluster.bridge)
    _ip("link", "set", node.veth, "up")
    node.tmp.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMP_SIZE},mode=1777", "tmpfs", str(node.tmp)],
                             capture_output=True, text=True, timeout=30, check=False)
    if mounted.returncode != 0:
        raise NodesError(f"mount tmpfs on {node.tmp}: {mounted.stderr.strip()}")
    return node


def _hosts_marker(prefix: str) -> str:
    return f"# hpcpilot-nodes {prefix}"


def _edit_hosts(cluster: Cluster, add: bool) -> None:
    """Add the nodes' lines to /etc/hosts, or remove exactly the lines carrying this cluster's marker."""
    marker = _hosts_marker(cluster.prefix)
    with _locked():
        lines = [line for line in HOSTS.read_text().splitlines() if not line.endswith(marker)]
        if add:
            lines += [f"{node.address} {node.name} {marker}" for node in cluster.nodes]
        HOSTS.write_text("\n".join(lines) + "\n")


def _start_time(pid: int) -> str:
    """A process's start time in clock ticks since boot ('' if it is gone): with the pid, who made the nodes."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _create(cluster: Cluster, count: int) -> None:
    cluster.directory.mkdir(parents=True)
    (cluster.directory / "owner").write_text(f"{os.getpid()} {_start_time(os.getpid())}\n")
    cluster.shared.mkdir()
    with _locked():
        cluster.network = pick_subnet()
        _ip("link", "add", cluster.bridge, "type", "bridge")
        _ip("addr", "add", f"{cluster.bridge_address}/{cluster.network.prefixlen}", "dev", cluster.bridge)
    _ip("link", "set", cluster.bridge, "up")
    for index in range(1, count + 1):
        _add_node(cluster, index)
    _edit_hosts(cluster, add=True)
    cluster.agent.write_text(_agent_script(cluster))
    cluster.agent.chmod(0o755)


def destroy(cluster: Cluster) -> None:
    """Remove everything ``make_nodes`` made, each step whatever the others did; raise at the end
    naming the steps that failed."""
    failed: list[str] = []

    def step(what: str, action: Any) -> None:
        try:
            action()
        except Exception as exc:  # every step runs; the failures are reported together
            failed.append(f"{what}: {exc}")

    for node in cluster.nodes:
        step(f"kill {node.netns}", node.kill_all)
        step(f"netns {node.netns}", lambda n=node: _ip("netns", "del", n.netns, check=False))
        step(f"veth {node.veth}", lambda n=node: _ip("link", "del", n.veth, check=False))
    step(f"bridge {cluster.bridge}", lambda: _ip("link", "del", cluster.bridge, check=False))
    step("/etc/hosts", lambda: _edit_hosts(cluster, add=False))
    for node in cluster.nodes:
        if os.path.ismount(node.tmp):
            step(f"umount {node.tmp}", lambda n=node: _umount(n.tmp))
    step(f"rm {cluster.directory}", lambda: shutil.rmtree(cluster.directory, ignore_errors=True))
    left = [node.netns for node in cluster.nodes if node.netns in _ip("netns", "list", check=False).stdout.split()]
    if left:
        failed.append(f"namespaces still there: {left}")
    if failed:
        raise NodesError("cleanup of nodes " + cluster.prefix + " failed: " + "; ".join(failed))


def _umount(path: Path) -> None:
    done = subprocess.run(["umount", str(path)], capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, text=True, timeout=30, check=True)


def sweep_stale() -> list[str]:
    """Remove the nodes of runs whose process is gone (a test run killed with SIGKILL cannot clean up): only
    directories under BASE with an ``owner`` file whose pid and start time no longer match a live process."""
    swept = []
    for owner in sorted(BASE.glob("*/owner")):
        try:
            pid, started = owner.read_text().split()
        except (OSError, ValueError):
            continue
        if _start_time(int(pid)) == started:
            continue  # its maker is alive: its nodes are in use
        prefix = owner.parent.name
        names = _ip("netns", "list", check=False).stdout.split()
        indices = sorted({int(m) for n in names if (m := n.removeprefix(f"{prefix}n")).isdigit() and m != n}
                         | {int(d.name[1:]) for d in owner.parent.glob("n*") if d.name[1:].isdigit()})
        stale = Cluster(prefix=prefix, network=ipaddress.ip_network("0.0.0.0/32"), bridge=f"{prefix}br",
                        directory=owner.parent)
        stale.nodes = [Node(f"{prefix}-n{i}", f"{prefix}n{i}", "", owner.parent / f"n{i}" / "tmp", f"{prefix}h{i}")
                       for i in indices]
        with contextlib.suppress(NodesError):
            destroy(stale)
        swept.append(prefix)
    return swept


def new_prefix() -> str:
    """A prefix unique to this call on this machine: the pid and a per-process counter (``hn<pid>x<k>``)."""
    return f"hn{os.getpid()}x{next(_counter)}"


@contextlib.contextmanager
def make_nodes(count: int, prefix: str | None = None) -> Iterator[Cluster]:
    """``count`` nodes for the duration of the ``with`` block; removed afterwards whatever happened."""
    prefix = prefix or new_prefix()
    if not 1 <= count <= 250:
        raise ValueError(f"node count {count} is not between 1 and 250")
    if len(f"{prefix}h{count}") > 15 or len(f"{prefix}br") > 15:
        raise ValueError(f"prefix {prefix!r} makes interface names longer than 15 characters")
    sweep_stale()
    cluster = Cluster(prefix=prefix, network=ipaddress.ip_network("0.0.0.0/32"), bridge=f"{prefix}br",
                      directory=BASE / prefix)
    try:
        _create(cluster, count)
        yield cluster
    finally:
        destroy(cluster)


def probe() -> str | None:
    """Why nodes cannot be made here (None when they can): root, the tools, and a namespace made and removed."""
    if os.geteuid() != 0:
        return "the nodes tier needs root (network namespaces, a bridge, tmpfs mounts, /etc/hosts)"
    missing = [tool for tool in ("ip", "unshare", "nsenter", "mount") if shutil.which(tool) is None]
    if missing:
        return f"the nodes tier needs {', '.join(missing)} (iproute2, util-linux)"
    name = f"hnprobe{os.getpid()}"
    made = _ip("netns", "add", name, check=False)
    if made.returncode != 0:
        return f"a network namespace cannot be made here: {made.stderr.strip()}"
    _ip("netns", "del", name, check=False)
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tests.nodes.netns [--nodes N] [--ranks-per-node K] [-- COMMAND...]``: make the nodes, run
    COMMAND (default: an interactive shell) with them described in its environment, then remove them."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m tests.nodes.netns", description=main.__doc__)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--ranks-per-node", type=int, default=2)
    parser.add_argument("command", nargs="*", help="what to run with the nodes (default: $SHELL)")
    args = parser.parse_args(argv)
    reason = probe()
    if reason:
        print(f"nodes: {reason}", file=sys.stderr)
        return 2
    with make_nodes(args.nodes) as cluster:
        env = {**os.environ, "NODES_HOSTS": ",".join(cluster.hostnames), "NODES_AGENT": str(cluster.agent),
               "NODES_SHARED": str(cluster.shared), "NODES_SERVER_ADDRESS": cluster.bridge_address,
               "NODES_MPICH_ARGS": shlex.join(cluster.mpich_args(args.ranks_per_node)),
               "NODES_OPENMPI_ARGS": shlex.join(cluster.openmpi_args(args.ranks_per_node))}
        for key in sorted(k for k in env if k.startswith("NODES_")):
            print(f"{key}={env[key]}", file=sys.stderr)
        command = args.command or [os.environ.get("SHELL", "/bin/sh")]
        try:
            return subprocess.run(command, env=env, cwd=cluster.shared, check=False).returncode
        except KeyboardInterrupt:
            return 130


if __name__ == "__main__":
    raise SystemExit(main())
