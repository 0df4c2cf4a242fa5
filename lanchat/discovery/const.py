"""Every interval and cap of UDP discovery, with its unit and the reason for its value.

Owns the policy numbers of the announcer and the browser (the wire limits live with the codec in
lanchat/protocol/beacon.py). Nothing else in lanchat/discovery hard-codes a number; nothing here does I/O.
"""

from __future__ import annotations

from typing import Final

from lanchat.protocol.beacon import MAX_DATAGRAM

# --- both sides ---------------------------------------------------------------------------------------
RECV_SIZE: Final = MAX_DATAGRAM + 1  # bytes per recvfrom: one more than allowed, so oversize is detectable
READ_BUDGET: Final = 64  # datagrams handled per wake-up before yielding: a flood cannot starve the loop

# --- announcer (server) -------------------------------------------------------------------------------
BEACON_JITTER: Final = 0.1  # fraction: each interval is shortened by up to 10 % so servers do not beat in step
REPLY_RATE_PER_SOURCE: Final = 5.0  # replies per second to one source address (a search sends 4 a second)
REPLY_BURST_PER_SOURCE: Final = 10  # replies at once to one source: a few browsers behind one address
REPLY_RATE_TOTAL: Final = 100.0  # replies per second to everyone: bounds what spoofed floods can reflect
REPLY_BURST_TOTAL: Final = 200  # replies at once to everyone: a whole classroom starting `discover` together
LIMITER_MAX_SOURCES: Final = 4096  # per-source buckets kept (LRU): bounds the memory a flood of sources costs
INTERFACE_REFRESH: Final = 10.0  # seconds between re-reads of the interface list (Wi-Fi comes and goes)
SEND_ERROR_LOG_EVERY: Final = 60.0  # seconds: a target that keeps failing is logged again at most this often
TWIN_LOG_EVERY: Final = 60.0  # seconds: another server with our id (a copied data directory) is logged so often

# --- browser (client) ---------------------------------------------------------------------------------
PROBE_RETRY_DELAY: Final = 0.25  # seconds between a search's probes (UDP may drop some: see browse)
MAX_SERVERS: Final = 512  # entries in a browser's table: bounds what fake beacons can make it hold
MAX_PENDING_PROBES: Final = 64  # probe nonces remembered for matching replies: oldest forgotten first
PROBE_NONCE_TTL: Final = 30.0  # seconds a probe's nonce is accepted in replies (late replies are spoofed-looking)
EXPIRY_FACTOR: Final = 3  # beacon intervals of silence before a server is dropped (one or two may be lost)
MIN_PERIOD: Final = 0.1  # seconds: a peer's advertised beacon interval is clamped to at least this ...
MAX_PERIOD: Final = 60.0  # ... and at most this, so a lying beacon cannot pin an entry for days
MAX_ADDRESSES: Final = 8  # source addresses remembered per server (multi-homed servers, goodbye checks)
WATCH_PROBE_INTERVAL: Final = 5.0  # seconds between probes while watching (finds servers that do not beacon)
