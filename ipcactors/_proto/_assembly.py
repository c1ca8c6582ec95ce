"""A large msgpack frame assembled as it arrives: its large payloads received in place.

The msgpack decoder hands a frame to an :class:`Assembly` when the frame is large and its body
has not all arrived. The assembly walks the msgpack encoding as bytes come (without building
anything), keeps the small bytes (the *skeleton*), and gives each large payload its final
buffer as soon as the payload's header is in: a fresh ``bytearray`` for a bin value, a fresh
numpy array for a numpy extension (after checking its header: dtype, shape, byte count). The
rest of the payload is then received straight into that buffer (:attr:`Assembly.destination`,
``recv_into``) or copied there from what a read returned: at most one copy on this side. In the
skeleton each payload is replaced by a marker (an extension type that never travels); once the
body is complete, the skeleton is decoded with the markers resolved to the received objects.

Invariants:
- Nothing is allocated for a payload before its length is known to fit in what is left of the
  frame (whose size was checked against ``max_frame_size`` from its header), and, for an array,
  before its header was checked and its byte count matches: a frame never costs more than its
  own size plus what the skeleton decodes into.
- Nor is memory spent on bytes that have not come: a payload's buffer is allocated and not
  touched (a numpy array as ``numpy.empty`` makes it; a bin's ``bytearray`` without the zeroes
  Python writes into one it makes, see ``_unfilled_bytearray``), so the system gives its pages
  only as they are written. A peer that declares a large payload and sends little costs about
  what it sent (a ``bytearray(n)`` of 64 MiB cost 64 MiB at once, and the time to zero it).
  Every byte of it is written before the payload is handed out; one left unfinished goes
  with its frame.
- The walk counts objects as their containers are declared, against ``max_decoded_objects``,
  and container lengths against ``max_container_len``, so it takes bounded steps; the depth and
  everything else are checked on the skeleton (``check_objects``) before it is decoded. Bytes
  join the skeleton ``_PIECE`` at a time, each piece walked before the next, so a frame over a
  limit is refused having copied little of itself.
- A marker arriving from the peer (extension type ``MARK_CODE``) is a protocol error.
- The commonest large frame, an event whose data is one large payload (``[0, name, payload]``,
  or ``[0, name, payload, seq]``), is recognized from its first bytes: its envelope is passed
  over in one step (counted as the walk would count it), and its message is built without
  decoding the skeleton (:meth:`Assembly.event`). Anything else about it, or any other frame,
  is walked and decoded as above.
- Nothing here does I/O.
"""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Callable
from typing import Any, Final

from .._errors import DecodeError
from ._codec import OUT_OF_BAND_AT
from ._extcodes import NUMPY_EXT_CODE
from ._messages import MAX_REQUEST_ID, Event, Limits

__all__ = ["MARK_CODE", "MARK_SIZE", "Assembly"]

#: The extension type that marks an out-of-band payload's place (never on the wire).
MARK_CODE: Final = 127
_MARK_HEAD: Final = b"\xd8" + bytes((MARK_CODE,))  # fixext 16: an index and 12 zero bytes
#: A marker's size: fixext 16's two bytes of header and its 16 bytes.
MARK_SIZE: Final = 18
_U8, _U16, _U32 = struct.Struct(">B"), struct.Struct(">H"), struct.Struct(">I")
_WIDTHS: Final = {1: _U8, 2: _U16, 4: _U32}
_PIECE: Final = 16 * 1024  # bytes added to the skeleton between two walks


def _bytearray_maker() -> Callable[[int], bytearray]:
    """CPython's ``PyByteArray_FromStringAndSize(NULL, n)``: a ``bytearray`` of ``n`` bytes
    allocated and not written (``bytearray(n)`` zeroes them, which commits every page); the
    plain constructor where the C API is out of reach."""
    # A prototype of our own (the GIL held, as for any C API call), not pythonapi's shared
    # function object, whose restype another library may set.
    prototype = ctypes.PYFUNCTYPE(ctypes.py_object, ctypes.c_char_p, ctypes.c_ssize_t)
    try:
        make = prototype(("PyByteArray_FromStringAndSize", ctypes.pythonapi))
    except (AttributeError, OSError):  # (not CPython)
        return bytearray
    return lambda size: make(None, size)


#: A large bin's buffer: not written until its bytes come (see the invariants).
_unfilled_bytearray: Final = _bytearray_maker()

# An event's envelope: an array of 3 or 4 (fixarray), kind 0 (see _msgpack), then its name.
_EVENT_ARRAYS: Final = (0x93, 0x94)
# A sequence number's msgpack: uint 8, 16, 32, 64, by the size of the element (a positive
# fixint is one byte).
_UINT_HEADS: Final = {2: 0xCC, 3: 0xCD, 5: 0xCE, 9: 0xCF}

# First byte -> how the element goes on (see _step): fixed size; str/bin/ext with a length
# field; array/map with a count field; fixarray/fixmap; invalid.
_FIXED, _BYTES, _EXT, _ARRAY, _MAP, _INVALID = range(6)


def _table() -> tuple[tuple[int, int], ...]:
    kinds: list[tuple[int, int]] = [(_FIXED, 1)] * 256  # fixint, nil, bools
    for byte in range(0x80, 0x90):
        kinds[byte] = (_MAP, -(byte & 0x0F))  # negative: the count itself (fixmap)
    for byte in range(0x90, 0xA0):
        kinds[byte] = (_ARRAY, -(byte & 0x0F))
    for byte in range(0xA0, 0xC0):
        kinds[byte] = (_FIXED, 1 + (byte & 0x1F))  # fixstr
    kinds[0xC1] = (_INVALID, 0)
    for byte, width in ((0xC4, 1), (0xC5, 2), (0xC6, 4)):
        kinds[byte] = (_BYTES, width)  # bin
    for byte, width in ((0xD9, 1), (0xDA, 2), (0xDB, 4)):
        kinds[byte] = (_BYTES, -width)  # str: negative width (never received in place)
    for byte, width in ((0xC7, 1), (0xC8, 2), (0xC9, 4)):
        kinds[byte] = (_EXT, width)
    for byte, size in ((0xCA, 5), (0xCB, 9), (0xCC, 2), (0xCD, 3), (0xCE, 5), (0xCF, 9)):
        kinds[byte] = (_FIXED, size)
    for byte, size in ((0xD0, 2), (0xD1, 3), (0xD2, 5), (0xD3, 9)):
        kinds[byte] = (_FIXED, size)
    for byte, size in ((0xD4, 3), (0xD5, 4), (0xD6, 6), (0xD7, 10), (0xD8, 18)):
        kinds[byte] = (_EXT, -size)  # fixext: negative: the element's whole size
    for byte, width in ((0xDC, 2), (0xDD, 4)):
        kinds[byte] = (_ARRAY, width)
    for byte, width in ((0xDE, 2), (0xDF, 4)):
        kinds[byte] = (_MAP, width)
    return tuple(kinds)


_KINDS: Final = _table()


class Assembly:
    """One frame's body of ``size`` bytes, assembled as it arrives (see the module)."""

    __slots__ = (
        "_budget",
        "_event_name",
        "_filled",
        "_limits",
        "_objects",
        "_scan",
        "_skeleton",
        "_skip",
        "_values",
        "destination",
        "left",
        "objects",
        "size",
    )

    def __init__(self, size: int, limits: Limits) -> None:
        self._limits = limits
        self._budget = limits.max_decoded_objects
        self.size = size  # of the body
        self.left = size  # body bytes still to come
        self._skeleton = bytearray()
        self._scan = 0  # where the next element starts in the skeleton
        self._skip = 0  # bytes of the current small element still to pass over
        self._values = 1  # msgpack values still to come (the body is one)
        self._objects = 1  # objects declared so far
        #: The received payloads, in order (what the markers stand for).
        self.objects: list[Any] = []
        #: Where the next bytes go, if a payload is being received; ``_filled`` of it are in.
        self.destination: memoryview | None = None
        self._filled = 0
        # Where an event's name lies in the skeleton, if the body starts as an event's
        # envelope (see event()).
        self._event_name: tuple[int, int] | None = None

    @property
    def done(self) -> bool:
        return self.left == 0 and self.destination is None

    def receive_buffer(self) -> memoryview | None:
        """What is left to fill of the payload being received, if one is."""
        destination = self.destination
        return None if destination is None else destination[self._filled :]

    def received(self, size: int) -> None:
        """``size`` bytes were received into :meth:`receive_buffer`."""
        assert self.destination is not None
        assert 0 < size <= len(self.destination) - self._filled
        self._filled += size
        self.left -= size
        if self._filled == len(self.destination):
            self.destination = None
            self._walk()

    def take(self, data: memoryview) -> int:
        """Take received bytes (as many as the body still needs); returns how many it took."""
        taken = 0
        end = len(data)
        while taken < end and self.left:
            destination = self.destination
            if destination is not None:
                size = min(end - taken, len(destination) - self._filled)
                destination[self._filled : self._filled + size] = data[taken : taken + size]
                self.received(size)
            else:
                # A piece at a time: a frame over a limit is refused before it is all copied.
                size = min(end - taken, self.left, _PIECE)
                self._skeleton += data[taken : taken + size]
                self.left -= size
                self._walk()
            taken += size
        return taken

    def body(self) -> memoryview:
        """The complete skeleton (once :attr:`done`). Raises :class:`DecodeError` if the
        bytes do not hold exactly one msgpack value."""
        if self._values or self._skip or self._scan != len(self._skeleton):
            if self._values or self._skip:
                raise DecodeError("invalid msgpack body: truncated")
            raise DecodeError("a frame holds more than one msgpack value")
        return memoryview(self._skeleton)

    def event(self) -> Event | None:
        """The event the complete body is, if its data is one large payload (nothing else:
        no container around it): built from the skeleton's bytes without decoding it. The
        walk counted its objects and checked its container; it nests one level deep. ``None``
        for any other body (decode the skeleton)."""
        where = self._event_name
        if where is None or len(self.objects) != 1:
            return None
        skeleton = self._skeleton
        start, end = where
        if skeleton[end : end + 2] != _MARK_HEAD:
            return None  # the data holds the payload, or is something else
        rest = len(skeleton) - end - MARK_SIZE  # behind the data: a seq, if 4 items
        seq: int | None = None
        if rest:
            head = skeleton[end + MARK_SIZE]
            if rest == 1 and head < 0x80:
                seq = head
            elif _UINT_HEADS.get(rest) == head:
                seq = int.from_bytes(skeleton[1 - rest :])
            else:
                return None  # not a sequence number: decoded as any body
            if not 0 < seq <= MAX_REQUEST_ID:
                seq = None  # as an event's: anything else is ignored
        try:
            name = skeleton[start:end].decode()
        except UnicodeDecodeError:
            return None  # (the decoder says why)
        return Event(name, self.objects[0], seq)

    def resolve(self, code: int, data: bytes) -> Any:
        """A marker's object (for the unpacker's ``ext_hook``); ``None`` if not a marker."""
        index = int.from_bytes(data[:4], "big")
        if code != MARK_CODE or len(data) != 16 or index >= len(self.objects):
            return None
        return self.objects[index]

    # --- the walk ---------------------------------------------------------------------------

    def _walk(self) -> None:
        """Pass over the elements whose headers are in, until a payload's destination is set
        or more bytes are needed."""
        skeleton = self._skeleton
        if not self._scan and self._objects == 1:
            self._envelope(skeleton)
        while self.destination is None:
            if self._skip:
                step = min(self._skip, len(skeleton) - self._scan)
                self._scan += step
                self._skip -= step
                if self._skip:
                    return
            if not self._values or self._scan >= len(skeleton):
                if not self._values and self._scan < len(skeleton):
                    raise DecodeError("a frame holds more than one msgpack value")
                return
            if not self._step(skeleton, self._scan):
                return

    def _envelope(self, skeleton: bytearray) -> None:
        """Pass over an event's envelope (its array's header, its kind, its name) at once,
        if the body starts with one whose name is all in, counted as the walk would."""
        if len(skeleton) < 3 or skeleton[0] not in _EVENT_ARRAYS or skeleton[1] != 0:
            return
        head = skeleton[2]
        if 0xA1 <= head <= 0xBF:  # fixstr, not empty
            start, length = 3, head & 0x1F
        elif head == 0xD9 and len(skeleton) >= 4 and skeleton[3]:  # str 8
            start, length = 4, skeleton[3]
        else:
            return
        items = skeleton[0] & 0x0F
        limits = self._limits
        if (
            len(skeleton) < start + length
            or items > limits.max_container_len
            or 1 + items > self._budget
            or limits.max_depth < 1
        ):
            return  # walked step by step: the walk or the decoder says what is wrong
        self._objects = 1 + items
        self._values = items - 2  # the data, and a seq if there are 4
        self._scan = start + length
        self._event_name = (start, start + length)

    def _step(self, skeleton: bytearray, at: int) -> bool:
        """Read the element starting at ``at``; False if its header is not all in yet."""
        kind, arg = _KINDS[skeleton[at]]
        available = len(skeleton) - at
        if kind == _FIXED:
            self._values -= 1
            self._skip = arg
            return True
        if kind == _INVALID:
            raise DecodeError("invalid msgpack body: byte 0xc1")
        if kind in (_ARRAY, _MAP):
            if arg <= 0:
                count, head = -arg, 1
            else:
                if available < 1 + arg:
                    return False
                count, head = _WIDTHS[arg].unpack_from(skeleton, at + 1)[0], 1 + arg
            if count > self._limits.max_container_len:
                raise DecodeError(
                    f"a container of {count} items exceeds "
                    f"max_container_len={self._limits.max_container_len}"
                )
            items = count * 2 if kind == _MAP else count
            self._objects += items
            if self._objects > self._budget:
                raise DecodeError(
                    f"a frame holds more than max_decoded_objects={self._budget} msgpack "
                    "objects (each array, map, key and value counts)"
                )
            self._values += items - 1
            self._scan = at + head
            return True
        if kind == _EXT and arg < 0:  # fixext: code then 1-16 bytes
            if available < 2:
                return False
            self._check_code(struct.unpack_from(">b", skeleton, at + 1)[0])
            self._values -= 1
            self._skip = -arg
            return True
        width = abs(arg)
        head = 1 + width + (kind == _EXT)
        if available < head:
            return False
        length = _WIDTHS[width].unpack_from(skeleton, at + 1)[0]
        if kind == _EXT:
            code = struct.unpack_from(">b", skeleton, at + 1 + width)[0]
            self._check_code(code)
            if code == NUMPY_EXT_CODE and length >= OUT_OF_BAND_AT:
                if not self._array(skeleton, at, head, length):
                    return False
                self._values -= 1
                return True
        elif arg > 0 and length >= OUT_OF_BAND_AT:  # a large bin
            self._fits(skeleton, at + head, length)
            buffer = _unfilled_bytearray(length)
            self._values -= 1
            self._start(skeleton, at, head, buffer, memoryview(buffer))
            return True
        self._values -= 1
        self._skip = head + length
        return True

    def _array(self, skeleton: bytearray, at: int, head: int, length: int) -> bool:
        """A large numpy extension whose header starts at ``at``: once the array's own header
        is in, check it and receive the data into a fresh array."""
        from ._numpy import empty_array, header_size, parse_header  # numpy is here: an array came

        self._fits(skeleton, at + head, length)
        start = at + head
        view = memoryview(skeleton)
        try:
            size = header_size(view[start:])
            if size is None or len(skeleton) - start < size:
                return False  # read again once more bytes are in
            dtype, shape, offset = parse_header(view[start : start + size], length)
        finally:
            view.release()
        array, data = empty_array(dtype, shape)
        self._start(skeleton, at, head + offset, array, data)
        return True

    def _fits(self, skeleton: bytearray, start: int, length: int) -> None:
        if length > len(skeleton) - start + self.left:
            raise DecodeError(
                f"a payload of {length} bytes does not fit in what is left of its frame"
            )

    def _check_code(self, code: int) -> None:
        if code == MARK_CODE:
            raise DecodeError(f"unknown msgpack extension type {code}")

    def _start(
        self, skeleton: bytearray, at: int, head: int, payload: Any, destination: memoryview
    ) -> None:
        """The element at ``at`` (``head`` bytes of headers, then ``destination``'s worth of
        data) becomes a marker; the data already in goes to ``destination``."""
        index = len(self.objects)
        self.objects.append(payload)
        start = at + head
        size = len(destination)
        have = min(len(skeleton) - start, size)
        destination[:have] = skeleton[start : start + have]
        after = skeleton[start + have :]  # bytes behind a payload that was all in already
        del skeleton[at:]
        skeleton += _MARK_HEAD + index.to_bytes(4, "big") + bytes(12)
        self._scan = len(skeleton)
        if have < size:
            self.destination = destination
            self._filled = have
        else:
            skeleton += after
