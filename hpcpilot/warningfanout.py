"""The early warning to rank 0 on another node: one helper task per node of the job, through ``srun``.

The batch shell that gets ``--signal=B:<SIG>`` runs on one node of the allocation; rank 0 is usually
there too, but not always: the step may leave the batch node out (``srun --relative``, ``--exclude``, a
site whose batch script runs on a node of its own) or place task 0 elsewhere (``--distribution``).
Signalling the step instead would reach every process of it, payloads included.  So when
:func:`hpcpilot.slurm.forward_warning` finds no rank 0 on its own node, it asks every node of the job:
``srun --overlap`` starts ``python -m hpcpilot.slurm forward-warning SIG --here`` once per node beside the
running step, and each signals the pilot's rank 0 if it is on its node and says so on stdout
(``rank0 HOST PID``).  Only when no node has it does the launcher get the signal.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Mapping

FANOUT_TIMEOUT = 30.0
"""Seconds the helper step may take: it starts in well under a second on a healthy allocation; a hung
one must not keep the batch shell from its own fallback."""
FOUND = "rank0"
"""First word of a helper's stdout line naming a rank 0 it signalled."""


def fanout_argv(signal_name: str, environ: Mapping[str, str], python: str = sys.executable) -> list[str] | None:
    """The ``srun`` that runs the helper once on every node of the job; None outside a job of several nodes."""
    job_id = environ.get("SLURM_JOB_ID") or environ.get("SLURM_JOBID")
    nodes = environ.get("SLURM_JOB_NUM_NODES") or environ.get("SLURM_NNODES") or ""
    if not job_id or not nodes.isdigit() or int(nodes) < 2:
        return None
    # --overlap: beside the pilot's step, which holds every CPU; --mpi=none: the helper is no MPI program;
    # explicit counts, as the batch environment carries the job's SLURM_NTASKS(_PER_NODE)
    return ["srun", "--overlap", f"--jobid={job_id}", f"--nodes={nodes}", f"--ntasks={nodes}",
            "--ntasks-per-node=1", "--mpi=none", "--quiet", "--kill-on-bad-exit=0",
            python, "-m", "hpcpilot.slurm", "forward-warning", signal_name, "--here"]


def found_lines(pids: list[int]) -> str:
    """What a helper prints for the rank 0 pids it signalled on its node."""
    host = socket.gethostname().split(".")[0]
    return "".join(f"{FOUND} {host} {pid}\n" for pid in pids)


def parse_found(stdout: str) -> list[str]:
    """``HOST pid PID`` for every rank 0 the helpers signalled."""
    found = []
    for line in stdout.splitlines():
        words = line.split()
        if len(words) == 3 and words[0] == FOUND and words[2].isdigit():
            found.append(f"{words[1]} pid {words[2]}")
    return found


def signal_rank0_elsewhere(signal_name: str, environ: Mapping[str, str]) -> list[str]:
    """Run the helper on every node of the job; where it found and signalled rank 0 (``HOST pid PID``)."""
    from hpcpilot import slurm  # run_command is the seam tests replace; slurm imports this module lazily

    argv = fanout_argv(signal_name, environ)
    if argv is None:
        return []
    _rc, out, _err = slurm.run_command(argv, timeout=FANOUT_TIMEOUT)
    return parse_found(out)
