"""Acknowledged events (``Config.acked``): a sender's store of events not yet acknowledged,
a receiver's record of what it delivered, and a server's streams to its clients.

On the wire (docs/protocol.md, "Acknowledged events"): the client's hello carries
``"acked": {"session", "sent", "peer", "last"}``, the server's welcome
``"acked": {"last", "session", "sent"}``; sequenced events are ``[0, event, data, seq]``,
acknowledgements ``[11, seq]`` (cumulative). Both ways: a connection's events to its server
(the connection's :class:`AckedSender`, the server's :class:`ReceiverSessions`), and the
server's events to a client that acknowledges them (the server's :class:`ClientStreams`, the
connection's :class:`AckedReceiver`).

Invariants:
- Sender: sequence numbers start at 1 and grow by one per event of the stream; they outlive
  its reconnects (the session id too): a connection's stream lives as long as the connection
  object, a server's stream to a client as long as the server (while the client is away, for
  ``Config.acked_keep``), moved to each new connection of that client id by ``adopt``. An
  event stays in the store from ``emit`` until an acknowledgement covers it; the store's bytes
  count against the bound of the outbox it writes into (``Outbox.held``), so the store and the
  queue together stay within ``max_outbox_bytes``.
- ``acknowledged + reported + len(store) == sequenced``, always: an event leaves the store
  only acknowledged or reported (the sender gave up: closed, out of retries, or a server's
  client away for longer than ``acked_keep``).
- After a reconnect, the other side's ``last`` acknowledges what it delivered; every stored
  event the writer had already taken goes out again first, in order (those still queued keep
  their place behind them; a server's, whose old outbox is closed, are all queued again), so
  the stream stays in sequence order.
- Receiver: an event is delivered (its handlers called) only if its seq is above its session's
  ``last``, which is raised before the handlers run: a live receiver delivers each seq once,
  whichever connection brings it (exactly once while the process lives). A session it does not
  know (its process restarted, memory gone) takes whatever comes and flags as redelivered every
  seq up to the sender's ``sent``: those may have been delivered before (at least once).
"""

from __future__ import annotations

import secrets
from bisect import bisect_right
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from itertools import islice
from operator import itemgetter
from typing import Any, Final

import anyio

from .._proto._messages import Frame
from ._outbox import Outbox

__all__ = [
    "SESSIONS_KEPT",
    "AckedReceiver",
    "AckedSender",
    "ClientStreams",
    "Entry",
    "ReceiverSessions",
]

#: Sender sessions a server remembers (the oldest is forgotten first): a sender whose session
#: was forgotten is treated as after a restart (its unacknowledged events are redelivered).
SESSIONS_KEPT: Final = 4096

#: A stored event: (seq, event name, frame, size, position in the outbox). An event queued in a
#: batch is kept as its item (see ``Encoder.kept_frame``, which makes its frame to send again).
Entry = tuple[int, str, Frame, int, int]
_SEQ = itemgetter(0)  # of a store entry
_SIZE = itemgetter(3)


def _as_kept(frame: Frame, seq: int) -> Frame:
    return frame


class AckedSender:
    """A stream of sequenced events not yet acknowledged (see the module's invariants).

    It writes into one outbox at a time (:attr:`outbox`): a connection's, for its whole life;
    a server's per client, moved to the client's next connection by :meth:`adopt`."""

    __slots__ = (
        "_kept_frame",
        "_raised_to",
        "_reported_at",
        "_store",
        "_waiters",
        "acked_seq",
        "acknowledged",
        "active",
        "final",
        "given_up",
        "outbox",
        "reported",
        "resent",
        "seq",
        "session",
    )

    def __init__(
        self, outbox: Outbox, kept_frame: Callable[[Frame, int], Frame] = _as_kept
    ) -> None:
        self.session = secrets.token_hex(8)
        self._kept_frame = kept_frame  # what a stored entry is sent again as
        self.outbox = outbox
        self.seq = 0  # the last sequence number given
        self.acked_seq = 0  # every seq up to this one was acknowledged
        #: Whether events are sequenced and stored: False once a server without the mode
        #: welcomed us (``acked="on"``), until one with it does.
        self.active = True
        # (seq, event name, frame, size, outbox position), in seq order.
        self._store: deque[Entry] = deque()
        self._waiters: anyio.Event | None = None
        #: Every event given up so far, in the order of the reports.
        self.given_up: list[tuple[int, str]] = []
        #: Whether the stream was given up for good (:meth:`report`), not in part.
        self.final = False
        self._raised_to = 0  # given_up[:this] were reported by a wait() (see there)
        # Outbox positions of events a fall back reported whose frames stayed queued (they go
        # at most once): a close that finds them unsent has named them already.
        self._reported_at: list[int] = []
        self.acknowledged = 0
        self.reported = 0
        self.resent = 0

    def __len__(self) -> int:
        return len(self._store)

    @property
    def sequenced(self) -> int:
        """Events sequenced and stored so far (the invariant, which this keeps true)."""
        return self.acknowledged + self.reported + len(self._store)

    @property
    def pending(self) -> list[tuple[int, str]]:
        """``(seq, event)`` of every event not yet acknowledged, in order."""
        return [(seq, event) for seq, event, _, _, _ in self._store]

    @property
    def unacknowledged(self) -> list[tuple[int, str]]:
        """Those given up (they may or may not have been handled), then those pending."""
        return [*self.given_up, *self.pending]

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def stored(self, seq: int, event: str, frame: Frame, size: int, position: int) -> Entry:
        """The frame of event ``seq`` was queued at ``position``: keep it until acknowledged.
        ``seq`` is the last one given (:meth:`next_seq`) or the next one (which it takes).
        Returns the entry kept (see :meth:`keep`)."""
        self.seq = seq
        entry = (seq, event, frame, size, position)
        self._store.append(entry)
        self.outbox.held += size
        return entry

    def keep(self, entry: Entry) -> None:
        """:meth:`stored`, with the entry another stream's ``stored`` returned for the same
        seq, frame and position (a broadcast's streams in step share one, not one each)."""
        self.seq = entry[0]
        self._store.append(entry)
        self.outbox.held += entry[3]

    def written(self) -> int:
        """The last seq a writer took (the receiver may have handled up to it), or the last
        acknowledged one if none since."""
        sent = self.acked_seq
        taken = self.outbox.taken
        for seq, _, _, _, position in self._store:
            if position > taken:
                break
            sent = seq
        return sent

    def queued(self) -> int:
        """Events of this stream still queued in :attr:`outbox` (no writer took them yet):
        what its close leaves that a report of this stream names, or named (a fall back's)."""
        taken = self.outbox.taken
        stored = sum(1 for entry in self._store if entry[4] > taken)
        return stored + sum(1 for position in self._reported_at if position > taken)

    def hello(self) -> dict[str, Any]:
        """What our hello says of the stream: the session and the last seq written."""
        return {"session": self.session, "sent": self.written()}

    def ack(self, seq: int) -> None:
        """The receiver acknowledged every event up to ``seq``."""
        store = self._store
        if store and store[0][0] <= seq:
            # The entries up to seq, found and popped (their sizes summed) in C: an ack covers
            # a read's worth of events (thousands, on a busy broadcast). Seqs grow by one or
            # more per entry, so at most seq - first + 1 entries are covered: look there (a
            # deque is indexed from its nearer end), exactly there when there was no gap.
            count = min(len(store), seq - store[0][0] + 1)
            if store[count - 1][0] > seq:
                count = bisect_right(store, seq, 0, count, key=_SEQ)
            freed = sum(map(_SIZE, islice(iter(store.popleft, None), count)))
            self.acknowledged += count
            self.outbox.release(freed)
        if seq > self.acked_seq:
            self.acked_seq = seq
        if not store:
            self._wake()

    def resume(self, last: int) -> None:
        """A new connection is welcomed by a receiver that delivered up to ``last``: forget
        what it has, queue again (first) what the writer had taken. Called before the new
        connection's writer runs."""
        self.ack(last)
        outbox = self.outbox
        taken = outbox.taken
        again = [entry for entry in self._store if entry[4] <= taken]
        if not again:
            return
        kept_frame = self._kept_frame
        start = outbox.requeue([kept_frame(entry[2], entry[0]) for entry in again])
        store = self._store
        for index, (seq, event, frame, size, _) in enumerate(again):
            store[index] = (seq, event, frame, size, start + index)
        self.resent += len(again)

    def adopt(self, outbox: Outbox, last: int) -> None:
        """Move the stream to ``outbox`` (a new connection to the same receiver, whose
        previous outbox is closed): forget what the receiver delivered (up to ``last``) and
        queue every event left, in order, ahead of anything else. Called before the new
        connection's writer runs and before anything else is queued in ``outbox``."""
        old = self.outbox
        self.ack(last)
        old.release(sum(entry[3] for entry in self._store))
        self.outbox = outbox
        store = self._store
        for index, (seq, event, frame, size, _) in enumerate(store):
            position = outbox.put_nowait(self._kept_frame(frame, seq))
            outbox.held += size
            store[index] = (seq, event, frame, size, position)
        self.resent += len(store)

    def report(self, *, final: bool = True) -> list[tuple[int, str]]:
        """Give up on every event not acknowledged: returns them, empties the store. For good
        (the stream ends), or not (``final=False``: a fallback to at most once, after which
        events may be sequenced again)."""
        events = self.pending
        freed = sum(entry[3] for entry in self._store)
        if not final:  # (their frames stay queued, and go at most once)
            taken = self.outbox.taken
            self._reported_at = [p for p in self._reported_at if p > taken]
            self._reported_at += (entry[4] for entry in self._store if entry[4] > taken)
        self._store.clear()
        self._given_up(events)
        self.final = final
        if freed:
            self.outbox.release(freed)
        return events

    def drop_refused(self, refusal: Callable[[Frame], Exception | None]) -> list[tuple[int, str]]:
        """Give up on the events whose frames the receiver would refuse (it takes less than
        they hold now, its handshake said, see ``Encoder.refusal``): sent again, each would
        close its connection, at every reconnect. Returns them (their frames still queued are
        the outbox's to drop); the others stay, in order."""
        kept_frame = self._kept_frame
        # Judged as sent again: an event kept as a batch's item goes in a frame of its own,
        # with its envelope and seq (a few bytes more than the item).
        refused_seqs = {
            entry[0] for entry in self._store if refusal(kept_frame(entry[2], entry[0])) is not None
        }
        if not refused_seqs:
            return []
        refused = [entry for entry in self._store if entry[0] in refused_seqs]
        self._store = deque(entry for entry in self._store if entry[0] not in refused_seqs)
        events = [(seq, event) for seq, event, _, _, _ in refused]
        self._given_up(events)
        self.outbox.release(sum(entry[3] for entry in refused))
        return events

    def _given_up(self, events: list[tuple[int, str]]) -> None:
        self.reported += len(events)
        self.given_up = [*self.given_up, *events]
        self._wake()

    async def wait(self) -> list[tuple[int, str]]:
        """Wait until every event emitted so far has left the store; returns those of them
        given up instead (``[]``: all were acknowledged). A report given up in part (a
        fallback, a receiver that takes less) is returned by the waits under way, or if there are
        none by the next one to begin, not by later ones: they wait for what was emitted after
        it. Once the
        stream is given up for good, every wait returns every event given up."""
        first = self._raised_to  # the reports before this one were returned to someone
        until = self.seq
        # (self._store looked up each time: drop_refused replaces it)
        while self._store and self._store[0][0] <= until:
            if self._waiters is None:
                self._waiters = anyio.Event()
            await self._waiters.wait()
        given_up = self.given_up
        if self.final:
            return list(given_up)
        # Passed on: the reports this wait covers, up to the first of an event emitted after
        # it began (a later wait returns that one).
        end = first
        while end < len(given_up) and given_up[end][0] <= until:
            end += 1
        self._raised_to = max(self._raised_to, end)
        return [entry for entry in given_up[first:] if entry[0] <= until]

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


class ClientStreams:
    """A server's streams of events to its clients (those that acknowledge them), by client id.

    A stream outlives its client's connection: the client's next connection (same session, this
    server still alive) resumes it exactly once; a client that restarted (a new session, same
    id) is handed its predecessor's unacknowledged events, at least once (the welcome's
    ``sent`` lets it flag them as redelivered). A stream with nothing left to acknowledge is
    forgotten when its connection ends; one with events left is kept for the client to come
    back, and reported when the server gives up on it.
    """

    __slots__ = ("_kept_frame", "_retired", "_streams")

    def __init__(self, kept_frame: Callable[[Frame, int], Frame] = _as_kept) -> None:
        self._kept_frame = kept_frame  # (see AckedSender)
        # client id -> (the client's session, our stream to it)
        self._streams: dict[str, tuple[str, AckedSender]] = {}
        self._retired = [0, 0, 0]  # sequenced, acknowledged, reported: of streams forgotten

    def totals(self) -> dict[str, int]:
        """The counters of every stream, forgotten ones included (for ``statistics()``)."""
        sequenced, acknowledged, reported = self._retired
        unacknowledged = 0
        for _, sender in self._streams.values():
            sequenced += sender.sequenced
            acknowledged += sender.acknowledged
            reported += sender.reported
            unacknowledged += len(sender)
        return {
            "events_sequenced": sequenced,
            "events_acknowledged": acknowledged,
            "events_unacknowledged": unacknowledged,
            "events_reported": reported,
        }

    def _retire(self, client_id: str, sender: AckedSender) -> None:
        del self._streams[client_id]
        retired = self._retired
        retired[0] += sender.sequenced
        retired[1] += sender.acknowledged
        retired[2] += sender.reported

    def __iter__(self) -> Iterator[tuple[str, AckedSender]]:
        return ((client_id, sender) for client_id, (_, sender) in list(self._streams.items()))

    def join(
        self, client_id: str, session: str, peer: str, last: int, outbox: Outbox
    ) -> tuple[AckedSender, int]:
        """The stream to a client connecting with ``outbox`` (its hello: its ``session``, and
        ``last`` delivered of our stream ``peer``), and the welcome's ``sent``. Call it once
        the client's previous connection, if any, is closed: its events move to ``outbox``."""
        entry = self._streams.get(client_id)
        if entry is None:
            sender = AckedSender(outbox, self._kept_frame)
            self._streams[client_id] = (session, sender)
            return sender, 0
        known, sender = entry
        same = known == session and peer == sender.session
        sent = sender.written()
        sender.adopt(outbox, last if same and last <= sender.seq else 0)
        self._streams[client_id] = (session, sender)
        return sender, sent

    def left(self, client_id: str, outbox: Outbox) -> AckedSender | None:
        """The connection with ``outbox`` ended: forget its stream if nothing is left to
        acknowledge; returns it if events are left (kept for the client's return)."""
        entry = self._streams.get(client_id)
        if entry is None or entry[1].outbox is not outbox:
            return None  # a newer connection has it
        if not len(entry[1]):
            self._retire(client_id, entry[1])
            return None
        return entry[1]

    def sender_of(self, client_id: str) -> AckedSender | None:
        """Our stream to ``client_id``, if we have one."""
        entry = self._streams.get(client_id)
        return None if entry is None else entry[1]

    def give_up(self, client_id: str, sender: AckedSender) -> list[tuple[int, str]]:
        """Report the events left in ``client_id``'s stream (if it is still ``sender``)."""
        entry = self._streams.get(client_id)
        if entry is None or entry[1] is not sender:
            return []
        events = sender.report()
        self._retire(client_id, sender)
        return events
