"""Byte streams (``_streams``): what the asyncio fast path promises, checked on every loop.

``wrap_socket`` gives the asyncio fast path (``AsyncioSocketStream``) on asyncio and uvloop, and
anyio's own stream on Trio; the layers above must not be able to tell them apart.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
import trustme
from anyio.abc import ByteStream
from anyio.streams.tls import TLSStream

from ipcactors._transports._asyncio import AsyncioSocketStream
from ipcactors._transports._streams import shared_sender, wrap_socket

pytestmark = pytest.mark.anyio

ASYNCIO = ("asyncio", {})
UVLOOP = ("asyncio", {"use_uvloop": True})
TRIO = ("trio", {})


@pytest.fixture
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    backend: tuple[str, dict[str, Any]] = getattr(request, "param", ASYNCIO)
    if backend[1].get("use_uvloop"):
        pytest.importorskip("uvloop")
    return backend


@pytest.fixture(scope="module", autouse=True)
def _uvloop_global_state() -> None:
    """uvloop opens a process-wide pipe with its first loop; open it before the leak checks."""
    try:
        import asyncio

        import uvloop
    except ImportError:
        return
    uvloop.run(asyncio.sleep(0))


@asynccontextmanager
async def stream_pair(tls: bool) -> AsyncIterator[tuple[ByteStream, ByteStream]]:
    """Two connected streams over a Unix socket pair, through TLS when ``tls``."""
    left, right = socket.socketpair()
    left.setblocking(False)
    right.setblocking(False)
    a: ByteStream = await wrap_socket(left)
    b: ByteStream = await wrap_socket(right)
    try:
        if tls:
            ca = trustme.CA()
            server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ca.issue_cert("localhost").configure_cert(server_context)
            client_context = ssl.create_default_context()
            ca.configure_trust(client_context)
            wrapped: list[ByteStream] = []

            async def handshake(stream: ByteStream, server_side: bool) -> None:
                context = server_context if server_side else client_context
                wrapped.append(
                    await TLSStream.wrap(
                        shared_sender(stream),  # as _tls.py does
                        server_side=server_side,
                        hostname=None if server_side else "localhost",
                        ssl_context=context,
                        standard_compatible=False,
                    )
                )

            with anyio.fail_after(10):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(handshake, a, False)
                    tg.start_soon(handshake, b, True)
            a, b = sorted(wrapped, key=lambda s: s.extra(ssl_object_attr()).server_side)
        yield a, b
    finally:
        await anyio.aclose_forcefully(a)
        await anyio.aclose_forcefully(b)


def ssl_object_attr() -> Any:
    from anyio.streams.tls import TLSAttribute

    return TLSAttribute.ssl_object


@pytest.mark.parametrize(
    ("anyio_backend", "tls"),
    [
        pytest.param(ASYNCIO, False, id="asyncio-plain"),
        pytest.param(ASYNCIO, True, id="asyncio-tls"),
        pytest.param(UVLOOP, False, id="uvloop-plain"),
        pytest.param(UVLOOP, True, id="uvloop-tls"),
        # Trio's plain stream has one writer (and direct writes that never wait): anyio's
        # stream refuses a second sender, so only the TLS case shares it.
        pytest.param(TRIO, True, id="trio-tls"),
    ],
    indirect=["anyio_backend"],
)
async def test_concurrent_senders_all_finish(tls: bool, anyio_backend: Any) -> None:
    """Several tasks sending at once while the kernel's buffer is full (a TLS stream's writer
    and its reader flushing a record, say): each finishes. One drain waiter used to be kept on
    asyncio, so all but the last sender hung; on Trio a second sender beneath TLS raised
    BusyResourceError."""
    senders = 4
    size = 1024 * 1024  # well over a Unix socket's buffer: every sender has to wait
    async with stream_pair(tls) as (a, b):
        if anyio_backend[0] == "asyncio":
            raw = a.transport_stream if isinstance(a, TLSStream) else a
            assert isinstance(raw, AsyncioSocketStream)
        finished: list[int] = []
        received = bytearray()

        async def send(i: int) -> None:
            await a.send(bytes([i]) * size)
            finished.append(i)

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for i in range(senders):
                    tg.start_soon(send, i)
                await anyio.sleep(0.05)  # let them all block on a full buffer
                while len(received) < senders * size:
                    received += await b.receive(1024 * 1024)
        assert sorted(finished) == list(range(senders))
        # Each send's bytes arrive in one piece: the runs are whole, in some order.
        runs = [received[k * size : (k + 1) * size] for k in range(senders)]
        assert sorted(run[0] for run in runs) == list(range(senders))
        assert all(run == bytes([run[0]]) * size for run in runs)


class _Frames:
    """A minimal ``FrameQueue`` (what ``Outbox`` is to the writer) for the fast path's writer."""

    closed = False

    def __init__(self) -> None:
        self.frames: list[Any] = []
        self.on_frames: Any = None
        self.direct: Any = None
        self.on_lost: Any = None
        self.sent_count = 0

    def __len__(self) -> int:
        return len(self.frames)

    def take(self, budget: int | None = None) -> list[Any]:
        frames, self.frames = self.frames, []
        return frames

    def sent(self) -> None:
        self.sent_count += 1

    def wake(self) -> None:
        pass

    async def wait_frames(self) -> None:
        raise AssertionError("the fast path's writer is loop callbacks, not a task")

    def put(self, frame: Any) -> None:
        self.frames.append(frame)
        if self.on_frames is not None:
            self.on_frames()


@pytest.mark.parametrize(
    "anyio_backend", [ASYNCIO, UVLOOP], ids=["asyncio", "uvloop"], indirect=True
)
async def test_large_frames_split_across_partial_sendmsg(
    anyio_backend: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Frames of a header, a large part straight from its memory, an empty part and a tail go
    out in one sendmsg each while the kernel takes them, and whole and in order when it takes
    only some: here the send buffer stays at the default (~208 KiB) and the reader starts late,
    so every frame's sendmsg is cut, in its header, its payload or its tail."""
    import ipcactors._transports._asyncio as fast

    monkeypatch.setattr(fast, "widen_send_buffer", lambda sock: None)
    frames = []
    for i in range(6):
        payload = memoryview(bytearray(bytes([i]) * (700_000 + 4099 * i)))
        frames.append((bytes([100 + i]) * (17 + i), payload, b"", bytes([200 + i]) * (i + 1)))
    expected = b"".join(b"".join(bytes(part) for part in frame) for frame in frames)
    async with stream_pair(False) as (a, b):
        assert isinstance(a, AsyncioSocketStream)
        queue = _Frames()
        detach = a.attach(queue)
        try:
            assert queue.direct is not None
            queue.direct(frames[0])  # a request with nothing queued: written at once
            for frame in frames[1:]:
                queue.put(frame)
            await anyio.sleep(0.05)  # the kernel is full: the rest waits in the writer
            received = bytearray()
            with anyio.fail_after(10):
                while len(received) < len(expected):
                    received += await b.receive(64 * 1024)
            assert received == expected
        finally:
            detach()


@pytest.mark.parametrize(
    "anyio_backend", [ASYNCIO, UVLOOP], ids=["asyncio", "uvloop"], indirect=True
)
async def test_reads_without_waiting_keep_order_and_report_a_reset(anyio_backend: Any) -> None:
    """``receive_now`` / ``receive_into_now`` (the rest of a frame, read without a loop pass):
    bytes read ahead come first, then the socket's; none is ``b""`` / 0; a reset met by a
    direct read is raised as BrokenResourceError, and so is every receive after it (the
    transport, aborted, reports no error of its own: the end of the stream must not hide it)."""
    left, peer = socket.socketpair()
    left.setblocking(False)
    a = await wrap_socket(left)
    try:
        assert isinstance(a, AsyncioSocketStream)
        assert a.receive_now(10) == b""
        assert a.receive_into_now(memoryview(bytearray(10))) == 0
        peer.send(b"0123456789")
        with anyio.fail_after(5):
            while not a._protocol.chunks:  # read ahead by the loop
                await anyio.sleep(0.01)
        peer.send(b"abcdef")  # in the kernel, behind what was read ahead
        assert a.receive_now(4) == b"0123"
        buffer = bytearray(9)
        assert a.receive_into_now(memoryview(buffer)) == 9
        assert buffer == b"456789abc"
        assert a.receive_now(10) == b"def"
        # The peer closes with bytes of ours unread: a reset, met by a direct read.
        await a.send(b"unread")
        peer.close()
        with pytest.raises(anyio.BrokenResourceError):
            a.receive_now(10)
        with pytest.raises(anyio.BrokenResourceError):
            await a.receive(10)
    finally:
        peer.close()
        await anyio.aclose_forcefully(a)
