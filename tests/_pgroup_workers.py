"""Targets for tests/test_supervisor_pgroup.py: children that start processes of their own."""

from __future__ import annotations

import os
import signal
import subprocess

import anyio
import psutil

import ipcactors

# A shell that ignores SIGTERM and has a child of its own (which ignores it too): a grandchild
# and a great-grandchild that only SIGKILL ends.
_STUBBORN_SHELL = "trap '' TERM; sleep 60 & wait"


async def starter(actor: ipcactors.Actor, daemon: bool = False) -> None:
    """Starts three processes in its own group (``sleep``, and a stubborn shell with a ``sleep``
    of its own) and, if ``daemon``, one that leaves the group on purpose (``start_new_session``).
    Answers ``"pids"`` with ``{"group": [...], "daemon": pid or None}`` once all are running,
    ``"pgid"`` with its process group, and ``"done"`` by returning."""
    parent = actor.parent
    assert parent is not None
    quiet = {"stdin": subprocess.DEVNULL, "stdout": subprocess.DEVNULL}
    processes = [
        subprocess.Popen(["sleep", "60"], **quiet),
        subprocess.Popen(["sh", "-c", _STUBBORN_SHELL], **quiet),
    ]
    handed_off = (
        subprocess.Popen(
            ["sleep", "60"], start_new_session=True, stderr=subprocess.DEVNULL, **quiet
        )
        if daemon
        else None
    )
    done = anyio.Event()

    async def pids(data: object) -> dict[str, object]:
        me = psutil.Process()
        with anyio.fail_after(5):
            while True:
                found = [p.pid for p in me.children(recursive=True)]
                if len(found) >= 3 + (handed_off is not None):
                    break
                await anyio.sleep(0.01)
        daemon_pid = handed_off.pid if handed_off is not None else None
        return {"group": [pid for pid in found if pid != daemon_pid], "daemon": daemon_pid}

    parent.on("pids", pids)
    parent.on("pgid", lambda data: os.getpgid(0))
    parent.on("done", lambda data: done.set())
    await done.wait()
    del processes  # left running on purpose: the supervisor stops them with this child


async def stubborn_starter(actor: ipcactors.Actor) -> None:
    """Ignores the stop message and SIGTERM, and starts a ``sleep`` that does not: only the
    group's SIGTERM ends the ``sleep`` while this child lives on. Answers ``"pids"``."""
    process = subprocess.Popen(["sleep", "60"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # after: an ignored signal stays so in exec
    parent = actor.parent
    assert parent is not None
    parent.on("pids", lambda data: {"group": [process.pid], "daemon": None})
    with anyio.CancelScope(shield=True):
        await anyio.sleep(60)


async def heavy_forker(actor: ipcactors.Actor, mib: int) -> None:
    """Forks without exec (as multiprocessing's "fork" start method does) a grandchild that
    holds ``mib`` MiB, touched, and this child's listening socket; SIGKILLed, it takes a while
    to free that memory. Answers ``"pids"`` with the grandchild's pid once it holds it all."""
    parent = actor.parent
    assert parent is not None
    ready, said = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the grandchild: never returns)
        try:
            block = bytearray(mib << 20)
            for at in range(0, len(block), 4096):
                block[at] = 1
            os.write(said, b"x")
            signal.pause()
        finally:
            os._exit(0)
    holding = anyio.Event()

    async def pids(data: object) -> list[int]:
        await holding.wait()
        return [pid]

    parent.on("pids", pids)
    await anyio.to_thread.run_sync(os.read, ready, 1)
    holding.set()
    await anyio.sleep_forever()
