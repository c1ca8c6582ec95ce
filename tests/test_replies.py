"""Replies, however the reads bring them: several in one write, beside events, split across
reads, for no request, or malformed. On asyncio a read that is nothing but whole replies is
taken in the loop's callback (the requester wakes a loop pass sooner); anything else goes
through the connection's reader. Both must end every request exactly once, with its own reply,
and a malformed reply must break the connection as any bad frame does. A bare server (real
sockets, Unix and TCP) scripts the replies; both backends.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import types
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import msgpack
import pytest
from anyio.abc import SocketStream
from test_batches import RawFrames

import ipcactors
from ipcactors import Actor, ConnectionLostError, RemoteError
from ipcactors._transports._fds import can_pass_fds

pytestmark = pytest.mark.anyio

HOST = "127.0.0.1"
TRANSPORTS = ["unix", "tcp"]


def framed(message: Any) -> bytes:
    body = msgpack.packb(message, use_bin_type=True)
    return struct.pack(">I", len(body)) + body


class Frames(RawFrames):
    """Frames read from a bare socket, each within 5 s: the client's, as the bare server
    reads them here (``requests``); the server's, as test_request_reads' bare client does."""

    async def next(self) -> Any:
        with anyio.fail_after(5):
            return await super().next()

    async def requests(self, count: int) -> list[list[Any]]:
        """The next ``count`` requests (``[1, event, data, id]``), skipping anything else."""
        found: list[list[Any]] = []
        while len(found) < count:
            body = await self.next()
            if body[0] == 1:
                found.append(body)
        return found


Script = Callable[[SocketStream, Frames], Awaitable[None]]


@contextlib.asynccontextmanager
async def bare_server(
    transport: str, socket_dir: str, script: Script, *, silent: bool = True, **options: Any
) -> AsyncIterator[ipcactors.Connection]:
    """A server that welcomes one client and then runs ``script``; yields the client's
    connection to it (its actor made with ``options``)."""
    path = os.path.join(socket_dir, "bare")
    if transport == "unix":
        listener: Any = await anyio.create_unix_listener(path)
    else:
        listener = await anyio.create_tcp_listener(local_host=HOST, local_port=0)

    served = 0

    async def serve(stream: SocketStream) -> None:
        nonlocal served
        served += 1
        first = served == 1  # a client that reconnects gets a welcome and nothing else
        async with stream:
            frames = Frames(stream)
            hello = await frames.next()
            assert hello[0] == 4
            await stream.send(framed([5, {"v": 1, "id": "bare"}]))
            if first:
                await script(stream, frames)
            with anyio.move_on_after(5), contextlib.suppress(anyio.EndOfStream):
                while True:
                    await stream.receive()  # until the client closes

    try:
        async with listener, anyio.create_task_group() as task_group:
            task_group.start_soon(listener.serve, serve)
            async with Actor("hello", socket_root=socket_dir, silent=silent, **options) as hello:
                with anyio.fail_after(5):
                    if transport == "unix":
                        connection = await hello.connect_to("bare", path)
                    else:
                        port = listener.extra(anyio.abc.SocketAttribute.local_port)
                        connection = await hello.connect_to_net("bare", HOST, port)
                yield connection
            task_group.cancel_scope.cancel()
    finally:
        if transport == "unix":
            os.unlink(path)  # anyio's listener leaves its socket file


async def gather_requests(
    connection: ipcactors.Connection, calls: list[tuple[str, Any]]
) -> list[Any]:
    """Make the requests at once; each one's reply, or the error it raised."""
    results: list[Any] = [None] * len(calls)

    async def one(index: int, event: str, data: Any) -> None:
        try:
            results[index] = await connection.request(event, data, timeout=5)
        except ipcactors.IPCError as exc:
            results[index] = exc

    with anyio.fail_after(10):
        async with anyio.create_task_group() as task_group:
            for index, (event, data) in enumerate(calls):
                task_group.start_soon(one, index, event, data)
    return results


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_replies_in_one_write_each_end_their_own_request(
    transport: str, socket_dir: str
) -> None:
    """Three requests answered in one write, in reverse order, one of them with an error, and
    a reply for a request nobody made among them (ignored)."""

    async def answer_backwards(stream: SocketStream, frames: Frames) -> None:
        requests = await frames.requests(3)
        by_event = {body[1]: body[3] for body in requests}
        error = {"type": "ValueError", "message": "no", "traceback": ""}
        await stream.send(
            framed([2, by_event["c"], "C"])
            + framed([2, 999_999, "nobody's"])
            + framed([3, by_event["b"], error])
            + framed([2, by_event["a"], {"a": [1, 2]}])
        )

    async with bare_server(transport, socket_dir, answer_backwards) as connection:
        a, b, c = await gather_requests(connection, [("a", 1), ("b", 2), ("c", 3)])
        assert a == {"a": [1, 2]}
        assert isinstance(b, RemoteError)
        assert b.remote_type == "ValueError"
        assert c == "C"
        assert connection.connected


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_reply_beside_events_in_one_write_is_handled_with_them(
    transport: str, socket_dir: str
) -> None:
    """An event before the reply and one after it, in one write: both handled, the reply
    resolved; then the same with the reply first."""
    seen: list[Any] = []

    async def mixed(stream: SocketStream, frames: Frames) -> None:
        (first,) = await frames.requests(1)
        await stream.send(
            framed([0, "news", 1]) + framed([2, first[3], "one"]) + framed([0, "news", 2])
        )
        (second,) = await frames.requests(1)
        await stream.send(framed([2, second[3], "two"]) + framed([0, "news", 3]))

    async with bare_server(transport, socket_dir, mixed) as connection:
        connection.on("news", seen.append)
        with anyio.fail_after(5):
            assert await connection.request("q", 1) == "one"
            assert await connection.request("q", 2) == "two"
            while len(seen) < 3:
                await anyio.sleep(0.01)
        assert seen == [1, 2, 3]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_reply_split_across_reads_ends_its_request(transport: str, socket_dir: str) -> None:
    """A reply trickling in a few bytes at a time, then two replies in one write whose second
    is cut in half: each resolved once it is whole."""

    async def trickle(stream: SocketStream, frames: Frames) -> None:
        (first,) = await frames.requests(1)
        reply = framed([2, first[3], "x" * 100])
        for at in range(0, len(reply), 7):
            await stream.send(reply[at : at + 7])
            await anyio.sleep(0.005)
        requests = await frames.requests(2)
        both = b"".join(framed([2, body[3], body[2] * 10]) for body in requests)
        cut = len(both) - 3
        await stream.send(both[:cut])
        await anyio.sleep(0.05)
        await stream.send(both[cut:])

    async with bare_server(transport, socket_dir, trickle) as connection:
        with anyio.fail_after(5):
            assert await connection.request("q", 1) == "x" * 100
        assert await gather_requests(connection, [("q", 2), ("q", 3)]) == [20, 30]


MALFORMED = {
    "a reply with a str for its id": [2, "one", "x"],
    "a reply with a negative id": [2, -1, "x"],
    "an error reply whose error is not a map": [3, 1, "boom"],
}


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("name", MALFORMED)
async def test_a_malformed_reply_breaks_the_connection(
    transport: str, name: str, socket_dir: str, log_lines: list[str]
) -> None:
    """A frame of a reply's kind that is not a valid reply: the connection is dropped as for
    any protocol error (and says why), and the request waiting on it fails with
    ConnectionLostError instead of waiting for its timeout."""

    async def malformed(stream: SocketStream, frames: Frames) -> None:
        await frames.requests(1)
        await stream.send(framed(MALFORMED[name]))

    async with bare_server(transport, socket_dir, malformed, silent=False) as connection:
        with anyio.fail_after(5), pytest.raises(ConnectionLostError):
            await connection.request("q", 1, timeout=30)
        with anyio.fail_after(5):  # (the request may fail first: it need not wait for this)
            while not any("closing connection to 'bare'" in line for line in log_lines):
                await anyio.sleep(0.01)
    closing = [line for line in log_lines if "closing connection to 'bare'" in line]
    assert "WARNING" in closing[0]


async def test_replies_with_shared_memory_on_each_end_their_own_request(socket_dir: str) -> None:
    """Shared memory on (Unix, descriptors passed): small replies, whose reads the loop's
    callback may take, and arrays in shared memory, whose segments and releases travel beside
    them, in a loop and at once; each request gets its own reply."""
    np = pytest.importorskip("numpy")
    shared = {"max_shared_bytes": 16 * 1024 * 1024}
    async with Actor("world", socket_root=socket_dir, silent=True, **shared) as world:
        server = await world.serve()
        server.on("small", lambda data, client: data * 2)
        server.on("array", lambda data, client: np.full(data, data, dtype=np.int64))
        async with Actor("hello", socket_root=socket_dir, silent=True, **shared) as hello:
            connection = await hello.connect_to("world")
            with anyio.fail_after(20):
                for number in range(1, 60):
                    assert await connection.request("small", number) == number * 2
                    if number % 3 == 0:
                        size = 40_000 + number
                        array = await connection.request("array", size)
                        assert array.shape == (size,)
                        assert int(array[0]) == int(array[-1]) == size
                        del array
                calls = [("small", n) if n % 2 else ("array", 40_000 + n) for n in range(40)]
                results = await gather_requests(connection, calls)
            for (event, data), result in zip(calls, results, strict=True):
                if event == "small":
                    assert result == data * 2
                else:
                    assert result.shape == (data,)
                    assert int(result[-1]) == data
            assert connection.statistics().shared_received > 0


# --- replies in the kernel before the request goes ------------------------------------------------
# A peer on the same CPU has usually answered by the time the requester's write returns: on
# Trio, the requester then takes whole replies itself while the reader waits (``Channel.
# take_replies_now``); anything else is left to the reader, untouched. Here the bare server's
# bytes are in the kernel before the request is made (written straight to its socket on Trio,
# no loop pass between), so that path is taken every time; on asyncio the loop's callback
# reads them, as it always does.

ERROR = {"type": "ValueError", "message": "no", "traceback": ""}
AHEAD: dict[str, tuple[bytes, bytes]] = {  # (before the request, after it)
    "a reply": (framed([2, 1, "one"]), b""),
    "an error reply": (framed([3, 1, ERROR]), b""),
    "a reply for nobody, then ours": (framed([2, 77, "x"]) + framed([2, 1, "one"]), b""),
    "an event, then the reply": (framed([0, "news", 1]) + framed([2, 1, "one"]), b""),
    "the reply, then an event": (framed([2, 1, "one"]) + framed([0, "news", 1]), b""),
    "the reply and half an event": (
        framed([2, 1, "one"]) + framed([0, "news", 1])[:5],
        framed([0, "news", 1])[5:],
    ),
    "a malformed reply": (framed([2, "one", "x"]), b""),
}
TAKEN_BY_THE_REQUESTER = {"a reply", "an error reply", "a reply for nobody, then ours"}


@types.coroutine
def _resume(coroutine: Any, yielded: Any) -> Any:
    """Go on running ``coroutine``, which yielded ``yielded`` to the event loop: its result."""
    while True:
        try:
            sent = yield yielded
        except BaseException as exc:
            try:
                yielded = coroutine.throw(exc)
            except StopIteration as done:
                return done.value
        else:
            try:
                yielded = coroutine.send(sent)
            except StopIteration as done:
                return done.value


@pytest.mark.parametrize("transport", [*TRANSPORTS, "unix, passing descriptors"])
@pytest.mark.parametrize("case", AHEAD)
async def test_bytes_in_the_kernel_before_the_request(
    transport: str, case: str, socket_dir: str, anyio_backend_name: str
) -> None:
    """Each case ends the request as the reader would: its reply, its error, the events beside
    it handled, a malformed reply breaking the connection. On Trio, whole replies are resolved
    by the requester before it first yields (the reader is not woken for them). Also over a
    stream that passes descriptors (the client's, with shared memory on)."""
    options: dict[str, Any] = {}
    if transport.endswith("descriptors"):
        transport, options = "unix", {"max_shared_bytes": 1024 * 1024}
    before, after = AHEAD[case]
    streams: list[SocketStream] = []
    seen: list[Any] = []

    async def hand_over(stream: SocketStream, frames: Frames) -> None:
        streams.append(stream)
        await frames.requests(1)
        if after:
            await anyio.sleep(0.05)
            await stream.send(after)

    async with bare_server(transport, socket_dir, hand_over, **options) as connection:
        assert can_pass_fds(connection._channel._stream) == bool(options)  # type: ignore[union-attr]
        connection.on("news", seen.append)
        with anyio.fail_after(5):
            while not streams:
                await anyio.sleep(0.01)
        await anyio.sleep(0.05)  # the client's writer and reader both started, and waiting
        raw = streams[0].extra(anyio.abc.SocketAttribute.raw_socket)
        if isinstance(raw, socket.socket):  # (Trio; anyio's asyncio streams' is not one)
            raw.send(before)
        else:
            await streams[0].send(before)
        request = connection.request("q", 1, timeout=5)
        with anyio.fail_after(5):
            if case == "a malformed reply":
                with pytest.raises(ConnectionLostError):
                    await request
                return
            if anyio_backend_name == "trio":
                yielded = request.send(None)  # up to where it first yields
                if case in TAKEN_BY_THE_REQUESTER:
                    assert len(connection._requests) == 0  # resolved by the requester
                outcome: Any
                try:
                    outcome = await _resume(request, yielded)
                except RemoteError as exc:
                    outcome = exc
            else:
                try:
                    outcome = await request
                except RemoteError as exc:
                    outcome = exc
            if case == "an error reply":
                assert isinstance(outcome, RemoteError)
                assert outcome.remote_type == "ValueError"
            else:
                assert outcome == "one"
            if "event" in case:
                while not seen:
                    await anyio.sleep(0.01)
                assert seen == [1]
            assert connection.connected
