"""A request's deadline is kept by the actor's watchdog, not by a timer of its own (see
``_core._requests``): each request still times out on time, never early, whatever the
deadlines of the others, over both backends; a late reply is ignored; a connection that ended
leaves nothing behind in the watchdog."""

from __future__ import annotations

import math
import os
from functools import partial

import anyio
import pytest

import ipcactors
from ipcactors import Actor
from ipcactors._core._requests import Requests
from ipcactors._core._watchdog import Watchdog

pytestmark = pytest.mark.anyio

#: How late a deadline may be noticed here: the watchdog's coalescing, plus a busy machine.
LATE = 0.5


async def never_answer(data: object, client: ipcactors.Client | None = None) -> None:
    await anyio.sleep(30)  # (a client's handler gets the data only)


async def expires_within(request: object, timeout: float) -> float:
    """Await ``request`` (a coroutine), which must time out; how long it took."""
    started = anyio.current_time()
    with pytest.raises(ipcactors.RequestTimeoutError):
        await request  # type: ignore[misc]
    return anyio.current_time() - started


async def test_a_shorter_deadline_behind_a_longer_one_expires_first(socket_dir: str) -> None:
    """The watchdog has the first request's deadline (5 s); a later request with a shorter
    timeout must move it earlier, not wait for it."""
    async with Actor("world", socket_root=socket_dir, silent=True) as world:
        server = await world.serve()
        server.on("wait", never_answer)
        async with Actor("hello", socket_root=socket_dir, silent=True) as hello:
            connection = await hello.connect_to("world")
            with anyio.fail_after(5):
                async with anyio.create_task_group() as task_group:
                    task_group.start_soon(partial(connection.request, "wait", 1, timeout=5.0))
                    await anyio.sleep(0.05)
                    took = await expires_within(connection.request("wait", 2, timeout=0.2), 0.2)
                    task_group.cancel_scope.cancel()
            assert 0.2 <= took < 0.2 + LATE
            assert await hello.connect_to("world") is connection  # still connected


async def test_many_requests_in_flight_each_expire_on_time(socket_dir: str) -> None:
    """Thirty requests in flight with deadlines in no particular order: each times out at its
    own deadline, never before it."""
    timeouts = [0.1 + (index * 7 % 30) / 60 for index in range(30)]  # 0.1 to 0.58 s, shuffled
    took: dict[int, float] = {}
    async with Actor("world", socket_root=socket_dir, silent=True) as world:
        server = await world.serve()
        server.on("wait", never_answer)
        async with Actor("hello", socket_root=socket_dir, silent=True) as hello:
            connection = await hello.connect_to("world")

            async def one(index: int) -> None:
                request = connection.request("wait", index, timeout=timeouts[index])
                took[index] = await expires_within(request, timeouts[index])

            with anyio.fail_after(5):
                async with anyio.create_task_group() as task_group:
                    for index in range(len(timeouts)):
                        task_group.start_soon(one, index)
            assert len(connection._requests) == 0
    for index, timeout in enumerate(timeouts):
        assert timeout <= took[index] < timeout + LATE, (index, timeout, took[index])


async def test_the_server_side_of_a_request_expires_on_time(socket_dir: str) -> None:
    """A server's request to a client is timed by the server actor's watchdog."""
    async with Actor("world", socket_root=socket_dir, silent=True) as world:
        server = await world.serve()
        async with Actor("hello", socket_root=socket_dir, silent=True) as hello:
            connection = await hello.connect_to("world")
            connection.on("wait", never_answer)
            with anyio.fail_after(5):
                while "hello" not in server.clients:
                    await anyio.sleep(0.01)
                took = await expires_within(server.request("hello", "wait", timeout=0.2), 0.2)
            assert 0.2 <= took < 0.2 + LATE


async def test_a_connection_that_ended_leaves_nothing_in_the_watchdog(socket_dir: str) -> None:
    """Short connections, each with a request: once each has ended, the watchdog keeps none of
    their tables until their deadlines would have come (memory stays bounded under churn)."""
    async with Actor("world", socket_root=socket_dir, silent=True) as world:
        server = await world.serve()
        server.on("ping", lambda data, client: data)
        async with Actor("hello", socket_root=socket_dir, silent=True) as hello:
            for index in range(20):
                connection = await hello.connect_to("world")
                assert await connection.request("ping", index, timeout=60) == index
                await hello.disconnect("world")
            for actor in (hello, world):
                watchdog = actor._watchdog
                assert watchdog is not None
                assert not [watched for watched in watchdog._due if isinstance(watched, Requests)]


async def test_without_an_open_watchdog_a_request_keeps_its_own_time() -> None:
    """Once its owner closed the watchdog, a request is not handed to it: its waiter bounds
    its own wait."""
    async with anyio.create_task_group() as task_group:
        watchdog = Watchdog(task_group)
        requests = Requests()
        _, clocked = requests.open("ping", 0.1, watchdog)
        assert clocked.clocked
        watchdog.close()
        _, unclocked = requests.open("ping", 0.1, watchdog)
        assert not unclocked.clocked
        assert unclocked.deadline == math.inf
        started = anyio.current_time()
        assert not await unclocked.wait(0.1)
        assert anyio.current_time() - started >= 0.1
        assert not unclocked.is_set()
        task_group.cancel_scope.cancel()


async def test_a_request_that_timed_out_before_it_went_out_is_never_sent(
    socket_dir: str,
) -> None:
    """reliability.md: a request is answered or failed. One made while its connection was down
    that timed out before it was written still went out on the next connection, and its
    handler ran then, however late: a caller that retried on RequestTimeoutError had the work
    done twice. A request that times out before it is written is withdrawn; the events around
    it keep their order."""
    handled: list[object] = []
    events: list[object] = []

    async def serve(world: Actor) -> None:
        server = await world.serve()
        server.on("work", lambda data, client: handled.append(data))
        server.on("ev", lambda data, client: events.append(data))

    fast = {"retry": 0.02, "retry_cap": 0.1, "silent": True}
    async with Actor("hello", socket_root=socket_dir, **fast) as hello:
        async with Actor("world", socket_root=socket_dir, silent=True) as world:
            await serve(world)
            conn = await hello.connect_to("world")
            await conn.request("work", 1)
        with anyio.fail_after(10):
            while conn.connected:
                await anyio.sleep(0.01)
        await conn.emit("ev", "before")
        await expires_within(conn.request("work", 2, timeout=0.2), 0.2)
        await conn.emit("ev", "after")
        async with Actor("world", socket_root=socket_dir, silent=True) as world:
            await serve(world)
            with anyio.fail_after(10):
                await conn.request("work", 3)
        assert events == ["before", "after"]
        assert handled == [1, 3]


async def test_a_request_sent_ahead_of_a_welcome_that_never_came_is_not_sent_again_late(
    socket_dir: str,
) -> None:
    """connect_to(wait=False) sends requests ahead of the welcome and sends them again if the
    connection ends unwelcomed (reliability.md). One whose caller timed out meanwhile went
    again all the same, and ran on the next server after its caller had been told
    RequestTimeoutError; the events around it go again in order, and a request still
    waited for goes again and is answered."""
    handled: list[int] = []
    events: list[str] = []
    results: dict[int, object] = {}
    fast = {"retry": 0.05, "retry_cap": 0.1, "silent": True}
    async with Actor("hello", socket_root=socket_dir, **fast) as hello:
        path = hello.default_path("world")
        listener = await anyio.create_unix_listener(path)

        async def accept_and_hang_up() -> None:  # a server that never welcomes
            stream = await listener.accept()
            await anyio.sleep(0.6)
            await stream.aclose()

        async def ask(n: int, timeout: float) -> None:
            try:
                results[n] = await conn.request("work", n, timeout=timeout)
            except ipcactors.RequestTimeoutError as exc:
                results[n] = exc

        async with anyio.create_task_group() as task_group:
            task_group.start_soon(accept_and_hang_up)
            conn = await hello.connect_to("world", wait=False)
            await conn.emit("ev", "a")
            task_group.start_soon(ask, 1, 0.2)
            await anyio.sleep(0.01)
            await conn.emit("ev", "b")
            task_group.start_soon(ask, 2, 10)
            await anyio.sleep(0.8)
            await listener.aclose()
            os.unlink(path)
            async with Actor("world", socket_root=socket_dir, silent=True) as world:
                server = await world.serve()
                server.on("work", lambda data, client: handled.append(data) or data)
                server.on("ev", lambda data, client: events.append(data))
                with anyio.fail_after(10):
                    while 2 not in results:
                        await anyio.sleep(0.01)
    assert isinstance(results[1], ipcactors.RequestTimeoutError)
    assert results[2] == 2
    assert handled == [2]
    assert events == ["a", "b"]


@pytest.mark.parametrize(("queued", "never_sent"), [("withdrawn requests", 1), ("a batch", 50)])
async def test_a_close_counts_in_messages_what_it_never_sent(
    socket_dir: str, log_lines: list[str], queued: str, never_sent: int
) -> None:
    """The warning a close gives for what it could not send counted the requests withdrawn
    before it (their callers already told RequestTimeoutError) as frames never sent; and
    it counted frames: small events queued together travel as one batch, one frame."""
    options = {"retry": 0.05, "retry_cap": 0.1, "close_timeout": 0.3}
    async with Actor("hello", socket_root=socket_dir, **options) as hello:
        async with Actor("world", socket_root=socket_dir, silent=True) as world:
            await world.serve()
            conn = await hello.connect_to("world")
        with anyio.fail_after(10):
            while conn.connected:
                await anyio.sleep(0.01)
        if queued == "a batch":
            for n in range(50):
                await conn.emit("ev", n)
        else:
            await conn.emit("ev", "queued")
            for n in range(3):
                await expires_within(conn.request("work", n, timeout=0.1), 0.1)
        await conn.aclose()
    warned = [line for line in log_lines if "never sent" in line]
    assert len(warned) == 1, warned
    assert f"{never_sent} message(s) queued for 'world' were never sent" in warned[0], warned
