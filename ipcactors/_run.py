"""``ipcactors.run``: the entry point that runs an async function with logging and signals set up.

Invariants:
- The first SIGINT, SIGTERM or SIGHUP (the last only where it has its default disposition,
  see ``_signals``) stops every supervisor's children gracefully (in reverse start order,
  each bounded; the requests in flight to them are answered), then closes every actor
  gracefully (flushing, bounded by each actor's ``close_timeout``) and then cancels the main
  function; a second one SIGKILLs the children and cancels at once, without flushing.
- That holds from the moment ``run`` is called: a signal that comes before its event loop
  watches (importing the backend, starting the loop) or after (the loop's teardown) is kept
  and taken as if received there, never met by Python's defaults (a ``KeyboardInterrupt``
  traceback, death by SIGTERM).
- Either way the process exits with status 128 + the signal number, without a traceback for
  what the shutdown itself causes (``_exits.caused_by_shutdown``): a :class:`ClosedError` from
  a supervisor or actor the shutdown closed (e.g. the next ``request``), or a
  :class:`ChildExitedError` of a request to a child it stopped, ends the main function and is
  not an error. Any other exception still comes out. Code after an actor's or supervisor's
  ``async with`` block does not run once the shutdown started (see ``_runtime``).
- Signals reach only the main thread: ``run`` in another thread runs without handling them.
- ``sys.exit(n)`` in a handler exits the process with ``n``, as in ``main`` (and as in a
  supervised child), whatever task groups it crossed on its way out.
"""

from __future__ import annotations

import inspect
import signal
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Any, Literal, TypeVar

import anyio
from loguru import logger

from ._errors import ChildExitedError, ClosedError, ConfigError, IPCError
from ._exits import (
    caused_by_shutdown,
    leaving,
    quiet_exit_reports,
    quiet_unstarted_tasks,
)
from ._runtime import Runtime, close_in_order, set_runtime
from ._supervision._target import refuse_in_main_script
from ._transports._backend import check_backend, running_asyncio_loop, thread_runs_trio

__all__ = ["run"]

T = TypeVar("T")

_FORMAT = "<green>{time:HH:mm:ss.SSS}</green> <level>{level: <7}</level> {message}"


def run(
    async_fn: Callable[..., Awaitable[T]],
    *args: Any,
    backend: Literal["asyncio", "trio"] = "asyncio",
    backend_options: dict[str, Any] | None = None,
    log_level: str | None = "INFO",
) -> T:
    """Run ``async_fn(*args)`` on ``backend`` and return its result.

    ``log_level``: the level of the stderr log this sets up (loguru's own default shows DEBUG);
    ``None`` leaves loguru's configuration alone. ``backend_options`` go to :func:`anyio.run`
    (e.g. ``{"use_uvloop": True}`` on asyncio).

    The first SIGINT/SIGTERM/SIGHUP shuts every actor down gracefully, a second one at once;
    then ``SystemExit(128 + signal)`` is raised (SIGHUP only where it has its default: a
    handler of the program's own stays in place).
    """
    _check_async_fn(async_fn)  # (first: it closes a coroutine given by mistake)
    check_backend(backend, backend_options)
    _check_log_level(log_level)
    if running_asyncio_loop() is not None or thread_runs_trio():
        raise IPCError(
            "run() was called inside a running event loop: it starts one of its own; "
            "await the async function there instead"
        )
    runtime = Runtime()
    with runtime.signals:
        refuse_in_main_script("ipcactors.run()")
        if log_level is not None:
            logger.remove()
            # diagnose=False: a traceback must not print local variables (user data) to the log.
            logger.add(sys.stderr, level=log_level, format=_FORMAT, diagnose=False)
        try:
            result: T = anyio.run(
                _main, runtime, async_fn, args, backend=backend, backend_options=backend_options
            )
        except (SystemExit, KeyboardInterrupt):
            quiet_unstarted_tasks()  # (asyncio re-raises them out of the loop at once)
            raise
        except (ClosedError, ChildExitedError, BaseExceptionGroup) as exc:
            # sys.exit() or Ctrl-C in a handler: out through the task groups, alone.
            exiting = leaving(exc)
            if exiting is not None:
                quiet_unstarted_tasks()
                raise exiting from None
            if runtime.signal is None or not caused_by_shutdown(exc):
                raise
            logger.debug(f"the main function ended with what the shutdown caused: {exc!r}")
    if runtime.signal is None and runtime.signals.kept:  # came as the loop ended
        runtime.signal = runtime.signals.kept[0]
    if runtime.signal is not None:
        raise SystemExit(128 + runtime.signal)
    return result


def _check_log_level(level: object) -> None:
    """Before any sink is removed: a level loguru does not know is ours to refuse."""
    if level is None:
        return
    if isinstance(level, str):
        try:
            logger.level(level)
            return
        except ValueError:
            pass
    elif isinstance(level, int) and not isinstance(level, bool) and level >= 0:
        return
    raise ConfigError(
        f"log_level must be one of loguru's levels (e.g. 'INFO', 'WARNING'), a number >= 0, "
        f"or None, got {level!r:.40}"
    )


def _check_async_fn(async_fn: object) -> None:
    if inspect.iscoroutine(async_fn):
        async_fn.close()  # never awaited: no "was never awaited" warning on top of this error
        raise ConfigError(
            "run() takes the async function itself, not a call of it: "
            "write ipcactors.run(main), not ipcactors.run(main())"
        )
    if not callable(async_fn):
        raise ConfigError(f"run() takes an async function, got {async_fn!r:.60}")


def _not_awaitable(async_fn: object, result: object) -> ConfigError:
    name = getattr(async_fn, "__qualname__", repr(async_fn))
    return ConfigError(
        f"run() takes an async function, and {name}() returned {type(result).__name__}, "
        "not an awaitable: define it with `async def`"
    )


async def _main(
    runtime: Runtime, async_fn: Callable[..., Awaitable[T]], args: tuple[Any, ...]
) -> T:
    set_runtime(runtime)
    quiet_exit_reports()
    main_scope = anyio.CancelScope()
    runtime.main_cancelled = anyio.Event()

    def cancel_main() -> None:
        main_scope.cancel()
        assert runtime.main_cancelled is not None
        runtime.main_cancelled.set()

    async def shut_down() -> None:
        await close_in_order(runtime)
        cancel_main()

    async def watch_signals(task_group: anyio.abc.TaskGroup, *, task_status: Any) -> None:
        with runtime.signals.receive() as signals:  # those kept before the loop ran first
            task_status.started()
            async for signum in signals:
                if runtime.signal is None:
                    runtime.signal = signum
                    logger.info(f"{signal.Signals(signum).name}: shutting down (again to force)")
                    task_group.start_soon(shut_down)
                else:
                    # The children are killed, the actors' flushes cut short, then main is
                    # cancelled.
                    logger.warning(f"{signal.Signals(signum).name}: stopping now")
                    for supervisor in list(runtime.supervisors):
                        supervisor.kill()
                    for actor in list(runtime.actors):
                        actor._abort()  # (their tasks outlive a cancellation: see _hosting)
                    cancel_main()

    result: Any = None
    try:
        async with anyio.create_task_group() as task_group:
            if threading.current_thread() is threading.main_thread():  # (only it has signals)
                await task_group.start(watch_signals, task_group)
            with main_scope:
                awaitable = async_fn(*args)
                if not inspect.isawaitable(awaitable):
                    raise _not_awaitable(async_fn, awaitable)
                result = await awaitable
            task_group.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None  # what main raised, as itself
        raise
    return result  # type: ignore[no-any-return]
