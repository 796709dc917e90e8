"""Launchers return argv lists; the shell shims exec the same prefixes (fake programs first on PATH)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from hpcpilot.config import load_config, replace
from hpcpilot.errors import ConfigError
from hpcpilot.launchers import (
    Launcher,
    LocalLauncher,
    MpiexecLauncher,
    MpirunLauncher,
    SrunLauncher,
    launch_argv,
    launcher_for,
)

REPO = Path(__file__).resolve().parents[2]
CMD = ["python3", "-m", "hpcpilot", "run", "--workdir", "w d"]
NO_ENV = {"HPCPILOT": ""}


@pytest.mark.parametrize("launcher, expected", [
    (SrunLauncher(), ["srun", "--mpi=pmi2", "--nodes=2", "--ntasks=8", "--ntasks-per-node=4", *CMD]),
    (SrunLauncher(mpi="pmix", extra=["--cpu-bind=cores"]),
     ["srun", "--mpi=pmix", "--nodes=2", "--ntasks=8", "--ntasks-per-node=4", "--cpu-bind=cores", *CMD]),
    (SrunLauncher(mpi=""), ["srun", "--nodes=2", "--ntasks=8", "--ntasks-per-node=4", *CMD]),
    (MpiexecLauncher(), ["mpiexec", "-n", "8", "-ppn", "4", *CMD]),
    (MpiexecLauncher(extra=["-genv", "A", "1"], executable="/v/bin/mpiexec"),
     ["/v/bin/mpiexec", "-n", "8", "-ppn", "4", "-genv", "A", "1", *CMD]),
    (MpirunLauncher(), ["mpirun", "-np", "8", "--map-by", "ppr:4:node", *CMD]),
])
def test_launcher_argv(launcher: Launcher, expected: list[str]) -> None:
    assert launcher(list(CMD), 2, 4) == expected


@pytest.mark.parametrize("launcher", [SrunLauncher(), MpiexecLauncher(), MpirunLauncher(), LocalLauncher()])
def test_command_is_kept_last_and_unchanged(launcher: Launcher) -> None:
    argv = launcher(list(CMD), 1, 1)
    assert argv[-len(CMD):] == CMD


@pytest.mark.parametrize("launcher", [SrunLauncher(), MpiexecLauncher(), MpirunLauncher(), LocalLauncher()])
@pytest.mark.parametrize("command, nodes, ranks", [([], 1, 1), (CMD, 0, 1), (CMD, 1, 0)])
def test_bad_arguments_are_refused(launcher: Launcher, command: list[str], nodes: int, ranks: int) -> None:
    with pytest.raises(ConfigError):
        launcher(list(command), nodes, ranks)


def test_local_launcher_is_one_rank() -> None:
    assert LocalLauncher()(list(CMD), 1, 1) == CMD
    with pytest.raises(ConfigError, match="one rank"):
        LocalLauncher()(list(CMD), 1, 4)


def test_repr_and_equality() -> None:
    assert repr(SrunLauncher(mpi="pmix")) == "SrunLauncher(mpi='pmix', extra=[], executable='srun')"
    assert SrunLauncher(mpi="pmix") == SrunLauncher(mpi="pmix")
    assert SrunLauncher(mpi="pmix") != SrunLauncher(mpi="pmi2")
    assert MpiexecLauncher() != MpirunLauncher()


@pytest.mark.parametrize("kind, cls", [("srun", SrunLauncher), ("mpiexec", MpiexecLauncher),
                                       ("mpirun", MpirunLauncher), ("local", LocalLauncher)])
def test_launcher_for_picks_by_kind(kind: str, cls: type) -> None:
    config = replace(load_config(environ=NO_ENV), "launcher", kind=kind, extra_options=["-x"])
    launcher = launcher_for(config)
    assert type(launcher) is cls
    assert launcher.extra == ["-x"]


def test_launch_argv_uses_site_shape() -> None:
    config = load_config(REPO / "site_configs" / "perlmutter.toml", environ=NO_ENV)
    argv = launch_argv(config, ["hpcpilot", "run"])
    assert argv[:5] == ["srun", "--mpi=cray_shasta", "--nodes=4", "--ntasks=64", "--ntasks-per-node=16"]
    assert argv[-2:] == ["hpcpilot", "run"]


# --- the shell shims ------------------------------------------------------------------------------

def _fake_bin(tmp_path: Path) -> Path:
    """Fake srun, mpiexec and python3 that print their argv, one word a line."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name in ("srun", "mpiexec", "python3"):
        prog = bindir / name
        prog.write_text(f'#!/bin/sh\nprintf "%s\\n" {name} "$@"\n')
        prog.chmod(0o755)
    return bindir


def _run_shim(tmp_path: Path, shim: str, env: dict[str, str]) -> list[str]:
    bindir = _fake_bin(tmp_path)
    full_env = {"PATH": f"{bindir}{os.pathsep}/usr/bin:/bin", **env}
    out = subprocess.run([str(REPO / "launchers" / shim), "--workdir", "w d"], env=full_env,
                         capture_output=True, text=True, check=True, timeout=30).stdout
    return out.splitlines()


@pytest.mark.parametrize("shim, env, expected", [
    ("srun.sh", {}, ["srun", "--mpi=pmi2", "python3", "-m", "hpcpilot", "run", "--workdir", "w d"]),
    ("srun.sh", {"HPCPILOT_MPI": "pmix"},
     ["srun", "--mpi=pmix", "python3", "-m", "hpcpilot", "run", "--workdir", "w d"]),
    ("mpiexec.sh", {}, ["mpiexec", "-n", "4", "python3", "-m", "hpcpilot", "run", "--workdir", "w d"]),
    ("mpiexec.sh", {"HPCPILOT_RANKS": "2"},
     ["mpiexec", "-n", "2", "python3", "-m", "hpcpilot", "run", "--workdir", "w d"]),
    ("single.sh", {}, ["python3", "-m", "hpcpilot", "run", "--workdir", "w d"]),
])
def test_shims_exec_the_right_prefix(tmp_path: Path, shim: str, env: dict[str, str],
                                     expected: list[str]) -> None:
    assert _run_shim(tmp_path, shim, env) == expected


@pytest.mark.parametrize("shim", ["srun.sh", "mpiexec.sh", "single.sh"])
def test_shims_are_thin(shim: str) -> None:
    path = REPO / "launchers" / shim
    assert len(path.read_text().splitlines()) <= 15
    assert os.access(path, os.X_OK)
