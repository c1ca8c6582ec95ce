"""Admission: what reaches the accept loop and the handshake, and how a server keeps a good
client served through it (resets before accept, floods of silent or trickling sockets)."""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import struct
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import msgpack
import pytest
from anyio.abc import SocketStream

from ipcactors import Actor, Config, ConfigError, Server
from ipcactors._proto._messages import Limits, Welcome
from ipcactors._proto._msgpack import MsgpackDecoder

pytestmark = pytest.mark.anyio

TRANSPORTS = ["unix", "tcp"]


@asynccontextmanager
async def serving(transport: str, socket_dir: str, **config: Any) -> AsyncIterator[Server]:
    async with Actor("srv", socket_root=socket_dir, silent=True, **config) as actor:
        server = await (actor.serve() if transport == "unix" else actor.serve_net(port=0))
        server.on("echo", lambda data, client: data)
        yield server


async def assert_served(server: Server, socket_dir: str, name: str = "good") -> float:
    """A good client connects and is answered; returns how long connecting took."""
    async with Actor(name, socket_root=socket_dir, silent=True, retry=0.05) as good:
        start = anyio.current_time()
        with anyio.fail_after(10):
            if isinstance(server.address, str):
                connection = await good.connect_to("srv")
            else:
                connection = await good.connect_to_net("srv", port=server.address[1])
        elapsed = anyio.current_time() - start
        with anyio.fail_after(5):
            assert await connection.request("echo", [1, "x"]) == [1, "x"]
    return elapsed


def raw_socket(server: Server) -> socket.socket:
    """A blocking raw socket connected to ``server`` (the kernel completes the connection
    before the server accepts it)."""
    address = server.address
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.connect(address)
    return sock


def reset(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: a TCP reset instead of a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


# --- item 1: a reset before accept closes only itself ------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_connections_reset_before_accept_cost_only_themselves(
    transport: str, socket_dir: str
) -> None:
    async with serving(transport, socket_dir) as server:
        for _ in range(3):
            # Connected and reset in one go, without a checkpoint: the server accepts them
            # only afterwards, already reset.
            for _ in range(20):
                reset(raw_socket(server))
            await assert_served(server, socket_dir)


async def test_accept_survives_running_out_of_file_descriptors(
    socket_dir: str, log_lines: list[str]
) -> None:
    """accept() failing with EMFILE: logged once, retried, and the waiting client is served
    once descriptors are free again. Meanwhile the server backs off without spinning: the
    listening socket stays readable, and the loop stops watching it while nobody waits."""
    async with Actor("srv", socket_root=socket_dir) as actor:
        server = await actor.serve()
        server.on("echo", lambda data, client: data)
        waiting = raw_socket(server)  # in the backlog: accepted only after the drought
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        fillers: list[int] = []
        try:
            highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
            resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 8, hard))
            with contextlib.suppress(OSError):
                while True:
                    fillers.append(os.open(os.devnull, os.O_RDONLY))
            busy = time.thread_time()
            await anyio.sleep(0.5)  # accept keeps failing meanwhile
            busy = time.thread_time() - busy
        finally:
            for fd in fillers:
                os.close(fd)
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        with anyio.fail_after(5):
            waiting.setblocking(False)
            stream = await SocketStream.from_socket(waiting)
            async with stream:
                await stream.send(framed([4, {"v": 1, "id": "patient"}]))
                decoder = MsgpackDecoder(Limits())
                messages: list[Any] = []
                while not messages:
                    messages = decoder.feed(await stream.receive())
        assert type(messages[0]) is Welcome
        assert await assert_served(server, socket_dir) < 5
    warnings = [line for line in log_lines if "cannot accept connections" in line]
    assert len(warnings) == 1, warnings
    assert busy < 0.2, f"the loop spun: {busy:.2f} s of CPU in 0.5 s of backing off"


# --- item 8: unfinished handshakes have their own budget; the oldest make way ------------------


async def raw_stream(server: Server) -> SocketStream:
    address = server.address
    with anyio.fail_after(5):
        if isinstance(address, str):
            return await anyio.connect_unix(address)
        return await anyio.connect_tcp(*address)


async def send_quietly(stream: SocketStream, data: bytes) -> None:
    try:
        with anyio.fail_after(5):
            await stream.send(data)
    except (anyio.BrokenResourceError, anyio.ClosedResourceError):
        pass  # dropped by the server


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_flood_of_silent_sockets_does_not_lock_out_a_good_client(
    transport: str, socket_dir: str
) -> None:
    async with serving(transport, socket_dir) as server:
        silent = [await raw_stream(server) for _ in range(300)]
        try:
            elapsed = await assert_served(server, socket_dir)
            assert elapsed < 1.0  # measured: a few ms (see the report); generous under load
            stats = server.statistics()
            assert stats.handshaking <= 64
            assert stats.handshakes_dropped >= 300 - 64
        finally:
            for stream in silent:
                await anyio.aclose_forcefully(stream)


async def test_a_flood_is_logged_once_not_once_per_socket(
    socket_dir: str, log_lines: list[str]
) -> None:
    async with Actor("srv", socket_root=socket_dir, max_handshakes=4) as actor:
        server = await actor.serve()
        silent = [await raw_stream(server) for _ in range(50)]
        try:
            with anyio.fail_after(5):
                while server.statistics().handshakes_dropped < 46:
                    await anyio.sleep(0.01)
        finally:
            for stream in silent:
                await anyio.aclose_forcefully(stream)
    dropped = [line for line in log_lines if "max_handshakes" in line]
    assert len(dropped) == 1, dropped
    assert "WARNING" in dropped[0]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_slowloris_does_not_lock_out_a_good_client(transport: str, socket_dir: str) -> None:
    """Sockets that trickle a hello that never ends (a header announcing 60 KiB, then a byte at a
    time): each handshake has one deadline, and the budget makes the oldest give way."""
    async with serving(transport, socket_dir, handshake_timeout=1.0) as server:
        trickling = [await raw_stream(server) for _ in range(100)]

        async def trickle() -> None:
            for stream in trickling:
                await send_quietly(stream, struct.pack(">I", 60 * 1024))
            while True:
                for stream in trickling:
                    await send_quietly(stream, b"\x00")
                await anyio.sleep(0.05)

        try:
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(trickle)
                for name in ("good1", "good2"):
                    assert await assert_served(server, socket_dir, name) < 1.0
                # Trickling does not extend the deadline: all of them are gone within it.
                with anyio.fail_after(5):
                    while server.statistics().handshaking:
                        await anyio.sleep(0.05)
                task_group.cancel_scope.cancel()
        finally:
            for stream in trickling:
                await anyio.aclose_forcefully(stream)


# --- item 10: one slow consumer never holds up a broadcast -------------------------------------


def framed(value: Any) -> bytes:
    body = msgpack.packb(value, use_bin_type=True)
    return struct.pack(">I", len(body)) + body


SLOW_CONSUMER_POLICIES = ["disconnect", "drop"]
BROADCASTS = 200
# Enough to overflow whatever the kernel buffers for the slow peer (TCP autotunes the server's
# send buffer up to tcp_wmem's maximum, 4 MiB on these machines), yet bounded.
MAX_BROADCASTS = 2_000
PAYLOAD = b"x" * 16 * 1024
OUTBOX = 256 * 1024


@pytest.mark.parametrize("policy", SLOW_CONSUMER_POLICIES)
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_one_slow_consumer_does_not_hold_up_broadcast(
    transport: str, policy: str, socket_dir: str
) -> None:
    async with serving(
        transport, socket_dir, slow_consumer=policy, max_outbox_bytes=OUTBOX
    ) as server:
        address = server.address
        slow = await connect_raw_quiet(address)
        received: dict[str, list[int]] = {}
        async with AsyncExitStack() as stack:
            for name in ("good1", "good2", "good3"):
                actor = await stack.enter_async_context(
                    Actor(name, socket_root=socket_dir, silent=True)
                )
                with anyio.fail_after(5):
                    if isinstance(address, str):
                        connection = await actor.connect_to("srv")
                    else:
                        connection = await actor.connect_to_net("srv", port=address[1])
                seen = received[name] = []
                connection.on("news", lambda data, seen=seen: seen.append(data[0]))

            def slow_consumer_handled() -> bool:
                if policy == "disconnect":
                    return "slow" not in server.clients
                return server.statistics().broadcasts_dropped > 0

            try:
                with anyio.fail_after(5):
                    while len(server.clients) < 4:
                        await anyio.sleep(0.01)
                sent = 0
                with anyio.fail_after(30):
                    # At least BROADCASTS, then on until the slow peer has met its policy.
                    while sent < BROADCASTS or (
                        sent < MAX_BROADCASTS and not slow_consumer_handled()
                    ):
                        n = sent
                        await server.broadcast("news", [n, PAYLOAD])
                        sent += 1
                        if policy == "drop":
                            # Lossy for anyone whose outbox is full at that moment: a good
                            # client gets every frame if it keeps up.
                            while any(len(seen) <= n for seen in received.values()):
                                await anyio.sleep(0.001)
                        elif n % 8 == 7:
                            await anyio.sleep(0.001)  # a producer in bursts, not a busy loop
                    while any(len(seen) < sent for seen in received.values()):
                        await anyio.sleep(0.01)
                for seen in received.values():
                    assert seen == list(range(sent))
                stats = server.statistics()
                if policy == "disconnect":
                    with anyio.fail_after(5):
                        while "slow" in server.clients:
                            await anyio.sleep(0.01)
                    assert server.statistics().slow_consumers == 1
                else:
                    assert "slow" in server.clients
                    assert stats.broadcasts_dropped > 0
                    assert stats.slow_consumers == 0
                assert set(server.clients) == {"good1", "good2", "good3"} | (
                    {"slow"} if policy == "drop" else set()
                )
            finally:
                await anyio.aclose_forcefully(slow)


@pytest.mark.parametrize("outbox", [16 * 1024, 64 * 1024, 256 * 1024])
@pytest.mark.parametrize("policy", SLOW_CONSUMER_POLICIES)
async def test_a_prompt_reader_is_not_taken_for_slow_by_a_broadcaster_that_never_yields(
    policy: str, outbox: int, socket_dir: str
) -> None:
    # The broadcaster gives the loop no pass of its own: the writers must get theirs before any
    # outbox fills, however small max_outbox_bytes is, or the prompt reader is judged slow.
    count = 4_000
    async with serving("unix", socket_dir, slow_consumer=policy, max_outbox_bytes=outbox) as server:
        async with Actor("reader", socket_root=socket_dir, silent=True) as reader:
            seen: list[int] = []
            with anyio.fail_after(5):
                connection = await reader.connect_to("srv")
                connection.on("news", lambda data: seen.append(data[0]))
                while len(server.clients) < 1:
                    await anyio.sleep(0.01)
            with anyio.fail_after(30):
                for n in range(count):
                    await server.broadcast("news", [n, "x" * 100])
                while (
                    len(seen) + server.statistics().broadcasts_dropped < count
                    and "reader" in server.clients
                ):
                    await anyio.sleep(0.01)
            stats = server.statistics()
            assert (stats.broadcasts_dropped, stats.slow_consumers) == (0, 0)
            assert seen == list(range(count))


async def connect_raw_quiet(address: str | tuple[str, int]) -> SocketStream:
    """A raw client named "slow" that completes the handshake, then never reads again (with a
    small receive buffer, so that the kernel soon holds no more for it)."""
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(5)
    sock.connect(address)
    sock.setblocking(False)
    stream = await SocketStream.from_socket(sock)
    decoder = MsgpackDecoder(Limits())
    with anyio.fail_after(5):
        await stream.send(framed([4, {"v": 1, "id": "slow"}]))
        messages: list[Any] = []
        while not messages:
            messages = decoder.feed(await stream.receive())
    assert type(messages[0]) is Welcome
    return stream


@pytest.mark.parametrize(
    "option", [{"slow_consumer": "block"}, {"slow_consumer": None}, {"max_handshakes": 0}]
)
def test_admission_options_are_validated(option: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match=next(iter(option))):
        Config(**option)
