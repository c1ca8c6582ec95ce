"""What both ends of a conversation share: emit and request towards a peer, and the handling of
what the peer sends. :class:`~ipcactors.Client` (a server's view of one client) and
:class:`~ipcactors.Connection` (an actor's link to a server) are peers.

Invariants:
- Frames reach the wire only through the peer's outbox: events and requests in the order they
  were queued, replies in its priority lane (a reply never waits for room, and may overtake
  events queued before it).
- A request is answered exactly once, unless the connection goes first; its reply is queued
  without waiting, so no task is left holding a reply (the channel bounds how many run).
- An event with no handler is counted (``events_unhandled``) and logged at WARNING once per
  name, per server or connection (see ``_handlers.unhandled``).
"""

from __future__ import annotations

import inspect
import math
import sys
from collections.abc import Awaitable, Callable
from operator import index
from time import monotonic
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskGroup

from .._config import Config, request_timeout
from .._errors import (
    ClosedError,
    ConfigError,
    ConnectionLostError,
    DecodeError,
    EncodeError,
    EventNameError,
    IPCError,
    RequestTimeoutError,
    ReservedEventError,
    UnacknowledgedError,
    UnsupportedError,
    message_of,
    remote_type_of,
    traceback_of,
)
from .._exits import leaving
from .._log import ActorLog
from .._proto._codec import Encoder
from .._proto._messages import Event, Frame, Ping, Request, Welcome, frame_size, is_reserved
from ._acks import AckedReceiver, AckedSender
from ._handlers import (
    UNHANDLED,
    Handler,
    Handlers,
    PlainCancellation,
    raised_by_the_call,
    raised_by_the_handler,
    unhandled,
)
from ._handling import Handling
from ._outbox import Outbox
from ._requests import NO_HANDLER, Requests
from ._shared import SharedMemory
from ._stats import ConnectionStatistics, PeerCounters

if TYPE_CHECKING:
    from ._channel import Channel
    from ._watchdog import Watchdog

__all__ = ["Peer", "answer", "check_event_name", "unsupported_request"]


# What a plain handler's result usually is, and never an awaitable: the check for one costs
# an ABC lookup otherwise (a subclass of these could be one: isawaitable asks for it).
_NEVER_AWAITABLE = frozenset({type(None), bool, int, float, str, bytes, bytearray, list, dict})
_checked_names: set[str] = set()  # event names known to be fine (bounded below)


def check_event_name(event: str, wire_reserved: frozenset[str] = frozenset()) -> None:
    """Refuse what no event may be named, and what the wire reserves (``Codec.peer_reserved``:
    node-ipc's lifecycle names), before anything is encoded or sent."""
    if type(event) is not str or not event:
        raise EventNameError(f"an event name must be a non-empty str, got {event!r:.80}")
    if event in wire_reserved:
        raise ReservedEventError(
            f"{event!r} is a lifecycle event name on this wire (node-ipc's): a frame named so "
            "would fire the peer's own handler; choose another name"
        )
    if event in _checked_names:
        return
    if not event.isascii():
        try:
            event.encode()
        except UnicodeEncodeError:
            raise EventNameError(
                f"an event name must be text that UTF-8 can carry, got {event!r:.80}"
            ) from None
    if is_reserved(event):
        raise ReservedEventError(
            f"{event!r} is reserved for local lifecycle events (connect, disconnect, destroy, "
            "error) or for ipcactors itself (names starting with 'ipcactors.'); pick another name"
        )
    if len(_checked_names) < 4096:
        _checked_names.add(event)


def unsupported_request(codec: str) -> UnsupportedError:
    return UnsupportedError(
        f"the {codec!r} codec carries events only: a request cannot be sent. Emit an event "
        "and have the peer emit its answer back, or use codec='msgpack' on both sides"
    )


class Peer:
    """Base of :class:`Client` and :class:`Connection`; not instantiated directly."""

    #: The peer's actor id.
    id: str
    _channel: Channel | None

    def __init__(
        self,
        config: Config,
        log: ActorLog,
        handlers: Handlers,
        unhandled_names: set[str] | None = None,
    ) -> None:
        self._config = config
        self._log = log
        self._handlers = handlers
        codec = self._codec = config.wire_codec
        self._encoder = codec.encoder(config.limits)
        self._carries_requests = codec.carries(Request)
        # Heartbeats need a codec that carries pings (see ``_codec``).
        self._heartbeat_interval = config.heartbeat_interval if codec.carries(Ping) else None
        self._outbox = Outbox(config.max_outbox_bytes)
        self._requests = Requests()
        self._counters = PeerCounters()
        #: Acknowledged mode, sending side (a connection with ``Config.acked``).
        self._acked: AckedSender | None = None
        #: Acknowledged mode, receiving side (a server's client that negotiated it).
        self._receiver: AckedReceiver | None = None
        self._ack_every = config.ack_every
        self._ack_interval = config.ack_interval
        #: Shared memory: the bytes of segments the peer accepts, when the handshake
        #: negotiated it (``None``: not), and the current channel's (see ``_shared``).
        self._shared_accept: int | None = None
        self._shared: SharedMemory | None = None
        self._ack_pending = 0  # events delivered since our last acknowledgement
        self._ack_due = math.inf  # (time.monotonic) when they must be acknowledged at the latest
        # The seq of the event whose handlers the dispatcher awaits, if any: delivered, not
        # done, so not acknowledged yet (see _ack_on_time).
        self._ack_in_flight: int | None = None
        #: True while a handler runs for an event the peer sent again after a reconnect to a
        #: restarted receiver: it may have been handled before (acknowledged mode).
        self.redelivered = False
        #: While an unset event: nothing received is handled yet (events and requests wait in
        #: the inbox, within its bounds; replies and acks are not held). A supervised child's
        #: link to its supervisor, until the child's function has registered its handlers: the
        #: events handed over from its predecessor (acknowledged mode) come at once.
        self._ready: anyio.Event | None = None
        # Names of events that came without a handler, logged once each (a server's clients
        # share one set).
        self._unhandled_names: set[str] = set() if unhandled_names is None else unhandled_names

    @property
    def connected(self) -> bool:
        raise NotImplementedError

    def statistics(self) -> ConnectionStatistics:
        """A snapshot of this connection's counters."""
        acked = self._acked
        return ConnectionStatistics(
            connected=self.connected,
            outbox_bytes=self._outbox.used,
            requests_pending=len(self._requests),
            inbox_bytes=0 if self._channel is None else self._channel.inbox_bytes,
            events_unhandled=self._counters.events_unhandled,
            heartbeat_timeouts=self._counters.heartbeat_timeouts,
            events_sequenced=0 if acked is None else acked.sequenced,
            events_acknowledged=0 if acked is None else acked.acknowledged,
            events_unacknowledged=0 if acked is None else len(acked),
            events_reported=0 if acked is None else acked.reported,
            events_resent=0 if acked is None else acked.resent,
            events_redelivered=self._counters.events_redelivered,
            events_deduplicated=self._counters.events_deduplicated,
            shared_memory=self._shared is not None,
            batches=self._outbox.batches is not None,
            shared_in_use=0 if self._shared is None else self._shared.in_use,
            shared_sent=self._counters.shared_sent,
            shared_received=self._counters.shared_received,
            shared_fallbacks=self._counters.shared_fallbacks,
            shared_dropped=self._counters.shared_dropped,
        )

    def empty(self, shape: int | tuple[int, ...], dtype: Any = float) -> Any:
        """A new numpy array (uninitialised, like ``numpy.empty``) to fill and then send to
        this peer without a copy: inside this connection's shared memory when it has it and
        there is room, else an ordinary array (sent the usual way). Once sent, leave it as it
        is until the peer is done with it (the peer sees the very same memory); its place is
        reused only after the peer dropped every array it got from it and you dropped it.
        A shape or dtype numpy would refuse, or one no array sent may have (object, structured,
        more than 32 dimensions), is a :class:`ConfigError`, before anything is taken; so is
        an array larger than the peer's ``max_frame_size`` that shared memory has no room for
        (it could not be sent)."""
        import numpy as np

        from .._proto._numpy import check_sendable

        dims: tuple[int, ...] | None
        try:  # as numpy takes a shape: an integer, or a tuple or list of them
            many = isinstance(shape, tuple | list)
            dims = tuple(map(index, shape)) if many else (index(shape),)  # type: ignore[arg-type]
        except TypeError:
            dims = None
        if dims is None or any(n < 0 for n in dims):
            raise ConfigError(f"empty() takes a shape of sizes >= 0, got {shape!r:.80}")
        try:
            dtype = np.dtype(dtype)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"empty() takes a numpy dtype, got {dtype!r:.80}: {exc}") from None
        # Checked before a place is taken: what could never be sent, and what numpy refuses.
        try:
            check_sendable(dtype, len(dims))
        except EncodeError as exc:
            raise ConfigError(f"empty() makes arrays to send: {exc}") from None
        # numpy's own limit, zeros or not: each size, and the bytes the others would take.
        nonzero = math.prod(n for n in dims if n) * max(dtype.itemsize, 1)
        if nonzero > sys.maxsize or any(n > sys.maxsize for n in dims):
            raise ConfigError(f"empty() got a shape too large for an array: {shape!r:.80}")
        shared = self._shared
        if shared is not None:
            array = shared.empty(dims, dtype)
            if array is not None:
                return array
        limit = self._encoder.frame_limit
        if math.prod(dims) * dtype.itemsize > limit:
            raise ConfigError(
                f"empty() got a shape of more bytes than {self.id!r} takes in a frame "
                f"(max_frame_size={limit}), with no room for it in shared memory: {shape!r:.80}"
            )
        return np.empty(dims, dtype)

    # --- sending ------------------------------------------------------------------------------

    async def emit(self, event: str, data: Any = None) -> None:
        """Send ``event`` with ``data`` (anything msgpack encodes) to the peer. At most once;
        at least once, reported if not, on a connection in the acknowledged mode
        (``Config.acked``; see ``Connection.wait_acknowledged``).

        Returns as soon as the frame is queued (without a loop pass while the outbox has room,
        except one every 64 KiB queued, so that a loop emitting without yielding lets the
        writer and other tasks run); waits while the outbox is full. Raises
        :class:`EncodeError` for data msgpack cannot encode, :class:`ClosedError` once this
        peer is gone for good.
        """
        if type(event) is not str or event not in _checked_names:  # (the check, inlined)
            check_event_name(event)
        acked = self._acked
        if acked is not None and acked.active:
            if not self._emit_acked(acked, event, data):  # (no room: wait for it)
                await self._put_sequenced(acked, event, self._encoder.sequencer(event, data))
            return
        outbox = self._outbox
        if outbox.batches is not None:  # the common case: an item of the open batch
            item = self._encoder.event_item(event, data)
            if item is not None:
                if outbox.put_item_if_room(item):
                    return
                # No room, or the loop's pass due: waited for as a frame would, then an item
                # still (a frame of its own only if it cannot be one: too large, no batches).
                await outbox.wait_room(len(item))
                if outbox.put_item_if_room(item):
                    return
        frame = self._encoder.event(event, data)
        size = len(frame) if type(frame) is bytes else frame_size(frame)
        if not outbox.put_if_room(frame, size):  # the common case: no loop pass
            await outbox.put(frame)

    def _emit_acked(self, acked: AckedSender, event: str, data: Any) -> bool:
        """``emit`` in the acknowledged mode, without a loop pass: the event is sequenced,
        queued and kept until acknowledged. ``False`` if it was not queued (no room, or a
        turn due: the caller waits, see :meth:`_put_sequenced`)."""
        seq = acked.seq + 1  # taken by stored() (else _put_sequenced takes it)
        outbox = self._outbox
        encoder = self._encoder
        if outbox.batches is not None:  # the common case: an item of the open batch
            item = encoder.event_item(event, data)
            if item is not None:
                position = outbox.put_item_if_room(item, seq)
                if position:  # kept as its item (see Encoder.kept_frame): no frame made
                    acked.stored(seq, event, item, len(item), position)
                    return True
        frame = encoder.sequenced_event(event, data, seq)
        size = len(frame) if type(frame) is bytes else frame_size(frame)
        position = outbox.put_if_room(frame, size)
        if position:
            acked.stored(seq, event, frame, size, position)
            return True
        return False

    async def _put_sequenced(
        self, acked: AckedSender, event: str, make: Callable[[int], Frame]
    ) -> None:
        """Queue the frame ``make(seq)`` of the next seq and keep it until acknowledged; wait
        for room first if needed (then it takes the next seq at that time: seqs stay in the
        order of the queue)."""
        outbox = self._outbox
        seq = acked.next_seq()
        frame = make(seq)
        size = len(frame) if type(frame) is bytes else frame_size(frame)
        if not outbox.has_room(size) or outbox.closed or outbox.turn_due:
            await outbox.wait_room(size)
            if acked.seq != seq:  # others queued meanwhile: take the next number, in order
                seq = acked.next_seq()
                frame = make(seq)
                size = frame_size(frame)
        acked.stored(seq, event, frame, size, outbox.put_nowait(frame, size))

    @property
    def unacknowledged(self) -> list[tuple[int, str]]:
        """Acknowledged mode: ``(seq, event name)`` of every event emitted to this peer and not
        acknowledged: those given up (reported: they may or may not have been handled), then
        those still waiting, in order. ``[]`` without the mode."""
        return [] if self._acked is None else self._acked.unacknowledged

    async def wait_acknowledged(self) -> None:
        """Acknowledged mode: return once every event emitted to this peer so far has been
        acknowledged (its handlers returned). Waits through reconnects. Raises
        :class:`UnacknowledgedError` (listing the events) if some are given up instead: each
        report by the calls under way (or if none, the next one made), every report once the
        client is given up for good; :class:`ConfigError` without the mode."""
        acked = self._acked
        if acked is None:
            raise ConfigError(
                f"wait_acknowledged() needs acknowledged events with {self.id!r}: set "
                "Config(acked='on') (or 'require') on both the server and the connecting actor"
            )
        events = await acked.wait()
        if events:
            raise UnacknowledgedError(
                f"events to {self.id!r} were given up: {len(events)} event(s) never "
                "acknowledged (they may or may not have been handled)",
                events,
            )

    def _welcomed(self, welcome: Welcome) -> None:
        """A pipelined connection's welcome arrived (only a client's channel reads one)."""

    def _acknowledged(self, seq: int) -> None:
        """The peer acknowledged every sequenced event up to ``seq``. An acknowledgement where
        we sequence nothing (the mode was not negotiated) breaks the protocol."""
        acked = self._acked
        if acked is None or not acked.active:
            raise DecodeError(
                "an acknowledgement (kind 11) on a connection that did not negotiate the "
                "acknowledged mode"
            )
        acked.ack(seq)

    def _send_ack(self) -> None:
        """Acknowledge every event delivered so far (the channel calls it after each batch
        while events wait to be acknowledged)."""
        receiver = self._receiver
        if receiver is None or not self._ack_pending:
            return
        self._ack_pending = 0
        self._put_ack(receiver.last)

    def _put_ack(self, seq: int) -> None:
        try:
            self._outbox.put_reply(self._encoder.ack(seq))
        except Exception as exc:  # closed: the sender resends what we did not acknowledge
            self._log.debug(f"acknowledgement to {self.id!r} not sent: {exc}")

    def _ack_on_time(self, now: float) -> float:
        """The ack timer (see ``_channel.AckTimer``): at ``_ack_due``, acknowledge the events
        whose handlers are done, though a later event's handler still runs. Returns when to
        look again (``math.inf``: nothing waits)."""
        due = self._ack_due
        if self._receiver is None or not self._ack_pending:
            return math.inf
        if now < due:
            return due
        in_flight = self._ack_in_flight
        if in_flight is None:  # every event delivered is done
            self._send_ack()
        elif self._ack_pending > 1:  # all but the one still being handled
            self._ack_pending = 1
            self._ack_due = now + self._ack_interval
            self._put_ack(in_flight - 1)
        return math.inf

    async def request(self, event: str, data: Any = None, *, timeout: float | None = None) -> Any:
        """Send ``event`` and return what the peer's first handler for it returns.

        Raises :class:`RemoteError` (the handler raised; type, message and traceback attached),
        :class:`NoHandlerError`, :class:`RequestTimeoutError` after ``timeout`` seconds
        (default ``Config.request_timeout``), or :class:`ConnectionLostError` if the connection
        drops before the reply arrives.
        """
        check_event_name(event)
        if not self._carries_requests:
            raise unsupported_request(self._codec.name)
        if self._answers_ended:
            raise ConnectionLostError(f"{self!r} closed its side: no reply can come")
        timeout = request_timeout(timeout, self._config)
        request_id, pending = self._requests.open(event, timeout, self._watchdog)
        outbox = self._outbox
        try:
            frame = self._encoder.request(event, data, request_id)
            size = frame_size(frame)
            if outbox.has_room(size) and not outbox.closed:  # the common case
                pending.seq = outbox.put_urgent(frame, size)
                channel = self._channel
                if channel is not None and outbox.flushed:  # it went to the kernel: its reply
                    channel.take_replies_now()  # may be there already (Trio, see Channel)
                # (The watchdog expires it on time, no timer of its own: see _requests.)
                await pending.wait(math.inf if pending.clocked else timeout)
            else:
                with anyio.move_on_after(timeout):
                    try:
                        pending.seq = await outbox.put(frame)
                    except ClosedError:
                        if pending.error is None:
                            raise
                        # Failed while it waited for room (the connection was lost): say so.
                    else:
                        await pending.wait(math.inf)
        finally:
            self._requests.discard(request_id)
            if not pending.is_set() and pending.seq != math.inf:
                outbox.withdraw(int(pending.seq))  # timed out, or cancelled, before it went out
        if pending.error is not None:
            raise pending.error
        if not pending.is_set():
            raise RequestTimeoutError(
                f"no reply to request {event!r} within {timeout} s; a late reply is ignored"
            )
        return pending.result

    # --- receiving (called by the channel) ----------------------------------------------------

    #: Seconds the peer may send nothing but heartbeats before the channel closes (servers set
    #: it for their clients from ``Config.idle_timeout``); ``None``: no limit.
    _idle_timeout: float | None = None
    #: Keeps time for this peer's channel (heartbeats, idle); set by the owning actor.
    _watchdog: Watchdog | None = None

    def _heartbeat_lost(self, message: str) -> None:
        """The channel is dropping the peer: nothing came from it in time."""
        self._counters.heartbeat_timeouts += 1
        self._log.warning(message)

    def _idle_closed(self, message: str) -> None:
        """The channel is closing: the peer sent nothing but heartbeats for ``_idle_timeout``."""
        self._log.info(message)

    def _keep_to_peer(self, frame: Any, objects: Any) -> list[tuple[int, str]]:
        """The largest frame the peer takes and the objects it decodes from one, as its
        handshake announced (``frame``, ``objects``): frames keep to them from now on, and
        what waits for it that it would refuse is given up, not sent (it would close the
        connection; kept for a resend, every next one too): queued frames are dropped (a
        request among them fails with the error sending it would raise), events kept for a
        resend reported. Returns those reported."""
        encoder = self._encoder
        if not encoder.keep_to(frame, objects):
            return []  # (nothing here was made for more than the peer takes)
        refusal = encoder.refusal
        reported = [] if self._acked is None else self._acked.drop_refused(refusal)
        dropped, lost = self._outbox.drop_refused(refusal)
        for seq, error in dropped.items():  # (a request is a frame of its own, not batched)
            self._requests.fail_frames(error, {seq})
        if lost or reported:
            seqs = f" (seq {reported[0][0]}..{reported[-1][0]})" if reported else ""
            self._log.warning(
                f"{lost} frame(s) queued for {self.id!r} and {len(reported)} event(s) "
                f"kept for it{seqs} are beyond the {encoder.peers_limits} its handshake "
                "announced: given up, not sent (see unacknowledged)"
            )
        return reported

    def _unwritable(self) -> None:
        """The channel's writer found the connection broken: nothing more reaches the peer on
        it (what it sent before it went is still handled). A connection keeps its outbox for
        the next one."""

    def _handler_exited(self) -> None:
        """A handler's exit or interrupt (``sys.exit``, ``KeyboardInterrupt``) left this peer's
        channel: it ends the actor whose handler raised it (a server's client says so to its
        server)."""

    def _input_ended(self) -> None:
        """The channel read the peer's last: no reply comes on it any more. Called before the
        requests waiting for one fail, so that a caller they wake finds the peer as it is."""

    #: Whether the outbox outlives the channel (a connection's, which reconnects): then
    #: nothing more is written once the peer's input ended; what is queued from then on waits
    #: for the next channel, as anything sent while disconnected does.
    _outbox_outlives_channel = False

    #: What handlers get after the data: a server's handlers, the client (see ``Client``).
    _handler_extra: tuple[Any, ...] = ()
    #: Whether the peer's input ended for good (a server's client: it closed, or it broke): a
    #: request to it would wait out its timeout for a reply that cannot come.
    _answers_ended = False
    # Events and requests handled as they arrive, even while an opening holds the peer's
    # others (see Channel._take_control): a server's owner's own protocol (a supervisor's).
    _control_events: frozenset[str] = frozenset()

    def _handler_args(self, data: Any) -> tuple[Any, ...]:
        return (data, *self._handler_extra)

    def _on_events(
        self, batch: list[Event | Request], start: int
    ) -> tuple[int, Awaitable[None] | None]:
        """Handle the events of ``batch`` from ``start`` on, in order, in a tight loop: an
        event's only handler, when it is a plain function and no catch-all is registered, is
        called right here; any other event goes to :meth:`_call_handlers`. In the acknowledged
        mode, each event's seq is taken first (:meth:`_take_seq`) and ``ack_interval`` is
        checked after it. Returns where it stopped (at a request, at the end, or behind an
        event whose handlers need awaiting) and what to await first."""
        lone, catch_alls = self._handlers.event_tables()
        extra = self._handler_extra
        acked = self._receiver is not None
        index, end = start, len(batch)
        while index < end:
            message = batch[index]
            if type(message) is not Event:
                break
            index += 1
            if acked and message.seq is not None and not self._take_seq(message.seq):
                continue  # delivered already (a resumed session's overlap)
            handler = None if catch_alls else lone.get(message.event)
            if handler is None:
                pending = self._call_handlers(message)
                if pending is not None:
                    return index, pending
            else:
                try:
                    result = handler(message.data, *extra)
                except raised_by_the_call() as exc:
                    self._handlers.failed(message.event, handler, exc, self._log)
                    continue
                if result is not None and inspect.isawaitable(result):
                    return index, self._handlers.finish(message.event, handler, result, self._log)
            if acked and self._ack_pending and monotonic() >= self._ack_due:
                self._send_ack()  # slow handlers behind a backlog: ack_interval
        self.redelivered = False  # (true while a redelivered event's handlers run only)
        return index, None

    async def _wait_written(self) -> None:
        """Wait until what is queued for the peer is in the kernel (or the peer is gone): a
        large payload sent out of band is read from its memory until then."""
        await self._outbox.wait_flushed()

    async def _let_the_writer_take(self) -> None:
        """Give the writer its turn at what is queued (at most two loop passes: Trio runs the
        tasks woken together in any order, so after two the writer ran); not a wait for the
        kernel to take it all."""
        for _ in range(2):
            if not len(self._outbox):
                return
            await anyio.lowlevel.checkpoint()

    def _take_seq(self, seq: int) -> bool:
        """Acknowledged mode: count event ``seq`` as delivered (it is acknowledged once its
        handlers returned); ``False`` if it was delivered already."""
        receiver = self._receiver
        assert receiver is not None
        # A duplicate is acknowledged too: its sender waits for that (it came again because
        # a new connection's welcome could not count it yet: see Server._welcome_acked).
        if not self._ack_pending:
            self._ack_due = monotonic() + self._ack_interval
        self._ack_pending += 1
        if seq <= receiver.last:
            self._counters.events_deduplicated += 1
            return False
        receiver.last = seq
        self.redelivered = seq <= receiver.redelivered_up_to
        if self.redelivered:
            self._counters.events_redelivered += 1
        return True

    def _call_handlers(self, message: Event) -> Awaitable[None] | None:
        """Run the event's handlers; an awaitable if one of them needs awaiting."""
        result = self._handlers.call_plain(
            message.event, self._handler_args(message.data), self._log
        )
        if result is UNHANDLED:
            self._unhandled(message.event)
            return None
        return result

    def _unhandled(self, event: str) -> None:
        self._counters.events_unhandled += 1
        unhandled(self._unhandled_names, event, repr(self.id), self._log)

    def _start_answer(
        self, message: Request, task_group: TaskGroup, done: Callable[[bool], None]
    ) -> bool:
        """Answer a request: inline when its only handler is a plain function (no task, no
        loop pass), else in a task of its own, which calls ``done(True)`` once its reply is
        queued, ``done(False)`` if it ends without one (cut short). Returns whether it
        started a task. (A handler that exits the process, ``sys.exit()``, cut nothing short.)"""
        handler = self._handlers.lone_plain(message.event)
        if handler is None:
            task_group.start_soon(self._answer, message, done)
            return True
        # The request holds its data no longer than its handler does: an array in shared
        # memory it dropped is then released before the reply goes (see _reply).
        data, message.data = message.data, None
        try:
            result = handler(*self._handler_args(data))
        except raised_by_the_call() as exc:
            frame = error_frame(self._encoder, message.id, exc)
        else:
            if type(result) not in _NEVER_AWAITABLE and inspect.isawaitable(result):
                task_group.start_soon(self._answer_later, message, handler, result, done)
                return True
            frame = reply_frame(self._encoder, message.id, result)
            result = None
        data = None
        self._reply(message, frame)
        return False

    async def _call_lifecycle(self, event: str, *args: Any, shielded: bool = False) -> None:
        """Run the handlers of lifecycle ``event`` (``disconnect``, ``destroy``, ``error``) as
        handlers of this peer's: a close they await of what they run under (which would wait
        for them, or cancel them) is kept until they are done (see ``_handling``).
        ``shielded``: as the connection is torn down, shielded from cancellation and bounded
        by ``close_timeout``."""
        with Handling(self):
            if shielded:
                timeout = self._config.close_timeout
                await self._handlers.call_shielded(event, args, self._log, timeout)
            else:
                await self._handlers.call(event, args, self._log)

    def _is(self, peer: Peer) -> bool:
        """Whether ``peer`` is this one (a handler of its runs under it: see ``_handling``)."""
        return peer is self

    async def _answer_later(
        self,
        message: Request,
        handler: Handler,
        result: Awaitable[Any],
        done: Callable[[bool], None],
    ) -> None:
        replied = False
        with Handling(self):  # (see _handling: closing from the handler)
            try:
                try:
                    frame = reply_frame(self._encoder, message.id, await result)
                except Exception as exc:
                    self._handlers.cut_short(message.event, handler, exc, self._log)
                    frame = error_frame(self._encoder, message.id, exc)
                except BaseException as exc:
                    if not raised_by_the_handler(exc):
                        raise
                    frame = error_frame(self._encoder, message.id, exc)
                self._reply(message, frame)
                replied = True
            except BaseException as exc:
                replied = leaving(exc) is not None  # (see _answer)
                raise
            finally:
                done(replied)

    async def _answer(self, message: Request, done: Callable[[bool], None]) -> None:
        replied = False
        with Handling(self):  # (see _handling: closing from the handler)
            try:
                args = self._handler_args(message.data)
                message.data = None  # (see _start_answer)
                frame = await answer(self._handlers, message, args, self._encoder, self._log)
                del args
                self._reply(message, frame)
                replied = True
            except BaseException as exc:
                # A handler's sys.exit() (or Ctrl-C) ends the process as it asked to: its
                # request is none cut short, to be warned of as the actor closes.
                replied = leaving(exc) is not None
                raise
            finally:
                done(replied)

    def _reply(self, message: Request, frame: Frame) -> None:
        if self._shared is not None:
            # Arrays of the request's the handler dropped: their slots go back to the sender
            # before the reply, so that its next request finds them free (a request loop then
            # keeps one slot per array, not two).
            self._shared.release_now()
        try:
            self._outbox.put_reply(frame)
        except Exception as exc:  # closed: the requester learns of the lost connection itself
            self._log.debug(f"reply to {message.event!r} not sent: {exc}")


def error_frame(encoder: Encoder, request_id: int, exc: BaseException) -> Frame:
    text = traceback_of(exc) if encoder.tracebacks else ""
    return encoder.error_reply(request_id, remote_type_of(exc), message_of(exc), text)


def reply_frame(encoder: Encoder, request_id: int, result: Any) -> Frame:
    """The reply carrying ``result``, or an error reply if it cannot be encoded."""
    try:
        return encoder.reply(request_id, result)
    except IPCError as exc:  # EncodeError, FrameTooLargeError: the requester must hear of it
        return error_frame(encoder, request_id, exc)


async def answer(
    handlers: Handlers,
    message: Request,
    args: tuple[Any, ...],
    encoder: Encoder,
    log: ActorLog,
) -> Frame:
    """Run the handlers of a request; return the reply (or error reply) frame."""
    if not handlers.handles(message.event, request=True):
        return encoder.error_reply(message.id, NO_HANDLER, f"no handler for {message.event!r}", "")
    try:
        result = await handlers.answer(message.event, args, log)
    except PlainCancellation as exc:
        return error_frame(encoder, message.id, exc.error)
    except Exception as exc:
        return error_frame(encoder, message.id, exc)
    return reply_frame(encoder, message.id, result)
