"""``codec="node-ipc"`` between Python actors and against hand-written bytes (no Node needed).

What node-ipc cannot express gives a clear error; what a hostile node-ipc peer sends costs only
its own connection; the options are validated. The real node-ipc is in test_nodeipc.py.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import json
import os
import ssl
from collections.abc import Callable

import anyio
import anyio.abc
import pytest
import trustme
from anyio.streams.tls import TLSStream

import ipcactors
from ipcactors import Actor, Client

pytestmark = pytest.mark.anyio

FAST = {"codec": "node-ipc", "retry": 0.05, "retry_cap": 0.2, "silent": True}


async def wait_until(condition: Callable[[], bool], timeout: float = 10) -> None:
    with anyio.fail_after(timeout):
        while not condition():
            await anyio.sleep(0.01)


async def test_python_actors_over_node_ipc_with_a_custom_delimiter(socket_dir: str) -> None:
    got: list[object] = []
    async with (
        Actor("world", socket_root=socket_dir, node_ipc_delimiter="\r\n", **FAST) as world,
        Actor("hello", socket_root=socket_dir, node_ipc_delimiter="\r\n", **FAST) as hello,
    ):
        server = await world.serve()

        @server.on("message")
        async def message(data: str, client: Client) -> None:
            await server.emit(client, "message", data + " world!")

        with anyio.fail_after(10):
            connection = await hello.connect_to("world")
            connection.on("message", got.append)
            await connection.emit("message", "hello\r\n✓")  # JSON escapes the delimiter
            await wait_until(lambda: got == ["hello\r\n✓ world!"])
            # no handshake: the server numbers its clients
            assert list(server.clients) == ["node-ipc-1"]
            with pytest.raises(ipcactors.UnsupportedError, match="carries events only"):
                await connection.request("message", "x", timeout=1)
            with pytest.raises(ipcactors.UnsupportedError, match="carries events only"):
                await server.request("node-ipc-1", "message", "x", timeout=1)


async def test_a_full_server_fires_no_connect_and_disconnect_per_attempt(socket_dir: str) -> None:
    """node-ipc has no handshake: a full server takes each connection and closes it. Such an
    attempt fails (backoff, stop_retrying) and, after the first, fires neither `connect` nor
    `disconnect` (they fired on every attempt, two events and two INFO lines each); once a
    slot frees, the connection that lasts is connected, and what was emitted meanwhile goes
    out on it."""
    async with (
        Actor("full", socket_root=socket_dir, max_connections=1, **FAST) as full,
        Actor("first", socket_root=socket_dir, **FAST) as first,
        Actor("second", socket_root=socket_dir, **FAST) as second,
    ):
        server = await full.serve()

        @server.on("hi")
        async def greet(data: str, client: Client) -> None:
            await server.emit(client, "welcome", data)

        taken = await first.connect_to("full")
        await wait_until(lambda: len(server.clients) == 1)
        events: list[str] = []
        greetings: list[str] = []
        waiting = await second.connect_to("full")  # connected, then closed: a failed attempt
        waiting.on("connect", lambda: events.append("connect"))
        waiting.on("disconnect", lambda: events.append("disconnect"))
        waiting.on("welcome", greetings.append)
        await anyio.sleep(2)  # ~15 more attempts at this retry
        assert server.statistics().refused_busy >= 5
        assert events == ["disconnect"]  # the first connection's end: no event per attempt
        assert not waiting.connected
        # Queued while not connected: not written into the attempts the full server closes
        # unread (it was, lost, event after event), but once a connection lasts.
        await waiting.emit("hi", "second")
        await anyio.sleep(0.5)  # a few more attempts
        await taken.aclose()
        await wait_until(lambda: greetings == ["second"])
        await wait_until(lambda: events == ["disconnect", "connect"])


async def test_a_server_that_closes_at_the_first_bytes_meets_stop_retrying(
    socket_dir: str, log_lines: list[str]
) -> None:
    """A server that takes a connection and closes it when the first bytes come (a plain
    client on a node-ipc TLS port, a broken server) is failed attempts too: the client gives
    up after stop_retrying, saying so at WARNING. The wait for the connection to prove itself
    (a second, nothing written) counted as the connection lasting: the next attempt, proven,
    reset the count, and it reconnected for ever, the events written into each lost."""
    path = os.path.join(socket_dir, "closer")
    accepted = 0

    async def close_at_the_first_bytes(stream: anyio.abc.SocketStream) -> None:
        nonlocal accepted
        accepted += 1
        async with stream:
            with anyio.move_on_after(5):
                await stream.receive()

    listener = await anyio.create_unix_listener(path)
    async with listener, anyio.create_task_group() as task_group:
        task_group.start_soon(listener.serve, close_at_the_first_bytes)
        options = {**FAST, "silent": False, "stop_retrying": 2}
        async with Actor("hello", socket_root=socket_dir, **options) as hello:
            connection = await hello.connect_to("closer", path)
            with anyio.fail_after(15):
                while not connection.destroyed:
                    with contextlib.suppress(ipcactors.ClosedError):
                        await connection.emit("tick", 1)
                    await anyio.sleep(0.1)
        task_group.cancel_scope.cancel()
    os.unlink(path)  # (anyio's listener leaves its socket file)
    assert accepted <= 4  # the first, then stop_retrying=2 more (and one in its backoff)
    assert any("WARNING" in line and "gave up on 'closer'" in line for line in log_lines)


async def test_what_node_ipc_cannot_carry_is_refused_before_sending(socket_dir: str) -> None:
    async with (
        Actor("world", socket_root=socket_dir, **FAST) as world,
        Actor("hello", socket_root=socket_dir, **FAST) as hello,
    ):
        server = await world.serve()
        for name in ("socket.disconnected", "close", "data", "start"):
            # Refused whoever is connected (it was only in each client's send: with no
            # client, nothing said the call was wrong).
            with pytest.raises(ipcactors.ReservedEventError, match="lifecycle"):
                await server.broadcast(name, {})
        with anyio.fail_after(10):
            connection = await hello.connect_to("world")
            for name in ("socket.disconnected", "close", "data", "start"):
                with pytest.raises(ipcactors.ReservedEventError, match="lifecycle"):
                    await connection.emit(name, {})
                # Nor can a peer send them: a handler for one could never run (node-ipc's
                # 'socket.disconnected' is 'disconnect' here). It was taken, and never ran.
                with pytest.raises(ipcactors.ReservedEventError, match="never"):
                    connection.on(name, lambda data: None)
                with pytest.raises(ipcactors.ReservedEventError, match="never"):
                    world.server.on(name, lambda data, client: None)  # type: ignore[union-attr]
            deep: list[object] = []
            for _ in range(70):  # deeper than the peer's max_depth (64): it would close
                deep = [deep]
            for data in (b"bytes", float("nan"), {1, 2}, {(1, 2): 3}, deep, [10**400]):
                with pytest.raises(ipcactors.EncodeError, match="node-ipc JSON"):
                    await connection.emit("x", data)
            # Keys JSON writes alike: the peer would keep one value (the other went unsaid).
            for data in (
                {1: "a", "1": "b"},
                [{"x": {True: 1, "true": 2}}],
                {None: 0, "null": 1},
                [collections.OrderedDict({1.5: "a", "1.5": "b"})],  # (as JSON writes it)
                {**{n: n for n in range(10_000)}, "5": 1},  # the message names the pair only
            ):
                with pytest.raises(ipcactors.EncodeError, match="alike") as caught:
                    await connection.emit("x", data)
                assert len(str(caught.value)) < 300
            assert connection.connected  # nothing was sent: the connection lives


def test_node_ipc_options_are_validated() -> None:
    with pytest.raises(ipcactors.ConfigError, match="node_ipc_delimiter"):
        ipcactors.Config(codec="node-ipc", node_ipc_delimiter="")
    with pytest.raises(ipcactors.ConfigError, match="node_ipc_delimiter"):
        ipcactors.Config(codec="node-ipc", node_ipc_delimiter=b"\f")  # type: ignore[arg-type]
    with pytest.raises(ipcactors.ConfigError, match="auth_key needs a handshake"):
        ipcactors.Config(codec="node-ipc", auth_key=b"secret")
    with pytest.raises(ipcactors.ConfigError, match="codec must be one of"):
        ipcactors.Config(codec="node_ipc")
    assert ipcactors.Config(codec="node-ipc", node_ipc_delimiter="\n").node_ipc_delimiter == "\n"


async def receive_until_closed(stream: anyio.abc.ByteStream) -> bool:
    try:
        while True:
            await stream.receive()
    except (anyio.EndOfStream, anyio.BrokenResourceError):
        return True


@pytest.mark.parametrize(
    "bad",
    [
        b"{not json\f",
        b'{"type":123,"data":1}\f',
        b'{"data":1}\f',
        b"42\f",
        b'{"type":"connect","data":{}}\f',
        b'{"type":"socket.disconnected","data":{}}\f',
        b'{"type":"error","data":{"message":"spoofed"}}\f',
        '{"type":"ok","data":5}'.encode("utf-16-le") + b"\f",  # JSON, but not UTF-8
        '{"type":"ok","data":5}'.encode("utf-32-le") + b"\f",
        b'{"type":"ok","data":"\xed\xa0\x80"}\f',  # CESU-8: a surrogate's bytes
        b'{"type":"ok","data":1,"x":' + b"[" * 70 + b"]" * 70 + b"}\f",  # deep, not in data
        # Numbers out of a double's range: infinities, which node-ipc.md says JSON cannot carry
        b'{"type":"ok","data":1e999}\f',
        b'{"type":"ok","data":[-1e400]}\f',
        b'{"type":"ok","data":[-1' + b"0" * 400 + b"]}\f",  # whole, but as large
        # More objects than max_decoded_objects (131,072): 384 KiB that would decode into 30 MB
        b'{"type":"ok","data":[' + b",".join([b"{}"] * 131_072) + b"]}\f",
    ],
)
async def test_a_bad_node_ipc_frame_costs_only_that_connection(socket_dir: str, bad: bytes) -> None:
    got: list[object] = []
    lifecycle: list[str] = []
    async with Actor("world", socket_root=socket_dir, **FAST) as world:
        server = await world.serve()
        server.on("ok", lambda data, client: got.append(data))
        server.on("connect", lambda client: lifecycle.append("connect"))
        server.on("disconnect", lambda client: lifecycle.append("disconnect"))
        path = str(server.address)
        with anyio.fail_after(10):
            async with await anyio.connect_unix(path) as good:
                async with await anyio.connect_unix(path) as evil:
                    await evil.send(b'{"type":"ok","data":1}\f')
                    await wait_until(lambda: got == [1])
                    await evil.send(bad + b'{"type":"ok","data":2}\f')
                    closed = await receive_until_closed(evil)
                    assert closed
                await good.send(b'{"type":"ok","data":3}\f')
                await wait_until(lambda: 3 in got)
                await wait_until(lambda: lifecycle.count("disconnect") == 1)
        # nothing after the bad frame was handled; no lifecycle event was fired by the peer (one
        # connect and one disconnect for the evil connection, one connect for the good one)
        assert got == [1, 3]
        assert lifecycle.count("connect") == 2
        assert lifecycle.count("disconnect") == 1


async def test_emit_while_the_server_is_down_is_sent_after_reconnecting(socket_dir: str) -> None:
    got: list[object] = []
    path = os.path.join(socket_dir, "world.sock")
    async with Actor("hello", socket_root=socket_dir, **FAST) as hello:
        async with Actor("world", socket_root=socket_dir, **FAST) as world:
            server = await world.serve(path)
            server.on("message", lambda data, client: got.append(data))
            with anyio.fail_after(10):
                connection = await hello.connect_to("world", path)
                await connection.emit("message", 1)
                await wait_until(lambda: got == [1])
        with anyio.fail_after(10):
            await wait_until(lambda: not connection.connected)
            await connection.emit("message", 2)  # queued: the server is gone
            async with Actor("world", socket_root=socket_dir, **FAST) as world:
                server = await world.serve(path)
                server.on("message", lambda data, client: got.append(data))
                await wait_until(lambda: got == [1, 2])


async def test_a_tls_error_after_the_handshake_costs_only_that_connection(
    socket_dir: str,
) -> None:
    """A TLS server that completes the TLS handshake, then sends a corrupt record (as a node-ipc
    14 server sends an alert when it wants a client certificate): the client's read fails with
    an SSL error. With no ipcactors handshake to catch it (node-ipc's wire), it used to escape
    the reader and take the client's whole actor down. Now it ends that connection only: the
    client reconnects, and the actor lives on."""
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    accepted: list[int] = []

    async def corrupt(raw: anyio.abc.SocketStream) -> None:
        async with raw:
            tls = await TLSStream.wrap(
                raw, server_side=True, ssl_context=server_context, standard_compatible=False
            )
            accepted.append(1)
            if len(accepted) == 1:
                await raw.send(b"\x17\x03\x03\x00\x20" + b"\x00" * 32)  # fails to decrypt
            else:
                await tls.send(b'{"type":"hi","data":2}\f')
            await receive_until_closed(raw)

    got: list[object] = []
    async with (
        await anyio.create_tcp_listener(local_host="127.0.0.1") as listener,
        anyio.create_task_group() as tasks,
    ):
        tasks.start_soon(listener.serve, corrupt)
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        async with Actor("hello", socket_root=socket_dir, **FAST) as hello:
            with anyio.fail_after(10):
                connection = await hello.connect_to_net(
                    "world", "127.0.0.1", port, tls=client_context
                )
                connection.on("hi", got.append)
                await wait_until(lambda: got == [2])  # after reconnecting
        tasks.cancel_scope.cancel()


@pytest.mark.parametrize("case", ["stalled", "oversized"])
async def test_half_a_frame_is_bounded_in_time_and_size(socket_dir: str, case: str) -> None:
    """node-ipc 14 guarded's messageTimeout and maxMessageSize are frame_timeout and
    max_frame_size here: a peer that stops in the middle of a frame, or sends more than
    max_frame_size without a delimiter, is closed (nothing unbounded is buffered)."""
    got: list[object] = []
    config = {**FAST, "frame_timeout": 0.3, "max_frame_size": 1024}
    async with Actor("world", socket_root=socket_dir, **config) as world:
        server = await world.serve()
        server.on("ok", lambda data, client: got.append(data))
        with anyio.fail_after(10):
            async with await anyio.connect_unix(str(server.address)) as peer:
                await peer.send(b'{"type":"ok","data":1}\f')
                await wait_until(lambda: got == [1])
                if case == "stalled":
                    await peer.send(b'{"type":"ok","da')
                else:
                    await peer.send(b'{"type":"ok","data":"' + b"x" * 2000)
                assert await receive_until_closed(peer)
            await wait_until(lambda: not server.clients)


async def test_a_server_that_closes_every_connection_at_once_meets_backoff_and_stop_retrying(
    socket_dir: str,
) -> None:
    """A server that takes each connection and closes it at once (a full node-ipc server does,
    without a word; so does a peer that then sends garbage) is retried with backoff, and
    stop_retrying ends it: a connection that did not last counts as a failed attempt. Every
    such loss restarted the backoff and the retry count: the client reconnected at the base
    pace for ever, firing connect and disconnect each time (78 of each in 6 s)."""
    async with Actor("world", socket_root=socket_dir, max_connections=1, **FAST) as world:
        server = await world.serve()
        async with Actor("first", socket_root=socket_dir, **FAST) as first:
            with anyio.fail_after(10):
                await first.connect_to("world")
                await wait_until(lambda: len(server.clients) == 1)
            options = {**FAST, "retry": 0.05, "retry_cap": 5.0, "stop_retrying": 4}
            async with Actor("second", socket_root=socket_dir, **options) as second:
                connects: list[float] = []
                destroyed = anyio.Event()
                with anyio.fail_after(20):
                    connection = await second.connect_to("world")
                    connection.on("connect", lambda: connects.append(anyio.current_time()))
                    connection.on("destroy", destroyed.set)
                    await destroyed.wait()
                assert connection.destroyed
                assert len(connects) <= 4, "each lost connection is a retry spent"
                gaps = [later - earlier for earlier, later in itertools.pairwise(connects)]
                assert gaps == sorted(gaps) or len(gaps) < 2
                assert server.statistics().refused_busy >= 2


async def test_a_string_node_sends_can_be_sent_back(socket_dir: str) -> None:
    """JSON.stringify writes a lone surrogate as an escape ("\\ud800"), and a Python str
    holds it: echoed, it goes back the same way. Sending it raised EncodeError (UTF-8 cannot
    hold it, and the encoder wrote UTF-8 only)."""
    async with Actor("world", socket_root=socket_dir, **FAST) as world:
        server = await world.serve()

        @server.on("echo")
        async def echo(data: str, client: Client) -> None:
            await client.emit("echoed", data)

        with anyio.fail_after(10):
            async with await anyio.connect_unix(str(server.address)) as node:
                await node.send('{"type":"echo","data":"a\\ud800\u00e9"}\f'.encode())
                received = b""
                while not received.endswith(b"\f"):
                    received += await node.receive()
        assert json.loads(received[:-1]) == {"type": "echoed", "data": "a\ud800\u00e9"}


async def test_peers_of_two_codecs_are_told_the_codecs_may_differ(
    socket_dir: str, log_lines: list[str]
) -> None:
    """Both ends must use the same codec: a msgpack client that meets a node-ipc server, and a
    node-ipc client that meets a msgpack one, say that the codecs may differ. They said "the
    peer closed the connection without a word", and "a node-ipc frame is a JSON object" with
    the msgpack frame's first bytes."""
    async with Actor("world", socket_root=socket_dir, codec="node-ipc", silent=True) as world:
        await world.serve()
        async with Actor("hello", socket_root=socket_dir, stop_retrying=0, silent=True) as hello:
            with anyio.fail_after(5), pytest.raises(ipcactors.ConnectionFailedError) as caught:
                await hello.connect_to("world")
    assert "Config.codec" in str(caught.value)
    async with Actor("world", socket_root=socket_dir, silent=True) as world:
        await world.serve()
        options = {"codec": "node-ipc", "stop_retrying": 0}
        async with Actor("hello", socket_root=socket_dir, **options) as hello:
            connection = await hello.connect_to("world")
            await connection.emit("news", 1)  # (what the server answers with its reject)
            with anyio.fail_after(5):
                while connection.connected:
                    await anyio.sleep(0.01)
    assert any("that peer's codec is msgpack" in line for line in log_lines), log_lines
