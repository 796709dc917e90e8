"""File-name safety: LFN rules, joins that cannot escape, hostile zips, the log tarball."""

from __future__ import annotations

import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from hpcpilot.errors import ErrorCode, PilotError
from hpcpilot.stageio.files import check_lfn, make_log_tarball, safe_join, safe_unzip


@pytest.mark.parametrize("lfn", ["EVNT.12345._000001.pool.root.1", "log.tgz", "a b", "x" * 255, "a..b",
                                 ".hidden"])
def test_check_lfn_accepts_plain_names(lfn: str) -> None:
    check_lfn(lfn)


def test_check_lfn_too_long() -> None:
    with pytest.raises(PilotError) as info:
        check_lfn("x" * 256)
    assert info.value.code == ErrorCode.LFNTOOLONG
    assert "256" in info.value.diag and len(info.value.diag) < 200


@pytest.mark.parametrize("lfn", ["", ".", "..", "a/b", "../x", "/etc/passwd", "a\\b", "a\x00b", "-rf", "a\nb",
                                 "a\rb", "a\x7fb", "a/" + "b" * 200])
def test_check_lfn_refuses_non_plain_names_in_one_line(lfn: str) -> None:
    with pytest.raises(PilotError) as info:
        check_lfn(lfn)
    assert info.value.code == ErrorCode.BADOUTPUTFILENAME
    assert "\n" not in str(info.value) and "\x00" not in str(info.value)
    assert repr(lfn)[:30] in info.value.diag
    assert len(info.value.diag) < 150


def test_safe_join_inside(tmp_path: Path) -> None:
    assert safe_join(tmp_path, "out.root") == tmp_path.resolve() / "out.root"
    assert safe_join(tmp_path, "sub/out.root") == tmp_path.resolve() / "sub" / "out.root"


@pytest.mark.parametrize("name", ["../x", "a/../../x", "/etc/passwd", "", ".", "a/..", "a\x00b"])
def test_safe_join_refuses_escapes(tmp_path: Path, name: str) -> None:
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(PilotError) as info:
        safe_join(work, name, code=ErrorCode.STAGEINFAILED)
    assert info.value.code == ErrorCode.STAGEINFAILED
    assert "\n" not in str(info.value)


def test_safe_join_refuses_escape_through_symlink(tmp_path: Path) -> None:
    work, outside = tmp_path / "work", tmp_path / "outside"
    work.mkdir()
    outside.mkdir()
    (work / "link").symlink_to(outside)
    (work / "filelink").symlink_to(outside / "secret")
    for name in ("link", "link/x", "filelink"):
        with pytest.raises(PilotError):
            safe_join(work, name)


def _zip(path: Path, members: dict[str, bytes], symlinks: dict[str, str] | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, target)
    return path


def test_safe_unzip_unpacks(tmp_path: Path) -> None:
    dest = tmp_path / "work"
    dest.mkdir()
    archive = _zip(tmp_path / "in.zip", {"a.root": b"A", "sub/b.root": b"BB", "dir/": b""})
    written = safe_unzip(archive, dest)
    assert sorted(p.relative_to(dest).as_posix() for p in written) == ["a.root", "sub/b.root"]
    assert (dest / "sub" / "b.root").read_bytes() == b"BB"
    assert (dest / "dir").is_dir()


@pytest.mark.parametrize("member", ["../evil", "/abs/evil", "a/../../evil", "a\\..\\evil", "C:/evil"])
def test_safe_unzip_refuses_escaping_members_and_writes_nothing(tmp_path: Path, member: str) -> None:
    dest = tmp_path / "work"
    dest.mkdir()
    archive = _zip(tmp_path / "bad.zip", {"good": b"x", member: b"evil"})
    with pytest.raises(PilotError) as info:
        safe_unzip(archive, dest)
    assert info.value.code == ErrorCode.STAGEINFAILED
    assert repr(member)[:20] in info.value.diag
    assert list(dest.iterdir()) == []
    assert not (tmp_path / "evil").exists()


def test_safe_unzip_refuses_symlink_members(tmp_path: Path) -> None:
    dest = tmp_path / "work"
    dest.mkdir()
    archive = _zip(tmp_path / "bad.zip", {}, symlinks={"link": "/etc"})
    with pytest.raises(PilotError) as info:
        safe_unzip(archive, dest)
    assert info.value.code == ErrorCode.STAGEINFAILED and "link" in info.value.diag
    assert list(dest.iterdir()) == []


def test_safe_unzip_never_writes_through_existing_symlinks(tmp_path: Path) -> None:
    dest, outside = tmp_path / "work", tmp_path / "outside"
    dest.mkdir()
    outside.mkdir()
    (outside / "input.root").write_bytes(b"site copy")
    (dest / "input.root").symlink_to(outside / "input.root")  # a symlinked input
    (dest / "dirlink").symlink_to(outside)
    with pytest.raises(PilotError):
        safe_unzip(_zip(tmp_path / "a.zip", {"input.root": b"overwrite"}), dest)
    with pytest.raises(PilotError):
        safe_unzip(_zip(tmp_path / "b.zip", {"dirlink/x": b"overwrite"}), dest)
    assert (outside / "input.root").read_bytes() == b"site copy"
    assert not (outside / "x").exists()


def test_safe_unzip_not_a_zip(tmp_path: Path) -> None:
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"not a zip")
    with pytest.raises(PilotError) as info:
        safe_unzip(bad, tmp_path)
    assert info.value.code == ErrorCode.STAGEINFAILED


PILOT_NAMES = ("job_setup.sh", "pandaJob.json", "payload.stdout", "rank[0-9]*")


@pytest.mark.parametrize("member", ["job_setup.sh", "./pandaJob.json", "payload.stdout/x", "pandaJob.json/",
                                    "rank3/payload.stdout"])
def test_safe_unzip_refuses_pilot_files_with_1371_and_writes_nothing(tmp_path: Path, member: str) -> None:
    dest = tmp_path / "work"
    dest.mkdir()
    (dest / "job_setup.sh").write_text("the pilot's script\n")
    archive = _zip(tmp_path / "in.zip", {"data.txt": b"x", member: b"echo pwned\n"})
    with pytest.raises(PilotError) as info:
        safe_unzip(archive, dest, reserved=PILOT_NAMES)
    assert info.value.code == ErrorCode.BADOUTPUTFILENAME == 1371
    assert repr(member)[:20] in info.value.diag and "'in.zip'" in info.value.diag
    assert "\n" not in str(info.value)
    assert sorted(p.name for p in dest.iterdir()) == ["job_setup.sh"]
    assert (dest / "job_setup.sh").read_text() == "the pilot's script\n"


def test_safe_unzip_allows_names_that_only_resemble_pilot_files(tmp_path: Path) -> None:
    names = {"ranking.txt": b"1", "sub/job_setup.sh": b"2", "pandaJob.json.orig": b"3", "rankx/y": b"4"}
    written = safe_unzip(_zip(tmp_path / "in.zip", names), tmp_path / "work", reserved=PILOT_NAMES)
    assert sorted(p.relative_to(tmp_path / "work").as_posix() for p in written) == sorted(names)


def test_make_log_tarball(tmp_path: Path) -> None:
    work, outside = tmp_path / "PandaJob_1", tmp_path / "outside"
    work.mkdir()
    outside.mkdir()
    (outside / "secret").write_text("do not pack me")
    (work / "payload.stdout").write_text("hello")
    (work / "sub").mkdir()
    (work / "sub" / "x.txt").write_text("x")
    (work / "input.root").write_text("big input")
    (work / "link").symlink_to(outside / "secret")
    (work / "dirlink").symlink_to(outside)
    tar_path = work / "log.tgz"
    make_log_tarball(work, tar_path, exclude=["input.root"])
    with tarfile.open(tar_path) as tar:
        members = {m.name: m for m in tar.getmembers()}
        contents = b"".join(tar.extractfile(m).read() for m in members.values() if m.isfile())
    top = "PandaJob_1"
    assert set(members) == {top, f"{top}/payload.stdout", f"{top}/sub", f"{top}/sub/x.txt", f"{top}/link",
                            f"{top}/dirlink"}
    assert members[f"{top}/link"].issym() and members[f"{top}/dirlink"].issym()
    assert b"do not pack me" not in contents
    assert not (work / "log.tgz.part").exists()


def test_make_log_tarball_custom_top_dir(tmp_path: Path) -> None:
    work = tmp_path / "w"
    work.mkdir()
    (work / "a").write_text("a")
    make_log_tarball(work, tmp_path / "log.tgz", exclude=[], arcname="tarball_PandaJob_7")
    with tarfile.open(tmp_path / "log.tgz") as tar:
        assert sorted(tar.getnames()) == ["tarball_PandaJob_7", "tarball_PandaJob_7/a"]
