"""Requests, however the reads bring them: several in one write, beside events, past the
request gate, split across reads, or breaking the rules. On asyncio a read that is nothing but
whole requests (and replies) is handled in the loop's callback, a plain handler answering there
(no loop pass for the reader); anything else goes through the connection's reader. Both must
answer every request exactly once, by the same rules: a request starts after the events before
it, at most ``max_concurrent_requests`` handlers at once, bad input closes only its connection,
and a handler's ``BaseException`` ends the actor as it always did. A bare client (real sockets,
Unix and TCP) scripts the requests; both backends.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
import sniffio
from anyio.abc import SocketStream
from test_replies import Frames as TimedFrames
from test_replies import framed

from ipcactors import Actor, Client, ConnectionLostError, Server

pytestmark = pytest.mark.anyio

HOST = "127.0.0.1"
TRANSPORTS = ["unix", "tcp"]


def request(event: str, data: Any, request_id: int) -> bytes:
    return framed([1, event, data, request_id])


class Frames(TimedFrames):
    """What the server sends the bare client (each frame within 5 s)."""

    async def replies(self, count: int) -> dict[int, list[Any]]:
        """The next ``count`` replies or error replies, by request id (anything else is
        skipped)."""
        found: dict[int, list[Any]] = {}
        while len(found) < count:
            body = await self.next()
            if body[0] in (2, 3):
                assert body[1] not in found, f"two replies to request {body[1]}"
                found[body[1]] = body
        return found


@contextlib.asynccontextmanager
async def served(
    transport: str, socket_dir: str, silent: bool = True, **config: Any
) -> AsyncIterator[tuple[Server, Any]]:
    """A server actor, and where a bare client connects to it."""
    async with Actor("world", socket_root=socket_dir, silent=silent, **config) as world:
        if transport == "unix":
            server = await world.serve()
        else:
            server = await world.serve_net(host=HOST, port=0)
        yield server, server.address


@contextlib.asynccontextmanager
async def bare_client(transport: str, address: Any) -> AsyncIterator[tuple[SocketStream, Frames]]:
    """A raw socket that said hello and was welcomed."""
    if transport == "unix":
        stream: SocketStream = await anyio.connect_unix(address)
    else:
        stream = await anyio.connect_tcp(HOST, address[1])
    async with stream:
        frames = Frames(stream)
        await stream.send(framed([4, {"v": 1, "id": "bare"}]))
        welcome = await frames.next()
        assert welcome[0] == 5, welcome
        yield stream, frames


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_requests_in_one_write_are_each_answered_once(
    transport: str, socket_dir: str
) -> None:
    """A plain handler, an async one, one that raises, no handler at all, and a plain one
    again: five requests in one write, five replies, each to its own request."""
    async with served(transport, socket_dir) as (server, address):
        server.on("double", lambda data, client: data * 2)

        @server.on("later")
        async def later(data: Any, client: Client) -> Any:
            await anyio.sleep(0.01)
            return [data]

        @server.on("fails")
        def fails(data: Any, client: Client) -> None:
            raise ValueError(f"no {data}")

        async with bare_client(transport, address) as (stream, frames):
            await stream.send(
                request("double", 21, 1)
                + request("later", "x", 2)
                + request("fails", 3, 3)
                + request("nobody", None, 4)
                + request("double", "ab", 5)
            )
            replies = await frames.replies(5)
    assert replies[1] == [2, 1, 42]
    assert replies[2] == [2, 2, ["x"]]
    assert replies[3][0] == 3
    assert replies[3][2]["type"] == "ValueError"
    assert replies[3][2]["message"] == "no 3"
    assert replies[4][0] == 3
    assert "nobody" in replies[4][2]["message"]
    assert replies[5] == [2, 5, "abab"]


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("event_first", [True, False], ids=["event-first", "request-first"])
async def test_a_request_beside_events_in_one_write_keeps_its_place(
    transport: str, socket_dir: str, event_first: bool
) -> None:
    """A request starts once the events sent before it were handled, and not later than
    the events sent after it need."""
    seen: list[str] = []
    async with served(transport, socket_dir) as (server, address):

        @server.on("ev")
        async def on_ev(data: Any, client: Client) -> None:
            await anyio.sleep(0.05)
            seen.append(f"ev {data}")

        @server.on("ask")
        def on_ask(data: Any, client: Client) -> str:
            seen.append(f"ask {data}")
            return "ok"

        async with bare_client(transport, address) as (stream, frames):
            ask = request("ask", 1, 7)
            event = framed([0, "ev", 1])
            await stream.send(event + ask if event_first else ask + event)
            assert await frames.replies(1) == {7: [2, 7, "ok"]}
            with anyio.fail_after(5):
                while len(seen) < 2:
                    await anyio.sleep(0.01)
    assert seen == (["ev 1", "ask 1"] if event_first else ["ask 1", "ev 1"])


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_requests_in_one_write_past_the_gate_wait_their_turn(
    transport: str, socket_dir: str
) -> None:
    """``max_concurrent_requests=1``: of four requests to an async handler in one write, one
    runs at a time, and all four are answered."""
    running = 0
    most = 0
    async with served(transport, socket_dir, max_concurrent_requests=1) as (server, address):

        @server.on("slow")
        async def slow(data: Any, client: Client) -> Any:
            nonlocal running, most
            running += 1
            most = max(most, running)
            await anyio.sleep(0.02)
            running -= 1
            return data

        async with bare_client(transport, address) as (stream, frames):
            await stream.send(b"".join(request("slow", n, n) for n in range(1, 5)))
            replies = await frames.replies(4)
            # And the connection reads on: a plain request after them.
            server.on("plain", lambda data, client: -data)
            await stream.send(request("plain", 5, 5))
            later = await frames.replies(1)
    assert {n: body[2] for n, body in replies.items()} == {1: 1, 2: 2, 3: 3, 4: 4}
    assert later == {5: [2, 5, -5]}
    assert most == 1


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_requests_trickling_in_are_answered(transport: str, socket_dir: str) -> None:
    """Two requests arriving 5 bytes at a time, the second one's start in the first one's last
    write."""
    async with served(transport, socket_dir) as (server, address):
        server.on("echo", lambda data, client: data)
        async with bare_client(transport, address) as (stream, frames):
            data = request("echo", "first", 1) + request("echo", {"k": [1, 2]}, 2)
            for start in range(0, len(data), 5):
                await stream.send(data[start : start + 5])
                await anyio.sleep(0.002)
            replies = await frames.replies(2)
    assert replies == {1: [2, 1, "first"], 2: [2, 2, {"k": [1, 2]}]}


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_reserved_request_in_a_read_closes_only_that_connection(
    transport: str, socket_dir: str, log_lines: list[str]
) -> None:
    """A read with a good request and one with a reserved name: the connection is closed
    (neither is answered: the read breaks the protocol), and the server serves the next
    client."""
    async with served(transport, socket_dir, silent=False) as (server, address):
        server.on("echo", lambda data, client: data)
        async with bare_client(transport, address) as (stream, frames):
            await stream.send(request("echo", 1, 1) + request("ipcactors.x", 2, 2))
            with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                await frames.next()
        async with bare_client(transport, address) as (stream, frames):
            await stream.send(request("echo", 3, 3))
            assert await frames.replies(1) == {3: [2, 3, 3]}
    assert any("reserved event 'ipcactors.x'" in line for line in log_lines)


async def test_a_plain_handler_may_call_anyio(socket_dir: str) -> None:
    """What a plain request handler may do in a task it may do wherever it is called: make an
    anyio Event, read anyio's clock, start a task in a task group."""
    done = anyio.Event()

    async def set_done() -> None:
        done.set()

    async with (
        anyio.create_task_group() as task_group,
        Actor("world", socket_root=socket_dir, silent=True) as world,
    ):
        server = await world.serve()

        @server.on("work")
        def work(data: Any, client: Client) -> str:
            anyio.Event()
            task_group.start_soon(set_done)
            return f"{sniffio.current_async_library()} {anyio.current_time() > 0}"

        async with Actor("hello", socket_root=socket_dir, silent=True) as hello:
            connection = await hello.connect_to("world")
            for _ in range(3):  # the first may come with the hello; the rest come alone
                answer = await connection.request("work", None, timeout=5)
        with anyio.fail_after(5):
            await done.wait()
    assert answer == f"{sniffio.current_async_library()} True"


def test_a_plain_handler_may_call_anyio_under_asyncio_run(socket_dir: str) -> None:
    """The same under ``asyncio.run`` (no anyio.run to tell sniffio which loop runs)."""

    async def main() -> list[str]:
        answers = []
        async with Actor("world", socket_root=socket_dir, silent=True) as world:
            server = await world.serve()
            server.on(
                "work",
                lambda data, client: (
                    f"{type(anyio.Event()).__name__} {sniffio.current_async_library()}"
                ),
            )
            async with Actor("hello", socket_root=socket_dir, silent=True) as hello:
                connection = await hello.connect_to("world")
                for _ in range(3):
                    answers.append(await connection.request("work", None, timeout=5))
        return answers

    assert asyncio.run(asyncio.wait_for(main(), 20)) == ["Event asyncio"] * 3


class Boom(BaseException):
    pass


# GeneratorExit: on asyncio the plain handler answered in the loop's callback handed it to the
# waiting reader through a future, whose task then had it thrown in: a coroutine closes the
# coroutine it awaits at a thrown GeneratorExit, so the channel's cleanup never ran ("coroutine
# ignored GeneratorExit", "Attempted to exit a cancel scope that isn't the current task's") and
# what ended the block was a RuntimeError, the GeneratorExit lost.
@pytest.mark.parametrize("kind", [Boom, GeneratorExit], ids=["own", "GeneratorExit"])
async def test_a_plain_handler_raising_a_base_exception_ends_the_actor(
    socket_dir: str, kind: type[BaseException]
) -> None:
    """Not an ``Exception``: not an error reply either. It ends the server actor (out of its
    ``async with``); the requester learns the connection was lost."""
    lost: list[BaseException] = []

    async def serve_and_ask() -> None:
        async with Actor("world", socket_root=socket_dir, silent=True) as world:
            server = await world.serve()

            @server.on("ping")
            def ping(data: Any, client: Client) -> Any:
                if data == "boom":
                    raise kind(data)
                return data

            async with Actor("hello", socket_root=socket_dir, silent=True) as hello:
                connection = await hello.connect_to("world")
                assert await connection.request("ping", 1, timeout=5) == 1
                try:
                    await connection.request("ping", "boom", timeout=5)
                except ConnectionLostError as exc:
                    lost.append(exc)
                await anyio.sleep(5)  # cancelled as the server actor ends

    with pytest.raises(BaseExceptionGroup) as raised:
        await serve_and_ask()
    assert raised.group_contains(kind)
    assert not raised.group_contains(RuntimeError)
    assert len(lost) == 1


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_client_answers_the_servers_requests_in_one_write(
    transport: str, socket_dir: str
) -> None:
    """The other way round: the server's requests to a client, several at once."""
    async with served(transport, socket_dir) as (server, _):
        async with Actor("hello", socket_root=socket_dir, silent=True) as hello:
            if transport == "unix":
                connection = await hello.connect_to("world")
            else:
                connection = await hello.connect_to_net("world", HOST, server.address[1])
            connection.on("square", lambda data: data * data)
            with anyio.fail_after(5):
                while "hello" not in server.clients:
                    await anyio.sleep(0.01)
            client = server.clients["hello"]
            results: dict[int, Any] = {}

            async def ask(n: int) -> None:
                results[n] = await client.request("square", n, timeout=5)

            async with anyio.create_task_group() as task_group:
                for n in range(6):
                    task_group.start_soon(ask, n)
    assert results == {n: n * n for n in range(6)}
