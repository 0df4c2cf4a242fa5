"""lanchat: a LAN chat suite: sharded multi-process server, UDP discovery, terminal client."""

__version__ = "0.1.0"
