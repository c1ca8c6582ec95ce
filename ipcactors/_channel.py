"""A channel: one live byte stream to a peer, with its reader, writer and event dispatcher.

Invariants:
- Exactly one writer drains the peer's outbox (loop callbacks on asyncio, a task otherwise),
  coalescing small frames into few large writes; a request or reply with nothing queued before
  it is written at once by its sender (see ``Outbox.put_urgent``).
- The reader parses every frame a read completes: replies are resolved at once; a request with
  nothing queued before it starts at once (answered inline when its only handler is a plain
  function, else in a task of its own); events, and requests behind them, queue (bounded) for
  one dispatcher, started with the first batch, which handles events one at a time, in order.
  Replies keep flowing meanwhile (a handler may itself await a request to the same peer), and a
  slow request never holds up what comes after it.
- Events received before the peer closed its side are still dispatched; bytes that break the
  protocol end the channel with a :class:`ProtocolError` and nothing after them is used.
- Lifecycle names never arrive from the wire: a frame carrying one is a protocol error.
- Heartbeats (``Config.heartbeat_interval``): any bytes received are a sign of life. A ping
  goes out after ``interval`` with nothing received or nothing sent (so that a peer busy
  sending us a long frame hears from us too), and only while nothing waits in the outbox
  (queued bytes reach the peer first and say as much). The reader answers a ping with a pong,
  written at once, at most one per ``PONG_MIN_GAP`` and only with nothing queued: a peer that
  floods pings or never reads cannot make us queue pongs. With nothing received for
  ``interval + timeout`` the channel ends as if the peer had closed it.
- A server's client that sends nothing but heartbeats for ``idle_timeout`` is closed.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable
from time import monotonic
from typing import TYPE_CHECKING

import anyio
from anyio.abc import ByteStream, TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ._errors import DecodeError, ProtocolError
from ._protocol import (
    HEADER_SIZE,
    PING_FRAME,
    PONG_FRAME,
    ErrorReply,
    Event,
    Frame,
    FrameDecoder,
    Message,
    Ping,
    Pong,
    Reply,
    Request,
    is_reserved,
)
from ._streams import attach_writer, drain_outbox, send_tracebacks

if TYPE_CHECKING:
    from ._peer import Peer

__all__ = ["Channel", "frame_bytes", "read_handshake_message"]

RECEIVE_SIZE = 64 * 1024  # per read for small traffic; large frames are read in larger chunks
MAX_RECEIVE_SIZE = 4 * 1024 * 1024
EVENT_BATCHES = 64  # batches of events waiting for the dispatcher before the reader waits
PONG_MIN_GAP = 0.05  # seconds between pongs: a peer pinging more often is not answered each time


def frame_bytes(frame: Frame) -> bytes:
    return frame if isinstance(frame, bytes) else b"".join(frame)


async def read_handshake_message(stream: ByteStream, decoder: FrameDecoder) -> Message:
    """Read until ``decoder`` yields the first message (it stops after a handshake message)."""
    while True:
        try:
            data = await stream.receive(RECEIVE_SIZE)
        except anyio.EndOfStream:
            raise ConnectionResetError(
                "the peer closed the connection during the handshake"
            ) from None
        messages = decoder.feed(data)
        if messages:
            return messages[0]


class Channel:
    __slots__ = (
        "_backlog",
        "_batches",
        "_decoder",
        "_drained",
        "_heartbeat_bytes",
        "_peer",
        "_ponged_at",
        "_received",
        "_received_at",
        "_stream",
        "_task_group",
    )

    def __init__(self, stream: ByteStream, decoder: FrameDecoder, peer: Peer) -> None:
        self._stream = stream
        self._decoder = decoder
        self._peer = peer
        peer._encoder.tracebacks = send_tracebacks(stream, peer._config.remote_tracebacks)
        self._task_group: TaskGroup | None = None
        self._backlog = 0  # messages handed to the dispatcher, not yet handled
        self._batches: MemoryObjectSendStream[list[Event | Request]] | None = None
        self._drained = anyio.Event()
        self._received_at = monotonic()  # when bytes last arrived (the handshake just did)
        self._received = 0  # bytes received
        self._heartbeat_bytes = 0  # of which pings and pongs
        self._ponged_at = -math.inf

    async def run(self) -> None:
        """Serve the stream until it ends. Raises :class:`ProtocolError` on bad input."""
        failure: ProtocolError | None = None
        try:
            async with anyio.create_task_group() as task_group:
                self._task_group = task_group
                detach = attach_writer(self._stream, self._peer._outbox)
                if detach is None:
                    task_group.start_soon(self._write_loop, task_group)
                config = self._peer._config
                if config.heartbeat_interval is not None or self._peer._idle_timeout is not None:
                    task_group.start_soon(self._watch, task_group)
                try:
                    await self._read_loop(task_group)
                except ProtocolError as exc:
                    failure = exc  # nothing after bad input is handled
                else:
                    if self._batches is not None:
                        # The peer closed its side: the dispatcher finishes what arrived first.
                        self._batches.close()
                        await self._drained.wait()
                finally:
                    if detach is not None:
                        detach()
                task_group.cancel_scope.cancel()
        finally:
            self._task_group = None
            if self._batches is not None:
                self._batches.close()
            await anyio.aclose_forcefully(self._stream)
        if failure is not None:
            raise failure

    def _dispatch(self, batch: list[Event | Request], task_group: TaskGroup) -> Awaitable[None]:
        """Hand a batch to the dispatcher (started with the first batch: request-only traffic
        never needs it). Returns the awaitable that queues it."""
        if self._batches is None:
            send, receive = anyio.create_memory_object_stream[list[Event | Request]](EVENT_BATCHES)
            self._batches = send
            task_group.start_soon(self._dispatch_loop, receive, self._drained, task_group)
        self._backlog += len(batch)
        return self._batches.send(batch)

    def abort(self) -> None:
        """Stop at once: cancel reader, writer and dispatcher; the stream is closed by ``run``."""
        if self._task_group is not None:
            self._task_group.cancel_scope.cancel()

    async def _read_loop(self, task_group: TaskGroup) -> None:
        decoder = self._decoder
        peer = self._peer
        requests = peer._requests
        receive = self._stream.receive
        frame_timeout = peer._config.frame_timeout
        data: bytes = b""  # bytes the handshake left in the decoder come out first
        while True:
            if data:
                self._received_at = monotonic()
                self._received += len(data)
            events: list[Event | Request] = []
            for message in decoder.feed(data):
                if type(message) is Event:
                    if is_reserved(message.event):
                        raise ProtocolError(f"peer sent reserved event {message.event!r}")
                    events.append(message)
                elif type(message) is Reply:
                    requests.resolve(message)
                elif type(message) is ErrorReply:
                    requests.reject(message)
                elif type(message) is Request:
                    if is_reserved(message.event):
                        raise ProtocolError(f"peer sent reserved event {message.event!r}")
                    if events or self._backlog:
                        events.append(message)  # it starts after the events before it
                    else:
                        peer._start_answer(message, task_group)
                elif type(message) is Ping:
                    self._heartbeat_bytes += len(PING_FRAME)
                    self._pong()
                elif type(message) is Pong:
                    self._heartbeat_bytes += len(PONG_FRAME)
                else:
                    raise ProtocolError(f"unexpected {type(message).__name__} after the handshake")
            if events:
                await self._dispatch(events, task_group)
            size = RECEIVE_SIZE
            pending = decoder.pending_frame_size()
            if pending is not None and pending > size:
                size = min(pending + HEADER_SIZE - decoder.buffered, MAX_RECEIVE_SIZE)
            try:
                if decoder.buffered:
                    with anyio.fail_after(frame_timeout):
                        data = await receive(size)
                else:
                    data = await receive(size)
            except TimeoutError:
                raise DecodeError(
                    f"the peer stalled for {frame_timeout} s in the middle of a frame"
                ) from None
            except anyio.EndOfStream:
                if decoder.buffered:
                    raise DecodeError(
                        f"the peer closed the connection {decoder.buffered} bytes into a frame"
                    ) from None
                return
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                return

    def _pong(self) -> None:
        outbox = self._peer._outbox
        if outbox.used or outbox.closed:
            return  # what is queued reaches the peer first: that is our sign of life
        if self._received_at - self._ponged_at >= PONG_MIN_GAP:
            self._ponged_at = self._received_at
            outbox.put_urgent(PONG_FRAME, len(PONG_FRAME))

    async def _watch(self, task_group: TaskGroup) -> None:
        """Heartbeats and the idle timeout: ping when quiet, end the channel when the peer is
        silent for ``interval + timeout`` (or idle for ``idle_timeout``)."""
        peer = self._peer
        outbox = peer._outbox
        interval = peer._config.heartbeat_interval
        silent_after = math.inf if interval is None else interval + peer._config.heartbeat_timeout
        idle = peer._idle_timeout
        # Idleness is checked at least 4 times per idle_timeout: closed within 1.25 x of it.
        tick = min(interval or math.inf, (idle or math.inf) / 4)
        next_tick = monotonic() + tick
        enqueued = outbox.enqueued
        active = self._received - self._heartbeat_bytes
        active_at = monotonic()
        while True:
            wake = min(next_tick, self._received_at + silent_after)
            await anyio.sleep(max(0.0, wake - monotonic()))
            now = monotonic()
            silent = now - self._received_at
            if silent >= silent_after:
                peer._heartbeat_lost(
                    f"nothing from {peer!r} for {silent:.1f} s (heartbeat_interval + "
                    f"heartbeat_timeout = {silent_after:g} s): it is frozen, hung or gone; "
                    "dropping the connection"
                )
                task_group.cancel_scope.cancel()
                return
            if now < next_tick:
                continue
            next_tick = now + tick
            if idle is not None:
                if self._received - self._heartbeat_bytes != active:
                    active = self._received - self._heartbeat_bytes
                    active_at = now
                elif now - active_at >= idle:
                    peer._idle_closed(
                        f"closing {peer!r}: nothing but heartbeats from it for "
                        f"{now - active_at:.1f} s (idle_timeout={idle:g} s)"
                    )
                    task_group.cancel_scope.cancel()
                    return
            quiet = silent >= interval if interval is not None else False
            if (
                interval is not None
                and (quiet or outbox.enqueued == enqueued)
                and not outbox.used
                and not outbox.closed
            ):
                outbox.put_urgent(PING_FRAME, len(PING_FRAME))
            enqueued = outbox.enqueued

    async def _dispatch_loop(
        self,
        batches: MemoryObjectReceiveStream[list[Event | Request]],
        drained: anyio.Event,
        task_group: TaskGroup,
    ) -> None:
        peer = self._peer
        try:
            with batches:
                async for batch in batches:
                    for message in batch:
                        if type(message) is Event:
                            pending = peer._on_event(message)
                            if pending is not None:
                                await pending
                        elif type(message) is Request:
                            peer._start_answer(message, task_group)
                        self._backlog -= 1
        finally:
            drained.set()

    async def _write_loop(self, task_group: TaskGroup) -> None:
        await drain_outbox(self._stream, self._peer._outbox)
        task_group.cancel_scope.cancel()  # the peer is gone; the reader may not notice
