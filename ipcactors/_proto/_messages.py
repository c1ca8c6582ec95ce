"""Messages: what a codec turns into bytes and back, whatever the wire looks like.

Invariants:
- These types are the whole vocabulary between the layers above and a codec (``_codec``): the
  channel, the handshake and the datagram server see messages, never bytes of a format.
- A message is valid once built by a decoder: names are non-empty ``str``, request ids fit in
  ``[0, MAX_REQUEST_ID]``, handshake fields have their types. Values are bounded by
  :class:`Limits`.
- Lifecycle names (``connect``, ``disconnect``, ``destroy``, ``error``) and names starting with
  ``ipcactors.`` are reserved (:func:`is_reserved`): they never travel as a peer's event.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, TypeAlias

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "HANDSHAKE_KINDS",
    "MAX_REQUEST_ID",
    "PING_MESSAGE",
    "PONG_MESSAGE",
    "PROTOCOL_VERSION",
    "Ack",
    "BatchFrame",
    "Challenge",
    "ErrorReply",
    "Event",
    "FdFrame",
    "Frame",
    "FramePart",
    "Hello",
    "Limits",
    "Message",
    "Ping",
    "Pong",
    "Proof",
    "Reject",
    "Release",
    "Reply",
    "Request",
    "Share",
    "SharedFrame",
    "Welcome",
    "frame_bytes",
    "frame_size",
    "is_reserved",
]

PROTOCOL_VERSION: Final = 1
MAX_REQUEST_ID: Final = 2**63 - 1

RESERVED_EVENTS: Final = frozenset({"connect", "disconnect", "destroy", "error"})
RESERVED_PREFIX: Final = "ipcactors."


def is_reserved(event: str) -> bool:
    """Whether ``event`` names a local lifecycle event or an ipcactors-internal one."""
    return event in RESERVED_EVENTS or event.startswith(RESERVED_PREFIX)


#: 64 MiB of payload plus 64 KiB for what surrounds it (the frame header, the envelope, the
#: array's header, other fields): a 64 MiB array, e.g. a 4096×4096 float32 tensor (67,108,896
#: bytes encoded), fits in one frame.
DEFAULT_MAX_FRAME_SIZE: Final = 64 * 1024 * 1024 + 64 * 1024


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on what a peer may make us allocate.

    One frame decodes into at most ``max_decoded_objects`` objects, so it costs at most its own
    size plus ~72 bytes per object (~9 MiB by default); frames before the handshake completes
    are held to ``max_handshake_size``, so an unauthenticated peer can make us allocate only a
    few MiB.
    """

    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    max_handshake_size: int = 64 * 1024
    max_container_len: int = 1 << 20
    max_depth: int = 64
    max_decoded_objects: int = 1 << 17


# --- messages ---------------------------------------------------------------------------------


class Event:
    """``[0, event, data]``: a fire-and-forget event; ``[0, event, data, seq]`` in the
    acknowledged mode (``seq`` its sequence number, ``None`` without one)."""

    __slots__ = ("data", "event", "seq")

    def __init__(self, event: str, data: Any, seq: int | None = None) -> None:
        self.event = event
        self.data = data
        self.seq = seq

    def __repr__(self) -> str:
        return f"Event({self.event!r})"


class Request:
    """``[1, event, data, id]``: an event whose handler's return value is sent back."""

    __slots__ = ("data", "event", "id")

    def __init__(self, event: str, data: Any, id: int) -> None:
        self.event = event
        self.data = data
        self.id = id

    def __repr__(self) -> str:
        return f"Request({self.event!r}, id={self.id})"


class Reply:
    """``[2, id, data]``: the answer to request ``id``."""

    __slots__ = ("data", "id")

    def __init__(self, id: int, data: Any) -> None:
        self.id = id
        self.data = data

    def __repr__(self) -> str:
        return f"Reply(id={self.id})"


class ErrorReply:
    """``[3, id, {"type", "message", "traceback"}]``: request ``id`` failed on the peer."""

    __slots__ = ("id", "message", "traceback", "type")

    def __init__(self, id: int, type: str, message: str, traceback: str) -> None:
        self.id = id
        self.type = type
        self.message = message
        self.traceback = traceback

    def __repr__(self) -> str:
        return f"ErrorReply(id={self.id}, type={self.type!r})"


@dataclass(frozen=True, slots=True)
class Hello:
    """``[4, {"v", "id", ...}]``: the client's opening frame. ``extra`` keeps unknown keys."""

    version: int
    id: str
    extra: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Welcome:
    """``[5, {"v", "id", ...}]``: the server accepted the client."""

    version: int
    id: str
    extra: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Reject:
    """``[6, {"reason", "message"}]``: the server refused the client and closes the connection."""

    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class Challenge:
    """``[7, {"nonce", "proof"}]``: a server with a shared key proves it and challenges back."""

    nonce: bytes
    proof: bytes


@dataclass(frozen=True, slots=True)
class Proof:
    """``[8, {"proof"}]``: the client's answer to a challenge."""

    proof: bytes


class Ping:
    """``[9]``: are you there? Answered with a pong (see docs/protocol.md, heartbeats)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "Ping()"


class Pong:
    """``[10]``: the answer to a ping."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "Pong()"


class Ack:
    """``[11, seq]``: every sequenced event up to ``seq`` was delivered (cumulative)."""

    __slots__ = ("seq",)

    def __init__(self, seq: int) -> None:
        self.seq = seq

    def __repr__(self) -> str:
        return f"Ack({self.seq})"


class Share:
    """``[12, segment, size]``: shared memory (docs/protocol.md 5.4): the descriptor of the
    sender's segment number ``segment``, ``size`` bytes, travels with this frame's first byte."""

    __slots__ = ("segment", "size")

    def __init__(self, segment: int, size: int) -> None:
        self.segment = segment
        self.size = size

    def __repr__(self) -> str:
        return f"Share({self.segment}, {self.size})"


class Release:
    """``[13, [segment, offset, ...]]``: the receiver dropped the arrays it got at these places
    of the sender's segments; the sender may reuse them."""

    __slots__ = ("places",)

    def __init__(self, places: list[tuple[int, int]]) -> None:
        self.places = places

    def __repr__(self) -> str:
        return f"Release({self.places})"


PING_MESSAGE: Final = Ping()
PONG_MESSAGE: Final = Pong()

Message: TypeAlias = (
    Event
    | Request
    | Reply
    | ErrorReply
    | Hello
    | Welcome
    | Reject
    | Challenge
    | Proof
    | Ping
    | Pong
    | Ack
    | Share
    | Release
)
HANDSHAKE_KINDS: Final = (Hello, Welcome, Reject, Challenge, Proof)


# What an encoder hands to a writer: the bytes of one frame, or its parts written in order: small
# bytes (headers, the envelope) and large payloads as flat byte memoryviews of the sender's own
# memory (an array, bytes, a bytearray), so that a large payload is never copied to be framed. A
# writer writes the parts as they are (``sendmsg``/writev, memoryview slices), never joined.
FramePart: TypeAlias = bytes | memoryview
Frame: TypeAlias = bytes | tuple[FramePart, ...]


class FdFrame(bytes):
    """A frame whose bytes go with file descriptors (``SCM_RIGHTS``): written in a write of its
    own, the descriptors attached to its first byte. Only a stream that can pass descriptors
    is given one (``_transports._fds``); the descriptors stay owned by whoever made the frame."""

    fds: tuple[int, ...]

    def __new__(cls, data: bytes, fds: tuple[int, ...]) -> FdFrame:
        frame = super().__new__(cls, data)
        frame.fds = fds
        return frame


class SharedFrame(bytes):
    """A frame that names places in the shared segments of the connection it was encoded for:
    it must not go out on another one (dropped with its connection, see ``_core._shared``)."""


class BatchFrame(bytes):
    """A frame holding several events (a batch, docs/protocol.md 5.5): only for a connection
    that negotiated batches; split back into event frames before it goes out on another."""


class SplitBatch(tuple[bytes, ...]):
    """The frames of a batch's events, each whole, in the one place of a queue the batch had
    (split for a peer that takes no such batch, see ``_core._outbox``): written as parts."""


def frame_size(frame: Frame) -> int:
    """Bytes a frame occupies on the wire (memoryview parts are flat: ``len`` is their bytes)."""
    if isinstance(frame, bytes):
        return len(frame)
    return sum(map(len, frame))


def frame_bytes(frame: Frame) -> bytes:
    """The frame in one piece (a copy: for small frames, datagrams and tests only)."""
    return frame if isinstance(frame, bytes) else b"".join(frame)
