"""The sans-IO session (``ipcactors._proto._session``): the handshake, authentication, frame
limits and what may arrive when, tested without a socket: two sessions pass bytes by hand."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ipcactors
from ipcactors._proto._codec import Codec
from ipcactors._proto._messages import Event, Limits, Message, Reply
from ipcactors._proto._msgpack import CODEC, MsgpackEncoder
from ipcactors._proto._session import Refusal, Role, Session, State, datagram_messages

PROPERTY = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LIMITS = Limits()


def session(role: Role, actor_id: str, codec: Codec = CODEC, **options: Any) -> Session:
    return Session(codec, LIMITS, role, codec.encoder(LIMITS), actor_id, target="server", **options)


def pair(
    client_key: bytes | None = None, server_key: bytes | None = None
) -> tuple[Session, Session]:
    client = session(Role.CLIENT, "client", auth_key=client_key)
    server = session(Role.SERVER, "server", auth_key=server_key)
    return client, server


def pump(source: Session, sink: Session) -> list[Message]:
    return sink.receive(source.data_to_send())


def handshake(client: Session, server: Session) -> None:
    """Run the handshake to its end, whatever the keys; the server welcomes when asked."""
    client.start()
    while True:
        pump(client, server)
        if server.state is State.DECIDING:
            client.receive(server.accept())
            return
        pump(server, client)


def deliver(data: bytes, sink: Session, cuts: list[int]) -> list[Message]:
    """``data`` received in reads of the sizes ``cuts`` says, then the rest in one."""
    got: list[Message] = []
    position = 0
    for cut in cuts:
        got += sink.receive(data[position : position + cut])
        position += cut
    got += sink.receive(data[position:])
    return got


def event_frame(name: str, data: Any = None) -> bytes:
    frame = MsgpackEncoder(LIMITS).event(name, data)
    return frame if isinstance(frame, bytes) else b"".join(frame)


def test_handshake_without_key_opens_both_sides() -> None:
    client, server = pair()
    assert client.state is State.START
    assert server.state is State.AWAIT_HELLO
    client.start()
    assert client.state is State.AWAIT_WELCOME
    assert pump(client, server) == []
    assert server.state is State.DECIDING
    assert server.hello is not None
    assert server.hello.id == "client"
    assert server.data_to_send() == b""  # nothing until the owner decides
    assert client.receive(server.accept()) == []
    assert server.is_open
    assert client.is_open
    assert client.welcome is not None
    assert client.welcome.id == "server"


def test_handshake_with_the_same_key_on_both_sides() -> None:
    client, server = pair(b"key", b"key")
    client.start()
    pump(client, server)
    assert server.state is State.AWAIT_PROOF  # it sent its challenge
    pump(server, client)
    assert client.state is State.AWAIT_WELCOME  # it sent its proof
    pump(client, server)
    assert server.state is State.DECIDING
    client.receive(server.accept())
    assert client.is_open


def test_wrong_key_is_refused_by_the_client_first() -> None:
    # The server proves itself first: a client with another key refuses it.
    client, server = pair(b"one", b"two")
    client.start()
    pump(client, server)
    with pytest.raises(ipcactors.AuthenticationError, match="failed to prove"):
        pump(server, client)
    assert client.state is State.CLOSED


def test_a_client_with_a_wrong_proof_is_refused() -> None:
    client, server = pair(b"key", b"key")
    client.start()
    pump(client, server)
    pump(server, client)
    proof = bytearray(client.data_to_send())
    proof[-1] ^= 1  # the last byte of the MAC
    with pytest.raises(Refusal, match="wrong auth_key") as info:
        server.receive(bytes(proof))
    assert info.value.reason == "auth"
    assert server.state is State.CLOSED


def test_keys_on_one_side_only_are_refused_both_ways() -> None:
    client, server = pair(None, b"key")
    client.start()
    with pytest.raises(Refusal, match="requires a shared key"):
        pump(client, server)
    # The server's reject reaches a client as an AuthenticationError.
    client2, _ = pair()
    client2.start()
    client2.data_to_send()
    with pytest.raises(ipcactors.AuthenticationError, match="refused the connection"):
        client2.receive(server.reject("auth", "set auth_key"))

    client, server = pair(b"key", None)
    client.start()
    pump(client, server)
    with pytest.raises(ipcactors.AuthenticationError, match="without proving"):
        client.receive(server.accept())


@pytest.mark.parametrize("nonce", [b"n" * 31, b"n" * 33, "n" * 32, 5])
def test_a_hello_with_a_malformed_nonce_is_told_so(nonce: object) -> None:
    """A nonce that is not 32 bytes is refused as such (reason auth): it was "this server
    requires a shared key: set auth_key", which sends a client that set one astray."""
    server = session(Role.SERVER, "server", auth_key=b"key")
    hello = MsgpackEncoder(LIMITS).hello("client", nonce=nonce)
    with pytest.raises(Refusal, match="nonce") as caught:
        server.receive(hello if isinstance(hello, bytes) else b"".join(hello))
    assert caught.value.reason == "auth"
    assert "set auth_key" not in caught.value.message


def test_a_challenge_to_a_client_without_key() -> None:
    client, server = pair(None, None)
    keyed = session(Role.SERVER, "server", auth_key=b"key")
    client.start()
    hello = client.data_to_send()
    server.receive(hello)
    # A client without a key that is challenged learns it needs one.
    other, _ = pair(b"key", None)
    other.start()
    keyed.receive(other.data_to_send())
    with pytest.raises(ipcactors.AuthenticationError, match="requires a shared key"):
        client.receive(keyed.data_to_send())


@pytest.mark.parametrize(
    ("reason", "error"),
    [
        ("busy", ipcactors.ServerBusyError),
        ("auth", ipcactors.AuthenticationError),
        ("version", ipcactors.RejectedError),
    ],
)
def test_reject_becomes_the_clients_typed_error(reason: str, error: type[Exception]) -> None:
    client, server = pair()
    client.start()
    pump(client, server)
    frame = server.reject(reason, "no")
    assert server.state is State.CLOSED
    with pytest.raises(error, match=f"refused the connection \\({reason}\\): no"):
        client.receive(frame)
    assert client.state is State.CLOSED


def test_wrong_version_is_refused() -> None:
    server = session(Role.SERVER, "server")
    hello = MsgpackEncoder(LIMITS)._frame([4, {"v": 99, "id": "x"}])
    with pytest.raises(Refusal, match="protocol version 99 is not supported") as info:
        server.receive(hello)  # type: ignore[arg-type]
    assert info.value.reason == "version"


@pytest.mark.parametrize(("id", "said"), [("", "an empty string"), (5, "int"), (None, "NoneType")])
def test_a_hello_without_a_usable_id_says_what_it_got(id: object, said: str) -> None:
    server = session(Role.SERVER, "server")
    hello = MsgpackEncoder(LIMITS)._frame([4, {"v": 1, "id": id}])
    with pytest.raises(ipcactors.ProtocolError, match=f"non-empty string, got {said}"):
        server.receive(hello)  # type: ignore[arg-type]


def test_anything_but_hello_first_is_a_protocol_error() -> None:
    server = session(Role.SERVER, "server")
    with pytest.raises(ipcactors.ProtocolError, match="expected hello, got Event"):
        server.receive(event_frame("e"))
    assert server.state is State.CLOSED
    with pytest.raises(ipcactors.ProtocolError):
        server.receive(b"")  # closed: refuses further input


def test_frames_behind_the_welcome_come_out_once_open() -> None:
    client, server = pair()
    handshake(client, server)
    # Welcome and events in one read: the events come out of the next receive.
    client2, server2 = pair()
    client2.start()
    pump(client2, server2)
    data = server2.accept() + event_frame("a", 1) + event_frame("b", 2)
    assert client2.receive(data) == []
    messages = client2.receive()
    assert [(m.event, m.data) for m in messages] == [("a", 1), ("b", 2)]  # type: ignore[union-attr]


def test_the_frame_limit_is_lifted_only_once_open() -> None:
    big = event_frame("big", b"x" * (LIMITS.max_handshake_size + 1))
    server = session(Role.SERVER, "server")
    with pytest.raises(ipcactors.FrameTooLargeError):
        server.receive(big)
    client, server = pair()
    handshake(client, server)
    (message,) = server.receive(big)
    assert type(message) is Event


@pytest.mark.parametrize("name", ["connect", "disconnect", "error", "destroy", "ipcactors.x"])
def test_reserved_names_after_the_handshake_close_the_session(name: str) -> None:
    client, server = pair()
    handshake(client, server)
    with pytest.raises(ipcactors.ProtocolError, match="reserved event"):
        server.receive(event_frame(name))
    assert server.state is State.CLOSED
    with pytest.raises(ipcactors.ProtocolError):
        server.receive(event_frame("fine"))


def test_handshake_messages_after_the_handshake_close_the_session() -> None:
    client, server = pair()
    handshake(client, server)
    again = session(Role.CLIENT, "client")
    again.start()
    with pytest.raises(ipcactors.ProtocolError, match="unexpected Hello after the handshake"):
        server.receive(again.data_to_send())


def test_only_replaced_may_end_an_open_session_as_a_refusal() -> None:
    """protocol.md: ``replaced`` is the only reject that may come once the connection is open;
    any other is a protocol error (the client reconnects), not a refusal it gives up on."""
    encoder = MsgpackEncoder(Limits())
    for reason, error in [("replaced", ipcactors.RejectedError), ("busy", ipcactors.ProtocolError)]:
        client, server = pair()
        handshake(client, server)
        with pytest.raises(error) as caught:
            client.receive(encoder.reject(reason, "late"))
        if reason != "replaced":
            assert not isinstance(caught.value, ipcactors.RejectedError)
            assert "unexpected reject (busy) after the handshake" in str(caught.value)


def test_open_sessions_carry_every_other_kind() -> None:
    client, server = pair()
    handshake(client, server)
    encoder = MsgpackEncoder(LIMITS)
    frames = [
        encoder.event("e", 1),
        encoder.request("r", 2, 7),
        encoder.reply(7, 3),
        encoder.error_reply(7, "KeyError", "k", ""),
        encoder.ping(),
        encoder.pong(),
    ]
    data = b"".join(f if isinstance(f, bytes) else b"".join(f) for f in frames)
    kinds = [type(m).__name__ for m in server.receive(data)]
    assert kinds == ["Event", "Request", "Reply", "ErrorReply", "Ping", "Pong"]


@PROPERTY
@given(key=st.sampled_from([None, b"k"]), cuts=st.lists(st.integers(1, 64), max_size=20))
def test_any_split_of_the_bytes_gives_the_same_handshake(
    key: bytes | None, cuts: list[int]
) -> None:
    """Bytes cut anywhere (one byte at a time included) reach the same states and messages."""
    client, server = pair(key, key)
    client.start()
    while server.state is not State.DECIDING:
        deliver(client.data_to_send(), server, cuts)
        if server.state is State.DECIDING:
            break
        deliver(server.data_to_send(), client, cuts)
    after = server.accept() + event_frame("a", [1, "x"]) + event_frame("b")
    got = deliver(after, client, cuts)
    got += client.receive()
    assert client.is_open
    assert [m.event for m in got] == ["a", "b"]  # type: ignore[union-attr]


def open_stream() -> tuple[bytes, list[tuple[str, Any]]]:
    """Frames of every size a read can cut: small events, a request, payloads just under, at
    and over one read (64 KiB, where payloads are assembled in place), one of several reads;
    as bytes, and the (name, data) each arrives as."""
    sizes = [5, 65_536 - 8, 200, 65_536, 65_536 + 13, 3, 150_000, 40_000, 65_536 + 1]
    frames: list[bytes] = []
    expected: list[tuple[str, Any]] = []
    for index, size in enumerate(sizes):
        data = bytes([index]) * size
        frames.append(event_frame(f"blob{index}", data))
        expected.append((f"blob{index}", data))
        frames.append(event_frame("note", {"i": index}))
        expected.append(("note", {"i": index}))
    frames.append(MsgpackEncoder(LIMITS).request("ask", [1, 2], 9))  # type: ignore[arg-type]
    expected.append(("ask", [1, 2]))
    return b"".join(frames), expected


def arrived(messages: list[Message]) -> list[tuple[str, Any]]:
    return [
        (m.event, bytes(m.data) if isinstance(m.data, bytearray) else m.data)  # type: ignore[union-attr]
        for m in messages
    ]


@PROPERTY
@given(cuts=st.lists(st.integers(1, 70_000), max_size=25))
def test_any_split_of_an_open_stream_gives_the_same_messages(cuts: list[int]) -> None:
    """Reads ending anywhere (in a header, a small frame, a large payload, just past one)
    give the same messages in the same order as one read of everything."""
    data, expected = open_stream()
    client, server = pair()
    handshake(client, server)
    assert arrived(deliver(data, server, cuts)) == expected


def test_reads_ending_in_a_header_give_the_same_messages() -> None:
    """A read that ends 1-3 bytes into a frame's header (a large frame's too: its assembly
    starts once the header is whole), or 1-3 bytes into its body."""
    data, expected = open_stream()
    starts = [0]
    while starts[-1] < len(data):
        starts.append(starts[-1] + 4 + int.from_bytes(data[starts[-1] : starts[-1] + 4], "big"))
    for start in starts[:-1]:
        for into in (1, 2, 3, 5, 6):
            client, server = pair()
            handshake(client, server)
            cut = start + into
            got = server.receive(data[:cut]) + server.receive(data[cut:])
            assert arrived(got) == expected, f"cut {into} bytes into the frame at {start}"


def test_one_read_of_an_open_stream_gives_its_messages() -> None:
    data, expected = open_stream()
    client, server = pair()
    handshake(client, server)
    assert arrived(server.receive(data)) == expected


def test_data_to_send_returns_each_byte_once() -> None:
    client = session(Role.CLIENT, "client")
    client.start()
    assert client.data_to_send()
    assert client.data_to_send() == b""


def test_misuse_is_a_runtime_error() -> None:
    client, server = pair()
    with pytest.raises(RuntimeError):
        server.accept()  # no hello yet
    client.start()
    with pytest.raises(RuntimeError):
        client.start()
    with pytest.raises(RuntimeError):
        client.reject("busy", "a client does not reject")


def test_a_codec_without_handshake_starts_open() -> None:
    from test_codec import LinesCodec

    server = session(Role.SERVER, "server", codec=LinesCodec())
    assert server.is_open
    assert server.state is State.OPEN
    assert [m.event for m in server.receive(b'{"e":"x"}\n{"e":"y"}\n')] == ["x", "y"]  # type: ignore[union-attr]


def test_datagram_messages_are_checked() -> None:
    decoder = CODEC.decoder(LIMITS)
    encoder = CODEC.datagram_encoder(LIMITS)
    (message,) = datagram_messages(decoder, encoder.event("e", 1))  # type: ignore[arg-type]
    assert type(message) is Event
    for body, match in [
        (encoder.event("connect", None), "reserved event"),
        (encoder.request("ipcactors.x", None, 1), "reserved event"),
        (encoder.ping(), "unexpected Ping"),
        (encoder.hello("x"), "unexpected Hello"),
    ]:
        with pytest.raises(ipcactors.ProtocolError, match=match):
            datagram_messages(decoder, body)  # type: ignore[arg-type]
    # The decoder is not broken by a bad datagram.
    assert type(datagram_messages(decoder, encoder.reply(1, 2))[0]) is Reply  # type: ignore[arg-type]


@PROPERTY
@given(
    role=st.sampled_from([Role.SERVER, Role.CLIENT]),
    key=st.sampled_from([None, b"k"]),
    chunks=st.lists(st.binary(max_size=64), max_size=8),
)
def test_arbitrary_bytes_never_escape_the_typed_errors(
    role: Role, key: bytes | None, chunks: list[bytes]
) -> None:
    """Whatever a peer sends during the handshake, the session advances, or raises one of its
    typed errors and is closed from then on; it never raises anything else."""
    own = session(role, role.value, auth_key=key)
    if role is Role.CLIENT:
        own.start()
    for chunk in chunks:
        try:
            own.receive(chunk)
        except (ipcactors.ProtocolError, ipcactors.RejectedError, Refusal):
            assert own.state is State.CLOSED
            with pytest.raises(ipcactors.ProtocolError):
                own.receive(b"x")
            return
        if not own.handshaking:
            return


@PROPERTY
@given(
    st.lists(
        st.one_of(
            st.builds(
                lambda n: event_frame(n, 1), st.sampled_from(["a", "connect", "ipcactors.x"])
            ),
            st.just(MsgpackEncoder(LIMITS).ping()),
            st.just(b"\x00\x00\x00\x01\xc1"),  # 0xc1: never valid msgpack
        ),
        max_size=6,
    )
)
def test_an_open_session_passes_good_frames_and_stops_at_the_first_bad_one(
    frames: list[bytes],
) -> None:
    client, server = pair()
    handshake(client, server)
    got: list[Message] = []
    for frame in frames:
        try:
            got += server.receive(frame)
        except ipcactors.ProtocolError:
            assert server.state is State.CLOSED
            bad = frame
            break
    else:
        bad = None
    good = frames if bad is None else frames[: frames.index(bad)]
    assert len(got) == len(good)
    assert all(
        type(m) is not Event or m.event == "a"  # type: ignore[union-attr]
        for m in got
    )
