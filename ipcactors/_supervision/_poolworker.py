"""The worker side of a :class:`Pool`: one generic actor per process that runs tasks.

A task is a request ``pool-task`` carrying ``[task_id, function, args]`` (``function`` as
``"module:qualname"``, or ``None`` for the pool's own function). The worker imports each function
by name once, and runs it: an async function in its own cancel scope (the ``pool-cancel`` event
with the task id cancels it), a plain function directly on the event loop: the process is there
for its tasks, and a thread hop per task would cost more than a tiny task itself. A plain
function that runs cannot be interrupted (its cancel is read once it returns; the tasks queued
behind it are cancelled then), which is why a pool runs without heartbeats: a worker busy for
minutes is not a dead one; the supervisor sees a dead worker by its exit, and ``task_timeout``
catches a hung one.

Invariant: the initializer runs once per process, before any task: a plain initializer before
the worker is ready (``spawn`` returns after it), an async one before the first task starts.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import anyio

from .._actor import Actor
from ._target import Target, load_target

__all__ = ["CANCEL_EVENT", "TASK_EVENT", "pool_worker"]

TASK_EVENT = "pool-task"
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

    async def run_task(data: list[Any]) -> Any:
        task_id, name, args = data
        fn = function(name)
        if not initialized.is_set():
            await initialized.wait()
        scope = scopes[task_id] = anyio.CancelScope()
        try:
            with scope:
                if inspect.iscoroutinefunction(fn):
                    return await fn(*args)
                return await anyio.to_thread.run_sync(lambda: fn(*args), abandon_on_cancel=True)
            return None  # cancelled by the pool, which no longer waits for this answer
        finally:
            scopes.pop(task_id, None)

    def cancel(task_id: Any) -> None:
        scope = scopes.get(task_id)
        if scope is not None:
            scope.cancel()

    parent = actor.parent
    assert parent is not None
    parent.on(TASK_EVENT, run_task)  # before the first await: in place once ready
    parent.on(CANCEL_EVENT, cancel)
    if initializer is not None:
        init = load_target(_target(initializer), require_async=False)
        if inspect.iscoroutinefunction(init):
            await init(*initargs)
        else:
            init(*initargs)
    initialized.set()
    await anyio.sleep_forever()
