"""Batches of events (docs/protocol.md 5.5): several events to a frame, negotiated in the
handshake. Between ipcactors peers a loop of emits travels in batches and arrives whole and in
order, requests and replies among it; a raw peer that announces batches gets them and may send
them; one that does not gets plain events, and so does a server that takes none after a
reconnect, even of events that were queued in batches for the connection before. Real sockets
(Unix, TCP, TLS), both backends. Bad batches are in test_hostile.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import msgpack
import pytest
from anyio.abc import SocketStream
from test_flow import serving, tls_serving

from ipcactors import Actor, Connection, Server

pytestmark = pytest.mark.anyio

EVENTS = 3000  # a few batches' worth of small events (a batch is at most 32 KiB)


def framed(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]


async def eventually(condition: Any, within: float = 10) -> None:
    with anyio.fail_after(within):
        while not condition():
            await anyio.sleep(0.01)


class RawFrames:
    """Reads a raw socket's frames: their bodies decoded, nothing checked but the framing."""

    def __init__(self, stream: SocketStream) -> None:
        self.stream = stream
        self.buffer = bytearray()

    async def next(self) -> Any:
        while True:
            if len(self.buffer) >= 4:
                (size,) = struct.unpack_from(">I", self.buffer)
                if len(self.buffer) >= 4 + size:
                    body = bytes(self.buffer[4 : 4 + size])
                    del self.buffer[: 4 + size]
                    return msgpack.unpackb(body, raw=False)
            self.buffer += await self.stream.receive()


async def receive_events(frames: RawFrames, count: int) -> tuple[list[tuple[str, Any]], set[int]]:
    """The next ``count`` events from ``frames`` (plain or in batches), and the kinds of the
    frames that brought them."""
    got: list[tuple[str, Any]] = []
    kinds: set[int] = set()
    with anyio.fail_after(5):
        while len(got) < count:
            body = await frames.next()
            kinds.add(body[0])
            got += events_of(body)
    return got, kinds


def events_of(body: list[Any]) -> list[tuple[str, Any]]:
    """The events a body carries: one for kind 0, all of a batch's for kind 14."""
    if body[0] == 0:
        return [(body[1], body[2])]
    assert body[0] == 14, body
    items = body[1]
    return list(zip(items[::2], items[1::2], strict=True))


@pytest.mark.parametrize("transport", ["unix", "tcp", "tls"])
async def test_a_loop_of_emits_arrives_whole_and_in_order_both_ways(
    transport: str, socket_dir: str
) -> None:
    """Thousands of small events each way, in batches (the statistics say so), a request in
    the middle of them: every event is handled once, in order, the request between the events
    emitted before and after it."""
    handled: list[Any] = []
    back: list[Any] = []
    serve = tls_serving(socket_dir) if transport == "tls" else serving(transport, socket_dir)
    async with serve as (server, connect, *_):
        server.on("ev", lambda data, client: handled.append(data))
        server.on("ask", lambda data, client: handled.append(("ask", data)) or data)
        async with Actor("hello", socket_root=socket_dir, silent=True) as hello:
            connection: Connection = await connect(hello)
            connection.on("back", back.append)
            for number in range(EVENTS):
                await connection.emit("ev", {"n": number, "name": "sensor", "value": 0.5})
                if number == EVENTS // 2:
                    with anyio.fail_after(10):
                        assert await connection.request("ask", number) == number
            await eventually(lambda: len(handled) == EVENTS + 1)
            client = server.clients["hello"]
            for number in range(EVENTS):
                await client.emit("back", number)
            await eventually(lambda: len(back) == EVENTS)
            assert connection.statistics().batches
            assert client.statistics().batches
    half = EVENTS // 2
    expected: list[Any] = [{"n": n, "name": "sensor", "value": 0.5} for n in range(half + 1)]
    expected.append(("ask", half))
    expected += [{"n": n, "name": "sensor", "value": 0.5} for n in range(half + 1, EVENTS)]
    assert handled == expected
    assert back == list(range(EVENTS))


@asynccontextmanager
async def raw_client(server: Server) -> AsyncIterator[tuple[SocketStream, RawFrames]]:
    address = server.address
    with anyio.fail_after(5):
        if isinstance(address, str):
            stream: SocketStream = await anyio.connect_unix(address)
        else:
            stream = await anyio.connect_tcp(*address)
    async with stream:
        yield stream, RawFrames(stream)


@pytest.mark.parametrize("transport", ["unix", "tcp"])
async def test_a_raw_peer_that_announces_batches_gets_them_and_may_send_them(
    transport: str, socket_dir: str
) -> None:
    handled: list[Any] = []
    async with serving(transport, socket_dir) as (server, *_):
        server.on("ev", lambda data, client: handled.append(data))
        async with raw_client(server) as (stream, frames):
            hello = framed(pack([4, {"v": 1, "id": "raw", "batch": 4096}]))
            batch = framed(pack([14, ["ev", 1, "ev", {"two": 2}, "ev", [3]]]))
            await stream.send(hello + batch + framed(pack([0, "ev", 4])))
            with anyio.fail_after(5):
                welcome = await frames.next()
            assert welcome[0] == 5
            assert 256 <= welcome[1]["batch"] <= 32 * 1024
            await eventually(lambda: len(handled) == 4)
            assert handled == [1, {"two": 2}, [3], 4]
            client = server.clients["raw"]
            for number in range(500):
                await client.emit("back", number)
            got, kinds = await receive_events(frames, 500)
            assert got == [("back", number) for number in range(500)]
            assert 14 in kinds  # (a loop of 500 emits without a pass: in batches)


class NotPlain(int):
    """An int subclass: packed as an int, but not plain (its type is not int)."""


# Plain data (docs/protocol.md 5.5): what the sender batches. Arrays and maps of scalars, nested
# up to four containers deep, small bins among them; and what it sends alone: anything deeper, a
# large bin (out of band), a type msgpack packs only as something else (an int subclass).
PLAIN_DATA: list[Any] = [
    [1, 2, 3],
    (1.5, -2.5),
    {"pos": [1, 2], "id": 3},
    [{"a": 1}, {"b": [None, True]}],
    b"\x00" * 100,
    {"blob": bytearray(b"xy"), b"k": "v"},
    [[[[1]]]],
    {"a": {"b": {"c": {"d": "four"}}}},
    [],
    {},
]
ALONE_DATA: list[Any] = [
    [[[[[1]]]]],
    {"a": {"b": {"c": {"d": {"e": "five"}}}}},
    b"\x01" * (64 * 1024),
    [b"\x02" * (64 * 1024)],
    [True, memoryview(b"view")],
    {"n": NotPlain(7)},
]


@pytest.mark.parametrize("transport", ["unix", "tcp"])
async def test_events_of_nested_plain_data_travel_in_batches(
    transport: str, socket_dir: str
) -> None:
    """A loop of emits of plain data of every shape goes in batches to a peer that takes them,
    in order; data that is not plain goes alone, in its place among them."""
    async with serving(transport, socket_dir) as (server, *_):
        async with raw_client(server) as (stream, frames):
            await stream.send(framed(pack([4, {"v": 1, "id": "raw", "batch": 32 * 1024}])))
            with anyio.fail_after(5):
                assert (await frames.next())[0] == 5
            await eventually(lambda: "raw" in server.clients)
            client = server.clients["raw"]
            sent: list[tuple[Any, bool]] = []
            for number in range(40):  # (without a loop pass: each run of plain ones, a batch)
                for data in PLAIN_DATA:
                    await client.emit("plain", data)
                    sent.append((data, True))
                alone = ALONE_DATA[number % len(ALONE_DATA)]
                await client.emit("alone", alone)
                sent.append((alone, False))
            got: list[tuple[Any, bool]] = []
            with anyio.fail_after(10):
                while len(got) < len(sent):
                    body = await frames.next()
                    got += [(data, body[0] == 14) for _, data in events_of(body)]
    assert got == [(as_decoded(data), batched) for data, batched in sent]


def as_decoded(data: Any) -> Any:
    """``data`` as msgpack decodes it (tuples as lists, bytearrays and views as bytes)."""
    return msgpack.unpackb(pack(data), raw=False)


@pytest.mark.parametrize("transport", ["unix", "tcp"])
async def test_a_peer_that_does_not_announce_batches_gets_plain_events(
    transport: str, socket_dir: str
) -> None:
    """A hello without ``batch`` (a peer of another language, or an older ipcactors): the
    welcome announces none, and the events come one to a frame."""
    async with serving(transport, socket_dir) as (server, *_):
        async with raw_client(server) as (stream, frames):
            await stream.send(framed(pack([4, {"v": 1, "id": "raw"}])))
            with anyio.fail_after(5):
                welcome = await frames.next()
            assert welcome[0] == 5
            assert "batch" not in welcome[1]
            await eventually(lambda: "raw" in server.clients)
            client = server.clients["raw"]
            assert not client.statistics().batches
            for number in range(500):
                await client.emit("back", number)
            with anyio.fail_after(5):
                bodies = [await frames.next() for _ in range(500)]
            assert bodies == [[0, "back", number] for number in range(500)]


@pytest.mark.parametrize("transport", ["unix", "tcp"])
async def test_broadcasts_go_in_batches_to_those_that_take_them_and_plain_to_others(
    transport: str, socket_dir: str
) -> None:
    async with serving(transport, socket_dir) as (server, *_):
        async with raw_client(server) as (batching, batched), raw_client(server) as (plain, one):
            await batching.send(framed(pack([4, {"v": 1, "id": "batching", "batch": 4096}])))
            await plain.send(framed(pack([4, {"v": 1, "id": "plain"}])))
            with anyio.fail_after(5):
                assert (await batched.next())[0] == 5
                assert (await one.next())[0] == 5
            await eventually(lambda: {"batching", "plain"} <= set(server.clients))
            for number in range(500):
                await server.broadcast("news", {"n": number})
            expected = [("news", {"n": number}) for number in range(500)]
            got, kinds = await receive_events(batched, 500)
            with anyio.fail_after(5):
                bodies = [await one.next() for _ in range(500)]
            assert got == expected
            assert 14 in kinds
            assert bodies == [[0, "news", {"n": number}] for number in range(500)]


@pytest.mark.parametrize("transport", ["unix", "tcp"])
async def test_acknowledged_events_travel_in_numbered_batches(
    transport: str, socket_dir: str
) -> None:
    """A batch of acknowledged events carries its first event's seq ([14, [...], seq]): the
    server delivers a raw client's numbered batch once and acknowledges it, and numbers the
    batches it sends to a client that acknowledges its events."""
    handled: list[Any] = []
    async with serving(transport, socket_dir, acked="on") as (server, *_):
        server.on("ev", lambda data, client: handled.append(data))
        async with raw_client(server) as (stream, frames):
            offer = {"session": "raw-stream", "sent": 0, "peer": "", "last": 0}
            hello = {"v": 1, "id": "raw", "batch": 4096, "acked": offer}
            batch = framed(pack([14, ["ev", "a", "ev", "b", "ev", "c"], 1]))
            again = framed(pack([14, ["ev", "b", "ev", "c", "ev", "d"], 2]))  # b, c: seen
            await stream.send(framed(pack([4, hello])) + batch + again)
            with anyio.fail_after(5):
                welcome = await frames.next()
            assert welcome[0] == 5
            assert welcome[1]["acked"]["last"] == 0
            await eventually(lambda: len(handled) == 4)
            client = server.clients["raw"]
            for number in range(300):
                await client.emit("back", number)
            acked_up_to = batches = 0
            numbered: list[tuple[int, Any]] = []
            with anyio.fail_after(5):
                while len(numbered) < 300 or acked_up_to < 4:
                    body = await frames.next()
                    if body[0] == 11:
                        acked_up_to = max(acked_up_to, body[1])
                    elif body[0] == 14:
                        batches += 1
                        first = body[2]
                        events = events_of(body)
                        numbered += [(first + i, data) for i, (_, data) in enumerate(events)]
                    else:
                        assert body[0] == 0, body
                        numbered.append((body[3], body[2]))
            assert handled == ["a", "b", "c", "d"]
            assert acked_up_to == 4
            assert numbered == [(number + 1, number) for number in range(300)]
            assert batches  # (a loop of 300 emits without a pass: in batches)


def read_frame(sock: socket.socket) -> Any:
    """One frame's body, decoded, from a blocking socket."""

    def exactly(size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = sock.recv(size - len(data))
            if not chunk:
                raise ConnectionError("closed by the client")
            data += chunk
        return data

    (size,) = struct.unpack(">I", exactly(4))
    return msgpack.unpackb(exactly(size), raw=False)


def serve_twice(
    listener: socket.socket,
    first_ready: threading.Event,
    drop_first: threading.Event,
    seen: list[Any],
) -> None:
    """A raw server for one client, twice, on plain blocking sockets (nothing reads ahead of
    it): the first connection announces batches and reads nothing more until ``drop_first``,
    then drops; the second announces none and reads every frame into ``seen`` until the event
    whose data is ``"last"``."""
    for attempt in range(2):
        sock, _ = listener.accept()
        with sock:
            sock.settimeout(20)
            hello = read_frame(sock)
            assert hello[0] == 4
            assert hello[1]["batch"] > 0
            welcome: dict[str, Any] = {"v": 1, "id": "raw-server"}
            if attempt == 0:
                welcome["batch"] = 4096
                sock.sendall(framed(pack([5, welcome])))
                first_ready.set()
                assert drop_first.wait(20)
                continue
            sock.sendall(framed(pack([5, welcome])))
            while not seen or seen[-1][2] != "last":
                seen.append(read_frame(sock))


async def test_events_queued_in_batches_go_out_plain_to_a_server_that_takes_none(
    socket_dir: str,
) -> None:
    """Batches queued for a connection that took them, then lost, are split into the frames
    of their events for the next connection, whose server announced no batches: it gets every
    event still queued, one to a frame, in order (those the kernel had may be lost with the
    first connection: at most once)."""
    first_ready, drop_first = threading.Event(), threading.Event()
    seen: list[Any] = []
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(20)
        port = listener.getsockname()[1]
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                anyio.to_thread.run_sync, serve_twice, listener, first_ready, drop_first, seen
            )
            async with Actor("raw", socket_root=socket_dir, silent=True, retry=0.05) as actor:
                with anyio.fail_after(5):
                    connection = await actor.connect_to_net("raw-server", "127.0.0.1", port)
                    while not first_ready.is_set():
                        await anyio.sleep(0.01)
                assert connection.statistics().batches
                emitted = 0
                padding = "x" * 200
                with anyio.fail_after(20):
                    while connection.statistics().outbox_bytes < 1024 * 1024 and emitted < 10**6:
                        await connection.emit("ev", {"n": emitted, "padding": padding})
                        emitted += 1
                assert connection.statistics().outbox_bytes >= 1024 * 1024  # queued, in batches
                drop_first.set()
                await eventually(lambda: not connection.connected)
                await connection.emit("ev", "last")
                await eventually(lambda: bool(seen) and seen[-1][2] == "last", within=20)
                assert not connection.statistics().batches
    assert {body[0] for body in seen} == {0}
    numbers = [body[2]["n"] for body in seen[:-1]]
    assert numbers, "nothing queued reached the second connection"
    assert numbers == list(range(numbers[0], emitted))
