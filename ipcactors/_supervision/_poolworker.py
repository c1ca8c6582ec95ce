"""The worker side of a :class:`Pool`: one generic actor per process that runs tasks.

The pool talks to its workers in three events of its own, not requests (a request per batch
cost a task group and a reply wait per message in the parent; these cost a frame):

- ``pool-batch`` (parent to worker): ``[[task_id, function, args], ...]``, ``function`` as
  ``[module, qualname, main_path]``, or ``None`` for the pool's own function.
- ``pool-done`` (worker to parent): ``[[task_id, 0, result], [task_id, 1, type, message,
  traceback], [task_id, 2], ...]``: returned, raised, cancelled. Outcomes of several tasks share
  one event, whatever batches they came in.
- ``pool-cancel`` (parent to worker): a list of task ids.

Tasks wait in the worker's own queue, in order. One runner takes them: a plain function runs
right there on the event loop, one after another, without a task or a loop pass per call (the
process is there for its tasks, and a thread hop or a task per call would cost more than a tiny
task itself); an async function runs in a task of its own, in its own cancel scope, side by
side with the rest. The runner sends what ended as one ``pool-done`` when its queue is empty,
and at least every ``FLUSH_SECONDS`` while it runs plain functions (then it also yields to the
loop, five passes if more tasks wait after tasks that held the loop that long: that is when
cancel messages are read, so a task cancelled while it waited in the queue never starts). A
result that cannot be encoded fails its task only (an ``EncodeError`` outcome).

A result is what the function returned when it returned: one that may hold memory the
function can change later (a writable array, a ``bytearray``: a preallocated output refilled on
every call) is sent, and in the kernel, before the next task starts (:func:`_may_change`); an
async function's is copied as it returns (:func:`_snapshot`), since the tasks side by side with
it run before it is sent.

Cancelling: a queued task never starts (outcome ``[id, 2]``); an async one is cancelled at its
next await; a plain one that already runs cannot be interrupted, finishes, and its result is
sent (the pool drops it). A worker busy in a plain function cannot answer heartbeats, which is
why a pool runs without them: the supervisor sees a dead worker by its exit, and
``task_timeout`` catches a hung one.

Invariant: the initializer runs once per process, before any task: a plain initializer before
the worker is ready (``spawn`` returns after it), an async one before the first task starts.
"""

from __future__ import annotations

import inspect
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable
from typing import Any

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup

from .._actor import Actor
from .._errors import EncodeError, FrameTooLargeError, fit_text, message_of, remote_type_of
from .._proto._msgpack import pack_value
from .._transports._backend import being_cancelled, current_backend, is_cancellation
from ._target import Target, load_target

__all__ = ["BATCH_EVENT", "CANCEL_EVENT", "DONE_EVENT", "FLUSH_SECONDS", "pool_worker"]

BATCH_EVENT = "pool-batch"
DONE_EVENT = "pool-done"
CANCEL_EVENT = "pool-cancel"

#: How long a worker running plain functions may hold finished outcomes (and go without reading
#: its messages): short against a round trip, long against a tiny task.
FLUSH_SECONDS = 0.002


class TaskRaisedCancellation(BaseException):
    """An async task raised its backend's cancellation exception, nothing having cancelled
    it: it ends the worker, as a task's other BaseExceptions do."""


def _target(spec: list[Any]) -> Target:
    module, qualname, main_path = spec
    return Target(module, qualname, main_path)


class _Worker:
    """The state of one worker process: its queue, its finished outcomes, its async tasks."""

    def __init__(self, actor: Actor, default: list[Any] | None) -> None:
        parent = actor.parent
        assert parent is not None
        self.parent = parent
        self.default = default
        self.tracebacks = actor.config.remote_tracebacks is not False  # our own parent, on Unix
        # What an exception's message and traceback are cut to when they are too large to send.
        self.cut_to = actor.config.max_frame_size // 4
        self.functions: dict[Any, tuple[Callable[..., Any], bool]] = {}
        self.queue: deque[list[Any]] = deque()
        self.done: list[list[Any]] = []
        self.cancelled: set[Any] = set()  # ids of tasks still queued (or ended) to skip
        self.scopes: dict[Any, anyio.CancelScope] = {}  # async tasks that run
        self.wake = anyio.Event()
        self.must_send = False  # a result in done may change: it goes before the next task
        self.writer_is_a_task = current_backend()[0] == "trio"

    # --- messages (plain handlers: they run inline, as the frame is read) ---------------------

    def on_batch(self, batch: list[list[Any]]) -> None:
        self.queue.extend(batch)
        self.wake.set()

    def on_cancel(self, ids: list[Any]) -> None:
        for task_id in ids:
            scope = self.scopes.get(task_id)
            if scope is not None:
                scope.cancel()
            elif self.queue:  # queued, or ended already: it is skipped if it is still queued
                self.cancelled.add(task_id)

    # --- running ------------------------------------------------------------------------------

    def function(self, name: Any) -> tuple[Callable[..., Any], bool]:
        key = tuple(name) if name is not None else None
        found = self.functions.get(key)
        if found is None:
            spec = name if name is not None else self.default
            if spec is None:
                raise TypeError("the pool has no function: pass one to submit()")
            fn = load_target(_target(spec), require_async=False)
            found = self.functions[key] = (fn, inspect.iscoroutinefunction(fn))
        return found

    def failure(self, task_id: Any, exc: Exception) -> list[Any]:
        text = traceback.format_exc() if self.tracebacks else ""
        return [task_id, 1, remote_type_of(exc), message_of(exc), text]

    async def run(self, task_group: TaskGroup) -> None:
        queue, done, cancelled = self.queue, self.done, self.cancelled
        args: Any = None
        result: Any = None
        while True:
            if not queue or self.must_send:
                if done:
                    await self.flush()
                    continue
                cancelled.clear()  # every id in it ended: none is queued
                if self.parent._shared is not None:
                    # Nothing of the last task kept while we wait: its arguments' places in
                    # shared memory are free once its caller has the result. (Only then: an
                    # early free of a large array costs the allocator more than it saves.)
                    args = result = None
                await self.wake.wait()
                self.wake = anyio.Event()
                continue
            started = time.monotonic()
            while queue:
                task_id, name, args = queue.popleft()
                if task_id in cancelled:
                    cancelled.discard(task_id)
                    done.append([task_id, 2])
                    continue
                try:
                    fn, is_async = self.function(name)
                    if is_async:
                        scope = self.scopes[task_id] = anyio.CancelScope()  # cancellable now
                        task_group.start_soon(self.run_async, task_id, scope, fn, args)
                        continue
                    result = fn(*args)
                    if _may_change(result):  # (before done holds it too: see _may_change)
                        self.must_send = True
                    done.append([task_id, 0, result])
                except Exception as exc:
                    done.append(self.failure(task_id, exc))
                if self.must_send or time.monotonic() - started >= FLUSH_SECONDS:
                    break
            held = time.monotonic() - started  # (how long our tasks held the loop)
            if done:
                await self.flush()
            # Read what came meanwhile (cancels) and start async tasks. After tasks that held
            # the loop a while (FLUSH_SECONDS), with more of the queue to start, more passes:
            # what came meanwhile takes three to be handled (the loop's poll, the transport's
            # callback, the reader's turn: each comes after ours), so a task cancelled while
            # it waited would start. Four, for margin; not after quick tasks (a batch of tiny
            # ones runs at once, and the next batch comes during the flush: 0.6-0.8x W7).
            await anyio.lowlevel.checkpoint()
            if queue and held >= FLUSH_SECONDS:
                for _ in range(4):
                    await anyio.lowlevel.checkpoint()
            if self.writer_is_a_task:
                # The next task may be a plain one, which blocks the loop: the writer must have
                # had its turn at what was sent (on asyncio it writes in the pass just given;
                # on Trio its task may come after ours).
                await self.parent._let_the_writer_take()

    async def run_async(
        self, task_id: Any, scope: anyio.CancelScope, fn: Callable[..., Any], args: list[Any]
    ) -> None:
        outcome: list[Any] | None = [task_id, 2]  # cancelled, unless it ends otherwise
        try:
            with scope:
                outcome = [task_id, 0, await fn(*args)]
        except Exception as exc:
            outcome = self.failure(task_id, exc)
        except (anyio.get_cancelled_exc_class(), BaseExceptionGroup) as exc:
            if not is_cancellation(exc):
                outcome = None  # (a group holding SystemExit and the like: as below)
                raise
            if being_cancelled():
                raise  # cancelled by the pool (the scope caught that) or the worker's end
            # Raised by fn itself, nobody cancelling it (on asyncio, by hand, or awaiting a
            # future someone else cancelled; on Trio, again out of a scope that is over): a
            # BaseException of fn's like SystemExit, which ends the worker (pool.md). Left
            # as it is, anyio takes it for this task's cancellation: it cancels the worker's
            # task group, the worker exits with 0 and the task reads "cancelled". A group of
            # them (a task group of fn's own that a task's stray one ended) alike.
            outcome = None
            raise TaskRaisedCancellation(
                f"task {task_id} raised {type(exc).__name__} itself: nothing cancelled it"
            ) from exc
        except BaseException:
            # SystemExit and the like end this worker: nothing to report, the pool sees the
            # worker lost and retries the task, as for a plain one (not "cancelled").
            outcome = None
            raise
        finally:
            del self.scopes[task_id]
            if outcome is not None:
                if outcome[1] == 0 and _may_change(outcome[2]):
                    # The tasks side by side with this one run before it is sent, and may
                    # refill what it returned: it travels as it is now.
                    try:
                        outcome[2] = _snapshot(outcome[2])
                    except EncodeError as exc:
                        outcome = self.failure(task_id, exc)
                    except RecursionError:  # (nested deeper than any frame may carry)
                        outcome = self.failure(task_id, EncodeError("the result is too deep"))
                self.done.append(outcome)
                self.wake.set()

    async def flush(self) -> None:
        outcomes = self.done[:]
        self.done.clear()
        must_send, self.must_send = self.must_send, False
        try:
            await self.parent.emit(DONE_EVENT, outcomes)
        except (EncodeError, FrameTooLargeError):
            # Some result cannot travel (or all of them are too large together): each goes
            # alone, and one that still cannot fails its task only.
            for outcome in outcomes:
                try:
                    if outcome[1] == 0:
                        pack_value(outcome, numpy=True)
                    await self.parent.emit(DONE_EVENT, [outcome])
                except (EncodeError, FrameTooLargeError) as exc:
                    if outcome[1] == 1:  # an exception whose text cannot travel as it is:
                        # itself, its text escaped and cut to fit
                        task_id, _, kind, message, text = outcome
                        cut = [task_id, 1, fit_text(kind, 200), fit_text(message, self.cut_to)]
                        cut.append(fit_text(text, self.cut_to))  # (its frames first, message last)
                        try:
                            await self.parent.emit(DONE_EVENT, [cut])
                        except (EncodeError, FrameTooLargeError):  # a frame limit that small
                            least = [task_id, 1, fit_text(kind, 40), "", ""]
                            await self.parent.emit(DONE_EVENT, [least])
                        continue
                    # (a result too large is one that cannot be encoded: EncodeError, pool.md)
                    message = f"the result of task {outcome[0]} cannot be sent: {exc}"
                    failed = [outcome[0], 1, remote_type_of(EncodeError()), message, ""]
                    await self.parent.emit(DONE_EVENT, [failed])
        del outcomes
        if must_send:  # in the kernel before the task that could change it runs
            await self.parent._wait_written()


def _snapshot(value: Any) -> Any:
    """``value`` with a copy of every buffer in it that may change (see :func:`_may_change`),
    the same on the wire."""
    kind = type(value)
    if kind in _IMMUTABLE:
        return value
    # Containers as msgpack sends them (a subclass as its base: a namedtuple is a list there).
    if isinstance(value, list):
        return [_snapshot(item) for item in value]
    if isinstance(value, tuple):
        return tuple(_snapshot(item) for item in value)
    if isinstance(value, dict):
        return {key: _snapshot(item) for key, item in value.items()}
    if kind is bytearray:
        return bytearray(value)
    if kind is memoryview:
        return value if value.readonly else memoryview(value.tobytes())
    if _is_ndarray(kind):
        return value if not value.flags.writeable else value.copy()
    if hasattr(kind, "__dlpack__") or getattr(kind, "__array_interface__", None) is not None:
        import numpy as np

        from .._proto._numpy import from_dlpack  # (EncodeError for what cannot travel)

        return np.array(from_dlpack(value) if hasattr(kind, "__dlpack__") else value)
    return value


#: How many values :func:`_may_change` looks at in one result before it assumes the worst.
LOOK_AT_MOST = 64
_IMMUTABLE = frozenset({int, float, str, bytes, bool, type(None)})
# sys.getrefcount of a result in _may_change when only its caller's variable holds it: that
# one, the argument's, and getrefcount's own.
_HELD_BY_THE_CALLER_ONLY = 3


def _is_ndarray(kind: type) -> bool:
    return kind.__name__ == "ndarray" and kind.__module__ == "numpy"


def _may_change(result: Any) -> bool:
    """Whether ``result`` may hold memory its function can change after returning it: a
    writable buffer (a ``bytearray``, a writable ``memoryview`` or numpy array, an object with
    ``__dlpack__``) found among its first :data:`LOOK_AT_MOST` values, or more values than
    that to look at; not a new array or ``bytearray`` of its own that nothing but the caller's
    variable holds (the common case, which then batches as any result). Then it must travel
    before the next task runs. Call it with the result held by one variable of the caller's
    (or one list), nothing else of ours."""
    kind = type(result)
    if kind in _IMMUTABLE:
        return False  # the common case: a number, a string
    new_buffer = kind is bytearray or (_is_ndarray(kind) and result.base is None)
    if new_buffer and sys.getrefcount(result) <= _HELD_BY_THE_CALLER_ONLY:
        return False  # a new buffer no one else holds (the function kept no reference to it)
    pending = [result]
    looked = 0
    while pending:
        value = pending.pop()
        looked += 1
        if looked > LOOK_AT_MOST:
            return True
        kind = type(value)
        if kind in _IMMUTABLE:
            continue
        if isinstance(value, list | tuple):  # (subclasses too: namedtuple, say)
            pending.extend(value)
        elif isinstance(value, dict):  # (OrderedDict, defaultdict...)
            pending.extend(value.values())
        elif kind is memoryview:
            if not value.readonly:
                return True
        elif kind is bytearray or hasattr(kind, "__dlpack__"):
            numpy_flags = getattr(value, "flags", None)
            if numpy_flags is None or getattr(numpy_flags, "writeable", True):
                return True
        elif getattr(kind, "__array_interface__", None) is not None:
            return True  # another array-like: assume it may change
    return False


async def pool_worker(
    actor: Actor,
    default: list[Any] | None,
    initializer: list[Any] | None,
    initargs: list[Any],
) -> None:
    """Run in each worker process: register the task handlers, run the initializer, serve."""
    worker = _Worker(actor, default)
    worker.parent.on(BATCH_EVENT, worker.on_batch)  # before the first await: in place once ready
    worker.parent.on(CANCEL_EVENT, worker.on_cancel)
    if default is not None:  # loaded now: one its workers cannot load fails the pool's start
        worker.function(None)
    if initializer is not None:
        init = load_target(_target(initializer), require_async=False)
        if inspect.iscoroutinefunction(init):
            await init(*initargs)
        else:
            init(*initargs)
    async with anyio.create_task_group() as task_group:
        await worker.run(task_group)
