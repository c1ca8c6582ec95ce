"""A Unix stream that passes file descriptors (``SCM_RIGHTS``) alongside its bytes.

The shared-memory path (``_memfd``) sends each segment's descriptor once, with the bytes of the
frame that announces it. anyio's ``receive_fds`` ignores ``MSG_CTRUNC`` and the asyncio fast
path (``_asyncio``) cannot see ancillary data, so this stream reads the raw socket itself with
``recvmsg``. On Trio it reads when the kernel has data and waits with ``anyio.wait_readable``
when it has none. On asyncio and uvloop that wait would register and unregister the socket
around every read (a request on a connection with shared memory on took 2-3x as long as on one
without); there the socket stays registered and the loop's callback reads ahead, chunk by chunk,
as the fast path's protocol does. Writes are the writer's (``_streams``), straight from the
sender when nothing is queued.

Invariants:
- Descriptors are received with ``MSG_CMSG_CLOEXEC``: a child spawned meanwhile never inherits
  them. Received descriptors wait in the stream (:meth:`FdSocketStream.take_fds`) until the
  layer above claims them; whatever is still unclaimed when the stream closes is closed, read
  ahead or not.
- What the loop reads ahead (asyncio) is kept as it came, one chunk per ``recvmsg`` with the
  descriptors that came with it: they reach :meth:`take_fds` only when ``receive`` returns the
  chunk's last byte (a chunk returned in parts brings them with its last part), exactly as
  without reading ahead, where they come with the read. Reading pauses once
  ``READ_HIGH_WATER`` bytes wait unread (memory stays bounded: :attr:`read_ahead`), and a
  peer's garbage or a broken socket is raised by ``receive`` after the chunks before it.
- A listener (:meth:`FdSocketStream.listen`, asyncio) sees only a read that brings no
  descriptor, while the reader waits with nothing read ahead and none unclaimed: never bytes
  out of order, never a descriptor. What it raises, the waiting ``receive`` raises.
- A peek (:meth:`FdSocketStream.peek`, Trio: a requester looking at the kernel while the
  reader waits) never takes a descriptor: bytes that bring one are declined, and the
  duplicates the kernel installs for a peek are closed at once; the peeker then takes from the
  socket only bytes a peek returned (``_streams.peeker``).
- ``MSG_CTRUNC`` (more descriptors than :data:`MAX_FDS_PER_MESSAGE`, which the kernel then
  closes for us, or ancillary data we did not ask for) and any control message other than
  ``SCM_RIGHTS`` are a :class:`~ipcactors.DecodeError`: the descriptors that did arrive are
  closed and the peer is dropped. So is a peer passing more than ``max_fds`` descriptors over
  the connection's life.
- A descriptor travels with the first byte of the write it is attached to. The kernel may
  join bytes written before that write to the read that brings it, but ends the read within
  that write. So the read's last byte is never before its frame's first byte: a descriptor is
  in :meth:`take_fds` once the read holding that last byte has returned, never before (the
  frames that end earlier meet no descriptor they could take for theirs).
- A frame that carries descriptors is an :class:`~ipcactors._proto._messages.FdFrame`;
  ``coalesce`` never joins one to the frames before it. Writing one on a stream that cannot
  pass descriptors is a bug of the layer above (``TypeError``).
"""

from __future__ import annotations

import array
import math
import os
import socket
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Final

import anyio
from anyio import TypedAttributeSet, typed_attribute
from anyio.abc import ByteStream, SocketAttribute

from .._errors import DecodeError
from .._proto._messages import FdFrame
from ._asyncio import READ_HIGH_WATER, READ_LOW_WATER
from ._backend import Completion, running_asyncio_loop

__all__ = ["MAX_FDS_PER_MESSAGE", "FdAttribute", "FdSocketStream", "can_pass_fds", "fds_message"]

#: Descriptors one message may carry; more is ``MSG_CTRUNC``, a protocol error. We send one.
MAX_FDS_PER_MESSAGE: Final = 4
#: Descriptors one connection may pass over its life, unless the stream is told otherwise.
DEFAULT_MAX_FDS: Final = 64
_ANCILLARY: Final = socket.CMSG_SPACE(MAX_FDS_PER_MESSAGE * array.array("i").itemsize)
#: The most one read asks the kernel for (the reader asks for more while a large frame comes).
MAX_READ: Final = 4 * 1024 * 1024
# Plain ints: the socket module's flags are enums, whose ``&`` runs Python code on every read.
_CLOEXEC: Final = int(getattr(socket, "MSG_CMSG_CLOEXEC", 0))
_TRUNCATED: Final = int(socket.MSG_CTRUNC)
_PEEK: Final = int(socket.MSG_PEEK)


class FdAttribute(TypedAttributeSet):
    """Extra attributes of a stream about descriptor passing."""

    #: Whether the stream can pass file descriptors (absent: it cannot).
    can_pass_fds: bool = typed_attribute()


def can_pass_fds(stream: ByteStream) -> bool:
    """Whether ``stream`` passes file descriptors (an :class:`FdSocketStream`, maybe wrapped)."""
    return bool(stream.extra(FdAttribute.can_pass_fds, False))


def fds_message(fds: tuple[int, ...] | list[int]) -> tuple[int, int, array.array[int]]:
    """The ancillary message that passes ``fds`` (``sendmsg``'s second argument holds it)."""
    return (socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))


def _close_all(fds: list[int] | deque[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


class FdSocketStream(ByteStream):
    """An anyio byte stream over a connected Unix stream socket (which it owns) that also
    passes descriptors: see the module's invariants."""

    def __init__(self, sock: socket.socket, *, max_fds: int = DEFAULT_MAX_FDS) -> None:
        if sock.family != socket.AF_UNIX:
            raise ValueError("descriptors pass only over Unix sockets")
        sock.setblocking(False)
        self._sock = sock
        self._fds: deque[int] = deque()
        self._max_fds = max_fds
        self._received_fds = 0
        self._closed = False
        self._eof = False
        # One reader and one writer at a time (the channel's); a second would interleave.
        self._receiving = False
        self._sending = anyio.Lock(fast_acquire=True)
        # asyncio: the loop reads ahead (see the module docstring); None on Trio.
        self._loop = running_asyncio_loop()
        self._chunks: deque[tuple[bytes, list[int]]] = deque()
        self._ahead = 0  # bytes in _chunks
        self._read_size = 65536  # what the last receive asked for
        self._registered = False  # the loop calls _on_readable
        self._failure: Exception | None = None  # raised once the chunks before it are taken
        self._waiter: Completion | None = None
        self._listener: Callable[[memoryview], bool] | None = None  # (see listen)
        self._attributes: Mapping[Any, Callable[[], Any]] | None = None  # (built once)
        self._raised: BaseException | None = None  # by the listener: receive raises it next
        # Trio: the last read got less than it asked for (the kernel had no more): the next
        # waits for readability first instead of a read that finds nothing.
        self._drained = False

    @property
    def read_ahead(self) -> int:
        """The most bytes this stream holds read from the socket and not yet returned."""
        return READ_HIGH_WATER + MAX_READ if self._loop is not None else 0

    # --- receiving ----------------------------------------------------------------------------

    def take_fds(self) -> list[int]:
        """The descriptors received so far, in order; the caller owns them from now on."""
        fds = list(self._fds)
        self._fds.clear()
        return fds

    @property
    def pending_fds(self) -> int:
        """How many received descriptors wait to be claimed."""
        return len(self._fds)

    def listen(self, listener: Callable[[memoryview], bool] | None) -> None:
        """asyncio: offer each read that brings no descriptor to ``listener`` first, in the
        loop's callback, while a task waits in :meth:`receive` with nothing read ahead and no
        descriptor unclaimed (as ``AsyncioSocketStream.listen``: what it raises, having taken
        the bytes, the waiting :meth:`receive` raises). ``None``: stop."""
        self._listener = listener

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if self._receiving:
            raise anyio.BusyResourceError("receiving")
        self._receiving = True
        try:
            if self._loop is not None:
                return await self._receive_ahead(max_bytes)
            waited = False
            while True:
                if self._closed:
                    raise anyio.ClosedResourceError
                if self._eof:
                    raise anyio.EndOfStream
                if self._drained and not waited:
                    waited = True
                    try:
                        await anyio.wait_readable(self._sock)
                    except anyio.ClosedResourceError:
                        continue  # (closed: said above)
                try:
                    data, ancillary, flags, _ = self._sock.recvmsg(max_bytes, _ANCILLARY, _CLOEXEC)
                except BlockingIOError:
                    waited = True
                    await anyio.wait_readable(self._sock)
                    continue
                except OSError as exc:
                    if self._closed:
                        raise anyio.ClosedResourceError from None
                    raise anyio.BrokenResourceError from exc
                if ancillary or flags & _TRUNCATED:
                    self._fds.extend(self._claim_ancillary(ancillary, flags))
                if not data:
                    self._eof = True
                    raise anyio.EndOfStream
                self._drained = len(data) < max_bytes
                return data
        finally:
            self._receiving = False

    def peek(self, max_bytes: int) -> bytes:
        """Trio, for a task other than the reader while it waits with nothing read: up to
        ``max_bytes`` the kernel holds, left there; ``b""`` if none, on any error (the reader
        hears of it), or if descriptors come with them (the reader's to claim: the duplicates
        a peek makes are closed at once)."""
        try:
            data, ancillary, flags, _ = self._sock.recvmsg(max_bytes, _ANCILLARY, _PEEK | _CLOEXEC)
        except OSError:
            return b""
        if ancillary or flags & _TRUNCATED:
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds = array.array("i")
                    fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
                    _close_all(list(fds))
            return b""
        return data

    async def _receive_ahead(self, max_bytes: int) -> bytes:
        self._read_size = min(max(max_bytes, 1), MAX_READ)
        while True:
            if self._closed:
                raise anyio.ClosedResourceError
            raised = self._raised
            if raised is not None:  # (before any chunk: the listener took only with none)
                self._raised = None
                raise raised
            if self._chunks:
                data, fds = self._chunks.popleft()
                if len(data) > max_bytes:
                    # Its descriptors go with its last part: their write may start anywhere
                    # in the chunk, and ends it (see the invariants).
                    self._chunks.appendleft((data[max_bytes:], fds))
                    data, fds = data[:max_bytes], []
                self._ahead -= len(data)
                self._fds.extend(fds)
                if not self._registered and self._ahead < READ_LOW_WATER:
                    self._register()
                return data
            if self._failure is not None:
                raise self._failure
            if self._eof:
                raise anyio.EndOfStream
            self._register()
            self._waiter = Completion()  # (a bare asyncio future)
            try:
                await self._waiter.wait(math.inf)
            finally:
                self._waiter = None

    def _register(self) -> None:
        if not self._registered and not (self._closed or self._eof or self._failure):
            assert self._loop is not None
            self._loop.add_reader(self._sock.fileno(), self._on_readable)
            self._registered = True

    def _unregister(self) -> None:
        if self._registered:
            assert self._loop is not None
            self._loop.remove_reader(self._sock.fileno())
            self._registered = False

    def _on_readable(self) -> None:
        """The loop's callback while the socket is registered: one read, kept as a chunk."""
        try:
            data, ancillary, flags, _ = self._sock.recvmsg(self._read_size, _ANCILLARY, _CLOEXEC)
            fds = self._claim_ancillary(ancillary, flags) if ancillary or flags & _TRUNCATED else []
        except (BlockingIOError, InterruptedError):
            return
        except DecodeError as exc:
            self._end(failure=exc)
            return
        except OSError as exc:
            failure = anyio.BrokenResourceError()
            failure.__cause__ = exc
            self._end(failure=failure)
            return
        if not data:
            self._end()
            return
        listener = self._listener
        waiter = self._waiter
        if (
            listener is not None
            and not fds
            and waiter is not None
            and not waiter.done()
            and not self._chunks
            and not self._fds
        ):
            try:
                if listener(memoryview(data)):
                    return
            except BaseException as exc:  # taken, and the waiting reader raises it
                self._raised = exc
                self._wake()
                return
        self._chunks.append((data, fds))
        self._ahead += len(data)
        if self._ahead >= READ_HIGH_WATER:
            self._unregister()  # until receive took enough
        self._wake()

    def _end(self, failure: Exception | None = None) -> None:
        """The socket is done: at its end (EOF), or ``failure`` (raised after the chunks)."""
        self._unregister()
        if failure is None:
            self._eof = True
        else:
            self._failure = failure
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None:
            self._waiter.set()

    def _claim_ancillary(self, ancillary: list[tuple[int, int, bytes]], flags: int) -> list[int]:
        """The descriptors ``ancillary`` brings, or :class:`DecodeError` (all of them closed)."""
        if not ancillary:  # truncated to nothing
            raise DecodeError("the peer passed more ancillary data than allowed")
        fds: list[int] = []
        foreign = False
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                received = array.array("i")
                received.frombytes(data[: len(data) - len(data) % received.itemsize])
                fds.extend(received)
            else:
                foreign = True
        if flags & _TRUNCATED or foreign:
            _close_all(fds)
            raise DecodeError(
                f"the peer passed more than {MAX_FDS_PER_MESSAGE} file descriptors in one "
                "message, or ancillary data other than descriptors"
                if not foreign
                else "the peer sent ancillary data other than file descriptors"
            )
        self._received_fds += len(fds)
        if self._received_fds > self._max_fds:
            _close_all(fds)
            raise DecodeError(
                f"the peer passed more than {self._max_fds} file descriptors over the connection"
            )
        return fds

    # --- sending ------------------------------------------------------------------------------

    async def send(self, item: bytes) -> None:
        fds = item.fds if isinstance(item, FdFrame) else ()
        await self.send_fds(item, fds)

    async def send_fds(self, data: bytes | memoryview, fds: tuple[int, ...] | list[int]) -> None:
        """Send ``data``, with ``fds`` attached to its first byte (duplicated into the peer;
        ours stay open)."""
        if len(fds) > MAX_FDS_PER_MESSAGE:
            raise ValueError(f"at most {MAX_FDS_PER_MESSAGE} descriptors per message")
        view = memoryview(data).cast("B")
        async with self._sending:
            sock = self._sock
            while True:
                if self._closed:
                    raise anyio.ClosedResourceError
                try:
                    if fds:
                        sent = sock.sendmsg([view], [fds_message(fds)])
                        fds = ()  # they went with the first byte
                    else:
                        sent = sock.send(view)
                except BlockingIOError:
                    await anyio.wait_writable(sock)
                    continue
                except OSError as exc:
                    if self._closed:
                        raise anyio.ClosedResourceError from None
                    raise anyio.BrokenResourceError from exc
                view = view[sent:]
                if not view:
                    return
                await anyio.wait_writable(sock)

    async def send_eof(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._unregister()
            self._wake()
            _close_all(self.take_fds())
            while self._chunks:
                _close_all(self._chunks.popleft()[1])
            self._ahead = 0
            if self._loop is None:
                anyio.notify_closing(self._sock)
            self._sock.close()
        await anyio.lowlevel.checkpoint()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        if self._attributes is None:  # (asked several times per connection: built once)
            sock = self._sock
            self._attributes = {
                FdAttribute.can_pass_fds: lambda: True,
                SocketAttribute.raw_socket: lambda: sock,
                SocketAttribute.family: lambda: sock.family,
                SocketAttribute.local_address: lambda: _text(sock.getsockname()),
                SocketAttribute.remote_address: lambda: _text(sock.getpeername()),
            }
        return self._attributes


def _text(address: Any) -> Any:
    return address.decode(errors="replace") if isinstance(address, bytes) else address
