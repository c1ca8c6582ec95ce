"""``connect_to(wait=False)``: the client's first frames travel right behind its hello, and the
server answers the welcome and the first reply together (docs/protocol.md section 4).

What must hold: nothing is handled before the server decided to welcome the client; a refusal
that ends the connection is still a clear error (the requests sent ahead fail with it), while
what was sent ahead of a ``busy`` refusal or of a connection that ended unwelcomed goes again
behind the next hello, as if the client had waited; a shared key costs one round trip more and
no more, and the connection behaves as any other once welcomed.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
from collections.abc import Iterator
from typing import Any

import anyio
import msgpack
import pytest
from anyio.abc import TaskGroup

import ipcactors
from ipcactors import Actor, Server

pytestmark = pytest.mark.anyio

HOST = "127.0.0.1"


def framed(message: Any) -> bytes:
    body = msgpack.packb(message)
    return struct.pack(">I", len(body)) + body


def unframe(data: bytes) -> list[Any]:
    messages = []
    while len(data) >= 4:
        (size,) = struct.unpack_from(">I", data)
        if len(data) < 4 + size:
            break
        messages.append(msgpack.unpackb(data[4 : 4 + size]))
        data = data[4 + size :]
    return messages


@contextlib.contextmanager
def _removed(path: str) -> Iterator[None]:
    """A raw listener's socket file is gone afterwards, however the test ends."""
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def record(server: Server, handled: list[Any]) -> None:
    """``server`` notes each ``ev`` event and ``echo`` request it handles (and answers it)."""
    server.on("echo", lambda data, client: handled.append(data) or data)
    server.on("ev", lambda data, client: handled.append(data))


async def send_ahead(connection: ipcactors.Connection, tg: TaskGroup) -> list[Any]:
    """Emit an event and start a request on ``connection`` (pipelined: ahead of its
    welcome); the list returned gets the request's answer."""
    answers: list[Any] = []

    async def ask() -> None:
        answers.append(await connection.request("echo", "ahead"))

    await connection.emit("ev", "event ahead")
    tg.start_soon(ask)
    return answers


async def connect(hello: Actor, server: Server, transport: str) -> ipcactors.Connection:
    if transport == "unix":
        return await hello.connect_to("world", wait=False)
    address = server.address
    assert isinstance(address, tuple)
    return await hello.connect_to_net("world", HOST, address[1], wait=False)


@pytest.mark.parametrize("transport", ["unix", "tcp"])
@pytest.mark.parametrize("key", [None, "s3cret"], ids=["no key", "shared key"])
async def test_first_request_goes_behind_the_hello(
    transport: str, key: str | None, socket_dir: str
) -> None:
    order: list[str] = []
    async with Actor("world", socket_root=socket_dir, silent=True, auth_key=key) as world:
        server = await (world.serve() if transport == "unix" else world.serve_net(HOST, 0))
        server.on("connect", lambda client: order.append("server connect"))
        server.on("echo", lambda data, client: order.append("echo") or data)
        async with Actor("hello", socket_root=socket_dir, silent=True, auth_key=key) as hello:
            connection = await connect(hello, server, transport)
            connection.on("connect", lambda: order.append("client connect"))
            with anyio.fail_after(5):
                assert await connection.request("echo", 1) == 1
                await connection.wait_connected()
            assert connection.connected
            assert connection.server_id == "world"
            # A second connect_to finds the same connection, and it serves as any other.
            assert await hello.connect_to("world") is connection
            with anyio.fail_after(5):
                assert await connection.request("echo", 2) == 2
    on_server = [what for what in order if what != "client connect"]
    assert on_server == ["server connect", "echo", "echo"], "the connect handlers run first"
    assert order.count("client connect") == 1


async def test_client_sends_ahead_of_the_welcome(socket_dir: str) -> None:
    """A bare server that answers nothing until it has the hello and the request: the client
    must not be waiting for the welcome to send its request."""
    path = os.path.join(socket_dir, "bare")
    received: list[Any] = []
    listener = await anyio.create_unix_listener(path)

    async def serve(stream: anyio.abc.SocketStream) -> None:
        data = b""
        async with stream:
            with anyio.fail_after(5):
                while len(received) < 2:
                    data += await stream.receive()
                    received[:] = unframe(data)
            hello, request = received
            assert hello[0] == 4
            assert request[:3] == [1, "echo", "x"]
            await stream.send(framed([5, {"v": 1, "id": "bare"}]) + framed([2, request[3], "x"]))
            with anyio.move_on_after(5), contextlib.suppress(anyio.EndOfStream):
                await stream.receive()  # until the client closes

    try:
        async with listener, anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, serve)
            async with Actor("hello", socket_root=socket_dir, silent=True) as hello:
                connection = await hello.connect_to("bare", path, wait=False)
                with anyio.fail_after(5):
                    assert await connection.request("echo", "x") == "x"
            tg.cancel_scope.cancel()
    finally:
        os.unlink(path)  # anyio's listener leaves its socket file


@pytest.mark.parametrize("transport", ["unix", "tcp"])
async def test_the_hello_and_the_first_frames_go_in_one_write(
    transport: str, socket_dir: str
) -> None:
    """The hello waits for the first frames and leaves with them: the server reads them at
    once and can answer the welcome and the first reply together (one read and one write on
    each side, not two)."""
    if transport == "unix":
        listener = socket.socket(socket.AF_UNIX)
        path = os.path.join(socket_dir, "bare")
        listener.bind(path)
    else:
        listener = socket.socket(socket.AF_INET)
        listener.bind((HOST, 0))
    with listener, contextlib.ExitStack() as cleanup:
        if transport == "unix":
            cleanup.callback(os.unlink, path)
        listener.listen()
        async with Actor("hello", socket_root=socket_dir, silent=True) as hello:
            if transport == "unix":
                connection = await hello.connect_to("bare", path, wait=False)
            else:
                port = listener.getsockname()[1]
                connection = await hello.connect_to_net("bare", HOST, port, wait=False)
            peer, _ = listener.accept()  # connected by now: it waits in the backlog
            with peer:
                peer.setblocking(False)
                with pytest.raises(BlockingIOError):  # nothing sent alone
                    peer.recv(4096, socket.MSG_PEEK)
                await connection.emit("ev", 1)
                await connection.emit("ev", 2)
                with anyio.fail_after(5):
                    await anyio.wait_readable(peer)
                first_read = unframe(peer.recv(65536))
                assert [message[0] for message in first_read] == [4, 0, 0]  # hello, events
                assert first_read[1][1:] == ["ev", 1]
                await connection.aclose()


@pytest.mark.parametrize("connect_handler", [False, True], ids=["plain", "connect handler"])
async def test_a_welcome_that_never_comes_fails_what_was_sent_ahead_in_time(
    socket_dir: str, connect_handler: bool
) -> None:
    """A server that takes the hello and the request and then says nothing: past
    ``handshake_timeout`` the request fails with the handshake's timeout, the error handler
    hears it, the connection is given up (stop_retrying=0); nothing waits longer."""
    path = os.path.join(socket_dir, "mute")
    listener = await anyio.create_unix_listener(path)
    took = anyio.Event()

    async def serve(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            with anyio.move_on_after(5), contextlib.suppress(anyio.EndOfStream):
                while True:
                    await stream.receive()
                    took.set()

    errors: list[BaseException] = []
    connects: list[str] = []
    try:
        async with listener, anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, serve)
            options = {"handshake_timeout": 0.3, "stop_retrying": 0}
            async with Actor("hello", socket_root=socket_dir, silent=True, **options) as hello:
                connection = await hello.connect_to("mute", path, wait=False)
                connection.on("error", errors.append)
                if connect_handler:
                    connection.on("connect", lambda: connects.append("connect"))
                start = anyio.current_time()
                with anyio.fail_after(5), pytest.raises(ipcactors.ConnectionLostError) as caught:
                    await connection.request("echo", "ahead")
                waited = anyio.current_time() - start
                assert took.is_set(), "the hello and the request went out"
                assert "handshake" in str(caught.value)
                assert "TimeoutError" in str(caught.value)
                assert 0.25 <= waited < 3, waited
                with anyio.fail_after(5), pytest.raises(ipcactors.ClosedError):
                    await connection.wait_connected()
                assert connection.destroyed
                assert not connection.connected
            tg.cancel_scope.cancel()
    finally:
        os.unlink(path)  # anyio's listener leaves its socket file
    assert [type(e) for e in errors] == [ipcactors.ConnectionFailedError]
    assert isinstance(errors[0].__cause__, TimeoutError)
    assert connects == []


@pytest.mark.parametrize("transport", ["unix", "tcp"])
async def test_a_refusal_fails_what_was_sent_ahead_and_nothing_is_handled(
    transport: str, socket_dir: str
) -> None:
    handled: list[Any] = []
    errors: list[BaseException] = []
    async with Actor("world", socket_root=socket_dir, silent=True, auth_key="s3cret") as world:
        server = await (world.serve() if transport == "unix" else world.serve_net(HOST, 0))
        record(server, handled)
        server.on("connect", lambda client: handled.append("connect"))
        async with Actor("hello", socket_root=socket_dir, silent=True, retry=0.05) as hello:
            connection = await connect(hello, server, transport)
            connection.on("error", errors.append)
            await connection.emit("ev", "ahead")
            with anyio.fail_after(5), pytest.raises(ipcactors.AuthenticationError, match="key"):
                await connection.request("echo", "ahead")
            with anyio.fail_after(5), pytest.raises(ipcactors.ClosedError) as caught:
                await connection.wait_connected()
            assert isinstance(caught.value.__cause__, ipcactors.AuthenticationError)
            assert connection.destroyed, "a refusal other than busy is not retried"
            assert not connection.connected
            with pytest.raises(ipcactors.ClosedError):
                await connection.emit("ev", "after")
        assert [type(e) for e in errors] == [ipcactors.AuthenticationError]
        assert handled == []


@pytest.mark.parametrize("transport", ["unix", "tcp"])
async def test_what_was_sent_ahead_of_a_busy_refusal_goes_again_once_welcomed(
    transport: str, socket_dir: str
) -> None:
    """A busy server handled nothing behind the hello it refused: the event and the request
    sent ahead go again, first, behind the hello that is welcomed (as if the client had waited
    for it), each handled once; the error handlers hear the refusal."""
    handled: list[Any] = []
    errors: list[BaseException] = []
    async with Actor("world", socket_root=socket_dir, silent=True, max_connections=1) as world:
        server = await (world.serve() if transport == "unix" else world.serve_net(HOST, 0))
        record(server, handled)
        async with Actor("first", socket_root=socket_dir, silent=True) as first:
            if transport == "unix":
                await first.connect_to("world")
            else:
                await first.connect_to_net("world", HOST, server.address[1])  # type: ignore[index]
            async with Actor("hello", socket_root=socket_dir, silent=True, retry=0.02) as hello:
                connection = await connect(hello, server, transport)
                connection.on("error", errors.append)
                async with anyio.create_task_group() as tg:
                    answers = await send_ahead(connection, tg)
                    with anyio.fail_after(5):
                        while server.statistics().refused_busy < 2:  # refused, and retried
                            await anyio.sleep(0.01)
                    assert handled == []
                    assert answers == []
                    await first.disconnect("world")
                    with anyio.fail_after(5):
                        await connection.wait_connected()
                assert answers == ["ahead"]
                with anyio.fail_after(5):
                    assert await connection.request("echo", "later") == "later"
    assert handled == ["event ahead", "ahead", "later"], "each once, in order"
    assert errors
    assert all(isinstance(e, ipcactors.ServerBusyError) for e in errors)


@pytest.mark.parametrize("how", ["end", "reset"])
async def test_what_was_sent_ahead_of_a_connection_that_ends_unwelcomed_goes_again(
    how: str, socket_dir: str
) -> None:
    """A server that closes the connection without a welcome (a server over its
    ``max_handshakes`` drops the oldest handshake so; ``end``: after reading everything,
    ``reset``: with our frames unread) handled nothing behind the hello: the event and the
    request sent ahead go again behind the next hello, to the server that comes up there."""
    path = os.path.join(socket_dir, "world")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen()
    handled: list[Any] = []
    with listener, _removed(path):
        async with Actor("hello", socket_root=socket_dir, silent=True, retry=0.05) as hello:
            connection = await hello.connect_to("world", path, wait=False)
            async with anyio.create_task_group() as tg:
                answers = await send_ahead(connection, tg)
                peer, _ = listener.accept()  # connected by now: it waits in the backlog
                with peer:
                    peer.setblocking(False)
                    with anyio.fail_after(5):
                        data = b""
                        while len(unframe(data)) < 3:  # the hello, the event, the request
                            await anyio.wait_readable(peer)
                            if how == "reset":  # left unread: closing resets the connection
                                data = peer.recv(65536, socket.MSG_PEEK)
                                await anyio.sleep(0.005)
                            else:
                                data += peer.recv(65536)
                    assert [m[0] for m in unframe(data)] == [4, 0, 1]
                listener.close()
                os.unlink(path)  # for the server that comes up there
                async with Actor("world", socket_root=socket_dir, silent=True) as world:
                    server = await world.serve(path)
                    record(server, handled)
                    with anyio.fail_after(5):
                        await connection.wait_connected()
                        while not answers:
                            await anyio.sleep(0.01)
                    assert answers == ["ahead"]
                    await hello.disconnect("world")
    assert handled == ["event ahead", "ahead"], "each once, in order"


@pytest.mark.parametrize("transport", ["unix", "tcp"])
async def test_without_connect_handlers_events_behind_the_welcome_are_handled(
    transport: str, socket_dir: str
) -> None:
    """No connect handler on the client: its channel runs no opening of its own, and the
    server's events that follow the welcome (sent from its connect handler) are still handled,
    in order, before the first reply is awaited to the end."""
    async with Actor("world", socket_root=socket_dir, silent=True) as world:
        server = await (world.serve() if transport == "unix" else world.serve_net(HOST, 0))

        @server.on("connect")
        async def greet(client: ipcactors.Client) -> None:
            for i in range(3):
                await client.emit("news", i)

        server.on("echo", lambda data, client: data)
        async with Actor("hello", socket_root=socket_dir, silent=True) as hello:
            news: list[int] = []
            three = anyio.Event()
            connection = await connect(hello, server, transport)

            @connection.on("news")
            def on_news(data: int) -> None:
                news.append(data)
                if len(news) == 3:
                    three.set()

            with anyio.fail_after(5):
                assert await connection.request("echo", 1) == 1
                await three.wait()
                await connection.wait_connected()
            assert news == [0, 1, 2]


async def test_what_waits_to_go_again_is_bounded_by_the_outbox(socket_dir: str) -> None:
    """What went ahead of the welcome is kept until it comes, and counts against
    ``max_outbox_bytes``: a server that reads everything and never welcomes holds the
    client's emits at that bound (backpressure), not its memory; what was kept then goes again,
    in order, once, to the server that comes up."""
    path = os.path.join(socket_dir, "world")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen()
    handled: list[int] = []
    bound, size, count = 64 * 1024, 16 * 1024, 64
    options = {"retry": 0.05, "max_outbox_bytes": bound}
    with listener, _removed(path):
        async with Actor("hello", socket_root=socket_dir, silent=True, **options) as hello:
            connection = await hello.connect_to("world", path, wait=False)
            emitted: list[int] = []

            async def emit_all() -> None:
                for number in range(count):
                    await connection.emit("ev", {"n": number, "pad": b"x" * size})
                    emitted.append(number)

            async with anyio.create_task_group() as tg:
                tg.start_soon(emit_all)
                peer, _ = listener.accept()
                received = 0
                with peer:
                    peer.setblocking(False)
                    with anyio.move_on_after(0.5):  # reads all it is sent, says nothing
                        while True:
                            await anyio.wait_readable(peer)
                            received += len(peer.recv(1 << 20))
                    assert len(emitted) < count // 2, "held at the bound"
                    assert received <= 2 * bound + size, received
                listener.close()
                os.unlink(path)  # for the server that comes up there
                async with Actor("world", socket_root=socket_dir, silent=True) as world:
                    server = await world.serve(path)
                    server.on("ev", lambda data, client: handled.append(data["n"]))
                    with anyio.fail_after(10):
                        while len(handled) < count:
                            await anyio.sleep(0.01)
                    await hello.disconnect("world")
    assert handled == list(range(count)), "each once, in order"
