"""A client actor in its own process, for tests that freeze (SIGSTOP) a client.

Usage: python tests/_client.py SOCKET_ROOT SERVER_ID CLIENT_ID BACKEND HEARTBEAT_INTERVAL
HEARTBEAT_TIMEOUT. Prints READY once connected, then waits.
"""

from __future__ import annotations

import sys

import ipcactors


async def main(root: str, server: str, name: str, interval: float, timeout: float) -> None:
    async with ipcactors.Actor(
        name,
        socket_root=root,
        silent=True,
        heartbeat_interval=interval,
        heartbeat_timeout=timeout,
    ) as actor:
        await actor.connect_to(server)
        print("READY", flush=True)
        await actor.wait_closed()


if __name__ == "__main__":
    root, server, name, backend, interval, timeout = sys.argv[1:7]
    ipcactors.run(
        main, root, server, name, float(interval), float(timeout), backend=backend, log_level=None
    )  # type: ignore[arg-type]
