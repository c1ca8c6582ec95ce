"""TLS (verified, mutual) and the shared-key handshake, with real certificates from trustme."""

from __future__ import annotations

import contextlib
import datetime
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import anyio
import anyio.abc
import pytest
import trustme
from _faultproxy import FaultProxy
from anyio.streams.tls import TLSStream

import ipcactors
from ipcactors import Actor, Server
from ipcactors._proto._messages import Limits
from ipcactors._proto._msgpack import MsgpackDecoder, MsgpackEncoder

pytestmark = pytest.mark.anyio

HOST = "127.0.0.1"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def other_ca() -> trustme.CA:
    return trustme.CA()


def server_context(ca: trustme.CA, *, mutual: bool = False, **cert: Any) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*(cert.pop("names", [HOST, "localhost"])), **cert).configure_cert(context)
    if mutual:
        context.verify_mode = ssl.CERT_REQUIRED
        ca.configure_trust(context)
    return context


def client_context(ca: trustme.CA, *, cert_from: trustme.CA | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    if cert_from is not None:
        cert_from.issue_cert("client@example.org").configure_cert(context)
    return context


@asynccontextmanager
async def tls_server(context: ssl.SSLContext, **config: Any) -> AsyncIterator[Server]:
    async with Actor("world", silent=True, **config) as actor:
        server = await actor.serve_net(HOST, 0, tls=context)
        server.on("echo", lambda data, client: data)
        server.on("whoami", lambda data, client: client.peer_certificate)
        yield server


def port(server: Server) -> int:
    return int(server.address[1])  # type: ignore[index]


async def assert_still_serving(server: Server, context: ssl.SSLContext) -> None:
    async with Actor("good", silent=True) as good:
        connection = await good.connect_to_net("world", HOST, port(server), tls=context)
        with anyio.fail_after(5):
            assert await connection.request("echo", "fine") == "fine"


async def test_tls_echo(ca: trustme.CA) -> None:
    async with tls_server(server_context(ca)) as server, Actor("hello", silent=True) as hello:
        connection = await hello.connect_to_net("world", HOST, port(server), tls=client_context(ca))
        with anyio.fail_after(5):
            assert await connection.request("echo", {"x": b"\x00" * 100_000}) == {
                "x": b"\x00" * 100_000
            }
            assert await connection.request("whoami") is None  # no client certificate


async def test_tls_error_replies_carry_no_traceback_by_default(ca: trustme.CA) -> None:
    for setting in (None, True):
        async with (
            tls_server(server_context(ca), remote_tracebacks=setting) as server,
            Actor("hello", silent=True) as hello,
        ):

            @server.on("fail")
            def fail(data: Any, client: ipcactors.Client) -> None:
                raise ValueError("bad value")

            connection = await hello.connect_to_net(
                "world", HOST, port(server), tls=client_context(ca)
            )
            with anyio.fail_after(5), pytest.raises(ipcactors.RemoteError) as caught:
                await connection.request("fail")
            assert caught.value.remote_message == "bad value"
            assert ("in fail" in caught.value.remote_traceback) is (setting is True)


async def test_tls_server_refuses_to_start_without_a_certificate() -> None:
    async with Actor("world", silent=True) as actor:
        bare = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        with pytest.raises(ipcactors.ConfigError, match="certificate"):
            await actor.serve_net(HOST, 0, tls=bare)
        with pytest.raises(ipcactors.ConfigError, match="server context"):
            await actor.serve_net(HOST, 0, tls=ssl.create_default_context())
        assert actor.server is None


@pytest.mark.parametrize(
    "case", ["wrong ca", "expired", "wrong hostname", "tls version", "tls to plain port"]
)
async def test_tls_failures_are_typed_and_not_retried(
    case: str, ca: trustme.CA, other_ca: trustme.CA
) -> None:
    good_client = client_context(ca)
    client = good_client
    context = server_context(ca)
    if case == "wrong ca":
        client = client_context(other_ca)
    elif case == "expired":
        past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=2)
        context = server_context(ca, not_after=past, not_before=past - datetime.timedelta(days=9))
    elif case == "wrong hostname":
        context = server_context(ca, names=["elsewhere.example"])
    elif case == "tls version":
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        client = client_context(ca)
        client.maximum_version = ssl.TLSVersion.TLSv1_2
    if case == "tls to plain port":
        async with Actor("world", silent=True) as plain_actor:
            plain = await plain_actor.serve_net(HOST, 0)
            async with Actor("hello", silent=True, retry=0.05) as hello:
                with anyio.fail_after(3), pytest.raises(ipcactors.TLSError):
                    await hello.connect_to_net("world", HOST, port(plain), tls=client)
        return
    async with tls_server(context) as server:
        async with Actor("hello", silent=True, retry=0.05) as hello:  # retries forever...
            with anyio.fail_after(3), pytest.raises(ipcactors.TLSError) as caught:
                await hello.connect_to_net("world", HOST, port(server), tls=client)
            assert isinstance(caught.value, ipcactors.AuthenticationError)
            assert "world" not in hello.of  # ...but not after a TLS failure
        if case not in ("expired", "wrong hostname"):
            await assert_still_serving(server, good_client)


@pytest.mark.parametrize("codec", ["msgpack", "node-ipc"])
async def test_tls_client_on_a_plain_port_fails_at_once_saying_why(
    codec: str, ca: trustme.CA
) -> None:
    # Our server answers a TLS hello in plain (TLSError, never retried), or with the node-ipc
    # codec, which has no way to answer, hangs up at once (a failed attempt, as any server that
    # closes at once). That server took the hello as the start of a frame and waited for a
    # delimiter its random bytes held only sometimes: the client timed out, or failed, by chance.
    async with Actor("world", silent=True, codec=codec) as plain_actor:
        plain = await plain_actor.serve_net(HOST, 0)
        for _ in range(4):
            async with Actor(
                "hello", silent=True, retry=0.01, stop_retrying=2, codec=codec
            ) as hello:
                with anyio.fail_after(2), pytest.raises(ipcactors.ConnectionFailedError) as e:
                    await hello.connect_to_net("world", HOST, port(plain), tls=client_context(ca))
                if codec == "msgpack":
                    assert isinstance(e.value, ipcactors.TLSError)
                    assert "is the server speaking TLS?" in str(e.value)
                else:
                    assert "ended during the TLS handshake" in str(e.value.__cause__)
        seen = anyio.Event()
        plain.on("still", lambda data, client: seen.set())
        async with Actor("good", silent=True, codec=codec) as good:
            connection = await good.connect_to_net("world", HOST, port(plain))
            await connection.emit("still", 1)
            with anyio.fail_after(5):
                await seen.wait()


async def test_a_tls_handshake_the_server_hangs_up_on_is_a_failed_attempt(ca: trustme.CA) -> None:
    # As a plain server that takes connections and closes them at once (guide, "Retry"): the
    # backoff and stop_retrying, then ConnectionFailedError. It was a TLSError at once, never
    # retried, as if the certificate were wrong.
    accepted = 0

    async def hang_up(stream: anyio.abc.SocketStream) -> None:
        nonlocal accepted
        accepted += 1
        await stream.aclose()

    async with await anyio.create_tcp_listener(local_host=HOST) as listener:
        async with anyio.create_task_group() as group:
            group.start_soon(listener.serve, hang_up)
            where = listener.extra(anyio.abc.SocketAttribute.local_port)
            async with Actor("hello", silent=True, retry=0.01, stop_retrying=3) as hello:
                with anyio.fail_after(5), pytest.raises(ipcactors.ConnectionFailedError) as e:
                    await hello.connect_to_net("world", HOST, where, tls=client_context(ca))
            assert not isinstance(e.value, ipcactors.TLSError)
            assert "the connection ended during the TLS handshake" in str(e.value.__cause__)
            assert accepted == 4
            group.cancel_scope.cancel()


async def test_an_acked_tls_link_whose_reconnect_is_cut_in_its_handshake_resumes(
    ca: trustme.CA, socket_dir: str, fault_proxy: Callable[..., FaultProxy]
) -> None:
    # A server restarting, or a flaky network, cuts a reconnect's TLS handshake: the
    # connection gave up for good (ClosedError on every emit, its events reported unsent).
    got: list[int] = []
    async with Actor("world", socket_root=socket_dir, silent=True, acked="on") as world_actor:
        server = await world_actor.serve_net(HOST, 0, tls=server_context(ca))
        server.on("n", lambda data, client: got.append(data))
        async with (
            fault_proxy(server.address) as proxy,
            Actor("hello", socket_root=socket_dir, silent=True, acked="on", retry=0.02) as hello,
        ):
            world = await hello.connect_to_net("world", *proxy.address, tls=client_context(ca))
            with anyio.fail_after(10):
                for n in range(5):
                    await world.emit("n", n)
                await world.wait_acknowledged()
                proxy.cut_after(1, "down")  # the next link ends in its TLS handshake
                proxy.reset()  # the live link goes now
                for n in range(5, 10):
                    await world.emit("n", n)
                await world.wait_acknowledged()
            assert got == list(range(10))
            assert proxy.stats.accepted >= 3


async def test_a_tls_handshake_past_the_servers_deadline_is_a_failed_attempt_not_tls_error(
    ca: trustme.CA, socket_dir: str, fault_proxy: Callable[..., FaultProxy]
) -> None:
    """A slow link makes a TLS handshake outlast the server's handshake_timeout (shorter than
    the client's). The server wrote its plain "reject timeout" frame into the TLS session, and
    the client, reading it as TLS, failed for good with TLSError ("is the server speaking
    TLS?"), never retried. The server hangs up instead: a failed attempt, retried, and once
    the link is fast again the client connects."""
    async with Actor("world", socket_root=socket_dir, silent=True, handshake_timeout=0.5) as w:
        server = await w.serve_net(HOST, 0, tls=server_context(ca))
        server.on("echo", lambda data, client: data)
        async with (
            fault_proxy(server.address) as proxy,
            Actor("hello", silent=True, retry=0.05, handshake_timeout=5) as hello,
        ):
            proxy.latency(0.6, direction="down")
            async with anyio.create_task_group() as group:

                async def heal_after_two_failed_attempts() -> None:
                    with anyio.fail_after(20):
                        while proxy.stats.accepted < 2:
                            await anyio.sleep(0.05)
                    proxy.heal()

                group.start_soon(heal_after_two_failed_attempts)
                with anyio.fail_after(20):
                    world = await hello.connect_to_net(
                        "world", *proxy.address, tls=client_context(ca)
                    )
                    assert await world.request("echo", 1) == 1


async def test_plain_client_on_a_tls_port_is_told(ca: trustme.CA) -> None:
    async with tls_server(server_context(ca)) as server, Actor("hello", silent=True) as hello:
        with anyio.fail_after(3), pytest.raises(ipcactors.RejectedError, match="requires TLS") as e:
            await hello.connect_to_net("world", HOST, port(server))
        assert e.value.reason == "tls"
        # What docs/protocol.md and docs/guide.md promise: a TLSError, the RejectedError kind.
        assert isinstance(e.value, ipcactors.TLSError)
        # It names the port the server is bound to, not the 0 it was configured with.
        assert f"connect with tls= to ('{HOST}', {port(server)})" in str(e.value)
        await assert_still_serving(server, client_context(ca))


async def test_mutual_tls(ca: trustme.CA, other_ca: trustme.CA) -> None:
    async with tls_server(server_context(ca, mutual=True)) as server:
        async with Actor("hello", silent=True) as hello:
            connection = await hello.connect_to_net(
                "world", HOST, port(server), tls=client_context(ca, cert_from=ca)
            )
            with anyio.fail_after(5):
                certificate = await connection.request("whoami")
            subject = dict(pair[0] for pair in certificate["subject"])
            assert "client@example.org" in str(subject) or certificate["subjectAltName"]
        for cert_from in (None, other_ca):
            async with Actor("intruder", silent=True, retry=0.05) as intruder:
                started = anyio.current_time()
                with anyio.fail_after(3), pytest.raises(ipcactors.TLSError):
                    await intruder.connect_to_net(
                        "world", HOST, port(server), tls=client_context(ca, cert_from=cert_from)
                    )
                assert anyio.current_time() - started < 1
        await assert_still_serving(server, client_context(ca, cert_from=ca))


async def test_a_refused_client_certificate_is_named(ca: trustme.CA, other_ca: trustme.CA) -> None:
    # The server's alert reaches the client (it used to close without it: "UNEXPECTED_EOF").
    async with tls_server(server_context(ca, mutual=True)) as server:
        for cert_from, reason in ((None, "CERTIFICATE_REQUIRED"), (other_ca, "UNKNOWN_CA")):
            async with Actor("intruder", silent=True, retry=0.05) as intruder:
                with anyio.fail_after(3), pytest.raises(ipcactors.TLSError, match=reason):
                    await intruder.connect_to_net(
                        "world", HOST, port(server), tls=client_context(ca, cert_from=cert_from)
                    )


async def test_a_refused_client_certificate_is_not_retried_without_a_handshake(
    ca: trustme.CA, other_ca: trustme.CA
) -> None:
    # codec="node-ipc" has no handshake: connect_to_net returns once TLS is up on our side,
    # and the server's refusal comes on the first read. It is a TLSError, and final.
    async with tls_server(server_context(ca, mutual=True), codec="node-ipc") as server:
        for cert_from in (None, other_ca):
            async with Actor("intruder", silent=True, retry=0.05, codec="node-ipc") as intruder:
                errors: list[BaseException] = []
                connects: list[str] = []
                with anyio.fail_after(5):
                    connection = await intruder.connect_to_net(
                        "world", HOST, port(server), tls=client_context(ca, cert_from=cert_from)
                    )
                    connection.on("error", errors.append)
                    connection.on("connect", partial(connects.append, "connect"))
                    while not connection.destroyed:
                        await anyio.sleep(0.01)
                await anyio.sleep(0.3)  # a retry (every 0.05 s) would connect again meanwhile
                assert [type(error) for error in errors] == [ipcactors.TLSError], errors
                assert connects == []
                with pytest.raises(ipcactors.ClosedError):
                    await connection.emit("x", 1)


# --- the shared key -------------------------------------------------------------------------


@asynccontextmanager
async def keyed_server(
    transport: str, socket_dir: str, key: str | None
) -> AsyncIterator[tuple[Server, list[str]]]:
    connected: list[str] = []
    async with Actor("world", socket_root=socket_dir, silent=True, auth_key=key) as actor:
        server = await (actor.serve() if transport == "unix" else actor.serve_net(HOST, 0))
        server.on("echo", lambda data, client: data)
        server.on("connect", lambda client: connected.append(client.id))
        yield server, connected


async def connect(hello: Actor, server: Server, transport: str) -> ipcactors.Connection:
    if transport == "unix":
        return await hello.connect_to("world")
    return await hello.connect_to_net("world", HOST, port(server))


@pytest.mark.parametrize("transport", ["unix", "tcp"])
async def test_shared_key_accepts_the_right_key(transport: str, socket_dir: str) -> None:
    async with keyed_server(transport, socket_dir, "s3cret") as (server, connected):
        async with Actor("hello", socket_root=socket_dir, silent=True, auth_key=b"s3cret") as h:
            connection = await connect(h, server, transport)
            with anyio.fail_after(5):
                assert await connection.request("echo", 1) == 1
        assert connected == ["hello"]


@pytest.mark.parametrize("transport", ["unix", "tcp"])
@pytest.mark.parametrize(
    ("server_key", "client_key"),
    [("s3cret", "wrong"), ("s3cret", None), (None, "s3cret")],
    ids=["wrong key", "client without key", "server without key"],
)
async def test_shared_key_refusals(
    transport: str, socket_dir: str, server_key: str | None, client_key: str | None
) -> None:
    async with keyed_server(transport, socket_dir, server_key) as (server, connected):
        async with Actor(
            "hello", socket_root=socket_dir, silent=True, auth_key=client_key, retry=0.05
        ) as hello:
            with anyio.fail_after(3), pytest.raises(ipcactors.AuthenticationError) as caught:
                await connect(hello, server, transport)
        if server_key and client_key:  # (its proof does not name the server: only the key)
            assert str(caught.value).endswith(
                "failed to prove it knows our auth_key: its key is another"
            )
        if server_key is not None:
            assert connected == [], "no handler runs for an unauthenticated peer"
        async with Actor("good", socket_root=socket_dir, silent=True, auth_key=server_key) as g:
            connection = await connect(g, server, transport)
            with anyio.fail_after(5):
                assert await connection.request("echo", "still serving") == "still serving"


@pytest.mark.parametrize("key", [b"", "", "\udc80"])
async def test_an_auth_key_is_refused_when_made_unless_non_empty_and_utf8_if_str(key: Any) -> None:
    """A str key is used as UTF-8: one with a lone surrogate passed Config, then every
    connect failed (UnicodeEncodeError on the client, a traceback per attempt on the server)."""
    with pytest.raises(ipcactors.ConfigError, match="auth_key"):
        ipcactors.Config(auth_key=key)
    with pytest.raises(ipcactors.ConfigError, match="auth_key"):
        Actor("world", auth_key=key)
    assert "s3cret" not in repr(ipcactors.Config(auth_key="s3cret"))


async def test_a_flood_of_silent_sockets_does_not_lock_out_a_tls_client(ca: trustme.CA) -> None:
    """Connections that never start their TLS handshake count against max_handshakes like any
    other: the oldest make way, and a good TLS client is welcomed at once."""
    async with tls_server(server_context(ca)) as server:
        silent = []
        try:
            with anyio.fail_after(10):
                for _ in range(200):
                    silent.append(await anyio.connect_tcp(HOST, port(server)))
                start = anyio.current_time()
                await assert_still_serving(server, client_context(ca))
            assert anyio.current_time() - start < 2.0
            assert server.statistics().handshakes_dropped >= 200 - 64
        finally:
            for stream in silent:
                await anyio.aclose_forcefully(stream)


async def test_a_tls_error_after_the_handshake_costs_only_that_connection(ca: trustme.CA) -> None:
    """A server that completes both handshakes, then sends a corrupt TLS record: the client's
    read fails with an SSL error, which used to escape its reader and take the client's whole
    actor down. It ends that connection only: the client reconnects, the actor lives on."""
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(HOST).configure_cert(server_context)
    accepted: list[int] = []

    async def corrupt(raw: anyio.abc.SocketStream) -> None:
        async with raw:
            tls = await TLSStream.wrap(
                raw, server_side=True, ssl_context=server_context, standard_compatible=False
            )
            decoder, encoder = MsgpackDecoder(Limits()), MsgpackEncoder(Limits())
            while not decoder.feed(await tls.receive()):
                pass  # the client's hello
            frame = encoder.welcome("world")
            await tls.send(frame if isinstance(frame, bytes) else b"".join(frame))
            accepted.append(1)
            if len(accepted) == 1:
                await raw.send(b"\x17\x03\x03\x00\x20" + b"\x00" * 32)  # fails to decrypt
            else:
                frame = encoder.event("hi", 2)
                await tls.send(frame if isinstance(frame, bytes) else b"".join(frame))
            with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
                while True:
                    await raw.receive()

    got: list[object] = []
    async with (
        await anyio.create_tcp_listener(local_host=HOST) as listener,
        anyio.create_task_group() as tasks,
    ):
        tasks.start_soon(listener.serve, corrupt)
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        async with Actor("hello", silent=True, retry=0.05, retry_cap=0.2) as hello:
            with anyio.fail_after(10):
                connection = await hello.connect_to_net("world", HOST, port, tls=client_context(ca))
                connection.on("hi", got.append)
                while got != [2]:  # after reconnecting
                    await anyio.sleep(0.01)
        tasks.cancel_scope.cancel()
