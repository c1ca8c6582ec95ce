"""A :class:`Pool` behind a real :class:`concurrent.futures.Executor`, for blocking code.

    with PoolExecutor(size=4) as executor:
        print(executor.submit(work, 3).result())
        await loop.run_in_executor(executor, work, 3)  # from asyncio code, unchanged

Invariant: the pool lives in its own event loop thread (anyio's blocking portal); every method
here only hands work to that thread, so it may be called from any thread. A submit never waits
for that loop: it joins ``_incoming``, and one call scheduled in the loop (``_take``) queues
every submit waiting there; a task's outcome is likewise handed to one scheduled call
(``_settle``) that settles the futures, outside the pool's own code, so that their done
callbacks run in that loop thread. There ``submit`` queues its task directly, and
``shutdown(wait=True)``, which would wait for itself, is refused. No task per submit: a future
costs the pool its ``_Task`` and nothing more. A future's cancellation tells its waiters
(``concurrent.futures.wait``) at once, in the cancelling thread, and cancels its task in the
loop; a future's waiters are told once (``_Slot.told``, under the lock), whichever thread
comes first. A Ctrl-C in any step of ours leaves this sound: a take is marked scheduled only
once it is, a future marked told only once it was, the closer thread starts before any cancel
and takes what is left, and once the workers are to be killed it no longer waits for the
tasks, and cancels every future before it kills them (the pool's exit settles the tasks).
(One inside the standard library's own locks, a future's condition, can leave that lock
held, as it can for the standard executors.)
A program may end without ``shutdown()``, as with the standard executors: as the interpreter
exits (before it waits for its threads, that loop's among them), every executor still open is
shut down, its tasks in flight finished.
"""

from __future__ import annotations

import concurrent.futures
import sys
import threading
from collections import deque
from collections.abc import Callable
from contextlib import AbstractContextManager
from functools import partial
from types import TracebackType
from typing import Any, Literal

import anyio
import anyio.from_thread
from anyio.from_thread import BlockingPortal

from .._errors import IPCError, UnsupportedError, exhaustion_raised_as_resource_error
from .._loopthreads import close_at_exit, closed, from_this_thread, signals_deferred
from .._transports._backend import check_backend, threadsafe_scheduler
from ._pool import Pool, _Task

_Future = concurrent.futures.Future


class _Slot:
    """What the executor keeps of one future: its task in the pool, once queued there, and
    whether its waiters were told it is done (``set_running_or_notify_cancel``, which may be
    called once: under the executor's lock, whichever thread gets there first)."""

    __slots__ = ("task", "told")

    def __init__(self) -> None:
        self.task: _Task | None = None
        self.told = False


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
        self._pool_cm: AbstractContextManager[Pool] | None = None
        # Out of descriptors (or memory) anywhere in the start: said as such, all undone.
        with exhaustion_raised_as_resource_error("cannot start a PoolExecutor"):
            self._launch(backend, partial(Pool, fn, size, **options))
        # A future's done callbacks run there, where its task settled.
        self._loop_thread: int = hop(partial(self._portal.call, threading.get_ident))
        self._lock = threading.Lock()
        self._futures: dict[_Future[Any], _Slot] = {}  # those not done
        self._incoming: deque[tuple[_Future[Any], _Slot, list[Any] | None, tuple[Any, ...]]] = (
            deque()
        )
        self._settled: list[tuple[_Future[Any], _Slot, _Task]] = []  # (touched in the loop)
        self._taking = False  # a _take is scheduled in the loop
        self._in_loop: Callable[[Callable[[], None]], None] = hop(
            partial(self._portal.call, threadsafe_scheduler)
        )
        self._take_soon = partial(self._in_loop, self._take)
        self._cancels: list[_Task] = []  # (only touched in the loop, as what follows)
        self._wake_canceller: anyio.Event | None = None
        hop(partial(self._portal.call, self._start_canceller))
        self._shutdown = False
        self._closing = False  # the closer thread runs (or ran)
        self._kill = False  # the workers are killed once the tasks are settled (Ctrl-C)
        self._closed = threading.Event()
        self._error: Exception | None = None  # why the pool ended, if it gave up
        close_at_exit(self.shutdown)

    def _launch(self, backend: str, make_pool: Callable[[], Pool]) -> None:
        """Start the loop thread and, in it, the pool (both undone if either fails)."""
        hop = self._hop
        self._portal_cm = anyio.from_thread.start_blocking_portal(backend)
        with signals_deferred():  # (see _loopthreads: never Ctrl-C inside anyio's start)
            self._portal: BlockingPortal = hop(self._portal_cm.__enter__)
        try:
            # Made in its loop: its locks and events belong to that loop's library, not to
            # whatever loop may run in the caller's thread.
            self._pool: Pool = hop(partial(self._portal.call, make_pool))
            self._pool_cm = self._portal.wrap_async_context_manager(self._pool)
            hop(self._pool_cm.__enter__)  # (Ctrl-C here: the start is cancelled, cleaned up)
        except BaseException:
            exc_info = sys.exc_info()
            with signals_deferred():
                hop(partial(self._portal_cm.__exit__, *exc_info))
            raise

    @property
    def pool(self) -> Pool:
        """The async pool underneath (``statistics()``, ``supervisor``): use it from its loop
        only, except :meth:`Pool.statistics`."""
        return self._pool

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> _Future[Any]:
        """Run ``fn(*args)`` in a worker; return its :class:`~concurrent.futures.Future`.
        ``fn`` not importable by name is refused here with :class:`SpawnError`."""
        if kwargs:
            raise UnsupportedError(
                "PoolExecutor.submit takes positional arguments only (they travel as msgpack)"
            )
        name = self._pool._name(fn)  # refused here, in the caller's thread, if not importable
        task = None if name == self._pool._fn else name
        future: _Future[Any] = _Future()
        slot = _Slot()
        # Ours first, before any of the caller's (one that raises stops those after it).
        future.add_done_callback(partial(self._cancelled, slot))
        future.add_done_callback(self._forget)
        here = threading.get_ident() == self._loop_thread
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if not here:
                # Interrupted anywhere here (Ctrl-C), nothing is lost: what is in _incoming
                # is taken by the next _take (the flag is set only once one is scheduled,
                # and the closer takes what is left), and _futures holds only what it holds.
                self._incoming.append((future, slot, task, args))
                if not self._taking:
                    self._take_soon()
                    self._taking = True
            self._futures[future] = slot
        if here:
            self._start(future, slot, task, args)
        return future

    def _forget(self, future: _Future[Any]) -> None:
        self._futures.pop(future, None)

    # --- in the loop thread ---------------------------------------------------------------------

    def _start_canceller(self) -> None:
        assert self._pool._task_group is not None
        self._pool._task_group.start_soon(self._canceller)

    def _take(self) -> None:
        """Queue every task submitted from other threads since the last time."""
        with self._lock:
            incoming = list(self._incoming)
            self._incoming.clear()
            self._taking = False
        for future, slot, name, args in incoming:
            self._start(future, slot, name, args)

    def _start(
        self, future: _Future[Any], slot: _Slot, name: list[Any] | None, args: tuple[Any, ...]
    ) -> None:
        if future.cancelled():  # before it reached the loop
            self._notify_cancelled(future, slot)
            return
        try:
            slot.task = self._pool._enqueue(name, args, partial(self._finished, future, slot))
        except Exception as exc:  # the pool is closed (it gave up)
            if self._running(future, slot):
                self._settle_one(future, False, exc)

    def _finished(self, future: _Future[Any], slot: _Slot, task: _Task) -> None:
        """``task`` settled (inside the pool's own code): its future is settled soon, by one
        call for all that settle meanwhile, so that done callbacks run outside the pool."""
        if not self._settled:
            self._in_loop(self._settle)
        self._settled.append((future, slot, task))

    def _settle(self) -> None:
        settled, self._settled = self._settled, []
        for future, slot, task in settled:
            if self._running(future, slot):
                self._settle_one(future, task.ok, task.value)

    def _settle_one(self, future: _Future[Any], ok: bool, value: Any) -> None:
        try:
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)
        except BaseException as exc:  # a done callback's (Future logs an Exception's itself)
            self._pool.supervisor._log.exception("a PoolExecutor future's done callback", exc)

    def _cancelled(self, slot: _Slot, future: _Future[Any]) -> None:
        """``future``'s first done callback, in whichever thread settled or cancelled it: a
        cancelled one's waiters are told at once, its task is cancelled in the loop."""
        if not future.cancelled():
            return
        self._notify_cancelled(future, slot)

        def cancel() -> None:
            task = slot.task
            if task is not None and not task.finished:
                self._pool._drop(task)  # a queued one is never sent
                self._cancels.append(task)
                if self._wake_canceller is not None:
                    self._wake_canceller.set()

        if threading.get_ident() == self._loop_thread:
            cancel()
        else:
            self._in_loop(cancel)

    async def _canceller(self) -> None:
        """In the pool's task group: tell the workers of the tasks whose futures were
        cancelled (those of one pass together: one message per worker)."""
        while True:
            while not self._cancels:
                self._wake_canceller = anyio.Event()
                await self._wake_canceller.wait()
            tasks, self._cancels = self._cancels, []
            await self._pool._cancel(tasks)

    def _notify_cancelled(self, future: _Future[Any], slot: _Slot) -> None:
        """Tell ``wait()`` and ``as_completed()`` that the cancelled ``future`` is done (any
        thread may, any number of times: once is done)."""
        with self._lock:
            if not slot.told:
                # Told first, marked after: a Ctrl-C between them leaves it to be told again
                # (by the closer at the latest), never marked told untold.
                try:
                    future.set_running_or_notify_cancel()
                except RuntimeError:
                    pass  # told, by the call a Ctrl-C cut short before it was marked
                slot.told = True

    def _running(self, future: _Future[Any], slot: _Slot) -> bool:
        """Mark ``future`` running, to settle it now: False if it was cancelled (its waiters
        are then told, if no other thread did)."""
        with self._lock:
            if slot.told:
                return False
            running = future.set_running_or_notify_cancel()
            slot.told = not running
            return running

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
            self._shutdown = True
            start = not self._closing
        if start:  # first: a Ctrl-C among the cancels below must not keep it from starting
            threading.Thread(target=self._close, name="ipcactors-executor-close").start()
        if cancel_futures:
            for future in list(self._futures):
                future.cancel()
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
        """Have the workers killed and every unfinished future cancelled (see ``__exit__``)."""
        with self._lock:
            self._kill = True  # (first: the closer stops waiting for the tasks at once)
            futures = list(self._futures)
        for future in futures:
            future.cancel()

    def _close(self) -> None:
        """The closer thread (one; a second returns at once): wait for the tasks (not once
        ``_kill`` is set), stop the pool, which settles what is left, and its loop."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
        closed(self)
        try:
            self._portal.call(self._take)  # what a Ctrl-C in a submit kept from being taken
            while not self._kill:
                pending = [future for future in list(self._futures) if not future.done()]
                if not pending:
                    break
                concurrent.futures.wait(pending, timeout=0.1)
            if self._kill:
                # Cancelled before the workers go (whoever set _kill cancels them too, maybe
                # later): killed first, a task's future would be settled as lost instead.
                for future in list(self._futures):
                    future.cancel()
                self._portal.call(self._pool.supervisor.kill)
            assert self._pool_cm is not None
            self._pool_cm.__exit__(None, None, None)
            self._portal.call(self._settle)  # the futures of the tasks it settled
        except Exception as exc:  # (logged by the supervisor as it gave up)
            self._error = exc
        finally:
            self._portal_cm.__exit__(None, None, None)
            for future, slot in list(self._futures.items()):  # a cancel a Ctrl-C cut short
                if future.cancelled():
                    self._notify_cancelled(future, slot)
            self._closed.set()
