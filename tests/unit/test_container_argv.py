"""Containers without running one: the job's image, each runtime's argv, the runtime's failures told apart.

Apptainer, Singularity and Shifter cannot run on the development and CI machines (Debian 12 packages none of them,
nor does PyPI): their command lines are built by the same code as podman's and charliecloud's and checked here as
argv against the forms in their manuals (pilot-behaviour.md §16.4).  Podman and charliecloud also run for real in
tests/containers.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from hpcpilot.config import ContainerConfig
from hpcpilot.container import ContainerPlan, Launch, job_image, runtime_argv, runtime_failure
from hpcpilot.container.plan import runtime_env
from hpcpilot.container.start import pilot_set
from hpcpilot.errors import ErrorCode, JobDefinitionError, PilotError
from hpcpilot.payload import RANK_VAR, TOKEN_VAR
from hpcpilot.records import JobSpec
from tests.pilotrun import make_job

WORKDIR = "/scratch/jobs/PandaJob_7"
LAUNCH = Launch("/usr/bin/RT", "IMG", "athena.py --x 'a b'", WORKDIR,
                ((WORKDIR, WORKDIR), ("/cvmfs", "/cvmfs"), ("/data", "/in")), ("--opt", "v"),
                ("PILOT_EVENTRANGECHANNEL", "PandaID"), "hpcpilot-7-abc")
PAYLOAD = ["/bin/sh", "-c", "athena.py --x 'a b'"]


def _spec(**fields: object) -> JobSpec:
    job = make_job(7, "true")
    job.update(fields)
    return JobSpec.from_wire(job)


# ---- the image a job asks for ----------------------------------------------------------------------------


@pytest.mark.parametrize(("pars", "name", "image", "left"), [
    ("-c x --containerImage=docker://atlas/athena:24 --y", None, "docker://atlas/athena:24", "-c x --y"),
    ("-c x --containerImage /cvmfs/img.sif", "other", "/cvmfs/img.sif", "-c x"),
    ("--containerImage=/img -c x", None, "/img", " -c x"),
    ("-c x", "/cvmfs/unpacked/el9", "/cvmfs/unpacked/el9", "-c x"),
    ("-c x", "NULL", "", "-c x"),
    ("-c x--containerImage=/not-an-option", None, "", "-c x--containerImage=/not-an-option"),
    ("-c x --containerImage\n-c y", None, "", "-c x --containerImage\n-c y"),  # never the next step's word
])
def test_the_job_image_is_taken_out_of_jobpars_and_wins_over_container_name(pars: str, name: str | None,
                                                                            image: str, left: str) -> None:
    chosen = job_image(_spec(jobPars=pars, **({"container_name": name} if name is not None else {})))
    assert (chosen.image, chosen.job_pars.strip()) == (image, left.strip())


@pytest.mark.parametrize(("fields", "named"), [
    ({"container_name": "--privileged"}, "container_name"),
    ({"container_name": 7}, "container_name"),
    ({"jobPars": "-c x --containerImage=-v/:/host"}, "--containerImage"),
])
def test_an_image_that_could_be_read_as_an_option_fails_the_job(fields: dict[str, object], named: str) -> None:
    with pytest.raises(JobDefinitionError) as info:
        job_image(_spec(**fields))
    assert info.value.code == ErrorCode.CONVERSIONFAILURE and named in info.value.diag


def test_no_runtime_or_no_image_is_the_bare_node_with_the_job_unchanged() -> None:
    spec = _spec(jobPars="-c x --containerImage=/img")
    assert ContainerPlan.for_job(spec, ContainerConfig()) == (None, spec)
    plain = _spec()
    assert ContainerPlan.for_job(plain, ContainerConfig(runtime="charliecloud")) == (None, plain)
    plan, used = ContainerPlan.for_job(spec, ContainerConfig(runtime="charliecloud", image="/site-default"))
    assert plan is not None and plan.image == "/img" and used.job_pars.strip() == "-c x"
    plan, _ = ContainerPlan.for_job(plain, ContainerConfig(runtime="podman", image="localhost/el9:1",
                                                           binds=["/cvmfs"], options="--network none"))
    assert plan is not None and (plan.image, plan.binds, plan.options) == ("localhost/el9:1", ("/cvmfs",),
                                                                           ("--network", "none"))


# ---- each runtime's command line, as documented -----------------------------------------------------------


def test_apptainer_and_singularity_exec_with_pwd_and_one_comma_bind_list() -> None:
    # apptainer exec [opts] IMG CMD; -B SRC[:DST], comma list; the host environment passes (no --cleanenv)
    expected = ["/usr/bin/RT", "exec", "--pwd", WORKDIR, "-B", f"{WORKDIR},/cvmfs,/data:/in", "--opt", "v", "IMG",
                *PAYLOAD]
    assert runtime_argv("apptainer", LAUNCH) == expected
    assert runtime_argv("singularity", LAUNCH) == expected


def test_podman_and_podman_hpc_run_named_removed_with_each_variable_passed_by_name() -> None:
    # podman run --rm --name N IMG CMD; -v HOST:CTR; -e K copies the caller's value (no value on the command line)
    expected = ["/usr/bin/RT", "run", "--rm", "--name", "hpcpilot-7-abc", "-w", WORKDIR,
                "-v", f"{WORKDIR}:{WORKDIR}", "-v", "/cvmfs:/cvmfs", "-v", "/data:/in",
                "-e", "PILOT_EVENTRANGECHANNEL", "-e", "PandaID", "--opt", "v", "IMG", *PAYLOAD]
    assert runtime_argv("podman", LAUNCH) == expected
    assert runtime_argv("podman-hpc", LAUNCH) == expected


def test_shifter_takes_the_image_and_volumes_as_options_and_changes_directory_inside() -> None:
    # shifter --image=docker:REPO:TAG CMD; --volume=HOST:CTR; the calling environment is copied
    argv = runtime_argv("shifter", LAUNCH)
    assert argv[:5] == ["/usr/bin/RT", "--image=IMG", f"--volume={WORKDIR}:{WORKDIR}", "--volume=/cvmfs:/cvmfs",
                        "--volume=/data:/in"]
    assert argv[5:7] == ["--opt", "v"] and argv[-2:] == [WORKDIR, "athena.py --x 'a b'"]


def test_charliecloud_binds_changes_directory_and_separates_the_command() -> None:
    # ch-run [opts] IMG -- CMD; -b SRC[:DST]; -c DIR; the host environment passes
    assert runtime_argv("charliecloud", LAUNCH) == [
        "/usr/bin/RT", "-b", f"{WORKDIR}:{WORKDIR}", "-b", "/cvmfs:/cvmfs", "-b", "/data:/in", "-c", WORKDIR,
        "--opt", "v", "IMG", "--", *PAYLOAD]


def test_the_workdir_is_bound_once_before_the_site_binds_and_podman_gets_a_name() -> None:
    plan = ContainerPlan("podman", "IMG", 7, binds=("/cvmfs", "/data:/in", f"{WORKDIR}/sub"))
    launch = plan.launch("/usr/bin/podman", "true", Path(f"{WORKDIR}/rank1"), [Path(WORKDIR), Path(f"{WORKDIR}/rank1")],
                         ["B", "A", "B"])
    assert launch.binds == ((WORKDIR, WORKDIR), ("/cvmfs", "/cvmfs"), ("/data", "/in"),
                            (f"{WORKDIR}/sub", f"{WORKDIR}/sub"))
    assert launch.env_names == ("A", "B") and launch.name.startswith("hpcpilot-7-")
    assert ContainerPlan("charliecloud", "IMG", 7).launch("/x", "true", Path("/w"), [], []).name == ""


def test_podman_passes_what_the_pilot_set_and_the_tracking_variables_never_the_host_environment() -> None:
    env = {**os.environ, "PILOT_EVENTRANGECHANNEL": "/w/sock", "PandaID": "7", "X509_USER_PROXY": "/p"}
    names = pilot_set(env)
    assert {"PILOT_EVENTRANGECHANNEL", "PandaID", "X509_USER_PROXY", TOKEN_VAR, RANK_VAR} <= set(names)
    assert "PATH" not in names and "HOME" not in names


def test_podman_passes_a_gpu_binding_kept_from_slurm_though_the_host_has_the_same_value(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2")
    names = pilot_set({**os.environ, "CUDA_DEVICE_ORDER": "PCI_BUS_ID"})
    assert {"CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER"} <= set(names)


def test_charliecloud_gets_a_user_as_ch_run_refuses_to_start_without_one() -> None:
    plan = ContainerPlan("charliecloud", "/img", 7)
    assert runtime_env(plan, {"PATH": "/bin"})["USER"]
    assert runtime_env(plan, {"USER": "alice"})["USER"] == "alice"


def test_apptainer_keeps_its_image_copies_in_node_local_scratch_unless_the_site_says_where() -> None:
    plan = ContainerPlan("apptainer", "docker://atlas/athena:24", 7, cache_dir="/local/container-cache")
    assert runtime_env(plan, {})["APPTAINER_CACHEDIR"] == "/local/container-cache/apptainer"
    assert runtime_env(plan, {"APPTAINER_CACHEDIR": "/site"})["APPTAINER_CACHEDIR"] == "/site"
    singularity = ContainerPlan("singularity", "x", 7, cache_dir="/local/c")
    assert runtime_env(singularity, {})["SINGULARITY_CACHEDIR"] == "/local/c/singularity"
    assert "APPTAINER_CACHEDIR" not in runtime_env(ContainerPlan("apptainer", "x", 7), {})


# ---- the runtime or the image missing ---------------------------------------------------------------------


def test_a_missing_runtime_fails_1325_naming_what_was_looked_for(tmp_path: Path) -> None:
    with pytest.raises(PilotError) as info:
        ContainerPlan("apptainer", "/img", 7).ready({"PATH": str(tmp_path)})
    assert info.value.code == ErrorCode.SINGULARITYNOTINSTALLED and "no apptainer on PATH" in info.value.diag
    with pytest.raises(PilotError) as info:
        ContainerPlan("shifter", "x", 7, executable=str(tmp_path / "shifter")).ready({})
    assert info.value.code == ErrorCode.SINGULARITYNOTINSTALLED and str(tmp_path / "shifter") in info.value.diag


def test_an_image_path_not_on_disk_fails_1360(tmp_path: Path) -> None:
    program = tmp_path / "ch-run"
    program.write_text("#!/bin/sh\n")
    program.chmod(program.stat().st_mode | stat.S_IXUSR)
    with pytest.raises(PilotError) as info:
        ContainerPlan("charliecloud", str(tmp_path / "no-image"), 7).ready({"PATH": str(tmp_path)})
    assert info.value.code == ErrorCode.IMAGENOTFOUND and "no-image" in info.value.diag
    (tmp_path / "image").mkdir()
    assert ContainerPlan("charliecloud", str(tmp_path / "image"), 7).ready({"PATH": str(tmp_path)}) == str(program)


# ---- the runtime's own failure, told from the payload's exit ---------------------------------------------


@pytest.mark.parametrize(("runtime", "status", "stderr", "code"), [
    ("apptainer", 255, "FATAL:   could not open image /x.sif: failed to retrieve path", ErrorCode.IMAGENOTFOUND),
    ("apptainer", 255, "FATAL: container creation failed: Failed to mount image",
     ErrorCode.SINGULARITYIMAGEMOUNTFAILURE),
    ("singularity", 255, "FATAL: No more available loop devices", ErrorCode.SINGULARITYNOLOOPDEVICES),
    ("apptainer", 255, "FATAL: Failed to create user namespace: not allowed",
     ErrorCode.SINGULARITYFAILEDUSERNAMESPACE),
    ("apptainer", 255, "WARNING: Not mounting requested bind point\nFATAL: Not mounting requested bind point /x",
     ErrorCode.SINGULARITYBINDPOINTFAILURE),
    ("apptainer", 255, "FATAL: Operation not permitted", ErrorCode.SINGULARITYGENERALFAILURE),
    ("podman", 125, "Error: localhost/nope:1: image not known", ErrorCode.IMAGENOTFOUND),
    ("podman-hpc", 127, "Error: runc: exec: \"/bin/sh\": stat /bin/sh: no such file or directory",
     ErrorCode.SINGULARITYGENERALFAILURE),
    ("charliecloud", 1, "ch-run[12]: error: can't stat: /img: No such file or directory (ch_core.c:255 2)",
     ErrorCode.IMAGENOTFOUND),
    ("charliecloud", 1, "ch-run[12]: error: can't mkdir: /img/var: Read-only file system (ch_misc.c:409 30)",
     ErrorCode.SINGULARITYBINDPOINTFAILURE),
    ("shifter", 1, "FAILED to lookup image docker:nope:1", ErrorCode.IMAGENOTFOUND),
])
def test_a_runtime_failure_gets_its_code_and_a_one_line_diag(runtime: str, status: int, stderr: str,
                                                             code: ErrorCode) -> None:
    failure = runtime_failure(runtime, status, f"payload line\n{stderr}\n")
    assert failure is not None and failure.code == code, failure
    assert failure.diag.startswith(f"{runtime} failed (exit {status}): ") and "\n" not in failure.diag


@pytest.mark.parametrize(("runtime", "status", "stderr"), [
    ("apptainer", 1, "FATAL: could not open image"),  # the payload's exit 1, whatever it printed
    ("apptainer", 255, "athena failed"),  # the payload's own 255, no runtime line
    ("podman", 1, "Error: image not known"),
    ("charliecloud", 1, "error: can't stat: x"),  # not ch-run's prefix
    ("charliecloud", 0, "ch-run[1]: error: can't stat: x"),
])
def test_the_payload_s_own_exit_stays_the_payload_s(runtime: str, status: int, stderr: str) -> None:
    assert runtime_failure(runtime, status, stderr) is None


def test_the_failure_is_read_from_the_stderr_written_after_the_start(tmp_path: Path) -> None:
    stderr = tmp_path / "payload.stderr"
    stderr.write_text("ch-run[1]: error: can't stat: /old: No such file or directory\n")
    offset = stderr.stat().st_size
    with stderr.open("a") as handle:
        handle.write("ch-run[2]: error: can't mkdir: /img/x: Read-only file system\n")
    plan = ContainerPlan("charliecloud", "/img", 7)
    failure = plan.failure(1, stderr, offset)
    assert failure is not None and failure.code == ErrorCode.SINGULARITYBINDPOINTFAILURE
    assert plan.failure(1, tmp_path / "gone") is None


# ---- an image pulled once per node; the container's CPU from its cgroup -----------------------------------


def _fake_podman(tmp_path: Path) -> Path:
    """A podman whose store holds the image once pulled (a file), logging each call."""
    program = tmp_path / "podman"
    program.write_text(f"""#!/bin/sh
echo "$@" >> {tmp_path}/calls
case "$1 $2" in
  "image exists") [ "$3" = localhost/ok:1 ] && test -e {tmp_path}/store ;;
  "pull "*) [ "$2" = localhost/ok:1 ] && : > {tmp_path}/store \
            || {{ echo "Error: $2: manifest unknown" >&2; exit 125; }} ;;
esac
""")
    program.chmod(0o755)
    return program


def test_a_podman_image_is_pulled_once_per_node_not_per_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hpcpilot.container import plan as plan_module

    _fake_podman(tmp_path)
    env = {"PATH": str(tmp_path)}
    for panda_id in (1, 2):  # two jobs on this rank: the second one asks nobody
        ContainerPlan("podman", "localhost/ok:1", panda_id).ready(env)
    monkeypatch.setattr(plan_module, "_ready", set())  # another rank on the node: the store has it
    ContainerPlan("podman-hpc", "localhost/ok:1", 3, executable=str(tmp_path / "podman")).ready(env)
    calls = (tmp_path / "calls").read_text().splitlines()
    assert calls == ["image exists localhost/ok:1", "pull localhost/ok:1", "image exists localhost/ok:1"]
    with pytest.raises(PilotError) as info:
        ContainerPlan("podman", "localhost/missing:1", 4).ready(env)
    assert info.value.code == ErrorCode.IMAGENOTFOUND and "manifest unknown" in info.value.diag


@pytest.mark.parametrize(("version", "cgroup_line", "mount", "files", "seconds"), [
    (1, "4:cpu,cpuacct:/libpod_parent/libpod-1", "cgroup rw,cpu,cpuacct", {"cpuacct.usage": "2500000000\n"}, 2.5),
    (2, "0::/machine/libpod-1", "cgroup2 rw", {"cpu.stat": "usage_usec 1500000\nuser_usec 1000000\n"}, 1.5),
])
def test_the_cpu_of_a_process_s_cgroup_is_read_in_either_version(tmp_path: Path, version: int, cgroup_line: str,
                                                                 mount: str, files: dict[str, str],
                                                                 seconds: float) -> None:
    from hpcpilot.cgroups import cpu_usage_seconds

    (tmp_path / "proc" / "42").mkdir(parents=True)
    (tmp_path / "proc" / "42" / "cgroup").write_text(f"9:name=systemd:/x\n{cgroup_line}\n")
    point = tmp_path / "fs" / f"v{version}"
    group = point / cgroup_line.rsplit(":", 1)[1].lstrip("/")
    group.mkdir(parents=True)
    for name, text in files.items():
        (group / name).write_text(text)
    fstype, options = mount.split(" ", 1)
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(f"30 25 0:26 / {point} rw,nosuid - {fstype} cgroup {options}\n")
    assert cpu_usage_seconds(42, tmp_path / "proc", mountinfo) == seconds
    assert cpu_usage_seconds(43, tmp_path / "proc", mountinfo) is None
