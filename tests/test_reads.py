"""Frames however the reads cut them. A read asks the kernel for 64 KiB; a frame that misses
less than that is read with what follows it (up to a budget per loop pass), a large payload's
bytes go straight into its final buffer, and the rest of a frame begun waits at most
``frame_timeout``. Whatever the cuts, every event arrives once, whole and in order: frames just
under, at and over one read, payloads read in place and not, small frames between them, written
at once or in pieces. A bare client (real sockets, Unix and TCP) writes the bytes; both
backends.
"""

from __future__ import annotations

import random
import time
from typing import Any

import anyio
import pytest
from test_replies import framed
from test_request_reads import bare_client, served

from ipcactors import Client

pytestmark = pytest.mark.anyio

TRANSPORTS = ["unix", "tcp"]
READ = 64 * 1024
# Around one read, around the size a payload is received in place from (64 KiB), and past it.
AWKWARD = [
    READ - 40,
    READ - 8,
    READ,
    READ + 1,
    READ + 13,
    READ + 300,
    2 * READ - 20,
    2 * READ + 5,
    98_304,
    262_147,
    40_000,
    300,
    5,
]


def payload(index: int, size: int) -> bytes:
    """``size`` bytes that say where they belong (a misplaced byte changes them)."""
    pattern = index.to_bytes(4, "big") + b"\xa5\x5a"
    return (pattern * (size // len(pattern) + 1))[:size]


def stream_of_events(seed: int, count: int) -> tuple[bytes, list[tuple[str, Any]]]:
    """``count`` events of awkward sizes, small ones between some, as one byte string; and
    what each should arrive as."""
    rng = random.Random(seed)
    wire = bytearray()
    expected: list[tuple[str, Any]] = []
    for index in range(count):
        size = rng.choice(AWKWARD)
        data = payload(index, size)
        wire += framed([0, "blob", data])
        expected.append(("blob", data))
        if rng.random() < 0.3:
            small = {"i": index, "s": "x" * rng.randrange(0, 200)}
            wire += framed([0, "note", small])
            expected.append(("note", small))
    return bytes(wire), expected


def stream_of_shapes(seed: int, count: int) -> tuple[bytes, list[tuple[str, Any]]]:
    """``count`` events whose large payloads are not at their frame's end: a tail after one
    (a few bytes, about one read's head, more than that), two in one frame, small frames
    between some; as one byte string, and what each should arrive as."""
    rng = random.Random(seed)
    wire = bytearray()
    expected: list[tuple[str, Any]] = []
    for index in range(count):
        first = payload(index, rng.choice(AWKWARD[:10]))
        tail = "t" * rng.choice([0, 3, 4_000, 4_100, 5_000, 20_000])
        shape = rng.randrange(3)
        if shape == 0:
            data: Any = [first, tail]
        elif shape == 1:
            data = {"first": first, "between": tail, "second": payload(1000 + index, READ + 7)}
        else:
            data = [tail, first]
        wire += framed([0, "blob", data])
        expected.append(("blob", data))
        if rng.random() < 0.3:
            wire += framed([0, "note", index])
            expected.append(("note", index))
    return bytes(wire), expected


def as_sent(value: Any) -> Any:
    """``value`` as it was sent: a large payload arrives as a ``bytearray``."""
    if isinstance(value, bytearray):
        return bytes(value)
    if isinstance(value, list):
        return [as_sent(item) for item in value]
    if isinstance(value, dict):
        return {key: as_sent(item) for key, item in value.items()}
    return value


async def receive_all(
    transport: str, socket_dir: str, wire: bytes, expected: list[tuple[str, Any]], pieces: int
) -> None:
    """Write ``wire`` to a server (in one go, or in ``pieces`` cut at random points with short
    pauses between some) and check that it handled exactly ``expected``, in order."""
    got: list[tuple[str, Any]] = []
    done = anyio.Event()

    def on(name: str) -> Any:
        def handler(data: Any, client: Client) -> None:
            got.append((name, as_sent(data)))
            if len(got) == len(expected):
                done.set()

        return handler

    async with served(transport, socket_dir) as (server, address):
        server.on("blob", on("blob"))
        server.on("note", on("note"))
        async with bare_client(transport, address) as (stream, _frames):
            if pieces <= 1:
                await stream.send(wire)
            else:
                rng = random.Random(len(wire))
                cuts = sorted(rng.sample(range(1, len(wire)), pieces - 1))
                for start, end in zip([0, *cuts], [*cuts, len(wire)], strict=True):
                    await stream.send(wire[start:end])
                    if rng.random() < 0.2:
                        await anyio.sleep(0.002)
            with anyio.fail_after(20):
                await done.wait()
    assert len(got) == len(expected)
    for index, (arrived, sent) in enumerate(zip(got, expected, strict=True)):
        assert arrived == sent, f"event {index} ({sent[0]}, {len(str(sent[1]))}) arrived wrong"


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("seed", [1, 2])
async def test_a_stream_of_awkward_frames_written_at_once(
    transport: str, seed: int, socket_dir: str
) -> None:
    wire, expected = stream_of_events(seed, 60)
    await receive_all(transport, socket_dir, wire, expected, pieces=1)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_stream_of_awkward_frames_written_in_pieces(
    transport: str, socket_dir: str
) -> None:
    wire, expected = stream_of_events(3, 60)
    await receive_all(transport, socket_dir, wire, expected, pieces=150)


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("pieces", [1, 120])
async def test_payloads_with_more_of_their_frame_behind_them(
    transport: str, pieces: int, socket_dir: str
) -> None:
    """A payload received in place is followed by the rest of its frame (a tail, another
    payload) and then the next frame's head, read together."""
    wire, expected = stream_of_shapes(4, 40)
    await receive_all(transport, socket_dir, wire, expected, pieces=pieces)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_run_of_frames_each_just_over_one_read(transport: str, socket_dir: str) -> None:
    """64 KiB payloads back to back: each frame's last bytes come with the next one's first
    (the case that cost two reads and a loop pass per frame)."""
    expected = [("blob", payload(index, READ)) for index in range(120)]
    wire = b"".join(framed([0, name, data]) for name, data in expected)
    await receive_all(transport, socket_dir, wire, expected, pieces=1)


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("size", [READ - 8, READ + 13, 3 * READ])
async def test_a_frame_that_stops_halfway_after_others_is_dropped_in_time(
    transport: str, size: int, socket_dir: str
) -> None:
    """The frames before it are handled; the half frame waits ``frame_timeout``, no longer,
    and only its connection is closed."""
    frame_timeout = 0.5
    got: list[bytes] = []
    lost = anyio.Event()
    before = [payload(index, READ + 13) for index in range(6)]
    wire = b"".join(framed([0, "blob", data]) for data in before)
    half = framed([0, "blob", payload(99, size)])
    async with served(transport, socket_dir, frame_timeout=frame_timeout) as (server, address):
        server.on("blob", lambda data, client: got.append(bytes(data)))
        server.on("disconnect", lambda client: lost.set())
        async with bare_client(transport, address) as (stream, _frames):
            await stream.send(wire + half[: len(half) // 2])
            started = time.monotonic()
            with anyio.fail_after(10):
                await lost.wait()
            waited = time.monotonic() - started
        assert got == before
        assert frame_timeout * 0.8 <= waited < frame_timeout + 4
