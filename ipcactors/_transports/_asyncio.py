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
- Any number of tasks may wait in ``AsyncioSocketStream.send`` at once (a TLS stream's writer,
  and its reader flushing a record): each is woken when the kernel has taken the bytes, or the
  connection is lost.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, cast

import anyio
from anyio.abc import ByteStream, SocketAttribute

from .._proto._messages import Frame
from ._writing import FrameQueue, coalesce

__all__ = ["AsyncioSocketStream", "open_asyncio_stream"]

WRITE_BUDGET = 256 * 1024  # bytes handed to an asyncio transport per flush
READ_HIGH_WATER = 4 * 1024 * 1024  # pause reading with this much unread
READ_LOW_WATER = 1024 * 1024  # and resume below this


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
RECEIVE_BUFFER = 256 * 1024


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

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A read-write transport; uvloop's do not derive from asyncio.Transport.
        self.transport = cast(asyncio.Transport, transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        return _receive_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(_receive_buffer()[:nbytes].tobytes())

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
        self.error = exc
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

    def __init__(self, sock: socket.socket, protocol: _StreamProtocol) -> None:
        assert protocol.transport is not None
        self._sock = sock
        self._protocol = protocol
        self._transport = protocol.transport
        self._closing = False

    async def receive(self, max_bytes: int = 65536) -> bytes:
        protocol = self._protocol
        chunks = protocol.chunks
        while not chunks:
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
        if protocol.reading_paused and protocol.unread < READ_LOW_WATER:
            protocol.reading_paused = False
            self._transport.resume_reading()
        return data

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

        def flush() -> None:
            nonlocal scheduled, in_flight
            scheduled = False
            if protocol.lost or self._closing:
                if protocol.lost and outbox.on_lost is not None:
                    outbox.on_lost()  # the reader may be paused: it must read on to the end
                return
            if in_flight:
                if protocol.write_paused:
                    return  # resume_writing calls us again
                in_flight = False
                outbox.sent()
            # A bounded bite: what the transport holds is a copy, so the rest waits as frames.
            frames = outbox.take(WRITE_BUDGET)
            if not frames:
                return
            for chunk in coalesce(frames):
                transport.write(chunk)
            if protocol.write_paused:
                in_flight = True
            else:
                outbox.sent()
                if len(outbox):
                    schedule()  # the rest of what was queued, on the next pass

        def schedule() -> None:
            nonlocal scheduled
            if not scheduled:
                scheduled = True
                loop.call_soon(flush)

        def write_now(frame: Frame) -> bool:
            # A request or reply while nothing is queued: written now, not on the next pass.
            nonlocal in_flight
            if protocol.lost or self._closing:
                return True  # lost with the connection: at most once, as always
            if isinstance(frame, bytes):
                transport.write(frame)
            else:
                transport.writelines(frame)
            if protocol.write_paused:
                in_flight = True  # the kernel took part; resume_writing finishes it
                return False
            return True

        def detach() -> None:
            outbox.on_frames = None
            outbox.direct = None
            protocol.on_resume = None
            if in_flight:
                outbox.sent()

        outbox.on_frames = schedule
        outbox.direct = write_now
        protocol.on_resume = schedule
        if len(outbox):
            schedule()
        return detach

    async def send_eof(self) -> None:
        self._transport.write_eof()

    async def aclose(self) -> None:
        if not self._closing:
            self._closing = True
            self._protocol._wake_reader()
            # Unsent bytes at this point were given up on by the layer above: don't linger.
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
        return attributes


def _address(address: Any) -> Any:
    if isinstance(address, tuple):
        return address[:2]
    if isinstance(address, bytes):
        return address.decode(errors="replace")
    return address
