"""Byte streams over connected sockets: the fastest one each backend offers, one interface; and
the writer that drains each connection's frames into its stream.

asyncio gets the fast path of ``_asyncio`` (~8 system calls per round trip instead of ~28); Trio
keeps anyio's stream, a thin layer over Trio's own sockets. A connection's frames are written
from loop callbacks on asyncio (:func:`attach_writer`), from a task elsewhere
(:func:`drain_outbox`), and straight from the sender for a request or reply that nothing is
queued before (``FrameQueue.direct``).

Invariants:
- The layers above see an anyio ``ByteStream`` and write through :func:`attach_writer` /
  :func:`drain_outbox`, whatever the stream; ``_backend`` holds every other backend difference.
- This layer does not import the ones above: the writer drains a :class:`FrameQueue`.
- Beneath TLS on Trio, :func:`shared_sender` makes senders take turns (the fast path needs not).
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping
from functools import partial
from time import monotonic
from typing import Any

import anyio
from anyio.abc import ByteStream, SocketAttribute, SocketStream
from anyio.lowlevel import cancel_shielded_checkpoint

from .._proto._messages import FdFrame, Frame, FramePart
from ._asyncio import AsyncioSocketStream, open_asyncio_stream
from ._backend import running_asyncio_loop
from ._fds import FdSocketStream, fds_message
from ._writing import COALESCE_LIMIT, MAX_PARTS, FrameQueue, coalesce, widen_send_buffer

__all__ = [
    "FrameQueue",
    "attach_writer",
    "bytes_below",
    "close_now",
    "drain_outbox",
    "peeker",
    "raw_socket",
    "read_size",
    "readable_waiter",
    "receiver_into",
    "receivers_now",
    "send_tracebacks",
    "shared_sender",
    "wrap_socket",
]


# The socket under each stream asked for (see raw_socket), for as long as the stream lives.
_raw_sockets: weakref.WeakKeyDictionary[ByteStream, Any] = weakref.WeakKeyDictionary()


def raw_socket(stream: ByteStream) -> Any:
    """``stream.extra(SocketAttribute.raw_socket, None)``, asked once per stream: anyio's socket
    streams make every attribute they have on each ``extra()`` call (~5 us: a ``getpeername``
    and enum conversions), and setting up a connection asks up to six times on Trio. (A
    ``socket.socket``, asyncio's ``TransportSocket`` under anyio's asyncio streams, or ``None``.)
    """
    try:
        return _raw_sockets[stream]
    except KeyError:
        sock = _raw_sockets[stream] = stream.extra(SocketAttribute.raw_socket, None)
        return sock


def attach_writer(stream: ByteStream, outbox: FrameQueue) -> Callable[[], None] | None:
    """Make loop callbacks the one writer of ``outbox`` to ``stream``, where the stream allows
    it (no task needed); returns the function that detaches them (nothing is taken from
    ``outbox`` after it), or ``None``: then run :func:`drain_outbox` in a task."""
    if isinstance(stream, AsyncioSocketStream):
        return stream.attach(outbox)
    return None


async def drain_outbox(stream: ByteStream, outbox: FrameQueue, stopped: Callable[[], bool]) -> None:
    """Be the one writer of ``outbox`` to ``stream`` until the stream breaks or ``stopped()``
    (then return; who stops it clears ``outbox.direct`` and wakes it, and nothing is taken
    from ``outbox`` after that).

    Small frames queued in one loop pass go out in one write. Frames count as sent (see
    :meth:`Outbox.sent`) once the kernel has all of their bytes. Where there is a socket, its
    bytes are handed to the kernel here, so that what it has of a write is known to the byte
    (through the stream, TLS or a frame with descriptors, a bound from above): if the writer
    stops before all went (a write refused: the peer is gone; cancelled: the connection was
    given up as they waited for room), the frames the kernel has no whole copy of go to the
    next connection (:meth:`Outbox.give_back`).
    """
    send = stream.send
    rest: list[FramePart] | None = None  # the unsent end of a frame written directly
    passes_fds = isinstance(stream, FdSocketStream)
    sock = raw_socket(stream) if passes_fds or _plain(stream) else None
    if not isinstance(sock, socket.socket):
        sock = None  # asyncio's TransportSocket (anyio's asyncio streams): no send of its own
    widened = sock is None  # the send buffer is widened once a large part is written
    handed = 0  # bytes of the write under way the kernel has (or may have)

    def write_now(frame: Frame) -> bool:
        # A request or reply while this writer idles: straight to the kernel, no task switch,
        # its parts in one sendmsg (writev), never joined; a frame's descriptors go with its
        # first byte (unsent, the frame goes to the writer below whole, descriptors included).
        nonlocal rest, widened, handed
        assert sock is not None
        parts: list[FramePart] = [frame] if isinstance(frame, bytes) else list(frame)
        if not widened and len(parts) > 1:
            widened = True
            widen_send_buffer(sock)
        try:
            if type(frame) is bytes:  # the commonest: one small frame, most often sent whole
                written = sock.send(frame)
                if written == len(frame):
                    return True
            elif passes_fds and type(frame) is FdFrame:
                written = sock.sendmsg(parts, [fds_message(frame.fds)])
            elif len(parts) <= MAX_PARTS:
                written = sock.sendmsg(parts)
            else:  # the first part now, the rest by the writer below
                written = sock.send(parts[0])
        except BlockingIOError:
            written = 0
        except OSError:
            return True  # the connection is broken; the reader notices, the frame is lost
        left = unsent(parts, written)
        if not left:
            return True
        rest = left  # finished by this writer before anything else
        handed = written
        outbox.wake()
        return False

    async def hand_over(chunk: FramePart) -> None:
        # All of chunk to the kernel, counting what it took as it goes.
        nonlocal handed
        if sock is None or type(chunk) is FdFrame:
            handed += len(chunk)
            await send(chunk)  # type: ignore[arg-type]  # (any bytes-like)
            return
        while True:
            try:
                written = sock.send(chunk)
            except BlockingIOError:
                written = 0
            handed += written
            if written == len(chunk):
                return
            chunk = memoryview(chunk)[written:]
            await anyio.wait_writable(sock)

    outbox.direct = write_now if sock is not None else None
    try:
        while True:
            if rest is not None:
                chunks: Iterable[FramePart]
                chunks, rest = rest, None
            else:
                if outbox.closed or stopped():
                    return
                if not len(outbox):
                    await outbox.wait_frames()
                    continue
                frames = outbox.take(COALESCE_LIMIT)  # a bounded bite: a reply waits for no more
                if not widened and any(not isinstance(frame, bytes) for frame in frames):
                    widened = True
                    widen_send_buffer(sock)  # type: ignore[arg-type]  # (not None: not widened)
                chunks = coalesce(frames)
                handed = 0
            written_all = False
            try:
                for chunk in chunks:
                    await hand_over(chunk)
                written_all = True
            except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
                return  # (refused: the peer is gone; the reader notices)
            finally:
                if written_all:
                    outbox.sent()
                else:
                    outbox.give_back(handed)
    finally:
        outbox.direct = None
        if rest is not None:  # (stopped while a direct write waited for the writer)
            outbox.give_back(handed)


def unsent(parts: list[FramePart], written: int) -> list[FramePart]:
    """What is left of ``parts`` once the first ``written`` bytes went (slices, not copies)."""
    for index, part in enumerate(parts):
        size = len(part)
        if written < size:
            left = parts[index:]
            if written:
                left[0] = memoryview(part)[written:]
            return left
        written -= size
    return []


def receiver_into(stream: ByteStream) -> Callable[[memoryview], Awaitable[int]] | None:
    """A function that fills a buffer from ``stream`` (``recv_into``: no intermediate bytes)
    and returns how many bytes came (fewer only at the end of the stream; raises like
    ``receive`` when none came), where the stream can; ``None`` for others (TLS)."""
    if isinstance(stream, AsyncioSocketStream):
        return stream.receive_into
    own: Callable[[memoryview], Awaitable[int]] | None = getattr(stream, "receive_into", None)
    if own is not None:
        return own  # a stream of this package that fills buffers itself (one passing fds)
    if not _plain(stream) or running_asyncio_loop() is not None:
        return None  # anyio's asyncio streams read ahead into buffers of their own
    sock = raw_socket(stream)
    if sock is None:
        return None
    return partial(_receive_into, stream, sock)


def read_size(stream: ByteStream, default: int) -> int:
    """How many bytes to ask ``stream.receive`` for at once: ``default``, or more where the
    stream reads more at once anyway (the asyncio fast path's reads, split if asked for
    fewer; anyio's streams allocate what they are asked for, so they get ``default``)."""
    if isinstance(stream, AsyncioSocketStream):
        return max(default, stream.READ_SIZE)
    return default


def listener_setter(
    stream: ByteStream,
) -> Callable[[Callable[[memoryview], bool] | None], None] | None:
    """Where ``stream`` can hand its reads to a function in the loop's callback while its
    reader waits (asyncio: :meth:`AsyncioSocketStream.listen`, :meth:`FdSocketStream.listen`):
    that setter; ``None`` elsewhere (Trio, TLS)."""
    if isinstance(stream, AsyncioSocketStream):
        return stream.listen
    if isinstance(stream, FdSocketStream) and running_asyncio_loop() is not None:
        return stream.listen
    return None


def receivers_now(
    stream: ByteStream,
) -> tuple[Callable[[int], bytes], Callable[[memoryview], int]] | None:
    """Two functions that read ``stream`` without waiting, where it can: one returns up to
    ``n`` bytes (``b""`` if none), the other fills a buffer (as :func:`receiver_into`) and
    returns how many bytes came (0 if none). Both raise ``anyio.BrokenResourceError`` for a
    broken connection; the end of the stream reads as none (the awaited receive says how).
    For the rest of a frame the reader is in the middle of: no loop pass, no timeout scope,
    when the kernel already holds it. ``None`` for other streams (TLS)."""
    if isinstance(stream, AsyncioSocketStream):
        return stream.receive_now, stream.receive_into_now
    sock = _trio_socket(stream)
    return None if sock is None else (partial(_receive_now, sock), partial(_receive_into_now, sock))


def peeker(stream: ByteStream) -> tuple[Callable[[int], bytes], Callable[[int], None]] | None:
    """For a task other than ``stream``'s reader, while that reader waits with nothing read
    (Trio, a plain socket or one passing descriptors: its reads are the kernel's): a function
    returning up to ``n`` bytes the kernel holds without taking them (``MSG_PEEK``; ``b""`` if
    none, on any error, the reader hears of it, or when descriptors come with them), and one
    taking the first ``n`` of them, which must be there (peeked, nobody else reads). ``None``
    elsewhere: on asyncio the loop's callback reads (see :func:`listener_setter`); TLS holds
    bytes of its own."""
    if isinstance(stream, FdSocketStream):
        if running_asyncio_loop() is not None:
            return None
        # Its peek declines bytes that bring descriptors; what it returned is skipped as usual.
        return stream.peek, partial(_skip, raw_socket(stream))
    sock = _trio_socket(stream)
    return None if sock is None else (partial(_peek, sock), partial(_skip, sock))


def readable_waiter(stream: ByteStream) -> Callable[[], Awaitable[None]] | None:
    """Trio, a plain socket: a wait until the kernel holds bytes for ``stream`` (then read
    them with :func:`receivers_now`'s), for a reader whose last read found the kernel empty:
    ``receive`` would first try a read that finds nothing, then wait. ``None`` elsewhere."""
    sock = _trio_socket(stream)
    return None if sock is None else partial(anyio.wait_readable, sock)


def _trio_socket(stream: ByteStream) -> socket.socket | None:
    """The socket under ``stream`` if the stream reads it as it is, without a loop's
    callbacks reading it too (anyio's plain socket streams, Trio); else ``None``."""
    if not _plain(stream) or running_asyncio_loop() is not None:
        return None
    sock = raw_socket(stream)
    return sock if isinstance(sock, socket.socket) else None


def _peek(sock: socket.socket, max_bytes: int) -> bytes:
    try:
        return sock.recv(max_bytes, _PEEK)
    except OSError:  # (BlockingIOError: nothing yet)
        return b""


def _skip(sock: socket.socket, size: int) -> None:
    while size > 0:  # (one read: the bytes are there)
        got = sock.recv_into(_SKIPPED, min(size, len(_SKIPPED)))
        if not got:
            raise anyio.BrokenResourceError("the peeked bytes were gone")
        size -= got


_PEEK = int(socket.MSG_PEEK)  # (a plain int: the flag enum's & runs Python code)
_SKIPPED = bytearray(64 * 1024)  # where skipped bytes go (their messages were taken already)


def _receive_now(sock: socket.socket, max_bytes: int) -> bytes:
    try:
        return sock.recv(max_bytes)
    except (BlockingIOError, InterruptedError):
        return b""
    except OSError as exc:
        raise anyio.BrokenResourceError from exc


def _receive_into_now(sock: socket.socket, buffer: memoryview) -> int:
    try:
        return sock.recv_into(buffer)
    except (BlockingIOError, InterruptedError):
        return 0
    except OSError as exc:
        raise anyio.BrokenResourceError from exc


RECEIVE_INTO_RETURN = 1024 * 1024  # bytes after which a blocked receive_into returns
PROGRESS_INTERVAL = 0.1  # s after which it returns with what came (a sign of life)


async def _receive_into(stream: ByteStream, sock: socket.socket, buffer: memoryview) -> int:
    """:func:`receiver_into` for anyio's socket streams (Trio), which read their socket as it
    is (no buffer of their own): ``recv_into`` until full, waiting for readability between.
    Returns early, blocked with at least ``RECEIVE_INTO_RETURN`` bytes in or with some after
    ``PROGRESS_INTERVAL``, so the caller sees progress (a sign of life)."""
    size = len(buffer)
    filled = 0
    started = monotonic()
    while filled < size:
        try:
            got = sock.recv_into(buffer[filled:])
        except BlockingIOError:
            if filled >= RECEIVE_INTO_RETURN or (
                filled and monotonic() - started >= PROGRESS_INTERVAL
            ):
                break
            try:
                await anyio.wait_readable(sock)
            except (OSError, anyio.ClosedResourceError):
                break  # closed under us: receive() below says how
            continue
        except OSError as exc:
            if filled:
                break
            raise anyio.BrokenResourceError from exc
        if not got:
            break
        filled += got
    if filled:
        return filled
    data = await stream.receive(1)  # raises why the stream ended (or a byte came after all)
    buffer[: len(data)] = data
    return len(data)


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


def bytes_below(stream: ByteStream) -> int:
    """The most bytes that may wait under ``stream``'s reader, already sent by the peer: the
    kernel's receive buffer (``SO_RCVBUF``; Linux grows it for TCP as the connection goes)
    plus what the stream reads ahead of ``receive`` (the asyncio fast path's buffer, and the
    chunks a stream passing descriptors reads ahead on asyncio)."""
    inner = getattr(stream, "transport_stream", stream)  # under TLS, the socket's stream
    if isinstance(inner, AsyncioSocketStream):
        ahead = inner.READ_AHEAD
    elif isinstance(inner, FdSocketStream):
        ahead = inner.read_ahead
    else:
        ahead = 0
    sock = raw_socket(stream)
    if sock is None:
        return ahead
    try:
        return ahead + int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))
    except OSError:
        return ahead


async def close_now(stream: ByteStream) -> None:
    """Close ``stream`` at once, dropping what it has not sent (as ``anyio.aclose_forcefully``).

    The asyncio fast path's stream is aborted directly: ``aclose_forcefully`` costs a cancel
    scope, its ``cancel()`` (which formats the current task's repr, ~20 us), a shielded wait
    for ``connection_lost`` and three loop passes per connection. One shielded checkpoint
    follows, so that the loop has closed the socket when this returns and this never raises
    (a cancelled caller sees it at its next checkpoint), as with ``aclose_forcefully``.

    The connection is shut down first: closing drops only our descriptor, and a child forked
    meanwhile (multiprocessing's default on Linux) holds a copy of it, which would keep the
    connection open, the peer none the wiser, for as long as that child lives."""
    sock = raw_socket(stream)
    if sock is not None:
        _shut_down(sock, socket.SHUT_RDWR)
    abort = getattr(stream, "abort", None)
    if abort is None:
        await anyio.aclose_forcefully(stream)
        return
    abort()
    await cancel_shielded_checkpoint()


def shut_socket(stream: ByteStream) -> bool:
    """End both ways of ``stream``'s socket, its descriptor kept: its reader reads what came
    before, then the end of stream (on TLS, a broken stream); a write fails from now on; the
    peer, if it ever reads again, meets the end. False where there is no socket to shut
    (then nothing changed)."""
    sock = raw_socket(stream)
    if sock is None or not _shut_down(sock, socket.SHUT_RDWR):
        return False
    if isinstance(stream, AsyncioSocketStream):
        stream.settle_writes()  # (a task writer meets the shut socket as it writes)
    return True


def _shut_down(sock: Any, how: int) -> bool:
    """``sock.shutdown(how)``, through a duplicate of its descriptor where the socket object
    refuses it (uvloop's). False if the socket is closed already."""
    try:
        try:
            sock.shutdown(how)
        except TypeError:  # ("transport sockets do not support shutdown()")
            with socket.fromfd(sock.fileno(), sock.family, sock.type) as duplicate:
                duplicate.shutdown(how)
    except OSError as exc:  # not connected (the peer went first: its end shows), or closed
        return exc.errno == errno.ENOTCONN
    return True


def send_tracebacks(stream: ByteStream, setting: bool | None) -> bool:
    """``Config.remote_tracebacks`` for the peer at the other end of ``stream``: when
    ``None``, whether it is on a Unix socket and runs as our user (``SO_PEERCRED``)."""
    if setting is not None:
        return setting
    sock = raw_socket(stream)
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
    return await open_asyncio_stream(sock, loop)
