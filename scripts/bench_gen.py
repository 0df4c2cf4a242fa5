"""The load generator of the benchmark: one process's share of the clients, driven by scripts/bench.py.

Owned by the benchmark (scripts/bench.py, docs/benchmarks.md); it is not part of lanchat. Each generator
process runs one raw ``epoll`` loop over non-blocking sockets (no asyncio: it has to stay cheap on a
2-core machine that also runs the server) and obeys commands from the orchestrator on a pipe. The same
code speaks to every target; only three small adapters differ (``lanchat`` JSON Lines, ``redis`` RESP
pub/sub, ``threaded`` bare lines).

Measuring without getting in the way:

- **Counting** is ``bytearray.count(END)`` on each ``recv_into``: every message text ends with the tag
  ``END``, which nothing else a target sends contains (``Conn.ctail`` catches a tag split between two
  reads; the threaded baseline's lines are counted by their newline, see UNIT). Counting newlines read
  every byte (``count`` of one byte goes byte by byte, ~2 GB/s here): at 3 M deliveries/s of ~190-byte
  lanchat lines, 0.25 of the 2 cores the server also runs on; the search for the tag runs 1.5-2.5 times
  faster.
- **Latency** is sampled: senders stamp *every* message with its intended send time (open loop, so a
  stalled server cannot hide its latency); every ``sample_every``-th message (by sender sequence, so
  independent of arrival timing) carries ``@`` instead of ``#``; only the *probe* receivers (a fixed,
  evenly spread subset) look for ``@`` stamps (``find``, i.e. memchr), read eagerly and compare them
  with the clock.
- **Bulk receivers** (everyone else) are read from a second epoll that is polled every ``bulk_interval``
  seconds, so each ``recv`` takes many messages at once. They only count.

All loops are bounded by the orchestrator's commands and deadlines; the process exits on ``quit`` or
when the orchestrator's pipe closes, closing every socket with ``SO_LINGER 0`` (no TIME_WAIT left).
"""

from __future__ import annotations

import errno
import math
import os
import resource
import select
import socket
import struct
import time
from array import array
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

TEXT_LEN = 100  # bytes of message text (the payload), the same for every target
RECV_SIZE = 256 * 1024  # bytes per recv_into
STAMP_DIGITS = 16  # a sampled message's text starts "@" + its intended send time (µs of CLOCK_MONOTONIC) + " "
LINGER0 = struct.pack("ii", 1, 0)

# connection states
CONNECTING, HANDSHAKE, READY, CLOSED, FAILED = range(5)

# Ends every message text (so one per delivery, whatever the target's framing). Its bytes are chosen
# for the substring search of bytes.count: '~' and capitals share no 6-bit class of its skip filter
# with digits, 'x', JSON or RESP punctuation or CR/LF (no J, M), so it skips ~len(END) bytes at a time:
# 1.5 to 2.5 times faster than counting b"\n" (~2 GB/s) on this machine.
END = b"~BENCH~END~OF~TEXT~"
# What is counted as one delivery. The threaded baseline's relay threads write to a receiver's socket
# at the same time (each `sendall` of whatever its `recv` returned), so bytes of two senders can mix
# inside a line; such a message still ends in one newline, as counted before, but its END may be cut.
UNIT = {"lanchat": END, "redis": END, "threaded": b"\n"}

# Source addresses the connections are spread over (all loopback: Linux routes 127.0.0.0/8 to lo). From
# one address, every connect() to the same server searches the ephemeral ports for a free 4-tuple past
# all the connections already open (__inet_hash_connect): O(N) per connect, O(N^2) for N clients; at
# 20,000 that was 60 % of the machine's CPU while the idle scenario connected, a cost of the generator
# on one host that real clients (many hosts) never pay. With 64 addresses each search stays short.
SOURCE_ADDRESSES = tuple(f"127.0.1.{i}" for i in range(1, 65))
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)  # the port is chosen at connect()

# Broadcast timing by kernel receive timestamps (the default; bench.py --eager-broadcast reads instead):
# every receiver socket stamps arriving data (SO_TIMESTAMPNS, CLOCK_REALTIME), and the bulk receivers are
# left unread until all of them have data (checked every STAMPED_CHECK s, at most STAMPED_WAIT s). The
# generator then takes no CPU from the server while it fans out, as clients on other hosts would not;
# reading 20,000 sockets on the same 2 cores as it went took as long as the fan-out itself.
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
TIMESPEC = struct.Struct("@ll")
STAMPED_CHECK = 0.02
STAMPED_WAIT = 5.0


@dataclass(frozen=True, slots=True)
class ConnSpec:
    """One connection the orchestrator asks for."""

    nick: str  # unique per run; lanchat uses it as the nick
    room: str
    counted: bool  # a receiver whose deliveries count (and are checked for loss)
    sends: bool  # posts messages during steps
    probe: bool  # samples latency
    poster: bool  # posts the sync / broadcast markers for its room
    subscribe: bool = True  # redis only: False for a publisher connection
    phase: float = 0.0  # 0..1: where this sender's messages fall between two of its ticks (senders interleave)


class Conn:
    __slots__ = (
        "counted", "ctail", "fd", "nick", "out", "poster", "probe", "rid", "room", "seen", "sends", "sock", "spec",
        "state", "tail",
    )  # fmt: skip

    def __init__(self, spec: ConnSpec, sock: socket.socket) -> None:
        self.spec = spec
        self.sock = sock
        self.fd = sock.fileno()
        self.nick = spec.nick.encode()
        self.room = spec.room.encode()
        self.counted = spec.counted
        self.sends = spec.sends
        self.probe = spec.probe
        self.poster = spec.poster
        self.state = CONNECTING
        self.out = bytearray()
        self.seen = False  # saw the current sync / broadcast marker
        self.tail = b""  # the last bytes received while waiting for a marker (it may straddle two reads)
        self.ctail = b""  # the last bytes received: a counted unit (END) may straddle two reads
        self.rid = 0  # the id of its last post (lanchat with --ids)


def count_ends(tail: bytes, buf: bytearray, n: int, unit: bytes = END) -> tuple[int, bytes]:
    """The ``unit``s (END, or a sync marker) in ``buf[:n]``, plus one begun in ``tail`` (the end of the previous read)
    and finished here; and the tail to keep for the next read."""
    keep = len(unit) - 1
    k = buf.count(unit, 0, n)
    if not keep:
        return k, b""
    if tail:  # neither part alone can hold a whole unit: whatever is found straddles the two reads
        k += (tail + buf[: min(n, keep)]).count(unit)
    return k, bytes(buf[n - keep : n]) if n >= keep else (tail + buf[:n])[-keep:]


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


class Generator:
    def __init__(self, pipe: Connection, kind: str, port: int, specs: list[ConnSpec], opts: dict[str, Any]) -> None:
        self.pipe = pipe
        self.kind = kind
        self.addr = ("127.0.0.1", port)
        self.specs = specs
        self.window = int(opts.get("connect_window", 100))
        self.bulk_interval = float(opts.get("bulk_interval", 0.01))
        self.tick = float(opts.get("tick", 0.001))
        self.fast = select.epoll()
        self.slow = select.epoll()
        self.fast.register(pipe.fileno(), select.EPOLLIN)
        self.conns: dict[int, Conn] = {}
        self.pending = list(reversed(specs))  # popped from the end: connect in spec order
        self.spread = bool(opts.get("spread_sources", True))
        self.ids = bool(opts.get("ids", False))  # lanchat: posts carry ids, as the terminal client's do
        self.acks = 0  # acks the senders received (--ids; one cut by a read is missed: a check, not a count)
        self.connects = 0
        self.inflight = 0
        self.ready = self.failed = self.closed = 0
        self.errors: list[str] = []
        self.t_first = self.t_ready = 0.0
        self.buf = bytearray(RECV_SIZE)
        self.msgs = 0  # messages received by counted receivers since the last reset
        self.unit = UNIT.get(kind, END)
        self.pings = 0
        # lanchat pings a silent client after its --ping-interval: scanning every read for pings before
        # then would cost the generator (and so the server) CPU that no other target is charged. Half the
        # interval is the margin (the server counts from a client's last input, never before its
        # connection started, which is after this process started).
        self.ping_from = time.monotonic() + float(opts.get("pings_after", 0)) / 2
        self.watch_pings = kind == "lanchat" and self.ping_from <= time.monotonic()
        self.samples = array("q")
        self.last_recv = 0.0
        self.marker = b""  # the sync / broadcast marker being waited for
        self.marker_seen = 0
        self.marker_last = 0.0
        self.stamped = False  # the marker's arrival time is the kernel's receive timestamp (see above)
        self.stamped_until = 0.0  # bulk receivers stay unread until all have data, or until this time
        self.stamping: set[int] = set()  # sockets with SO_TIMESTAMPNS on
        self.eager = False  # slow epoll watched by the fast one (broadcast timing)
        # sending
        self.senders: list[Conn] = []
        self.sending = False
        self.t0 = 0.0
        self.rate = 0.0
        self.sample_every = 1
        self.next_k: dict[int, int] = {}
        self.duration = 0.0
        self.sent = 0
        self.cpu0 = _cpu()
        self.running = True

    # --- encoding -------------------------------------------------------------------------------------------

    def _frame(self, c: Conn, text: bytes) -> bytes:
        if self.kind == "lanchat":
            if self.ids:  # the server then stores the session's highest id with the post, and acks it
                c.rid += 1
                return b'{"type":"msg","room":"%s","text":"%s","id":%d}\n' % (c.room, text, c.rid)
            return b'{"type":"msg","room":"%s","text":"%s"}\n' % (c.room, text)
        if self.kind == "redis":
            return b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(c.room), c.room, len(text), text)
        return text + b"\n"

    def _handshake(self, c: Conn) -> bytes:
        if self.kind == "lanchat":
            return b'{"type":"hello","nick":"%s","room":"%s"}\n' % (c.nick, c.room)
        if self.kind == "redis" and c.spec.subscribe:
            return b"*2\r\n$9\r\nSUBSCRIBE\r\n$%d\r\n%s\r\n" % (len(c.room), c.room)
        return b""

    # --- connections ----------------------------------------------------------------------------------------

    def _start_connects(self) -> None:
        while self.pending and self.inflight < self.window:
            spec = self.pending.pop()
            sock = self._socket()
            c = Conn(spec, sock)
            if not self.t_first:
                self.t_first = time.monotonic()
            rc = sock.connect_ex(self.addr)
            if rc not in (0, errno.EINPROGRESS):
                self._fail(c, f"connect: {os.strerror(rc)}")
                continue
            self.conns[c.fd] = c
            self.inflight += 1
            self.fast.register(c.fd, select.EPOLLOUT)

    def _socket(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.spread:
            try:
                sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                sock.bind((SOURCE_ADDRESSES[self.connects % len(SOURCE_ADDRESSES)], 0))
                self.connects += 1
            except OSError as exc:  # e.g. a namespace whose lo lacks 127.0.1.x: connect as before
                self.spread = False
                self.errors.append(f"source addresses not usable ({exc}); connecting from 127.0.0.1")
                sock.close()
                return self._socket()
        return sock

    def _connected(self, c: Conn) -> None:
        err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self.inflight -= 1
            self._fail(c, f"connect: {os.strerror(err)}")
            return
        c.state = HANDSHAKE
        self.fast.modify(c.fd, select.EPOLLIN)
        hs = self._handshake(c)
        if hs:
            c.sock.send(hs)
        elif self.kind == "redis":  # a publisher connection is ready at once
            self._now_ready(c)

    def _now_ready(self, c: Conn) -> None:
        c.state = READY
        self.inflight -= 1
        self.ready += 1
        if self.ready + self.failed == len(self.specs):
            self.t_ready = time.monotonic()
        if not c.probe:  # bulk receivers and senders' echoes: read lazily from the slow epoll
            self.fast.unregister(c.fd)
            self.slow.register(c.fd, select.EPOLLIN)
        if c.sends:
            self.senders.append(c)
        self._start_connects()

    def _fail(self, c: Conn, why: str) -> None:
        self.failed += 1
        if len(self.errors) < 5:
            self.errors.append(f"{c.spec.nick}: {why}")
        c.state = FAILED
        self._drop(c)
        if self.ready + self.failed == len(self.specs):
            self.t_ready = time.monotonic()
        self._start_connects()

    def _drop(self, c: Conn) -> None:
        self.conns.pop(c.fd, None)
        self.stamping.discard(c.fd)
        for ep in (self.fast, self.slow):
            try:
                ep.unregister(c.fd)
            except (OSError, ValueError, KeyError):
                pass
        try:
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
        except OSError:
            pass
        c.sock.close()

    # --- receiving ------------------------------------------------------------------------------------------

    def _read(self, c: Conn) -> None:
        buf = self.buf
        stamp = 0.0
        try:
            if c.fd in self.stamping:  # the kernel's receive time of the data read (its last segment)
                n, anc, _flags, _addr = c.sock.recvmsg_into([buf], socket.CMSG_SPACE(TIMESPEC.size))
                for level, kind, data in anc:
                    if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= TIMESPEC.size:
                        sec, nsec = TIMESPEC.unpack_from(data)
                        stamp = sec + nsec / 1e9
            else:
                n = c.sock.recv_into(buf)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            n = 0
            if c.state != READY:
                self.inflight -= 1
                self._fail(c, str(exc))
                return
        if n == 0:
            if c.state == READY:
                self.closed += 1
                if len(self.errors) < 5:
                    self.errors.append(f"{c.spec.nick}: closed by the server")
                c.state = CLOSED
                self._drop(c)
            else:
                self.inflight -= 1
                self._fail(c, "closed during the handshake")
            return
        if c.state == READY:
            if c.counted:
                k, c.ctail = count_ends(c.ctail, buf, n, self.unit)
                self.msgs += k
                self.last_recv = time.monotonic()
                if c.probe:  # memchr for each '@' (a regular expression over the buffer went byte by byte)
                    i = buf.find(b"@", 0, n)
                    if i >= 0:
                        now_us = time.monotonic_ns() // 1000
                        samples = self.samples
                        while i >= 0:
                            j = i + STAMP_DIGITS + 1
                            if j < n and buf[j] == 32 and buf[i + 1 : j].isdigit():  # else cut by the read
                                samples.append(now_us - int(buf[i + 1 : j]))
                            i = buf.find(b"@", i + 1, n)
            if self.ids and c.sends:
                self.acks += buf.count(b'{"type":"ack"', 0, n)
            if self.watch_pings and buf.find(b'{"type":"ping"}', 0, n) >= 0:
                k = buf.count(b'{"type":"ping"}', 0, n)
                self.pings += k
                c.out += b'{"type":"pong"}\n' * k
                self._flush(c)
            if self.marker and not c.seen and c.counted:
                self._look_for_marker(c, n, stamp)
            return
        # handshake
        data = bytes(buf[:n])
        if self.kind == "lanchat":
            if b'"type":"welcome"' in data:
                self._now_ready(c)
            elif b'"type":"error"' in data:
                self.inflight -= 1
                self._fail(c, data.decode(errors="replace").strip()[:200])
        elif self.kind == "redis":
            if b"subscribe" in data:
                self._now_ready(c)
            elif data.startswith(b"-"):
                self.inflight -= 1
                self._fail(c, data.decode(errors="replace").strip()[:200])
        elif b"Welcome" in data:
            self._now_ready(c)

    def _look_for_marker(self, c: Conn, n: int, stamp: float = 0.0) -> None:
        found, c.tail = count_ends(c.tail, self.buf, n, self.marker)
        if found:
            c.seen = True
            c.tail = b""
            self.marker_seen += 1
            if self.stamped:  # CLOCK_REALTIME, as "post" answers in this mode; 0: no stamp came
                self.marker_last = max(self.marker_last, stamp or time.time())
            else:
                self.marker_last = time.monotonic()

    def _flush(self, c: Conn) -> None:
        if not c.out or c.state != READY:
            return
        try:
            n = c.sock.send(c.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return  # the read side will see the close
        del c.out[:n]

    # --- sending --------------------------------------------------------------------------------------------

    def _send_due(self, now: float) -> None:
        """Open loop: sender message j is due at t0 + (j + phase) / rate, stamped with that time, and sent
        at the first tick after it, however late; nothing waits for the server's answer."""
        t0, rate, every, dur = self.t0, self.rate, self.sample_every, self.duration
        active = False
        for i, c in enumerate(self.senders):
            if c.state != READY:
                continue
            phase = c.spec.phase
            end_k = max(0, math.ceil(dur * rate - phase))  # messages whose time falls inside the step
            due = min(end_k, math.floor((now - t0) * rate - phase) + 1) if now >= t0 else 0
            k = self.next_k.get(c.fd, 0)
            if k < due:
                parts = []
                tag = c.nick
                for j in range(k, due):
                    stamp = int((t0 + (j + phase) / rate) * 1e6)
                    mark = 64 if (j + i) % every == 0 else 35  # '@' sampled, '#' not
                    head = b"%c%0*d %s:%09d " % (mark, STAMP_DIGITS, stamp, tag, j)
                    parts.append(self._frame(c, head + b"x" * (TEXT_LEN - len(head) - len(END)) + END))
                c.out += b"".join(parts)
                self.sent += due - k
                self.next_k[c.fd] = k = due
            if c.out:
                self._flush(c)
            if k < end_k or c.out:
                active = True
        if not active:
            self.sending = False

    def _post_marker(self, marker: bytes) -> None:
        for c in list(self.conns.values()):
            if c.poster and c.state == READY:
                text = marker + b" " + b"x" * (TEXT_LEN - len(marker) - 1)
                c.out += self._frame(c, text)
                self._flush(c)

    # --- commands -------------------------------------------------------------------------------------------

    def _status(self) -> dict[str, Any]:
        return {
            "ready": self.ready,
            "failed": self.failed,
            "closed": self.closed,
            "total": len(self.specs),
            "errors": self.errors,
            "t_first": self.t_first,
            "t_ready": self.t_ready,
            "msgs": self.msgs,
            "last_recv": self.last_recv,
            "sent": self.sent,
            "sending": self.sending,
            "marker_seen": self.marker_seen,
            "marker_last": self.marker_last,
            "pings": self.pings,
            "acks": self.acks,
        }

    def _command(self, cmd: str, args: dict[str, Any]) -> Any:
        if cmd == "connect":
            self._start_connects()
            return True
        if cmd == "status":
            return self._status()
        if cmd == "marker":  # watch for a sync or broadcast marker
            self.marker = args["marker"].encode()
            self.marker_seen = 0
            self.marker_last = 0.0
            for c in self.conns.values():
                c.seen = False
                c.tail = b""
            self._set_eager(bool(args.get("eager", False)))
            self.stamped = bool(args.get("stamped", False))
            if self.stamped:
                self.stamped_until = time.monotonic() + STAMPED_WAIT
                for c in self.conns.values():
                    if c.state == READY and c.counted and c.fd not in self.stamping:
                        c.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
                        self.stamping.add(c.fd)
            return True
        if cmd == "post":  # only once every process watches for the marker (else it may pass unseen)
            # The clock is read before the send: read after it, a generator descheduled in between (a busy
            # machine) could read it after the last member's kernel stamp, and the broadcast took < 0 ms.
            posted = time.time() if self.stamped else time.monotonic()
            self._post_marker(self.marker)
            return posted
        if cmd == "reset":
            self.marker = b""
            self.stamped = False
            self._set_eager(False)
            self.msgs = 0
            self.pings = 0
            self.acks = 0
            self.sent = 0
            self.samples = array("q")
            self.last_recv = 0.0
            self.cpu0 = _cpu()
            return True
        if cmd == "step":
            self.t0 = float(args["t0"])
            self.rate = float(args["rate"])
            self.duration = float(args["duration"])
            self.sample_every = max(1, int(args["sample_every"]))
            self.next_k = {}
            self.sending = bool(self.senders)
            return len(self.senders)
        if cmd == "collect":
            return {**self._status(), "samples": self.samples.tobytes(), "cpu": _cpu() - self.cpu0}
        if cmd == "quit":
            self.running = False
            return True
        raise ValueError(f"unknown command {cmd!r}")

    def _all_arrived(self, now: float) -> bool:
        """Stamped broadcast: may the bulk receivers be read now? Yes once each counted one has data
        (epoll says so without a read), or the wait is over. Afterwards they are read as usual."""
        if now >= self.stamped_until:
            return True
        conns = self.conns
        waiting = sum(1 for c in conns.values() if c.counted and not c.seen and not c.probe and c.state == READY)
        ready = self.slow.poll(0, max(1, len(conns)))
        if sum(1 for fd, _ in ready if (c := conns.get(fd)) is not None and c.counted and not c.seen) >= waiting:
            self.stamped_until = now  # everyone has it: read from now on
            return True
        return False

    def _set_eager(self, eager: bool) -> None:
        if eager and not self.eager:
            self.fast.register(self.slow.fileno(), select.EPOLLIN)
        elif not eager and self.eager:
            self.fast.unregister(self.slow.fileno())
        self.eager = eager

    def _commands(self) -> None:
        while self.pipe.poll():
            try:
                cmd, args = self.pipe.recv()
            except (EOFError, OSError):
                self.running = False
                return
            self.pipe.send(self._command(cmd, args))

    # --- loop -----------------------------------------------------------------------------------------------

    def run(self) -> None:
        pipe_fd = self.pipe.fileno()
        slow_fd = self.slow.fileno()
        conns = self.conns
        next_slow = next_send = time.monotonic()
        try:
            while self.running:
                now = time.monotonic()
                until = next_slow
                if self.sending:
                    until = min(until, max(next_send, self.t0))
                for fd, _ev in self.fast.poll(max(0.0, until - now)):
                    if fd == pipe_fd:
                        self._commands()
                    elif fd == slow_fd:
                        for sfd, _ in self.slow.poll(0):
                            c = conns.get(sfd)
                            if c is not None:
                                self._read(c)
                    else:
                        c = conns.get(fd)
                        if c is None:
                            continue
                        if c.state == CONNECTING:
                            self._connected(c)
                        else:
                            self._read(c)
                now = time.monotonic()
                if now >= next_slow and self.stamped and not self._all_arrived(now):
                    next_slow = now + STAMPED_CHECK  # leave the bulk receivers unread a while longer
                elif now >= next_slow:
                    self.watch_pings = self.kind == "lanchat" and now >= self.ping_from
                    for sfd, _ in self.slow.poll(0):
                        c = conns.get(sfd)
                        if c is not None:
                            self._read(c)
                    next_slow = now + self.bulk_interval
                if self.sending and now >= next_send and now >= self.t0:
                    self._send_due(now)
                    next_send = now + self.tick
        finally:
            for c in list(conns.values()):
                self._drop(c)
            self.fast.close()
            self.slow.close()


def generator_main(pipe: Connection, kind: str, port: int, specs: list[ConnSpec], opts: dict[str, Any]) -> None:
    """Entry point of a generator process (multiprocessing target)."""
    _raise_nofile()
    try:
        Generator(pipe, kind, port, specs, opts).run()
    finally:
        pipe.close()
