"""Counting live tasks on the running backend, for tests that check that nothing outlives them
(conftest.py checks processes, sockets, file descriptors and socket files after every test)."""

from __future__ import annotations

from typing import Any

import anyio
import sniffio

__all__ = ["live_tasks", "wait_tasks_back_to"]


def live_tasks() -> int:
    """Tasks alive right now on this event loop (asyncio) or in this Trio run."""
    if sniffio.current_async_library() == "asyncio":
        import asyncio

        return len(asyncio.all_tasks())
    import trio

    def count(task: Any) -> int:
        return 1 + sum(count(t) for n in task.child_nurseries for t in n.child_tasks)

    return count(trio.lowlevel.current_root_task())


async def wait_tasks_back_to(before: int, timeout: float = 5.0) -> int:
    """Wait (up to ``timeout``) until no more than ``before`` tasks are alive; return the count."""
    with anyio.move_on_after(timeout):
        while live_tasks() > before:
            await anyio.sleep(0.02)
    return live_tasks()
