"""Reserve a file's disk blocks ahead of its writer, without changing the file (Linux ``fallocate(2)`` with
``FALLOC_FL_KEEP_SIZE``): the blocks are allocated past the end, the size and the bytes stay as they are, so
a writer (SQLite, appending to its write-ahead log) never sees a difference, and no write of ours can race
one of its writes (the call only holds the file's lock, as a write does, for the allocation).

Why: on ext4 a write that appends past the blocks a file has needs them allocated (delayed allocation), and
while another thread's fsync of that file runs the allocation waits for it (measured under the benchmark's
load: the slowest commit during a checkpoint took 7-16 ms, against 0.3 ms at the median; with the blocks
reserved, 2-5 ms). Only filesystems that allocate that way are asked (``useful``): ext4, where it was
measured, and XFS. Elsewhere it is no gain, or a cost: tmpfs would hold the pages in memory, and ZFS
answers yes and reserves nothing.

Python's ``os.posix_fallocate`` cannot be used: it has no KEEP_SIZE (it would grow the file), and where the
filesystem cannot allocate ahead glibc falls back to writing zeros into the file, racing its writer.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable
from typing import Any, Final

FALLOC_FL_KEEP_SIZE: Final = 0x01  # linux/falloc.h
# statfs(2) f_type of the filesystems whose appends wait for block allocation during an fsync.
USEFUL_FILESYSTEMS: Final = frozenset({0xEF53, 0x58465342})  # ext2/3/4, XFS
# What a filesystem (or system) that cannot reserve blocks answers: asking again would not help.
UNSUPPORTED: Final = frozenset({errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS})
# Never take the last of a disk: a reservation is skipped unless this much stays free after it (a full disk
# is SQLite's to report, and a reservation would bring it on sooner).
KEEP_FREE: Final = 1 << 30

_Fallocate = Callable[[int, int, int, int], int]


def _load() -> tuple[Any, _Fallocate | None, Callable[[bytes, Any], int] | None]:
    if not sys.platform.startswith("linux"):
        return None, None, None
    try:
        import ctypes  # optional in a CPython build: without it, nothing is reserved
    except ImportError:
        return None, None, None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fallocate = getattr(libc, "fallocate64", None) or libc.fallocate  # 64-bit offsets on 32-bit systems too
        statfs = getattr(libc, "statfs64", None) or libc.statfs
    except (OSError, AttributeError):
        return None, None, None
    fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    fallocate.restype = ctypes.c_int
    statfs.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
    statfs.restype = ctypes.c_int
    return ctypes, fallocate, statfs


_ctypes, _fallocate, _statfs = _load()


def useful(directory: str | os.PathLike[str]) -> bool:
    """Whether files in ``directory`` are on a filesystem where reserving blocks ahead helps (and works)."""
    if _ctypes is None or _statfs is None:
        return False
    buf = _ctypes.create_string_buffer(512)  # struct statfs(64): f_type, a native word, comes first
    if _statfs(os.fsencode(directory), buf) != 0:
        return False
    return _ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF in USEFUL_FILESYSTEMS  # 32-bit magics


def reserve(path: str | os.PathLike[str], start: int, length: int) -> bool:
    """Allocate the blocks of ``path`` for ``[start, start + length)`` and keep its size and its bytes
    (blocks already allocated, or written meanwhile, are left as they are). False if the file is missing
    or the disk would be left short of space (KEEP_FREE); OSError if this system or filesystem cannot (an
    errno in UNSUPPORTED: the caller stops asking) or the call failed. The file is opened for this call
    only (SQLite keeps no lock on a write-ahead log's own file, only on the database and the -shm file:
    closing another descriptor of it releases nothing of SQLite's)."""
    if _ctypes is None or _fallocate is None:
        raise OSError(errno.ENOSYS, "fallocate is not available on this system")
    if length <= 0:
        return True
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)  # never O_CREAT: SQLite owns the file's existence
    except FileNotFoundError:
        return False
    try:
        st = os.fstatvfs(fd)
        if st.f_bavail * st.f_frsize - length < KEEP_FREE:
            return False
        if _fallocate(fd, FALLOC_FL_KEEP_SIZE, start, length) != 0:
            err = _ctypes.get_errno()
            raise OSError(err, os.strerror(err))
    finally:
        os.close(fd)
    return True
