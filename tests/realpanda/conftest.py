"""The real-server tier: hpcpilot against a real panda-server (1.0.4 and 0.8.1) with PostgreSQL on loopback.

The server is the PyPI release, unmodified, built and started by the kit in ../shared/realpanda (beside the
project in the team's checkouts and in CI, not in a user's fresh clone).  Tests assert on what the server
stored -- its database (job states after its own Adder, every range's status in ``jedi_events``, the
zips in ``filestable4``) and, for "reported exactly once", the request bodies its own event log recorded.

Skipped, with the reason, only where the machine cannot run it: no kit beside the project, or neither root
nor password-less sudo for the kit's apt step.  Anywhere else a server that does not start is a failure.
A server the kit already runs (started earlier, by hand or by CI) is used and left running.

Isolation: every test submits its own jobs; before each test, jobs an earlier test left ``activated`` are
deleted from ``jobsactive4`` so no pilot takes another test's work (a test setup of the server's state,
not a change of the server).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
KIT = REPO.parent / "shared" / "realpanda"
VERSIONS = ("1.0.4", "0.8.1")
START_TIMEOUT = 900  # a first start installs apt packages and panda-server from PyPI


def why_not_here() -> str | None:
    """Why this machine cannot run the tier, or None."""
    if not (KIT / "start.sh").is_file():
        return f"no real-server kit at {KIT} (../shared/realpanda exists only beside the team's checkouts and CI)"
    if os.geteuid() != 0 and shutil.which("sudo") is None:
        return "the real-server kit installs PostgreSQL 15 with apt-get: needs root or sudo"
    if not Path("/usr/lib/postgresql/15").is_dir() and shutil.which("apt-get") is None:
        return "the real-server kit needs Debian's PostgreSQL 15 (no /usr/lib/postgresql/15 and no apt-get)"
    return None


@dataclass
class RealPanda:
    """A running real panda-server of one release, and the kit's commands for it."""

    version: str
    url: str
    queue: str
    env: dict[str, str] = field(repr=False)

    def _kit(self, script: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", str(KIT / script), *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout, check=False)

    def submit(self, *args: str) -> dict:
        """Put jobs in (the kit's submit.sh, the server's own client); its JSON answer."""
        done = self._kit("submit.sh", *args)
        assert done.returncode == 0, f"submit.sh {args}: {done.stderr[-2000:]}"
        return json.loads(done.stdout.strip().splitlines()[-1])

    def adder(self) -> str:
        """Run the server's Adder once (holding -> finished/failed)."""
        done = self._kit("adder.sh", "90", timeout=150)
        assert done.returncode == 0, f"adder.sh: {done.stdout[-1000:]} {done.stderr[-2000:]}"
        return done.stdout

    def sql(self, query: str) -> list[list[str]]:
        """Rows of one SQL statement on the server's database, as text."""
        done = self._kit("psql.sh", "-X", "-tA", "-F", "\t", "-c", query)
        assert done.returncode == 0, f"psql {query!r}: {done.stderr[-1000:]}"
        return [line.split("\t") for line in done.stdout.splitlines() if line]

    def job(self, panda_id: int) -> dict[str, str]:
        """A job's row (archived if the Adder ran, else active): status and error codes."""
        columns = "jobstatus, transexitcode, piloterrorcode, piloterrordiag"
        rows = self.sql(f"select {columns} from jobsarchived4 where pandaid={panda_id} union all "
                        f"select {columns} from jobsactive4 where pandaid={panda_id}")
        assert rows, f"job {panda_id} is not at the server"
        return dict(zip(("jobstatus", "transexitcode", "piloterrorcode", "piloterrordiag"), rows[0], strict=True))

    def range_statuses(self, panda_id: int) -> dict[int, int]:
        """job_processID -> status code (3 finished, 7 failed, ...) of a job's ranges in jedi_events."""
        rows = self.sql(f"select job_processid, status from jedi_events where pandaid={panda_id}")
        return {int(pid): int(status) for pid, status in rows}

    def kill(self, panda_id: int) -> None:
        """What an operator does: the server's own client kills the job (its commandtopilot: tobekilled)."""
        code = f"from pandaserver.userinterface import Client; print(Client.kill_jobs([{panda_id}]))"
        done = subprocess.run(["bash", "-c", f'. "{KIT}/env.sh" && "$VENV/bin/python" -c "{code}"'], env=self.env,
                              capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr[-2000:]

    def event_log_offset(self) -> int:
        path = self.event_log()
        return path.stat().st_size if path.is_file() else 0

    def event_log(self) -> Path:
        state = Path(self.env.get("REALPANDA_STATE") or
                     Path(os.environ.get("TMPDIR", "/tmp")) / f"hpcpilot-realpanda-{self.version}")
        return state / "panda_home" / "log" / "panda-api_event.log"

    def range_reports(self, since: int) -> list[tuple[str, str]]:
        """(eventRangeID, eventStatus) of every range in the v1 update_event_ranges bodies the server logged
        since ``since`` (its api_event log records each call's body at its start)."""
        text = self.event_log().read_bytes()[since:].decode(errors="replace")
        out: list[tuple[str, str]] = []
        for line in text.splitlines():
            if "update_event_ranges(" not in line or not line.rstrip().endswith("Start"):
                continue
            body = line[line.index("update_event_ranges(") + len("update_event_ranges("):line.rindex(")")]
            for item in json.loads(body):
                for event in item.get("eventRanges", [item]):
                    out.append((event["eventRangeID"], event["eventStatus"]))
        return out

    def forget_leftovers(self) -> None:
        self.sql("delete from jobsactive4 where jobstatus='activated'")


def _start(version: str) -> RealPanda:
    env = {**os.environ, "PANDA_SERVER_VERSION": version}
    done = subprocess.run(["bash", str(KIT / "start.sh")], env=env, capture_output=True, text=True,
                          timeout=START_TIMEOUT, check=False)
    if done.returncode != 0:
        pytest.fail(f"the real panda-server {version} did not start: {done.stderr[-3000:]}")
    url, queue = done.stdout.split()[-2:]
    return RealPanda(version, url, queue, env)


_servers: dict[str, RealPanda] = {}


@pytest.fixture(params=VERSIONS)
def real_panda(request: pytest.FixtureRequest) -> Iterator[RealPanda]:
    reason = why_not_here()
    if reason:
        pytest.skip(reason)
    version = request.param
    if version not in _servers:
        _servers[version] = _start(version)
    server = _servers[version]
    server.forget_leftovers()
    yield server
