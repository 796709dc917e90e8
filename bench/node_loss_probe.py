"""The MPI program bench_node_loss.py runs on every rank: it logs, to DIR/probe.RANK, each signal it gets and
a heartbeat every 10 ms, and talks like the pilot does (rank 0 exchanges a message with every worker rank
every 100 ms, workers only with rank 0), so a runtime's reaction to a lost node can be read afterwards
from the files: which signals, when, and when each rank stopped beating.  MPI errors are made to return
(not abort), and rank 0 logs them and keeps talking to the ranks that answer."""

from __future__ import annotations

import signal
import sys
import time
from typing import Any

from mpi4py import MPI

CAUGHT = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGCONT)


def main(directory: str) -> None:
    comm = MPI.COMM_WORLD
    comm.Set_errhandler(MPI.ERRORS_RETURN)
    log = open(f"{directory}/probe.{comm.rank}", "a", buffering=1)  # noqa: SIM115 - held until the process dies

    def caught(signum: int, _frame: Any) -> None:
        log.write(f"{time.time():.3f} sig {signal.Signals(signum).name}\n")

    for sig in CAUGHT:
        signal.signal(sig, caught)
    log.write(f"{time.time():.3f} start {MPI.Get_processor_name()}\n")
    comm.Barrier()
    alive = set(range(1, comm.size))
    next_talk = 0.0
    while True:
        log.write(f"{time.time():.3f} beat\n")
        if time.monotonic() >= next_talk:
            next_talk = time.monotonic() + 0.1
            if comm.rank == 0:
                for peer in sorted(alive):
                    try:
                        comm.send(b"ping", dest=peer)
                        comm.recv(source=peer)
                    except MPI.Exception as exc:
                        log.write(f"{time.time():.3f} error rank {peer}: {exc.Get_error_string()[:80]}\n")
                        alive.discard(peer)
            elif comm.Iprobe(source=0):
                comm.recv(source=0)
                comm.send(b"pong", dest=0)
        time.sleep(0.01)


if __name__ == "__main__":
    main(sys.argv[1])
