"""The codec interface: how messages become bytes on one kind of wire, and back.

A codec is a stateless description of a wire format (msgpack by default, see ``_msgpack``). It
makes, per connection, an :class:`Encoder` (messages to frames) and a :class:`Decoder` (received
bytes to messages), and per datagram endpoint a datagram encoder. The layers above
(``_core``: channel, handshake, server, connection, datagram server) know messages only; no
header, delimiter or serialisation library is visible to them.

The contract a codec keeps (every codec, and the layers above rely on each point):

- ``name`` is what ``Config.codec`` says to pick it; :func:`codec_named` finds it.
- ``kinds`` is the set of message types (``_messages``) the codec can carry. :class:`Event` is
  always in it. A codec without :class:`Request` (and :class:`Reply`, :class:`ErrorReply`)
  carries no requests: ``request()`` on such a connection raises
  :class:`~ipcactors.UnsupportedError` before anything is queued. Without :class:`Ping` and
  :class:`Pong` there are no heartbeats (``heartbeat_interval`` is not applied; ``idle_timeout``
  still is, counting any bytes received).
- ``handshake``: whether a connection opens with hello, the optional challenge and proof, then
  welcome or reject (all five kinds then are in ``kinds``). Without one, a connection is open as
  soon as the transport connects, a server names each client itself (``client_id``), and a
  refused client is closed without a word (there is no reject to send).
- An encoder returns a :data:`Frame` per message: the exact bytes for the wire, with large
  payloads (numpy arrays, ``bytes``, ``bytearray``, ``memoryview`` of ``OUT_OF_BAND_AT`` bytes or
  more) kept apart as parts of their own, views of the sender's memory that are never copied or
  joined to be framed (unless placed in shared memory, below). It refuses (with
  :class:`~ipcactors.EncodeError` or :class:`~ipcactors.FrameTooLargeError`, nothing sent) what
  a decoder with the same :class:`Limits` would refuse, so one bad value never costs the
  connection at the peer. A kind outside ``kinds`` raises :class:`~ipcactors.UnsupportedError`.
- A decoder is fed whatever a read returned, split anywhere, and returns every message those
  bytes complete, in order, each as soon as its last byte arrived (never held back for more
  input), in time linear in the bytes fed. Nothing that breaks a limit reaches a caller. Its first
  error (:class:`~ipcactors.ProtocolError`) breaks it for good; its owner closes the connection.
  Before :meth:`Decoder.handshake_done` its frames are held to ``Limits.max_handshake_size``;
  with ``handshake`` false the owner calls it at once. It stops after each handshake message so
  that the owner decides on it before anything behind it is decoded. A decoder may want the
  next bytes in place (:meth:`Decoder.receive_buffer`, a large payload's final buffer): its
  owner then receives into it and calls :meth:`Decoder.received`, or feeds bytes as usual
  (which the decoder copies there): either way the same messages come out.
- Datagrams: :meth:`Decoder.decode_datagram` decodes one whole datagram into its messages
  (one or more, as the format says) and does not break the decoder on error; a datagram
  encoder's frames are whole datagram bodies.
- Shared memory (``_core._shared``, docs/protocol.md 5.4): a codec that can carry arrays in
  shared segments reads :attr:`Encoder.shared` and :attr:`Decoder.shared`, the connection's
  :class:`SharedBuffers` (``None``: not negotiated). An encoder offers it every array of at
  least ``threshold`` bytes and sends a reference to where it was placed (or the array itself,
  if it was not); a decoder hands it each ``Share`` and ``Release`` message as decoded (so
  that a reference in the very next frame finds its segment) instead of returning them, and
  asks it for the array of each reference. Without it, either message is a protocol error.
- Nothing here does I/O, keeps a clock or awaits.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, Final, Protocol

from .._errors import (
    ConfigError,
    DatagramTooLargeError,
    FrameTooLargeError,
    IPCError,
    UnsupportedError,
)
from ._messages import Frame, Limits, Message

__all__ = [
    "CODECS",
    "OUT_OF_BAND_AT",
    "Codec",
    "Decoder",
    "Encoder",
    "SharedBuffers",
    "codec_named",
]

#: Payloads (arrays, bytes, bytearrays, memoryviews) at least this long leave the encoder as
#: parts of their own (see :data:`Frame`), and a decoder receives them in place.
OUT_OF_BAND_AT: Final = 64 * 1024


class SharedBuffers(Protocol):
    """One connection's shared memory, as a codec sees it (see the module's contract)."""

    #: Arrays of at least this many bytes are offered to :meth:`place`.
    threshold: int

    def place(self, array: Any) -> tuple[int, int] | None:
        """Put ``array`` (a numpy array) in a shared segment, or find it in one (made by
        ``empty``): its ``(segment, offset)``, or ``None`` for the socket path."""
        ...

    def unplace(self, place: tuple[int, int]) -> None:
        """A placed array's frame was not sent after all (it failed to encode)."""
        ...

    def segment(self, segment: int, size: int) -> None:
        """The peer shares its segment ``segment`` of ``size`` bytes (its descriptor came with
        the frame). Raises :class:`~ipcactors.DecodeError` if it cannot be used."""
        ...

    def array(self, segment: int, offset: int, dtype: Any, shape: tuple[int, ...]) -> Any:
        """The array the peer placed at ``offset`` in its segment ``segment``. Raises
        :class:`~ipcactors.DecodeError` if it is not within a segment shared with us."""
        ...

    def released(self, places: list[tuple[int, int]]) -> None:
        """The peer dropped the arrays it got at ``places``."""
        ...


class EventBatches(Protocol):
    """How events are batched for one peer (see ``_core._outbox``): items
    (:meth:`Encoder.event_item`) appended to a buffer that starts with :attr:`prefix`, closed
    into one frame."""

    @property
    def max_bytes(self) -> int:
        """The most bytes a batch's frame may have, header included (what the peer announced)."""
        ...

    @property
    def prefix(self) -> bytes:
        """The start of every batch's buffer, filled in by :meth:`close`."""
        ...

    def close(self, buffer: bytearray, count: int, seq: int = 0) -> bytes:
        """The frame of a batch: ``buffer`` (:attr:`prefix` and ``count`` items); ``seq``:
        the first event's sequence number, the others following it (0: not sequenced)."""
        ...

    def split(self, frame: bytes) -> tuple[bytes, ...]:
        """A batch's frame as the frames of its events, for a peer without batches."""
        ...


class Encoder(ABC):
    """Turns messages into frames for one connection (it may keep state, e.g. a packer or a
    cache of packed event names). Only :meth:`event` is required; every other kind raises
    :class:`UnsupportedError` unless the codec carries it (see :attr:`Codec.kinds`)."""

    #: The name of the codec that made this encoder, for error messages.
    codec_name: str = "?"

    def __init__(self) -> None:
        #: Whether error replies carry traceback text (``Config.remote_tracebacks``); set by the
        #: owner once it knows who the peer is.
        self.tracebacks = True
        #: The connection's shared memory, while negotiated (set by the owner).
        self.shared: SharedBuffers | None = None

    def _unsupported(self, what: str) -> UnsupportedError:
        return UnsupportedError(f"the {self.codec_name!r} codec cannot carry {what}")

    #: The largest frame body this encoder makes: our max_frame_size, or the smaller one the
    #: peer announced (see :meth:`keep_to`).
    frame_limit: int
    #: The peer announced a max_frame_size smaller than ours: the one frames keep to.
    peers_limit = False
    #: What the peer announced that is less than ours (``max_frame_size=1024``, say, or
    #: ``max_decoded_objects=2048``: frames keep to it), for messages; ``""``: nothing.
    peers_limits = ""

    def _too_large(self, size: int, limit: int, datagram: bool) -> IPCError:
        """What a frame of ``size`` bytes over ``limit`` is (nothing sent): a datagram
        encoder's limit is the datagram's (the smaller of what IP carries and the frame's)."""
        if datagram:
            return DatagramTooLargeError(
                f"a datagram of {size} bytes exceeds the limit of {limit}; send less per "
                "event, or use a stream transport"
            )
        return FrameTooLargeError(size, limit, peers=self.peers_limit)

    def refusal(self, frame: Frame) -> IPCError | None:
        """What the peer would refuse ``frame`` for, made within our own limits (by another
        encoder: a broadcast's, encoded once; or before the peer's handshake announced what
        it takes): the error sending it would raise, or ``None`` if it takes it."""
        return None

    def keep_to(self, frame: Any, objects: Any) -> bool:
        """The peer's handshake announced the largest frame body it takes (``frame``) and
        how many objects it decodes from one (``objects``; anything but an int of at least
        1024, ``None`` included, announces nothing): frames keep to them too, where they are
        less than ours (then returns True: see :attr:`peers_limits`). A codec without a
        handshake never hears one."""
        return False

    @abstractmethod
    def event(self, event: str, data: Any) -> Frame:
        """``event`` with ``data``."""

    def event_item(self, event: str, data: Any) -> bytes | None:
        """``event`` with ``data`` as an item of a batch (see :class:`EventBatches`), or
        ``None`` if it goes in a frame of its own (always, for a codec without batches)."""
        return None

    def kept_frame(self, kept: Frame, seq: int) -> Frame:
        """The frame that sends again the acknowledged event ``seq`` kept as ``kept``: a
        frame as it is; an item (:meth:`event_item`), the frame :meth:`sequenced_event` would
        have made (an event sent in a batch is kept as its item)."""
        return kept

    def sequenced_event(self, event: str, data: Any, seq: int) -> Frame:
        """``event`` with ``data`` and sequence number ``seq`` (the acknowledged mode)."""
        return self.sequencer(event, data)(seq)

    def sequencer(self, event: str, data: Any) -> Callable[[int], Frame]:
        """The frames of ``event`` with ``data``, by sequence number: ``data`` is encoded (and
        checked) once, here; each call makes one frame."""
        raise self._unsupported("sequenced events (acked mode)")

    def ack(self, seq: int) -> Frame:
        """The cumulative acknowledgement of every sequenced event up to ``seq``."""
        raise self._unsupported("acknowledgements (acked mode)")

    def request(self, event: str, data: Any, request_id: int) -> Frame:
        """``event`` with ``data``, whose answer comes back as a reply to ``request_id``."""
        raise self._unsupported("requests")

    def reply(self, request_id: int, data: Any) -> Frame:
        raise self._unsupported("replies")

    def error_reply(self, request_id: int, type: str, message: str, traceback: str) -> Frame:
        raise self._unsupported("error replies")

    def hello(self, actor_id: str, /, **extra: Any) -> Frame:
        raise self._unsupported("a handshake")

    def welcome(self, actor_id: str, /, **extra: Any) -> Frame:
        raise self._unsupported("a handshake")

    def reject(self, reason: str, message: str) -> Frame:
        raise self._unsupported("a handshake")

    def challenge(self, nonce: bytes, proof: bytes) -> Frame:
        raise self._unsupported("a handshake")

    def proof(self, proof: bytes) -> Frame:
        raise self._unsupported("a handshake")

    def ping(self) -> Frame:
        raise self._unsupported("heartbeats")

    def share(self, segment: int, size: int) -> bytes:
        """The announcement of our segment ``segment`` (its descriptor goes with it)."""
        raise self._unsupported("shared memory")

    def release(self, places: list[tuple[int, int]]) -> list[Frame]:
        """That we dropped the arrays the peer placed at ``places``: in as many frames as the
        peer's limits take."""
        raise self._unsupported("shared memory")

    def pong(self) -> Frame:
        raise self._unsupported("heartbeats")


class Decoder(ABC):
    """Turns one connection's received bytes into messages (see the module's contract)."""

    #: The connection's shared memory, while negotiated (set by the owner).
    shared: SharedBuffers | None = None
    #: Batches of events accepted, up to this many bytes of body (0: none; set by the owner
    #: once it announced them in the handshake, see :meth:`Codec.batch_limit`).
    batch_limit: int = 0

    @abstractmethod
    def feed(self, data: bytes | bytearray | memoryview = b"") -> list[Message]:
        """Take received bytes; return the messages they complete. Decoding stops after a
        handshake message: call :meth:`handshake_done` if it is accepted, then ``feed()`` with
        no bytes for the rest."""

    @property
    @abstractmethod
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete message."""

    @abstractmethod
    def missing(self) -> int | None:
        """Bytes still to come for the frame in progress, if the format says (a length
        prefix); ``None`` if it cannot tell. Readers size their next read by it."""

    @abstractmethod
    def handshake_done(self) -> None:
        """Lift the frame limit from ``max_handshake_size`` to ``max_frame_size``."""

    def end(self) -> None:  # noqa: B027 (optional: a codec's own decoder may keep it)
        """The input ended (the connection is gone): drop what is buffered at once, a frame
        in progress included (its final buffer may be up to ``max_frame_size``), rather than
        whenever the decoder itself is freed. Nothing is fed afterwards. The default drops
        nothing (the decoder's memory goes when it does)."""

    def receive_buffer(self) -> memoryview | None:
        """Where the next received bytes should go, if the frame in progress wants them in
        place (a large payload's final buffer, e.g. a fresh numpy array): receive into (a
        slice of the start of) it, then call :meth:`received`. ``None``: use :meth:`feed`."""
        return None

    def in_place(
        self, data: bytes | bytearray | memoryview, requests: bool
    ) -> list[Message] | None:
        """``data``'s messages if it is exactly whole small frames of replies (or errors for
        requests), and of requests if ``requests``, and nothing is held back: what a
        connection may handle in the loop's callback. ``None`` (nothing taken) otherwise, or
        if it cannot tell cheaply. An error decoding them is left to :meth:`feed`."""
        return None

    def received(self, size: int) -> list[Message]:
        """``size`` bytes were received into :meth:`receive_buffer`; return the messages they
        complete (as :meth:`feed`)."""
        raise RuntimeError("received() without a receive_buffer()")

    @abstractmethod
    def decode_datagram(self, body: bytes) -> list[Message]:
        """Decode one whole datagram. Stateless: an error here does not break the decoder."""

    def reply_to(self, body: bytes) -> int | None:
        """The request id that ``body`` (a datagram too large to decode) answers, if it is
        a reply or an error reply and its first bytes say so: read from them alone, nothing
        else decoded. ``None`` otherwise, or if the format cannot tell (the default)."""
        return None


class Codec(ABC):
    """A wire format (see the module's contract). Instances are stateless and shared."""

    #: What ``Config.codec`` names to pick this codec.
    name: str
    #: The message types this codec can carry; :class:`Event` always.
    kinds: frozenset[type[Message]]
    #: Whether connections open with the hello/welcome handshake.
    handshake: bool
    #: Event names a peer cannot send on this wire beyond ours (``RESERVED_EVENTS``): a
    #: handler for one could never run.
    peer_reserved: frozenset[str] = frozenset()

    @abstractmethod
    def encoder(self, limits: Limits) -> Encoder:
        """A stream encoder, for one connection (or one server's broadcasts)."""

    @abstractmethod
    def datagram_encoder(self, limits: Limits) -> Encoder:
        """An encoder whose frames are whole datagram bodies."""

    @abstractmethod
    def decoder(self, limits: Limits) -> Decoder:
        """A decoder for one connection's stream (also decodes datagrams)."""

    def carries(self, kind: type[Message]) -> bool:
        return kind in self.kinds

    def batch_limit(self, limits: Limits) -> int:
        """The largest batch of events (bytes of body) a receiver with ``limits`` announces in
        its hello or welcome; 0 for a codec without batches."""
        return 0

    def event_batches(self, limit: Any, limits: Limits) -> EventBatches | None:
        """How to batch events for a peer that announced ``limit``, from a sender with
        ``limits`` (its batches no larger than it would take: see :meth:`batch_limit`);
        ``None`` for a codec without batches, or a ``limit`` it cannot use."""
        return None

    def configured(self, *, delimiter: str) -> Codec:
        """This codec with the options of ``Config`` that shape its wire: ``delimiter``
        (``Config.node_ipc_delimiter``) for a codec that ends frames with one; others ignore it.
        Raises :class:`ConfigError` for an option the codec cannot use."""
        return self

    def client_id(self, number: int, peer_address: Any) -> str:
        """The id a server gives its ``number``-th client when the codec has no handshake to
        learn it from (unique per server)."""
        return f"{self.name}-{number}"

    def __repr__(self) -> str:
        return f"<Codec {self.name!r}>"


# Codecs by name: module (in this package) and the attribute holding the codec. Imported on first
# use, so a format's libraries are loaded only by actors that speak it.
_MODULES: Final[dict[str, tuple[str, str]]] = {
    "msgpack": ("._msgpack", "CODEC"),
    "node-ipc": ("._nodeipc", "CODEC"),
}
#: Codecs already loaded, by name.
CODECS: dict[str, Codec] = {}


def codec_named(name: str) -> Codec:
    """The codec ``Config.codec`` names. Raises :class:`ConfigError` for an unknown name."""
    codec = CODECS.get(name)
    if codec is None:
        where = _MODULES.get(name) if type(name) is str else None
        if where is None:
            known = ", ".join(map(repr, sorted({*_MODULES, *CODECS})))
            raise ConfigError(f"codec must be one of {known}, got {name!r}")
        module, attribute = where
        codec = CODECS[name] = getattr(importlib.import_module(module, __package__), attribute)
    return codec
