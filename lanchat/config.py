"""Typed configuration. The CLI only parses options into these; option name = field = LANCHAT_<NAME> (see cli.py)."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import socket
import unicodedata
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from lanchat import const


def host_port(host: str, port: int | str) -> str:
    """HOST:PORT as it is typed: an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_address(text: str, default_port: int = const.DEFAULT_PORT, *, ipv6: bool = True) -> tuple[str, int]:
    """HOST or HOST:PORT, and with ``ipv6`` also [V6]:PORT or a bare V6 address -> (host, port), the inverse of
    ``host_port``; ValueError says what is wrong. Without ``ipv6`` (discovery's targets: IPv4 or a name) an
    address with more than one colon is refused."""
    text = text.strip()
    if ipv6 and text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError("expected [V6ADDRESS] or [V6ADDRESS]:PORT")
        host = host if _is_ipv6(host) else check_host(host)  # ([127.0.0.1]:7000 is taken too, as it was)
        return host, _port(rest[1:]) if rest else default_port
    if text.count(":") == 1:
        host, _, port_text = text.partition(":")
        port = _port(port_text)
    elif ":" in text and not ipv6:
        raise ValueError(f"not a HOST or HOST:PORT (IPv4 or a name): {text!r}")
    elif ":" in text:
        if not _is_ipv6(text):
            raise ValueError(f"not an IPv6 address: {text!r} (HOST:PORT has one colon; [V6ADDRESS]:PORT)")
        return text, default_port
    else:
        host, port = text, default_port
    return check_host(host), port


def check_host(host: str) -> str:
    """An IPv4 address or a host name (IPv6 is the caller's: brackets, colons); ValueError says what is wrong.
    Said here rather than by the resolver, which would first ask the network's name server about it."""
    if not host:
        raise ValueError("no host")
    if any(c.isspace() for c in host):
        raise ValueError(f"a host name has no spaces: {host!r}")
    labels = host.removesuffix(".").split(".")
    if not all(label and all(c.isalnum() or c in "-_" or _is_mark(c) for c in label) for label in labels):
        raise ValueError(f"not a host name or address: {host!r}")
    if all(label.isascii() and label.isdigit() for label in labels):  # 10.999.0.1 is no name either
        try:
            socket.inet_aton(host)  # (what the resolver takes without asking: 127.1 too)
        except OSError:
            raise ValueError(f"not an IPv4 address: {host!r}") from None
    return host


def check_listen_host(host: str) -> str:
    """serve --host: an IPv4 or IPv6 address, or a host name (`localhost`); ValueError says what is wrong."""
    host = host.strip()
    if host.startswith("["):
        raise ValueError(f"an IPv6 address without brackets (--host ::1), not {host!r}")
    if host.count(":") == 1:
        raise ValueError(f"an address without a port (the port is --port), not {host!r}")
    if ":" in host and not _is_ipv6(host):
        raise ValueError(f"not an IPv6 address: {host!r}")
    return host if ":" in host else check_host(host)


def _is_mark(c: str) -> bool:
    """A combining mark: part of letters in many scripts' names (हिन्दी)."""
    return unicodedata.category(c)[0] == "M"


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)  # (a zone, fe80::1%eth0, too)
    except ValueError:
        return False
    return True


def _port(text: str) -> int:
    if not (text.isascii() and text.isdigit() and 1 <= int(text) <= 65535):
        raise ValueError(f"port must be a number from 1 to 65535, not {text!r}")
    return int(text)


def stop_signals(*sigs: signal.Signals) -> list[signal.Signals]:
    """The signals among ``sigs`` that should end this process gracefully: SIGHUP only if it was not ignored
    when the process started (`nohup` ignores it, so that its command outlives the terminal: a handler of
    ours must not take that over)."""
    return [sig for sig in sigs if not (sig == signal.SIGHUP and signal.getsignal(sig) is signal.SIG_IGN)]


_held: list[int] = []  # stop signals that came before the server's loop could take them (hold_stop_signals)
_before_hold: dict[int, Any] = {}  # the handlers hold_stop_signals replaced


def _hold(signum: int, frame: object) -> None:
    _held.append(signum)


def hold_stop_signals() -> None:
    """A stop signal before the server's event loop takes it (its imports and the opening of its history
    take up to a second) ended the process at once: exit code 143, nothing logged, where the docs promise
    `SIGTERM during the start: stopping`. Held from here, and handed over by Server.start."""
    for sig in stop_signals(signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        _before_hold.setdefault(sig, signal.getsignal(sig))
        signal.signal(sig, _hold)


def release_stop_signals() -> None:
    """The handlers hold_stop_signals replaced, back where it is still holding (a server that failed before
    its start, in a process that goes on: a program or a test that runs it)."""
    for sig, handler in _before_hold.items():
        if signal.getsignal(sig) is _hold and handler is not None:
            signal.signal(sig, handler)
    _before_hold.clear()
    del _held[:]  # (one held for a server that failed must not stop the next one at its start)


def held_stop_signals() -> list[int]:
    """The stop signals held since hold_stop_signals, taken (a second call gets none of them again)."""
    taken = _held[:]
    del _held[:]
    return taken


def default_data_dir() -> Path:
    """The user's data directory (XDG on Linux): where history and the server id live."""
    base = os.environ.get("XDG_DATA_HOME", "")
    if not os.path.isabs(base):  # unset, empty, or relative: ignored, as the XDG spec says
        base = os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "lanchat"


@dataclass(frozen=True, slots=True)
class DiscoveryConfig:
    interface: tuple[str, ...] = ()  # empty: every interface that is up and has an IPv4 broadcast address
    discovery_port: int = const.DEFAULT_DISCOVERY_PORT
    beacon_interval: float = 5.0
    beacon_to: tuple[str, ...] = ()
    beacon: bool = True
    discovery: bool = True


def default_workers() -> int:
    """One worker per usable CPU, up to MAX_WORKERS."""
    return min(const.MAX_WORKERS, usable_cores())


def usable_cores() -> int:
    """The CPUs this process may run on: a container or taskset may allow fewer than the host has."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """The part of the server's config a worker needs, sent to it as JSON when it is spawned: fields of
    ServerConfig's names (ServerConfig.worker_config copies them by name)."""

    name: str = "lanchat"
    workers: int = 1
    max_frame: int = const.MAX_FRAME
    rate: float = const.RATE
    burst: int = const.BURST
    sendq: int = const.SENDQ
    handshake_timeout: float = const.HANDSHAKE_TIMEOUT
    ping_interval: float = const.PING_INTERVAL
    idle_timeout: float = const.IDLE_TIMEOUT
    log_level: str = "info"

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> WorkerConfig:
        return cls(**json.loads(text))


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "0.0.0.0"
    port: int = const.DEFAULT_PORT
    workers: int = field(default_factory=default_workers)
    name: str = field(default_factory=socket.gethostname)
    data_dir: Path = field(default_factory=default_data_dir)
    discovery: DiscoveryConfig = field(default_factory=DiscoveryConfig)
    max_frame: int = const.MAX_FRAME
    rate: float = const.RATE
    burst: int = const.BURST
    sendq: int = const.SENDQ
    max_clients: int = const.MAX_CLIENTS
    max_per_ip: int = const.MAX_PER_IP
    connect_rate: float = const.CONNECT_RATE
    exempt_loopback: bool = True
    handshake_timeout: float = const.HANDSHAKE_TIMEOUT
    ping_interval: float = const.PING_INTERVAL
    idle_timeout: float = const.IDLE_TIMEOUT
    resume_grace: float = const.RESUME_GRACE
    history_limit: int = const.HISTORY_LIMIT
    history_on_join: int = const.HISTORY_ON_JOIN
    worker_timeout: float = const.WORKER_TIMEOUT
    log_level: str = "info"

    def worker_config(self) -> WorkerConfig:
        """Its fields of the same names (a WorkerConfig's fields are all ServerConfig's)."""
        return WorkerConfig(**{f.name: getattr(self, f.name) for f in fields(WorkerConfig)})
