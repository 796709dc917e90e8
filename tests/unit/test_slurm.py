"""hpcpilot.slurm: sbatch rendering, generated files, the allocation's end, the srun/MPI consistency check."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import pytest

from hpcpilot import slurm, warningfanout
from hpcpilot.config import documented_keys, load_config, replace
from hpcpilot.errors import ConfigError
from hpcpilot.slurm import (
    SlurmStep,
    allocation_end_time,
    detect_mpi_vendor,
    launch_mismatch,
    parse_end_time,
    parse_time_left,
    render_sbatch,
    run_command,
)

REPO = Path(__file__).resolve().parents[2]
SITE_FILES = sorted((REPO / "site_configs").glob("*.toml"))
NO_ENV = {"HPCPILOT": ""}
MPICH = "MPICH Version:      5.0.2\nMPICH Release date: ...\nMPICH Device:       ch4:ucx ofi\n"
OPENMPI = "Open MPI v5.0.3, package: Open MPI conda@host Distribution, ident: 5.0.3, repo rev: v5.0.3"
CRAY = "MPI VERSION    : CRAY MPICH version 8.1.28.29 (ANL base 3.4a2)\nMPI BUILD INFO : ..."


def _config(**launcher: object):
    return replace(load_config(environ=NO_ENV), "launcher", **launcher)


# --- run_command ----------------------------------------------------------------------------------

def test_run_command_returns_status_and_output() -> None:
    assert run_command(["sh", "-c", "echo out; echo err >&2; exit 3"]) == (3, "out\n", "err\n")


def test_run_command_missing_program_and_timeout() -> None:
    rc, out, err = run_command(["no-such-program-hpcpilot"])
    assert (rc, out) == (127, "") and "not found" in err
    rc, _, err = run_command(["sleep", "5"], timeout=0.2)
    assert rc == 124 and "timed out" in err


# --- rendering ------------------------------------------------------------------------------------

def test_render_minimal() -> None:
    text = render_sbatch(_config(kind="srun", nodes=2, ranks_per_node=4, time_minutes=90,
                                 warning_seconds=120), ["--workdir", "w d"], job_name="t1")
    assert text.startswith("#!/bin/bash\n")
    for line in ("#SBATCH --job-name=t1", "#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4",
                 "#SBATCH --time=01:30:00", "#SBATCH --output=t1-%j.out", "#SBATCH --signal=B:USR1@120",
                 "trap on_warning USR1", "python3 -m hpcpilot.slurm forward-warning USR1 \"$step_pid\"",
                 "srun --mpi=pmi2 --nodes=2 --ntasks=8 --ntasks-per-node=4 python3 -m hpcpilot run "
                 "--workdir 'w d' &"):
        assert line in text.splitlines() or line in text, line
    for option in ("--partition", "--account", "--qos", "--constraint"):
        assert option not in text
    assert "$$" not in text  # every template $$ became $


def test_render_optional_directives_and_signal() -> None:
    text = render_sbatch(_config(kind="srun", partition="p", account="a", qos="q", constraint="c",
                                 warning_signal="SIGUSR2", warning_seconds=60, time_minutes=1500), [])
    lines = text.splitlines()
    for line in ("#SBATCH --partition=p", "#SBATCH --account=a", "#SBATCH --qos=q",
                 "#SBATCH --constraint=c", "#SBATCH --signal=B:USR2@60", "#SBATCH --time=1-01:00:00",
                 "trap on_warning USR2"):
        assert line in lines, line


def test_render_sbatch_directives_come_before_any_command() -> None:
    text = render_sbatch(_config(kind="srun", partition="p"), [])
    lines = text.splitlines()
    first_command = next(i for i, line in enumerate(lines) if line.strip() and not line.startswith("#"))
    assert all(i < first_command for i, line in enumerate(lines) if line.startswith("#SBATCH"))


def test_render_without_warning() -> None:
    text = render_sbatch(_config(kind="srun", warning_seconds=0), [])
    assert "--signal" not in text.replace("`--signal", "")
    assert "#SBATCH --signal" not in text


@pytest.mark.parametrize("changes, message", [
    ({"time_minutes": 0}, "time_minutes"),
    ({"warning_signal": "NOPE"}, "unknown signal"),
    ({"warning_seconds": 70000}, "at most"),
    ({"kind": "local", "ranks_per_node": 4}, "one rank"),
])
def test_render_refuses_bad_values(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        render_sbatch(_config(**changes), [])


def test_render_refuses_bad_job_name() -> None:
    with pytest.raises(ConfigError, match="job name"):
        render_sbatch(_config(), [], job_name="a b")


def test_template_missing_key_fails(tmp_path: Path) -> None:
    template = tmp_path / "t.tmpl"
    template.write_text("#!/bin/bash\n#SBATCH --nodes=${nodes}\n${no_such_key}\n")
    with pytest.raises(KeyError):
        render_sbatch(_config(), [], template=template)


def test_rendered_script_is_valid_bash(tmp_path: Path) -> None:
    for path in SITE_FILES:
        script = tmp_path / f"{path.stem}.sbatch"
        script.write_text(render_sbatch(load_config(path, environ=NO_ENV), ["--workdir", "w"]))
        subprocess.run(["bash", "-n", str(script)], check=True, timeout=30)


def test_examples_are_up_to_date() -> None:
    expected = slurm.render_examples()
    assert sorted(p.name for p in expected) == sorted(f"{p.stem}.sbatch" for p in SITE_FILES)
    on_disk = sorted(p.name for p in (REPO / "slurm" / "examples").glob("*.sbatch"))
    assert on_disk == sorted(p.name for p in expected), "run: python -m hpcpilot.slurm regenerate"
    for path, text in expected.items():
        assert path.read_text() == text, f"{path.name} is stale: run python -m hpcpilot.slurm regenerate"


def test_site_config_readme_is_up_to_date() -> None:
    readme = (REPO / "site_configs" / "README.md").read_text()
    assert readme == slurm.site_config_reference(), "stale: run python -m hpcpilot.slurm regenerate"
    for section, key, _default, doc in documented_keys():
        assert doc, f"{section}.{key} has no documentation"
        assert f"| `{key}` |" in readme


# --- site configs ---------------------------------------------------------------------------------

def test_the_four_sites_are_shipped() -> None:
    assert {p.stem for p in SITE_FILES} >= {"laptop", "generic-slurm", "perlmutter", "frontier"}


@pytest.mark.parametrize("path", SITE_FILES, ids=lambda p: p.stem)
def test_site_config_loads_and_validates(path: Path) -> None:
    config = load_config(path, environ=NO_ENV)
    assert config.site.name == path.stem
    assert config.launcher.nodes >= 1 and config.launcher.ranks_per_node >= 1
    assert config.launcher.cores_per_node >= config.launcher.ranks_per_node
    assert 0 < config.launcher.warning_seconds < config.launcher.time_minutes * 60
    render_sbatch(config, [])


@pytest.mark.parametrize("path", SITE_FILES, ids=lambda p: p.stem)
def test_every_key_in_a_site_file_is_commented(path: Path) -> None:
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if "=" in line and not line.lstrip().startswith("#"):
            assert "#" in line.split("=", 1)[1], f"{path.name}:{number}: key without a comment"


def test_shipped_shapes() -> None:
    def load(name: str):
        return load_config(REPO / "site_configs" / f"{name}.toml", environ=NO_ENV)
    perlmutter, frontier, laptop = load("perlmutter"), load("frontier"), load("laptop")
    assert perlmutter.launcher.cores_per_node == 128 and perlmutter.launcher.kind == "srun"
    assert frontier.launcher.cores_per_node == 56 and frontier.launcher.mpi == "cray_shasta"
    assert laptop.monitor.report_interval == 1 and laptop.monitor.kill_grace == 2
    assert laptop.walltime.margin <= 10 and laptop.monitor.free_space_start_mb <= 100


# --- the allocation's end -------------------------------------------------------------------------

def test_parse_end_time_is_local_time() -> None:
    assert parse_end_time("2026-01-02T03:04:05") == time.mktime((2026, 1, 2, 3, 4, 5, 0, 0, -1))
    for junk in ("N/A", "Unknown", "", "2026-01-02 03:04:05"):
        assert parse_end_time(junk) is None


@pytest.mark.parametrize("text, seconds", [("1:05", 65), ("10:00", 600), ("2:03:04", 7384),
                                           ("1-00:00:10", 86410), ("UNLIMITED", None), ("INVALID", None)])
def test_parse_time_left(text: str, seconds: float | None) -> None:
    assert parse_time_left(text) == seconds


def test_end_time_from_environment_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(slurm, "run_command", lambda *a, **k: pytest.fail("squeue must not run"))
    assert allocation_end_time({"SLURM_JOB_END_TIME": "1800000000", "SLURM_JOB_ID": "7"}, now=0) == 1.8e9


def test_end_time_outside_slurm_is_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(slurm, "run_command", lambda *a, **k: pytest.fail("squeue must not run"))
    assert allocation_end_time({}, now=0) is None


def _fake_squeue(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str) -> Path:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "argv"
    prog = bindir / "squeue"
    prog.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {log}\n{body}\n')
    prog.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:/usr/bin:/bin")
    return log


def test_end_time_from_fake_squeue(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = _fake_squeue(tmp_path, monkeypatch, "echo '2026-03-04T05:06:07|1:00'")
    end = allocation_end_time({"SLURM_JOB_ID": "42"}, now=0)
    assert end == time.mktime((2026, 3, 4, 5, 6, 7, 0, 0, -1))
    assert log.read_text().split() == ["-h", "-j", "42", "-o", "%e|%L"]


def test_end_time_from_time_left_when_end_unknown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_squeue(tmp_path, monkeypatch, "echo 'Unknown|1:30'")
    assert allocation_end_time({"SLURM_JOB_ID": "42"}, now=1000.0) == 1090.0


@pytest.mark.parametrize("body", ["echo 'slurm_load_jobs error: Invalid job id' >&2; exit 1",
                                  "exit 0", "echo 'N/A|UNLIMITED'", "echo garbage"])
def test_end_time_failures_are_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str) -> None:
    _fake_squeue(tmp_path, monkeypatch, body)
    assert allocation_end_time({"SLURM_JOB_ID": "42", "SLURM_JOB_END_TIME": "junk"}, now=0) is None


def test_end_time_without_squeue(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert allocation_end_time({"SLURM_JOB_ID": "42"}, now=0) is None


def test_end_time_survives_a_raising_seam(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*_a: object, **_k: object) -> tuple[int, str, str]:
        raise RuntimeError("boom")
    monkeypatch.setattr(slurm, "run_command", boom)
    assert allocation_end_time({"SLURM_JOB_ID": "42"}, now=0) is None


# --- the step -------------------------------------------------------------------------------------

SRUN_ENV = {"SLURM_JOB_ID": "9", "SLURM_STEP_ID": "0", "SLURM_PROCID": "2", "SLURM_NTASKS": "4",
            "SLURM_STEP_NUM_TASKS": "4", "SLURM_LOCALID": "2", "SLURM_NODELIST": "vm",
            "SLURM_STEP_NODELIST": "vm"}


def test_step_from_environ() -> None:
    assert SlurmStep.from_environ(SRUN_ENV) == SlurmStep("9", "0", 2, 4, 2, "vm")
    batch_shell = {"SLURM_JOB_ID": "9", "SLURM_NTASKS": "4", "SLURM_NODELIST": "vm"}
    assert SlurmStep.from_environ(batch_shell) is None
    assert SlurmStep.from_environ({}) is None
    assert SlurmStep.from_environ({**SRUN_ENV, "SLURM_PROCID": "x"}) is None


def test_step_task_count_prefers_step_variable() -> None:
    env = {**SRUN_ENV, "SLURM_NTASKS": "16", "SLURM_STEP_NUM_TASKS": "4"}
    assert SlurmStep.from_environ(env).ntasks == 4  # type: ignore[union-attr]
    env.pop("SLURM_STEP_NUM_TASKS")
    assert SlurmStep.from_environ(env).ntasks == 16  # type: ignore[union-attr]


# --- srun and MPI agree? --------------------------------------------------------------------------

@pytest.mark.parametrize("text, vendor", [(MPICH, "mpich"), (OPENMPI, "openmpi"), (CRAY, "cray-mpich"),
                                          ("Intel(R) MPI Library 2021.10 for Linux", "mpich"),
                                          ("MVAPICH2 Version : 2.3.7", "mpich"), ("mpich", "mpich"),
                                          ("something else", "unknown")])
def test_detect_mpi_vendor(text: str, vendor: str) -> None:
    assert detect_mpi_vendor(text) == vendor


def test_consistent_srun_step_is_accepted() -> None:
    assert launch_mismatch(4, 2, SRUN_ENV, MPICH) is None


def test_outside_srun_nothing_is_checked() -> None:
    assert launch_mismatch(1, 0, {}, MPICH) is None
    batch_shell = {"SLURM_JOB_ID": "9", "SLURM_NTASKS": "4", "SLURM_PROCID": "0"}
    assert launch_mismatch(2, 0, batch_shell, MPICH) is None


def test_singletons_under_srun_are_refused_with_the_mpich_fix() -> None:
    message = launch_mismatch(1, 0, SRUN_ENV, MPICH)
    assert message is not None and "\n" not in message
    assert "--mpi=pmi2" in message and "4 tasks" in message and "world of 1" in message


def test_openmpi_fix_and_cray_fix() -> None:
    assert "--mpi=pmix" in (launch_mismatch(1, 0, SRUN_ENV, OPENMPI) or "")
    assert "--mpi=cray_shasta" in (launch_mismatch(1, 0, SRUN_ENV, CRAY) or "")
    unknown = launch_mismatch(1, 0, SRUN_ENV, "?") or ""
    assert "--mpi=pmi2" in unknown and "--mpi=pmix" in unknown


def test_rank_mismatch_is_refused() -> None:
    assert launch_mismatch(4, 0, SRUN_ENV, MPICH) is not None  # SLURM_PROCID is 2


@pytest.mark.parametrize("marker", ["MPI_LOCALRANKID", "HYDI_CONTROL_FD", "OMPI_COMM_WORLD_SIZE"])
def test_mpiexec_inside_an_allocation_is_legitimate(marker: str) -> None:
    # Hydra starts its proxies with srun (one task per node); its 3 ranks see the proxy's SLURM_* values
    proxy_env = {**SRUN_ENV, "SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "1", "SLURM_STEP_ID": "1",
                 "PMI_RANK": "2", "PMI_SIZE": "3", marker: "0"}
    assert launch_mismatch(3, 2, proxy_env, MPICH) is None


def test_slurm_pmi_variables_do_not_count_as_mpiexec() -> None:
    # srun --mpi=pmi2 sets PMI_RANK/PMI_SIZE/PMI_FD itself: those must not switch the check off
    env = {**SRUN_ENV, "PMI_RANK": "2", "PMI_SIZE": "4", "PMI_FD": "11", "PMI_JOBID": "9.0"}
    assert launch_mismatch(1, 0, env, MPICH) is not None


# --- forwarding the warning to rank 0 ------------------------------------------------------------

def _fake_proc(root: Path, pid: int, argv: list[str], env: dict[str, str]) -> None:
    entry = root / str(pid)
    entry.mkdir(parents=True)
    (entry / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    (entry / "environ").write_bytes(b"".join(f"{k}={v}".encode() + b"\0" for k, v in env.items()))


PILOT = ["/v/bin/python3", "-m", "hpcpilot", "run", "--workdir", "w"]


@pytest.fixture
def fake_proc(tmp_path: Path) -> Path:
    root = tmp_path / "proc"
    job = {"SLURM_JOB_ID": "12", "SLURM_STEP_ID": "0"}
    _fake_proc(root, 100, ["srun", "--mpi=pmi2", *PILOT], {"SLURM_JOB_ID": "12"})          # the step's srun
    _fake_proc(root, 101, PILOT, {**job, "SLURM_PROCID": "0", "PMI_RANK": "0"})            # rank 0
    _fake_proc(root, 102, PILOT, {**job, "SLURM_PROCID": "1", "PMI_RANK": "1"})            # rank 1
    _fake_proc(root, 103, ["/bin/sh", "-c", "sleep 600"], {**job, "SLURM_PROCID": "0"})    # a payload
    _fake_proc(root, 104, PILOT, {"SLURM_JOB_ID": "99", "SLURM_PROCID": "0"})              # another job
    _fake_proc(root, 105, ["/v/bin/hpcpilot", "run"], {**job, "SLURM_PROCID": "0", "PMI_RANK": "2"})  # Hydra
    _fake_proc(root, 106, ["srun", "--mpi=pmi2", *PILOT], {**job, "SLURM_PROCID": "0"})   # srun's helper
    (root / "self").mkdir()
    return root


def test_rank0_is_found_by_command_line_and_environment(fake_proc: Path) -> None:
    assert slurm.pilot_rank0_pids("12", exclude=[100], proc=fake_proc) == [101]
    assert slurm.pilot_rank0_pids("99", proc=fake_proc) == [104]
    assert slurm.pilot_rank0_pids("13", proc=fake_proc) == []


def test_forward_warning_signals_rank0_only(fake_proc: Path) -> None:
    sent: list[tuple[int, int]] = []
    record = lambda p, s: sent.append((p, s))  # noqa: E731
    assert slurm.forward_warning(10, 100, "12", proc=fake_proc, kill=record) == ["pid 101"]
    assert sent == [(101, 10)]


def test_forward_warning_falls_back_to_the_step(fake_proc: Path) -> None:
    sent: list[tuple[int, int]] = []
    record = lambda p, s: sent.append((p, s))  # noqa: E731
    assert slurm.forward_warning(10, 100, "13", proc=fake_proc, kill=record) == ["pid 100"]
    assert sent == [(100, 10)]


def test_forward_warning_survives_a_vanished_process(fake_proc: Path) -> None:
    def gone(_pid: int, _sig: int) -> None:
        raise ProcessLookupError
    assert slurm.forward_warning(10, 100, "12", proc=fake_proc, kill=gone) == ["pid 101"]


def test_forward_warning_asks_the_other_nodes_before_the_step(fake_proc: Path) -> None:
    sent: list[tuple[int, int]] = []
    record = lambda p, s: sent.append((p, s))  # noqa: E731
    # rank 0 of job 13 is on no process here: the other nodes are asked, and the step is left alone
    assert slurm.forward_warning(10, 100, "13", proc=fake_proc, kill=record,
                                 elsewhere=lambda: ["n2 pid 7"]) == ["n2 pid 7"]
    assert sent == []
    # nobody has it: the step after all
    assert slurm.forward_warning(10, 100, "13", proc=fake_proc, kill=record, elsewhere=lambda: []) == ["pid 100"]
    assert sent == [(100, 10)]
    # found here: the other nodes are not asked
    asked: list[bool] = []
    slurm.forward_warning(10, 100, "12", proc=fake_proc, kill=record, elsewhere=lambda: asked.append(True) or [])
    assert asked == []


def test_the_helper_signals_rank0_on_its_own_node_only(fake_proc: Path) -> None:
    sent: list[tuple[int, int]] = []
    assert slurm.signal_rank0_here(10, "12", proc=fake_proc, kill=lambda p, s: sent.append((p, s))) == [101]
    assert slurm.signal_rank0_here(10, "13", proc=fake_proc, kill=lambda p, s: sent.append((p, s))) == []
    assert sent == [(101, 10)]


def test_fanout_runs_one_helper_per_node_beside_the_step() -> None:
    env = {"SLURM_JOB_ID": "42", "SLURM_JOB_NUM_NODES": "3", "SLURM_NTASKS_PER_NODE": "2"}
    argv = warningfanout.fanout_argv("USR1", env, python="/v/bin/python3")
    assert argv is not None
    assert argv[:7] == ["srun", "--overlap", "--jobid=42", "--nodes=3", "--ntasks=3", "--ntasks-per-node=1",
                        "--mpi=none"]
    assert argv[-6:] == ["/v/bin/python3", "-m", "hpcpilot.slurm", "forward-warning", "USR1", "--here"]
    assert warningfanout.fanout_argv("USR1", {**env, "SLURM_JOB_NUM_NODES": "1"}) is None  # only this node
    assert warningfanout.fanout_argv("USR1", {"SLURM_JOB_NUM_NODES": "3"}) is None  # not in a job


def test_fanout_reads_what_the_helpers_found(monkeypatch: pytest.MonkeyPatch) -> None:
    out = "rank0 n2 4242\nsrun: some noise\nrank0 n3 x\n"
    calls: list[list[str]] = []
    monkeypatch.setattr(slurm, "run_command", lambda argv, timeout: calls.append(list(argv)) or (0, out, ""))
    env = {"SLURM_JOB_ID": "42", "SLURM_NNODES": "2"}
    assert warningfanout.signal_rank0_elsewhere("USR1", env) == ["n2 pid 4242"]
    assert calls and calls[0][0] == "srun"
    # a helper step that fails or times out finds nothing (the caller falls back to the step)
    monkeypatch.setattr(slurm, "run_command", lambda argv, timeout: (124, "", "timed out"))
    assert warningfanout.signal_rank0_elsewhere("USR1", env) == []
    assert warningfanout.parse_found(warningfanout.found_lines([7, 8])) == [
        f"{socket.gethostname().split('.')[0]} pid 7", f"{socket.gethostname().split('.')[0]} pid 8"]


def test_module_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert slurm.main(["nonsense"]) == 2
    assert slurm.main(["forward-warning", "NOPE", "1"]) == 2
    assert "unknown signal" in capsys.readouterr().err


# --- the cluster script ---------------------------------------------------------------------------

def test_cluster_script_is_valid_bash() -> None:
    subprocess.run(["bash", "-n", str(REPO / "slurm" / "cluster.sh")], check=True, timeout=30)


def test_cluster_script_refuses_unknown_action() -> None:
    done = subprocess.run([str(REPO / "slurm" / "cluster.sh"), "explode"], capture_output=True, text=True,
                          timeout=30, check=False)
    assert done.returncode == 2 and "usage" in done.stderr


def test_cluster_status_of_a_fresh_dir_is_not_running(tmp_path: Path) -> None:
    done = subprocess.run([str(REPO / "slurm" / "cluster.sh"), "status", "--dir", str(tmp_path / "c")],
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 1 and "not running" in done.stdout
    done = subprocess.run([str(REPO / "slurm" / "cluster.sh"), "stop", "--dir", str(tmp_path / "c")],
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0 and "not running" in done.stdout


@pytest.mark.parametrize(("options", "problem"), [
    (["--dir", "/var/tmp/hpcpilot-x"], "--nodes needs --agent"),
    (["--dir", "/tmp/hpcpilot-x", "--agent", "ssh"], "not under /tmp"),
    (["--dir", "/var/tmp/hpcpilot-x", "--agent", "ssh", "--port", "68x"], "not a port number"),
    (["--dir", "/var/tmp/hpcpilot-x", "--agent", "ssh", "--slurmd-timeout", "soon"], "not a number of seconds"),
])
def test_cluster_script_refuses_bad_node_options_in_one_line(options: list[str], problem: str) -> None:
    done = subprocess.run([str(REPO / "slurm" / "cluster.sh"), "start", "--nodes", "n1,n2", *options],
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 1 and problem in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not Path("/var/tmp/hpcpilot-x").exists()

