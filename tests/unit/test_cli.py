"""The CLI only maps options (and LANCHAT_* variables) onto typed configs: checked with a patched run."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import lanchat.cli
import lanchat.config
import lanchat.server.main
from lanchat import const
from lanchat.cli import app
from lanchat.client.connection import fallback_nick
from lanchat.config import ServerConfig, WorkerConfig, default_data_dir, parse_address
from lanchat.protocol import messages as m


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    got: dict[str, Any] = {}

    def fake_run(config: ServerConfig) -> int:
        got["config"] = config
        return 0

    monkeypatch.setattr(lanchat.server.main, "run", fake_run)
    monkeypatch.setattr(lanchat.cli, "hold_stop_signals", lambda: None)  # (this process's signals are pytest's)
    return got


def test_serve_defaults(captured: dict[str, Any]) -> None:
    result = CliRunner().invoke(app, ["serve"], env={"LANCHAT_INTERFACE": "lo"})
    assert result.exit_code == 0, result.output
    cfg: ServerConfig = captured["config"]
    assert (cfg.host, cfg.port, cfg.workers) == ("0.0.0.0", 7272, os.cpu_count())
    assert cfg.discovery.interface == ("lo",) and cfg.discovery.beacon and cfg.discovery.discovery
    assert cfg.exempt_loopback is True and cfg.max_frame == 16384


def test_the_default_data_dir_follows_xdg_only_for_an_absolute_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """A relative XDG_DATA_HOME was used from the working directory: the XDG spec says to ignore it."""
    home = Path(os.path.expanduser("~"))
    for value, expected in (("/srv/xdg", Path("/srv/xdg/lanchat")), ("relative/xdg", home / ".local/share/lanchat"),
                            ("", home / ".local/share/lanchat")):  # fmt: skip
        monkeypatch.setenv("XDG_DATA_HOME", value)
        assert default_data_dir() == expected


def test_one_worker_per_cpu_stops_at_max_workers(captured: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lanchat.config, "usable_cores", lambda: 200)
    result = CliRunner().invoke(app, ["serve"], env={"LANCHAT_INTERFACE": "lo"})
    assert result.exit_code == 0, result.output
    assert captured["config"].workers == const.MAX_WORKERS == 64


def test_join_and_discover_take_the_same_timeouts() -> None:
    """LANCHAT_TIMEOUT sets both: a value one accepts must not be a usage error for the other."""
    import typer.main

    from lanchat.cli import MIN_TIMEOUT

    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    for name in ("join", "discover"):
        (timeout,) = [p for p in commands[name].params if p.name == "timeout"]
        assert timeout.min == MIN_TIMEOUT == 0.05, name


def test_every_option_reads_its_environment_variable(captured: dict[str, Any]) -> None:
    env = {
        "LANCHAT_HOST": "::", "LANCHAT_PORT": "1234", "LANCHAT_WORKERS": "3", "LANCHAT_NAME": "lab",
        "LANCHAT_DATA_DIR": "/tmp/x", "LANCHAT_INTERFACE": "lo eth9", "LANCHAT_DISCOVERY_PORT": "9999",
        "LANCHAT_BEACON_INTERVAL": "2.5", "LANCHAT_BEACON_TO": "127.0.0.2", "LANCHAT_NO_BEACON": "1",
        "LANCHAT_MAX_FRAME": "4096", "LANCHAT_RATE": "3", "LANCHAT_BURST": "4", "LANCHAT_SENDQ": "65536",
        "LANCHAT_MAX_CLIENTS": "10", "LANCHAT_MAX_PER_IP": "7", "LANCHAT_EXEMPT_LOOPBACK": "false",
        "LANCHAT_HANDSHAKE_TIMEOUT": "1.5", "LANCHAT_PING_INTERVAL": "2", "LANCHAT_IDLE_TIMEOUT": "5",
        "LANCHAT_RESUME_GRACE": "9", "LANCHAT_HISTORY_LIMIT": "100", "LANCHAT_HISTORY_ON_JOIN": "5",
        "LANCHAT_WORKER_TIMEOUT": "2", "LANCHAT_LOG_LEVEL": "debug",
    }  # fmt: skip
    result = CliRunner().invoke(app, ["serve"], env=env)
    assert result.exit_code == 0, result.output
    cfg: ServerConfig = captured["config"]
    assert (cfg.host, cfg.port, cfg.workers, cfg.name, str(cfg.data_dir)) == ("::", 1234, 3, "lab", "/tmp/x")
    d = cfg.discovery
    assert (d.interface, d.discovery_port, d.beacon_interval, d.beacon_to) == (
        ("lo", "eth9"),
        9999,
        2.5,
        ("127.0.0.2",),
    )
    assert d.beacon is False and d.discovery is True
    assert (cfg.max_frame, cfg.rate, cfg.burst, cfg.sendq) == (4096, 3.0, 4, 65536)
    assert (cfg.max_clients, cfg.max_per_ip, cfg.exempt_loopback) == (10, 7, False)
    assert (cfg.handshake_timeout, cfg.ping_interval, cfg.idle_timeout) == (1.5, 2.0, 5.0)
    assert (cfg.resume_grace, cfg.history_limit, cfg.history_on_join) == (9.0, 100, 5)
    assert (cfg.worker_timeout, cfg.log_level) == (2.0, "debug")


def test_flags_beat_the_environment(captured: dict[str, Any]) -> None:
    result = CliRunner().invoke(app, ["serve", "--port", "4000", "--no-discovery"], env={"LANCHAT_PORT": "1234"})
    assert result.exit_code == 0, result.output
    cfg: ServerConfig = captured["config"]
    assert cfg.port == 4000 and cfg.discovery.discovery is False and cfg.discovery.beacon is False


def test_max_frame_edges_are_accepted(captured: dict[str, Any]) -> None:
    for value in (256, 1024 * 1024):  # a line of 1 MiB, escaped, stays far under a control frame (64 MiB)
        assert CliRunner().invoke(app, ["serve", "--max-frame", str(value)]).exit_code == 0
        assert captured["config"].max_frame == value


def test_beacon_interval_and_history_on_join_edges_are_accepted(captured: dict[str, Any]) -> None:
    for interval, shown in (("0.1", 0), ("86400", 500)):
        args = ["serve", "--beacon-interval", interval, "--history-on-join", str(shown)]
        assert CliRunner().invoke(app, args).exit_code == 0
        cfg = captured["config"]
        assert (cfg.discovery.beacon_interval, cfg.history_on_join) == (float(interval), shown)


@pytest.mark.parametrize(
    "args",
    [["--max-frame", "10"], ["--max-frame", "1048577"], ["--rate", "0"], ["--workers", "100"], ["--port", "x"],
     ["--port", "65536"], ["--discovery-port", "0"], ["--discovery-port", "70000"], ["--log-level", "loud"],
     ["--beacon-interval", "inf"], ["--beacon-interval", "86401"],  # inf crashed the announcer once serving
     ["--history-on-join", "501"], ["--history-on-join", "9223372036854775807"],  # that failed every join
     ["--name", "lab\tb"], ["--name", "lab\u202e"],  # shown raw by status (an operator's walkthrough)
     # Warned about once serving, or passed to the resolver, before (a docs audit):
     ["--beacon-to", "a b"], ["--beacon-to", "::1"], ["--beacon-to", "127.0.0.1:0"],
     ["--host", "127.0.0.999"], ["--host", "not an addr"], ["--host", "::x"], ["--host", ""],
     ["--host", "127.0.0.1:7000"], ["--host", "[::1]"]],
)  # fmt: skip
def test_bad_values_are_refused_with_a_clear_message(captured: dict[str, Any], args: list[str]) -> None:
    result = CliRunner().invoke(app, ["serve", *args])
    assert result.exit_code == 2 and "Invalid value" in result.output
    assert "config" not in captured


@pytest.mark.parametrize(
    "args",
    [
        ["join", "127.0.0.1:1", "--room", "bad room"],  # checked here, not refused by a server after connecting
        ["join", "127.0.0.1:1", "--room", ""],  # a script's --room "$ROOM" with ROOM unset: not #lobby
        ["join", "127.0.0.1:1", "--nick", " "],
        ["join", "127.0.0.1:1", "--nick", "a\udce9"],  # a Latin-1 byte in a UTF-8 locale: a traceback (a review)
        ["join", "127.0.0.1:70000"],
        ["join", "host:abc"],
        ["join", "[::1]x"],
        ["join", "127.0.0.1:"],
        ["discover", "--discovery-port", "70000"],
        ["discover", "--timeout", "0.04"],  # under MIN_TIMEOUT, as for join:
        ["join", "--timeout", "0.04"],  # one LANCHAT_TIMEOUT sets both, so both take the same values
        ["status", "127.0.0.1:abc"],
        ["status", "127.0.0.1:0"],
        ["discover", "--probe", "127.0.0.1:99999"],  # (a warning, exit 0, before: an operator's walkthrough)
        ["discover", "--probe", "lab host"],
        ["join", "[::1"],  # (went to the resolver whole, an exit 3: a docs audit)
        ["status", "[127.0.0.1:7000"],
    ],
)
def test_bad_addresses_and_options_of_the_client_commands_exit_with_2(args: list[str]) -> None:
    """docs/client.md: exit code 2 is a bad address or option; never a traceback (which exits 1)."""
    result = CliRunner().invoke(app, args, env={"LANCHAT_INTERFACE": "lo"})
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("lab.local", ("lab.local", const.DEFAULT_PORT)),
        ("lab.local:7000", ("lab.local", 7000)),
        ("[::1]:7000", ("::1", 7000)),
        ("[::1]", ("::1", const.DEFAULT_PORT)),
        ("fe80::1", ("fe80::1", const.DEFAULT_PORT)),
        ("h:65535", ("h", 65535)),
        ("h:1", ("h", 1)),
        ("[fe80::1%lo]:7000", ("fe80::1%lo", 7000)),
        ("café.local.:7000", ("café.local.", 7000)),
        ("my_host-2:7000", ("my_host-2", 7000)),
        ("हिन्दी.example", ("हिन्दी.example", const.DEFAULT_PORT)),  # (combining marks: a review)
        ("127.1:7000", ("127.1", 7000)),  # (what the resolver takes without asking)
        ("[127.0.0.1]:7000", ("127.0.0.1", 7000)),  # (brackets are for IPv6, but were taken around any host)
    ],
)
def test_parse_address(address: str, expected: tuple[str, int]) -> None:
    assert parse_address(address) == expected


@pytest.mark.parametrize(
    "address",
    [
        *("h:0", "h:65536", "h:-1", "h:", ":7000", "h:７", "[::1]7000", "[::1]:x", "[]:7", "lab local", ""),
        # An unclosed bracket went to the resolver whole, a name in brackets or with two colons too (a docs audit)
        *("[::1", "[127.0.0.1:7000", "[la b]:7000", "lab::7000", "bad host!", "a..b", ".lab", "lab/x:7000"),
    ],
)
def test_parse_address_refuses_what_is_not_an_address(address: str) -> None:
    with pytest.raises(ValueError):
        parse_address(address)


def test_a_worker_gets_the_options_it_uses_as_they_were_given() -> None:
    cfg = ServerConfig(name="lab", workers=3, max_frame=2048, rate=2.5, burst=7, sendq=4096, log_level="debug")
    sent = WorkerConfig.from_json(cfg.worker_config().to_json())
    assert sent == cfg.worker_config()
    assert (sent.name, sent.workers, sent.max_frame, sent.rate, sent.burst) == ("lab", 3, 2048, 2.5, 7)
    assert sent.sendq == 4096
    assert (sent.idle_timeout, sent.log_level) == (cfg.idle_timeout, "debug")


def test_fallback_nicks_differ_and_fit() -> None:
    """After nick_taken on a reconnect: nick_, nick_2, ... each different, never over NICK_MAX (a 24-character
    nick ending in _ used to come back unchanged, so the client asked for the same taken nick again)."""
    full = "a" * (const.NICK_MAX - 1) + "_"
    tries = [fallback_nick(full, n) for n in range(1, 12)]
    assert len(set(tries)) == len(tries) and full not in tries
    assert all(len(t) <= const.NICK_MAX and m.check_nick(t) == t for t in tries)
    assert [fallback_nick("ann", n) for n in (1, 2, 10)] == ["ann_", "ann_2", "ann_10"]
    numbered = "a" * (const.NICK_MAX - 2) + "_2"
    assert numbered not in [fallback_nick(numbered, n) for n in range(1, 5)]


def test_version() -> None:
    from lanchat import __version__

    out = CliRunner().invoke(app, ["--version"])
    assert out.exit_code == 0 and out.output.strip() == f"lanchat {__version__}"


def test_join_of_a_name_nobody_announces_says_what_was_tried(monkeypatch: pytest.MonkeyPatch) -> None:
    """No server of that name answered and it is no host name either: exit 3 with both said (it was
    "cannot reach nosuch:7272: Name or service not known"). In-process, with the resolver replaced: a real
    lookup of an unknown name would ask the machine's DNS server, off loopback."""
    import asyncio
    import socket

    from lanchat.client import join
    from lanchat.discovery import browser

    async def nobody(*_: Any, **__: Any) -> list[Any]:
        return []

    async def no_such_host(self: Any, host: str, *_: Any, **__: Any) -> Any:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(browser, "browse", nobody)
    monkeypatch.setattr(asyncio.BaseEventLoop, "getaddrinfo", no_such_host)
    config = join.JoinConfig("nosuch", "x")
    with pytest.raises(join.Unresolved) as err:
        asyncio.run(join.resolve(config, interactive=False))
    assert err.value.exit_code == 3
    assert "no server named 'nosuch' answered discovery (servers found: none)" in str(err.value)
    assert "not a host name either" in str(err.value)
    assert "lanchat discover --timeout 6" in str(err.value)  # (a firewall dropping probes: the beacons find it)


def test_a_server_name_that_cannot_be_a_host_name_is_not_asked_of_the_resolver(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A docs audit: `lanchat join 'bad host name!'`, not found by discovery, was asked of the system's
    resolver, whose question goes to the network's name server. A name no host can have is not asked."""
    import asyncio

    from lanchat.client import join
    from lanchat.discovery import browser

    asked: list[str] = []

    async def nobody(*_: Any, **__: Any) -> list[Any]:
        return []

    async def resolver(self: Any, host: str, *_: Any, **__: Any) -> Any:
        asked.append(host)
        return []

    monkeypatch.setattr(browser, "browse", nobody)
    monkeypatch.setattr(asyncio.BaseEventLoop, "getaddrinfo", resolver)
    for name in ("bad host name!", "v1.2 test", "Lab 2", "lab..x"):
        with pytest.raises(join.Unresolved) as err:
            asyncio.run(join.resolve(join.JoinConfig(name, "x"), interactive=False))
        assert err.value.exit_code == 3 and "not a host name either" in str(err.value)
    assert asked == []
    with pytest.raises(join.Unresolved):
        asyncio.run(join.resolve(join.JoinConfig("lab-2", "x"), interactive=False))
    assert asked == ["lab-2"]  # (a name a host can have still is)


@pytest.mark.parametrize("command", [[], ["serve"], ["join"], ["discover"], ["status"]])
def test_help_names_each_value_and_shows_no_type_placeholders_for_options(command: list[str]) -> None:
    """Every option that takes a value names it (``--port PORT``); flags show none (typer's panels printed
    ``<bool>`` beside every flag and ``<list[str]>`` for --interface)."""
    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    options = [line.strip() for line in result.output.splitlines() if line.strip().startswith("--")]
    assert options and not [line for line in options if "<" in line.split("  ")[0]], result.output
    if command == ["serve"]:
        assert "--port PORT " in result.output and "--workers N " in result.output
        assert "--no-beacon  " in result.output  # a flag: no value placeholder


def _record(name: str, host: str, port: int) -> Any:
    from lanchat.discovery.browser import ServerRecord

    return ServerRecord("f" * 32, name, host, port, 1, 2, 1, 1, 0.0, None)


def test_join_of_a_name_with_dots_looks_for_it_by_discovery(monkeypatch: pytest.MonkeyPatch) -> None:
    """A name with a dot was taken for a host name: `lanchat join "v1.2 test"` failed in the resolver, and
    a server named by its fully qualified host name (the default) that DNS does not know was not found.
    A name the resolver knows stays a host name: a LAN host announcing it must not take the connection.
    In-process, the resolver replaced (a real lookup would ask the machine's DNS server, off loopback)."""
    import asyncio
    import socket

    from lanchat.client import join
    from lanchat.discovery import browser

    found = [_record("v1.2 test", "203.0.113.5", 7400), _record("lab.example.org", "203.0.113.6", 7500),
             _record("chat.example.org", "203.0.113.66", 6666)]  # fmt: skip

    async def announced(*_: Any, **__: Any) -> list[Any]:
        return found

    known = {"chat.example.org": "203.0.113.10", "lab.example.org": "203.0.113.6"}  # what DNS says

    async def dns(self: Any, host: str, *_: Any, **__: Any) -> Any:
        if host.lower() in known:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (known[host.lower()], 7272))]
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(browser, "browse", announced)
    monkeypatch.setattr(asyncio.BaseEventLoop, "getaddrinfo", dns)
    by_dns = asyncio.run(join.resolve(join.JoinConfig("chat.example.org", "x"), interactive=False))
    assert (by_dns.host, by_dns.port) == ("chat.example.org", 7272)  # not the LAN host announcing that name
    # lab.example.org: DNS knows it, and the server of that name is at that address: its own port, not 7272
    for name, expected in (("v1.2 test", ("203.0.113.5", 7400)), ("LAB.example.org", ("203.0.113.6", 7500))):
        target = asyncio.run(join.resolve(join.JoinConfig(name, "x"), interactive=False))
        assert (target.host, target.port) == expected
    found.append(_record("v1.2 test", "203.0.113.7", 7272))
    with pytest.raises(join.Unresolved) as err:
        asyncio.run(join.resolve(join.JoinConfig("v1.2 test", "x"), interactive=False))
    assert err.value.exit_code == 5 and "several servers are called 'v1.2 test'; give HOST:PORT" in str(err.value)
    assert "203.0.113.7:7272" in str(err.value)
    direct = asyncio.run(join.resolve(join.JoinConfig("203.0.113.9:7000", "x"), interactive=False))
    assert (direct.host, direct.port) == ("203.0.113.9", 7000)  # an address: no discovery, no resolver


def test_a_dumb_terminal_asks_which_server_with_plain_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    """A terminal walkthrough: on a TERM=dumb terminal (Emacs's M-x shell) several servers meant exit code 5,
    with no way to choose. It is asked with plain lines (a number or a name, again until answered)."""
    import asyncio
    import io

    from lanchat.client import join, tui
    from lanchat.discovery import browser

    found = [_record("lab", "203.0.113.5", 7400), _record("attic", "203.0.113.6", 7500)]

    async def announced(*_: Any, **__: Any) -> list[Any]:
        return found

    answers = iter(["9", "  ", "lab"])
    asked: list[str] = []

    def read(prompt: str) -> str:
        asked.append(prompt)
        return next(answers)

    monkeypatch.setattr(browser, "browse", announced)
    shown = io.StringIO()
    assert tui.choose_server_by_line(found, read=read, write=shown) is None  # "9" is refused; blank: cancel
    assert asked == ["Join which one? [1-2, q to cancel] "] * 2
    listing = shown.getvalue().splitlines()
    assert listing[0] == "Several lanchat servers answered:" and "attic" in listing[1] and "lab" in listing[2]
    assert listing[3] == "a number from 1 to 2, a name, or q"
    monkeypatch.setattr("builtins.input", read)
    target = join.find_target(join.JoinConfig(None, "x"), interactive=False, by_line=True)
    assert (target.host, target.port, target.name) == ("203.0.113.5", 7400, "lab")

    def interrupted(prompt: str) -> str:
        raise KeyboardInterrupt  # Ctrl-C: at once (the chooser runs outside the event loop)

    monkeypatch.setattr("builtins.input", interrupted)
    with pytest.raises(join.Unresolved, match="no server chosen"):
        join.find_target(join.JoinConfig(None, "x"), interactive=False, by_line=True)
    with pytest.raises(join.Unresolved) as err:  # not a terminal at all: name one (exit 5), as before
        asyncio.run(join.resolve(join.JoinConfig(None, "x"), interactive=False))
    assert err.value.exit_code == 5


def test_a_look_for_a_server_that_moved_says_nothing_into_the_chat(caplog: pytest.LogCaptureFixture) -> None:
    """A review: each look while reconnecting printed discovery's warnings (an interface without an address,
    which the outage itself often is) between the chat lines, every few seconds for 5 minutes."""
    import asyncio
    import logging

    from lanchat.client import join
    from lanchat.config import DiscoveryConfig

    config = join.JoinConfig(None, "x", discovery=DiscoveryConfig(interface=("nosuch0",)))
    relocate = join.relocator(config, join.Target("192.0.2.1", 7272, "lab", "f" * 32))
    assert relocate is not None and join.relocator(config, join.Target("192.0.2.1", 7272)) is None
    with caplog.at_level(logging.DEBUG, logger="lanchat.discovery"):

        async def look() -> tuple[str, int] | None:
            return await relocate()

        assert asyncio.run(look()) is None
        assert logging.getLogger("lanchat.discovery").level == logging.DEBUG  # (the logger left as it was)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_login_name_the_locale_cannot_decode_is_taken_as_none(monkeypatch: pytest.MonkeyPatch) -> None:
    """LOGNAME with a Latin-1 byte in a UTF-8 locale: the default nick crashed the hello with a traceback (a
    review); it is the nick used without a login name."""
    import getpass

    import lanchat.cli

    monkeypatch.setattr(getpass, "getuser", lambda: "ab\udcff")
    assert lanchat.cli._login_name() == "guest"
    monkeypatch.setattr(getpass, "getuser", lambda: "anna")
    assert lanchat.cli._login_name() == "anna"
