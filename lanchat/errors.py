"""The error vocabulary. Errors say who is at fault (h11's lesson):

- ``RemoteProtocolError``: the peer sent something wrong; it carries the wire ``code`` to answer with.
- ``LocalProtocolError``: our own code misused the protocol objects (a bug here, not there).
"""

from __future__ import annotations


class LanchatError(Exception):
    """Base of every error lanchat raises on purpose."""


class ProtocolError(LanchatError):
    """A violation of the wire protocol. ``code`` is the machine-readable error code sent on the wire."""

    def __init__(self, code: str, message: str, *, fatal: bool = False, request_id: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.fatal = fatal
        self.request_id = request_id  # the id of the request that failed, echoed in the error frame


class RemoteProtocolError(ProtocolError):
    """The peer broke the protocol (bad JSON, unknown type, oversized frame, ...)."""


class LocalProtocolError(ProtocolError):
    """We tried to send something the protocol does not allow."""


class StorageError(LanchatError):
    """The history database cannot be used (corrupt, foreign, wrong schema version)."""


class ConnectError(LanchatError):
    """The client could not reach or register with a server; ``exit_code`` is the CLI's exit status."""

    def __init__(self, message: str, exit_code: int, *, final: bool = False) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.final = final  # a reconnect gives up at once (another try cannot help), ending with exit_code
