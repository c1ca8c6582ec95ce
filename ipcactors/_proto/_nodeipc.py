"""node-ipc's wire (``Config.codec="node-ipc"``), sans-IO: compact UTF-8 JSON
``{"type": ..., "data": ...}`` + a delimiter (``Config.node_ipc_delimiter``).

The format is the one node-ipc 9.2.1, @achrinza/node-ipc 10.1.11 and node-ipc 14.0.0 all speak
(docs/node-ipc.md): no handshake, no length prefix, no ids; every message is an event. The
delimiter is ``"\\f"`` unless both ends configure another one.

Invariants owned here:
- Framing is linear in time: each received byte is searched for the delimiter once, and a frame
  is decoded as soon as its delimiter arrives, whatever follows it in the same read (node-ipc
  9/10 hold complete frames back until a read ends on the delimiter, and rescan their whole
  buffer on every read: a 64 MB frame takes them ~26 s).
- Nothing unbounded is buffered: bytes without a delimiter beyond ``max_frame_size`` are a
  :class:`FrameTooLargeError` as soon as they are received (one read's worth at most).
- A frame that cannot begin a JSON object (its first byte past JSON's spaces is not ``{``)
  is a :class:`DecodeError` as soon as that byte arrives, before any delimiter.
- A frame that is not UTF-8 JSON (strictly: no UTF-16 or UTF-32, no surrogates' bytes), not an
  object, or whose ``type`` is missing, not a non-empty
  string or a reserved name is a :class:`DecodeError`. The first error breaks a
  :class:`NodeIPCDecoder` for good; its owner closes the connection.
- Reserved names (:data:`NODE_IPC_RESERVED`): ours, plus node-ipc's own lifecycle names, refused
  in both directions, so neither a Node peer nor a Python one can fire the other side's
  ``connect``, ``socket.disconnected``, ``error``... by naming them.
- A frame decodes into at most ``max_decoded_objects`` values (each object, array, key and
  value counts, as in msgpack), counted on its bytes before ``json.loads`` allocates
  anything, so it costs at most its size plus ~72 bytes per value; decoded values obey
  ``max_depth`` and hold no number beyond a double's range (whole or not).
- The encoder writes exactly what node-ipc writes: ``json.dumps`` with ``separators=(",",
  ":")`` and ``ensure_ascii=False`` matches ``JSON.stringify`` byte for byte for JSON values
  (a string with a lone surrogate, which UTF-8 cannot hold, goes with every non-ASCII
  character escaped: the same JSON). It refuses what node-ipc could not read back, or the
  decoder here would refuse: NaN and infinities (whole numbers beyond a double's range too),
  non-JSON types, nesting past ``max_depth``, and (with a custom delimiter that does not start
  with a control character) a frame in which the delimiter would be found before its end,
  inside the frame or across its last bytes.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Final

from .._errors import (
    ConfigError,
    DecodeError,
    EncodeError,
    EventNameError,
    FrameTooLargeError,
    ReservedEventError,
)
from ._codec import Codec, Decoder, Encoder
from ._messages import Event, Limits, Message, is_reserved

__all__ = [
    "CODEC",
    "DEFAULT_DELIMITER",
    "NODE_IPC_RESERVED",
    "NodeIPCCodec",
    "NodeIPCDecoder",
    "NodeIPCEncoder",
    "check_delimiter",
]

DEFAULT_DELIMITER: Final = "\f"

# node-ipc's local lifecycle events (server and client); a frame naming one fires that handler
# in node-ipc 9, 10 and 14 "fast".
NODE_IPC_RESERVED: Final = frozenset(
    {"connect", "disconnect", "destroy", "error", "close", "data", "start", "socket.disconnected"}
)


_JSON_SPACE: Final = b" \t\n\r"
_START_WINDOW: Final = 64  # bytes looked at for a frame's first one (past JSON's spaces)


def check_delimiter(delimiter: object) -> str:
    """Return ``delimiter`` if it is a usable frame delimiter, else raise :class:`ConfigError`."""
    if type(delimiter) is not str or not delimiter:
        raise ConfigError(
            f"node_ipc_delimiter must be a non-empty str (node-ipc's default is '\\f'), "
            f"got {delimiter!r}"
        )
    try:
        delimiter.encode()
    except UnicodeEncodeError:
        raise ConfigError(f"node_ipc_delimiter {delimiter!r} is not valid Unicode") from None
    return delimiter


def _reserved(event: str) -> bool:
    return event in NODE_IPC_RESERVED or is_reserved(event)


# The smallest whole number a double cannot hold (it rounds to an infinity, in JavaScript as in
# float()): JSON has one kind of number, which a Node peer reads as a double.
_BEYOND_DOUBLE: Final = 2**1024 - 2**970
_DIGITS_BEYOND: Final = len(str(_BEYOND_DOUBLE))  # a frame shorter holds none so large
_TOO_LARGE: Final = "a whole number beyond a double's range (a Node peer would read an infinity)"
#: Each byte's class, for the passes over a frame in C: a digit is "1", a byte a JSON value
#: may follow ("[", "{", ",", ":") "2", any other "0".
_CLASSES: Final = bytes(
    0x31 if 0x30 <= byte <= 0x39 else 0x32 if byte in b"[{,:" else 0x30 for byte in range(256)
)
_DIGIT_RUN: Final = b"1" * _DIGITS_BEYOND
_LEAVES: Final = frozenset({str, float, bool, type(None)})  # JSON's values that hold nothing
#: A JSON string, or what is left of the frame after an unclosed one: it always matches from its
#: quote on, and nothing it takes is given back, so a search never starts again inside it (an
#: unclosed string full of escaped quotes made the search quadratic: one frame froze the loop).
_STRING: Final = re.compile(rb'"(?>[^"\\]*+(?:\\.[^"\\]*+)*+)(?:"|\\?\Z)', re.DOTALL)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    """A JSON number as a double; one out of its range (``1e999``) would be an infinity,
    which JSON cannot carry (``NaN`` and ``Infinity`` are refused the same way)."""
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"{text[:40]} is beyond a double's range")
    return value


def _delimiter_start(buffer: bytearray, delimiter: bytes) -> int:
    """How many of ``buffer``'s last bytes are the start of ``delimiter`` (never all of it)."""
    for width in range(min(len(delimiter) - 1, len(buffer)), 0, -1):
        if buffer.endswith(delimiter[:width]):
            return width
    return 0


def _check_frame_start(pending: bytearray) -> None:
    """Raise :class:`DecodeError` if ``pending``, the start of a frame, cannot begin a JSON
    object: a peer speaking something else (a TLS client's hello, say) is refused as soon as
    it speaks, not whenever its bytes happen to hold the delimiter."""
    first = pending[:_START_WINDOW].lstrip(_JSON_SPACE)[:1]
    if first and first != b"{":
        # ipcactors' own frames: a 4-byte length, then the body's array (of 2 to 4 items).
        native = len(pending) >= 5 and pending[0] == 0 and 0x92 <= pending[4] <= 0x94
        hint = " (an ipcactors frame: that peer's codec is msgpack)" if native else ""
        raise DecodeError(
            f"a node-ipc frame is a JSON object; this one starts with {bytes(pending[:8])!r}{hint}"
        )


def _within_depth(value: Any, budget: int) -> bool:
    """Whether ``value`` nests at most ``budget`` containers deep. Recursion depth ≤ budget."""
    if budget <= 0:
        return False
    for item in value.values() if type(value) is dict else value:
        kind = type(item)
        if (kind is list or kind is dict or kind is tuple) and not _within_depth(item, budget - 1):
            return False
    return True


def _may_hold_int_beyond_double(text: bytes | bytearray) -> bool:
    """Whether JSON ``text`` has a run of digits long enough for a whole number beyond a
    double's range: two passes in C over the bytes, not a Python comparison per number."""
    return len(text) >= _DIGITS_BEYOND and _DIGIT_RUN in text.translate(_CLASSES)


def _holds_more_values_than(
    text: bytes | bytearray, classes: bytes | bytearray, budget: int
) -> bool:
    """Whether JSON ``text`` holds more than ``budget`` values (``classes``: its bytes'
    classes): a value begins the text or follows ``[``, ``{`` (a key), ``,`` or ``:``, but
    for the nothing inside ``[]`` and ``{}``. Every value takes a byte or more, and a
    string's bytes only add to the count of those four, one pass in C: the exact count
    (strings out, then spaces) runs only when that one is over."""
    if len(text) <= budget or classes.count(b"2") < budget:
        return False
    bare = _STRING.sub(b'""', text).translate(None, _JSON_SPACE)
    count = bare.count
    values = 1 + count(b",") + count(b":") + count(b"[") - count(b"[]")
    return values + count(b"{") - count(b"{}") > budget


def _holds_int_beyond_double(value: Any) -> bool:
    """Whether ``value`` holds a whole number beyond a double's range (dict keys aside: JSON
    writes them as strings). A loop over a stack, not a call per item: it runs when a frame
    has a long run of digits, which a string may hold too."""
    stack = [value]
    pop, push_all = stack.pop, stack.extend
    while stack:
        item = pop()
        kind = type(item)
        if kind is int:
            if not -_BEYOND_DOUBLE < item < _BEYOND_DOUBLE:
                return True
        elif kind is dict:
            push_all(item.values())
        elif kind is list or kind is tuple:
            push_all(item)
        elif kind in _LEAVES:
            continue
        elif isinstance(item, int):  # (subclasses too, as JSON writes them)
            if not -_BEYOND_DOUBLE < item < _BEYOND_DOUBLE:
                return True
        elif isinstance(item, dict):
            push_all(item.values())
        elif isinstance(item, list | tuple):
            push_all(item)
    return False


_TOO_DEEP: Final = "it nests deeper than the peer's max_depth"


def _unfaithful(value: Any, budget: int) -> str | None:
    """Why ``value`` (a dict, list or tuple, subclasses too, as JSON writes them) would not
    reach a peer as it is: it nests more than ``budget`` containers deep (the peer refuses
    it), or a dict has keys JSON writes alike (``1`` and ``"1"``, ``True`` and ``"true"``: the
    peer keeps one of their values); ``None`` if neither. Recursion depth ≤ budget."""
    if budget <= 0:
        return _TOO_DEEP
    if isinstance(value, dict):
        if len(value) > 1:
            # Only keys of different types can be written alike (two keys of one type JSON
            # writes alike are one key in Python: 1, 1.0 and True are).
            keys = iter(value)
            kind = type(next(keys))
            for key in keys:
                if type(key) is not kind:
                    clash = _keys_written_alike(value)
                    if clash is not None:
                        return clash
                    break
        items = value.values()
    else:
        items = value
    for item in items:
        if type(item) in _SCALARS:
            continue
        if isinstance(item, list | tuple | dict):
            problem = _unfaithful(item, budget - 1)
            if problem is not None:
                return problem
    return None


_SCALARS: Final = frozenset({str, int, float, bool, type(None)})


def _keys_written_alike(value: dict[Any, Any]) -> str | None:
    texts = {_key_text(key): key for key in value if not isinstance(key, str)}
    for key in value:
        if isinstance(key, str) and key in texts:
            return (
                f"a dict has keys JSON writes alike ({texts[key]!r} and {key!r}), of which the "
                "peer would keep one value: make them distinct"
            )
    return None


def _key_text(key: Any) -> str:
    """A key that is not a str as ``json.dumps`` writes it (it takes int, float, bool and
    None: anything else failed to encode before this is asked)."""
    if key is True:
        return "true"
    if key is False:
        return "false"
    if key is None:
        return "null"
    if isinstance(key, float):
        return float.__repr__(key)
    return int.__repr__(key)


class NodeIPCEncoder(Encoder):
    """Turns events into node-ipc frames (``bytes``, delimiter included); a datagram is one
    frame. Every other kind of message raises :class:`UnsupportedError`."""

    codec_name = "node-ipc"

    def __init__(
        self,
        delimiter: str = DEFAULT_DELIMITER,
        limits: Limits | None = None,
        *,
        datagrams: bool = False,
    ) -> None:
        super().__init__()
        self._datagrams = datagrams
        self._delimiter = check_delimiter(delimiter).encode()
        self._limits = Limits() if limits is None else limits
        self.frame_limit = self._limits.max_frame_size  # (no handshake: never another)
        # JSON escapes every control character: a delimiter that starts with one is found first
        # where it was put. Any other might start inside the frame, or across its end.
        self._may_collide = ord(delimiter[0]) >= 0x20
        self._json = json.JSONEncoder(
            ensure_ascii=False, allow_nan=False, separators=(",", ":"), check_circular=True
        )

    @property
    def delimiter(self) -> bytes:
        return self._delimiter

    def event(self, event: str, data: Any) -> bytes:
        """One frame: ``{"type":event,"data":data}`` + delimiter. Raises :class:`EncodeError`
        when ``data`` is not JSON (nothing is sent), :class:`EventNameError` for a bad name."""
        if type(event) is not str or not event:
            raise EventNameError(f"event must be a non-empty str, got {event!r}")
        if _reserved(event):
            raise ReservedEventError(
                f"{event!r} is a lifecycle event name in node-ipc or ipcactors: a frame named so "
                "would fire the peer's own handler; choose another name"
            )
        try:
            text = (
                '{"type":' + self._json.encode(event) + ',"data":' + self._json.encode(data) + "}"
            )
        except Exception as exc:  # json's own, or what a container subclass's methods raise
            raise EncodeError(
                f"data cannot be sent as node-ipc JSON: {type(exc).__name__}: {exc} (send str, "
                "int, float, bool, None, list, tuple or dict with str keys)"
            ) from None
        depth = self._limits.max_depth
        problem = _unfaithful({"data": data}, depth)
        if problem is not None:  # (what the peer would refuse, or not get as it was sent)
            if problem is _TOO_DEEP:
                problem = f"{_TOO_DEEP}={depth}"
            raise EncodeError(f"data cannot be sent as node-ipc JSON: {problem}")
        try:
            body = text.encode()
        except UnicodeEncodeError:
            # A lone surrogate (a string a Node peer sent us, say): JSON writes it as an
            # escape, as JSON.stringify does; escaping all non-ASCII is the same JSON.
            body = json.dumps(
                {"type": event, "data": data},
                ensure_ascii=True,
                allow_nan=False,
                separators=(",", ":"),
            ).encode()
        if _may_hold_int_beyond_double(body) and _holds_int_beyond_double(data):
            raise EncodeError(f"data cannot be sent as node-ipc JSON: it holds {_TOO_LARGE}")
        if len(body) > self._limits.max_frame_size:
            raise self._too_large(len(body), self._limits.max_frame_size, self._datagrams)
        frame = body + self._delimiter
        if self._may_collide and frame.find(self._delimiter) != len(body):
            raise EncodeError(
                f"the frame contains the delimiter {self._delimiter.decode()!r}, which would cut "
                "it in two: use a delimiter that starts with a control character, such as the "
                "default '\\f'"
            )
        return frame


class NodeIPCDecoder(Decoder):
    """Splits a byte stream (or datagrams) into node-ipc frames and decodes each into an
    :class:`Event`. Feed it whatever the socket returned; it returns every event those bytes
    complete, in order, however the stream was split."""

    def __init__(self, delimiter: str = DEFAULT_DELIMITER, limits: Limits | None = None) -> None:
        self._delimiter = check_delimiter(delimiter).encode()
        self._limits = Limits() if limits is None else limits
        self._buffer = bytearray()
        self._scanned = 0  # bytes of the buffer known to hold no delimiter start
        self._broken: DecodeError | FrameTooLargeError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete frame."""
        return len(self._buffer)

    def missing(self) -> None:
        """Unknown: a frame ends where its delimiter is."""
        return None

    def handshake_done(self) -> None:
        """Nothing to lift: node-ipc has no handshake, frames are held to ``max_frame_size``."""

    def end(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes | bytearray | memoryview = b"") -> list[Message]:
        """Take received bytes; return the events they complete. The first error breaks the
        decoder for good: it raises the same error again on every later call."""
        if self._broken is not None:
            raise self._broken
        try:
            return self._feed(data)
        except (DecodeError, FrameTooLargeError) as exc:
            self._broken = exc
            self._buffer = bytearray()
            raise

    def _feed(self, data: bytes | bytearray | memoryview) -> list[Message]:
        buffer = self._buffer
        buffer += data
        delimiter = self._delimiter
        width = len(delimiter)
        limit = self._limits.max_frame_size
        events: list[Message] = []
        start = 0
        search = self._scanned
        while True:
            end = buffer.find(delimiter, search)
            if end < 0:
                break
            if end - start > limit:
                raise FrameTooLargeError(end - start, limit)
            events.append(self._decode(buffer[start:end]))
            start = search = end + width
        if start:
            del buffer[:start]  # O(1) at the front of a bytearray
        # A delimiter of several bytes may begin in the last width - 1 bytes: search them again.
        self._scanned = max(0, len(buffer) - width + 1)
        if len(buffer) > limit:
            # The start of a delimiter of several bytes may end the read: not the frame's.
            size = len(buffer) - _delimiter_start(buffer, delimiter)
            if size > limit:
                raise FrameTooLargeError(size, limit)
        if buffer and buffer[0] != 0x7B:  # not "{": refused at once, not at the delimiter
            _check_frame_start(buffer)
        return events

    def decode_datagram(self, datagram: bytes | bytearray | memoryview) -> list[Message]:
        """Decode one UDP datagram: one or more whole frames, each ending with the delimiter.
        Stateless: an error here does not break the decoder."""
        payload = bytes(datagram)
        if len(payload) > self._limits.max_frame_size:
            raise FrameTooLargeError(len(payload), self._limits.max_frame_size)
        frames = payload.split(self._delimiter)
        if frames[-1]:
            raise DecodeError(
                "a node-ipc datagram must end with the delimiter; "
                f"{len(frames[-1])} bytes follow the last one"
            )
        return [self._decode(frame) for frame in frames[:-1]]

    def _decode(self, frame: bytes | bytearray) -> Event:
        budget = self._limits.max_decoded_objects
        # One pass in C for both checks on its bytes (a frame short for both skips them),
        # whose copy is gone before json.loads allocates.
        long_digits = too_many = False
        if len(frame) >= _DIGITS_BEYOND or len(frame) > budget:
            classes = frame.translate(_CLASSES)
            long_digits = _DIGIT_RUN in classes
            too_many = _holds_more_values_than(frame, classes, budget)
            del classes
        if too_many:
            raise DecodeError(
                f"node-ipc frame ({len(frame)} bytes) holds more than max_decoded_objects="
                f"{budget} values (each object, array, key and value counts)"
            )
        try:
            # UTF-8 only: json.loads(bytes) would also take UTF-16 and UTF-32, and surrogates'
            # own bytes (CESU-8), which no node-ipc peer writes.
            value = json.loads(
                frame.decode(), parse_constant=_reject_constant, parse_float=_finite_float
            )
        except RecursionError:
            raise DecodeError("node-ipc frame nests too deep to decode") from None
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, NaN/Infinity/1e999
            raise DecodeError(f"malformed node-ipc frame ({len(frame)} bytes): {exc}") from None
        if type(value) is not dict:
            raise DecodeError(
                f'a node-ipc frame must be a JSON object {{"type","data"}}, got '
                f"{type(value).__name__}"
            )
        event = value.get("type")
        if type(event) is not str or not event:
            raise DecodeError(
                f"a node-ipc frame's type must be a non-empty string, got {event!r}"[:200]
            )
        if _reserved(event):
            raise DecodeError(
                f"the peer sent an event named {event!r}, a lifecycle name: peers cannot fire "
                "lifecycle events"
            )
        depth = self._limits.max_depth
        # A frame shorter than the depth bound cannot nest deeper than it: skip the walk. The
        # frame's own object is one level, and every key counts, not only data.
        if len(frame) > depth and not _within_depth(value, depth):
            raise DecodeError(f"value nests deeper than max_depth={depth}")
        # (float() refused 1e999 as it was parsed; JSON's whole numbers are Python's, any size.)
        if long_digits and _holds_int_beyond_double(value):
            raise DecodeError(f"node-ipc frame ({len(frame)} bytes) holds {_TOO_LARGE}")
        return Event(event, value.get("data"))


class NodeIPCCodec(Codec):
    """node-ipc's wire (``Config.codec="node-ipc"``): events only, no handshake; a server names
    its clients ``node-ipc-1``, ``node-ipc-2``, ... (node-ipc sends no id; 9/10 take the
    ``data.id`` of a client's messages, which any peer can forge)."""

    name = "node-ipc"
    kinds: frozenset[type[Message]] = frozenset({Event})
    handshake = False
    peer_reserved = NODE_IPC_RESERVED

    def __init__(self, delimiter: str = DEFAULT_DELIMITER) -> None:
        self.delimiter = check_delimiter(delimiter)

    def configured(self, *, delimiter: str) -> NodeIPCCodec:
        if delimiter == self.delimiter:
            return self
        codec = _BY_DELIMITER.get(delimiter)
        if codec is None:
            codec = _BY_DELIMITER[delimiter] = NodeIPCCodec(delimiter)
        return codec

    def encoder(self, limits: Limits) -> NodeIPCEncoder:
        return NodeIPCEncoder(self.delimiter, limits)

    def datagram_encoder(self, limits: Limits) -> NodeIPCEncoder:
        return NodeIPCEncoder(self.delimiter, limits, datagrams=True)

    def decoder(self, limits: Limits) -> NodeIPCDecoder:
        return NodeIPCDecoder(self.delimiter, limits)


CODEC: Final = NodeIPCCodec()
_BY_DELIMITER: Final[dict[str, NodeIPCCodec]] = {DEFAULT_DELIMITER: CODEC}
