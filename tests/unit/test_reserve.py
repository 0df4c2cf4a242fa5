"""Disk blocks reserved past a file's end (lanchat.storage.reserve): the file, as its writer sees it, is
unchanged."""

from __future__ import annotations

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


def test_a_missing_file_is_not_created(tmp_path: Path) -> None:
    if not reserve.supported():
        pytest.skip("no fallocate on this system")
    assert not reserve.reserve(tmp_path / "gone-wal", 0, 4096)
    assert not (tmp_path / "gone-wal").exists()
