"""Reserve a file's disk blocks ahead of its writer, without changing the file (Linux ``fallocate(2)`` with
``FALLOC_FL_KEEP_SIZE``): the blocks are allocated past the end, the size and the bytes stay as they are, so
a writer (SQLite, appending to its write-ahead log) never sees a difference, and no write of ours can race
one of its writes.

Why: on ext4 a write that appends past the blocks a file has needs them allocated, and while another
thread's fsync of that file runs the allocation waits for it (measured under the benchmark's load: the
slowest commit during a checkpoint took 7-16 ms, against 0.3 ms at the median; with the blocks reserved,
2-5 ms).

Python's ``os.posix_fallocate`` cannot be used: it has no KEEP_SIZE (it would grow the file), and where the
filesystem cannot allocate ahead glibc falls back to writing zeros into the file, racing its writer.
"""

from __future__ import annotations

import ctypes
import errno
import os
import sys
from collections.abc import Callable
from typing import Final

FALLOC_FL_KEEP_SIZE: Final = 0x01  # linux/falloc.h
# What a filesystem (or system) that cannot reserve blocks answers: asking again would not help.
UNSUPPORTED: Final = frozenset({errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EINVAL})

_Fallocate = Callable[[int, int, int, int], int]


def _load() -> _Fallocate | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        func = getattr(libc, "fallocate64", None) or libc.fallocate  # the 64-bit offsets on 32-bit systems too
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    func.restype = ctypes.c_int
    return func


_fallocate: _Fallocate | None = _load()


def supported() -> bool:
    return _fallocate is not None


def reserve(path: str | os.PathLike[str], start: int, length: int) -> bool:
    """Allocate the blocks of ``path`` for ``[start, start + length)`` and keep its size and its bytes
    (blocks already allocated, or written meanwhile, are left as they are). False if the file is missing;
    OSError (EOPNOTSUPP, ENOSYS ...) if this system or filesystem cannot: the caller stops asking. The file
    is opened for this call only (SQLite keeps no lock on a write-ahead log's own file, only on the
    database and the -shm file: closing another descriptor of it releases nothing of SQLite's)."""
    if _fallocate is None:
        raise OSError(errno.ENOSYS, "fallocate is not available on this system")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)  # never O_CREAT: SQLite owns the file's existence
    except FileNotFoundError:
        return False
    try:
        if _fallocate(fd, FALLOC_FL_KEEP_SIZE, start, length) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
    finally:
        os.close(fd)
    return True
