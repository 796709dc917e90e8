"""Checksums: known vectors, agreement with zlib/hashlib, catalog parsing, verification codes."""

from __future__ import annotations

import hashlib
import os
import zlib
from pathlib import Path

import pytest

from hpcpilot.errors import ErrorCode, PilotError
from hpcpilot.records import FileSpec
from hpcpilot.stageio import checksum


def _file(tmp_path: Path, data: bytes, name: str = "f") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(("data", "expected"), [
    (b"", "00000001"),
    (b"a", "00620062"),
    (b"Wikipedia", "11e60398"),
    (b"\x00", "00010001"),  # < 0x10000000: must be zero-padded to 8 digits
])
def test_adler32_known_vectors(tmp_path: Path, data: bytes, expected: str) -> None:
    assert checksum.adler32(_file(tmp_path, data)) == expected


@pytest.mark.parametrize(("data", "expected"), [
    (b"", "d41d8cd98f00b204e9800998ecf8427e"),
    (b"abc", "900150983cd24fb0d6963f7d28e17f72"),
    (b"The quick brown fox jumps over the lazy dog", "9e107d9d372bb6826bd81d3542a419d6"),
])
def test_md5_known_vectors(tmp_path: Path, data: bytes, expected: str) -> None:
    assert checksum.md5(_file(tmp_path, data)) == expected


def test_large_random_file_matches_zlib_and_hashlib(tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)  # several blocks plus a partial one
    path = _file(tmp_path, data)
    assert checksum.adler32(path) == f"{zlib.adler32(data) & 0xFFFFFFFF:08x}"
    assert checksum.md5(path) == hashlib.md5(data).hexdigest()
    assert checksum.compute(path, "ad32") == checksum.adler32(path)
    assert checksum.compute(path, "md5sum") == checksum.md5(path)


@pytest.mark.parametrize(("text", "expected"), [
    ("ad:0c9e7a11", ("adler32", "0c9e7a11")),
    ("AD:0C9E7A11", ("adler32", "0c9e7a11")),
    ("ad:c9e7a11", ("adler32", "0c9e7a11")),
    ("md:d41d8cd98f00b204e9800998ecf8427e", ("md5", "d41d8cd98f00b204e9800998ecf8427e")),
    ("md5:D41D8CD98F00B204E9800998ECF8427E", ("md5", "d41d8cd98f00b204e9800998ecf8427e")),
    ("11e60398", ("adler32", "11e60398")),
    (" 11e60398 ", ("adler32", "11e60398")),
    ("900150983cd24fb0d6963f7d28e17f72", ("md5", "900150983cd24fb0d6963f7d28e17f72")),
])
def test_parse_checksum_accepts(text: str, expected: tuple[str, str]) -> None:
    assert checksum.parse_checksum(text) == expected


@pytest.mark.parametrize("text", [
    "", "sha1:da39a3ee5e6b4b0d3255bfef95601890afd80709", "1234567", "123456789", "zzzzzzzz",
    "ad:", "ad:zz", "ad:123456789", "md:1234", "md5:11e60398", "ad:11e6\n0398", "x" * 500,
])
def test_parse_checksum_rejects_with_one_line_naming_the_value(text: str) -> None:
    with pytest.raises(PilotError) as info:
        checksum.parse_checksum(text)
    assert info.value.code == ErrorCode.UNKNOWNCHECKSUMTYPE
    assert "\n" not in str(info.value)
    assert repr(text)[:20] in info.value.diag
    assert len(info.value.diag) < 150


def test_unknown_algorithm_and_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(PilotError) as info:
        checksum.compute(_file(tmp_path, b"x"), "sha256")
    assert info.value.code == ErrorCode.UNKNOWNCHECKSUMTYPE and "sha256" in info.value.diag
    with pytest.raises(PilotError) as info:
        checksum.compute(tmp_path / "missing", "adler32")
    assert info.value.code == ErrorCode.CHECKSUMCALCFAILURE and "missing" in info.value.diag


def test_verify_input_accepts_matching_file(tmp_path: Path) -> None:
    path = _file(tmp_path, b"Wikipedia")
    checksum.verify_input(path, FileSpec(lfn="f", fsize=9, checksum="ad:11e60398"))
    md5_value = "md5:" + hashlib.md5(b"Wikipedia").hexdigest()
    checksum.verify_input(path, FileSpec(lfn="f", fsize=9, checksum=md5_value))
    checksum.verify_input(path, FileSpec(lfn="f"))  # nothing known: nothing checked


def test_verify_input_size_mismatch_names_both_sizes(tmp_path: Path) -> None:
    path = _file(tmp_path, b"Wikipedia")
    with pytest.raises(PilotError) as info:
        checksum.verify_input(path, FileSpec(lfn="f", fsize=10, checksum="ad:11e60398"))
    assert info.value.code == ErrorCode.STAGEINFAILED
    assert "9" in info.value.diag and "10" in info.value.diag


@pytest.mark.parametrize(("value", "code"), [
    ("ad:00000001", ErrorCode.GETADMISMATCH),
    ("md:d41d8cd98f00b204e9800998ecf8427e", ErrorCode.GETMD5MISMATCH),
])
def test_verify_input_checksum_mismatch(tmp_path: Path, value: str, code: ErrorCode) -> None:
    with pytest.raises(PilotError) as info:
        checksum.verify_input(_file(tmp_path, b"Wikipedia"), FileSpec(lfn="f", fsize=9, checksum=value))
    assert info.value.code == code
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("algo", "code"),
                         [("adler32", ErrorCode.PUTADMISMATCH), ("md5", ErrorCode.PUTMD5MISMATCH)])
def test_verify_output_copy(tmp_path: Path, algo: str, code: ErrorCode) -> None:
    src = _file(tmp_path, b"payload output", "src")
    same = _file(tmp_path, b"payload output", "same")
    assert checksum.verify_output_copy(src, same, algo) == checksum.compute(src, algo)
    other = _file(tmp_path, b"payload outpuT", "other")
    with pytest.raises(PilotError) as info:
        checksum.verify_output_copy(src, other, algo)
    assert info.value.code == code


def test_verify_input_missing_local_copy(tmp_path: Path) -> None:
    with pytest.raises(PilotError) as info:
        checksum.verify_input(tmp_path / "gone", FileSpec(lfn="gone", fsize=1))
    assert info.value.code == ErrorCode.STAGEINFAILED and "gone" in info.value.diag
