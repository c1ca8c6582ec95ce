"""What ``ipcactors.run`` shares with the actors started under it (through a context variable).

Invariant: once a signal started the shutdown, code after an ``async with Actor(...)`` or
``async with Supervisor(...)`` block never runs: the block's exit waits (see
:func:`end_with_run`) until ``run`` cancels the main function, which ends it there.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING

import anyio

from ._signals import KeptSignals

if TYPE_CHECKING:
    from ._actor import Actor
    from ._supervision._supervisor import Supervisor

__all__ = ["Runtime", "close_in_order", "current_runtime", "end_with_run", "set_runtime"]


class Runtime:
    __slots__ = ("actors", "main_cancelled", "signal", "signals", "supervisors")

    def __init__(self) -> None:
        self.actors: set[Actor] = set()  # closed gracefully on the first signal
        # Stopped first on the first signal (their children in order); killed on the second.
        self.supervisors: set[Supervisor] = set()
        self.signal: int | None = None  # the signal that started the shutdown
        # SIGINT and SIGTERM, kept while run() is outside its event loop (see _signals).
        self.signals = KeptSignals()
        # Set by run() as it cancels the main function (made inside the event loop).
        self.main_cancelled: anyio.Event | None = None


_current: ContextVar[Runtime | None] = ContextVar("ipcactors_runtime", default=None)


def current_runtime() -> Runtime | None:
    return _current.get()


def set_runtime(runtime: Runtime) -> None:
    _current.set(runtime)


async def end_with_run() -> None:
    """Under ``run``, after a signal: return only once ``run`` has cancelled the main function,
    so that the checkpoint here raises its cancellation and nothing after the block runs (in a
    shielded scope, where it cannot, it returns). Elsewhere: return at once."""
    runtime = current_runtime()
    if runtime is None or runtime.signal is None or runtime.main_cancelled is None:
        return
    await runtime.main_cancelled.wait()
    await anyio.lowlevel.checkpoint()


async def close_in_order(runtime: Runtime) -> None:
    """Close what runs under ``runtime``: the supervisors first, all at once (each stops its
    children in its order, while every actor still works), then the actors."""
    async with anyio.create_task_group() as task_group:
        for supervisor in list(runtime.supervisors):
            task_group.start_soon(supervisor.aclose)
    async with anyio.create_task_group() as task_group:
        for actor in list(runtime.actors):
            task_group.start_soon(actor.aclose)
