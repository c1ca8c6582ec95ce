"""Every difference between the event-loop backends that the layers above need, in one place.

anyio hides most of them; what is left is speed (a bare asyncio future is several times cheaper
than an anyio ``Event`` inside a cancel scope) and knowing which backend runs (a supervisor
starts its children on its own). The asyncio fast path for sockets is ``_streams``.

Invariant: no module outside ``_transports`` imports ``asyncio`` or ``trio`` to tell the
backends apart; they ask here.
"""

from __future__ import annotations

import asyncio
import math
import sys
from collections.abc import Callable
from typing import Any, Final

import anyio

__all__ = [
    "Completion",
    "backend_options",
    "current_backend",
    "running_asyncio_loop",
    "threadsafe_caller",
]


def running_asyncio_loop() -> asyncio.AbstractEventLoop | None:
    """The running asyncio loop, or ``None`` on another backend."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def current_backend() -> tuple[str, bool]:
    """The running anyio backend (``"asyncio"`` or ``"trio"``) and whether asyncio is uvloop's."""
    if "trio" in sys.modules:
        import trio

        try:
            trio.lowlevel.current_task()
            return "trio", False
        except RuntimeError:
            pass
    loop = asyncio.get_running_loop()
    return "asyncio", type(loop).__module__.startswith("uvloop")


def threadsafe_caller(callback: Callable[[], None]) -> Callable[[], None]:
    """A function that any thread (a garbage collection anywhere) may call to have
    ``callback`` run soon in the running loop; it does nothing once that loop is gone."""
    loop = running_asyncio_loop()
    if loop is not None:
        asyncio_loop = loop

        def call_asyncio() -> None:
            try:
                asyncio_loop.call_soon_threadsafe(callback)
            except RuntimeError:  # the loop is closed
                pass

        return call_asyncio
    import trio

    token = trio.lowlevel.current_trio_token()

    def call_trio() -> None:
        try:
            token.run_sync_soon(callback)
        except trio.RunFinishedError:
            pass

    return call_trio


def backend_options(backend: str, uvloop: bool) -> dict[str, Any]:
    """``anyio.run``'s ``backend_options`` to run as :func:`current_backend` said."""
    return {"use_uvloop": True} if backend == "asyncio" and uvloop else {}


_TIMED_OUT: Final[Any] = object()


def _time_out(done: asyncio.Future[Any]) -> None:
    if not done.done():
        done.set_result(_TIMED_OUT)


class Completion:
    """A one-shot signal, set once, awaited with a timeout; made in a task of the loop that
    awaits it. On asyncio a bare future and a loop timer (several times cheaper than an anyio
    ``Event`` inside a cancel scope: this is on every request's path); an ``Event`` elsewhere."""

    __slots__ = ("_done", "_loop")

    def __init__(self) -> None:
        self._loop = running_asyncio_loop()
        self._done: asyncio.Future[None] | anyio.Event = (
            anyio.Event() if self._loop is None else self._loop.create_future()
        )

    def is_set(self) -> bool:
        """Whether it was set (a timed out wait does not set it)."""
        done = self._done
        if isinstance(done, anyio.Event):
            return done.is_set()
        return done.done() and not done.cancelled() and done.result() is None

    def set(self) -> None:
        done = self._done
        if isinstance(done, anyio.Event):
            done.set()
        elif not done.done():
            done.set_result(None)

    async def wait(self, timeout: float) -> bool:
        """Wait until set, at most ``timeout`` seconds; whether it was set."""
        done = self._done
        if isinstance(done, anyio.Event):
            with anyio.move_on_after(timeout):
                await done.wait()
            return done.is_set()
        assert self._loop is not None
        timer = None if timeout == math.inf else self._loop.call_later(timeout, _time_out, done)
        try:
            await done
        finally:
            if timer is not None:
                timer.cancel()
        return done.result() is None
