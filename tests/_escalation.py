"""Workers for the error tests (tests/test_supervisor_errors.py): a tree of nested supervisors
whose deepest child keeps failing."""

from __future__ import annotations

import sys

import anyio

import ipcactors


async def escalate(actor: ipcactors.Actor, ids: list[str], code: int, delay: float) -> None:
    """With ``ids`` left: run a supervisor (``<own id>-sup``, which gives up at its child's
    first abnormal exit) with child ``ids[0]`` running this function one level down. At the
    bottom: exit with ``code`` after ``delay`` seconds (once ready)."""
    if not ids:
        await anyio.sleep(delay)
        sys.exit(code)
    async with ipcactors.Supervisor(
        max_restarts=0,
        id=f"{actor.id}-sup",
        shutdown_timeout=2.0,
        terminate_timeout=0.5,
        retry=0.05,
        retry_cap=0.2,
    ) as sup:
        await sup.spawn(escalate, ids[1:], code, delay, id=ids[0])
        await anyio.sleep_forever()
