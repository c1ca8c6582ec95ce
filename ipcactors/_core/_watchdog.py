"""The watchdog: one task per actor that keeps time for every live channel (heartbeats, idle)
and for the deadlines of its peers' requests (``_requests``).

Invariants:
- A channel costs no task and no timer of its own: it joins when it starts and leaves when it
  ends. One task in the owner's task group sleeps until the earliest moment any channel asked
  to be looked at again, then asks each due channel what to do (:meth:`Watched.beat`), which
  pings or drops its peer itself, without awaiting. On asyncio that task starts only when
  something first falls due (a loop timer until then, cancelled by :meth:`close`): an actor
  that lives less than a heartbeat interval (a short script, a connect and one request)
  never starts it. On Trio it starts with the first channel.
- A wake costs what is due, not what is watched: the due times are a heap (a channel that left,
  or was given a new time, leaves a stale entry behind, skipped when it comes up; entries name
  a token, never the channel, so one that left is not kept alive), so a server
  holding thousands of channels whose heartbeats fall at different moments does not look at
  every channel each time one of them is due. Wakes are at least ``COALESCE`` apart: what
  falls due meanwhile is looked at together, a little late, never early.
- A channel that joins and wants to be looked at earlier than the task planned wakes it; the
  common case (every channel of an actor shares one interval) wakes nothing.
- The task never raises: a channel's ``beat`` does no I/O that can fail (pings go through the
  outbox; a drop cancels the channel's own task group).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from itertools import count
from time import monotonic
from typing import Protocol

import anyio
from anyio.abc import TaskGroup

from .._transports._backend import call_later, in_loop_callback

__all__ = ["Watchdog", "Watched"]

#: Seconds between two wakes at least: heartbeats are seconds apart, and thousands of channels
#: due at scattered moments are looked at in groups instead of one wake each.
COALESCE = 0.005


class Watched(Protocol):
    def beat(self, now: float) -> float:
        """Look at the peer at ``now``; return when to look again (``math.inf``: never)."""
        ...


class Watchdog:
    """Keeps time for the channels of one actor (see the module's invariants)."""

    __slots__ = (
        "_armed_at",
        "_channels",
        "_disarm",
        "_due",
        "_heap",
        "_running",
        "_task_group",
        "_tokens",
        "_wake",
        "_wake_at",
    )

    def __init__(self, task_group: TaskGroup) -> None:
        self._task_group = task_group
        # A channel's live due time is the heap entry (at, token) whose token maps to it in
        # _channels; older entries, and those of channels that left, are stale. The heap holds
        # no channel: one that left is not kept alive (with its peer) until its time comes up.
        self._due: dict[Watched, int] = {}  # channel -> its live token
        self._channels: dict[int, Watched] = {}  # live token -> its channel
        self._heap: list[tuple[float, int]] = []
        self._tokens = count()
        self._running = False
        self._wake: anyio.Event | None = None
        self._wake_at = math.inf
        # Before the task runs (asyncio): the loop timer that starts it, and when it fires.
        self._disarm: Callable[[], None] | None = None
        self._armed_at = math.inf

    def join(self, channel: Watched, first: float) -> None:
        """Watch ``channel``; look at it first at ``first`` (a monotonic time)."""
        self._schedule(channel, first)
        if self._running:
            if first < self._wake_at and self._wake is not None:
                self._wake.set()
        elif first < self._armed_at:
            if self._disarm is not None:
                self._disarm()
            self._disarm = call_later(first - monotonic(), self._start)
            if self._disarm is None:  # no timer outside a task (Trio): the task now
                self._running = True
                self._task_group.start_soon(self._run)
            else:
                self._armed_at = first

    @property
    def open(self) -> bool:
        """Whether what joins now will be looked at (not once the owner is closing)."""
        return self._armed_at != -math.inf

    def close(self) -> None:
        """The owner is closing: start nothing more (its task group is ending)."""
        if self._disarm is not None:
            self._disarm()
            self._disarm = None
        self._armed_at = -math.inf  # (joins from now on arm nothing)

    def _start(self) -> None:
        """The timer fired (a loop callback): start the task, if anything is still watched."""
        self._disarm = None
        self._armed_at = math.inf
        if self._channels:
            self._running = True
            in_loop_callback()
            self._task_group.start_soon(self._run)

    def leave(self, channel: Watched) -> None:
        token = self._due.pop(channel, None)
        if token is not None:
            self._channels.pop(token, None)  # its heap entry is stale from now on

    def _schedule(self, channel: Watched, at: float) -> None:
        old = self._due.get(channel)
        if old is not None:
            self._channels.pop(old, None)
        token = next(self._tokens)
        self._due[channel] = token
        if at != math.inf:
            self._channels[token] = channel
            heapq.heappush(self._heap, (at, token))

    async def _run(self) -> None:
        due = self._due
        channels = self._channels
        heap = self._heap
        while True:
            now = monotonic()
            while heap and heap[0][0] <= now:
                _, token = heapq.heappop(heap)
                channel = channels.pop(token, None)
                if channel is None:
                    continue  # stale: the channel left, or has a newer time
                at = channel.beat(now)
                if channel in due:  # it may have left while beating (a drop)
                    self._schedule(channel, at)
            if len(heap) > 2 * len(channels) + 64:  # mostly stale (channels that left): rebuild
                heap[:] = [entry for entry in heap if entry[1] in channels]
                heapq.heapify(heap)
            wake_at = heap[0][0] if heap else math.inf
            self._wake_at = wake_at
            self._wake = wake = anyio.Event()
            with anyio.move_on_after(max(wake_at - monotonic(), COALESCE)):
                await wake.wait()
