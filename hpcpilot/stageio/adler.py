"""adler32 of a file, several parts at a time: a large file's checksum on more than one core.

adler32 runs at about 3.4 GB/s in zlib 1.2.13 (CPython's), so verifying a 1 GiB stage-out
costs more than the copy itself (``cp`` copies it in the kernel in about 0.35-0.45 s here).
adler32 of a concatenation follows from the parts' values and the second part's length
(``combine``), so a file can be cut into ``parts`` contiguous ranges, each read and summed by a
thread of its own (``zlib.adler32`` and ``os.preadv`` release the GIL on large buffers), and
the values combined; the result is the file's adler32, the same number a single pass gives.
The last part reads to the end of the file, as a single pass would if the file grew.
"""

from __future__ import annotations

import os
import threading
import zlib

adler32_update = zlib.adler32

MOD = 65521  # the largest prime under 2**16: adler32's modulus
BLOCK_SIZE = 4 << 20
PARALLEL_MIN_BYTES = 64 << 20  # below this a thread's start is not worth it


def combine(first: int, second: int, second_length: int) -> int:
    """adler32 of X+Y from adler32(X), adler32(Y) and len(Y).

    With A = 1 + sum of the bytes and B = the sum of A after each byte (both mod 65521):
    A(XY) = A(X) + A(Y) - 1, and B(XY) = B(X) + B(Y) + len(Y) * (A(X) - 1).
    """
    a_first, b_first = first & 0xFFFF, first >> 16
    a_second, b_second = second & 0xFFFF, second >> 16
    a_total = (a_first + a_second - 1) % MOD
    b_total = (b_first + b_second + second_length * (a_first - 1)) % MOD
    return (b_total << 16) | a_total


def _part(fd: int, start: int, stop: int | None, out: list[object], index: int) -> None:
    """adler32 and length of the bytes from ``start`` to ``stop`` (None: the end of the file) into out[index]."""
    buffer = bytearray(BLOCK_SIZE)
    view = memoryview(buffer)
    value, offset = 1, start
    try:
        while stop is None or offset < stop:
            want = BLOCK_SIZE if stop is None else min(BLOCK_SIZE, stop - offset)
            count = os.preadv(fd, [view[:want]], offset)
            if count == 0:
                break
            value = adler32_update(view[:count], value)
            offset += count
        out[index] = (value, offset - start)
    except OSError as exc:
        out[index] = exc


def file_adler32(path: str | os.PathLike[str], parts: int | None = None) -> int:
    """The adler32 of the file at ``path`` as an int, in ``parts`` threads (default: the usable cores, 4 at most).

    Raises the OSError of the first part that could not be read.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        if parts is None:
            parts = min(4, len(os.sched_getaffinity(0))) if size >= PARALLEL_MIN_BYTES else 1
        cuts = [size * index // parts for index in range(parts)]
        out: list[object] = [None] * parts
        threads = [threading.Thread(target=_part, args=(fd, cut, cuts[i + 1] if i + 1 < parts else None, out, i))
                   for i, cut in enumerate(cuts)]
        for thread in threads[1:]:
            thread.start()
        threads[0].run()  # the first part on this thread
        for thread in threads[1:]:
            thread.join()
    finally:
        os.close(fd)
    return _combine_parts(out)


def _combine_parts(out: list[object]) -> int:
    value = 1
    for result in out:
        if isinstance(result, OSError):
            raise result
        part_value, length = result  # type: ignore[misc]
        value = combine(value, part_value, length)
    return value
