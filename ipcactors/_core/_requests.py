"""Requests waiting for their replies, by request id.

Invariants:
- Every request ends exactly once: with its reply, the peer's error, a timeout, or a
  connection failure. A reply for an id that is no longer waiting (timed out, failed) is
  ignored.
- Deadlines cost no timer per request: the actor's watchdog (``_watchdog``) looks at the table
  once its earliest deadline is due, expires what is overdue (never early, at most the
  watchdog's ``COALESCE`` late) and is told the next one. A request whose deadline is not
  earlier than the one the watchdog already has costs nothing more, the common case with one
  ``request_timeout`` for all. Without a watchdog (or once it closed) a request keeps time
  itself (:attr:`PendingRequest.clocked` is false).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from time import monotonic
from typing import TYPE_CHECKING, Any

from .._errors import NoHandlerError, RemoteError
from .._proto._messages import MAX_REQUEST_ID, ErrorReply, Reply
from .._transports._backend import Completion

if TYPE_CHECKING:
    from ._watchdog import Watchdog

__all__ = ["NO_HANDLER", "PendingRequest", "Requests"]

# The error type a peer reports for an event it has no handler for.
NO_HANDLER = "ipcactors.NoHandler"


class PendingRequest(Completion):
    """One request waiting for its end (see the module's invariant)."""

    __slots__ = ("deadline", "error", "event", "result", "seq")

    def __init__(self, event: str, deadline: float) -> None:
        super().__init__()
        self.event = event
        self.result: Any = None
        self.error: BaseException | None = None
        self.seq = math.inf  # the outbox sequence number of its frame, once queued
        #: When the watchdog expires it (``time.monotonic``); ``math.inf``: its waiter keeps
        #: time itself.
        self.deadline = deadline

    @property
    def clocked(self) -> bool:
        """Whether the table's watchdog expires it (else its waiter bounds its own wait)."""
        return self.deadline != math.inf


class Requests:
    __slots__ = ("_clock", "_due_at", "_last_id", "_pending", "on_open")

    def __init__(self) -> None:
        self._last_id = 0
        self._pending: dict[int, PendingRequest] = {}
        #: Called when a request opens: a channel that stopped reading reads on while a reply
        #: is awaited.
        self.on_open: Callable[[], None] | None = None
        self._clock: Watchdog | None = None  # the watchdog that has us, once one has
        self._due_at = math.inf  # when it looks at us next

    def __len__(self) -> int:
        return len(self._pending)

    def open(
        self, event: str, timeout: float, clock: Watchdog | None = None
    ) -> tuple[int, PendingRequest]:
        """A new request, expired after ``timeout`` seconds by ``clock`` if it can (see the
        module's invariants)."""
        self._last_id = self._last_id + 1 if self._last_id < MAX_REQUEST_ID else 1
        deadline = math.inf
        if clock is not None and clock.open:
            deadline = monotonic() + timeout
            if deadline < self._due_at:
                self._due_at = deadline
                self._clock = clock
                clock.join(self, deadline)
        pending = PendingRequest(event, deadline)
        self._pending[self._last_id] = pending
        if self.on_open is not None:
            self.on_open()
        return self._last_id, pending

    def beat(self, now: float) -> float:
        """The watchdog's look (see the module's invariants): expire the requests whose
        deadline passed; returns the earliest deadline left."""
        due_at = math.inf
        for request_id, pending in list(self._pending.items()):
            deadline = pending.deadline
            if deadline <= now:
                del self._pending[request_id]
                pending.expire()
            elif deadline < due_at:
                due_at = deadline
        self._due_at = due_at
        return due_at

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

    def fail_one(self, request_id: int, error: BaseException) -> None:
        """Fail the request ``request_id`` (if it still waits) with ``error``."""
        pending = self._pending.pop(request_id, None)
        if pending is not None:
            pending.error = error
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
        if not self._pending and self._clock is not None:
            # The connection ended: the watchdog need not keep us until our deadline.
            self._clock.leave(self)
            self._clock = None
            self._due_at = math.inf
