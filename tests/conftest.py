"""Suite-wide fixtures.

Network safety: every test runs with discovery restricted to loopback (LANCHAT_INTERFACE=lo), so no
beacon or probe can leave this machine. Tests of a multi-host LAN build their own network namespaces.
Every test must end clean: the autouse fixture fails a test that leaves child processes or threads.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from lanchat.storage import reserve

sys.path.insert(0, str(Path(__file__).resolve().parent / "integration"))  # the tests' helpers (support.py)
from support import ServerProcess

os.environ["LANCHAT_INTERFACE"] = "lo"  # also for subprocesses started outside monkeypatch
# A suite run under nohup would pass its ignored SIGHUP to every server and client it starts, and the tests
# of a hang-up need the default (the nohup tests ignore it themselves).
signal.signal(signal.SIGHUP, signal.SIG_DFL)


@pytest.fixture(autouse=True)
def _loopback_only_and_clean(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    monkeypatch.setenv("LANCHAT_INTERFACE", "lo")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))  # the terminal client's saved sessions
    threads_before = set(threading.enumerate())
    yield
    me = psutil.Process()
    leftovers = [c for c in me.children(recursive=True) if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    for child in leftovers:
        child.kill()
    assert not leftovers, f"test left processes running: {[c.cmdline() for c in leftovers]}"
    extra = [t for t in threading.enumerate() if t not in threads_before and t.is_alive()]
    for t in extra:
        t.join(timeout=2)
    extra = [t for t in extra if t.is_alive()]
    assert not extra, f"test left threads running: {extra}"


@pytest.fixture
def reservable(tmp_path: Path) -> None:
    """Skips a test of reserved disk blocks where tmp_path is not on a filesystem lanchat reserves them on
    (ext4, XFS: lanchat.storage.reserve.useful)."""
    if not reserve.useful(tmp_path):
        pytest.skip("tmp_path's filesystem is not one lanchat reserves disk blocks on (ext4, XFS)")
    st = os.statvfs(tmp_path)
    if st.f_bavail * st.f_frsize < reserve.KEEP_FREE + (64 << 20):  # the tests reserve a few MiB at most
        pytest.skip("tmp_path's filesystem is too full to reserve disk blocks on (reserve.KEEP_FREE)")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A real server with one worker, killed with it at the end of the test (more servers, other options:
    tests/integration's make_server)."""
    proc = ServerProcess(tmp_path / "data", workers=1)
    proc.start()
    try:
        yield proc
    finally:
        proc.kill()
