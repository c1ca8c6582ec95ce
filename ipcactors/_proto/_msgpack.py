"""The msgpack codec, the default (``Config.codec="msgpack"``): sans-IO, bytes in, messages out.

Invariants owned here:
- A frame is ``u32 big-endian length`` + one msgpack body; the length is checked against
  ``max_frame_size`` before anything is allocated for the body. A datagram is one body without
  the length.
- A :class:`MsgpackDecoder` that raised once is broken for good: it refuses further input, and its
  owner closes the connection (msgpack does not support resuming after an error).
- Decoded values obey the limits: container lengths, nesting depth, map keys str or bytes, no
  unknown extension types. Nothing that breaks a limit ever reaches a handler or a log line.
- One frame decodes into at most ``max_decoded_objects`` msgpack objects. Every object takes at
  least one byte, so a body of at most that many bytes cannot exceed it; a longer body is counted
  by :func:`check_objects` (it walks the bytes, allocating nothing) before it is decoded. A frame
  therefore costs at most its own size (str, bin and array payloads) plus ~72 bytes per object
  (an empty map, the worst case), and decoding it takes a bounded time (see docs/protocol.md §6).
- Large payloads (``OUT_OF_BAND_AT`` bytes or more: numpy arrays, bytes-likes) are never copied
  to be framed: the encoder's frames hold them as parts of their own (see
  :class:`MsgpackEncoder`). After the handshake, a frame of ``ASSEMBLE_AT`` bytes or more is
  decoded by an :class:`~._assembly.Assembly`, which receives its large payloads in place: a
  large bin value therefore always arrives as a ``bytearray`` (a smaller one as ``bytes``).
- Between two reads the decoder holds back at most the start of one small frame (a large
  frame's bytes are its assembly's; after a handshake message, what followed it, until the
  owner decides: see :meth:`MsgpackDecoder.feed`). The next read first completes that frame;
  the rest of the read is decoded where it lies, not copied behind it.
- A batch of events (kind 14, only once announced, docs/protocol.md 5.5) decodes into its events,
  checked whole (its size against what was announced, its pairs, names and depths) before any
  is returned; its sender side is :class:`MsgpackEventBatches`, whose batches keep within the
  sender's own limits as well as the peer's.
- The encoder sends what the checks would pass and nothing else: plain data (:func:`_plain`:
  exact built-in types, small bins, four levels at most) is packed at once and may join a
  batch; anything else is checked (:func:`_check_value`) and packed with its large payloads
  out of band. A frame skips the size and object checks only when its body is no longer than
  the smallest of those limits.
- msgpack is configured here only: the supervisor's spawn arguments and the forkserver's control
  messages go through :func:`pack_value` / :func:`unpack_value` too.

docs/protocol.md describes the same format for implementers in other languages; ``_codec`` states
the contract every codec keeps.
"""

from __future__ import annotations

import os
import re
import struct
import sys
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Final

import msgpack

from .._errors import (
    DecodeError,
    EncodeError,
    FrameTooLargeError,
    IPCError,
    ProtocolError,
    fit_text,
)
from ._assembly import MARK_CODE, MARK_SIZE, Assembly
from ._codec import OUT_OF_BAND_AT, Codec, Decoder, Encoder
from ._extcodes import NUMPY_EXT_CODE, SHARED_EXT_CODE
from ._messages import (
    HANDSHAKE_KINDS,
    MAX_REQUEST_ID,
    PING_MESSAGE,
    PONG_MESSAGE,
    PROTOCOL_VERSION,
    Ack,
    BatchFrame,
    Challenge,
    ErrorReply,
    Event,
    Frame,
    FramePart,
    Hello,
    Limits,
    Message,
    Ping,
    Pong,
    Proof,
    Reject,
    Release,
    Reply,
    Request,
    Share,
    SharedFrame,
    Welcome,
    frame_size,
)

__all__ = [
    "CODEC",
    "PING_FRAME",
    "PONG_FRAME",
    "MsgpackCodec",
    "MsgpackDecoder",
    "MsgpackEncoder",
    "pack_value",
    "unpack_value",
]

# Envelope kinds: the first item of every body.
EVENT: Final = 0
REQUEST: Final = 1
REPLY: Final = 2
ERROR: Final = 3
HELLO: Final = 4
WELCOME: Final = 5
REJECT: Final = 6
CHALLENGE: Final = 7
PROOF: Final = 8
PING: Final = 9
PONG: Final = 10
ACK: Final = 11
SHARE: Final = 12
RELEASE: Final = 13
BATCH: Final = 14

HEADER: Final = struct.Struct(">I")
HEADER_SIZE: Final = HEADER.size
# A reply's head: an array header (at most 5 bytes), its kind (1) and its id (at most 9).
REPLY_HEAD: Final = 16

# A batch of events (kind 14): its frame starts with the header, the body's array of two (fixarray
# 0x92), the kind, and an array 32 (0xdd) of two items per event, written when it is closed.
_BATCH_PREFIX: Final = struct.Struct(">IBBBI")
# The largest batch body sent or accepted (the receiver announces at most this much): a run of
# small frames for the receiver's decoder (see MsgpackDecoder._small_frames), uncounted.
BATCH_BODY_LIMIT: Final = 32 * 1024
_SMALLEST_BATCH: Final = 256  # a peer announcing less is sent no batches (nothing to gain)
#: The smallest max_frame_size a handshake's ``frame`` announces (Config's floor); less is
#: no announcement (protocol.md 3.4).
MIN_ANNOUNCED_FRAME: Final = 1024
#: Likewise the smallest max_decoded_objects a handshake's ``objects`` announces.
MIN_ANNOUNCED_OBJECTS: Final = 1024
_packb: Final = msgpack.packb  # (a sequenced batch's seq: once per batch)

# A body at least this long is kept apart from its header instead of being concatenated with it,
# so a large payload is never copied just to prepend four bytes.
SEPARATE_BODY_AT: Final = 64 * 1024
# A frame at least this long is assembled (see _assembly): its large payloads go to their final
# buffers, received in place as they arrive. Every frame that can hold one is: a bin value of
# OUT_OF_BAND_AT bytes or more always arrives as a bytearray (after the handshake).
ASSEMBLE_AT: Final = OUT_OF_BAND_AT
# Out of band: a large payload's place in the packed body, marked by an extension type that never
# travels (a decoder refuses it as unknown) followed by a random token of the encoder's; the
# marker is then replaced by the payload's msgpack header and the payload itself (see _splice).
_MARK_CODE: Final = MARK_CODE
_MARK_SIZE: Final = MARK_SIZE  # fixext 16: d8, code, 12 bytes of token, u32 index
_BIN32: Final = struct.Struct(">BI")  # c6, length
_EXT32: Final = struct.Struct(">BIb")  # c9, length, code
_HEAD_CACHE_SIZE: Final = 1024  # event names whose packed envelope head is kept

# --- encoding ---------------------------------------------------------------------------------

# Types the packer writes as one msgpack scalar (nil, bool, int, float, str, bin, timestamp).
# numpy dtype kinds an array in shared memory may have (those the numpy extension carries).
_SHAREABLE_KINDS: Final = frozenset("biufcmMSU")


_SCALARS: Final = frozenset(
    {type(None), bool, int, float, str, bytes, bytearray, memoryview, msgpack.Timestamp}
)
_KEYS: Final = frozenset({str, bytes})


def _check_value(value: Any, budget: int, limits: Limits) -> None:
    """Raise :class:`EncodeError` for what a decoder would refuse in ``value``, found with
    ``budget`` levels of nesting left: map keys other than str or bytes, extension types, too
    deep or too long containers. Objects left to the packer's ``default`` hook are not looked
    into. Recursion depth ≤ ``budget``."""
    kind = type(value)
    if kind is msgpack.ExtType:  # before tuple: ExtType is a namedtuple
        raise EncodeError(f"msgpack extension type {value.code} is not part of the protocol")
    if kind is dict or (kind is not list and kind is not tuple and isinstance(value, dict)):
        if not _KEYS.issuperset(map(type, value)):
            for key in value:
                if not isinstance(key, str | bytes):
                    raise EncodeError(f"map keys must be str or bytes, got {type(key).__name__}")
        items: Any = value.values()
    elif kind is list or kind is tuple or isinstance(value, list | tuple):
        items = value
    else:
        return  # a scalar, or an object for the packer (or its ``default`` hook) to judge
    if budget <= 0:
        raise EncodeError(f"value nests too deep: the peer accepts max_depth={limits.max_depth}")
    if len(value) > limits.max_container_len:
        raise EncodeError(
            f"a container of {len(value)} items exceeds "
            f"max_container_len={limits.max_container_len}"
        )
    if not _SCALARS.issuperset(map(type, items)):  # in C: most containers hold only scalars
        for item in items:
            if type(item) not in _SCALARS:
                _check_value(item, budget - 1, limits)


_BUFFERS: Final = frozenset({bytes, bytearray, memoryview})
_PLAIN: Final = _SCALARS - _BUFFERS  # scalars that never leave a frame (out of band, shared)
_WALKED: Final = _BUFFERS | {dict, list, tuple}


#: Maps up to this many items are checked item by item in Python; larger ones in C. (A
#: frozenset's issuperset(iterable) builds a set first: 0.9 us for one item, 0.4 by the loop.)
_SMALL_MAP: Final = 16


def _holds_only(data: dict[Any, Any], keys: frozenset[type], values: frozenset[type]) -> bool:
    """Whether every key of ``data`` is of a type in ``keys`` and every value in ``values``."""
    if len(data) <= _SMALL_MAP:
        for key, value in data.items():
            if type(key) not in keys or type(value) not in values:
                return False
        return True
    return keys.issuperset(map(type, data)) and values.issuperset(map(type, data.values()))


#: How deep plain data nests (see :func:`_plain`): its containers, in a batch's events, stay
#: within the ``max_depth`` of 8 that a peer announcing batches has at least (the envelope and
#: the batch's array are two levels more).
_PLAIN_DEPTH: Final = 4


def _plain(value: Any, budget: int, longest: int) -> bool:
    """Whether ``value`` is plain data: None, a bool, int, float, str or Timestamp, bytes or a
    bytearray under ``OUT_OF_BAND_AT`` bytes, or a dict (str or bytes keys), list or tuple of
    plain data, each of at most ``longest`` items, nested at most ``budget`` containers deep.
    Exact types only (a subclass may pack as something else, or go to a ``default`` hook).
    Plain data never leaves its frame (out of band, shared memory), and a decoder with the
    same limits accepts it but for the object count. Recursion depth ≤ ``budget``."""
    kind = type(value)
    if kind in _PLAIN:
        return True
    if kind is bytes or kind is bytearray:
        return len(value) < OUT_OF_BAND_AT
    if budget <= 0 or not (kind is dict or kind is list or kind is tuple) or len(value) > longest:
        return False
    if kind is dict:
        if (  # in C: a long flat map
            len(value) > _SMALL_MAP
            and _KEYS.issuperset(map(type, value))
            and _PLAIN.issuperset(map(type, value.values()))
        ):
            return True
        for key, item in value.items():
            if type(key) not in _KEYS:
                return False
            if type(item) not in _PLAIN and not _plain(item, budget - 1, longest):
                return False
        return True
    if len(value) > _SMALL_MAP and _PLAIN.issuperset(map(type, value)):  # in C: a long flat array
        return True
    for item in value:
        if type(item) not in _PLAIN and not _plain(item, budget - 1, longest):
            return False
    return True


def _flat(data: dict[Any, Any]) -> bool:
    """Whether every value of ``data`` is a scalar (a decoded map: its keys are checked)."""
    if len(data) <= _SMALL_MAP:
        for value in data.values():  # noqa: SIM110 (a loop, not all(): no generator)
            if type(value) not in _SCALARS:
                return False
        return True
    return _SCALARS.issuperset(map(type, data.values()))


class _Large:
    """A bytes-like value of ``OUT_OF_BAND_AT`` bytes or more, found by :func:`_mark_large` so
    that the packer hands it to the encoder's ``default`` hook instead of copying it."""

    __slots__ = ("value",)

    def __init__(self, value: bytes | bytearray | memoryview) -> None:
        self.value = value


def _is_large(value: bytes | bytearray | memoryview) -> bool:
    if type(value) is memoryview:
        return value.nbytes >= OUT_OF_BAND_AT and value.c_contiguous
    return len(value) >= OUT_OF_BAND_AT


def _bin_parts(value: bytes | bytearray | memoryview) -> tuple[bytes, FramePart]:
    """A large bytes-like value sent out of band: its bin 32 header, and its bytes as they
    lie (``bytes`` itself, else a flat view of the sender's memory)."""
    data: FramePart = value if type(value) is bytes else memoryview(value).cast("B")
    return _BIN32.pack(0xC6, len(data)), data


def _mark_large(value: Any) -> Any:
    """``value`` with every large bytes-like item wrapped in :class:`_Large` (containers
    rebuilt only where one is found); ``value`` itself if there is none. Only exact dicts,
    lists and tuples are looked into (anything else is packed as before, copied).
    The value passed :func:`_check_value` first: its depth is bounded."""
    kind = type(value)
    if kind in _BUFFERS:
        return _Large(value) if _is_large(value) else value
    if kind is dict:
        if _WALKED.isdisjoint(map(type, value.values())):  # in C: the common case
            return value
        marked = {key: _mark_large(item) for key, item in value.items()}
        if any(marked[key] is not item for key, item in value.items()):
            return marked
        return value
    if kind is list or kind is tuple:
        if _WALKED.isdisjoint(map(type, value)):
            return value
        items = [_mark_large(item) for item in value]
        if any(new is not old for new, old in zip(items, value, strict=True)):
            return items
    return value


def _to_array(obj: Any) -> Any:
    """The numpy array (or numpy scalar) ``obj`` is, or ``None``: numpy values, and any object
    with ``__dlpack__`` (a CPU torch tensor) through ``np.from_dlpack``. numpy is imported only
    for the latter: a numpy value can only exist if it already is."""
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(obj, numpy.ndarray | numpy.generic):
        return obj
    if hasattr(obj, "__dlpack__") and not isinstance(obj, type):
        try:
            from ._numpy import from_dlpack
        except ImportError:
            raise EncodeError(
                f"sending a {type(obj).__name__} (DLPack) needs numpy, which is not installed"
            ) from None
        return from_dlpack(obj)
    return None


def _encode_error(exc: Exception) -> EncodeError:
    """What packing raises for ``exc``, not one of ours (a hook's EncodeError goes as it is):
    msgpack's own (TypeError, ValueError, OverflowError, BufferError) and whatever the data's
    own methods raised (an attribute lookup raising KeyError) are an EncodeError, so that only
    the call that sent the value fails."""
    if isinstance(exc, TypeError | ValueError | OverflowError | BufferError):
        return EncodeError(f"cannot encode as msgpack: {exc}")
    return EncodeError(
        f"cannot encode as msgpack: the data raised {type(exc).__name__} ({exc}) while it was "
        "read (an object whose attribute lookup fails?)"
    )


def encode_default(obj: Any) -> Any:
    """The packer's ``default`` hook: numpy arrays (and DLPack tensors) become the numpy
    extension type (see ``_numpy``)."""
    array = _to_array(obj)
    if array is not None:
        from ._numpy import encode_numpy

        return encode_numpy(array)
    raise TypeError(f"can not serialize {type(obj).__name__!r} object")


class MsgpackEncoder(Encoder):
    """Turns messages into frames. One per connection (it reuses one msgpack ``Packer``).

    It refuses what a decoder with the same :class:`Limits` would refuse (map keys other than
    str or bytes, extension types, too deep or too long containers), so one bad value costs an
    :class:`EncodeError` here instead of the whole connection at the peer. What a ``default``
    hook returns is not checked: the hook must return what the peer accepts. With
    ``datagrams``, its frames are bare bodies (no length header): one datagram each.

    Large payloads (numpy arrays, bytes, bytearrays and C-contiguous memoryviews of
    ``OUT_OF_BAND_AT`` bytes or more) are not packed: each becomes a part of the frame of its
    own, a flat view of the sender's memory, behind the small bytes that precede it (their
    msgpack header included), so the wire format is unchanged and nothing large is copied.
    While the connection has shared memory (:attr:`shared`), arrays are placed there first.
    Datagram frames are always whole.
    """

    codec_name = "msgpack"

    def __init__(
        self,
        limits: Limits,
        default: Callable[[Any], Any] | None = None,
        *,
        datagrams: bool = False,
    ) -> None:
        super().__init__()
        self._limits = limits
        self._counted = limits  # what a frame's objects are counted against (see keep_to)
        self._count_above = limits.max_decoded_objects
        self._set_limit(limits.max_frame_size)
        self._data_budget = limits.max_depth - 1  # the envelope is the first level
        # Plain data (_plain) nests within these: in a frame of its own, and in a batch (whose
        # array is one level more).
        self._plain_budget = min(_PLAIN_DEPTH, self._data_budget)
        self._item_budget = min(_PLAIN_DEPTH, self._data_budget - 1)
        self._longest = limits.max_container_len
        self._small_map = min(_SMALL_MAP, self._longest)
        self._datagrams = datagrams
        self._out_of_band = default is None and not datagrams
        # numpy arrays are encoded by `encode_default` (when no other hook is given), or by
        # `_default`, which places them in shared memory while the connection has it, or takes
        # large payloads out of band.
        self._placed: list[tuple[int, int]] = []  # places taken by the frame being packed
        self._packer = msgpack.Packer(
            use_bin_type=True,
            datetime=False,
            default=default or (self._default if self._out_of_band else encode_default),
            buf_size=4096,  # grows on demand; the default reserves 256 KiB per connection
        )
        self._event_heads: dict[str, bytes] = {}
        self._names: dict[str, bytes] = {}  # event names packed (for batch items)
        self._sequenced_heads: dict[str, bytes] = {}
        self._request_heads: dict[str, bytes] = {}
        # The large payloads of the frame being packed: their msgpack header, and their bytes.
        self._large: list[tuple[bytes, FramePart]] = []
        # Where a large payload goes in the packed frame, random so that no data can forge
        # one; drawn when the first large payload comes (most connections never send one).
        self._mark = b""

    def _default(self, obj: Any) -> Any:
        """The packer's hook: large payloads out of band, numpy values as the extension."""
        if type(obj) is _Large:
            head, data = _bin_parts(obj.value)
        else:
            array = _to_array(obj)
            if array is None:
                raise TypeError(f"can not serialize {type(obj).__name__!r} object")
            shared = self.shared
            if (
                shared is not None
                and array.nbytes >= shared.threshold
                and isinstance(array, sys.modules["numpy"].ndarray)  # not a scalar (it has flags)
                and array.dtype.kind in _SHAREABLE_KINDS
            ):
                place = shared.place(array)
                if place is not None:
                    from ._numpy import shared_reference

                    self._placed.append(place)
                    return shared_reference(array, *place)
            from ._numpy import array_parts, encode_numpy

            if array.nbytes < OUT_OF_BAND_AT:
                return encode_numpy(array)
            header, data = array_parts(array)
            head = _EXT32.pack(0xC9, len(header) + len(data), NUMPY_EXT_CODE) + header
        index = len(self._large)
        self._large.append((head, data))
        if not self._mark:
            self._mark = b"\xd8" + bytes((_MARK_CODE,)) + os.urandom(12)
        return msgpack.ExtType(_MARK_CODE, self._mark[2:] + index.to_bytes(4, "big"))

    def _splice(self, prefix: bytes, packed: bytes) -> tuple[list[FramePart], int]:
        """``prefix`` + ``packed`` with each marker replaced by its payload's header and bytes:
        the frame's parts (small bytes, then a payload, ...) and the body's size."""
        parts: list[FramePart] = []
        mark = self._mark
        small = [prefix]
        size = len(packed)
        position = 0
        for index, (head, data) in enumerate(self._large):
            at = packed.find(mark + index.to_bytes(4, "big"), position)
            if at < 0:  # cannot happen: every marker the hook returned was packed, in order
                raise EncodeError("internal error: an out-of-band payload lost its place")
            small.append(packed[position:at])
            small.append(head)
            parts.append(b"".join(small))
            parts.append(data)
            small = []
            position = at + _MARK_SIZE
            size += len(head) + len(data) - _MARK_SIZE
        parts.append(packed[position:])
        return parts, size

    def _check(self, data: Any) -> Any:
        """``data``, checked (see the class), its large payloads marked for the hook. What the
        data's own methods raise (a subclass's ``__len__``, ``__iter__``) is an EncodeError:
        nothing was packed yet, and the caller (a reply, say) must hear of it as one."""
        try:
            kind = type(data)
            if kind is dict:  # the common case, checked in C: a small map of scalars
                if len(data) <= self._limits.max_container_len and _holds_only(
                    data, _KEYS, _SCALARS
                ):
                    if self._out_of_band and not _BUFFERS.isdisjoint(map(type, data.values())):
                        return _mark_large(data)
                    return data
            elif kind in _SCALARS:
                if self._out_of_band and kind in _BUFFERS and _is_large(data):
                    return _Large(data)
                return data
            _check_value(data, self._data_budget, self._limits)
            return _mark_large(data) if self._out_of_band else data
        except IPCError:
            raise
        except Exception as exc:
            raise EncodeError(
                f"cannot encode as msgpack: the data raised {type(exc).__name__} while it was "
                "read (a container subclass whose own methods fail?)"
            ) from exc

    def _set_limit(self, limit: int) -> None:
        self.frame_limit = limit
        # A body of at most this many bytes is within every limit (the frame's, the object
        # budget: one byte each at least) and goes in one piece: it needs no check.
        self._whole_up_to = min(self._count_above, limit, SEPARATE_BODY_AT - 1)

    def refusal(self, frame: Frame) -> IPCError | None:
        if not self.peers_limits:
            return None
        size = frame_size(frame)
        body = size - HEADER_SIZE
        if body > self.frame_limit:
            return self._too_large(size, self.frame_limit, self._datagrams)
        # Counted only against a budget the peer announced smaller than ours (a frame was made
        # within ours), and only when the body could hold more (one byte each at least).
        if self._counted is not self._limits and body > self._count_above:
            whole = frame if isinstance(frame, bytes) else b"".join(frame)
            try:
                self._count(b"", whole[HEADER_SIZE:], False)
            except EncodeError as exc:
                return exc
        return None

    def keep_to(self, frame: Any, objects: Any) -> bool:
        own = self._limits
        smaller = type(frame) is int and MIN_ANNOUNCED_FRAME <= frame < own.max_frame_size
        fewer = type(objects) is int and MIN_ANNOUNCED_OBJECTS <= objects < own.max_decoded_objects
        self.peers_limit = smaller
        announced = [f"max_frame_size={frame}"] if smaller else []
        self._counted = own
        if fewer:
            announced.append(f"max_decoded_objects={objects}")
            self._counted = replace(own, max_decoded_objects=objects)
        self.peers_limits = " and ".join(announced)
        self._count_above = self._counted.max_decoded_objects
        self._set_limit(frame if smaller else own.max_frame_size)
        return smaller or fewer

    def _framed(self, head: bytes, value: Any, tail: Any = None) -> Frame:
        """The frame whose body is ``head`` followed by ``value`` packed (then ``tail`` packed,
        unless ``None``)."""
        self._large.clear()
        try:
            packed: bytes = self._packer.pack(value)
        except Exception as exc:
            # The packer keeps a partly written buffer after an error; start clean.
            self._packer.reset()
            self._large.clear()
            self._unplace()
            if isinstance(exc, IPCError):
                raise
            raise _encode_error(exc) from exc
        except BaseException:
            self._packer.reset()
            self._large.clear()
            self._unplace()
            raise
        try:
            frame = (self._framed_large if self._large else self._framed_packed)(head, packed, tail)
        except BaseException:
            self._unplace()
            raise
        finally:
            self._large.clear()
        if self._placed:
            self._placed.clear()
            # Names places in this connection's segments: never to go out on another one.
            return SharedFrame(frame if isinstance(frame, bytes) else b"".join(frame))
        return frame

    def _unplace(self) -> None:
        placed, self._placed = self._placed, []
        if placed and self.shared is not None:
            for place in placed:
                self.shared.unplace(place)

    def _framed_packed(self, head: bytes, packed: bytes, tail: Any) -> Frame:
        self._check_body(head, packed, tail is not None)
        if tail is not None:  # a sequenced event's seq, after the body (never copied)
            return self._with_tail(head, packed, self._packer.pack(tail))
        if self._datagrams:
            return head + packed
        size = len(head) + len(packed)
        if size >= SEPARATE_BODY_AT:
            return (HEADER.pack(size) + head, packed)
        return b"".join((HEADER.pack(size), head, packed))

    def _check_body(self, head: bytes, packed: bytes, trailing: bool = False) -> None:
        """Raise if the body ``head + packed`` (``trailing``: and a seq or id behind it) is
        too large, or holds too many objects."""
        size = len(head) + len(packed)
        if size > self.frame_limit:
            raise self._too_large(size, self.frame_limit, self._datagrams)
        if size > self._count_above:  # else it cannot hold too many (one byte each at least)
            self._count(head, packed, trailing)

    def _count(self, head: bytes, packed: bytes, trailing: bool) -> None:
        """Raise if the data ``packed`` (the first value in it) holds too many objects for a
        body with ``head`` before it (``trailing``: and one item after it)."""
        # Around the data: the envelope's array, its kind and name (or id), and what trails.
        outside = (3 + trailing, 1) if head else ()
        try:
            check_objects(memoryview(packed), self._counted, *outside)
        except DecodeError as exc:
            peers = self._counted is not self._limits  # (its handshake announced less)
            whose = "the peer announced that budget in its handshake, and" if peers else "the peer"
            raise EncodeError(
                f"{exc}; {whose} would refuse it. Send large arrays as bytes or numpy arrays, "
                "or raise max_decoded_objects on both sides"
            ) from None

    def _with_tail(self, head: bytes, packed: bytes, tail: bytes) -> Frame:
        size = len(head) + len(packed) + len(tail)
        if size > self.frame_limit:
            raise self._too_large(size, self.frame_limit, self._datagrams)
        if self._datagrams:
            return b"".join((head, packed, tail))
        if size >= SEPARATE_BODY_AT:  # a large body goes out as it is, the seq after it
            return (HEADER.pack(size) + head, packed, tail)
        return b"".join((HEADER.pack(size), head, packed, tail))

    def _framed_large(self, head: bytes, packed: bytes, tail: Any) -> Frame:
        """:meth:`_framed` for a body with payloads out of band (never a datagram)."""
        if tail is not None:
            packed += self._packer.pack(tail)
        parts, size = self._splice(head, packed)
        size += len(head)
        if size > self.frame_limit:
            raise self._too_large(size, self.frame_limit, self._datagrams)
        if len(packed) > self._count_above:  # the payloads are one object each: count the rest
            self._count(head, packed, tail is not None)
        parts[0] = HEADER.pack(size) + parts[0]
        return tuple(parts)

    def _frame(self, body_items: list[Any], data: Any = None, at: int = 2) -> Frame:
        if data is not None:
            marked = self._check(data)
            if marked is not data:
                body_items[at] = marked
        return self._framed(b"", body_items)

    def event(self, event: str, data: Any) -> Frame:
        # The envelope's head ([0, event, ...) is packed once per event name and reused.
        head = self._event_heads.get(event)
        if head is None:
            if len(self._event_heads) >= _HEAD_CACHE_SIZE:
                self._event_heads.clear()
            head = self._event_heads[event] = b"\x93\x00" + self._packer.pack(event)
        packed = self._plain_packed(data)
        if packed is None:
            if type(data) in _BUFFERS and self._out_of_band and _is_large(data):
                return self._payload_frame(head, data)  # the commonest large event
            return self._framed(head, self._check(data))
        size = len(head) + len(packed)
        if size <= self._whole_up_to and not self._datagrams:
            return b"".join((HEADER.pack(size), head, packed))  # within every limit
        return self._framed_packed(head, packed, None)

    def _payload_frame(self, head: bytes, data: bytes | bytearray | memoryview) -> Frame:
        """The frame of an event whose data is one large bytes-like value, out of band: the
        parts :meth:`_framed` would make (``head``, the bin header, the payload), without
        packing anything."""
        bin_head, payload = _bin_parts(data)
        size = len(head) + len(bin_head) + len(payload)
        if size > self.frame_limit:
            raise self._too_large(size, self.frame_limit, self._datagrams)
        return (HEADER.pack(size) + head + bin_head, payload)

    def event_item(self, event: str, data: Any) -> bytes | None:
        """The event as one item of a batch (kind 14, docs/protocol.md 5.5): its name and its
        data packed, nothing around them; ``None`` unless ``data`` is plain (see
        :func:`_plain`), which is then sent in a frame of its own (as is an item larger than
        the batches, whose size keeps within the sender's limits too: ``event_batches``)."""
        packed = self._plain_packed(data, True)
        if packed is None:
            return None
        name = self._names.get(event)
        if name is None:
            if len(self._names) >= _HEAD_CACHE_SIZE:
                self._names.clear()
            name = self._names[event] = self._packer.pack(event)
        return name + packed

    def kept_frame(self, kept: Frame, seq: int) -> Frame:
        # A frame in one piece starts with its length, under 64 KiB (larger ones are in
        # parts): a zero byte. An item starts with its event's name, a msgpack str (0xa0 on).
        if type(kept) is bytes and kept[0]:
            return self.sequenced_frame(kept, seq)
        return kept

    def sequenced_frame(self, item: bytes, seq: int) -> bytes:
        """The frame ``[0, event, data, seq]`` of an event made an item (:meth:`event_item`)."""
        tail: bytes = self._packer.pack(seq)
        return b"".join((HEADER.pack(len(item) + 2 + len(tail)), b"\x94\x00", item, tail))

    def _plain_packed(self, data: Any, item: bool = False) -> bytes | None:
        """``data`` packed if it is plain (see :func:`_plain`; ``item``: as a batch's item,
        one level deeper), the common case: nothing to mark or place, nothing out of band, so
        it is packed at once, ~0.3 us shorter than :meth:`_check` and :meth:`_framed`, and may
        join a batch; else None."""
        kind = type(data)
        if kind not in _PLAIN:
            # A small map of scalars, the commonest, checked here (a call costs as much as
            # what it checks); anything else by _plain.
            if kind is dict and len(data) <= self._small_map:
                for key, value in data.items():
                    if type(key) not in _KEYS or type(value) not in _PLAIN:
                        budget = self._item_budget if item else self._plain_budget
                        if not _plain(data, budget, self._longest):
                            return None
                        break
            elif not _plain(data, self._item_budget if item else self._plain_budget, self._longest):
                return None
        try:
            packed: bytes = self._packer.pack(data)
        except Exception as exc:
            self._packer.reset()  # it keeps a partly written buffer after an error
            if isinstance(exc, IPCError):
                raise
            raise _encode_error(exc) from exc
        return packed

    def _sequenced_head(self, event: str) -> bytes:
        # [0, event, data, seq]: a peer without the acked mode ignores the trailing item. The
        # head is packed once per name and reused, as for plain events.
        return self._head(self._sequenced_heads, b"\x94\x00", event)

    def _head(self, heads: dict[str, bytes], prefix: bytes, event: str) -> bytes:
        """``prefix`` (an envelope's array header and kind) with ``event`` packed behind it,
        kept in ``heads`` for the next frame of that name."""
        head = heads.get(event)
        if head is None:
            if len(heads) >= _HEAD_CACHE_SIZE:
                heads.clear()
            head = heads[event] = prefix + self._packer.pack(event)
        return head

    def sequenced_event(self, event: str, data: Any, seq: int) -> Frame:
        head = self._sequenced_heads.get(event) or self._sequenced_head(event)
        return self._around(head, data, seq)

    def _around(self, head: bytes, data: Any, tail: Any = None) -> Frame:
        """The frame whose body is ``head``, then ``data`` packed, then ``tail`` packed unless
        ``None`` (a seq, a request's id): plain data packed at once, anything else checked
        and packed by :meth:`_framed`."""
        packed = self._plain_packed(data)
        if packed is None:
            return self._framed(head, self._check(data), tail)
        if tail is None:
            size = len(head) + len(packed)
            if size <= self._whole_up_to and not self._datagrams:
                return b"".join((HEADER.pack(size), head, packed))  # within every limit
            return self._framed_packed(head, packed, None)
        after: bytes = self._packer.pack(tail)
        size = len(head) + len(packed) + len(after)
        if size <= self._whole_up_to and not self._datagrams:
            return b"".join((HEADER.pack(size), head, packed, after))  # within every limit
        return self._framed_packed(head, packed, tail)

    def sequencer(self, event: str, data: Any) -> Callable[[int], Frame]:
        if self.shared is not None:  # (never with acked: a frame's places are per connection)
            return lambda seq: self.sequenced_event(event, data, seq)
        # data packed (and checked) once, however many frames (a broadcast's) are made of it.
        head = self._sequenced_heads.get(event) or self._sequenced_head(event)
        packed = self._plain_packed(data)  # as in event(): nothing to mark, nothing out of band
        if packed is None:
            marked = self._check(data)
            self._large.clear()
            try:
                packed = self._packer.pack(marked)
            except Exception as exc:
                self._packer.reset()  # it keeps a partly written buffer after an error
                self._large.clear()
                if isinstance(exc, IPCError):
                    raise
                raise _encode_error(exc) from exc
            except BaseException:
                self._packer.reset()
                self._large.clear()
                raise
            if self._large:
                # Payloads out of band: each frame is spliced around them as they are (its
                # small parts packed per frame, the payloads never copied), as
                # sequenced_event does.
                self._large.clear()
                return lambda seq: self.sequenced_event(event, data, seq)
        self._check_body(head, packed)
        pack = self._packer.pack
        base = len(head) + len(packed)
        if base >= SEPARATE_BODY_AT or base + 9 > self.frame_limit or self._datagrams:
            with_tail = self._with_tail
            return lambda seq: with_tail(head, packed, pack(seq))
        # Small: the frame up to the seq, by the seq's packed length (1, 2, 3, 5 or 9 bytes),
        # made once; each frame is then one concatenation.
        starts: dict[int, bytes] = {}

        def small(seq: int) -> Frame:
            tail: bytes = pack(seq)
            start = starts.get(len(tail))
            if start is None:
                start = starts[len(tail)] = b"".join((HEADER.pack(base + len(tail)), head, packed))
            return start + tail

        return small

    def ack(self, seq: int) -> Frame:
        return self._frame([ACK, seq])

    def request(self, event: str, data: Any, request_id: int) -> Frame:
        # [1, event, data, id]: the head packed once per name, as for events.
        head = self._request_heads.get(event) or self._head(self._request_heads, b"\x94\x01", event)
        return self._around(head, data, request_id)

    def reply(self, request_id: int, data: Any) -> Frame:
        return self._around(b"\x93\x02" + self._packer.pack(request_id), data)  # [2, id, data]

    def error_reply(self, request_id: int, type: str, message: str, traceback: str) -> Frame:
        if not self.tracebacks:
            traceback = ""
        error = {"type": type, "message": message, "traceback": traceback}
        try:
            return self._frame([ERROR, request_id, error])
        except IPCError:  # EncodeError, FrameTooLargeError, DatagramTooLargeError
            # The report must reach the requester whatever the error said: its text escaped
            # where it has no UTF-8 form, and cut to share the frame (max_frame_size is 1 KiB
            # at least): the type, then the message, then the traceback's first frames.
            share = (self.frame_limit - 300) // 2
            error = {
                "type": fit_text(type, 200),
                "message": fit_text(message, share),
                "traceback": fit_text(traceback, share),
            }
            return self._frame([ERROR, request_id, error])

    def hello(self, actor_id: str, /, **extra: Any) -> Frame:
        body = {"v": PROTOCOL_VERSION, "id": actor_id, **extra}
        return self._frame([HELLO, body], body, 1)

    def welcome(self, actor_id: str, /, **extra: Any) -> Frame:
        body = {"v": PROTOCOL_VERSION, "id": actor_id, **extra}
        return self._frame([WELCOME, body], body, 1)

    def reject(self, reason: str, message: str) -> Frame:
        return self._frame([REJECT, {"reason": reason, "message": message}])

    def challenge(self, nonce: bytes, proof: bytes) -> Frame:
        return self._frame([CHALLENGE, {"nonce": nonce, "proof": proof}])

    def proof(self, proof: bytes) -> Frame:
        return self._frame([PROOF, {"proof": proof}])

    def ping(self) -> Frame:
        return _PING_BODY if self._datagrams else PING_FRAME

    def share(self, segment: int, size: int) -> bytes:
        # Called while our packer packs the frame that needs the segment: not with it.
        body: bytes = msgpack.packb([SHARE, segment, size])
        return HEADER.pack(len(body)) + body

    def release(self, places: list[tuple[int, int]]) -> list[Frame]:
        # As many frames as it takes to keep within the peer's limits: a place is two ints
        # (9 bytes each at most, two objects), behind the envelope's three objects.
        per_frame = max(
            1,
            min((self.frame_limit - 16) // 18, (self._count_above - 4) // 2, self._longest // 2),
        )
        frames = []
        for start in range(0, len(places), per_frame):
            flat = [number for place in places[start : start + per_frame] for number in place]
            frames.append(self._frame([RELEASE, flat]))
        return frames

    def pong(self) -> Frame:
        return _PONG_BODY if self._datagrams else PONG_FRAME


# Heartbeat frames never change: ``[9]`` and ``[10]``, framed once.
_PING_BODY: Final[bytes] = msgpack.packb([PING])
_PONG_BODY: Final[bytes] = msgpack.packb([PONG])
PING_FRAME: Final = HEADER.pack(len(_PING_BODY)) + _PING_BODY
PONG_FRAME: Final = HEADER.pack(len(_PONG_BODY)) + _PONG_BODY


# --- decoding ---------------------------------------------------------------------------------


def _reject_ext(code: int, data: bytes) -> Any:
    raise DecodeError(f"unknown msgpack extension type {code}")


def decode_ext(code: int, data: bytes) -> Any:
    """The unpacker's ``ext_hook``: numpy arrays (when numpy is installed), and arrays in
    shared memory while the decoder decoding has it; every other extension type is refused."""
    if code == SHARED_EXT_CODE:
        shared = getattr(_shared, "resolver", None)
        if shared is None:
            raise DecodeError("an array in shared memory arrived, but none was negotiated")
        from ._numpy import decode_shared

        _shared.used = True
        return decode_shared(data, shared.array)
    if code != NUMPY_EXT_CODE:
        _reject_ext(code, data)
    try:
        from ._numpy import decode_array
    except ImportError:
        raise DecodeError("a numpy array arrived but numpy is not installed here") from None
    return decode_array(data)


# --- the object budget ------------------------------------------------------------------------

# What each msgpack first byte starts, for check_objects: a size (fixed-size values, fixstr), or
# one of the markers below with the width of the length field that follows it.
_STR, _EXT, _ARRAY, _MAP, _FIXARRAY, _FIXMAP, _INVALID = range(-7, 0)


def _byte_kinds() -> tuple[tuple[int, int], ...]:
    kinds = [(1, 0)] * 256  # positive and negative fixint, nil, false, true: one byte
    for byte in range(0x80, 0x90):
        kinds[byte] = (_FIXMAP, byte & 0x0F)
    for byte in range(0x90, 0xA0):
        kinds[byte] = (_FIXARRAY, byte & 0x0F)
    for byte in range(0xA0, 0xC0):
        kinds[byte] = (1 + (byte & 0x1F), 0)  # fixstr
    kinds[0xC1] = (_INVALID, 0)
    for byte, width in ((0xC4, 1), (0xC5, 2), (0xC6, 4), (0xD9, 1), (0xDA, 2), (0xDB, 4)):
        kinds[byte] = (_STR, width)  # bin and str
    for byte, width in ((0xC7, 1), (0xC8, 2), (0xC9, 4)):
        kinds[byte] = (_EXT, width)
    for byte, size in ((0xCA, 5), (0xCB, 9), (0xCC, 2), (0xCD, 3), (0xCE, 5), (0xCF, 9)):
        kinds[byte] = (size, 0)  # float 32/64, uint 8-64
    for byte, size in ((0xD0, 2), (0xD1, 3), (0xD2, 5), (0xD3, 9)):
        kinds[byte] = (size, 0)  # int 8-64
    for byte, size in ((0xD4, 3), (0xD5, 4), (0xD6, 6), (0xD7, 10), (0xD8, 18)):
        kinds[byte] = (size, 0)  # fixext 1-16
    for byte, width in ((0xDC, 2), (0xDD, 4), (0xDE, 2), (0xDF, 4)):
        kinds[byte] = (_ARRAY if byte < 0xDE else _MAP, width)
    return tuple(kinds)


_BYTE_KINDS: Final = _byte_kinds()


def _over_budget(budget: int) -> DecodeError:
    return DecodeError(
        f"a frame holds more than max_decoded_objects={budget} msgpack objects "
        "(each array, map, key and value counts)"
    )


def check_objects(
    body: memoryview, limits: Limits, outer_objects: int = 0, outer_depth: int = 0
) -> None:
    """Raise :class:`DecodeError` if the msgpack value in ``body`` holds more than
    ``limits.max_decoded_objects`` objects (every value counts: containers, map keys, scalars),
    nests deeper than ``max_depth`` or has a container longer than ``max_container_len``.

    It walks the encoding without building anything, so a frame over the budget costs no memory
    and at most ~``max_decoded_objects`` steps: a container's declared length counts as soon as
    its header is read. ``outer_*``: objects and levels around ``body`` (an event's envelope).
    Anything else wrong with the bytes is left for the decoder to report."""
    kinds = _BYTE_KINDS
    budget = limits.max_decoded_objects
    longest = limits.max_container_len
    deepest = limits.max_depth - outer_depth
    objects = outer_objects + 1
    position = 0
    remaining = 1  # values left in the innermost open container (or the one top-level value)
    stack: list[int] = []  # the ``remaining`` of the enclosing containers
    end = len(body)
    if objects > budget:
        raise _over_budget(budget)
    try:
        while True:
            if not remaining:
                if not stack:
                    return
                remaining = stack.pop()
                continue
            remaining -= 1
            size, width = kinds[body[position]]
            if size > 0:
                position += size
                continue
            if size in (_STR, _EXT):
                start = position + 1 + width
                position = start + int.from_bytes(body[position + 1 : start]) + (size == _EXT)
                continue
            if size in (_FIXARRAY, _FIXMAP):
                items = width
                position += 1
            elif size in (_ARRAY, _MAP):
                start = position + 1 + width
                items = int.from_bytes(body[position + 1 : start])
                position = start
            else:
                return  # not msgpack: the decoder says so
            if items > longest:
                raise DecodeError(
                    f"a container of {items} items exceeds max_container_len={longest}"
                )
            if len(stack) >= deepest:
                raise DecodeError(f"value nests deeper than max_depth={limits.max_depth}")
            if size in (_MAP, _FIXMAP):
                items *= 2
            objects += items
            if objects > budget:
                raise _over_budget(budget)
            if items:
                stack.append(remaining)
                remaining = items
            if position > end:
                return  # truncated: the decoder says so
    except IndexError:
        return  # truncated: the decoder says so


def _within_depth(value: Any, budget: int) -> bool:
    """Whether ``value`` nests at most ``budget`` containers deep. Recursion depth ≤ budget."""
    if budget <= 0:
        return False
    items = value.values() if type(value) is dict else value
    # In C, a long container of scalars (the commonest long one); a short one, or one that
    # holds containers, item by item (a set of types costs as much as a few items).
    if len(items) > _SMALL_MAP and _SCALARS.issuperset(map(type, items)):
        return True
    for item in items:
        kind = type(item)
        if (kind is list or kind is dict) and not _within_depth(item, budget - 1):
            return False
    return True


def _nests_within(data: Any, budget: int) -> bool:
    """Whether ``data`` is an array or a map (as decoded) nesting at most ``budget``
    containers deep; False for anything else (left to the general path)."""
    kind = type(data)
    return (kind is list or kind is dict) and _within_depth(data, budget)


def _require_str(value: Any, what: str) -> str:
    if type(value) is not str or not value:
        got = "an empty string" if type(value) is str else type(value).__name__
        raise DecodeError(f"{what} must be a non-empty string, got {got}")
    return value


def _require_id(value: Any) -> int:
    if type(value) is not int or not 0 <= value <= MAX_REQUEST_ID:
        raise DecodeError(f"request id must be an integer in [0, 2**63), got {value!r:.40}")
    return value


def _require_bytes(value: Any, what: str) -> bytes:
    if type(value) is not bytes or not value:
        got = "empty bytes" if type(value) is bytes else type(value).__name__
        raise DecodeError(f"{what} must be non-empty bytes, got {got}")
    return value


def _require_map(value: Any, what: str) -> dict[str, Any]:
    if type(value) is not dict:
        raise DecodeError(f"{what} must be a map, got {type(value).__name__}")
    return value


def _handshake_fields(body: dict[str, Any], what: str) -> tuple[int, str, dict[str, Any]]:
    version = body.get("v")
    if type(version) is not int:
        raise DecodeError(f"{what} lacks an integer protocol version 'v'")
    if version != PROTOCOL_VERSION:
        # Another version's map may be shaped otherwise: the version alone is refused (by
        # the session, with reason "version"), not fields this version defines.
        actor_id = body.get("id")
        return version, actor_id if type(actor_id) is str else "", {}
    actor_id = _require_str(body.get("id"), f"{what} actor id")
    extra = {k: v for k, v in body.items() if k not in ("v", "id")}
    return version, actor_id, extra


def parse_body(body: list[Any]) -> Message:
    """Validate one decoded envelope and turn it into a message. Raises :class:`DecodeError`."""
    if type(body) is not list or not body:
        raise DecodeError("a frame's body must be a non-empty msgpack array")
    kind = body[0]
    size = len(body)
    # Trailing items beyond those a kind defines are ignored, so the format can grow.
    if kind == EVENT and type(kind) is int and size >= 3:
        name = body[1]
        if not (type(name) is str and name):
            name = _require_str(name, "event name")
        if size >= 4:  # the acknowledged mode's sequence number (anything else is ignored)
            seq = body[3]
            if type(seq) is int and 0 < seq <= MAX_REQUEST_ID:
                return Event(name, body[2], seq)
        return Event(name, body[2])
    if kind == REQUEST and type(kind) is int and size >= 4:
        return Request(_require_str(body[1], "event name"), body[2], _require_id(body[3]))
    if kind == REPLY and type(kind) is int and size >= 3:
        return Reply(_require_id(body[1]), body[2])
    if kind == ERROR and type(kind) is int and size >= 3:
        error = _require_map(body[2], "error")
        fields = [error.get(key, "") for key in ("type", "message", "traceback")]
        if not all(type(f) is str for f in fields):
            raise DecodeError("error type, message and traceback must be strings")
        return ErrorReply(_require_id(body[1]), *fields)
    if kind == HELLO and type(kind) is int and size >= 2:
        return Hello(*_handshake_fields(_require_map(body[1], "hello"), "hello"))
    if kind == WELCOME and type(kind) is int and size >= 2:
        return Welcome(*_handshake_fields(_require_map(body[1], "welcome"), "welcome"))
    if kind == REJECT and type(kind) is int and size >= 2:
        reject = _require_map(body[1], "reject")
        reason = _require_str(reject.get("reason"), "reject reason")
        message = reject.get("message", "")
        return Reject(reason, message if type(message) is str else "")
    if kind == CHALLENGE and type(kind) is int and size >= 2:
        challenge = _require_map(body[1], "challenge")
        return Challenge(
            _require_bytes(challenge.get("nonce"), "challenge nonce"),
            _require_bytes(challenge.get("proof"), "challenge proof"),
        )
    if kind == PROOF and type(kind) is int and size >= 2:
        return Proof(_require_bytes(_require_map(body[1], "proof").get("proof"), "proof"))
    if kind == ACK and type(kind) is int and size >= 2:
        return Ack(_require_id(body[1]))
    if kind == SHARE and type(kind) is int and size >= 3:
        segment, length = body[1], body[2]
        if type(segment) is not int or type(length) is not int or segment < 0 or length <= 0:
            raise DecodeError("share: segment and size must be non-negative integers")
        return Share(segment, length)
    if kind == RELEASE and type(kind) is int and size >= 2:
        flat = body[1]
        if type(flat) is not list or len(flat) % 2 or not all(type(n) is int for n in flat):
            raise DecodeError("release: an array of segment, offset pairs")
        return Release(list(zip(flat[::2], flat[1::2], strict=True)))
    if kind == PING and type(kind) is int:
        return PING_MESSAGE
    if kind == PONG and type(kind) is int:
        return PONG_MESSAGE
    raise DecodeError(f"unknown or short envelope (kind {kind!r:.20}, {size} items)")


_shared = threading.local()


def _small_unpacker(key: str, limits: Limits, options: dict[str, Any]) -> Any:
    """The ``Unpacker`` this thread's decoders with ``limits`` share for whole small bodies.

    An ``Unpacker`` is twice as fast as ``unpackb`` per frame, but it costs ~40 KiB (its nesting
    stack), too much per idle connection. Sharing one is safe because it only ever gets whole
    bodies: its buffer is empty between frames. After any error it is thrown away
    (:func:`_unpack_failed`), never reused.
    """
    unpackers: dict[str, Any] = _shared.__dict__.setdefault("unpackers", {})
    unpacker = unpackers.get(key)
    if unpacker is None:
        largest = max(limits.max_frame_size, limits.max_handshake_size)
        unpacker = unpackers[key] = msgpack.Unpacker(
            **options, max_buffer_size=largest, read_size=min(4096, largest)
        )
    return unpacker


_LENGTH_PAST: Final = re.compile(r"(\d+) exceeds max_(str|bin|ext|array|map)_len\((\d+)\)")


def invalid_body(exc: Exception) -> DecodeError:
    """msgpack's failure to unpack a body, in our words where msgpack's name its internals."""
    if isinstance(exc, msgpack.OutOfData):
        return DecodeError("invalid msgpack body: a value runs past the end of its frame")
    found = _LENGTH_PAST.search(str(exc))
    if found is None:
        # (msgpack's FormatError says nothing: a byte it never uses, 0xc1, or one it knows not)
        detail = str(exc) or "a byte that starts no msgpack value"
        return DecodeError(f"invalid msgpack body: {type(exc).__name__}: {detail}")
    declared, kind, allowed = found.groups()
    if kind in ("array", "map"):
        what = f"an {kind}" if kind == "array" else "a map"
        return DecodeError(
            f"invalid msgpack body: {what} of {declared} items, more than "
            f"max_container_len={allowed}"
        )
    return DecodeError(f"invalid msgpack body: a {kind} runs past the end of its frame")


def _unpack_failed(key: str, exc: BaseException) -> BaseException:
    """Throw the shared unpacker away after ``exc``; what to raise instead of it."""
    _shared.__dict__.get("unpackers", {}).pop(key, None)
    if isinstance(exc, DecodeError) or not isinstance(exc, Exception):
        return exc
    return invalid_body(exc)


def _unpack_whole(
    body: memoryview, size: int, key: str, limits: Limits, options: dict[str, Any]
) -> Any:
    """Decode one whole small body with the shared unpacker (see :func:`_small_unpacker`)."""
    unpacker = _small_unpacker(key, limits, options)
    try:
        start = unpacker.tell()
        unpacker.feed(body)
        value = unpacker.unpack()
        if unpacker.tell() - start != size:
            raise DecodeError("a frame holds more than one msgpack value")
    except BaseException as exc:
        error = _unpack_failed(key, exc)
        if error is exc:
            raise
        raise error from None
    return value


def _keys_as_bytes(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    """A map whose keys may be large bins received in place (see ``_assembled``): str and
    bin keys only, as ``strict_map_key`` has them, a bytearray taken as bytes."""
    mapping = {}
    for key, value in pairs:
        kind = type(key)
        if kind is bytearray:
            key = bytes(key)
        elif kind is not str and kind is not bytes:
            raise DecodeError(f"invalid msgpack body: a map key must be str or bin, not {kind}")
        mapping[key] = value
    return mapping


class MsgpackDecoder(Decoder):
    """Splits a byte stream into frames and decodes each into a :class:`Message`.

    Feed it whatever the socket returned; it returns every message completed by those bytes, in
    order, however the stream was split. The first error breaks it for good.
    """

    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        self._frame_limit = limits.max_handshake_size
        # Bodies longer than this are counted (check_objects): those that could hold more than
        # max_decoded_objects, and all large ones, whose depth check it does on the way.
        self._count_above = min(limits.max_decoded_objects, SEPARATE_BODY_AT)
        self._unpacker_key = repr(limits)  # a str caches its hash: cheap to look up per frame
        self._buffer = bytearray()
        self._assembly: Assembly | None = None  # a large frame arriving (see _assembly)
        self._assembling = False  # whether large frames are assembled (once the handshake is done)
        self._broken: ProtocolError | None = None
        self._unpack_options: dict[str, Any] = {
            "raw": False,
            "strict_map_key": True,  # keys str/bytes only: int keys allow hash-collision DoS
            "use_list": True,
            "max_array_len": limits.max_container_len,
            "max_map_len": limits.max_container_len,
            "ext_hook": decode_ext,
        }

    def handshake_done(self) -> None:
        """Lift the frame limit from ``max_handshake_size`` to ``max_frame_size``."""
        self._frame_limit = self._limits.max_frame_size
        self._assembling = True

    def end(self) -> None:
        self._buffer = bytearray()
        self._assembly = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete frame."""
        assembly = self._assembly
        if assembly is not None:
            return HEADER_SIZE + assembly.size - assembly.left
        return len(self._buffer)

    def missing(self) -> int | None:
        """Bytes still to come for the frame whose body is arriving, once its header is in."""
        if self._assembly is not None:
            return self._assembly.left
        buffered = len(self._buffer)
        if buffered < HEADER_SIZE:
            return None
        return int(HEADER.unpack_from(self._buffer)[0]) + HEADER_SIZE - buffered

    def feed(self, data: bytes | bytearray | memoryview = b"") -> list[Message]:
        """Take received bytes; return the messages they complete.

        Decoding stops after a handshake message (hello, welcome, reject): call
        :meth:`handshake_done` if it is accepted, then ``feed()`` with no bytes for the rest.
        """
        if self._broken is not None:
            raise self._broken
        try:
            return self._feed(data)
        except ProtocolError as exc:
            self._broken = exc
            self._buffer = bytearray()
            self._assembly = None
            raise

    def in_place(
        self, data: bytes | bytearray | memoryview, requests: bool
    ) -> list[Message] | None:
        if (
            self._buffer
            or self._assembly is not None
            or self._broken is not None
            or not self._assembling
        ):
            return None
        shared = self.shared
        messages: list[Message] = []
        accepted: list[tuple[int, int]] = []  # (with shared memory: each frame's start, size)
        offset, end = 0, len(data)
        # Each frame whole, small, and a fixarray: of 3 of kind 2 or 3 (a reply, an error),
        # or of 4 of kind 1 (a request). Decoding has no effect but its messages (the
        # decoder's state stays as it is: feed() would copy nothing either), so each body
        # is decoded where it lies as soon as its frame is accepted; a frame that is not
        # leaves the whole read to feed(). With shared memory, decoding a frame takes the
        # arrays it names: the frames are decoded only once every one was accepted.
        try:
            with memoryview(data) as view:
                while offset < end:
                    if end - offset < HEADER_SIZE + 2:
                        return None
                    (size,) = HEADER.unpack_from(view, offset)
                    start = offset + HEADER_SIZE
                    if not 2 <= size < ASSEMBLE_AT or start + size > end:
                        return None
                    head, kind = view[start], view[start + 1]
                    if head == 0x93:
                        if kind != REPLY and kind != ERROR:
                            return None
                    elif head != 0x94 or kind != REQUEST or not requests:
                        return None
                    offset = start + size
                    if shared is None:
                        messages.append(self._decode_small(view[start:offset], size))
                    else:
                        accepted.append((start, size))
        except ProtocolError:
            return None  # feed() says it
        if shared is not None:
            self._resolving()
            try:
                with memoryview(data) as view:
                    for start, size in accepted:
                        messages.append(self._decode_small(view[start : start + size], size))
            except ProtocolError as exc:
                self._broken = exc  # (as feed() would be: it would decode them the same)
                raise
            finally:
                self._resolved()
        return messages

    def _decode_small(self, body: memoryview, size: int) -> Message:
        """A small reply or request (or error reply) body's message: as :meth:`_message`
        would make it, whose checks it repeats for the commonest shapes (a reply, a request,
        their data within the depth bound: a scalar, a flat map, a body shorter than the
        bound, or walked)."""
        if size > self._count_above:
            message = self._decode_body(body, size)
            assert not isinstance(message, list)  # (only a kind 14 is a batch)
            return message
        value = _unpack_whole(body, size, self._unpacker_key, self._limits, self._unpack_options)
        items = len(value) if type(value) is list else 0
        if items == 3 or items == 4:
            kind, data = value[0], value[2]
            if type(kind) is int and (
                size <= self._limits.max_depth
                or type(data) in _SCALARS
                or (type(data) is dict and _flat(data))
                or _nests_within(data, self._limits.max_depth - 1)
            ):
                if kind == REPLY:
                    request_id = value[1]
                    if type(request_id) is int and 0 <= request_id <= MAX_REQUEST_ID:
                        return Reply(request_id, data)
                elif kind == REQUEST and items == 4:
                    name, request_id = value[1], value[3]
                    if (
                        type(name) is str
                        and name
                        and type(request_id) is int
                        and 0 <= request_id <= MAX_REQUEST_ID
                    ):
                        return Request(name, data, request_id)
        message = self._message(value, size)
        assert not isinstance(message, list)
        return message

    def receive_buffer(self) -> memoryview | None:
        """Where the next bytes go when a large payload is arriving (its final buffer)."""
        assembly = self._assembly
        return None if assembly is None or self._broken else assembly.receive_buffer()

    def received(self, size: int) -> list[Message]:
        """``size`` bytes arrived in :meth:`receive_buffer`; the message they complete."""
        if self._broken is not None:
            raise self._broken
        assembly = self._assembly
        assert assembly is not None
        try:
            assembly.received(size)
            return self._assembled() if assembly.done else []
        except ProtocolError as exc:
            self._broken = exc
            self._assembly = None
            raise

    def _assembled(self, counted: bool = False) -> list[Message]:
        """The message of the frame the assembly completed (``counted``: its objects were);
        none if it was for the connection's shared memory (handled at once)."""
        assembly = self._assembly
        assert assembly is not None
        self._assembly = None
        body = assembly.body()
        event = assembly.event()  # the commonest large frame: no skeleton to decode
        if event is not None:
            return [event]
        if not counted:
            check_objects(body, self._limits)
        hook = self._unpack_options["ext_hook"]

        def resolve(code: int, data: bytes) -> Any:
            if code == MARK_CODE:
                payload = assembly.resolve(code, data)
                if payload is not None:
                    return payload
            return hook(code, data)

        _shared.resolver = self.shared  # for decode_ext (arrays in shared memory)
        options = {**self._unpack_options, "ext_hook": resolve}
        try:
            try:
                value = msgpack.unpackb(body, **options)
            except DecodeError:
                raise
            except Exception as exc:  # msgpack raises many types: ValueError, FormatError...
                # A large bin received in place (a bytearray) cannot be a map key, which a bin
                # may be: decoded again, the keys checked here instead, as bytes.
                if not any(type(payload) is bytearray for payload in assembly.objects):
                    raise invalid_body(exc) from None
                options.update(strict_map_key=False, object_pairs_hook=_keys_as_bytes)
                try:
                    value = msgpack.unpackb(body, **options)
                except DecodeError:
                    raise
                except Exception:
                    raise invalid_body(exc) from None
        finally:
            _shared.resolver = None
        message = self._message(value, assembly.size, counted=True)
        if isinstance(message, list):
            return list(message)  # (never: a batch is smaller)
        if type(message) is Share or type(message) is Release:
            self._shared_message(message)
            return []
        return [message]

    def _feed(self, data: bytes | bytearray | memoryview) -> list[Message]:
        messages: list[Message] = []
        assembly = self._assembly
        if assembly is not None:
            view = memoryview(data)
            taken = assembly.take(view)
            if not assembly.done:
                return messages
            messages += self._assembled()
            data = view[taken:]
        buffer = self._buffer
        if not buffer:
            self._frames(data, messages)
            return messages
        # A frame held back from the last read: completed with this read's first bytes and
        # decoded there; the rest of the read is decoded where it lies, not copied behind
        # those few bytes first (a reader that reads on past a frame's end ends most reads in
        # the middle of one).
        view = memoryview(data)
        taken = self._complete_held(view)
        if taken < 0:
            return messages  # all of it went behind the held bytes, still not a frame
        stopped = self._frames(buffer, messages)
        rest = view[taken:]
        if stopped or buffer:
            # A handshake message stopped it (see feed), or more than a frame was held (what
            # followed one until the owner decided): the rest goes behind it.
            buffer += rest
            if not stopped:
                self._frames(buffer, messages)
        elif self._assembly is not None:  # the held frame was a large one's start
            messages += self._feed(rest)
        else:
            self._frames(rest, messages)
        return messages

    def _complete_held(self, view: memoryview) -> int:
        """Move the first bytes of ``view`` behind the held-back ones, up to the end of their
        frame (or its header, if the frame is large or refused: the frame loop starts its
        assembly or says why); how many moved, or -1 if all did and the frame is still not
        complete."""
        buffer = self._buffer
        end = len(view)
        taken = 0
        while True:
            held = len(buffer)
            if held < HEADER_SIZE:
                need = HEADER_SIZE - held
            else:
                (size,) = HEADER.unpack_from(buffer)
                if (
                    size == 0
                    or size > self._frame_limit
                    or (size >= ASSEMBLE_AT and self._assembling)
                ):
                    return taken
                need = HEADER_SIZE + size - held
                if need <= 0:  # a whole frame is held already (and maybe more)
                    return taken
            if need > end - taken:
                buffer += view[taken:end]
                return -1
            buffer += view[taken : taken + need]
            taken += need

    def _frames(self, data: bytes | bytearray | memoryview, messages: list[Message]) -> bool:
        """Decode the frames of ``data`` (the held-back buffer, or a read with nothing held
        back) into ``messages``; keep what is left of it (the start of the next frame) held
        back; whether a handshake message stopped it."""
        buffer = self._buffer
        # With nothing held back, the frames are read where the bytes are (a large frame's
        # first read is ~256 KiB: not copied here first); only what is left is kept.
        source = data
        offset = 0
        end = len(source)
        limit = self._frame_limit
        count_above, shared = self._count_above, self.shared
        stopped = False
        with memoryview(source) as view:
            while end - offset >= HEADER_SIZE:
                (size,) = HEADER.unpack_from(source, offset)
                if size > limit:
                    handshake = limit != self._limits.max_frame_size
                    raise FrameTooLargeError(size, limit, handshake=handshake)
                if size == 0:
                    raise DecodeError("empty frame: a body must hold at least one msgpack value")
                start = offset + HEADER_SIZE
                if size >= ASSEMBLE_AT and self._assembling:
                    # A large frame: its large payloads go to their final buffers (received
                    # in place from now on, if it has not all arrived).
                    complete = end - start >= size
                    if complete:  # counted in place first: over a limit, nothing is copied
                        check_objects(view[start : start + size], self._limits)
                    assembly = self._assembly = Assembly(size, self._limits)
                    offset = start + assembly.take(view[start:end])
                    if not assembly.done:
                        break
                    messages += self._assembled(counted=complete)
                    continue
                if end - start < size:
                    break
                if (  # the common case: a run of small frames (one alone goes below)
                    size <= count_above and shared is None and end - start - size >= HEADER_SIZE
                ):
                    offset, stopped = self._small_frames(view, offset, end, messages)
                    if stopped:
                        break
                    continue
                offset = start + size
                message = self._decode(view[start:offset], size)
                if isinstance(message, list):  # a batch: its events
                    messages += message
                    continue
                kind = type(message)
                if kind is Event:
                    messages.append(message)
                    continue
                if kind is Share or kind is Release:  # at once: the next frame may use it
                    self._shared_message(message)  # type: ignore[arg-type]
                    continue
                messages.append(message)
                if kind in HANDSHAKE_KINDS:
                    # Stop here: the owner decides whether the handshake is done (and the frame
                    # limit lifted) before the frames behind this one are decoded.
                    stopped = True
                    break
            if source is not buffer and offset < end:
                buffer += view[offset:end]  # the start of the next frame, kept
        if source is buffer and offset:
            del buffer[:offset]  # O(1) at the front of a bytearray
        return stopped

    def _small_frames(
        self, view: memoryview, offset: int, end: int, messages: list[Message]
    ) -> tuple[int, bool]:
        """Decode the whole small frames from ``offset`` on (the first is one), appending their
        messages: the run of them a read brings, in one loop with the shared unpacker (see
        :func:`_small_unpacker`) at hand. Returns where the run ended and whether a handshake
        message stopped it.

        The run is fed at once, headers included (one feed instead of one per frame: ~0.5 us
        less per frame; a frame alone in its read takes :meth:`_decode`, for which a run's
        set-up costs more than it saves: W1 2-6 %), at most ``count_above + HEADER_SIZE``
        bytes of it. Each body must end exactly where its frame does; one that reaches into
        the bytes behind it is an error, and builds at most one object per byte fed
        (``count_above`` is at most ``max_decoded_objects``). What was fed and not decoded is
        read back out, so the unpacker is empty between runs; after an error it is thrown
        away."""
        key, limits, limit = self._unpacker_key, self._limits, self._frame_limit
        count_above, depth = self._count_above, limits.max_depth
        unpacker = _small_unpacker(key, limits, self._unpack_options)
        window = min(end, offset + HEADER_SIZE + count_above)
        unpacker.feed(view[offset:window])
        read_bytes, unpack, tell = unpacker.read_bytes, unpacker.unpack, unpacker.tell
        from_bytes = int.from_bytes
        position = tell()  # where it stands: each body must end where its frame does
        fed = position + window - offset
        stopped = False
        try:
            while window - offset >= HEADER_SIZE:
                size = from_bytes(read_bytes(HEADER_SIZE))  # (big-endian, unsigned)
                after = offset + HEADER_SIZE + size
                if not 0 < size <= count_above or size > limit or after > window:
                    break  # not a whole small frame: the caller's
                value = unpack()
                position += HEADER_SIZE + size
                if tell() != position:
                    raise DecodeError("a frame holds more or less than one msgpack value")
                offset = after
                # The commonest of all, [0, name, data] ([0, name, data, seq] acknowledged): as
                # parse_body and _message would make it, whose checks it repeats (anything else
                # goes to them).
                items = len(value) if type(value) is list else 0
                if items == 3 or items == 4:
                    kind, name, data = value[0], value[1], value[2]
                    if (
                        type(kind) is int
                        and kind == EVENT
                        and type(name) is str
                        and name
                        and (
                            size <= depth
                            or type(data) in _SCALARS
                            or (type(data) is dict and _flat(data))
                            or _nests_within(data, depth - 1)
                        )
                    ):
                        seq = value[3] if items == 4 else None
                        if seq is not None and not (type(seq) is int and 0 < seq <= MAX_REQUEST_ID):
                            seq = None  # as parse_body: anything else is ignored
                        messages.append(Event(name, data, seq))
                        continue
                message = self._message(value, size)
                if isinstance(message, list):  # a batch: its events
                    messages += message
                    continue
                kind = type(message)
                if kind is Share or kind is Release:  # at once: the next frame may use it
                    self._shared_message(message)  # type: ignore[arg-type]
                    continue
                messages.append(message)
                if kind in HANDSHAKE_KINDS:
                    # Stop here: the owner decides whether the handshake is done (and the frame
                    # limit lifted) before the frames behind this one are decoded.
                    stopped = True
                    break
            left = fed - tell()
            if left:
                read_bytes(left)  # (the rest of the run: the caller's, from offset on)
        except BaseException as exc:
            error = _unpack_failed(key, exc)
            if error is exc:
                raise
            raise error from None
        return offset, stopped

    def reply_to(self, body: bytes) -> int | None:
        # [2 or 3, id, ...]: a small array header, a positive fixint kind, an int id.
        unpacker = msgpack.Unpacker(max_buffer_size=REPLY_HEAD)
        unpacker.feed(body[:REPLY_HEAD])
        try:
            if unpacker.read_array_header() < 3:
                return None
            kind = unpacker.unpack()
            request_id = unpacker.unpack()
        except Exception:  # msgpack raises many types: the head is not a reply's
            return None
        if type(kind) is not int or kind not in (REPLY, ERROR):
            return None
        return request_id if type(request_id) is int else None

    def decode_datagram(self, body: bytes) -> list[Message]:
        """Decode one whole body (a UDP datagram carries exactly one, without a header).
        Stateless: an error here does not break the decoder."""
        size = len(body)
        if size > self._limits.max_frame_size:
            raise FrameTooLargeError(size, self._limits.max_frame_size)
        counted = size > self._count_above
        if counted:
            check_objects(memoryview(body), self._limits)
        try:
            value = msgpack.unpackb(body, **self._unpack_options)
        except DecodeError:
            raise
        except Exception as exc:  # msgpack raises many types: ValueError, FormatError, ...
            raise invalid_body(exc) from None
        message = self._message(value, size, counted)
        if isinstance(message, list):
            raise DecodeError("a batch of events (kind 14) in a datagram")
        return [message]

    def _shared_message(self, message: Share | Release) -> None:
        shared = self.shared
        if shared is None:
            raise DecodeError("shared memory was not negotiated on this connection")
        if type(message) is Share:
            shared.segment(message.segment, message.size)
        else:
            shared.released(message.places)  # type: ignore[union-attr]

    def _decode(self, body: memoryview, size: int) -> Message | list[Event]:
        if self.shared is None:
            return self._decode_body(body, size)
        self._resolving()
        try:
            return self._decode_body(body, size)
        finally:
            self._resolved()

    def _resolving(self) -> None:
        """References to shared memory are resolved in this connection's segments from now
        on, until :meth:`_resolved` (always called after, in a ``finally``)."""
        _shared.resolver = self.shared  # for decode_ext (the unpacker is this thread's)
        _shared.used = False

    def _resolved(self) -> None:
        _shared.resolver = None
        if _shared.used:
            # The shared unpacker keeps its last value until the next one: an array in shared
            # memory must be released as soon as its receiver drops it.
            _shared.__dict__.get("unpackers", {}).pop(self._unpacker_key, None)

    def _decode_body(self, body: memoryview, size: int) -> Message | list[Event]:
        if size > self._count_above:
            # Long enough to hold too many objects: count them before building any.
            check_objects(body, self._limits)
            counted = True
        else:
            counted = False
        if size >= SEPARATE_BODY_AT:  # large: decode in place (feed() would copy it)
            try:
                value = msgpack.unpackb(body, **self._unpack_options)
            except DecodeError:
                raise
            except Exception as exc:  # msgpack raises many types: ValueError, FormatError...
                raise invalid_body(exc) from None
        else:
            value = _unpack_whole(
                body, size, self._unpacker_key, self._limits, self._unpack_options
            )
        return self._message(value, size, counted)

    def _message(self, value: Any, size: int, counted: bool = False) -> Message | list[Event]:
        """The message of a decoded body (``size`` bytes; ``counted``: by check_objects), or
        the events of a batch."""
        if type(value) is list and len(value) >= 2 and value[0] == BATCH and type(value[0]) is int:
            return self._batch(value[1], size, value[2] if len(value) >= 3 else None)
        message = parse_body(value)
        # A body shorter than the depth bound cannot nest deeper than it, and check_objects
        # checked the depth of a counted one: skip the walk.
        depth = self._limits.max_depth
        if size > depth and not counted:
            kind = type(message)
            if kind is Event or kind is Request or kind is Reply:
                data = message.data  # type: ignore[union-attr]
                kind = type(data)
                if kind is dict:  # the common case first: a flat map, checked in C
                    within = _flat(data) or _within_depth(data, depth - 1)
                else:
                    within = kind is not list or _within_depth(data, depth - 1)
            else:
                within = _within_depth(value, depth)
            if not within:
                raise DecodeError(f"value nests deeper than max_depth={depth}")
        return message

    def _batch(self, items: Any, size: int, seq: Any) -> list[Event]:
        """The events of a batch ``[14, [event, data, ...]]`` or ``[14, [...], seq]`` (``items``:
        its array; ``seq``: the first event's, the others' following it) of ``size`` bytes, if
        batches were announced and it is within what was."""
        limit = self.batch_limit
        if not limit:
            raise DecodeError("a batch of events (kind 14), which was not negotiated")
        if size > limit:
            raise DecodeError(f"a batch of {size} bytes, over the {limit} announced")
        if type(items) is not list or not items or len(items) % 2:
            raise DecodeError("a batch's second item must be an array of event, data pairs")
        # A body shorter than the depth bound cannot nest deeper than it; a flat map cannot
        # either (checked in C); anything else is walked.
        depth = self._limits.max_depth
        deep = size > depth
        depth -= 2  # (the envelope and the array around each event's data)
        events: list[Event] = []
        append = events.append
        pairs = iter(items)
        if not (type(seq) is int and 0 < seq <= MAX_REQUEST_ID - len(items) // 2 + 1):
            seq = None  # as an event's: anything else is ignored
        for name, data in zip(pairs, pairs, strict=True):
            if type(name) is not str or not name:
                _require_str(name, "event name")
            if (
                deep
                and type(data) not in _SCALARS
                and not (type(data) is dict and _flat(data))
                and not _within_depth(data, depth)
            ):
                raise DecodeError(f"value nests deeper than max_depth={depth + 2}")
            if seq is None:
                append(Event(name, data))
            else:
                append(Event(name, data, seq))
                seq += 1
        return events


class MsgpackCodec(Codec):
    """``u32`` length + msgpack body frames, every message kind, the hello/welcome handshake."""

    name = "msgpack"
    kinds = frozenset(
        {
            Event,
            Request,
            Reply,
            ErrorReply,
            Hello,
            Welcome,
            Reject,
            Challenge,
            Proof,
            Ping,
            Pong,
            Ack,
            Share,
            Release,
        }
    )
    handshake = True

    def encoder(self, limits: Limits) -> MsgpackEncoder:
        return MsgpackEncoder(limits)

    def datagram_encoder(self, limits: Limits) -> MsgpackEncoder:
        return MsgpackEncoder(limits, datagrams=True)

    def decoder(self, limits: Limits) -> MsgpackDecoder:
        return MsgpackDecoder(limits)

    def batch_limit(self, limits: Limits) -> int:
        # Within every limit of the receiver's: a batch body holds fewer objects than it has
        # bytes, and its events' data sits two levels below the top (the envelope, the array).
        if limits.max_depth < 8:
            return 0
        return min(
            BATCH_BODY_LIMIT,
            limits.max_frame_size,
            limits.max_decoded_objects,
            limits.max_container_len,
        )

    def event_batches(self, limit: Any, limits: Limits) -> MsgpackEventBatches | None:
        # Within what the sender would take too: an event that goes in a batch would go whole
        # in a frame of its own (as a batch is split into for a peer that takes none, after
        # a reconnect), within its max_frame_size and object budget.
        if type(limit) is not int:
            return None
        limit = min(limit, self.batch_limit(limits))
        return MsgpackEventBatches(limit) if limit >= _SMALLEST_BATCH else None


class MsgpackEventBatches:
    """Batches of events (kind 14) for a peer that accepts ``limit`` bytes of body: see
    ``_codec.EventBatches``. A batch is ``[14, [event, data, event, data, ...]]``: each item
    (``MsgpackEncoder.event_item``) is an event's name and data packed, so a batch's body is
    its prefix and its items, joined as they were queued."""

    __slots__ = ("max_bytes",)

    prefix: Final = bytes(_BATCH_PREFIX.size)

    def __init__(self, limit: int) -> None:
        self.max_bytes = HEADER_SIZE + limit - 9  # (room for a sequenced batch's seq: close)

    def close(self, buffer: bytearray, count: int, seq: int = 0) -> bytes:
        if seq:  # the first event's seq, behind the events: [14, [...], seq]
            buffer += _packb(seq)
        envelope = 0x93 if seq else 0x92
        _BATCH_PREFIX.pack_into(
            buffer, 0, len(buffer) - HEADER_SIZE, envelope, BATCH, 0xDD, 2 * count
        )
        return BatchFrame(buffer)

    def split(self, frame: bytes) -> tuple[bytes, ...]:
        start = _BATCH_PREFIX.size
        unpacker = msgpack.Unpacker(max_buffer_size=len(frame))
        unpacker.feed(frame[start:])
        _, envelope, _, _, items = _BATCH_PREFIX.unpack_from(frame)
        frames = []
        for _ in range(items // 2):
            unpacker.skip()  # (the name)
            unpacker.skip()  # (the data)
            end = _BATCH_PREFIX.size + unpacker.tell()
            frames.append(frame[start:end])
            start = end
        if envelope == 0x92:
            return tuple(b"".join((HEADER.pack(len(i) + 2), b"\x93\x00", i)) for i in frames)
        seq = unpacker.unpack()  # sequenced: [0, event, data, seq], numbered from the batch's
        return tuple(
            b"".join((HEADER.pack(len(i) + 2 + len(t)), b"\x94\x00", i, t))
            for i, t in zip(frames, map(_packb, range(seq, seq + len(frames))), strict=True)
        )


CODEC: Final = MsgpackCodec()


# --- plain values -----------------------------------------------------------------------------


def pack_value(value: Any, *, numpy: bool = False) -> bytes:
    """One value as msgpack, outside any frame (the supervisor's spawn arguments, the
    forkserver's control messages). ``numpy``: numpy arrays become the extension type.
    Raises :class:`EncodeError`."""
    try:
        packed: bytes = msgpack.packb(
            value, use_bin_type=True, datetime=False, default=encode_default if numpy else None
        )
    except IPCError:
        raise
    except Exception as exc:
        raise _encode_error(exc) from exc
    return packed


def unpack_value(data: bytes, *, numpy: bool = False) -> Any:
    """The value :func:`pack_value` packed. Map keys must be str or bytes; extension types
    other than numpy's (with ``numpy``) are refused. Raises what msgpack raises (the callers
    read from a trusted end: the forkserver's socketpair, the supervisor's spawn spec)."""
    return msgpack.unpackb(
        data, raw=False, strict_map_key=True, ext_hook=decode_ext if numpy else _reject_ext
    )
