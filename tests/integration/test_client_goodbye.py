"""ChatClient.close(): the goodbye reaches the server however the connection stands (docs/protocol.md, the
`quit` row; docs/client.md, Signals). Scripted servers on loopback play the moments a real one cannot be
made to hold still (a welcome that never comes, a reconnect's hello in flight); a real server the rest."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest
from support import Client, MakeServer

from lanchat import const
from lanchat.client import connection
from lanchat.client.connection import ChatClient
from lanchat.errors import ConnectError
from lanchat.protocol import messages as m

T = TypeVar("T")
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def run(coro: Awaitable[T], timeout: float = 20.0) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


def welcome(*, resumed: bool) -> bytes:
    frame = {"type": "welcome", "nick": "ann", "rooms": ["lobby"], "token": "t0k", "resumed": resumed, "seq": 0}
    return json.dumps(frame).encode() + b"\n"


async def serve(handler: Handler) -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def test_close_while_the_first_welcome_is_awaited_says_goodbye_and_ends_the_connect() -> None:
    """A SIGTERM while connecting (piped mode listens for it from the start): close() used to read beside
    connect() (a RuntimeError), and the client waited out the connect timeout."""
    got: list[bytes] = []
    hello, done = asyncio.Event(), asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():  # never a welcome
            got.append(line)
            hello.set()
        done.set()  # EOF: the client closed
        writer.close()

    async def main() -> None:
        server, port = await serve(silent)
        client = ChatClient("127.0.0.1", port, "ann", ["lobby"])
        connecting = asyncio.create_task(client.connect())
        await hello.wait()
        await client.close()
        await done.wait()
        with pytest.raises(ConnectError):
            await connecting
        assert [json.loads(x)["type"] for x in got] == ["hello", "quit"]
        server.close()

    run(main())


def test_close_during_a_reconnects_hello_says_goodbye_on_that_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    """The quit goes out behind the hello: the client must read that connection to its end, not give up
    on it and open a third one, and must not report "connected" on its way out."""
    monkeypatch.setattr(const, "RECONNECT_MIN", 0.01)
    conns: list[list[str]] = []
    resumed_hello = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        kinds: list[str] = []
        conns.append(kinds)
        first = len(conns) == 1
        while line := await reader.readline():
            kinds.append(json.loads(line)["type"])
            if first and kinds[-1] == "hello":
                writer.write(welcome(resumed=False))
                break  # then drop it: the client reconnects
            if not first and kinds[-1] == "hello":
                resumed_hello.set()
            if not first and kinds[-1] == "quit":  # the welcome comes only now: close() came meanwhile
                writer.write(welcome(resumed=True))
                break
        await writer.drain()
        writer.close()

    async def main() -> None:
        server, port = await serve(handler)
        statuses: list[str] = []
        client = ChatClient("127.0.0.1", port, "ann", ["lobby"], on_status=statuses.append)
        await client.connect()
        await resumed_hello.wait()
        await client.close()
        server.close()
        assert conns == [["hello"], ["hello", "quit"]]  # no goodbye from afar: this one was read to its end
        assert statuses == ["connected", "reconnecting", "closed"]
        assert not client.goodbye_lost

    run(main())


def test_a_quit_read_in_time_needs_no_second_connection(
    make_server: MakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = make_server(workers=1)
    afar: list[bytes] = []

    async def spy(self: ChatClient, quit_line: bytes) -> bool:
        afar.append(quit_line)
        return True

    monkeypatch.setattr(ChatClient, "_goodbye_from_afar", spy)

    async def main() -> None:
        client = ChatClient("127.0.0.1", server.port, "ann", ["lobby"])
        await client.connect()
        client.send(m.Msg("lobby", "last words"))
        await client.close("done")

    with Client(server.port, "watcher") as watcher:
        run(main())
        quit_ = watcher.expect(lambda f: f.get("type") == "quit" and f.get("nick") == "ann")
        assert quit_["reason"] == "done"
        assert [f["text"] for f in watcher.seen if f.get("type") == "msg"] == ["last words"]
    assert afar == []


def test_a_quit_behind_a_backlog_the_server_cannot_read_in_time_is_said_anew(make_server: MakeServer) -> None:
    """Megabytes queued behind a 2-lines-a-second rate limit: the quit cannot be read within
    GOODBYE_LINGER; the client resets that connection and says goodbye on a new one (the old close left the
    socket to be reset at exit, the quit with it, and the nick held for --resume-grace)."""
    server = make_server("--rate", "2", "--burst", "2", workers=1)

    async def main() -> None:
        client = ChatClient("127.0.0.1", server.port, "ann", ["lobby"])
        await client.connect()
        for i in range(3000):
            client.send(m.Msg("lobby", f"{i} " + "x" * 1500))
        await client.close()
        assert not client.goodbye_lost
        assert client.state.unacked > 2900  # dropped, as documented for a quit that does not wait

    with Client(server.port, "watcher") as watcher:
        run(main())
        watcher.expect(lambda f: f.get("type") == "quit" and f.get("nick") == "ann")


def test_lines_queued_for_a_connection_reset_at_its_welcome_are_not_written_to_it(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The soak under load: a reconnect's welcome, then the connection reset at once (its worker killed).
    The client wrote its queued lines to it all the same, and asyncio warned `socket.send() raised
    exception.` on stderr from the fifth on: stray lines among the chat's. Nothing is lost: they go
    on the next connection."""
    monkeypatch.setattr(const, "RECONNECT_MIN", 0.01)
    drop, queued, resent = asyncio.Event(), asyncio.Event(), asyncio.Event()
    conns: list[list[str]] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        kinds: list[str] = []
        conns.append(kinds)
        n = len(conns)
        kinds.append(json.loads(await reader.readline())["type"])
        if n == 2:  # the reconnect: its welcome, and a reset right behind it
            await queued.wait()
            writer.write(welcome(resumed=True))
            await writer.drain()
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return
        writer.write(welcome(resumed=n > 1))
        await writer.drain()
        if n == 1:
            await drop.wait()
        while n > 1 and (line := await reader.readline()):  # the next: what the client sends now
            kinds.append(json.loads(line)["type"])
            if kinds.count("msg") == 12:
                resent.set()
            if kinds[-1] == "quit":
                break
        writer.close()

    async def main() -> None:
        server, port = await serve(handler)
        offline = asyncio.Event()
        client = ChatClient(
            "127.0.0.1", port, "ann", ["lobby"], on_status=lambda s: offline.set() if s == "reconnecting" else None
        )
        await client.connect()
        drop.set()
        await offline.wait()
        for i in range(12):
            client.send(m.Msg("lobby", f"typed offline {i}"))
        queued.set()
        await resent.wait()
        await client.close()
        server.close()
        assert conns[2] == ["hello"] + ["msg"] * 12 + ["quit"]  # all of it, on the connection after the reset

    with caplog.at_level(logging.WARNING, logger="asyncio"):
        run(main())
    assert "socket.send() raised exception" not in caplog.text


def test_a_nick_the_server_refuses_on_a_reconnect_ends_the_client(monkeypatch: pytest.MonkeyPatch) -> None:
    """A review: a nick an upgraded server refuses (stricter rules) got bad_nick on the reconnect, and the client
    sent nick_, nick_2, ... (each as bad) for good: 269 hellos in 10 s. It ends, saying why; a nick held by
    someone else still gets the fallbacks."""
    monkeypatch.setattr(const, "RECONNECT_MIN", 0.01)
    hellos: list[str] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            frame = json.loads(line)
            if frame["type"] != "hello":
                continue
            hellos.append(frame["nick"])
            if len(hellos) == 1:
                writer.write(welcome(resumed=False))  # then dropped: the client reconnects
                break
            error = m.error_frame(m.Err.BAD_NICK, "nick may contain only letters, digits and _-.[]{}|^`")
            writer.write(m.encode(error))
        await writer.drain()
        writer.close()

    async def main() -> None:
        server, port = await serve(handler)
        client = ChatClient("127.0.0.1", port, "ann", ["lobby"])
        await client.connect()
        await client.wait_closed()
        server.close()
        assert hellos == ["ann", "ann"]  # not ann_, ann_2, ...
        assert "nick may contain only" in client.lost_reason and "choose another with --nick" in client.lost_reason
        assert client.lost_exit == 4  # as for a nick refused at the start (it was 7, "lost": a later review)

    run(main())


def test_each_reconnect_asks_for_the_users_nick_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """A review: after MAX_NICK_FALLBACKS refusals the client asked for the last fallback at every later
    reconnect, and never got its own nick back once it was free."""
    monkeypatch.setattr(const, "RECONNECT_MIN", 0.01)
    monkeypatch.setattr(connection, "MAX_NICK_FALLBACKS", 2)
    hellos: list[list[str]] = []
    welcomed = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tries: list[str] = []
        hellos.append(tries)
        while line := await reader.readline():
            frame = json.loads(line)
            if frame["type"] != "hello":
                continue
            tries.append(frame["nick"])
            if len(hellos) == 1 or (len(hellos) == 3 and frame["nick"] == "ann"):
                writer.write(welcome(resumed=False).replace(b'"ann"', json.dumps(frame["nick"]).encode()))
                if len(hellos) == 3:
                    welcomed.set()
                    continue
                break  # the first: dropped, the client reconnects
            writer.write(m.encode(m.error_frame(m.Err.NICK_TAKEN, f"nick {frame['nick']} is taken")))
            if len(tries) > 2:  # the client gave up on this connection after its fallbacks: close it
                break
        await writer.drain()
        writer.close()

    async def main() -> None:
        server, port = await serve(handler)
        client = ChatClient("127.0.0.1", port, "ann", ["lobby"])
        await client.connect()
        await welcomed.wait()
        await client.close()
        server.close()
        assert hellos[1] == ["ann", "ann_", "ann_2"]  # the fallbacks, two at most
        assert hellos[2][0] == "ann"  # the next try: the user's nick again, free now

    run(main())
