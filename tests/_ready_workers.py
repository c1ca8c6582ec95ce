"""Targets for tests/test_supervisor_ready.py: a sink that siblings stream to, and a source that
streams to it across the sink's restarts (importable by name in a child)."""

from __future__ import annotations

import os

import anyio

import ipcactors


async def sink(actor: ipcactors.Actor) -> None:
    """Handles numbered events ``n`` and requests ``ask`` from siblings; reports each event to
    the supervisor as ``got [pid, n]``."""
    parent, server = actor.parent, actor.server
    assert parent is not None
    assert isinstance(server, ipcactors.Server)
    pid = os.getpid()

    async def on_n(n: int, client: ipcactors.Client) -> None:
        await parent.emit("got", [pid, n])

    server.on("n", on_n)
    server.on("ask", lambda n, client: [pid, n])
    await anyio.sleep_forever()


async def source(actor: ipcactors.Actor, peer: str, pace: float) -> None:
    """Streams numbered events ``n`` (one per ``pace`` seconds) and requests ``ask`` to
    ``peer``. Each lost connection is reported to the supervisor as ``down <n>``: ``n`` is the
    first event emitted after the loss was seen (it waits in the outbox for the next
    connection). The request outcomes are counted (request ``counts``)."""
    parent = actor.parent
    assert parent is not None
    connection = await actor.connect_to(peer)
    sent = 0
    counts = {"answered": 0, "lost": 0, "refused": 0, "reconnects": 0}
    refusals: list[str] = []

    async def on_disconnect() -> None:
        try:
            await parent.emit("down", sent)
        except ipcactors.ClosedError:
            pass  # we are being stopped

    def on_connect() -> None:
        counts["reconnects"] += 1

    connection.on("disconnect", on_disconnect)
    connection.on("connect", on_connect)
    parent.on("counts", lambda data: {**counts, "refusals": refusals[:5]})

    async def requests() -> None:
        asked = 0
        while True:
            try:
                reply = await connection.request("ask", asked, timeout=10)
            except ipcactors.NoHandlerError as exc:
                counts["refused"] += 1
                refusals.append(str(exc))
            except ipcactors.ConnectionLostError:
                counts["lost"] += 1  # in flight when the peer was killed: at most once
            else:
                assert reply[1] == asked
                counts["answered"] += 1
            asked += 1
            await anyio.sleep(pace)

    async with anyio.create_task_group() as task_group:
        task_group.start_soon(requests)
        while True:
            await connection.emit("n", sent)
            sent += 1
            await anyio.sleep(pace)
