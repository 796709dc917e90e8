"""The nodes fixture itself: what makes the other tests of the tier mean something across nodes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.nodes import netns
from tests.pilotrun import REPO

pytestmark = pytest.mark.nodes

LISTEN = ("import socket, sys; s = socket.create_server((sys.argv[1], 0)); print(s.getsockname()[1], flush=True);"
          " c, peer = s.accept(); print(peer[0], flush=True)")
KEEP_NODES = ("import time; from tests.nodes import netns; nodes = netns.make_nodes(2); cluster = nodes.__enter__();"
              " print(cluster.prefix, flush=True); time.sleep(300)")
CONNECT = "import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)"


def test_each_node_has_its_hostname_address_and_private_tmp(cluster: netns.Cluster) -> None:
    one, two, _ = cluster.nodes
    names = [node.run(["hostname"], capture_output=True, text=True, check=True).stdout.strip()
             for node in cluster.nodes]
    assert names == cluster.hostnames
    one.run(["sh", "-c", "echo mine > /tmp/scratch"], check=True)
    # a second process of the same node sees it (and so does the host, at Node.tmp); another node does not
    assert one.run(["cat", "/tmp/scratch"], capture_output=True, text=True).stdout == "mine\n"
    assert (one.tmp / "scratch").read_text() == "mine\n"
    assert two.run(["test", "-e", "/tmp/scratch"]).returncode == 1
    assert not (two.tmp / "scratch").exists()
    # node one reaches node two by name, over the nodes' network, from its own address
    server = two.popen([sys.executable, "-c", LISTEN, two.address], stdout=subprocess.PIPE, text=True)
    try:
        port = server.stdout.readline().strip()
        one.run([sys.executable, "-c", CONNECT, two.name, port], check=True, timeout=30)
        assert server.stdout.readline().strip() == one.address
    finally:
        server.kill()
        server.wait()


def test_the_agent_runs_the_command_in_the_named_node(cluster: netns.Cluster) -> None:
    node = cluster.nodes[2]
    done = subprocess.run([str(cluster.agent), "-x", "-o", "BatchMode=yes", node.name, "hostname;", "ls", "/tmp"],
                          capture_output=True, text=True, timeout=30)
    assert done.stdout.split() == [node.name]
    stray = subprocess.run([str(cluster.agent), "elsewhere", "true"], capture_output=True, text=True, timeout=30)
    assert stray.returncode == 255 and "elsewhere is not a node" in stray.stderr


def test_cleanup_removes_everything_even_when_the_block_fails(nodes_possible: None) -> None:
    with pytest.raises(KeyError), netns.make_nodes(2) as made:
        sleeper = made.nodes[0].popen(["sleep", "300"])
        assert made.nodes[0].pids()
        raise KeyError("a test failing inside the block")
    assert sleeper.wait(timeout=10) == -9
    assert_gone(made.prefix)


def test_the_nodes_of_a_run_killed_with_sigkill_are_swept_by_the_next(nodes_possible: None) -> None:
    maker = subprocess.Popen([sys.executable, "-c", KEEP_NODES], stdout=subprocess.PIPE, text=True,
                             cwd=REPO)
    prefix = maker.stdout.readline().strip()
    assert prefix in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert netns.sweep_stale() == []  # its maker lives: its nodes are left alone
    maker.kill()
    maker.wait()
    assert prefix in netns.sweep_stale()
    assert_gone(prefix)


def assert_gone(prefix: str) -> None:
    """Nothing named after ``prefix`` is left: namespaces, interfaces, hosts lines, mounts, directory."""
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert prefix not in namespaces and prefix not in links
    assert prefix not in netns.HOSTS.read_text()
    assert prefix not in Path("/proc/mounts").read_text()
    assert not (netns.BASE / prefix).exists()
