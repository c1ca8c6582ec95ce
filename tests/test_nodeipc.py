"""Interop with the real node-ipc 9.2.1, @achrinza/node-ipc 10.1.11 and node-ipc 14.0.0.

Node peers are tests/node/server.mjs and client.mjs (see tests/_node_peers.py); node-ipc is
installed from tests/node/package-lock.json with install scripts off. These tests skip only when
node or npm is missing.
"""

from __future__ import annotations

import os
import socket

import anyio
import anyio.abc
import pytest
from _node_peers import VERSIONS, free_port, node_peer

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
