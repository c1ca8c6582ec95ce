"""Byte streams over connected sockets: the fastest one each backend offers, one interface.

On asyncio, anyio's socket streams cost ~28 system calls per round trip (a reader registered and
unregistered around every wait, reading paused and resumed around every receive). An asyncio
``Protocol`` keeps the socket registered for the connection's life and writes straight from
``send``: about 8 system calls per round trip, and it is what makes uvloop fast too. On Trio,
anyio's stream is a thin layer over Trio's own sockets and is kept.

It also writes each connection's outbox: from loop callbacks on asyncio (:func:`attach_writer`),
from a task elsewhere (:func:`drain_outbox`), and straight from the sender for a request or reply
that nothing is queued before (``Outbox.direct``).

Invariants:
- The backends differ here in how sockets are read and written (``_backend`` holds every other
  difference); the layers above see an anyio ``ByteStream``, and write through
  :func:`attach_writer` / :func:`drain_outbox`, whatever the stream.
- This layer does not import the ones above: the writer drains a :class:`FrameQueue`.
- ``receive`` and ``send`` return without a loop pass when data is waiting or the kernel takes
  the bytes; they wait only when they must (nothing to read, or the kernel's buffer is full).
- Memory stays bounded: reading pauses once ``READ_HIGH_WATER`` bytes wait unread.
- Any number of tasks may wait in ``AsyncioSocketStream.send`` at once (a TLS stream's writer,
  and its reader flushing a record): each is woken when the kernel has taken the bytes, or the
  connection is lost. Beneath TLS on Trio, :func:`shared_sender` makes senders take turns.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol, cast

import anyio
from anyio.abc import ByteStream, SocketAttribute, SocketStream

from .._proto._messages import Frame
from ._backend import running_asyncio_loop

__all__ = [
    "AsyncioSocketStream",
    "FrameQueue",
    "attach_writer",
    "drain_outbox",
    "send_tracebacks",
    "shared_sender",
    "wrap_socket",
]


class FrameQueue(Protocol):
    """What a stream's writer drains: the frames for one peer, in order. ``_core._outbox``'s
    ``Outbox`` is the one; this names what the writer uses of it, so that this layer does not
    import the one above."""

    #: Called by the queue when frames arrive while the writer waits (set by the writer).
    on_frames: Callable[[], None] | None
    #: Set by the writer while it idles: writes a request or reply at once, returns whether
    #: all of it went (else the writer finishes it before anything else).
    direct: Callable[[Frame], bool] | None
    #: Called by the writer when it finds the connection broken.
    on_lost: Callable[[], None] | None

    @property
    def closed(self) -> bool: ...

    def __len__(self) -> int: ...

    def take(self, budget: int | None = None) -> list[Frame]:
        """Frames to write now, up to about ``budget`` bytes."""
        ...

    def sent(self) -> None:
        """The frames taken last are all in the kernel."""
        ...

    def wake(self) -> None:
        """Have the writer look again."""
        ...

    async def wait_frames(self) -> None:
        """Return once there are frames to take (or the queue closed)."""
        ...


COALESCE_LIMIT = 1024 * 1024  # join small frames into writes of at most about this many bytes
WRITE_BUDGET = 256 * 1024  # bytes handed to an asyncio transport per flush
READ_HIGH_WATER = 4 * 1024 * 1024  # pause reading with this much unread
READ_LOW_WATER = 1024 * 1024  # and resume below this


def coalesce(frames: list[Frame]) -> Iterator[bytes]:
    """Yield the bytes of ``frames`` in as few writes as is sensible, copying large bodies never."""
    small: list[bytes] = []
    size = 0
    for frame in frames:
        if isinstance(frame, bytes):
            small.append(frame)
            size += len(frame)
            if size >= COALESCE_LIMIT:
                yield b"".join(small)
                small, size = [], 0
        else:
            header, body = frame
            small.append(header)
            yield b"".join(small)
            small, size = [], 0
            yield body
    if small:
        yield small[0] if len(small) == 1 else b"".join(small)


def attach_writer(stream: ByteStream, outbox: FrameQueue) -> Callable[[], None] | None:
    """Make loop callbacks the one writer of ``outbox`` to ``stream``, where the stream allows
    it (no task needed); returns the function that detaches them, or ``None``: then run
    :func:`drain_outbox` in a task."""
    if isinstance(stream, AsyncioSocketStream):
        return stream.attach(outbox)
    return None


async def drain_outbox(stream: ByteStream, outbox: FrameQueue) -> None:
    """Be the one writer of ``outbox`` to ``stream`` until the stream breaks (then return).

    Small frames queued in one loop pass go out in one write. Frames count as sent (see
    :meth:`Outbox.sent`) once the kernel has all of their bytes.
    """
    send = stream.send
    rest: bytes | None = None  # the unsent end of a frame written directly
    sock = stream.extra(SocketAttribute.raw_socket, None) if _plain(stream) else None

    def write_now(frame: Frame) -> bool:
        # A request or reply while this writer idles: straight to the kernel, no task switch.
        nonlocal rest
        assert sock is not None
        data = frame if isinstance(frame, bytes) else b"".join(frame)
        try:
            written = sock.send(data)
        except BlockingIOError:
            written = 0
        except OSError:
            return True  # the connection is broken; the reader notices, the frame is lost
        if written == len(data):
            return True
        rest = data[written:]  # finished by this writer before anything else
        outbox.wake()
        return False

    outbox.direct = write_now if sock is not None else None
    try:
        while True:
            if rest is not None:
                data, rest = rest, None
                try:
                    await send(data)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    return
                finally:
                    outbox.sent()
                continue
            if outbox.closed:
                return
            if not len(outbox):
                await outbox.wait_frames()
                continue
            frames = outbox.take(COALESCE_LIMIT)  # a bounded bite: a reply waits for no more
            try:
                for chunk in coalesce(frames):
                    await send(chunk)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                return
            finally:
                outbox.sent()
    finally:
        outbox.direct = None
        if rest is not None:
            outbox.sent()  # the frame's end dies with this connection (at most once)


def shared_sender(stream: ByteStream) -> ByteStream:
    """``stream``, made safe for several tasks sending at once: what a TLS stream needs beneath
    it, as its reader may flush a record while its writer sends. The asyncio fast path already
    is; anyio's own streams (Trio) refuse a second sender, so sends take turns there."""
    if isinstance(stream, AsyncioSocketStream):
        return stream
    return _TurnTakingSender(stream)


class _TurnTakingSender(ByteStream):
    """A byte stream whose senders take turns (see :func:`shared_sender`)."""

    def __init__(self, stream: ByteStream) -> None:
        self._stream = stream
        self._turn = anyio.Lock()

    async def receive(self, max_bytes: int = 65536) -> bytes:
        return await self._stream.receive(max_bytes)

    async def send(self, item: bytes) -> None:
        async with self._turn:
            await self._stream.send(item)

    async def send_eof(self) -> None:
        async with self._turn:
            await self._stream.send_eof()

    async def aclose(self) -> None:
        await self._stream.aclose()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return self._stream.extra_attributes


def _plain(stream: ByteStream) -> bool:
    """Whether the stream's bytes go to its socket as they are (not through TLS)."""
    return isinstance(stream, SocketStream)


def send_tracebacks(stream: ByteStream, setting: bool | None) -> bool:
    """``Config.remote_tracebacks`` for the peer at the other end of ``stream``: when
    ``None``, whether it is on a Unix socket and runs as our user (``SO_PEERCRED``)."""
    if setting is not None:
        return setting
    sock = stream.extra(SocketAttribute.raw_socket, None)
    peercred = getattr(socket, "SO_PEERCRED", None)  # Linux; elsewhere: no tracebacks
    if sock is None or sock.family != socket.AF_UNIX or peercred is None:
        return False
    try:
        credentials = sock.getsockopt(socket.SOL_SOCKET, peercred, _PEERCRED.size)
    except OSError:
        return False
    _pid, uid, _gid = _PEERCRED.unpack(credentials)
    return bool(uid == os.getuid())


_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


async def wrap_socket(sock: socket.socket) -> ByteStream:
    """A byte stream over a connected, non-blocking socket (which it then owns)."""
    loop = running_asyncio_loop()
    if loop is None:
        return await SocketStream.from_socket(sock)
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
