"""The classic thread-per-client Python group-chat server, as a baseline for scripts/bench.py.

Owned by the benchmark (scripts/bench.py, docs/benchmarks.md); it is not part of lanchat and not meant to
be used. It is the well-known tutorial server, kept faithful on purpose: one thread per client, one shared
list of client sockets, and for every ``recv`` the bytes go to every client with a plain
``for c in clients: c.send(message)`` loop on blocking sockets. Whatever ``recv`` returned is relayed as
one unit (several lines coalesced, or part of one): there is no framing, no parsing, no history, no
sequencing, no rate limit, and one slow reader blocks the relay of the thread that writes to it.

What differs from the tutorial, and why (so that it can be measured at all):

- clients send newline-terminated lines, so that receivers can count messages (the server is unchanged:
  it never looks at the bytes);
- the ``<address>`` prefix the tutorial adds to each relayed chunk is left out, so every target carries the
  same bytes per message;
- ``sendall`` instead of ``send``: on a blocking Linux TCP socket ``send`` already writes everything (it
  returns short only on a signal), ``sendall`` just makes that explicit;
- the thread exits when its client closes (the tutorial spins on ``continue``), the listen backlog is
  1024 (the tutorial's 100 makes the kernel drop SYNs when thousands connect at once), and it stops on
  SIGTERM / SIGINT;
- the sender gets its own message back like everyone else (``for c in clients``), which matches the
  chat servers in the comparison (lanchat echoes a post to its sender too).

Usage: ``python scripts/baseline_threaded.py --port 7300`` (always 127.0.0.1 unless ``--host`` says
otherwise; the benchmark starts it on loopback only).
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys
import threading
from types import FrameType

clients: list[socket.socket] = []


def remove(conn: socket.socket) -> None:
    if conn in clients:
        clients.remove(conn)


def broadcast(message: bytes) -> None:
    for c in clients:
        try:
            c.sendall(message)
        except OSError:
            c.close()
            remove(c)


def client_thread(conn: socket.socket) -> None:
    try:
        conn.sendall(b"Welcome to this chatroom!\n")
    except OSError:
        remove(conn)
        return
    while True:
        try:
            message = conn.recv(2048)
        except OSError:
            message = b""
        if message:
            broadcast(message)
        else:
            remove(conn)
            conn.close()
            return


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="thread-per-client group chat (benchmark baseline)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((args.host, args.port))
    server.listen(1024)

    def stop(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"threaded baseline listening on {args.host}:{args.port}", file=sys.stderr, flush=True)
    try:
        while True:
            conn, _addr = server.accept()
            clients.append(conn)
            threading.Thread(target=client_thread, args=(conn,), daemon=True).start()
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
