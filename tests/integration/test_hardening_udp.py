"""Hardening of discovery on a real `lanchat serve` (issue 7): 100,000 random datagrams at its UDP port.

test_discovery.py already sends 10,000 to an in-process announcer and browser, checks the reply-size rule
probe size by probe size and the rate limits; test_netns_lan.py checks that an off-subnet source gets no
answer (that needs a second subnet, which loopback cannot give). Here the whole server takes the flood:
it stays alive and serving, its memory stays flat, and no probe among the garbage is answered with more
bytes than it carried.

Network safety: the server runs with ``--interface lo --discovery-port P`` (P a free port); every datagram
is sent from and to 127.0.0.0/8 addresses.
"""

from __future__ import annotations

import os
import random
import socket
import time

from discovery_support import free_udp_port
from support import Client, MakeServer
from test_hardening import MiB, peak_rss

from lanchat.protocol import beacon as b

DATAGRAMS = 100_000
BATCH = 500  # then a barrier probe: the server has read everything before it (one socket, FIFO)
SID = "0123456789abcdef0123456789abcdef"


def garbage(rng: random.Random, probes: dict[bytes, int]) -> bytes:
    """One hostile, broken or (rarely) valid datagram; valid probes are remembered with their size."""
    kind = rng.randrange(10)
    if kind == 0:
        return rng.randbytes(rng.randrange(0, 1500))
    if kind == 1:  # our magic, any version and kind, any body
        return b.MAGIC + bytes([rng.choice([0, 1, 2, 255]), rng.randrange(256)]) + rng.randbytes(rng.randrange(120))
    if kind == 2:  # a probe with non-zero padding or a wrong length
        data = bytearray(b.encode(b.Probe(rng.randbytes(8), size=rng.randrange(b.PROBE_MIN_SIZE + 1, 300))))
        data[rng.randrange(b.PROBE_MIN_SIZE, len(data))] = rng.randrange(1, 256)
        return bytes(data)
    if kind == 3:  # oversized: dropped unread
        return b.MAGIC + bytes([1, 2]) + bytes(rng.randrange(b.MAX_DATAGRAM - 5, 2000))
    if kind == 4:  # a beacon, a reply or a goodbye in the server's own name, mutated
        choices: list[b.Message] = [
            b.Beacon(SID, "127.0.0.1", 7272, 1, 1000, 1, 1, 1, 0.0, "fake"),
            b.Reply(SID, "127.0.0.1", 7272, 1, 1000, 1, 1, 1, 0.0, "fake", rng.randbytes(8)),
            b.Goodbye(SID, "127.0.0.1", 7272),
        ]
        msg = rng.choice(choices)
        data = bytearray(b.encode(msg))
        for _ in range(rng.randrange(0, 3)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return bytes(data)
    if kind == 5:  # a truncated probe
        return b.encode(b.Probe(rng.randbytes(8)))[: rng.randrange(b.PROBE_MIN_SIZE)]
    if kind == 6 and rng.randrange(100) == 0:  # a valid probe of any size (1 in 1000: within the rate limits)
        nonce = rng.randbytes(8)
        size = rng.randrange(b.PROBE_MIN_SIZE, b.MAX_DATAGRAM + 1)
        probes[nonce] = size
        return b.encode(b.Probe(nonce, size=size))
    return rng.randbytes(rng.randrange(6, 60))


def drain(sock: socket.socket, into: list[bytes]) -> None:
    while True:
        try:
            into.append(sock.recv(4096))
        except BlockingIOError:
            return


def test_a_hundred_thousand_random_datagrams_leave_the_server_alive_flat_and_never_amplifying(
    make_server: MakeServer,
) -> None:
    port = free_udp_port()
    server = make_server("--interface", "lo", "--discovery-port", str(port), discovery=True, workers=1)
    assert server.proc is not None
    main = server.proc.pid
    rng = random.Random(7_2_7_2)
    probes: dict[bytes, int] = {}
    replies: list[bytes] = []
    senders: list[socket.socket] = []
    barriers: list[socket.socket] = []
    try:
        for i in range(64):  # 127.0.1.1 ... 127.0.1.64: a few probes each, within every source's burst of 10
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((f"127.0.1.{i + 1}", 0))
            s.settimeout(0.3)
            barriers.append(s)
        for i in range(16):  # 127.0.0.2 ... 127.0.0.17: loopback sources, each with its own reply budget
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((f"127.0.0.{i + 2}", 0))
            s.setblocking(False)
            senders.append(s)

        sent = 0

        def sync() -> int:
            """Probe until answered: returns the attempts it took, 0 if none of 5 was (the server is gone).

            Its reply means the server has read the batch before it. The flood may overflow the server's
            socket buffer and drop a probe: then the next one, from the next source, 1 s later.
            """
            nonlocal sent
            for attempt in range(1, 6):
                barrier = barriers[sent % len(barriers)]
                sent += 1
                nonce = os.urandom(8)
                probes[nonce] = b.PROBE_SIZE
                barrier.sendto(b.encode(b.Probe(nonce)), ("127.0.0.1", port))
                deadline = time.monotonic() + 1.0  # answered at once unless dropped: no cost when it is
                while time.monotonic() < deadline:
                    try:
                        data = barrier.recv(4096)
                    except TimeoutError:
                        break
                    replies.append(data)
                    reply = b.decode(data)
                    if isinstance(reply, b.Reply) and reply.nonce == nonce:
                        return attempt
            return 0

        assert sync() == 1, "the server does not answer probes"
        before = peak_rss(main)
        attempts: list[int] = []
        started = time.monotonic()
        for first in range(0, DATAGRAMS, BATCH):
            for i in range(first, first + BATCH):
                senders[i % len(senders)].sendto(garbage(rng, probes), ("127.0.0.1", port))
            for s in senders:
                drain(s, replies)
            attempts.append(sync())
        elapsed = time.monotonic() - started
        for s in senders + barriers:
            s.setblocking(False)
            drain(s, replies)
        grown = peak_rss(main) - before
        assert server.proc.poll() is None, "the server died"
        assert grown < 8 * MiB, f"main process peak RSS grew by {grown / MiB:.1f} MiB"
        assert 0 not in attempts, f"{attempts.count(0)} batches after which 5 probes went unanswered"
        for data in replies:
            reply = b.decode(data)
            assert isinstance(reply, b.Reply) and reply.nonce in probes, reply
            assert len(data) <= probes[reply.nonce], f"a {probes[reply.nonce]}-byte probe got {len(data)} bytes"
        assert len(replies) > len(attempts)  # some of the valid probes among the garbage were answered too
        with Client(server.port, "still") as still:  # chat is unaffected
            assert still.welcome["nick"] == "still"
        assert elapsed < 60
    finally:
        for s in barriers + senders:
            s.close()
