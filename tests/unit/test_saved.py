"""The terminal client's saved sessions: a file per server address and nick (saved.py)."""

from __future__ import annotations

import fcntl
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lanchat.client import saved as saved_module
from lanchat.client.saved import SAVED_MAX, SAVED_MAX_AGE, Saved, SessionFile, entry_key, state_dir
from lanchat.protocol import messages as m
from lanchat.protocol.client_conn import ClientState


def saved(token: str = "tok", **kw: object) -> Saved:
    fields: dict[str, object] = {"last_seq": 41, "attempts": 3, "next_id": 12, "rooms": ["lobby", "maths"]}
    return Saved(token, **{**fields, **kw})  # type: ignore[arg-type]


def test_a_session_is_saved_loaded_and_forgotten(tmp_path: Path) -> None:
    f = SessionFile(tmp_path / "lanchat" / "sessions")
    key = entry_key("192.0.2.5:7272", "Kim")
    assert key == entry_key("192.0.2.5:7272", "KIM") != entry_key("192.0.2.6:7272", "kim")  # a nick's key
    assert f.load(key) is None
    f.save(key, saved(), now=1000.0)
    got = f.load(key, now=1000.0 + SAVED_MAX_AGE)
    assert got is not None and (got.token, got.last_seq, got.attempts, got.next_id) == ("tok", 41, 3, 12)
    assert got.rooms == ["lobby", "maths"] and got.writer is not None and got.writer[2] == os.getpid()  # ours
    assert f.load(key, now=1000.0 + SAVED_MAX_AGE + 1) is None  # the server forgets tokens after a day
    assert stat.S_IMODE(f.path(key).stat().st_mode) == 0o600 and stat.S_IMODE(f.directory.stat().st_mode) == 0o700
    f.forget(key)
    assert f.load(key, now=1000.0) is None and list(f.directory.iterdir()) == []


def test_two_clients_of_one_user_keep_their_own_sessions(tmp_path: Path) -> None:
    f = SessionFile(tmp_path)
    f.save(entry_key("h:1", "ann"), saved("ann's"))
    f.save(entry_key("h:1", "bob"), saved("bob's"))
    f.forget(entry_key("h:1", "bob"))
    ann = f.load(entry_key("h:1", "ann"))
    assert ann is not None and ann.token == "ann's" and f.load(entry_key("h:1", "bob")) is None


def test_a_session_whose_client_still_runs_or_another_machine_wrote_is_not_taken(tmp_path: Path) -> None:
    """A second terminal joining with the same nick must be told the nick is taken, not take the first
    one's session (which would end it: `session resumed on another connection`): on this machine (its
    client runs), and on another that shares the home directory (a lab's NFS, a container: a review)."""
    f = SessionFile(tmp_path)
    other = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        f.save("a", saved())
        data = json.loads(f.path("a").read_text())
        host, namespace, _, _ = data["writer"]
        started = saved_module._start_of(other.pid)
        for writer, taken in (
            ([host, namespace, other.pid, started], False),  # its client runs
            ([host, namespace, other.pid, started + "0"], True),  # that pid is another process's by now
            (["elsewhere", namespace, 1, 0.0], False),  # another machine's
            ([host, "pid:[1]", 1, 0.0], False),  # another process namespace's (a container)
        ):
            f.path("a").write_text(json.dumps({**data, "writer": writer}))
            assert (f.load("a") is not None) is taken, writer
    finally:
        assert other.stdin is not None
        other.stdin.close()
        other.wait(10)
    f.path("a").write_text(json.dumps({**data, "writer": [host, namespace, other.pid, started]}))
    assert f.load("a") is not None  # its client is gone: the session may be taken


def test_a_start_takes_a_saved_session_for_itself_and_a_second_start_gets_none(tmp_path: Path) -> None:
    """A review: two runs started at the same instant both loaded the dead writer's file and resumed one
    session twice (the second took it from the first: exit 3). ``take`` marks the file as its process's
    under a lock: of two starts racing in two processes, one has the session, the other a new one."""
    f = SessionFile(tmp_path)
    f.save("a", saved(), now=1000.0)
    data = json.loads(f.path("a").read_text())
    f.path("a").write_text(json.dumps({**data, "writer": [*data["writer"][:2], 1, "gone"]}))  # a dead run's
    code = (
        "import sys; from pathlib import Path; from lanchat.client.saved import SessionFile\n"
        "got = SessionFile(Path(sys.argv[1])).take('a', now=1000.0)\n"
        "print(got is not None and got.token, flush=True); sys.stdin.read()"  # (runs on: its claim holds)
    )
    starts = [
        subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        for _ in range(2)
    ]
    try:
        said = sorted(p.stdout.readline().strip() for p in starts if p.stdout is not None)
    finally:
        for p in starts:
            assert p.stdin is not None and p.stdout is not None
            p.stdin.close()
            p.wait(10)
            p.stdout.close()
    assert said == [b"False", b"tok"]  # one resumes it; the other is told the nick is taken by the server
    kept = json.loads(f.path("a").read_text())
    assert kept["saved_at"] == 1000.0 and kept["writer"][2] in {p.pid for p in starts}  # its time kept


def test_a_start_that_cannot_have_the_lock_in_time_takes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A start whose lock another start holds (stopped with Ctrl-Z in its claim) waits CLAIM_WAIT, then
    starts a new session: never one it might share; so does one that cannot mark the file as its own. Once
    the lock is free the session is there to take."""
    monkeypatch.setattr(saved_module, "CLAIM_WAIT", 0.05)
    f = SessionFile(tmp_path)
    f.save("a", saved())
    before = f.path("a").read_bytes()
    with open(tmp_path / ".lock", "w") as held:  # (flock: another open file's lock, as another process's)
        fcntl.flock(held, fcntl.LOCK_EX)
        assert f.take("a") is None and f.path("a").read_bytes() == before
    assert f.take("absent") is None
    with monkeypatch.context() as full:  # a file it cannot mark as its own (a full disk): another start could
        full.setattr(SessionFile, "save", lambda *_, **__: False)  # take it too, so this one does not (a review)
        assert f.take("a") is None
    got = f.take("a")
    assert got is not None and got.token == "tok"


def test_a_damaged_or_foreign_file_is_no_session(tmp_path: Path) -> None:
    f = SessionFile(tmp_path)
    f.save("a", saved())
    good = json.loads(f.path("a").read_text())
    for text in ("", "{", "[]", "5", "[" * 100_000 + "]" * 100_000, json.dumps({**good, "key": "b"}),
                 json.dumps({**good, "last_seq": "x"}), json.dumps({**good, "last_seq": -1}),
                 json.dumps({**good, "extra": 1}), json.dumps({**good, "rooms": [1]}),
                 json.dumps({**good, "rooms": ["no such room!!"]}), json.dumps({**good, "room": "Lobby"}),
                 json.dumps({**good, "next_id": 0}), json.dumps({**good, "writer": None}),
                 json.dumps({**good, "saved_at": 10**400}), json.dumps({**good, "attempts": 2**53})):  # fmt: skip
        f.path("a").write_text(text)
        assert f.load("a") is None, text[:80]
    f.path("a").write_text(json.dumps({**good, "writer": [*good["writer"][:2], 1, 10**400]}))
    f.load("a")  # (a start time too large for a float: no crash, whatever it decides)
    f.path("a").write_text(json.dumps(good))
    assert f.load("a") is not None  # (the same, whole)


def test_a_run_forgets_only_a_file_it_wrote_last(tmp_path: Path) -> None:
    """A review: the rename of a run forgot the file of its old nick a second late, when another run that
    joined with that nick meanwhile had written its own session there."""
    f = SessionFile(tmp_path)
    f.save("a", saved("mine"))
    data = json.loads(f.path("a").read_text())
    f.path("a").write_text(json.dumps({**data, "token": "theirs", "writer": [*data["writer"][:2], 1, 0.0]}))
    f.forget("a")
    assert json.loads(f.path("a").read_text())["token"] == "theirs"
    f.save("a", saved("mine"))
    f.forget("a")
    assert not f.path("a").exists()


def test_old_and_surplus_files_are_pruned(tmp_path: Path) -> None:
    f = SessionFile(tmp_path)
    now = time.time()
    for i in range(SAVED_MAX + 5):
        f.save(f"k{i}", saved())
        os.utime(f.path(f"k{i}"), (now - 1000 + i, now - 1000 + i))  # saved one second after another
    f.save("new", saved())
    kept = {p.name for p in f.directory.glob("*.json")}
    assert len(kept) == SAVED_MAX and f.path("k0").name not in kept and f.path("new").name in kept
    for path in f.directory.glob("*.json"):
        os.utime(path, (now - SAVED_MAX_AGE - 10, now - SAVED_MAX_AGE - 10))  # a day ago
    f.save("later", saved())
    assert [p.name for p in f.directory.glob("*.json")] == [f.path("later").name]


def test_the_state_directory_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert state_dir() == tmp_path / "lanchat"
    monkeypatch.setenv("XDG_STATE_HOME", "relative/ignored")
    assert state_dir() == Path(os.path.expanduser("~")) / ".local" / "state" / "lanchat"


def test_a_restored_state_resumes_with_its_attempt_and_ids_continued() -> None:
    """The server refuses a resume whose attempt is not above the last one, and takes a post id at or
    below the last it handled for a resend (acked, not posted): a run that restored the session must
    count on from the killed one."""
    st = ClientState("kim", ["lobby"])
    st.restore("tok", 41, 3, 12, ["lobby", "maths"])
    hello = json.loads(st.hello())
    assert (hello["token"], hello["attempt"], hello["last_seq"], hello["rooms"]) == ("tok", 4, 41, ["lobby", "maths"])
    welcome = {"type": "welcome", "nick": "kim", "session": "s1", "token": "tok", "seq": 41, "resumed": True}
    st.receive_data(
        m.encode({"type": "server", "proto": 1, "name": "s"})
        + m.encode({**welcome, "rooms": ["lobby", "maths"], "last_id": 15})
    )
    assert st.resumed
    rid, _ = st.post(m.Msg("lobby", "back"))
    assert rid == 16  # above what the killed run had sent (its last saves lag behind)
    view = st.saved_view()
    assert view is not None and view[:4] == ("tok", 41, 4, 17) and view[4] == ["lobby", "maths"]
