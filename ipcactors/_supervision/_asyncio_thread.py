"""An asyncio-only launcher (``_ssh``: asyncssh runs on asyncio) for a supervisor on Trio.

``AsyncioThreadLauncher`` runs the real launcher in a helper thread with an asyncio event loop
of its own (anyio's blocking portal), and is itself a launcher on the supervisor's loop.

Invariants owned here:
- The inner launcher is made, called and closed only in the helper thread, and what it calls
  back (``on_exit``, the output relay) runs in the supervisor's thread, through its loop's
  token: the supervisor's state is never touched from the helper thread.
- The supervisor's loop never waits for the helper's (which may be waiting for it, in
  ``_back``): a call into the helper (``kill`` included) is made from a worker thread, and
  cancelling it cancels it there.
- ``aclose`` closes the inner launcher, then ends the helper thread; a callback the helper
  sends once the supervisor's loop is gone is dropped (nothing is left to tell).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from functools import partial
from typing import Any

import anyio
import anyio.from_thread
import anyio.lowlevel
from anyio.abc import TaskGroup
from anyio.from_thread import BlockingPortal

from ._launcher import LaunchContext, Launcher

__all__ = ["AsyncioThreadLauncher"]


class AsyncioThreadLauncher:
    """A launcher made by ``make(context)`` that must run on asyncio, run in a helper thread."""

    def __init__(self, make: Callable[[LaunchContext], Launcher], context: LaunchContext) -> None:
        self._make = make
        self._context = context
        self._token = anyio.lowlevel.current_token()
        self._thread = threading.get_ident()  # the supervisor's
        self._portal_cm: contextlib.AbstractContextManager[BlockingPortal] | None = None
        self._portal: BlockingPortal | None = None
        self._inner: Launcher | None = None
        self._host: Any = None  # the helper's task-group task (a Future), cancelled at close
        self._closed = False
        self._starting = anyio.Lock()

    @property
    def dead(self) -> bool:
        """Closed, or the launcher in the helper thread lost its place."""
        return self._closed or (self._inner is not None and self._inner.dead)

    def _back(self, fn: Callable[..., None], *args: Any) -> None:
        """Call ``fn(*args)`` in the supervisor's thread (from the helper thread; at once if
        called there, as a future's callback is once the future is done)."""
        if threading.get_ident() == self._thread:
            fn(*args)
            return
        try:
            anyio.from_thread.run_sync(fn, *args, token=self._token)
        except anyio.RunFinishedError:
            pass  # the supervisor's loop is gone: nobody left to tell

    async def _start(self) -> None:
        portal_cm = anyio.from_thread.start_blocking_portal("asyncio", name="ipcactors-ssh")
        self._portal = await anyio.to_thread.run_sync(portal_cm.__enter__)
        self._portal_cm = portal_cm
        started: dict[str, TaskGroup] = {}
        ready = anyio.Event()  # an event of the supervisor's loop, set from the helper

        async def host() -> None:
            async with anyio.create_task_group() as task_group:
                started["task_group"] = task_group
                self._back(ready.set)
                await anyio.sleep_forever()

        self._host = self._portal.start_task_soon(host)
        await ready.wait()
        context = LaunchContext(
            task_group=started["task_group"],
            log=self._context.log,
            log_level=self._context.log_level,
            preload=self._context.preload,
            connect_back=self._context.connect_back,
            relay=lambda fds, prefix: self._back(self._context.relay, fds, prefix),
            backend=self._context.backend,
        )
        self._inner = await self._call(self._make, context)

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` in the helper thread; cancelling this cancels it there (a connect in
        progress, say) instead of waiting for it."""
        portal = self._portal
        assert portal is not None
        # The portal's calls wait for the helper's loop, and the helper may be waiting for
        # ours (``_back``): made from a worker thread, never from this loop's.
        future = await anyio.to_thread.run_sync(partial(portal.start_task_soon, fn, *args))
        done = anyio.Event()
        future.add_done_callback(lambda _: self._back(done.set))
        try:
            await done.wait()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(future.cancel)
            raise
        return future.result()

    async def wait_ready(self) -> None:
        async with self._starting:  # spawns racing to a new host start it once
            if self._portal is None:
                await self._start()
        assert self._inner is not None
        await self._call(self._inner.wait_ready)

    async def spawn(
        self, spec: dict[str, Any], fds: list[int], name: str, on_exit: Callable[[int], None]
    ) -> int:
        assert self._inner is not None
        pid: int = await self._call(
            self._inner.spawn, spec, fds, name, lambda code: self._back(on_exit, code)
        )
        return pid

    def kill(self, pid: int, sig: int) -> None:
        if self._inner is not None and self._portal is not None and not self._closed:
            self._context.task_group.start_soon(self._kill, self._inner.kill, pid, sig)

    async def _kill(self, kill: Callable[[int, int], None], pid: int, sig: int) -> None:
        with anyio.CancelScope(shield=True):  # delivered even as everything is cancelled
            await self._call(kill, pid, sig)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        with anyio.CancelScope(shield=True):
            if self._inner is not None:
                await self._call(self._inner.aclose)
            if self._host is not None:
                self._host.cancel()
            if self._portal_cm is not None:
                await anyio.to_thread.run_sync(_exit, self._portal_cm)


def _exit(cm: contextlib.AbstractContextManager[Any]) -> None:
    cm.__exit__(None, None, None)
