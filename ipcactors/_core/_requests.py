"""Requests waiting for their replies, by request id.

Invariant: every request ends exactly once: with its reply, the peer's error, a timeout, or a
connection failure. A reply for an id that is no longer waiting (timed out, failed) is ignored.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

from .._errors import NoHandlerError, RemoteError
from .._proto._messages import MAX_REQUEST_ID, ErrorReply, Reply
from .._transports._backend import Completion

__all__ = ["NO_HANDLER", "PendingRequest", "Requests"]

# The error type a peer reports for an event it has no handler for.
NO_HANDLER = "ipcactors.NoHandler"


class PendingRequest(Completion):
    """One request waiting for its end (see the module's invariant)."""

    __slots__ = ("error", "event", "result", "seq")

    def __init__(self, event: str) -> None:
        super().__init__()
        self.event = event
        self.result: Any = None
        self.error: BaseException | None = None
        self.seq = math.inf  # the outbox sequence number of its frame, once queued


class Requests:
    __slots__ = ("_last_id", "_pending", "on_open")

    def __init__(self) -> None:
        self._last_id = 0
        self._pending: dict[int, PendingRequest] = {}
        #: Called when a request opens: a channel that stopped reading reads on while a reply
        #: is awaited.
        self.on_open: Callable[[], None] | None = None

    def __len__(self) -> int:
        return len(self._pending)

    def open(self, event: str) -> tuple[int, PendingRequest]:
        self._last_id = self._last_id + 1 if self._last_id < MAX_REQUEST_ID else 1
        pending = PendingRequest(event)
        self._pending[self._last_id] = pending
        if self.on_open is not None:
            self.on_open()
        return self._last_id, pending

    def discard(self, request_id: int) -> None:
        self._pending.pop(request_id, None)

    def resolve(self, reply: Reply) -> None:
        pending = self._pending.pop(reply.id, None)
        if pending is not None:
            pending.result = reply.data
            pending.set()

    def reject(self, error: ErrorReply) -> None:
        pending = self._pending.pop(error.id, None)
        if pending is not None:
            kind = NoHandlerError if error.type == NO_HANDLER else RemoteError
            pending.error = kind(error.type, error.message, error.traceback)
            pending.set()

    def fail_frames(self, error: BaseException, seqs: set[int]) -> None:
        """Fail the requests whose frames (by outbox sequence number) will never be sent."""
        for request_id, pending in list(self._pending.items()):
            if pending.seq in seqs:
                del self._pending[request_id]
                pending.error = copy.copy(error)
                pending.set()

    def fail(self, error: BaseException, *, sent_up_to: float = math.inf) -> None:
        """Fail the requests whose frames were handed to a writer (all of them by default)."""
        for request_id, pending in list(self._pending.items()):
            if pending.seq <= sent_up_to:
                del self._pending[request_id]
                pending.error = copy.copy(error)  # each waiter raises its own instance
                pending.set()
