"""`lanchat join`: find the server (address, name or discovery), then run the terminal UI when stdin
and stdout are a terminal, or the line-oriented piped mode otherwise."""

from __future__ import annotations

import asyncio
import ipaddress
import sys
from dataclasses import dataclass, field
from typing import Final

from lanchat import const
from lanchat.client.connection import EXIT_NONE_FOUND, EXIT_SEVERAL, EXIT_UNREACHABLE, EXIT_USAGE, parse_address
from lanchat.config import DiscoveryConfig
from lanchat.protocol.plain import count_of


@dataclass(frozen=True, slots=True)
class JoinConfig:
    address: str | None
    nick: str
    room: str = const.DEFAULT_ROOM
    json: bool = False
    discovery: DiscoveryConfig = field(default_factory=DiscoveryConfig)
    timeout: float = 1.0


@dataclass(frozen=True, slots=True)
class Target:
    host: str
    port: int
    name: str = ""


class Unresolved(Exception):
    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _looks_like_host(address: str) -> bool:
    """An address to connect to at once (parsed, or refused with exit code 2): an IP address, HOST:PORT,
    [V6]:PORT or localhost. Anything else is a name: one with a dot is a host name if the resolver knows
    it (a LAN host announcing that name must not take a connection meant for a DNS name), else a server
    name to discover (`v1.2 test`; the default name, the host's, may be fully qualified); one without is
    looked for by discovery first, then by the resolver. A server found by its name is joined at the
    port it announces."""
    if ":" in address or address == "localhost":
        return True
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True


async def resolve(config: JoinConfig, *, interactive: bool) -> Target:
    """Address -> Target; a server name or no address -> discovery (one found: it; several: ask or fail)."""
    if config.address and _looks_like_host(config.address):
        try:
            host, port = parse_address(config.address)
        except ValueError as exc:
            raise Unresolved(
                f"bad address {config.address!r} ({exc}): use HOST, HOST:PORT or a server name", EXIT_USAGE
            ) from None
        return Target(host, port)
    dotted = config.address is not None and "." in config.address
    if config.address and dotted and await _resolves(config.address):
        return Target(config.address, const.DEFAULT_PORT)
    from lanchat.discovery.browser import browse
    from lanchat.discovery.cli import interface_problem

    problem = interface_problem(config.discovery)  # a typo: say so now, not "no server found" later
    if problem:
        raise Unresolved(problem, EXIT_USAGE)
    found = await browse(config.discovery, timeout=config.timeout)
    if config.address:
        named = [s for s in found if s.name.casefold() == config.address.casefold()]
        if not named:  # maybe a host name after all; if not, say what was tried ("cannot reach x: Name or
            if dotted or not await _resolves(config.address):  # service not known" did not say discovery was)
                others = ", ".join(sorted(s.name for s in found)) or "none"
                raise Unresolved(
                    f"no server named {config.address!r} answered discovery (servers found: {others}), and "
                    f"{config.address!r} is not a host name either (try `lanchat discover`)",
                    EXIT_UNREACHABLE,
                )
            return Target(config.address, const.DEFAULT_PORT)
        found = named
    if not found:
        raise Unresolved(
            "no lanchat server found on the LAN (try `lanchat discover`, --interface, or give HOST[:PORT])",
            EXIT_NONE_FOUND,
        )
    if len(found) == 1:
        return Target(found[0].host, found[0].port, found[0].name)
    if interactive:
        from lanchat.client.tui import choose_server

        chosen = await choose_server(found)
        if chosen is None:
            raise Unresolved("no server chosen", 1)
        return Target(chosen.host, chosen.port, chosen.name)
    width = max(len(s.name) for s in found)
    listing = "\n".join(f"  {s.name:<{width}}  {s.host}:{s.port}  ({count_of(s.users, 'user')})" for s in found)
    if config.address:  # they share the name: only the address tells them apart
        raise Unresolved(f"several servers are called {config.address!r}; give HOST:PORT:\n{listing}", EXIT_SEVERAL)
    raise Unresolved(f"several servers found; give a name or HOST:PORT:\n{listing}", EXIT_SEVERAL)


RESOLVE_TIMEOUT: Final = 3.0  # seconds for the system resolver to answer for a NAME discovery did not find


async def _resolves(name: str) -> bool:
    """Is ``name`` a host name the system can resolve?"""
    try:
        await asyncio.wait_for(asyncio.get_running_loop().getaddrinfo(name, const.DEFAULT_PORT), RESOLVE_TIMEOUT)
    except (OSError, TimeoutError, UnicodeError):
        return False
    return True


def run_join(config: JoinConfig) -> int:
    interactive = sys.stdin.isatty() and sys.stdout.isatty() and not config.json
    try:
        target = asyncio.run(resolve(config, interactive=interactive))
    except Unresolved as exc:
        print(f"lanchat: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        print(f"lanchat: discovery failed: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    if interactive:
        from lanchat.client.tui import run_tui

        return run_tui(target.host, target.port, config.nick, config.room, server_name=target.name)
    from lanchat.client.piped import run_piped

    return asyncio.run(run_piped(target.host, target.port, config.nick, config.room, json_output=config.json))
