"""Large payloads out of band (issue 12, parts 1 and 5): numpy arrays, bytes, bytearrays and
memoryviews of 64 KiB or more leave the encoder as views of the sender's memory (never copied
or joined to be framed) and arrive whole, on every stream transport and backend (asyncio,
uvloop, Trio; Unix, TCP, TLS); a 64 MiB array fits the default ``max_frame_size``; any CPU
object with ``__dlpack__`` travels as a numpy array."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
import trustme
from _backends import _uvloop_global_state, anyio_backend  # noqa: F401

import ipcactors
from ipcactors import Actor, Connection, Server
from ipcactors._proto._messages import Event, Limits, Request, frame_bytes
from ipcactors._proto._msgpack import MsgpackDecoder, MsgpackEncoder

np = pytest.importorskip("numpy")
pytestmark = pytest.mark.anyio

HOST = "127.0.0.1"
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@asynccontextmanager
async def pair(
    transport: str, socket_dir: str, ca: trustme.CA
) -> AsyncIterator[tuple[Server, Connection]]:
    """A server with an ``echo`` handler and a client connected to it over ``transport``."""
    async with Actor("server", socket_root=socket_dir, silent=True) as server_actor:
        if transport == "unix":
            server = await server_actor.serve()
        elif transport in ("tcp", "tcp-by-name"):
            server = await server_actor.serve_net(HOST, 0)
        else:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ca.issue_cert(HOST).configure_cert(context)
            server = await server_actor.serve_net(HOST, 0, tls=context)
        server.on("echo", lambda data, client: data)
        async with Actor("client", socket_root=socket_dir, silent=True) as client_actor:
            if transport == "unix":
                connection = await client_actor.connect_to("server")
            else:
                port = server.address[1]  # type: ignore[index]
                tls = None
                if transport == "tls":
                    tls = ssl.create_default_context()
                    ca.configure_trust(tls)
                # By name, a client's TCP stream is anyio's own (it reads ahead on asyncio).
                host = "localhost" if transport == "tcp-by-name" else HOST
                connection = await client_actor.connect_to_net("server", host, port, tls=tls)
            yield server, connection


def payloads() -> dict[str, Any]:
    rng = np.random.default_rng(0)
    return {
        "array": rng.standard_normal((256, 1024)).astype(np.float32),  # 1 MiB
        "fortran": np.asfortranarray(rng.standard_normal((300, 100))),  # copied into C order
        "small": np.arange(10, dtype=np.int16),  # in the frame, as always
        "bytes": rng.bytes(200_000),
        "bytearray": bytearray(rng.bytes(100_000)),
        "memoryview": memoryview(rng.standard_normal(40_000)),  # 320,000 bytes, format "d"
        "nested": [{"deep": [rng.bytes(70_000), 1, "x"]}, (b"tiny", rng.bytes(65_536))],
        "text": "é" * 40_000,  # a str is packed as always
    }


def assert_arrived(back: Any, sent: Any) -> None:
    assert back.keys() == sent.keys()
    for name in ("array", "fortran", "small"):
        assert isinstance(back[name], np.ndarray)
        assert back[name].dtype == sent[name].dtype
        np.testing.assert_array_equal(back[name], sent[name])
        assert back[name].flags.writeable
        assert back[name].flags.c_contiguous
    assert bytes(back["bytes"]) == sent["bytes"]
    assert bytes(back["bytearray"]) == sent["bytearray"]
    assert bytes(back["memoryview"]) == sent["memoryview"].tobytes()
    (inner,), (tiny, big) = back["nested"][0]["deep"][:1], back["nested"][1]
    assert bytes(inner) == sent["nested"][0]["deep"][0]
    assert back["nested"][0]["deep"][1:] == [1, "x"]
    assert tiny == b"tiny"
    assert type(tiny) is bytes
    assert bytes(big) == sent["nested"][1][1]
    assert back["text"] == sent["text"]


@pytest.mark.parametrize("transport", ["unix", "tcp", "tcp-by-name", "tls"])
async def test_large_payloads_travel_on_every_transport(
    transport: str, socket_dir: str, ca: trustme.CA
) -> None:
    sent = payloads()
    got: list[Any] = []
    arrived = anyio.Event()
    with anyio.fail_after(20):
        async with pair(transport, socket_dir, ca) as (server, connection):

            def on_event(data: Any, client: Any) -> None:
                got.append(data)
                arrived.set()

            server.on("keep", on_event)
            assert_arrived(await connection.request("echo", sent), sent)
            await connection.emit("keep", sent)
            await arrived.wait()
            assert_arrived(got[0], sent)
            # Several large requests at once share the connection in order.
            results: list[Any] = [None] * 4

            async def ask(index: int) -> None:
                results[index] = await connection.request("echo", sent["array"] * index)

            async with anyio.create_task_group() as tasks:
                for index in range(4):
                    tasks.start_soon(ask, index)
            for index in range(4):
                np.testing.assert_array_equal(results[index], sent["array"] * index)


async def test_a_4096x4096_float32_tensor_fits_the_default_frame_limit(
    socket_dir: str, ca: trustme.CA
) -> None:
    tensor = np.ones((4096, 4096), dtype=np.float32)  # 64 MiB: 67,108,896 bytes encoded
    tensor[-1, -1] = 7.0
    with anyio.fail_after(30):
        async with pair("unix", socket_dir, ca) as (server, connection):
            server.on("sum", lambda data, client: float(data.sum()))
            assert await connection.request("sum", tensor) == 4096 * 4096 + 6.0


def test_frame_parts_are_views_of_the_senders_memory() -> None:
    array = np.arange(64 * 1024, dtype=np.float32)
    blob = bytes(100_000)
    buffer = bytearray(100_000)
    frame = MsgpackEncoder(Limits()).request("x", [array, blob, buffer], 1)
    assert isinstance(frame, tuple)
    assert any(
        isinstance(part, memoryview) and np.shares_memory(np.frombuffer(part, np.uint8), array)
        for part in frame
    )
    assert any(part is blob for part in frame)
    assert any(
        isinstance(part, memoryview) and part.obj is buffer  # type: ignore[union-attr]
        for part in frame
    )
    decoder = MsgpackDecoder(Limits())
    decoder.handshake_done()
    (message,) = decoder.feed(frame_bytes(frame))
    assert isinstance(message, Request)
    np.testing.assert_array_equal(message.data[0], array)
    assert message.data[1:] == [blob, buffer]


def test_an_out_of_band_frame_is_byte_for_byte_the_packed_one() -> None:
    """The wire format does not change: the parts joined are what msgpack packs."""
    import msgpack

    from ipcactors._proto._msgpack import encode_default

    value = {"a": np.arange(20_000, dtype="<i8"), "b": [b"x" * 70_000, 3]}
    frame = frame_bytes(MsgpackEncoder(Limits()).event("e", value))
    body = msgpack.packb([0, "e", value], use_bin_type=True, default=encode_default)
    assert frame[4:] == body


class Tensor:
    """A stand-in for a CPU torch tensor: an object with ``__dlpack__`` and nothing else."""

    def __init__(self, array: Any, device: tuple[int, int] = (1, 0)) -> None:
        self._array = array
        self._device = device

    def __dlpack__(self, **kwargs: Any) -> Any:
        return self._array.__dlpack__(**kwargs)

    def __dlpack_device__(self) -> tuple[int, int]:
        return self._device


async def test_dlpack_objects_arrive_as_numpy_arrays(socket_dir: str, ca: trustme.CA) -> None:
    small = np.arange(12, dtype=np.float64).reshape(3, 4)
    large = np.arange(1 << 18, dtype=np.float32)  # 1 MiB: out of band
    with anyio.fail_after(10):
        async with pair("unix", socket_dir, ca) as (_, connection):
            back = await connection.request("echo", {"s": Tensor(small), "l": Tensor(large)})
            np.testing.assert_array_equal(back["s"], small)
            np.testing.assert_array_equal(back["l"], large)
            with pytest.raises(ipcactors.EncodeError, match="CPU"):
                await connection.request("echo", Tensor(small, device=(2, 0)))  # "CUDA"
            assert await connection.request("echo", 1) == 1  # the connection is unaffected


def test_event_frames_of_a_dlpack_object_and_an_array_are_the_same() -> None:
    array = np.arange(100_000, dtype=np.int32)
    encoder = MsgpackEncoder(Limits())
    decoder = MsgpackDecoder(Limits())
    decoder.handshake_done()
    via_dlpack = frame_bytes(encoder.event("e", Tensor(array)))
    assert via_dlpack == frame_bytes(encoder.event("e", array))
    (message,) = decoder.feed(via_dlpack)
    assert isinstance(message, Event)
    np.testing.assert_array_equal(message.data, array)


def _decoder() -> MsgpackDecoder:
    decoder = MsgpackDecoder(Limits())
    decoder.handshake_done()
    return decoder


def test_a_large_array_is_received_into_its_final_buffer() -> None:
    """After its header, an array's bytes go straight into the array the receiver keeps:
    receiving allocates it once, nothing else of its size (no chunks, joins or copies)."""
    import tracemalloc

    array = np.random.default_rng(0).standard_normal((512, 2048)).astype(np.float32)  # 4 MiB
    wire = memoryview(frame_bytes(MsgpackEncoder(Limits()).request("x", {"w": array, "id": 1}, 9)))
    decoder = _decoder()
    tracemalloc.start()
    try:
        assert decoder.feed(wire[:200]) == []
        position = 200
        targets = []
        while (buffer := decoder.receive_buffer()) is not None:
            targets.append(buffer)
            size = min(len(buffer), 300_000)  # a read's worth, as recv_into would fill it
            buffer[:size] = wire[position : position + size]
            position += size
            messages = decoder.received(size)
        messages += decoder.feed(wire[position:])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    (message,) = messages
    assert isinstance(message, Request)
    received = message.data["w"]
    np.testing.assert_array_equal(received, array)
    assert message.data["id"] == 1
    assert all(np.shares_memory(np.frombuffer(t, np.uint8), received) for t in targets)
    assert peak < array.nbytes + 256 * 1024


@pytest.mark.parametrize("piece", [1, 4096, 100_000, None])
def test_bin_values_of_64_kib_or_more_arrive_as_bytearrays_however_they_are_read(
    piece: int | None,
) -> None:
    value = [b"s" * 65_535, b"L" * 65_536, np.arange(3), b"x" * 300_000]
    wire = frame_bytes(MsgpackEncoder(Limits()).event("e", value)) * 2
    decoder = _decoder()
    messages: list[Any] = []
    step = piece or len(wire)
    for start in range(0, len(wire), step):
        messages += decoder.feed(wire[start : start + step])
    assert len(messages) == 2
    for message in messages:
        small, large, numbers, larger = message.data
        assert type(small) is bytes
        assert small == value[0]
        assert type(large) is bytearray
        assert large == value[1]
        np.testing.assert_array_equal(numbers, value[2])
        assert type(larger) is bytearray
        assert larger == value[3]


@pytest.mark.parametrize("how", ["fed", "received in place"])
@pytest.mark.parametrize("size", [2**16, 2**20 + 1, 3 * 2**20 + 12_345])
def test_a_large_bin_arrives_whole_however_it_is_read(size: int, how: str) -> None:
    """A bin's buffer is made without the zeroes Python writes into a new bytearray (a peer
    declaring a large payload and sending little costs little): every byte of it comes out
    as sent, in order, however the reads cut it, copied in (feed) or received in place, with
    the memory it reuses written over (freed buffers of other bytes first)."""
    litter = [bytearray(b"\xee") * size for _ in range(4)]
    del litter  # (freed: what the payloads' buffers may reuse)
    payload = bytes(range(251)) * (size // 251) + bytes(size % 251)
    wire = memoryview(frame_bytes(MsgpackEncoder(Limits()).event("e", [payload, 7])) * 2)
    decoder = _decoder()
    messages: list[Any] = []
    position = 0
    reads = iter([1, 5000, 300_000, 2**20 + 3, 77_777] * 100)
    while position < len(wire):
        buffer = decoder.receive_buffer() if how != "fed" else None
        read = next(reads)
        if buffer is None:
            messages += decoder.feed(wire[position : position + read])
            position += min(read, len(wire) - position)
            continue
        read = min(read, len(buffer))
        buffer[:read] = wire[position : position + read]
        position += read
        messages += decoder.received(read)
    assert len(messages) == 2
    for message in messages:
        large, seven = message.data
        assert type(large) is bytearray
        assert len(large) == size
        assert large == payload
        assert seven == 7


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"\x93\x00\xa1e\xc6" + (2**31).to_bytes(4, "big"), id="bin-beyond-frame"),
        pytest.param(
            b"\x93\x00\xa1e\xc9"
            + (70_000).to_bytes(4, "big")
            + b"\x4e\x01\x03<f4\x01"
            + (2**40).to_bytes(8, "big"),
            id="array-shape-beyond-its-payload",
        ),
        pytest.param(b"\x93\x00\xa1e\x92\xd8\x7f" + bytes(16), id="marker-from-the-peer"),
    ],
)
def test_a_bad_large_frame_is_refused_before_its_payload_is_allocated(body: bytes) -> None:
    import tracemalloc

    wire = (200_000).to_bytes(4, "big") + body + bytes(200_000 - len(body))
    decoder = _decoder()

    def arrive() -> None:
        for start in range(0, len(wire), 1000):  # as it arrives
            decoder.feed(wire[start : start + 1000])

    tracemalloc.start()
    try:
        with pytest.raises(ipcactors.DecodeError):
            arrive()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 200_000
    with pytest.raises(ipcactors.DecodeError):
        decoder.feed(b"")  # broken for good
