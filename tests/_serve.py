"""A server actor in its own process, for tests that kill and restart servers.

Usage: python tests/_serve.py SOCKET_ROOT ID [BACKEND] [MAX_CONNECTIONS] [HEARTBEAT_INTERVAL
HEARTBEAT_TIMEOUT]
Prints READY once serving. Handlers: "n" records data, "received" returns what was recorded,
"sleep" sleeps for data seconds, "echo" returns data, "emit_back" emits the event named data
to the client that asked.
"""

from __future__ import annotations

import sys
from typing import Any

import anyio

import ipcactors


async def main(root: str, name: str, max_connections: int, heartbeat: dict[str, float]) -> None:
    received: list[Any] = []
    async with ipcactors.Actor(
        name, socket_root=root, silent=True, max_connections=max_connections, **heartbeat
    ) as actor:
        server = await actor.serve()
        server.on("n", lambda data, client: received.append(data))
        server.on("received", lambda data, client: received)
        server.on("echo", lambda data, client: data)
        server.on("emit_back", lambda data, client: client.emit(data))

        @server.on("sleep")
        async def sleep(data: float, client: ipcactors.Client) -> None:
            await anyio.sleep(data)

        print("READY", flush=True)
        await actor.wait_closed()


if __name__ == "__main__":
    backend = sys.argv[3] if len(sys.argv) > 3 else "asyncio"
    limit = int(sys.argv[4]) if len(sys.argv) > 4 else 100
    heartbeat = {}
    if len(sys.argv) > 6:
        heartbeat = {"heartbeat_interval": float(sys.argv[5])}
        heartbeat["heartbeat_timeout"] = float(sys.argv[6])
    ipcactors.run(main, sys.argv[1], sys.argv[2], limit, heartbeat, backend=backend, log_level=None)  # type: ignore[arg-type]
