"""File checksums (adler32, md5) and their verification after a transfer.

PanDA and Rucio identify file content by adler32 (default) or md5.  The catalog writes them
as ``ad:<hex>``, ``md:<hex>`` or, for md5 files stored by the server itself, ``md5:<hex>``;
bare values are told apart by length.  Pilot3 labels every unknown prefix as adler32, which
makes an md5 file fail with a bogus mismatch; here every accepted form is parsed explicitly
and anything else is an UNKNOWNCHECKSUMTYPE error naming the value.

Files are read in 4 MiB blocks into one reused buffer with plain reads: no mmap (which fails
on empty and read-only files, and whose page faults cost as much as the read here), and
bounded memory for multi-GB inputs.  adler32 comes from ``adler``: several parts of a large
file at a time.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

from hpcpilot.errors import ErrorCode, PilotError
from hpcpilot.records import FileSpec
from hpcpilot.stageio.adler import file_adler32

BLOCK_SIZE = 4 << 20
ADLER32 = "adler32"
MD5 = "md5"

# Every spelling pilot3 accepts for an algorithm name, mapped to ours.
_ALGO_NAMES = {"adler32": ADLER32, "adler": ADLER32, "ad32": ADLER32, "ad": ADLER32,
               "md5": MD5, "md5sum": MD5, "md": MD5}
_HEX_LENGTH = {ADLER32: 8, MD5: 32}
_PREFIXES = {"ad": ADLER32, "md": MD5, "md5": MD5}
_HEX = re.compile(r"[0-9a-f]+")


def _show(value: object, limit: int = 80) -> str:
    """A value for a one-line diagnostic: repr (so control characters are visible), truncated."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _read_blocks(path: str | os.PathLike[str]) -> Iterator[memoryview]:
    """The file's blocks, each a view of the same buffer: use one before asking for the next."""
    buffer = bytearray(BLOCK_SIZE)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as handle:
        while count := handle.readinto(buffer):
            yield view[:count]


def adler32(path: str | os.PathLike[str]) -> str:
    """The adler32 of a file as 8 lower-case hex digits, zero-padded (the Rucio form).

    A large file is summed in parts on the usable cores (``adler.file_adler32``).
    """
    return f"{file_adler32(path) & 0xFFFFFFFF:08x}"


def md5(path: str | os.PathLike[str]) -> str:
    """The md5 of a file as 32 lower-case hex digits."""
    digest = hashlib.md5(usedforsecurity=False)
    for block in _read_blocks(path):
        digest.update(block)
    return digest.hexdigest()


def algorithm(name: str) -> str:
    """Normalise an algorithm name (``adler32``, ``ad``, ``md5sum``, ...) to ``adler32`` or ``md5``."""
    algo = _ALGO_NAMES.get(str(name).strip().lower())
    if algo is None:
        raise PilotError(ErrorCode.UNKNOWNCHECKSUMTYPE, f"unknown checksum algorithm {_show(name)}")
    return algo


def parse_checksum(text: str) -> tuple[str, str]:
    """Split a catalog checksum into (algorithm, lower-case hex value).

    ``ad:`` values shorter than 8 digits are zero-padded (some producers drop leading zeros);
    bare values must be exactly 8 (adler32) or 32 (md5) hex digits.
    """
    raw = str(text).strip()
    prefix, sep, value = raw.partition(":")
    value = value.strip().lower() if sep else prefix.strip().lower()
    if sep:
        algo = _PREFIXES.get(prefix.strip().lower())
        if algo == ADLER32 and _HEX.fullmatch(value) and len(value) <= 8:
            value = value.zfill(8)
    else:
        algo = next((a for a, n in _HEX_LENGTH.items() if n == len(value)), None)
    if algo is None or not _HEX.fullmatch(value) or len(value) != _HEX_LENGTH[algo]:
        raise PilotError(ErrorCode.UNKNOWNCHECKSUMTYPE, f"unrecognised checksum {_show(text)}")
    return algo, value


def compute(path: str | os.PathLike[str], algo: str) -> str:
    """The checksum of ``path`` with ``algo``; a read failure is CHECKSUMCALCFAILURE naming the file."""
    algo = algorithm(algo)
    try:
        return adler32(path) if algo == ADLER32 else md5(path)
    except OSError as exc:
        raise PilotError(ErrorCode.CHECKSUMCALCFAILURE,
                         f"cannot compute {algo} of {_show(str(path))}: {exc.strerror or exc}") from None


def _mismatch(kind: str, algo: str) -> ErrorCode:
    codes = {("get", ADLER32): ErrorCode.GETADMISMATCH, ("get", MD5): ErrorCode.GETMD5MISMATCH,
             ("put", ADLER32): ErrorCode.PUTADMISMATCH, ("put", MD5): ErrorCode.PUTMD5MISMATCH}
    return codes[(kind, algo)]


def verify_input(path: str | os.PathLike[str], fspec: FileSpec) -> None:
    """Check a staged-in file against the catalog size and checksum of its FileSpec.

    A missing catalog size or checksum is not checked (the server does not always send both).
    The size is compared first: it is free and catches truncated copies without reading the file.
    """
    path = Path(path)
    if fspec.fsize is not None:
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise PilotError(ErrorCode.STAGEINFAILED,
                             f"staged input {_show(fspec.lfn)} unreadable: {exc.strerror or exc}") from None
        if size != fspec.fsize:
            raise PilotError(ErrorCode.STAGEINFAILED,
                             f"size of input {_show(fspec.lfn)} is {size} bytes, catalog says {fspec.fsize}")
    if not fspec.checksum:
        return
    algo, expected = parse_checksum(fspec.checksum)
    local = compute(path, algo)
    if local != expected:
        raise PilotError(_mismatch("get", algo),
                         f"{algo} of input {_show(fspec.lfn)} is {local}, catalog says {expected}")


def verify_output(dst: str | os.PathLike[str], algo: str, expected: str) -> None:
    """Check a copied output against the checksum computed before the copy (PUT*MISMATCH)."""
    algo = algorithm(algo)
    remote = compute(dst, algo)
    if remote != expected.lower():
        raise PilotError(_mismatch("put", algo),
                         f"{algo} of {_show(str(dst))} is {remote} after the copy, source had {expected}")


def verify_output_copy(src: str | os.PathLike[str], dst: str | os.PathLike[str], algo: str) -> str:
    """Compare source and destination checksums of an output copy; return the value on success."""
    expected = compute(src, algo)
    verify_output(dst, algo, expected)
    return expected
