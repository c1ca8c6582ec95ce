"""Messaging and requests through the fault proxy (tests/_faultproxy.py), over Unix and TCP:
latency and slicing change nothing but timing; a cut or a reset fails the requests in flight
with ConnectionLostError and the client reconnects; a blackhole makes requests time out and
holds events until it heals."""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from _faultproxy import FaultProxy

import ipcactors
from ipcactors import Actor, Connection, Server

pytestmark = pytest.mark.anyio

TRANSPORTS = ["unix", "tcp"]
FAST_RETRY = {"retry": 0.02, "retry_cap": 0.1}


@asynccontextmanager
async def serving(transport: str, socket_dir: str) -> AsyncIterator[tuple[Server, list[Any]]]:
    """Actor "world" serving on ``transport``: ``echo`` answers with its data, ``big`` with that
    many bytes; the data of ``log`` events is appended to the list yielded with the server."""
    async with Actor("world", socket_root=socket_dir, silent=True) as world:
        if transport == "unix":
            server = await world.serve()
        else:
            server = await world.serve_net("127.0.0.1", 0)
        received: list[Any] = []
        server.on("echo", lambda data, client: data)
        server.on("big", lambda size, client: b"x" * size)
        server.on("log", lambda data, client: received.append(data))
        yield server, received


@asynccontextmanager
async def through(
    fault_proxy: Callable[..., FaultProxy], server: Server, socket_dir: str
) -> AsyncIterator[tuple[FaultProxy, Connection]]:
    """Actor "hello" connected to ``server`` through a fresh proxy."""
    async with (
        fault_proxy(server.address) as proxy,
        Actor("hello", socket_root=socket_dir, silent=True, **FAST_RETRY) as hello,
    ):
        with anyio.fail_after(5):
            connection = await proxy.connect(hello, "world")
        yield proxy, connection


async def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    with anyio.fail_after(timeout):
        while not condition():
            await anyio.sleep(0.005)


async def test_the_proxy_slices_and_keeps_every_byte(
    socket_dir: str, fault_proxy: Callable[..., FaultProxy], seed: int
) -> None:
    """The harness itself: 1-byte slicing splits a write into many reads; nothing is lost."""
    received: list[bytes] = []
    done = anyio.Event()

    async def handle(stream: Any) -> None:
        async with stream:
            while sum(map(len, received)) < 200:
                received.append(await stream.receive())
            done.set()

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_address)[1]
    async with listener, anyio.create_task_group() as task_group:
        task_group.start_soon(listener.serve, handle)
        async with fault_proxy(("127.0.0.1", port)) as proxy:
            proxy.slice(1)
            payload = bytes(range(200))
            with anyio.fail_after(5):
                async with await anyio.connect_tcp(*proxy.address) as stream:
                    await stream.send(payload)
                    await done.wait()
        task_group.cancel_scope.cancel()
    assert b"".join(received) == payload, f"seed {seed}"
    assert len(received) > 20, f"200 bytes arrived in {len(received)} reads; seed {seed}"
    assert proxy.stats.bytes_up == 200


async def test_the_proxy_forwards_what_a_side_sent_before_it_reset(
    fault_proxy: Callable[..., FaultProxy], seed: int
) -> None:
    """The harness itself: a side that resets the link right after sending (closing a socket
    with bytes unread in it does that) has every byte it sent forwarded first, then the reset;
    here the bytes are still held (blackhole) when the reset comes."""
    received = bytearray()
    ended = anyio.Event()

    async def handle(stream: Any) -> None:
        async with stream:
            try:
                while True:
                    received.extend(await stream.receive())
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                ended.set()

    payload = os.urandom(10_000)
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_address)[1]
    async with listener, anyio.create_task_group() as task_group:
        task_group.start_soon(listener.serve, handle)
        async with fault_proxy(("127.0.0.1", port)) as proxy:
            proxy.blackhole("up")
            with socket.create_connection(proxy.address) as sock:
                await wait_until(lambda: proxy.links == 1)
                sock.sendall(payload)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            # A proxy that dropped what it held ends the link at once; give it a moment.
            with anyio.move_on_after(0.5):
                await wait_until(lambda: proxy.links == 0)
            proxy.heal()
            with anyio.fail_after(5):
                await ended.wait()
        task_group.cancel_scope.cancel()
    assert bytes(received) == payload, f"{len(received)} of {len(payload)} bytes; seed {seed}"


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_latency_and_slicing_keep_order(
    transport: str, socket_dir: str, fault_proxy: Callable[..., FaultProxy], seed: int
) -> None:
    async with (
        serving(transport, socket_dir) as (server, received),
        through(fault_proxy, server, socket_dir) as (proxy, world),
    ):
        proxy.latency(0.002, jitter=0.003)
        proxy.slice(7, random=True)
        got: list[int] = []
        world.on("n", got.append)
        with anyio.fail_after(10):
            for i in range(40):
                await world.emit("log", i)
            results: dict[int, Any] = {}

            async def ask(i: int) -> None:
                results[i] = await world.request("echo", {"i": i, "pad": "y" * i})

            async with anyio.create_task_group() as task_group:
                for i in range(20):
                    task_group.start_soon(ask, i)
            client = server.clients["hello"]
            for i in range(40):
                await server.emit(client, "n", i)
            await wait_until(lambda: len(received) == 40 and len(got) == 40)
        assert received == list(range(40)), f"seed {seed}"
        assert got == list(range(40)), f"seed {seed}"
        assert results == {i: {"i": i, "pad": "y" * i} for i in range(20)}, f"seed {seed}"
        assert proxy.stats.accepted == 1


@pytest.mark.parametrize("how", ["cut", "reset"])
@pytest.mark.parametrize("direction", ["up", "down"])
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_cut_or_reset_fails_requests_in_flight_and_the_client_reconnects(
    transport: str,
    direction: str,
    how: str,
    socket_dir: str,
    fault_proxy: Callable[..., FaultProxy],
    seed: int,
) -> None:
    async with (
        serving(transport, socket_dir) as (server, received),
        through(fault_proxy, server, socket_dir) as (proxy, world),
    ):
        lost = anyio.Event()
        world.on("disconnect", lost.set)
        assert await world.request("echo", 1) == 1
        # Up: the request frame is cut in the middle; down: its reply is.
        if how == "cut":
            proxy.cut_after(100, direction)  # type: ignore[arg-type]
        else:
            proxy.reset_after(100, direction)  # type: ignore[arg-type]
        event, data = ("echo", b"z" * 10_000) if direction == "up" else ("big", 10_000)
        with anyio.fail_after(5), pytest.raises(ipcactors.ConnectionLostError):
            await world.request(event, data)
        assert getattr(proxy.stats, f"{how}s") == 1
        with anyio.fail_after(5):
            await lost.wait()
            await world.wait_connected()
            assert await world.request("big", 10_000) == b"x" * 10_000
            await world.emit("log", "after")
            await wait_until(lambda: "after" in received)
        assert proxy.stats.accepted == 2, f"seed {seed}"


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("how", ["cut", "reset"])
async def test_a_request_that_failed_as_lost_leaves_the_connection_not_connected(
    transport: str,
    how: str,
    socket_dir: str,
    fault_proxy: Callable[..., FaultProxy],
    seed: int,
) -> None:
    """Right after a request fails with ConnectionLostError, the connection says it is not
    connected, and wait_connected() waits for the next one. On Trio it still said connected,
    wait_connected() returned at once and the next request went out on the link that was
    gone, failing too."""
    async with (
        serving(transport, socket_dir) as (server, _),
        through(fault_proxy, server, socket_dir) as (proxy, world),
    ):
        for round in range(6):
            getattr(proxy, f"{how}_after")(100, "down")  # the reply, cut in the middle
            with anyio.fail_after(5), pytest.raises(ipcactors.ConnectionLostError):
                await world.request("big", 10_000)
            assert not world.connected, f"round {round}, seed {seed}"
            with anyio.fail_after(5):
                await world.wait_connected()
                assert await world.request("echo", round) == round, f"seed {seed}"


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_reset_now_fails_a_request_waiting_on_a_slow_handler(
    transport: str, socket_dir: str, fault_proxy: Callable[..., FaultProxy]
) -> None:
    async with (
        serving(transport, socket_dir) as (server, _),
        through(fault_proxy, server, socket_dir) as (proxy, world),
    ):
        started = anyio.Event()

        async def slow(data: Any, client: ipcactors.Client) -> str:
            started.set()
            await anyio.sleep(30)
            return "late"

        server.on("slow", slow)
        async with anyio.create_task_group() as task_group:

            async def reset_when_started() -> None:
                await started.wait()
                proxy.reset()

            task_group.start_soon(reset_when_started)
            with anyio.fail_after(5), pytest.raises(ipcactors.ConnectionLostError):
                await world.request("slow")
        with anyio.fail_after(5):
            await world.wait_connected()
            assert await world.request("echo", "again") == "again"


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_blackhole_times_requests_out_and_holds_events_until_healed(
    transport: str, socket_dir: str, fault_proxy: Callable[..., FaultProxy]
) -> None:
    async with (
        serving(transport, socket_dir) as (server, received),
        through(fault_proxy, server, socket_dir) as (proxy, world),
    ):
        assert await world.request("echo", 0) == 0
        proxy.blackhole()
        for i in range(10):
            await world.emit("log", i)
        with anyio.fail_after(5), pytest.raises(ipcactors.RequestTimeoutError):
            await world.request("echo", 1, timeout=0.2)
        assert world.connected  # nothing closed: only silence
        assert received == []
        proxy.heal()
        with anyio.fail_after(5):
            assert await world.request("echo", 2) == 2  # the late reply to 1 is ignored
            await wait_until(lambda: len(received) == 10)
        assert received == list(range(10))
        assert proxy.stats.accepted == 1


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_client_whose_server_is_gone_sees_its_link_close_and_keeps_retrying(
    transport: str, socket_dir: str, fault_proxy: Callable[..., FaultProxy]
) -> None:
    """The proxy closes a link at once when the server cannot be reached: to the client it
    looks like a server that accepts and closes, which it must retry like any failure."""
    async with (
        serving(transport, socket_dir) as (server, _),
        through(fault_proxy, server, socket_dir) as (proxy, world),
    ):
        await server.aclose()
        with anyio.fail_after(5):
            await wait_until(lambda: not world.connected)
            await wait_until(lambda: proxy.stats.refused >= 2)  # two failed attempts at least
        with pytest.raises(ipcactors.IPCError):
            await world.request("echo", 1, timeout=0.1)


def test_a_failing_test_reports_its_seed(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The seed of a failing test is in its report, so that FAULT_SEED=<n> replays it."""
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(tests_dir, "conftest.py")) as conftest:
        pytester.makeconftest(conftest.read())
    monkeypatch.setenv("PYTHONPATH", tests_dir)  # for _faultproxy
    monkeypatch.setenv("FAULT_SEED", "4242")
    pytester.makepyfile(
        test_inner="""
        def test_fails(seed):
            assert seed == 0

        def test_passes(seed):
            pass
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1, passed=1)
    assert result.stdout.lines.count("FAULT_SEED=4242 replays this test's random choices") == 1
