"""`hpcpilot serve` with 6 jobs and `mpiexec -n 4 hpcpilot run --server`: every job finished in the
server's state, with its output report, memory figures and pilotTiming, on both APIs."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.panda.panda_helpers import release_for
from tests.pilotrun import BIN, LAPTOP, make_job, wait_for

pytestmark = pytest.mark.mpi


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.parametrize("api", ["v1", "legacy"])
def test_six_jobs_through_a_panda_server_on_four_ranks(tmp_path: Path, api: str) -> None:
    jobs = {str(700 + i): make_job(700 + i, f"sleep 0.3; echo {i} > o{i}.txt", [f"o{i}.txt"]) for i in range(6)}
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "hpcpilot", "serve", "--port", str(port), "--state",
                               str(tmp_path / "state.db"), "--jobs", str(tmp_path / "jobs.json"),
                               "--release", release_for(api)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: _listening(port), timeout=30)
        pilot = subprocess.run(
            [str(BIN / "mpiexec"), "-n", "4", sys.executable, "-m", "hpcpilot", "run", "--site-config", str(LAPTOP),
             "--server", f"http://127.0.0.1:{port}", "--queue", "TESTQ", "--workdir", str(tmp_path / "work"),
             "--set", f"panda.api={api}", "--set", f"stage.output_dir={tmp_path / 'out'}"],
            cwd=tmp_path, capture_output=True, text=True, timeout=180)
        assert pilot.returncode == 0, pilot.stderr[-3000:]
    finally:
        server.terminate()
        server.wait(timeout=30)
    dump = subprocess.run([sys.executable, "-m", "hpcpilot", "serve", "--dump", str(tmp_path / "state.db")],
                          capture_output=True, text=True, check=True)
    dumped = json.loads(dump.stdout)
    state = {job["PandaID"]: job for job in dumped["jobs"]}
    assert sorted(state) == [700 + i for i in range(6)]
    # the worker-node map: once per node (4 ranks, one node), with the fields the server upserts; none on legacy
    nodes = dumped["worker_nodes"]
    if api == "legacy":
        assert nodes == []
    else:
        assert [(n["host_name"], n["updates"]) for n in nodes] == [(socket.gethostname(), 1)], nodes
        assert nodes[0]["cpu_model"] and nodes[0]["n_logical_cpus"] >= 1 and nodes[0]["panda_queue"] == "TESTQ"
    for panda_id, job in state.items():
        assert job["status"] == "finished", job
        report = job["output_report"]
        assert set(report) == {f"o{panda_id - 700}.txt", f"log.{panda_id}.tgz"}
        assert all(entry["guid"] and entry["adler32"] and entry["fsize"] for entry in report.values())
        assert int(job["maxRSS"]) > 0  # legacy form-encoded updates arrive as strings
        assert len(job["pilotTiming"].split("|")) == 6
