"""A one-way flag that tasks can wait for: an ``anyio.Event`` made only when needed.

Every connection has a few things that may be waited for (opened, drained, lost for writing,
up, destroyed) and most of them are never waited for before they are set, or never at all.
An ``anyio.Event`` costs ~2 us to make (it asks which backend runs); a fresh connection made
five of them on each side. A :class:`Flag` is two slots until a task waits on it unset.

Invariants:
- ``set`` is idempotent, and wakes every task waiting at that moment;
- ``wait`` on a set flag is a checkpoint, as ``anyio.Event.wait`` is;
- the event is made at most once, by the first task that waits while the flag is unset.
"""

from __future__ import annotations

import anyio
from anyio.lowlevel import checkpoint

__all__ = ["Flag"]


class Flag:
    """``is_set``, ``set`` and ``wait`` of an ``anyio.Event``, made lazily."""

    __slots__ = ("_event", "_set")

    def __init__(self) -> None:
        self._set = False
        self._event: anyio.Event | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        if not self._set:
            self._set = True
            if self._event is not None:
                self._event.set()

    async def wait(self) -> None:
        if self._set:
            await checkpoint()
            return
        if self._event is None:
            self._event = anyio.Event()
        await self._event.wait()
