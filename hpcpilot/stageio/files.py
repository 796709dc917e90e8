"""File-name safety for staging: plain LFNs, joins that stay inside a directory, safe unzip, log tarball.

LFNs come from the job definition, i.e. from the network, and zip members from input files,
so both are hostile input: a name like ``../../etc/x`` or an absolute zip member must never
make the pilot write outside the job's workdir or the site's output directory.

Plain-name rule (``check_lfn``), decided here and used for inputs and outputs alike: a name
is refused when it is empty, ``.`` or ``..``, contains ``/``, ``\\``, NUL or any other
control character (a newline would forge log and ``output.list`` lines), or starts with
``-`` (it would be read as an option by site copy commands that do not use ``--``); one longer
than ``MAX_LFN_LENGTH`` characters is refused with LFNTOOLONG.  ``hpcpilot.records`` applies
the rule to a job definition's file names as it parses them.

Pilot files (decided here, for inputs and zip members alike): the job life passes the names it
writes or reads in the job workdir itself (``job_setup.sh``, ``pandaJob.json``, the payload's
stdout/stderr, the memory monitor files, ``jobReport.json``, ...) as ``reserved``.  An input or a
zip member whose first path component matches one is refused with BADOUTPUTFILENAME (1371)
naming it, before anything is written: unpacking zips into a subdirectory instead would move
the files payloads expect in their workdir, and a zip that clashes with the pilot is a broken
or hostile input either way.  ``reserved`` entries are exact names or ``fnmatch`` patterns.
"""

from __future__ import annotations

import logging
import os
import stat
import tarfile
import zipfile
from collections.abc import Collection, Iterable
from fnmatch import fnmatchcase
from pathlib import Path, PurePosixPath

from hpcpilot.errors import ErrorCode, PilotError

log = logging.getLogger(__name__)

MAX_LFN_LENGTH = 255  # part of the plain-name rule: a longer LFN is refused with LFNTOOLONG
_ZIP_CHUNK = 1 << 20


def show_name(name: object, limit: int = 80) -> str:
    """A hostile name for a one-line diagnostic: repr (control characters escaped), truncated."""
    text = repr(name)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _bad_char(name: str) -> bool:
    """A separator, or a character that is not printable (controls, U+2028, U+0085, zero-width ones),
    which would break or hide a diagnostic or log line that quotes the name."""
    return any(ch in "/\\" or not ch.isprintable() for ch in name)


def check_lfn(lfn: str) -> None:
    """Refuse an LFN that is too long (LFNTOOLONG) or not a plain file name (BADOUTPUTFILENAME)."""
    if not isinstance(lfn, str):
        raise PilotError(ErrorCode.BADOUTPUTFILENAME, f"file name is not a string: {show_name(lfn)}")
    if len(lfn) > MAX_LFN_LENGTH:
        raise PilotError(ErrorCode.LFNTOOLONG,
                         f"file name has {len(lfn)} characters (max {MAX_LFN_LENGTH}): {show_name(lfn)}")
    if lfn in ("", ".", "..") or lfn.startswith("-") or _bad_char(lfn):
        raise PilotError(ErrorCode.BADOUTPUTFILENAME, f"not a plain file name: {show_name(lfn)}")


def check_not_reserved(name: str, reserved: Collection[str], what: str) -> None:
    """Refuse (BADOUTPUTFILENAME) a path whose first component is one of the pilot's own files."""
    parts = PurePosixPath(name).parts
    first = parts[0] if parts else ""
    clash = next((pattern for pattern in reserved if fnmatchcase(first, pattern)), None)
    if clash is not None:
        raise PilotError(ErrorCode.BADOUTPUTFILENAME,
                         f"{what} {show_name(name)} would replace the pilot's own {show_name(first)}")


def safe_join(workdir: str | os.PathLike[str], name: str,
              code: ErrorCode = ErrorCode.BADOUTPUTFILENAME) -> Path:
    """``workdir/name``, refused with ``code`` unless it resolves strictly inside ``workdir``.

    Resolution follows symlinks that already exist, so a planted ``link -> /etc`` does not let
    ``link/passwd`` through.  ``name`` may have sub-directories but no NUL and no absolute path.
    """
    root = Path(workdir).resolve()
    if "\0" in str(name) or not str(name) or os.path.isabs(name):
        raise PilotError(code, f"path {show_name(name)} is not relative to {show_name(str(root))}")
    target = (root / name).resolve()
    if target == root or not target.is_relative_to(root):
        raise PilotError(code, f"path {show_name(name)} leads outside {show_name(str(root))}")
    return root / name


def _is_symlink_member(info: zipfile.ZipInfo) -> bool:
    mode = info.external_attr >> 16
    return info.create_system == 3 and stat.S_ISLNK(mode)


def _check_member(info: zipfile.ZipInfo, dest: Path, zip_name: str, reserved: Collection[str] = ()) -> Path:
    """The extraction target of one zip member, or STAGEINFAILED (BADOUTPUTFILENAME for a pilot file) naming it."""
    name = info.filename
    parts = PurePosixPath(name).parts
    bad = (not name or name.startswith("/") or "\\" in name or "\0" in name or ".." in parts
           or (len(name) > 1 and name[1] == ":") or _is_symlink_member(info))
    if bad:
        raise PilotError(ErrorCode.STAGEINFAILED,
                         f"zip {show_name(zip_name)} has unsafe member {show_name(name)}")
    check_not_reserved(name, reserved, f"zip {show_name(os.path.basename(zip_name))} member")
    return safe_join(dest, name.rstrip("/"), code=ErrorCode.STAGEINFAILED)


def _extract_file(archive: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path) -> None:
    """Write one member; O_NOFOLLOW so an existing symlink (a symlinked input) is never written through."""
    target.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
    try:
        fd = os.open(target, flags, 0o644)
    except OSError as exc:
        raise PilotError(ErrorCode.STAGEINFAILED,
                         f"cannot unpack member {show_name(info.filename)}: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as out, archive.open(info) as member:
        while chunk := member.read(_ZIP_CHUNK):
            out.write(chunk)


def safe_unzip(zip_path: str | os.PathLike[str], dest: str | os.PathLike[str],
               reserved: Collection[str] = ()) -> list[Path]:
    """Unpack a zip input into ``dest``; return the unpacked files.

    Every member is checked before anything is written (absolute names, ``..``, backslashes,
    drive letters, symlink members are refused; so is a member that would replace one of the
    ``reserved`` pilot files, see the module docstring), so a hostile zip leaves nothing behind.
    Parent directories are re-checked while unpacking through ``safe_join``.
    """
    dest = Path(dest)
    zip_name = os.fspath(zip_path)
    try:
        archive = zipfile.ZipFile(zip_path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise PilotError(ErrorCode.STAGEINFAILED, f"cannot open zip {show_name(zip_name)}: {exc}") from None
    written: list[Path] = []
    with archive:
        infos = archive.infolist()
        for info in infos:
            _check_member(info, dest, zip_name, reserved)
        for info in infos:
            target = _check_member(info, dest, zip_name, reserved)  # again: earlier members made directories
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            try:
                _extract_file(archive, info, target)
            except (zipfile.BadZipFile, OSError) as exc:
                raise PilotError(ErrorCode.STAGEINFAILED,
                                 f"cannot unpack member {show_name(info.filename)}: {exc}") from None
            written.append(target)
    return written


def make_log_tarball(workdir: str | os.PathLike[str], tar_path: str | os.PathLike[str],
                     exclude: Iterable[str] = (), arcname: str | None = None) -> None:
    """Write a tar.gz of ``workdir`` to ``tar_path``, symlinks stored as links (never followed).

    ``exclude`` holds paths relative to ``workdir`` (e.g. staged-in inputs).  The tarball itself
    is always left out, and it is written to ``<tar_path>.part`` then renamed, so a reader never
    sees a half-written log.  Entries that vanish or cannot be read (a killed payload's
    leftovers) are skipped with a warning: a partial log is better than none.
    """
    root = Path(workdir).resolve()
    final = Path(tar_path).absolute()
    part = final.with_name(final.name + ".part")
    skip_abs = {final, part}
    skip = {PurePosixPath(e).as_posix().strip("/") for e in exclude}
    top = arcname if arcname is not None else root.name
    with tarfile.open(part, "w:gz") as tar:
        tar.add(root, arcname=top, recursive=False)
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            here = Path(dirpath)
            for name in sorted(dirnames) + sorted(filenames):
                path = here / name
                rel = path.relative_to(root).as_posix()
                if path in skip_abs or rel in skip:
                    if name in dirnames:
                        dirnames.remove(name)
                    continue
                try:
                    tar.add(path, arcname=f"{top}/{rel}", recursive=False)
                except OSError as exc:
                    log.warning("log tarball: skipped %s: %s", show_name(rel), exc.strerror or exc)
            dirnames.sort()
    os.replace(part, final)
