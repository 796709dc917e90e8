"""Copy one file and print the checksum of the bytes it copied: the pilot's own ``cp`` for stage-out.

Run as a script in a child process (``python -I copychild.py SRC DST ALGO``) by
``copytools.PilotCopy``, so that a copy stuck on a hung file system can be killed like ``cp``.
The kernel copies the bytes (``copy_file_range``, as coreutils ``cp`` does) while a helper
thread checksums the source from the page cache the copy fills (``copy_in_kernel``): the
storage is read once, and the checksum (``zlib.adler32`` and ``hashlib`` release the GIL on
large buffers) runs beside the copy.  Where the kernel cannot copy between the two files, each
block is read into a buffer, checksummed by a helper thread and written (``copy_blocks``).
Measured on this project's 2-core VM (bench/bench_stage_scan.py): a copy through a user
buffer ran at 1.5x ``cp`` at best, and its ``write`` into fresh page-cache pages stalled for
seconds at times where the kernel's copy did not.
It does what ``cp --remove-destination -T`` does: a destination file or symlink is removed
first (never written through), a destination directory is an error, the new file gets the
source's permission bits less the umask.

Prints ``<checksum>`` on success.  Exit status 3: the source could not be read (the pilot's
CHECKSUMCALCFAILURE); 1: anything else (the destination could not be written); the first line
of stderr says why.  Standard library only, no hpcpilot
import: ``-I`` keeps the child's start-up to the interpreter's own.
"""

from __future__ import annotations

import hashlib
import os
import stat
import sys
import threading
import zlib
from collections.abc import Callable

_adler32 = zlib.adler32

BLOCK_SIZE = 4 << 20
KERNEL_CHUNK = 64 << 20  # bytes per copy_file_range call
EXIT_SOURCE = 3


class SourceError(OSError):
    """The source could not be read."""


class Digest:
    """adler32 or md5 fed block by block; ``hexdigest`` in the Rucio forms (8 or 32 hex digits)."""

    def __init__(self, algo: str) -> None:
        self.algo = algo
        self._adler = 1
        self._md5 = hashlib.md5(usedforsecurity=False) if algo == "md5" else None

    def update(self, block: memoryview) -> None:
        if self._md5 is not None:
            self._md5.update(block)
        else:
            self._adler = _adler32(block, self._adler)

    def hexdigest(self) -> str:
        return self._md5.hexdigest() if self._md5 is not None else f"{self._adler & 0xFFFFFFFF:08x}"


def open_destination(dst: str, mode: int) -> int:
    """A new file at ``dst`` as ``cp --remove-destination -T`` makes it: old file or link removed first."""
    try:
        if stat.S_ISDIR(os.lstat(dst).st_mode):
            raise IsADirectoryError(21, "cannot overwrite a directory", dst)
        os.unlink(dst)
    except FileNotFoundError:
        pass
    return os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode & 0o777)


def _read(fd: int, buffer: bytearray) -> int:
    try:
        return os.readv(fd, [buffer])
    except OSError as exc:
        raise SourceError(exc.errno, exc.strerror) from None


def copy_blocks(source: int, destination: int, update: Callable[[memoryview], None]) -> None:
    """Copy ``source`` to ``destination``, handing each block to ``update`` in a thread while it is written.

    Two buffers alternate: block k is read into one while the checksum of block k-1, in the
    other, has been joined before, so no buffer is refilled while it is being checksummed.
    """
    buffers = [bytearray(BLOCK_SIZE), bytearray(BLOCK_SIZE)]
    helper: threading.Thread | None = None
    index = 0
    while count := _read(source, buffers[index & 1]):
        block = memoryview(buffers[index & 1])[:count]
        if helper is not None:
            helper.join()
        helper = threading.Thread(target=update, args=(block,))
        helper.start()
        view = block
        while view:
            view = view[os.write(destination, view):]
        index += 1
    if helper is not None:
        helper.join()


def _sum_source(source: int, update: Callable[[memoryview], None], out: list[BaseException]) -> None:
    """Feed ``update`` the source from offset 0 to its end (``preadv``: the copy's file position stays)."""
    buffer = bytearray(BLOCK_SIZE)
    view = memoryview(buffer)
    offset = 0
    try:
        while count := os.preadv(source, [buffer], offset):
            update(view[:count])
            offset += count
    except OSError as exc:
        out.append(SourceError(exc.errno, exc.strerror))


def copy_in_kernel(source: int, destination: int, update: Callable[[memoryview], None]) -> bool:
    """``copy_file_range`` (the kernel copies, as ``cp`` does) while a thread checksums the source.

    The thread reads the pages the copy has just brought into the page cache, so the storage
    is read once.  False, with nothing written, where the first call fails (a kernel or file
    systems that cannot copy that way, a source that is not a file): ``copy_blocks`` then
    copies, or fails naming the side that failed.
    """
    try:
        copied = os.copy_file_range(source, destination, KERNEL_CHUNK)
    except OSError:
        return False
    if copied == 0 and os.fstat(source).st_size > 0:
        return False  # some file systems answer 0 rather than an error (coreutils cp falls back too)
    errors: list[BaseException] = []
    helper = threading.Thread(target=_sum_source, args=(source, update, errors))
    helper.start()
    try:
        while copied:
            copied = os.copy_file_range(source, destination, KERNEL_CHUNK)
    finally:
        helper.join()
    if errors:
        raise errors[0]
    return True


def copy_file(src: str, dst: str, algo: str) -> str:
    """Copy ``src`` to ``dst``; the checksum of what was read (and written)."""
    digest = Digest(algo)
    try:
        source = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise SourceError(exc.errno, exc.strerror) from None
    try:
        destination = open_destination(dst, os.fstat(source).st_mode)
        try:
            if not copy_in_kernel(source, destination, digest.update):
                copy_blocks(source, destination, digest.update)
        finally:
            os.close(destination)
    finally:
        os.close(source)
    return digest.hexdigest()


def main(argv: list[str]) -> int:
    """SRC DST ALGO: copy, print the checksum; the exit status says which side failed (module docstring)."""
    src, dst, algo = argv
    try:
        print(copy_file(src, dst, algo), flush=True)
    except SourceError as exc:
        print(f"cannot read {src}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_SOURCE
    except OSError as exc:
        print(f"cannot write {dst}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
