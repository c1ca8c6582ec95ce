"""The asyncio fast path: a byte stream over a connected socket that costs ~8 system calls per
round trip instead of anyio's ~28.

anyio's asyncio socket streams register and unregister a reader around every wait and pause and
resume reading around every receive. An ``asyncio.BufferedProtocol`` keeps the socket registered
for the connection's life and writes straight from ``send``; it is what makes uvloop fast too. On
Trio, anyio's stream is a thin layer over Trio's own sockets and is kept (see ``_streams``).

Invariants:
- :class:`AsyncioSocketStream` is an anyio ``ByteStream``: nothing outside this package knows it
  is there. It can also be a connection's writer itself (:meth:`AsyncioSocketStream.attach`,
  loop callbacks instead of a task).
- ``receive`` and ``send`` return without a loop pass when data is waiting or the kernel takes
  the bytes; they wait only when they must (nothing to read, or the kernel's buffer is full).
- Memory stays bounded: reading pauses once ``READ_HIGH_WATER`` bytes wait unread.
- Large parts of frames (``LARGE_PART`` bytes or more: payloads out of band, views of the
  sender's memory) go straight from that memory to the socket while the transport holds
  nothing, never through the transport's buffer (asyncio 3.11 would copy them there, and
  ``writelines`` joins), with the small parts around them in one ``sendmsg``; when the kernel
  is full, the transport gets a small slice (``NUDGE``) so that ``resume_writing`` says when to
  go on. Parts are written in order.
- :meth:`AsyncioSocketStream.receive_into` has the loop read straight into the caller's buffer
  (``get_buffer`` returns it) until it is full: a large payload is received in place. On a
  loop that reads again within one callback (uvloop), reading pauses after a full read while
  the reader waits, so that it may first say where the next bytes go.
- ``receive_now`` and ``receive_into_now`` read the socket themselves, between loop callbacks
  (the transport then meets an empty socket), after the bytes read ahead: never out of order.
  An error there aborts the transport, and the reader hears of it.
- A listener (:meth:`AsyncioSocketStream.listen`) is offered a read only while a task waits
  in ``receive`` (not cancelled) with nothing read ahead, so it never sees bytes out of order;
  what it takes is gone, what it declines is read ahead as usual and wakes the reader, and
  what it raises (having taken the bytes) is raised by that ``receive``.
- Any number of tasks may wait in ``AsyncioSocketStream.send`` at once (a TLS stream's writer,
  and its reader flushing a record): each is woken when the kernel has taken the bytes, or the
  connection is lost.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from itertools import islice
from typing import Any, cast

import anyio
from anyio.abc import ByteStream, SocketAttribute

from .._proto._messages import Frame, FramePart
from ._writing import LARGE_PART, MAX_PARTS, FrameQueue, coalesce, widen_send_buffer

__all__ = ["AsyncioSocketStream", "open_asyncio_stream"]

WRITE_BUDGET = 256 * 1024  # bytes handed to an asyncio transport per flush
READ_HIGH_WATER = 4 * 1024 * 1024  # pause reading with this much unread
READ_LOW_WATER = 1024 * 1024  # and resume below this
NUDGE = 16 * 1024  # of a large part, what the transport gets when the kernel is full
PROGRESS_INTERVAL = 0.1  # s: receive_into returns with what came by then, if the rest is slow


async def open_asyncio_stream(
    sock: socket.socket, loop: asyncio.AbstractEventLoop
) -> AsyncioSocketStream:
    """The fast path's stream over a connected, non-blocking socket (which it then owns)."""
    protocol = _StreamProtocol(loop)
    try:
        transport, _ = await loop.connect_accepted_socket(lambda: protocol, sock=sock)
    except BaseException:
        sock.close()
        raise
    # Writing pauses as soon as the transport holds unsent bytes and resumes once the kernel
    # has them all: "sent" then means "in the kernel", and user-space buffering stays small.
    transport.set_write_buffer_limits(high=0, low=0)
    return AsyncioSocketStream(sock, protocol)


_thread = threading.local()
# Bytes read at once. More only costs here: a large payload's bytes past its header are better
# received in place, and every byte read here is copied once more (into ``bytes``) through
# caches that the payload already fills (64 KiB: W8 1 MiB ~5% and 256 KiB events 1.17x faster
# than 256 KiB, W2 no slower).
RECEIVE_BUFFER = 64 * 1024


def _receive_buffer() -> memoryview:
    """The buffer this thread's connections receive into. One is enough: the loop fills it and
    ``buffer_updated`` copies out before the loop does anything else. A fresh ``bytes`` of
    256 KiB per read (what a plain ``Protocol`` gets) costs an mmap and munmap each time."""
    buffer: memoryview | None = getattr(_thread, "buffer", None)
    if buffer is None:
        buffer = _thread.buffer = memoryview(bytearray(RECEIVE_BUFFER))
    return buffer


class _StreamProtocol(asyncio.BufferedProtocol):
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.chunks: deque[bytes] = deque()
        self.unread = 0
        self.reading_paused = False
        self.eof = False
        self.lost = False
        self.error: BaseException | None = None
        self.read_waiter: asyncio.Future[None] | None = None
        self.write_paused = False
        # Every sender waiting for the kernel to take the bytes: there may be several at once
        # (a TLS stream's writer and its reader flushing a record).
        self.drain_waiters: list[asyncio.Future[None]] = []
        self.on_resume: Callable[[], None] | None = None
        self.closed: asyncio.Future[None] = loop.create_future()
        # receive_into's buffer while the loop reads into it, and how much of it is filled.
        self.destination: memoryview | None = None
        self.filled = 0
        self.reported = 0.0  # loop time the reader was last told of bytes received in place
        # uvloop (libuv) reads a socket again and again within one callback while bytes wait;
        # asyncio's own loop reads once per pass, the reader's turn coming in between.
        self.bursts = not isinstance(loop, asyncio.BaseEventLoop)
        # Takes a read in the loop's callback while the reader waits (see AsyncioSocketStream.
        # listen); whether it did.
        self.listener: Callable[[memoryview], bool] | None = None
        self.raised: BaseException | None = None  # what the listener raised, for the reader

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A read-write transport; uvloop's do not derive from asyncio.Transport.
        self.transport = cast(asyncio.Transport, transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        destination = self.destination
        if destination is not None:
            return destination[self.filled :]
        return _receive_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        if self.destination is not None:
            self.filled += nbytes
            if self.filled == len(self.destination):
                self.destination = None
                self._wake_reader()
            elif self.loop.time() - self.reported >= PROGRESS_INTERVAL:
                self._wake_reader()  # a slow sender: the reader hears of progress (a sign of life)
            return
        waiter = self.read_waiter
        waiting = waiter is not None
        received = _receive_buffer()[:nbytes]
        listener = self.listener
        if listener is not None and waiter is not None and not waiter.done() and not self.chunks:
            try:
                if listener(received):
                    return
            except BaseException as exc:  # taken, and the waiting reader raises it
                # Raised there, not thrown into its task through the future: a coroutine
                # closes the one it awaits at a thrown GeneratorExit, skipping its cleanup.
                self.raised = exc
                waiter.set_result(None)
                return
        self.data_received(received.tobytes())
        if waiting and self.bursts and nbytes == RECEIVE_BUFFER and not self.reading_paused:
            # A full buffer: more bytes wait. On a loop that reads on in this same callback,
            # stop, so that the reader (woken) may first give them their final buffer (a large
            # payload arriving); its next receive resumes reading.
            assert self.transport is not None
            self.transport.pause_reading()
            self.reading_paused = True

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)
        self.unread += len(data)
        if self.unread > READ_HIGH_WATER and not self.reading_paused and self.transport:
            self.transport.pause_reading()
            self.reading_paused = True
        self._wake_reader()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake_reader()
        return True  # keep our side open: the channel decides when to close

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if exc is not None:
            # (Or the error a direct read met before it aborted the transport.) Kept without its
            # traceback: its frames hold the read's buffer (a large frame's final one, up to
            # max_frame_size), and this protocol may wait in a cycle for a collection.
            self.error = exc.with_traceback(None)
        self._wake_reader()
        self._wake_writer()
        if not self.closed.done():
            self.closed.set_result(None)
        if self.on_resume is not None:
            self.on_resume()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self._wake_writer()
        if self.on_resume is not None:
            self.on_resume()

    def _wake_reader(self) -> None:
        waiter = self.read_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake_writer(self) -> None:
        waiters, self.drain_waiters = self.drain_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)


class AsyncioSocketStream(ByteStream):
    """An anyio byte stream over an asyncio transport and protocol (see the module's doc)."""

    #: The most bytes it holds read from the socket but not yet taken by ``receive``: reading
    #: pauses past ``READ_HIGH_WATER``, which one more read can pass by its buffer's size.
    READ_AHEAD = READ_HIGH_WATER + RECEIVE_BUFFER
    #: The most bytes one read from the socket brings: asking ``receive`` for fewer splits it
    #: (copies).
    READ_SIZE = RECEIVE_BUFFER

    def __init__(self, sock: socket.socket, protocol: _StreamProtocol) -> None:
        assert protocol.transport is not None
        self._sock = sock
        self._protocol = protocol
        self._transport = protocol.transport
        self._closing = False
        # Parts not yet handed to the transport or the kernel, in order (see _pump).
        self._pending: deque[FramePart] = deque()
        self._widened = False  # whether the socket's send buffer was widened for large parts
        self._settle: Callable[[], None] | None = None  # (see settle_writes)
        self._attributes: Mapping[Any, Callable[[], Any]] | None = None  # (built once)

    def listen(self, listener: Callable[[memoryview], bool] | None) -> None:
        """Offer each read to ``listener`` first, in the loop's callback, while a task waits
        in :meth:`receive` with nothing read ahead: if it returns ``True`` it took the bytes
        (a view of a buffer reused after it returns), and the waiting task is not woken; if
        it raises, it took them too, and the waiting :meth:`receive` raises that exception.
        ``None``: stop."""
        self._protocol.listener = listener

    async def receive(self, max_bytes: int = 65536) -> bytes:
        protocol = self._protocol
        chunks = protocol.chunks
        while not chunks:
            if protocol.raised is not None:  # (by the listener, for the reader that waited)
                raised, protocol.raised = protocol.raised, None
                raise raised
            if self._closing:
                raise anyio.ClosedResourceError
            if protocol.lost:
                if protocol.error is not None:
                    raise anyio.BrokenResourceError from protocol.error
                raise anyio.EndOfStream
            if protocol.eof:
                raise anyio.EndOfStream
            waiter = protocol.read_waiter = protocol.loop.create_future()
            try:
                await waiter
            finally:
                protocol.read_waiter = None
        return self._take(max_bytes)

    def _take(self, max_bytes: int) -> bytes:
        """Up to ``max_bytes`` of the bytes read ahead (there are some)."""
        protocol = self._protocol
        chunks = protocol.chunks
        data = chunks.popleft()
        if len(data) > max_bytes:
            chunks.appendleft(data[max_bytes:])
            data = data[:max_bytes]
        elif chunks and len(data) + len(chunks[0]) <= max_bytes:
            # Many small reads queued up (a burst of frames): hand them over in one piece.
            parts = [data]
            size = len(data)
            while chunks and size + len(chunks[0]) <= max_bytes:
                size += len(chunks[0])
                parts.append(chunks.popleft())
            data = b"".join(parts)
        protocol.unread -= len(data)
        self._maybe_resume_reading()
        return data

    async def receive_into(self, buffer: memoryview) -> int:
        """Fill ``buffer`` (writable, flat, not empty) with the next bytes of the stream:
        first those read ahead, then straight from the socket. Returns how many came: all of
        ``len(buffer)``, or fewer if the stream ended first or the bytes come slowly (what
        came after ``PROGRESS_INTERVAL``); raises as :meth:`receive` when none came."""
        protocol = self._protocol
        size = len(buffer)
        filled = self.receive_into_now(buffer)
        if filled == size or (filled and (protocol.lost or protocol.eof or self._closing)):
            return filled
        if not (protocol.lost or protocol.eof or self._closing):
            protocol.destination = buffer
            protocol.filled = filled
            protocol.reported = protocol.loop.time()
            self._maybe_resume_reading(force=True)
            try:
                while protocol.destination is not None:
                    if self._closing or protocol.lost or protocol.eof:
                        break
                    if protocol.filled and (
                        protocol.loop.time() - protocol.reported >= PROGRESS_INTERVAL
                    ):
                        break
                    waiter = protocol.read_waiter = protocol.loop.create_future()
                    try:
                        await waiter
                    finally:
                        protocol.read_waiter = None
            finally:
                filled = protocol.filled
                protocol.destination = None
        if filled:
            return filled
        data = await self.receive(1)  # raises why the stream ended (or a byte came after all)
        buffer[: len(data)] = data
        return len(data)

    def receive_into_now(self, buffer: memoryview) -> int:
        """Fill ``buffer`` (writable, flat, not empty) as far as possible without waiting:
        with the bytes read ahead, then with what the kernel holds (read from the socket now,
        no loop pass: the sender is usually done by the time the reader knows where its
        payload goes). Returns how many came, 0 if none (or the stream ended:
        :meth:`receive_into` then says how)."""
        protocol = self._protocol
        chunks = protocol.chunks
        size = len(buffer)
        filled = 0
        while chunks and filled < size:
            data = chunks.popleft()
            take = min(len(data), size - filled)
            buffer[filled : filled + take] = memoryview(data)[:take]
            if take < len(data):
                chunks.appendleft(data[take:])
            filled += take
            protocol.unread -= take
        if filled:
            self._maybe_resume_reading()
        if filled < size and not (protocol.lost or protocol.eof or self._closing):
            try:
                filled += self._read_now(buffer[filled:])
            except anyio.BrokenResourceError:
                if not filled:
                    raise
        return filled

    def receive_now(self, max_bytes: int) -> bytes:
        """At most ``max_bytes`` of the stream without waiting: those read ahead, else what
        the kernel holds (read from the socket now, no loop pass); ``b""`` if none (or the
        stream ended: :meth:`receive` then says how). For the rest of a frame that is known
        to be coming (the reader is in the middle of one)."""
        protocol = self._protocol
        if protocol.chunks:
            return self._take(max_bytes)
        if protocol.lost or protocol.eof or self._closing or protocol.reading_paused:
            return b""
        buffer = _receive_buffer()[:max_bytes]
        got = self._read_now(buffer)
        return buffer[:got].tobytes() if got else b""

    def _read_now(self, buffer: memoryview) -> int:
        """Bytes the kernel holds, read straight into ``buffer`` past the transport (which
        reads nothing meanwhile: this runs between loop callbacks, and the transport meets
        an empty socket next); 0 if none. An error (a reset) aborts the transport and is
        raised as :class:`anyio.BrokenResourceError`; the end of the stream reads as 0 here,
        and the transport meets it too (it stays)."""
        try:
            return self._sock.recv_into(buffer)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError as exc:
            # What the reader hears of next (and connection_lost); see there for the traceback.
            self._protocol.error = exc.with_traceback(None)
            self._transport.abort()
            raise anyio.BrokenResourceError from exc

    def _maybe_resume_reading(self, force: bool = False) -> None:
        protocol = self._protocol
        if protocol.reading_paused and (force or protocol.unread < READ_LOW_WATER):
            protocol.reading_paused = False
            self._transport.resume_reading()

    def _write_parts(self, parts: Iterable[FramePart]) -> bool:
        """Write ``parts`` in order: through the transport when all are small, else by
        :meth:`_pump` (straight from their memory). Returns True when the kernel refused the
        first with nothing written before it (the peer is gone: the transport closes)."""
        pending = self._pending
        transport = self._transport
        if not pending:
            parts = list(parts)
            if all(len(part) < LARGE_PART for part in parts):
                # (the transport sends at once only when it holds nothing; what fails, it drops)
                idle = not transport.get_write_buffer_size()
                transport.write(parts[0])
                if idle and transport.is_closing():
                    return True
                for part in islice(parts, 1, None):
                    transport.write(part)
                return False
        pending.extend(parts)
        self._pump()
        return False

    def _pump(self) -> bool:
        """Hand pending parts to the socket while the transport holds nothing: up to
        ``MAX_PARTS`` of them in one ``sendmsg``, straight from their memory (a frame's
        header, payload and tail in one system call, and one wake-up of the reader). When the
        kernel is full, the transport gets ``NUDGE`` bytes of the next part and will call
        ``resume_writing`` once the kernel took them. Returns whether all went."""
        pending = self._pending
        transport = self._transport
        sock = self._sock
        while pending:
            if transport.get_write_buffer_size() or transport.is_closing():
                return False  # resume_writing (or connection_lost) calls flush again
            if not self._widened:
                self._widened = True
                widen_send_buffer(sock)
            parts = list(islice(pending, MAX_PARTS))
            try:
                sent = sock.sendmsg(parts)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                # The transport meets the error too and reports it (it closes), or takes the
                # parts in order if it was a passing one (ENOBUFS); none once it is closing:
                # it logs every write it is handed then, from the sixth on.
                for part in pending:
                    if transport.is_closing():
                        break
                    transport.write(part)
                pending.clear()
                break
            if sent == sum(len(part) for part in parts):
                for _ in parts:
                    pending.popleft()
                continue  # all went: the next parts, if any
            while sent >= len(pending[0]):
                sent -= len(pending[0])
                pending.popleft()
            if sent:
                pending[0] = memoryview(pending[0])[sent:]
            rest = memoryview(pending[0])
            transport.write(rest[:NUDGE])
            if len(rest) > NUDGE:
                pending[0] = rest[NUDGE:]
            else:
                pending.popleft()
        return not self._protocol.write_paused

    async def send(self, item: bytes) -> None:
        protocol = self._protocol
        if self._closing:
            raise anyio.ClosedResourceError
        if protocol.lost or self._transport.is_closing():
            raise anyio.BrokenResourceError from protocol.error
        self._transport.write(item)
        while protocol.write_paused and not protocol.lost:
            waiter = protocol.loop.create_future()
            protocol.drain_waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in protocol.drain_waiters:  # cancelled before it was woken
                    protocol.drain_waiters.remove(waiter)
        if protocol.lost:
            raise anyio.BrokenResourceError from protocol.error

    def attach(self, outbox: FrameQueue) -> Callable[[], None]:
        """Write ``outbox`` from loop callbacks instead of a task: the first frame queued in a
        loop pass schedules one flush (``call_soon``) that writes everything queued by then.
        Returns the function that detaches it again."""
        protocol = self._protocol
        transport = self._transport
        loop = protocol.loop
        scheduled = False
        in_flight = False  # frames written whose bytes the transport still holds
        attached = True

        pending = self._pending

        def flush() -> None:
            nonlocal scheduled, in_flight
            scheduled = False
            if not attached:
                return  # detached while this flush was due: it takes nothing
            outbox.on_frames = schedule  # (unset while this flush was due: see schedule)
            # (closing, not by us: a write failed; the reader hears of it, and what is queued
            # waits for the next connection)
            if protocol.lost or self._closing or transport.is_closing():
                # (A write under way is settled once the transport is lost: what is pending
                # of it then goes to the next connection.)
                if protocol.lost and in_flight:
                    in_flight = False
                    lost()
                if protocol.lost and outbox.on_lost is not None:
                    outbox.on_lost()  # the reader may be paused: it must read on to the end
                return
            if in_flight:
                if pending and not self._pump():
                    return  # resume_writing calls us again
                if protocol.write_paused:
                    return  # resume_writing calls us again
                in_flight = False
                outbox.sent()
            # A bounded bite: what the transport holds is a copy, so the rest waits as frames.
            frames = outbox.take(WRITE_BUDGET)
            if not frames:
                return
            if self._write_parts(coalesce(frames)):
                outbox.give_back()  # nothing of them went: for the next connection
                return
            if protocol.write_paused or pending:
                in_flight = True
            else:
                outbox.sent()
                if len(outbox):
                    schedule()  # the rest of what was queued, on the next pass

        def schedule() -> None:
            nonlocal scheduled
            if not scheduled:
                scheduled = True
                # Until the flush runs, frames queued need not call us (a call per event).
                outbox.on_frames = None
                loop.call_soon(flush)

        def write_now(frame: Frame) -> bool:
            # A request or reply while nothing is queued: written now, not on the next pass.
            nonlocal in_flight
            if protocol.lost or self._closing or transport.is_closing():
                # Lost with the connection: at most once, as always. (Closing: a write failed,
                # and its connection_lost is a loop pass away; a transport logs every write
                # it is handed meanwhile from the sixth on.)
                return True
            if isinstance(frame, bytes) and not pending:
                transport.write(frame)
            else:
                self._write_parts((frame,) if isinstance(frame, bytes) else frame)
            if protocol.write_paused or pending:
                in_flight = True  # the kernel took part; resume_writing finishes it
                return False
            return True

        def resumed() -> None:
            # The kernel took what the transport held. A large part being written goes on at
            # once (a transport allows writes from resume_writing), not a loop pass later.
            if pending and not scheduled and not protocol.lost and not self._closing:
                flush()
            else:
                schedule()

        def detach() -> None:
            # A write under way may yet go on to the kernel from the transport, or never: it
            # is done once the transport has written it or is lost (drained), and else is
            # settled as the socket is shut down or closed (settle).
            nonlocal attached
            if not attached:
                return
            attached = False
            outbox.on_frames = None
            outbox.direct = None
            protocol.on_resume = drained
            drained()

        def drained() -> None:
            # (Detached.) The transport drained what it held, or was lost.
            nonlocal in_flight
            if not in_flight:
                protocol.on_resume = None
            elif protocol.lost:
                in_flight = False
                lost()
            elif not pending and not protocol.write_paused:  # all of it went
                in_flight = False
                outbox.sent()

        def settle() -> None:
            # Nothing more of what the transport and pending hold reaches the kernel, nor is
            # anything more taken (a flush now would hand what goes back to a dead transport).
            # (A transport already lost settled the write in drained, which detach calls.)
            nonlocal in_flight
            detach()
            protocol.on_resume = None
            if in_flight:
                in_flight = False
                unsent = transport.get_write_buffer_size() + sum(map(len, pending))
                outbox.give_back(unsent=unsent)
                pending.clear()

        def lost() -> None:
            # The transport was lost with a write under way: what it held is gone, and how
            # much of it the kernel took is not known (at most once); what was still pending
            # never left, and goes to the next connection.
            outbox.give_back(unsent=sum(map(len, pending)))
            pending.clear()

        outbox.on_frames = schedule
        outbox.direct = write_now
        protocol.on_resume = resumed
        self._settle = settle
        if len(outbox):
            schedule()
        return detach

    async def send_eof(self) -> None:
        self._transport.write_eof()

    def settle_writes(self) -> None:
        """Nothing it holds unsent will reach the kernel (its socket is shut down, or about to
        be closed): the frames of the attached writer's write under way that the kernel has no
        whole copy of go back to their outbox, for the next connection (``give_back``)."""
        if self._settle is not None:
            self._settle()

    def abort(self) -> None:
        """Close at once, dropping unsent bytes: what :meth:`aclose` does when cancelled, with
        no cancel scope and no wait for ``connection_lost`` (the loop closes the socket in its
        next pass). See ``_streams.close_now``."""
        self.settle_writes()
        if not self._closing:
            self._closing = True
            self._protocol._wake_reader()
        self._transport.abort()

    async def aclose(self) -> None:
        if not self._closing:
            self._closing = True
            self._protocol._wake_reader()
            # Unsent bytes at this point were given up on by the layer above: don't linger.
            self.settle_writes()
            if self._transport.get_write_buffer_size():
                self._transport.abort()
            else:
                self._transport.close()
        try:
            await asyncio.shield(self._protocol.closed)
        except asyncio.CancelledError:
            self._transport.abort()
            raise

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        # Asked several times per connection (raw_socket above all): built once, not per call.
        if self._attributes is not None:
            return self._attributes
        sock = self._sock
        attributes: dict[Any, Callable[[], Any]] = {
            SocketAttribute.raw_socket: lambda: sock,
            SocketAttribute.family: lambda: sock.family,
            SocketAttribute.local_address: lambda: _address(sock.getsockname()),
            SocketAttribute.remote_address: lambda: _address(sock.getpeername()),
        }
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            attributes[SocketAttribute.local_port] = lambda: sock.getsockname()[1]
            attributes[SocketAttribute.remote_port] = lambda: sock.getpeername()[1]
        self._attributes = attributes
        return attributes


def _address(address: Any) -> Any:
    if isinstance(address, tuple):
        return address[:2]
    if isinstance(address, bytes):
        return address.decode(errors="replace")
    return address
