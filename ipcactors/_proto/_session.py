"""One connection's protocol, sans-IO: the handshake, authentication, the frame limits and what
may arrive when, in one state machine fed bytes (h11's shape).

The owner feeds it what the stream returned (:meth:`Session.receive`), sends what it asks
(:meth:`Session.data_to_send`), and once it is open gets back the messages to act on. It never
awaits, reads a clock or touches a socket; the deadlines (``handshake_timeout``,
``frame_timeout``) are the owner's.

States, per role (a codec without a handshake starts ``OPEN``)::

    server  AWAIT_HELLO --hello--> [AWAIT_PROOF --proof-->] DECIDING --welcome()--> OPEN
    client  START --start()--> AWAIT_WELCOME [--challenge--> AWAIT_WELCOME] --welcome--> OPEN
    any     --error, reject, reject()--> CLOSED

Invariants:
- With ``auth_key`` both sides prove knowledge of the key over fresh random nonces from both
  sides; the role is bound into each MAC (``server``/``client`` labels), so a proof can never be
  reflected back; proofs are compared in constant time. A client with a key refuses a server
  that welcomes it without a challenge: the authentication is mutual. A shared key
  authenticates; it does not encrypt (use TLS for that).
- A client may send frames ahead of the welcome once :attr:`Session.may_send` (its hello, and
  with ``auth_key`` its proof, are queued): a server never decodes them before its decision.
- Until ``OPEN`` frames are held to ``Limits.max_handshake_size``; the limit is lifted only once
  the server decided to welcome (``welcome()``) or the client was welcomed. Frames behind a
  handshake message are decoded only after that decision.
- Once open, nothing of the handshake may arrive again, and no event or request may carry a
  reserved name (``is_reserved``): either is a :class:`ProtocolError`; except a ``reject``
  to a client (reason ``replaced``: another connection took its id's place), raised as the
  refusal it is (:class:`RejectedError`). What the codec cannot carry
  never comes out of its decoder.
- Any error leaves the session ``CLOSED`` and raises: :class:`Refusal` (the server owes the
  client a ``reject``, see :meth:`reject`), :class:`ProtocolError`, or on the client
  :class:`RejectedError` and its kinds. A closed session refuses further input.
- Request ids are not the session's: a peer's requests outlive one connection (frames queued
  while disconnected go out after the next handshake), so ``_core._requests`` numbers them.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
from collections.abc import Callable
from typing import Any, Final

from .._errors import (
    AuthenticationError,
    ProtocolError,
    RejectedError,
    ServerBusyError,
    TLSError,
)
from ._codec import Codec, Decoder, Encoder, SharedBuffers
from ._messages import (
    HANDSHAKE_KINDS,
    PROTOCOL_VERSION,
    Challenge,
    ErrorReply,
    Event,
    Frame,
    Hello,
    Limits,
    Message,
    Proof,
    Reject,
    Reply,
    Request,
    Welcome,
    frame_bytes,
    is_reserved,
)

__all__ = ["NONCE_SIZE", "Refusal", "Role", "Session", "State", "datagram_messages", "rejection"]

NONCE_SIZE: Final = 32


class Role(enum.Enum):
    CLIENT = "client"
    SERVER = "server"


class State(enum.Enum):
    START = "start"  # a client that has not sent its hello
    AWAIT_HELLO = "awaiting hello"
    AWAIT_PROOF = "awaiting proof"
    AWAIT_WELCOME = "awaiting welcome"
    DECIDING = "deciding"  # the server's owner decides: welcome() or reject()
    OPEN = "open"
    CLOSED = "closed"


_NAMES_KEPT: Final = 1024  # event names remembered as checked, per session
_HANDSHAKING: Final = frozenset({State.AWAIT_HELLO, State.AWAIT_PROOF, State.AWAIT_WELCOME})


class Refusal(Exception):
    """The server refuses the client: sent as ``reject {reason, message}``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def rejection(reject: Reject, target: str) -> RejectedError:
    """The client-side error for a server's ``reject``."""
    message = f"{target!r} refused the connection ({reject.reason}): {reject.message}"
    if reject.reason == "busy":
        return ServerBusyError(message, reject.reason)
    if reject.reason == "auth":
        return AuthenticationError(message, reject.reason)
    if reject.reason == "tls":  # a plain client on a TLS port: a TLS failure like any other
        return TLSError(message, reject.reason)
    return RejectedError(message, reject.reason)


def _mac(key: bytes, role: bytes, *parts: bytes) -> bytes:
    return hmac.new(key, b"ipcactors/1 " + role + b"\0" + b"".join(parts), hashlib.sha256).digest()


class Session:
    """One connection's protocol state (see the module's docstring).

    ``encoder`` makes the handshake's frames (a server shares one among its connections);
    ``actor_id`` is ours; ``target`` names the server in a client's errors; ``nonce`` makes
    random nonces (tests may make them repeatable).
    """

    __slots__ = (
        "_auth_key",
        "_client_nonce",
        "_decoder",
        "_encoder",
        "_hello_extra",
        "_names",
        "_nonce",
        "_outgoing",
        "_server_nonce",
        "_target",
        "actor_id",
        "hello",
        "is_open",
        "role",
        "state",
        "welcome",
    )

    def __init__(
        self,
        codec: Codec,
        limits: Limits,
        role: Role,
        encoder: Encoder,
        actor_id: str,
        *,
        auth_key: bytes | None = None,
        target: str = "",
        nonce: Callable[[int], bytes] = secrets.token_bytes,
        hello_extra: dict[str, Any] | None = None,
    ) -> None:
        self.role = role
        self._hello_extra = hello_extra or {}  # more keys for a client's hello
        self.actor_id = actor_id
        self._encoder = encoder
        self._decoder: Decoder = codec.decoder(limits)
        self._auth_key = auth_key
        self._target = target
        self._nonce = nonce
        self._client_nonce = b""
        self._server_nonce = b""
        self._outgoing: list[bytes] = []
        self._names: set[str] = set()  # event names received and found not reserved
        #: The client's hello (server: once received and verified).
        self.hello: Hello | None = None
        #: The server's welcome (client: once welcomed).
        self.welcome: Welcome | None = None
        #: Whether the state is ``OPEN`` (read on every receive).
        self.is_open = False
        if not codec.handshake:
            self.state = State.OPEN
            self._open()
        else:
            self.state = State.AWAIT_HELLO if role is Role.SERVER else State.START

    def __repr__(self) -> str:
        return f"<Session {self.role.value} {self.state.value}>"

    # --- what the owner asks ------------------------------------------------------------------

    @property
    def handshaking(self) -> bool:
        """Whether the handshake waits for the peer's next message."""
        return self.state in _HANDSHAKING

    @property
    def may_send(self) -> bool:
        """Client: whether frames may follow on the stream now, ahead of the welcome (the
        hello, and with ``auth_key`` the proof, are on their way: the server decodes what
        follows once it has decided to welcome us, and discards it if it rejects us)."""
        if self.state is State.OPEN:
            return True
        return (
            self.role is Role.CLIENT
            and self.state is State.AWAIT_WELCOME
            and (self._auth_key is None or bool(self._server_nonce))
        )

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete message."""
        return self._decoder.buffered

    def missing(self) -> int | None:
        """Bytes still to come for the frame in progress, if the codec can tell."""
        return self._decoder.missing()

    def accept_batches(self, limit: int) -> None:
        """Decode batches of events of up to ``limit`` bytes (what our hello or welcome
        announced; 0: none) once the handshake is done."""
        self._decoder.batch_limit = limit

    def share_with(self, shared: SharedBuffers | None) -> None:
        """Decode arrays in (and announcements of) the connection's shared memory, or stop."""
        self._decoder.shared = shared

    def data_to_send(self) -> bytes:
        """The bytes the handshake wants sent now (empty if none); each returned once."""
        if not self._outgoing:
            return b""
        data = b"".join(self._outgoing)
        self._outgoing.clear()
        return data

    # --- client -------------------------------------------------------------------------------

    def start(self) -> None:
        """Client: open the handshake (queue our hello)."""
        self._expect(State.START)
        extra = self._hello_extra
        if self._auth_key is None:
            self._send(self._encoder.hello(self.actor_id, **extra))
        else:
            self._client_nonce = self._nonce(NONCE_SIZE)
            self._send(self._encoder.hello(self.actor_id, nonce=self._client_nonce, **extra))
        self.state = State.AWAIT_WELCOME

    # --- server -------------------------------------------------------------------------------

    def accept(self, **extra: Any) -> bytes:
        """Server: welcome the client whose hello was accepted (``extra``: more keys for the
        welcome); returns the frame to send. The session is open from now on (the frame limit
        is lifted)."""
        self._expect(State.DECIDING)
        self._open()
        return frame_bytes(self._encoder.welcome(self.actor_id, **extra))

    def reject(self, reason: str, message: str) -> bytes:
        """Server: refuse the client; returns the frame to send before closing. The session is
        closed."""
        if self.role is not Role.SERVER or self.state is State.OPEN:
            raise RuntimeError(f"reject() in {self!r}")
        self.state = State.CLOSED
        self.is_open = False
        return frame_bytes(self._encoder.reject(reason, message))

    # --- receiving ----------------------------------------------------------------------------

    def receive(self, data: bytes | bytearray | memoryview = b"") -> list[Message]:
        """Take received bytes. Once open, returns the messages they complete (events,
        requests, replies, heartbeats); during the handshake returns nothing and advances the
        state (see :attr:`state`, :meth:`data_to_send`). Raises as the module says."""
        if self.is_open:
            try:
                messages = self._decoder.feed(data)
            except ProtocolError:
                self._fail()  # the decoder is broken for good: so is the session
                raise
            return self._checked(messages)
        if not self.handshaking:
            if self.state is State.CLOSED:
                raise ProtocolError("the session is closed: it takes no more input")
            if data:  # the owner reads again only once the handshake waits for the peer
                raise ProtocolError(f"{len(data)} bytes arrived in state {self.state.value!r}")
            return []
        try:
            messages = self._decoder.feed(data)
            while messages:
                for message in messages:
                    self._handle(message)
                if not self.handshaking:
                    break  # what follows waits for the decision (the frame limit)
                messages = self._decoder.feed()  # frames behind a handshake message
        except BaseException:
            self._fail()
            raise
        return []

    def in_place(
        self, data: bytes | bytearray | memoryview, requests: bool
    ) -> list[Message] | None:
        """Once open: ``data``'s replies (and requests, if ``requests``), if it is exactly
        whole small frames of them (:meth:`Decoder.in_place`); else ``None``, and nothing was
        taken. Raises as :meth:`receive` for a request the peer may not send."""
        if not self.is_open:
            return None
        messages = self._decoder.in_place(data, requests)
        return None if messages is None else self._checked(messages)

    def receive_buffer(self) -> memoryview | None:
        """Once open: where the next received bytes should go, if the frame in progress wants
        them in place (a large payload's final buffer); receive into a slice of its start,
        then call :meth:`received`. ``None``: read as usual and call :meth:`receive`."""
        return self._decoder.receive_buffer() if self.is_open else None

    def end_input(self) -> None:
        """The connection is gone: its decoder drops what it buffered (see ``Decoder.end``)."""
        self._decoder.end()

    def received(self, size: int) -> list[Message]:
        """``size`` bytes arrived in :meth:`receive_buffer`: the messages they complete."""
        try:
            messages = self._decoder.received(size)
        except ProtocolError:
            self._fail()
            raise
        return self._checked(messages)

    def _checked(self, messages: list[Message]) -> list[Message]:
        names = self._names
        for message in messages:
            kind = type(message)
            if kind is Event or kind is Request:
                if message.event not in names:  # type: ignore[union-attr]
                    self._check_name(message.event)  # type: ignore[union-attr]
            elif kind in HANDSHAKE_KINDS:
                self._fail()
                if kind is Reject and self.role is Role.CLIENT:
                    reason = message.reason  # type: ignore[union-attr]
                    if reason == "replaced":  # the server's last word: a refusal, not a fault
                        raise rejection(message, self._target)  # type: ignore[arg-type]
                    raise ProtocolError(f"unexpected reject ({reason:.40}) after the handshake")
                raise ProtocolError(f"unexpected {kind.__name__} after the handshake")
        return messages

    def _check_name(self, name: str) -> None:
        if is_reserved(name):
            self._fail()
            raise ProtocolError(f"peer sent reserved event {name!r}")
        names = self._names
        if len(names) >= _NAMES_KEPT:
            names.clear()
        names.add(name)

    def _handle(self, message: Message) -> None:
        kind = type(message)
        state = self.state
        if state is State.AWAIT_HELLO:
            if kind is not Hello:
                raise ProtocolError(f"expected hello, got {kind.__name__}")
            self._on_hello(message)  # type: ignore[arg-type]
        elif state is State.AWAIT_PROOF:
            if kind is not Proof:
                raise ProtocolError(f"expected proof, got {kind.__name__}")
            self._on_proof(message)  # type: ignore[arg-type]
        elif kind is Challenge:
            self._on_challenge(message)  # type: ignore[arg-type]
        elif kind is Welcome:
            self._on_welcome(message)  # type: ignore[arg-type]
        elif kind is Reject:
            raise rejection(message, self._target)  # type: ignore[arg-type]
        else:
            raise ProtocolError(f"expected welcome from {self._target!r}, got {kind.__name__}")

    def _on_hello(self, hello: Hello) -> None:
        if hello.version != PROTOCOL_VERSION:
            raise Refusal(
                "version",
                f"protocol version {hello.version} is not supported (want {PROTOCOL_VERSION})",
            )
        key = self._auth_key
        if key is None:
            self.hello = hello
            self.state = State.DECIDING
            return
        client_nonce = hello.extra.get("nonce")
        if client_nonce is None:
            raise Refusal("auth", "this server requires a shared key: set auth_key")
        if type(client_nonce) is not bytes or len(client_nonce) != NONCE_SIZE:
            got = f"{len(client_nonce)} bytes" if type(client_nonce) is bytes else "not bin"
            raise Refusal("auth", f"the hello's nonce is not {NONCE_SIZE} bytes ({got})")
        self._client_nonce = client_nonce
        self._server_nonce = self._nonce(NONCE_SIZE)
        proof = _mac(key, b"server", client_nonce, self._server_nonce)
        self._send(self._encoder.challenge(self._server_nonce, proof))
        self.hello = hello
        self.state = State.AWAIT_PROOF

    def _on_proof(self, answer: Proof) -> None:
        assert self._auth_key is not None
        assert self.hello is not None
        expected = _mac(
            self._auth_key,
            b"client",
            self._server_nonce,
            self._client_nonce,
            self.hello.id.encode(),
        )
        if not hmac.compare_digest(answer.proof, expected):
            raise Refusal("auth", "wrong auth_key")
        self.state = State.DECIDING

    def _on_challenge(self, challenge: Challenge) -> None:
        target = self._target
        key = self._auth_key
        if key is None:
            raise AuthenticationError(f"{target!r} requires a shared key: set auth_key", "auth")
        if self._server_nonce:
            raise ProtocolError(f"expected welcome from {target!r}, got a second Challenge")
        if len(challenge.nonce) != NONCE_SIZE:
            raise ProtocolError(
                f"{target!r} sent a challenge whose nonce is {len(challenge.nonce)} bytes,"
                f" not {NONCE_SIZE}"
            )
        expected = _mac(key, b"server", self._client_nonce, challenge.nonce)
        if not hmac.compare_digest(challenge.proof, expected):
            raise AuthenticationError(
                f"{target!r} failed to prove it knows our auth_key: its key is another",
                "auth",
            )
        self._server_nonce = challenge.nonce
        proof = _mac(key, b"client", challenge.nonce, self._client_nonce, self.actor_id.encode())
        self._send(self._encoder.proof(proof))

    def _on_welcome(self, welcome: Welcome) -> None:
        target = self._target
        if self._auth_key is not None and not self._server_nonce:
            raise AuthenticationError(
                f"{target!r} accepted us without proving it knows auth_key; refusing it", "auth"
            )
        if welcome.version != PROTOCOL_VERSION:
            raise RejectedError(
                f"{target!r} speaks protocol version {welcome.version}, not {PROTOCOL_VERSION}",
                "version",
            )
        self.welcome = welcome
        self._open()

    # --- state --------------------------------------------------------------------------------

    def _open(self) -> None:
        self.state = State.OPEN
        self.is_open = True
        self._decoder.handshake_done()

    def _fail(self) -> None:
        self.state = State.CLOSED
        self.is_open = False

    def _expect(self, state: State) -> None:
        if self.state is not state:
            raise RuntimeError(f"{self!r}: expected state {state.value!r}")

    def _send(self, frame: Frame) -> None:
        self._outgoing.append(frame_bytes(frame))


def datagram_messages(decoder: Decoder, body: bytes) -> list[Message]:
    """The messages of one datagram, checked as a session checks an open connection's, but
    for UDP: only events and requests under names that are not reserved, and replies (no
    handshake, no heartbeats). Raises :class:`ProtocolError`; the decoder is not broken."""
    messages = decoder.decode_datagram(body)
    for message in messages:
        if isinstance(message, Event | Request):
            if is_reserved(message.event):
                raise ProtocolError(f"reserved event {message.event!r} in a datagram")
        elif not isinstance(message, Reply | ErrorReply):
            raise ProtocolError(f"unexpected {type(message).__name__} in a datagram")
    return messages
