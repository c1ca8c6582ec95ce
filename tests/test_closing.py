"""Closing a server while connections are still in their handshake: they are closed at once
(nothing to flush), none is left open, and the close does not wait for their timeouts."""

from __future__ import annotations

import socket

import anyio
import pytest

from ipcactors import Actor

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("transport", ["unix", "tcp"])
async def test_closing_a_server_closes_connections_in_their_handshake_at_once(
    transport: str, socket_dir: str
) -> None:
    # Timeouts far longer than the test's bound: only closing them at once passes.
    options = {"silent": True, "close_timeout": 30.0, "handshake_timeout": 30.0}
    silent = []
    try:
        async with Actor("world", socket_root=socket_dir, **options) as world:
            if transport == "unix":
                server = await world.serve()
                family = socket.AF_UNIX
            else:
                server = await world.serve_net("127.0.0.1", 0)
                family = socket.AF_INET
            for _ in range(3):  # connect and say nothing: they stay in their handshake
                sock = socket.socket(family, socket.SOCK_STREAM)
                silent.append(sock)
                sock.connect(server.address)
                sock.setblocking(False)
            with anyio.fail_after(5):
                while server.statistics().handshaking < 3:
                    await anyio.sleep(0.01)
                await world.aclose()
        for sock in silent:  # the server closed its end: end of stream
            with anyio.fail_after(5):
                await anyio.wait_readable(sock)
            assert sock.recv(100) == b""
    finally:
        for sock in silent:
            sock.close()
