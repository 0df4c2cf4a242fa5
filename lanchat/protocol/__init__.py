"""The wire protocol, sans-IO: bytes in, events out, bytes out. No socket, clock, os or logging import here.

- framing: JSON Lines with a maximum frame size
- messages: client requests (validated dataclasses) and server frames (encoders)
- server_conn: one client connection as the server sees it (handshake, modes, rate limit)
- client_conn: the client's side (sequence tracking, acks, outbox, resume state)
- plain: the line-based text mode for nc/telnet users
- control: frames between the main process and the workers
- beacon: the UDP discovery datagrams
"""
