"""Stage-out through the pilot's own copy: one read of the source, the same checks and error codes."""

from __future__ import annotations

import hashlib
import os
import random
import zlib
from pathlib import Path

import pytest

from hpcpilot.config import StageConfig
from hpcpilot.errors import ErrorCode, PilotError
from hpcpilot.stageio import adler, copychild, copytools
from hpcpilot.stageio.copychild import BLOCK_SIZE
from hpcpilot.stageio.copytools import PilotCopy, SourceUnreadable, TransferTimeout, stage_out


@pytest.fixture
def dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """Work and output directories; every file goes through the one-read copy, however small."""
    monkeypatch.setattr(PilotCopy, "one_read_min_bytes", 1)
    work, site_out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    site_out.mkdir()
    return work, site_out


@pytest.mark.parametrize("algo", ["adler32", "md5"])
def test_a_file_of_several_blocks_is_copied_and_checksummed(dirs: tuple[Path, Path], algo: str) -> None:
    work, site_out = dirs
    data = random.Random(7).randbytes(2 * BLOCK_SIZE + 12345)
    (work / "big").write_bytes(data)
    (work / "big").chmod(0o640)
    entry = stage_out([(work / "big", "big.root")], site_out, StageConfig(checksum_type=algo))["big.root"]
    expected = f"{zlib.adler32(data) & 0xFFFFFFFF:08x}" if algo == "adler32" else hashlib.md5(data).hexdigest()
    assert entry["adler32" if algo == "adler32" else "md5sum"] == expected
    assert (site_out / "big.root").read_bytes() == data
    assert (site_out / "big.root").stat().st_mode & 0o777 == 0o640 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_the_builtin_cp_checksums_while_copying() -> None:
    assert isinstance(copytools.get_copytool("cp"), PilotCopy)


def test_a_wrong_copy_is_a_mismatch_and_is_removed(dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    work, site_out = dirs
    (work / "out").write_bytes(b"data")
    real = PilotCopy.transfer_checksummed

    def corrupt(self: PilotCopy, src: Path, dst: Path, timeout: float, algo: str) -> str:
        value = real(self, src, dst, timeout, algo)
        dst.write_bytes(b"dat4")
        return value

    monkeypatch.setattr(PilotCopy, "transfer_checksummed", corrupt)
    with pytest.raises(PilotError) as info:
        stage_out([(work / "out", "out.root")], site_out, StageConfig())
    assert info.value.code == ErrorCode.PUTADMISMATCH
    assert not (site_out / "out.root").exists()


def test_an_unreadable_source_is_a_checksum_failure(dirs: tuple[Path, Path]) -> None:
    work, site_out = dirs
    with pytest.raises(SourceUnreadable):
        copytools.get_copytool("cp").transfer_checksummed(work, site_out / "x", 10.0, "adler32")
    with pytest.raises(PilotError) as info:
        copytools._copy_checksummed(copytools.get_copytool("cp"), work, site_out / "x", 10.0, "adler32",
                                    (ErrorCode.STAGEOUTFAILED, ErrorCode.STAGEOUTTIMEOUT))
    assert info.value.code == ErrorCode.CHECKSUMCALCFAILURE
    assert not (site_out / "x").exists()


def test_a_hung_source_times_out(dirs: tuple[Path, Path]) -> None:
    work, site_out = dirs
    os.mkfifo(work / "fifo")  # opening it for reading waits for a writer that never comes
    with pytest.raises(TransferTimeout, match="cp did not finish"):
        copytools.get_copytool("cp").transfer_checksummed(work / "fifo", site_out / "x", 0.5, "adler32")


def test_a_directory_at_the_destination_is_refused(dirs: tuple[Path, Path]) -> None:
    work, site_out = dirs
    (work / "out").write_bytes(b"data")
    (site_out / "adir.root").mkdir()
    with pytest.raises(PilotError) as info:
        stage_out([(work / "out", "adir.root")], site_out, StageConfig())
    assert info.value.code == ErrorCode.STAGEOUTFAILED and "cp exited with 1" in info.value.diag
    assert (site_out / "adir.root").is_dir()


def test_a_site_tool_named_cp_gets_the_two_reads(dirs: tuple[Path, Path]) -> None:
    work, site_out = dirs
    (work / "out").write_bytes(b"data")
    builtin = copytools.get_copytool("cp")
    copytools.register_copytool(copytools.CommandTool("cp", ["cp"]))
    try:
        entry = stage_out([(work / "out", "out.root")], site_out, StageConfig())["out.root"]
    finally:
        copytools.register_copytool(builtin)
    assert entry["adler32"] == f"{zlib.adler32(b'data'):08x}"


def test_a_small_file_is_read_twice_rather_than_start_an_interpreter(dirs: tuple[Path, Path],
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    work, site_out = dirs
    monkeypatch.setattr(PilotCopy, "one_read_min_bytes", 64 << 20)
    monkeypatch.setattr(PilotCopy, "transfer_checksummed", None)  # would raise TypeError if called
    (work / "log.tgz").write_bytes(b"log")
    entry = stage_out([(work / "log.tgz", "log.tgz")], site_out, StageConfig())["log.tgz"]
    assert entry["adler32"] == f"{zlib.adler32(b'log'):08x}" and (site_out / "log.tgz").read_bytes() == b"log"


@pytest.mark.parametrize("parts", [1, 2, 3, 7])
@pytest.mark.parametrize("size", [0, 1, 5, 65521, 65522, 3 * (4 << 20) + 11])
def test_adler32_in_parts_is_zlib_s(tmp_path: Path, parts: int, size: int) -> None:
    data = random.Random(size).randbytes(size)
    (tmp_path / "f").write_bytes(data)
    assert adler.file_adler32(tmp_path / "f", parts) == zlib.adler32(data)


def test_combine_on_extremes() -> None:
    rng = random.Random(5)
    for _ in range(200):
        left, right = (bytes([255]) * rng.randint(0, 70000), bytes([rng.randint(0, 255)]) * rng.randint(0, 70000))
        assert adler.combine(zlib.adler32(left), zlib.adler32(right), len(right)) == zlib.adler32(left + right)


def test_an_unreadable_part_raises(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        adler.file_adler32(tmp_path, 2)  # a directory: every read fails


@pytest.mark.parametrize("algo", ["adler32", "md5"])
def test_the_buffer_copy_where_the_kernel_cannot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, algo: str) -> None:
    data = random.Random(11).randbytes(2 * BLOCK_SIZE + 7)
    (tmp_path / "src").write_bytes(data)
    monkeypatch.setattr(copychild, "copy_in_kernel", lambda *_: False)
    value = copychild.copy_file(str(tmp_path / "src"), str(tmp_path / "dst"), algo)
    assert (tmp_path / "dst").read_bytes() == data
    assert value == (f"{zlib.adler32(data):08x}" if algo == "adler32" else hashlib.md5(data).hexdigest())


def test_a_kernel_that_copies_nothing_leaves_it_to_the_buffer_copy(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "src").write_bytes(b"data" * 1000)
    monkeypatch.setattr(copychild.os, "copy_file_range", lambda *_: 0)
    assert copychild.copy_file(str(tmp_path / "src"), str(tmp_path / "dst"), "adler32") == \
        f"{zlib.adler32(b'data' * 1000):08x}"
    assert (tmp_path / "dst").read_bytes() == b"data" * 1000
