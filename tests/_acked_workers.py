"""Target functions for supervised children in the acked tests (importable by name in a
child: the child gets the parent's sys.path, and pytest puts tests/ on it)."""

from __future__ import annotations

import anyio

import ipcactors


async def relay(actor: ipcactors.Actor, stall_at: int) -> None:
    """Reports every ``n`` event from the supervisor back to it as ``got`` (with whether it
    came flagged as redelivered); the handler of event ``stall_at`` never returns (the test
    kills the child there), unless it came redelivered."""
    parent = actor.parent
    assert parent is not None

    async def on_n(data: int) -> None:
        redelivered = parent.redelivered
        await parent.emit("got", [data, redelivered])
        if data == stall_at and not redelivered:
            await anyio.sleep_forever()

    parent.on("n", on_n)
    await anyio.sleep_forever()
