"""Copy tools and the stage-in / stage-out of a job's files between site directories and the workdir.

A copy tool moves one file; ``stage_in``/``stage_out`` add the PanDA rules around it: plain
LFNs only, destinations that cannot leave their directory, a per-file timeout of
``timeout_base + size / 1 MB/s`` capped at ``timeout_max`` (pilot3's rule), checksum
verification, and the PanDA error code of each failure.

``cp`` and ``mv`` run the coreutils commands as subprocesses in their own process group rather
than copying in a Python thread: a thread blocked in ``read()`` on a hung file system or a FIFO
can never be stopped, while a process group can be killed on timeout, so the caller gets
control back at the deadline (plus a few seconds' reaping at most, even if the copy is stuck
in uninterruptible I/O).  Site tools plug in with ``register_copytool``; they signal a timeout
by raising ``TransferTimeout`` (or ``TimeoutError``) and any other failure by raising
``TransferError`` (or ``OSError``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import stat
import subprocess
import sys
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from hpcpilot.config import StageConfig
from hpcpilot.errors import ConfigError, ErrorCode, PilotError
from hpcpilot.records import FileSpec
from hpcpilot.stageio import checksum
from hpcpilot.stageio.copychild import EXIT_SOURCE
from hpcpilot.stageio.files import check_lfn, check_not_reserved, safe_join, safe_unzip, show_name

log = logging.getLogger(__name__)

REAP_TIMEOUT = 5.0  # how long to wait for a killed copy to go away before giving up on it


class TransferError(Exception):
    """A copy failed; the message is one line naming the file and the reason."""

    returncode: int | None = None  # the copy command's exit status, where a command failed


class TransferTimeout(TransferError):
    """A copy did not finish within its timeout and was stopped."""


@runtime_checkable
class CopyTool(Protocol):
    """One way of moving a file from ``src`` to ``dst``; must return or raise within ``timeout``."""

    name: str

    def transfer(self, src: Path, dst: Path, timeout: float) -> None: ...


def _first_line(text: bytes) -> str:
    lines = text.decode(errors="replace").strip().splitlines()
    return lines[0][:200] if lines else ""


def run_command(argv: list[str], timeout: float, capture: bool = False) -> bytes:
    """Run a copy command in its own process group; kill the group on timeout; its stdout if ``capture``.

    Raises TransferTimeout or TransferError (with ``returncode`` set) with the command's first stderr line.
    """
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
                                stdout=subprocess.PIPE if capture else subprocess.DEVNULL)
    except OSError as exc:
        raise TransferError(f"cannot run {argv[0]}: {exc.strerror or exc}") from None
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        raise TransferTimeout(f"{argv[0]} did not finish within {timeout:.0f} s") from None
    if proc.returncode != 0:
        error = TransferError(f"{argv[0]} exited with {proc.returncode}: {_first_line(err)}")
        error.returncode = proc.returncode
        raise error
    return out or b""


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the copy's process group and reap it, waiting at most REAP_TIMEOUT."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    try:
        proc.communicate(timeout=REAP_TIMEOUT)
    except subprocess.TimeoutExpired:
        log.warning("copy process %d did not die after SIGKILL (stuck in I/O?); leaving it", proc.pid)


class CommandTool:
    """A copy tool that runs ``argv_prefix + ["--", src, dst]``."""

    def __init__(self, name: str, argv_prefix: Sequence[str]) -> None:
        self.name = name
        self.argv_prefix = list(argv_prefix)

    def transfer(self, src: Path, dst: Path, timeout: float) -> None:
        run_command([*self.argv_prefix, "--", os.fspath(src), os.fspath(dst)], timeout)


class SymlinkTool:
    """Link ``dst`` to the absolute ``src`` (pilot3's default for pre-placed inputs); instant."""

    name = "symlink"

    def transfer(self, src: Path, dst: Path, timeout: float) -> None:
        try:
            if dst.is_symlink() or dst.is_file():
                dst.unlink()
            os.symlink(Path(src).absolute(), dst)
        except OSError as exc:
            raise TransferError(f"cannot link {show_name(str(dst))}: {exc.strerror or exc}") from None


class SourceUnreadable(TransferError):
    """The pilot's own copy could not read the source (what a checksum of it would have hit first)."""


class PilotCopy(CommandTool):
    """``cp`` where the pilot moves the bytes itself: ``transfer`` runs coreutils ``cp``, and
    ``transfer_checksummed`` (stage-out) runs ``copychild.py``, which checksums while it copies.

    Both run in a child process of their own with the same timeout and kill rules, so the
    reasons in the module docstring hold for both.  Files under ``one_read_min_bytes`` are
    staged out like any other tool's (checksum, ``cp``, checksum): the interpreter's start
    (about 25 ms here) costs more than the second read of the source saves (about 0.45 ms a
    MiB with zlib's adler32, bench/bench_stage_scan.py).
    """

    CHILD = os.fspath(Path(__file__).with_name("copychild.py"))
    one_read_min_bytes = 64 << 20

    def reads_once(self, size: int) -> bool:
        """Whether a file of ``size`` bytes goes through ``transfer_checksummed`` (needs an interpreter path)."""
        return size >= self.one_read_min_bytes and bool(sys.executable)

    def transfer_checksummed(self, src: Path, dst: Path, timeout: float, algo: str) -> str:
        """Copy like ``cp --remove-destination -T``, reading ``src`` once; the checksum of the bytes copied."""
        argv = [sys.executable, "-I", self.CHILD, os.fspath(src), os.fspath(dst), algo]
        try:
            out = run_command(argv, timeout, capture=True)
        except TransferTimeout:
            raise TransferTimeout(f"{self.name} did not finish within {timeout:.0f} s") from None
        except TransferError as exc:
            reason = str(exc).split(": ", 1)[-1]  # the child's own line, without the interpreter's path
            if exc.returncode == EXIT_SOURCE:
                raise SourceUnreadable(reason) from None
            raise TransferError(f"{self.name} exited with {exc.returncode}: {reason}") from None
        return out.decode().strip()


# --remove-destination: never write through a symlink at dst; -T: never copy *into* a directory dst.
_REGISTRY: dict[str, CopyTool] = {
    "cp": PilotCopy("cp", ["cp", "--remove-destination", "-T"]),
    "mv": CommandTool("mv", ["mv", "-f", "-T"]),
    "symlink": SymlinkTool(),
}


def register_copytool(tool: CopyTool) -> None:
    """Add or replace a copy tool under ``tool.name`` (for site plug-ins)."""
    if not isinstance(tool, CopyTool) or not tool.name:
        raise ValueError(f"not a copy tool: {tool!r}")
    _REGISTRY[tool.name] = tool


def get_copytool(name: str) -> CopyTool:
    """The copy tool called ``name``; an unknown name is a ConfigError (a site configuration mistake)."""
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise ConfigError(f"unknown copy tool {name!r} (known: {known})") from None


def transfer_timeout(size_bytes: int, cfg: StageConfig) -> float:
    """Seconds allowed for one file: base + 1 s per MB, capped (pilot3's get_timeout)."""
    return min(cfg.timeout_base + size_bytes / 1e6, cfg.timeout_max)


def _tool(name: str, code: ErrorCode) -> CopyTool:
    try:
        return get_copytool(name)
    except ConfigError as exc:
        raise PilotError(code, str(exc)) from None


def _transfer(tool: CopyTool, src: Path, dst: Path, timeout: float,
              codes: tuple[ErrorCode, ErrorCode]) -> None:
    """Run one transfer; map a timeout to codes[1], any other failure to codes[0], removing a partial dst."""
    try:
        tool.transfer(src, dst, timeout)
    except (TransferError, OSError) as exc:  # TimeoutError is an OSError
        raise _failure(tool.name, src, dst, exc, codes) from None


def _failure(name: str, src: Path, dst: Path, exc: BaseException, codes: tuple[ErrorCode, ErrorCode]) -> PilotError:
    """The PilotError of a failed transfer (codes[1] for a timeout, else codes[0]); the partial dst removed."""
    _discard(dst)
    if isinstance(exc, (TransferTimeout, TimeoutError)):
        return PilotError(codes[1], f"{name} of {show_name(src.name)} timed out: {exc}")
    return PilotError(codes[0], f"{name} of {show_name(src.name)} failed: {exc}")


def _copy_checksummed(tool: PilotCopy, src: Path, dst: Path, timeout: float, algo: str,
                      codes: tuple[ErrorCode, ErrorCode]) -> str:
    """``_transfer`` through ``PilotCopy.transfer_checksummed``; an unreadable source is CHECKSUMCALCFAILURE,
    as when the checksum was read before the copy."""
    try:
        return tool.transfer_checksummed(src, dst, timeout, algo)
    except SourceUnreadable as exc:
        _discard(dst)
        raise PilotError(ErrorCode.CHECKSUMCALCFAILURE,
                         f"cannot compute {algo} of {show_name(str(src))}: {exc}") from None
    except (TransferError, OSError) as exc:
        raise _failure(tool.name, src, dst, exc, codes) from None


def _discard(path: Path) -> None:
    try:
        if path.is_symlink() or path.is_file():
            path.unlink()
    except OSError as exc:
        log.warning("cannot remove partial copy %s: %s", show_name(str(path)), exc.strerror)


def _stage_in_one(fspec: FileSpec, input_dir: Path, workdir: Path, tool: CopyTool, cfg: StageConfig,
                  reserved: Collection[str]) -> Path:
    check_lfn(fspec.lfn)
    check_not_reserved(fspec.lfn, reserved, "input")
    src = Path(input_dir) / fspec.lfn
    try:
        st = src.stat()
    except OSError:
        raise PilotError(ErrorCode.STAGEINFAILED,
                         f"input {show_name(fspec.lfn)} not found in {show_name(str(input_dir))}") from None
    if stat.S_ISDIR(st.st_mode):
        raise PilotError(ErrorCode.STAGEINFAILED, f"input {show_name(fspec.lfn)} is a directory")
    dst = safe_join(workdir, fspec.lfn, code=ErrorCode.STAGEINFAILED)
    size = fspec.fsize if fspec.fsize is not None else st.st_size
    _transfer(tool, src, dst, transfer_timeout(size, cfg),
              (ErrorCode.STAGEINFAILED, ErrorCode.STAGEINTIMEOUT))
    checksum.verify_input(dst, fspec)
    if fspec.lfn.endswith(".zip"):
        safe_unzip(dst, workdir, reserved)
    return dst


def stage_in(files: Sequence[FileSpec], input_dir: Path, workdir: Path, cfg: StageConfig,
             reserved: Collection[str] = ()) -> list[Path]:
    """Copy each input from ``input_dir`` into ``workdir`` and verify it; return the local paths.

    The result is aligned with ``files``.  Zip inputs are also unpacked into ``workdir``
    (members are not listed).  Neither an input nor a zip member may replace one of the
    ``reserved`` pilot files (names or patterns, see ``files``).  The first failure raises
    PilotError: STAGEINFAILED (missing, bad size), STAGEINTIMEOUT, GET*MISMATCH, LFNTOOLONG or
    BADOUTPUTFILENAME (not a plain name, or a pilot file).
    """
    tool = _tool(cfg.copytool_in, ErrorCode.STAGEINFAILED)
    return [_stage_in_one(f, input_dir, workdir, tool, cfg, reserved) for f in files]


def _local_output(local: Path, lfn: str) -> int:
    """The size of a local output that must be a regular file (not a symlink out of the workdir)."""
    try:
        st = os.lstat(local)
    except OSError:
        raise PilotError(ErrorCode.MISSINGOUTPUTFILE, f"output {show_name(lfn)} does not exist") from None
    if not stat.S_ISREG(st.st_mode):
        raise PilotError(ErrorCode.STAGEOUTFAILED, f"output {show_name(lfn)} is not a regular file")
    if st.st_size == 0:
        raise PilotError(ErrorCode.ZEROFILESIZE, f"output {show_name(lfn)} is empty")
    return st.st_size


def _stage_out_one(local: Path, lfn: str, output_dir: Path, tool: CopyTool,
                   cfg: StageConfig) -> dict[str, Any]:
    """Copy and verify one output; the source is read once where the pilot moves the bytes (``PilotCopy``)."""
    check_lfn(lfn)
    size = _local_output(local, lfn)
    algo = checksum.algorithm(cfg.checksum_type)
    codes = (ErrorCode.STAGEOUTFAILED, ErrorCode.STAGEOUTTIMEOUT)
    if isinstance(tool, PilotCopy) and tool.reads_once(size):
        dst = safe_join(output_dir, lfn, code=ErrorCode.STAGEOUTFAILED)
        value = _copy_checksummed(tool, Path(local), dst, transfer_timeout(size, cfg), algo, codes)
    else:
        value = checksum.compute(local, algo)
        dst = safe_join(output_dir, lfn, code=ErrorCode.STAGEOUTFAILED)
        _transfer(tool, Path(local), dst, transfer_timeout(size, cfg), codes)
    try:
        _verify_copy(dst, lfn, size, algo, value)
    except PilotError:
        if tool.name != "mv":  # after mv the destination is the only copy left: keep it
            _discard(dst)
        raise
    key = "adler32" if algo == checksum.ADLER32 else "md5sum"
    return {"fsize": size, key: value, "surl": os.fspath(dst)}


def _verify_copy(dst: Path, lfn: str, size: int, algo: str, value: str) -> None:
    """Size, then checksum, of the destination against the source's (read before the transfer)."""
    try:
        remote_size = dst.stat().st_size
    except OSError as exc:
        raise PilotError(ErrorCode.STAGEOUTFAILED,
                         f"output {show_name(lfn)} missing after the copy: {exc.strerror}") from None
    if remote_size != size:
        raise PilotError(ErrorCode.STAGEOUTFAILED,
                         f"output {show_name(lfn)} has {remote_size} bytes after the copy, source had {size}")
    checksum.verify_output(dst, algo, value)


def stage_out(files: Sequence[tuple[Path, str]], output_dir: Path,
              cfg: StageConfig) -> dict[str, dict[str, Any]]:
    """Copy each (local path, LFN) to ``output_dir/LFN``, verify it, and report it per LFN.

    Where the pilot moves the bytes itself (the built-in ``cp``, ``PilotCopy``, files of 64 MiB
    and more) the checksum is computed while copying, from the one read of the source, and
    re-computed at the destination once the copy is closed.  With any other tool (``mv``,
    ``symlink``, a site's plug-in, or a site tool registered as ``cp``) the pilot cannot see the
    bytes: the source is checksummed before the transfer (so that ``mv`` works too) and the
    destination after it, two reads.  The checks, error codes and timeouts are the same either way.
    Returns ``{lfn: {"fsize", "adler32" | "md5sum", "surl"}}``.  The first failure raises
    PilotError: MISSINGOUTPUTFILE, ZEROFILESIZE, STAGEOUTFAILED, STAGEOUTTIMEOUT, PUT*MISMATCH,
    CHECKSUMCALCFAILURE (unreadable source), LFNTOOLONG or BADOUTPUTFILENAME; a partial
    destination file is removed.
    """
    tool = _tool(cfg.copytool_out, ErrorCode.STAGEOUTFAILED)
    return {lfn: _stage_out_one(Path(local), lfn, Path(output_dir), tool, cfg) for local, lfn in files}
