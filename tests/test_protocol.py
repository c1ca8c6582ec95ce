"""The sans-IO protocol core: frames, envelopes, limits. No sockets, no event loop.

The properties: whatever is encoded comes back the same however the stream is split; arbitrary
bytes give only valid messages or a ProtocolError (and the decoder stays broken after one); the
limits hold at their exact boundaries; what the encoder accepts the decoder accepts.
"""

from __future__ import annotations

import collections
import datetime
import itertools
import re
import struct
import tracemalloc
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_reads import as_sent

from ipcactors import DecodeError, EncodeError, FrameTooLargeError, ProtocolError
from ipcactors._proto._assembly import Assembly
from ipcactors._proto._codec import OUT_OF_BAND_AT
from ipcactors._proto._messages import (
    HANDSHAKE_KINDS,
    MAX_REQUEST_ID,
    PROTOCOL_VERSION,
    Ack,
    ErrorReply,
    Event,
    Frame,
    Hello,
    Limits,
    Message,
    Ping,
    Pong,
    Reject,
    Reply,
    Request,
    Welcome,
    frame_size,
    is_reserved,
)
from ipcactors._proto._msgpack import (
    CODEC,
    SEPARATE_BODY_AT,
    MsgpackDecoder,
    MsgpackEncoder,
    check_objects,
)

MiB = 1024 * 1024
DEFAULT = Limits()

# Bounded so the whole file runs in a few seconds.
PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def stable_id(value: object) -> str:
    """A test id every pytest process computes alike (pytest-xdist compares them): no object
    address, and short."""
    text = re.sub(r" at 0x[0-9a-f]+", "", repr(value))
    return text if len(text) <= 60 else f"{text[:50]}...({len(text)} chars)"


# --- helpers ----------------------------------------------------------------------------------


def framed(body: bytes) -> bytes:
    """A frame on the wire: u32 big-endian length, then the body."""
    return struct.pack(">I", len(body)) + body


def pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]


def wire(frame: Frame) -> bytes:
    return frame if isinstance(frame, bytes) else b"".join(frame)


def decoder(limits: Limits = DEFAULT, *, handshake_done: bool = True) -> MsgpackDecoder:
    result = MsgpackDecoder(limits)
    if handshake_done:
        result.handshake_done()
    return result


def drain(dec: MsgpackDecoder, data: bytes | bytearray | memoryview = b"") -> list[Message]:
    """Feed ``data``, then keep feeding nothing while messages come out (a handshake message
    stops decoding until the next ``feed``)."""
    messages = dec.feed(data)
    while messages and isinstance(messages[-1], HANDSHAKE_KINDS):
        more = dec.feed()
        if not more:
            break
        messages += more
    return messages


def decode_one(body: bytes, limits: Limits = DEFAULT) -> Message:
    messages = decoder(limits).feed(framed(body))
    assert len(messages) == 1
    return messages[0]


def norm(message: Message) -> tuple[Any, ...]:
    """A comparable form of a message (the non-handshake classes have no ``__eq__``)."""
    if type(message) is Event:
        return ("event", message.event, message.data)
    if type(message) is Request:
        return ("request", message.event, message.data, message.id)
    if type(message) is Reply:
        return ("reply", message.id, message.data)
    if type(message) is ErrorReply:
        return ("error", message.id, message.type, message.message, message.traceback)
    if type(message) in (Ping, Pong):
        return (type(message).__name__,)
    if type(message) is Ack:
        return ("ack", message.seq)
    assert isinstance(message, HANDSHAKE_KINDS)
    return ("handshake", message)


def depth(value: Any) -> int:
    """Nesting depth in containers: a scalar is 0, ``[]`` is 1, ``[[]]`` is 2."""
    if type(value) is list:
        return 1 + max(map(depth, value), default=0)
    if type(value) is dict:
        return 1 + max(map(depth, value.values()), default=0)
    return 0


def assert_valid_data(value: Any, limits: Limits) -> None:
    """``value`` is made only of plain msgpack types, within ``limits``."""
    kind = type(value)
    if kind is list:
        assert len(value) <= limits.max_container_len
        for item in value:
            assert_valid_data(item, limits)
    elif kind is dict:
        assert len(value) <= limits.max_container_len
        for key, item in value.items():
            assert type(key) in (str, bytes)
            assert_valid_data(item, limits)
    else:
        # msgpack decodes its timestamp extension (-1) itself: the one extension that passes.
        assert kind in (type(None), bool, int, float, str, bytes, msgpack.Timestamp), kind


def assert_valid(message: Message, limits: Limits) -> None:
    """What the decoder promises about every message it returns."""
    if type(message) in (Event, Request):
        assert type(message.event) is str
        assert message.event
    if type(message) in (Request, Reply, ErrorReply):
        assert type(message.id) is int
        assert 0 <= message.id <= MAX_REQUEST_ID
    if type(message) in (Event, Request, Reply):
        assert_valid_data(message.data, limits)
        assert 1 + depth(message.data) <= limits.max_depth
    elif type(message) is ErrorReply:
        assert all(type(f) is str for f in (message.type, message.message, message.traceback))
    elif type(message) in (Hello, Welcome):
        assert type(message.version) is int
        assert type(message.id) is str
        assert message.id
        assert_valid_data(message.extra, limits)
    elif type(message) is Ack:
        assert type(message.seq) is int
        assert 0 <= message.seq <= MAX_REQUEST_ID
    elif type(message) is Reject:
        assert type(message.reason) is str
        assert message.reason
        assert type(message.message) is str
    else:
        assert type(message) in (*HANDSHAKE_KINDS, Ping, Pong), type(message)


def nested_lists(levels: int) -> bytes:
    """msgpack of ``levels`` lists nested in each other, the innermost empty."""
    assert levels >= 1
    return b"\x91" * (levels - 1) + b"\x90"


def event_body(data_bytes: bytes, name: bytes = b"\xa1e") -> bytes:
    """msgpack of ``[0, "e", <data_bytes>]`` (data given as raw msgpack)."""
    return b"\x93\x00" + name + data_bytes


# --- strategies -------------------------------------------------------------------------------

names = st.text(min_size=1, max_size=12)
ids = st.integers(0, MAX_REQUEST_ID)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.binary(max_size=20),
)
# Values the protocol carries unchanged: plain msgpack types, str or bytes map keys.
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(st.text(max_size=6) | st.binary(max_size=6), inner, max_size=5)
    ),
    max_leaves=25,
)
extra_keys = st.text(min_size=1, max_size=6).filter(lambda k: k not in ("v", "id"))


@st.composite
def messages(draw: st.DrawFn) -> tuple[str, tuple[Any, ...], tuple[Any, ...]]:
    """(encoder method, its arguments, the normalised message the decoder should return)."""
    kind = draw(st.sampled_from(["event", "request", "reply", "error", "hello", "welcome", "rj"]))
    if kind == "event":
        name, data = draw(names), draw(values)
        return "event", (name, data), ("event", name, data)
    if kind == "request":
        name, data, rid = draw(names), draw(values), draw(ids)
        return "request", (name, data, rid), ("request", name, data, rid)
    if kind == "reply":
        rid, data = draw(ids), draw(values)
        return "reply", (rid, data), ("reply", rid, data)
    if kind == "error":
        rid = draw(ids)
        texts = draw(st.tuples(st.text(max_size=10), st.text(max_size=10), st.text(max_size=30)))
        return "error_reply", (rid, *texts), ("error", rid, *texts)
    if kind == "rj":
        reason, text = draw(names), draw(st.text(max_size=20))
        return "reject", (reason, text), ("handshake", Reject(reason, text))
    actor_id = draw(names)
    extra = draw(st.dictionaries(extra_keys, values, max_size=3))
    cls = Hello if kind == "hello" else Welcome
    return kind, (actor_id,), ("handshake", cls(PROTOCOL_VERSION, actor_id, extra), extra)


def encode(encoder: MsgpackEncoder, spec: tuple[str, tuple[Any, ...], tuple[Any, ...]]) -> bytes:
    method, args, expected = spec
    kwargs = expected[2] if method in ("hello", "welcome") else {}
    return wire(getattr(encoder, method)(*args, **kwargs))


def expected_of(spec: tuple[str, tuple[Any, ...], tuple[Any, ...]]) -> tuple[Any, ...]:
    expected = spec[2]
    return expected[:2] if expected[0] == "handshake" else expected


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = [0, *sorted(set(cuts)), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(points)]


# --- round trips ------------------------------------------------------------------------------


@PROPERTY
@given(st.lists(messages(), max_size=8), st.data())
def test_any_split_decodes_to_the_same_messages(
    specs: list[tuple[str, tuple[Any, ...], tuple[Any, ...]]], data: st.DataObject
) -> None:
    encoder = MsgpackEncoder(DEFAULT)
    stream = b"".join(encode(encoder, spec) for spec in specs)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=12))
    dec = decoder()
    got: list[Message] = []
    for chunk in split(stream, cuts):
        got += drain(dec, chunk)
    assert [norm(m) for m in got] == [expected_of(spec) for spec in specs]
    assert dec.buffered == 0
    assert dec.missing() is None


@PROPERTY
@given(st.lists(messages(), min_size=1, max_size=4))
def test_byte_at_a_time(specs: list[tuple[str, tuple[Any, ...], tuple[Any, ...]]]) -> None:
    encoder = MsgpackEncoder(DEFAULT)
    stream = b"".join(encode(encoder, spec) for spec in specs)
    dec = decoder()
    got: list[Message] = []
    for i in range(len(stream)):
        got += drain(dec, memoryview(stream)[i : i + 1])
    assert [norm(m) for m in got] == [expected_of(spec) for spec in specs]


def test_feed_takes_bytes_bytearray_and_memoryview() -> None:
    frame = wire(MsgpackEncoder(DEFAULT).event("e", [1, "x"]))
    for data in (frame, bytearray(frame), memoryview(frame)):
        (message,) = decoder().feed(data)
        assert norm(message) == ("event", "e", [1, "x"])


def test_buffered_and_missing() -> None:
    frame = wire(MsgpackEncoder(DEFAULT).event("e", b"x" * 100))
    dec = decoder()
    assert dec.feed(frame[:3]) == []
    assert dec.buffered == 3
    assert dec.missing() is None
    assert dec.feed(frame[3:10]) == []
    assert dec.missing() == len(frame) - 10
    assert dec.buffered == 10
    assert len(dec.feed(frame[10:] + frame[:2])) == 1
    assert dec.buffered == 2


def test_trailing_items_are_ignored() -> None:
    assert norm(decode_one(pack([0, "e", 1, "more", {"x": [1]}]))) == ("event", "e", 1)
    # The acknowledged mode's sequence number is the fourth item when it is a positive int.
    assert decode_one(pack([0, "e", 1, "more"])).seq is None  # type: ignore[union-attr]
    assert decode_one(pack([0, "e", 1, 0])).seq is None  # type: ignore[union-attr]
    assert decode_one(pack([0, "e", 1, 7, "x"])).seq == 7  # type: ignore[union-attr]
    assert norm(decode_one(pack([1, "e", 1, 7, None]))) == ("request", "e", 1, 7)
    assert norm(decode_one(pack([2, 7, "r", 0]))) == ("reply", 7, "r")
    error = pack([3, 7, {"type": "T", "message": "m", "traceback": "tb", "x": 1}, 0])
    assert norm(decode_one(error)) == ("error", 7, "T", "m", "tb")
    assert decode_one(pack([4, {"v": 1, "id": "a"}, "x"])) == Hello(1, "a", {})
    assert decode_one(pack([5, {"v": 1, "id": "a"}, "x"])) == Welcome(1, "a", {})
    assert decode_one(pack([6, {"reason": "busy", "message": "m"}, 1])) == Reject("busy", "m")


def test_handshake_maps() -> None:
    hello = decode_one(pack([4, {"v": 1, "id": "w", "auth": b"p", b"raw": 1}]))
    assert hello == Hello(1, "w", {"auth": b"p", b"raw": 1})
    # The version is the server's decision (it answers reject "version"), not the decoder's.
    assert decode_one(pack([4, {"v": 99, "id": "w"}])) == Hello(99, "w", {})
    # A reject's message is optional: missing or not a string reads as "".
    assert decode_one(pack([6, {"reason": "version"}])) == Reject("version", "")
    assert decode_one(pack([6, {"reason": "auth", "message": 5}])) == Reject("auth", "")
    # Error reply fields default to "".
    assert norm(decode_one(pack([3, 1, {}]))) == ("error", 1, "", "", "")


def test_encoder_output_is_the_documented_layout() -> None:
    encoder = MsgpackEncoder(DEFAULT)

    def body(frame: Frame) -> Any:
        data = wire(frame)
        assert struct.unpack(">I", data[:4])[0] == len(data) - 4
        return msgpack.unpackb(data[4:], raw=False)

    assert body(encoder.event("e", {"a": 1})) == [0, "e", {"a": 1}]
    assert body(encoder.request("add", [1, 2], 5)) == [1, "add", [1, 2], 5]
    assert body(encoder.reply(5, 3)) == [2, 5, 3]
    assert body(encoder.error_reply(5, "ValueError", "bad", "tb")) == [
        3,
        5,
        {"type": "ValueError", "message": "bad", "traceback": "tb"},
    ]
    assert body(encoder.hello("w")) == [4, {"v": 1, "id": "w"}]
    assert body(encoder.welcome("s", x=1)) == [5, {"v": 1, "id": "s", "x": 1}]
    # Any extra key, even one named like a parameter (found by hypothesis: ``self``).
    assert body(encoder.hello("w", self=1, actor_id=2)) == [
        4,
        {"v": 1, "id": "w", "self": 1, "actor_id": 2},
    ]
    assert body(encoder.reject("busy", "full")) == [6, {"reason": "busy", "message": "full"}]
    # bytes stay bytes (bin), str stays str: the packer uses the bin type.
    assert wire(encoder.event("e", b"\x00")) == b"\x00\x00\x00\x07\x93\x00\xa1e\xc4\x01\x00"


def test_request_id_bounds() -> None:
    assert norm(decode_one(pack([2, 0, None]))) == ("reply", 0, None)
    assert norm(decode_one(pack([2, 2**63 - 1, None]))) == ("reply", 2**63 - 1, None)
    with pytest.raises(DecodeError):
        decode_one(pack([2, 2**63, None]))


# --- hostile bytes: the decoder property ------------------------------------------------------

SMALL = Limits(max_frame_size=2048, max_handshake_size=256, max_container_len=16, max_depth=8)

wild_scalars = (
    scalars
    | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=4))
    | st.builds(msgpack.Timestamp, st.integers(0, 2**32 - 1), st.integers(0, 999_999_999))
)
wild_keys = (
    st.text(max_size=4) | st.binary(max_size=4) | st.integers(-(2**63), 2**64 - 1) | st.booleans()
)
# Anything msgpack can pack, including what the protocol forbids (int keys, ext types, depth).
wild_values = st.recursive(
    wild_scalars,
    lambda inner: st.lists(inner, max_size=20) | st.dictionaries(wild_keys, inner, max_size=20),
    max_leaves=40,
)
envelopes = st.lists(
    st.integers(-2, 11) | st.booleans() | st.text(max_size=4) | wild_values, max_size=6
)
valid_frames = messages().map(lambda spec: encode(MsgpackEncoder(DEFAULT), spec))


@st.composite
def flipped(draw: st.DrawFn) -> bytes:
    frame = bytearray(draw(valid_frames))
    at = draw(st.integers(0, len(frame) - 1))
    frame[at] = draw(st.integers(0, 255))
    return bytes(frame)


pieces = st.one_of(
    st.binary(max_size=40),  # garbage, often a random header
    st.binary(min_size=1, max_size=40).map(framed),  # a right header over garbage
    st.builds(struct.pack, st.just(">I"), st.integers(0, 2**32 - 1)),  # a lone header
    envelopes.map(lambda e: framed(pack(e))),  # msgpack envelopes of every shape
    wild_values.map(lambda v: framed(pack([0, "e", v]))),
    valid_frames,
    flipped(),
)


def feed_all(chunks: list[bytes], limits: Limits) -> tuple[list[Message], ProtocolError | None]:
    """Feed ``chunks`` one by one (finishing the handshake when a hello comes out). Return the
    messages and the error that broke the decoder, if one did."""
    dec = decoder(limits, handshake_done=False)
    got: list[Message] = []
    error: ProtocolError | None = None
    for chunk in chunks:
        try:
            out = dec.feed(chunk)
            while out:
                for message in out:
                    assert_valid(message, limits)
                got += out
                if type(out[-1]) is Hello:
                    dec.handshake_done()
                out = dec.feed() if isinstance(out[-1], HANDSHAKE_KINDS) else []
        except ProtocolError as exc:
            error = exc
            break
        # Anything else escapes and fails the test: only ProtocolError subclasses are allowed.
    if error is not None:
        # Broken for good: more input, even valid input, raises again and yields nothing.
        for more in (b"", chunks[-1], framed(pack([0, "e", 1]))):
            with pytest.raises(ProtocolError):
                dec.feed(more)
        assert dec.buffered == 0
    return got, error


@PROPERTY
@given(st.lists(pieces, max_size=6), st.data())
def test_arbitrary_bytes_give_valid_messages_or_a_protocol_error(
    parts: list[bytes], data: st.DataObject
) -> None:
    stream = b"".join(parts)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=10))
    chunked, chunked_error = feed_all(split(stream, cuts), SMALL)
    bytewise, bytewise_error = feed_all([stream[i : i + 1] for i in range(len(stream))], SMALL)
    # However the stream is split, the same error (or none) ends it...
    assert type(chunked_error) is type(bytewise_error)
    # ...and the same messages come before it (a chunk that fails yields none of its messages).
    assert [norm(m) for m in chunked] == [norm(m) for m in bytewise][: len(chunked)]
    if chunked_error is None:
        assert len(chunked) == len(bytewise)


@PROPERTY
@given(st.binary(max_size=300), st.data())
def test_random_bytes_after_the_handshake(garbage: bytes, data: st.DataObject) -> None:
    cuts = data.draw(st.lists(st.integers(0, len(garbage)), max_size=5))
    dec = decoder(SMALL)
    try:
        for chunk in split(garbage, cuts):
            for message in drain(dec, chunk):
                assert_valid(message, SMALL)
    except ProtocolError:
        with pytest.raises(ProtocolError):
            dec.feed(framed(pack([0, "e", 1])))


@PROPERTY
@given(envelopes)
def test_any_envelope_is_a_valid_message_or_a_decode_error(envelope: list[Any]) -> None:
    try:
        message = decode_one(pack(envelope), SMALL)
    except DecodeError:
        return
    assert_valid(message, SMALL)


def test_error_is_sticky_and_the_buffer_dropped() -> None:
    dec = decoder()
    good = framed(pack([0, "e", 1]))
    with pytest.raises(DecodeError) as first:
        dec.feed(good + framed(b"\xc1") + good)
    assert dec.buffered == 0
    for _ in range(3):
        with pytest.raises(DecodeError) as again:
            dec.feed(good)
        assert again.value is first.value


MSGPACK_INT = st.integers(-(2**63), 2**64 - 1)  # what msgpack can pack


@PROPERTY
@given(
    st.one_of(st.just(""), st.text(max_size=8)),
    st.one_of(
        st.none(),
        st.integers(-5, 5),
        st.text(max_size=70),
        st.dictionaries(
            st.text(max_size=3),
            MSGPACK_INT | st.text(max_size=40),
            max_size=20,
        ),
        st.recursive(MSGPACK_INT, lambda inner: st.lists(inner, max_size=3), max_leaves=80),
    ),
    st.one_of(
        st.nothing(),
        st.none(),
        MSGPACK_INT,
        st.sampled_from([0, 1, 2**53 - 1, 2**53, True, 1.0, "1"]),
    ).map(lambda seq: [seq])
    | st.just([]),
    st.integers(1, 70),
)
def test_events_decode_as_parse_body_makes_them(
    name: str, data: Any, seq: list[Any], max_depth: int
) -> None:
    """Small events are made on a fast path of the decoder: the same events, seqs and errors
    as parse_body and the depth check (``_message``, the path of every other message) give,
    for any name, data and seq."""
    limits = Limits(max_depth=max_depth)
    envelope = [0, name, data, *seq]
    body = pack(envelope)
    try:
        expected: Any = decoder(limits)._message(envelope, len(body))
    except DecodeError:
        expected = DecodeError
    try:
        (message,) = decoder(limits).feed(framed(body))
    except DecodeError:
        assert expected is DecodeError
        return
    assert expected is not DecodeError
    assert type(message) is Event
    assert (message.event, message.data, message.seq) == (
        expected.event,
        expected.data,
        expected.seq,
    )


def test_decoders_of_one_thread_keep_apart() -> None:
    """The decoders of a thread share one unpacker for small bodies: whatever one of them is
    in the middle of (a frame half in, a run of small frames cut by a large one, an error)
    never shows in what another decodes."""
    small = [framed(pack([0, f"e{i}", {"i": i, "s": "x" * i}])) for i in range(50)]
    large = framed(pack([1, "big", b"y" * 200_000, 7]))
    first, second, third = decoder(), decoder(), decoder()
    stream = b"".join(small[:20]) + large + b"".join(small[20:])
    cut = len(b"".join(small[:10])) + 5  # inside the 11th frame
    got_first = first.feed(stream[:cut])
    got_second = second.feed(b"".join(small))
    got_first += first.feed(stream[cut : cut + 1000])  # the run ends inside the large frame
    with pytest.raises(DecodeError):
        third.feed(small[0] + framed(pack([0, "e", 1]) + pack([0, "e", 2])) + small[1])
    got_second += second.feed(b"".join(small))
    got_first += first.feed(stream[cut + 1000 :])
    events = [norm(message) for message in got_first if type(message) is Event]
    assert events == [norm(message) for message in decoder().feed(b"".join(small))]
    assert [type(message) for message in got_first].count(Request) == 1
    assert [norm(message) for message in got_second] == 2 * events


# --- frame boundaries -------------------------------------------------------------------------


def body_of_size(size: int) -> bytes:
    """msgpack of ``[0, "e", b"..."]`` exactly ``size`` bytes long."""
    pad = size
    for _ in range(4):
        body = pack([0, "e", b"x" * pad])
        if len(body) == size:
            return body
        pad -= len(body) - size
    raise AssertionError(f"no body of exactly {size} bytes")


@pytest.mark.parametrize("limit", [1024, 65536, 100_000])
def test_frame_of_exactly_the_limit_is_accepted(limit: int) -> None:
    body = body_of_size(limit)
    (message,) = decoder(Limits(max_frame_size=limit)).feed(framed(body))
    assert type(message) is Event
    assert message.data == msgpack.unpackb(body)[2]


@pytest.mark.parametrize("limit", [1024, 65536, DEFAULT.max_frame_size, 2**32 - 2])
def test_limit_plus_one_is_rejected_from_the_header_alone(limit: int) -> None:
    dec = decoder(Limits(max_frame_size=limit))
    with pytest.raises(FrameTooLargeError) as info:
        dec.feed(struct.pack(">I", limit + 1))
    assert (info.value.size, info.value.limit) == (limit + 1, limit)
    assert "max_frame_size" in str(info.value)


def test_default_limit_is_64_mib_of_payload_and_64_kib_around_it() -> None:
    limit = 64 * MiB + 64 * 1024
    assert DEFAULT.max_frame_size == limit
    dec = decoder()
    assert dec.feed(struct.pack(">I", limit)) == []  # allowed: waits for the body
    assert dec.missing() == limit
    with pytest.raises(FrameTooLargeError):
        decoder().feed(struct.pack(">I", limit + 1))


def test_zero_length_frame_is_rejected() -> None:
    with pytest.raises(DecodeError, match="empty frame"):
        decoder().feed(b"\x00\x00\x00\x00")
    with pytest.raises(DecodeError):
        decoder().feed(framed(pack([0, "e", 1])) + b"\x00\x00\x00\x00")


def traced_peak(action: Any) -> int:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        action()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_4_gib_header_is_rejected_without_allocating() -> None:
    dec = decoder()

    def feed() -> None:
        with pytest.raises(FrameTooLargeError):
            dec.feed(b"\xff\xff\xff\xff")

    assert traced_peak(feed) < 64 * 1024


def test_4_gib_header_under_a_4_gib_limit_waits_without_allocating() -> None:
    dec = decoder(Limits(max_frame_size=2**32 - 1))
    peak = traced_peak(lambda: dec.feed(b"\xff\xff\xff\xff" + b"\x93" * 1000))
    assert peak < 64 * 1024
    assert dec.missing() == 2**32 - 1 + 4 - 1004
    assert dec.buffered == 1004


@pytest.mark.parametrize(
    "claim",
    [
        b"\xdd\xff\xff\xff\xff",  # array32 of 2**32-1 items
        b"\xdf\xff\xff\xff\xff",  # map32 of 2**32-1 pairs
        b"\xdb\xff\xff\xff\xff",  # str32 of 4 GiB
        b"\xc6\xff\xff\xff\xff",  # bin32 of 4 GiB
        b"\xc9\xff\xff\xff\xff\x01",  # ext32 of 4 GiB
    ],
)
def test_huge_length_claims_inside_a_frame_allocate_nothing(claim: bytes) -> None:
    for body in (claim, event_body(claim)):
        dec = decoder()

        def feed(dec: MsgpackDecoder = dec, body: bytes = body) -> None:
            with pytest.raises(DecodeError):
                dec.feed(framed(body))

        assert traced_peak(feed) < 64 * 1024


# --- msgpack bombs and the value limits -------------------------------------------------------


def test_nesting_1025_is_rejected() -> None:
    with pytest.raises(DecodeError):
        decoder().feed(framed(event_body(nested_lists(1025))))
    with pytest.raises(DecodeError):
        decoder().feed(framed(b"\x91" * 1025 + b"\xc0"))


def test_depth_limit_boundary() -> None:
    # The envelope is one level: data nested 63 deep makes 64 in all, the default limit.
    (message,) = decoder().feed(framed(event_body(nested_lists(63))))
    assert depth(message.data) == 63
    with pytest.raises(DecodeError, match="max_depth=64"):
        decoder().feed(framed(event_body(nested_lists(64))))


def nest(levels: int, shape: str) -> Any:
    """Data ``levels`` containers deep: arrays or maps in each other, or the deepest of them
    last in a long array or map (long: more items than are checked item by item)."""
    if levels == 0:
        return 1
    inner = nest(levels - 1, shape)
    if shape == "arrays":
        return [inner]
    if shape == "maps":
        return {"k": inner}
    if shape == "long array":
        return [0] * 20 + [inner]
    return {str(n): n for n in range(20)} | {"k": inner}  # a long map


@pytest.mark.parametrize("shape", ["arrays", "maps", "long array", "long map"])
@pytest.mark.parametrize(
    "path", ["event alone", "event in a run", "request", "reply", "batch", "answers in place"]
)
def test_the_depth_limit_holds_on_every_path(path: str, shape: str) -> None:
    """Data as deep as max_depth allows (the envelope is a level, a batch's array another) is
    decoded, one level more refused, whichever way its frame is decoded: alone, in a run of
    small frames, in a batch, or in place (replies and requests)."""
    levels = 62 if path == "batch" else 63
    for data, within in ((nest(levels, shape), True), (nest(levels + 1, shape), False)):
        body = {
            "reply": [2, 1, data],
            "request": [1, "e", data, 1],
            "answers in place": [2, 1, data],
            "batch": [14, ["e", data]],
        }.get(path, [0, "e", data])
        stream = framed(pack(body))
        if path == "event in a run":
            stream += framed(pack([0, "e", 2]))
        receiver = decoder()
        receiver.batch_limit = CODEC.batch_limit(DEFAULT)
        if path == "answers in place":
            got = receiver.in_place(stream + framed(pack([2, 2, 2])), True)
            assert (got is not None) is within
            if got is not None:
                assert norm(got[0]) == ("reply", 1, data)
            continue
        if not within:
            with pytest.raises(DecodeError, match="max_depth"):
                receiver.feed(stream)
            continue
        got = receiver.feed(stream)
        assert got[0].data == data  # type: ignore[union-attr]


def test_numpy_values_pass_the_depth_checks_as_what_they_are() -> None:
    """A numpy value is data as any other: an array or a scalar, decoded, whatever the frame's
    size (a long name makes it larger than max_depth, and it takes the depth checks)."""
    import numpy as np

    encoder = MsgpackEncoder(DEFAULT)
    name = "n" * 80
    for value in (np.float64(1.5), np.int8(3), np.array(2.5), np.arange(3), np.zeros((2, 2))):
        stream = wire(encoder.event(name, value)) + wire(encoder.request(name, value, 1))
        stream += wire(encoder.reply(1, value)) + wire(encoder.event(name, 1))
        got = decoder().feed(stream)
        assert [type(message).__name__ for message in got] == [
            "Event",
            "Request",
            "Reply",
            "Event",
        ]
        for message in got[:3]:
            assert np.array_equal(message.data, value)  # type: ignore[union-attr]
        (reply,) = decoder().in_place(wire(encoder.reply(1, value)), True) or [None]
        assert np.array_equal(reply.data, value)  # type: ignore[union-attr]


@settings(max_examples=60, deadline=None)
@given(st.integers(65, 1000))
def test_nesting_65_to_1000_is_rejected_by_the_depth_limit(levels: int) -> None:
    for data in (nested_lists(levels - 1), b"\x81\xa1k" * (levels - 1) + b"\xc0"):
        with pytest.raises(DecodeError, match="max_depth"):
            decoder().feed(framed(event_body(data)))


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 90), st.integers(1, 80))
def test_depth_limit_is_exact_for_any_setting(levels: int, max_depth: int) -> None:
    limits = Limits(max_depth=max_depth)
    body = event_body(nested_lists(levels - 1) if levels > 1 else b"\xc0")
    if levels <= max_depth:
        assert depth(decode_one(body, limits).data) == levels - 1
    else:
        with pytest.raises(DecodeError):
            decode_one(body, limits)


def test_container_length_limit() -> None:
    n = DEFAULT.max_container_len
    assert n == 1 << 20
    roomy = Limits(max_decoded_objects=2 * n)  # the object budget would refuse first
    message = decode_one(event_body(b"\xdd" + struct.pack(">I", n) + b"\xc0" * n), roomy)
    assert len(message.data) == n
    with pytest.raises(DecodeError, match="max_container_len"):
        decode_one(event_body(b"\xdd" + struct.pack(">I", n + 1) + b"\xc0" * (n + 1)), roomy)
    small = Limits(max_container_len=3)
    assert decode_one(pack([0, "e", {"a": 1, "b": 2, "c": 3}]), small)
    with pytest.raises(DecodeError, match="a map of 4 items, more than max_container_len=3"):
        decode_one(pack([0, "e", {"a": 1, "b": 2, "c": 3, "d": 4}]), small)
    with pytest.raises(DecodeError):  # the envelope itself is a container
        decode_one(pack([0, "e", 1, 2]), small)


@pytest.mark.parametrize(
    ("name", "body"),
    [
        ("invalid UTF-8 in the event name", b"\x93\x00\xa2\xff\xfe\xc0"),
        ("invalid UTF-8 in the data", event_body(b"\xa2\xc3\x28")),
        ("lone surrogate encoded in UTF-8", event_body(b"\xa3\xed\xa0\x80")),
        ("0xC1, never used", event_body(b"\xc1")),
        ("0xC1 as the whole body", b"\xc1"),
        ("trailing bytes after the value", pack([0, "e", 1]) + b"\xc0"),
        ("two values in one frame", pack([0, "e", 1]) + pack([0, "e", 2])),
        ("truncated value", pack([0, "e", "hello"])[:-2]),
        ("int map key", event_body(b"\x81\x01\x02")),
        ("negative int map key", event_body(b"\x81\xff\x02")),
        ("nil map key", event_body(b"\x81\xc0\x02")),
        ("bool map key", event_body(b"\x81\xc3\x02")),
        ("float map key", event_body(b"\x81\xcb" + struct.pack(">d", 1.5) + b"\x02")),
        ("array map key", event_body(b"\x81\x90\x02")),
        ("unknown ext type", event_body(b"\xd4\x05a")),
        ("ext type 0 (ext8, empty)", event_body(b"\xc7\x00\x00")),
        ("negative ext type", event_body(b"\xd4\x80a")),
        ("timestamp ext of 3 bytes", event_body(b"\xc7\x03\xff\x00\x00\x00")),
        ("timestamp ext of 0 bytes", event_body(b"\xc7\x00\xff")),
        ("timestamp with 10**9 ns", event_body(b"\xd7\xff" + struct.pack(">Q", 10**9 << 34))),
        ("ext in a map key", event_body(b"\x81\xd4\x05a\x02")),
        ("ext in a hello", b"\x92\x04\x82\xa1v\x01\xa2id\xd4\x05a"),
    ],
)
def test_bad_msgpack_is_a_decode_error(name: str, body: bytes) -> None:
    dec = decoder()
    with pytest.raises(DecodeError) as caught:
        dec.feed(framed(body))
    assert not str(caught.value).endswith(": "), "it says what was wrong"  # (0xC1 did not)
    with pytest.raises(DecodeError):
        dec.feed(framed(pack([0, "e", 1])))


@pytest.mark.parametrize(
    "raw",
    [
        b"\xd6\xff\x00\x00\x00\x01",  # timestamp 32: seconds
        b"\xd7\xff" + struct.pack(">Q", (5 << 34) | 1),  # timestamp 64: ns << 34 | seconds
        b"\xc7\x0c\xff" + struct.pack(">Iq", 5, -1),  # timestamp 96: ns, signed seconds
    ],
)
def test_timestamp_extension_passes_as_msgpack_timestamp(raw: bytes) -> None:
    # msgpack decodes extension -1 itself, without asking ext_hook: the one extension that
    # reaches handlers (as msgpack.Timestamp). The encoder sends it too, for symmetry.
    message = decode_one(event_body(raw))
    assert type(message.data) is msgpack.Timestamp
    frame = MsgpackEncoder(DEFAULT).event("e", [message.data])
    assert norm(decoder().feed(wire(frame))[0]) == ("event", "e", [message.data])


def test_amplification_is_bounded_by_the_container_limit() -> None:
    # A small frame is not counted (it holds at most one object per byte) but still obeys
    # the container limit.
    limits = Limits(max_frame_size=MiB, max_container_len=1000)
    body = event_body(b"\xdc" + struct.pack(">H", 50_000) + b"\x80" * 50_000)
    with pytest.raises(DecodeError, match="array of 50000 items, more than max_container_len=1000"):
        decode_one(body, limits)


# --- the object budget: what one frame may cost once decoded -----------------------------------


def objects_in(value: Any) -> int:
    """msgpack objects in ``value``: itself, and everything in it (map keys too)."""
    if isinstance(value, msgpack.ExtType):  # a namedtuple, but one object on the wire
        return 1
    if isinstance(value, list | tuple):
        return 1 + sum(map(objects_in, value))
    if isinstance(value, dict):
        return 1 + sum(objects_in(k) + objects_in(v) for k, v in value.items())
    return 1


def empty_maps(count: int) -> bytes:
    """msgpack of an array of ``count`` empty maps: 1 byte each, ~72 decoded (the worst)."""
    return b"\xdd" + struct.pack(">I", count) + b"\x80" * count


def string_chain(levels: int, per_level: int) -> bytes:
    """``["ab", ..., ["ab", ..., [...]]]``: scalars in containers that are still open when
    the innermost one ends (a budget counted as containers complete would miss them)."""
    data = b"\x90"
    for _ in range(levels):
        data = b"\xdc" + struct.pack(">H", per_level + 1) + b"\xa2ab" * per_level + data
    return data


def test_default_object_budget() -> None:
    assert DEFAULT.max_decoded_objects == 131_072


def test_object_budget_boundary_on_a_large_frame() -> None:
    # [0, "e", [{} * n]]: 1 envelope + 2 items + 1 array + n maps = n + 4 objects.
    n = DEFAULT.max_decoded_objects - 4
    (message,) = decoder().feed(framed(event_body(empty_maps(n))))
    assert len(message.data) == n
    with pytest.raises(DecodeError, match="max_decoded_objects=131072"):
        decoder().feed(framed(event_body(empty_maps(n + 1))))


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("1 MiB of empty maps", empty_maps(MiB - 16)),
        ("lists of empty maps", pack([[{}] * 1000] * 200)),
        ("scalars in open containers", string_chain(60, 2500)),
        ("maps count keys and values", pack([{str(i): i for i in range(1000)}] * 70)),
    ],
)
def test_a_frame_over_the_object_budget_allocates_nothing(name: str, data: bytes) -> None:
    frame = framed(event_body(data))
    dec = decoder()

    def feed() -> None:
        with pytest.raises(DecodeError, match="max_decoded_objects"):
            dec.feed(frame)

    # Refused from the bytes alone: what decoding allocates here is the decoder's own buffer.
    assert traced_peak(feed) < len(frame) + 64 * 1024


@PROPERTY
@given(wild_values, st.integers(1, 60))
def test_check_objects_counts_exactly(value: Any, budget: int) -> None:
    body = memoryview(pack(value))
    limits = Limits(max_decoded_objects=budget, max_depth=10_000, max_container_len=10_000)
    if objects_in(value) <= budget:
        check_objects(body, limits)
    else:
        with pytest.raises(DecodeError, match="max_decoded_objects"):
            check_objects(body, limits)


def test_encoder_refuses_a_frame_over_the_object_budget() -> None:
    encoder = MsgpackEncoder(DEFAULT)
    n = DEFAULT.max_decoded_objects - 4
    frame = encoder.event("e", [{}] * n)
    assert len(decoder().feed(wire(frame))[0].data) == n
    for make in (
        lambda data: encoder.event("e", data),
        lambda data: encoder.request("e", data, 1),
        lambda data: encoder.reply(1, data),
    ):
        with pytest.raises(EncodeError, match="max_decoded_objects=131072"):
            make([{}] * (n + 1))
    assert norm(decoder().feed(wire(encoder.event("e", "fine")))[0]) == ("event", "e", "fine")


# --- envelope types ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "envelope",
    [
        5,
        "event",
        b"\x00",
        None,
        1.5,
        {"t": 0, "event": "e"},
        [],
        [99, "e", 1],
        [127, {"v": 1, "id": "a"}],
        [255, "e", 1, 2],
        [-1, "e", 1],
        [2**32, "e", 1],
        ["0", "e", 1],
        [0.0, "e", 1],
        [None, "e", 1],
        [[0], "e", 1],
        [False, "e", 1],  # False == 0 in Python, but a bool is not a kind
        [True, "e", 1, 5],
        [0, "", 1],
        [0, b"e", 1],
        [0, 5, 1],
        [0, None, 1],
        [0, ["e"], 1],
        [0, "e"],  # short: no data
        [1, "e", 1],  # short: no id
        [1, "", 1, 5],
        [1, "e", 1, -1],
        [1, "e", 1, 2**63],
        [1, "e", 1, 2**64 - 1],
        [1, "e", 1, True],
        [1, "e", 1, False],
        [1, "e", 1, "5"],
        [1, "e", 1, 5.0],
        [1, "e", 1, None],
        [2, -1, None],
        [2, "1", None],
        [2, True, None],
        [2, 1],
        [3, 1, "error text"],
        [3, 1, {"type": 5}],
        [3, 1, {"message": None}],
        [3, 1, {"traceback": b"tb"}],
        [3, -1, {}],
        [4],
        [4, ["v", 1]],
        [4, {"id": "a"}],
        [4, {"v": "1", "id": "a"}],
        [4, {"v": True, "id": "a"}],
        [4, {"v": 1.0, "id": "a"}],
        [4, {"v": 1}],
        [4, {"v": 1, "id": ""}],
        [4, {"v": 1, "id": 5}],
        [4, {"v": 1, "id": b"a"}],
        [5, {"v": 1}],
        [5, "welcome"],
        [6, {}],
        [6, {"reason": ""}],
        [6, {"reason": 1}],
        [6, "busy"],
    ],
    ids=stable_id,
)
def test_bad_envelope_is_a_decode_error(envelope: Any) -> None:
    with pytest.raises(DecodeError):
        decode_one(pack(envelope))


def test_2_to_the_64_cannot_even_be_packed() -> None:
    # msgpack integers stop at 2**64-1: a request id of 2**64 cannot reach the wire at all.
    with pytest.raises(OverflowError):
        pack([1, "e", None, 2**64])


# --- the handshake ----------------------------------------------------------------------------


def test_frames_before_the_handshake_are_held_to_64_kib() -> None:
    assert DEFAULT.max_handshake_size == 64 * 1024
    big = framed(body_of_size(64 * 1024 + 1))
    with pytest.raises(FrameTooLargeError) as info:
        decoder(handshake_done=False).feed(big[:4])
    assert info.value.limit == 64 * 1024
    exact = framed(body_of_size(64 * 1024))
    assert len(decoder(handshake_done=False).feed(exact)) == 1
    assert len(decoder(handshake_done=True).feed(big)) == 1


def test_decoding_stops_after_a_handshake_message() -> None:
    encoder = MsgpackEncoder(DEFAULT)
    hello = wire(encoder.hello("client"))
    big_event = wire(encoder.event("e", b"x" * 100_000))  # over the handshake limit
    small_event = wire(encoder.event("f", 1))
    dec = decoder(handshake_done=False)
    # The hello comes out alone; the big frame behind it is not even looked at yet.
    assert dec.feed(hello + big_event + small_event) == [Hello(1, "client", {})]
    assert dec.buffered == len(big_event) + len(small_event)
    dec.handshake_done()
    got = dec.feed()
    assert [norm(m) for m in got] == [("event", "e", b"x" * 100_000), ("event", "f", 1)]
    assert dec.buffered == 0


def test_without_handshake_done_the_next_big_frame_is_refused() -> None:
    encoder = MsgpackEncoder(DEFAULT)
    dec = decoder(handshake_done=False)
    stream = wire(encoder.hello("c")) + wire(encoder.event("e", b"x" * 100_000))
    assert dec.feed(stream) == [Hello(1, "c", {})]
    with pytest.raises(FrameTooLargeError):
        dec.feed()


@pytest.mark.parametrize("method", ["hello", "welcome", "reject"])
def test_every_handshake_kind_stops_decoding(method: str) -> None:
    encoder = MsgpackEncoder(DEFAULT)
    args = ("busy", "") if method == "reject" else ("a",)
    first = wire(getattr(encoder, method)(*args))
    second = wire(encoder.event("e", 1))
    dec = decoder()
    assert len(dec.feed(first + second + first)) == 1
    assert len(dec.feed()) == 2  # the event, then the next handshake message stops it again
    assert dec.buffered == 0


# --- the encoder ------------------------------------------------------------------------------


class Unencodable:
    pass


@pytest.mark.parametrize(
    "data",
    [
        Unencodable(),
        {1, 2},
        datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC),
        2**64,
        -(2**63) - 1,
        "\ud800",  # a lone surrogate has no UTF-8 form
        [1, [2, object()]],
        {"k": Unencodable()},
    ],
    ids=stable_id,
)
def test_unencodable_data_raises_encode_error_and_the_encoder_recovers(data: Any) -> None:
    encoder = MsgpackEncoder(DEFAULT)
    for method, args in (("event", ("e", data)), ("request", ("e", data, 1)), ("reply", (1, data))):
        with pytest.raises(EncodeError) as info:
            getattr(encoder, method)(*args)
        assert isinstance(info.value, TypeError)  # EncodeError is also a TypeError
    assert norm(decode_one(wire(encoder.event("e", [1]))[4:])) == ("event", "e", [1])


@pytest.mark.parametrize(
    ("data", "why"),
    [
        ({1: "a"}, "key"),
        ({"a": {None: 1}}, "key"),
        ({(1, 2): 3}, "key"),
        ([msgpack.ExtType(5, b"x")], "extension"),
        (msgpack.ExtType(0, b""), "extension"),
        ([[[[[[[[[[1]]]]]]]]]], "deep"),
        ({"a": [{"b": [[[[[[[1]]]]]]]}]}, "deep"),
        (list(range(17)), "items"),
        ({str(i): i for i in range(17)}, "items"),
    ],
    ids=stable_id,
)
def test_encoder_refuses_what_the_peer_would_refuse(data: Any, why: str) -> None:
    # Otherwise the peer would close the whole connection over one bad value.
    limits = Limits(max_container_len=16, max_depth=10)
    encoder = MsgpackEncoder(limits)
    with pytest.raises(EncodeError, match=why):
        encoder.event("e", data)
    with pytest.raises(EncodeError, match=why):
        encoder.hello("a", extra=data)
    frame = wire(encoder.event("e", "fine"))
    assert norm(decoder(limits).feed(frame)[0]) == ("event", "e", "fine")


def test_encoder_accepts_exactly_the_depth_and_length_limits() -> None:
    limits = Limits(max_container_len=16, max_depth=10)
    encoder = MsgpackEncoder(limits)
    deepest: Any = []
    for _ in range(8):
        deepest = [deepest]  # 9 levels of data + the envelope = 10
    wide = {str(i): list(range(16)) for i in range(16)}
    for data in (deepest, wide, tuple(range(16))):
        (message,) = decoder(limits).feed(wire(encoder.event("e", data)))
        assert norm(message) == ("event", "e", data if type(data) is not tuple else list(data))


wild_data = st.recursive(
    wild_scalars,
    lambda inner: (
        st.lists(inner, max_size=6)
        | st.lists(inner, max_size=6).map(tuple)
        | st.dictionaries(wild_keys | st.tuples(st.integers(0, 9)), inner, max_size=6)
    ),
    max_leaves=40,
)


def plain(value: Any) -> Any:
    """What a value looks like after a round trip: tuples become lists."""
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


@PROPERTY
@given(wild_data)
def test_what_the_encoder_accepts_the_decoder_accepts(data: Any) -> None:
    limits = Limits(max_container_len=8, max_depth=6)
    encoder = MsgpackEncoder(limits)
    try:
        frame = encoder.event("e", data)
    except EncodeError:
        # Then the decoder would have refused it too.
        try:
            body = pack([0, "e", data])
        except (TypeError, ValueError, OverflowError):
            return  # not msgpack at all
        with pytest.raises(DecodeError):
            decoder(limits).feed(framed(body))
        return
    (message,) = decoder(limits).feed(wire(frame))
    assert norm(message) == ("event", "e", plain(data))


@PROPERTY
@given(wild_data)
def test_encoder_and_decoder_count_objects_alike(data: Any) -> None:
    try:
        body = pack([0, "e", data])
    except (TypeError, ValueError, OverflowError):
        return  # not msgpack at all
    needed = objects_in([0, "e", data])
    exact = Limits(max_decoded_objects=needed)
    short = Limits(max_decoded_objects=needed - 1)
    try:
        frame = MsgpackEncoder(exact).event("e", data)
    except EncodeError:
        return  # refused for another limit (covered above)
    assert norm(decoder(exact).feed(wire(frame))[0]) == ("event", "e", plain(data))
    for make in (
        lambda encoder: encoder.event("e", data),
        lambda encoder: encoder.request("e", data, 1),
        lambda encoder: encoder.reply(1, data),
    ):
        with pytest.raises(EncodeError, match="max_decoded_objects"):
            make(MsgpackEncoder(short))
    with pytest.raises(DecodeError, match="max_decoded_objects"):
        decoder(short).feed(framed(body))


def test_default_hook() -> None:
    def default(value: Any) -> Any:
        if isinstance(value, set):
            return sorted(value)
        raise TypeError(f"cannot encode {type(value).__name__}")

    encoder = MsgpackEncoder(DEFAULT, default=default)
    (message,) = decoder().feed(wire(encoder.event("e", {"s": {3, 1, 2}})))
    assert norm(message) == ("event", "e", {"s": [1, 2, 3]})
    with pytest.raises(EncodeError):
        encoder.event("e", Unencodable())
    assert len(decoder().feed(wire(encoder.event("e", "ok")))) == 1


@pytest.mark.parametrize(
    "data", [b"x" * 2000, "x" * 2000, ["x" * 100] * 20, {"k": "x" * 2000}, ("x" * 2000,)]
)
@pytest.mark.parametrize("kind", ["event", "sequenced event", "request", "reply", "item"])
def test_too_large_frame_raises_and_the_encoder_recovers(data: Any, kind: str) -> None:
    """Data over ``max_frame_size`` (well under the object budget), of each shape a path of
    its own packs: FrameTooLargeError, whatever the envelope; too large for this sender's
    batches, even to a peer that takes larger ones (the event then goes to event(), which
    raises)."""
    limits = Limits(max_frame_size=1024)
    encoder = MsgpackEncoder(limits)
    if kind == "item":
        batches = CODEC.event_batches(32 * 1024, limits)
        assert batches is not None
        item = encoder.event_item("e", data)
        assert item is not None
        assert len(batches.prefix) + len(item) > batches.max_bytes
        return
    make = {
        "event": lambda: encoder.event("e", data),
        "sequenced event": lambda: encoder.sequenced_event("e", data, 3),
        "request": lambda: encoder.request("e", data, 3),
        "reply": lambda: encoder.reply(3, data),
    }[kind]
    with pytest.raises(FrameTooLargeError) as info:
        make()
    assert info.value.limit == 1024
    assert info.value.size > 2000
    body = body_of_size(1024)
    frame = encoder.event("e", msgpack.unpackb(body)[2])
    assert frame_size(frame) == 1028
    assert norm(decoder(limits).feed(wire(frame))[0])[0] == "event"


def test_large_bodies_come_out_apart_from_their_header() -> None:
    encoder = MsgpackEncoder(DEFAULT)
    below = encoder.event("e", msgpack.unpackb(body_of_size(SEPARATE_BODY_AT - 1))[2])
    assert isinstance(below, bytes)
    assert frame_size(below) == SEPARATE_BODY_AT - 1 + 4
    at = encoder.event("e", msgpack.unpackb(body_of_size(SEPARATE_BODY_AT))[2])
    assert isinstance(at, tuple)
    head, payload = at
    # The large payload is its own piece (never copied to prepend the header); the small head
    # carries the length and the envelope.
    assert head.startswith(struct.pack(">I", SEPARATE_BODY_AT))
    assert len(head) < 16
    assert len(payload) > SEPARATE_BODY_AT - 16
    assert b"".join(at) == struct.pack(">I", SEPARATE_BODY_AT) + body_of_size(SEPARATE_BODY_AT)
    assert frame_size(at) == SEPARATE_BODY_AT + 4
    big = b"\x01" * (5 * MiB)
    frame = encoder.reply(3, big)
    assert isinstance(frame, tuple)
    (message,) = decoder().feed(b"".join(frame))
    assert norm(message) == ("reply", 3, big)


@PROPERTY
@given(values, st.text(min_size=1, max_size=40), st.integers(0, MAX_REQUEST_ID))
def test_frames_are_what_msgpack_packs(data: Any, name: str, number: int) -> None:
    """Events, requests and replies (their heads kept per name, plain data packed at once,
    anything else checked first): byte for byte the msgpack of their envelope."""
    encoder = MsgpackEncoder(DEFAULT)
    for _ in range(2):  # (the second time from the kept heads)
        assert wire(encoder.event(name, data)) == framed(pack([0, name, data]))
        assert wire(encoder.sequenced_event(name, data, number or 1)) == framed(
            pack([0, name, data, number or 1])
        )
        assert wire(encoder.request(name, data, number)) == framed(pack([1, name, data, number]))
        assert wire(encoder.reply(number, data)) == framed(pack([2, number, data]))


@pytest.mark.parametrize("kind", ["event", "sequenced event", "request", "reply"])
def test_the_encoder_refuses_exactly_what_the_decoder_would(kind: str) -> None:
    """At the object budget's boundary, whatever the envelope around the data (a trailing
    seq or id is one object more): what the encoder sends, the decoder takes; one object
    more is an EncodeError, not a broken connection at the peer."""
    limits = Limits(max_decoded_objects=100)
    encoder = MsgpackEncoder(limits)
    make = {
        "event": lambda data: encoder.event("e", data),
        "sequenced event": lambda data: encoder.sequenced_event("e", data, 3),
        "request": lambda data: encoder.request("e", data, 3),
        "reply": lambda data: encoder.reply(3, data),
    }[kind]
    outside = {"event": 4, "sequenced event": 5, "request": 5, "reply": 4}[kind]
    largest = [0] * (100 - outside)  # its items, and the list itself
    (message,) = decoder(limits).feed(wire(make(largest)))
    assert message.data == largest  # type: ignore[union-attr]
    with pytest.raises(DecodeError, match="max_decoded_objects"):
        decoder(limits).feed(framed(pack([1, "e", [*largest, 0], 3])))  # (the decoder's word)
    with pytest.raises(EncodeError, match="max_decoded_objects"):
        make([*largest, 0])


# --- replies and requests decoded where a read lies (Decoder.in_place) ------------------------

answer_ids = st.one_of(
    st.integers(-3, 3),
    st.just(MAX_REQUEST_ID),
    st.just(MAX_REQUEST_ID + 1),
    st.booleans(),
    st.text(max_size=2),
)
answer_names = st.one_of(st.text(max_size=4), st.integers(0, 2), st.binary(max_size=2))


@st.composite
def answers(draw: st.DrawFn) -> bytes:
    """A reply, error reply or request frame: well formed, or wrong in one of its items."""
    kind = draw(st.sampled_from(["reply", "error", "request"]))
    data = draw(wild_values)
    if kind == "reply":
        return framed(pack([2, draw(answer_ids), data]))
    if kind == "error":
        error = draw(st.sampled_from([{"type": "E", "message": "m"}, {"type": 1}, data]))
        return framed(pack([3, draw(answer_ids), error]))
    return framed(pack([1, draw(answer_names), data, draw(answer_ids)]))


@PROPERTY
@given(st.lists(answers(), min_size=1, max_size=3), st.sampled_from([DEFAULT, Limits(max_depth=3)]))
def test_answers_decoded_in_place_are_what_feed_makes(frames: list[bytes], limits: Limits) -> None:
    """A read of whole replies and requests gives the messages feed() would give, or
    nothing (``None``: left to feed(), which then says what is wrong)."""
    read = b"".join(frames)
    in_place = decoder(limits).in_place(read, True)
    try:
        fed = decoder(limits).feed(read)
    except ProtocolError:
        assert in_place is None
        return
    assert in_place is not None
    assert [norm(m) for m in in_place] == [norm(m) for m in fed]
    assert [type(m) for m in in_place] == [type(m) for m in fed]


def test_answers_in_place_at_their_bounds() -> None:
    deep = [[[["x"]]]]
    cases = [
        ([2, 0, "a"], ("reply", 0, "a")),
        ([2, MAX_REQUEST_ID, {"a": 1}], ("reply", MAX_REQUEST_ID, {"a": 1})),
        ([1, "n", [1, [2]], 5], ("request", "n", [1, [2]], 5)),
        ([2, 1, deep], ("reply", 1, deep)),
    ]
    for body, expected in cases:
        (message,) = decoder().in_place(framed(pack(body)), True) or []
        assert norm(message) == expected
    refused = [
        [2, MAX_REQUEST_ID + 1, 1],
        [2, -1, 1],
        [2, True, 1],
        [1, "", 1, 1],
        [1, b"n", 1, 1],
        [1, "n", 1, -1],
        [1, "n", deep, 1],  # deeper than max_depth=3
    ]
    for body in refused:
        assert decoder(Limits(max_depth=3)).in_place(framed(pack(body)), True) is None
    # A request is taken only when requests may be.
    assert decoder().in_place(framed(pack([1, "n", 1, 1])), False) is None


class CountingSegments:
    """Stands for a connection's shared segments (``MsgpackDecoder.shared``): hands out an
    array for each place a frame names, and counts them (each is an array taken: once)."""

    def __init__(self) -> None:
        self.taken: list[tuple[int, int]] = []

    def array(self, segment: int, offset: int, dtype: Any, shape: Any) -> Any:
        import numpy as np

        self.taken.append((segment, offset))
        return np.zeros(shape, dtype)


def test_answers_in_place_take_arrays_in_shared_memory_once() -> None:
    """With shared memory, a read of replies and requests in place takes each array it names
    once, and a read it leaves to feed() (a frame of another kind in it) takes none: feed()
    takes them, once."""
    import numpy as np

    from ipcactors._proto._numpy import shared_reference

    def named(place: int) -> Any:
        return shared_reference(np.zeros(4, np.float32), 1, place)

    answers = framed(pack([2, 1, named(64)])) + framed(pack([1, "e", named(128), 2]))
    receiver = decoder()
    receiver.shared = segments = CountingSegments()  # type: ignore[assignment]
    got = receiver.in_place(answers, True)
    assert got is not None
    assert [norm(m)[:2] for m in got] == [("reply", 1), ("request", "e")]
    assert segments.taken == [(1, 64), (1, 128)]
    mixed = framed(pack([2, 3, named(256)])) + framed(pack([0, "e", 1]))
    assert receiver.in_place(mixed, True) is None
    assert segments.taken == [(1, 64), (1, 128)]
    assert [norm(m)[:2] for m in receiver.feed(mixed)] == [("reply", 3), ("event", "e")]
    assert segments.taken == [(1, 64), (1, 128), (1, 256)]


# --- the commonest large frame: an event whose data is one payload ----------------------------

LARGE = bytes(range(256)) * 300  # 76,800 bytes: a large bin, received in place


def large_event_cases() -> list[tuple[str, bytes, Any]]:
    """(case, body, what it arrives as: (name, data, seq), or the error's match)."""
    raw = b"\xff\xfe"
    return [
        ("plain", pack([0, "e", LARGE]), ("e", LARGE, None)),
        ("fixstr's longest name", pack([0, "n" * 31, LARGE]), ("n" * 31, LARGE, None)),
        ("str 8 name", pack([0, "n" * 200, LARGE]), ("n" * 200, LARGE, None)),
        ("str 16 name", pack([0, "n" * 300, LARGE]), ("n" * 300, LARGE, None)),
        ("unicode name", pack([0, "événement", LARGE]), ("événement", LARGE, None)),
        ("seq, fixint", pack([0, "e", LARGE, 7]), ("e", LARGE, 7)),
        ("seq, uint 16", pack([0, "e", LARGE, 300]), ("e", LARGE, 300)),
        ("seq, uint 32", pack([0, "e", LARGE, 70_000]), ("e", LARGE, 70_000)),
        ("seq, uint 64", pack([0, "e", LARGE, MAX_REQUEST_ID]), ("e", LARGE, MAX_REQUEST_ID)),
        ("seq 0, ignored", pack([0, "e", LARGE, 0]), ("e", LARGE, None)),
        ("seq past the bound, ignored", pack([0, "e", LARGE, 2**64 - 1]), ("e", LARGE, None)),
        ("negative seq, ignored", pack([0, "e", LARGE, -5]), ("e", LARGE, None)),
        ("a str for a seq, ignored", pack([0, "e", LARGE, "x"]), ("e", LARGE, None)),
        ("a list for a seq, ignored", pack([0, "e", LARGE, [1, 2]]), ("e", LARGE, None)),
        ("five items", pack([0, "e", LARGE, 3, "more"]), ("e", LARGE, 3)),
        ("the payload in a list", pack([0, "e", [LARGE]]), ("e", [LARGE], None)),
        (
            "the payload in a map",
            pack([0, "e", {"a": LARGE, "b": 1}]),
            ("e", {"a": LARGE, "b": 1}, None),
        ),
        ("two payloads", pack([0, "e", [LARGE, LARGE]]), ("e", [LARGE, LARGE], None)),
        ("a request", pack([1, "e", LARGE, 9]), ("request", "e", LARGE, 9)),
        ("empty name", pack([0, "", LARGE]), "event name"),
        ("name not UTF-8", b"\x93\x00\xa2" + raw + pack(LARGE), "invalid msgpack body"),
        ("name not a str", pack([0, 5, LARGE]), "event name"),
        ("kind 0 as uint 8", b"\x93\xcc\x00\xa1e" + pack(LARGE), ("e", LARGE, None)),
    ]


def fed_in_parts(dec: MsgpackDecoder, parts: list[bytes]) -> list[Message]:
    return [message for part in parts for message in dec.feed(part)]


@pytest.mark.parametrize("pieces", [1, 2, 7, 40])
@pytest.mark.parametrize(("case", "body", "expected"), large_event_cases())
def test_a_large_event_arrives_as_its_body_says(
    case: str, body: bytes, expected: Any, pieces: int
) -> None:
    """Whatever its envelope holds (a name of any length, a seq or something else behind the
    payload, the payload inside a container), however the reads cut it (the first pieces a
    few bytes each: the name arriving in parts): the message its body says, its large bin a
    bytearray."""
    frame = framed(body)
    cuts = [min(3 * k + 1, len(frame)) for k in range(1, pieces)]
    parts = [frame[a:b] for a, b in zip([0, *cuts], [*cuts, len(frame)], strict=True)]
    dec = decoder()
    if isinstance(expected, str):
        with pytest.raises(DecodeError, match=expected):
            fed_in_parts(dec, parts)
        return
    messages = fed_in_parts(dec, parts)
    assert len(messages) == 1
    (message,) = messages
    if expected[0] == "request":
        assert type(message) is Request
        assert (message.event, as_sent(message.data), message.id) == expected[1:]
        return
    assert type(message) is Event
    assert (message.event, as_sent(message.data), message.seq) == expected
    if type(expected[1]) is bytes:
        assert type(message.data) is bytearray


@pytest.mark.parametrize(
    ("limits", "match"),
    [
        (Limits(max_container_len=2), "max_container_len=2"),
        (Limits(max_decoded_objects=3), "max_decoded_objects=3"),
        (Limits(max_decoded_objects=4), None),
        (Limits(max_depth=1), None),
        (Limits(max_depth=0), "max_depth=0"),
    ],
)
def test_a_large_event_is_held_to_the_limits(limits: Limits, match: str | None) -> None:
    """Its envelope counts as the walk would count it (4 objects, an array of 3, one level),
    whether the frame is all in at once (counted before anything is assembled) or comes in
    pieces (the walk counts as it goes)."""
    frame = framed(pack([0, "e", LARGE]))
    for pieces in ([frame], [frame[:100], frame[100:]]):
        dec = decoder(limits)
        if match is None:
            (message,) = fed_in_parts(dec, pieces)
            assert type(message) is Event
            assert message.data == LARGE
            continue
        with pytest.raises(DecodeError, match=match):
            fed_in_parts(dec, pieces)


@pytest.mark.parametrize(
    ("value", "short"),
    [
        ([0, "e", LARGE], True),
        ([0, "e", LARGE, 12], True),
        ([0, "n" * 255, LARGE, 2**40], True),
        ([0, "e", LARGE, "x"], False),
        ([0, "e", [LARGE]], False),
        ([1, "e", LARGE, 3], False),
    ],
)
def test_an_event_whose_data_is_one_payload_is_not_decoded_again(value: Any, short: bool) -> None:
    """Its message is built from the assembly's bytes (names, payload, seq) without decoding
    the skeleton; anything else is left to the decoder."""
    body = pack(value)
    assembly = Assembly(len(body), DEFAULT)
    assert assembly.take(memoryview(body)) == len(body)
    assert assembly.done
    event = assembly.event()
    if not short:
        assert event is None
        return
    assert event is not None
    assert (event.event, event.data, event.seq) == (value[1], LARGE, (value[3:] or [None])[0])
    assert type(event.data) is bytearray


@pytest.mark.parametrize(
    "data",
    [
        LARGE,
        bytearray(LARGE),
        memoryview(LARGE),
        memoryview(bytearray(LARGE)).cast("I"),  # another format: sent as its bytes
        b"\x07" * (SEPARATE_BODY_AT + 3),
    ],
    ids=["bytes", "bytearray", "memoryview", "memoryview of ints", "just over"],
)
def test_an_event_whose_data_is_one_buffer_leaves_as_it_is(data: Any) -> None:
    """Its frame is the envelope with the payload's header, then the payload itself (a view
    of the sender's memory, never copied): byte for byte what msgpack packs, acked or not."""
    encoder = MsgpackEncoder(DEFAULT)
    as_bytes = bytes(data)
    for frame, value in (
        (encoder.event("e", data), [0, "e", as_bytes]),
        (encoder.sequenced_event("e", data, 5), [0, "e", as_bytes, 5]),
    ):
        assert isinstance(frame, tuple)
        assert wire(frame) == framed(pack(value))
        assert any(
            part is data
            or (isinstance(part, memoryview) and part.obj is getattr(data, "obj", data))
            for part in frame
        )
        (message,) = decoder().feed(wire(frame))
        assert (message.event, message.data) == ("e", as_bytes)  # type: ignore[union-attr]


def test_an_event_whose_data_is_one_buffer_is_held_to_the_frame_limit() -> None:
    # The body: [0, "e" (4 bytes), then the bin's header (5 bytes) and the payload.
    encoder = MsgpackEncoder(Limits(max_frame_size=len(LARGE) + 9))
    assert frame_size(encoder.event("e", LARGE)) == 4 + len(LARGE) + 9
    with pytest.raises(FrameTooLargeError):
        encoder.event("ee", LARGE)
    assert wire(encoder.event("e", b"ok")) == framed(pack([0, "e", b"ok"]))  # usable after


# --- reserved names ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "reserved"),
    [
        ("connect", True),
        ("disconnect", True),
        ("destroy", True),
        ("error", True),
        ("ipcactors.", True),
        ("ipcactors.ping", True),
        ("message", False),
        ("Connect", False),
        ("connected", False),
        ("errors", False),
        ("ipcactors", False),
        ("ipcactorsx", False),
        ("x.ipcactors.y", False),
    ],
)
def test_reserved_event_names(name: str, reserved: bool) -> None:
    assert is_reserved(name) is reserved
    # The decoder passes them on: refusing them is the channel's job (it knows the direction).
    assert norm(decode_one(pack([0, name, None]))) == ("event", name, None)


# --- the numpy extension (code 78) ------------------------------------------------------------

try:
    import numpy as np
except ImportError:  # numpy is optional
    np = None  # type: ignore[assignment]

needs_numpy = pytest.mark.skipif(np is None, reason="numpy is not installed")


def ext78(payload: bytes) -> bytes:
    """msgpack ext32 of type 78 (numpy) around ``payload``."""
    return b"\xc9" + struct.pack(">I", len(payload)) + b"N" + payload


def array_payload(dtype_text: bytes, shape: list[int], data: bytes, version: int = 1) -> bytes:
    dims = b"".join(struct.pack(">Q", dim) for dim in shape)
    return bytes((version, len(dtype_text))) + dtype_text + bytes((len(shape),)) + dims + data


dtype_texts = (
    st.sampled_from(
        [b"<f8", b">i2", b"|b1", b"|u1", b"<c16", b"<M8[ns]", b"<m8[25s]", b"|S3", b"<U2", b"|O8"]
    )
    | st.from_regex(
        r"[<>|=][biufcmMSU?OV][0-9]{0,6}(\[[0-9]{0,3}[A-Za-z]{1,3}\])?", fullmatch=True
    ).map(str.encode)
    | st.binary(max_size=8)
)


@st.composite
def numpy_payloads(draw: st.DrawFn) -> tuple[bytes, list[int], bytes]:
    """(payload, shape, data): often well formed, often not."""
    text = draw(dtype_texts)
    shape = draw(st.lists(st.integers(0, 4) | st.integers(0, 2**64 - 1), max_size=4))
    size = None
    if draw(st.booleans()):
        try:
            count = 1
            for dim in shape:
                count *= dim
            size = count * np.dtype(text.decode("ascii")).itemsize
        except Exception:
            size = None
    if size is None or size > 256:
        data = draw(st.binary(max_size=64))
    else:
        data = draw(st.binary(min_size=size, max_size=size))
    version = draw(st.just(1) | st.integers(0, 255))
    return array_payload(text, shape, data, version), shape, data


@needs_numpy
@PROPERTY
@given(numpy_payloads())
def test_numpy_extension_from_a_peer_is_an_array_or_a_decode_error(
    case: tuple[bytes, list[int], bytes],
) -> None:
    payload, shape, data = case
    try:
        message = decode_one(event_body(ext78(payload)))
    except DecodeError:
        return
    array = message.data
    assert isinstance(array, np.ndarray)
    assert array.dtype.kind in "biufcmMSU"
    assert array.nbytes == len(data)  # never more memory than the frame carried
    assert list(array.shape) == shape


@needs_numpy
@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\x01",
        array_payload(b"|U0", [], b""),  # zero item size
        array_payload(b"|S0", [3], b""),
        array_payload(b"|O8", [1], b"\x00" * 8),  # object arrays: pickle, never
        array_payload(b"|V8", [1], b"\x00" * 8),
        array_payload(b"<f8", [2], b"\x00" * 15),  # one byte short
        array_payload(b"<f8", [2**63, 2], b""),
        array_payload(b"<f8", [0, 2**64 - 1], b""),
        array_payload(b"<f8", [1] * 33, b"\x00" * 8),  # too many dimensions
        array_payload(b"<M8[999Q]", [1], b"\x00" * 8),
    ],
)
def test_bad_numpy_extension_is_a_decode_error(payload: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_one(event_body(ext78(payload)))


@needs_numpy
def test_numpy_arrays_round_trip() -> None:
    encoder = MsgpackEncoder(DEFAULT)
    arrays = [
        np.arange(12, dtype="<f4").reshape(3, 4),
        np.arange(6, dtype=">i8").reshape(2, 3).T,  # strided, big-endian
        np.array([True, False]),
        np.array([1 + 2j]),
        np.array(["ab", "c"]),
        np.array([b"x"]),
        np.zeros((0, 5)),
        np.array(3.5),
    ]
    frame = encoder.event("e", {"arrays": arrays, "scalar": np.int64(7)})
    (message,) = decoder().feed(wire(frame))
    got = message.data
    assert got["scalar"] == 7
    assert type(got["scalar"]) is int
    for sent, back in zip(arrays, got["arrays"], strict=True):
        assert back.dtype == sent.dtype
        assert back.shape == sent.shape
        assert np.array_equal(back, sent)
    with pytest.raises(EncodeError):
        encoder.event("e", np.array([object()]))
    assert len(decoder().feed(wire(encoder.event("e", "still works")))) == 1


@needs_numpy
def test_decode_array_raises_only_decode_error() -> None:
    from ipcactors._proto._numpy import decode_array

    with pytest.raises(DecodeError):
        decode_array(array_payload(b"|U0", [], b""))


# --- batches of events (kind 14) --------------------------------------------------------------


def batched(
    encoder: MsgpackEncoder, events: list[tuple[str, Any]], max_bytes: int
) -> tuple[list[bytes], list[tuple[str, Any]]]:
    """The frames a sender makes of ``events``: those the encoder gives an item join batches
    of at most ``max_bytes`` (as an outbox closes them), the others go alone. Returns the
    frames and the events in the order they go."""
    batches = CODEC.event_batches(max_bytes - 4, DEFAULT)
    assert batches is not None
    frames: list[bytes] = []
    order: list[tuple[str, Any]] = []
    buffer: bytearray | None = None
    count = 0
    in_buffer: list[tuple[str, Any]] = []
    for name, data in events:
        item = encoder.event_item(name, data)
        if item is not None and len(batches.prefix) + len(item) > batches.max_bytes:
            item = None
        if buffer is not None and (item is None or len(buffer) + len(item) > batches.max_bytes):
            frames.append(batches.close(buffer, count))
            order += in_buffer
            buffer, count, in_buffer = None, 0, []
        if item is None:
            frames.append(wire(encoder.event(name, data)))
            order.append((name, data))
            continue
        if buffer is None:
            buffer = bytearray(batches.prefix)
        buffer += item
        count += 1
        in_buffer.append((name, data))
    if buffer is not None:
        frames.append(batches.close(buffer, count))
        order += in_buffer
    return frames, order


def nested(inner: st.SearchStrategy[Any], levels: int) -> st.SearchStrategy[Any]:
    """``inner``, or arrays and maps of it, at most ``levels`` containers deep."""
    keys = st.text(max_size=6) | st.binary(max_size=6)
    for _ in range(levels):
        inner = inner | st.lists(inner, max_size=6) | st.dictionaries(keys, inner, max_size=6)
    return inner


# What the Python sender batches: plain data (scalars, and containers four deep at most).
plain_data = nested(scalars, 4)


@PROPERTY
@given(st.lists(st.tuples(names, plain_data | values), max_size=60), st.integers(300, 3000))
def test_batches_decode_to_the_events_and_split_into_their_frames(
    events: list[tuple[str, Any]], max_bytes: int
) -> None:
    encoder = MsgpackEncoder(DEFAULT)
    frames, order = batched(encoder, events, max_bytes)
    assert sorted(map(repr, order)) == sorted(map(repr, events))
    assert all(len(frame) <= max_bytes for frame in frames if frame[5] == 14)
    receiver = decoder()
    receiver.batch_limit = CODEC.batch_limit(DEFAULT)
    got = receiver.feed(b"".join(frames))
    assert [norm(message) for message in got] == [("event", n, d) for n, d in order]
    # Split (for a peer without batches), the same events in the same order, a frame each.
    batches = CODEC.event_batches(max_bytes - 4, DEFAULT)
    assert batches is not None
    plain = [part for f in frames for part in (batches.split(f) if f[5] == 14 else (f,))]
    assert [norm(decode_one(frame[4:])) for frame in plain] == [("event", n, d) for n, d in order]


def test_a_batch_is_the_documented_layout() -> None:
    encoder = MsgpackEncoder(DEFAULT)
    batches = CODEC.event_batches(4096, DEFAULT)
    assert batches is not None
    buffer = bytearray(batches.prefix)
    for data in (1, {"a": None}):
        item = encoder.event_item("tick", data)
        assert item is not None
        buffer += item
    body = pack([14, ["tick", 1, "tick", {"a": None}]])
    # (the array of items in its 32-bit form, whatever its length: written before it is known)
    assert batches.close(buffer, 2) == framed(body[:2] + b"\xdd\x00\x00\x00\x04" + body[3:])
    assert encoder.event_item("tick", [[[[[1]]]]]) is None  # not plain: a frame of its own


class IntLike(int):
    """Packed as an int, but not plain: a subclass may pack as something else."""


# Plain data (docs/protocol.md 5.5): a batch's items. Scalars (a bin under 64 KiB among them),
# maps (str or bytes keys), arrays and tuples of them, four containers deep at most.
PLAIN = [
    None,
    True,
    -(2**63),
    2**64 - 1,
    0.5,
    "text",
    msgpack.Timestamp(1, 2),
    b"",
    b"x" * 1000,
    bytearray(b"xy"),
    [],
    {},
    (1, "two"),
    [1, [2, [3, [4]]]],
    {"a": {"b": {"c": {"d": 1}}}},
    {b"k": [1.5, {"x": None}]},
    list(range(1000)),  # (long: checked in C)
    {str(n): n for n in range(100)},
    {str(n): [n] for n in range(100)},
    [[n] for n in range(100)],
]
# Data that is not: it is checked and packed as before, in a frame of its own (or refused).
NOT_PLAIN = [
    [[[[[1]]]]],  # five containers deep
    {"a": {"b": {"c": {"d": {"e": 1}}}}},
    b"x" * (64 * 1024),  # out of band
    [b"x" * (64 * 1024)],
    memoryview(b"view"),
    [memoryview(b"view")],
    IntLike(3),
    [IntLike(3)],
    {"k": IntLike(3)},
    {1: "int key"},
    [{1: "int key"}],
    {str(n): n for n in range(99)} | {2: 2},  # (long: checked in C, then item by item)
    {str(n): n for n in range(99)} | {"x": IntLike(1)},
    [0] * 99 + [IntLike(1)],
    msgpack.ExtType(5, b"x"),
    [msgpack.ExtType(5, b"x")],
    collections.OrderedDict(a=1),
    datetime.datetime(2026, 1, 1),
]


@pytest.mark.parametrize("data", PLAIN, ids=stable_id)
def test_plain_data_goes_in_batches_as_msgpack_packs_it(data: Any) -> None:
    encoder = MsgpackEncoder(DEFAULT)
    item = encoder.event_item("tick", data)
    assert item == pack("tick") + pack(data)
    batches = CODEC.event_batches(32 * 1024, DEFAULT)
    assert batches is not None
    receiver = decoder()
    receiver.batch_limit = CODEC.batch_limit(DEFAULT)
    (event,) = receiver.feed(batches.close(bytearray(batches.prefix) + item, 1))
    assert norm(event) == ("event", "tick", msgpack.unpackb(pack(data)))


@pytest.mark.parametrize("data", NOT_PLAIN, ids=stable_id)
def test_anything_else_goes_alone_through_the_checks(data: Any) -> None:
    encoder = MsgpackEncoder(DEFAULT)
    assert encoder.event_item("tick", data) is None
    try:
        frame = encoder.event("tick", data)
    except EncodeError:
        return  # refused as before (an int key, an extension type, a datetime)
    (event,) = decoder().feed(wire(frame))
    assert norm(event)[:2] == ("event", "tick")


def test_plain_data_stays_within_the_limits() -> None:
    """Plain data is within what a decoder with the same limits takes: four levels, fewer
    with a smaller ``max_depth`` (one fewer in a batch, whose array is one level more), and
    containers of at most ``max_container_len`` items, short or long."""
    shallow = MsgpackEncoder(Limits(max_depth=4))  # the envelope, then 3 levels of data
    assert shallow.event_item("e", [[1]]) is not None
    assert shallow.event_item("e", [[[1]]]) is None
    (event,) = decoder(Limits(max_depth=4)).feed(wire(shallow.event("e", [[[1]]])))
    assert norm(event) == ("event", "e", [[[1]]])
    with pytest.raises(EncodeError, match="deep"):
        shallow.event("e", [[[[1]]]])
    # A bin from OUT_OF_BAND_AT bytes on is not plain: it goes out of band, not copied.
    payload = b"x" * OUT_OF_BAND_AT
    assert MsgpackEncoder(DEFAULT).event("e", payload)[-1] is payload
    short = MsgpackEncoder(Limits(max_container_len=3))
    for data in ([1, 2, 3], {"a": 1, "b": 2, "c": 3}, [[1, 2, 3]]):
        assert short.event_item("e", data) is not None
    for data in ([1, 2, 3, 4], {"a": 1, "b": 2, "c": 3, "d": 4}, [[1, 2, 3, 4]], (0,) * 40):
        assert short.event_item("e", data) is None
        with pytest.raises(EncodeError, match="max_container_len"):
            short.event("e", data)


def test_batches_only_once_announced_and_within_what_was() -> None:
    body = pack([14, ["tick", 1]])
    with pytest.raises(DecodeError, match="not negotiated"):
        decoder().feed(framed(body))
    receiver = decoder()
    receiver.batch_limit = len(body) - 1
    with pytest.raises(DecodeError, match="over the"):
        receiver.feed(framed(body))
    receiver = decoder()
    receiver.batch_limit = len(body)
    assert [norm(m) for m in receiver.feed(framed(body) + framed(body))] == [
        ("event", "tick", 1)
    ] * 2
    # A peer announcing a useless size, or not a size, is sent no batches.
    assert CODEC.event_batches(100, DEFAULT) is None
    assert CODEC.event_batches("4096", DEFAULT) is None
    assert CODEC.event_batches(True, DEFAULT) is None
    # Nor larger than the sender takes itself (a batch split goes whole in frames of its own).
    own = CODEC.event_batches(32 * 1024, Limits(max_frame_size=1024))
    assert own is not None
    assert own.max_bytes == CODEC.event_batches(1024, DEFAULT).max_bytes  # type: ignore[union-attr]
    assert CODEC.event_batches(32 * 1024, Limits(max_depth=4)) is None
    assert CODEC.batch_limit(Limits(max_depth=4)) == 0
    assert CODEC.batch_limit(Limits(max_container_len=1000)) == 1000


@PROPERTY
@given(st.lists(st.tuples(names, plain_data), min_size=1, max_size=40), st.integers(1, 2**62))
def test_a_numbered_batch_numbers_its_events_and_splits_into_numbered_frames(
    events: list[tuple[str, Any]], first: int
) -> None:
    encoder = MsgpackEncoder(DEFAULT)
    batches = CODEC.event_batches(32 * 1024, DEFAULT)
    assert batches is not None
    buffer = bytearray(batches.prefix)
    items = [encoder.event_item(name, data) for name, data in events]
    for item in items:
        assert item is not None
        buffer += item
    frame = batches.close(buffer, len(events), first)
    receiver = decoder()
    receiver.batch_limit = CODEC.batch_limit(DEFAULT)
    got = receiver.feed(frame)
    numbered = [(first + i, name, data) for i, (name, data) in enumerate(events)]
    assert [(m.seq, m.event, m.data) for m in got if type(m) is Event] == numbered
    assert len(got) == len(events)
    split = batches.split(frame)
    kept = [
        encoder.sequenced_frame(item, seq)
        for item, (seq, _, _) in zip(items, numbered, strict=True)  # type: ignore[arg-type]
    ]
    assert list(split) == kept
    assert kept == [wire(encoder.sequenced_event(n, data, seq)) for seq, n, data in numbered]


def test_a_batch_in_a_datagram_is_refused() -> None:
    receiver = decoder()
    receiver.batch_limit = 4096
    with pytest.raises(DecodeError, match="datagram"):
        receiver.decode_datagram(pack([14, ["tick", 1]]))
