"""The flow of frames on one connection: bounded memory against a peer that never reads,
replies that keep flowing under an event flood, connect handlers that can talk, the right error
when a peer drops, and events nobody handles. Real sockets (Unix and TCP), both backends."""

from __future__ import annotations

import math
import os
import signal
import struct
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import msgpack
import psutil
import pytest
from anyio.abc import SocketStream

import ipcactors
from ipcactors import Actor, Connection, Server

pytestmark = pytest.mark.anyio

TRANSPORTS = ["unix", "tcp"]
CLIENT = os.path.join(os.path.dirname(__file__), "_answering_client.py")


@asynccontextmanager
async def serving(
    transport: str, socket_dir: str, name: str = "world", **config: Any
) -> AsyncIterator[tuple[Server, Callable[[Actor], Any], Callable[[], Any]]]:
    """A server on ``transport``; a function that connects an actor to it, and one that opens a
    raw socket to it."""
    config.setdefault("silent", True)
    async with Actor(name, socket_root=socket_dir, **config) as actor:
        server = await (actor.serve() if transport == "unix" else actor.serve_net(port=0))
        address = server.address

        async def connect(client: Actor) -> Connection:
            if transport == "unix":
                return await client.connect_to(name)
            return await client.connect_to_net(name, "127.0.0.1", address[1])  # type: ignore[index]

        async def connect_raw() -> SocketStream:
            if transport == "unix":
                return await anyio.connect_unix(str(address))
            return await anyio.connect_tcp(*address)  # type: ignore[misc]

        yield server, connect, connect_raw


def framed(value: Any) -> bytes:
    body = msgpack.packb(value, use_bin_type=True)
    return struct.pack(">I", len(body)) + body


async def raw_handshake(stream: SocketStream, actor_id: str = "raw") -> None:
    await stream.send(framed([4, {"v": 1, "id": actor_id}]))
    received = b""
    while len(received) < 4 or len(received) < 4 + struct.unpack(">I", received[:4])[0]:
        received += await stream.receive()
    assert msgpack.unpackb(received[4:])[0] == 5, "expected a welcome"


def live_tasks(backend: str | tuple[str, Any]) -> int:
    if isinstance(backend, tuple):
        backend = backend[0]  # ("asyncio", {"use_uvloop": True})
    if backend == "asyncio":
        import asyncio

        return len(asyncio.all_tasks())
    import trio

    def count(task: trio.lowlevel.Task) -> int:
        return 1 + sum(count(t) for n in task.child_nurseries for t in n.child_tasks)

    return count(trio.lowlevel.current_root_task())


def rss() -> int:
    return int(psutil.Process().memory_info().rss)


async def eventually(condition: Callable[[], bool], seconds: float = 10) -> None:
    with anyio.fail_after(seconds):
        while not condition():
            await anyio.sleep(0.01)


# --- replies nobody reads (issue 8, item 2) ------------------------------------------------------

REPLY = b"r" * 100_000
OUTBOX = 1 << 20


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("handler", ["plain", "async"])
async def test_a_peer_that_never_reads_its_replies_costs_a_bounded_amount(
    transport: str, handler: str, socket_dir: str, anyio_backend: Any
) -> None:
    """3,000 requests for 100 KB replies from a raw socket that never reads: the server answers
    only as many as its outbox (1 MiB) and the kernel hold, runs at most max_concurrent_requests
    handlers, holds no task per reply, and serves a good client meanwhile."""
    calls = 0
    running = 0
    most_running = 0

    def big(data: Any, client: Any) -> bytes:
        nonlocal calls
        calls += 1
        return REPLY

    async def slow_big(data: Any, client: Any) -> bytes:
        nonlocal calls, running, most_running
        calls += 1
        running += 1
        most_running = max(most_running, running)
        try:
            await anyio.sleep(0.01)
            return REPLY
        finally:
            running -= 1

    config = {"max_outbox_bytes": OUTBOX, "max_concurrent_requests": 8}
    async with serving(transport, socket_dir, **config) as (server, connect, connect_raw):
        server.on("big", big if handler == "plain" else slow_big)
        server.on("echo", lambda data, client: data)
        async with Actor("good", socket_root=socket_dir, silent=True) as good_actor:
            good = await connect(good_actor)
            with anyio.fail_after(5):
                assert await good.request("echo", 0) == 0
            tasks_before = live_tasks(anyio_backend)
            rss_before = rss()
            with anyio.fail_after(5):
                raw = await connect_raw()
            async with raw:
                await raw_handshake(raw)
                requests = b"".join(framed([1, "big", None, i + 1]) for i in range(3000))
                async with anyio.create_task_group() as task_group:
                    # It may block: the server stops reading once its replies are not read.
                    task_group.start_soon(raw.send, requests)
                    await eventually(lambda: "raw" in server.clients)
                    client = server.clients["raw"]
                    await eventually(lambda: client.statistics().outbox_bytes >= OUTBOX // 2)
                    # Watch a while: it stays bounded, and the good client is served.
                    for i in range(25):
                        with anyio.fail_after(5):
                            assert await good.request("echo", i) == i
                        await anyio.sleep(0.01)
                    grown = rss() - rss_before
                    tasks = live_tasks(anyio_backend) - tasks_before
                    outbox = client.statistics().outbox_bytes
                    print(
                        f"\n{transport} {handler}: {calls} of 3000 answered, outbox {outbox} B, "
                        f"{tasks} more tasks, RSS +{grown / 2**20:.1f} MiB"
                    )
                    assert calls < 200, "answered requests whose replies nobody reads"
                    assert outbox <= OUTBOX + 9 * len(REPLY) + 1000
                    assert tasks <= 8 + 5
                    assert most_running <= 8
                    assert grown < 64 * 2**20
                    task_group.cancel_scope.cancel()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_handler_blocked_on_a_full_outbox_ends_when_the_peer_vanishes(
    transport: str, socket_dir: str
) -> None:
    """A handler waits for room to emit to a peer that never reads; the peer closes its socket:
    the connection ends (disconnect fires) instead of waiting for that handler for ever."""
    outcome: list[str] = []
    gone = anyio.Event()
    config = {"max_outbox_bytes": OUTBOX}
    async with serving(transport, socket_dir, **config) as (server, _, connect_raw):

        @server.on("go")
        async def go(data: None, client: ipcactors.Client) -> None:
            try:
                for _ in range(1000):
                    await client.emit("big", REPLY)
                outcome.append("sent all")
            except ipcactors.ClosedError:
                outcome.append("closed")

        server.on("disconnect", lambda client: gone.set())
        with anyio.fail_after(5):
            raw = await connect_raw()
        async with raw:
            await raw_handshake(raw)
            await raw.send(framed([0, "go", None]))
            await eventually(lambda: "raw" in server.clients)
            client = server.clients["raw"]
            await eventually(lambda: client.statistics().outbox_bytes > OUTBOX - len(REPLY))
        with anyio.fail_after(5):
            await gone.wait()
    assert outcome != ["sent all"]


async def test_at_most_max_concurrent_requests_handlers_run_per_peer(socket_dir: str) -> None:
    running = 0
    most = 0
    release = anyio.Event()

    async def wait(data: int, client: Any) -> int:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await release.wait()
        running -= 1
        return data

    async with serving("unix", socket_dir, max_concurrent_requests=4) as (server, connect, _):
        server.on("wait", wait)
        server.on("echo", lambda data, client: data)
        async with Actor("hello", socket_root=socket_dir, silent=True) as hello:
            world = await connect(hello)
            answers: list[int] = []
            async with anyio.create_task_group() as task_group:

                async def ask(i: int) -> None:
                    answers.append(await world.request("wait", i, timeout=10))

                for i in range(20):
                    task_group.start_soon(ask, i)
                await eventually(lambda: running == 4)
                await anyio.sleep(0.05)
                assert running == 4
                release.set()
            assert sorted(answers) == list(range(20))
            assert most == 4


# --- replies keep flowing under an event flood (item 4) ------------------------------------------

FLOOD = 20_000
INBOX = ipcactors.Config().max_inbox_bytes


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("client_outbox", [None, 32 * 2**20])
async def test_a_handler_gets_its_reply_from_the_peer_flooding_it_with_events(
    transport: str, client_outbox: int | None, socket_dir: str
) -> None:
    """The client sends `ask`, then 20,000 events of 1 KB. Once the client's outbox is backed up
    and the server's inbox is full (its dispatcher waits on `ask`'s handler), that handler
    awaits a request to the client: the client's reply overtakes the events queued in its
    outbox, and the server reads on past its inbox bound to get it. Then every event is
    handled, in order. With a 32 MiB client outbox, all 20 MB of events are queued before the
    reply: it arrives only because it overtakes them, and over TCP, whose kernel buffers can
    take most of the 20 MB (Linux grows them up to net.ipv4.tcp_rmem's maximum, 32 MiB on some
    hosts), because the server reads on past its hard cap by the socket's receive buffer."""
    answers: list[Any] = []
    seen: list[int] = []
    backed_up = anyio.Event()

    async with serving(transport, socket_dir) as (server, connect, _):

        @server.on("ask")
        async def ask(data: None, client: ipcactors.Client) -> None:
            await backed_up.wait()
            # The server has stopped reading: its inbox is at its bound.
            await eventually(lambda: client.statistics().inbox_bytes >= INBOX)
            try:
                answers.append(await client.request("name", timeout=8))
            except Exception as exc:  # shown by the assertion below, not lost in a log
                answers.append(exc)

        server.on("e", lambda data, client: seen.append(data[0]))
        config = {} if client_outbox is None else {"max_outbox_bytes": client_outbox}
        async with Actor("hello", socket_root=socket_dir, silent=True, **config) as hello:
            world = await connect(hello)
            world.on("name", lambda data: "hello")
            pad = b"x" * 1000

            flooded = anyio.Event()

            async def flood() -> None:
                await world.emit("ask")
                for i in range(FLOOD):
                    await world.emit("e", [i, pad])
                flooded.set()

            with anyio.fail_after(20):
                async with anyio.create_task_group() as task_group:
                    task_group.start_soon(flood)
                    # Backed up: megabytes wait in the client's outbox, or (with the 32 MiB
                    # outbox, over TCP, whose kernel buffers can take much of the 20 MB) every
                    # event is queued or on its way before the reply.
                    await eventually(
                        lambda: flooded.is_set() or world.statistics().outbox_bytes > 6 * 2**20
                    )
                    backed_up.set()
                await eventually(lambda: len(seen) == FLOOD, 20)
    assert answers == ["hello"]
    assert seen == list(range(FLOOD))


# --- a producer that never yields (issue 15) -----------------------------------------------------

BURST = 3000  # events of ~1 KiB: 3 MiB, well within the default outbox (8 MiB)


@asynccontextmanager
async def tls_serving(socket_dir: str, **config: Any) -> AsyncIterator[tuple[Server, Any]]:
    import ssl

    import trustme

    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    async with Actor("world", socket_root=socket_dir, silent=True, **config) as actor:
        server = await actor.serve_net("127.0.0.1", 0, tls=server_context)

        async def connect(client: Actor) -> Connection:
            port = server.address[1]  # type: ignore[index]
            return await client.connect_to_net("world", "127.0.0.1", port, tls=client_context)

        yield server, connect


@pytest.mark.parametrize("transport", [*TRANSPORTS, "tls"])
@pytest.mark.parametrize("acked", ["off", "on"])
async def test_a_producer_that_never_yields_keeps_its_peer_busy(
    transport: str, acked: str, socket_dir: str
) -> None:
    """Events emitted in a loop that never yields (emit returns at once while the outbox has
    room) reach the peer while the loop runs, not all at once when it ends: the queued bytes
    are written every 64 KiB, or the writer gets a loop pass."""
    handled: list[int] = []
    during = 0
    payload = b"x" * 1000
    if transport == "tls":
        serve = tls_serving(socket_dir, acked=acked)
    else:
        serve = serving(transport, socket_dir, acked=acked)  # type: ignore[assignment]
    async with serve as (server, connect, *_):
        server.on("ev", lambda data, client: handled.append(data[0]))
        async with Actor("hello", socket_root=socket_dir, silent=True, acked=acked) as hello:
            connection = await connect(hello)
            await connection.emit("ev", [-1, payload])  # (the writer is in place)
            await eventually(lambda: len(handled) == 1)
            most_queued = 0
            for index in range(BURST):
                await connection.emit("ev", [index, payload])
                most_queued = max(most_queued, connection.statistics().outbox_bytes)
                if index == BURST - 2:
                    during = len(handled) - 1
            await eventually(lambda: len(handled) == BURST + 1)
    assert handled == [-1, *range(BURST)]
    assert during > BURST // 10, f"the peer had handled {during} events when the loop ended"
    assert most_queued < 1 << 20, f"{most_queued} bytes were queued at once"


async def test_a_broadcaster_that_never_yields_lets_the_loop_run(socket_dir: str) -> None:
    """A loop that broadcasts while no client takes the events (none connected; or the one
    there leaving, as the server closes) gives the loop a pass each time: other tasks run,
    and a close from another task ends within its close_timeout, after which broadcast raises
    ClosedError. Such a loop never yielded: a 10 ms ticker got none of its ticks in 3 s, and
    aclose() waited for the loop to end (12 s with close_timeout=1), accepting millions of
    broadcasts after it was called."""
    async with Actor("world", socket_root=socket_dir, silent=True, close_timeout=1) as world:
        server = await world.serve()
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            for _ in range(100):
                await anyio.sleep(0.01)
                ticks += 1

        calls = 0
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(tick)
            with anyio.move_on_after(5):
                while ticks < 5 and calls < 10_000_000:
                    await server.broadcast("ev", 1)
                    calls += 1
            task_group.cancel_scope.cancel()
        assert ticks >= 5, f"{calls} broadcasts to nobody, and the ticker ticked {ticks} times"

        closed_in = math.inf

        async def close() -> None:
            nonlocal closed_in
            start = anyio.current_time()
            await server.aclose()
            closed_in = anyio.current_time() - start

        async def broadcast_until_refused() -> BaseException | None:
            payload = b"x" * 100
            for _ in range(50_000_000):
                try:
                    await server.broadcast("ev", payload)
                except ipcactors.ClosedError as exc:
                    return exc
            return None

        async with Actor("hello", socket_root=socket_dir, silent=True) as hello:
            await hello.connect_to("world")
            with anyio.fail_after(20):
                while not server.clients:
                    await anyio.sleep(0.01)
                async with anyio.create_task_group() as task_group:
                    task_group.start_soon(close)
                    refused = await broadcast_until_refused()
        assert isinstance(refused, ipcactors.ClosedError)
        assert closed_in < 3, f"the close took {closed_in:.1f} s with close_timeout=1"


async def test_replies_overtake_queued_events_in_the_outbox() -> None:
    from ipcactors._core._outbox import Outbox

    outbox = Outbox(max_bytes=100)
    for i in range(3):
        outbox.put_nowait(b"event%d" % i)
    outbox.put_reply(b"reply")
    assert outbox.take(budget=1) == [b"reply"]
    assert outbox.taken == 0, "replies carry no sequence number"
    outbox.sent()
    assert outbox.take() == [b"event0", b"event1", b"event2"]
    assert outbox.taken == 3


# --- connect handlers can talk (item 3) ----------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_server_connect_handler_can_request_and_runs_before_events(
    transport: str, socket_dir: str
) -> None:
    order: list[str] = []
    async with serving(transport, socket_dir, max_outbox_bytes=10_000) as (server, connect, _):

        @server.on("connect")
        async def on_connect(client: ipcactors.Client) -> None:
            order.append("asks")
            order.append("got " + await client.request("name", timeout=5))
            for _ in range(50):  # more than the outbox holds: the channel is writing
                await client.emit("welcome", b"w" * 1000)

        server.on("e", lambda data, client: order.append(f"event {data}"))
        server.on("r", lambda data, client: order.append(f"request {data}"))
        async with Actor("hello", socket_root=socket_dir, silent=True) as hello:
            with anyio.fail_after(10):
                world = await connect(hello)
                world.on("name", lambda data: "hello")
                welcomes: list[bytes] = []
                world.on("welcome", welcomes.append)
                await world.emit("e", 1)
                assert await world.request("r", 2) is None
                await eventually(lambda: len(welcomes) == 50)
    assert order == ["asks", "got hello", "event 1", "request 2"]


async def test_events_sent_right_before_leaving_are_handled_after_a_slow_connect_handler(
    socket_dir: str,
) -> None:
    order: list[str] = []
    async with serving("unix", socket_dir) as (server, connect, _):

        @server.on("connect")
        async def on_connect(client: ipcactors.Client) -> None:
            await anyio.sleep(0.2)  # the client has come and gone meanwhile
            order.append("connected")

        server.on("e", lambda data, client: order.append(f"event {data}"))
        gone = anyio.Event()
        server.on("disconnect", lambda client: gone.set())
        async with Actor("hello", socket_root=socket_dir, silent=True) as hello:
            world = await connect(hello)
            for i in range(3):
                await world.emit("e", i)
        with anyio.fail_after(5):
            await gone.wait()
    assert order == ["connected", "event 0", "event 1", "event 2"]


async def test_client_connect_handler_can_talk_on_a_reconnect_with_a_full_outbox(
    socket_dir: str,
) -> None:
    """While the server is away, the client's outbox fills up; on reconnect, its connect
    handler emits more (waiting for room) and requests: the channel reads and writes meanwhile,
    and the server handles the handler's events after the ones queued before."""
    seen: list[int] = []
    log: list[str] = []
    async with Actor(
        "hello",
        socket_root=socket_dir,
        silent=True,
        max_outbox_bytes=10_000,
        retry=0.02,
        retry_cap=0.1,
    ) as hello:
        async with serving("unix", socket_dir) as (server, connect, _):
            world = await connect(hello)
        with anyio.fail_after(5):
            while world.connected:
                await anyio.sleep(0.01)
        n = 0
        while world.statistics().outbox_bytes < 9_000:
            await world.emit("n", [n, b"x" * 500])
            n += 1
        queued = n

        @world.on("connect")
        async def on_connect() -> None:
            nonlocal n
            for _ in range(40):  # 40 x 500 B: more than the outbox holds
                await world.emit("n", [n, b"x" * 500])
                n += 1
            log.append("asked " + await world.request("name", timeout=5))

        async with serving("unix", socket_dir) as (server, _, _):
            server.on("n", lambda data, client: seen.append(data[0]))
            server.on("name", lambda data, client: "world")
            with anyio.fail_after(10):
                await world.wait_connected()
                await eventually(lambda: len(seen) == queued + 40)
                await eventually(lambda: bool(log))
    assert seen == list(range(queued + 40))
    assert log == ["asked world"]


# --- the right error when a peer drops (item 15) -------------------------------------------------


@asynccontextmanager
async def client_process(socket_dir: str, name: str = "killed") -> AsyncIterator[Any]:
    process = await anyio.open_process(
        [sys.executable, CLIENT, socket_dir, "world", name], stderr=subprocess.STDOUT
    )
    try:
        assert process.stdout is not None
        with anyio.fail_after(10):
            output = b""
            while b"READY" not in output:
                output += await process.stdout.receive()
        yield process
    finally:
        if process.returncode is None:
            process.kill()
        with anyio.fail_after(10):
            await process.wait()
        await process.aclose()


async def test_a_request_to_a_client_killed_while_answering_fails_with_connection_lost(
    socket_dir: str,
) -> None:
    """Both from the caller's task and from inside an event handler: at once, and not with
    ClosedError (that is for a server closed on purpose)."""
    failures: list[BaseException] = []
    async with serving("unix", socket_dir) as (server, _, _):

        @server.on("go")
        async def go(data: None, client: ipcactors.Client) -> None:
            try:
                await client.request("sleep", 30, timeout=20)
            except ipcactors.IPCError as exc:
                failures.append(exc)

        async with client_process(socket_dir) as process:
            await eventually(lambda: "killed" in server.clients)
            client = server.clients["killed"]
            pid = await server.request(client, "pid", timeout=5)
            assert pid == process.pid

            async def ask() -> None:
                try:
                    await server.request("killed", "sleep", 30, timeout=20)
                except ipcactors.IPCError as exc:
                    failures.append(exc)

            async with anyio.create_task_group() as task_group:
                task_group.start_soon(ask)
                # An event handler of that client asks too (as if the client had emitted "go").
                task_group.start_soon(go, None, client)
                await eventually(lambda: client.statistics().requests_pending == 2)
                started = anyio.current_time()
                os.kill(process.pid, signal.SIGKILL)
                await eventually(lambda: len(failures) == 2)
            assert anyio.current_time() - started < 5
    assert [type(exc) for exc in failures] == [ipcactors.ConnectionLostError] * 2, failures


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_request_waiting_for_room_fails_with_connection_lost_when_the_client_goes(
    transport: str, socket_dir: str
) -> None:
    """The client never reads: the server's outbox fills and a request waits for room to be
    queued. The client closes its socket: that request fails with ConnectionLostError."""
    failures: list[BaseException] = []
    config = {"max_outbox_bytes": OUTBOX}
    async with serving(transport, socket_dir, **config) as (server, _, connect_raw):
        with anyio.fail_after(5):
            raw = await connect_raw()
        async with raw, anyio.create_task_group() as task_group:
            await raw_handshake(raw)
            await eventually(lambda: "raw" in server.clients)
            client = server.clients["raw"]

            with anyio.fail_after(10):
                while True:  # fill the outbox until the kernel's buffers are full too
                    while client._outbox.has_room(len(REPLY)):
                        await client.emit("big", REPLY)
                    await anyio.sleep(0.05)
                    if not client._outbox.has_room(len(REPLY)):
                        break

            async def ask() -> None:
                try:
                    await client.request("name", REPLY, timeout=20)
                except ipcactors.IPCError as exc:
                    failures.append(exc)

            task_group.start_soon(ask)
            await eventually(lambda: client.statistics().requests_pending == 1)
            (pending,) = client._requests._pending.values()
            assert pending.seq == math.inf, "the request waits for room in the outbox"
            await raw.aclose()
            await eventually(lambda: bool(failures))
    assert [type(exc) for exc in failures] == [ipcactors.ConnectionLostError], failures


async def test_requests_pending_when_the_server_closes_fail_with_closed_error(
    socket_dir: str,
) -> None:
    failures: list[BaseException] = []
    async with Actor("hello", socket_root=socket_dir, silent=True, stop_retrying=0) as hello:
        async with serving("unix", socket_dir) as (server, connect, _):
            world = await connect(hello)
            world.on("sleep", lambda data: anyio.sleep(data))
            await eventually(lambda: "hello" in server.clients)

            async def ask() -> None:
                try:
                    await server.request("hello", "sleep", 30, timeout=20)
                except ipcactors.IPCError as exc:
                    failures.append(exc)

            async with anyio.create_task_group() as task_group:
                task_group.start_soon(ask)
                client = server.clients["hello"]
                await eventually(lambda: client.statistics().requests_pending == 1)
                with anyio.fail_after(10):
                    await server.aclose()
                await eventually(lambda: bool(failures))
    assert [type(exc) for exc in failures] == [ipcactors.ClosedError]


async def test_a_connection_closed_on_purpose_fails_its_requests_with_closed_error(
    socket_dir: str,
) -> None:
    failures: list[BaseException] = []
    async with serving("unix", socket_dir) as (server, connect, _):
        server.on("sleep", lambda data, client: anyio.sleep(data))
        async with Actor("hello", socket_root=socket_dir, silent=True) as hello:
            world = await connect(hello)

            async def ask() -> None:
                try:
                    await world.request("sleep", 30, timeout=20)
                except ipcactors.IPCError as exc:
                    failures.append(exc)

            async with anyio.create_task_group() as task_group:
                task_group.start_soon(ask)
                await eventually(lambda: world.statistics().requests_pending == 1)
                with anyio.fail_after(10):
                    await hello.disconnect("world")
                await eventually(lambda: bool(failures))
    assert [type(exc) for exc in failures] == [ipcactors.ClosedError]


# --- events nobody handles (item 16) -------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_events_with_no_handler_are_counted_and_logged_once_per_name(
    transport: str, socket_dir: str, log_lines: list[str]
) -> None:
    async with serving(transport, socket_dir, silent=False) as (server, connect, _):
        server.on("sync", lambda data, client: None)
        async with Actor("hello", socket_root=socket_dir) as hello:
            world = await connect(hello)
            with anyio.fail_after(5):
                for _ in range(3):
                    await world.emit("nobody", 1)
                await world.emit("nobody either", 1)
                await world.request("sync")
                assert server.clients["hello"].statistics().events_unhandled == 4
                assert server.statistics().events_unhandled == 4
                await server.emit("hello", "unheard", 1)
                await server.emit("hello", "unheard", 2)
                await eventually(lambda: world.statistics().events_unhandled == 2)
        # The count outlives the client.
        assert server.statistics().events_unhandled == 4
    warnings = [line for line in log_lines if "no handler" in line and "WARNING" in line]
    assert sum("'nobody'" in line for line in warnings) == 1, warnings
    assert sum("'nobody either'" in line for line in warnings) == 1, warnings
    assert sum("'unheard'" in line for line in warnings) == 1, warnings


async def test_a_million_names_cannot_grow_the_log_or_memory(
    socket_dir: str, log_lines: list[str]
) -> None:
    from ipcactors._core._handlers import MAX_UNHANDLED_NAMES

    count = MAX_UNHANDLED_NAMES + 200
    async with serving("unix", socket_dir, silent=False) as (server, connect, _):
        server.on("sync", lambda data, client: None)
        async with Actor("hello", socket_root=socket_dir) as hello:
            world = await connect(hello)
            with anyio.fail_after(10):
                for i in range(count):
                    await world.emit(f"name {i}", None)
                await world.request("sync")
            assert server.statistics().events_unhandled == count
            assert len(server._unhandled_names) <= MAX_UNHANDLED_NAMES + 1
    warnings = [line for line in log_lines if "no handler" in line and "WARNING" in line]
    assert len(warnings) == MAX_UNHANDLED_NAMES + 1, "each name once, then one last word"


def test_the_flow_limits_are_validated() -> None:
    for option in ("max_inbox_bytes", "max_concurrent_requests"):
        for bad in (0, -1, 1.5, "8"):
            with pytest.raises(ipcactors.ConfigError, match=option):
                ipcactors.Config(**{option: bad})
