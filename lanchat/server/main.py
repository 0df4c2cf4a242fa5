"""The main process of `lanchat serve`: acceptor, hub I/O, history commits, discovery, supervisor.

Owns the listening socket, the worker processes and their pipes, and the Hub (global truth). It never
parses a client's bytes: accepted sockets go to the least-loaded live worker as file descriptors.
Signal handlers only queue; the supervisor loop acts (reap, heartbeat, respawn, expire sessions).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import psutil

from lanchat import const
from lanchat.config import ServerConfig, held_stop_signals, host_port, release_stop_signals, stop_signals
from lanchat.errors import RemoteProtocolError, StorageError
from lanchat.protocol import control
from lanchat.protocol import messages as m
from lanchat.protocol.plain import count_of
from lanchat.server import heap
from lanchat.server.admission import ConnectThrottle
from lanchat.server.hub import Hub
from lanchat.server.storms import Throttled
from lanchat.server.worker import EXIT_BOOT_FAILED
from lanchat.storage.history import HistoryStore

if TYPE_CHECKING:  # (imported when discovery starts: a server without it never loads the module)
    from lanchat.discovery.announcer import Announcer

log = logging.getLogger("lanchat.server")

EXIT_OK = 0
EXIT_CONFIG = 2  # bad options, port in use, unusable data directory
EXIT_WORKER_BOOT = 3  # a worker cannot start: restarting it forever would only hide the problem
EXIT_HISTORY_LOST = 4  # stopped, but what was queued for a failing disk could not be written (logged)
EXIT_CUT_SHORT = 128 + signal.SIGINT  # a second Ctrl-C: the workers killed, not stopped (the shell's 130)
LOCK_NAME = "lock"  # in the data directory: one server per directory (lock_data_dir)
SUPERVISE_INTERVAL = 0.1  # seconds between supervisor rounds: a dead worker is replaced well within 1 s
SUPERVISE_ERROR_LOG_INTERVAL = 5.0  # seconds between tracebacks of a supervisor error that repeats
STALL_FORGIVEN = 1.0  # seconds between supervisor rounds past which the wait was this process's own
CPU_SAMPLE_INTERVAL = 1.0  # seconds: `stats` reports each process's CPU % over the last whole interval
CHECKPOINT_INTERVAL = 1.0  # seconds between write-ahead-log checkpoints (bounds the log's size)
# Seconds the hub holds its commits (and so its relays) while a checkpoint starts the log over (6-12 ms under
# the benchmark's load): past it they go on, and a commit waits for the restart in SQLite's busy handler (the
# restart gives up on readers of the log after history.RESTART_BUSY_WAIT), so a slow disk cannot stop chat.
LOG_RESTART_HOLD = 0.1
LOG_RESTART_BACKOFF_MAX = 60.0  # seconds: restarts kept from happening by a reader (a backup) back off to this
BOOT_TIMEOUT_KILL = "boot timeout"  # why the supervisor killed a worker that never got ready (see _reap)
WORKER_EXIT_WAIT = 0.05  # seconds a worker whose pipe closed has to exit by itself before it is killed
WORKER_STABLE = 10.0  # seconds a worker has served after which its next crash is replaced at once again
# Seconds: a second SIGINT sooner than this after the stop began is the same Ctrl-C delivered twice (the
# terminal signals its whole foreground group, and a wrapper such as timeout(1) passes it on), not a person
# asking for an exit now; sooner than anyone presses a key twice.
REPEAT_SIGINT_MIN = 0.3
ACCEPT_BATCH = 256  # connections accepted per readiness event before yielding to other work
# TCP keepalive of every connection: the first probe after KEEPALIVE_IDLE s of silence, then one every
# KEEPALIVE_INTERVAL s, KEEPALIVE_PROBES unanswered ending it: a vanished plain (nc) client's session ends,
# and its nick is free, 2 min after it went silent. JSON clients are pinged sooner (--ping-interval). The
# kernel sends no keepalive while data it sent waits for an ack (a vanished client in a busy room: a
# review found one listed after 160 s, to be ended by retransmissions after 15 min or more): the same
# 2 min bound that wait too (TCP_USER_TIMEOUT, Linux).
KEEPALIVE_IDLE = 60
KEEPALIVE_INTERVAL = 15
KEEPALIVE_PROBES = 4
_KEEPALIVE = [
    (getattr(socket, name), value)
    for name, value in (
        ("TCP_KEEPIDLE", KEEPALIVE_IDLE), ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL), ("TCP_KEEPCNT", KEEPALIVE_PROBES),
        ("TCP_USER_TIMEOUT", (KEEPALIVE_IDLE + KEEPALIVE_INTERVAL * KEEPALIVE_PROBES) * 1000),  # (milliseconds)
    )
    if hasattr(socket, name)  # (Linux, and most others; macOS has TCP_KEEPALIVE for the first)
]  # fmt: skip
_ACCEPT_BACKOFF_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
# What accept(2) may return for a connection that failed before it was taken (Linux passes a new socket's
# pending network error on: its manual says to treat these as EAGAIN and accept again).
_ACCEPT_SKIP_ERRNOS = {
    errno.ECONNABORTED, errno.EPROTO, errno.ENETDOWN, errno.ENOPROTOOPT, errno.EHOSTDOWN, errno.ENONET,
    errno.EHOSTUNREACH, errno.EOPNOTSUPP, errno.ENETUNREACH, errno.EPERM,
}  # fmt: skip
# A refused connection is closed once its client closed too (it read the error line), REFUSE_LINGER seconds at
# most, REFUSED_LINGERING_MAX at once and REFUSED_LINGERING_PER_ADDRESS from one address (more are closed at
# once: a storm of refusals holds no more descriptors, and one host's storm does not take every place).
REFUSE_LINGER = 2.0
REFUSED_LINGERING_MAX = 256
REFUSED_LINGERING_PER_ADDRESS = 16
REFUSE_DRAIN_READS = 16  # reads of 64 KiB per wake-up of a lingering refused connection


@dataclass(eq=False)
class WorkerSlot:
    """One worker process as the supervisor sees it."""

    index: int
    proc: subprocess.Popen[bytes] | None = None
    ctrl: asyncio.Transport | None = None
    fd_sock: socket.socket | None = None
    conns: set[int] = field(default_factory=set)
    ready: bool = False
    alive: bool = False
    started: float = 0.0
    last_pong: float = 0.0
    ping_seq: int = 0
    last_ping: float = 0.0
    figures: dict[str, int] = field(default_factory=dict)
    crashes: int = 0
    respawn_at: float | None = None
    ps: psutil.Process | None = None  # kept so cpu_percent() measures between calls
    killed_for: str = ""  # why the supervisor itself killed it (so the log does not guess)


# Requests whose answer is all they do (and a topic without a text): an internal error may name them.
_QUESTIONS: Final = frozenset({"history", "who", "rooms", "stats"})
NO_LOCKS: Final = -1  # lock_data_dir: the file system has no locks (NFS without a lock manager)
_CANNOT_LOCK: Final = "the data directory cannot be locked (it cannot be written)"


def lock_data_dir(data_dir: Path, *, warn: bool = True) -> int | None:
    """Hold ``data_dir/lock`` for this process's life: a second server on the same directory would share
    its history file and its discovery id (clients would see one server at a mix of two addresses).
    Raises StorageError if another server holds it, or if ``data_dir`` is not a directory (a typo);
    NO_LOCKS where the file system has none; None if the lock cannot be made now (a directory that
    cannot be written: the store runs degraded, and takes the lock before it opens the file again)."""
    path = data_dir / LOCK_NAME
    try:
        if data_dir.exists() and not data_dir.is_dir():  # a typo, not a failing disk: say so and stop
            raise StorageError(f"--data-dir {data_dir} is not a directory")
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except NotADirectoryError:  # a file on the way to it: a typo as well
        raise StorageError(f"--data-dir {data_dir}: a part of that path is a file, not a directory") from None
    except OSError as exc:
        if warn:
            log.warning("cannot make %s (%s); history is kept in memory until it can be", data_dir, exc)
        return None
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        if warn:
            log.warning("cannot lock %s (%s); history is kept in memory until it can be", path, exc)
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        try:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
        except OSError:
            holder = "?"
        finally:
            os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise StorageError(
                f"{data_dir} is in use by another lanchat server (pid {holder}); give each server its own --data-dir"
            ) from None
        log.warning("cannot lock %s (%s): nothing keeps a second server off this data directory", path, exc)
        return NO_LOCKS
    try:  # the pid is only for that message: a full disk must not keep the server from starting
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
    except OSError as exc:
        log.warning("cannot write %s: %s", path, exc)
    return fd


class Server:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.loop = asyncio.get_running_loop()
        self._lock = lock_data_dir(config.data_dir)
        # why the lock could not be taken since (see _lock_guard); at start lock_data_dir has said it
        self._lock_why: str | None = None if self._lock is not None else _CANNOT_LOCK
        try:
            self.store = HistoryStore(config.data_dir, history_limit=config.history_limit, guard=self._lock_guard)
        except BaseException:  # a foreign or corrupt file: the lock goes with the refusal
            self._unlock()
            raise
        self.hub = Hub(
            self.store,
            resume_grace=config.resume_grace,
            history_on_join=config.history_on_join,
            max_frame=config.max_frame,
            replay_max=config.sendq // 2,  # a resume's replay, with what else the round sends, stays under sendq
            held_per_ip=config.max_per_ip,
            rate=config.rate,
            burst=config.burst,
            stats=self._stats,
            now=time.monotonic(),
            wall_offset=time.time() - time.monotonic(),
        )
        self.slots = [WorkerSlot(i) for i in range(config.workers)]
        self.listener: socket.socket | None = None
        self.next_conn = 1
        self.conn_peer: dict[int, tuple[str, int, str]] = {}  # conn -> (ip if counted, worker index, ip)
        self.per_ip: Counter[str] = Counter()
        self.connects = ConnectThrottle(config.connect_rate, config.max_per_ip)  # per address, as per_ip counts
        self._refused: dict[int, tuple[socket.socket, float, str]] = {}  # fd -> (refused socket, when to close it,
        self._refused_from: Counter[str] = Counter()  # its address), and how many of each address linger
        self.storms = Throttled(log)  # warnings that would come once per connection in a storm of connects
        self.handoff: dict[int, socket.socket] = {}  # conn -> our copy, until its worker adopts it
        self.stopping = False
        self._stop_signal: tuple[int, float] | None = None  # the signal that began the stop, and when it came
        self.exit_code = EXIT_OK
        self.done = asyncio.Event()
        self._supervise_logged = -SUPERVISE_ERROR_LOG_INTERVAL  # when a supervisor error was last logged
        self._signals: list[tuple[int, float]] = []  # (signal, monotonic time it came), for the supervisor
        self._flush_scheduled = False
        self._retry_handle: asyncio.TimerHandle | None = None
        self._accept_paused = False
        self.announcer: Announcer | None = None
        self._goodbye: asyncio.Task[None] | None = None
        self._stopper: asyncio.Task[None] | None = None
        self._checkpoints: asyncio.Task[None] | None = None
        self._commits_held = False  # while the write-ahead log starts over (_restart_log)
        self._restart: asyncio.Future[bool] | None = None
        self._me = psutil.Process()
        self._me.cpu_percent(None)
        # CPU % per pid, sampled by the supervisor: measured at each `stats` request instead, a figure covered
        # the time since anyone's previous request, and two monitors made each other's near zero.
        self._cpu: dict[int, float] = {}
        self._cpu_next = 0.0
        self._supervised = time.monotonic()  # when the supervisor last ran (see _supervise_once)

    # --- start ---------------------------------------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.config
        family = socket.AF_INET6 if ":" in cfg.host else socket.AF_INET
        self.listener = socket.create_server(
            (cfg.host, cfg.port), family=family, backlog=1024, dualstack_ipv6=cfg.host == "::"
        )
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]
        for sig in stop_signals(signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # SIGHUP: its terminal closed
            self.loop.add_signal_handler(sig, self._signal_came, sig)  # before the boot: a stop then is one too
        for held in held_stop_signals():  # (those that came before: see hold_stop_signals)
            self._signal_came(held)
        for slot in self.slots if not self._signals else ():  # (stopped before any worker is started)
            try:
                self._spawn(slot)
            except OSError as exc:  # not "cannot listen": the port is fine, the process limits are not
                raise RuntimeError(f"cannot start worker {slot.index}: {exc}") from None
        await self._wait_ready()
        if self.stopping:  # a worker could not boot: _reap began the stop
            return
        self.loop.add_reader(self.listener.fileno(), self._accept)
        await self._start_discovery()
        log.info(
            "lanchat %r serving on %s with %s (pid %d, data %s)",
            cfg.name, host_port(cfg.host, self.port), count_of(len(self.slots), "worker"), os.getpid(), cfg.data_dir,
        )  # fmt: skip
        self.loop.call_later(SUPERVISE_INTERVAL, self._supervise)
        self._checkpoints = self.loop.create_task(self._checkpoint_loop())

    async def _wait_ready(self) -> None:
        deadline = time.monotonic() + const.WORKER_BOOT_TIMEOUT
        # A replacement gets its own WORKER_BOOT_TIMEOUT, but one killed at every boot cannot hold the start longer
        last_call = deadline + const.WORKER_BOOT_TIMEOUT
        while not all(s.ready for s in self.slots):
            if self.stopping:
                return
            if self._signals:  # asked to stop before serving: nobody to tell, nothing to drain
                log.info("%s during the start: stopping", _signal_name(self._signals[0][0]))
                for slot in self.slots:
                    self._kill(slot)
                self.stopping = True
                self.done.set()
                return
            self._reap()  # (first: a worker killed just now is replaced, not taken for one that never got ready)
            if self.stopping:  # one could not boot: _reap began the stop
                return
            now = time.monotonic()
            for slot in self.slots:  # one killed by a signal: replaced now too
                if slot.proc is None and slot.respawn_at is not None and now >= slot.respawn_at:
                    try:
                        self._spawn(slot)
                    except OSError as exc:  # as at the first spawn (start)
                        raise RuntimeError(f"cannot start worker {slot.index}: {exc}") from None
            # Each worker from its own start (a replacement's once its backoff is over)
            booting = [
                max(s.started, s.respawn_at or 0.0) + const.WORKER_BOOT_TIMEOUT for s in self.slots if not s.ready
            ]
            if now > min(last_call, max(deadline, *booting)):
                raise RuntimeError("workers did not report ready in time")
            await asyncio.sleep(0.02)

    async def _start_discovery(self) -> None:
        dcfg = self.config.discovery
        if not dcfg.discovery:
            log.info("discovery off (--no-discovery): clients join this server by address")
            return
        try:
            from lanchat.discovery.announcer import Announcer, ServerInfo
            from lanchat.discovery.server_id import load_or_create_server_id
        except ImportError:  # pragma: no cover - discovery is part of the package
            log.warning("discovery is not available in this build")
            return

        def info() -> ServerInfo:
            conns = len(self.conn_peer)
            return ServerInfo(
                users=self.hub.users,
                rooms=len(self.hub.rooms),
                workers=sum(1 for s in self.slots if s.alive),
                load=round(conns / self.config.max_clients, 3),
            )

        try:
            server_id = load_or_create_server_id(self.config.data_dir)
        except OSError as exc:  # read-only data dir: discovery still works, the id just changes on restart
            server_id = uuid.uuid4().hex
            log.warning("discovery: cannot keep the server id in %s (%s); using %s for this run",
                        self.config.data_dir, exc, server_id)  # fmt: skip
        # The address actually bound (a --host name resolved): a server on one address is announced at it.
        host = str(self.listener.getsockname()[0]) if self.listener is not None else self.config.host
        self.announcer = Announcer(
            dcfg, server_id=server_id, name=self.config.name, tcp_port=self.port, info=info, host=host
        )
        await self.announcer.start()  # logs and stays inactive (with a hint) if it cannot bind
        if not self.announcer.active:
            self.announcer = None

    # --- workers -------------------------------------------------------------------------------------------

    def _spawn(self, slot: WorkerSlot) -> None:
        ctrl_parent, ctrl_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        fd_parent, fd_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        for s in (ctrl_parent, ctrl_child, fd_parent, fd_child):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        cmd = [
            sys.executable, "-m", "lanchat.server.worker", "--worker-id", str(slot.index),
            "--ctrl-fd", str(ctrl_child.fileno()), "--fd-fd", str(fd_child.fileno()),
            "--config", self.config.worker_config().to_json(),
        ]  # fmt: skip
        try:
            slot.proc = subprocess.Popen(cmd, pass_fds=(ctrl_child.fileno(), fd_child.fileno()))
        except OSError:  # no process now (fork: EAGAIN, ENOMEM): the caller decides whether to retry
            for sock in (ctrl_parent, ctrl_child, fd_parent, fd_child):
                sock.close()
            raise
        ctrl_child.close()
        fd_child.close()
        fd_parent.setblocking(False)
        slot.fd_sock = fd_parent
        slot.ready = False
        slot.alive = True
        slot.started = slot.last_pong = time.monotonic()
        slot.conns = set()
        slot.figures = {}
        slot.respawn_at = None
        try:
            slot.ps = psutil.Process(slot.proc.pid)
            slot.ps.cpu_percent(None)
        except psutil.Error:
            slot.ps = None
        self.hub.add_worker(slot.index)
        server = self
        decoder = control.ControlDecoder()

        class Ctrl(asyncio.Protocol):
            def data_received(self, data: bytes) -> None:
                if slot.ctrl is not transport_box[0]:  # written off (_worker_gone): what it left in the pipe
                    return  # is for sessions already released; a hello there would make one nobody can reach
                try:
                    frames = decoder.feed(data)
                except RemoteProtocolError as exc:
                    log.error("worker %d: broken control stream (%s); killing it", slot.index, exc)
                    server._kill(slot, "broken control stream")
                    return
                if frames:
                    server._from_worker(slot, frames)

            def connection_lost(self, exc: Exception | None) -> None:
                if slot.ctrl is transport_box[0]:
                    server._worker_gone(slot)

        transport_box: list[asyncio.Transport | None] = [None]

        async def connect() -> None:
            transport, _ = await self.loop.create_unix_connection(Ctrl, sock=ctrl_parent)
            transport_box[0] = transport
            slot.ctrl = transport

        self.loop.create_task(connect())
        log.info("worker %d started (pid %d)", slot.index, slot.proc.pid)

    def _from_worker(self, slot: WorkerSlot, frames: list[control.ControlFrame]) -> None:
        hub = self.hub
        now = self._now()
        for frame in frames:
            if isinstance(frame, control.PostFrame):
                try:
                    hub.post(slot.index, frame, now)
                except Exception:  # a hub bug must cost one message, not the worker's pipe
                    log.exception("internal error handling a message from worker %d", slot.index)
                    self._internal_error(slot, frame.conn, None)
            elif isinstance(frame, control.JsonFrame):
                self._records(slot, frame.records, now)
        self._schedule_flush()

    def _records(self, slot: WorkerSlot, records: list[control.Record], now: float) -> None:
        for rec in records:
            try:
                self._record(slot, rec, now)
            except Exception:  # a hub bug must cost one request, not the worker's pipe
                log.exception("internal error handling %.200r from worker %d", rec, slot.index)
                if rec[0] == "req":  # (its shape was checked: a record of another is logged, not raised)
                    obj = rec[2]
                    kind = obj.get("type")
                    question = kind in _QUESTIONS or (kind == "topic" and obj.get("topic") is None)
                    rid = obj.get("id") if question else None
                    self._internal_error(slot, rec[1], rid if type(rid) is int else None)

    def _record(self, slot: WorkerSlot, rec: control.Record, now: float) -> None:
        hub = self.hub
        match rec:
            case ["req", int() as conn, dict() as obj]:
                known = self.conn_peer.get(conn)  # its address (and whether --max-per-ip counts it)
                peer, address = (known[0], known[2]) if known else ("", "")
                hub.request(slot.index, conn, obj, now, peer=peer, address=address)
            case ["eof", int() as conn]:  # the client's input ended: close once what it sent before is answered
                hub.eof(slot.index, conn)
            case ["adopted", int() as conn]:
                self._release_handoff(conn)
            case ["closed", int() as conn, bool() as clean, str() as reason]:
                peer = self._conn_gone(conn)
                hub.closed(slot.index, conn, clean, reason, now, peer=peer)
            case ["refused", int() as conn, str() as why]:
                self._refuse_handed(conn, m.Err.SERVER_FULL, f"server busy ({why}); try again shortly")
                self._conn_gone(conn)
            case ["pong", int(), dict() as figures]:
                slot.last_pong = time.monotonic()
                slot.figures = figures
            case ["ready", int() as pid]:
                slot.ready = True
                slot.last_pong = time.monotonic()
                log.info("worker %d ready (pid %d)", slot.index, pid)
            case _:  # the worker's bug: say so, and go on with the rest
                log.error("worker %d: bad control record %.200r", slot.index, rec)

    def _internal_error(self, slot: WorkerSlot, conn: int, rid: int | None) -> None:
        """``rid``: a question's id, so that its client settles it. A post's or a change's is not told: the bug
        may have come after it was done (relayed, stored), and "not processed" would be wrong; without an
        answer its client sends it again after a reconnect, and the server's ids settle it (a duplicate)."""
        err = m.error_frame(m.Err.INTERNAL, "internal server error; the request was not processed", id=rid)
        self.hub._reply(slot.index, conn, err)

    def _worker_gone(self, slot: WorkerSlot) -> None:
        """The worker's pipe closed: it died or is dying. Its sessions wait for their clients to resume."""
        if not slot.alive:
            return
        slot.alive = False
        if slot.ctrl is not None:  # nothing more is read from it (a reap can come before its pipe is drained)
            slot.ctrl.abort()
        slot.ctrl = None
        if slot.fd_sock is not None:
            slot.fd_sock.close()
            slot.fd_sock = None
        # Handed to it and never taken (queued on its channel: a worker stalled, then killed): our copy can
        # still tell the client to come back, where closing it would leave a bare EOF (a review found one).
        for conn in slot.conns & self.handoff.keys():
            self._refuse_handed(conn, m.Err.INTERNAL, "worker unavailable; reconnect")
        peers = {conn: self._conn_gone(conn) for conn in list(slot.conns)}
        self.hub.worker_lost(slot.index, self._now(), peers, stopping=self.stopping)
        self._schedule_flush()
        proc = slot.proc
        if proc is not None and proc.poll() is None:  # usually it is dying already: let its exit status say how

            def half_dead() -> None:  # it must not keep sockets of sessions the hub released
                if slot.proc is proc and proc.poll() is None:
                    slot.killed_for = "its pipe closed"
                    proc.kill()

            self.loop.call_later(WORKER_EXIT_WAIT, half_dead)  # not a wait in the loop: chat goes on meanwhile

    def _kill(self, slot: WorkerSlot, why: str = "") -> None:
        if slot.proc is not None and slot.proc.poll() is None:
            slot.killed_for = why
            slot.proc.kill()

    def _reap(self) -> None:
        for slot in self.slots:
            proc = slot.proc
            if proc is None or proc.poll() is None:
                continue
            code = proc.returncode
            slot.proc = None
            # A worker that exits before it is ready, or never gets ready (killed at the boot timeout), would
            # fail again, forever; one killed by a signal then (the OOM killer, an operator) is replaced like
            # any crash, with the same backoff.
            hung = slot.killed_for == BOOT_TIMEOUT_KILL
            boot_failed = code == EXIT_BOOT_FAILED or (not slot.ready and (code >= 0 or hung))
            if not self.stopping and not boot_failed:
                self._respawn_later(slot)  # first: whatever goes wrong below, the slot gets a new worker
            self._worker_gone(slot)
            killed_for, slot.killed_for = slot.killed_for, ""
            if self.stopping:
                continue
            if boot_failed:  # not replaced: a worker that cannot start would fail again, forever
                log.critical("worker %d could not boot (exit %s); stopping the server", slot.index, code)
                self.exit_code = EXIT_WORKER_BOOT
                self._begin_stop("a worker could not start")
            elif killed_for:
                log.error("worker %d was killed by the supervisor (%s); replacing it", slot.index, killed_for)
            elif code < 0:
                name = _signal_name(-code)
                hint = " (out of memory, or killed by hand?)" if name == "SIGKILL" else ""
                log.error("worker %d was killed by %s%s; replacing it", slot.index, name, hint)
            else:
                log.error("worker %d exited with code %d; replacing it", slot.index, code)

    def _respawn(self, slot: WorkerSlot) -> None:
        """A new worker in ``slot``, whose replacement is due."""
        try:
            self._spawn(slot)
        except OSError as exc:  # memory or process limits: try again, backing off like a crash
            delay = self._respawn_later(slot)
            log.error("worker %d: cannot start a process (%s); next try in %.1f s", slot.index, exc, delay)

    @staticmethod
    def _respawn_later(slot: WorkerSlot) -> float:
        slot.crashes += 1
        delay = min(const.RESTART_BACKOFF_MAX, 0.0 if slot.crashes <= 1 else 0.1 * 2 ** (slot.crashes - 2))
        slot.respawn_at = time.monotonic() + delay
        return delay

    def _supervise(self) -> None:
        """Every SUPERVISE_INTERVAL, whatever happens in one round: it is what handles signals, replaces
        workers and expires sessions, so an exception must not end it."""
        if self.done.is_set():
            return
        try:
            self._supervise_once()
        except Exception:
            now = time.monotonic()
            if now - self._supervise_logged >= SUPERVISE_ERROR_LOG_INTERVAL:  # not ten tracebacks a second
                self._supervise_logged = now
                log.exception("supervisor: internal error; going on")
        self.loop.call_later(SUPERVISE_INTERVAL, self._supervise)

    def _supervise_once(self) -> None:
        now = time.monotonic()
        held = now - self._supervised - SUPERVISE_INTERVAL
        if held > STALL_FORGIVEN:  # this process was held (a long commit, a stopped machine): the pongs it
            for slot in self.slots:  # did not read meanwhile are not the workers' silence (what came before is)
                slot.last_pong += held
        self._supervised = now
        while self._signals:
            self._handle_signal(*self._signals.pop(0))
        if now >= self._cpu_next:
            self._cpu_next = now + CPU_SAMPLE_INTERVAL
            self._sample_cpu()
        self._reap()
        if not self.stopping:
            for slot in self.slots:
                if slot.proc is None and slot.respawn_at is not None and now >= slot.respawn_at:
                    self._respawn(slot)
                elif slot.alive and slot.ready:
                    if now - slot.last_pong > self.config.worker_timeout:
                        log.error(
                            "worker %d: no heartbeat for %.1f s (hung?); killing it",
                            slot.index, now - slot.last_pong,
                        )  # fmt: skip
                        self._kill(slot, "no heartbeat")
                    elif slot.ctrl is not None and now - slot.last_ping >= const.HEARTBEAT_INTERVAL:
                        slot.ping_seq += 1
                        slot.last_ping = now
                        slot.ctrl.write(control.json_frame([control.ping(slot.ping_seq)]))
                elif slot.alive and now - slot.started > const.WORKER_BOOT_TIMEOUT:
                    log.error("worker %d: not ready after %.0f s; killing it", slot.index, const.WORKER_BOOT_TIMEOUT)
                    self._kill(slot, BOOT_TIMEOUT_KILL)
                if slot.crashes and slot.alive and slot.ready and now - slot.started > WORKER_STABLE:
                    slot.crashes = 0  # stable again: the next crash restarts at once
            self.hub.tick(self._now())
            self._schedule_flush()
        self.storms.flush(now)
        self.connects.prune(now)
        self._close_lingering(now)

    # --- accepting -----------------------------------------------------------------------------------------

    def _accept(self) -> None:
        assert self.listener is not None
        for _ in range(ACCEPT_BATCH):
            try:
                sock, addr = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _ACCEPT_SKIP_ERRNOS:
                    continue
                if exc.errno in _ACCEPT_BACKOFF_ERRNOS:
                    why, pause = os.strerror(exc.errno or 0), const.ACCEPT_BACKOFF * 1000
                    self.storms.warning("accept", "accept: %s; pausing %.0f ms", why, pause)
                    self._pause_accept()
                    return
                raise
            self._place(sock, addr[0])

    def _pause_accept(self) -> None:
        if self.listener is None or self._accept_paused:
            return
        self._accept_paused = True
        self.loop.remove_reader(self.listener.fileno())

        def resume() -> None:
            self._accept_paused = False
            if self.listener is not None and not self.stopping:
                self.loop.add_reader(self.listener.fileno(), self._accept)

        self.loop.call_later(const.ACCEPT_BACKOFF, resume)

    def _refuse(self, sock: socket.socket, code: str, message: str) -> None:
        """Tell the client why, and close once it has read that. A close with unread bytes (a hello written
        right after connecting) is a reset, and a reset loses the error line on its way (a review: 20 of 20
        such clients got ECONNRESET and no reason): what it sent is read and dropped, and the close waits
        for its end (REFUSE_LINGER at most)."""
        try:
            sock.setblocking(False)
            _drain(sock, REFUSE_DRAIN_READS)
            sock.send(m.encode(m.error_frame(code, message, fatal=True)))
            sock.shutdown(socket.SHUT_WR)
            ip = str(sock.getpeername()[0]) if sock.family != socket.AF_UNIX else ""
        except OSError:
            sock.close()
            return
        full = len(self._refused) >= REFUSED_LINGERING_MAX or self._refused_from[ip] >= REFUSED_LINGERING_PER_ADDRESS
        if full or self.stopping:
            sock.close()
            return
        fd = sock.fileno()
        self._refused[fd] = (sock, time.monotonic() + REFUSE_LINGER, ip)
        self._refused_from[ip] += 1
        self.loop.add_reader(fd, self._refused_readable, fd)

    def _refused_readable(self, fd: int) -> None:
        if not _drain(self._refused[fd][0], REFUSE_DRAIN_READS):  # its end (or an error): done
            self._close_refused(fd)

    def _close_refused(self, fd: int) -> None:
        sock, _, ip = self._refused.pop(fd)
        self._refused_from[ip] -= 1
        if self._refused_from[ip] <= 0:
            del self._refused_from[ip]
        self.loop.remove_reader(fd)
        sock.close()

    def _close_lingering(self, now: float | None = None) -> None:
        """Close the refused connections whose linger is over (all of them if ``now`` is None)."""
        for fd, (_, until, _) in list(self._refused.items()):
            if now is None or now >= until:
                self._close_refused(fd)

    def _place(self, sock: socket.socket, ip: str) -> None:
        cfg = self.config
        if self.stopping:
            self._refuse(sock, m.Err.SHUTTING_DOWN, "server is shutting down")
            return
        if len(self.conn_peer) >= cfg.max_clients:
            self._refuse(sock, m.Err.SERVER_FULL, f"server is full ({count_of(cfg.max_clients, 'connection')})")
            return
        counted = not (cfg.exempt_loopback and _is_loopback(ip))
        if counted and self.per_ip[ip] >= cfg.max_per_ip:
            self._refuse(sock, m.Err.TOO_MANY_FROM_IP, f"too many connections from {ip} (max {cfg.max_per_ip})")
            return
        if counted and (wait := self.connects.wait(ip, time.monotonic())) > 0:
            rate = f"{cfg.connect_rate:g} a second after {cfg.max_per_ip} at once"
            self._refuse(sock, m.Err.TOO_MANY_FROM_IP, f"{ip} connects too often ({rate}); try again in {wait:.1f} s")
            return
        live = [s for s in self.slots if s.alive and s.ready and s.fd_sock is not None]
        if not live:
            self._refuse(sock, m.Err.INTERNAL, "no worker available; try again in a moment")
            return
        conn = self.next_conn
        self.next_conn += 1
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)  # plain sessions' only check of their peer:
        for opt, value in _KEEPALIVE:  # the system's default finds a vanished one after 2 h 11 min
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, opt, value)
        if sock.family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        note = [json.dumps({"conn": conn, "peer": ip}).encode()]
        for slot in sorted(live, key=lambda s: len(s.conns)):  # the least loaded first
            try:
                assert slot.fd_sock is not None
                socket.send_fds(slot.fd_sock, note, [sock.fileno()])
                break
            except OSError as exc:  # its queue is full (a stalled worker, a storm of connects): the next one
                msg = "could not hand a connection to worker %d: %s"
                self.storms.warning(f"handoff{slot.index}", msg, slot.index, exc)
        else:
            self._refuse(sock, m.Err.INTERNAL, "worker unavailable; reconnect")
            return
        # Keep our descriptor until the worker says it adopted the connection: if the worker could not
        # take it (out of descriptors), we can still tell the client why instead of a bare close.
        self.handoff[conn] = sock
        slot.conns.add(conn)
        self.conn_peer[conn] = (ip if counted else "", slot.index, ip)
        if counted:
            self.per_ip[ip] += 1

    def _refuse_handed(self, conn: int, code: str, message: str) -> None:
        """A connection handed to a worker that did not take it: refused through our copy, if still held.
        Clients take every such code as "try again later" (during a stop, the stop's own refusal)."""
        sock = self.handoff.pop(conn, None)
        if sock is not None:
            if self.stopping:
                code, message = m.Err.SHUTTING_DOWN, "server is shutting down"
            self._refuse(sock, code, message)

    def _release_handoff(self, conn: int) -> None:
        sock = self.handoff.pop(conn, None)
        if sock is not None:
            sock.close()

    def _conn_gone(self, conn: int) -> str:
        """Forget a connection; its address as --max-per-ip counts it ('' if it is not counted)."""
        self._release_handoff(conn)
        entry = self.conn_peer.pop(conn, None)
        if entry is None:
            return ""
        ip, index, _ = entry
        self.slots[index].conns.discard(conn)
        if ip:
            self.per_ip[ip] -= 1
            if self.per_ip[ip] <= 0:
                del self.per_ip[ip]
        return ip

    # --- hub output and history commits --------------------------------------------------------------------

    def _now(self) -> float:
        """The hub's clock: monotonic, with the hub's offset to the wall clock brought up to date."""
        mono = time.monotonic()
        self.hub.wall_offset = time.time() - mono
        return mono

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Once per loop tick: commit the tick's events, then relay them (one write per worker).

        Committing first means nothing is seen that is not on disk: a crash of this process can lose
        only what nobody was shown, so a resend after it is never a duplicate. While the disk fails,
        the commit is skipped (the store paces its retries) and chat is relayed all the same.
        """
        self._flush_scheduled = False
        if self._commits_held:  # the log is starting over: the checkpoint loop flushes when it is done
            return
        if self.store.pending or self.hub.commit_pending or self.store.sessions_lost:  # (lost: see Hub.commit)
            self.hub.commit(self._now())
            if self.store.pending and self._retry_handle is None:  # the disk fails: come back to it
                self._retry_handle = self.loop.call_later(const.DB_RETRY_INTERVAL, self._retry_commit)
        for index in self.hub.pending_workers():
            data = self.hub.drain(index)
            slot = self.slots[index]
            if slot.ctrl is not None and not slot.ctrl.is_closing():
                slot.ctrl.write(data)
                queued = slot.ctrl.get_write_buffer_size()
                if queued <= const.PIPE_HIGH_WATER:
                    self.hub.busy.discard(index)
                elif index not in self.hub.busy:  # logged once per episode; its clients' listings wait
                    log.warning("worker %d: %d bytes queued on its pipe (busy or stuck?)", slot.index, queued)
                    self.hub.busy.add(index)  # (Hub.request): they must not pile up here

    def _retry_commit(self) -> None:
        self._retry_handle = None
        self._flush()

    async def _checkpoint_loop(self) -> None:
        """Fold the SQLite write-ahead log into the database once a second, in a thread: the fsync it
        costs never stalls the hub (commits themselves only append to the log). When the log is over its
        limit (a steady load: see HistoryStore.checkpoint) it is started over (_restart_log); if a reader
        kept it in use, the next try waits, twice as long each time."""
        backoff, retry_at = 0.0, 0.0
        while not self.done.is_set():
            await asyncio.sleep(CHECKPOINT_INTERVAL)
            try:
                self._watch_lock()
                self.store.watch_file()  # (here, between the hub's commits)
                if not self.store.is_open and not self._commits_held:  # idle, the file not open: the store
                    self.hub.commit(self._now())  # tries it on its retry schedule (what it loads is relayed)
                    self._schedule_flush()
                if not await asyncio.to_thread(self.store.checkpoint) or time.monotonic() < retry_at:
                    continue
                if await self._restart_log():
                    backoff = 0.0
                else:
                    backoff = min(LOG_RESTART_BACKOFF_MAX, max(CHECKPOINT_INTERVAL, 2 * backoff))
                    retry_at = time.monotonic() + backoff
            except Exception:  # a bug here must not end checkpoints for good: the log would grow again
                log.exception("history: checkpoint failed")

    async def _restart_log(self) -> bool:
        """Start the log over while the hub holds its commits: its loop goes on reading and sequencing,
        the tick's relays wait for their commit, and no commit waits in SQLite's busy handler (the loop's
        own commits for /history, a first join or a resume from disk still can, for those milliseconds)."""
        self._commits_held = True
        self._restart = asyncio.ensure_future(asyncio.to_thread(self.store.restart_log))
        try:
            await asyncio.wait({self._restart}, timeout=LOG_RESTART_HOLD)
        finally:
            self._commits_held = False
            self._schedule_flush()
        return await self._restart

    # --- stats ---------------------------------------------------------------------------------------------

    def _sample_cpu(self) -> None:
        procs = [self._me, *(slot.ps for slot in self.slots if slot.ps is not None and slot.alive)]
        cpu = {}
        for ps in procs:
            with contextlib.suppress(psutil.Error, OSError):  # OSError: out of descriptors (EMFILE), say
                cpu[ps.pid] = ps.cpu_percent(None)
        self._cpu = cpu

    def _stats(self) -> dict[str, Any]:
        procs: list[dict[str, Any]] = [self._proc_figures(self._me, "main", len(self.conn_peer), {})]
        procs[0]["msgs_in"] = self.hub.msgs_in
        procs[0]["msgs_out"] = self.hub.events_out
        for slot in self.slots:
            if slot.ps is not None and slot.alive:
                procs.append(self._proc_figures(slot.ps, f"worker{slot.index}", len(slot.conns), slot.figures))
        return {"name": self.config.name, "port": self.port, "processes": procs}

    def _proc_figures(self, ps: psutil.Process, role: str, conns: int, figures: dict[str, int]) -> dict[str, Any]:
        try:
            rss = ps.memory_info().rss
        except (psutil.Error, OSError):  # as in _sample_cpu: a figure lost, not the stats reply
            rss = 0
        return {
            "pid": ps.pid,
            "role": role,
            "connections": conns,
            "cpu_percent": round(self._cpu.get(ps.pid, 0.0), 1),
            "rss": rss,
            "msgs_in": figures.get("msgs_in", 0),
            "msgs_out": figures.get("msgs_out", 0),
        }

    # --- stopping ------------------------------------------------------------------------------------------

    def _signal_came(self, sig: int) -> None:
        """Only queued (the supervisor acts), with the time it came: that decides whether a SIGINT repeats one."""
        self._signals.append((sig, time.monotonic()))

    def _handle_signal(self, sig: int, came: float) -> None:
        if self.stopping:
            first = self._stop_signal
            if sig == signal.SIGINT and first is not None and first[0] == sig and came - first[1] < REPEAT_SIGINT_MIN:
                log.debug("SIGINT again within %.1f s of the first: the same Ctrl-C, ignored", REPEAT_SIGINT_MIN)
            elif sig == signal.SIGINT:
                log.warning(
                    "%s during the stop: exiting now", "another SIGINT" if first and first[0] == sig else "SIGINT"
                )
                for slot in self.slots:
                    self._kill(slot)
                self.exit_code = EXIT_CUT_SHORT  # (history is still written: what was acknowledged stays)
                self.done.set()
            return
        log.info("%s: shutting down (clients are told; up to %.0f s)", signal.Signals(sig).name, const.SHUTDOWN_GRACE)
        self._stop_signal = (sig, came)
        self._begin_stop("server shutting down")

    def _begin_stop(self, reason: str) -> None:
        if self.stopping:
            return
        self.stopping = True
        if self.listener is not None:
            self.loop.remove_reader(self.listener.fileno())
            self.listener.close()
            self.listener = None
        self._commits_held = False  # the stop goes out now; a commit waits for a restart of the log, if one runs
        self.store.watch_file()  # (before the shutdown's commit: see close)
        self.hub.shutdown(reason, self._now())
        self._flush()
        if self.announcer is not None:  # the goodbye first, so browsers drop us at once
            self._goodbye = self.loop.create_task(self.announcer.stop())
        self._stopper = self.loop.create_task(self._drain_and_exit())

    async def _drain_and_exit(self) -> None:
        deadline = time.monotonic() + const.SHUTDOWN_GRACE
        while time.monotonic() < deadline and any(s.proc is not None and s.proc.poll() is None for s in self.slots):
            await asyncio.sleep(0.02)
        for slot in self.slots:
            if slot.proc is not None and slot.proc.poll() is None:
                log.warning("worker %d did not stop in time; killing it", slot.index)
                slot.proc.kill()
        self.done.set()

    async def close(self) -> None:
        if self._checkpoints is not None:
            self._checkpoints.cancel()
        if self._restart is not None and not self._restart.done():  # its thread holds SQLite's write lock
            await asyncio.wait({self._restart}, timeout=2.0)
        for conn in list(self.handoff):  # a worker killed for not stopping in time had them: told, not reset
            self._refuse_handed(conn, m.Err.SHUTTING_DOWN, "server is shutting down")
        self._close_lingering()
        for slot in self.slots:
            if slot.proc is not None:
                if slot.proc.poll() is None:
                    slot.proc.kill()
                slot.proc.wait()
            if slot.ctrl is not None:
                slot.ctrl.close()
            if slot.fd_sock is not None:
                slot.fd_sock.close()
        if self.announcer is not None:
            try:
                await self.announcer.stop()  # idempotent: a no-op if the stop already sent the goodbye
            except OSError as exc:
                log.warning("discovery: goodbye failed: %s", exc)
        # A copy moved in place just before the stop (`mv copy history.sqlite3 && systemctl restart`): the
        # stop's commits went to the old file's log, beside the copy under its name, and the next start applied
        # them to it: refused, exit 2 (a review). Looked at before the stop's commits, as once a second.
        self.store.watch_file()
        self.hub.end_plain_sessions("server shutting down", self._now())
        self.hub.save_sessions()
        self.hub.commit_store(self._now(), force=True)  # even within the retry wait of a failed write
        self.store.checkpoint()
        if self.store.pending and self.exit_code == EXIT_OK:  # a stop is not clean if it lost history
            self.exit_code = EXIT_HISTORY_LOST
        self.store.close()
        if self.listener is not None:
            self.listener.close()
        self._unlock()  # last: the file is written and closed

    def _lock_guard(self) -> str | None:
        """Before the store opens its file: the data directory's lock, if it could not be taken before (a
        disk read-only or full at start). Else two servers started on it then would share the file once it
        can be written, numbering events on their own."""
        if self._lock is not None:
            return None
        why = _CANNOT_LOCK
        try:
            self._lock = lock_data_dir(self.config.data_dir, warn=False)
        except StorageError as exc:  # another server holds it now (or the directory became a file)
            why = str(exc)
        except OSError as exc:  # the disk fails on a stat or a read of the lock
            why = f"the data directory cannot be locked ({exc})"
        if self._lock is not None:
            return None
        if why != self._lock_why:  # said once each time it changes (the store logs only its first failure)
            log.warning("history: %s", why)
            self._lock_why = why
        return why

    def _watch_lock(self) -> None:
        """The lock's file deleted while serving (an ``rm`` of the data directory's files): locked again,
        else a second server could start on the directory and share its history file."""
        if self._lock is None or self._lock == NO_LOCKS or not self.config.data_dir.is_dir():
            return  # (a directory deleted whole is not made again: the store says so)
        try:
            if os.fstat(self._lock).st_nlink:
                return
        except OSError:
            return
        self._unlock()
        if (why := self._lock_guard()) is None:
            log.warning("%s was deleted while serving; locked again", self.config.data_dir / LOCK_NAME)
        else:  # another server took the directory in between: it must have the file to itself
            self.store.suspend(f"{self.config.data_dir / LOCK_NAME} was deleted while serving: {why}")

    def _unlock(self) -> None:
        if self._lock is not None and self._lock != NO_LOCKS:
            os.close(self._lock)
        self._lock = None


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:  # real-time signals (SIGRTMIN+n) have no name in the enum
        return f"signal {signum}"


def _drain(sock: socket.socket, reads: int) -> bool:
    """Read and drop what a non-blocking ``sock`` has (``reads`` reads at most); False at its end or an error."""
    for _ in range(reads):
        try:
            if not sock.recv(65536):
                return False
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            return False
    return True


def _is_loopback(ip: str) -> bool:
    return ip.startswith("127.") or ip == "::1" or ip.startswith("::ffff:127.")


def listen_error(exc: OSError) -> str:
    """Why the listening socket could not be made, in words: socket.create_server's message repeats the
    address, and a resolver's error (a --host that is no address, nor a name it knows) has a negative errno
    that os.strerror calls "unknown error -2"."""
    if exc.errno is not None and exc.errno < 0:  # EAI_*
        return "no such address: " + str(exc.strerror).split(" (while", 1)[0].lower()
    return (os.strerror(exc.errno) if exc.errno else str(exc)).lower()


async def _amain(config: ServerConfig) -> int:
    try:
        server = Server(config)
    except StorageError as exc:
        log.critical("%s", exc)
        return EXIT_CONFIG
    except OSError as exc:  # `ulimit -n 10`: a traceback and exit 1 (an operator's review); as a worker's start
        if exc.errno not in (errno.EMFILE, errno.ENFILE):
            raise
        log.critical("cannot start: %s (hint: raise the limit of open files, `ulimit -n`)", exc.strerror)
        return EXIT_WORKER_BOOT
    try:
        await server.start()
    except OSError as exc:
        log.critical("cannot listen on %s: %s", host_port(config.host, config.port), listen_error(exc))
        await server.close()
        return EXIT_CONFIG
    except RuntimeError as exc:
        log.critical("%s", exc)
        await server.close()
        return EXIT_WORKER_BOOT
    heap.settle()
    await server.done.wait()
    await server.close()
    log.info("stopped (%s kept for their clients to resume)", count_of(len(server.hub.sessions), "session"))
    return server.exit_code


def run(config: ServerConfig) -> int:
    # History holds private messages and the sessions' resume tokens (which take a session over): every
    # file the server creates is for its own user only, whatever umask it was started with.
    os.umask(0o077)
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s main %(message)s",
        stream=sys.stderr,
    )
    try:
        return asyncio.run(_amain(config))
    finally:
        release_stop_signals()
