"""A Unix stream that passes file descriptors (``SCM_RIGHTS``) alongside its bytes.

The shared-memory path (``_memfd``) sends each segment's descriptor once, with the bytes of the
frame that announces it. anyio's ``receive_fds`` ignores ``MSG_CTRUNC`` and the asyncio fast
path (``_asyncio``) cannot see ancillary data, so this stream reads the raw socket itself:
``recvmsg`` when the kernel has data, ``anyio.wait_readable`` when it has none. That is the same
code on asyncio, uvloop and Trio.

Invariants:
- Descriptors are received with ``MSG_CMSG_CLOEXEC``: a child spawned meanwhile never inherits
  them. Received descriptors wait in the stream (:meth:`FdSocketStream.take_fds`) until the
  layer above claims them; whatever is still unclaimed when the stream closes is closed.
- ``MSG_CTRUNC`` (more descriptors than :data:`MAX_FDS_PER_MESSAGE`, which the kernel then
  closes for us, or ancillary data we did not ask for) and any control message other than
  ``SCM_RIGHTS`` are a :class:`~ipcactors.DecodeError`: the descriptors that did arrive are
  closed and the peer is dropped. So is a peer passing more than ``max_fds`` descriptors over
  the connection's life.
- A descriptor travels with the first byte of the write it is attached to; the kernel never
  merges such a write with the bytes before it in one read, so a descriptor is in
  :meth:`take_fds` once the read that returns its frame's first byte has returned.
- A frame that carries descriptors is an :class:`~ipcactors._proto._messages.FdFrame`;
  ``coalesce`` never joins one to the frames before it. Writing one on a stream that cannot
  pass descriptors is a bug of the layer above (``TypeError``).
"""

from __future__ import annotations

import array
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

__all__ = ["MAX_FDS_PER_MESSAGE", "FdAttribute", "FdSocketStream", "can_pass_fds"]

#: Descriptors one message may carry; more is ``MSG_CTRUNC``, a protocol error. We send one.
MAX_FDS_PER_MESSAGE: Final = 4
#: Descriptors one connection may pass over its life, unless the stream is told otherwise.
DEFAULT_MAX_FDS: Final = 64
_ANCILLARY: Final = socket.CMSG_SPACE(MAX_FDS_PER_MESSAGE * array.array("i").itemsize)
_CLOEXEC: Final = getattr(socket, "MSG_CMSG_CLOEXEC", 0)


class FdAttribute(TypedAttributeSet):
    """Extra attributes of a stream about descriptor passing."""

    #: Whether the stream can pass file descriptors (absent: it cannot).
    can_pass_fds: bool = typed_attribute()


def can_pass_fds(stream: ByteStream) -> bool:
    """Whether ``stream`` passes file descriptors (an :class:`FdSocketStream`, maybe wrapped)."""
    return bool(stream.extra(FdAttribute.can_pass_fds, False))


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

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if self._receiving:
            raise anyio.BusyResourceError("receiving")
        self._receiving = True
        try:
            while True:
                if self._closed:
                    raise anyio.ClosedResourceError
                if self._eof:
                    raise anyio.EndOfStream
                try:
                    data, ancillary, flags, _ = self._sock.recvmsg(max_bytes, _ANCILLARY, _CLOEXEC)
                except BlockingIOError:
                    await anyio.wait_readable(self._sock)
                    continue
                except OSError as exc:
                    if self._closed:
                        raise anyio.ClosedResourceError from None
                    raise anyio.BrokenResourceError from exc
                if ancillary:
                    self._claim_ancillary(ancillary, flags)
                elif flags & socket.MSG_CTRUNC:
                    raise DecodeError("the peer passed more ancillary data than allowed")
                if not data:
                    self._eof = True
                    raise anyio.EndOfStream
                return data
        finally:
            self._receiving = False

    def _claim_ancillary(self, ancillary: list[tuple[int, int, bytes]], flags: int) -> None:
        fds: list[int] = []
        foreign = False
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                received = array.array("i")
                received.frombytes(data[: len(data) - len(data) % received.itemsize])
                fds.extend(received)
            else:
                foreign = True
        if flags & socket.MSG_CTRUNC or foreign:
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
        self._fds.extend(fds)

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
                        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
                        sent = sock.sendmsg([view], ancillary)
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
            _close_all(self.take_fds())
            anyio.notify_closing(self._sock)
            self._sock.close()
        await anyio.lowlevel.checkpoint()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        sock = self._sock
        return {
            FdAttribute.can_pass_fds: lambda: True,
            SocketAttribute.raw_socket: lambda: sock,
            SocketAttribute.family: lambda: sock.family,
            SocketAttribute.local_address: lambda: _text(sock.getsockname()),
            SocketAttribute.remote_address: lambda: _text(sock.getpeername()),
        }


def _text(address: Any) -> Any:
    return address.decode(errors="replace") if isinstance(address, bytes) else address
