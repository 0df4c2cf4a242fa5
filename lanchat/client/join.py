"""`lanchat join`: find the server (address, name or discovery), then run the terminal UI when stdin
and stdout are a terminal, or the line-oriented piped mode otherwise."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from lanchat import const
from lanchat.client.connection import (
    EXIT_NONE_FOUND,
    EXIT_SEVERAL,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    Relocator,
)
from lanchat.config import DiscoveryConfig, check_host, parse_address
from lanchat.protocol.plain import count_of

if TYPE_CHECKING:
    from lanchat.discovery.browser import ServerRecord


@dataclass(frozen=True, slots=True)
class JoinConfig:
    address: str | None
    nick: str
    room: str = ""  # --room; "": not given (lobby, or a restored session's own room)
    json: bool = False
    discovery: DiscoveryConfig = field(default_factory=DiscoveryConfig)
    timeout: float = 1.0


@dataclass(frozen=True, slots=True)
class Target:
    host: str
    port: int
    name: str = ""
    server_id: str = ""  # found by discovery: looked for by it again if it moves (see relocator)


class Unresolved(Exception):
    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class _AskByLine(Exception):
    """Several servers, to be asked about with plain lines: outside the event loop (find_target), where
    Ctrl-C interrupts ``input()`` at once (inside, asyncio only cancels the task, and input() waits on)."""

    def __init__(self, found: list[ServerRecord]) -> None:
        super().__init__("several servers")
        self.found = found


def _looks_like_host(address: str) -> bool:
    """An address to connect to at once (parsed, or refused with exit code 2): an IP address, HOST:PORT,
    [V6]:PORT or localhost. Anything else is a name (see resolve)."""
    if ":" in address or address == "localhost":
        return True
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True


async def resolve(config: JoinConfig, *, interactive: bool, by_line: bool = False) -> Target:
    """Address -> Target; a server name or no address -> discovery (one found: it; several: ask or fail).
    ``by_line``: not interactive, but a terminal that cannot move its cursor, asked with plain lines
    (see find_target).

    A name with a dot may be a host name or a server's (`v1.2 test`; the default name, the host's own,
    may be fully qualified): the resolver and discovery are asked at once. A server of that name found at
    an address the resolver gives is joined at the port it announces; else a name the resolver knows is
    a host name, joined at 7272 (a LAN host announcing that name must not take a connection meant for a
    DNS name); else a server of that name. A name without a dot is looked for by discovery, then by the
    resolver."""
    if config.address and _looks_like_host(config.address):
        try:
            host, port = parse_address(config.address)
        except ValueError as exc:
            raise Unresolved(
                f"bad address {config.address!r} ({exc}): use HOST, HOST:PORT or a server name", EXIT_USAGE
            ) from None
        return Target(host, port)
    from lanchat.discovery.browser import browse
    from lanchat.discovery.cli import interface_problem

    address = config.address
    dotted = address is not None and "." in address
    lookup = asyncio.ensure_future(_addresses(address)) if address and dotted else None  # beside discovery
    problem = interface_problem(config.discovery)  # a typo: say so now, not "no server found" later
    found: list[ServerRecord] = []
    failed: OSError | None = None
    if not problem:
        try:
            found = await browse(config.discovery, timeout=config.timeout, enough=_answered(address))
        except OSError as exc:  # no discovery socket: a name the resolver knows can still be joined
            failed = exc
    if address and lookup is not None:
        resolved = await lookup
        at_its_address = [s for s in found if _called(s, address) and s.host in resolved]
        if at_its_address:
            return _target(at_its_address[0])
        if resolved:
            return Target(address, const.DEFAULT_PORT)
    if problem:
        raise Unresolved(problem, EXIT_USAGE)
    if failed is not None:
        raise failed
    if address:
        named = [s for s in found if _called(s, address)]
        if not named:  # maybe a host name after all; if not, say what was tried ("cannot reach x: Name or
            if dotted or not await _addresses(address):  # service not known" did not say discovery was)
                others = ", ".join(sorted(s.name for s in found)) or "none"
                raise Unresolved(
                    f"no server named {address!r} answered discovery (servers found: {others}), and "
                    f"{address!r} is not a host name either (try `lanchat discover --timeout 6`: a server whose "
                    "probes a firewall drops is heard only by its beacons, every 5 s)",
                    EXIT_UNREACHABLE,
                )
            return Target(address, const.DEFAULT_PORT)
        found = named
    if not found:
        raise Unresolved(
            "no lanchat server found on the LAN (try `lanchat discover --timeout 6`, --interface, or give HOST[:PORT])",
            EXIT_NONE_FOUND,
        )
    if len(found) == 1:
        return _target(found[0])
    if by_line and not interactive:
        raise _AskByLine(found)
    if interactive:
        from lanchat.client.tui import choose_server

        chosen = await choose_server(found)
        if chosen is None:
            raise Unresolved("no server chosen", 1)
        return _target(chosen)
    width = max(len(s.name) for s in found)
    listing = "\n".join(f"  {s.name:<{width}}  {s.host}:{s.port}  ({count_of(s.users, 'user')})" for s in found)
    if address:  # they share the name: only the address tells them apart
        raise Unresolved(f"several servers are called {address!r}; give HOST:PORT:\n{listing}", EXIT_SEVERAL)
    raise Unresolved(f"several servers found; give a name or HOST:PORT:\n{listing}", EXIT_SEVERAL)


RESOLVE_TIMEOUT: Final = 3.0  # seconds for the system resolver to answer for a NAME discovery did not find


async def _addresses(name: str) -> set[str]:
    """The addresses the system's resolver gives for ``name`` (none: not a host name it knows). A server's
    name that cannot be a host name (`Lab 2`) is not asked about: the question would go to the network."""
    try:
        check_host(name)
    except ValueError:
        return set()
    try:
        infos = await asyncio.wait_for(
            asyncio.get_running_loop().getaddrinfo(name, const.DEFAULT_PORT, type=socket.SOCK_STREAM), RESOLVE_TIMEOUT
        )
    except (OSError, TimeoutError, UnicodeError):
        return set()
    return {str(info[4][0]) for info in infos}


def _target(server: ServerRecord) -> Target:
    return Target(server.host, server.port, server.name, server.server_id)


RELOCATE_TIMEOUT: Final = 1.0  # seconds a look for a server that moved lasts at most (see relocator)


def relocator(config: JoinConfig, target: Target) -> Relocator | None:
    """Where the server ``target`` was found by discovery is now, by its id: a server restarted on another
    port, or whose address DHCP changed, is followed by a client that is reconnecting (a LAN review: it
    retried the old address until it gave up). None for a server joined by its address."""
    if not target.server_id:
        return None

    def same(server: ServerRecord) -> bool:  # (and its name: a copy of its data directory has its id too)
        return server.server_id == target.server_id and server.name == target.name

    async def relocate() -> tuple[str, int] | None:
        from lanchat.discovery.browser import browse

        # Quiet: a look comes every few seconds while reconnecting fails, and what discovery has to say of
        # an interface without an address (the outage itself, often) would be printed into the chat each time.
        found = await browse(config.discovery, timeout=RELOCATE_TIMEOUT, enough=lambda s: any(map(same, s)), quiet=True)
        return next(((s.host, s.port) for s in found if same(s)), None)

    return relocate


def _answered(name: str | None) -> Callable[[list[ServerRecord]], bool] | None:
    """A search for ``name`` is done once a server of that name answered (see browse); None: no name."""
    if not name:
        return None
    return lambda found: any(_called(s, name) for s in found)


def _called(server: ServerRecord, name: str) -> bool:
    return server.name.casefold() == name.casefold()


def find_target(config: JoinConfig, *, interactive: bool, by_line: bool = False) -> Target:
    """resolve, run; several servers on a terminal that cannot move its cursor are asked about here."""
    try:
        return asyncio.run(resolve(config, interactive=interactive, by_line=by_line))
    except _AskByLine as ask:
        from lanchat.client.tui import choose_server_by_line

        chosen = choose_server_by_line(ask.found)
        if chosen is None:
            raise Unresolved("no server chosen", 1) from None
        return _target(chosen)


def run_join(config: JoinConfig) -> int:
    # A dumb terminal (Emacs's M-x shell) has no cursor control to draw the prompt and the status line
    # with: it gets the line mode, as a pipe does.
    dumb = os.environ.get("TERM", "") in ("dumb", "unknown")
    # (None: started with that descriptor closed, `<&-`: no terminal; it crashed here, a review)
    terminal = all(s is not None and s.isatty() for s in (sys.stdin, sys.stdout)) and not config.json
    interactive = terminal and not dumb
    try:
        target = find_target(config, interactive=interactive, by_line=terminal and dumb)
    except Unresolved as exc:
        print(f"lanchat: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        print(f"lanchat: discovery failed: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    if interactive:
        from lanchat.client.tui import run_tui

        return run_tui(
            target.host, target.port, config.nick, config.room, server_name=target.name,
            relocate=relocator(config, target), server_id=target.server_id,
        )  # fmt: skip
    from lanchat.client.piped import run_piped

    return asyncio.run(
        run_piped(
            target.host,
            target.port,
            config.nick,
            config.room or const.DEFAULT_ROOM,
            json_output=config.json,
            relocate=relocator(config, target),
        )
    )
