"""`lanchat discover` as a user runs it: real processes on loopback (--interface lo), own discovery port each."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from discovery_support import (
    PROCESS_START_TIMEOUT,
    LineReader,
    announcer_process,
    free_tcp_port,
    free_udp_port,
    lanchat_cmd,
    run_cli,
    spawn,
)


@pytest.fixture
def port() -> int:
    return free_udp_port()


def discover(port: int, *extra: str) -> list[str]:
    return lanchat_cmd("discover", "--interface", "lo", "--discovery-port", str(port), *extra)


def test_two_servers_on_one_host_listed_by_one_discover(tmp_path: Path, port: int) -> None:
    with (
        announcer_process(name="alpha", port=7101, data_dir=tmp_path / "a", discovery_port=port) as (_, ready_a),
        announcer_process(name="bravo", port=7102, data_dir=tmp_path / "b", discovery_port=port) as (_, ready_b),
    ):
        t0 = time.monotonic()
        done = run_cli(discover(port, "--json", "--timeout", "1"))
        elapsed = time.monotonic() - t0
        assert done.returncode == 0, done.stderr
        rows = [json.loads(line) for line in done.stdout.splitlines()]
        assert [(r["name"], r["host"], r["port"]) for r in rows] == [
            ("alpha", "127.0.0.1", 7101),
            ("bravo", "127.0.0.1", 7102),
        ]
        assert {r["server_id"] for r in rows} == {ready_a["server_id"], ready_b["server_id"]}
        assert all(isinstance(r["latency_ms"], float) for r in rows)
        assert elapsed < 1 + PROCESS_START_TIMEOUT  # returns once its 1 s are over (plus Python's start-up)

        piped = run_cli(discover(port, "--timeout", "0.5"))  # stdout is a pipe: plain lines, no table
        assert piped.returncode == 0
        lines = [line.split("\t") for line in piped.stdout.splitlines()]
        assert [fields[:5] for fields in lines] == [
            ["alpha", "127.0.0.1:7101", "0", "0", "1"],
            ["bravo", "127.0.0.1:7102", "0", "0", "1"],
        ]
        assert all(float(fields[5]) >= 0 for fields in lines)  # latency in ms (probe replies)


def test_server_id_survives_a_restart(tmp_path: Path, port: int) -> None:
    with announcer_process(name="alpha", port=7101, data_dir=tmp_path, discovery_port=port) as (_, first):
        pass
    with announcer_process(name="alpha", port=7101, data_dir=tmp_path, discovery_port=port) as (_, second):
        pass
    assert first["server_id"] == second["server_id"]


def test_nothing_found_exits_1(port: int) -> None:
    done = run_cli(discover(port, "--timeout", "0.2", "--json"))
    assert done.returncode == 1
    assert done.stdout == ""
    assert "no lanchat server found" in done.stderr


def test_a_bad_log_level_is_said_not_silently_ignored(port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LANCHAT_LOG_LEVEL", "loud")
    done = run_cli(discover(port, "--timeout", "0.2"))
    assert done.returncode == 1  # it still runs, at the default level
    assert "LANCHAT_LOG_LEVEL='loud' is not a log level; using warning" in done.stderr


def test_probe_target_finds_a_server_that_does_not_beacon(tmp_path: Path, port: int) -> None:
    """--probe HOST:PORT reaches a server by unicast (the route across subnets), even with --no-beacon."""
    with announcer_process(name="quiet", port=7103, data_dir=tmp_path, discovery_port=port, extra=["--no-beacon"]) as (
        _,
        ready,
    ):
        # Broadcast probes go to another port (nobody there): only the unicast one can find the server.
        done = run_cli(discover(free_udp_port(), "--probe", f"127.0.0.1:{port}", "--json", "--timeout", "0.5"))
        assert done.returncode == 0, done.stderr
        [row] = [json.loads(line) for line in done.stdout.splitlines()]
        assert row["server_id"] == ready["server_id"] and row["host"] == "127.0.0.1"


def test_an_interface_that_does_not_exist_exits_2(port: int) -> None:
    """A usage error, said at once: it used to listen for the whole timeout and exit 1 (none found)."""
    done = run_cli(discover(port, "--interface", "none-such0", "--timeout", "0.2"))
    assert done.returncode == 2
    assert done.stdout == ""
    assert "interface none-such0 does not exist (hint: known: " in done.stderr
    joined = run_cli(lanchat_cmd("join", "--interface", "none-such0", "--discovery-port", str(port), "--nick", "x"))
    assert joined.returncode == 2  # the same for join (it said "no server found", exit 6)
    assert "interface none-such0 does not exist" in joined.stderr


def next_event(events: LineReader, kind: str, server_id: str, timeout: float) -> dict[str, Any]:
    """The next watch event of ``kind`` for ``server_id``, skipping updates (a new latency, a user joined)."""
    deadline = time.monotonic() + timeout
    while True:
        event = events.json(max(deadline - time.monotonic(), 0.001))
        if event["event"] == "updated":
            continue
        assert (event["event"], event["server_id"]) == (kind, server_id), event
        return event


def test_watch_adds_updates_and_removes(tmp_path: Path, port: int) -> None:
    """--watch --json: added when a server appears, removed on its goodbye, removed when it goes silent."""
    with spawn(discover(port, "--watch", "--json")) as (watcher, events):
        with announcer_process(name="alpha", port=7101, data_dir=tmp_path / "a", discovery_port=port) as (a, ready_a):
            next_event(events, "added", ready_a["server_id"], PROCESS_START_TIMEOUT)
            with announcer_process(
                name="bravo",
                port=7102,
                data_dir=tmp_path / "b",
                discovery_port=port,
                extra=["--beacon-interval", "0.3"],
            ) as (b, ready_b):
                next_event(events, "added", ready_b["server_id"], PROCESS_START_TIMEOUT)
                a.send_signal(signal.SIGTERM)  # clean stop: goodbye
                removed = next_event(events, "removed", ready_a["server_id"], 5)
                assert removed["reason"] == "goodbye"
                b.kill()  # no goodbye: silent for 3 x 0.3 s
                t0 = time.monotonic()
                removed = next_event(events, "removed", ready_b["server_id"], 5)
                assert removed["reason"] == "expired"  # within next_event's deadline
                assert time.monotonic() - t0 > 0.3  # and not before its beacons could have been missed
        watcher.send_signal(signal.SIGINT)  # Ctrl-C ends a watch normally
        assert watcher.wait(5) == 0


def _serve_cmd(name: str, tcp_port: int, udp_port: int, data_dir: Path) -> list[str]:
    return lanchat_cmd(
        "serve", "--workers", "1", "--port", str(tcp_port), "--discovery-port", str(udp_port),
        "--interface", "lo", "--host", "127.0.0.1", "--name", name, "--data-dir", str(data_dir),
    )  # fmt: skip


def test_two_real_lanchat_servers_found_by_discover(tmp_path: Path, port: int) -> None:
    """Two `lanchat serve` processes on one host (one UDP port, SO_REUSEPORT) are both listed."""
    try:
        import lanchat.server.main  # noqa: F401
    except ImportError:
        pytest.skip("lanchat.server.main is not there yet")
    ports = [free_tcp_port(), free_tcp_port()]
    with (
        spawn(_serve_cmd("one", ports[0], port, tmp_path / "one")) as (s1, _),
        spawn(_serve_cmd("two", ports[1], port, tmp_path / "two")) as (s2, _),
    ):
        deadline = time.monotonic() + PROCESS_START_TIMEOUT
        rows: list[dict[str, Any]] = []
        while len(rows) < 2:  # servers boot workers first: ask until both answer (each try lasts 0.5 s)
            assert time.monotonic() < deadline, f"found only {rows}"
            assert s1.poll() is None and s2.poll() is None, "a server died"
            done = run_cli(discover(port, "--json", "--timeout", "0.5"))
            rows = [json.loads(line) for line in done.stdout.splitlines()]
        assert sorted((r["name"], r["host"], r["port"]) for r in rows) == [
            ("one", "127.0.0.1", ports[0]),
            ("two", "127.0.0.1", ports[1]),
        ]
        assert all(r["workers"] == 1 for r in rows)
