"""Copy tools, stage-in and stage-out: codes, checksums, timeouts with real hung copies, hostile names."""

from __future__ import annotations

import hashlib
import os
import zipfile
import zlib
from pathlib import Path

import pytest

from hpcpilot.config import StageConfig
from hpcpilot.errors import ConfigError, ErrorCode, PilotError
from hpcpilot.records import FileSpec
from hpcpilot.stageio import copytools
from hpcpilot.stageio.copytools import (
    CommandTool,
    CopyTool,
    TransferError,
    get_copytool,
    register_copytool,
    stage_in,
    stage_out,
    transfer_timeout,
)


def _ad(data: bytes) -> str:
    return f"ad:{zlib.adler32(data) & 0xFFFFFFFF:08x}"


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path, Path]:
    site_in, work, site_out = tmp_path / "in", tmp_path / "work", tmp_path / "out"
    for d in (site_in, work, site_out):
        d.mkdir()
    return site_in, work, site_out


class _FakeTool:
    """A site plug-in: writes given bytes, or raises a given exception."""

    def __init__(self, name: str, data: bytes | None = None, exc: Exception | None = None) -> None:
        self.name, self.data, self.exc = name, data, exc

    def transfer(self, src: Path, dst: Path, timeout: float) -> None:
        if self.exc is not None:
            raise self.exc
        dst.write_bytes(self.data if self.data is not None else src.read_bytes())


@pytest.fixture
def plugin():
    added: list[str] = []

    def add(tool: _FakeTool) -> _FakeTool:
        register_copytool(tool)
        added.append(tool.name)
        return tool

    yield add
    for name in added:
        copytools._REGISTRY.pop(name, None)


def test_registry_and_timeout_rule() -> None:
    assert {get_copytool(n).name for n in ("cp", "mv", "symlink")} == {"cp", "mv", "symlink"}
    assert all(isinstance(get_copytool(n), CopyTool) for n in ("cp", "mv", "symlink"))
    with pytest.raises(ConfigError, match="'rucio'"):
        get_copytool("rucio")
    with pytest.raises(ValueError):
        register_copytool(object())  # type: ignore[arg-type]
    cfg = StageConfig(timeout_base=400, timeout_max=10800)
    assert transfer_timeout(0, cfg) == 400
    assert transfer_timeout(2_000_000_000, cfg) == 2400
    assert transfer_timeout(10**13, cfg) == 10800


@pytest.mark.parametrize("tool", ["cp", "mv", "symlink"])
def test_stage_in_each_tool(dirs: tuple[Path, Path, Path], tool: str) -> None:
    site_in, work, _ = dirs
    data = b"event data" * 1000
    (site_in / "EVNT.1.root").write_bytes(data)
    files = [FileSpec(lfn="EVNT.1.root", fsize=len(data), checksum=_ad(data))]
    paths = stage_in(files, site_in, work, StageConfig(copytool_in=tool))
    assert paths == [work.resolve() / "EVNT.1.root"]
    assert paths[0].read_bytes() == data
    assert (site_in / "EVNT.1.root").exists() == (tool != "mv")
    assert paths[0].is_symlink() == (tool == "symlink")


def test_stage_in_missing_names_lfn_and_dir(dirs: tuple[Path, Path, Path]) -> None:
    site_in, work, _ = dirs
    with pytest.raises(PilotError) as info:
        stage_in([FileSpec(lfn="nothere.root")], site_in, work, StageConfig())
    assert info.value.code == ErrorCode.STAGEINFAILED
    assert "nothere.root" in info.value.diag and str(site_in) in info.value.diag


@pytest.mark.parametrize("lfn", ["../in/x", "/etc/passwd", "a/b", "-x", "..", "x\ny"])
def test_stage_in_refuses_hostile_names(dirs: tuple[Path, Path, Path], lfn: str) -> None:
    site_in, work, _ = dirs
    with pytest.raises(PilotError) as info:
        stage_in([FileSpec(lfn=lfn)], site_in, work, StageConfig())
    assert info.value.code == ErrorCode.BADOUTPUTFILENAME
    assert "\n" not in str(info.value)
    assert list(work.iterdir()) == []


def test_stage_in_size_and_checksum_mismatch(dirs: tuple[Path, Path, Path]) -> None:
    site_in, work, _ = dirs
    (site_in / "f").write_bytes(b"abc")
    with pytest.raises(PilotError) as info:
        stage_in([FileSpec(lfn="f", fsize=4)], site_in, work, StageConfig())
    assert info.value.code == ErrorCode.STAGEINFAILED and "3" in info.value.diag and "4" in info.value.diag
    with pytest.raises(PilotError) as info:
        stage_in([FileSpec(lfn="f", fsize=3, checksum="ad:00000001")], site_in, work, StageConfig())
    assert info.value.code == ErrorCode.GETADMISMATCH


def test_stage_in_hung_copy_times_out(dirs: tuple[Path, Path, Path]) -> None:
    """A FIFO source makes cp block in read() for ever; the timeout must stop it."""
    site_in, work, _ = dirs
    os.mkfifo(site_in / "hung.root")
    cfg = StageConfig(timeout_base=0.3, timeout_max=0.3)
    with pytest.raises(PilotError) as info:
        stage_in([FileSpec(lfn="hung.root")], site_in, work, cfg)
    assert info.value.code == ErrorCode.STAGEINTIMEOUT
    assert "hung.root" in info.value.diag
    assert not (work / "hung.root").exists()


def test_stage_in_zip_is_unpacked_and_hostile_zip_refused(dirs: tuple[Path, Path, Path]) -> None:
    site_in, work, _ = dirs
    with zipfile.ZipFile(site_in / "in.zip", "w") as archive:
        archive.writestr("a.root", b"A")
    with zipfile.ZipFile(site_in / "bad.zip", "w") as archive:
        archive.writestr("../../escaped", b"B")
    stage_in([FileSpec(lfn="in.zip")], site_in, work, StageConfig())
    assert (work / "a.root").read_bytes() == b"A"
    with pytest.raises(PilotError) as info:
        stage_in([FileSpec(lfn="bad.zip")], site_in, work, StageConfig())
    assert info.value.code == ErrorCode.STAGEINFAILED and "escaped" in info.value.diag
    assert not (site_in.parent / "escaped").exists()


def test_stage_in_never_replaces_a_pilot_file(dirs: tuple[Path, Path, Path]) -> None:
    """Neither an input called like a pilot file nor a zip member that is one reaches the workdir (1371)."""
    site_in, work, _ = dirs
    (work / "job_setup.sh").write_text("the pilot's script\n")
    (site_in / "job_setup.sh").write_text("echo pwned\n")
    with zipfile.ZipFile(site_in / "in.zip", "w") as archive:
        archive.writestr("job_setup.sh", b"echo pwned\n")
    for lfn in ("job_setup.sh", "in.zip"):
        with pytest.raises(PilotError) as info:
            stage_in([FileSpec(lfn=lfn)], site_in, work, StageConfig(), reserved=("job_setup.sh",))
        assert info.value.code == ErrorCode.BADOUTPUTFILENAME and "'job_setup.sh'" in info.value.diag
    assert (work / "job_setup.sh").read_text() == "the pilot's script\n"


def test_stage_in_unknown_tool_and_plugin_errors(dirs: tuple[Path, Path, Path], plugin) -> None:
    site_in, work, _ = dirs
    (site_in / "f").write_bytes(b"abc")
    with pytest.raises(PilotError) as info:
        stage_in([FileSpec(lfn="f")], site_in, work, StageConfig(copytool_in="nosuchtool"))
    assert info.value.code == ErrorCode.STAGEINFAILED and "nosuchtool" in info.value.diag
    plugin(_FakeTool("slow", exc=TimeoutError("site tool gave up")))
    plugin(_FakeTool("broken", exc=TransferError("no route to storage")))
    with pytest.raises(PilotError) as info:
        stage_in([FileSpec(lfn="f")], site_in, work, StageConfig(copytool_in="slow"))
    assert info.value.code == ErrorCode.STAGEINTIMEOUT
    with pytest.raises(PilotError) as info:
        stage_in([FileSpec(lfn="f")], site_in, work, StageConfig(copytool_in="broken"))
    assert info.value.code == ErrorCode.STAGEINFAILED and "no route to storage" in info.value.diag


@pytest.mark.parametrize(("algo", "key"), [("adler32", "adler32"), ("md5", "md5sum")])
def test_stage_out_cp_reports_size_checksum_surl(dirs: tuple[Path, Path, Path], algo: str, key: str) -> None:
    _, work, site_out = dirs
    (work / "HITS.pool.root").write_bytes(b"hits" * 100)
    report = stage_out([(work / "HITS.pool.root", "HITS.1.root")], site_out, StageConfig(checksum_type=algo))
    entry = report["HITS.1.root"]
    assert entry["fsize"] == 400 and entry["surl"] == str(site_out.resolve() / "HITS.1.root")
    assert (site_out / "HITS.1.root").read_bytes() == b"hits" * 100
    expected = _ad(b"hits" * 100)[3:] if algo == "adler32" else hashlib.md5(b"hits" * 100).hexdigest()
    assert entry[key] == expected


def test_stage_out_mv(dirs: tuple[Path, Path, Path]) -> None:
    _, work, site_out = dirs
    (work / "out").write_bytes(b"data")
    report = stage_out([(work / "out", "out.root")], site_out, StageConfig(copytool_out="mv"))
    assert not (work / "out").exists()
    assert (site_out / "out.root").read_bytes() == b"data"
    assert report["out.root"]["adler32"] == _ad(b"data")[3:]


def test_stage_out_symlinks_at_destination(dirs: tuple[Path, Path, Path], tmp_path: Path) -> None:
    """A planted link out of the output dir is refused; a link inside it is replaced, not written through."""
    _, work, site_out = dirs
    victim, inner = tmp_path / "victim", site_out / "inner"
    victim.write_bytes(b"keep")
    inner.write_bytes(b"keep")
    (site_out / "out.root").symlink_to(victim)
    (site_out / "in.root").symlink_to(inner)
    (work / "out").write_bytes(b"data")
    with pytest.raises(PilotError) as info:
        stage_out([(work / "out", "out.root")], site_out, StageConfig())
    assert info.value.code == ErrorCode.STAGEOUTFAILED
    stage_out([(work / "out", "in.root")], site_out, StageConfig())
    assert victim.read_bytes() == b"keep" and inner.read_bytes() == b"keep"
    assert (site_out / "in.root").read_bytes() == b"data" and not (site_out / "in.root").is_symlink()


@pytest.mark.parametrize(("algo", "code"),
                         [("adler32", ErrorCode.PUTADMISMATCH), ("md5", ErrorCode.PUTMD5MISMATCH)])
def test_stage_out_corrupted_copy(dirs: tuple[Path, Path, Path], plugin, algo: str, code: ErrorCode) -> None:
    _, work, site_out = dirs
    (work / "out").write_bytes(b"data")
    plugin(_FakeTool("corrupting", data=b"dat4"))
    with pytest.raises(PilotError) as info:
        stage_out([(work / "out", "out.root")], site_out,
                  StageConfig(copytool_out="corrupting", checksum_type=algo))
    assert info.value.code == code
    assert not (site_out / "out.root").exists()


def test_stage_out_local_file_problems(dirs: tuple[Path, Path, Path], tmp_path: Path) -> None:
    _, work, site_out = dirs
    (work / "empty").write_bytes(b"")
    (tmp_path / "secret").write_bytes(b"secret")
    (work / "sneaky").symlink_to(tmp_path / "secret")
    cases = [("missing", ErrorCode.MISSINGOUTPUTFILE), ("empty", ErrorCode.ZEROFILESIZE),
             ("sneaky", ErrorCode.STAGEOUTFAILED)]
    for name, code in cases:
        with pytest.raises(PilotError) as info:
            stage_out([(work / name, name + ".root")], site_out, StageConfig())
        assert info.value.code == code, name
    assert list(site_out.iterdir()) == []


@pytest.mark.parametrize(("lfn", "code"), [("../escape", ErrorCode.BADOUTPUTFILENAME),
                                            ("x" * 300, ErrorCode.LFNTOOLONG)])
def test_stage_out_hostile_lfn(dirs: tuple[Path, Path, Path], lfn: str, code: ErrorCode) -> None:
    _, work, site_out = dirs
    (work / "out").write_bytes(b"data")
    with pytest.raises(PilotError) as info:
        stage_out([(work / "out", lfn)], site_out, StageConfig())
    assert info.value.code == code
    assert not (site_out.parent / "escape").exists()


def test_stage_out_failure_and_real_timeout(dirs: tuple[Path, Path, Path], plugin) -> None:
    _, work, site_out = dirs
    (work / "out").write_bytes(b"data")
    (site_out / "adir.root").mkdir()
    with pytest.raises(PilotError) as info:
        stage_out([(work / "out", "adir.root")], site_out, StageConfig())
    assert info.value.code == ErrorCode.STAGEOUTFAILED and "cp" in info.value.diag
    plugin(CommandTool("stuck", ["sh", "-c", "sleep 1000; cp \"$2\" \"$3\""]))  # type: ignore[arg-type]
    cfg = StageConfig(copytool_out="stuck", timeout_base=0.3, timeout_max=0.3)
    with pytest.raises(PilotError) as info:
        stage_out([(work / "out", "out.root")], site_out, cfg)
    assert info.value.code == ErrorCode.STAGEOUTTIMEOUT
    assert not (site_out / "out.root").exists()
