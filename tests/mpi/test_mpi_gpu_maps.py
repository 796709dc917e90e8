"""Under Harvester the node maps go into the job's report, as pilot3 merges them (issue 25): the real pilot
under ``mpiexec -n 2``, a real payload, the jobReport.json Harvester hands to PanDA (whose Adder reads
``worker_node`` and ``worker_node_gpus``).  No GPU here: the node is a CPU node, so no ``worker_node_gpus``
(tests/unit/test_harvester.py has a GPU node's, written as its inventory would write it)."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from tests.pilotrun import make_job, run_pilot

pytestmark = pytest.mark.mpi


def test_a_harvester_jobs_report_names_the_node_it_ran_on(tmp_path: Path) -> None:
    report = '{"exitCode": 0, "exitMsg": "OK", "files": {"output": []}}'
    run = run_pilot(tmp_path, [make_job(61, f"echo '{report}' > jobReport.json")], ranks=2,
                    settings=["site.name=GPUSITE", "site.queue=GPUSITE_Q"])
    assert run.returncode == 0, run.stderr[-3000:]
    written = json.loads((tmp_path / "access_point" / "jobReport.json").read_text())
    assert written["exitMsg"] == "OK"  # the payload's own report, the maps merged in
    node = written["worker_node"]
    assert node["site"] == "GPUSITE" and node["panda_queue"] == "GPUSITE_Q"
    assert node["host_name"] == (os.environ.get("PANDA_HOSTNAME") or socket.gethostname())
    assert node["n_logical_cpus"] == os.cpu_count() and node["cpu_model"]
    assert isinstance(node.get("clock_speed", 0.0), float)
    assert "worker_node_gpus" not in written
