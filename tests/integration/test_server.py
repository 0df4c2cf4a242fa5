"""`lanchat serve --workers 4` as real processes on loopback: routing across workers, supervision, stop."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import json
import logging
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, NamedTuple

import psutil
import pytest
from support import Client, MakeServer, ServerProcess, run_cli

from lanchat import const
from lanchat.config import DiscoveryConfig, ServerConfig
from lanchat.errors import StorageError
from lanchat.protocol import control
from lanchat.protocol import messages as m
from lanchat.server import main as server_main
from lanchat.server.main import BOOT_TIMEOUT_KILL, EXIT_WORKER_BOOT, Server, lock_data_dir
from lanchat.server.storms import Throttled


def _spread_clients(server: ServerProcess, nicks: list[str], **hello: Any) -> list[Client]:
    """Connect clients one by one: least-loaded placement puts consecutive clients on different workers."""
    return [Client(server.port, nick, **hello) for nick in nicks]


def _worker_conns(server: ServerProcess) -> list[int]:
    return [p["connections"] for p in server.stats()["processes"] if p["role"].startswith("worker")]


def test_room_fanout_across_workers(make_server: MakeServer) -> None:
    server = make_server(workers=4)
    clients = _spread_clients(server, [f"user{i}" for i in range(8)])
    try:
        conns = _worker_conns(server)
        # The 8 clients landed on all 4 workers (the stats request's own connection is a 9th).
        assert sum(conns) == 9 and min(conns) == 2, conns
        clients[0].send({"type": "msg", "room": "lobby", "text": "hello everyone", "id": 1})
        got = [c.expect(lambda f: f.get("type") == "msg") for c in clients]
        assert {(f["from"], f["text"]) for f in got} == {("user0", "hello everyone")}
        assert len({f["seq"] for f in got}) == 1  # one event, one sequence number, everywhere
        ack = clients[0].expect("ack")
        assert ack["id"] == 1 and ack["seq"] == got[0]["seq"]
    finally:
        for c in clients:
            c.close()


def test_rooms_only_reach_their_members(make_server: MakeServer) -> None:
    server = make_server(workers=4)
    a, b, c = _spread_clients(server, ["ann", "ben", "cat"])
    try:
        a.send({"type": "join", "room": "dev"})
        a.expect(lambda f: f.get("type") == "join" and f.get("nick") == "ann" and f.get("room") == "dev")
        b.send({"type": "join", "room": "dev"})
        a.expect(lambda f: f.get("type") == "join" and f.get("nick") == "ben" and f.get("room") == "dev")
        a.send({"type": "msg", "room": "dev", "text": "dev only", "id": 1})
        assert b.expect("msg")["text"] == "dev only"
        c.send({"type": "msg", "room": "lobby", "text": "lobby line", "id": 1})
        first = c.expect("msg")
        assert first["text"] == "lobby line"  # cat never saw the dev message before its own
        assert all(f.get("room") != "dev" for f in c.seen)
    finally:
        for x in (a, b, c):
            x.close()


def test_nick_collision_across_workers_is_case_insensitive(make_server: MakeServer) -> None:
    server = make_server(workers=4)
    first = Client(server.port, "Alice")
    others = _spread_clients(server, ["x1", "x2"])  # so the next client lands on another worker
    try:
        c = Client(server.port)
        c.send({"type": "hello", "nick": "aLiCe", "id": 7})
        err = c.expect("error")
        assert err["code"] == "nick_taken" and err["id"] == 7
        c.send({"type": "hello", "nick": "alice2"})  # the connection survives; a second try works
        assert c.expect("welcome")["nick"] == "alice2"
        c.close()
    finally:
        first.close()
        for o in others:
            o.close()


def test_private_messages_across_workers(make_server: MakeServer) -> None:
    server = make_server(workers=4)
    a, b, c = _spread_clients(server, ["ann", "ben", "cat"])
    try:
        a.send({"type": "privmsg", "to": "BEN", "text": "just you", "id": 1})
        pm = b.expect("privmsg")
        assert (pm["from"], pm["to"], pm["text"]) == ("ann", "ben", "just you")
        assert a.expect("privmsg")["seq"] == pm["seq"]  # the sender sees its own, same event
        a.send({"type": "privmsg", "to": "nobody", "text": "hello?", "id": 2})
        assert a.expect("error")["code"] == "no_such_nick"
        c.send({"type": "msg", "room": "lobby", "text": "marker", "id": 1})
        c.expect("msg")
        assert not [f for f in c.seen if f.get("type") == "privmsg"]
    finally:
        for x in (a, b, c):
            x.close()


def test_a_quit_right_behind_posts_still_gets_their_echoes_and_acks(make_server: MakeServer) -> None:
    """A script that writes its lines and a quit at once, over JSON and over plain text: the server closes
    only after what it sequenced before the quit, its acks included (the worker used to close on the quit
    line, before the hub had even read the posts: a JSON client saw no ack, a plain one no echo)."""
    server = make_server(workers=2)
    with Client(server.port, "bo") as bo:
        al = Client(server.port)
        posts = b"".join(
            b'{"type":"msg","room":"lobby","text":"line %d","id":%d}\n' % (i, i) for i in range(1, 11)
        )  # fmt: skip
        al.send_raw(b'{"type":"hello","nick":"al"}\n' + posts + b'{"type":"quit","reason":"done"}\n')
        assert al.closed_by_server()
        frames = [json.loads(x) for x in al.buf.splitlines()]
        assert [f["id"] for f in frames if f["type"] == "ack"] == list(range(1, 11))
        assert [f["text"] for f in frames if f["type"] == "msg"] == [f"line {i}" for i in range(1, 11)]
        assert bo.expect("quit")["reason"] == "done"
        plain = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        with plain:
            plain.sendall(b"/nick pl\nhello all\n/quit\n")
            got = b""
            while chunk := plain.recv(65536):
                got += chunk
        assert got.endswith(b"<pl> hello all\n* bye\n"), got[-200:]
        assert bo.expect("msg")["text"] == "hello all"
        al.close()


def test_worker_killed_is_replaced_and_others_unaffected(make_server: MakeServer) -> None:
    server = make_server("--resume-grace", "0.5", workers=4)
    clients = _spread_clients(server, [f"u{i}" for i in range(4)])
    try:
        pids = server.worker_pids()
        victim = pids[0]
        mark = server.mark()
        os.kill(victim, signal.SIGKILL)
        server.wait_log(r"worker \d ready", timeout=10, start=mark)  # replaced (how fast: not a test's business)
        assert "SIGKILL" in server.wait_log(r"killed by SIGKILL")
        new_pids = server.worker_pids()
        assert victim not in new_pids and len(new_pids) == 4
        # Exactly one client was on the dead worker: it is disconnected; everyone else sees it quit.
        dead = [c for c in clients if c.closed_by_server(timeout=0.2)]
        assert len(dead) == 1
        alive = [c for c in clients if c is not dead[0]]
        gone = dead[0].welcome["nick"]
        for c in alive:
            quit_ = c.expect(lambda f: f.get("type") == "quit")
            assert quit_["nick"] == gone
        alive[0].send({"type": "msg", "room": "lobby", "text": "still here", "id": 1})
        for c in alive:
            assert c.expect("msg")["text"] == "still here"
        newcomer = Client(server.port, "late")  # new connections work, on any worker
        newcomer.close()
    finally:
        for c in clients:
            c.close()


def test_sigterm_tells_clients_and_exits_within_5s(make_server: MakeServer) -> None:
    server = make_server(workers=4)
    clients = _spread_clients(server, ["a1", "a2", "a3"])
    assert server.proc is not None
    started = time.monotonic()
    code = server.stop(signal.SIGTERM, timeout=5)
    assert code == 0
    assert time.monotonic() - started < 5
    for c in clients:
        bye = c.expect("bye")
        assert bye["reason"] == "server shutting down" and bye["reconnect"] is True
        assert c.closed_by_server(timeout=1)
        c.close()
    # One line for them all, not "lost its connection ...; held 60 s" for each, as if they had dropped
    assert "stopped (3 sessions kept for their clients to resume)" in server.log
    assert "lost its connection" not in server.log


def test_a_stop_delivers_what_a_slow_reader_was_sent_while_its_input_waits_unread(make_server: MakeServer) -> None:
    """A client pasting faster than the rate, and reading slowly, had the stop's close answered by a
    reset (Linux resets a socket closed with unread input): the relays still queued for it and the bye
    were thrown away, and it read ECONNRESET. The worker now sends a FIN after its last bytes and drops
    the client's input until the client closes too."""
    server = make_server(workers=1)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)  # a slow reader: the server's output waits
    sock.settimeout(10)
    sock.connect(("127.0.0.1", server.port))
    with sock:
        sock.sendall(m.encode({"type": "hello", "nick": "paster", "rooms": ["r"]}))
        got = b""
        while b'"welcome"' not in got:
            got += sock.recv(65536)
        text = "p" * 3900
        paste = b"".join(m.encode({"type": "msg", "room": "r", "text": text, "id": i}) for i in range(1, 300))

        def send_paste() -> None:
            with contextlib.suppress(OSError):  # the stop's close ends it
                sock.sendall(paste)

        threading.Thread(
            target=send_paste, daemon=True
        ).start()  # past the burst the server stops reading: 1.2 MB wait in the kernels
        while got.count(b'"type":"msg"') < 1:  # relays are coming back: output is in flight
            got += sock.recv(4096)
        assert server.stop(signal.SIGTERM, timeout=10) == 0
        while chunk := sock.recv(65536):  # ConnectionResetError before the fix
            got += chunk
    frames = [json.loads(line) for line in got.splitlines()]
    assert frames[-1] == {"type": "bye", "reason": "server shutting down", "reconnect": True}
    relayed = [f["seq"] for f in frames if f["type"] == "msg"]
    acked = [f["id"] for f in frames if f["type"] == "ack"]
    assert len(relayed) >= 40 and acked == list(range(1, len(relayed) + 1))  # the burst, each acked before the bye


def test_a_hang_up_of_the_terminal_leaves_the_workers_to_the_main_process(make_server: MakeServer) -> None:
    """The terminal signals its whole process group: a worker must not die of the SIGHUP (the main process
    stops them, telling their clients). A worker killed by it could not pass a message on afterwards."""
    server = make_server(workers=1)
    (client,) = _spread_clients(server, ["w1"])
    worker = next(p["pid"] for p in server.stats()["processes"] if p["role"].startswith("worker"))
    os.kill(worker, signal.SIGHUP)
    client.send({"type": "msg", "room": "lobby", "text": "still here", "id": 1})
    assert client.expect("msg")["text"] == "still here"  # through that worker, after the signal came
    assert psutil.pid_exists(worker) and psutil.Process(worker).status() != psutil.STATUS_ZOMBIE
    client.close()


def test_sighup_is_a_graceful_stop_too(make_server: MakeServer) -> None:
    """The terminal or ssh session of a `lanchat serve` in the foreground closed: it stopped at once (the
    default action), clients were not told and the next start found the history not stopped cleanly."""
    server = make_server(workers=1)
    (client,) = _spread_clients(server, ["h1"])
    assert server.stop(signal.SIGHUP, timeout=5) == 0
    bye = client.expect("bye")
    assert bye["reason"] == "server shutting down" and bye["reconnect"] is True
    client.close()
    server.wait_log(r"\bstopped\b")
    assert "SIGHUP: shutting down" in server.log


def test_under_nohup_a_hang_up_passes_unnoticed(tmp_path: Path) -> None:
    """`nohup lanchat serve &` ignores SIGHUP so that the server outlives its terminal: the stop on SIGHUP
    must not override that. Signals are handled in the order they came: a SIGHUP taken for a stop would
    be the first one logged."""
    cmd = [
        sys.executable, "-m", "lanchat", "serve", "--host", "127.0.0.1", "--port", "0", "--workers", "1",
        "--no-discovery", "--data-dir", str(tmp_path / "data"),
    ]  # fmt: skip
    env = {**os.environ, "LANCHAT_INTERFACE": "lo", "PYTHONUNBUFFERED": "1"}
    ignore_hup = lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN)  # noqa: E731 - what nohup does
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env, preexec_fn=ignore_hup)
    try:
        assert proc.stderr is not None
        log_lines = []
        for line in proc.stderr:  # until it serves (bounded: the process exits on a failure)
            log_lines.append(line)
            if "serving on" in line:
                break
        status = Path(f"/proc/{proc.pid}/status").read_text()
        ignored, caught = (int(status.split(f"{k}:")[1].split()[0], 16) for k in ("SigIgn", "SigCgt"))
        hup = 1 << (signal.SIGHUP - 1)
        assert ignored & hup and not caught & hup  # still ignored: no handler of ours took it over
        proc.send_signal(signal.SIGHUP)
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=10)
        log_lines.append(rest)
        assert proc.returncode == 0
        text = "".join(log_lines)
        assert "SIGTERM: shutting down" in text and "SIGHUP" not in text, text[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def test_worker_that_cannot_boot_stops_the_server(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "d", workers=2)
    os.environ["LANCHAT_FAULT"] = "worker-boot"
    try:
        try:
            server.start(timeout=5)
            raise AssertionError("server started although workers cannot boot")
        except AssertionError as exc:
            if "started although" in str(exc):
                raise
        assert server.proc is not None
        assert server.proc.wait(10) == 3
        assert "could not boot" in server.log
        assert "replacing it" not in server.log  # it is not replaced: the log said so anyway
    finally:
        del os.environ["LANCHAT_FAULT"]
        server.kill()


def test_hung_worker_is_detected_by_heartbeat_and_replaced(make_server: MakeServer) -> None:
    server = make_server("--worker-timeout", "1", workers=2)
    victim = server.worker_pids()[0]
    mark = server.mark()
    os.kill(victim, signal.SIGSTOP)  # alive but not answering: only a heartbeat can tell
    try:
        server.wait_log(r"no heartbeat", timeout=5, start=mark)
        server.wait_log(r"worker \d ready", timeout=5, start=mark)
        assert victim not in server.worker_pids()
    finally:
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_connections_handed_to_a_worker_that_dies_before_taking_them_are_told_to_come_back(
    make_server: MakeServer,
) -> None:
    """A review: connections queued on a stalled worker's channel when it was killed got a bare close, though
    the main process still held each one to tell the client why. Now they get a refusal to try again."""
    server = make_server(workers=2)
    stalled, socks, greeted = _six_handed_three_to_a_stalled_worker(server)
    try:
        mark = server.mark()
        os.kill(stalled, signal.SIGKILL)
        for sock in socks:
            first = json.loads(sock.makefile("rb").readline())
            if sock in greeted:
                assert first["type"] == "server"
            else:  # was b"": the end of the connection and nothing else
                assert first["type"] == "error" and first["code"] == m.Err.INTERNAL
                assert "worker unavailable; reconnect" in first["message"]
        server.wait_log(r"worker \d ready", timeout=10, start=mark)  # and the server goes on
    finally:
        for sock in socks:
            sock.close()
        with contextlib.suppress(ProcessLookupError):
            os.kill(stalled, signal.SIGKILL)


def test_connections_a_stalled_worker_holds_at_a_stop_are_told_it_is_shutting_down(make_server: MakeServer) -> None:
    """A review of the mend above: a stop that had to kill a worker which did not stop in time closed the
    connections handed to it bare (a reset: their unread hello was still in them)."""
    server = make_server(workers=2)
    stalled, socks, greeted = _six_handed_three_to_a_stalled_worker(server)
    try:
        for sock in socks:
            sock.sendall(b'{"type":"hello","nick":"waiting"}\n')
        assert server.stop(timeout=15) == 0
        for sock in socks:
            if sock not in greeted:  # (the others: greeted, then told the server is going, as every client)
                first = json.loads(sock.makefile("rb").readline())
                assert first["type"] == "error" and first["code"] == m.Err.SHUTTING_DOWN, first
        assert "did not stop in time" in server.log
    finally:
        for sock in socks:
            sock.close()
        with contextlib.suppress(ProcessLookupError):
            os.kill(stalled, signal.SIGKILL)


def _six_handed_three_to_a_stalled_worker(
    server: ServerProcess,
) -> tuple[int, list[socket.socket], list[socket.socket]]:
    """Worker 0 stopped (SIGSTOP), then six connections: its pid, the sockets, those the live worker greeted."""
    assert server.proc is not None
    ids = {}  # worker id -> pid, read without a connection (one would be counted by placement until it closed)
    for proc in psutil.Process(server.proc.pid).children():
        cmdline = proc.cmdline()
        ids[int(cmdline[cmdline.index("--worker-id") + 1])] = proc.pid
    os.kill(ids[0], signal.SIGSTOP)
    socks = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(6)]
    # Least loaded first, worker 0 on a tie, and the stalled worker's count never falls: they alternate, the
    # 1st, 3rd and 5th on worker 0. The live one's 3 greetings, the last for the 6th, say all were handed over.
    greeted: list[socket.socket] = []
    deadline = time.monotonic() + 10
    while len(greeted) < 3 and time.monotonic() < deadline:
        ready, _, _ = select.select([s for s in socks if s not in greeted], [], [], 0.5)
        greeted += ready
    assert len(greeted) == 3
    return ids[0], socks, greeted


def test_main_process_killed_takes_workers_with_it(make_server: MakeServer) -> None:
    server = make_server(workers=2)
    assert server.proc is not None
    workers = [psutil.Process(pid) for pid in server.worker_pids()]
    server.proc.kill()

    def running(p: psutil.Process) -> bool:
        # Without an init that reaps orphans (containers), an exited worker stays a zombie: exited all the same.
        try:
            return bool(p.status() != psutil.STATUS_ZOMBIE)
        except psutil.NoSuchProcess:
            return False

    deadline = time.monotonic() + 10  # a bound against a hang, not a speed: they go as soon as they see EOF
    while (alive := [p for p in workers if running(p)]) and time.monotonic() < deadline:
        time.sleep(0.05)  # polling other processes' state (grandchildren: wait_procs cannot reap them)
    assert not alive, f"orphaned workers: {[p.pid for p in alive]}"


def test_status_command_prints_every_process(make_server: MakeServer) -> None:
    server = make_server(workers=2)
    with Client(server.port, "someone"):
        out = run_cli("status", f"127.0.0.1:{server.port}")
        assert out.returncode == 0, out.stderr
        assert "worker0" in out.stdout and "worker1" in out.stdout and "main" in out.stdout
        js = run_cli("status", f"127.0.0.1:{server.port}", "--json")
        import json

        stats = json.loads(js.stdout)
        roles = Counter(p["role"] for p in stats["processes"])
        assert roles == Counter({"main": 1, "worker0": 1, "worker1": 1})
        assert all(p["rss"] > 0 for p in stats["processes"])
        assert stats["users"] == 1
    assert run_cli("status", "127.0.0.1:1").returncode == 3


def test_dual_stack_listens_on_ipv4_and_ipv6(make_server: MakeServer) -> None:
    import socket

    import pytest

    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    try:
        with socket.create_server(("::1", 0), family=socket.AF_INET6):
            pass
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    server = make_server("--host", "::", workers=2)  # support starts it with --host 127.0.0.1 first; this wins
    with Client(server.port, "v4", host="127.0.0.1") as v4, Client(server.port, "v6", host="::1") as v6:
        v6.send({"type": "msg", "room": "lobby", "text": "over ipv6", "id": 1})
        assert v4.expect("msg")["text"] == "over ipv6"
    assert f"serving on [::]:{server.port} " in server.log  # as typed: ":::7272" read as a port of some address


def test_a_second_server_on_the_same_data_directory_is_refused(make_server: MakeServer, tmp_path: Path) -> None:
    """Two servers on one data directory would share the history file and the discovery id: the second
    stops at once with exit code 2 and says who holds it; the first is not disturbed."""
    first = make_server(workers=1, data_dir=tmp_path / "shared")
    out = run_cli(
        "serve", "--host", "127.0.0.1", "--port", "0", "--no-discovery", "--workers", "1",
        "--data-dir", str(tmp_path / "shared"), timeout=20,
    )  # fmt: skip
    assert out.returncode == 2
    assert f"in use by another lanchat server (pid {first.proc.pid})" in out.stderr  # type: ignore[union-attr]
    with Client(first.port, "still") as c:
        assert c.welcome["nick"] == "still"
    first.stop()
    again = make_server(workers=1, data_dir=tmp_path / "shared")  # free once the first has stopped
    assert again.stats()["seq"] >= 0


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_a_port_in_use_is_said_in_one_line_with_the_address_as_typed(tmp_path: Path, host: str) -> None:
    """It said "cannot listen on ::1:18131: error while attempting to bind on address ('::1', 18131):
    address already in use": no brackets, and the address twice."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        taken = socket.create_server((host, 0), family=family)
    except OSError as exc:
        pytest.skip(f"no {host} here: {exc}")
    with taken:
        port = taken.getsockname()[1]
        done = run_cli("serve", "--host", host, "--port", str(port), "--no-discovery", "--data-dir", str(tmp_path))
    assert done.returncode == 2
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    assert f"cannot listen on {shown}: address already in use" in done.stderr
    assert "while attempting" not in done.stderr and "Traceback" not in done.stderr


def test_a_host_that_is_no_address_is_said_so() -> None:
    """`--host 999.1.1.1` said "cannot listen on 999.1.1.1:7272: unknown error -2" (the resolver's EAI_NONAME
    as an errno)."""
    resolver = OSError(-2, "Name or service not known (while attempting to bind on address ('999.1.1.1', 7272))")
    assert server_main.listen_error(resolver) == "no such address: name or service not known"
    in_use = OSError(errno.EADDRINUSE, "error while attempting to bind on address ('::1', 7272): address in use")
    assert server_main.listen_error(in_use) == "address already in use"


def test_a_start_without_descriptors_to_spare_says_so(tmp_path: Path) -> None:
    """`ulimit -n 10`: a traceback and exit 1 (an operator's review); exit 3, as when a worker cannot start."""
    import resource

    def low() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (10, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))

    done = subprocess.run(
        [sys.executable, "-m", "lanchat", "serve", "--host", "127.0.0.1", "--port", "0", "--no-discovery",
         "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=30, preexec_fn=low, env={**os.environ, "LANCHAT_INTERFACE": "lo"},
    )  # fmt: skip
    assert done.returncode == 3, done.stderr
    assert "cannot start: Too many open files (hint: raise the limit of open files" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_data_directory_that_is_a_file_is_refused(tmp_path: Path) -> None:
    """A typo that names a file: it served without history for good ("chat goes on until the disk
    recovers"), which it never would. Exit code 2, as for any bad option."""
    (tmp_path / "afile").write_text("x")
    out = run_cli(
        "serve", "--host", "127.0.0.1", "--port", "0", "--no-discovery", "--workers", "1",
        "--data-dir", str(tmp_path / "afile"), timeout=20,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert "is not a directory" in out.stderr


def test_a_storm_of_the_same_warning_is_logged_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    """A storm of connects at a stalled worker logged one warning per connection (thousands a second);
    the acceptor out of descriptors, one per 100 ms retry. The first is logged, then one line per interval
    and key with the count, also once the storm stopped (the supervisor's tick flushes them)."""
    storms = Throttled(logging.getLogger("lanchat.main"), 10.0)
    msg = "could not hand a connection to worker %d: %s"
    with caplog.at_level(logging.WARNING, logger="lanchat.server"):
        for i in range(500):  # 5 s of it
            storms.warning("handoff0", msg, 0, f"full {i}", now=100.0 + i * 0.01)
            storms.flush(100.0 + i * 0.01)
        storms.warning("handoff1", msg, 1, "full", now=104.0)  # another key: its own
        storms.flush(109.99)
        assert len(caplog.records) == 2
        storms.flush(110.0)  # the interval is over: how many were held back, though the storm stopped
        storms.flush(119.0)
        storms.flush(120.5)  # nothing more came: nothing to say, and the next one is logged at once
        storms.warning("handoff0", msg, 0, "again", now=3600.0)
    assert [r.getMessage() for r in caplog.records] == [
        "could not hand a connection to worker 0: full 0",
        "could not hand a connection to worker 1: full",
        "could not hand a connection to worker 0: full 499 (499 like it in the last 10 s)",
        "could not hand a connection to worker 0: again",
    ]


def test_the_data_directory_lock_is_released_when_the_server_refuses_to_start(tmp_path: Path) -> None:
    """A foreign history file stops the server at start (StorageError): the lock it took goes with it, so a
    second attempt in the same process says what is wrong with the file, not "in use by another server"."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "history.sqlite3").write_bytes(b"not a database" * 100)
    config = ServerConfig(data_dir=data, workers=1, discovery=DiscoveryConfig(discovery=False, beacon=False))

    async def attempt() -> str:
        with pytest.raises(StorageError) as info:
            Server(config)
        return str(info.value)

    for _ in range(2):
        assert "not a usable lanchat history database" in asyncio.run(attempt())
    fd = lock_data_dir(data)
    assert fd is not None
    try:
        with pytest.raises(StorageError, match=f"in use by another lanchat server \\(pid {os.getpid()}\\)"):
            lock_data_dir(data)  # a second holder (here: this process again, through another open file)
    finally:
        os.close(fd)


def test_a_data_directory_that_could_not_be_locked_at_start_is_locked_before_the_history_is_written(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two servers started while the lock could not be made (a read-only or full disk: here the lock's name
    is taken by a directory) both ran degraded, and once the disk could be written both opened the history
    and wrote it, numbering events each on its own. The store now takes the lock before it opens the file:
    the first to retry gets it, the other stays degraded and says why."""
    data = tmp_path / "data"
    (data / "lock").mkdir(parents=True)

    async def main() -> None:
        async with _in_process_server(data, 1) as a, _in_process_server(data, 1) as b:
            assert a.store.degraded and b.store.degraded and not (data / "history.sqlite3").exists()
            (data / "lock").rmdir()  # the disk can be written again
            for server in (a, b):
                server.store.put_topic("lobby", "retry")
                server.store.commit(time.time(), force=True)
            assert not a.store.degraded and a._lock is not None
            assert b.store.degraded and "in use by another lanchat server" in (b.store.last_error or "")
            assert b.store.commit(time.time(), force=True) is False  # and stays off the file

    with caplog.at_level(logging.WARNING, logger="lanchat.server"):
        asyncio.run(main())
    assert "history: " in caplog.text and "is in use by another lanchat server" in caplog.text  # said, not only kept


def test_a_disk_failing_while_the_lock_is_retried_keeps_the_store_degraded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A review: the retry's lock_data_dir could raise OSError (a stat on a failing disk), out of the
    store's open and the hub's commit: that tick's relays were skipped."""
    data = tmp_path / "data"
    (data / "lock").mkdir(parents=True)

    def failing(*_: object, **__: object) -> int | None:
        raise OSError(errno.EIO, "Input/output error")

    async def main() -> None:
        async with _in_process_server(data, 1) as server:
            monkeypatch.setattr(server_main, "lock_data_dir", failing)
            server.store.put_topic("lobby", "retry")
            assert server.store.commit(time.time(), force=True) is False
            assert server.store.degraded and server._lock is None

    asyncio.run(main())


def test_a_data_directory_behind_a_file_is_refused_as_a_typo(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    with pytest.raises(StorageError, match="a part of that path is a file"):
        lock_data_dir(tmp_path / "afile" / "sub")


@contextlib.asynccontextmanager
async def _in_process_server(data_dir: Path, workers: int) -> AsyncIterator[Server]:
    """The main process's Server in this process (its workers real processes), never started: a test
    drives its methods; the workers are killed and the store and lock released at the end."""
    server = Server(ServerConfig(data_dir=data_dir, workers=workers, discovery=DiscoveryConfig(discovery=False)))
    try:
        yield server
    finally:
        for slot in server.slots:
            if slot.proc is not None:
                slot.proc.kill()
                slot.proc.wait(5)
        server.store.close()
        server._unlock()


def test_refused_connections_linger_until_their_end_bounded_per_address(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refusal waits for its client's end (a close with unread bytes would reset the connection and lose
    the error line), REFUSE_LINGER at most, REFUSED_LINGERING_PER_ADDRESS from one address at once."""
    monkeypatch.setattr(server_main, "REFUSED_LINGERING_PER_ADDRESS", 3)

    async def scenario() -> None:
        async with _in_process_server(tmp_path / "data", workers=1) as server:
            listener = socket.create_server(("127.0.0.1", 0))
            clients, accepted = [], []
            try:
                for _ in range(5):
                    c = socket.create_connection(listener.getsockname())
                    c.sendall(b'{"type":"hello","nick":"x"}\n')  # unread by the server: drained, no reset
                    clients.append(c)
                    a, _ = listener.accept()
                    accepted.append(a)
                    server._refuse(a, "server_full", "server is full")
                assert len(server._refused) == 3  # the other two were closed at once
                for c in clients:
                    c.settimeout(5)
                    assert json.loads(c.recv(4096).split(b"\n")[0])["code"] == "server_full"
                clients[0].close()  # its end: the server closes its side
                await asyncio.sleep(0)  # (the loop runs the reader once: no wait for time here)
                deadline = time.monotonic() + 5
                while len(server._refused) > 2 and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
                assert len(server._refused) == 2
                server._close_lingering(time.monotonic() + server_main.REFUSE_LINGER)  # the others' time is up
                assert not server._refused and not server._refused_from
                for c in clients[1:]:
                    assert c.recv(4096) == b""  # a FIN, not a reset
            finally:
                listener.close()
                for sock in clients:
                    sock.close()

    asyncio.run(asyncio.wait_for(scenario(), 20))


def test_an_accept_error_for_a_connection_that_failed_is_skipped(tmp_path: Path) -> None:
    """Linux passes a pending network error of a new connection on as accept()'s (its manual: treat them
    as EAGAIN): it stopped that round of accepts with a traceback, the connections after it left waiting."""

    class Listener:
        def __init__(self) -> None:
            self.results: list[OSError | tuple[socket.socket, tuple[str, int]]] = []

        def accept(self) -> tuple[socket.socket, tuple[str, int]]:
            result = self.results.pop(0) if self.results else BlockingIOError()
            if isinstance(result, OSError):
                raise result
            return result

    async def scenario() -> None:
        async with _in_process_server(tmp_path / "data", workers=1) as server:
            placed: list[str] = []

            def place(sock: socket.socket, ip: str) -> None:
                placed.append(ip)
                sock.close()

            server._place = place  # type: ignore[method-assign]
            listener = Listener()
            server.listener = listener  # type: ignore[assignment]
            a, b = socket.socketpair()
            listener.results = [
                OSError(errno.ECONNABORTED, "aborted"),
                OSError(errno.EPROTO, "proto"),
                (a, ("192.0.2.9", 5)),
            ]
            server._accept()
            assert placed == ["192.0.2.9"]  # the one after them was taken
            b.close()
            server.listener = None

    asyncio.run(asyncio.wait_for(scenario(), 20))


def test_one_ctrl_c_delivered_twice_is_still_a_graceful_stop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The terminal signals its whole foreground group and a wrapper (timeout(1)) passes the same Ctrl-C
    on: two SIGINTs a millisecond apart, handled in one supervisor round. That is no second Ctrl-C asking
    to exit now, however long the stop's first steps take (the time a signal came counts, not when it is
    handled); one that comes REPEAT_SIGINT_MIN later is. After a SIGTERM, any SIGINT is one."""

    async def scenario() -> None:
        async with _in_process_server(tmp_path / "data", workers=1) as server:
            shutdown = server.hub.shutdown

            def slow_shutdown(reason: str, now: float) -> None:  # a big server's stop: every session saved, a commit
                time.sleep(server_main.REPEAT_SIGINT_MIN + 0.05)
                shutdown(reason, now)

            monkeypatch.setattr(server.hub, "shutdown", slow_shutdown)
            server._signal_came(signal.SIGINT)
            server._signal_came(signal.SIGINT)  # the same Ctrl-C, passed on
            server._supervise_once()
            assert server.stopping and not server.done.is_set()
            _, first = server._stop_signal or (0, 0.0)
            assert server.exit_code == server_main.EXIT_OK
            server._handle_signal(signal.SIGINT, first + server_main.REPEAT_SIGINT_MIN + 0.01)  # a person, again
            assert server.done.is_set() and server.exit_code == 130  # not "stopped cleanly" (a docs audit)

        async with _in_process_server(tmp_path / "data2", workers=1) as server:
            server._handle_signal(signal.SIGTERM, 100.0)
            server._handle_signal(signal.SIGINT, 100.01)
            assert server.done.is_set()

    asyncio.run(asyncio.wait_for(scenario(), 20))


def test_the_hub_is_given_the_monotonic_clock_and_the_wall_clocks_offset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hub was given the wall clock, so a step of it (NTP's first sync) cut the resume grace short or
    stretched it, and paced the retries of a failing disk by it. It gets the monotonic clock now, and the
    wall clock only as an offset from it (for events' timestamps)."""

    class Stepped:  # this module's view of `time`, with the wall clock an hour ahead
        def __getattr__(self, name: str) -> Any:
            return getattr(time, name)

        def time(self) -> float:
            return time.time() + 3600.0

    async def scenario() -> None:
        async with _in_process_server(tmp_path / "data", workers=1) as server:
            monkeypatch.setattr(server_main, "time", Stepped())
            before = time.monotonic()
            now = server._now()
            assert before <= now <= time.monotonic()
            assert abs(now + server.hub.wall_offset - (time.time() + 3600.0)) < 1.0

    asyncio.run(asyncio.wait_for(scenario(), 20))


def test_cpu_figures_cover_the_last_second_whoever_asks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Measured at each `stats` request, a CPU figure covered the time since anyone's previous request: two
    monitors (or a table right after a --json) read each other's leftovers, near zero. The supervisor samples
    every CPU_SAMPLE_INTERVAL; requests read the sample."""

    async def scenario() -> None:
        async with _in_process_server(tmp_path / "data", workers=1) as server:
            readings = iter([42.0, 7.0])
            calls: list[float] = []

            def cpu_percent(interval: float | None = None) -> float:
                calls.append(next(readings))
                return calls[-1]

            monkeypatch.setattr(server._me, "cpu_percent", cpu_percent)
            server.port = 7272  # never started: what start() would have set
            server._sample_cpu()
            first, second = server._stats(), server._stats()  # two monitors, one after the other
            assert first["processes"][0]["cpu_percent"] == second["processes"][0]["cpu_percent"] == 42.0
            assert calls == [42.0]  # asking did not measure
            server._sample_cpu()
            assert server._stats()["processes"][0]["cpu_percent"] == 7.0

            def out_of_descriptors(interval: float | None = None) -> float:
                raise OSError(errno.EMFILE, "Too many open files")  # what psutil lets through then

            monkeypatch.setattr(server._me, "cpu_percent", out_of_descriptors)
            monkeypatch.setattr(server._me, "memory_info", out_of_descriptors)
            server._sample_cpu()  # not a supervisor round lost (it would skip reaping and heartbeats)
            main = server._stats()["processes"][0]  # nor the stats reply
            assert (main["cpu_percent"], main["rss"]) == (0.0, 0)

        async with _in_process_server(tmp_path / "data2", workers=1) as server:
            server._supervise_once()  # the supervisor samples: a round fills the figures
            assert set(server._cpu) == {server._me.pid}

    asyncio.run(asyncio.wait_for(scenario(), 20))


def test_what_a_written_off_worker_left_in_its_pipe_is_not_handled(tmp_path: Path) -> None:
    """The supervisor reaps a dead worker as soon as its process has exited, which can be before the main
    loop has read all its pipe held (more than one read behind). A hello found there afterwards made a
    session bound to a connection that exists nowhere: never detached, never expired, its nick taken for
    the server's life. Written off, the pipe is closed and what it held is dropped (unacknowledged posts
    among it are resent by their clients when they resume)."""

    async def scenario() -> None:
        async with _in_process_server(tmp_path / "data", workers=1) as server:
            slot = server.slots[0]
            server._spawn(slot)
            while slot.ctrl is None:  # the pipe's transport is made by a task
                await asyncio.sleep(0)
            old = slot.ctrl
            stale = old.get_protocol()
            assert isinstance(stale, asyncio.Protocol)
            server._worker_gone(slot)  # what a reap does (it kills the process if it still runs)
            assert old.is_closing()
            stale.data_received(control.json_frame([["req", 7, {"type": "hello", "nick": "ghost"}]]))
            assert m.nick_key("ghost") not in server.hub.nicks

    asyncio.run(asyncio.wait_for(scenario(), 20))


def test_the_hub_holds_its_commits_while_the_log_starts_over(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A log over its limit is started over (RESTART) while the hub holds its commits: one made meanwhile
    would wait in SQLite's busy handler, stalling the hub's loop, and one in flight keeps the log from
    starting over. The loop goes on; the held commit is made once the log started over, or once
    LOG_RESTART_HOLD has passed (a slow disk must not stop chat)."""
    monkeypatch.setattr(server_main, "CHECKPOINT_INTERVAL", 0.01)
    monkeypatch.setattr(server_main, "LOG_RESTART_HOLD", 5.0)
    line = '{"type":"msg","text":"' + "x" * 500 + '"}'

    async def scenario() -> None:
        async with _in_process_server(tmp_path / "data", workers=1) as server:
            store = server.store
            store.wal_limit = 64 * 1024
            for seq in range(1, 300):
                store.add_event(seq, ("lobby",), 1.0, "msg", line)
            assert store.commit(1.0)
            started, release = threading.Event(), threading.Event()
            held: list[bool] = []  # the hub's hold, as the restart began
            restarts: list[bool] = []
            restart_log = store.restart_log

            def slow_restart() -> bool:
                held.append(server._commits_held)
                started.set()
                assert release.wait(10)
                restarts.append(restart_log())
                return restarts[-1]

            monkeypatch.setattr(store, "restart_log", slow_restart)
            loop_task = asyncio.get_running_loop().create_task(server._checkpoint_loop())
            try:
                while not started.is_set():
                    await asyncio.sleep(0.005)
                store.add_event(300, ("lobby",), 1.0, "msg", line)
                server._flush()  # what a tick does: held, nothing committed yet
                assert held == [True] and store.pending
                release.set()
                while server._commits_held or store.pending:
                    await asyncio.sleep(0.005)
                assert restarts == [True]
                assert not store.checkpoint()  # started over: not due again until the log grows past the limit

                # a restart that outlasts the hold: the hold ends and the tick's commit is made all the same
                server_main.LOG_RESTART_HOLD = 0.05
                started.clear()
                release.clear()
                for seq in range(301, 600):
                    store.add_event(seq, ("lobby",), 1.0, "msg", line)
                assert store.commit(1.0)
                while not started.is_set():
                    await asyncio.sleep(0.005)
                store.add_event(600, ("lobby",), 1.0, "msg", line)
                server._flush()
                while server._commits_held or store.pending:
                    await asyncio.sleep(0.005)
                assert held == [True, True] and len(restarts) == 1  # committed; the restart has not even begun
                release.set()
                while len(restarts) < 2:
                    await asyncio.sleep(0.005)
            finally:
                release.set()
                loop_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await loop_task

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_restarts_of_the_log_kept_from_happening_by_a_reader_back_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader that keeps the log in use (a backup) makes every restart give up; each retry waits twice as
    long as the one before (else the hub would hold its commits every second for as long as the backup
    runs). The waits are lower bounds, so a slow machine can only make the gaps longer."""
    monkeypatch.setattr(server_main, "CHECKPOINT_INTERVAL", 0.02)
    calls: list[float] = []
    loops: list[asyncio.AbstractEventLoop] = []
    four = asyncio.Event()

    def refused() -> bool:  # on the restart's thread
        calls.append(time.monotonic())
        if len(calls) == 4:
            loops[0].call_soon_threadsafe(four.set)
        return False

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        loops.append(loop)
        async with _in_process_server(tmp_path / "data", workers=1) as server:
            monkeypatch.setattr(server.store, "checkpoint", lambda: True)
            monkeypatch.setattr(server.store, "restart_log", refused)
            task = loop.create_task(server._checkpoint_loop())
            try:
                await four.wait()
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        gaps = [b - a for a, b in itertools.pairwise(calls)]
        assert gaps[1] >= 0.04 and gaps[2] >= 0.08, gaps  # without the back-off: every 0.02 s

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_a_replacement_killed_before_it_is_ready_is_replaced_again(make_server: MakeServer) -> None:
    """A worker that exits before it is ready cannot boot, and the server stops (exit 3) rather than start
    it forever; one killed by a signal then (the OOM killer, an operator) stopped the whole server too."""
    server = make_server(workers=2)
    for _ in range(3):  # the kill must land before the replacement is ready (it takes ~0.1 s to import)
        mark = server.mark()
        os.kill(server.worker_pids()[0], signal.SIGKILL)
        match = re.search(r"started \(pid (\d+)\)", server.wait_log(r"worker \d started", 10, mark))
        assert match is not None
        pid = int(match[1])
        os.kill(pid, signal.SIGKILL)
        server.wait_log(rf"worker \d ready \(pid (?!{pid}\))", 10, mark)  # a replacement of the replacement
        if f"ready (pid {pid})" not in server.log:
            break  # it was killed before it was ready: the case
    else:
        pytest.skip("each replacement was ready before the test could kill it")
    assert server.proc is not None and server.proc.poll() is None  # still serving
    assert "could not boot" not in server.log
    with Client(server.port, "a") as a, Client(server.port, "b") as b:
        a.send({"type": "msg", "room": "lobby", "text": "still here", "id": 1})
        assert b.expect("msg")["text"] == "still here"


def test_a_connection_goes_to_another_worker_when_one_cannot_take_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker whose descriptor queue is full (stalled, in a storm of connects: ~2,700 queued) refused the
    client ("worker unavailable") although another worker could take it."""

    async def scenario() -> None:
        async with _in_process_server(tmp_path / "data", workers=2) as server:
            for slot in server.slots:
                server._spawn(slot)
            while not all(slot.ready for slot in server.slots):  # their "ready" records come through the loop
                await asyncio.sleep(0.01)
            full = server.slots[0].fd_sock
            send_fds = socket.send_fds

            def queue_full_on_worker_0(sock: socket.socket, *args: Any) -> int:
                if sock is full:
                    raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
                return send_fds(sock, *args)

            monkeypatch.setattr(socket, "send_fds", queue_full_on_worker_0)
            mine, theirs = socket.socketpair()
            with mine:
                server._place(theirs, "127.0.0.1")  # worker 0 has fewer connections: it is tried first
                assert not server.slots[0].conns and len(server.slots[1].conns) == 1
                mine.settimeout(10)
                assert b'"type":"server"' in mine.recv(4096)  # worker 1 greets it

    asyncio.run(asyncio.wait_for(scenario(), 20))


def test_a_stop_signal_during_the_start_stops_the_server_at_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The signal handlers came only once the workers were ready: a SIGTERM in the first fraction of a
    second (a boot can take up to WORKER_BOOT_TIMEOUT) killed the server unlogged, and the next start
    said the last run had not stopped cleanly. Now it is a stop like any other, before serving anyone."""
    config = ServerConfig(
        host="127.0.0.1", port=0, data_dir=tmp_path / "data", workers=2, discovery=DiscoveryConfig(discovery=False)
    )

    async def scenario() -> None:
        server = Server(config)
        try:
            asyncio.get_running_loop().call_soon(server._signal_came, signal.SIGTERM)  # once the workers started
            await server.start()
            assert server.stopping and server.done.is_set() and not any(s.ready for s in server.slots)
        finally:
            await server.close()
        assert all(s.proc is not None and s.proc.poll() is not None for s in server.slots)

    with caplog.at_level(logging.INFO, logger="lanchat.server"):
        asyncio.run(asyncio.wait_for(scenario(), 20))
    assert "SIGTERM during the start: stopping" in caplog.text


class Started(NamedTuple):
    ready: list[bool]
    pids: list[int | None]
    error: RuntimeError | None
    took: float


def start_spawning(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    spawn: Callable[[Callable[[], None], server_main.WorkerSlot, int], None],
    *,
    workers: int,
    boot_timeout: float,
) -> Started:
    """Start a real server whose n-th spawn of a worker is ``spawn(real, slot, n)`` (``real()`` spawns it),
    then close it: what the start left, the error it raised if any, and how long it took."""
    monkeypatch.setattr(const, "WORKER_BOOT_TIMEOUT", boot_timeout)
    real_spawn, count = Server._spawn, itertools.count()

    def spawning(self: Server, slot: server_main.WorkerSlot) -> None:
        spawn(lambda: real_spawn(self, slot), slot, next(count))

    monkeypatch.setattr(Server, "_spawn", spawning)
    config = ServerConfig(
        host="127.0.0.1",
        port=0,
        data_dir=tmp_path / "data",
        workers=workers,
        discovery=DiscoveryConfig(discovery=False),
    )

    async def scenario() -> Started:
        server, began, error = Server(config), time.monotonic(), None
        try:
            try:
                await server.start()
            except RuntimeError as exc:
                error = exc
            pids = [s.proc.pid if s.proc is not None else None for s in server.slots]
            return Started([s.ready for s in server.slots], pids, error, time.monotonic() - began)
        finally:
            await server.close()

    return asyncio.run(asyncio.wait_for(scenario(), 20))


def test_a_worker_killed_by_a_signal_during_the_start_is_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The log said "replacing it", but the replacement waited for the supervisor, which starts once every
    worker is ready: the server waited out WORKER_BOOT_TIMEOUT and exited 3 (a fuzzing review)."""
    killed: list[int] = []

    def kill_the_first(spawn: Callable[[], None], slot: server_main.WorkerSlot, n: int) -> None:
        spawn()
        if n == 0 and slot.proc is not None:  # (the OOM killer, an operator's kill -9, during the boot)
            killed.append(slot.proc.pid)
            slot.proc.kill()

    with caplog.at_level(logging.INFO, logger="lanchat.server"):
        started = start_spawning(tmp_path, monkeypatch, kill_the_first, workers=2, boot_timeout=5.0)
    assert started.error is None and all(started.ready) and killed and not set(killed) & set(started.pids)
    assert "was killed by SIGKILL" in caplog.text and "replacing it" in caplog.text


def test_a_worker_replaced_late_in_the_start_gets_its_own_boot_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replacement started just before WORKER_BOOT_TIMEOUT ran out got what was left of it (a review: 0.1 s),
    where the supervisor gives each worker the whole of it; one killed in the last 30 ms was not replaced at all
    (the timeout was checked before the kill was reaped: a review of the mend)."""
    hung: list[int] = []

    def hang_the_first(spawn: Callable[[], None], slot: server_main.WorkerSlot, n: int) -> None:
        spawn()
        if n == 0 and slot.proc is not None:  # stopped before it is ready, and killed late in the start
            hung.append(slot.proc.pid)
            slot.proc.send_signal(signal.SIGSTOP)
            asyncio.get_running_loop().call_later(1.99, slot.proc.kill)  # (a review: 30 ms before was too late)

    started = start_spawning(tmp_path, monkeypatch, hang_the_first, workers=1, boot_timeout=2.0)
    assert started.error is None and started.ready == [True] and hung and started.pids[0] not in hung


def test_a_worker_that_cannot_be_started_again_during_the_start_ends_it_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As a first spawn that fails: said at once, not retried until the boot timeout's "did not report ready"."""

    def kill_then_fail(spawn: Callable[[], None], slot: server_main.WorkerSlot, n: int) -> None:
        if n > 0:
            raise OSError(errno.EAGAIN, "Resource temporarily unavailable")
        spawn()
        if slot.proc is not None:
            slot.proc.kill()

    started = start_spawning(tmp_path, monkeypatch, kill_then_fail, workers=1, boot_timeout=3.0)
    assert started.error is not None and started.took < 2.0
    assert re.match(r"cannot start worker 0: .*Resource temporarily unavailable", str(started.error))


def test_a_stop_signal_before_the_event_loop_is_held_for_the_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An operator's walkthrough: a SIGTERM 0.6 s after `lanchat serve` began (its imports, the history's
    opening) ended it at once, exit code 143 and nothing logged. `serve` holds the stop signals from its
    first step, and the start takes them over as if they had come to it."""
    from lanchat.config import held_stop_signals, hold_stop_signals, release_stop_signals

    config = ServerConfig(
        host="127.0.0.1", port=0, data_dir=tmp_path / "data", workers=1, discovery=DiscoveryConfig(discovery=False)
    )
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}

    async def scenario() -> None:
        server = Server(config)
        try:
            await server.start()
            assert server.stopping and server.done.is_set() and all(s.proc is None for s in server.slots)
        finally:  # (no worker started: the stop came before)
            await server.close()

    try:
        hold_stop_signals()
        os.kill(os.getpid(), signal.SIGTERM)  # (a Python handler runs at the next bytecode: before the start)
        with caplog.at_level(logging.INFO, logger="lanchat.server"):
            asyncio.run(asyncio.wait_for(scenario(), 20))
    finally:
        release_stop_signals()
        for sig, handler in before.items():
            signal.signal(sig, handler)
    assert "SIGTERM during the start: stopping" in caplog.text
    hold_stop_signals()  # one held for a server that fails before its start is let go with the handlers
    os.kill(os.getpid(), signal.SIGTERM)
    release_stop_signals()
    assert held_stop_signals() == [] and signal.getsignal(signal.SIGTERM) == before[signal.SIGTERM]


def test_a_main_process_that_was_held_does_not_blame_its_workers(tmp_path: Path) -> None:
    """Held for a minute (an adversarial review: history pages at the line rate), the main process read no
    pongs, and its next supervisor round killed both healthy workers for "no heartbeat"."""

    async def scenario() -> None:
        async with _in_process_server(tmp_path / "data", workers=1) as server:
            killed: list[str] = []
            server._kill = lambda slot, why="": killed.append(why)  # type: ignore[method-assign]
            slot = server.slots[0]
            slot.alive = slot.ready = True
            now = time.monotonic()
            slot.last_pong = server._supervised = now - 60  # nothing ran here for a minute
            server._supervise_once()
            assert killed == []
            slot.last_pong = now - 60  # silent while this process ran: that is the worker's
            server._supervise_once()
            assert killed == ["no heartbeat"]

    asyncio.run(asyncio.wait_for(scenario(), 20))


def test_a_worker_that_hangs_at_boot_stops_the_server_as_one_that_cannot_boot(tmp_path: Path) -> None:
    """The supervisor's own kill of a worker not ready after WORKER_BOOT_TIMEOUT is a SIGKILL too: it was
    taken for the OOM killer's, and the worker replaced every 10 s for ever, serving nobody."""

    async def scenario() -> None:
        async with _in_process_server(tmp_path / "data", workers=1) as server:
            slot = server.slots[0]
            server._spawn(slot)
            assert not slot.ready
            server._kill(slot, BOOT_TIMEOUT_KILL)  # what a supervisor round does at the boot timeout
            assert slot.proc is not None
            slot.proc.wait(5)
            server._reap()
            assert server.stopping and server.exit_code == EXIT_WORKER_BOOT and slot.respawn_at is None

    asyncio.run(asyncio.wait_for(scenario(), 20))
