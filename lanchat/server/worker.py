"""A worker process: owns its clients' sockets, parses and validates their bytes, fans events out.

Started by the supervisor as ``python -m lanchat.server.worker``; talks to the hub over one stream
socketpair (control frames, batched per loop tick) and receives accepted client sockets as file
descriptors on a second, SOCK_SEQPACKET pair. Never holds global truth: if it dies, only its sockets go.
It exits at once when the main process goes away (EOF on the control pipe).
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import json
import logging
import os
import signal
import socket
import sys
import termios
import time

from lanchat import const
from lanchat.config import WorkerConfig, usable_cores
from lanchat.errors import RemoteProtocolError
from lanchat.protocol import control
from lanchat.protocol import messages as m
from lanchat.protocol.server_conn import Action, Forward, Mode, Reply, ServerConnection
from lanchat.server import heap
from lanchat.server.storms import Throttled

log = logging.getLogger("lanchat.worker")

EXIT_BOOT_FAILED = 3  # as gunicorn: the supervisor stops the server instead of respawning forever
HOUSEKEEPING_INTERVAL = 0.5  # seconds between timeout sweeps (handshake, ping, idle)
HANDSHAKE_RENEWALS = 3  # refused plain /nicks that each start --handshake-timeout again
RECV_SIZE = 65536  # bytes per read from a client: several maximal lines
# A closing connection's socket is let go once the peer has acknowledged every byte: asked after 5 ms,
# then twice as long each time, every 250 ms at most (CLOSE_TIMEOUT in all); what the peer sent meanwhile is
# read first, 16 reads (1 MiB) at most: more, and the close is a reset, harmless once all is acknowledged.
LINGER_POLL_FIRST = 0.005
LINGER_POLL_MAX = 0.25
LINGER_DRAIN_READS = 16
# Reads of RECV_SIZE from the hub at the end of a pause, at most; the rest is read as usual, next tick. A
# pause gathers tens of KiB at chat rates; a larger drain (64 reads, 4 MiB) made glibc keep the peak in the
# heap: +400 bytes of RSS per idle connection with 10,000 connected (3.45 -> 3.85-4.08 KiB, 2 workers).
CTRL_DRAIN_READS = 4


class ClientConn:
    """I/O edge of one client: bytes in -> ServerConnection -> actions; output buffered per round.

    Drives its non-blocking socket with the loop's add_reader/add_writer directly rather than through an
    asyncio transport: a transport (with its extra-info dict, addresses, buffer and weak registration)
    costs about 1.2 KiB per connection, nearly a third of the per-connection budget of an idle server,
    and its layers sit on the hottest path. What it would do for us is small: read, send what the kernel takes,
    keep the rest until the socket is writable, and close once that is sent.
    """

    __slots__ = (
        "_closer", "_resume_handle", "closing", "conn_id", "created", "farewell", "fd", "json_mode", "out",
        "peer", "ping_seen", "pinged", "reading", "renewals", "reported", "sock", "state", "wbuf", "why", "worker",
    )  # fmt: skip

    def __init__(self, worker: Worker, conn_id: int, peer: str, sock: socket.socket) -> None:
        self.worker = worker
        self.sock: socket.socket | None = sock  # None once closed
        self.fd = sock.fileno()
        self.conn_id = conn_id
        self.peer = peer
        cfg = worker.cfg
        now = time.monotonic()
        self.state = ServerConnection(conn_id, max_frame=cfg.max_frame, rate=cfg.rate, burst=cfg.burst, now=now)
        self.created = now
        self.renewals = 0  # of the handshake time, by refused /nicks (HANDSHAKE_RENEWALS)
        self.pinged = False
        self.ping_seen = 0.0  # the state's last_seen when we pinged: one ping per silence
        self.reading = False
        self.out: list[bytes] = []  # this round's output, sent by flush()
        self.wbuf: bytearray | None = None  # what the kernel did not take yet (only while it is full)
        self.closing = False
        self.json_mode = False  # JSON session and open: the fan-out may append bytes without rendering
        self.reported = False  # the hub was told it closed (or need not be: the worker stops)
        self.why: tuple[bool, str] | None = None  # (clean, reason) of the close, told once the socket is let go
        self.farewell: bytes | None = None  # it quit: the last words, sent when the hub says close
        self._resume_handle: asyncio.TimerHandle | None = None
        self._closer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """Adopted: register with the loop and greet."""
        assert self.sock is not None
        self.sock.setblocking(False)
        self._resume_reading()
        self.worker.conns[self.conn_id] = self
        self.worker.to_hub(control.adopted(self.conn_id))  # the main process may let go of its descriptor
        self.push(m.encode(m.server_hello(self.worker.name)))

    # --- reading -------------------------------------------------------------------------------------------

    def _resume_reading(self) -> None:
        if not self.reading and self.sock is not None:
            self.reading = True
            asyncio.get_running_loop().add_reader(self.fd, self._readable)

    def _pause_reading(self) -> None:
        if self.reading:
            self.reading = False
            asyncio.get_running_loop().remove_reader(self.fd)

    def _readable(self) -> None:
        if self.sock is None:
            return
        if self.closing:  # only while the worker stops (see Worker.shutdown)
            self._discard()
            return
        if self.worker.hub_full:  # the hub is behind: the bytes stay in the kernel until it catches up
            self._pause_reading()
            self.worker.held.append(self)
            return
        data = self._recv()
        if data is None:
            return
        if not data:
            self._pause_reading()
            try:  # EOF: the state machine closes (after a last line without its newline, which it parses)
                self._handle(self.state.receive_data(b"", time.monotonic()))
            except Exception:
                self._internal_error()
            return
        self.worker.bytes_in += len(data)
        try:
            self._handle(self.state.receive_data(data, time.monotonic()))
            self.json_mode = self.state.mode is Mode.JSON and not self.closing
        except Exception:  # a parser bug costs this one connection, never the worker
            self._internal_error()

    def hub_caught_up(self) -> None:
        if self.sock is not None and not self.closing and self._resume_handle is None:  # else: closed, or
            self._resume_reading()  # throttled (its own pause ends with a read)

    def _internal_error(self) -> None:
        log.exception("conn %d (%s): internal error on input; closing it", self.conn_id, self.peer)
        self._report_closed(False, "internal error")
        self.close(self.state.error_bytes(m.Err.INTERNAL, "internal server error", fatal=True))

    # --- protocol actions ----------------------------------------------------------------------------------

    def _handle(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Forward):
                req = action.request
                if not isinstance(req, m.Msg | m.Action | m.PrivMsg):
                    self.worker.msgs_in += 1
                    self.worker.to_hub(control.req(self.conn_id, req.to_obj()))
                    continue
                to = req.to if isinstance(req, m.PrivMsg) else req.room  # a message the full parser decoded
                action = m.Post(req.TYPE, to, m.json_str(req.text), req.id)
            if isinstance(action, m.Post):  # every message: a binary frame for the hub (control.POST)
                self.worker.msgs_in += 1
                self.worker.post(control.post_frame(self.conn_id, action.kind, action.to, action.text, action.id))
            elif isinstance(action, Reply):
                self.push(action.data)
            elif action.after_hub:
                if not action.clean:  # an EOF: the hub answers what came before it, then says close
                    self._report_closed(False, action.reason)
                    self.worker.to_hub(control.eof(self.conn_id))
                self._quitting(action.final)
            else:
                self._report_closed(action.clean, action.reason)
                self.close(action.final or None)
        if self.state.nicks_refused > self.renewals:  # (a /nick refused here: invalid)
            self.renew_handshake()
        until = self.state.throttled_until
        if until is not None and self.sock is not None and not self.closing and self._resume_handle is None:
            self._pause_reading()  # fakelag: TCP holds the flood back, nothing is dropped
            loop = asyncio.get_running_loop()
            self._resume_handle = loop.call_at(loop.time() + max(0.0, until - time.monotonic()), self._unthrottle)

    def renew_handshake(self) -> None:
        """A plain /nick refused (taken, or invalid): the time to choose another starts again (it counted from
        the connect: an nc user refused at 9 s had 1 s left, a review), HANDSHAKE_RENEWALS times at most (each
        refusal kept a connection without a session open for good, another)."""
        if self.state.nicks_refused > self.renewals and self.renewals < HANDSHAKE_RENEWALS:
            self.renewals += 1
            self.created = time.monotonic()

    def _unthrottle(self) -> None:
        self._resume_handle = None
        if self.closing or self.sock is None:
            return
        try:
            self._handle(self.state.process(time.monotonic()))
        except Exception:  # as in _readable: else the connection would stay paused, never read again
            self._internal_error()
            return
        if self.state.throttled_until is None and not self.closing:
            self._resume_reading()

    def _quitting(self, final: bytes) -> None:
        """The client quit. The hub ends its session and then sends a close for it, after everything it
        sequenced before the quit and after the commit that acks the client's last posts: until then the
        connection stays open for that output (the client reads until we close). A close that does not
        come in CLOSE_TIMEOUT (a hub gone or stuck) is made here."""
        self.farewell = final
        self._closer = asyncio.get_running_loop().call_later(const.CLOSE_TIMEOUT, self.close_for_hub, "quit")

    def close_for_hub(self, reason: str) -> None:
        """The hub ended this connection's session (a quit, a resume elsewhere): close, reported as clean."""
        self._report_closed(True, reason)  # the main process counts connections (limits, placement)
        self.close(self.farewell or None)

    def _report_closed(self, clean: bool, reason: str) -> None:
        """Why it closes (the first reason given), told to the hub when the socket is let go (_lost): until
        then the main process counts the connection (--max-clients, --max-per-ip), lingering included."""
        if self.why is None:
            self.why = (clean, reason)

    # --- output --------------------------------------------------------------------------------------------

    def push(self, data: bytes) -> None:
        if self.closing:
            return
        if self.state.mode is Mode.PLAIN and data[:1] == b"{":
            data = b"".join(filter(None, map(self.state.plain_text, data.splitlines())))
            if not data:
                return
        self.out.append(data)
        self.worker.mark_dirty(self)

    def flush(self) -> None:
        """Send this round's output: what the kernel takes now, the rest when the socket is writable."""
        sock = self.sock
        if not self.out or sock is None:
            self.out.clear()
            return
        data = self.out[0] if len(self.out) == 1 else b"".join(self.out)
        self.out.clear()
        self.worker.bytes_out += len(data)
        if self.wbuf is not None:  # still waiting for the kernel: queue behind what is there
            self.wbuf += data
        else:
            try:
                sent = sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._lost()
                return
            if sent == len(data):
                return
            self.wbuf = bytearray(data[sent:])
            asyncio.get_running_loop().add_writer(self.fd, self._writable)
        if len(self.wbuf) > self.worker.sendq:
            log.info("conn %d (%s): dropped, %d bytes queued (sendq)", self.conn_id, self.peer, len(self.wbuf))
            self._report_closed(False, "too slow")
            self.abort()  # its queue is full: a goodbye would only queue behind it

    def _writable(self) -> None:
        if self.sock is None or self.wbuf is None:
            return
        try:
            sent = self.sock.send(self.wbuf)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._lost()
            return
        del self.wbuf[:sent]
        if not self.wbuf:
            self.wbuf = None
            asyncio.get_running_loop().remove_writer(self.fd)
            if self.closing:
                closer, self._closer = self._closer, None  # the CLOSE_TIMEOUT abort set by close()
                if closer is not None:
                    closer.cancel()
                    self._shut(closer.when())
                else:
                    self._shut(asyncio.get_running_loop().time() + const.CLOSE_TIMEOUT)

    def close(self, final: bytes | None = None) -> None:
        """Send what is queued (and ``final``), then a FIN; let the socket go once the peer has acknowledged
        every byte, or after CLOSE_TIMEOUT seconds.

        A close with bytes unacknowledged and input unread would be a reset (Linux resets a socket closed
        with unread input), and a reset discards what the kernel still holds for the peer: the bye, the last
        relays of a slow reader pasting past the rate limit. Its input is not read meanwhile (unread, it
        costs nothing, and TCP holds the peer back); what came is read just before the socket is let go."""
        if self.closing:
            return
        if self._closer is not None:  # the wait for the hub's close after a quit
            self._closer.cancel()
            self._closer = None
        if final is not None:
            self.push(final)
        self.flush()
        self.closing = True
        self.json_mode = False
        self._pause_reading()
        if self.sock is None:  # the flush found it gone
            return
        deadline = asyncio.get_running_loop().time() + const.CLOSE_TIMEOUT
        if self.wbuf is None:
            self._shut(deadline)
        else:
            self._closer = asyncio.get_running_loop().call_at(deadline, self.abort)

    def _shut(self, deadline: float) -> None:
        """Closing, and our bytes are all with the kernel: the FIN goes after them."""
        assert self.sock is not None
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._lost()
            return
        self._linger(deadline, LINGER_POLL_FIRST)

    def _linger(self, deadline: float, delay: float) -> None:
        """Let the socket go once the peer has acknowledged everything (there is no event for that: asked
        after ``delay``, then twice as long each time, LINGER_POLL_MAX at most), or at ``deadline``."""
        self._closer = None
        loop = asyncio.get_running_loop()
        if self.delivered() or loop.time() >= deadline:
            self.release()
            return
        wait = min(delay, deadline - loop.time())
        self._closer = loop.call_later(wait, self._linger, deadline, min(2 * delay, LINGER_POLL_MAX))

    def delivered(self) -> bool:
        """Closing, and the peer has acknowledged every byte we sent (SIOCOUTQ: sent or not, unacknowledged):
        neither a FIN nor a reset can cost it any of them now."""
        if self.sock is None:
            return True
        if self.wbuf is not None:
            return False
        try:
            queued = fcntl.ioctl(self.fd, termios.TIOCOUTQ, b"\0\0\0\0")
        except OSError:
            return False
        return int.from_bytes(queued, sys.byteorder) == 0

    def _discard(self) -> None:
        """Read and drop what the peer sends while the worker stops: with nothing unread, the process's exit
        closes the socket with a FIN, and the kernel goes on sending what the peer has not taken yet."""
        if self._recv() == b"":
            self._pause_reading()  # the peer is done sending; EOF would stay readable

    def _recv(self) -> bytes | None:
        """One read: the bytes (b"" at EOF), or None if none are there now or the socket failed (then lost)."""
        assert self.sock is not None
        try:
            return self.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            self._lost()
            return None

    def release(self) -> None:
        """Read what the peer sent meanwhile (LINGER_DRAIN_READS reads at most), so that the close is a FIN
        rather than a reset (a peer on Windows discards what it had not read on a reset), then let go."""
        if self.sock is None:
            return
        for _ in range(LINGER_DRAIN_READS):
            if not self._recv():  # all read (None), the peer's EOF (b""), or the socket failed (lost already)
                break
        self._lost()

    def abort(self) -> None:
        """Close now, dropping anything unsent."""
        self._lost()

    def _lost(self) -> None:
        """The socket is done (closed by us, or failed): release it and everything this worker holds for it."""
        sock, self.sock = self.sock, None
        if sock is None:
            return
        loop = asyncio.get_running_loop()
        if self.reading:
            self.reading = False
            loop.remove_reader(self.fd)
        if self.wbuf is not None:
            self.wbuf = None
            loop.remove_writer(self.fd)
        sock.close()
        self.closing = True
        self.json_mode = False
        self.out.clear()
        worker = self.worker
        worker.conns.pop(self.conn_id, None)
        worker.dirty.discard(self)
        for room in self.state.rooms:
            worker.leave(room, self.conn_id)
        for handle in (self._resume_handle, self._closer):
            if handle is not None:
                handle.cancel()
        if not self.reported:
            self.reported = True
            clean, reason = self.why or (False, "connection lost")
            worker.to_hub(control.closed(self.conn_id, clean, reason))

    # --- timers --------------------------------------------------------------------------------------------

    def sweep(self, now: float) -> None:
        cfg = self.worker.cfg
        st = self.state
        if self.farewell is not None:
            return  # it quit: closed when the hub says so, or by the timer set then
        if not st.registered:
            limit = cfg.handshake_timeout
            if now - self.created > limit:
                self._report_closed(False, "handshake timeout")
                why = "no hello in time"
                if st.mode is Mode.PLAIN:
                    why = f"no /nick {'accepted ' if st.hello_sent or st.nicks_refused else ''}within {limit:g} s"
                self.close(st.error_bytes(m.Err.HANDSHAKE_TIMEOUT, why, fatal=True))
            return
        if st.mode is not Mode.JSON:
            return  # nc users may read for hours; TCP keepalive finds their dead peers
        if st.pending or self.worker.hub_full:
            return  # lines of theirs (their pong too) wait for the rate limit or the hub: we are slow, not they
        if self.pinged and st.last_seen != self.ping_seen:  # a line since the ping: a new silence may be pinged
            self.pinged = False  # (bytes of a line not ended are no answer: a client dribbling a byte at a time
            # was pinged at every sweep, twice a second from --ping-interval to --idle-timeout)
        silent = now - max(st.last_seen, self.worker.caught_up_at)  # a wait for the hub is not their silence
        idle = cfg.idle_timeout
        if silent > idle:
            self._report_closed(False, "idle timeout")
            self.close(st.error_bytes(m.Err.IDLE_TIMEOUT, "no data from you in time", fatal=True))
        elif silent > min(cfg.ping_interval, idle / 2) and not self.pinged:  # asked before it is late
            self.pinged = True
            self.ping_seen = st.last_seen
            self.push(b'{"type":"ping"}\n')


def workers_per_core(workers: int, cores: int) -> float:
    """How many workers take turns on each core left to them (one core is the main process's): from 1
    to FANOUT_SHARE_MAX.

    A busy room spread over W workers gives each a round of about t / W. If the W share one core, the
    room's fan-out still takes t of that core's time, and a pause of t / W after each round would make
    the W of them send W times as often as one worker holding the whole room: scaled by this factor,
    the pause is that one worker's again. Workers on cores of their own really do run in parallel, so
    there the factor is 1 and nobody waits longer than their own round. The cap bounds what a worker
    holding most of a busy room alone gives up: its fan-out takes at least 1 / (1 + factor) of its time."""
    return min(float(const.FANOUT_SHARE_MAX), max(1.0, workers / max(1, cores - 1)))


def _cores() -> int:
    return usable_cores()  # a seam for tests


class Worker:
    def __init__(self, worker_id: int, ctrl: socket.socket, fds: socket.socket, cfg: WorkerConfig) -> None:
        self.worker_id = worker_id
        self.ctrl_sock = ctrl
        self.fd_sock = fds
        self.cfg = cfg
        self.name = cfg.name
        self.sendq = cfg.sendq
        self.pause_factor = const.FANOUT_PAUSE * workers_per_core(cfg.workers, _cores())
        self.conns: dict[int, ClientConn] = {}
        self.rooms: dict[str, dict[int, ClientConn]] = {}
        self.dirty: set[ClientConn] = set()
        self.storms = Throttled(log)  # warnings that would come once per connection in a storm of connects
        self._hub_out: list[bytes] = []  # frames for the hub, in order
        self._hub_records: list[control.Record] = []  # JSON records not framed yet (consecutive ones share a frame)
        self._flush_scheduled = False
        self._fanout_scheduled = False
        self._fanout_at = 0.0  # loop time before which no fan-out round starts (see _fanout)
        self._ctrl_paused = False  # the hub's pipe is left unread until the pause ends (see _fanout)
        self._out_mark = 0
        self._decoder = control.ControlDecoder()
        self.ctrl: asyncio.Transport | None = None
        self.done = asyncio.Event()
        self.msgs_in = self.msgs_out = self.bytes_in = self.bytes_out = 0
        self.shutting_down = False
        self.hub_full = False  # more than HUB_WRITE_HIGH_WATER queued for the hub: clients are not read
        self.caught_up_at = 0.0  # when the hub last caught up (monotonic): silence is counted from then on
        self.held: list[ClientConn] = []  # connections left unread until the hub catches up

    # --- control pipe --------------------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        worker = self

        class Ctrl(asyncio.Protocol):
            def data_received(self, data: bytes) -> None:
                worker.from_hub(data)

            def connection_lost(self, exc: Exception | None) -> None:
                worker.hub_gone()

            def pause_writing(self) -> None:
                worker.hub_full = True

            def resume_writing(self) -> None:
                worker.hub_caught_up()

        self.ctrl, _ = await loop.create_unix_connection(Ctrl, sock=self.ctrl_sock)
        self.ctrl.set_write_buffer_limits(high=const.HUB_WRITE_HIGH_WATER, low=const.HUB_WRITE_HIGH_WATER // 4)
        self.fd_sock.setblocking(False)
        loop.add_reader(self.fd_sock.fileno(), self._receive_fds)
        loop.call_later(HOUSEKEEPING_INTERVAL, self._housekeeping)
        self.to_hub(control.ready(os.getpid()))

    def hub_caught_up(self) -> None:
        """The hub took most of what was queued for it: read the clients left waiting again (a throttled
        one resumes when its own pause ends)."""
        self.hub_full = False
        self.caught_up_at = time.monotonic()
        held, self.held = self.held, []
        for conn in held:
            conn.hub_caught_up()

    def hub_gone(self) -> None:
        if not self.shutting_down:
            log.warning("worker %d: main process went away; exiting", self.worker_id)
        for conn in list(self.conns.values()):
            conn.close()
        self.done.set()

    def to_hub(self, record: control.Record) -> None:
        self._hub_records.append(record)
        self._schedule()

    def post(self, frame: bytes) -> None:
        """A chat message for the hub (a control.POST frame), behind everything queued before it."""
        self._frame_records()
        self._hub_out.append(frame)
        self._schedule()

    def _frame_records(self) -> None:
        if self._hub_records:
            self._hub_out += control.json_frames(self._hub_records)
            self._hub_records = []

    def mark_dirty(self, conn: ClientConn) -> None:
        self.dirty.add(conn)
        self._schedule_fanout()

    def _schedule(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_hub)

    def _schedule_fanout(self) -> None:
        if not self._fanout_scheduled:
            self._fanout_scheduled = True
            loop = asyncio.get_running_loop()
            delay = self._fanout_at - loop.time()
            if delay >= const.FANOUT_PAUSE_MIN:  # shorter waits would round up to the timer's 1 ms
                loop.call_later(delay, self._fanout)
            else:
                loop.call_soon(self._fanout)

    def _flush(self) -> None:
        self._flush_hub()
        self._fanout()

    def _flush_hub(self) -> None:
        """Once per loop tick: everything for the hub in one write (it sequences while we fan out)."""
        self._flush_scheduled = False
        self._frame_records()
        if self._hub_out and self.ctrl is not None and not self.ctrl.is_closing():
            frames, self._hub_out = self._hub_out, []
            self.ctrl.write(frames[0] if len(frames) == 1 else b"".join(frames))

    def _fanout(self) -> None:
        """One write per dirty client. A round that took t seconds and carried at least FANOUT_THICK
        lines per client (the room is busy: lines pile up between rounds) starts the next no sooner
        than t * pause_factor later (if that is at least FANOUT_PAUSE_MIN): lines arriving meanwhile
        share the next round's send() calls, so a busy large room costs fewer system calls per delivery
        on both ends, and a busy room's fan-out takes at most 1 / (1 + pause_factor) of the worker's time
        (the rest is reading, parsing and the hub's frames). pause_factor is FANOUT_PAUSE times the
        workers that take turns on each core (see workers_per_core). A short round, or one with a line
        or so per client (the room keeps up), is never followed by a wait (docs/benchmarks.md, "Levers").

        During a pause the hub's pipe is not read: its batches wait in the kernel and are read in one go
        when the pause ends, instead of waking this process once per hub tick only to queue lines for a
        round that cannot start yet (consecutive batches for one room then share one pass over it)."""
        if self._ctrl_paused:  # before the flag below: what the hub sent is in this round, not another
            self._resume_ctrl()
        self._fanout_scheduled = False
        if not self.dirty:
            return
        loop = asyncio.get_running_loop()
        start = loop.time()
        dirty, self.dirty = self.dirty, set()
        for conn in dirty:
            conn.flush()
        end = loop.time()
        lines, self._out_mark = self.msgs_out - self._out_mark, self.msgs_out
        thick = lines >= const.FANOUT_THICK * len(dirty)  # else the room keeps up: pausing would only delay
        self._fanout_at = end + (end - start) * self.pause_factor if thick else end
        if self._fanout_at - end >= const.FANOUT_PAUSE_MIN and self.ctrl is not None and not self.ctrl.is_closing():
            self._ctrl_paused = True
            self.ctrl.pause_reading()
            loop.call_at(self._fanout_at, self._resume_ctrl)

    def _resume_ctrl(self) -> None:
        """The pause is over: take what the hub sent meanwhile (one parse for all of it), read as usual again."""
        if not self._ctrl_paused:
            return
        self._ctrl_paused = False
        chunks = []
        for _ in range(CTRL_DRAIN_READS):
            try:
                data = self.ctrl_sock.recv(RECV_SIZE)
            except OSError:  # nothing more now, or the pipe failed: the transport sees that when it reads again
                break
            if not data:  # EOF: likewise
                break
            chunks.append(data)
        if chunks:
            self.from_hub(chunks[0] if len(chunks) == 1 else b"".join(chunks))
        if self.ctrl is not None and not self.ctrl.is_closing():
            self.ctrl.resume_reading()

    def from_hub(self, data: bytes) -> None:
        try:
            frames = self._decoder.feed(data)
        except RemoteProtocolError as exc:
            log.error("worker %d: broken control stream (%s); exiting", self.worker_id, exc)
            self.done.set()
            return
        conns = self.conns
        last = len(frames) - 1
        merged: list[bytes] = []  # payloads of consecutive batches for one room: one pass over its members
        for i, frame in enumerate(frames):
            if isinstance(frame, control.RoomFrame):
                nxt = frames[i + 1] if i < last else None
                if isinstance(nxt, control.RoomFrame) and nxt.room == frame.room:
                    merged.append(frame.payload)
                    continue
                members = self.rooms.get(frame.room)
                if merged:
                    merged.append(frame.payload)
                    payload = b"".join(merged)
                    merged.clear()
                else:
                    payload = frame.payload
                if members:
                    dirty = self.dirty
                    for conn in members.values():  # the hot loop: one append per member per batch
                        if conn.json_mode:
                            conn.out.append(payload)
                            dirty.add(conn)
                        else:
                            conn.push(payload)
                    self._schedule_fanout()
                    self.msgs_out += len(members) * payload.count(b"\n")
            elif isinstance(frame, control.ConnsFrame):
                n = frame.payload.count(b"\n")  # lines, as for a room (a tick's acks, a replay: many in one)
                for cid in frame.conns:
                    c = conns.get(cid)
                    if c is not None:
                        c.push(frame.payload)
                        self.msgs_out += n
            elif isinstance(frame, control.JsonFrame):
                for record in frame.records:
                    self._control(record)
            else:  # a POST goes to the hub, never from it
                log.error("worker %d: unexpected %s from the hub; ignored", self.worker_id, type(frame).__name__)

    def _control(self, record: control.Record) -> None:
        match record:
            case ["member", int() as cid, str() as room, bool() as joined]:
                conn = self.conns.get(cid)
                if conn is None:
                    return
                if joined:
                    self.rooms.setdefault(room, {})[cid] = conn
                    conn.state.joined(room)
                else:
                    self.leave(room, cid)
                    conn.state.parted(room)
            case ["answer", int() as cid, str() as room, bool() | None as joined]:  # a plain /nick, /join, /part
                if (conn := self.conns.get(cid)) is not None:
                    conn.state.answered(room, joined)
                    conn.renew_handshake()
            case ["bind", int() as cid, str() as nick]:
                if (conn := self.conns.get(cid)) is not None:
                    conn.state.bound(nick)
            case ["ping", int() as seq]:
                self.to_hub(control.pong(seq, self.figures()))
            case ["close", int() as cid, str() as reason]:
                if (conn := self.conns.get(cid)) is not None:
                    conn.close_for_hub(reason)
            case ["shutdown", str() as reason]:
                self.shutdown(reason)
            case _:  # the hub's bug: say so, and go on with the rest
                log.error("worker %d: bad control record %.200r", self.worker_id, record)

    def leave(self, room: str, cid: int) -> None:
        """``cid`` is no longer in ``room`` here; an emptied room is forgotten (names come and go)."""
        members = self.rooms.get(room)
        if members is not None:
            members.pop(cid, None)
            if not members:
                del self.rooms[room]

    def figures(self) -> dict[str, int]:
        return {
            "connections": len(self.conns),
            "msgs_in": self.msgs_in,
            "msgs_out": self.msgs_out,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
        }

    # --- new connections -----------------------------------------------------------------------------------

    def _receive_fds(self) -> None:
        while True:
            try:
                data, fds, _flags, _addr = socket.recv_fds(self.fd_sock, 4096, 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.error("worker %d: fd channel failed: %s", self.worker_id, exc)
                self.done.set()
                return
            if not data and not fds:  # EOF: the main process is gone (its pipe's EOF ends us); stop watching,
                asyncio.get_running_loop().remove_reader(self.fd_sock.fileno())  # or the loop spins on it
                return
            try:
                info = json.loads(data)
                conn_id, peer = int(info["conn"]), str(info["peer"])
            except (ValueError, KeyError, TypeError):
                log.error("worker %d: bad fd message %r", self.worker_id, data[:100])
                for fd in fds:
                    os.close(fd)
                continue
            if not fds:  # MSG_CTRUNC: no descriptor was free here, so the kernel dropped it
                msg = "worker %d: no free file descriptor for connection %d; refused"
                self.storms.warning("no fd", msg, self.worker_id, conn_id)
                self.to_hub(control.refused(conn_id, "out of file descriptors"))
                continue
            for fd in fds:
                sock = socket.socket(fileno=fd)
                if self.shutting_down:  # the main process still holds it, and tells the client why
                    sock.close()
                    self.to_hub(control.refused(conn_id, "worker shutting down"))
                    continue
                conn = ClientConn(self, conn_id, sys.intern(peer), sock)
                try:
                    conn.start()
                except OSError as exc:  # the descriptor went bad on the way
                    log.info("conn %d (%s): gone before adoption: %s", conn_id, peer, exc)
                    conn.abort()  # releases all it holds (conns included) and reports it closed

    # --- timers and shutdown -------------------------------------------------------------------------------

    def _housekeeping(self) -> None:
        now = time.monotonic()
        for conn in list(self.conns.values()):
            conn.sweep(now)
        self.storms.flush(now)
        if not self.done.is_set():
            asyncio.get_running_loop().call_later(HOUSEKEEPING_INTERVAL, self._housekeeping)

    def shutdown(self, reason: str) -> None:
        """Tell every client why, flush, close; exit when the sockets are gone. Once: a SIGTERM to the whole
        group (systemd's KillMode=control-group) comes with the main process's own shutdown record."""
        if self.shutting_down:
            return
        self.shutting_down = True
        bye = m.encode({"type": "bye", "reason": reason, "reconnect": True})
        for conn in list(self.conns.values()):
            conn.reported = True
            conn.close(bye)
            conn._resume_reading()  # what they send is dropped from now on (_discard), as the exit nears
        self._flush()
        loop = asyncio.get_running_loop()
        loop.call_later(0.05, self._finish_shutdown, loop.time() + const.SHUTDOWN_LINGER)

    def _finish_shutdown(self, deadline: float) -> None:
        """Exit once every client has closed, or has every byte we sent (a peer that keeps its side open
        would otherwise hold the stop for CLOSE_TIMEOUT), or at ``deadline``: the process's exit closes
        what is left, before the supervisor's SHUTDOWN_GRACE runs out."""
        for conn in list(self.conns.values()):
            if conn.closing and conn.delivered():  # (asked here more often than its own lingering asks)
                conn.release()
        loop = asyncio.get_running_loop()
        if self.conns and loop.time() < deadline:
            loop.call_later(0.05, self._finish_shutdown, deadline)
            return
        for conn in list(self.conns.values()):  # what is left goes with the exit; the kernel still sends it
            conn.release()
        self.done.set()


async def _amain(args: argparse.Namespace) -> int:
    cfg = WorkerConfig.from_json(args.config)
    ctrl = socket.socket(fileno=args.ctrl_fd)
    fds = socket.socket(fileno=args.fd_fd)
    worker = Worker(args.worker_id, ctrl, fds, cfg)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGHUP):  # the supervisor decides: Ctrl-C and a hang-up hit the group
        loop.add_signal_handler(sig, lambda: None)
    loop.add_signal_handler(signal.SIGTERM, lambda: worker.shutdown("server shutting down"))
    await worker.start()
    heap.settle()
    await worker.done.wait()
    if worker.ctrl is not None:
        worker._flush()
        worker.ctrl.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lanchat-worker")
    parser.add_argument("--worker-id", type=int, required=True)
    parser.add_argument("--ctrl-fd", type=int, required=True)
    parser.add_argument("--fd-fd", type=int, required=True)
    parser.add_argument("--config", required=True)
    args = parser.parse_args(argv)
    cfg = WorkerConfig.from_json(args.config)
    logging.basicConfig(
        level=cfg.log_level.upper(),
        format=f"%(asctime)s %(levelname)s worker[{args.worker_id}] %(message)s",
        stream=sys.stderr,
    )
    if os.environ.get("LANCHAT_FAULT") == "worker-boot":  # fault injection for tests/docs: see operations.md
        log.error("worker %d: cannot boot (LANCHAT_FAULT=worker-boot)", args.worker_id)
        return EXIT_BOOT_FAILED
    try:
        return asyncio.run(_amain(args))
    except Exception:
        log.exception("worker %d: crashed", args.worker_id)
        return 1


if __name__ == "__main__":
    sys.exit(main())
