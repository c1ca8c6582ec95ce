"""W6 children.

``worker`` is the function an ``ipcactors.Supervisor`` spawns (importable by module and name);
``python -m benchmarks.w6_worker PATH`` is the raw anchor's child: a fresh interpreter that
imports anyio and msgpack, connects back over a Unix socket and says it is ready.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import anyio
import msgpack

from ._wire import frame


async def worker(actor: Any) -> None:
    """Ready as soon as the supervisor's handshake is done; answers ``pid`` (its process id:
    the restart figure waits for a new one); lives until the actor closes."""
    actor.parent.on("pid", lambda data: os.getpid())
    await actor.wait_closed()


async def stuck(actor: Any) -> None:
    """A child that never becomes ready: its function blocks before its first ``await``
    (``w6-restart-slow``: a sibling still starting beside the restart that is timed)."""
    time.sleep(3600)


async def _raw_child(path: str) -> None:
    with anyio.fail_after(30):
        stream = await anyio.connect_unix(path)
        async with stream:
            await stream.send(frame(msgpack.Packer(), ["ready", os.getpid()]))
            try:
                await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                pass


if __name__ == "__main__":
    anyio.run(_raw_child, sys.argv[1])
