"""Every port, interval and cap lanchat uses, with its unit and the reason for its value.

Options in config.py default to these. What only one module uses is named there (the supervisor's timings
in server/main.py, the beacon's wire sizes in protocol/beacon.py).
"""

from typing import Final

PROTOCOL_VERSION: Final = 1

# --- network -----------------------------------------------------------------------------------------------
DEFAULT_PORT: Final = 7272  # TCP chat port; also the default UDP discovery port
MAX_WORKERS: Final = 64  # worker processes: --workers 0 (one per CPU) stops here on a larger host
DEFAULT_DISCOVERY_PORT: Final = 7272
DEFAULT_ROOM: Final = "lobby"

# --- per-connection limits (worker) ------------------------------------------------------------------------
MAX_FRAME: Final = 16 * 1024  # bytes per line: a chat line is short; bounds what one peer makes us buffer
MAX_FRAME_LIMIT: Final = 1024 * 1024  # the highest --max-frame: one line, escaped, stays far under a control frame
MAX_TEXT: Final = 4000  # characters of message text, well under MAX_FRAME once JSON-escaped
RATE: Final = 20.0  # messages per second per connection (token bucket refill)
BURST: Final = 50  # token bucket size: a pasted block of 50 lines goes out at once
# Lines of the rate a listing (history, who, rooms) costs: a small request for up to HISTORY_REPLY_BYTES read
# or built and sent back (at the default rate two a second, five at once): else a few connections asking for
# pages of long lines at the line rate held the main process for seconds and its queues grew without bound.
LISTING_COST: Final = 10
SENDQ: Final = 1024 * 1024  # bytes queued for one client before it is dropped as too slow
HANDSHAKE_TIMEOUT: Final = 10.0  # seconds from connect to a completed hello
PING_INTERVAL: Final = 30.0  # seconds of silence from a client before the server pings it
IDLE_TIMEOUT: Final = 90.0  # seconds of silence (no byte at all) before the server drops a client
CLOSE_TIMEOUT: Final = 5.0  # seconds a closing connection may take to read its last bytes before it is cut

# --- server-wide limits (main process) ---------------------------------------------------------------------
MAX_CLIENTS: Final = 10_000  # connections across all workers
MAX_PER_IP: Final = 32  # connections from one address across all workers (loopback exempt by default)
# New connections a second from one address, after MAX_PER_IP (--max-per-ip) at once: a connection's rate
# limit starts full, so connecting again and again must not be a way around it (loopback exempt likewise)
CONNECT_RATE: Final = 2.0
MAX_ROOMS_PER_SESSION: Final = 50  # rooms one session may be in: bounds the fan-in of a quit event
MAX_ROOMS: Final = 10_000  # rooms on the server: bounds the hub's directory
# Rooms made from one address (as --max-per-ip counts addresses) and in use: else 4 hosts, each with its
# 64 live and held sessions of 50 rooms, could take all MAX_ROOMS and nobody could make one.
MAX_ROOMS_PER_ADDRESS: Final = 500

# --- names -------------------------------------------------------------------------------------------------
NICK_MAX: Final = 24  # characters
ROOM_MAX: Final = 32  # characters
TOPIC_MAX: Final = 300  # characters
REASON_MAX: Final = 200  # characters of a part/quit reason

# --- sessions and history ----------------------------------------------------------------------------------
RESUME_GRACE: Final = 60.0  # seconds a dropped session keeps its nick and rooms for a resume
# After the grace, a session's token is remembered with the highest message id it posted, so that a client
# resending its unacknowledged posts into a new session (a laptop that slept) does not post them twice.
# A session's most recent refused message ids, and apart its most recent refused change ids, kept so that a
# resend of a message (its refusal lost with the link, so it was in flight at a drop: a handful) is refused
# again, not acked as posted, and a resume's welcome says which changes were not done. 64 ints of each: ~8 KB
# in memory at most, 0.5-1.1 KB in a welcome (by the ids' digits).
REFUSED_IDS_KEPT: Final = 64
PARTED_KEPT: Final = 16  # rooms a session left whose events a resume still replays, up to its part (newest kept)
EXPIRED_TOKENS_MAX: Final = 10_000  # tokens remembered (about 200 bytes each), the oldest forgotten first
# ... and of sessions from one address (as --max-per-ip counts it) at most, its oldest forgotten first: one host
# ending a session after another must not push out the tokens (and private messages) of others away.
EXPIRED_TOKENS_PER_ADDRESS: Final = 500
EXPIRED_TOKEN_TTL: Final = 24 * 3600.0  # seconds a token is remembered: a night's sleep
HISTORY_LIMIT: Final = 10_000  # events kept per room (and per private conversation) in SQLite
HISTORY_ON_JOIN: Final = 50  # events replayed (marked as history) when a client joins a room
HISTORY_PAGE_MAX: Final = 500  # events one history request may return
RECENT_EVENTS: Final = 50_000  # events the hub keeps in memory to serve resumes without the disk
# ... and their bytes at most: 50,000 lines of a few hundred bytes are ~15 MB, of the largest (MAX_FRAME) 800 MB.
RECENT_BYTES: Final = 32 * 1024 * 1024
HISTORY_REPLY_BYTES: Final = 256 * 1024  # of events in one history reply (or half --sendq, if less); more: true
ROOM_TAIL_BYTES: Final = 64 * 1024  # of a room's newest events kept for joiners (HISTORY_ON_JOIN of them at most)
PENDING_WRITES_MAX: Final = 100_000  # rows held in memory while the disk fails, then the oldest are dropped
PENDING_WRITES_BYTES: Final = 64 * 1024 * 1024  # ... and their lines' characters at most (100,000 big lines: 1.6 GB)
DB_RETRY_INTERVAL: Final = 2.0  # seconds between write attempts while the disk is failing
DB_CHECK_RETRY_MAX: Final = 60.0  # seconds: the wait after integrity checks that I/O errors ended, doubled to this

# --- supervision -------------------------------------------------------------------------------------------
SHUTDOWN_GRACE: Final = 3.0  # seconds workers get to flush and close on SIGTERM (the whole stop is < 5 s)
SHUTDOWN_LINGER: Final = 2.0  # of those, seconds a worker waits for its clients to take their last bytes
HEARTBEAT_INTERVAL: Final = 0.5  # seconds between the hub's pings to each worker
WORKER_TIMEOUT: Final = 5.0  # seconds without a heartbeat reply before a worker is killed and replaced
WORKER_BOOT_TIMEOUT: Final = 10.0  # seconds a new worker has to report ready
RESTART_BACKOFF_MAX: Final = 1.0  # seconds: cap of the delay before respawning a crashed worker
ACCEPT_BACKOFF: Final = 0.1  # seconds the accept loop pauses on EMFILE/ENFILE/ENOBUFS/ENOMEM (as trio)
LOG_REPEAT_INTERVAL: Final = 10.0  # seconds: a warning that repeats (accept out of descriptors, a worker that
# cannot take connections) is logged once per interval, with how many were held back
PIPE_HIGH_WATER: Final = 8 * 1024 * 1024  # queued to a worker: the hub logs it and refuses its clients' listings
# Bytes a worker queues for the hub (beyond the socketpair's own buffers) before it stops reading its
# clients until the hub catches up: TCP then holds them back, and a stalled hub costs no worker memory.
HUB_WRITE_HIGH_WATER: Final = 1024 * 1024

# --- fan-out pacing (worker) -------------------------------------------------------------------------------
# A busy fan-out round (one send() per member with output) that took t seconds is followed by the next no
# sooner than FANOUT_PAUSE * t * (workers per core left to them) later, so lines that arrive meanwhile share
# its send() calls. Measured on 2 cores, 1,000 members and 50 senders: p99 half, server CPU -10 %; neutral
# for small rooms; the workers-per-core factor took 2 workers' CPU per delivery from 1.34x to 1.18x that of
# 1 (worker.workers_per_core; docs/benchmarks.md, "Levers").
FANOUT_PAUSE: Final = 1.0
# At most this many workers per core count for the pause (measured: 2 and 4 workers on 2 cores). It bounds
# a worker that holds most of a busy room alone, which would otherwise pause as if it shared the room.
FANOUT_SHARE_MAX: Final = 4
FANOUT_PAUSE_MIN: Final = 0.001  # seconds: shorter pauses are skipped (epoll's timer would round them to 1 ms)
# Lines per client a round must carry to be followed by a pause: about one means the room keeps up, and
# a pause would only add latency (50 msg/s to 1,000 members, 1 worker: p99 32 -> 18 ms; busy rooms unchanged).
FANOUT_THICK: Final = 2

# --- client ------------------------------------------------------------------------------------------------
RECONNECT_MIN: Final = 0.2  # seconds: first reconnect delay (then doubled, with jitter)
RECONNECT_MAX: Final = 5.0  # seconds: cap of the reconnect delay
RECONNECT_GIVE_UP: Final = 300.0  # seconds of failed reconnects before the client gives up
# seconds a connection must last for the next drop's backoff to start over at RECONNECT_MIN: a server that
# drops every connection soon after its welcome is otherwise asked again about 5 times a second, for ever
RECONNECT_STABLE: Final = 5.0
CONNECT_TIMEOUT: Final = 5.0  # seconds for one TCP connect + hello
GOODBYE_TIMEOUT: Final = 2.0  # seconds a client quitting while it reconnects spends to say goodbye
# Seconds a quitting client waits for the server to read its quit, which queues behind what it sent before
# (a server limiting the connection's rate reads 20 lines a second). Then it resets the connection and says
# goodbye on a new one (GOODBYE_TIMEOUT), its unacknowledged lines dropped: a quit must not wait on a paste.
GOODBYE_LINGER: Final = 1.0
CLIENT_PING_INTERVAL: Final = 15.0  # seconds of server silence before the client pings
CLIENT_PING_TIMEOUT: Final = 10.0  # seconds more without any byte before the client reconnects

# --- large rooms -----------------------------------------------------------------------------------------
LARGE_ROOM: Final = 1000  # members: above this a room's joins, parts and quits are not announced to it
# (as Twitch does): each announcement costs O(members), so filling a room would cost O(members²)
ROOM_INFO_NICKS: Final = 500  # nicks listed in the reply to a join (with the full count); /who lists all
