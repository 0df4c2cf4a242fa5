"""A failing disk never stops live chat; a corrupt or foreign database stops the server at start.

Real failures on a real file system: a small tmpfs (root can mount one) that is read-only or full.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import Client, MakeServer, ServerProcess


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {res.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _remount(mnt: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(mnt)], check=True)


def _history(port: int) -> list[str]:
    with Client(port, "historian", rooms=[]) as c:
        c.send({"type": "history", "room": "lobby", "limit": 500, "id": 1})
        page = c.expect(lambda f: f.get("type") == "history" and f.get("id") == 1)
        return [e["text"] for e in page["events"] if e.get("type") == "msg"]


def _history_after(server: ServerProcess, mark: int, degraded: bool) -> dict[str, object]:
    """The store's figures once it has said, since ``mark``, that it failed (or that writing resumed): it
    retries on its own schedule (DB_RETRY_INTERVAL) and logs each change once."""
    pattern = "chat goes on" if degraded else "writes resumed|database open again"
    server.wait_log(pattern, timeout=10, start=mark)
    history: dict[str, object] = server.stats()["history"]
    return history


def _fill_then_post(filler: Path, client: Client) -> None:
    """Fill the file system to its last block, then post messages 2-59, enough to need new database pages;
    return once the last is acknowledged (the store has failed by then, or is about to)."""
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError:
            pass
    big = "x" * 3000
    for i in range(2, 60):
        client.send({"type": "msg", "room": "lobby", "text": f"full{i} {big}", "id": i})
    client.expect(lambda f: f.get("type") == "ack" and f.get("id") == 59)


def test_read_only_data_dir_keeps_chat_alive_and_recovers(make_server: MakeServer, tmpfs: Path) -> None:
    _remount(tmpfs, "ro")
    server = make_server(workers=1, data_dir=tmpfs)
    with Client(server.port, "alice") as a, Client(server.port, "bob") as b:
        for i in range(5):
            a.send({"type": "msg", "room": "lobby", "text": f"ro{i}", "id": i + 1})
        assert [b.expect("msg")["text"] for _ in range(5)] == [f"ro{i}" for i in range(5)]  # chat goes on
        assert a.expect(lambda f: f.get("type") == "ack" and f.get("id") == 5)  # and is acknowledged
        state = server.stats()["history"]
        assert state["degraded"] is True and "open" in str(state["error"])
        assert server.log.count("chat goes on") == 1  # logged once, not per message
        mark = server.mark()
        _remount(tmpfs, "rw")
        a.send({"type": "msg", "room": "lobby", "text": "disk is back", "id": 6})
        b.expect("msg")
        state = _history_after(server, mark, degraded=False)
        assert state["degraded"] is False and state["pending"] == 0
    assert _history(server.port) == [*(f"ro{i}" for i in range(5)), "disk is back"]  # nothing was lost
    assert (tmpfs / "history.sqlite3").exists()


def test_an_idle_server_opens_its_data_dir_once_it_is_writable(make_server: MakeServer, tmpfs: Path) -> None:
    """An operator's review: a server that could not open its database at the start tried again only at a
    commit, so with nobody chatting it stayed `history degraded`, and its directory unlocked, for good."""
    _remount(tmpfs, "ro")
    server = make_server(workers=1, data_dir=tmpfs)
    assert server.stats()["history"]["degraded"] is True
    mark = server.mark()
    _remount(tmpfs, "rw")
    state = _history_after(server, mark, degraded=False)  # nobody posts
    assert state["degraded"] is False and (tmpfs / "lock").exists()


def _a_copy(make_server: MakeServer, data: Path) -> Path:
    """A history file of one message, "in the copy", from a server stopped cleanly: a backup to restore."""
    kept = make_server(workers=1, data_dir=data)
    with Client(kept.port, "ann") as a:
        a.send({"type": "msg", "room": "lobby", "text": "in the copy", "id": 1})
        a.expect("ack")
    assert kept.stop() == 0
    return data / "history.sqlite3"


def _put_in_place(copy: Path, data: Path) -> None:
    """As an operator restores a backup: copied beside the file, then moved over it (another inode)."""
    staged = data / "restore.tmp"
    shutil.copy(copy, staged)
    os.replace(staged, data / "history.sqlite3")


def test_a_file_put_in_place_while_serving_is_for_the_next_start(make_server: MakeServer, tmp_path: Path) -> None:
    """An operator's review: a good copy moved over history.sqlite3 while serving found the running server's
    write-ahead log beside it under its name, which SQLite applied to it at the next open: "malformed",
    refused with exit 2 (after a crash; after a clean stop, old pages written silently into the copy). The
    server lets its file go (its log removed) and keeps its history in memory; the next start has the copy."""
    copy = _a_copy(make_server, tmp_path / "kept")
    data = tmp_path / "data"
    server = make_server("--rate", "1000", "--burst", "1000", workers=1, data_dir=data)
    with Client(server.port, "bob") as b:
        for i in range(200):  # pages in the log, beyond what a checkpoint has copied
            b.send({"type": "msg", "room": "lobby", "text": f"old run {i} " + "y" * 1000, "id": i + 1})
        b.expect(lambda f: f.get("type") == "ack" and f.get("id") == 200)
        mark = server.mark()
        _put_in_place(copy, data)
        server.wait_log("was replaced while serving: the next start uses it", timeout=10, start=mark)
        assert not (data / "history.sqlite3-wal").exists()
        assert server.stats()["history"]["degraded"] is True
        b.send({"type": "msg", "room": "lobby", "text": "after the swap", "id": 201})  # chat goes on
        b.expect(lambda f: f.get("type") == "ack" and f.get("id") == 201)
        assert server.stats()["history"]["pending"]
    server.kill()  # (a crash: the worst case the review found)
    again = make_server(workers=1, data_dir=data)
    assert _history(again.port) == ["in the copy"]


def test_a_file_put_in_place_just_before_a_stop_is_for_the_next_start(make_server: MakeServer, tmp_path: Path) -> None:
    """A review: `mv copy history.sqlite3 && systemctl restart lanchat`: the stop came before the once-a-second
    look, its commits went to the old file's log beside the copy, and the next start refused it (exit 2)."""
    copy = _a_copy(make_server, tmp_path / "kept")
    data = tmp_path / "data"
    server = make_server(workers=1, data_dir=data)
    with Client(server.port, "bob") as b:
        for i in range(20):
            b.send({"type": "msg", "room": "lobby", "text": f"old run {i}", "id": i + 1})
        b.expect(lambda f: f.get("type") == "ack" and f.get("id") == 20)
        _put_in_place(copy, data)
        code = server.stop()
    assert code in (0, 4), server.log  # (4: what it held in memory since is lost, and it says so)
    assert "was replaced while serving: the next start uses it" in server.log
    again = make_server(workers=1, data_dir=data)
    assert _history(again.port) == ["in the copy"]


def test_a_stop_that_loses_history_to_a_failing_disk_says_so_in_its_exit_code(
    make_server: MakeServer, tmpfs: Path
) -> None:
    """It logged the loss and exited 0, "stopped cleanly", to systemd and scripts alike."""
    server = make_server(workers=1, data_dir=tmpfs)
    with Client(server.port, "alice") as a:
        a.send({"type": "msg", "room": "lobby", "text": "on disk", "id": 1})
        a.expect("ack")
        mark = server.mark()
        _fill_then_post(tmpfs / "filler", a)
        assert _history_after(server, mark, degraded=True)["pending"]
        assert server.stop() == 4
    assert "lost at this stop" in server.log


def test_full_disk_keeps_chat_alive_and_resumes_writing(make_server: MakeServer, tmpfs: Path) -> None:
    server = make_server(workers=1, data_dir=tmpfs)
    filler = tmpfs / "filler"
    with Client(server.port, "alice") as a, Client(server.port, "bob") as b:
        a.send({"type": "msg", "room": "lobby", "text": "before", "id": 1})
        a.expect("ack")
        assert b.expect("msg")["text"] == "before"
        mark = server.mark()
        _fill_then_post(filler, a)
        for i in range(2, 60):
            assert b.expect("msg")["text"].startswith(f"full{i} ")  # relayed while the disk is full
        state = _history_after(server, mark, degraded=True)
        assert state["degraded"] is True and "full" in str(state["error"]).lower()
        assert server.log.count("chat goes on") == 1
        mark = server.mark()
        filler.unlink()
        a.send({"type": "msg", "room": "lobby", "text": "space again", "id": 60})
        b.expect("msg")
        assert _history_after(server, mark, degraded=False)["degraded"] is False
    texts = _history(server.port)
    assert texts[0] == "before" and texts[-1] == "space again" and len(texts) == 60


def test_corrupt_database_refuses_to_start(tmp_path: Path) -> None:
    data = tmp_path / "corrupt"
    data.mkdir()
    (data / "history.sqlite3").write_bytes(b"this is not a database at all" * 200)
    server = ServerProcess(data, workers=1)
    with pytest.raises(AssertionError):
        server.start(timeout=10)
    try:
        assert server.proc is not None and server.proc.wait(10) == 2
        assert "not a usable lanchat history database" in server.log
        assert (data / "history.sqlite3").read_bytes().startswith(b"this is not")  # untouched
    finally:
        server.kill()


def test_foreign_database_refuses_to_start(tmp_path: Path) -> None:
    data = tmp_path / "foreign"
    data.mkdir()
    db = sqlite3.connect(data / "history.sqlite3")
    db.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
    db.execute("INSERT INTO invoices VALUES (1, 9.5)")
    db.commit()
    db.close()
    server = ServerProcess(data, workers=1)
    with pytest.raises(AssertionError):
        server.start(timeout=10)
    try:
        assert server.proc is not None and server.proc.wait(10) == 2
        assert "foreign database" in server.log
        rows = sqlite3.connect(data / "history.sqlite3").execute("SELECT * FROM invoices").fetchall()
        assert rows == [(1, 9.5)]  # someone's data, left alone
    finally:
        server.kill()


def test_a_database_deleted_while_serving_is_written_back(make_server: MakeServer, tmp_path: Path) -> None:
    """`rm history.sqlite3*` while serving: the server writes the file back from the one it has open (within
    a second), so a restart still has every message; before, it began an empty history."""
    data = tmp_path / "data"
    server = make_server(workers=1, data_dir=data)
    with Client(server.port, "alice") as a:
        a.send({"type": "msg", "room": "lobby", "text": "before", "id": 1})
        a.expect(lambda f: f.get("type") == "ack" and f.get("id") == 1)
        mark = server.mark()
        for f in data.iterdir():  # (the lock too)
            f.unlink()
        server.wait_log("written back from the open file", timeout=10, start=mark)
        server.wait_log("lock was deleted while serving; locked again", timeout=1, start=mark)
        second = ServerProcess(data, workers=1)  # a second server on the directory: still refused
        with pytest.raises(AssertionError):
            second.start(timeout=10)
        try:
            assert second.proc is not None and second.proc.wait(10) == 2
            assert "in use by another lanchat server" in second.log
        finally:
            second.kill()
        a.send({"type": "msg", "room": "lobby", "text": "after", "id": 2})
        a.expect(lambda f: f.get("type") == "ack" and f.get("id") == 2)
    assert server.stop() == 0
    again = make_server(workers=1, data_dir=data)
    assert _history(again.port) == ["before", "after"]


def test_a_server_whose_lock_another_took_stops_writing_the_file(make_server: MakeServer, tmp_path: Path) -> None:
    """A review: with the lock deleted, a second server started within the second before the first took it
    again got the directory, and both wrote one history file. The first now stops writing it (its history
    degraded, chat going on from memory) until it can lock the directory again."""
    import os
    import signal

    data = tmp_path / "data"
    first = make_server(workers=1, data_dir=data)
    assert first.proc is not None
    mark = first.mark()
    os.kill(first.proc.pid, signal.SIGSTOP)  # (its once-a-second look must come after the second's start)
    try:
        (data / "lock").unlink()
        second = make_server(workers=1, data_dir=data)
    finally:
        os.kill(first.proc.pid, signal.SIGCONT)
    first.wait_log("was deleted while serving: .* is in use by another lanchat server", timeout=10, start=mark)
    assert first.stats()["history"]["degraded"] is True
    with Client(first.port, "alice") as a:  # chat goes on
        a.send({"type": "msg", "room": "lobby", "text": "from memory", "id": 1})
        a.expect(lambda f: f.get("type") == "ack" and f.get("id") == 1)
    assert second.stats()["history"]["degraded"] is False
