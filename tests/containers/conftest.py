"""The container tier: payloads run for real in Charliecloud (``ch-run``) and podman containers.

As root, the runtimes are installed from Debian when missing (charliecloud-runtime, podman, runc, busybox-static);
elsewhere the tier is skipped with its reason (``pytest -ra`` shows it).  No registry is reachable, so the images
are made here (environment.md "Containers here"):

* ``busybox``: a directory with busybox and its links and a marker file the host lacks; ch-run runs the directory,
  podman an image imported from its tar (``podman import``).
* ``host``: a directory whose /usr, and the directories holding the repository and its Python, are the host's
  (bound by the site config's ``binds``), so the pilot's example payloads in Python run inside (event service).

podman runs here only with runc, the cgroupfs manager and no default ulimits, in a containers.conf that
``CONTAINERS_CONF`` names (crun fails on this kernel's hybrid cgroups); the pilot and its payloads inherit it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = {"ch-run": "charliecloud-runtime", "podman": "podman", "runc": "runc", "busybox": "busybox-static"}
MARKER = "hpcpilot-container-marker"
_MERGED = ("bin", "sbin", "lib", "lib64")  # symlinks into /usr on a merged-/usr host (Debian 12)
HOST_BINDS = tuple(sorted({"/usr", *(f"/{Path(path).parts[1]}" for path in (REPO, sys.executable,
                                                                           os.path.realpath(sys.executable)))}
                          - {f"/{name}" for name in _MERGED}))
"""The host directories the ``host`` image binds: /usr, and where the repository and its Python live."""
CONTAINERS_CONF = """[containers]
default_ulimits = []

[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
"""


@dataclass(frozen=True)
class Images:
    """The images of the tier, per runtime: what a job names and what the site config sets."""

    busybox_dir: Path
    host_dir: Path
    podman_busybox: str
    podman_host: str

    def busybox(self, runtime: str) -> str:
        return str(self.busybox_dir) if runtime == "charliecloud" else self.podman_busybox

    def host(self, runtime: str) -> str:
        return str(self.host_dir) if runtime == "charliecloud" else self.podman_host


def _missing() -> list[str]:
    """The packages whose program is not installed (runc lives in /usr/sbin, off a non-root PATH)."""
    return [pkg for prog, pkg in PACKAGES.items()
            if shutil.which(prog) is None and not Path("/usr/sbin", prog).exists()]


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "container tier needs root (it installs the runtimes; podman runs rootful here)"
    missing = _missing()
    if missing and shutil.which("apt-get") is None:
        return f"container tier: {', '.join(missing)} not installed and no apt-get to install them"
    return None


def _apt_get(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["apt-get", *args], capture_output=True, text=True, timeout=900, check=False,
                          env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def _install() -> None:
    """apt-get install what is missing; on a fresh machine whose package lists are empty, update them first
    and try again (as slurm/cluster.sh does)."""
    missing = _missing()
    if not missing:
        return
    done = _apt_get("install", "-y", *missing)
    if done.returncode != 0:
        _apt_get("update", "-q")
        done = _apt_get("install", "-y", *missing)
    assert done.returncode == 0, f"apt-get install {' '.join(missing)} failed: {done.stderr[-2000:]}"


def _base_dirs(root: Path) -> None:
    for name in ("dev", "proc", "sys", "tmp", "etc", "home", "root", "mnt", "var"):
        (root / name).mkdir(parents=True, exist_ok=True)
    for name in ("passwd", "group"):
        (root / "etc" / name).write_text("")  # ch-run binds the host's over them


def _busybox_image(root: Path) -> None:
    _base_dirs(root)
    (root / "bin").mkdir()
    busybox = shutil.which("busybox") or "/bin/busybox"
    shutil.copy2(busybox, root / "bin" / "busybox")
    applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True).stdout.split()
    for applet in applets:
        if applet != "busybox":
            (root / "bin" / applet).symlink_to("busybox")
    (root / MARKER).write_text(f"{MARKER} from the image\n")


def _host_image(root: Path) -> None:
    """``HOST_BINDS`` bound in; /bin, /lib and /lib64 point into /usr as on the (merged-/usr) host."""
    _base_dirs(root)
    for path in HOST_BINDS:
        (root / path.lstrip("/")).mkdir(exist_ok=True)
    for name in _MERGED:
        (root / name).symlink_to(f"usr/{name}")


def _podman_import(root: Path, tag: str, env: dict[str, str]) -> str:
    archive = root.parent / f"{root.name}.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(root, arcname=".")
    name = f"localhost/{tag}"
    done = subprocess.run(["podman", "import", str(archive), name], capture_output=True, text=True, timeout=300,
                          env=env, check=False)
    assert done.returncode == 0, f"podman import failed: {done.stderr[-2000:]}"
    return name


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Images]:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    _install()
    base = tmp_path_factory.mktemp("images")
    conf = base / "containers.conf"
    conf.write_text(CONTAINERS_CONF)
    old = os.environ.get("CONTAINERS_CONF")
    os.environ["CONTAINERS_CONF"] = str(conf)  # the pilots these tests start, and their payloads, inherit it
    os.environ.setdefault("USER", "root")
    _busybox_image(base / "busybox")
    _host_image(base / "host")
    env = dict(os.environ)
    yield Images(base / "busybox", base / "host", _podman_import(base / "busybox", "hpcpilot-busybox:1", env),
                 _podman_import(base / "host", "hpcpilot-host:1", env))
    subprocess.run(["podman", "rmi", "-f", "localhost/hpcpilot-busybox:1", "localhost/hpcpilot-host:1"],
                   capture_output=True, timeout=120, env=env, check=False)
    if old is None:
        os.environ.pop("CONTAINERS_CONF", None)
    else:
        os.environ["CONTAINERS_CONF"] = old
