"""Start a payload, in its job's container when it has one, through the one ``start_payload``.

The runtime is started in the payload's place: it joins the payload cgroup, carries the tracking token and the
rank's identity in its environment and is armed to die with the rank, so for runtimes whose payload stays a
descendant of the caller (apptainer, singularity, shifter, charliecloud: pilot-behaviour.md §16.4) monitoring and
killing are exactly those of a bare payload.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from hpcpilot.cgroups import PayloadCgroup
from hpcpilot.container.plan import ContainerPlan, runtime_env
from hpcpilot.container.podman import PodmanContainer
from hpcpilot.gpu.binding import GPU_VARS
from hpcpilot.payload import RANK_VAR, TOKEN_VAR, Payload, start_payload

PASSED = ("X509_USER_PROXY", "X509_CERT_DIR", "ATLAS_LOCAL_ROOT_BASE", "PILOT_RUCIO_SITENAME", *GPU_VARS)
"""Host variables a payload needs whoever set them (pilot-behaviour.md §16.2); the files they name must be bound.
The GPU variables too: a binding kept from Slurm is the host's value, which podman would otherwise not pass."""


def pilot_set(env: Mapping[str, str]) -> list[str]:
    """The variables the pilot set or changed for the payload, those of ``PASSED`` and the tracking ones: what
    podman, which passes no host environment, must be told to pass (by name)."""
    changed = [name for name, value in env.items() if os.environ.get(name) != value or name in PASSED]
    return [*changed, TOKEN_VAR, RANK_VAR]


def start(plan: ContainerPlan | None, command: str, cwd: Path, env: Mapping[str, str], stdout_path: Path,
          stderr_path: Path, cgroup: PayloadCgroup | None, append: bool = False,
          mounts: Sequence[Path] = ()) -> Payload:
    """``start_payload`` on the bare node (no plan) or in the plan's container with ``cwd`` and ``mounts`` bound at
    their own paths; raises PilotError 1325/1360 when the runtime or the image is missing."""
    if plan is None:
        return start_payload(command, cwd, env, stdout_path, stderr_path, cgroup, append)
    program = plan.ready(env)
    launch = plan.launch(program, command, cwd, [*mounts, cwd], pilot_set(env))
    environment = runtime_env(plan, env)
    payload = start_payload(plan.argv(launch), cwd, environment, stdout_path, stderr_path, cgroup, append)
    if launch.name:
        payload.container = PodmanContainer(program, launch.name, environment)
    return payload
