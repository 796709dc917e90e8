"""Payloads in containers: the job's image, each runtime's command line, its failures, and the start itself.

``ContainerPlan.for_job`` decides once per job (runtime ``none`` or no image: the bare node, exactly as before);
``start`` is the one way every payload start (each step of a job, per-range commands, the protocol payload of
an event-service job) goes through a runtime.  Modules: ``image`` (what the job asks for), ``argv`` (one pure
command-line builder per runtime), ``failures`` (the runtime's own failure told from the payload's exit), ``plan``
(runtime and image there, once per rank), ``start`` (the wrapped start), ``podman`` (a container whose payload is
not the pilot's descendant: monitored from its first process and cgroup, stopped and removed through podman).
"""

from hpcpilot.container.argv import RUNTIMES, Launch, runtime_argv
from hpcpilot.container.failures import RuntimeFailure, runtime_failure
from hpcpilot.container.image import JobImage, job_image
from hpcpilot.container.plan import ContainerPlan
from hpcpilot.container.start import start

__all__ = ["RUNTIMES", "ContainerPlan", "JobImage", "Launch", "RuntimeFailure", "job_image", "runtime_argv",
           "runtime_failure", "start"]
