"""ChatClient.close(): the goodbye reaches the server however the connection stands (docs/protocol.md, the
`quit` row; docs/client.md, Signals). Scripted servers on loopback play the moments a real one cannot be
made to hold still (a welcome that never comes, a reconnect's hello in flight); a real server the rest."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest
from support import Client, MakeServer

from lanchat import const
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
