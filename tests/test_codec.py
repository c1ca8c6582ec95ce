"""The codec interface (``Config.codec``): the layers above cope with any codec that keeps the
contract in ``ipcactors._proto._codec``, including one that carries events only and has no
handshake (as node-ipc's wire). ``lines`` below is such a codec, small enough to read at once:
one JSON object per line, ``{"e": event, "d": data}``."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

import ipcactors
from ipcactors import Actor, Config
from ipcactors._proto._codec import CODECS, Codec, Decoder, Encoder, codec_named
from ipcactors._proto._messages import Event, Frame, Limits, Message, Ping, Request
from ipcactors._proto._msgpack import MsgpackCodec, MsgpackDecoder

pytestmark = pytest.mark.anyio


class LinesEncoder(Encoder):
    codec_name = "lines"

    def event(self, event: str, data: Any) -> Frame:
        try:
            return json.dumps({"e": event, "d": data}, separators=(",", ":")).encode() + b"\n"
        except (TypeError, ValueError) as exc:
            raise ipcactors.EncodeError(f"cannot encode as JSON: {exc}") from None


class LinesDecoder(Decoder):
    def __init__(self, limits: Limits) -> None:
        self._buffer = bytearray()
        self._limit = limits.max_frame_size

    def feed(self, data: bytes | bytearray | memoryview = b"") -> list[Message]:
        self._buffer += data
        *lines, rest = self._buffer.split(b"\n")
        if len(rest) > self._limit:
            raise ipcactors.FrameTooLargeError(len(rest), self._limit)
        self._buffer = rest
        return [self._message(line) for line in lines]

    @staticmethod
    def _message(line: bytes) -> Message:
        try:
            value = json.loads(line)
        except ValueError as exc:
            raise ipcactors.DecodeError(f"not JSON: {exc}") from None
        if type(value) is not dict or type(value.get("e")) is not str or not value["e"]:
            raise ipcactors.DecodeError("a line must be an object with a non-empty str 'e'")
        return Event(value["e"], value.get("d"))

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def missing(self) -> int | None:
        return None

    def handshake_done(self) -> None:
        pass

    def decode_datagram(self, body: bytes) -> list[Message]:
        return [self._message(line) for line in body.split(b"\n") if line]


class LinesCodec(Codec):
    name = "lines"
    kinds = frozenset({Event})
    handshake = False

    def encoder(self, limits: Limits) -> Encoder:
        return LinesEncoder()

    def datagram_encoder(self, limits: Limits) -> Encoder:
        return LinesEncoder()

    def decoder(self, limits: Limits) -> Decoder:
        return LinesDecoder(limits)


@pytest.fixture
def lines() -> Iterator[str]:
    CODECS["lines"] = LinesCodec()
    try:
        yield "lines"
    finally:
        del CODECS["lines"]


def test_msgpack_is_the_default_and_carries_everything() -> None:
    codec = codec_named(Config().codec)
    assert isinstance(codec, MsgpackCodec)
    assert codec.handshake
    assert codec.carries(Request)
    assert codec.carries(Ping)
    # A datagram is a bare body; a stream frame is the same body after a u32 length.
    stream, datagram = codec.encoder(Limits()), codec.datagram_encoder(Limits())
    frame, body = stream.event("e", [1, 2]), datagram.event("e", [1, 2])
    assert frame == len(body).to_bytes(4, "big") + body
    (message,) = MsgpackDecoder(Limits()).decode_datagram(body)  # type: ignore[arg-type]
    assert type(message) is Event
    assert message.data == [1, 2]


def test_codec_names_are_validated(lines: str) -> None:
    with pytest.raises(ipcactors.ConfigError, match="codec must be one of 'lines', 'msgpack'"):
        Config(codec="json")
    with pytest.raises(ipcactors.ConfigError, match="codec must be"):
        Config(codec=None)  # type: ignore[arg-type]
    with pytest.raises(ipcactors.ConfigError, match="auth_key needs a handshake"):
        Config(codec=lines, auth_key="secret")
    assert Config(codec=lines).codec == "lines"


def test_an_encoder_refuses_kinds_its_codec_does_not_carry() -> None:
    encoder = LinesEncoder()
    for make in (
        lambda: encoder.request("e", 1, 0),
        lambda: encoder.reply(0, 1),
        lambda: encoder.hello("me"),
        lambda: encoder.ping(),
    ):
        with pytest.raises(ipcactors.UnsupportedError, match="'lines' codec cannot carry"):
            make()


@pytest.mark.parametrize("transport", ["unix", "tcp"])
async def test_a_codec_without_handshake_opens_at_once_and_carries_events(
    transport: str, socket_dir: str, lines: str
) -> None:
    async with Actor("world", socket_root=socket_dir, silent=True, codec=lines) as world:
        server = await (world.serve() if transport == "unix" else world.serve_net("127.0.0.1", 0))
        connected: list[str] = []
        server.on("connect", lambda client: connected.append(client.id))

        @server.on("message")
        async def on_message(data: str, client: ipcactors.Client) -> None:
            await client.emit("message", data + " world!")

        async with Actor("hello", socket_root=socket_dir, silent=True, codec=lines) as hello:
            got: list[str] = []
            with anyio.fail_after(10):
                if transport == "unix":
                    conn = await hello.connect_to("world")
                else:
                    port = server.address[1]  # type: ignore[index]
                    conn = await hello.connect_to_net("world", "127.0.0.1", port)
                conn.on("message", got.append)
                await conn.emit("message", "hello")
                await conn.emit("message", "über")
                while len(got) < 2:
                    await anyio.sleep(0.01)
            assert got == ["hello world!", "über world!"]
            assert conn.connected
            # Nothing on the wire names the client: the server numbered it.
            assert connected == ["lines-1"]
            assert list(server.clients) == ["lines-1"]
            # No requests on such a wire: a clear error before anything is queued.
            with pytest.raises(ipcactors.UnsupportedError, match="carries events only"):
                await conn.request("message", "x")
            with pytest.raises(ipcactors.UnsupportedError, match="carries events only"):
                await server.request("lines-1", "message", "x")
            assert conn.statistics().outbox_bytes == 0


async def test_a_codec_without_pings_has_no_heartbeats(socket_dir: str, lines: str) -> None:
    # Heartbeats would ping within 0.05 s and drop a silent peer after 0.1 s.
    quick = {"heartbeat_interval": 0.05, "heartbeat_timeout": 0.05}
    async with Actor("world", socket_root=socket_dir, silent=True, codec=lines, **quick) as world:
        server = await world.serve()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
            raw.setblocking(False)
            raw.connect(world.default_path("world"))
            with anyio.fail_after(10):
                while not server.clients:
                    await anyio.sleep(0.01)
            await anyio.sleep(0.5)  # many heartbeat periods: no ping came, nobody was dropped
            with pytest.raises(BlockingIOError):
                raw.recv(100)
            assert list(server.clients) == ["lines-1"]
            assert server.statistics().heartbeat_timeouts == 0
            raw.sendall(b'{"e":"x"}\n')
            raw.sendall(b"not json\n")  # a malformed frame closes that connection
            with anyio.fail_after(10):
                while server.clients:
                    await anyio.sleep(0.01)


async def test_a_datagram_may_carry_several_messages(lines: str) -> None:
    async with Actor("world", silent=True, codec=lines) as world:
        server = await world.serve_net("127.0.0.1", 0, udp="udp4")
        got: list[Any] = []
        server.on("n", lambda data, peer: got.append(data))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
            raw.sendto(b'{"e":"n","d":1}\n{"e":"n","d":2}\n', server.address)
            raw.sendto(b'{"e":"n","d":3}\nnot json\n', server.address)  # dropped whole
            raw.sendto(b'{"e":"n","d":4}\n', server.address)
            with anyio.fail_after(10):
                while len(got) < 3:
                    await anyio.sleep(0.01)
        assert got == [1, 2, 4]
        assert server.statistics().dropped_malformed == 1
        with pytest.raises(ipcactors.UnsupportedError):
            await server.request(("127.0.0.1", 9), "n")


@pytest.mark.parametrize(
    ("what", "header"),
    [
        ("ext", b"\xc9\xff\xff\xff\xff\x05"),
        ("bin", b"\xc6\xff\xff\xff\xff"),
        ("str", b"\xdb\xff\xff\xff\xff"),
        ("array", b"\xdd\xff\xff\xff\xff"),
        ("map", b"\xdf\xff\xff\xff\xff"),
    ],
)
def test_a_length_past_the_frame_is_named_so(what: str, header: bytes) -> None:
    """A body declaring a str, bin, ext, array or map longer than its frame (or than the
    items allowed) is refused in words: it read "ValueError: 0 exceeds max_ext_len(67174400)"
    or "OutOfData: No more data to unpack", msgpack's texts."""
    body = b"\x93\x00\xa1e" + header + b"\x00" * 8
    frame = len(body).to_bytes(4, "big") + body
    with pytest.raises(ipcactors.DecodeError) as caught:
        MsgpackDecoder(Limits()).feed(frame)
    message = str(caught.value)
    if what in ("array", "map"):
        assert f"{what} of 4294967295 items, more than max_container_len=1048576" in message
    else:
        assert "runs past the end of its frame" in message
    assert "exceeds max_" not in message
    assert "OutOfData" not in message
