"""A client actor in its own process, for tests that kill a client.

Usage: python tests/_answering_client.py SOCKET_ROOT SERVER_ID CLIENT_ID [BACKEND]
Prints READY once connected. Handlers: "sleep" sleeps for data seconds, "pid" returns its pid.
"""

from __future__ import annotations

import os
import sys

import anyio

import ipcactors


async def main(root: str, server_id: str, name: str) -> None:
    async with ipcactors.Actor(name, socket_root=root, silent=True) as actor:
        server = await actor.connect_to(server_id)
        server.on("pid", lambda data: os.getpid())

        @server.on("sleep")
        async def sleep(data: float) -> None:
            await anyio.sleep(data)

        print("READY", flush=True)
        await actor.wait_closed()


if __name__ == "__main__":
    backend = sys.argv[4] if len(sys.argv) > 4 else "asyncio"
    ipcactors.run(main, sys.argv[1], sys.argv[2], sys.argv[3], backend=backend, log_level=None)  # type: ignore[arg-type]
