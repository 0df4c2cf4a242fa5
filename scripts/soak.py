#!/usr/bin/env python3
"""lanchat soak test: many resumable clients with churn, random worker kills and server restarts, then a
check that nothing acknowledged was lost or duplicated and that memory and descriptors came back.

Owned by issue 7 ("Hardening"); see docs/security.md for the figures of a long run. Not part of lanchat.

What runs, for ``--duration`` seconds, against one `lanchat serve` on 127.0.0.1 (--no-discovery):
- ``--clients`` members of room ``soak``, each a ``lanchat.client.connection.ChatClient`` (the project's
  client library: reconnect with backoff, resume with token + last_seq, outbox resent with its ids), each
  posting a unique text every 0.2-1.0 s; with ``--rooms N`` every member is in rooms ``soak``, ``soak1`` ..
  ``soak{N-1}`` and posts a text to each of them at once, so that a tick's events span N rooms (N >= 5: the
  history's journal, docs/architecture.md);
- churn: every ``--churn-interval`` s one member leaves (waits for its acks, then quits) and a new one joins;
- every ``--kill-interval`` s a random worker is SIGKILLed (the supervisor replaces it; its users resume);
- every ``--restart-interval`` s the whole server is stopped (SIGTERM; with ``--crash`` every other stop
  is a SIGKILL of the main process) and started again on the same port and data directory. (``--crash``
  found a bug, since fixed: a post relayed before its commit was delivered twice after a crash; see
  docs/security.md and tests/integration/test_hardening_crash.py.)

Then the posting stops, every member waits until its outbox is acknowledged, one last marker message is
sent and awaited by every member (events arrive in sequence order, so everything before it is in), and:

- **exactly once**: a message is *acknowledged* when its sender got an ``ack`` for its id. A member is
  *continuously present* for a message when its session (one ChatClient, resumed across drops, never
  restarted as a new session) had joined the message's room with a join event whose ``seq`` is lower than
  the message's ``seq``, and stayed in it until the end. Every acknowledged message must have been delivered
  exactly once to every member continuously present for it; no text may be sequenced twice (the dedup);
  every member must see its events in increasing ``seq`` order. Members whose resume failed (a new session
  instead) are counted and reported; their earlier events are not checked. A member whose client gives up
  (stops reconnecting by itself, ``gave_up``) fails the run: a resumable session must survive all of this.
- **resources**: after every client has left, the descriptors of the server's processes (main + workers)
  must be back within ``--fd-slack`` of the count measured at the start, and their total RSS within
  ``--rss-slack-mib`` (RSS after restarts is that of the new processes).

Safety: loopback only, every loop bounded in count and time, the server (and its workers: own process
group) is stopped on exit, on errors and on Ctrl-C.

  .venv/bin/python scripts/soak.py --duration 10 --kill-interval 2 --restart-interval 4 --crash  # as in CI
  .venv/bin/python scripts/soak.py --duration 300 --clients 50 --crash --json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lanchat.client.connection import ChatClient, request_once  # noqa: E402
from lanchat.errors import ConnectError, RemoteProtocolError  # noqa: E402
from lanchat.protocol import messages as m  # noqa: E402

LOOPBACK = "127.0.0.1"
ROOM = "soak"
MiB = 1024 * 1024


# --- the server -----------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


class Server:
    """`lanchat serve` in its own process group (so its workers are stopped with it), log to a file."""

    def __init__(self, data_dir: Path, workers: int, extra: list[str]) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.workers = workers
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir / "server.log"
        self.restarts = 0

    def start(self, timeout: float = 20.0) -> None:
        cmd = [
            sys.executable, "-m", "lanchat", "serve", "--host", LOOPBACK, "--port", str(self.port), "--no-discovery",
            "--workers", str(self.workers), "--data-dir", str(self.data_dir), "--name", "soak", *self.extra,
        ]  # fmt: skip
        env = {**os.environ, "LANCHAT_INTERFACE": "lo", "PYTHONUNBUFFERED": "1"}
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=ROOT,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
            with open(self.log_path, "rb") as log:
                log.seek(offset)
                if b"serving on" in log.read():
                    return
            time.sleep(0.05)
        raise RuntimeError(f"server did not start within {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        group = self.processes()
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        deadline = time.monotonic() + 5  # workers leave on their own (EOF of their pipe) ...
        while time.monotonic() < deadline and any(_alive(p) for p in group):
            time.sleep(0.02)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # ... or with their process group

    def processes(self) -> list[psutil.Process]:
        if self.proc is None:
            return []
        try:
            main = psutil.Process(self.proc.pid)
            return [main, *main.children()]
        except psutil.Error:
            return []

    def worker_pids(self) -> list[int]:
        return [p.pid for p in self.processes()[1:] if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]

    def figures(self) -> tuple[int, int, int]:
        """(descriptors, RSS bytes, processes) of main + workers."""
        fds = rss = n = 0
        for p in self.processes():
            try:
                if p.status() == psutil.STATUS_ZOMBIE:
                    continue
                fds += p.num_fds()
                rss += p.memory_info().rss
                n += 1
            except psutil.Error:
                pass
        return fds, rss, n

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def _alive(p: psutil.Process) -> bool:
    try:
        return bool(p.is_running() and p.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


# --- the members ----------------------------------------------------------------------------------------------


@dataclass(eq=False)
class Member:
    name: str
    client: ChatClient
    since: dict[str, int] = field(default_factory=dict)  # room -> seq of our own join in this session
    welcomes: int = 0
    resume_failed: int = 0
    resumed: int = 0
    seqs: array[int] = field(default_factory=lambda: array("q"))  # seqs of room messages received, in order
    posted: dict[int, str] = field(default_factory=dict)  # id -> text
    acked: dict[int, int | None] = field(default_factory=dict)  # id -> seq from the ack (None: a resend's)
    errors: Counter[str] = field(default_factory=Counter)
    active: bool = True
    gave_up: str = ""  # why its client stopped reconnecting by itself (a resumable client never should)


class Soak:
    def __init__(self, args: argparse.Namespace, server: Server) -> None:
        self.args = args
        self.server = server
        self.rng = random.Random(args.seed)
        self.members: list[Member] = []
        self.departed: list[Member] = []
        self.rooms = [ROOM] + [f"{ROOM}{i}" for i in range(1, args.rooms)]
        self.seq_text: dict[int, str] = {}  # every room message seen by anyone
        self.text_room: dict[str, str] = {}  # every text posted -> its room (the marker's: ROOM)
        self.text_seqs: dict[str, set[int]] = {}
        self.next_name = 0
        self.kills = 0
        self.restarts = 0
        self.crashes = 0
        self.left_unacked = 0  # posts still unacknowledged when their member left (not checked)
        self.left_while: Counter[str] = Counter()  # the client's status when that happened
        self.stopping = False
        self.posting = True
        self.phase = "starting"  # what it does now: said if it is interrupted (a hang in CI names its step)

    # --- members ---------------------------------------------------------------------------------------------

    def _on_frame(self, member: Member, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if kind == "welcome":
            member.welcomes += 1
            if frame.get("resumed"):
                member.resumed += 1
            elif member.welcomes > 1:  # a new session instead of our old one: continuity is broken
                member.resume_failed += 1
                member.since.clear()
        elif kind == "join" and frame.get("room") in self.rooms:
            room = str(frame["room"])
            if room not in member.since and m.nick_key(str(frame.get("nick"))) == m.nick_key(member.client.nick):
                member.since[room] = int(frame["seq"])
        elif kind == "msg" and frame.get("room") in self.rooms:
            seq, text = int(frame["seq"]), str(frame["text"])
            member.seqs.append(seq)
            self.seq_text[seq] = text
            self.text_seqs.setdefault(text, set()).add(seq)
        elif kind == "ack":
            rid, acked_seq = int(frame["id"]), frame.get("seq")
            member.acked[rid] = acked_seq if isinstance(acked_seq, int) else member.acked.get(rid)
        elif kind == "error":
            member.errors[str(frame.get("code"))] += 1

    def _on_status(self, member: Member, status: str) -> None:
        if status == "closed" and member.active:  # not closed by us: the client gave up on its session
            member.gave_up = member.client.lost_reason or "?"

    async def add_member(self) -> Member | None:
        name = f"s{self.next_name}"
        self.next_name += 1
        holder: list[Member] = []
        client = ChatClient(
            LOOPBACK, self.server.port, name, self.rooms,
            on_frame=lambda f: self._on_frame(holder[0], f), on_status=lambda s: self._on_status(holder[0], s),
        )  # fmt: skip
        member = Member(name, client)
        holder.append(member)
        try:
            await client.connect()
        except ConnectError:
            return None  # the server is restarting: the next churn round tries again
        self.members.append(member)
        return member

    async def remove_member(self, member: Member) -> None:
        """Leave as a user would: once what it typed is acknowledged (10 s at most), then quit."""
        member.active = False  # posts no more
        self.phase = f"churn: waiting for the acks of {member.name} ({member.client.status})"
        if not await member.client.wait_acked(10):
            self.left_unacked += member.client.state.unacked
            self.left_while[member.client.status] += 1
        self.members.remove(member)
        self.departed.append(member)
        await member.client.close("churn")

    async def poster(self, member: Member) -> None:
        k = 0
        while member.active and self.posting:
            await asyncio.sleep(self.rng.uniform(0.2, 1.0))
            if not (member.active and self.posting):
                return
            for room in self.rooms:  # one text per room, sent together: one tick holds them all
                text = f"{member.name}#{k}" if room == ROOM else f"{member.name}#{k}@{room}"
                try:
                    rid = member.client.send(m.Msg(room, text))
                except RemoteProtocolError:
                    continue  # outbox full while reconnecting
                if rid is not None:
                    member.posted[rid] = text
                    self.text_room[text] = room
            k += 1

    # --- the run ---------------------------------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        args = self.args
        tasks: set[asyncio.Task[None]] = set()

        def spawn(member: Member) -> None:
            task = asyncio.create_task(self.poster(member))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        for _ in range(args.clients):
            member = await self.add_member()
            if member is not None:
                spawn(member)
        loop = asyncio.get_running_loop()
        started = loop.time()
        next_churn = started + args.churn_interval
        next_kill = started + args.kill_interval if args.kill_interval > 0 else float("inf")
        next_restart = started + args.restart_interval if args.restart_interval > 0 else float("inf")
        while loop.time() - started < args.duration:
            self.phase = f"load, {loop.time() - started:.1f} s in"
            await asyncio.sleep(0.05)
            now = loop.time()
            if now >= next_churn:
                next_churn = now + args.churn_interval
                if self.members and len(self.members) >= args.clients:
                    await self.remove_member(self.rng.choice(self.members))
                while len(self.members) < args.clients:
                    member = await self.add_member()
                    if member is None:
                        break
                    spawn(member)
            if now >= next_kill:
                next_kill = now + args.kill_interval
                pids = self.server.worker_pids()
                if pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(self.rng.choice(pids), signal.SIGKILL)
                        self.kills += 1
            if now >= next_restart:
                next_restart = now + args.restart_interval
                crash = args.crash and self.restarts % 2 == 1
                self.phase = f"restart {self.restarts + 1} ({'crash' if crash else 'stop'})"
                await asyncio.to_thread(self.server.stop, signal.SIGKILL if crash else signal.SIGTERM)
                await asyncio.to_thread(self.server.start)
                self.restarts += 1
                self.crashes += crash
        self.posting = False
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return await self.finish(loop.time() - started)

    async def finish(self, elapsed: float) -> dict[str, Any]:
        settle_started = time.monotonic()
        present = [mb for mb in self.members if mb.active and not mb.gave_up]  # gave up: its session ended
        unacked = 0
        for member in present:
            self.phase = f"finish: waiting for the acks of {member.name} ({member.client.status}, "
            self.phase += f"{member.client.state.unacked} unacked)"
            if not await member.client.wait_acked(60):
                unacked += member.client.state.unacked
        marker_from = next((mb for mb in present if mb.client.status == "connected"), None)
        marker_missing = len(present)
        if marker_from is not None:
            self.phase = "finish: waiting for the marker"
            rid = marker_from.client.send(m.Msg(ROOM, "soak-marker"))
            if rid is not None:
                marker_from.posted[rid] = "soak-marker"
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                marker_missing = sum(
                    "soak-marker" not in {self.seq_text.get(s) for s in mb.seqs[-50:]} for mb in present
                )
                if not marker_missing:
                    break
                await asyncio.sleep(0.05)
        settle = time.monotonic() - settle_started
        result = self.check(present)
        result.update(
            duration=round(elapsed, 1), settle_s=round(settle, 1), unacked_at_end=unacked,
            marker_missing=marker_missing, worker_kills=self.kills, restarts=self.restarts, crashes=self.crashes,
        )  # fmt: skip
        for member in self.members:
            member.active = False
            await member.client.close("soak over")
        return result

    def check(self, present: list[Member]) -> dict[str, Any]:
        everyone = self.members + self.departed
        # the seq of every acknowledged message: from its ack, or (acked as a resend) from its delivery
        acked: dict[str, int | None] = {}
        for mb in everyone:
            for rid, seq in mb.acked.items():
                text = mb.posted.get(rid)
                if text is None:
                    continue
                if seq is None:
                    seqs = self.text_seqs.get(text, set())
                    seq = min(seqs) if seqs else None
                acked[text] = seq
        dup_posts = sum(1 for seqs in self.text_seqs.values() if len(seqs) > 1)
        acked_unknown = sum(1 for seq in acked.values() if seq is None)
        missing = duplicates = out_of_order = checked = 0
        examples: list[str] = []
        for mb in present:
            if not mb.since:
                continue  # its session was replaced and it never rejoined: nothing to check
            got = Counter(s for s in mb.seqs if s > min(mb.since.values()))
            out_of_order += sum(1 for a, b in zip(mb.seqs, mb.seqs[1:], strict=False) if b <= a)
            duplicates += sum(n - 1 for n in got.values() if n > 1)
            for text, seq in acked.items():
                since = mb.since.get(self.text_room.get(text, ROOM))
                if seq is None or since is None or seq <= since:
                    continue
                checked += 1
                if got[seq] == 0:
                    missing += 1
                    if len(examples) < 5:
                        examples.append(f"{mb.name} missed {text!r} (seq {seq})")
        posted = sum(len(mb.posted) for mb in everyone)
        return {
            "members_total": len(everyone),
            "gave_up": sum(1 for mb in everyone if mb.gave_up),
            "gave_up_why": sorted({mb.gave_up for mb in everyone if mb.gave_up}),
            "left_unacked": self.left_unacked,
            "left_unacked_while": dict(self.left_while),
            "members_checked": sum(1 for mb in present if mb.since),
            "posted": posted,
            "acked": len(acked),
            "deliveries_checked": checked,
            "missing": missing,
            "duplicates": duplicates,
            "out_of_order": out_of_order,
            "dup_posts": dup_posts,
            "acked_without_seq": acked_unknown,
            "resumes": sum(mb.resumed for mb in everyone),
            "resume_failed": sum(mb.resume_failed for mb in everyone),
            "errors": dict(sum((mb.errors for mb in everyone), Counter())),
            "examples": examples,
        }


# --- main -----------------------------------------------------------------------------------------------------


async def wait_quiet(server: Server, timeout: float = 15.0) -> int:
    """Until the acceptor counts only our own stats connection; returns what it counts then."""
    deadline = time.monotonic() + timeout
    count = -1
    while time.monotonic() < deadline:
        try:
            stats = await request_once(LOOPBACK, server.port, {"type": "stats"}, timeout=5)
            count = next(int(p["connections"]) for p in stats["processes"] if p["role"] == "main")
        except (ConnectError, RemoteProtocolError, OSError, TimeoutError):
            count = -1
        if count == 1:
            return count
        await asyncio.sleep(0.1)
    return count


_running: list[Soak] = []  # the soak of this run, for the line an interrupt prints


async def amain(args: argparse.Namespace, server: Server) -> dict[str, Any]:
    await wait_quiet(server)
    fds0, rss0, procs0 = server.figures()
    soak = Soak(args, server)
    _running.append(soak)
    result = await soak.run()
    soak.phase = "after the load: waiting for the server to settle"
    conns = await wait_quiet(server)
    deadline = time.monotonic() + 15
    while True:  # closed sockets go away asynchronously: wait for the count to settle, with a deadline
        fds1, rss1, procs1 = server.figures()
        if (fds1 <= fds0 + args.fd_slack and procs1 == procs0) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    result.update(
        clients=args.clients, workers=args.workers, connections_at_end=conns - 1,
        fds_start=fds0, fds_end=fds1, rss_start_mib=round(rss0 / MiB, 1), rss_end_mib=round(rss1 / MiB, 1),
    )  # fmt: skip
    failures = []
    for key in ("missing", "duplicates", "out_of_order", "dup_posts", "acked_without_seq", "unacked_at_end", "gave_up"):
        if result[key]:
            failures.append(f"{key}={result[key]}")
    if result["marker_missing"]:
        failures.append(f"marker_missing={result['marker_missing']}")
    if result["connections_at_end"] != 0:
        failures.append(f"connections_at_end={result['connections_at_end']}")
    if fds1 > fds0 + args.fd_slack:
        failures.append(f"descriptors {fds0} -> {fds1}")
    if rss1 > rss0 + args.rss_slack_mib * MiB:
        failures.append(f"rss {rss0 / MiB:.0f} -> {rss1 / MiB:.0f} MiB")
    if result["members_checked"] == 0 or result["deliveries_checked"] == 0:
        failures.append("nothing was checked")
    result["failures"] = failures
    result["ok"] = not failures
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--duration", type=float, default=60.0, help="seconds of load (default 60)")
    p.add_argument("--clients", type=int, default=20, help="members at any time (default 20)")
    p.add_argument("--rooms", type=int, default=1, help="rooms every member is in and posts to at once (default 1)")
    p.add_argument("--workers", type=int, default=2, help="server worker processes (default 2)")
    p.add_argument("--churn-interval", type=float, default=1.0, help="seconds between a leave+join (default 1)")
    p.add_argument("--kill-interval", type=float, default=5.0, help="seconds between worker SIGKILLs; 0: none")
    p.add_argument("--restart-interval", type=float, default=15.0, help="seconds between restarts; 0: none")
    p.add_argument("--crash", action="store_true", help="every other restart is a SIGKILL of the main process")
    p.add_argument("--fd-slack", type=int, default=4, help="descriptors the end may exceed the start by")
    p.add_argument("--rss-slack-mib", type=float, default=64.0, help="MiB of RSS the end may exceed the start by")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.add_argument("--keep-data", action="store_true", help="keep the data directory and server log")
    args = p.parse_args(argv)
    if args.duration <= 0 or args.duration > 24 * 3600 or not 1 <= args.clients <= 2000:
        p.error("--duration must be in (0, 86400] and --clients in 1..2000")
    if args.seed is None:
        args.seed = random.randrange(2**32)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    data_dir = Path(tempfile.mkdtemp(prefix="lanchat-soak-"))
    server = Server(data_dir, args.workers, ["--resume-grace", "60"])
    previous = signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        server.start()
        result = asyncio.run(asyncio.wait_for(amain(args, server), args.duration + 300))
    except KeyboardInterrupt:
        print(f"soak: interrupted ({_running[-1].phase if _running else 'starting'})", file=sys.stderr)
        return 130
    finally:
        server.stop()
        signal.signal(signal.SIGTERM, previous)
        if not args.keep_data:
            shutil.rmtree(data_dir, ignore_errors=True)
    result["seed"] = args.seed
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>20}: {value}")
    if not result["ok"]:
        print(f"soak: FAILED: {', '.join(result['failures'])}", file=sys.stderr)
        if args.keep_data:
            print(f"soak: server log: {server.log_path}", file=sys.stderr)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
