"""One side of the two-host test (tests/test_netns.py), run inside a network namespace.

server HOST CERT KEY: serve TCP on HOST:7001, TLS on HOST:7002, UDP on HOST:7003; print READY.
client HOST CA: request "echo" over each of them from this namespace; print one line each.
"""

from __future__ import annotations

import ssl
import sys

import anyio

import ipcactors

TCP, TLS, UDP = 7001, 7002, 7003


async def server(host: str, cert: str, key: str) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    async with (
        ipcactors.Actor("tcp", silent=True) as tcp,
        ipcactors.Actor("tls", silent=True) as tls,
        ipcactors.Actor("udp", silent=True) as udp,
    ):
        servers = [
            await tcp.serve_net(host, TCP),
            await tls.serve_net(host, TLS, tls=context),
            await udp.serve_net(host, UDP, udp="udp4"),
        ]
        for each in servers:
            each.on("echo", lambda data, peer: {"echo": data, "seen_from": peer_host(peer)})
        print("READY", flush=True)
        await tcp.wait_closed()


def peer_host(peer: object) -> str:
    address = getattr(peer, "peer_address", None) or getattr(peer, "address", None)
    return str(address[0]) if address else "?"  # type: ignore[index]


async def client(host: str, ca: str) -> None:
    context = ssl.create_default_context(cafile=ca)
    async with ipcactors.Actor("client", silent=True, stop_retrying=3, retry=0.1) as actor:
        with anyio.fail_after(20):
            for name, port, tls in (("tcp", TCP, None), ("tls", TLS, context)):
                connection = await actor.connect_to_net(name, host, port, tls=tls)
                print(name, await connection.request("echo", name), flush=True)
            udp = await actor.serve_net("0.0.0.0", 0, udp="udp4")
            print("udp", await udp.request((host, UDP), "echo", "udp", timeout=5), flush=True)


if __name__ == "__main__":
    role, *args = sys.argv[1:]
    ipcactors.run(server if role == "server" else client, *args, log_level=None)  # type: ignore[arg-type]
