"""The `lanchat` command line. It only parses options into typed configs and hands them on: no logic here.

Every setting also reads the environment variable LANCHAT_<OPTION> (``--max-per-ip`` -> ``LANCHAT_MAX_PER_IP``);
the per-run switches (``--json``, ``--watch``, ``--version``) do not.
"""

from __future__ import annotations

import getpass
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from lanchat import const
from lanchat.config import (
    DiscoveryConfig,
    ServerConfig,
    check_listen_host,
    default_data_dir,
    hold_stop_signals,
    parse_address,
)
from lanchat.protocol.beacon import MAX_INTERVAL_MS

# Seconds: the least --timeout of join and discover, the same for both since LANCHAT_TIMEOUT sets both.
MIN_TIMEOUT = 0.05

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    # Classic help layout (as click and most Unix tools print it): typer's rich panels show a type column
    # (``<bool>`` beside every flag, ``<list[str]>``) that tells a user less than a metavar does.
    rich_markup_mode=None,
    help="LAN chat: `lanchat serve` on one machine, `lanchat join` on the others.",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        from lanchat import __version__

        typer.echo(f"lanchat {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """LAN chat: `lanchat serve` on one machine, `lanchat join` on the others."""


def _env(name: str) -> str:
    return "LANCHAT_" + name.upper().replace("-", "_")


def _login_name() -> str:
    try:
        name = getpass.getuser()
    except Exception:  # no login name in containers without a passwd entry
        return "guest"
    # (one with a byte the locale cannot decode, from $LOGNAME: a traceback at the hello, a review; as none)
    return "guest" if _undecodable(name) else name


def _undecodable(text: str) -> bool:
    """Python's escapes for bytes of an argument or variable the locale's encoding did not decode (sent in a
    hello, they crashed it with a traceback: a review)."""
    return any("\udc80" <= c <= "\udcff" for c in text)


Interface = Annotated[
    list[str],
    typer.Option(
        "--interface",
        envvar=_env("interface"),
        metavar="NAME",
        help="Network interface for discovery (repeatable); `lo` means 127.255.255.255. "
        "Default: every interface that is up and has an IPv4 broadcast address, loopback excluded.",
    ),
]
DiscoveryPort = Annotated[
    int,
    typer.Option(
        envvar=_env("discovery_port"),
        metavar="PORT",
        min=1,
        max=65535,
        help="UDP port of discovery beacons and probes.",
    ),
]


def _log_level(value: str) -> str:
    if value.lower() not in ("debug", "info", "warning", "error"):
        raise typer.BadParameter(f"{value!r} is not one of debug, info, warning, error")
    return value.lower()


def _server_name(value: str) -> str:
    """--name: a control or bidi character (a tab) was only cleaned for discovery, with no word, and shown
    raw by `lanchat status` and a plain-text /status: refused here (exit code 2)."""
    from lanchat.protocol.beacon import clean_name

    bad = next((ch for ch in value if clean_name(ch) != ch), None)
    if bad is not None:
        raise typer.BadParameter(f"a server name may not contain control characters (U+{ord(bad):04X})")
    return value


def _listen_host(value: str) -> str:
    """serve --host: what is no address or host name is a bad option (exit code 2)."""
    try:
        return check_listen_host(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def _targets(value: list[str]) -> list[str]:
    """--probe, --beacon-to: a target that is no HOST[:PORT] is a bad option (exit code 2), as a bad
    --interface is; one that does not resolve is the network's business (a warning, and the others are used)."""
    for target in value:
        try:
            parse_address(target, const.DEFAULT_DISCOVERY_PORT, ipv6=False)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
    return value


def _room(value: str | None) -> str:
    """--room checked here (exit code 2, as any bad option) rather than refused by the server after connecting;
    "" when not given (a restored session keeps its own room then). An empty one is refused: a script's
    `--room "$ROOM"` with ROOM unset posted its alert to #lobby (an unset LANCHAT_ROOM is no value)."""
    from lanchat.errors import RemoteProtocolError
    from lanchat.protocol.messages import check_room

    if value is None:
        return ""
    try:
        return check_room(value)
    except RemoteProtocolError as exc:
        raise typer.BadParameter(exc.message) from None


def _nick(value: str | None) -> str:
    """--nick: "" when not given (the login name then); an empty one is refused, as an empty --room is."""
    if value is not None and not value.strip():
        raise typer.BadParameter("a nick may not be empty")
    if value is not None and _undecodable(value):
        raise typer.BadParameter("not valid text in the terminal's encoding (is the locale UTF-8?)")
    return value or ""


@app.command()
def serve(
    host: Annotated[
        str,
        typer.Option(
            envvar=_env("host"),
            metavar="ADDR",
            callback=_listen_host,
            help="Address to listen on (`::` for IPv4+IPv6).",
        ),
    ] = "0.0.0.0",
    port: Annotated[
        int,
        typer.Option(
            envvar=_env("port"), metavar="PORT", min=0, max=65535, help="TCP port for chat (0: any free one)."
        ),
    ] = const.DEFAULT_PORT,
    workers: Annotated[
        int,
        typer.Option(
            envvar=_env("workers"),
            metavar="N",
            min=0,
            max=const.MAX_WORKERS,
            show_default="number of CPUs",
            help=f"Worker processes (0: one per CPU this process may use, at most {const.MAX_WORKERS}).",
        ),
    ] = 0,
    name: Annotated[
        str,
        typer.Option(
            envvar=_env("name"),
            metavar="NAME",
            callback=_server_name,
            show_default="host name",
            help="Server name shown by discovery and lanchat status.",
        ),
    ] = "",
    data_dir: Annotated[
        Path | None,
        typer.Option(
            envvar=_env("data_dir"),
            metavar="DIR",
            help="History and server id (default: $XDG_DATA_HOME/lanchat if that is absolute, else"
            " ~/.local/share/lanchat).",
        ),
    ] = None,
    interface: Interface = [],  # noqa: B006 - typer reads the default, never mutates it
    discovery_port: DiscoveryPort = const.DEFAULT_DISCOVERY_PORT,
    beacon_interval: Annotated[
        float,
        typer.Option(
            envvar=_env("beacon_interval"),
            metavar="SECONDS",
            min=0.1,
            max=MAX_INTERVAL_MS / 1000,  # a day: what a beacon can announce (inf crashed the announcer)
            help="Seconds between beacons.",
        ),
    ] = 5.0,
    beacon_to: Annotated[
        list[str],
        typer.Option(
            envvar=_env("beacon_to"),
            metavar="ADDR",
            callback=_targets,
            help="Extra unicast/directed-broadcast beacon target (repeatable).",
        ),
    ] = [],  # noqa: B006
    no_beacon: Annotated[
        bool, typer.Option("--no-beacon", envvar=_env("no_beacon"), help="Do not announce; still answer probes.")
    ] = False,
    no_discovery: Annotated[
        bool, typer.Option("--no-discovery", envvar=_env("no_discovery"), help="No UDP at all.")
    ] = False,
    max_frame: Annotated[
        int,
        typer.Option(
            envvar=_env("max_frame"),
            metavar="BYTES",
            min=256,
            max=const.MAX_FRAME_LIMIT,
            help="Bytes per protocol line.",
        ),
    ] = const.MAX_FRAME,
    rate: Annotated[
        float, typer.Option(envvar=_env("rate"), metavar="PER_S", min=0.1, help="Messages per second per connection.")
    ] = const.RATE,
    burst: Annotated[
        int, typer.Option(envvar=_env("burst"), metavar="N", min=1, help="Messages a connection may send at once.")
    ] = const.BURST,
    sendq: Annotated[
        int,
        typer.Option(
            envvar=_env("sendq"),
            metavar="BYTES",
            min=4096,
            help="Bytes queued for one client before it is dropped as too slow.",
        ),
    ] = const.SENDQ,
    max_clients: Annotated[
        int, typer.Option(envvar=_env("max_clients"), metavar="N", min=1, help="Connections across all workers.")
    ] = const.MAX_CLIENTS,
    max_per_ip: Annotated[
        int, typer.Option(envvar=_env("max_per_ip"), metavar="N", min=1, help="Connections from one address.")
    ] = const.MAX_PER_IP,
    connect_rate: Annotated[
        float,
        typer.Option(
            envvar=_env("connect_rate"),
            metavar="N",
            min=0.0,
            help="New connections a second from one address, after --max-per-ip at once (0: no limit).",
        ),
    ] = const.CONNECT_RATE,
    exempt_loopback: Annotated[
        bool,
        typer.Option(
            "--exempt-loopback/--no-exempt-loopback",
            envvar=_env("exempt_loopback"),
            help="Loopback is not counted by --max-per-ip and --connect-rate.",
        ),
    ] = True,
    handshake_timeout: Annotated[
        float,
        typer.Option(
            envvar=_env("handshake_timeout"), metavar="SECONDS", min=0.1, help="Seconds to complete the hello."
        ),
    ] = const.HANDSHAKE_TIMEOUT,
    ping_interval: Annotated[
        float,
        typer.Option(
            envvar=_env("ping_interval"),
            metavar="SECONDS",
            min=0.1,
            help="Seconds of client silence before a ping (at most half of --idle-timeout).",
        ),
    ] = const.PING_INTERVAL,
    idle_timeout: Annotated[
        float,
        typer.Option(
            envvar=_env("idle_timeout"),
            metavar="SECONDS",
            min=0.2,
            help="Seconds of client silence before it is dropped.",
        ),
    ] = const.IDLE_TIMEOUT,
    resume_grace: Annotated[
        float,
        typer.Option(
            envvar=_env("resume_grace"),
            metavar="SECONDS",
            min=0,
            help="Seconds a dropped session keeps its nick and rooms.",
        ),
    ] = const.RESUME_GRACE,
    history_limit: Annotated[
        int,
        typer.Option(
            envvar=_env("history_limit"), metavar="N", min=1, help="Events kept per room and per private conversation."
        ),
    ] = const.HISTORY_LIMIT,
    history_on_join: Annotated[
        int,
        typer.Option(
            envvar=_env("history_on_join"),
            metavar="N",
            min=0,
            max=const.HISTORY_PAGE_MAX,  # a history page's most (2**63 overflowed SQLite's integers at every join)
            help="Events shown when joining a room.",
        ),
    ] = const.HISTORY_ON_JOIN,
    worker_timeout: Annotated[
        float,
        typer.Option(
            envvar=_env("worker_timeout"),
            metavar="SECONDS",
            min=0.5,
            help="Seconds without a heartbeat before a worker is replaced.",
        ),
    ] = const.WORKER_TIMEOUT,
    log_level: Annotated[
        str,
        typer.Option(
            envvar=_env("log_level"), metavar="LEVEL", callback=_log_level, help="debug, info, warning or error."
        ),
    ] = "info",
) -> None:
    """Run a chat server: TCP chat, UDP discovery, history in SQLite."""
    hold_stop_signals()  # (before the server's imports: a stop during them is the start's, logged and clean)
    from lanchat.server.main import run

    defaults = ServerConfig()
    config = ServerConfig(
        host=host,
        port=port,
        workers=workers or defaults.workers,
        name=name or defaults.name,
        data_dir=data_dir.expanduser() if data_dir else default_data_dir(),  # "~/x" from an env file too
        discovery=DiscoveryConfig(
            interface=tuple(interface),
            discovery_port=discovery_port,
            beacon_interval=beacon_interval,
            beacon_to=tuple(beacon_to),
            beacon=not no_beacon and not no_discovery,
            discovery=not no_discovery,
        ),
        max_frame=max_frame,
        rate=rate,
        burst=burst,
        sendq=sendq,
        max_clients=max_clients,
        max_per_ip=max_per_ip,
        connect_rate=connect_rate,
        exempt_loopback=exempt_loopback,
        handshake_timeout=handshake_timeout,
        ping_interval=ping_interval,
        idle_timeout=idle_timeout,
        resume_grace=resume_grace,
        history_limit=history_limit,
        history_on_join=history_on_join,
        worker_timeout=worker_timeout,
        log_level=log_level,
    )
    raise typer.Exit(run(config))


@app.command(short_help="Join a chat (a terminal UI, or lines when piped).")
def join(
    address: Annotated[
        str | None,
        typer.Argument(metavar="ADDRESS", help="HOST, HOST:PORT or a server NAME from discovery; none: discover."),
    ] = None,
    nick: Annotated[
        str | None,
        typer.Option(envvar=_env("nick"), metavar="NICK", callback=_nick, help="Your nick (default: login name)."),
    ] = None,
    room: Annotated[
        str | None,
        typer.Option(envvar=_env("room"), metavar="ROOM", callback=_room, help="Room to start in (default: lobby)."),
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Piped mode: one JSON event per line.")] = False,
    interface: Interface = [],  # noqa: B006
    discovery_port: DiscoveryPort = const.DEFAULT_DISCOVERY_PORT,
    timeout: Annotated[
        float,
        typer.Option(envvar=_env("timeout"), metavar="SECONDS", min=MIN_TIMEOUT, help="Seconds to look for servers."),
    ] = 1.0,
) -> None:
    """Join a chat: interactive on a terminal, line-oriented when piped."""
    from lanchat.client.join import JoinConfig, run_join

    config = JoinConfig(
        address=address,
        nick=nick or _login_name(),
        room=room or "",
        json=json_output,
        discovery=DiscoveryConfig(interface=tuple(interface), discovery_port=discovery_port),
        timeout=timeout,
    )
    raise typer.Exit(run_join(config))


@app.command()
def discover(
    interface: Interface = [],  # noqa: B006
    discovery_port: DiscoveryPort = const.DEFAULT_DISCOVERY_PORT,
    timeout: Annotated[
        float, typer.Option(envvar=_env("timeout"), metavar="SECONDS", min=MIN_TIMEOUT, help="Seconds to listen.")
    ] = 1.0,
    probe: Annotated[
        list[str],
        typer.Option(
            envvar=_env("probe"),
            metavar="HOST[:PORT]",
            callback=_targets,
            help="Also probe this host directly (repeatable).",
        ),
    ] = [],  # noqa: B006
    watch: Annotated[bool, typer.Option("--watch", help="Live table until Ctrl-C.")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="One JSON object per server.")] = False,
) -> None:
    """List the chat servers on the LAN."""
    from lanchat.discovery.cli import run_discover

    raise typer.Exit(
        run_discover(
            DiscoveryConfig(interface=tuple(interface), discovery_port=discovery_port),
            timeout=timeout,
            probe=tuple(probe),
            watch=watch,
            json_output=json_output,
        )
    )


@app.command(short_help="Print a server's per-process figures.")
def status(
    address: Annotated[
        str, typer.Argument(metavar="ADDRESS", help="HOST or HOST:PORT of a lanchat server.")
    ] = "127.0.0.1",
    json_output: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Print a server's per-process figures (connections, CPU, memory, messages)."""
    from lanchat.client.status import run_status

    raise typer.Exit(run_status(address, json_output=json_output))


def _standard_streams() -> None:
    """Descriptors 0, 1 and 2 closed at the start (`<&-`, `2>&-`) are opened on /dev/null: Python leaves
    sys.stderr None then, and print(file=None) wrote lanchat's messages to stdout, into a --json stream (a
    review); and a socket would take the number, and a write meant for stderr would go to it."""
    for fd, name in ((0, "stdin"), (1, "stdout"), (2, "stderr")):
        try:
            os.fstat(fd)
            continue
        except OSError:
            pass
        null = os.open(os.devnull, os.O_RDONLY if fd == 0 else os.O_WRONLY)  # (the lowest free number: fd)
        if null != fd:
            os.dup2(null, fd)
            os.close(null)
        setattr(sys, name, open(fd, "r" if fd == 0 else "w", closefd=False))  # noqa: SIM115 - for the whole run


def main() -> None:
    _standard_streams()
    app()
