"""Bad configuration through the real command line: one line on stderr, exit status 2, nothing started.

Each value issue 12 found accepted (or crashing) is given to a real ``python -m hpcpilot run`` process, from a
site file, the environment or the command line; ``check-config`` is run on every bad file too.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.pilotrun import make_access_point, make_job

NESTED = "x = " + "[" * 3000 + "]" * 3000 + "\n"

# (id, site file bytes or None, extra arguments, extra environment, texts the line must name besides the origin)
CASES = [
    ("report_interval nan", b"[monitor]\nreport_interval = nan\n", [], {}, ["'monitor.report_interval'", "nan"]),
    ("report_interval 0", b"[monitor]\nreport_interval = 0\n", [], {}, ["'monitor.report_interval'", "got 0"]),
    ("ranges_per_request 0", b"[eventservice]\nranges_per_request = 0\n", [], {},
     ["'eventservice.ranges_per_request'", "got 0"]),
    ("20-digit walltime", b"[walltime]\nlimit = 12345678901234567890\n", [], {},
     ["'walltime.limit'", "12345678901234567890"]),
    ("ftp server", b"[panda]\nserver = 'ftp://x'\n", [], {}, ["'panda.server'", "'ftp://x'"]),
    ("non-UTF-8 file", b"[site]\nname = 'caf\xe9'\n", [], {}, ["not UTF-8", "0xe9"]),
    ("3000 nested brackets", NESTED.encode(), [], {}, ["nested too deeply"]),
    ("--server not-a-url", None, ["--server", "not-a-url"], {}, ["command line", "'panda.server'", "'not-a-url'"]),
    ("--set report_interval=nan", None, ["--set", "monitor.report_interval=nan"], {},
     ["command line", "'monitor.report_interval'", "nan"]),
    ("environment walltime", None, [], {"HPCPILOT_WALLTIME_LIMIT": "99999999999999999999"},
     ["HPCPILOT_WALLTIME_LIMIT", "'walltime.limit'", "99999999999999999999"]),
]


def _hpcpilot(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HPCPILOT_")}
    return subprocess.run([sys.executable, "-m", "hpcpilot", *args], cwd=cwd, env={**clean, **(env or {})},
                          capture_output=True, text=True, timeout=60)


def _assert_one_line_refusal(proc: subprocess.CompletedProcess[str], names: list[str]) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("hpcpilot: "), proc.stderr
    for name in names:
        assert name in lines[0], (name, lines[0])


@pytest.mark.parametrize(("site", "args", "env", "names"), [case[1:] for case in CASES], ids=[c[0] for c in CASES])
def test_bad_configuration_is_one_line_and_exit_2_before_the_workdir_exists(
        tmp_path: Path, site: bytes | None, args: list[str], env: dict[str, str], names: list[str]) -> None:
    access_point = make_access_point(tmp_path / "ap", [make_job(1, "true")])
    argv = ["run", "--workdir", str(tmp_path / "work"), *args]
    if "--server" not in args:
        argv += ["--harvester-dir", str(access_point)]
    if site is not None:
        (tmp_path / "site.toml").write_bytes(site)
        argv += ["--site-config", str(tmp_path / "site.toml")]
        names = [str(tmp_path / "site.toml"), *names]
    _assert_one_line_refusal(_hpcpilot(argv, tmp_path, env), names)
    assert not (tmp_path / "work").exists()
    if site is not None:
        _assert_one_line_refusal(_hpcpilot(["check-config", str(tmp_path / "site.toml")], tmp_path), names)


def test_good_server_url_passes_the_check(tmp_path: Path) -> None:
    (tmp_path / "site.toml").write_text("[panda]\nserver = 'https://pandaserver.example:25443/server/panda'\n")
    proc = _hpcpilot(["check-config", str(tmp_path / "site.toml")], tmp_path)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr
