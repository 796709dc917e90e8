"""Cgroup detection and PayloadCgroup: fake v1/v2/none trees, and the real v1 memory controller when root."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from hpcpilot.cgroups import CgroupLocation, CgroupMemory, PayloadCgroup, detect


def _mountinfo(*mounts: tuple[str, Path, str, str]) -> str:
    """mountinfo lines for (root, mount point, fstype, super options)."""
    lines = ["22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw"]
    for i, (root, point, fstype, opts) in enumerate(mounts):
        escaped = str(point).replace(" ", "\\040")
        lines.append(f"{30 + i} 22 0:{30 + i} {root} {escaped} rw,relatime shared:{i} - {fstype} cgroup "
                     f"rw,{opts}")
    return "\n".join(lines) + "\n"


def _fake(tmp_path: Path, proc_cgroup: str, mountinfo: str) -> tuple[Path, Path]:
    pc, mi = tmp_path / "proc_cgroup", tmp_path / "mountinfo"
    pc.write_text(proc_cgroup)
    mi.write_text(mountinfo)
    return pc, mi


def _files(directory: Path, **files: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name.replace("__", ".")).write_text(text)
    return directory


# -- detection on fake trees ---------------------------------------------------------------

def test_detect_v1_memory_strips_mount_root(tmp_path: Path) -> None:
    mem = tmp_path / "sys fs" / "memory"  # a space, escaped as \040 in mountinfo
    _files(mem / "job" / "step", cgroup__procs="")
    pc, mi = _fake(tmp_path, "5:cpu,cpuacct:/x\n4:memory:/slurm/job/step\n0::/\n",
                   _mountinfo(("/", tmp_path / "cpu", "cgroup", "cpu,cpuacct"),
                              ("/slurm", mem, "cgroup", "memory"),
                              ("/", tmp_path / "unified", "cgroup2", "nsdelegate")))
    assert detect(pc, mi) == CgroupLocation(1, mem / "job" / "step", True)


def test_detect_prefers_v2_with_memory(tmp_path: Path) -> None:
    unified = tmp_path / "cgroup"
    _files(unified / "user.slice" / "pilot", cgroup__controllers="cpu io memory pids")
    pc, mi = _fake(tmp_path, "0::/user.slice/pilot\n", _mountinfo(("/", unified, "cgroup2", "nsdelegate")))
    assert detect(pc, mi) == CgroupLocation(2, unified / "user.slice" / "pilot", True)


def test_detect_hybrid_v2_without_memory_falls_back_to_v1(tmp_path: Path) -> None:
    """This project's machines: v1 memory plus a cgroup2 mount with only hugetlb."""
    unified, mem = tmp_path / "unified", tmp_path / "memory"
    _files(unified, cgroup__controllers="hugetlb")
    _files(mem / "a", cgroup__procs="")
    pc, mi = _fake(tmp_path, "4:memory:/a\n0::/\n",
                   _mountinfo(("/", mem, "cgroup", "memory"), ("/", unified, "cgroup2", "")))
    assert detect(pc, mi) == CgroupLocation(1, mem / "a", True)


def test_detect_v2_without_memory_and_none(tmp_path: Path) -> None:
    unified = tmp_path / "unified"
    _files(unified, cgroup__controllers="hugetlb")
    pc, mi = _fake(tmp_path, "0::/\n", _mountinfo(("/", unified, "cgroup2", "")))
    location = detect(pc, mi)
    assert location == CgroupLocation(2, unified, False)
    assert PayloadCgroup.create("p1", 10**9, location) is None
    pc, mi = _fake(tmp_path, "1:name=systemd:/\n", _mountinfo())
    assert detect(pc, mi) is None
    assert detect(tmp_path / "no" / "such", tmp_path / "file") is None


def test_detect_cgroup_outside_the_mounted_subtree(tmp_path: Path) -> None:
    mem = tmp_path / "memory"
    mem.mkdir()
    pc, mi = _fake(tmp_path, "4:memory:/other/place\n", _mountinfo(("/mine", mem, "cgroup", "memory")))
    assert detect(pc, mi) is None


# -- PayloadCgroup on fake trees -----------------------------------------------------------

def _fake_v2_child(tmp_path: Path, **files: str) -> tuple[CgroupLocation, Path]:
    parent = _files(tmp_path / "v2" / "pilot", cgroup__controllers="cpu memory", cgroup__subtree_control="")
    child = _files(parent / "payload", cgroup__controllers="memory", cgroup__procs="", memory__max="max",
                   memory__swap__max="max", **files)
    return CgroupLocation(2, parent, True), child


def test_v2_create_sets_limits_and_reads_memory(tmp_path: Path) -> None:
    location, child = _fake_v2_child(tmp_path, memory__current=str(300 * 1024), memory__peak=str(500 * 1024),
                                     memory__swap__current=str(7 * 1024),
                                     memory__events="low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    group = PayloadCgroup.create("payload", 64 * 2**20, location)
    assert group is not None and group.version == 2
    assert (location.path / "cgroup.subtree_control").read_text() == "+memory"
    assert (child / "memory.max").read_text() == str(64 * 2**20)
    assert (child / "memory.swap.max").read_text() == "0"
    assert group.memory() == CgroupMemory(2, 300, 500, 7)
    assert group.oom_killed()
    (child / "memory.peak").unlink()
    (child / "memory.events").write_text("oom_kill 0\n")
    assert group.memory() == CgroupMemory(2, 300, 300, 7)  # old kernels: no memory.peak
    assert not group.oom_killed()
    (child / "memory.current").unlink()
    assert group.memory() is None


def test_v2_kill_all_uses_cgroup_kill(tmp_path: Path) -> None:
    _, child = _fake_v2_child(tmp_path, cgroup__kill="")
    group = PayloadCgroup(2, child)
    assert group.kill_all(deadline=0) is True  # empty: nothing to do
    (child / "cgroup.procs").write_text("999999999\n")  # a fake member that no kill can remove
    assert group.kill_all(deadline=0) is False
    assert (child / "cgroup.kill").read_text() == "1"
    assert group.pids() == [999999999]


def test_v1_fake_memory_and_oom(tmp_path: Path) -> None:
    child = _files(tmp_path / "memory" / "payload",
                   memory__stat="cache 4096\nrss 1024\ntotal_cache 8192\ntotal_rss 2097152\n"
                                "total_swap 1048576\n",
                   memory__max_usage_in_bytes=str(3 * 2**20),
                   memory__oom_control="oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")
    group = PayloadCgroup(1, child)
    assert group.memory() == CgroupMemory(1, 2048, 3072, 1024)
    assert group.oom_killed()
    (child / "memory.stat").unlink()
    assert group.memory() is None


def test_create_is_never_an_exception(tmp_path: Path) -> None:
    missing = CgroupLocation(1, tmp_path / "not" / "there", True)
    assert PayloadCgroup.create("p", 10**9, missing) is None
    ok = CgroupLocation(1, tmp_path, True)
    for bad in ("", "../x", "a/b", ".hidden", "x" * 300):
        assert PayloadCgroup.create(bad, None, ok) is None
    # v2 whose child does not get the memory controller: refused and cleaned up
    parent = _files(tmp_path / "v2", cgroup__controllers="memory", cgroup__subtree_control="memory")
    assert PayloadCgroup.create("payload", None, CgroupLocation(2, parent, True)) is None
    assert not (parent / "payload").exists()


def test_create_without_permission_returns_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a non-root pilot sees: mkdir in the cgroup tree is refused."""
    def refuse(self: Path, *args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", refuse)
    assert PayloadCgroup.create("payload", 10**9, CgroupLocation(1, tmp_path, True)) is None


# -- the real v1 memory controller -----------------------------------------------------------

def _real_v1() -> CgroupLocation:
    if os.geteuid() != 0:
        pytest.skip("real cgroup test needs root (cgroup directories are root-owned)")
    location = detect()
    if location is None or location.version != 1 or not location.memory:
        pytest.skip(f"no cgroup v1 memory controller here (detected: {location})")
    return location


def _start_in(group: PayloadCgroup, code: str) -> subprocess.Popen[bytes]:
    """A Python child that joins the cgroup itself before exec, so it never runs outside it."""
    joiner = 'echo $$ > "$1" && shift && exec "$@"'
    argv = ["/bin/sh", "-c", joiner, "join", str(group.procs_file), sys.executable, "-c", code]
    return subprocess.Popen(argv, stdout=subprocess.PIPE)


def test_real_v1_oom_kill_and_peak() -> None:
    location = _real_v1()
    limit = 64 * 2**20
    group = PayloadCgroup.create(f"hpcpilot-test-{uuid.uuid4().hex[:8]}", limit, location)
    assert group is not None, "root with a v1 memory controller, but create() failed"
    try:
        hog = "b = bytearray(256 * 2**20)\nfor i in range(0, len(b), 4096): b[i] = 1\n"
        proc = _start_in(group, hog)
        assert proc.wait() == -9
        assert group.oom_killed()
        memory = group.memory()
        assert memory is not None and memory.version == 1
        assert 0.8 * limit / 1024 <= memory.peak_kb <= limit / 1024 * 1.05
        assert group.pids() == []
    finally:
        assert group.remove()
    assert not group.path.exists()


def test_real_v1_kill_all_and_accounting() -> None:
    location = _real_v1()
    group = PayloadCgroup.create(f"hpcpilot-test-{uuid.uuid4().hex[:8]}", None, location)
    assert group is not None
    try:
        code = ("import subprocess, time\n"
                "b = bytearray(20 * 2**20)\n"
                "for i in range(0, len(b), 4096): b[i] = 1\n"
                "subprocess.Popen(['sleep', '1000'], start_new_session=True)\n"
                "print('ready', flush=True)\n"
                "time.sleep(1000)\n")
        proc = _start_in(group, code)
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"  # blocks until ready
        assert len(group.pids()) == 2  # the setsid'd grandchild is inside too
        memory = group.memory()
        assert memory is not None and memory.current_kb >= 20 * 1024
        assert not group.oom_killed()
        assert group.kill_all()
        assert proc.wait() == -9
        assert group.pids() == []
    finally:
        assert group.remove()
