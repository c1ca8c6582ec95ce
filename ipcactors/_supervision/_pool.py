"""A pool of supervised worker processes that run one function on many inputs.

    async with Pool(work, size=4) as pool:
        print(await pool.submit(3))
        async for result in pool.map(range(1000)):
            ...

The pool sits on a :class:`Supervisor` (one ``one_for_one`` child per worker, each running
:func:`~._poolworker.pool_worker`) and adds scheduling, retries, timeouts and cancellation.

Invariants:

- Tasks wait in one queue (a retry at its head). Each worker's dispatcher takes its share of
  the queue while its worker runs and has fewer than ``per_worker`` tasks in flight, and sends
  what it took as one batch (one request, one answer): at most ``size * per_worker`` tasks are
  in workers at once, a free worker gets the next task, a restarting one none. With a
  ``task_timeout`` each task travels alone, under its own timer.
- A task is retried only after a lost worker (``retry_on``: :class:`ConnectionLostError`, which
  includes :class:`ChildExitedError`, by default), at most ``max_retries`` times, from the head
  of the queue (the next worker with room takes it); never after the function raised
  (:class:`RemoteError`). When retries run out the caller gets :class:`WorkerLostError` naming
  the worker, its exit, and the attempts.
- A task past ``task_timeout`` has its worker SIGKILLed (the supervisor replaces it) and fails
  with :class:`TaskTimeoutError`, not retried unless ``retry_on`` includes it: a task that hung
  once will likely hang again. The other tasks of that worker count as lost and are retried.
- Cancelling a caller (``submit``, ``call``, a ``map`` left early) sends the worker a cancel
  message that cancels the task's scope there: an async function at its next await; a plain
  function that already runs finishes first (its result is dropped).
- ``map`` starts at most ``size * per_worker + buffer`` items that it has not yielded yet, so an
  infinite iterable runs in bounded memory.
"""

from __future__ import annotations

import itertools
import math
import os
import signal
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from types import TracebackType
from typing import Any

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectSendStream

from .._config import Config
from .._core._stats import PoolStatistics
from .._errors import (
    ClosedError,
    ConfigError,
    ConnectionLostError,
    EncodeError,
    IPCError,
    RemoteError,
    TaskTimeoutError,
    WorkerLostError,
)
from .._proto._msgpack import pack_value
from ._poolworker import BATCH_EVENT, CANCEL_EVENT, pool_worker
from ._supervisor import Supervisor
from ._target import target_of

__all__ = ["Pool"]

#: What a request to a worker may wait at most: the pool bounds tasks with task_timeout instead.
_NO_TIMEOUT = 365 * 24 * 3600.0


def _check_count(name: str, value: object, minimum: int) -> int:
    if type(value) is not int or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r:.40}")
    return value


class _Task:
    """One task of a caller, from queued to done (again, for a retry)."""

    __slots__ = ("cancelled", "data", "done", "id", "ok", "value", "worker")

    def __init__(self, id: int, data: list[Any]) -> None:
        self.id = id
        self.data = data  # [function name or None, args]
        self.cancelled = False
        self.reset()

    def reset(self) -> None:
        self.done = anyio.Event()
        self.worker: str | None = None
        self.ok = False
        self.value: Any = None

    def finish(self, ok: bool, value: Any) -> None:
        self.ok = ok
        self.value = value
        self.done.set()


class Pool:
    """Worker processes that run ``fn(*args)`` for you, surviving the death of any of them.

    ``fn`` is a function (plain or async) importable by module and name, like a supervisor's
    target (or ``"module:function"``); arguments and results travel as msgpack, numpy arrays
    included, never pickle. A plain function runs on the worker's event loop (no thread hop per
    task); an async function runs in its own cancel scope there.

    Parameters (defaults and why):

    - ``size``: worker processes (``os.cpu_count()``: one per core for CPU-bound work).
    - ``per_worker``: tasks in flight per worker (1: a CPU-bound task has the process to
      itself; raise it for async or I/O-bound functions, or tiny tasks, to hide round trips).
    - ``max_retries``: attempts after the first when a worker is lost mid-task (2).
    - ``retry_on``: the errors that count as a lost worker ((:class:`ConnectionLostError`,),
      which includes :class:`ChildExitedError`). Add :class:`TaskTimeoutError` to retry timeouts.
    - ``task_timeout``: seconds a task may run before its worker is killed and replaced
      (``None``: no limit).
    - ``initializer``, ``initargs``: run once in each worker process before its first task
      (load a model once). Importable by name like ``fn``.
    - ``buffer``: how many results ``map`` may hold beyond those in flight (``size * per_worker``).
    - ``max_restarts``, ``max_seconds``: the supervisor's restart intensity (default: ``size + 2``
      restarts within 5 s; past it the pool stops and raises :class:`RestartIntensityError`).
    - ``id``: the pool's supervisor id; workers are ``"{id}-0"``, ``"{id}-1"``, ...
    - ``config``, ``preload``, ``**overrides``: as for :class:`Supervisor`;
      ``heartbeat_interval`` is ``None`` unless given (a worker busy in a plain function cannot
      answer heartbeats, and a dead one is seen by its exit).
    """

    def __init__(
        self,
        fn: Callable[..., Any] | str | None = None,
        size: int | None = None,
        *,
        per_worker: int = 1,
        max_retries: int = 2,
        retry_on: tuple[type[BaseException], ...] = (ConnectionLostError,),
        task_timeout: float | None = None,
        initializer: Callable[..., Any] | str | None = None,
        initargs: tuple[Any, ...] | list[Any] = (),
        buffer: int | None = None,
        max_restarts: int | None = None,
        max_seconds: float = 5.0,
        id: str = "pool",
        config: Config | None = None,
        preload: tuple[str, ...] | list[str] = (),
        **overrides: Any,
    ) -> None:
        self.size = _check_count("size", (os.cpu_count() or 1) if size is None else size, 1)
        self.per_worker = _check_count("per_worker", per_worker, 1)
        self.max_retries = _check_count("max_retries", max_retries, 0)
        if not isinstance(retry_on, tuple) or not all(
            isinstance(kind, type) and issubclass(kind, BaseException) for kind in retry_on
        ):
            raise ConfigError(f"retry_on must be a tuple of exception types, got {retry_on!r:.80}")
        if any(issubclass(RemoteError, kind) for kind in retry_on):
            raise ConfigError(
                "retry_on must not include RemoteError (or a base of it): an exception the "
                "function raised is never retried"
            )
        self.retry_on = retry_on
        if task_timeout is not None and (
            isinstance(task_timeout, bool)
            or not isinstance(task_timeout, int | float)
            or not 0 < task_timeout < math.inf
        ):
            raise ConfigError(f"task_timeout must be None or seconds > 0, got {task_timeout!r}")
        self.task_timeout = task_timeout
        self.buffer = self.size * self.per_worker if buffer is None else buffer
        _check_count("buffer", self.buffer, 0)
        self._names: dict[Any, list[Any]] = {}
        self._fn = None if fn is None else self._name(fn)
        init = None if initializer is None else list(self._target(initializer))
        # Heartbeats off unless asked for: a worker running a plain function for minutes
        # cannot answer them, and is not dead (its exit tells; task_timeout catches a hang).
        overrides.setdefault("heartbeat_interval", None)
        self._supervisor = Supervisor(
            "one_for_one",
            self.size + 2 if max_restarts is None else max_restarts,
            max_seconds,
            id=id,
            config=config,
            preload=preload,
            **overrides,
        )
        self._worker_args = (self._fn, init, list(initargs))
        self._workers = [f"{id}-{n}" for n in range(self.size)]
        self._load = dict.fromkeys(self._workers, 0)
        self._queue: deque[_Task] = deque()
        self._work = anyio.Event()  # set when a task is queued or a worker has room again
        self._ids = itertools.count()
        self._task_group: TaskGroup | None = None
        self._closed = False
        self._counts = dict.fromkeys(
            ("submitted", "completed", "failed", "retried", "timed_out", "cancelled"), 0
        )

    def __repr__(self) -> str:
        return f"<Pool {self._supervisor.id!r} size={self.size} per_worker={self.per_worker}>"

    # --- lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> Pool:
        await self._supervisor.__aenter__()
        try:
            async with anyio.create_task_group() as spawns:
                for worker in self._workers:
                    spawns.start_soon(self._spawn, worker)
            self._task_group = anyio.create_task_group()
            await self._task_group.__aenter__()
            for worker in self._workers:
                self._task_group.start_soon(self._dispatch, worker)
        except BaseException as exc:
            await self._supervisor.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    async def _spawn(self, worker: str) -> None:
        await self._supervisor.spawn(pool_worker, *self._worker_args, id=worker)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        """Leave: unfinished ``map`` iterations are cancelled, tasks still queued or sent fail
        with :class:`ClosedError`, then the workers stop."""
        self._closed = True
        assert self._task_group is not None
        self._task_group.cancel_scope.cancel()
        try:
            await self._task_group.__aexit__(None, None, None)
        finally:
            while self._queue:  # callers still waiting (in other tasks) learn why
                task = self._queue.popleft()
                task.finish(False, ClosedError(f"pool {self._supervisor.id!r} was closed"))
            result = await self._supervisor.__aexit__(exc_type, exc, tb)
        return result

    @property
    def supervisor(self) -> Supervisor:
        """The supervisor of the workers (``pool.supervisor.children`` for their pids)."""
        return self._supervisor

    @property
    def workers(self) -> list[str]:
        """The workers' ids."""
        return list(self._workers)

    def statistics(self) -> PoolStatistics:
        """A snapshot of the pool's counters (cheap; it never waits)."""
        children = self._supervisor.children
        return PoolStatistics(
            size=self.size,
            per_worker=self.per_worker,
            in_flight=sum(self._load.values()),
            restarts=sum(info.restarts for info in children.values()),
            **self._counts,
        )

    # --- tasks --------------------------------------------------------------------------------

    @staticmethod
    def _target(fn: Callable[..., Any] | str) -> tuple[str, str, str | None]:
        target = target_of(fn, require_async=False)
        return (target.module, target.qualname, target.main_path)

    def _name(self, fn: Callable[..., Any] | str) -> list[Any]:
        """How a worker finds ``fn`` (checked here, once per function: SpawnError if it
        cannot be imported by name)."""
        try:
            return self._names[fn]
        except (KeyError, TypeError):
            pass
        name = list(self._target(fn))
        self._names[fn] = name
        return name

    async def submit(self, *args: Any) -> Any:
        """Run the pool's function on ``args`` in a worker and return its result.

        Raises :class:`RemoteError` (type, message, traceback) when the function raised,
        :class:`WorkerLostError` when its worker was lost on every attempt,
        :class:`TaskTimeoutError` past ``task_timeout``.
        """
        if self._fn is None:
            raise ConfigError("this pool has no function: Pool(fn, ...), or use call(fn, ...)")
        return await self._call(None, args)

    async def call(self, fn: Callable[..., Any] | str, *args: Any) -> Any:
        """Run ``fn(*args)`` in a worker (any function importable by name); as :meth:`submit`."""
        name = self._name(fn)
        return await self._call(None if name == self._fn else name, args)

    async def _call(self, name: list[Any] | None, args: tuple[Any, ...]) -> Any:
        if self._closed or self._task_group is None:
            raise ClosedError(f"pool {self._supervisor.id!r} is not open")
        self._counts["submitted"] += 1
        task = _Task(next(self._ids), [name, list(args)])
        attempts = 0
        while True:
            attempts += 1
            task.reset()
            if attempts == 1:
                self._queue.append(task)
            else:
                self._queue.appendleft(task)  # a retry goes first: it waited long enough
            self._work.set()
            try:
                await task.done.wait()
            except anyio.get_cancelled_exc_class():
                await self._cancel(task)
                raise
            if task.ok:
                self._counts["completed"] += 1
                return task.value
            exc = task.value
            if isinstance(exc, self.retry_on) and not isinstance(exc, RemoteError):
                if attempts <= self.max_retries:
                    self._counts["retried"] += 1
                    continue
                self._counts["failed"] += 1
                worker = str(getattr(exc, "child_id", None) or getattr(exc, "worker", "?"))
                raise WorkerLostError(
                    f"task {task.id} gave up after {attempts} attempts "
                    f"(max_retries={self.max_retries}); the last one: {exc}",
                    worker,
                    getattr(exc, "exitcode", None),
                    attempts,
                ) from exc
            self._counts["failed"] += 1
            raise exc

    async def _cancel(self, task: _Task) -> None:
        """The caller was cancelled: a queued task is dropped, a sent one cancelled in its
        worker (bounded: a worker that is gone has no task to cancel)."""
        task.cancelled = True
        worker = task.worker
        if worker is None or task.done.is_set():
            return  # still queued (a dispatcher skips it) or ended already
        self._counts["cancelled"] += 1
        with anyio.CancelScope(shield=True), anyio.move_on_after(1.0):
            try:
                await self._supervisor.emit(worker, CANCEL_EVENT, task.id)
            except IPCError:
                pass  # the worker is gone: so is the task

    def _running(self, worker: str) -> bool:
        child = self._supervisor._children.get(worker)
        return child is not None and child.incarnation is not None and child.incarnation.running

    async def _dispatch(self, worker: str) -> None:
        """One per worker: take queued tasks while it has room, and send them as batches. A
        worker takes its share of the queue (so that idle workers get some too); one being
        restarted takes none."""
        limit = 1 if self.task_timeout is not None else self.per_worker  # timeouts per task
        while True:
            room = self.per_worker - self._load[worker]
            if not self._queue or room <= 0 or not self._running(worker):
                if self._work.is_set():
                    self._work = anyio.Event()
                if not self._running(worker):
                    child = self._supervisor._children.get(worker)
                    if child is not None:
                        with anyio.move_on_after(0.1):  # its state, or a changed queue
                            await child.wait_changed()
                        continue
                await self._work.wait()
                continue
            ready = sum(
                1 for w in self._workers if self._load[w] < self.per_worker and self._running(w)
            )
            share = max(1, -(-len(self._queue) // max(ready, 1)))
            batch: list[_Task] = []
            while self._queue and len(batch) < min(room, share, limit):
                task = self._queue.popleft()
                if not task.cancelled:
                    task.worker = worker
                    batch.append(task)
            if batch:
                self._load[worker] += len(batch)
                assert self._task_group is not None
                self._task_group.start_soon(self._send, worker, batch)
            await anyio.lowlevel.checkpoint()

    async def _send(self, worker: str, batch: list[_Task]) -> None:
        try:
            with anyio.CancelScope() as timer:
                if self.task_timeout is not None:
                    timer.deadline = anyio.current_time() + self.task_timeout
                outcomes = await self._supervisor.request(
                    worker, BATCH_EVENT, [[t.id, *t.data] for t in batch], timeout=_NO_TIMEOUT
                )
            if timer.cancelled_caught:
                self._counts["timed_out"] += len(batch)
                self._kill(worker)
                for task in batch:
                    task.finish(
                        False,
                        TaskTimeoutError(
                            f"task {task.id} ran longer than task_timeout={self.task_timeout} s "
                            f"on {worker!r}; the worker was killed and is being replaced",
                            worker,
                        ),
                    )
                return
        except EncodeError:
            # Some task's arguments cannot travel (checked here, not for every task up front:
            # that would encode each one twice). It fails; the others go back to the queue.
            for task in reversed(batch):
                try:
                    pack_value(task.data, numpy=True)
                except EncodeError as exc:
                    task.finish(
                        False,
                        EncodeError(f"the arguments of task {task.id} cannot be encoded: {exc}"),
                    )
                else:
                    task.worker = None
                    self._queue.appendleft(task)
            return
        except Exception as exc:  # the worker was lost, or the request failed: every task
            for task in batch:
                task.finish(False, exc)
            return
        except BaseException:  # the pool is closing
            for task in batch:
                task.finish(False, ClosedError(f"pool {self._supervisor.id!r} was closed"))
            raise
        finally:
            self._load[worker] -= len(batch)
            self._work.set()
        for task, outcome in zip(batch, outcomes, strict=True):
            if outcome[0] == 0:
                task.finish(True, outcome[1])
            elif outcome[0] == 1:
                task.finish(False, RemoteError(outcome[1], outcome[2], outcome[3]))
            else:
                task.finish(False, ClosedError(f"task {task.id} was cancelled"))

    def _kill(self, worker: str) -> None:
        info = self._supervisor.children.get(worker)
        if info is not None and info.pid is not None:
            try:
                os.kill(info.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    # --- map ----------------------------------------------------------------------------------

    def map(
        self,
        items: Iterable[Any] | AsyncIterable[Any],
        *more: Iterable[Any],
        ordered: bool = True,
    ) -> AsyncIterator[Any]:
        """``fn(item)`` for each item, yielded in the items' order (``ordered=False``: as they
        finish); with more iterables, ``fn(a, b, ...)`` over them zipped (as the builtin
        ``map``; they are then plain iterables). At most ``size * per_worker + buffer`` items
        are started and not yet yielded, however long ``items`` is. The first task that fails
        raises here, and the rest are cancelled; so does leaving the loop early (close the
        iterator: ``aclose()``, or let the pool end)."""
        if self._fn is None:
            raise ConfigError("this pool has no function: Pool(fn, ...)")
        if more:
            if isinstance(items, AsyncIterable):
                raise ConfigError("map zips plain iterables only; zip async ones yourself")
            return self._map(zip(items, *more, strict=False), ordered, star=True)
        return self._map(items, ordered, star=False)

    def map_unordered(
        self, items: Iterable[Any] | AsyncIterable[Any], *more: Iterable[Any]
    ) -> AsyncIterator[Any]:
        """:meth:`map` with results yielded as they finish."""
        return self.map(items, *more, ordered=False)

    async def _map(
        self, items: Iterable[Any] | AsyncIterable[Any], ordered: bool, *, star: bool
    ) -> AsyncIterator[Any]:
        if self._closed or self._task_group is None:
            raise ClosedError(f"pool {self._supervisor.id!r} is not open")
        send, receive = anyio.create_memory_object_stream[tuple[int, bool, Any]](math.inf)
        slots = anyio.Semaphore(self.size * self.per_worker + self.buffer)
        scope = anyio.CancelScope()
        self._task_group.start_soon(self._produce, items, star, send, slots, scope)
        pending: dict[int, tuple[bool, Any]] = {}
        next_index = 0
        try:
            async with receive:
                async for index, ok, value in receive:
                    pending[index] = (ok, value)
                    while True:
                        key = next_index if ordered else index
                        if key not in pending:
                            break
                        ok, value = pending.pop(key)
                        next_index += 1
                        slots.release()
                        if not ok:
                            raise value
                        yield value
                        if not ordered:
                            break
        finally:
            scope.cancel()

    async def _produce(
        self,
        items: Iterable[Any] | AsyncIterable[Any],
        star: bool,
        send: MemoryObjectSendStream[tuple[int, bool, Any]],
        slots: anyio.Semaphore,
        scope: anyio.CancelScope,
    ) -> None:
        async def one(index: int, item: Any) -> None:
            try:
                args = tuple(item) if star else (item,)
                outcome: tuple[int, bool, Any] = (index, True, await self._call(None, args))
            except Exception as exc:
                outcome = (index, False, exc)
            try:
                send.send_nowait(outcome)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass  # the iteration was left

        with scope:
            async with send, anyio.create_task_group() as tasks:
                index = 0
                try:
                    if isinstance(items, AsyncIterable):
                        async for item in items:
                            await slots.acquire()
                            tasks.start_soon(one, index, item)
                            index += 1
                    else:
                        for item in items:
                            await slots.acquire()
                            tasks.start_soon(one, index, item)
                            index += 1
                except Exception as exc:  # the iterable raised: the caller sees it in order
                    try:
                        send.send_nowait((index, False, exc))
                    except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                        pass
