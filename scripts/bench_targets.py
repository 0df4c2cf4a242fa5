"""The servers the benchmark measures: start one on 127.0.0.1, find its processes, stop it for sure.

Owned by the benchmark (scripts/bench.py, docs/benchmarks.md); not part of lanchat. Every server is
started in its own session (process group) with RLIMIT_NOFILE raised to the hard limit, bound to
127.0.0.1 only, with its data in a temporary directory; ``stop()`` sends SIGTERM to the group, then
SIGKILL, and removes the directory. ``stop()`` is idempotent and is also run at interpreter exit.
"""

from __future__ import annotations

import atexit
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"
_live: list[Target] = []


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def _raise_nofile() -> None:  # runs in the child before exec
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def nofile_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[1]


class Target:
    """One server under test. ``kind`` picks the generator's protocol adapter."""

    kind = ""

    def __init__(self, name: str) -> None:
        self.name = name
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.tmp: Path | None = None
        self.log_path: Path | None = None

    # how many server processes share the clients (for the fd limit of one process)
    @property
    def client_processes(self) -> int:
        return 1

    def command(self) -> list[str]:
        raise NotImplementedError

    def available(self) -> str | None:
        """None if it can run here, else why not."""
        return None

    def start(self, timeout: float = 20.0) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix=f"bench-{self.name}-"))
        self.port = free_port()
        self.log_path = self.tmp / "server.log"
        log = open(self.log_path, "wb")  # noqa: SIM115 - the child keeps the descriptor
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "LANCHAT_INTERFACE": "lo"}
        if isinstance(self, Lanchat) and Lanchat.source is not None:  # workers inherit it too
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Lanchat.source), env.get("PYTHONPATH")]))
        self.proc = subprocess.Popen(
            self.command(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=self.tmp,
            env=env,
            start_new_session=True,
            preexec_fn=_raise_nofile,
        )
        log.close()
        _live.append(self)
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with socket.create_connection((LOOPBACK, self.port), timeout=1.0) as s:
                    if self._ready_probe(s):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not start within {timeout:.0f} s:\n{self.log_tail()}")

    def _ready_probe(self, s: socket.socket) -> bool:
        """True once the server answers like itself on a fresh connection."""
        s.settimeout(2.0)
        try:
            return bool(s.recv(100))
        except OSError:
            return False

    def log_tail(self, lines: int = 30) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def processes(self) -> list[psutil.Process]:
        """The server's processes (main + workers) for CPU and memory figures."""
        if self.proc is None:
            return []
        try:
            main = psutil.Process(self.proc.pid)
            return [main, *main.children(recursive=True)]
        except psutil.Error:
            return []

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
                try:
                    os.killpg(proc.pid, sig)  # the group we created: the server and its workers
                except ProcessLookupError:
                    break
                try:
                    proc.wait(wait)
                    if sig == signal.SIGTERM:
                        time.sleep(0.05)
                        os.killpg(proc.pid, signal.SIGKILL)  # stragglers of the group, if any
                    break
                except subprocess.TimeoutExpired:
                    continue
                except ProcessLookupError:
                    break
            if proc.poll() is None:
                proc.wait(5)
        if self in _live:
            _live.remove(self)
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None


def lanchat_source(ref: str | None) -> tuple[Path | None, str]:
    """The lanchat code to measure. None: the working tree as it is (described by its commit and whether
    lanchat/ has changes). A git ref: that commit's lanchat/ exported into a temporary directory, so that
    edits made by others while a run goes on cannot change what is measured half-way."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()

    try:
        if ref is None:
            dirty = bool(git("status", "--porcelain", "--", "lanchat"))
            return None, git("rev-parse", "--short", "HEAD") + ("+dirty" if dirty else "")
        sha = git("rev-parse", "--short", ref)
        dest = Path(tempfile.mkdtemp(prefix=f"bench-lanchat-{sha}-"))
        archive = subprocess.run(["git", "archive", sha, "lanchat"], cwd=ROOT, capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
        atexit.register(shutil.rmtree, dest, True)
        return dest, sha
    except (OSError, subprocess.CalledProcessError) as exc:
        if ref is not None:
            raise RuntimeError(f"cannot export lanchat at {ref!r}: {exc}") from exc
        return None, "unknown"


class Lanchat(Target):
    kind = "lanchat"
    # Silent receivers are pinged after this long (and dropped after twice it): longer than any run, so the
    # generator need not look for pings in what it receives before then (see bench_gen.Generator.ping_from).
    PING_INTERVAL = 3600
    source: Path | None = None  # set by bench.py from --lanchat-ref: where `python -m lanchat` comes from

    def __init__(self, workers: int) -> None:
        super().__init__(f"lanchat-w{workers}")
        self.workers = workers

    @property
    def client_processes(self) -> int:
        return self.workers

    def command(self) -> list[str]:
        assert self.tmp is not None
        return [
            sys.executable, "-m", "lanchat", "serve", "--host", LOOPBACK, "--no-discovery",
            "--port", str(self.port), "--workers", str(self.workers), "--data-dir", str(self.tmp / "data"),
            "--name", "bench", "--rate", "100000", "--burst", "100000", "--max-clients", "100000",
            "--max-per-ip", "100000", "--sendq", "16777216",
            "--ping-interval", str(self.PING_INTERVAL), "--idle-timeout", str(2 * self.PING_INTERVAL),
            "--handshake-timeout", "120",
            "--log-level", "warning",
        ]  # fmt: skip

    def _ready_probe(self, s: socket.socket) -> bool:
        s.settimeout(2.0)
        try:
            return b'"type":"server"' in s.recv(1000)
        except OSError:
            return False


class Redis(Target):
    kind = "redis"

    def __init__(self) -> None:
        super().__init__("redis")

    def available(self) -> str | None:
        if shutil.which("redis-server") is None:
            return "redis-server not found (Debian: apt-get install -y redis-server)"
        return None

    def command(self) -> list[str]:
        return [
            "redis-server", "--port", str(self.port), "--bind", LOOPBACK, "--save", "", "--appendonly", "no",
            # Protected mode of Redis 7.0 admits 127.0.0.1 alone, not the generator's other loopback source
            # addresses (bench_gen.SOURCE_ADDRESSES); the bind to 127.0.0.1 keeps it unreachable from outside.
            "--maxclients", "100000", "--protected-mode", "no", "--daemonize", "no", "--loglevel", "warning",
            # a subscriber may fall this far behind before it is cut off: lanchat's --sendq above
            "--client-output-buffer-limit", "pubsub 16mb 0 0",
        ]  # fmt: skip

    def _ready_probe(self, s: socket.socket) -> bool:
        s.settimeout(2.0)
        try:
            s.sendall(b"*1\r\n$4\r\nPING\r\n")
            return s.recv(100).startswith(b"+PONG")
        except OSError:
            return False


class Threaded(Target):
    kind = "threaded"

    def __init__(self) -> None:
        super().__init__("threaded")

    def command(self) -> list[str]:
        return [sys.executable, str(ROOT / "scripts" / "baseline_threaded.py"), "--host", LOOPBACK,
                "--port", str(self.port)]  # fmt: skip


def make_target(name: str) -> Target:
    if name.startswith("lanchat-w"):
        return Lanchat(int(name.removeprefix("lanchat-w")))
    if name == "redis":
        return Redis()
    if name == "threaded":
        return Threaded()
    raise ValueError(f"unknown target {name!r} (lanchat-wN, redis, threaded)")


@atexit.register
def _stop_all() -> None:
    for target in list(_live):
        target.stop()
