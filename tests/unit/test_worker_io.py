"""The worker's socket edge with real sockets and a real loop, but no hub: fan-out pacing, the write queue,
closing (drain, then close; cut off after CLOSE_TIMEOUT) and the sendq limit."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from lanchat import const
from lanchat.config import WorkerConfig
from lanchat.protocol import control
from lanchat.server import worker as worker_mod
from lanchat.server.worker import ClientConn, Worker, workers_per_core


class FakeConn:
    """Stands in for a ClientConn: records when it was flushed; a slow one takes `cost` seconds to send."""

    def __init__(self, cost: float = 0.0) -> None:
        self.cost = cost
        self.flushed: list[float] = []
        self.event = asyncio.Event()

    def flush(self) -> None:
        self.flushed.append(asyncio.get_running_loop().time())
        if self.cost:
            time.sleep(self.cost)  # stands for a round of many send() calls
        self.event.set()


def make_worker(workers: int = 1) -> tuple[Worker, list[socket.socket]]:
    a, b = socket.socketpair()
    c, d = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    cfg = WorkerConfig(sendq=1 << 20, max_frame=1024, rate=10.0, burst=10, workers=workers)
    return Worker(0, a, c, cfg), [a, b, c, d]


def test_a_long_busy_round_defers_the_next_and_a_short_or_thin_one_does_not() -> None:
    async def main() -> None:
        worker, socks = make_worker()
        try:
            slow, fast = FakeConn(cost=3 * const.FANOUT_PAUSE_MIN), FakeConn()
            worker.mark_dirty(slow)  # type: ignore[arg-type]
            await asyncio.wait_for(slow.event.wait(), 5)
            assert worker._fanout_at <= asyncio.get_running_loop().time()  # one line or less: no pause
            slow.event.clear()
            worker.msgs_out += const.FANOUT_THICK  # lines piled up for it: a busy room
            worker.mark_dirty(slow)  # type: ignore[arg-type]
            await asyncio.wait_for(slow.event.wait(), 5)
            pause_until = worker._fanout_at
            assert pause_until - slow.flushed[-1] >= 3 * const.FANOUT_PAUSE_MIN * const.FANOUT_PAUSE
            worker.mark_dirty(fast)  # type: ignore[arg-type]
            await asyncio.wait_for(fast.event.wait(), 5)
            # The pause held it back until it was over, or all but the last FANOUT_PAUSE_MIN of it (a shorter
            # wait is not timed: _schedule_fanout); not "for the next few loop iterations", as this said: the
            # pause is 3 ms, and a test process on a loaded machine may wait that long to run at all.
            assert fast.flushed[0] >= pause_until - const.FANOUT_PAUSE_MIN
            fast.event.clear()
            worker.mark_dirty(fast)  # type: ignore[arg-type]
            for _ in range(3):
                await asyncio.sleep(0)
            assert len(fast.flushed) == 2  # a short round: the next one runs at once
        finally:
            for s in socks:
                s.close()

    asyncio.run(main())


@pytest.mark.parametrize(
    ("workers", "cores", "factor"),
    [(1, 2, 1.0), (2, 2, 2.0), (4, 2, 4.0), (4, 3, 2.0), (4, 5, 1.0), (8, 64, 1.0), (1, 1, 1.0), (3, 1, 3.0),
     (5, 2, const.FANOUT_SHARE_MAX), (64, 2, const.FANOUT_SHARE_MAX), (12, 4, const.FANOUT_SHARE_MAX)],
)  # fmt: skip
def test_workers_per_core(workers: int, cores: int, factor: float) -> None:
    assert workers_per_core(workers, cores) == factor  # one core is left to the main process; capped


@pytest.mark.parametrize("workers", [1, 3])
def test_the_pause_after_a_busy_round_scales_with_the_workers_sharing_a_core(
    workers: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker_mod, "_cores", lambda: 2)  # as on the benchmark machine: one core for workers

    async def main() -> None:
        worker, socks = make_worker(workers)
        try:
            slow = FakeConn(cost=2 * const.FANOUT_PAUSE_MIN)
            worker.msgs_out += const.FANOUT_THICK
            worker.mark_dirty(slow)  # type: ignore[arg-type]
            await asyncio.wait_for(slow.event.wait(), 5)
            # The round lasted at least the flush's cost, from its start (flushed[-1]) to its end: the next
            # one may start no sooner than the round's end plus workers times its length.
            cost = 2 * const.FANOUT_PAUSE_MIN
            assert worker._fanout_at - slow.flushed[-1] >= cost * (1 + const.FANOUT_PAUSE * workers)
        finally:
            for s in socks:
                s.close()

    asyncio.run(main())


class Member(FakeConn):
    """A room member in JSON mode: what each round sends, as the list of batches queued for it."""

    json_mode = True

    def __init__(self, cost: float = 0.0) -> None:
        super().__init__(cost)
        self.out: list[bytes] = []
        self.rounds: list[list[bytes]] = []

    def flush(self) -> None:
        self.rounds.append(self.out[:])
        self.out.clear()
        super().flush()


def after_a_busy_round(body: Callable[[Worker, socket.socket, Member], Awaitable[None]]) -> None:
    """Run ``body(worker, hub, member)`` once the worker's one member has had a busy round (two lines,
    "a" and "b") that took long enough for a pause to follow, and the worker rests the hub's pipe."""

    async def main() -> None:
        worker, socks = make_worker()
        try:
            await worker.start()
            member = Member(cost=20 * const.FANOUT_PAUSE_MIN)  # a long round: a pause follows
            worker.rooms["r"] = {1: member}  # type: ignore[dict-item]
            socks[1].sendall(control.room_frame("r", b"a\nb\n"))  # two lines for one member: a busy round
            await asyncio.wait_for(member.event.wait(), 5)
            member.event.clear()
            assert member.rounds == [[b"a\nb\n"]] and worker._ctrl_paused
            await body(worker, socks[1], member)
        finally:
            if worker.ctrl is not None:
                worker.ctrl.close()
            for s in socks:
                s.close()

    asyncio.run(main())


def test_the_hub_pipe_rests_during_a_pause_and_what_came_meanwhile_joins_the_next_round_in_one_pass() -> None:
    async def body(worker: Worker, hub: socket.socket, member: Member) -> None:
        pause_until = worker._fanout_at
        hub.sendall(control.room_frame("r", b"c\n") + control.room_frame("r", b"d\n"))
        for _ in range(5):
            await asyncio.sleep(0)
        assert member.out == []  # the pipe is not read during the pause...
        await asyncio.wait_for(member.event.wait(), 5)
        assert member.flushed[-1] >= pause_until  # ...its batches go out in the round after it,
        assert member.rounds[-1] == [b"c\nd\n"]  # queued once, in order, as one payload
        assert worker.msgs_out == 4

    after_a_busy_round(body)


def test_what_the_drain_after_a_pause_leaves_in_the_pipe_follows_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker_mod, "CTRL_DRAIN_READS", 1)
    monkeypatch.setattr(worker_mod, "RECV_SIZE", 16)  # one read of the drain takes the first 16 bytes only

    async def body(worker: Worker, hub: socket.socket, member: Member) -> None:
        later = [control.room_frame("r", f"line {i}\n".encode()) for i in range(6)]
        hub.sendall(b"".join(later))  # several times what one drain read takes
        await until(lambda: worker.msgs_out == 8)
        sent = b"".join(b"".join(r) for r in member.rounds)
        assert sent == b"a\nb\n" + b"".join(f"line {i}\n".encode() for i in range(6))

    after_a_busy_round(body)


async def until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    """Run the loop until ``check()`` holds (the worker's own callbacks make it true)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


async def registered(worker: Worker, conn: ClientConn, peer: socket.socket, **cfg: Any) -> float:
    """A JSON client's hello, and the hub's answer (bound): when it was last heard, for the sweeps."""
    worker.cfg = dataclasses.replace(worker.cfg, **cfg)
    peer.sendall(b'{"type":"hello","nick":"al"}\n')
    await until(lambda: conn.state.hello_sent)
    worker._control(["bind", 1, "al"])  # the hub's answer: registered
    return conn.state.last_seen


def told_hub(worker: Worker) -> list[Any]:
    """The JSON records the worker has queued for the hub (there is no hub here to send them to)."""
    worker._frame_records()
    frames = control.ControlDecoder().feed(b"".join(worker._hub_out))
    return [rec for frame in frames if isinstance(frame, control.JsonFrame) for rec in frame.records]


def eof_reader(peer: socket.socket) -> tuple[Callable[[], bool], bytearray]:
    """A check for until(): reads what the peer has, true at EOF; and what was read."""
    peer.setblocking(False)
    got = bytearray()

    def read() -> bool:
        try:
            chunk = peer.recv(1 << 20)
        except BlockingIOError:
            return False
        got.extend(chunk)
        return chunk == b""

    return read, got


def with_conn(body: Callable[[Worker, ClientConn, socket.socket], Awaitable[None]], sendq: int = 1 << 24) -> None:
    async def main() -> None:
        worker, socks = make_worker()
        worker.sendq = sendq
        ours, peer = socket.socketpair()
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        conn = ClientConn(worker, 1, "test", ours)
        conn.start()
        try:
            await body(worker, conn, peer)
        finally:
            conn.abort()
            peer.close()
            for s in socks:
                s.close()

    asyncio.run(main())


def test_output_the_kernel_cannot_take_is_queued_in_order_and_sent_when_it_can() -> None:
    async def body(worker: Worker, conn: ClientConn, peer: socket.socket) -> None:
        lines = [b"%06d %s\n" % (i, b"x" * 200) for i in range(2000)]  # ~400 KB, far more than the buffers
        for line in lines:
            conn.push(line)
        await until(lambda: conn.wbuf is not None)  # the kernel took part, the rest waits
        peer.setblocking(False)
        got = bytearray()

        def drained() -> bool:
            try:
                got.extend(peer.recv(1 << 20))
            except BlockingIOError:
                pass
            return len(got) >= len(b"".join(lines))

        await until(lambda: drained() and conn.wbuf is None)
        assert got.endswith(b"".join(lines))  # after the greeting: every line, once, in order
        assert 1 in worker.conns

    with_conn(body)


def test_close_sends_everything_then_closes() -> None:
    async def body(worker: Worker, conn: ClientConn, peer: socket.socket) -> None:
        payload = b"y" * 300_000 + b"\n"
        conn.push(payload)
        conn.close(b"bye\n")
        assert conn.closing and 1 in worker.conns  # still draining
        read, got = eof_reader(peer)
        await until(read)  # our FIN came after the last byte
        assert got.endswith(payload + b"bye\n")
        await until(lambda: 1 not in worker.conns and conn.sock is None)  # all taken: let go

    with_conn(body)


def test_input_that_came_while_closing_is_read_before_the_socket_goes_so_the_close_is_no_reset() -> None:
    """Linux resets a socket closed with unread input (a Unix socket's peer reads ECONNRESET alike), and the
    reset discards what the peer had not read yet: the bye, the last relays. What came is read (and dropped,
    never handled) just before the socket is let go; until then it is counted (the hub is told then)."""

    async def body(worker: Worker, conn: ClientConn, peer: socket.socket) -> None:
        conn._report_closed(False, "idle timeout")
        conn.close(b"bye\n")
        peer.sendall(b'{"type":"hello","nick":"late"}\n' * 1000)  # unread: the closing side reads no more
        assert not [r for r in told_hub(worker) if r[0] == "closed"]  # held: the main process still counts it
        read, got = eof_reader(peer)
        await until(read)  # ConnectionResetError without the read before the close
        await until(lambda: 1 not in worker.conns)
        assert got.endswith(b"bye\n") and not conn.state.hello_sent
        assert [r for r in told_hub(worker) if r[0] in ("req", "closed")] == [["closed", 1, False, "idle timeout"]]

    with_conn(body)


def test_a_peer_that_never_reads_is_cut_off_after_close_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(const, "CLOSE_TIMEOUT", 0.05)

    async def body(worker: Worker, conn: ClientConn, peer: socket.socket) -> None:
        conn.push(b"z" * 300_000)
        conn.close()
        assert 1 in worker.conns and not [r for r in told_hub(worker) if r[0] == "closed"]
        await until(lambda: 1 not in worker.conns)
        assert conn.sock is None and told_hub(worker)[-1] == ["closed", 1, False, "connection lost"]

    with_conn(body)


def test_a_client_over_sendq_is_dropped_as_too_slow() -> None:
    async def body(worker: Worker, conn: ClientConn, peer: socket.socket) -> None:
        for _ in range(10):
            conn.push(b"w" * 10_000)
        await until(lambda: 1 not in worker.conns)
        assert conn.sock is None
        assert told_hub(worker)[-1] == ["closed", 1, False, "too slow"]

    with_conn(body, sendq=50_000)


def test_a_lost_connection_leaves_no_empty_room_behind() -> None:
    """As a part does: a worker that has seen many room names come and go keeps none of them."""

    async def body(worker: Worker, conn: ClientConn, peer: socket.socket) -> None:
        worker._control(["member", 1, "kept", True])
        worker._control(["member", 1, "gone", True])
        worker._control(["member", 1, "gone", False])
        assert list(worker.rooms) == ["kept"]
        peer.close()  # the client goes away
        await until(lambda: 1 not in worker.conns)
        assert worker.rooms == {}
        assert ["closed", 1, False, "connection lost"] in told_hub(worker)

    with_conn(body)


def test_a_record_of_the_wrong_shape_from_the_hub_is_logged_and_the_rest_applied(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def body(worker: Worker, conn: ClientConn, peer: socket.socket) -> None:
        frame = control.json_frame(
            [["member", 1, "dev"], ["member", "1", "x", True], ["bind"], control.member(1, "ok", True)]
        )
        with caplog.at_level(logging.ERROR):
            worker.from_hub(frame)
        assert list(worker.rooms) == ["ok"] and 1 in worker.conns
        assert caplog.text.count("bad control record") == 3

    with_conn(body)


def test_a_connection_handed_over_while_shutting_down_is_refused_for_the_main_process_to_say_why() -> None:
    """A review: it was reported closed, and the main process closed its copy: the client got a bare EOF.
    Refused, the main process tells it to come back (its copy is still open)."""

    async def main() -> None:
        worker, socks = make_worker()
        ours, peer = socket.socketpair()
        try:
            worker.shutting_down = True
            socks[2].setblocking(False)  # (the worker's end of the descriptor channel)
            socket.send_fds(socks[3], [b'{"conn": 7, "peer": "127.0.0.1"}'], [ours.fileno()])
            worker._receive_fds()
            assert told_hub(worker) == [["refused", 7, "worker shutting down"]]
            assert 7 not in worker.conns
        finally:
            for s in (*socks, ours, peer):
                s.close()

    asyncio.run(main())


def test_a_close_the_hub_asks_for_is_reported_back() -> None:
    """The main process counts connections (--max-clients, --max-per-ip, placement): it must hear of every
    close, also of one it asked for (a session resumed on another connection).

    The peer reads, as a client does: the connection lingers until its greeting is read (a peer that never
    reads holds it for CLOSE_TIMEOUT, as long as until() waits; that raced and failed once in a while)."""

    async def body(worker: Worker, conn: ClientConn, peer: socket.socket) -> None:
        worker._control(["close", 1, "session resumed elsewhere"])
        read, got = eof_reader(peer)
        await until(read)
        assert got.startswith(b'{"type":"server"')  # the greeting, then the FIN
        await until(lambda: 1 not in worker.conns)
        assert ["closed", 1, True, "session resumed elsewhere"] in told_hub(worker)

    with_conn(body)


def test_a_quit_stays_open_for_what_the_hub_sends_until_the_hub_closes_it() -> None:
    """What the hub sequenced before the quit (and the acks of the last posts) comes after the worker has
    read the quit: the connection waits for the hub's close, and the plain "* bye" is the last line."""

    async def body(worker: Worker, conn: ClientConn, peer: socket.socket) -> None:
        peer.sendall(b"/nick al\n")
        await until(lambda: conn.state.hello_sent)
        worker._control(["bind", 1, "al"])
        peer.sendall(b"/quit off\n")
        await until(lambda: conn.farewell is not None)
        assert ["req", 1, {"type": "quit", "reason": "off"}] in told_hub(worker)
        assert not conn.closing and 1 in worker.conns
        assert not [r for r in told_hub(worker) if r[0] == "closed"]  # reported when it closes
        conn.sweep(time.monotonic() + 3600)  # no timeout of the session's own while the hub is asked
        assert not conn.closing
        conn.push(b"[12:00] #lobby <bo> said before the quit\n")
        worker._control(["close", 1, "off"])
        read, got = eof_reader(peer)
        await until(read)
        assert got.endswith(b"<bo> said before the quit\n* bye\n")
        peer.shutdown(socket.SHUT_WR)  # as nc does at our EOF
        await until(lambda: 1 not in worker.conns)
        assert ["closed", 1, True, "off"] in told_hub(worker)

    with_conn(body)


def test_a_quit_the_hub_never_answers_is_closed_after_close_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(const, "CLOSE_TIMEOUT", 0.05)

    async def body(worker: Worker, conn: ClientConn, peer: socket.socket) -> None:
        peer.sendall(b'{"type":"hello","nick":"al"}\n{"type":"quit"}\n')
        await until(lambda: conn.farewell is not None)
        assert 1 in worker.conns
        read, _ = eof_reader(peer)
        await until(read)
        peer.shutdown(socket.SHUT_WR)
        await until(lambda: 1 not in worker.conns)
        assert ["closed", 1, True, "quit"] in told_hub(worker)

    with_conn(body)


def test_an_idle_timeout_below_the_ping_interval_still_pings_first() -> None:
    """--idle-timeout 20 with the default --ping-interval 30: every silent client was dropped unpinged (and
    reconnected, again and again). The ping comes at half the idle timeout when that is sooner."""

    async def body(worker: Worker, conn: ClientConn, peer: socket.socket) -> None:
        seen = await registered(worker, conn, peer, idle_timeout=20.0, ping_interval=30.0, handshake_timeout=10.0)
        conn.sweep(seen + 9.9)
        assert not conn.pinged
        conn.sweep(seen + 10.1)
        assert conn.pinged and not conn.closing
        conn.sweep(seen + 20.1)  # no pong: dropped, as before
        assert conn.closing

    with_conn(body)


def test_a_wait_for_the_hub_is_not_counted_as_a_clients_silence() -> None:
    """While the hub is behind the worker reads nobody, so nobody's pong is read either: the sweep skipped
    them then, but counted the stall as their silence once the hub caught up, and dropped clients that
    answer every ping (never pinged) as idle."""

    async def body(worker: Worker, conn: ClientConn, peer: socket.socket) -> None:
        await registered(worker, conn, peer, idle_timeout=2.0, ping_interval=1.0, handshake_timeout=10.0)
        start = time.monotonic()
        worker.hub_full = True  # the hub stalls for longer than the idle timeout
        conn.sweep(start + 5.0)
        assert not conn.closing and not conn.pinged
        worker.hub_caught_up()
        conn.sweep(worker.caught_up_at + 0.5)
        assert not conn.closing and not conn.pinged
        conn.sweep(worker.caught_up_at + 1.5)  # silent since the hub caught up: pinged, not dropped
        assert not conn.closing and conn.pinged

    with_conn(body)


def test_a_frame_for_named_connections_counts_its_lines_for_each() -> None:
    """A tick's acks for one sender come in one frame (Hub.commit): each line counts, as for a room, in the
    figures and in the fan-out's measure of a busy round."""

    class Pushed:
        def __init__(self) -> None:
            self.data: list[bytes] = []

        def push(self, data: bytes) -> None:
            self.data.append(data)

    worker, socks = make_worker()
    try:
        a, b = Pushed(), Pushed()
        worker.conns.update({1: a, 2: b})  # type: ignore[dict-item]
        payload = b'{"type":"ack","id":1,"seq":5}\n{"type":"ack","id":2,"seq":6}\n{"type":"ack","id":3,"seq":7}\n'
        worker.from_hub(control.conns_frame([1, 2, 9], payload))  # 9: gone meanwhile
        assert a.data == b.data == [payload]
        assert worker.msgs_out == 6
    finally:
        for s in socks:
            s.close()


def test_bytes_of_an_unfinished_line_do_not_earn_a_new_ping_at_each_sweep() -> None:
    """Bytes of a line not ended are silence (docs/protocol.md), but any byte reset the ping flag: a client
    dribbling a byte at a time was pinged at every sweep, twice a second from --ping-interval to
    --idle-timeout (an adversarial review). One ping per silence; a line handled starts a new one."""

    async def body(worker: Worker, conn: ClientConn, peer: socket.socket) -> None:
        def pings() -> int:  # this round's output, taken before the round sends it (sweep pushes at once)
            count = sum(chunk.count(b'{"type":"ping"}') for chunk in conn.out)
            conn.out.clear()
            return count

        seen = await registered(worker, conn, peer, idle_timeout=20.0, ping_interval=5.0, handshake_timeout=10.0)
        conn.sweep(seen + 5.1)
        assert pings() == 1
        peer.sendall(b"{")  # a byte of a line that never ends
        await until(lambda: conn.state._framer.buffered > 0)
        conn.sweep(seen + 5.6)
        conn.sweep(seen + 6.1)
        assert pings() == 0  # no second ping for the same silence
        peer.sendall(b'"type":"pong"}\n')  # a line: heard, and a later silence is pinged again
        await until(lambda: conn.state.last_seen > seen)
        conn.sweep(conn.state.last_seen + 5.1)
        assert pings() == 1

    with_conn(body)
