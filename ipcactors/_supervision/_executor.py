"""A :class:`Pool` behind a real :class:`concurrent.futures.Executor`, for blocking code.

    with PoolExecutor(size=4) as executor:
        print(executor.submit(work, 3).result())
        await loop.run_in_executor(executor, work, 3)  # from asyncio code, unchanged

Invariant: the pool lives in its own event loop thread (anyio's blocking portal); every method
here only hands work to that thread, so it may be called from any thread. In that loop's own
(where futures settle, so where their done callbacks run) ``submit`` starts its task there
directly, and ``shutdown(wait=True)``, which would wait for itself, is refused.
A program may end without ``shutdown()``, as with the standard executors: as the interpreter
exits (before it waits for its threads, that loop's among them), every executor still open is
shut down, its tasks in flight finished.
"""

from __future__ import annotations

import concurrent.futures
import sys
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from functools import partial
from types import TracebackType
from typing import Any, Literal

import anyio
import anyio.from_thread
from anyio.from_thread import BlockingPortal

from .._errors import IPCError
from .._loopthreads import close_at_exit, closed, from_this_thread, signals_deferred
from .._transports._backend import check_backend
from ._pool import Pool

__all__ = ["PoolExecutor"]


class PoolExecutor(concurrent.futures.Executor):
    """``concurrent.futures`` face of :class:`Pool`: ``submit(fn, *args)`` returns a
    :class:`~concurrent.futures.Future`; ``map`` and ``shutdown`` as the standard executors.

    ``fn`` must be importable by name (as with multiprocessing's spawn); arguments and results
    travel as msgpack, never pickle. The other arguments are :class:`Pool`'s, plus ``backend``
    (``"asyncio"`` or ``"trio"``) for the pool's own event loop thread. Cancelling a future
    cancels its task, in the worker too, even once it runs.
    """

    def __init__(
        self,
        size: int | None = None,
        *,
        fn: Callable[..., Any] | str | None = None,
        backend: Literal["asyncio", "trio"] = "asyncio",
        **options: Any,
    ) -> None:
        check_backend(backend)
        # Every call into the pool's loop goes through this: from a thread that runs Trio (a
        # Trio program, a Trio pool's task), a Trio loop is reached from a helper thread.
        self._hop = hop = partial(from_this_thread, backend == "trio")
        self._portal_cm = anyio.from_thread.start_blocking_portal(backend)
        with signals_deferred():  # (see _loopthreads: never Ctrl-C inside anyio's start)
            self._portal: BlockingPortal = hop(self._portal_cm.__enter__)
        self._pool_cm: AbstractContextManager[Pool] | None = None
        try:
            # Made in its loop: its locks and events belong to that loop's library, not to
            # whatever loop may run in the caller's thread.
            self._pool: Pool = hop(partial(self._portal.call, partial(Pool, fn, size, **options)))
            self._pool_cm = self._portal.wrap_async_context_manager(self._pool)
            hop(self._pool_cm.__enter__)  # (Ctrl-C here: the start is cancelled, cleaned up)
        except BaseException:
            exc_info = sys.exc_info()
            with signals_deferred():
                hop(partial(self._portal_cm.__exit__, *exc_info))
            raise
        # A future's done callbacks run here, where its task settled (see _submit_here).
        self._loop_thread: int = hop(partial(self._portal.call, threading.get_ident))
        self._lock = threading.Lock()
        self._futures: set[concurrent.futures.Future[Any]] = set()
        self._shutdown = False
        self._kill = False  # the workers are killed once the tasks are settled (Ctrl-C)
        self._closed = threading.Event()
        self._error: Exception | None = None  # why the pool ended, if it gave up
        close_at_exit(self.shutdown)

    @property
    def pool(self) -> Pool:
        """The async pool underneath (``statistics()``, ``supervisor``): use it from its loop
        only, except :meth:`Pool.statistics`."""
        return self._pool

    def submit(
        self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[Any]:
        """Run ``fn(*args)`` in a worker; return its :class:`~concurrent.futures.Future`.
        ``fn`` not importable by name is refused here with :class:`SpawnError`."""
        if kwargs:
            raise TypeError(
                "PoolExecutor.submit takes positional arguments only (they travel as msgpack)"
            )
        name = self._pool._name(fn)  # refused here, in the caller's thread, if not importable
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            task = None if name == self._pool._fn else name
            if threading.get_ident() == self._loop_thread:
                future = self._submit_here(task, args)
            else:
                future = self._hop(
                    partial(self._portal.start_task_soon, self._pool._call, task, args)
                )
            self._futures.add(future)
        future.add_done_callback(self._futures.discard)
        return future

    def _submit_here(self, name: Any, args: tuple[Any, ...]) -> concurrent.futures.Future[Any]:
        """``submit`` from the pool's own loop thread (a done callback's), which cannot call
        into its loop through the portal: the task starts in the pool's task group, its future
        settled as the portal's are (cancelling it cancels the task)."""
        group = self._pool._task_group
        if group is None:
            raise RuntimeError("cannot schedule new futures after shutdown")
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        group.start_soon(self._settle, future, name, args)
        return future

    async def _settle(
        self, future: concurrent.futures.Future[Any], name: Any, args: tuple[Any, ...]
    ) -> None:
        with anyio.CancelScope() as scope:

            def cancel_if_cancelled(done: concurrent.futures.Future[Any]) -> None:
                if not done.cancelled():
                    return
                if threading.get_ident() == self._loop_thread:
                    scope.cancel()
                    return
                try:
                    self._hop(partial(self._portal.call, scope.cancel))
                except RuntimeError:
                    pass  # the loop has ended, and the task with it

            future.add_done_callback(cancel_if_cancelled)
            try:
                result = await self._pool._call(name, args)
            except anyio.get_cancelled_exc_class():
                future.cancel()
                future.set_running_or_notify_cancel()
                raise
            except BaseException as exc:
                if future.set_running_or_notify_cancel():
                    future.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
            else:
                if future.set_running_or_notify_cancel():
                    future.set_result(result)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Literal[False]:
        # Ctrl-C (or SystemExit) does not wait for the tasks that run: the workers lead their
        # own process groups, so the terminal's SIGINT never reached them; a plain function,
        # cancelled, runs on and would keep its worker from stopping politely, so the workers
        # are killed, as the terminal's SIGINT kills the standard executors'. An ordinary
        # exception is the caller's own: its tasks finish, as with the standard executors.
        leaving = exc_type is not None and not issubclass(exc_type, Exception)
        with self._lock:
            self._kill |= leaving and not self._shutdown
        self.shutdown(wait=True, cancel_futures=leaving)
        return False

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop taking tasks; ``cancel_futures=True`` cancels every task not finished (those
        running in a worker too); ``wait=True`` returns once the tasks are done and the workers
        stopped, ``wait=False`` at once (a thread finishes the rest)."""
        if wait and threading.get_ident() == self._loop_thread:
            raise IPCError(
                "shutdown(wait=True) in the executor's own loop thread (where done callbacks "
                "run) would wait for itself: call shutdown(wait=False) there"
            )
        with self._lock:
            already = self._shutdown
            self._shutdown = True
            futures = list(self._futures)
        if cancel_futures:
            for future in futures:
                future.cancel()
        if not already:
            closer = threading.Thread(target=self._close, args=(futures,), daemon=False)
            closer.start()
        if wait:
            try:
                self._closed.wait()
            except BaseException:  # Ctrl-C (or SystemExit) meanwhile: as when it leaves `with`
                self._interrupted()
                raise
            error, self._error = self._error, None
            if error is not None:  # the pool gave up (RestartIntensityError): said here, once
                raise error

    def _interrupted(self) -> None:
        """Cancel every unfinished future, then have the workers killed (see ``__exit__``)."""
        with self._lock:
            self._kill = True  # (before the cancels: the closer checks it once they are done)
            futures = list(self._futures)
        for future in futures:
            future.cancel()

    def _close(self, futures: list[concurrent.futures.Future[Any]]) -> None:
        closed(self)
        try:
            concurrent.futures.wait(futures)
            if self._kill:
                self._portal.call(self._pool.supervisor.kill)
            assert self._pool_cm is not None
            self._pool_cm.__exit__(None, None, None)
        except Exception as exc:  # (logged by the supervisor as it gave up)
            self._error = exc
        finally:
            self._portal_cm.__exit__(None, None, None)
            self._closed.set()
