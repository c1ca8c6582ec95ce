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
from types import ModuleType
from typing import TYPE_CHECKING, Any, Final

import anyio

from .._errors import ConfigError

if TYPE_CHECKING:
    import trio

try:
    from sniffio import current_async_library_cvar as _sniffio_library
except ImportError:  # (anyio then asks asyncio for the running loop, which a callback has)
    _sniffio_library = None  # type: ignore[assignment]

__all__ = [
    "Completion",
    "backend_options",
    "being_cancelled",
    "call_later",
    "cancelled_here",
    "check_backend",
    "current_backend",
    "in_loop_callback",
    "is_cancellation",
    "running_asyncio_loop",
    "thread_runs_trio",
    "threadsafe_caller",
    "threadsafe_scheduler",
]


def running_asyncio_loop() -> asyncio.AbstractEventLoop | None:
    """The running asyncio loop, or ``None`` on another backend."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def drop_loop_reports(dropped: Callable[[BaseException], bool]) -> None:
    """asyncio: have the running loop's exception handler drop the reports whose exception
    ``dropped`` accepts (any other goes to the handler it had). Nothing on Trio."""
    loop = running_asyncio_loop()
    if loop is None:
        return
    previous = loop.get_exception_handler()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, BaseException) and dropped(exc):
            return
        if previous is None:
            loop.default_exception_handler(context)
        else:
            previous(loop, context)

    loop.set_exception_handler(handler)


def call_later(delay: float, callback: Callable[[], None]) -> Callable[[], None] | None:
    """asyncio: call ``callback`` from a loop callback in ``delay`` seconds (a timer costs ~1 us,
    a task ~15); returns what cancels it. ``None`` on Trio, which has no timer outside a task:
    the caller uses a task instead."""
    loop = running_asyncio_loop()
    if loop is None:
        return None
    return loop.call_later(max(delay, 0.0), callback).cancel


def being_cancelled() -> bool:
    """Whether the current task is being cancelled. On asyncio, anyio's cancel scopes cancel
    a task through ``Task.cancel``, which ``Task.cancelling`` counts until the scope has caught
    the exception: a ``CancelledError`` met while it is 0 was raised by the code the task ran
    (by hand, or by awaiting a future another task cancelled), not delivered. On Trio, while
    a scope the task is in is cancelled, its effective deadline is -inf; a ``Cancelled`` met
    otherwise was raised again by the code the task ran, out of a scope that had caught it."""
    loop = running_asyncio_loop()
    if loop is None:
        return bool(_trio().current_effective_deadline() == -math.inf)
    task = asyncio.current_task(loop)
    return task is not None and task.cancelling() > 0


def cancelled_here() -> bool:
    """Whether a cancellation reaches the current task at its next checkpoint: a cancelled
    scope encloses it, with no shield between (unlike :func:`being_cancelled`, which on
    asyncio counts a cancellation under way behind a shield too)."""
    return anyio.current_effective_deadline() == -math.inf


def in_loop_callback() -> None:
    """asyncio, in a loop callback (outside any task), before running a user's function there:
    let sniffio, and anyio through it, tell asyncio runs, as they can in a task. ``anyio.run``
    told the callbacks of its loop already; under ``asyncio.run`` sniffio looks for a current
    task, which a callback has not. Set in the callback's context (its own copy), for good."""
    if _sniffio_library is not None and _sniffio_library.get() is None:
        _sniffio_library.set("asyncio")


def _trio() -> ModuleType:
    """The trio module: only called on Trio, where it is loaded."""
    return sys.modules["trio"]


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


def is_cancellation(exc: BaseException | None) -> bool:
    """Whether ``exc`` is a backend's cancellation: asyncio's ``CancelledError``, Trio's
    ``Cancelled``, or a group of them only."""
    if exc is None:
        return False
    if isinstance(exc, BaseExceptionGroup):
        return all(is_cancellation(inner) for inner in exc.exceptions)
    if isinstance(exc, asyncio.CancelledError):
        return True
    kind = type(exc)
    return kind.__name__ == "Cancelled" and kind.__module__.startswith("trio")


def thread_runs_trio() -> bool:
    """Whether the calling thread runs a Trio loop (and is in one of its tasks)."""
    if "trio" not in sys.modules:
        return False
    try:
        _trio().lowlevel.current_task()
    except RuntimeError:
        return False
    return True


def threadsafe_scheduler() -> Callable[[Callable[[], None]], None]:
    """In a running loop: a function any thread may call with a callback to have it run soon
    in that loop; it does nothing once that loop is gone."""
    loop = running_asyncio_loop()
    if loop is not None:
        asyncio_loop = loop

        def call_asyncio(callback: Callable[[], None]) -> None:
            try:
                asyncio_loop.call_soon_threadsafe(callback)
            except RuntimeError:  # the loop is closed
                pass

        return call_asyncio
    import trio

    token = trio.lowlevel.current_trio_token()

    def call_trio(callback: Callable[[], None]) -> None:
        try:
            token.run_sync_soon(callback)
        except trio.RunFinishedError:
            pass

    return call_trio


def threadsafe_caller(callback: Callable[[], None]) -> Callable[[], None]:
    """A function that any thread (a garbage collection anywhere) may call to have
    ``callback`` run soon in the running loop; it does nothing once that loop is gone."""
    schedule = threadsafe_scheduler()
    return lambda: schedule(callback)


_ASYNCIO_OPTIONS: Final = frozenset({"debug", "use_uvloop", "loop_factory"})


def check_backend(backend: object, options: object = None) -> None:
    """Raise :class:`ConfigError` unless ``backend`` is ``"asyncio"`` or ``"trio"`` and
    ``options`` (``backend_options``) are ones it takes: anyio would raise LookupError or a
    TypeError, some only once a thread was started."""
    if backend not in ("asyncio", "trio"):
        raise ConfigError(f'backend= takes "asyncio" or "trio", got {backend!r:.80}')
    if options is None:
        return
    if type(options) is not dict:
        raise ConfigError(f"backend_options must be a dict or None, got {options!r:.80}")
    if backend == "asyncio":
        known: frozenset[str] = _ASYNCIO_OPTIONS
    else:
        import inspect

        import trio

        known = frozenset(inspect.signature(trio.run).parameters) - {"async_fn", "args"}
    unknown = sorted(str(key) for key in options if key not in known)
    if unknown:
        raise ConfigError(
            f"backend_options for {backend} take {', '.join(sorted(known))}; "
            f"not {', '.join(unknown)}"
        )


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
    ``Event`` inside a cancel scope: this is on every request's path); on Trio, Trio's own
    ``Event`` and cancel scope (anyio's wrap them: ~3 % of a Trio round trip)."""

    __slots__ = ("_event", "_expired", "_future", "_loop")

    def __init__(self) -> None:
        loop = self._loop = running_asyncio_loop()
        self._future: asyncio.Future[None] | None = None
        self._event: trio.Event | None = None
        self._expired = False  # (Trio: see expire)
        if loop is None:
            self._event = _trio().Event()
        else:
            self._future = loop.create_future()

    def is_set(self) -> bool:
        """Whether it was set (a timed out wait, or :meth:`expire`, does not set it)."""
        future = self._future
        if future is None:
            assert self._event is not None
            return self._event.is_set() and not self._expired
        return future.done() and not future.cancelled() and future.result() is None

    def done(self) -> bool:
        """Whether its wait is over: set (on asyncio also timed out, or its waiter cancelled)."""
        future = self._future
        if future is None:
            assert self._event is not None
            return self._event.is_set()
        return future.done()

    def set(self) -> None:
        future = self._future
        if future is None:
            assert self._event is not None
            self._event.set()
        elif not future.done():
            future.set_result(None)

    def expire(self) -> None:
        """End its wait as timed out, from outside (a clock that keeps time for many): the
        wait returns false, and it is not set, unless it was already."""
        future = self._future
        if future is None:
            assert self._event is not None
            if not self._event.is_set():
                self._expired = True
                self._event.set()
        elif not future.done():
            future.set_result(_TIMED_OUT)

    async def wait(self, timeout: float) -> bool:
        """Wait until set, at most ``timeout`` seconds; whether it was set."""
        future = self._future
        if future is None:
            event = self._event
            assert event is not None
            if timeout == math.inf:
                await event.wait()
            else:
                with _trio().move_on_after(timeout):
                    await event.wait()
            return self.is_set()
        assert self._loop is not None
        timer = None if timeout == math.inf else self._loop.call_later(timeout, _time_out, future)
        try:
            await future
        finally:
            if timer is not None:
                timer.cancel()
        return future.result() is None
