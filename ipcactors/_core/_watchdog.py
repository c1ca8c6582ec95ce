"""The watchdog: one task per actor that keeps time for every live channel (heartbeats, idle).

Invariants:
- A channel costs no task and no timer of its own: it joins when it starts and leaves when it
  ends. One task, started with the first channel inside the owner's task group, sleeps until
  the earliest moment any channel asked to be looked at again, then asks each due channel what
  to do (:meth:`Watched.beat`), which pings or drops its peer itself, without awaiting.
- A channel that joins and wants to be looked at earlier than the task planned wakes it; the
  common case (every channel of an actor shares one interval) wakes nothing.
- The task never raises: a channel's ``beat`` does no I/O that can fail (pings go through the
  outbox; a drop cancels the channel's own task group).
"""

from __future__ import annotations

import math
from time import monotonic
from typing import Protocol

import anyio
from anyio.abc import TaskGroup

__all__ = ["Watchdog", "Watched"]


class Watched(Protocol):
    def beat(self, now: float) -> float:
        """Look at the peer at ``now``; return when to look again (``math.inf``: never)."""
        ...


class Watchdog:
    """Keeps time for the channels of one actor (see the module's invariants)."""

    __slots__ = ("_due", "_running", "_task_group", "_wake", "_wake_at")

    def __init__(self, task_group: TaskGroup) -> None:
        self._task_group = task_group
        self._due: dict[Watched, float] = {}  # channel -> when to look at it again
        self._running = False
        self._wake: anyio.Event | None = None
        self._wake_at = math.inf

    def join(self, channel: Watched, first: float) -> None:
        """Watch ``channel``; look at it first at ``first`` (a monotonic time)."""
        self._due[channel] = first
        if not self._running:
            self._running = True
            self._task_group.start_soon(self._run)
        elif first < self._wake_at and self._wake is not None:
            self._wake.set()

    def leave(self, channel: Watched) -> None:
        self._due.pop(channel, None)

    async def _run(self) -> None:
        due = self._due
        while True:
            now = monotonic()
            wake_at = math.inf
            for channel, at in list(due.items()):
                if at <= now:
                    at = channel.beat(now)
                    if channel in due:  # it may have left while beating (a drop)
                        due[channel] = at
                wake_at = min(wake_at, at)
            self._wake_at = wake_at
            self._wake = wake = anyio.Event()
            with anyio.move_on_after(wake_at - monotonic()):
                await wake.wait()
