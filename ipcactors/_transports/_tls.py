"""TLS over TCP: verified by default, mutual when the server asks for client certificates.

Invariants:
- A TLS server never starts without a certificate: the context is tried in memory first.
- Every TLS failure on the client (verification, a refused client certificate, a version
  mismatch, a plain server) is a :class:`TLSError`, which is never retried: the same
  certificates would fail the same way.
- An SSL error after the TLS handshake (an alert such as "certificate required", a corrupt
  record) ends that connection only: the stream raises it as ``anyio.BrokenResourceError``
  (the ``ssl.SSLError`` chained as its cause, so :func:`tls_error` still finds it), which every
  reader and writer handles, instead of letting it escape and take the actor down.
- A large write (a payload out of band, a view of the sender's memory) is encrypted and sent
  ``TLS_SLICE`` bytes at a time: never copied whole, never all encrypted in memory at once.
- A server whose handshake fails sends its alert before closing (``_AlertingTLSStream``): the
  client's error names the reason (a refused certificate, an unknown CA), not an EOF.
- A plain ipcactors client that reaches a TLS port is told so in plain text (a ``reject`` with
  reason ``tls``) instead of being dropped, so it fails at once with a clear message that names
  the port it reached (the bound one, not the 0 a server may have been configured with).
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, TypeVarTuple, Unpack

import anyio
from anyio.abc import ByteStream, SocketAttribute
from anyio.streams.tls import TLSStream

from .._errors import ConfigError, ProtocolError
from ._streams import shared_sender
from ._transport import Listening, TCPTransport, tls_cut, tls_error

__all__ = ["NotTLSError", "TLSTransport", "check_server_context"]

_TLS_HANDSHAKE_RECORD = 0x16  # the first byte of every TLS ClientHello
TLS_SLICE = 1024 * 1024  # a large write is encrypted and sent this much at a time
T = TypeVar("T")
PosArgsT = TypeVarTuple("PosArgsT")
_ALERT_TIMEOUT = 1.0  # seconds a failed handshake's alert may take to be sent


class NotTLSError(ProtocolError):
    """A client spoke plain bytes to a TLS port."""

    reject_reason = "tls"


def check_server_context(context: ssl.SSLContext) -> None:
    """Refuse a context a TLS server cannot serve with: a client context, or no certificate."""
    if not isinstance(context, ssl.SSLContext):
        raise ConfigError(f"tls= takes an ssl.SSLContext, got {context!r}")
    if context.protocol == ssl.PROTOCOL_TLS_CLIENT:
        raise ConfigError(
            "tls= for serve_net needs a server context: "
            "ssl.create_default_context(ssl.Purpose.CLIENT_AUTH) with load_cert_chain(...)"
        )
    if not _presents_certificate(context):
        raise ConfigError(
            "the TLS server context has no usable certificate and key; "
            "load them with context.load_cert_chain(certfile, keyfile)"
        )


def _presents_certificate(context: ssl.SSLContext) -> bool:
    """Run a handshake against ``context`` in memory and see whether a certificate comes back."""
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    probe.check_hostname = False
    probe.verify_mode = ssl.CERT_NONE
    server_in, server_out, client_in, client_out = (ssl.MemoryBIO() for _ in range(4))
    server = context.wrap_bio(server_in, server_out, server_side=True)
    client = probe.wrap_bio(client_in, client_out)
    for _ in range(8):
        try:
            client.do_handshake()
            return client.getpeercert(binary_form=True) is not None
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLError:
            return False
        try:
            server.do_handshake()
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLError as exc:
            # Failing for want of a client certificate means it got as far as presenting its own.
            reason = str(exc.reason).upper()
            return "CERTIFICATE" in reason and "NO_CERTIFICATE" not in reason
        server_in.write(client_out.read())
        client_in.write(server_out.read())
    return False


class _Wrapper(ByteStream):
    """A stream that hands everything to the stream it wraps; subclasses change one part."""

    def __init__(self, stream: ByteStream) -> None:
        self._stream = stream

    async def receive(self, max_bytes: int = 65536) -> bytes:
        return await self._stream.receive(max_bytes)

    async def send(self, item: bytes) -> None:
        await self._stream.send(item)

    async def send_eof(self) -> None:
        await self._stream.send_eof()

    async def aclose(self) -> None:
        await self._stream.aclose()

    @property
    def extra_attributes(self) -> Any:
        return self._stream.extra_attributes


class _Replay(_Wrapper):
    """A stream that first returns bytes already read from another stream, then that stream."""

    def __init__(self, stream: ByteStream, prefix: bytes) -> None:
        super().__init__(stream)
        self._prefix = prefix

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if self._prefix:
            data, self._prefix = self._prefix[:max_bytes], self._prefix[max_bytes:]
            return data
        return await self._stream.receive(max_bytes)


class _AlertingTLSStream(TLSStream):
    """A server's TLS stream that sends the alert OpenSSL queued when a call fails (a failed
    handshake above all) before it raises.

    anyio's raises without writing it: the client then saw only an unexpected EOF, and a
    client whose certificate we refused (known only after its side of a TLS 1.3 handshake is
    done) could not tell that from a lost connection.
    """

    async def _call_sslobject_method(
        self, func: Callable[[Unpack[PosArgsT]], T], *args: *PosArgsT
    ) -> T:
        try:
            return await super()._call_sslobject_method(func, *args)
        except ssl.SSLError:
            alert = self._write_bio.read()  # what OpenSSL queued: the alert
            if alert:
                with anyio.move_on_after(_ALERT_TIMEOUT), contextlib.suppress(Exception):
                    await self.transport_stream.send(alert)
            raise


class _Breaking(_Wrapper):
    """A TLS stream whose SSL errors after the handshake are ``BrokenResourceError``."""

    def __init__(self, stream: TLSStream) -> None:
        super().__init__(stream)

    async def receive(self, max_bytes: int = 65536) -> bytes:
        try:
            return await self._stream.receive(max_bytes)
        except ssl.SSLError as exc:
            raise anyio.BrokenResourceError(f"TLS failed: {exc.reason or exc}") from exc

    async def send(self, item: bytes) -> None:
        try:
            if len(item) <= TLS_SLICE:
                await self._stream.send(item)
            else:  # a large payload: encrypted a slice at a time, not all into memory at once
                view = memoryview(item)
                for start in range(0, len(view), TLS_SLICE):
                    await self._stream.send(view[start : start + TLS_SLICE])  # type: ignore[arg-type]
        except ssl.SSLError as exc:
            raise anyio.BrokenResourceError(f"TLS failed: {exc.reason or exc}") from exc


@dataclass(frozen=True)
class TLSTransport:
    host: str
    port: int
    context: ssl.SSLContext = field(repr=False)
    kind: str = "tls"

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    async def connect(self) -> ByteStream:
        stream = await TCPTransport(self.host, self.port).connect()
        try:
            return _Breaking(
                await TLSStream.wrap(
                    shared_sender(stream),  # TLS's reader may send while its writer does
                    hostname=self.host,
                    ssl_context=self.context,
                    standard_compatible=False,
                )
            )
        except BaseException as exc:
            await anyio.aclose_forcefully(stream)
            error = tls_error(exc)
            if error is not None:
                raise error from exc
            if isinstance(exc, (anyio.EndOfStream, anyio.BrokenResourceError, OSError)):
                raise tls_cut(exc) from exc
            raise

    async def listen(self, backlog: int) -> Listening:
        return await TCPTransport(self.host, self.port).listen(backlog)

    async def accepted(self, stream: ByteStream) -> ByteStream:
        first = await stream.receive(65536)
        if first[0] != _TLS_HANDSHAKE_RECORD:
            # The address the client reached (the configured port may be 0: "any free one").
            port = stream.extra(SocketAttribute.local_port, self.port)
            raise NotTLSError(f"this port requires TLS; connect with tls= to {(self.host, port)}")
        try:
            return _Breaking(
                await _AlertingTLSStream.wrap(
                    _Replay(shared_sender(stream), first),  # TLS's reader may send too
                    server_side=True,
                    ssl_context=self.context,
                    standard_compatible=False,
                )
            )
        except (ssl.SSLError, anyio.BrokenResourceError) as exc:
            raise ConnectionAbortedError(f"TLS handshake failed: {tls_error(exc) or exc}") from exc
