"""Interop with the real node-ipc 9.2.1, @achrinza/node-ipc 10.1.11 and node-ipc 14.0.0.

Node peers are tests/node/server.mjs and client.mjs (see tests/_node_peers.py); node-ipc is
installed from tests/node/package-lock.json with install scripts off. These tests skip only when
node or npm is missing.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import ssl
from collections.abc import Callable

import anyio
import anyio.abc
import pytest
import trustme
from _node_peers import VERSIONS, free_port, node_peer

from ipcactors import (
    Actor,
    Client,
    Connection,
    DatagramPeer,
    DatagramTooLargeError,
    TLSError,
)
from ipcactors._proto._messages import Event
from ipcactors._proto._nodeipc import NodeIPCDecoder, NodeIPCEncoder

pytestmark = pytest.mark.anyio


def pairs(events: list[Event]) -> list[tuple[str, object]]:
    return [(event.event, event.data) for event in events]


# --- the codec alone, over raw sockets, against node-ipc's servers ------------------------------


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("transport", ["unix", "tcp"])
async def test_codec_against_a_node_ipc_server(
    version: str, transport: str, socket_dir: str
) -> None:
    where = os.path.join(socket_dir, "node.sock") if transport == "unix" else str(free_port())
    encoder, decoder = NodeIPCEncoder(), NodeIPCDecoder()
    with anyio.fail_after(10):
        async with node_peer("server.mjs", version, transport, where, "echo") as server:
            await server.expect("ready")
            stream: anyio.abc.ByteStream
            if transport == "unix":
                stream = await anyio.connect_unix(where)
            else:
                stream = await anyio.connect_tcp("127.0.0.1", int(where))
            async with stream:
                unicode = encoder.event("echo", {"id": "py", "text": "héllo ✓ 😀"})
                cut = unicode.index("✓".encode()) + 1  # inside the character
                await stream.send(unicode[:cut])
                await anyio.sleep(0.05)
                # the rest of it, then two frames in one write
                await stream.send(
                    unicode[cut:] + encoder.event("echo", [1]) + encoder.event("echo", 2)
                )
                await server.command(cmd="broadcast", type="news", data={"n": 1})
                events: list[Event] = []
                while len(events) < 4:
                    events += decoder.feed(await stream.receive())
            assert pairs(events) == [
                ("echo", {"id": "py", "text": "héllo ✓ 😀"}),
                ("echo", [1]),
                ("echo", 2),
                ("news", {"n": 1}),
            ]
            await server.expect("disconnected")
            # node-ipc 9/10 name a client by the data.id it sent; 14 only with identifyPeer
            assert server.lines[-1]["id"] == (None if version == "14" else "py")
            if transport == "unix":
                await server.command(cmd="stop")  # removes its socket file


@pytest.mark.parametrize("version", VERSIONS)
async def test_codec_against_a_node_ipc_udp_peer(version: str) -> None:
    port = free_port(socket.SOCK_DGRAM)
    encoder, decoder = NodeIPCEncoder(), NodeIPCDecoder()
    with anyio.fail_after(10):
        async with node_peer("server.mjs", version, "udp4", str(port), "echo") as server:
            await server.expect("ready")
            async with await anyio.create_udp_socket(local_host="127.0.0.1") as udp:
                # one datagram, two frames
                datagram = encoder.event("echo", {"text": "é✓"}) + encoder.event("echo", 7)
                await udp.sendto(datagram, "127.0.0.1", port)
                events: list[Event] = []
                while len(events) < 2:
                    data, _ = await udp.receive()
                    events += decoder.decode_datagram(data)
            assert pairs(events) == [("echo", {"text": "é✓"}), ("echo", 7)]


# --- actors speaking codec="node-ipc" -----------------------------------------------------------

UNICODE = {"text": "héllo wörld ✓ 😀 \f\n", "n": [1, 2.5, True, None]}
# A large frame of multi-byte characters: its reads are cut inside characters, on both sides.
LARGE = "é✓😀" * 150_000  # 1.35 MB of text, 2.7 MB of UTF-8
FAST = {"codec": "node-ipc", "retry": 0.05, "retry_cap": 0.2, "silent": True}


def summary_of(text: str) -> dict[str, object]:
    """What the Node peers print for a large string (see tests/node/_peer.mjs)."""
    encoded = json.dumps(text, ensure_ascii=False, separators=(",", ":")).encode()
    length = len(text.encode("utf-16-le")) // 2  # JavaScript's length
    return {"summary": True, "length": length, "sha256": hashlib.sha256(encoded).hexdigest()}


async def wait_until(condition: Callable[[], bool], what: str, timeout: float = 10) -> None:
    with anyio.fail_after(timeout):
        while not condition():
            await anyio.sleep(0.01)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("transport", ["unix", "tcp"])
async def test_python_server_node_clients(version: str, transport: str, socket_dir: str) -> None:
    """Echo, Unicode, several frames per write, large frames both ways, broadcast to two
    clients, and each client's disconnect: a Python server, node-ipc clients."""
    got: list[tuple[str, object]] = []
    async with Actor("py-server", socket_root=socket_dir, **FAST) as ipc:
        if transport == "unix":
            server = await ipc.serve()
            where = str(server.address)
        else:
            server = await ipc.serve_net("127.0.0.1", 0)
            where = str(server.address[1])  # type: ignore[index]

        @server.on("echo")
        async def echo(data: object, client: Client) -> None:
            got.append(("echo", data))
            await server.emit(client, "echo", data)

        @server.on("big")
        async def big(data: str, client: Client) -> None:
            got.append(("big", len(data)))
            await server.emit(client, "big", data)

        args = (version, transport, "py-server", where, "echo,big,news")
        async with (
            node_peer("client.mjs", *args, name=f"node-ipc {version} client 1") as one,
            node_peer("client.mjs", *args, name=f"node-ipc {version} client 2") as two,
        ):
            with anyio.fail_after(20):
                await one.expect("connect")
                await two.expect("connect")
                await wait_until(lambda: len(server.clients) == 2, "two clients")
                assert sorted(server.clients) == ["node-ipc-1", "node-ipc-2"]
                data = [{"seq": number, **UNICODE} for number in range(3)]
                await one.command(cmd="emit_many", type="echo", data=data)
                assert await one.expect_received("echo", 3) == [
                    {"seq": number, **UNICODE} for number in range(3)
                ]
                await one.command(cmd="emit", type="big", data=LARGE)
                assert await one.expect_received("big") == [summary_of(LARGE)]
                await server.broadcast("news", {"to": "all", "text": "✓"})
                for node in (one, two):
                    assert await node.expect_received("news") == [{"to": "all", "text": "✓"}]
                assert ("big", len(LARGE)) in got
                await one.command(cmd="exit")
                await wait_until(lambda: len(server.clients) == 1, "one client gone")
            assert two.received("news") == [{"to": "all", "text": "✓"}]  # exactly once


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("transport", ["unix", "tcp"])
async def test_node_server_python_clients(version: str, transport: str, socket_dir: str) -> None:
    """Echo, Unicode, large frames, broadcast to two clients, and reconnecting after the Node
    server restarts (emits made meanwhile are sent then): a node-ipc server, Python clients."""
    where = os.path.join(socket_dir, "node.sock") if transport == "unix" else str(free_port())
    echoes: list[object] = []
    news: list[object] = []
    other_news: list[object] = []
    lost = anyio.Event()

    async def connect(actor: Actor) -> Connection:
        if transport == "unix":
            return await actor.connect_to("node-server", where)
        return await actor.connect_to_net("node-server", "127.0.0.1", int(where))

    async with (
        Actor("py-client", socket_root=socket_dir, **FAST) as ipc,
        Actor("py-other", socket_root=socket_dir, **FAST) as other_ipc,
    ):
        server_args = (version, transport, where, "echo,big")
        async with node_peer("server.mjs", *server_args) as node:
            with anyio.fail_after(20):
                await node.expect("ready")
                world = await connect(ipc)
                world.on("echo", echoes.append)
                world.on("news", news.append)
                world.on("disconnect", lambda: lost.set())
                other = await connect(other_ipc)
                other.on("news", other_news.append)
                for number in range(3):  # queued together: several frames in one write
                    await world.emit("echo", {"seq": number, **UNICODE})
                await wait_until(lambda: len(echoes) == 3, "3 echoes")
                assert echoes == [{"seq": number, **UNICODE} for number in range(3)]
                await world.emit("big", LARGE)
                assert await node.expect_received("big") == [summary_of(LARGE)]
                await world.emit("echo", LARGE)
                await wait_until(lambda: len(echoes) == 4, "the large echo")
                assert echoes[3] == LARGE
                await node.expect("connect", 2)
                await node.command(cmd="broadcast", type="news", data={"n": 1})
                await wait_until(lambda: news == other_news == [{"n": 1}], "the broadcast")
                await node.command(cmd="stop")
        with anyio.fail_after(20):
            await lost.wait()
            await world.emit("echo", "queued ✓")  # node-ipc would drop it; the outbox keeps it
            async with node_peer("server.mjs", *server_args) as node:
                await node.expect("ready")
                await world.wait_connected()
                await world.emit("echo", "again ✓")
                await wait_until(lambda: echoes[-2:] == ["queued ✓", "again ✓"], "the echoes")
                await node.command(cmd="stop")
        assert other_news == [{"n": 1}]  # exactly once


@pytest.mark.parametrize("version", VERSIONS)
async def test_udp_python_and_node_ipc_peers(version: str, socket_dir: str) -> None:
    """UDP both ways: a node-ipc UDP server answers a Python one, and the other way round;
    several frames in one datagram, Unicode, a Python broadcast to the peers it has heard."""
    node_port = free_port(socket.SOCK_DGRAM)
    echoes: list[object] = []
    async with Actor("py-udp", socket_root=socket_dir, **FAST) as ipc:
        server = await ipc.serve_net("127.0.0.1", 0, udp="udp4")
        host, port = server.address

        server.on("echo", lambda data, peer: echoes.append(data))

        @server.on("ask")
        async def ask(data: object, peer: DatagramPeer) -> None:
            await peer.emit("answer", data)

        async with node_peer(
            "server.mjs", version, "udp4", str(node_port), "echo,answer,news"
        ) as node:
            with anyio.fail_after(20):
                await node.expect("ready")
                # Python -> node-ipc, which echoes to the sender's address
                for number in range(3):
                    await server.emit(("127.0.0.1", node_port), "echo", {"seq": number, **UNICODE})
                await wait_until(lambda: len(echoes) == 3, "3 echoes from node-ipc")
                assert sorted(echoes, key=lambda data: data["seq"]) == [  # type: ignore[index]
                    {"seq": number, **UNICODE} for number in range(3)
                ]
                # node-ipc -> Python, which answers to the sender's address
                to = {"address": host, "port": port}
                await node.command(cmd="emit", to=to, type="ask", data={"t": "✓"})
                assert await node.expect_received("answer") == [{"t": "✓"}]
                # a large datagram of multi-byte characters, both ways
                text = "é✓😀" * 4000  # 36,000 bytes of UTF-8
                echoes.clear()
                await server.emit(("127.0.0.1", node_port), "echo", text)
                await wait_until(lambda: echoes == [text], "the large echo")
                with pytest.raises(DatagramTooLargeError):
                    await server.emit(("127.0.0.1", node_port), "echo", text * 2)
                await server.broadcast("news", {"text": "é"})  # node-ipc is a known peer now
                assert await node.expect_received("news") == [{"text": "é"}]


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A CA and a certificate for 127.0.0.1, as files (node-ipc reads files) and for Python."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    folder = tmp_path_factory.mktemp("tls")
    files = {
        "ca": str(folder / "ca.pem"),
        "cert": str(folder / "cert.pem"),
        "key": str(folder / "key.pem"),
    }
    ca.cert_pem.write_to_path(files["ca"])
    cert.cert_chain_pems[0].write_to_path(files["cert"])
    cert.private_key_pem.write_to_path(files["key"])
    return files


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("python_serves", [True, False], ids=["python-server", "node-server"])
async def test_tls(version: str, python_serves: bool, tls_files: dict[str, str]) -> None:
    """The same frames inside TLS, verified: a Python server with a node-ipc client, and a
    node-ipc server with a Python client."""
    echoes: list[object] = []
    # node-ipc 14 asks a client for a certificate when its server has trustedConnections
    node_client_tls = {"trustedConnections": tls_files["ca"]}
    node_server_tls = {"public": tls_files["cert"], "private": tls_files["key"]}
    async with Actor("py", **FAST) as ipc:
        with anyio.fail_after(20):
            if python_serves:
                context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
                context.load_cert_chain(tls_files["cert"], tls_files["key"])
                server = await ipc.serve_net("127.0.0.1", 0, tls=context)

                @server.on("echo")
                async def echo(data: object, client: Client) -> None:
                    await server.emit(client, "echo", data)

                where = str(server.address[1])  # type: ignore[index]
                args = (version, "tcp", "py", where, "echo")
                async with node_peer("client.mjs", *args, tls=node_client_tls) as node:
                    await node.expect("connect")
                    await node.command(cmd="emit", type="echo", data={"text": "✓ over TLS"})
                    assert await node.expect_received("echo") == [{"text": "✓ over TLS"}]
            else:
                port = free_port()
                async with node_peer(
                    "server.mjs", version, "tcp", str(port), "echo", tls=node_server_tls
                ) as node:
                    await node.expect("ready")
                    context = ssl.create_default_context(cafile=tls_files["ca"])
                    world = await ipc.connect_to_net("node-server", "127.0.0.1", port, tls=context)
                    world.on("echo", echoes.append)
                    await world.emit("echo", {"text": "✓ over TLS"})
                    await wait_until(lambda: echoes == [{"text": "✓ over TLS"}], "the echo")


async def test_a_refused_client_certificate_is_not_retried(tls_files: dict[str, str]) -> None:
    """node-ipc 14 given trustedConnections asks for a client certificate. Under TLS 1.3 a
    client without one learns the refusal only from an alert on its first read (node-ipc's wire
    has no handshake to read it in): the connection gives up with a TLSError, as a refusal in
    the msgpack handshake does, instead of reconnecting forever."""
    port = free_port()
    node_tls = {"public": tls_files["cert"], "private": tls_files["key"]}
    node_tls["trustedConnections"] = tls_files["ca"]
    context = ssl.create_default_context(cafile=tls_files["ca"])  # no client certificate
    async with (
        Actor("py", **FAST) as ipc,
        node_peer("server.mjs", "14", "tcp", str(port), "echo", tls=node_tls) as node,
    ):
        with anyio.fail_after(20):
            await node.expect("ready")
            try:
                world = await ipc.connect_to_net("node-server", "127.0.0.1", port, tls=context)
            except TLSError:
                return  # refused while connecting: not retried either
            await wait_until(lambda: world.destroyed, "the connection gives up")
            assert "node-server" not in ipc.of
