"""Admission: what reaches the accept loop and the handshake, and how a server keeps a good
client served through it (resets before accept, floods of silent or trickling sockets)."""

from __future__ import annotations

import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from ipcactors import Actor, Server

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
