"""One runtime's command line for one payload, built as argv (pure: no file, process or environment is touched).

Every runtime gets the same things, in its own spelling (pilot-behaviour.md §16.4, from each runtime's manual):
the image, the payload's shell command run by ``/bin/sh -c`` inside, the working directory, the host directories
bound in (the job's workdir at the same path first, so every path the pilot wrote into the job's files and
environment means the same inside), the site's extra options (before the image, where each runtime reads them),
and, for podman only, the names of the variables the pilot set: apptainer, singularity, shifter and charliecloud
pass the calling environment through, podman passes nothing unless told (``-e NAME`` copies the caller's value, so
no value, a token or a proxy path say, ever appears on a command line).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

RUNTIMES = ("apptainer", "singularity", "podman", "podman-hpc", "shifter", "charliecloud")
SHELL = "/bin/sh"


@dataclass(frozen=True, slots=True)
class Launch:
    """What one containerized payload start is made of."""

    executable: str
    image: str
    command: str  # a shell command line, run as /bin/sh -c inside the container
    cwd: str
    binds: tuple[tuple[str, str], ...]  # (host path, container path)
    options: tuple[str, ...] = ()
    env_names: tuple[str, ...] = ()  # variables to pass explicitly where the host environment does not pass
    name: str = ""  # the container's name, where the runtime names containers (podman)


def _apptainer(launch: Launch) -> list[str]:
    """``apptainer exec --pwd DIR -B SRC[:DST],... [opts] IMG CMD``: the host environment passes."""
    binds = ",".join(host if host == ctr else f"{host}:{ctr}" for host, ctr in launch.binds)
    return [launch.executable, "exec", "--pwd", launch.cwd, *(["-B", binds] if binds else []), *launch.options,
            launch.image, SHELL, "-c", launch.command]


def _podman(launch: Launch) -> list[str]:
    """``podman run --rm --name N -w DIR -v HOST:CTR -e NAME [opts] IMG CMD`` (also podman-hpc's form)."""
    argv = [launch.executable, "run", "--rm"]
    if launch.name:
        argv += ["--name", launch.name]
    argv += ["-w", launch.cwd]
    for host, ctr in launch.binds:
        argv += ["-v", f"{host}:{ctr}"]
    for name in launch.env_names:
        argv += ["-e", name]
    return [*argv, *launch.options, launch.image, SHELL, "-c", launch.command]


def _shifter(launch: Launch) -> list[str]:
    """``shifter --image=IMG --volume=HOST:CTR [opts] CMD``: shifter has no working-directory option that every
    version knows, so the inner shell changes into it ($1) before running the command ($2)."""
    volumes = [f"--volume={host}:{ctr}" for host, ctr in launch.binds]
    return [launch.executable, f"--image={launch.image}", *volumes, *launch.options,
            SHELL, "-c", 'cd "$1" && exec /bin/sh -c "$2"', "hpcpilot-payload", launch.cwd, launch.command]


def _charliecloud(launch: Launch) -> list[str]:
    """``ch-run -b SRC:DST -c DIR [opts] IMG -- CMD``: a bind's DST must exist in the image (or under /tmp, which
    ch-run binds from the host) unless the image is writable; a missing one is ch-run's own failure (1308)."""
    binds = [arg for host, ctr in launch.binds for arg in ("-b", f"{host}:{ctr}")]
    return [launch.executable, *binds, "-c", launch.cwd, *launch.options, launch.image, "--",
            SHELL, "-c", launch.command]


BUILDERS: dict[str, Callable[[Launch], list[str]]] = {
    "apptainer": _apptainer,
    "singularity": _apptainer,
    "podman": _podman,
    "podman-hpc": _podman,
    "shifter": _shifter,
    "charliecloud": _charliecloud,
}

PROGRAMS = {"apptainer": "apptainer", "singularity": "singularity", "podman": "podman", "podman-hpc": "podman-hpc",
            "shifter": "shifter", "charliecloud": "ch-run"}
"""The program each runtime is, looked up on PATH when container.executable is ''."""


def runtime_argv(runtime: str, launch: Launch) -> list[str]:
    """The argv that runs ``launch`` under ``runtime`` (one of ``RUNTIMES``)."""
    return BUILDERS[runtime](launch)
