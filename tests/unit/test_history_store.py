"""The SQLite history: create/reopen, sequence reservation, foreign files, pruning, paging, replay, a failing disk."""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lanchat import const
from lanchat.errors import StorageError
from lanchat.storage import history as h
from lanchat.storage import reserve
from lanchat.storage.history import HistoryStore, SessionRow


@pytest.fixture
def stores() -> Iterator[list[HistoryStore]]:
    """Every store a test opens is closed at the end, whatever happens."""
    opened: list[HistoryStore] = []
    yield opened
    for s in opened:
        s.close()


def open_store(stores: list[HistoryStore], path: Path, **kw: Any) -> HistoryStore:
    s = HistoryStore(path, **kw)
    stores.append(s)
    return s


def line(seq: int, conv: str = "lobby") -> str:
    return f'{{"type":"msg","seq":{seq},"room":"{conv}"}}'


def add(s: HistoryStore, seq: int, *convs: str) -> None:
    convs = convs or ("lobby",)
    s.add_event(seq, convs, float(seq), "msg", line(seq, convs[0]))


def seqs(lines: list[str]) -> list[int]:
    return [int(x.split('"seq":')[1].split(",")[0]) for x in lines]


def traced(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The SQL statements of every connection opened from now on, in order."""
    statements: list[str] = []
    connect = sqlite3.connect

    def tracing(*args: Any, **kw: Any) -> sqlite3.Connection:
        db: sqlite3.Connection = connect(*args, **kw)
        db.set_trace_callback(statements.append)
        return db

    monkeypatch.setattr(sqlite3, "connect", tracing)
    return statements


def errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "lanchat.storage" and r.levelno >= logging.ERROR]


# --- create and reopen ----------------------------------------------------------------------------------------


def test_create_makes_the_directory_and_file(tmp_path: Path, stores: list[HistoryStore]) -> None:
    s = open_store(stores, tmp_path / "a" / "b")
    assert s.path == tmp_path / "a" / "b" / h.DB_NAME
    assert s.path.exists()
    assert not s.degraded and s.last_error is None
    assert s.start_seq == 0
    assert s.load_sessions() == [] and s.topic("lobby") == ""
    assert s.events("lobby") == ([], False)
    assert s.pending == 0
    assert s.commit(0.0) is True  # nothing to do is a success


def test_marker_and_schema_version_are_written(tmp_path: Path, stores: list[HistoryStore]) -> None:
    open_store(stores, tmp_path).close()
    with sqlite3.connect(tmp_path / h.DB_NAME) as db:
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
    db.close()
    assert meta["app"] == h.APP_ID
    assert meta["schema"] == str(h.SCHEMA_VERSION)
    assert int(meta["seq_reserved"]) == h.SEQ_RESERVE


def test_reopen_keeps_events_sessions_topics(tmp_path: Path, stores: list[HistoryStore]) -> None:
    s = open_store(stores, tmp_path)
    add(s, 1)
    add(s, 2, "@sid1", "@sid2")
    s.put_session(SessionRow("sid1", "tok1", "Al", ("lobby", "dev"), 7, False))
    s.put_session(SessionRow("sid2", "tok2", "bo", (), -1, True))
    s.put_topic("lobby", "pizza")
    assert s.pending == 3 + 2 + 1  # one row per conversation of an event
    assert s.commit(1.0)
    assert s.pending == 0
    s.close()
    s2 = open_store(stores, tmp_path)
    assert s2.events("lobby")[0] == [line(1)]
    assert s2.events("@sid2")[0] == [line(2, "@sid1")]
    assert sorted(s2.load_sessions(), key=lambda r: r.sid) == [
        SessionRow("sid1", "tok1", "Al", ("lobby", "dev"), 7, False),
        SessionRow("sid2", "tok2", "bo", (), -1, True),
    ]
    assert (s2.topic("lobby"), s2.topic("dev")) == ("pizza", "")


def test_session_update_and_drop(tmp_path: Path, stores: list[HistoryStore]) -> None:
    s = open_store(stores, tmp_path)
    s.put_session(SessionRow("a", "t", "al", ("x",), 1, False))
    s.commit(0.0)
    s.put_session(SessionRow("a", "t", "al2", ("y",), 5, False))
    s.put_session(SessionRow("b", "u", "bo", (), -1, False))
    s.drop_session("b")  # the last word for a sid wins within a batch
    s.commit(0.0)
    assert s.load_sessions() == [SessionRow("a", "t", "al2", ("y",), 5, False)]
    s.drop_session("a")
    s.commit(0.0)
    assert s.load_sessions() == []


# --- the posted ids: a session's highest message id, appended per commit -----------------------------------


def posted_rows(s: HistoryStore) -> list[tuple[str, int]]:
    return [(str(sid), int(i)) for sid, i in db_of(s).execute("SELECT sid, last_id FROM posted ORDER BY rowid")]


def session_ids(path: Path) -> dict[str, int]:
    """sessions.last_id as the file holds it, read by a connection of the test's own (an older lanchat's view)."""
    with contextlib.closing(sqlite3.connect(path / h.DB_NAME)) as db:
        return {str(sid): int(i) for sid, i in db.execute("SELECT sid, last_id FROM sessions")}


def al_and_bo(s: HistoryStore, last_id: int = 0) -> None:
    """Two sessions' records, committed: sids "a" and "b"."""
    s.put_session(SessionRow("a", "t", "al", ("x",), last_id, False))
    s.put_session(SessionRow("b", "u", "bo", ("x",), last_id, False))
    s.commit(0.0)


def test_a_post_appends_the_sessions_id_not_its_record(tmp_path: Path, stores: list[HistoryStore]) -> None:
    s = open_store(stores, tmp_path)
    s.put_session(SessionRow("a", "t", "al", ("x",), 1, False))
    s.commit(0.0)
    s.put_posted("a", 2)
    s.put_posted("a", 4)  # one row per session and commit: the highest
    s.put_posted("a", 3)
    assert s.pending == 1
    s.commit(0.0)
    s.put_posted("b", 9)  # a session whose record was never written: its row waits for it, or goes at the fold
    s.put_posted("c", 0)  # ids start at 0
    s.commit(0.0)
    assert posted_rows(s) == [("a", 4), ("b", 9), ("c", 0)]
    assert session_ids(tmp_path) == {"a": 1}  # the record itself was not rewritten
    s.put_posted("a", 5)
    s.put_session(SessionRow("a", "t", "al2", ("x",), 5, False))  # a record written anyway carries the id
    s.commit(0.0)
    assert posted_rows(s) == [("a", 4), ("b", 9), ("c", 0)]
    assert session_ids(tmp_path) == {"a": 5}


def test_posted_ids_are_folded_into_the_sessions_at_posted_fold_rows(
    tmp_path: Path, stores: list[HistoryStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(h, "POSTED_FOLD_ROWS", 5)
    s = open_store(stores, tmp_path)
    al_and_bo(s)
    s.put_posted("a", 1)
    s.put_posted("b", 1)
    s.commit(0.0)
    s.put_posted("a", 2)
    s.put_posted("b", 2)
    s.commit(0.0)
    assert len(posted_rows(s)) == 4  # one short of the fold
    assert session_ids(tmp_path) == {"a": 0, "b": 0}
    s.put_posted("a", 3)  # the fifth: folded in the same commit
    s.commit(0.0)
    assert posted_rows(s) == []
    assert session_ids(tmp_path) == {"a": 3, "b": 2}
    assert sorted((r.sid, r.last_id) for r in s.load_sessions()) == [("a", 3), ("b", 2)]


def test_the_posted_ids_wait_for_the_commit_after_a_journal_fold(
    tmp_path: Path, stores: list[HistoryStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both folds in one commit added up (many rooms and many posters reach their thresholds together)."""
    monkeypatch.setattr(h, "FOLD_ROWS", 5)
    monkeypatch.setattr(h, "POSTED_FOLD_ROWS", 5)
    s = open_store(stores, tmp_path)
    for i in range(5):
        s.put_session(SessionRow(f"s{i}", "t", f"n{i}", (f"r{i}",), 0, False))
    s.commit(0.0)
    for i in range(5):
        s.put_posted(f"s{i}", 2)
    spread(s, 1, 5, 5)  # five rooms: journaled, and the journal folded at once
    s.commit(0.0)
    assert table_sizes(s) == (5, 0) and len(posted_rows(s)) == 5  # the ids' fold waits for the next commit
    s.put_posted("s0", 3)
    s.commit(0.0)
    assert posted_rows(s) == []
    assert session_ids(tmp_path) == {"s0": 3, "s1": 2, "s2": 2, "s3": 2, "s4": 2}


def test_a_fold_never_lowers_an_id_a_later_record_carries(tmp_path: Path, stores: list[HistoryStore]) -> None:
    """A post's id (4) is appended, then a join (5) rewrites the record: folded after a crash, the posted 4
    must not take the record back to 4, or the resent join would be handled twice."""
    s = open_store(stores, tmp_path)
    s.put_session(SessionRow("a", "t", "al", ("x",), 1, False))
    s.put_posted("a", 4)
    s.commit(0.0)
    s.put_session(SessionRow("a", "t", "al", ("x", "y"), 5, False))
    s.commit(0.0)
    s2 = open_store(stores, tmp_path)  # no close: a crash
    assert [(r.sid, r.last_id) for r in s2.load_sessions()] == [("a", 5)]


def test_a_record_older_than_a_queued_id_leaves_the_id_queued(tmp_path: Path, stores: list[HistoryStore]) -> None:
    s = open_store(stores, tmp_path)
    s.put_posted("a", 7)
    s.put_session(SessionRow("a", "t", "al", ("x",), 5, False))
    s.commit(0.0)
    assert posted_rows(s) == [("a", 7)]
    s.put_posted("a", 8)
    s.put_session(SessionRow("a", "t", "al", ("x",), 8, False))  # carries it: nothing more to append
    s.commit(0.0)
    assert posted_rows(s) == [("a", 7)]


def test_the_posted_ids_fold_is_put_off_at_most_to_twice_its_rows(
    tmp_path: Path, stores: list[HistoryStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every commit folds the journal (spread over many rooms, with a fold's worth each): the ids' fold
    cannot wait for a commit without one."""
    monkeypatch.setattr(h, "FOLD_ROWS", 5)
    monkeypatch.setattr(h, "POSTED_FOLD_ROWS", 3)
    s = open_store(stores, tmp_path)
    al_and_bo(s)
    sizes = []
    for i in range(3):
        s.put_posted("a", i + 1)
        s.put_posted("b", i + 1)
        spread(s, 1 + 5 * i, 5, 5)
        s.commit(0.0)
        assert table_sizes(s) == (5 * (i + 1), 0)  # the journal folded in every one
        sizes.append(len(posted_rows(s)))
    assert sizes == [2, 4, 0]  # 4 >= 3 but the journal folded; 6 = twice 3: folded all the same
    assert session_ids(tmp_path) == {"a": 3, "b": 3}


def test_posted_ids_survive_a_crash_and_are_folded_at_the_next_open(tmp_path: Path, stores: list[HistoryStore]) -> None:
    s = open_store(stores, tmp_path)
    al_and_bo(s, 1)
    s.put_posted("a", 6)
    s.put_posted("b", 2)
    s.commit(0.0)
    s.drop_session("b")  # ended: its posted row must not bring it back
    s.commit(0.0)
    # No close: the process died here. The next run opens the file as it is.
    s2 = open_store(stores, tmp_path)
    assert [(r.sid, r.last_id) for r in s2.load_sessions()] == [("a", 6)]
    assert posted_rows(s2) == []


def test_a_clean_stop_leaves_the_posted_ids_in_the_sessions(tmp_path: Path, stores: list[HistoryStore]) -> None:
    """An older lanchat does not read the posted table: after a clean stop it finds the ids where it looks."""
    s = open_store(stores, tmp_path)
    s.put_session(SessionRow("a", "t", "al", ("x",), 1, False))
    s.commit(0.0)
    s.put_posted("a", 8)
    s.commit(0.0)
    s.close()
    assert session_ids(tmp_path) == {"a": 8}
    with contextlib.closing(sqlite3.connect(tmp_path / h.DB_NAME)) as db:
        assert db.execute("SELECT count(*) FROM posted").fetchone() == (0,)
        assert db.execute("SELECT value FROM meta WHERE key='clean_stop'").fetchone() == ("1",)


def test_posted_ids_are_kept_while_the_disk_fails(tmp_path: Path, stores: list[HistoryStore]) -> None:
    s = open_store(stores, tmp_path)
    s.put_session(SessionRow("a", "t", "al", ("x",), 1, False))
    s.commit(0.0)
    db_of(s).execute("PRAGMA query_only=ON")
    s.put_posted("a", 3)
    assert s.commit(0.0) is False
    s.put_posted("a", 4)
    assert s.pending == 1
    db_of(s).execute("PRAGMA query_only=OFF")
    assert s.commit(const.DB_RETRY_INTERVAL)
    assert posted_rows(s) == [("a", 4)]


def test_a_commit_of_many_posters_writes_a_page_or_two_not_one_per_poster(
    tmp_path: Path, stores: list[HistoryStore]
) -> None:
    """Many small rooms, everyone talking: a commit in which 40 of 1,000 sessions posted rewrote 40 pages of
    sessions and their index (INSERT OR REPLACE of each record), 90 % of the commit's cost."""
    s = open_store(stores, tmp_path)
    for i in range(1000):
        s.put_session(SessionRow(f"session-{i:04d}", "t" * 43, f"nick{i}", ("x",), 0, False))
    s.commit(0.0)
    log = Path(str(s.path) + "-wal")
    before = log.stat().st_size
    for i in range(0, 1000, 25):
        s.put_posted(f"session-{i:04d}", 1)
    s.commit(0.0)
    pages = (log.stat().st_size - before) // (4096 + h.WAL_FRAME_HEADER)
    assert 1 <= pages <= 3  # the posted table's last page (and the tree above it, once it has one)


def test_topic_overwrite(tmp_path: Path, stores: list[HistoryStore]) -> None:
    s = open_store(stores, tmp_path)
    s.put_topic("dev", "one")
    s.put_topic("dev", "two")
    s.commit(0.0)
    s.put_topic("dev", "")
    s.commit(0.0)
    assert s.topic("dev") == ""


# --- sequence reservation -------------------------------------------------------------------------------------


def test_sequence_reservation_across_reopen(tmp_path: Path, stores: list[HistoryStore]) -> None:
    s = open_store(stores, tmp_path)
    assert s.start_seq == 0
    add(s, 1)
    s.commit(0.0)
    s.close()
    s2 = open_store(stores, tmp_path)
    assert s2.start_seq == h.SEQ_RESERVE  # the whole reserved block is skipped: nothing is ever reused
    s2.close()
    s3 = open_store(stores, tmp_path)
    assert s3.start_seq == 2 * h.SEQ_RESERVE  # each open takes a new block


def test_reservation_moves_ahead_of_use(tmp_path: Path, stores: list[HistoryStore]) -> None:
    s = open_store(stores, tmp_path)
    seq = h.SEQ_RESERVE // 2 + 1  # past half the block: the next block is reserved with the next commit
    add(s, seq)
    assert s.commit(0.0)
    # a crash now (no close) must not let a new process reuse numbers near ``seq``
    crashed_view = open_store(stores, tmp_path)
    assert crashed_view.start_seq >= seq + h.SEQ_RESERVE


def test_after_an_unclean_stop_the_sequence_continues_from_the_clock(
    tmp_path: Path, stores: list[HistoryStore]
) -> None:
    """A clean stop (above) continues where it was; after a crash the clock is the floor: the reservation
    covers a crash, but not numbers handed out while the disk failed, and the two cannot be told apart."""
    s = open_store(stores, tmp_path)
    add(s, 1)
    assert s.commit(0.0)
    before = int(time.time() * 1_000_000)
    crashed_view = open_store(stores, tmp_path)  # s was never closed
    assert before <= crashed_view.start_seq < 2**53


def test_numbers_handed_out_while_the_disk_failed_until_the_stop_are_never_reused(
    tmp_path: Path, stores: list[HistoryStore]
) -> None:
    s = open_store(stores, tmp_path)
    db_of(s).execute("PRAGMA query_only=ON")  # the disk fails ...
    for seq in range(1, 3 * h.SEQ_RESERVE):  # ... while the hub hands out numbers past the reservation
        s.add_event(seq, ("lobby",), 0.0, "msg", line(seq))
    assert s.commit(0.0) is False
    s.close()  # ... until the server stops: nothing could be written, not even the stop
    assert open_store(stores, tmp_path).start_seq >= 3 * h.SEQ_RESERVE  # the disk works again


def test_a_start_that_cannot_mark_the_run_unclean_continues_from_the_clock(
    tmp_path: Path, stores: list[HistoryStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A review: the reads at the start worked and the one write marking the run unclean failed (EIO at its
    fsync). The run went on from the file's reservation, which still said the last stop was clean, and the
    next start handed the same numbers out again."""
    s = open_store(stores, tmp_path)
    add(s, 1)
    assert s.commit(0.0)
    s.close()
    connect = sqlite3.connect

    class Failing(sqlite3.Connection):
        def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
            if "clean_stop" in sql and "seq_reserved" in sql:
                raise sqlite3.OperationalError("disk I/O error")
            return super().execute(sql, *args)

    monkeypatch.setattr(sqlite3, "connect", lambda *a, **kw: connect(*a, factory=Failing, **kw))
    before = int(time.time() * 1_000_000)
    failing = open_store(stores, tmp_path)
    assert failing.degraded and before <= failing.start_seq < 2**53  # not h.SEQ_RESERVE + 1 and on
    assert failing.commit(const.DB_RETRY_INTERVAL) is False  # (tried again: the same)
    assert failing.start_seq >= before
    failing.close()
    monkeypatch.setattr(sqlite3, "connect", connect)
    assert open_store(stores, tmp_path).start_seq < before  # what it had handed out was never the file's


def test_a_reopen_while_serving_does_not_check_or_scan_the_whole_file(
    tmp_path: Path, stores: list[HistoryStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A review: an open again while serving (here after the log was deleted) ran the integrity check and a
    scan of every event on the hub's loop: 9 s and 0.8 s on a 537 MB file. Both belong to the first open."""
    statements = traced(monkeypatch)
    s = open_store(stores, tmp_path)
    add(s, 1)
    assert s.commit(1.0)
    s.watch_file()
    first = [x for x in statements if "quick_check" in x or "max(seq)" in x]
    assert len(first) == 3  # the check, and the highest number in each table
    os.unlink(str(s.path) + "-wal")
    s.watch_file()
    assert s.opens == 2 and not s.degraded
    assert [x for x in statements if "quick_check" in x or "max(seq)" in x] == first
    add(s, h.SEQ_RESERVE)
    assert s.commit(2.0)
    s.close()
    assert open_store(stores, tmp_path).start_seq >= 2 * h.SEQ_RESERVE


@pytest.mark.parametrize(
    ("failing", "error"),
    [("('seq_reserved', ?), ('clean_stop', '0')", "disk I/O error"), ("('app', ?)", "database or disk is full")],
)
def test_a_first_open_that_fails_after_its_check_is_not_checked_again_at_each_retry(
    tmp_path: Path, stores: list[HistoryStore], monkeypatch: pytest.MonkeyPatch, failing: str, error: str
) -> None:
    """Two reviews of the mends above: an open that kept failing after the check (the reservation's write; the
    marker's, its first write, on a full disk) checked the whole file again at every retry, every 2 s on the
    hub's loop."""
    open_store(stores, tmp_path).close()
    statements: list[str] = []
    connect = sqlite3.connect

    class Failing(sqlite3.Connection):
        def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
            statements.append(sql)
            if failing in sql:
                raise sqlite3.OperationalError(error)
            return super().execute(sql, *args)

    monkeypatch.setattr(sqlite3, "connect", lambda *a, **kw: connect(*a, factory=Failing, **kw))
    s = open_store(stores, tmp_path)
    add(s, s.start_seq + 1)
    for n in (1, 2, 3):
        assert s.commit(n * const.DB_RETRY_INTERVAL) is False
    assert s.degraded and sum(failing in x for x in statements) == 4  # tried at each
    assert sum("quick_check" in x for x in statements) == 1  # checked once


def test_integrity_checks_that_io_errors_end_are_retried_less_and_less_often(
    tmp_path: Path, stores: list[HistoryStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Left by a review, then mended: a check that a failing disk ended (EIO part way through the file) was
    tried again at every retry, 2 s apart, each a read of the whole file on the hub's loop (9 s at 537 MB).
    The wait doubles after each, to DB_CHECK_RETRY_MAX; writing resumes at the first check that passes."""
    open_store(stores, tmp_path).close()
    checks: list[float] = []
    now = [0.0]
    failing = [True]
    connect = sqlite3.connect

    class Failing(sqlite3.Connection):
        def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
            if "quick_check" in sql:
                checks.append(now[0])
                if failing[0]:
                    raise sqlite3.OperationalError("disk I/O error")
            return super().execute(sql, *args)

    monkeypatch.setattr(sqlite3, "connect", lambda *a, **kw: connect(*a, factory=Failing, **kw))
    s = open_store(stores, tmp_path)
    assert s.degraded and checks == [0.0]
    add(s, s.start_seq + 1)
    for t in range(0, 200):
        now[0] = float(t)
        s.commit(now[0])
    assert checks == [0.0, 0.0, 8.0, 24.0, 56.0, 116.0, 176.0]  # waits of 8, 16, 32, then 60 s
    failing[0] = False
    now[0] = 236.0
    assert s.commit(236.0) and not s.degraded and checks[-1] == 236.0
    s.close()


def test_another_servers_file_after_a_suspension_is_continued_above_its_numbers(
    tmp_path: Path, stores: list[HistoryStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A review: while this server was suspended (another held the data directory), the other ran and did not
    stop cleanly, having handed out numbers past its reservation. Taken for this run's own file, its
    reservation was continued from (its numbers again), and a reservation queued before the suspension was
    then written over the reopen's, below the numbers stored."""
    clock = iter([10**12, 10**12 + 10**9])  # the other's start, then this one's reopen (a second later)
    monkeypatch.setattr(h, "_clock_floor", lambda: next(clock))
    held: list[str] = []
    s = open_store(stores, tmp_path, guard=lambda: held[0] if held else None)
    add(s, h.SEQ_RESERVE)  # a reservation queued ...
    s.suspend("another server holds the data directory")  # ... and not written
    held.append("another server holds the data directory")
    other = HistoryStore(tmp_path)  # (this one marked the file unclean: it continues from the clock)
    assert other.start_seq == 10**12
    add(other, 10**12 + 1)
    assert other.commit(0.0)
    db_of(other).execute("PRAGMA query_only=ON")  # its disk fails ...
    add(other, 10**12 + h.SEQ_RESERVE + 5)  # ... while it hands out numbers past its reservation
    assert other.commit(1.0) is False
    other.close()  # (no clean stop)
    held.clear()
    assert s.commit(10 * const.DB_RETRY_INTERVAL)
    assert s.start_seq == 10**12 + 10**9  # the clock, not the other's reservation
    s.close()
    with sqlite3.connect(tmp_path / h.DB_NAME) as db:
        reserved = int(db.execute("SELECT value FROM meta WHERE key='seq_reserved'").fetchone()[0])
        top = db.execute("SELECT max(seq) FROM events").fetchone()[0]
    db.close()
    assert reserved > top >= 10**12 + 1


def test_reservation_alone_is_committed(tmp_path: Path, stores: list[HistoryStore]) -> None:
    s = open_store(stores, tmp_path)
    s.add_event(h.SEQ_RESERVE, (), 0.0, "nick", "{}")  # no conversation: nothing stored, but the seq is used
    assert s.pending == 0
    assert s.commit(0.0)
    assert open_store(stores, tmp_path).start_seq >= 2 * h.SEQ_RESERVE


def test_start_seq_is_at_least_the_highest_stored_event(tmp_path: Path, stores: list[HistoryStore]) -> None:
    s = open_store(stores, tmp_path)
    s.close()
    with sqlite3.connect(tmp_path / h.DB_NAME) as db:  # a file whose reservation lags its events
        db.execute("INSERT INTO events VALUES ('lobby', 99999, 0, 'msg', '{}')")
        db.execute("UPDATE meta SET value='5' WHERE key='seq_reserved'")
    db.close()
    assert open_store(stores, tmp_path).start_seq == 99999


# --- foreign and broken files ---------------------------------------------------------------------------------


def test_foreign_sqlite_file_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / h.DB_NAME
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE people (name TEXT)")
        db.execute("INSERT INTO people VALUES ('ada')")
    db.close()
    before = path.read_bytes()
    with pytest.raises(StorageError) as info:
        HistoryStore(tmp_path)
    assert "people" in str(info.value) and str(path) in str(info.value)
    assert path.read_bytes() == before
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT name FROM sqlite_master").fetchall() == [("people",)]
    db.close()


def test_a_foreign_file_found_while_serving_degrades_the_store_and_says_why(
    tmp_path: Path, stores: list[HistoryStore], caplog: pytest.LogCaptureFixture
) -> None:
    """A review: a data directory that could not be used at the start, and held someone else's file once it
    could, raised at every commit (a traceback every 2 s) and at the stop (exit 1, the lock not released)."""
    why: list[str] = ["the data directory cannot be locked"]
    s = open_store(stores, tmp_path, guard=lambda: why[0] if why else None)
    assert s.degraded
    add(s, s.start_seq + 1)
    with sqlite3.connect(tmp_path / h.DB_NAME) as db:
        db.execute("CREATE TABLE people (name TEXT)")
    db.close()
    why.clear()
    for n in (1, 2, 3):
        assert s.commit(n * const.DB_RETRY_INTERVAL) is False
    assert s.degraded and s.pending == 1
    assert s.last_error is not None and "not a usable lanchat history database" in s.last_error
    assert sum("not a usable" in r.getMessage() for r in errors(caplog)) == 1  # said once, not at every retry
    assert s.commit(4 * const.DB_RETRY_INTERVAL, force=True) is False
    s.close()
    with sqlite3.connect(tmp_path / h.DB_NAME) as db:  # left alone
        assert db.execute("SELECT name FROM sqlite_master").fetchall() == [("people",)]
    db.close()


def corrupt_lanchat_file(stores: list[HistoryStore], data: Path, backup: Path) -> bytes:
    """A lanchat file in ``data`` with a page of events damaged (its marker still readable), its sound copy in
    ``backup``: the damaged bytes."""
    first = open_store(stores, data)
    for seq in range(1, 3000):  # 123 pages, the 100th one of events
        first.add_event(seq, ("lobby",), 0.0, "msg", '{"x":"%s"}' % ("y" * 100))
    assert first.commit(0.0)
    first.close()
    path = data / h.DB_NAME
    shutil.copy2(path, backup)
    page = bytearray(path.read_bytes())
    page[99 * 4096 + 8 : 99 * 4096 + 72] = b"\xff" * 64  # the cell pointers of a page of events
    path.write_bytes(bytes(page))
    return bytes(page)


def test_another_file_at_the_path_after_a_suspension_is_checked_as_at_a_start(
    tmp_path: Path, stores: list[HistoryStore]
) -> None:
    """A last review: an open while serving skipped the check whatever file it found; after a suspension
    (another server held the directory) a damaged file put there was opened and written to."""
    elsewhere = tmp_path / "elsewhere"
    corrupt_lanchat_file(stores, elsewhere, tmp_path / "backup")
    s = open_store(stores, tmp_path / "data")
    add(s, 1)
    assert s.commit(0.0)
    for replaced_first in (False, True):  # (the other server's file put there after the suspension, or before)
        if replaced_first:
            s.close()
            s = open_store(stores, tmp_path / "again")
            add(s, 1)
            assert s.commit(0.0)
        data = s.path.parent
        if not replaced_first:
            s.suspend("another server holds the data directory")
        for name in (h.DB_NAME, h.DB_NAME + "-wal", h.DB_NAME + "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(data / name)
        shutil.copy(elsewhere / h.DB_NAME, data / h.DB_NAME)
        if replaced_first:  # (a review: taken for this run's own at the suspension's close)
            s.suspend("another server holds the data directory")
        add(s, 2)
        assert s.commit(const.DB_RETRY_INTERVAL) is False
        assert s.degraded and s.last_error is not None and "not a usable lanchat history database" in s.last_error


def test_a_file_copied_over_this_runs_between_retries_is_checked(
    tmp_path: Path, stores: list[HistoryStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A last review: a file that passed the check before its open failed (the reservation's write) was known
    by its device and inode; a damaged one copied over it in place (the same inode) was opened unchecked."""
    corrupt_lanchat_file(stores, tmp_path / "elsewhere", tmp_path / "backup")
    open_store(stores, tmp_path / "data").close()
    connect = sqlite3.connect
    failing = [True]

    class Failing(sqlite3.Connection):
        def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
            if failing[0] and "('seq_reserved', ?), ('clean_stop', '0')" in sql:
                raise sqlite3.OperationalError("disk I/O error")
            return super().execute(sql, *args)

    monkeypatch.setattr(sqlite3, "connect", lambda *a, **kw: connect(*a, factory=Failing, **kw))
    s = open_store(stores, tmp_path / "data")
    add(s, s.start_seq + 1)
    assert s.degraded
    inode = s.path.stat().st_ino
    shutil.copyfile(tmp_path / "elsewhere" / h.DB_NAME, s.path)  # in place
    assert s.path.stat().st_ino == inode
    failing[0] = False
    assert s.commit(const.DB_RETRY_INTERVAL) is False
    assert s.last_error is not None and "not a usable lanchat history database" in s.last_error


def test_a_reopen_that_failed_is_not_taken_for_this_runs_file_once_another_is_there(
    tmp_path: Path, stores: list[HistoryStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A last review: the reopen after a deleted log failed once (no file handle left); a damaged file put at
    the path then was opened at the retry without the check, as if it were this run's."""
    corrupt_lanchat_file(stores, tmp_path / "elsewhere", tmp_path / "backup")
    s = open_store(stores, tmp_path / "data")
    add(s, 1)
    assert s.commit(1.0)
    s.watch_file()  # (the log seen)
    connect = sqlite3.connect
    calls = [0]

    def once_failing(*args: Any, **kw: Any) -> sqlite3.Connection:
        calls[0] += 1
        if calls[0] == 1:
            raise sqlite3.OperationalError("unable to open database file")
        db: sqlite3.Connection = connect(*args, **kw)
        return db

    monkeypatch.setattr(sqlite3, "connect", once_failing)
    os.unlink(str(s.path) + "-wal")
    s.watch_file()
    assert s.degraded and s._db is None
    for name in (h.DB_NAME, h.DB_NAME + "-wal", h.DB_NAME + "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_path / "data" / name)
    shutil.copy(tmp_path / "elsewhere" / h.DB_NAME, s.path)
    add(s, 2)
    assert s.commit(1.0 + const.DB_RETRY_INTERVAL) is False
    assert s.last_error is not None and "not a usable lanchat history database" in s.last_error


def test_a_file_written_back_is_not_checked_again(
    tmp_path: Path, stores: list[HistoryStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The copy a write-back makes of the file this run checked is not checked again (9 s at 537 MB)."""
    statements = traced(monkeypatch)
    s = open_store(stores, tmp_path)
    add(s, 1)
    assert s.commit(1.0)
    os.unlink(s.path)
    s.watch_file()
    assert s.path.exists() and s.opens == 2
    assert sum("quick_check" in x for x in statements) == 1


def test_a_corrupt_file_found_while_serving_is_left_as_it_was_and_read_again_only_once_changed(
    tmp_path: Path, stores: list[HistoryStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A review: a corrupt lanchat file found by a retry was written to before its check (its marker, its
    log), at every retry, 2 s apart, and checked whole each time."""
    data = tmp_path / "data"
    path = data / h.DB_NAME
    backup = tmp_path / "backup"
    page = corrupt_lanchat_file(stores, data, backup)
    mtime = path.stat().st_mtime_ns
    os.utime(backup, ns=(mtime, mtime))  # (the corruption and the backup of the same time: only ctime differs)
    opened: list[str] = []
    connect = sqlite3.connect

    def counted(*args: Any, **kw: Any) -> sqlite3.Connection:
        opened.append(str(args[0]))
        db: sqlite3.Connection = connect(*args, **kw)
        return db

    monkeypatch.setattr(sqlite3, "connect", counted)
    why: list[str] = ["not mounted yet"]
    s = open_store(stores, data, guard=lambda: why[0] if why else None)
    add(s, s.start_seq + 1)
    why.clear()
    for n in (1, 2, 3):
        assert s.commit(n * const.DB_RETRY_INTERVAL) is False
    assert s.last_error is not None and "not a usable lanchat history database" in s.last_error
    assert path.read_bytes() == bytes(page) and not Path(str(path) + "-wal").exists()
    assert opened == [str(path)]  # once: not again while it is the same file
    shutil.copy2(backup, path)  # repaired in place (the same inode, size and time: a review)
    assert s.commit(4 * const.DB_RETRY_INTERVAL)
    assert opened == [str(path)] * 2 and not s.degraded
    assert seqs(s.events("lobby", limit=1)[0]) == [s.start_seq + 1]


def test_foreign_file_with_a_meta_table(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / h.DB_NAME) as db:
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        db.execute("INSERT INTO meta VALUES ('app', 'someone-else')")
    db.close()
    with pytest.raises(StorageError, match="lanchat marker"):
        HistoryStore(tmp_path)


def test_other_schema_version_is_refused(tmp_path: Path, stores: list[HistoryStore]) -> None:
    open_store(stores, tmp_path).close()
    with sqlite3.connect(tmp_path / h.DB_NAME) as db:
        db.execute("UPDATE meta SET value='99' WHERE key='schema'")
    db.close()
    with pytest.raises(StorageError, match="schema version 99"):
        HistoryStore(tmp_path)


@pytest.mark.parametrize(
    "content", [b"this is not a database\n" * 100, b"\x00" * 4096, b"SQLite format 3\x00" + b"\xff" * 200]
)
def test_garbage_file_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / h.DB_NAME
    path.write_bytes(content)
    with pytest.raises(StorageError):
        HistoryStore(tmp_path)
    assert path.read_bytes() == content


def test_empty_file_is_a_new_database(tmp_path: Path, stores: list[HistoryStore]) -> None:
    (tmp_path / h.DB_NAME).write_bytes(b"")
    s = open_store(stores, tmp_path)
    assert not s.degraded and s.start_seq == 0


# --- the file deleted or replaced while serving ----------------------------------------------------------------


@pytest.mark.parametrize("gone", [("",), ("", "-wal", "-shm")], ids=["file", "file-and-log"])
def test_a_file_deleted_while_serving_is_written_back(
    tmp_path: Path, stores: list[HistoryStore], caplog: pytest.LogCaptureFixture, gone: tuple[str, ...]
) -> None:
    """A review: SQLite went on writing to the file it had opened, which nothing could read once deleted, and
    the next start began an empty history (its numbers handed out again). Written back, nothing is lost."""
    s = open_store(stores, tmp_path)
    for seq in (1, 2, 3):
        add(s, seq)
    assert s.commit(1.0)  # (in the log: no checkpoint yet)
    for suffix in gone:
        os.unlink(str(s.path) + suffix)
    s.watch_file()
    assert s.path.exists() and "written back" in caplog.text
    add(s, 4)
    assert s.commit(2.0)
    assert s.checkpoint() is False  # the checkpoint's connection follows to the new file
    s.close()
    again = open_store(stores, tmp_path)
    assert seqs(again.events("lobby")[0]) == [1, 2, 3, 4]
    assert again.start_seq >= h.SEQ_RESERVE  # the reservation came back with the file: no number twice
    assert not (tmp_path / (h.DB_NAME + ".restoring")).exists()


def test_a_write_back_whose_directory_cannot_be_synced_is_opened_all_the_same(
    tmp_path: Path, stores: list[HistoryStore], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A review: the copy was linked in, then the directory's fsync failed; the copy at the path was taken for
    the file open, never opened, and every later commit went to the deleted file, lost at the stop."""
    s = open_store(stores, tmp_path)
    add(s, 1)
    assert s.commit(1.0)
    fsync = h._fsync
    failed: list[Path] = []

    def dir_fails_once(path: Path) -> None:
        if path.is_dir() and not failed:
            failed.append(path)
            raise OSError(errno.EIO, "Input/output error")
        fsync(path)

    monkeypatch.setattr(h, "_fsync", dir_fails_once)
    os.unlink(s.path)
    s.watch_file()
    assert failed and s.opens == 2 and "could not be synced" in caplog.text
    for seq in (2, 3):
        add(s, seq)
    assert s.commit(2.0)
    s.close()
    assert seqs(open_store(stores, tmp_path).events("lobby")[0]) == [1, 2, 3]


def test_a_write_back_that_fails_is_tried_again_less_and_less_often(
    tmp_path: Path, stores: list[HistoryStore], caplog: pytest.LogCaptureFixture
) -> None:
    """A review: a write-back that failed (a full disk, say) was tried every second, each time a whole copy of
    the database on the hub's loop. It waits 1, 2, 4 ... seconds (5 minutes at most) between tries."""
    s = open_store(stores, tmp_path)
    add(s, 1)
    assert s.commit(1.0)
    os.unlink(s.path)
    (tmp_path / (h.DB_NAME + ".restoring")).mkdir()  # the copy cannot be made
    for _ in range(10):
        s.watch_file()
    assert len(errors(caplog)) == 3 and "trying again in 4 s" in caplog.text  # tries at the 1st, 3rd, 6th look
    (tmp_path / (h.DB_NAME + ".restoring")).rmdir()
    for _ in range(5):
        s.watch_file()
    assert s.path.exists() and "written back from the open file" in caplog.text


def test_a_log_deleted_while_serving_is_copied_into_the_file(
    tmp_path: Path, stores: list[HistoryStore], caplog: pytest.LogCaptureFixture
) -> None:
    """A review: `rm history.sqlite3-wal` alone went unnoticed; SQLite wrote on into the deleted log, and a
    crash lost every post acknowledged since the last checkpoint. Its commits are copied into the file."""
    s = open_store(stores, tmp_path)
    add(s, 1)
    assert s.commit(1.0)
    s.watch_file()  # (the log seen)
    add(s, 2)
    assert s.commit(2.0)  # in the log only: no checkpoint since
    os.unlink(str(s.path) + "-wal")
    s.watch_file()
    assert "its commits copied into the database" in caplog.text
    add(s, 3)
    assert s.commit(3.0)
    with sqlite3.connect(f"file:{s.path}?mode=ro", uri=True) as reader:  # what a crash now would leave
        rows = reader.execute("SELECT seq FROM events UNION SELECT seq FROM journal ORDER BY 1").fetchall()
    reader.close()
    assert [r[0] for r in rows] == [1, 2, 3]


def test_a_file_replaced_while_serving_is_not_overwritten(
    tmp_path: Path, stores: list[HistoryStore], caplog: pytest.LogCaptureFixture
) -> None:
    s = open_store(stores, tmp_path)
    add(s, 1)
    assert s.commit(1.0)
    other = tmp_path / "other"
    other.write_bytes(b"an operator's file")
    os.replace(other, s.path)
    s.watch_file()
    s.watch_file()
    assert [r.getMessage() for r in errors(caplog)] == [
        f"history: {s.path} was replaced while serving: the next start uses it (stop the server before replacing "
        "it); chat goes on, and this run keeps its history in memory from now on"
    ]  # once
    assert s.path.read_bytes() == b"an operator's file"
    assert not os.path.exists(f"{s.path}-wal") and not os.path.exists(f"{s.path}-shm")  # the old file's: gone
    # A resume from before the let-go is told of a gap: event 1 was in the file let go of (a later review)
    assert s.lost_upto("lobby") >= 1 and s.lost_between("lobby", 0, 1)
    add(s, 2)
    assert s.commit(5.0) is False and s.degraded and s.pending  # in memory; the file at the path is not opened
    assert s.commit(50.0, force=True) is False and s.path.read_bytes() == b"an operator's file"


def test_a_data_directory_deleted_while_serving_is_not_made_again(
    tmp_path: Path, stores: list[HistoryStore], caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "data"
    s = open_store(stores, data)
    add(s, 1)
    assert s.commit(1.0)
    for f in data.iterdir():
        f.unlink()
    data.rmdir()
    s.watch_file()
    s.watch_file()
    assert len(errors(caplog)) == 1 and "cannot be written back (its directory is gone)" in caplog.text
    assert not data.exists()


# --- pruning --------------------------------------------------------------------------------------------------


def test_pruning_keeps_history_limit_per_conv(tmp_path: Path, stores: list[HistoryStore]) -> None:
    s = open_store(stores, tmp_path, history_limit=3)
    for seq in range(1, 8):
        add(s, seq, "lobby" if seq % 2 else "dev")  # lobby: 1 3 5 7, dev: 2 4 6
    assert s.commit(0.0)
    assert seqs(s.events("lobby")[0]) == [3, 5, 7]
    assert seqs(s.events("dev")[0]) == [2, 4, 6]
    assert s.lost_upto("lobby") == 1
    assert s.lost_upto("dev") == 0
    assert s.lost_upto("never") == 0
    for seq in range(8, 12):
        add(s, seq, "dev")
    assert s.commit(0.0)
    assert seqs(s.events("dev")[0]) == [9, 10, 11]
    assert s.lost_upto("dev") == 8
    s.close()
    s2 = open_store(stores, tmp_path, history_limit=3)
    assert (s2.lost_upto("lobby"), s2.lost_upto("dev")) == (1, 8)  # recorded in the file
    add(s2, 20, "lobby")
    assert s2.commit(0.0)
    assert seqs(s2.events("lobby")[0]) == [5, 7, 20]  # counts were reloaded too
    assert s2.lost_upto("lobby") == 3


def test_a_prune_rolled_back_by_a_failed_commit_is_not_reported_as_lost(
    tmp_path: Path, stores: list[HistoryStore]
) -> None:
    """A full disk fails the COMMIT itself (the write-ahead log cannot grow), after the prune ran in the
    transaction. The store recorded the prune anyway: a resume then reported a gap over events the file
    still held, until a later commit."""

    class FailingCommit:  # the connection, whose COMMIT fails as on a full disk
        def __init__(self, db: sqlite3.Connection) -> None:
            self.db = db

        def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
            if sql == "COMMIT":
                raise sqlite3.OperationalError("database or disk is full")
            return self.db.execute(sql, *args)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.db, name)

    s = open_store(stores, tmp_path, history_limit=3)
    for seq in range(1, 4):
        add(s, seq)
    assert s.commit(0.0) and s.lost_upto("lobby") == 0
    db = s._db
    assert db is not None
    s._db = FailingCommit(db)  # type: ignore[assignment]
    add(s, 4)
    add(s, 5)
    assert s.commit(1.0) is False  # the prune of 1-2 ran, then the COMMIT failed: all rolled back
    assert s.lost_upto("lobby") == 0 and not s.lost_between("lobby", 0, 3)
    assert seqs(s.events("lobby", limit=10)[0]) == [1, 2, 3]  # all still in the file
    s._db = db  # the disk has room again
    assert s.commit(1.0 + const.DB_RETRY_INTERVAL)
    assert s.lost_upto("lobby") == 2 and seqs(s.events("lobby")[0]) == [3, 4, 5]


def test_pruning_per_commit_is_bounded(
    tmp_path: Path, stores: list[HistoryStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backlog (the limit lowered at a restart) is worked off PRUNE_BATCH rows per commit (or as many as the
    commit added, if more), so that one commit never rewrites the whole table."""
    s = open_store(stores, tmp_path, history_limit=100)
    for seq in range(1, 8):
        add(s, seq)
    assert s.commit(0.0)
    s.close()
    monkeypatch.setattr(h, "PRUNE_BATCH", 2)
    s = open_store(stores, tmp_path, history_limit=2)
    add(s, 8)
    assert s.commit(0.0)
    assert seqs(s.events("lobby", limit=100)[0]) == [3, 4, 5, 6, 7, 8]  # only 2 removed this time
    assert s.lost_upto("lobby") == 2
    add(s, 9)
    assert s.commit(0.0)
    assert seqs(s.events("lobby", limit=100)[0]) == [5, 6, 7, 8, 9]
    assert s.lost_upto("lobby") == 4


def test_a_large_limit_is_pruned_in_steps_of_its_slack(tmp_path: Path, stores: list[HistoryStore]) -> None:
    s = open_store(stores, tmp_path, history_limit=300)  # slack: 1 % of the limit = 3 events
    for seq in range(1, 304):
        add(s, seq)
    assert s.commit(0.0)
    assert s.lost_upto("lobby") == 0  # 3 over the limit: within the slack, nothing rewritten
    add(s, 304)
    assert s.commit(0.0)
    assert s.lost_upto("lobby") == 4  # 4 over: back to the limit at once
    kept = seqs(s.events("lobby", limit=500)[0])
    assert kept == list(range(5, 305))


def test_event_in_several_convs_is_counted_and_pruned_per_conv(tmp_path: Path, stores: list[HistoryStore]) -> None:
    s = open_store(stores, tmp_path, history_limit=1)
    add(s, 1, "a", "b")
    add(s, 2, "a")
    assert s.commit(0.0)
    assert seqs(s.events("a")[0]) == [2]
    assert seqs(s.events("b")[0]) == [1]
    assert list(s.replay_newest(0, ["a", "b"])) == [(2, line(2, "a")), (1, line(1, "a"))]


# --- the journal: commits spread over many conversations -------------------------------------------------------


def table_sizes(s: HistoryStore) -> tuple[int, int]:
    """(rows in events, rows in journal), read from the file by a connection of the test's own."""
    with sqlite3.connect(s.path) as db:
        sizes = tuple(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0] for table in ("events", "journal"))
    db.close()
    return sizes[0], sizes[1]


def spread(s: HistoryStore, first: int, n: int, rooms: int) -> None:
    """Events first .. first+n-1, round robin over rooms r0 .. r{rooms-1}."""
    for seq in range(first, first + n):
        add(s, seq, f"r{seq % rooms}")


def test_a_commit_over_few_conversations_is_written_directly(tmp_path: Path, stores: list[HistoryStore]) -> None:
    s = open_store(stores, tmp_path)
    spread(s, 1, 40, h.JOURNAL_CONVS)
    assert s.commit(0.0)
    assert table_sizes(s) == (40, 0)


def test_a_spread_commit_goes_to_the_journal_and_is_folded_at_fold_rows(
    tmp_path: Path, stores: list[HistoryStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(h, "FOLD_ROWS", 12)
    s = open_store(stores, tmp_path)
    spread(s, 1, 6, h.JOURNAL_CONVS + 1)  # 5 conversations: one more than the direct path takes
    assert s.commit(0.0)
    assert table_sizes(s) == (0, 6)
    assert seqs(s.events("r1")[0]) == [1, 6]  # readable at once, from the journal
    spread(s, 7, 5, 5)
    assert s.commit(0.0)
    assert table_sizes(s) == (0, 11)  # one short of FOLD_ROWS
    add(s, 12, "r0")  # a direct commit does not fold ...
    assert s.commit(0.0)
    assert table_sizes(s) == (1, 11)
    spread(s, 13, 5, 5)  # ... the spread one that reaches FOLD_ROWS does, its own events included
    assert s.commit(0.0)
    assert table_sizes(s) == (17, 0)
    assert seqs(s.events("r0", limit=100)[0]) == [5, 10, 12, 15]
    assert replayed(s, 0, [f"r{i}" for i in range(5)]) == list(range(17, 0, -1))


def test_retention_applies_to_journal_events_when_folded(
    tmp_path: Path, stores: list[HistoryStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(h, "FOLD_ROWS", 20)
    s = open_store(stores, tmp_path, history_limit=2)
    spread(s, 1, 15, 5)  # 3 events in each of 5 rooms, the limit is 2
    assert s.commit(0.0)
    assert seqs(s.events("r1")[0]) == [1, 6, 11]  # in the journal: not pruned yet
    assert s.lost_upto("r1") == 0
    spread(s, 16, 5, 5)
    assert s.commit(0.0)  # 20 rows: folded, then pruned
    assert table_sizes(s) == (10, 0)
    assert seqs(s.events("r1")[0]) == [11, 16]
    assert s.lost_upto("r1") == 6


def test_a_room_with_journaled_rows_is_folded_before_it_is_pruned(tmp_path: Path, stores: list[HistoryStore]) -> None:
    """A burst over many rooms leaves rows of a busy room in the journal; the room then talks alone (direct
    commits) past its limit. Pruning sees only ``events``: it used to delete rows newer than the journaled
    ones, and the history had a hole (old rows, then a jump, no gap)."""
    s = open_store(stores, tmp_path, history_limit=100)
    spread(s, 1, 50, 5)  # one commit over r0 .. r4: 10 rows of r0 in the journal
    assert s.commit(0.0) and table_sizes(s) == (0, 50)
    for seq in range(51, 351):  # then r0 alone, one event per commit
        add(s, seq, "r0")
        assert s.commit(0.0)
    everything = [q for q in range(1, 351) if q % 5 == 0 or q > 50]  # r0's events
    lines, _ = s.events("r0", limit=500)
    kept = seqs(lines)
    assert kept == everything[-len(kept) :] and 100 <= len(kept) <= 101  # the newest, contiguous: no hole
    assert s.lost_upto("r0") == everything[-len(kept) - 1]
    assert seqs(s.events("r0", before=kept[5], limit=10)[0]) == kept[:5]  # paging back ends at the cut


def test_the_journal_survives_a_restart(
    tmp_path: Path, stores: list[HistoryStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(h, "FOLD_ROWS", 15)
    s = open_store(stores, tmp_path)
    spread(s, 1, 10, 5)
    assert s.commit(0.0)
    s.close()
    with sqlite3.connect(tmp_path / h.DB_NAME) as db:  # a reservation behind the journal: the file decides
        db.execute("UPDATE meta SET value='5' WHERE key='seq_reserved'")
    db.close()
    s2 = open_store(stores, tmp_path)
    assert s2.start_seq == 10  # the journal's events count for the sequence
    assert seqs(s2.events("r3")[0]) == [3, 8]
    spread(s2, 11, 5, 5)  # 15 with what the journal held before the restart: folded
    assert s2.commit(0.0)
    assert table_sizes(s2) == (15, 0)
    assert seqs(s2.events("r3")[0]) == [3, 8, 13]


def test_a_failed_spread_commit_leaves_the_journal_as_it_was(
    tmp_path: Path, stores: list[HistoryStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(h, "FOLD_ROWS", 10)
    s = open_store(stores, tmp_path)
    spread(s, 1, 6, 6)
    assert s.commit(0.0)
    assert s.journal == 6
    db_of(s).execute("PRAGMA query_only=ON")
    spread(s, 7, 6, 6)  # would fold: 12 >= 10
    assert s.commit(1.0) is False
    assert s.journal == 6 and s.pending == 6  # neither counted nor folded, still queued
    db_of(s).execute("PRAGMA query_only=OFF")
    assert s.commit(1.0 + const.DB_RETRY_INTERVAL)
    assert (s.journal, table_sizes(s)) == (0, (12, 0))
    assert seqs(s.events("r0", limit=100)[0]) == [6, 12]


@pytest.mark.parametrize("version", [1, 2, 3])
def test_an_older_file_is_upgraded_in_place(
    tmp_path: Path, stores: list[HistoryStore], caplog: pytest.LogCaptureFixture, version: int
) -> None:
    s = open_store(stores, tmp_path)
    add(s, 1)
    s.put_session(SessionRow("a", "t", "al", ("lobby",), 3, False, start=7, aliases="o"))
    s.put_expired("k", 2, 5.0, "b")
    assert s.commit(0.0)
    s.close()
    with sqlite3.connect(tmp_path / h.DB_NAME) as db:  # what lanchat before format 4 wrote
        for table, name, _ in h._FORMAT_4_COLUMNS:
            db.execute(f"ALTER TABLE {table} DROP COLUMN {name}")
        if version <= 2:  # and before their start
            db.execute("ALTER TABLE sessions DROP COLUMN start")
        if version == 1:  # and before the journal
            db.execute("DROP TABLE journal")
        db.execute("UPDATE meta SET value=? WHERE key='schema'", (str(version),))
    db.close()
    s2 = open_store(stores, tmp_path)
    assert f"history: file format {version} upgraded to 4; an earlier lanchat refuses it now" in caplog.text
    assert seqs(s2.events("lobby")[0]) == [1]
    assert table_sizes(s2) == (1, 0)
    start = 7 if version == 3 else -1  # (-1: not known)
    assert s2.load_sessions() == [SessionRow("a", "t", "al", ("lobby",), 3, False, start=start)]
    assert s2.load_expired() == [("k", 2, 5.0, "", -1)]
    new = SessionRow("a", "t", "al", ("lobby",), 3, False, 9, aliases="p", last_join=8, last_join_room="x")
    s2.put_session(new)
    s2.put_expired("k", 2, 5.0, "c", 3)
    assert s2.commit(1.0)
    assert (s2.load_sessions(), s2.load_expired()) == ([new], [("k", 2, 5.0, "c", 3)])
    with sqlite3.connect(tmp_path / h.DB_NAME) as db:
        assert db.execute("SELECT value FROM meta WHERE key='schema'").fetchone() == (str(h.SCHEMA_VERSION),)
    db.close()


# --- reads ----------------------------------------------------------------------------------------------------


@pytest.fixture(params=["events", "journal", "both"])
def ten(
    request: pytest.FixtureRequest, tmp_path: Path, stores: list[HistoryStore], monkeypatch: pytest.MonkeyPatch
) -> HistoryStore:
    """20 events in two conversations, stored directly, in the journal (not yet folded), or 1-10 directly
    and 11-20 in the journal: every read below must give the same answers from each."""
    s = open_store(stores, tmp_path)
    for seq in range(1, 21):
        if (seq, request.param) in ((1, "journal"), (11, "both")):
            assert s.commit(0.0)
            monkeypatch.setattr(h, "JOURNAL_CONVS", 0)  # every commit from here on is a spread one
        add(s, seq, "lobby" if seq % 2 == 0 else "dev")  # lobby: 2 4 ... 20
    assert s.commit(0.0)
    in_journal = {"events": 0, "journal": 20, "both": 10}[request.param]
    assert table_sizes(s) == (20 - in_journal, in_journal)
    return s


def test_events_newest_page_oldest_first(ten: HistoryStore) -> None:
    assert (seqs(ten.events("lobby", limit=3)[0]), ten.events("lobby", limit=3)[1]) == ([16, 18, 20], True)
    assert seqs(ten.events("lobby", limit=10)[0]) == list(range(2, 21, 2))
    assert ten.events("lobby", limit=10)[1] is False
    assert ten.events("lobby", limit=9)[1] is True


def test_events_before(ten: HistoryStore) -> None:
    lines, more = ten.events("lobby", before=16, limit=3)
    assert (seqs(lines), more) == ([10, 12, 14], True)
    lines, more = ten.events("lobby", before=8, limit=3)
    assert (seqs(lines), more) == ([2, 4, 6], False)
    assert ten.events("lobby", before=2, limit=3) == ([], False)


def test_events_after(ten: HistoryStore) -> None:
    lines, more = ten.events("lobby", after=4, limit=3)
    assert (seqs(lines), more) == ([6, 8, 10], True)
    lines, more = ten.events("lobby", after=14, limit=3)
    assert (seqs(lines), more) == ([16, 18, 20], False)
    assert ten.events("lobby", after=20) == ([], False)


def test_a_page_stops_reading_at_its_character_budget(ten: HistoryStore) -> None:
    """A history page was read whole (500 rows of long lines) and cut to the reply's bytes afterwards:
    each request cost ten times what it sent. The rows past the budget are not read."""
    each = len(ten.events("lobby", limit=1)[0][0]) + 1
    lines, more = ten.events("lobby", limit=10, max_chars=3 * each)
    assert (seqs(lines), more) == ([16, 18, 20], True)  # the newest that fit, still oldest first
    lines, more = ten.events("lobby", after=4, limit=10, max_chars=2 * each + 1)
    assert (seqs(lines), more) == ([6, 8], True)
    assert seqs(ten.events("lobby", limit=10, max_chars=1)[0]) == [20]  # one at least
    assert ten.events("lobby", limit=10, max_chars=10 * each) == ten.events("lobby", limit=10)


def test_events_between(ten: HistoryStore) -> None:
    lines, more = ten.events("lobby", after=4, before=12, limit=2)
    assert (seqs(lines), more) == ([8, 10], True)


def test_events_of_unknown_conv(ten: HistoryStore) -> None:
    assert ten.events("nowhere") == ([], False)


def replayed(s: HistoryStore, after: int, convs: list[str], page: int = h.REPLAY_PAGE) -> list[int]:
    return [q for q, _ in s.replay_newest(after, convs, page)]


@pytest.mark.parametrize("page", [1, 2, 3, h.REPLAY_PAGE])
def test_replay_newest(ten: HistoryStore, page: int) -> None:
    """Newest first, merged over the conversations, whatever the page size of each conversation's reads."""
    assert replayed(ten, 15, ["lobby", "dev"], page) == [20, 19, 18, 17, 16]
    assert replayed(ten, 15, ["lobby"], page) == [20, 18, 16]
    assert replayed(ten, 0, ["lobby", "dev"], page) == list(range(20, 0, -1))
    assert replayed(ten, 0, [], page) == []
    assert replayed(ten, 20, ["lobby"], page) == []
    assert list(ten.replay_newest(18, ["lobby"], page)) == [(20, line(20))]


def test_replay_newest_reads_only_as_far_as_it_is_iterated(ten: HistoryStore) -> None:
    """A resume stops at its byte budget: the pages it did not reach are never read."""
    statements: list[str] = []
    assert ten._db is not None
    ten._db.set_trace_callback(statements.append)
    newest = ten.replay_newest(0, ["lobby", "dev"], page=2)
    assert [next(newest)[0] for _ in range(3)] == [20, 19, 18]
    assert len(statements) == 2  # the first page of each conversation (20 18, 19 17)
    assert [q for q, _ in newest] == list(range(17, 0, -1))
    assert len(statements) == 12  # all of it: 5 pages of each and an empty sixth


def test_replay_newest_starts_with_small_pages(tmp_path: Path, stores: list[HistoryStore]) -> None:
    """The merge reads a page of every conversation before it yields the first event: a session in 50 rooms
    must not read 50 full pages to replay a handful of events."""
    s = open_store(stores, tmp_path)
    for seq in range(1, 3001):
        add(s, seq, f"r{seq % 3}")
    assert s.commit(0.0)
    statements: list[str] = []
    db_of(s).set_trace_callback(statements.append)
    newest = s.replay_newest(0, ["r0", "r1", "r2"])
    assert [next(newest)[0] for _ in range(5)] == [3000, 2999, 2998, 2997, 2996]
    assert [q.rsplit("LIMIT ", 1)[1] for q in statements] == [str(h.REPLAY_FIRST_PAGE)] * 3
    assert len([q for q, _ in newest]) == 2995  # and all of it, pages doubling up to REPLAY_PAGE
    assert max(int(q.rsplit("LIMIT ", 1)[1]) for q in statements) == h.REPLAY_PAGE


def test_replay_gives_an_event_of_several_convs_once(tmp_path: Path, stores: list[HistoryStore]) -> None:
    s = open_store(stores, tmp_path)
    add(s, 1, "a", "b", "@me")
    add(s, 2, "b")
    s.commit(0.0)
    assert replayed(s, 0, ["a", "b", "@me"]) == [2, 1]


def test_replay_gives_an_event_of_several_convs_once_from_the_journal(
    tmp_path: Path, stores: list[HistoryStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(h, "JOURNAL_CONVS", 0)
    s = open_store(stores, tmp_path)
    add(s, 1, "a", "b", "@me")
    add(s, 2, "b")
    s.commit(0.0)
    assert table_sizes(s) == (0, 4)
    assert replayed(s, 0, ["a", "b", "@me"], page=1) == [2, 1]


def test_uncommitted_events_are_not_read(tmp_path: Path, stores: list[HistoryStore]) -> None:
    s = open_store(stores, tmp_path)
    add(s, 1)
    assert s.events("lobby") == ([], False)
    s.commit(0.0)
    assert seqs(s.events("lobby")[0]) == [1]


# --- a failing disk -------------------------------------------------------------------------------------------


def db_of(s: HistoryStore) -> sqlite3.Connection:
    assert s._db is not None
    return s._db


@pytest.mark.parametrize("failure", ["query_only", "disk_full"])
def test_write_failure_degrades_keeps_data_and_recovers(
    tmp_path: Path, stores: list[HistoryStore], caplog: pytest.LogCaptureFixture, failure: str
) -> None:
    caplog.set_level(logging.INFO, logger="lanchat.storage")
    s = open_store(stores, tmp_path)
    add(s, 1)
    assert s.commit(0.0)
    db = db_of(s)
    if failure == "query_only":
        db.execute("PRAGMA query_only=ON")
    else:
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        db.execute(f"PRAGMA max_page_count={pages}")
    add(s, 2)
    s.put_topic("lobby", "x" * 50_000)
    s.put_session(SessionRow("sid", "tok", "al", ("lobby",), 3, False))
    for seq in range(3, 40):
        s.add_event(seq, ("lobby",), 1.0, "msg", line(seq)[:-1] + ',"pad":"' + "y" * 5000 + '"}')
    pending = s.pending
    assert s.commit(10.0) is False
    assert s.degraded
    assert s.last_error is not None and "write failed" in s.last_error
    assert s.pending == pending  # nothing lost
    assert len(errors(caplog)) == 1
    assert s.commit(10.5) is False  # before the retry interval: not even tried
    assert s.commit(10.0 + const.DB_RETRY_INTERVAL) is False  # tried again, still failing
    assert len(errors(caplog)) == 1  # logged once, not once per attempt
    assert s.pending == pending
    assert seqs(s.events("lobby", limit=100)[0]) == [1]
    # the failure goes away
    if failure == "query_only":
        db.execute("PRAGMA query_only=OFF")
    else:
        db.execute("PRAGMA max_page_count=1073741823")
    assert s.commit(10.0 + const.DB_RETRY_INTERVAL + 0.1) is False  # still waiting for the retry time
    assert s.commit(10.0 + 2 * const.DB_RETRY_INTERVAL) is True
    assert not s.degraded and s.last_error is None
    assert s.pending == 0
    assert seqs(s.events("lobby", limit=100)[0]) == list(range(1, 40))
    assert s.topic("lobby") == "x" * 50_000
    assert [r.sid for r in s.load_sessions()] == ["sid"]
    assert any("resumed" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert s.commit(100.0) is True


def test_second_failure_after_recovery_is_logged_again(
    tmp_path: Path, stores: list[HistoryStore], caplog: pytest.LogCaptureFixture
) -> None:
    s = open_store(stores, tmp_path)
    db = db_of(s)
    for attempt in range(2):
        db.execute("PRAGMA query_only=ON")
        add(s, attempt + 1)
        t = attempt * 100.0
        assert s.commit(t) is False
        db.execute("PRAGMA query_only=OFF")
        assert s.commit(t + const.DB_RETRY_INTERVAL) is True
    assert len(errors(caplog)) == 2


def test_degraded_commit_with_nothing_pending_reports_failure(tmp_path: Path, stores: list[HistoryStore]) -> None:
    s = open_store(stores, tmp_path)
    db_of(s).execute("PRAGMA query_only=ON")
    add(s, 1)
    assert s.commit(0.0) is False
    assert s.commit(0.5) is False


@pytest.mark.parametrize("limit", ["rows", "bytes"])
def test_pending_writes_are_bounded_while_failing(
    tmp_path: Path, stores: list[HistoryStore], monkeypatch: pytest.MonkeyPatch, limit: str
) -> None:
    if limit == "rows":
        monkeypatch.setattr(const, "PENDING_WRITES_MAX", 5)
    else:  # five of these lines fit: 100,000 rows of the largest lines would be 1.6 GB
        monkeypatch.setattr(const, "PENDING_WRITES_BYTES", 5 * len(line(1)) + 3)
    s = open_store(stores, tmp_path)
    db_of(s).execute("PRAGMA query_only=ON")
    for seq in range(1, 9):
        add(s, seq)
    assert s.pending == 5
    assert s.dropped == 3
    assert s.commit(0.0) is False
    db_of(s).execute("PRAGMA query_only=OFF")
    assert s.commit(const.DB_RETRY_INTERVAL)
    assert seqs(s.events("lobby")[0]) == [4, 5, 6, 7, 8]  # the oldest were given up


def test_held_topics_are_bounded_while_failing(
    tmp_path: Path, stores: list[HistoryStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A review: rooms made, given a topic and left while the disk failed each left a topic queued, unbounded."""
    monkeypatch.setattr(const, "PENDING_WRITES_MAX", 5)
    s = open_store(stores, tmp_path)
    db_of(s).execute("PRAGMA query_only=ON")
    s.put_topic("lobby", "first")
    assert s.commit(0.0) is False and s.degraded
    for n in range(8):
        s.put_topic(f"room{n}", f"topic {n}")
    assert s.pending == 5 and s.dropped == 4
    assert s.topic("room7") == "topic 7" and s.topic("lobby") == ""  # the oldest went
    db_of(s).execute("PRAGMA query_only=OFF")
    assert s.commit(const.DB_RETRY_INTERVAL)
    assert [s.topic(f"room{n}") for n in range(8)] == ["", "", ""] + [f"topic {n}" for n in range(3, 8)]


def test_a_held_topic_given_up_on_leaves_no_older_topic_to_come_back(
    tmp_path: Path, stores: list[HistoryStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A review: a topic cleared while the disk failed, given up on, came back from the file with its room.
    Then the file's topics are deleted at the next commit, and the hub writes the live rooms' again."""
    s = open_store(stores, tmp_path)
    s.live_topics = lambda: [("ops", "keep me")]  # (the hub's live rooms)
    s.put_topic("cafe", "secret wifi password is hunter2")
    s.put_topic("ops", "keep me")
    assert s.commit(0.0)
    monkeypatch.setattr(const, "PENDING_WRITES_MAX", 2)
    db_of(s).execute("PRAGMA query_only=ON")
    s.put_topic("cafe", "")
    assert s.commit(1.0) is False
    for n in range(3):
        s.put_topic(f"room{n}", f"topic {n}")
    assert s.topic("cafe") == ""
    db_of(s).execute("PRAGMA query_only=OFF")
    assert s.commit(1.0 + const.DB_RETRY_INTERVAL)
    topics = [s.topic(r) for r in ("cafe", "room0", "room1", "room2", "ops")]
    assert topics == ["", "", "topic 1", "topic 2", "keep me"]


def test_the_conversations_given_up_on_are_remembered_up_to_a_bound(
    tmp_path: Path, stores: list[HistoryStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One entry per conversation whose events were given up on while the disk failed, kept for the run: a
    room made and left each minute of a long failure added one. Past DROPPED_KEPT the one given up on longest
    ago folds into a range for all, which may tell a hole that is not, never hide one. (A review: the first
    given up on went, however recently, and the range was taken as reaching back to 0.)"""
    monkeypatch.setattr(const, "PENDING_WRITES_MAX", 1)
    monkeypatch.setattr(h, "DROPPED_KEPT", 2)
    s = open_store(stores, tmp_path)
    db_of(s).execute("PRAGMA query_only=ON")
    for seq, room in enumerate(["r1", "r2", "r1", "r3", "r4"], start=1):
        add(s, seq, room)  # each gives the one before it up: r1 (1), r2 (2), r1 (3), r3 (4)
    assert s.dropped == 4 and list(s._dropped) == ["r1", "r3"]  # r2, given up on longest ago, folded
    assert [s.lost_upto(r) for r in ("r1", "r2", "r3", "r4")] == [3, 2, 4, 2]
    assert s.lost_between("r1", 0, 2) and not s.lost_between("r1", 3, 9)
    assert s.lost_between("r2", 1, 2) and not s.lost_between("r2", 2, 9)
    assert s.lost_between("r3", 3, 4)
    assert s.lost_between("r4", 1, 5)  # the range folded in (2 to 2): maybe (r4 lost none)
    assert not s.lost_between("r4", 0, 1)  # (before the range: no)


@pytest.mark.parametrize("limit", ["rows", "bytes"])
def test_pending_sessions_are_bounded_while_failing(
    tmp_path: Path, stores: list[HistoryStore], monkeypatch: pytest.MonkeyPatch, limit: str
) -> None:
    """Each session that came and went while the disk failed left its record (or its deletion) in memory,
    without bound. They are held to the events' caps, counted apart; the oldest write goes first."""

    def row(sid: str, last_id: int = 0) -> SessionRow:
        return SessionRow(sid, "tok", "al", ("lobby",), last_id, False)  # 12 characters with a 2-character sid

    if limit == "rows":
        monkeypatch.setattr(const, "PENDING_WRITES_MAX", 3)
    else:
        monkeypatch.setattr(const, "PENDING_WRITES_BYTES", 3 * 12 + 1)
    s = open_store(stores, tmp_path)
    db_of(s).execute("PRAGMA query_only=ON")
    add(s, 1)  # an event: its own budget, not the sessions'
    s.put_session(row("s0"))  # queued before the failure is known: counted once it is
    assert s.commit(0.0) is False
    for i in range(1, 5):
        s.put_session(row(f"s{i}"))
    assert (s.pending, s.dropped) == (1 + 3, 2)  # s0 and s1 were given up
    s.put_session(row("s2", 7))  # written again: the newest write now, s3 is the oldest
    s.drop_session("s9", keep_conv=True)  # a deletion is a write too (2 characters)
    assert (s.pending, s.dropped) == (1 + 3, 3)
    db_of(s).execute("PRAGMA query_only=OFF")
    assert s.commit(const.DB_RETRY_INTERVAL)
    assert sorted(s.load_sessions(), key=lambda r: r.sid) == [row("s2", 7), row("s4")]
    assert seqs(s.events("lobby")[0]) == [1]
    db_of(s).execute("PRAGMA query_only=ON")
    s.put_session(row("t0"))
    assert s.commit(100.0) is False
    s.put_session(row("t1"))
    s.drop_session("t2", keep_conv=True)
    assert (s.pending, s.dropped) == (3, 3)  # the budget was freed by the commit: nothing more given up
    db_of(s).execute("PRAGMA query_only=OFF")


def test_only_a_live_sessions_record_given_up_on_asks_for_every_record_again(
    tmp_path: Path, stores: list[HistoryStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(const, "PENDING_WRITES_MAX", 1)
    s = open_store(stores, tmp_path)
    db_of(s).execute("PRAGMA query_only=ON")
    s.drop_session("x", keep_conv=True)
    assert s.commit(0.0) is False
    s.drop_session("y", keep_conv=True)  # a deletion given up on: that session comes back at the next start, ends
    assert (s.dropped, s.sessions_lost) == (1, False)
    s.put_session(SessionRow("a", "t", "al", ("x",), 0, False))
    s.put_session(SessionRow("b", "u", "bo", ("x",), 0, False))
    assert s.sessions_lost  # a live one's: the hub writes them all again once the disk works
    db_of(s).execute("PRAGMA query_only=OFF")
    assert s.commit(const.DB_RETRY_INTERVAL)


def test_expired_tokens_are_written_deleted_and_bounded_while_failing(
    tmp_path: Path, stores: list[HistoryStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(const, "PENDING_WRITES_MAX", 2)
    s = open_store(stores, tmp_path)
    s.put_expired("k0", 5, 10.0, "s0")
    s.put_expired("k1", 6, 11.0, "s1")
    assert s.commit(11.0)
    assert s.load_expired() == [("k0", 5, 10.0, "s0", -1), ("k1", 6, 11.0, "s1", -1)]  # oldest first
    db_of(s).execute("PRAGMA query_only=ON")
    s.drop_expired("k0")
    assert s.commit(12.0) is False
    for i in range(2, 5):
        s.put_expired(f"k{i}", i, 12.0 + i, f"s{i}")
    assert (s.pending, s.dropped) == (2, 2)  # the deletion of k0 and k2 were given up: the oldest writes
    db_of(s).execute("PRAGMA query_only=OFF")
    assert s.commit(12.0 + const.DB_RETRY_INTERVAL)
    assert [r[0] for r in s.load_expired()] == ["k0", "k1", "k3", "k4"]  # (the hub forgets the old ones)


def test_unopenable_directory_is_degraded_not_fatal(tmp_path: Path, stores: list[HistoryStore]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    s = open_store(stores, blocker / "data")
    assert s.degraded and s.last_error is not None and "cannot open" in s.last_error
    assert s.load_sessions() == [] and s.topic("lobby") == ""
    assert s.events("lobby") == ([], False)
    assert list(s.replay_newest(0, ["lobby"])) == []
    s.put_topic("lobby", "kept")
    assert s.commit(0.0) is False
    assert s.pending == 1
    blocker.unlink()  # the disk comes back
    assert s.commit(1.0) is False  # before the retry time
    assert s.commit(const.DB_RETRY_INTERVAL) is True
    assert not s.degraded
    assert s.topic("lobby") == "kept"


def test_a_file_that_appears_after_a_failed_open_is_never_counted_over(
    tmp_path: Path, stores: list[HistoryStore]
) -> None:
    """At the start the data directory cannot be made (a disk not mounted yet): no file to read numbers
    from. Counting from 0 would hand out the numbers of the events in the file that appears later."""
    data, elsewhere = tmp_path / "data", tmp_path / "not-mounted"
    s = open_store(stores, data)
    add(s, 5)
    assert s.commit(0.0)
    s.close()
    data.rename(elsewhere)
    data.write_text("")
    s2 = open_store(stores, data)
    assert s2.degraded and s2.start_seq > h.SEQ_RESERVE  # the clock: above anything a file can hold
    assert s2.lost_upto("lobby") == s2.start_seq  # a file not open: its events are out of reach
    add(s2, s2.start_seq + 1)
    data.unlink()
    elsewhere.rename(data)
    assert s2.commit(const.DB_RETRY_INTERVAL)
    assert seqs(s2.events("lobby")[0]) == [5, s2.start_seq + 1]
    assert s2.lost_upto("lobby") == 0


def test_events_are_queued_while_the_file_cannot_be_opened(tmp_path: Path, stores: list[HistoryStore]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    s = open_store(stores, blocker / "data")
    assert s.degraded
    add(s, 1)
    assert s.pending == 1
    blocker.unlink()
    assert s.commit(const.DB_RETRY_INTERVAL) is True
    assert seqs(s.events("lobby")[0]) == [1]


def test_close_is_idempotent(tmp_path: Path) -> None:
    s = HistoryStore(tmp_path)
    s.close()
    s.close()
    assert s.events("lobby") == ([], False)
    assert s.load_sessions() == []


def test_checkpoint_folds_the_log_into_the_database(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path, history_limit=100)
    try:
        for seq in range(1, 200):
            store.add_event(seq, ("lobby",), 1.0, "msg", '{"type":"msg","text":"' + "x" * 500 + '"}')
        assert store.commit(1.0)
        wal = tmp_path / "history.sqlite3-wal"
        assert wal.stat().st_size > 50_000  # the writer never checkpoints by itself (no fsync on the loop)
        store.checkpoint()
        db_size = (tmp_path / "history.sqlite3").stat().st_size
        assert db_size > 40_000  # the rows are in the main file now
        assert store.events("lobby", limit=5)[0]
    finally:
        store.close()


LINE = '{"type":"msg","text":"' + "x" * 500 + '"}'


def test_a_log_over_the_limit_is_started_over_and_cut_back(tmp_path: Path) -> None:
    """Past wal_limit a checkpoint says so and restart_log starts the write-ahead log over; the file is cut
    back to the limit at the next commit. Under the limit a checkpoint only copies."""
    limit = 64 * 1024
    store = HistoryStore(tmp_path, wal_limit=limit)
    wal = tmp_path / "history.sqlite3-wal"
    try:
        for seq in range(1, 400):
            store.add_event(seq, ("lobby",), 1.0, "msg", LINE)
            if seq % 50 == 0:
                assert store.commit(1.0)
        assert store.commit(1.0)
        assert wal.stat().st_size > 2 * limit
        assert store.checkpoint()
        assert store.restart_log()
        assert not store.checkpoint()  # its header keeps the old size until a commit: not due again (idle)
        store.add_event(400, ("lobby",), 1.0, "msg", LINE)
        assert store.commit(1.0)
        assert wal.stat().st_size <= limit
        assert not store.checkpoint()  # a page or two: copied, not to be started over
        assert store.events("lobby", limit=3)[0] == [LINE] * 3  # nothing lost on the way
    finally:
        store.close()


def test_the_log_stays_bounded_while_commits_overlap_checkpoints(tmp_path: Path) -> None:
    """Under a steady load some commit is in flight during every checkpoint, and a PASSIVE checkpoint
    alone then never lets the log start over: it grew by every commit, for as long as the load lasted
    (460 MB after 12 s at 27,000 messages a second). Here the writer makes a fixed number of commits
    while each checkpoint runs (a round), and restarts the log between rounds when the checkpoint says so,
    as the hub does (holding its commits): a checkpoint that finds the log under the limit lets it grow by
    a round, so the file holds at most the limit and two rounds (the first round's log, from empty, is one
    round's worth)."""
    limit, rounds, per_round = 64 * 1024, 30, 10
    store = HistoryStore(tmp_path, wal_limit=limit)
    wal = tmp_path / "history.sqlite3-wal"
    go, done = threading.Semaphore(0), threading.Semaphore(0)
    seq = 0

    def writer() -> None:
        nonlocal seq
        for _ in range(rounds):
            assert go.acquire(timeout=30)
            for _ in range(per_round):
                for _ in range(10):
                    seq += 1
                    store.add_event(seq, ("lobby",), 1.0, "msg", LINE)
                assert store.commit(1.0)
            done.release()

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    sizes = []
    try:
        for _ in range(rounds):
            go.release()  # the writer commits while this checkpoint runs
            due = store.checkpoint()
            assert done.acquire(timeout=30)
            if due:  # the writer waits for the next round meanwhile
                assert store.restart_log()
            sizes.append(wal.stat().st_size)
    finally:
        thread.join(timeout=30)
        store.close()
    # One round's growth: the first (from an empty log) and every step up between two measurements.
    round_max = max([sizes[0]] + [b - a for a, b in itertools.pairwise(sizes)])
    assert max(sizes) <= limit + 3 * round_max, sizes  # without the restarts: 4-10 MB, growing every round


def grow_the_log(store: HistoryStore, first: int, n: int = 100) -> int:
    for seq in range(first, first + n):
        store.add_event(seq, ("lobby",), 1.0, "msg", LINE)
        if seq % 20 == 0:
            assert store.commit(1.0)
    assert store.commit(1.0)
    return first + n


def hold_the_log(reader: sqlite3.Connection) -> None:
    """A read transaction on the log's snapshot, as a backup keeps one: until it ends, the log cannot be
    copied whole, so it neither starts over nor stops growing (a steady load's log, in a test)."""
    reader.execute("BEGIN")
    assert reader.execute("SELECT count(*) FROM events").fetchone()[0] > 0


SLACK = 64 * 1024  # a filesystem's own blocks past what was asked (an extent tree's, ext4: none or one)


@pytest.mark.usefixtures("reservable")
def test_a_growing_log_has_the_blocks_of_its_next_growth_reserved(tmp_path: Path) -> None:
    """While the log grows (here a reader keeps it from starting over, as a steady load does), each
    checkpoint reserves disk blocks past the file's end for twice what it grew by since the last: on ext4 a
    commit that grew the file during a checkpoint's fsync waited for its blocks (7-16 ms). The file itself,
    all SQLite sees, is unchanged; a log that stops growing gets nothing more."""
    store = HistoryStore(tmp_path)
    wal = tmp_path / "history.sqlite3-wal"
    reader = sqlite3.connect(tmp_path / "history.sqlite3", isolation_level=None)
    try:
        opened = wal.stat().st_size
        seq = grow_the_log(store, 1)
        hold_the_log(reader)
        seen = wal.stat().st_size
        store.checkpoint()
        assert seen + 2 * (seen - opened) <= wal.stat().st_blocks * 512 < seen + 2 * (seen - opened) + SLACK
        for _ in range(3):
            seq = grow_the_log(store, seq)
            size = wal.stat().st_size
            store.checkpoint()
            assert wal.stat().st_size == size  # not a byte more for SQLite
            assert size + 2 * (size - seen) <= wal.stat().st_blocks * 512 < size + 2 * (size - seen) + SLACK
            seen = size
        reader.execute("COMMIT")
        store.checkpoint()  # everything copied: the next commit starts the log over, at the file's start
        held = wal.stat().st_blocks
        seq = grow_the_log(store, seq, 10)
        store.checkpoint()
        assert wal.stat().st_blocks == held  # inside its file: nothing more reserved
        assert len(store.events("lobby", limit=1000)[0]) == seq - 1  # every event readable
    finally:
        reader.close()
        store.close()


@pytest.mark.usefixtures("reservable")
def test_a_log_started_over_inside_its_file_has_blocks_reserved_before_it_reaches_the_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under a steady load the log starts over inside its file (256 MiB once restarted) and the file does
    not grow again until the log comes to its end: the checkpoint then goes by the log's own end and
    growth, and reserves past the file's end before the file grows."""
    calls: list[tuple[int, int, int]] = []  # the file's size at the call, start, length
    real = reserve.reserve

    def record(path: Any, start: int, length: int) -> bool:
        calls.append((os.stat(path).st_size, start, length))
        return real(path, start, length)

    monkeypatch.setattr(reserve, "reserve", record)
    store = HistoryStore(tmp_path)
    wal = tmp_path / "history.sqlite3-wal"
    reader = sqlite3.connect(tmp_path / "history.sqlite3", isolation_level=None)
    try:
        seq = grow_the_log(store, 1, 400)
        store.checkpoint()  # copies it all: the next commit starts the log over at the file's start
        full = wal.stat().st_size
        seq = grow_the_log(store, seq, 20)
        hold_the_log(reader)  # from here on the log grows without starting over, as under a steady load
        calls.clear()
        for _ in range(20):
            if wal.stat().st_size > full:
                break
            seq = grow_the_log(store, seq, 50)
            store.checkpoint()
        early = [c for c in calls if c[0] == full]  # made while the file had not grown since the restart
        assert early and early[0][1] == full, (calls, full)
        assert wal.stat().st_blocks * 512 >= full + early[0][2]
    finally:
        reader.close()
        store.close()


@pytest.mark.usefixtures("reservable")
def test_the_log_of_a_symlinked_database_is_reserved_beside_its_real_file(tmp_path: Path) -> None:
    """SQLite follows a symlinked database and keeps the log beside the real file: that is the file whose
    blocks are reserved (a name beside the link would be a file that never grows, or none)."""
    real, data = tmp_path / "disk", tmp_path / "data"
    real.mkdir()
    data.mkdir()
    (data / "history.sqlite3").symlink_to(real / "history.sqlite3")
    store = HistoryStore(data)
    try:
        grow_the_log(store, 1)
        wal = real / "history.sqlite3-wal"
        assert wal.exists() and not (data / "history.sqlite3-wal").exists()
        size = wal.stat().st_size
        store.checkpoint()
        assert wal.stat().st_blocks * 512 > size + 65536  # the growth since the open, reserved
    finally:
        store.close()


def test_a_checkpoint_that_another_process_held_is_no_log_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """PRAGMA wal_checkpoint answers (1, -1, -1) when another process holds the checkpoint (a backup
    tool, an operator's sqlite3 shell): -1 is no log end. Taken as one (a negative size), the next
    checkpoint counted the whole log as growth and reserved up to wal_limit for it."""
    monkeypatch.setattr(reserve, "useful", lambda directory: True)
    store = HistoryStore(tmp_path)
    try:
        grow_the_log(store, 1, 200)
        store.checkpoint()
        assert store._log_end is not None and store._log_end > 0  # the first look at the log's end
        monkeypatch.setattr(store, "_wal_checkpoint", lambda mode: (True, -1))
        assert not store.checkpoint()
        assert store._log_end is None  # the next look is a first look again: nothing to go by
    finally:
        store.close()


@pytest.mark.parametrize("err", [errno.EOPNOTSUPP, errno.ENOSPC])
def test_a_filesystem_that_cannot_reserve_blocks_is_asked_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, err: int
) -> None:
    """A filesystem that cannot reserve blocks (EOPNOTSUPP) is not asked again; after another error it is,
    at the next checkpoint. Either way the checkpoints go on as before."""
    calls = []

    def refuse(path: Any, start: int, length: int) -> bool:
        calls.append(length)
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(reserve, "useful", lambda directory: True)
    monkeypatch.setattr(reserve, "reserve", refuse)
    caplog.set_level(logging.DEBUG, logger="lanchat.storage")
    store = HistoryStore(tmp_path)
    reader = sqlite3.connect(tmp_path / "history.sqlite3", isolation_level=None)
    try:
        seq = grow_the_log(store, 1)
        hold_the_log(reader)  # the log grows from here on
        for _ in range(3):  # the first look, then two growths
            seq = grow_the_log(store, seq)
            assert not store.checkpoint()  # copies what it can, as before
        assert calls and (len(calls) == 1) == (err == errno.EOPNOTSUPP)  # a full disk: asked again
        assert ("cannot reserve disk blocks" in caplog.text) == (err == errno.EOPNOTSUPP)
        reader.execute("COMMIT")
        assert len(store.events("lobby", limit=1000)[0]) == seq - 1
    finally:
        reader.close()
        store.close()


@pytest.mark.usefixtures("reservable")
def test_a_log_with_reserved_blocks_is_recovered_after_a_crash(tmp_path: Path) -> None:
    """A process that dies with its log's blocks reserved (no close, no final checkpoint): the next open
    recovers every committed event from the log, and writes go on."""
    code = textwrap.dedent(f"""
        import os, sqlite3
        from pathlib import Path
        from lanchat.storage.history import HistoryStore
        store = HistoryStore(Path({str(tmp_path)!r}))
        reader = sqlite3.connect(store.path, isolation_level=None)
        seq = 1
        for round in range(4):
            for _ in range(50):
                store.add_event(seq, ("lobby",), 1.0, "msg", {LINE!r})
                seq += 1
            assert store.commit(1.0)
            if round == 0:  # the log grows from here on
                reader.execute("BEGIN")
                reader.execute("SELECT count(*) FROM events").fetchone()
            store.checkpoint()
        wal = os.stat(str(store.path) + "-wal")
        assert wal.st_blocks * 512 > wal.st_size + 65536, "nothing reserved"
        os._exit(0)
    """)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    store = HistoryStore(tmp_path)
    wal = tmp_path / "history.sqlite3-wal"
    try:
        assert len(store.events("lobby", limit=500)[0]) == 200
        blocks = wal.stat().st_blocks
        store.checkpoint()
        assert wal.stat().st_blocks == blocks  # the log the crash left is not growth: nothing more reserved
        store.add_event(201, ("lobby",), 1.0, "msg", LINE)
        assert store.commit(1.0)
        assert len(store.events("lobby", limit=500)[0]) == 201
    finally:
        store.close()


def test_a_reader_keeping_the_log_in_use_makes_a_restart_give_up_quickly(tmp_path: Path) -> None:
    """A RESTART waits for readers of the log holding SQLite's write lock: with the default 5 s busy timeout
    a backup (or a ``sqlite3`` shell in a transaction) made every commit of the hub fail after its own 1 s.
    It gives up after RESTART_BUSY_WAIT; the writer commits at once after it; the log starts over later."""
    limit = 64 * 1024
    store = HistoryStore(tmp_path, wal_limit=limit)
    reader = sqlite3.connect(tmp_path / "history.sqlite3", isolation_level=None)
    try:
        for seq in range(1, 400):
            store.add_event(seq, ("lobby",), 1.0, "msg", LINE)
            if seq % 50 == 0:
                assert store.commit(1.0)
        hold_the_log(reader)
        store.add_event(400, ("lobby",), 1.0, "msg", LINE)
        assert store.commit(1.0)  # past the reader's snapshot: the log cannot be copied whole
        assert store.checkpoint()
        t = time.monotonic()
        assert not store.restart_log()
        assert time.monotonic() - t < 1.0  # not SQLite's default 5 s
        store.add_event(401, ("lobby",), 1.0, "msg", LINE)
        assert store.commit(1.0)  # the write lock is free again
        reader.execute("COMMIT")
        assert store.checkpoint()
        assert store.restart_log()
    finally:
        reader.close()
        store.close()


def test_retention_keeps_up_when_every_commit_goes_to_the_journal(tmp_path: Path, stores: list[HistoryStore]) -> None:
    """Ten rooms talking at once: every commit is journaled, a fold brings FOLD_ROWS rows at once. Pruning
    at most PRUNE_BATCH rows per commit left three quarters of every fold unpruned: rooms grew without
    bound (2,000 rows against a limit of 100 after 20,000 events)."""
    s = open_store(stores, tmp_path, history_limit=100)
    seq = 0
    for tick in range(1000):
        for r in range(10):
            seq += 1
            add(s, seq, f"r{r}")
        assert s.commit(float(tick))
    with sqlite3.connect(s.path) as db:
        worst = max(n for (n,) in db.execute("SELECT count(*) FROM events GROUP BY conv"))
    db.close()
    assert worst <= 100 + s._slack() + h.FOLD_ROWS // 10  # at most what one fold brings per room


def test_one_commit_larger_than_the_prune_batch_is_pruned_whole(tmp_path: Path, stores: list[HistoryStore]) -> None:
    s = open_store(stores, tmp_path, history_limit=100)
    for c in range(3):
        for seq in range(c * 600 + 1, c * 600 + 601):
            add(s, seq, "lobby")
        assert s.commit(float(c))
    assert table_sizes(s)[0] <= 100 + s._slack()
    assert seqs(s.events("lobby", limit=500)[0])[-1] == 1800


def test_a_forced_commit_ignores_the_retry_wait(
    tmp_path: Path, stores: list[HistoryStore], caplog: pytest.LogCaptureFixture
) -> None:
    """At a stop the server commits once more: the disk may have recovered a moment ago, within the retry
    wait of the last failure, and what it holds (events, sessions to resume) must not be thrown away."""
    s = open_store(stores, tmp_path)
    db_of(s).execute("PRAGMA query_only=ON")
    add(s, 1)
    assert s.commit(10.0) is False
    db_of(s).execute("PRAGMA query_only=OFF")  # recovered
    assert s.commit(10.5) is False  # within DB_RETRY_INTERVAL: not tried
    assert s.commit(10.5, force=True)
    assert seqs(s.events("lobby")[0]) == [1]
    db_of(s).execute("PRAGMA query_only=ON")
    add(s, 2)
    assert s.commit(20.0, force=True) is False
    with caplog.at_level("WARNING", logger="lanchat.storage"):
        s.close()
    assert "could not be written" in caplog.text


def test_a_session_that_ends_takes_its_own_conversation_with_it(tmp_path: Path, stores: list[HistoryStore]) -> None:
    """Private messages live in '@' + sid (each side's copy in its own): once the session has ended for
    good nobody can read them again, and they were kept forever. Journaled rows go too."""
    s = open_store(stores, tmp_path)
    s.put_session(SessionRow("s1", "t1", "al", ("lobby",), 0, False))
    add(s, 1, "@s1", "@s2")  # a private message between s1 and s2
    add(s, 2, "lobby")
    assert s.commit(0.0)
    spread(s, 3, 6, 5)  # r0..r4 ...
    add(s, 9, "@s1")  # ... and one more for s1: a spread commit, into the journal
    assert s.commit(0.0) and s.journal == 7
    s.drop_session("s1")
    assert s.commit(1.0)
    assert s.events("@s1")[0] == [] and s.journal == 6
    assert seqs(s.events("@s2")[0]) == [1]  # the other side keeps its copy
    assert seqs(s.events("lobby")[0]) == [2]
    with sqlite3.connect(s.path) as db:
        left = db.execute("SELECT (SELECT count(*) FROM events WHERE conv='@s1') + "
                          "(SELECT count(*) FROM journal WHERE conv='@s1')").fetchone()[0]  # fmt: skip
    db.close()
    assert left == 0


def test_a_conversation_kept_past_its_session_goes_when_dropped(tmp_path: Path, stores: list[HistoryStore]) -> None:
    """An expired session's private messages are kept while its token is remembered (the hub says so with
    ``keep_conv``), then deleted on their own, journaled rows too; while the disk fails the deletion waits."""
    s = open_store(stores, tmp_path)
    s.put_session(SessionRow("s1", "t1", "al", ("lobby",), 0, False))
    add(s, 1, "@s1", "@s2")
    assert s.commit(0.0)
    spread(s, 3, 6, 5)
    add(s, 9, "@s1")  # (a spread commit: into the journal)
    assert s.commit(0.0) and s.journal == 7
    s.drop_session("s1", keep_conv=True)
    assert s.commit(1.0)
    assert s.load_sessions() == [] and seqs(s.events("@s1")[0]) == [1, 9]
    db_of(s).execute("PRAGMA query_only=ON")
    s.drop_conv("@s1")
    assert s.commit(2.0) is False and s.pending == 1
    db_of(s).execute("PRAGMA query_only=OFF")
    assert s.commit(2.0 + const.DB_RETRY_INTERVAL)
    assert s.events("@s1")[0] == [] and s.journal == 6 and seqs(s.events("@s2")[0]) == [1]


def test_private_conversations_nothing_names_go_at_the_first_open(tmp_path: Path, stores: list[HistoryStore]) -> None:
    """A conversation outlives its session while a token names it (its deletion queued apart from the
    record's), so a deletion given up on while the disk failed (a review) or a crash before it left one that
    nothing named, for good. The first open of a run deletes those; a session's and a token's stay."""
    s = open_store(stores, tmp_path)
    s.put_session(SessionRow("live", "t", "al", ("lobby",), 0, False))
    s.put_expired("k", 0, 1.0, "kept")
    for seq, conv in enumerate(("@live", "@kept", "@orphan", "lobby"), 1):
        add(s, seq, conv)
    assert s.commit(0.0)
    spread(s, 5, 6, 5)
    add(s, 11, "@orphan")  # (a spread commit: into the journal)
    assert s.commit(0.0) and s.journal == 7
    s.close()
    s2 = open_store(stores, tmp_path)
    assert [seqs(s2.events(c)[0]) for c in ("@live", "@kept", "@orphan", "lobby")] == [[1], [2], [], [4]]
    assert s2.journal == 6


def test_the_unclean_marker_is_written_durably_and_commits_stay_cheap(
    tmp_path: Path, stores: list[HistoryStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The marker that says "this run has not stopped cleanly" is written with synchronous=FULL (an fsync):
    lost to a power cut, the next start would trust the file's numbers and hand this run's out again.
    Every later commit is back to NORMAL (fsyncs only at checkpoints)."""
    seen = traced(monkeypatch)
    s = open_store(stores, tmp_path)
    marker = next(i for i, sql in enumerate(seen) if "'clean_stop', '0'" in sql)
    assert "synchronous=FULL" in seen[marker - 1] and "synchronous=NORMAL" in seen[marker + 1]
    assert db_of(s).execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL


@pytest.mark.parametrize("failing", ["INSERT OR REPLACE INTO meta", "ALTER TABLE"], ids=["the mark", "the column"])
def test_an_upgrade_cut_short_leaves_a_file_an_older_lanchat_refuses(
    tmp_path: Path, stores: list[HistoryStore], monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    """The disk failed between adding the sessions' column and marking the file 3 (a review): a lanchat of
    format 2 opened it and failed at every session write (a column more than it writes), degraded for good.
    The mark comes first now: cut at either step, the file is never of the older format with the column, and
    the next start completes it (here from format 3 to 4)."""
    s = open_store(stores, tmp_path)
    s.put_session(SessionRow("a", "t", "al", ("lobby",), 3, False))
    assert s.commit(0.0)
    s.close()
    with sqlite3.connect(tmp_path / h.DB_NAME) as db:
        for table, name, _ in h._FORMAT_4_COLUMNS:
            db.execute(f"ALTER TABLE {table} DROP COLUMN {name}")
        db.execute("UPDATE meta SET value='3' WHERE key='schema'")
    db.close()
    connect = sqlite3.connect

    class FailingAt:
        def __init__(self, conn: sqlite3.Connection) -> None:
            self._conn = conn

        def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
            if sql.startswith(failing):
                raise sqlite3.OperationalError("disk I/O error")
            return self._conn.execute(sql, *args)

        def __getattr__(self, name: str) -> Any:
            return getattr(self._conn, name)

    monkeypatch.setattr(sqlite3, "connect", lambda *a, **kw: FailingAt(connect(*a, **kw)))
    cut = open_store(stores, tmp_path)
    assert cut.degraded
    monkeypatch.setattr(sqlite3, "connect", connect)
    with sqlite3.connect(tmp_path / h.DB_NAME) as db:
        (schema,) = db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        column = "aliases" in {r[1] for r in db.execute("PRAGMA table_info(sessions)")}
    db.close()
    assert (schema, column) == (("3", False) if failing.startswith("INSERT") else ("4", False))
    s2 = open_store(stores, tmp_path)
    assert not s2.degraded and s2.load_sessions() == [SessionRow("a", "t", "al", ("lobby",), 3, False)]


def test_rooms_gone_forget_their_row_counts_and_are_bounded_while_the_disk_fails(
    tmp_path: Path, stores: list[HistoryStore]
) -> None:
    """A room the hub forgets takes its cached row count along (one was kept for every room ever used: a long-run
    check); the names kept until the next commit are bounded while the disk fails (a review: 20,000 rooms made
    and left during an outage held 20,000 names), past which that commit forgets every count. A count forgotten
    is taken from the file again: retention stays right."""
    s = open_store(stores, tmp_path, history_limit=h.PRUNE_SLACK * 2)
    add(s, 1, "a")
    add(s, 2, "b")
    assert s.commit(0.0) and set(s._counts) == {"a", "b"}
    add(s, 3, "a")
    s.room_gone("a")  # its last event is in the commit to come
    assert s.commit(1.0) and set(s._counts) == {"b"}
    db = db_of(s)
    db.execute("PRAGMA query_only=ON")
    for i in range(h.GONE_KEPT + 10):
        add(s, 10 + i, f"r{i}")
        s.room_gone(f"r{i}")
    assert s.commit(2.0) is False and len(s._gone) == h.GONE_KEPT
    db.execute("PRAGMA query_only=OFF")
    assert s.commit(2.0 + const.DB_RETRY_INTERVAL) and s._counts == {} and not s._gone
    for seq in range(5_000, 5_000 + 3 * h.PRUNE_SLACK):  # "a" again, counted from the file: pruned to its limit
        add(s, seq, "a")
        assert s.commit(10.0)
    assert len(s.events("a", limit=10_000)[0]) <= 2 * h.PRUNE_SLACK + s._slack()
