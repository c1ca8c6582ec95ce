"""The worker side of a :class:`Pool`: one generic actor per process that runs tasks.

Tasks come in batches: a request ``pool-batch`` carries ``[[task_id, function, args], ...]``
(``function`` as ``[module, qualname, main_path]``, or ``None`` for the pool's own function) and
is answered, once every task of it ended, with one outcome per task: ``[0, result]``,
``[1, type, message, traceback]`` (the function raised) or ``[2]`` (cancelled). One message per
batch instead of one per task is what makes tiny tasks cheap. The worker imports each function
by name once. An async function runs in its own cancel scope (the ``pool-cancel`` event with the
task id cancels it), the tasks of a batch side by side; a plain function runs directly on the
event loop, one after another: the process is there for its tasks, and a thread hop per task
would cost more than a tiny task itself. A plain function that runs cannot be interrupted (its
cancel is read once it returns; the tasks queued behind it are cancelled then), which is why a
pool runs without heartbeats: a worker busy for minutes is not a dead one; the supervisor sees a
dead worker by its exit, and ``task_timeout`` catches a hung one.

Invariant: the initializer runs once per process, before any task: a plain initializer before
the worker is ready (``spawn`` returns after it), an async one before the first task starts.
"""

from __future__ import annotations

import inspect
import traceback
from collections.abc import Callable
from typing import Any

import anyio
import anyio.lowlevel

from .._actor import Actor
from ._target import Target, load_target

__all__ = ["BATCH_EVENT", "CANCEL_EVENT", "pool_worker"]

BATCH_EVENT = "pool-batch"
CANCEL_EVENT = "pool-cancel"


def _target(spec: list[Any]) -> Target:
    module, qualname, main_path = spec
    return Target(module, qualname, main_path)


async def pool_worker(
    actor: Actor,
    default: list[Any] | None,
    initializer: list[Any] | None,
    initargs: list[Any],
) -> None:
    """Run in each worker process: register the task handlers, run the initializer, serve."""
    functions: dict[Any, Callable[..., Any]] = {}
    scopes: dict[int, anyio.CancelScope] = {}
    initialized = anyio.Event()

    def function(name: Any) -> Callable[..., Any]:
        key = tuple(name) if name is not None else None
        fn = functions.get(key)
        if fn is None:
            spec = name if name is not None else default
            if spec is None:
                raise TypeError("the pool has no function: pass one to submit()")
            fn = functions[key] = load_target(_target(spec), require_async=False)
        return fn

    async def run(task: list[Any], outcomes: list[Any], index: int) -> None:
        task_id, name, args = task
        scope = scopes[task_id] = anyio.CancelScope()
        try:
            with scope:
                fn = function(name)
                if inspect.iscoroutinefunction(fn):
                    outcomes[index] = [0, await fn(*args)]
                else:
                    await anyio.lowlevel.checkpoint()  # a task cancelled while queued stops here
                    outcomes[index] = [0, fn(*args)]
        except Exception as exc:
            text = traceback.format_exc() if tracebacks else ""
            outcomes[index] = [1, type(exc).__qualname__, str(exc), text]
        finally:
            scopes.pop(task_id, None)

    async def run_batch(batch: list[list[Any]]) -> list[Any]:
        if not initialized.is_set():
            await initialized.wait()
        outcomes: list[Any] = [[2]] * len(batch)  # cancelled, unless it ends otherwise
        if len(batch) == 1:
            await run(batch[0], outcomes, 0)
        else:
            async with anyio.create_task_group() as task_group:
                for index, task in enumerate(batch):
                    task_group.start_soon(run, task, outcomes, index)
        return outcomes

    def cancel(task_id: Any) -> None:
        scope = scopes.get(task_id)
        if scope is not None:
            scope.cancel()

    parent = actor.parent
    assert parent is not None
    tracebacks = actor.config.remote_tracebacks is not False  # our own parent, on Unix
    parent.on(BATCH_EVENT, run_batch)  # before the first await: in place once ready
    parent.on(CANCEL_EVENT, cancel)
    if initializer is not None:
        init = load_target(_target(initializer), require_async=False)
        if inspect.iscoroutinefunction(init):
            await init(*initargs)
        else:
            init(*initargs)
    initialized.set()
    await anyio.sleep_forever()
