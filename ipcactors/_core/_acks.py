"""Acknowledged events (``Config.acked``): the sender's store of events not yet acknowledged,
and the receiver's record of what it delivered, per sender session.

On the wire (docs/protocol.md, "Acknowledged events"): the client's hello carries
``"acked": {"session", "sent"}``, the server's welcome ``"acked": {"last"}``; sequenced events
are ``[0, event, data, seq]``, acknowledgements ``[11, seq]`` (cumulative).

Invariants:
- Sender: sequence numbers start at 1 and grow by one per event emitted through the
  connection; they outlive its reconnects (the session id too). An event stays in the store
  from ``emit`` until an acknowledgement covers it; the store's bytes count against the
  outbox's bound (``Outbox.held``), so the store and the queue together stay within
  ``max_outbox_bytes``.
- ``acknowledged + reported + len(store) == sequenced``, always: an event leaves the store
  only acknowledged or reported (the connection was given up or closed).
- After a reconnect, the welcome's ``last`` acknowledges what the server delivered; every
  stored event the writer had already taken goes out again first, in order (those still queued
  keep their place behind them), so the stream stays in sequence order.
- Receiver: an event is delivered (its handlers called) only if its seq is above its session's
  ``last``, which is raised before the handlers run: a live receiver delivers each seq once,
  whichever connection brings it (exactly once while the process lives). A session it does not
  know (its process restarted, memory gone) takes whatever comes and flags as redelivered every
  seq up to the sender's ``sent``: those may have been delivered before (at least once).
"""

from __future__ import annotations

import secrets
from collections import OrderedDict, deque
from typing import Any, Final

import anyio

from .._proto._messages import Frame
from ._outbox import Outbox

__all__ = ["SESSIONS_KEPT", "AckedReceiver", "AckedSender", "ReceiverSessions"]

#: Sender sessions a server remembers (the oldest is forgotten first): a sender whose session
#: was forgotten is treated as after a restart (its unacknowledged events are redelivered).
SESSIONS_KEPT: Final = 4096


class AckedSender:
    """A connection's sequenced events not yet acknowledged (see the module's invariants)."""

    __slots__ = (
        "_reported_from",
        "_store",
        "_waiters",
        "acked_seq",
        "acknowledged",
        "active",
        "reported",
        "resent",
        "seq",
        "sequenced",
        "session",
    )

    def __init__(self) -> None:
        self.session = secrets.token_hex(8)
        self.seq = 0  # the last sequence number given
        self.acked_seq = 0  # every seq up to this one was acknowledged
        #: Whether events are sequenced and stored: False once a server without the mode
        #: welcomed us (``acked="on"``), until one with it does.
        self.active = True
        # (seq, event name, frame, size, outbox position), in seq order.
        self._store: deque[tuple[int, str, Frame, int, int]] = deque()
        self._waiters: anyio.Event | None = None
        self._reported_from: int | None = None  # the first seq of the last report
        self.sequenced = 0
        self.acknowledged = 0
        self.reported = 0
        self.resent = 0

    def __len__(self) -> int:
        return len(self._store)

    @property
    def pending(self) -> list[tuple[int, str]]:
        """``(seq, event)`` of every event not yet acknowledged, in order."""
        return [(seq, event) for seq, event, _, _, _ in self._store]

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def stored(
        self, seq: int, event: str, frame: Frame, size: int, position: int, outbox: Outbox
    ) -> None:
        """The frame of event ``seq`` was queued at ``position``: keep it until acknowledged."""
        self._store.append((seq, event, frame, size, position))
        self.sequenced += 1
        outbox.held += size

    def hello(self, outbox: Outbox) -> dict[str, Any]:
        """What our hello says: the session, and the last seq the writer took (the receiver
        may have handled up to it)."""
        sent = self.acked_seq
        taken = outbox.taken
        for seq, _, _, _, position in self._store:
            if position > taken:
                break
            sent = seq
        return {"session": self.session, "sent": sent}

    def ack(self, seq: int, outbox: Outbox) -> None:
        """The receiver acknowledged every event up to ``seq``."""
        store = self._store
        freed = 0
        while store and store[0][0] <= seq:
            freed += store.popleft()[3]
            self.acknowledged += 1
        if seq > self.acked_seq:
            self.acked_seq = seq
        if freed:
            outbox.release(freed)
        if not store:
            self._wake()

    def resume(self, last: int, outbox: Outbox) -> None:
        """A new connection is welcomed by a receiver that delivered up to ``last``: forget
        what it has, queue again (first) what the writer had taken. Called before the new
        connection's writer runs."""
        self.ack(last, outbox)
        taken = outbox.taken
        again = [entry for entry in self._store if entry[4] <= taken]
        if not again:
            return
        start = outbox.requeue([entry[2] for entry in again])
        store = self._store
        for index, (seq, event, frame, size, _) in enumerate(again):
            store[index] = (seq, event, frame, size, start + index)
        self.resent += len(again)

    def report(self, outbox: Outbox) -> list[tuple[int, str]]:
        """Give up on every event not acknowledged: returns them, empties the store."""
        events = self.pending
        freed = sum(entry[3] for entry in self._store)
        self._store.clear()
        self.reported += len(events)
        if events:
            self._reported_from = events[0][0]
        if freed:
            outbox.release(freed)
        self._wake()
        return events

    async def wait(self) -> bool:
        """Wait until every event emitted so far has left the store: returns True if all
        were acknowledged, False if some were reported instead."""
        until = self.seq
        store = self._store
        while store and store[0][0] <= until:
            if self._waiters is None:
                self._waiters = anyio.Event()
            await self._waiters.wait()
        return self._reported_from is None or self._reported_from > until

    def _wake(self) -> None:
        if self._waiters is not None:
            self._waiters.set()
            self._waiters = None


class AckedReceiver:
    """What a receiver delivered of one sender session."""

    __slots__ = ("last", "redelivered_up_to")

    def __init__(self) -> None:
        self.last = 0  # every seq up to this one was delivered (or was before a restart)
        self.redelivered_up_to = 0  # seqs up to this one may have been delivered before


class ReceiverSessions:
    """A server's sender sessions, the oldest forgotten first beyond ``SESSIONS_KEPT``."""

    __slots__ = ("_sessions",)

    def __init__(self) -> None:
        self._sessions: OrderedDict[str, AckedReceiver] = OrderedDict()

    def join(self, session: str, sent: int) -> AckedReceiver:
        """The receiver state of ``session`` (a new one if unknown, flagging seqs up to
        ``sent`` as redelivered)."""
        sessions = self._sessions
        receiver = sessions.get(session)
        if receiver is None:
            receiver = sessions[session] = AckedReceiver()
            receiver.redelivered_up_to = sent
            if len(sessions) > SESSIONS_KEPT:
                sessions.popitem(last=False)
        else:
            sessions.move_to_end(session)
        return receiver
