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
  what it took as one ``pool-batch`` event (at most ``per_worker // 2`` tasks, so that the next
  batch already waits in the worker when it ends one): at most ``size * per_worker`` tasks are
  in workers at once, a free worker gets the next task, a restarting one none. With a
  ``task_timeout`` each task travels alone, under its own timer.
- A task in flight is in exactly one worker's ``_sent`` (by id) until it is settled: by its
  outcome (a ``pool-done`` event, handled inline as it is read: no task per result), by the
  exit of the process it was sent to (``_watch``), by the loss of the connection it was sent
  on, or by its timer. Whichever comes first takes it out; the others find nothing. Per task
  the parent keeps one object and, for ``submit``, one event; ``map`` starts no task per item.
- A task is retried only after a lost worker (``retry_on``: :class:`ConnectionLostError`, which
  includes :class:`ChildExitedError`, by default), at most ``max_retries`` times, from the head
  of the queue (the next worker with room takes it); a loss shared with other tasks in flight
  on that worker counts against none of them, and each runs alone from then on (``isolated``:
  on a worker with nothing else in flight, which takes nothing else meanwhile; they wait in a
  queue of their own, for which one worker at most stops taking tasks, see ``_isolate``);
  never after the function raised (:class:`RemoteError`), nor after the pool's own refusals
  (arguments that cannot travel, its close), whatever ``retry_on`` names: ``_finish``
  retries only what it is told was lost.
  When retries run out the caller gets :class:`WorkerLostError` naming the worker, its exit,
  and the attempts.
- A task past ``task_timeout`` has its worker SIGKILLed (the supervisor replaces it) and fails
  with :class:`TaskTimeoutError`, not retried unless ``retry_on`` includes it: a task that hung
  once will likely hang again. The other tasks of that worker count as lost and are retried,
  that loss not counted against them.
- Cancelling a caller (``submit``, ``call``, a ``map`` left early) sends the worker a cancel
  message that cancels the task's scope there: an async function at its next await; a plain
  function that already runs finishes first (its result is dropped).
- ``map`` starts at most ``size * per_worker + buffer`` items that it has not yielded yet, so an
  infinite iterable runs in bounded memory. A plain iterable is read by the loop itself as it
  yields; an async one by one task of the pool's, which waits while the map is full.
- Leaving the pool settles every task still queued or in flight with :class:`ClosedError`
  (callers in other tasks, and unfinished maps, raise it), then stops the workers.
"""

from __future__ import annotations

import itertools
import os
import signal
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from types import TracebackType
from typing import Any

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup

from .._config import Config, check_seconds, shown
from .._core._server import Client
from .._core._stats import PoolStatistics
from .._errors import (
    ChildExitedError,
    ClosedError,
    ConfigError,
    ConnectionLostError,
    EncodeError,
    FrameTooLargeError,
    IPCError,
    RemoteError,
    TaskTimeoutError,
    WorkerLostError,
)
from .._proto._msgpack import pack_value
from ._children import Incarnation, describe_exit
from ._poolworker import BATCH_EVENT, CANCEL_EVENT, DONE_EVENT, pool_worker
from ._supervisor import Supervisor
from ._target import target_of

__all__ = ["Pool"]

#: What a request to a worker may wait at most: the pool bounds tasks with task_timeout instead.
_NO_TIMEOUT = 365 * 24 * 3600.0


def _check_count(name: str, value: object, minimum: int) -> int:
    if type(value) is not int or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {shown(value)}")
    return value


class _Task:
    """One task of a caller, from queued to done (queued again for a retry)."""

    __slots__ = (
        "alone",
        "attempts",
        "cancelled",
        "data",
        "finished",
        "free_losses",
        "id",
        "incarnation",
        "index",
        "isolated",
        "notify",
        "ok",
        "timer",
        "value",
        "via",
        "waiter",
        "worker",
    )

    def __init__(self, id: int, data: list[Any]) -> None:
        self.id = id
        self.data = data  # [function name or None, args]
        self.attempts = 0  # times sent to a worker
        self.free_losses = 0  # of those, the losses it shared with other tasks (not counted)
        self.alone = False  # it could not travel with others (a frame too large): alone
        # Lost with others in flight: it runs on a worker with nothing else in flight.
        self.isolated = False
        self.cancelled = False  # its caller is gone: its outcome is dropped, never retried
        self.finished = False
        self.ok = False
        self.value: Any = None
        self.worker: str | None = None  # where it is (None: queued)
        self.incarnation: Incarnation | None = None  # the process it was sent to
        self.via: Client | None = None  # the connection it was sent on
        self.timer: anyio.CancelScope | None = None  # task_timeout's
        self.index = 0  # its place in a map
        self.waiter: anyio.Event | None = None  # submit's; or:
        self.notify: Callable[[_Task], None] | None = None  # map's, PoolExecutor's


class Pool:
    """Worker processes that run ``fn(*args)`` for you, surviving the death of any of them.

    ``fn`` is a function (plain or async) importable by module and name, like a supervisor's
    target (or ``"module:function"``); arguments and results travel as msgpack, numpy arrays
    included, never pickle. A plain function runs on the worker's event loop (no thread hop per
    task); an async function runs in its own cancel scope there.

    Parameters (defaults and why):

    - ``size``: worker processes (``os.cpu_count()``: one per core for CPU-bound work), at
      most the supervisor's ``max_children`` (1,000 unless given).
    - ``per_worker``: tasks in flight per worker (1: a CPU-bound task has the process to
      itself; raise it for async or I/O-bound functions, or tiny tasks, to hide round trips:
      tasks travel in batches of up to ``per_worker // 2``, one message each way, so 16 or
      more for tasks of microseconds; keep it small for large arguments or results).
    - ``max_retries``: attempts after the first when a worker is lost mid-task (2); a loss
      shared with other tasks in flight on that worker does not count (see docs/pool.md).
    - ``retry_on``: the errors that count as a lost worker ((:class:`ConnectionLostError`,),
      which includes :class:`ChildExitedError`). Add :class:`TaskTimeoutError` to retry timeouts.
    - ``task_timeout``: seconds a task may run before its worker is killed and replaced
      (``None``: no limit).
    - ``initializer``, ``initargs``: run once in each worker process before its first task
      (load a model once). Importable by name like ``fn``.
    - ``buffer``: how many results ``map`` may hold beyond those in flight
      (``4 * size * per_worker``: an ordered map whose next result is late keeps the workers
      busy with the ones after it).
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
        self.task_timeout = (
            None if task_timeout is None else check_seconds("task_timeout", task_timeout)
        )
        self.buffer = 4 * self.size * self.per_worker if buffer is None else buffer
        _check_count("buffer", self.buffer, 0)
        self._names: dict[Any, list[Any]] = {}
        self._fn = None if fn is None else self._name(fn)
        init = None if initializer is None else list(self._target(initializer))
        if not isinstance(initargs, tuple | list):  # a str would be split into characters
            raise ConfigError(f"initargs must be a tuple or list, got {shown(initargs)}")
        # Heartbeats off unless asked for: a worker running a plain function for minutes
        # cannot answer them, and is not dead (its exit tells; task_timeout catches a hang).
        overrides.setdefault("heartbeat_interval", None)
        if "strategy" in overrides:
            raise ConfigError(
                f"a pool's supervisor is always one_for_one (a worker's loss is its own), "
                f"got strategy={shown(overrides['strategy'])}"
            )
        self._supervisor = Supervisor(
            "one_for_one",
            self.size + 2 if max_restarts is None else max_restarts,
            max_seconds,
            id=id,
            config=config,
            preload=preload,
            **overrides,
        )
        if self.size > self._supervisor.max_children:
            # Checked before the names are made: a size of 10**400 would never finish them.
            raise ConfigError(
                f"size must be at most the supervisor's max_children "
                f"({self._supervisor.max_children}), got {shown(self.size)}: pass "
                "max_children= for more"
            )
        self._worker_args = (self._fn, init, list(initargs))
        self._workers = [f"{id}-{n}" for n in range(self.size)]
        # What each worker has in flight, by task id (its load is their number).
        self._sent: dict[str, dict[int, _Task]] = {worker: {} for worker in self._workers}
        # The process of each worker we killed (a task past task_timeout): it takes no task
        # from then on, though it looks alive until its exit is seen.
        self._killed: dict[str, Incarnation] = {}
        self._queue: deque[_Task] = deque()
        self._isolated: deque[_Task] = deque()  # tasks to run alone (see _dispatch)
        self._isolating: set[str] = set()  # the workers that run an isolated task
        self._drainer: str | None = None  # the worker emptying itself for the isolated tasks
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
            self._supervisor.on(DONE_EVENT, self._on_done)
            self._supervisor.server.on("disconnect", self._on_disconnect)
            await self._spawn_all()
            self._task_group = anyio.create_task_group()
            await self._task_group.__aenter__()
            for worker in self._workers:
                self._task_group.start_soon(self._dispatch, worker)
                self._task_group.start_soon(self._watch, worker)
        except BaseException as exc:
            await self._supervisor.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    async def _spawn_all(self) -> None:
        """Spawn every worker at once; the first that fails stops the rest, and what it
        raised is raised as itself (not in an exception group: ``SpawnError``,
        ``ChildExitedError``)."""
        failures: list[Exception] = []

        async def spawn(worker: str) -> None:
            try:
                await self._supervisor.spawn(pool_worker, *self._worker_args, id=worker)
            except Exception as exc:
                failures.append(exc)
                spawns.cancel_scope.cancel()

        async with anyio.create_task_group() as spawns:
            for worker in self._workers:
                spawns.start_soon(spawn, worker)
        if failures:
            raise failures[0]

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        """Leave: tasks still queued or in workers fail with :class:`ClosedError` (unfinished
        ``map`` iterations raise it), then the workers stop."""
        self._closed = True
        assert self._task_group is not None
        self._task_group.cancel_scope.cancel()
        raised: BaseException | None = None
        try:
            await self._task_group.__aexit__(None, None, None)
        except BaseException as error:
            # An enclosing scope's cancellation (a deadline, the supervisor's close) met at
            # the group's exit: the block's own exception, if any, goes on instead, and the
            # supervisor's exit is shown it otherwise (its actor takes its own close's).
            raised = error
        finally:
            failure = self._supervisor._failure  # (it gave up: the tasks left learn why)
            closed = ClosedError(
                f"pool {self._supervisor.id!r} was closed"
                + ("" if failure is None else f": {type(failure).__name__}: {failure}")
            )
            closed.__cause__ = failure
            for sent in self._sent.values():
                while sent:
                    self._finish(sent.popitem()[1], False, closed)
            for queue in (self._isolated, self._queue):  # callers (other tasks) learn why
                while queue:
                    self._finish(queue.popleft(), False, closed)
            if exc is None and raised is not None:
                exc_type, exc, tb = type(raised), raised, raised.__traceback__
            result = await self._supervisor.__aexit__(exc_type, exc, tb)
        if exc is raised and raised is not None and not result:
            raise raised
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
            in_flight=sum(len(sent) for sent in self._sent.values()),
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

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"pool {self._supervisor.id!r} is closed")
        if self._task_group is None:  # (misuse: the IPCError reference.md says)
            raise IPCError(f"use the pool inside 'async with' first: async with {self!r}")

    def _enqueue(
        self,
        name: list[Any] | None,
        args: tuple[Any, ...],
        notify: Callable[[_Task], None] | None = None,
    ) -> _Task:
        """Queue a task (in the pool's loop); ``notify(task)`` once it is settled."""
        self._check_open()
        task = _Task(next(self._ids), [name, list(args)])
        task.notify = notify
        self._counts["submitted"] += 1
        self._queue.append(task)
        self._work.set()
        return task

    async def _call(self, name: list[Any] | None, args: tuple[Any, ...]) -> Any:
        task = self._enqueue(name, args)
        waiter = task.waiter = anyio.Event()
        try:
            await waiter.wait()
        except anyio.get_cancelled_exc_class():
            if not task.finished:
                with anyio.CancelScope(shield=True), anyio.move_on_after(1.0):
                    await self._cancel([task])
            raise
        if task.ok:
            return task.value
        raise task.value

    def _finish(
        self, task: _Task, ok: bool, value: Any, *, lost: bool = False, shared: bool = False
    ) -> None:
        """Settle ``task`` (taken off its worker, or the queue): done, or queued again at the
        head for a retry while it has retries left, when it was ``lost`` (its worker's
        connection or process, or its deadline) with an error ``retry_on`` names. The pool's
        own refusals (arguments that cannot travel, its close) are never retried, whatever
        ``retry_on`` says: nothing was lost, and a retry would only meet them again. A loss
        ``shared`` with other tasks in flight on its worker may be another's doing: it does
        not count, and the task goes alone next (``isolated``), where a loss is its own."""
        if task.finished:
            return
        if task.timer is not None:
            task.timer.cancel()
            task.timer = None
        if task.isolated and task.worker is not None:
            self._isolating.discard(task.worker)
        task.worker = None
        if task.cancelled:  # its caller is gone
            task.finished = True
            return
        if ok:
            self._counts["completed"] += 1
        elif lost and isinstance(value, self.retry_on):
            if shared:
                task.free_losses += 1
                task.isolated = True
            if task.attempts - task.free_losses <= self.max_retries:
                self._counts["retried"] += 1
                if task.isolated:
                    self._isolated.append(task)
                else:
                    self._queue.appendleft(task)  # a retry goes first: it waited long enough
                self._work.set()
                return
            self._counts["failed"] += 1
            worker = str(getattr(value, "child_id", None) or getattr(value, "worker", "?"))
            shared_losses = (
                f", {task.free_losses} of them lost beside other tasks and not counted"
                if task.free_losses
                else ""
            )
            gave_up = WorkerLostError(
                f"task {task.id} gave up after {task.attempts} attempts "
                f"(max_retries={self.max_retries}{shared_losses}); the last one: {value}",
                worker,
                getattr(value, "exitcode", None),
                task.attempts,
            )
            gave_up.__cause__ = value
            value = gave_up
        else:
            self._counts["failed"] += 1
        task.finished = True
        task.ok = ok
        task.value = value
        if task.waiter is not None:
            task.waiter.set()
        elif task.notify is not None:
            task.notify(task)

    def _drop(self, task: _Task) -> None:
        """Its caller is gone: counted as cancelled, once, unless it finished first (then it
        counts as what it came to)."""
        if not task.cancelled and not task.finished:
            task.cancelled = True
            self._counts["cancelled"] += 1

    async def _cancel(self, tasks: Iterable[_Task]) -> None:
        """Their callers are gone: a queued task is dropped (a dispatcher skips it), a sent one
        cancelled in its worker (one message per worker; a worker that is gone has no task to
        cancel)."""
        by_worker: dict[str, list[int]] = {}
        for task in tasks:
            self._drop(task)
            if task.worker is not None and not task.finished:
                by_worker.setdefault(task.worker, []).append(task.id)
        for worker, ids in by_worker.items():
            try:
                await self._supervisor.emit(worker, CANCEL_EVENT, ids)
            except IPCError:
                pass  # the worker is gone: so are its tasks

    # --- workers ------------------------------------------------------------------------------

    def _running(self, worker: str) -> Incarnation | None:
        child = self._supervisor._children.get(worker)
        incarnation = child.incarnation if child is not None else None
        if incarnation is None or not incarnation.running:
            return None
        return None if self._killed.get(worker) is incarnation else incarnation

    async def _dispatch(self, worker: str) -> None:
        """One per worker: take queued tasks while it runs and has room, and send them as
        batches. A batch is at most half of ``per_worker``, so that the next one already waits
        in the worker when it ends one; and at most the worker's share of the queue, so that
        the other free workers get some too. A worker being restarted takes none. A task to
        run alone (``isolated``) goes first to a worker with nothing in flight (see
        :meth:`_isolate`)."""
        sent = self._sent[worker]
        chunk = 1 if self.task_timeout is not None else max(1, self.per_worker // 2)
        queue = self._queue
        while True:
            incarnation = self._running(worker)
            if incarnation is not None and self._isolate(worker):
                task = self._isolated.popleft()
                batch = [self._take(task, worker, incarnation)]
                self._isolating.add(worker)
                self._drainer = None  # (another one, for the next)
            else:
                draining = worker in self._isolating or worker == self._drainer
                room = 0 if draining else self.per_worker - len(sent)
                if not queue or room <= 0 or incarnation is None:
                    if self._work.is_set():
                        self._work = anyio.Event()
                    if incarnation is None:
                        child = self._supervisor._children.get(worker)
                        if child is not None:
                            with anyio.move_on_after(0.1):  # its state, or a changed queue
                                await child.wait_changed()
                            continue
                    await self._work.wait()
                    continue
                ready = sum(1 for w in self._workers if len(self._sent[w]) < self.per_worker)
                size = min(room, chunk, -(-len(queue) // max(ready, 1)))
                batch = []
                while queue and len(batch) < size:
                    if batch and queue[0].alone:
                        break
                    task = queue.popleft()
                    if task.cancelled:
                        continue
                    batch.append(self._take(task, worker, incarnation))
                    if task.alone:
                        break
            if batch:
                assert incarnation.client is not None
                await self._send(worker, incarnation.client, batch)
            await anyio.lowlevel.checkpoint()  # the other dispatchers, and the results

    def _isolate(self, worker: str) -> bool:
        """Whether running ``worker`` takes the next isolated task now. Such a task runs on a
        worker with nothing in flight, which takes nothing else meanwhile. While one waits,
        one worker not running such a task, the ``_drainer`` (the one with the least in
        flight), takes nothing new so that it empties; the others go on with the queue. (A
        worker running one may be at it for long: the next does not wait for it.)"""
        isolated = self._isolated
        while isolated and isolated[0].cancelled:
            isolated.popleft()  # (its caller is gone)
        if not isolated:
            self._drainer = None
            return False
        if not self._sent[worker] and worker not in self._isolating:
            return True
        if self._drainer is None or self._drainer in self._isolating:
            free = [w for w in self._workers if w not in self._isolating]
            self._drainer = min(free, key=lambda w: len(self._sent[w])) if free else None
        return False

    def _take(self, task: _Task, worker: str, incarnation: Incarnation) -> _Task:
        """``task`` goes to ``worker``'s process ``incarnation``, on its connection."""
        task.attempts += 1
        task.worker = worker
        task.incarnation = incarnation
        task.via = incarnation.client
        self._sent[worker][task.id] = task
        return task

    async def _send(self, worker: str, client: Client, batch: list[_Task]) -> None:
        sent = self._sent[worker]
        try:
            await client.emit(BATCH_EVENT, [[task.id, *task.data] for task in batch])
        except (EncodeError, FrameTooLargeError) as exc:
            # Some task's arguments cannot travel (checked now, not for every task up front:
            # that would encode each one twice), or the batch is too large as one frame. A
            # task that cannot travel alone fails; the others go back, each to go alone.
            self._isolating.discard(worker)
            for task in reversed(batch):
                del sent[task.id]
                task.attempts -= 1
                task.worker = None
                try:
                    if len(batch) == 1:
                        raise exc
                    pack_value(task.data, numpy=True)
                except (EncodeError, FrameTooLargeError) as error:
                    how = "encoded" if isinstance(error, EncodeError) else "sent"
                    self._finish(
                        task,
                        False,
                        EncodeError(f"the arguments of task {task.id} cannot be {how}: {error}"),
                    )
                else:
                    task.alone = True
                    self._queue.appendleft(task)
            self._work.set()
            return
        except IPCError as exc:  # the connection is gone: the tasks were not sent
            self._lost(worker, exc, via=client)
            return
        if self.task_timeout is not None:
            assert self._task_group is not None
            for task in batch:
                task.timer = anyio.CancelScope()
                self._task_group.start_soon(self._time, worker, task, task.timer)

    async def _time(self, worker: str, task: _Task, timer: anyio.CancelScope) -> None:
        """A task past ``task_timeout``: its worker is killed (the supervisor replaces it, and
        its other tasks count as lost) and it fails."""
        assert self.task_timeout is not None
        with timer:
            await anyio.sleep(self.task_timeout)
            if self._sent[worker].pop(task.id, None) is not task:
                return
            self._counts["timed_out"] += 1
            self._kill(worker)
            task.timer = None
            self._finish(
                task,
                False,
                TaskTimeoutError(
                    f"task {task.id} ran longer than task_timeout={self.task_timeout} s "
                    f"on {worker!r}; the worker was killed and is being replaced",
                    worker,
                ),
                lost=True,
            )

    def _on_done(self, outcomes: Any, client: Client) -> None:
        """A worker's ``pool-done``: the outcomes of its tasks (inline, as the frame is read)."""
        sent = self._sent.get(client.id)
        if sent is None or not isinstance(outcomes, list):
            return
        for outcome in outcomes:
            task = sent.pop(outcome[0], None)
            if task is None:
                continue  # settled already (timed out, or its worker counted as lost)
            code = outcome[1]
            if code == 0:
                self._finish(task, True, outcome[2])
            elif code == 1:
                self._finish(task, False, RemoteError(outcome[2], outcome[3], outcome[4]))
            else:
                self._finish(task, False, ClosedError(f"task {task.id} was cancelled"))
        self._work.set()

    async def _watch(self, worker: str) -> None:
        """One per worker: when a process of it exits, its tasks in flight are lost."""
        child = self._supervisor._children[worker]
        while True:
            incarnation = child.incarnation
            if incarnation is None:
                await child.wait_changed()
                continue
            await incarnation.exited.wait()
            error = ChildExitedError(
                f"worker {worker!r} {describe_exit(incarnation.exitcode)} while running the task",
                worker,
                incarnation.exitcode,
            )
            self._lost(worker, error, incarnation=incarnation)
            if self._killed.get(worker) is incarnation:
                del self._killed[worker]
            while child.incarnation is incarnation:
                await child.wait_changed()

    def _on_disconnect(self, client: Client) -> None:
        if client.id in self._sent and self._task_group is not None and not self._closed:
            self._task_group.start_soon(self._disconnected, client)

    async def _disconnected(self, client: Client) -> None:
        """A worker's connection dropped: if its process exited, :meth:`_watch` tells (soon);
        else its tasks on that connection are lost."""
        worker = client.id
        if not any(task.via is client for task in self._sent[worker].values()):
            return
        child = self._supervisor._children.get(worker)
        incarnation = child.incarnation if child is not None else None
        if incarnation is not None:
            await incarnation.exited_after_disconnect()
        await anyio.lowlevel.checkpoint()  # _watch first, if it exited
        error = ConnectionLostError(f"connection to worker {worker!r} was lost during the task")
        self._lost(worker, error, via=client)

    def _lost(
        self,
        worker: str,
        error: Exception,
        *,
        incarnation: Incarnation | None = None,
        via: Client | None = None,
    ) -> None:
        """The tasks ``worker`` has in flight in ``incarnation`` (or sent on ``via``) are lost."""
        sent = self._sent[worker]
        lost = [
            task
            for task in sent.values()
            if (task.incarnation is incarnation if via is None else task.via is via)
        ]
        killed = self._killed.get(worker)  # (for another task's deadline: settled already)
        for task in lost:
            del sent[task.id]
            # Lost beside other tasks (whose doing, nobody can tell), or with a process killed
            # for another task's deadline (not its doing): not counted (see _finish).
            shared = len(lost) > 1 or (killed is not None and task.incarnation is killed)
            self._finish(task, False, error, lost=True, shared=shared)
        self._work.set()

    def _kill(self, worker: str) -> None:
        child = self._supervisor._children.get(worker)
        incarnation = child.incarnation if child is not None else None
        if incarnation is None:
            return
        self._killed[worker] = incarnation  # (a retry must not go there meanwhile)
        if incarnation.pid is not None:
            try:
                os.kill(incarnation.pid, signal.SIGKILL)
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
        self._check_open()
        state = _MapState(self, star, self.size * self.per_worker + self.buffer, ordered)
        if isinstance(items, AsyncIterable):
            assert self._task_group is not None
            self._task_group.start_soon(state.produce, items)
        else:
            state.iterator = iter(items)
        try:
            while True:
                if state.iterator is not None:
                    state.feed()
                task = state.next()
                if task is None:
                    if state.exhausted and not state.tasks:
                        return
                    state.wakeup = anyio.Event()
                    await state.wakeup.wait()
                    continue
                if not task.ok:
                    raise task.value
                yield task.value
        finally:
            state.close()


class _MapState:
    """One ``map``: its tasks by index, started and not yet yielded (at most ``limit``); no
    task per item, one event per wait."""

    def __init__(self, pool: Pool, star: bool, limit: int, ordered: bool) -> None:
        self.pool = pool
        self.star = star
        self.limit = limit
        self.ordered = ordered
        self.tasks: dict[int, _Task] = {}
        self.done: deque[_Task] = deque()  # finished, for an unordered map
        self.started = 0
        self.yielded = 0  # in order: the index of the next one
        self.exhausted = False
        self.iterator: Iterator[Any] | None = None
        self.wakeup: anyio.Event | None = None  # set when a task finishes
        self.room: anyio.Event | None = None  # set when one is yielded (an async producer)
        self.scope = anyio.CancelScope()

    def notify(self, task: _Task) -> None:
        if not self.ordered:
            self.done.append(task)
        self.wake()

    def wake(self) -> None:
        if self.wakeup is not None:
            self.wakeup.set()
            self.wakeup = None

    def start(self, item: Any) -> None:
        pool = self.pool
        args = list(item) if self.star else [item]
        task = _Task(next(pool._ids), [None, args])
        task.index = self.started
        task.notify = self.notify
        self.tasks[self.started] = task
        self.started += 1
        pool._counts["submitted"] += 1
        pool._queue.append(task)

    def fail(self, exc: Exception) -> None:
        """The iterable raised: a task that failed with it takes the next place."""
        task = _Task(-1, [])
        task.index = self.started
        task.finished = True
        task.value = exc
        self.tasks[self.started] = task
        self.started += 1
        self.exhausted = True
        self.notify(task)

    def feed(self) -> None:
        """Start items of a plain iterable while fewer than ``limit`` wait to be yielded."""
        iterator = self.iterator
        assert iterator is not None
        count = self.started
        while not self.exhausted and self.started - self.yielded < self.limit:
            try:
                item = next(iterator)
            except StopIteration:
                self.exhausted = True
            except Exception as exc:
                self.fail(exc)
            else:
                self.start(item)
        if self.started != count:
            self.pool._work.set()

    async def produce(self, items: AsyncIterable[Any]) -> None:
        """Start the items of an async iterable (in a task of the pool's: it may wait)."""
        with self.scope:
            try:
                iterator = aiter(items)
                while True:
                    while self.started - self.yielded >= self.limit:  # (before taking one)
                        self.room = anyio.Event()
                        await self.room.wait()
                    try:
                        item = await anext(iterator)
                    except StopAsyncIteration:
                        break
                    self.start(item)
                    self.pool._work.set()
            except Exception as exc:
                self.fail(exc)
            self.exhausted = True
            self.wake()

    def next(self) -> _Task | None:
        """The next task to yield (finished), if any."""
        if self.ordered:
            task = self.tasks.get(self.yielded)
            if task is None or not task.finished:
                return None
        else:
            if not self.done:
                return None
            task = self.done.popleft()
        del self.tasks[task.index]
        self.yielded += 1
        if self.room is not None:
            self.room.set()
            self.room = None
        return task

    def close(self) -> None:
        """The iteration ended: the producer stops, unfinished tasks are cancelled."""
        self.scope.cancel()
        unfinished = [task for task in self.tasks.values() if not task.finished]
        self.tasks.clear()
        for task in unfinished:
            self.pool._drop(task)
        sent = [task for task in unfinished if task.worker is not None]
        if sent and self.pool._task_group is not None and not self.pool._closed:
            self.pool._task_group.start_soon(self.pool._cancel, sent)
