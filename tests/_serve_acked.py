"""A server actor with acknowledged events (``Config.acked="on"``) in its own process, for the
tests that SIGKILL it mid-stream.

Usage: python tests/_serve_acked.py SOCKET_ROOT ID BACKEND TRANSPORT PORT LEDGER
Prints STARTED, waits for a line on stdin (so that a test can start the replacement of a
server before it kills that server: a process takes a while to start), then serves on a Unix
socket, or on TCP 127.0.0.1:PORT, and prints READY. Handler "n"
appends ``data redelivered`` to the file LEDGER as each event is delivered (written at once: it
survives a SIGKILL); "count" returns how many were delivered.
"""

from __future__ import annotations

import os
import sys

import anyio

import ipcactors


async def main(root: str, name: str, transport: str, port: int, ledger: str) -> None:
    print("STARTED", flush=True)
    await anyio.to_thread.run_sync(sys.stdin.readline)
    fd = os.open(ledger, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    delivered = 0
    try:
        async with ipcactors.Actor(name, socket_root=root, silent=True, acked="on") as actor:
            if transport == "tcp":
                server = await actor.serve_net("127.0.0.1", port)
            else:
                server = await actor.serve()

            @server.on("n")
            def on_n(data: int, client: ipcactors.Client) -> None:
                nonlocal delivered
                delivered += 1
                os.write(fd, f"{data} {int(client.redelivered)}\n".encode())

            server.on("count", lambda data, client: delivered)
            print("READY", flush=True)
            await actor.wait_closed()
    finally:
        os.close(fd)


if __name__ == "__main__":
    root, name, backend, transport, port, ledger = sys.argv[1:7]
    ipcactors.run(main, root, name, transport, int(port), ledger, backend=backend, log_level=None)  # type: ignore[arg-type]
