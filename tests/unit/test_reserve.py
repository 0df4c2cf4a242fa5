"""Disk blocks reserved past a file's end (lanchat.storage.reserve): the file, as its writer sees it, is
unchanged."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lanchat.storage import reserve


@pytest.mark.usefixtures("reservable")
def test_blocks_are_reserved_and_the_file_is_unchanged(tmp_path: Path) -> None:
    f = tmp_path / "log"
    f.write_bytes(b"frames")
    assert reserve.reserve(f, 3, 1 << 20)  # overlapping what is written: those bytes stay
    assert f.read_bytes() == b"frames"
    assert f.stat().st_size == 6
    assert f.stat().st_blocks * 512 >= 3 + (1 << 20)
    with f.open("ab") as out:  # the writer goes on where it was
        out.write(b" more")
    assert f.read_bytes() == b"frames more"


@pytest.mark.usefixtures("reservable")
def test_a_missing_file_is_not_created(tmp_path: Path) -> None:
    assert not reserve.reserve(tmp_path / "gone-wal", 0, 4096)
    assert not (tmp_path / "gone-wal").exists()


@pytest.mark.usefixtures("reservable")
def test_the_last_of_a_disk_is_never_taken(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "log"
    f.write_bytes(b"frames")
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    monkeypatch.setattr(reserve, "KEEP_FREE", free + (1 << 30))  # as if the disk were nearly full
    blocks = f.stat().st_blocks
    assert not reserve.reserve(f, 6, 1 << 20)
    assert f.stat().st_blocks == blocks


def filesystem_of(path: str) -> str:
    """The type of the filesystem holding ``path``, from the longest mount point above it."""
    best, kind = "", ""
    with open("/proc/self/mountinfo") as mounts:
        for line in mounts:
            fields = line.split()
            point, fstype = fields[4], fields[fields.index("-") + 1]
            if (path == point or path.startswith(point.rstrip("/") + "/")) and len(point) >= len(best):
                best, kind = point, fstype
    return kind


@pytest.mark.skipif(not os.path.exists("/proc/self/mountinfo"), reason="Linux only")
def test_only_filesystems_that_allocate_late_are_asked(tmp_path: Path) -> None:
    """ext4 and XFS: yes; tmpfs (the pages would be held in memory for nothing) and the rest: no."""
    for path in (str(tmp_path.resolve()), "/dev/shm", "/proc"):
        if os.path.isdir(path):
            assert reserve.useful(path) == (filesystem_of(path) in ("ext2", "ext3", "ext4", "xfs")), path
