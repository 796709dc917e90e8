"""How one job's payloads run in its container: the runtime is there, the image is there, each start wrapped.

A job runs in a container when the site's runtime is not ``none`` and the job names an image (or the site has a
default one).  Before the first start the runtime must be found (else SINGULARITYNOTINSTALLED 1325) and the image
must be there (else IMAGENOTFOUND 1360): a path image must exist on disk; a podman image is pulled when the node's
store lacks it, which happens once per node, as every later job (of any rank) finds it in the store.  What was
found ready is remembered for the rank's life, so the per-range commands of an event-service job check once.
"""

from __future__ import annotations

import dataclasses
import getpass
import logging
import os
import shlex
import shutil
import subprocess
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from hpcpilot.config import ContainerConfig
from hpcpilot.container.argv import PROGRAMS, Launch, runtime_argv
from hpcpilot.container.failures import RuntimeFailure, runtime_failure
from hpcpilot.container.image import job_image
from hpcpilot.errors import ErrorCode, PilotError
from hpcpilot.records import JobSpec

log = logging.getLogger(__name__)

PODMANS = ("podman", "podman-hpc")
PATH_IMAGES = ("apptainer", "singularity", "charliecloud")  # an absolute image is a file or directory on disk
PULL_TIMEOUT = 1800.0  # a first pull of a multi-GB image over a site's proxy
CHECK_TIMEOUT = 120.0
STDERR_TAIL = 65536
NAME_PREFIX = "hpcpilot"
_ready: set[tuple[str, str, str]] = set()
_ready_lock = threading.Lock()


@dataclass(frozen=True)
class ContainerPlan:
    """The runtime, image, binds and options of one job's containerized payloads."""

    runtime: str
    image: str
    panda_id: int
    binds: tuple[str, ...] = ()
    options: tuple[str, ...] = ()
    executable: str = ""
    cache_dir: str = ""  # node-local directory for the runtime's own copies of images ('' = the runtime's default)

    @classmethod
    def for_job(cls, spec: JobSpec, config: ContainerConfig,
                cache_dir: str = "") -> tuple[ContainerPlan | None, JobSpec]:
        """The job's plan (None: it runs on the bare node) and the spec its payload command is built from."""
        if config.runtime == "none":
            return None, spec
        chosen = job_image(spec)
        image = chosen.image or config.image
        if not image:
            return None, spec
        plan = cls(config.runtime, image, spec.panda_id, tuple(config.binds), tuple(shlex.split(config.options)),
                   config.executable, cache_dir)
        return plan, dataclasses.replace(spec, job_pars=chosen.job_pars)

    # ---- before the first start ------------------------------------------------------------

    def program(self, env: Mapping[str, str]) -> str:
        """The runtime's program, or SINGULARITYNOTINSTALLED naming what was looked for."""
        if self.executable:
            if os.access(self.executable, os.X_OK) and Path(self.executable).is_file():
                return self.executable
            raise PilotError(ErrorCode.SINGULARITYNOTINSTALLED,
                             f"{self.runtime} is not installed: {self.executable} is not an executable file")
        found = shutil.which(PROGRAMS[self.runtime], path=env.get("PATH", os.defpath))
        if found is None:
            raise PilotError(ErrorCode.SINGULARITYNOTINSTALLED,
                             f"{self.runtime} is not installed: no {PROGRAMS[self.runtime]} on PATH")
        return found

    def ready(self, env: Mapping[str, str]) -> str:
        """Check (once per rank and image) that the runtime and the image are there; the runtime's program."""
        program = self.program(env)
        key = (self.runtime, program, self.image)
        with _ready_lock:
            if key in _ready:
                return program
            if self.runtime in PODMANS:
                _podman_image(program, self.image, env)
            elif self.runtime in PATH_IMAGES and self.image.startswith("/") and not os.path.exists(self.image):
                raise PilotError(ErrorCode.IMAGENOTFOUND, f"image {self.image} not found on this node")
            _ready.add(key)
        return program

    # ---- each start ------------------------------------------------------------------------

    def launch(self, program: str, command: str, cwd: Path, mounts: list[Path], env_names: list[str]) -> Launch:
        """The runtime's view of one payload start: ``mounts`` bound at the same path (one inside another is
        already there), then the site's binds."""
        binds: dict[str, str] = {}
        for path in mounts:
            if not any(Path(path).is_relative_to(bound) for bound in binds):
                binds[os.fspath(path)] = os.fspath(path)
        for bind in self.binds:
            host, _, ctr = bind.partition(":")
            binds.setdefault(host, ctr or host)
        name = f"{NAME_PREFIX}-{self.panda_id}-{uuid.uuid4().hex[:12]}" if self.runtime in PODMANS else ""
        return Launch(program, self.image, command, os.fspath(cwd), tuple(binds.items()), self.options,
                      tuple(sorted(set(env_names))), name)

    def argv(self, launch: Launch) -> list[str]:
        return runtime_argv(self.runtime, launch)

    def failure(self, exit_code: int, stderr_path: Path, offset: int = 0) -> RuntimeFailure | None:
        """The runtime's own failure behind ``exit_code`` (from stderr written after ``offset``), or None."""
        try:
            with open(stderr_path, "rb") as handle:
                handle.seek(max(offset, _size(handle.fileno()) - STDERR_TAIL))
                text = handle.read(STDERR_TAIL).decode(errors="replace")
        except OSError:
            text = ""
        return runtime_failure(self.runtime, exit_code, text)


def _size(fd: int) -> int:
    return os.fstat(fd).st_size


CACHE_VARS = {"apptainer": "APPTAINER_CACHEDIR", "singularity": "SINGULARITY_CACHEDIR"}
"""Where apptainer/singularity keep the SIF they build from a ``docker://`` or ``oras://`` image: by default in
$HOME, which on an HPC machine is shared, so every node would build into (and lock) the same one."""


def runtime_env(plan: ContainerPlan, env: Mapping[str, str]) -> dict[str, str]:
    """The environment the runtime itself needs: ch-run refuses to start without ``$USER``; apptainer and
    singularity keep their image copies in node-local scratch (once per node), unless the site set a place."""
    out = dict(env)
    if plan.runtime == "charliecloud" and not out.get("USER"):
        out["USER"] = getpass.getuser()
    variable = CACHE_VARS.get(plan.runtime)
    if variable and plan.cache_dir and not out.get(variable):
        out[variable] = os.path.join(plan.cache_dir, plan.runtime)
    return out


def _podman_image(program: str, image: str, env: Mapping[str, str]) -> None:
    """The image in the node's store: there already, or pulled now (podman-hpc also squashes it for the node)."""
    if _run([program, "image", "exists", image], env, CHECK_TIMEOUT).returncode == 0:
        return
    log.info("image %s not in the node's store: pulling it", image)
    pulled = _run([program, "pull", image], env, PULL_TIMEOUT)
    if pulled.returncode != 0:
        lines = pulled.stderr.decode(errors="replace").strip().splitlines() or ["no message"]
        raise PilotError(ErrorCode.IMAGENOTFOUND, f"image {image} not found: {' '.join(lines[-1].split())[:250]}")


def _run(argv: list[str], env: Mapping[str, str], timeout: float) -> subprocess.CompletedProcess[bytes]:
    """A runtime command of the pilot's own; a hang or a start failure reads as a failure of that command."""
    try:
        return subprocess.run(argv, env=dict(env), stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return subprocess.CompletedProcess(argv, 1, b"", str(exc).encode())
