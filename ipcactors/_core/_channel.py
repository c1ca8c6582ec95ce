"""A channel: one live byte stream to a peer, with its reader, writer and event dispatcher.

Invariants:
- Exactly one writer drains the peer's outbox (loop callbacks on asyncio, a task otherwise),
  coalescing small frames into few large writes, replies first (the outbox's priority lane); a
  request or reply with nothing queued before it is written at once by its sender (see
  ``Outbox.put_urgent``).
- The reader parses every frame a read completes: replies are resolved at once, always; a
  request with nothing queued before it starts at once (answered inline when its only handler
  is a plain function, else in a task of its own) if the peer's request gate is open; events,
  and requests behind them, queue in the inbox for one dispatcher, started with the first
  batch, which handles events one at a time, in order, and starts each request in its turn.
  On the asyncio fast path, while the reader waits, a read that is nothing but whole small
  replies and requests is handled in the loop's callback by the same rules (``_in_place``):
  a requester runs a loop pass sooner, a plain handler answers without the reader being
  woken. Requests are taken there only when none would wait (nothing in the inbox, no
  opening, the gate open). Anything else (and any error decoding it) is the reader's, in
  order; what the callback raises, the reader raises. Elsewhere (Trio, a plain socket) a
  requester whose request went straight to the kernel looks at what the kernel holds while
  the reader waits with nothing read (``take_replies_now``): if that is nothing but whole
  small replies, it takes them (they are resolved there, the reader is not woken); else it
  leaves them, untouched, to the reader.
- The request gate: at most ``max_concurrent_requests`` handler tasks per peer, each counted
  until its reply is queued; and no request starts while replies wait in an outbox that is
  over its bound. A request that finds it closed waits in the inbox.
- The inbox is bounded in bytes (frames as received): the reader stops reading while it holds
  ``max_inbox_bytes``, or while a request waits for the gate; but while a request to this peer
  waits for its reply, it reads on up to ``INBOX_HARD_FACTOR`` times that bound plus what may
  wait below the reader (``bytes_below``: the socket's receive buffer and what the stream
  reads ahead), so that a handler awaiting a request to the peer that called it gets its reply
  (which the peer sends in its priority lane, ahead of its queued events, but behind what it
  already handed to its socket: the kernel's buffers, which Linux grows for TCP up to
  ``net.ipv4.tcp_rmem``'s maximum, 6 MiB by default, and the stream's read-ahead, 4 MiB on
  the asyncio fast path). Per peer, memory is the outbox bound, the inbox bound (and that much
  more while a reply is awaited), and the replies of the requests that were running.
- An opening (the ``connect`` handlers; on a server, first the wait for the connections a
  newcomer replaced) runs while the channel reads and writes; no event or request of the peer
  is dispatched before it is done (they wait in the inbox meanwhile), but for those its
  owner's protocol names (``Peer._control_events``, outside the acknowledged mode), handled as
  they arrive. When the peer closes its side with something in the inbox, the opening
  finishes and then what waited is dispatched; otherwise an opening still running when the
  channel ends is cancelled.
  A pipelined client's opening is decided at the welcome: without connect handlers by then
  there is none (no task), and what waited for it is released as the welcome is read.
- ``abort()`` ends the channel at once whenever it comes, also before ``run`` started (a
  server's client closed between its welcome and its channel serving): ``run`` then ends as
  soon as it starts, and closes the stream. What the inbox still holds when the channel is
  ended on purpose (an abort, a close, a dispatcher cut short) is dropped with a WARNING that
  says how many and why (outside the acknowledged mode: there the peer sends them again or
  reports them); not when it ends only because the program does (an exit or an interrupt out
  of a handler, in this event loop's run: every channel is quiet from then on, until an actor
  is entered again, the exit caught).
- When the peer goes (end of stream, a broken socket, bad bytes), the requests whose frames
  were handed to the writer fail at once with :class:`ConnectionLostError`. A connection's
  channel (its outbox outlives it) then writes nothing more: what is sent from then on waits
  in the outbox for the next channel, as anything sent while disconnected does, and names no
  shared memory of this one. Once anything waits so, the dispatcher has ``close_timeout`` to
  finish, as after a failed write (below): the next channel waits for it.
- Events and requests received before the input ended are still dispatched, whether the peer
  closed its side (end of stream, also in the middle of a frame: that frame is dropped, with a
  warning) or the connection broke under the reader (a reset: a peer that closes with our
  frames unread in its socket resets the connection, after the frames it sent; those are whole
  and handled); a server's client's channel ends once its request handlers did too, none cut
  short (a reply goes where it still can, to a peer that shut only its sending side: the
  outbox is flushed, within ``close_timeout``, before the channel ends; else it is dropped),
  while a connection's cuts them short and starts none still waiting (no reply could go), for
  its next connection must not wait on them. So does
  a failed write (the peer went): nothing more is written (a server's client fails its
  requests and emits at once, see ``Peer._unwritable``), what arrived is still read and
  handled: by a connection for at most ``close_timeout`` more (a handler of it could wait for
  room in an outbox nothing drains), by a server's client however long it takes. Bytes that
  break the protocol (a :class:`ProtocolError`, a peer stalled in a frame included) end the
  input the same way: nothing after them is used (nor what was decoded from their read),
  nothing more is written (as after a failed write), what came before is dispatched, then the
  channel ends with the error. Replies still queued when the channel ends are dropped: request
  ids are per connection.
- A pipelined client (``connect_to(wait=False)``) runs its channel before the welcome: the
  writer sends what is queued right behind the hello, and the reader reads the welcome first
  (within ``handshake_timeout``, a deadline on the channel's own scope), tells the connection
  (``Peer._welcomed``), then serves. If the welcome never comes (a reject, a timeout, a
  reset), the channel ends with the reason (:attr:`Channel.handshake_error`); the connection
  decides whether what was sent ahead goes again or fails (see ``_connection``).
- A peer whose ``_ready`` is an unset event (a supervised child's link to its supervisor,
  until the child's function registered its handlers) has nothing dispatched, as during an
  opening: events and requests wait in the inbox; replies and acks are handled at once.
- The session (``_proto._session``) decides what may arrive: lifecycle names never arrive from
  the wire, nor the handshake again; either is a protocol error.
- Acknowledged mode (``_acks``): an ``ack`` is handled by the reader at once; the dispatcher
  acknowledges the events it delivered (cumulatively, in the priority lane) after a batch
  that brings the count to ``Config.ack_every``, after any batch that leaves the inbox
  empty, and after any event handled ``Config.ack_interval`` or more after the first one not
  yet acknowledged; while an event's handlers are awaited, the watchdog acknowledges the
  events done before it at that moment (``AckTimer``). An event is acknowledged only once
  its handlers returned.
- A large payload arriving (the session's ``receive_buffer``) is read straight into its final
  buffer where the stream can (``receiver_into``: the asyncio fast path, plain sockets on
  Trio), at most ``MAX_RECEIVE_INTO`` bytes per read; elsewhere (TLS) read as usual and copied
  there by the decoder. Either way, at most one copy on this side (but for a payload's last
  bytes read with what follows them, below). The rest of a frame already begun is read without
  a loop pass or a timeout scope when the kernel holds it (``receivers_now``); a frame that
  misses less than one read (``RECEIVE_SIZE``) is read with what follows it, until
  ``DIRECT_READ_BUDGET`` bytes were read so since the reader last waited, then only up to the
  frame's end: the next frame waits for a loop pass. Only a wait is bounded by
  ``frame_timeout``, and so is all the waiting one frame causes: at most ``frame_timeout``,
  plus a second per ``FRAME_PACE`` bytes of it, so that a peer trickling a byte now and then
  cannot hold its slot for ever. Only the reader's waits for the peer count, not the time
  reading is paused (our backpressure) or spent handling.
- Heartbeats (``Config.heartbeat_interval``; none when the codec carries no pings), kept by
  the actor's watchdog (one task per actor for all its channels, see ``_watchdog``; a channel
  has no task or timer of its own for them): any bytes received are a sign of life. A ping
  goes out after ``interval`` with nothing received or nothing sent (so that a peer busy
  sending us a long frame hears from us too), and only while nothing waits in the outbox
  (queued bytes reach the peer first and say as much). The reader answers a ping with a pong,
  written at once, at most one per ``PONG_MIN_GAP`` and only with nothing queued: a peer that
  floods pings or never reads cannot make us queue pongs. With nothing received for
  ``interval + timeout`` (and still nothing after ``STALL_GRACE``, in case our own loop was the
  one stalled; a watchdog's call ``_STALLED_AFTER`` late is our own stall, whose silence does
  not count: the peer gets a ping and ``timeout`` from then) the channel ends as if the peer
  had closed it: with something to dispatch, its
  socket is shut both ways (``shut_socket``) and nothing more is written (as after a failed
  write), the reader meets the end of stream and what came before is handled; with nothing
  (or no socket, or no end seen a deadline later), aborted.
  While the reader pauses (flow control), the peer counts as alive: we are the ones not
  reading. Once its input ended (it closed, or broke the protocol), the channel is no longer
  watched: what came before the end is handled however long that takes.
- A server's client that sends nothing but heartbeats for ``idle_timeout`` is closed.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Awaitable, Callable
from time import monotonic
from typing import TYPE_CHECKING

import anyio
from anyio import CancelScope
from anyio.abc import ByteStream, TaskGroup
from anyio.lowlevel import RunVar

from .._errors import ConnectionLostError, DecodeError, ProtocolError, RejectedError
from .._proto._messages import (
    Ack,
    ErrorReply,
    Event,
    Message,
    Ping,
    Pong,
    Reply,
    Request,
    frame_size,
)
from .._proto._session import Session
from .._transports._backend import in_loop_callback
from .._transports._fds import FdSocketStream
from .._transports._streams import (
    attach_writer,
    bytes_below,
    close_now,
    drain_outbox,
    listener_setter,
    peeker,
    read_size,
    readable_waiter,
    receiver_into,
    receivers_now,
    send_tracebacks,
    shut_socket,
)
from ._flag import Flag
from ._handling import Handling
from ._shared import SharedMemory, close_fds

if TYPE_CHECKING:
    from ._peer import Peer
    from ._watchdog import Watchdog

__all__ = ["INBOX_HARD_FACTOR", "RECEIVE_SIZE", "Channel"]

RECEIVE_SIZE = 64 * 1024  # per read for small traffic; large frames are read in larger chunks
MAX_RECEIVE_SIZE = 4 * 1024 * 1024
MAX_RECEIVE_INTO = 8 * 1024 * 1024  # per read into a large payload's buffer (then a sign of life)
#: Bytes the reader reads on past a frame's end without a loop pass (see the invariants).
DIRECT_READ_BUDGET = 4 * RECEIVE_SIZE
INBOX_HARD_FACTOR = 4  # x max_inbox_bytes: how far reading goes on while a reply is awaited
PONG_MIN_GAP = 0.05  # seconds between pongs: a peer pinging more often is not answered each time
STALL_GRACE = 0.05  # seconds the reader gets, once the heartbeat deadline passed, before a drop
#: How late the watchdog may ask a channel (its loop's lag) before that is our own stall,
#: which does not count against the peer (see Channel.beat).
_STALLED_AFTER = 0.5
FRAME_PACE = 64 * 1024  # bytes a second a frame's deadline allows it beyond frame_timeout

Opening = Callable[[], Awaitable[None]]


class AckTimer:
    """What the watchdog looks at for a receiver's acks while a handler runs long (see
    ``Channel._await_acked``): armed until it has looked."""

    __slots__ = ("_on_time", "armed")

    def __init__(self, on_time: Callable[[float], float]) -> None:
        self._on_time = on_time
        self.armed = False

    def beat(self, now: float) -> float:
        at = self._on_time(now)
        self.armed = at != math.inf
        return at


#: Whether a handler's exit or interrupt left a dispatcher or a reader in this event loop's run
#: (see Channel._note_escape): the program is ending through it, quietly; until an actor is
#: entered again (the program caught it and goes on: see program_goes_on).
_PROGRAM_LEAVING: RunVar[bool] = RunVar("ipcactors_program_leaving", default=False)


def program_goes_on() -> None:
    """An actor is being entered: whatever exit a handler raised was caught, and what channels
    drop from now on is named again."""
    if _PROGRAM_LEAVING.get():
        _PROGRAM_LEAVING.set(False)


class Channel:
    __slots__ = (
        "_aborted",
        "_ack_timer",
        "_active",
        "_active_at",
        "_beat_due",
        "_broken",
        "_changed",
        "_cut_by",
        "_cut_short",
        "_detach_writer",
        "_dispatched",
        "_dispatching",
        "_drained",
        "_ended",
        "_enqueued",
        "_failure",
        "_fd_stream",
        "_first_done",
        "_gone",
        "_heard",
        "_heartbeat_bytes",
        "_held",
        "_in_flight",
        "_inbox",
        "_inbox_bytes",
        "_input_done",
        "_input_shut",
        "_max_requests",
        "_next_tick",
        "_opened",
        "_opening",
        "_paused",
        "_peek",
        "_peer",
        "_ponged_at",
        "_queued_requests",
        "_reader_idle",
        "_received",
        "_received_at",
        "_session",
        "_shared",
        "_silent_after",
        "_soft_bytes",
        "_spawned",
        "_stream",
        "_suspect",
        "_task_group",
        "_tick",
        "_wanted",
        "_write_lost",
        "_writes_after_opening",
        "_writing_stopped",
        "broken_by",
        "handshake_error",
        "input_ended",
        "refusal",
    )

    def __init__(
        self,
        stream: ByteStream,
        session: Session,
        peer: Peer,
        opening: Opening | None = None,
        wanted: Callable[[], bool] | None = None,
        *,
        writes_after_opening: bool = False,
    ) -> None:
        self._stream = stream
        self._session = session
        self._peer = peer
        peer._encoder.tracebacks = send_tracebacks(stream, peer._config.remote_tracebacks)
        self._opening = opening
        # Nothing is written until the opening is done (a connection that must prove itself
        # first: what waits in the outbox stays there if it never does, see _connection).
        self._writes_after_opening = writes_after_opening and opening is not None
        # A pipelined client's: whether the opening has anything to do, asked once the welcome
        # came; until then nothing is dispatched (see run: no task for an opening without
        # connect handlers).
        self._wanted = wanted
        config = peer._config
        # Shared memory, when the handshake negotiated it (the peer accepts this many bytes).
        accept = peer._shared_accept
        self._fd_stream = stream if isinstance(stream, FdSocketStream) else None
        self._shared: SharedMemory | None = None
        if accept is not None and self._fd_stream is not None:
            self._shared = SharedMemory(
                budget=min(config.max_shared_bytes, accept),
                accept=config.max_shared_bytes,
                threshold=config.shared_threshold,
                copy_on_write=config.shared_copy_on_write,
                encoder=peer._encoder,
                outbox=peer._outbox,
                counters=peer._counters,
            )
            # From now on (a request may be encoded before `run` starts), until `run` ends.
            peer._encoder.shared = self._shared
            session.share_with(self._shared)
            peer._shared = self._shared
        self._soft_bytes = config.max_inbox_bytes
        self._max_requests = config.max_concurrent_requests
        self._task_group: TaskGroup | None = None
        self._aborted = False  # (an abort before run started: run ends at once)
        # Batches of events and requests waiting for the dispatcher, with their bytes.
        self._inbox: deque[tuple[list[Event | Request], int]] = deque()
        self._inbox_bytes = 0
        self._first_done = 0  # of the inbox's first batch: handled before the one running
        # Why what waits in the inbox is dropped, once something ended the channel on purpose
        # (a close, an abort, a timeout: see closing); None when it ends only because the loop
        # closes: nothing is said then (nor after a handler's exit: see _note_escape).
        self._cut_by: str | None = None
        self._cut_short = 0  # request handlers that ended without a reply (see _drop_inbox)
        self._queued_requests = 0  # requests in the inbox, not started yet
        self._in_flight = 0  # request handler tasks whose reply is not queued yet
        self._held = opening is not None  # nothing is dispatched until the opening is done
        self._dispatching = False
        # Whether a task was started in the channel's task group (writer, reader behind an
        # opening, dispatcher, a request's answer): when none was, the reader's end ends the
        # group without cancelling it (anyio's cancel() formats the task's repr, ~20 us, and
        # delivering it costs two loop passes, per connection).
        self._spawned = False
        self._input_done = False  # the reader is done: the dispatcher finishes and returns
        self._gone = False  # the peer's input ended or the connection broke: read to the end
        self._broken = False  # nothing more can be written: queued requests are not started
        #: What broke the stream under the reader, if it broke (the connection decides whether
        #: it is worth reconnecting: not when a TLS server refused our certificate).
        self.broken_by: BaseException | None = None
        #: Why the welcome never came, for a pipelined client's channel that ended before it.
        self.handshake_error: Exception | None = None
        #: A client's: the server refused it after the handshake (``reject replaced``).
        self.refusal: RejectedError | None = None
        #: The peer's input ended (it closed, the connection broke, or bad bytes): the channel
        #: only finishes handling what came before.
        self.input_ended = False
        self._ended = Flag()  # run() is over
        self._changed: anyio.Event | None = None  # set when the reader or dispatcher may go on
        self._drained = Flag()
        # What arrived before the input ended is dispatched (request handlers may still run),
        # or run() is over: see wait_dispatched.
        self._dispatched = Flag()
        self._write_lost = Flag()  # the writer found the connection broken
        # Stops the writer (see _start_writer); None before it starts and once it stopped.
        self._detach_writer: Callable[[], None] | None = None
        self._writing_stopped = False
        self._opened = Flag()
        if opening is None:
            self._opened.set()
        self._failure: ProtocolError | None = None
        self._paused = False  # the reader stopped reading for flow control
        self._received_at = monotonic()  # when bytes last arrived (the handshake just did)
        self._received = 0  # bytes received
        self._heard: anyio.Event | None = None  # see wait_heard
        self._heartbeat_bytes = 0  # of which pings and pongs
        self._ponged_at = -math.inf
        self._suspect = False  # silent past the deadline once: dropped if still so after grace
        self._input_shut = False  # beat shut the socket (the reader sees its end next)
        # Trio, a plain socket: how a requester looks at what the kernel holds (see
        # take_replies_now), while the reader waits with nothing read (_reader_idle).
        self._peek = peeker(stream)
        self._reader_idle = False
        self._ack_timer: AckTimer | None = None  # acknowledged mode, see _await_acked

    @property
    def inbox_bytes(self) -> int:
        """Bytes of received events and requests waiting for their handlers."""
        return self._inbox_bytes

    async def wait_ended(self) -> None:
        """Return once :meth:`run` is over: its handlers done (or cancelled)."""
        await self._ended.wait()

    async def wait_dispatched(self) -> None:
        """Return once what arrived before the input ended was dispatched, its events handled
        (request handlers may still run: their replies order nothing), or :meth:`run` is
        over."""
        await self._dispatched.wait()

    async def wait_ended_or_quiet(self, quiet: float) -> None:
        """Return once :meth:`run` is over, or once what arrived is handled (the inbox empty)
        and nothing more came for ``quiet`` seconds: a peer with nothing more to send, its
        connection still open (a leftover that a newer connection replaced, say)."""
        while not self._ended.is_set():
            silent = monotonic() - self._received_at
            if not self._inbox and silent >= quiet:
                return
            with anyio.move_on_after(max(quiet - silent, quiet / 4)):
                await self._ended.wait()

    async def wait_opened(self) -> None:
        """Return once the opening is done (or the channel ended without finishing it)."""
        if not self._opened.is_set():
            await self._opened.wait()

    async def run(self) -> None:
        """Serve the stream until it ends. Raises :class:`ProtocolError` on bad input."""
        peer = self._peer
        outbox = peer._outbox
        shared = self._shared
        try:
            async with anyio.create_task_group() as task_group:
                self._task_group = task_group
                if self._aborted:  # between the welcome and here (a server's client closed)
                    task_group.cancel_scope.cancel()
                outbox.on_lost = self._on_lost
                ahead = self._session.data_to_send()
                if ahead:  # a pipelined client's hello (or proof): first, with what is queued
                    outbox.put_reply(ahead, len(ahead))
                held = self._writes_after_opening
                writer_task = False if held else self._start_writer(task_group)
                watchdog = peer._watchdog
                if watchdog is not None and (
                    peer._heartbeat_interval is not None or peer._idle_timeout is not None
                ):
                    self._start_watch(watchdog)
                try:
                    opening = self._opening
                    inline = opening is None
                    if self._wanted is not None:
                        if not (held or writer_task):
                            inline = True
                        else:
                            # A writer task: the reader must not get ahead of its first write
                            # (what a refusal fails is what was sent), so it starts behind it
                            # and the opening keeps its own task.
                            self._wanted = None
                    if inline or opening is None:
                        await self._read(task_group)
                    else:
                        self._spawned = True
                        task_group.start_soon(self._read, task_group)
                        try:
                            await self._open()
                        finally:
                            self._release(task_group)
                        if held:
                            self._start_writer(task_group)
                        await anyio.sleep_forever()  # until the reader is done
                finally:
                    self._stop_writing()
        finally:
            if peer._watchdog is not None:
                peer._watchdog.leave(self)
                if self._ack_timer is not None:
                    peer._watchdog.leave(self._ack_timer)
            self._task_group = None
            self._opened.set()
            if self._inbox or self._cut_short:
                self._drop_inbox()
            # (on_frames: a writer's, or _hold_for_the_next's)
            outbox.on_frames = outbox.on_sent = outbox.on_lost = peer._requests.on_open = None
            if shared is not None:
                self._end_shared(shared)
            dropped = outbox.drop_replies()  # they answer this connection's requests only
            if dropped and self._cut_by is None and not self._write_lost.is_set():
                peer._log.warning(
                    f"{dropped} reply(ies) to {peer.id!r} not sent: its connection ended first"
                )
            # A frame in progress may hold up to max_frame_size: freed now, not whenever this
            # channel is (the error that ended it may hold it in a cycle, through its frames).
            self._session.end_input()
            try:
                await close_now(self._stream)
            finally:
                self._ended.set()
                self._dispatched.set()
        if self._failure is not None:
            # Raised with no reference left here: the error's traceback holds this frame, and
            # a reference from it (self._failure, a local) would make a cycle that keeps the
            # channel, and what its frames hold, until the next collection.
            failure, self._failure = self._failure, None
            try:
                raise failure
            finally:
                del failure

    def _start_writer(self, task_group: TaskGroup) -> bool:
        """Have the outbox drained: by loop callbacks, else by a task of ``task_group``'s
        (returns True then); either until :meth:`_stop_writing` (not at all if that came
        first)."""
        if self._writing_stopped:
            return False
        outbox = self._peer._outbox
        detach = attach_writer(self._stream, outbox)
        if detach is not None:
            self._detach_writer = detach
            return False
        stop = Flag()
        self._spawned = True
        task_group.start_soon(self._write_loop, task_group, stop)

        def stop_task() -> None:
            stop.set()
            outbox.direct = None  # (a request or reply is no longer written at once)
            outbox.wake()

        self._detach_writer = stop_task
        return True

    def _hold_for_the_next(self) -> None:
        """The input ended on a connection's channel: what is sent from now on waits for the
        next channel (on this one, a request would only fail with it, an event be lost): the
        writer stops, and new frames no longer name this channel's shared memory. The next
        channel comes once this one has handled what it received; a handler that sends
        meanwhile (room in a full outbox, a request's reply) would wait for it, and it for
        the handler. So, once anything waits to be written, the dispatcher has
        ``close_timeout`` to finish, as when a write fails (:meth:`_on_lost`)."""
        self._stop_writing()
        peer = self._peer
        if self._shared is not None:
            self._stop_naming(self._shared)
        outbox = peer._outbox
        if outbox.taken < outbox.enqueued:  # (the ordered lane; replies and acks are dropped)
            self._on_lost()
            return

        def queued() -> None:
            if outbox.taken < outbox.enqueued:
                outbox.on_frames = None
                self._on_lost()

        outbox.on_frames = queued  # (cleared as the channel ends, see run)

    def _stop_writing(self) -> None:
        """Write nothing more: what is queued stays in the outbox (any number of calls)."""
        self._writing_stopped = True
        detach, self._detach_writer = self._detach_writer, None
        if detach is not None:
            detach()

    def _stop_naming(self, shared: SharedMemory) -> None:
        """New frames no longer name this connection's shared memory."""
        peer = self._peer
        peer._encoder.shared = None
        if peer._shared is shared:
            peer._shared = None

    def _end_shared(self, shared: SharedMemory) -> None:
        """Frames naming this connection's shared memory never go out on another one."""
        peer = self._peer
        self._stop_naming(shared)
        self._session.share_with(None)
        shared.close()
        dropped = peer._outbox.drop_shared()
        if dropped:
            peer._counters.shared_dropped += len(dropped)
            peer._requests.fail_frames(
                ConnectionLostError(
                    f"the connection with {peer.id!r} was lost before a request naming its "
                    "shared memory went out"
                ),
                dropped,
            )
            peer._log.warning(
                f"{len(dropped)} frame(s) with arrays in shared memory for {peer.id!r} were "
                "not sent: the connection was lost"
            )

    def _claim_fds(self) -> None:
        """Descriptors the last read brought: for the Share frames it completes."""
        assert self._fd_stream is not None
        fds = self._fd_stream.take_fds()
        if self._shared is None:
            close_fds(fds)
            raise DecodeError("the peer passed file descriptors without shared memory")
        self._shared.fds.extend(fds)

    def _start_watch(self, watchdog: Watchdog) -> None:
        peer = self._peer
        interval = peer._heartbeat_interval
        idle = peer._idle_timeout
        self._silent_after = (
            math.inf if interval is None else interval + peer._config.heartbeat_timeout
        )
        # Idleness is checked at least 4 times per idle_timeout: closed within 1.25 x of it.
        self._tick = min(interval or math.inf, (idle or math.inf) / 4)
        now = monotonic()
        self._next_tick = now + self._tick
        self._enqueued = peer._outbox.enqueued
        self._active = 0
        self._active_at = now
        self._beat_due = min(self._next_tick, self._received_at + self._silent_after)
        watchdog.join(self, self._beat_due)

    def abort(self, why: str | None = None) -> None:
        """Stop at once: cancel reader, writer and dispatcher; the stream is closed by ``run``
        (at once, if it has not started yet). ``why``: what the warning naming the events
        and requests left unhandled says (see :meth:`closing`)."""
        self._aborted = True
        self.closing(why)
        if self._task_group is not None:
            self._task_group.cancel_scope.cancel()

    # --- flow control -------------------------------------------------------------------------

    def _wake(self) -> None:
        """Something the reader or the dispatcher may wait for changed: let them look again
        (each registers again for what it needs)."""
        changed = self._changed
        if changed is not None:
            self._changed = None
            peer = self._peer
            peer._outbox.on_sent = peer._requests.on_open = None
            changed.set()

    async def _wait_change(self, *, writes: bool = False, requests: bool = False) -> None:
        """Wait for a :meth:`_wake`; also for the writer's progress (``writes``) or a request
        to the peer opening (``requests``). Outside waits, those hooks cost nothing."""
        if self._changed is None:
            self._changed = anyio.Event()
        peer = self._peer
        if writes:
            peer._outbox.on_sent = self._wake
        if requests:
            peer._requests.on_open = self._wake
        await self._changed.wait()

    def _gate_open(self) -> bool:
        """Whether a request may start now (see the module's invariants)."""
        outbox = self._peer._outbox
        return self._in_flight < self._max_requests and (
            not outbox._replies or not outbox.reply_backlog_full()
        )

    def _may_start(self) -> bool:
        """Whether a request that arrives now may start at once: nothing received waits
        before it, no opening holds the peer back, and the gate is open."""
        ready = self._peer._ready
        return (
            not self._inbox
            and not self._held
            and self._gate_open()
            and (ready is None or ready.is_set())
        )

    def _on_lost(self) -> None:
        """The writer found the connection broken (or stopped with frames waiting, see
        :meth:`_hold_for_the_next`): nothing more can be written. The reader still reads what
        the peer sent before it went (its end of stream or reset follows) and the dispatcher
        handles it, for at most ``close_timeout`` from now: a handler waiting for room in an
        outbox that no writer drains would wait for ever."""
        if self._write_lost.is_set():
            return
        self._gone = self._broken = True
        self._write_lost.set()
        self._peer._unwritable()  # a server's client: emitting to it fails from now on
        self._wake()

    def _must_pause(self) -> bool:
        """Whether the reader should stop reading for now."""
        if self._gone:
            return False  # read what is left, to the end
        size = self._inbox_bytes
        hard = self._soft_bytes * INBOX_HARD_FACTOR
        if size >= hard:
            # A reply is awaited: read on past the hard cap by what may wait below us ahead of
            # it (asked only here, in this rare state: one system call).
            return not self._peer._requests or size >= hard + bytes_below(self._stream)
        if len(self._peer._requests):
            return False  # a reply is awaited: read on
        return size >= self._soft_bytes or (self._queued_requests > 0 and not self._gate_open())

    def _answered(self, replied: bool) -> None:
        """A request handler task queued its reply, or ended without one (cut short)."""
        self._in_flight -= 1
        if not replied:
            self._cut_short += 1
        self._wake()

    def _start(self, message: Request, task_group: TaskGroup) -> None:
        if self._peer._start_answer(message, task_group, self._answered):
            self._spawned = True
            self._in_flight += 1  # until its reply is queued (see _answered)

    def _release(self, task_group: TaskGroup) -> None:
        """The opening is done: dispatch what waited for it."""
        self._held = False
        self._opened.set()
        if self._inbox and not self._dispatching:
            self._dispatching = self._spawned = True
            task_group.start_soon(self._dispatch_loop, task_group)
        self._wake()

    # --- reading ------------------------------------------------------------------------------

    async def _read(self, task_group: TaskGroup) -> None:
        """The reader, then what follows the end of the peer's input."""
        try:
            if not self._session.is_open and not await self._await_welcome(task_group.cancel_scope):
                task_group.cancel_scope.cancel()
                return
            if self._wanted is not None:
                self._open_after_welcome(task_group)
            listen = listener_setter(self._stream)  # (asyncio: see _in_place)
            if listen is None:
                await self._read_loop(task_group)
            else:
                listen(self._in_place)
                try:
                    await self._read_loop(task_group)
                finally:
                    listen(None)
        except ProtocolError as exc:
            # Nothing after bad input is used; what came before it, in reads of its own (or
            # before a peer stalled in a frame), is handled, as after a close; and nothing
            # more is written to the peer, as after a failed write (a handler emitting back
            # to one that reads nothing must not hold the channel).
            self._failure = exc
            self._write_no_more()
            await self._finish_input()
        except RejectedError as exc:  # the server's last word (another took our id's place)
            self.refusal = exc
            self._lost()
        except BaseException as exc:  # (a plain request handler's exit, answered inline)
            self._note_escape(exc)
            raise
        else:
            # The peer closed its side, or reset the connection after its last frames (or
            # went silent past the heartbeat's deadline, see beat).
            await self._finish_input()
        if self._spawned:
            task_group.cancel_scope.cancel()

    def _write_no_more(self) -> None:
        """Bad bytes or a silent peer: nothing more is written to it. A server's client's
        outbox closes as after a failed write (what waits on it fails, so a handler writing
        to a peer that reads nothing cannot hold the channel); a connection's writer stops as
        its input ends (``_hold_for_the_next``: its outbox waits for the next connection, and
        its handlers get ``close_timeout`` only once something waits to go)."""
        if not self._peer._outbox_outlives_channel:
            self._on_lost()

    async def _finish_input(self) -> None:
        """The input ended: the dispatcher finishes what arrived first (after the opening,
        which starts it)."""
        self._lost()
        self._gone = True
        if self._dispatching or self._inbox or self._in_flight:
            self._input_done = True
            self._wake()
            await self._finish_dispatching()

    async def _open(self) -> None:
        """The opening (the connect handlers), run as a handler of the peer's: a close it
        awaits of what it runs under is kept until it is done (see ``_handling``)."""
        assert self._opening is not None
        with Handling(self._peer):
            await self._opening()

    def _open_after_welcome(self, task_group: TaskGroup) -> None:
        """A pipelined client, welcomed: run the opening beside the reader if it has anything
        to do (connect handlers, registered by now), else release what waited for it at once:
        a fresh connection's first reply costs no task and no loop pass for an empty opening."""
        wanted = self._wanted
        assert wanted is not None
        self._wanted = None
        if not wanted():
            self._release(task_group)
            return

        async def open_then_release() -> None:
            try:
                await self._open()
            finally:
                self._release(task_group)

        self._spawned = True
        task_group.start_soon(open_then_release)

    async def _await_welcome(self, scope: CancelScope) -> bool:
        """A pipelined client: read the welcome; whether it came (see the module's docstring).
        Raises :class:`ProtocolError` (a reject is not one: it is a refusal). ``scope``, the
        channel's own, keeps the deadline (a scope of its own cost ~5 us a connection): past
        it, everything the channel runs ends, as after any failed handshake."""
        session = self._session
        receive = self._stream.receive
        timeout = self._peer._config.handshake_timeout
        deadline = scope.deadline = anyio.current_time() + timeout
        try:
            while not session.is_open:
                try:
                    data = await receive(RECEIVE_SIZE)
                except anyio.EndOfStream:
                    raise ConnectionResetError(
                        "the peer closed the connection during the handshake"
                    ) from None
                session.receive(data)
        except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            # OSError: also RejectedError and its kinds, ConnectionResetError.
            self._handshake_failed(exc)
            return False
        except anyio.get_cancelled_exc_class():
            if anyio.current_time() >= deadline:  # (else aborted: not a failed handshake)
                self._handshake_failed(
                    TimeoutError(f"no welcome within handshake_timeout ({timeout} s)")
                )
            raise  # the channel's scope takes it
        finally:
            scope.deadline = math.inf
        assert session.welcome is not None
        self._peer._welcomed(session.welcome)
        self._received_at = monotonic()
        return True

    def _handshake_failed(self, exc: Exception) -> None:
        """The welcome will not come: the connection decides, once the channel ended, whether
        what was sent ahead of it goes again or fails with ``exc``."""
        self._broken = True
        self.handshake_error = exc

    async def _finish_dispatching(self) -> None:
        """Wait for the dispatcher to handle what arrived, and on a server's client for its
        request handlers to end; on a connection, once the writer
        is lost (now or meanwhile), for at most ``close_timeout`` more: a handler could wait
        for ever for room in its outbox, which outlives the channel. A server's client's
        closes (``Client._unwritable``): what waits on it fails at once, and what the client
        sent is handled however long it takes."""
        async with anyio.create_task_group() as bound:

            async def stop_once_unwritable() -> None:
                await self._write_lost.wait()
                timeout = self._peer._config.close_timeout
                await anyio.sleep(timeout)
                self.closing(
                    "the peer's side ended, and they were not handled within close_timeout "
                    f"({timeout:g} s) once something waited to be sent (the next connection "
                    "waits for them)"
                )
                bound.cancel_scope.cancel()

            if self._peer._outbox_outlives_channel:
                bound.start_soon(stop_once_unwritable)
            await self._opened.wait()
            if self._dispatching:
                await self._drained.wait()
            self._dispatched.set()
            # A server's client's request handlers too, and then their replies (and what else
            # waits) to a peer that shut only its sending side: within close_timeout, at once
            # if unwritable. Not a connection's, whose next connection must not wait on them
            # (they may wait for what only it brings): they are cut short, their replies could
            # go nowhere.
            if not self._peer._outbox_outlives_channel:
                while self._in_flight:
                    await self._wait_change()
                with anyio.move_on_after(self._peer._config.close_timeout):
                    await self._peer._outbox.wait_flushed()
            bound.cancel_scope.cancel()

    def _lost(self) -> None:
        self.input_ended = True
        peer = self._peer
        if peer._watchdog is not None:
            # The peer's last came: its silence from now on is no missed heartbeat (what it
            # sent is still handled, however long that takes), and a ping would not reach it.
            peer._watchdog.leave(self)
        if peer._outbox_outlives_channel:
            self._hold_for_the_next()
        peer._input_ended()
        # (A request in a write under way waits for the channel's end: if the kernel has no
        # whole copy of it, it goes to the next connection.)
        peer._requests.fail(
            ConnectionLostError(f"the connection with {peer.id!r} was lost before the reply"),
            sent_up_to=peer._outbox.written_up_to,
        )

    def _take(self, messages: list[Message], task_group: TaskGroup) -> list[Event | Request]:
        """A read's messages, as the module's invariants say: replies, heartbeats and acks
        handled, requests started (or left behind what is before them); returns the events
        and requests for the dispatcher, in order."""
        peer = self._peer
        requests = peer._requests
        events: list[Event | Request] = []
        if self._held and peer._control_events and peer._receiver is None:
            messages = self._take_control(messages, task_group)
        # The session checked them: no reserved name, nothing of the handshake.
        # (The commonest kinds first: events, replies, requests.)
        for message in messages:
            if type(message) is Event:
                events.append(message)
            elif type(message) is Reply:
                requests.resolve(message)
            elif type(message) is Request:
                if events or not self._may_start():
                    events.append(message)  # it starts after what is before it
                    self._queued_requests += 1
                elif peer._start_answer(message, task_group, self._answered):
                    self._spawned = True
                    self._in_flight += 1  # until its reply is queued (see _answered)
            elif type(message) is ErrorReply:
                requests.reject(message)
            elif type(message) is Ping:
                self._heartbeat_bytes += frame_size(peer._encoder.ping())
                self._pong()
            elif type(message) is Pong:
                self._heartbeat_bytes += frame_size(peer._encoder.pong())
            elif type(message) is Ack:
                peer._acknowledged(message.seq)
        return events

    def _take_control(self, messages: list[Message], task_group: TaskGroup) -> list[Message]:
        """While an opening holds the peer's events: handle now those its owner's protocol
        names (``Peer._control_events``: a supervised child's reports, which must not wait
        for the connection its id replaced); returns the others. (Not in the acknowledged
        mode: an event handled out of its turn would make those before it look delivered.)"""
        peer = self._peer
        control = peer._control_events
        others: list[Message] = []
        for message in messages:
            if type(message) is Event and message.event in control:
                pending = peer._call_handlers(message)
                if pending is not None:
                    self._spawned = True
                    task_group.start_soon(_awaited, pending)
            elif type(message) is Request and message.event in control:
                if peer._start_answer(message, task_group, self._answered):
                    self._spawned = True
                    self._in_flight += 1  # until its reply is queued (see _answered)
            else:
                others.append(message)
        return others

    def _enqueue(self, events: list[Event | Request], size: int, task_group: TaskGroup) -> None:
        """Queue a read's events and requests (``size``: the bytes of their frames) for the
        dispatcher, starting it if need be."""
        self._inbox.append((events, size))
        self._inbox_bytes += size
        if not self._dispatching and not self._held:
            self._dispatching = self._spawned = True
            task_group.start_soon(self._dispatch_loop, task_group)
        self._wake()

    async def _read_loop(self, task_group: TaskGroup) -> None:
        session = self._session
        receive_messages = session.receive
        peer = self._peer
        soft_bytes = self._soft_bytes
        receive = self._stream.receive
        receive_into = receiver_into(self._stream)
        receive_now, receive_into_now = receivers_now(self._stream) or (None, None)
        receive_size = read_size(self._stream, RECEIVE_SIZE)
        wait_readable = readable_waiter(self._stream)
        drained = False  # the last read got less than it asked for: the kernel had no more
        frame_timeout = peer._config.frame_timeout
        data: bytes = b""  # bytes the handshake left in the session come out first
        got = 0  # bytes received in place (into the session's receive_buffer) instead
        direct = 0  # bytes read without waiting since the reader last waited (a loop pass)
        buffered = session.buffered
        fd_stream = self._fd_stream
        shared = self._shared
        frame_waited = 0.0  # seconds the frame in progress has kept the reader waiting
        while True:
            if fd_stream is not None and fd_stream.pending_fds:
                self._claim_fds()
            events = self._take(
                session.received(got) if got else receive_messages(data), task_group
            )
            # The bytes of the frames this read completed (what it added, less what is left).
            completed = buffered + (got or len(data)) - session.buffered
            if completed:
                frame_waited = 0.0  # a frame ended with this read (the next one began in it)
            if shared is not None and shared.fds and not session.buffered:
                # Every frame the read completed was decoded: none claimed these.
                count = len(shared.fds)
                close_fds(shared.fds)
                raise DecodeError(f"the peer passed {count} file descriptor(s) no frame claimed")
            if events:
                self._enqueue(events, completed, task_group)  # counted as those bytes
            del events  # (see _dispatch_loop)
            # (Below the soft bound with no request waiting, there is no reason to pause.)
            if (self._inbox_bytes >= soft_bytes or self._queued_requests) and self._must_pause():
                self._paused = True
                try:
                    while self._must_pause():
                        await self._wait_change(writes=self._queued_requests > 0, requests=True)
                finally:
                    self._paused = False
                    self._received_at = monotonic()  # silence counts from now: we did not read
            size = receive_size
            buffered = session.buffered
            missing = session.missing()
            if missing is not None and missing > size:
                size = min(missing, MAX_RECEIVE_SIZE)
            # Within this pass's budget, a frame that misses less than one read is read with
            # what follows it: a payload's last bytes alone cost a read, and the next frame's
            # first bytes a loop pass (a stream of 64 KiB payloads: two reads and a pass each).
            ahead = (
                direct < DIRECT_READ_BUDGET
                and receive_now is not None
                and missing is not None
                and missing < receive_size
            )
            # A large payload arriving: straight into its final buffer, a slice at a time.
            into = session.receive_buffer() if receive_into is not None and not ahead else None
            got = 0
            data = b""
            try:
                if into is not None:
                    assert receive_into is not None
                    into = into[:MAX_RECEIVE_INTO]
                    # In the middle of a frame: what the kernel holds is read without a loop
                    # pass or a timeout scope (~12 us each); only a wait is bounded.
                    if receive_into_now is not None:
                        got = receive_into_now(into)
                        direct += got
                    if not got:
                        direct = 0
                        wait = _frame_wait(frame_waited, frame_timeout, buffered + (missing or 0))
                        began = monotonic()
                        with anyio.fail_after(wait):
                            got = await receive_into(into)
                        frame_waited += monotonic() - began
                elif buffered:
                    if receive_now is not None:
                        # Past the budget, only this frame's bytes: the next frame starts
                        # after a loop pass.
                        data = receive_now(size if ahead or missing is None else min(size, missing))
                        direct += len(data)
                    if not data:
                        direct = 0
                        wait = _frame_wait(frame_waited, frame_timeout, buffered + (missing or 0))
                        began = monotonic()
                        with anyio.fail_after(wait):
                            data = await receive(size)
                        frame_waited += monotonic() - began
                else:
                    direct = 0
                    self._reader_idle = True
                    try:
                        if drained and wait_readable is not None:
                            # Trio: nothing more was there a moment ago (the peer usually
                            # answers what we sent): wait, then read, instead of a read
                            # that finds nothing first.
                            try:
                                await wait_readable()
                            except (OSError, anyio.ClosedResourceError):
                                pass  # (the receive below says how)
                            else:
                                assert receive_now is not None
                                data = receive_now(size)
                        if not data:
                            data = await receive(size)
                    finally:
                        self._reader_idle = False
            except TimeoutError:
                raise DecodeError(
                    f"the peer stalled for {frame_timeout} s in the middle of a frame"
                ) from None
            except anyio.EndOfStream:
                if buffered:
                    # A connection that broke (a sender whose close_timeout ran out), not
                    # bytes that break the protocol: the whole frames before are handled.
                    self._broken = True
                    whose = "the heartbeat's deadline" if self._input_shut else "the peer"
                    self.broken_by = DecodeError(
                        f"{whose} closed the connection {buffered} bytes into a frame "
                        "(that frame is dropped)"
                    )
                    if not self._input_shut:  # (beat said why, once)
                        self._peer._log.warning(str(self.broken_by))
                return
            except (anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
                self._broken = True
                # Without its traceback: kept on the channel, it would hold this frame (and the
                # buffer of a frame in progress) in a cycle with the channel until a collection.
                self.broken_by = exc.with_traceback(None)
                return
            if data or got:
                self._received_at = monotonic()
                self._received += got or len(data)
                if self._heard is not None:
                    self._heard.set()
            drained = not got and len(data) < size

    def _in_place(self, data: memoryview) -> bool:
        """The asyncio stream's listener while the reader waits: a read that is whole small
        frames of replies and requests is handled right in the loop's callback, by the
        reader's rules (``_take``). A reply wakes its requester a loop pass sooner; a request
        whose only handler is a plain function is answered there, its reply written through,
        the reader not woken. Requests are taken only when none would have to wait (nothing
        in the inbox, no opening, the gate open). Anything else is the reader's, in order;
        what this raises (bad input, a handler's ``BaseException``), the reader raises."""
        task_group = self._task_group
        if task_group is None:
            return False
        shared = self._shared
        if shared is not None and shared.fds:
            return False  # descriptors wait for their frame: the reader's checks
        requests = self._may_start()
        if not requests and not self._peer._requests:
            return False  # nothing to take: no request may start, no reply is awaited
        messages = self._session.in_place(data, requests)
        if messages is None:
            return False
        if requests:
            in_loop_callback()  # a handler may call anyio, as it could in the reader's task
        events = self._take(messages, task_group)
        del messages
        if events:  # requests behind one that closed the gate (a task per handler)
            self._enqueue(events, len(data), task_group)
        self._received_at = monotonic()
        self._received += len(data)
        if self._heard is not None:
            self._heard.set()
        return True

    async def wait_heard(self) -> None:
        """Return once the peer has sent something on this channel (at once if it has)."""
        if self._received:
            return
        if self._heard is None:
            self._heard = anyio.Event()
        await self._heard.wait()

    def take_replies_now(self) -> None:
        """A requester's, on Trio, right after its request went to the kernel (a peer on the
        same CPU has often answered by then): while the reader waits with nothing read, take
        what the kernel holds if it is nothing but whole small replies, resolving them here,
        the reader not woken; else leave it to the reader, untouched."""
        peek = self._peek
        task_group = self._task_group
        if peek is None or not self._reader_idle or task_group is None:
            return
        fd_stream = self._fd_stream
        shared = self._shared
        if (fd_stream is not None and fd_stream.pending_fds) or (shared is not None and shared.fds):
            return  # descriptors wait for their frame: the reader's checks
        look, skip = peek
        data = look(RECEIVE_SIZE)
        if not data:
            return
        messages = self._session.in_place(data, False)  # (replies only: no handler runs)
        if messages is None:
            return
        try:
            skip(len(data))
        except (OSError, anyio.BrokenResourceError):
            self.abort()  # (the reader would have met it: the connection broke)
            return
        self._take(messages, task_group)  # (replies only: resolved, nothing queued)
        self._received_at = monotonic()
        self._received += len(data)
        if self._heard is not None:
            self._heard.set()

    def _pong(self) -> None:
        outbox = self._peer._outbox
        if outbox.used or outbox.closed:
            return  # what is queued reaches the peer first: that is our sign of life
        if self._received_at - self._ponged_at >= PONG_MIN_GAP:
            self._ponged_at = self._received_at
            pong = self._peer._encoder.pong()
            outbox.put_urgent(pong, frame_size(pong))

    def beat(self, now: float) -> float:
        """Heartbeats and the idle timeout, as the actor's watchdog asks (``_watchdog``): ping
        when quiet, end the channel when the peer is silent for ``interval + timeout`` (or idle
        for ``idle_timeout``). Returns when to be asked again."""
        interval = self._peer._heartbeat_interval
        if interval is not None and now - self._beat_due > _STALLED_AFTER:
            # Asked this late, our own loop stalled (a paused process, a blocking handler):
            # we sent no ping meanwhile, so the peer's silence says nothing. It gets a full
            # heartbeat_timeout from the ping that goes now (a silent peer, one with
            # heartbeats off, was dropped at once, the request in flight failing).
            self._received_at = max(self._received_at, now - interval)
        self._beat_due = due = self._beat(now)
        return due

    def _beat(self, now: float) -> float:
        peer = self._peer
        outbox = peer._outbox
        interval = peer._heartbeat_interval
        silent_after = self._silent_after
        silent = 0.0 if self._paused else now - self._received_at
        if silent >= silent_after:
            if not self._suspect:
                # Our own loop may have been the one stalled (a blocking handler, a paused
                # process): let the reader take what waits in the kernel before judging.
                self._suspect = True
                return now + STALL_GRACE
            if self._input_shut:  # a deadline ago, and the reader has not seen it end
                self.abort()
                return math.inf
            peer._heartbeat_lost(
                f"nothing from {peer!r} for {silent:.1f} s (heartbeat_interval + "
                f"heartbeat_timeout = {silent_after:g} s): it is frozen, hung or gone; "
                "dropping the connection"
            )
            if (self._inbox or self._dispatching) and shut_socket(self._stream):
                # As if the peer had closed the connection: what it sent first is handled,
                # and nothing more reaches it (what waits to go fails, or, on a connection,
                # waits for the next one: the dispatcher then has close_timeout).
                self._input_shut = True
                self._write_no_more()
                return now + silent_after
            self.abort()
            return math.inf
        self._suspect = False
        if now >= self._next_tick:
            self._next_tick = now + self._tick
            idle = peer._idle_timeout
            if idle is not None:
                active = self._received - self._heartbeat_bytes
                # A client whose events, requests or opening we still handle is not idle: the
                # clock starts once what it sent is done.
                if self._inbox or self._in_flight or self._held:
                    self._active = -1  # (so the first tick once it is done counts as activity)
                    self._active_at = now
                elif self._paused or active != self._active:
                    self._active = active
                    self._active_at = now
                elif now - self._active_at >= idle:
                    peer._idle_closed(
                        f"closing {peer!r}: nothing but heartbeats from it for "
                        f"{now - self._active_at:.1f} s (idle_timeout={idle:g} s)"
                    )
                    self.abort()
                    return math.inf
            quiet = interval is not None and silent >= interval
            if (
                interval is not None
                and (quiet or outbox.enqueued == self._enqueued)
                and not outbox.used
                and not outbox.closed
            ):
                ping = peer._encoder.ping()
                outbox.put_urgent(ping, frame_size(ping))
            self._enqueued = outbox.enqueued
        if self._paused:
            return self._next_tick
        return min(self._next_tick, self._received_at + silent_after)

    # --- dispatching --------------------------------------------------------------------------

    def _note_escape(self, exc: BaseException) -> None:
        """``exc`` leaves the dispatcher or the reader: unless it is a cancellation, it is a
        handler's exit or interrupt (what handlers raise that is not an ``Exception`` is not
        caught), which ends the program: what any channel of this event loop drops on the way
        out, however it is closed, is dropped in silence."""
        if not isinstance(exc, anyio.get_cancelled_exc_class()):
            _PROGRAM_LEAVING.set(True)
            self._peer._handler_exited()

    def closing(self, why: str | None = None) -> None:
        """The channel is being ended on purpose: what its inbox holds then is dropped with a
        warning that says ``why`` (the first reason given is kept)."""
        if self._cut_by is None:
            self._cut_by = why or (
                "the connection they came on was closed before its handlers got to them (a "
                "close cancels the handlers still running)"
            )

    @property
    def unhandled(self) -> int:
        """Events and requests received and not handled yet (one whose handler runs
        included, requests whose handlers run too): what ending the channel now would drop;
        and, once it ended, the requests whose handlers it cut short."""
        waiting = sum(len(batch) for batch, _ in self._inbox) - self._first_done
        return waiting + self._in_flight + self._cut_short

    def _drop_inbox(self) -> None:
        """The channel ended with messages received and not handled (it was aborted, or its
        dispatcher cut short): hold none of them, and say how many (in the acknowledged mode
        the peer sends them again or reports them: a resume does not count them delivered)."""
        dropped = self.unhandled
        cut_short, self._cut_short = self._cut_short, 0
        self._inbox.clear()
        self._inbox_bytes = 0
        peer = self._peer
        why = self._cut_by
        if (
            dropped > 0
            and peer._receiver is None
            and why is not None
            and not _PROGRAM_LEAVING.get()
        ):
            cut = ""
            if cut_short:
                cut = f" ({cut_short} of them requests cut short in their handlers)"
            peer._log.warning(
                f"{dropped} event(s) or request(s) from {peer.id!r} dropped unhandled{cut}: {why}"
            )

    async def _dispatch_loop(self, task_group: TaskGroup) -> None:
        peer = self._peer
        inbox = self._inbox
        done = 0  # of the first batch in the inbox, while an await may be cancelled
        try:
            if peer._ready is not None:
                await peer._ready.wait()  # see Peer._ready
            while True:
                if not inbox:
                    if self._input_done:
                        return
                    await self._wait_change()
                    continue
                batch, size = inbox[0]
                index, end = 0, len(batch)
                while index < end:
                    message = batch[index]
                    if type(message) is Event:
                        # A run of them, in a tight loop (see Peer._on_events).
                        index, pending = peer._on_events(batch, index)
                        if pending is not None:
                            # (this one's handlers, cancelled, did not finish; kept where
                            # unhandled reads it while they run)
                            done = self._first_done = index - 1
                            message = None  # type: ignore[assignment]
                            with Handling(peer):  # (see _handling: closing from it)
                                if peer._receiver is None:
                                    await pending
                                else:
                                    try:
                                        await self._await_acked(pending, batch[index - 1])
                                    finally:
                                        peer.redelivered = False  # (its handlers are done)
                        if peer._ack_pending and monotonic() >= peer._ack_due:
                            peer._send_ack()  # slow handlers behind a backlog: ack_interval
                        continue
                    index += 1
                    assert type(message) is Request
                    if self._gone and peer._outbox_outlives_channel:
                        # A connection whose server went: no reply could go (its next one has
                        # request ids of its own), and a handler would be cut short once the
                        # events are handled; its reply, held for the next connection, could
                        # shut the gate on them. Not started: counted as cut short.
                        self._queued_requests -= 1
                        self._cut_short += 1
                        continue
                    while not self._gate_open():
                        done = self._first_done = index - 1
                        await self._wait_change(writes=True)
                    self._queued_requests -= 1
                    # (Also once the peer went: what it sent is handled; the reply goes
                    # where it still can, see Peer._reply.)
                    self._start(message, task_group)
                inbox.popleft()
                done = self._first_done = 0
                # Hold no message while waiting: an array in shared memory is released as
                # soon as its handlers drop it.
                del batch
                message = None  # type: ignore[assignment]
                self._inbox_bytes -= size
                if peer._ack_pending and (not inbox or peer._ack_pending >= peer._ack_every):
                    peer._send_ack()  # cumulative: every ack_every events, or once idle
                self._wake()
        except BaseException as exc:
            self._note_escape(exc)
            raise
        finally:
            self._first_done = done
            self._drained.set()

    async def _await_acked(self, pending: Awaitable[None], event: Event | Request) -> None:
        """Acknowledged mode: await an event's handlers, and meanwhile have the watchdog
        acknowledge the events done before it, ``ack_interval`` after the first of them (see
        ``Peer._ack_on_time``): a handler that runs long does not hold their acks back."""
        peer = self._peer
        peer._ack_in_flight = event.seq if type(event) is Event else None
        done_before = peer._ack_pending - (peer._ack_in_flight is not None)
        timer = self._ack_timer
        watchdog = peer._watchdog
        if done_before > 0 and watchdog is not None and watchdog.open:
            if timer is None:
                timer = self._ack_timer = AckTimer(peer._ack_on_time)
            if not timer.armed:
                timer.armed = True
                watchdog.join(timer, peer._ack_due)
        try:
            await pending
        except BaseException:
            # Its handlers did not return (the channel was cut short): not delivered, so a
            # resume sends it again, flagged redelivered (they may have run in part).
            receiver = peer._receiver
            if type(event) is Event and receiver is not None and receiver.last == event.seq:
                receiver.last = event.seq - 1
                receiver.redelivered_up_to = max(receiver.redelivered_up_to, event.seq)
            raise
        finally:
            peer._ack_in_flight = None

    async def _write_loop(self, task_group: TaskGroup, stop: Flag) -> None:
        await drain_outbox(self._stream, self._peer._outbox, stop.is_set)
        if stop.is_set():
            return  # stopped, not lost (see _stop_writing)
        self._on_lost()
        # The reader reads what the peer sent before it went; should the peer keep the reading
        # side open all the same, the channel ends after close_timeout. (Once the input ended,
        # handling what came is _finish_dispatching's to bound.)
        await anyio.sleep(self._peer._config.close_timeout)
        if not self.input_ended:
            task_group.cancel_scope.cancel()


async def _awaited(pending: Awaitable[None]) -> None:
    await pending


def _frame_wait(waited: float, timeout: float, size: int) -> float:
    """How long the reader may wait for more of a frame of ``size`` bytes that has kept it
    waiting ``waited`` seconds already: ``timeout`` at most, and what is left of the frame's
    allowance (see the invariants). Raises DecodeError once that is spent."""
    allowed = timeout + size / FRAME_PACE
    left = allowed - waited
    if left <= 0:
        raise DecodeError(
            f"the peer took over {allowed:.1f} s to send a frame of {size} bytes "
            f"(frame_timeout={timeout} s, plus a second per {FRAME_PACE} bytes)"
        )
    return min(timeout, left)
