"""Transport adapters: how byte streams are opened and accepted, one small interface for all.

The layers above see only :class:`Transport`: ``await connect()`` gives an anyio byte stream,
``await listen()`` a :class:`Listening`, whatever the socket kind. They never branch on it.

Invariants:
- Classification of connect failures lives here. :func:`is_fatal_connect_error` says which
  errors retrying cannot fix.
- Nothing above this package sees a socket object: connecting and accepting give byte streams.
- ``Listening.accept`` never fails for one connection's fault (reset, aborted, refused by a
  firewall before it was accepted): it skips that connection. What it raises concerns the
  listener (out of resources, closed). On asyncio the listening socket stays registered with
  the loop while ``accept`` keeps coming back for more, and is unregistered when the loop
  finds it readable twice in a row with nobody waiting (so a server backing off never spins
  the loop; once is the usual echo of a connection the woken ``accept`` is taking).
- A connect returns a connected stream or raises: a Unix listener with a full backlog is
  waited out (as a blocking connect would, within the caller's timeout), never taken for a
  connection.
"""

from __future__ import annotations

import errno
import ipaddress
import math
import os
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, NoReturn, Protocol

import anyio
from anyio.abc import ByteStream, SocketAttribute

from .._errors import (
    AddressInUseError,
    ConfigError,
    SocketPathError,
    TLSError,
    raise_if_exhausted,
)
from ._backend import Completion, running_asyncio_loop
from ._fds import FdSocketStream
from ._streams import wrap_socket
from ._unix import bind_unix_socket, check_path_length, remove_if_ours

__all__ = [
    "Listener",
    "Listening",
    "TCPTransport",
    "Transport",
    "UnixTransport",
    "host_port",
    "is_fatal_connect_error",
    "peer_address",
    "tls_error",
]

Address = str | tuple[str, int]

BACKLOG_RETRY = 0.001  # s: the first pause before connecting again to a full Unix backlog
BACKLOG_RETRY_CAP = 0.05  # s: and the longest (a server busy accepting frees room quickly)

# accept() errors that concern only the connection being accepted (reset or aborted before we
# took it, refused by a firewall, ...): skip it and accept the next, as Trio's SocketListener.
_SKIPPED_ACCEPT_ERRNOS = frozenset(
    getattr(errno, name)
    for name in (
        "ECONNABORTED",
        "ECONNRESET",
        "EPERM",
        "EPROTO",
        "ENETDOWN",
        "ENOPROTOOPT",
        "EHOSTDOWN",
        "ENONET",
        "EHOSTUNREACH",
        "EOPNOTSUPP",
        "ENETUNREACH",
        "ENOSR",
        "ESOCKTNOSUPPORT",
        "EPROTONOSUPPORT",
        "ETIMEDOUT",
    )
    if hasattr(errno, name)
)


def peer_address(address: Any) -> Any:
    """A socket address as users see it: ``(host, port)`` for IP, a str for Unix."""
    if isinstance(address, tuple):
        return address[:2]
    if isinstance(address, bytes):
        return address.decode(errors="replace")
    return address


def host_port(host: str, port: int) -> str:
    """``host:port`` as an address is written (a URL's authority): an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Listener(Protocol):
    """What a server needs from a listening endpoint, whatever it is (a socket, a named pipe):
    its public address, the next connection as a byte stream, and closing."""

    @property
    def address(self) -> Address: ...

    async def accept(self) -> tuple[ByteStream, Any]:
        """The next connection and its peer's address; see :meth:`Listening.accept`."""
        ...

    async def aclose(self) -> None: ...


class Listening:
    """A bound, listening socket, its public address, and what to undo when it closes: the
    :class:`Listener` of the socket transports."""

    def __init__(
        self,
        sock: socket.socket,
        address: Address,
        cleanup: Callable[[], Awaitable[None]] | None = None,
        wrap: Callable[[socket.socket], Awaitable[ByteStream]] = wrap_socket,
    ) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._wrap = wrap
        self.address = address
        self._cleanup = cleanup
        self._closed = False
        # asyncio: the socket stays registered with the loop while connections come, and a
        # Completion (a bare future) says one may wait (anyio's wait_readable registers and
        # unregisters it around every wait: two epoll_ctl calls and ~30 us of Python per
        # connection).
        self._loop = running_asyncio_loop()
        self._watching = False
        self._readable: Completion | None = None
        self._unheard = False  # the loop found it readable with nobody waiting, once

    async def accept(self) -> tuple[ByteStream, Any]:
        """The next connection, as a byte stream (see ``_streams.wrap_socket``), and the peer's
        address as ``accept`` saw it (a peer that reset since cannot be asked any more). Skips
        connections that failed before they were accepted, or were reset before they could be
        wrapped (as Trio's ``SocketListener`` does); raises ``OSError`` for a lack of resources
        (EMFILE, ...) and ``anyio.ClosedResourceError`` once closed."""
        while True:
            if self._closed:
                raise anyio.ClosedResourceError
            try:
                client, address = self._sock.accept()
            except BlockingIOError:
                await self._wait_readable()
                continue
            except OSError as exc:
                if exc.errno in _SKIPPED_ACCEPT_ERRNOS:
                    continue
                raise
            client.setblocking(False)
            try:
                stream = await self._wrap(client)
            except (OSError, ValueError):
                # Reset between accept() and now: asyncio cannot ask for its peer (ENOTCONN),
                # Trio refuses an unconnected socket (ValueError).
                client.close()
                continue
            except BaseException:
                client.close()
                raise
            return stream, peer_address(address)

    async def _wait_readable(self) -> None:
        loop = self._loop
        if loop is None:
            await anyio.wait_readable(self._sock)
            return
        if not self._watching:
            loop.add_reader(self._sock.fileno(), self._on_readable)
            self._watching = True
        self._unheard = False
        readable = self._readable = Completion()
        try:
            await readable.wait(math.inf)
        finally:
            self._readable = None

    def _on_readable(self) -> None:
        """asyncio's callback while the socket is registered."""
        readable = self._readable
        if readable is None:
            # Nobody waits. Once in a row is usual: the loop polls again before the accept it
            # woke has run, and finds the connection that accept is taking. Twice, accept is
            # busy or backing off: stop watching until it waits again, or the loop would call
            # this at every pass meanwhile.
            if self._unheard:
                self._unwatch()
            self._unheard = True
        elif not readable.done():
            readable.set()
        # (else accept is about to run, and takes the connection)

    def _unwatch(self) -> None:
        if self._watching:
            assert self._loop is not None
            self._loop.remove_reader(self._sock.fileno())
            self._watching = False

    async def aclose(self) -> None:
        """Close the socket and undo what binding did (idempotent; runs even if cancelled)."""
        with anyio.CancelScope(shield=True):
            if not self._closed:
                self._closed = True
                self._unwatch()
                if self._readable is not None:
                    self._readable.set()  # accept sees it closed
                anyio.notify_closing(self._sock)
                self._sock.close()
            cleanup, self._cleanup = self._cleanup, None
            if cleanup is not None:
                await cleanup()


class Transport(Protocol):
    """What the layers above need from a socket kind."""

    @property
    def kind(self) -> str: ...

    @property
    def address(self) -> Address: ...

    async def connect(self) -> ByteStream:
        """A stream to the server, secured if the transport is. Raises on failure."""
        ...

    async def listen(self, backlog: int) -> Listener: ...

    async def accepted(self, stream: ByteStream) -> ByteStream:
        """The stream to speak the protocol over, for a freshly accepted connection (TLS does
        its handshake here). Called within the server's handshake timeout."""
        ...


def is_fatal_connect_error(exc: BaseException) -> bool:
    """Errors that the same connect attempt would hit again: not worth retrying."""
    if isinstance(exc, SocketPathError):
        return True
    if isinstance(exc, PermissionError):
        return True
    return isinstance(exc, OSError) and exc.errno in (errno.ENAMETOOLONG, errno.ENOTSOCK)


# What OpenSSL raises when the bytes stop coming: the connection ended, TLS did not fail.
_CONNECTION_ENDED: Final = (
    ssl.SSLEOFError,
    ssl.SSLZeroReturnError,
    ssl.SSLSyscallError,
    ssl.SSLWantReadError,
    ssl.SSLWantWriteError,
)


def tls_error(exc: BaseException) -> TLSError | None:
    """The :class:`TLSError` an exception stands for, if it is (or wraps) a TLS failure that
    the same attempt would meet again (a certificate, a version, an alert); ``None`` for any
    other, a connection that ended mid-handshake included: that is a failed attempt, retried
    as any other (see :func:`tls_cut`)."""
    if not isinstance(exc, Exception):  # a cancellation is never one, whatever it interrupted
        return None
    cause: BaseException | None = exc
    for _ in range(3):
        if isinstance(cause, ssl.SSLCertVerificationError):
            return TLSError(f"TLS certificate verification failed: {cause.verify_message}", "tls")
        if isinstance(cause, ssl.SSLError):
            reason = cause.reason or str(cause)
            if isinstance(cause, _CONNECTION_ENDED) or reason == "UNEXPECTED_EOF_WHILE_READING":
                return None
            hint = {
                "WRONG_VERSION_NUMBER": " (is the server speaking TLS?)",
                "CERTIFICATE_REQUIRED": " (the server requires a client certificate)",
                "TLSV13_ALERT_CERTIFICATE_REQUIRED": " (the server requires a client certificate)",
            }.get(str(reason).upper(), "")
            return TLSError(f"TLS failed: {reason}{hint}", "tls")
        if cause is None:
            break
        cause = cause.__cause__ or cause.__context__
    return None


def tls_cut(exc: BaseException) -> ConnectionAbortedError:
    """What a TLS handshake that the connection's end cut short is: a failed attempt (as a
    plain server that closes at once), its message saying where it ended."""
    error = ConnectionAbortedError(
        "the connection ended during the TLS handshake (the server hung up: is it speaking TLS?)"
    )
    error.__cause__ = exc
    return error


# TLS alerts by which a server refuses our certificate (or the lack of one). Under TLS 1.3 they
# arrive after our side of the handshake is done, on the first read.
_CERTIFICATE_REFUSED: Final = frozenset(
    {
        "CERTIFICATE_REQUIRED",
        "TLSV13_ALERT_CERTIFICATE_REQUIRED",
        "SSLV3_ALERT_BAD_CERTIFICATE",
        "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
        "TLSV1_ALERT_UNKNOWN_CA",
        "TLSV1_ALERT_ACCESS_DENIED",
    }
)


def refused_certificate(exc: BaseException | None) -> TLSError | None:
    """The :class:`TLSError` for a stream that broke because the server refused our
    certificate (retrying would fail the same way), else ``None``."""
    cause = exc
    for _ in range(3):
        if cause is None:
            return None
        if isinstance(cause, ssl.SSLError):
            if str(cause.reason).upper() in _CERTIFICATE_REFUSED:
                return tls_error(cause)
            return None
        cause = cause.__cause__ or cause.__context__
    return None


async def _fd_stream(sock: socket.socket) -> ByteStream:
    return FdSocketStream(sock)


@dataclass(frozen=True)
class UnixTransport:
    """A Unix stream socket. With ``pass_fds`` its streams can pass file descriptors
    (``_fds.FdSocketStream``, what shared memory needs) instead of the backend's fastest."""

    path: str
    kind: str = "unix"
    pass_fds: bool = False

    @property
    def address(self) -> str:
        return self.path

    async def connect(self) -> ByteStream:
        check_path_length(self.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            await _connect(sock, self.path)
        except BaseException:
            sock.close()
            raise
        return FdSocketStream(sock) if self.pass_fds else await wrap_socket(sock)

    async def accepted(self, stream: ByteStream) -> ByteStream:
        return stream

    async def listen(self, backlog: int) -> Listening:
        # In the loop unless another process holds the directory's lock (see _unix).
        bound = bind_unix_socket(self.path, backlog, wait=False)
        if bound is None:
            bound = await anyio.to_thread.run_sync(bind_unix_socket, self.path, backlog)
        assert bound is not None

        async def cleanup() -> None:
            remove_if_ours(bound.path, bound.identity)

        return Listening(
            bound.sock, self.path, cleanup, _fd_stream if self.pass_fds else wrap_socket
        )


@dataclass(frozen=True)
class TCPTransport:
    host: str
    port: int
    kind: str = "tcp"

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    async def connect(self) -> ByteStream:
        family = _literal_family(self.host)
        if family is None:
            stream = await anyio.connect_tcp(self.host, self.port)
            _tune_tcp(stream.extra(SocketAttribute.raw_socket))
            return stream
        # A literal address needs no happy-eyeballs race: connect directly (half the time).
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            _tune_tcp(sock)
            await _connect(sock, (self.host, self.port))
        except BaseException:
            sock.close()
            raise
        return await wrap_socket(sock)

    async def accepted(self, stream: ByteStream) -> ByteStream:
        return stream

    async def listen(self, backlog: int) -> Listening:
        try:
            infos = await anyio.getaddrinfo(
                self.host, self.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )
        except OSError as exc:
            raise_bind_error(exc, "TCP", self.host, self.port)
        family, _, _, _, sockaddr = infos[0]
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError as exc:
            raise_bind_error(exc, "TCP", self.host, self.port)
        try:
            # Lets a restarted server rebind despite TIME_WAIT. SO_REUSEPORT stays off: it
            # would let another process of ours share the port and steal connections.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            _tune_tcp(sock)  # accepted sockets inherit these options
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(sockaddr)
            sock.listen(backlog)
        except OSError as exc:
            sock.close()
            raise_bind_error(exc, "TCP", self.host, self.port)
        host, port = sock.getsockname()[:2]
        return Listening(sock, (host, port))


#: What binding fails with when the address is not one to serve on here (not this host's, of
#: another IP version, a privileged port): the caller's to change.
_NOT_SERVABLE: Final = frozenset(
    {errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT, errno.EACCES, errno.EPERM}
)


def raise_bind_error(exc: OSError, protocol: str, host: str, port: int) -> NoReturn:
    """Raise what ``exc``, met looking up or binding ``(host, port)`` to serve ``protocol``,
    is: :class:`AddressInUseError`, :class:`ConfigError` for an address that cannot be served
    on here (a name that does not resolve included), :class:`ResourceError` when the system is
    out of descriptors or memory (its state, not the address's), else ``exc`` itself. uvloop
    leaves ``errno`` unset and says it in the cause."""
    code = exc.errno if exc.errno is not None else getattr(exc.__cause__, "errno", None)
    if code == errno.EADDRINUSE:
        raise AddressInUseError(
            f"{protocol} port {port} on {host} is in use; choose another port (or 0 for a free one)"
        ) from exc
    if isinstance(exc, socket.gaierror) or code in _NOT_SERVABLE:
        raise ConfigError(f"cannot serve on {host} port {port} ({protocol}): {exc}") from exc
    raise_if_exhausted(exc, f"cannot serve on {host} port {port} ({protocol})")
    raise exc


async def _connect(sock: socket.socket, address: Any) -> None:
    """Connect a non-blocking socket, waiting for the kernel when it must (the caller bounds
    the wait). A Unix listener whose backlog is full answers EAGAIN and does *not* connect
    (unlike TCP's EINPROGRESS, nothing is under way): try again shortly, as a blocking connect
    would wait for room."""
    code = sock.connect_ex(address)
    delay = BACKLOG_RETRY
    while code == errno.EAGAIN and sock.family == socket.AF_UNIX:
        await anyio.sleep(delay)
        delay = min(delay * 2, BACKLOG_RETRY_CAP)
        code = sock.connect_ex(address)
    if code == errno.EINPROGRESS:
        await anyio.wait_writable(sock)
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if code:
        raise OSError(code, f"connect to {address}: {os.strerror(code)}")


# TCP keepalive: a peer that vanished without a FIN (a host that lost power, a cable pulled) is
# noticed after about 10 + 3 * 5 = 25 s of silence instead of hours.
_KEEPALIVE = {"TCP_KEEPIDLE": 10, "TCP_KEEPINTVL": 5, "TCP_KEEPCNT": 3}


def _tune_tcp(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in _KEEPALIVE.items():
        option = getattr(socket, name, None)
        if option is not None:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)


def _literal_family(host: str) -> Any:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    return socket.AF_INET6 if ip.version == 6 else socket.AF_INET
