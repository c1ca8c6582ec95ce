"""How a process leaves through task groups: ``sys.exit()`` called in a task (a handler, say)
reaches the top wrapped in the exception groups of every task group it crossed.

Invariants:
- A group made only of ``SystemExit`` means the process is exiting, with the status of the
  first; so does one with ``SystemExit`` and, beside it, only the errors of connections that
  the exit closed or lost on its way out (:class:`ClosedError`, :class:`ConnectionLostError`:
  a request in this process to the actor whose handler exited). Anything else in the group
  keeps it an error. The same holds for ``KeyboardInterrupt`` under ``run()``: it leaves as
  from ``main``, alone.
- What a stop causes (SIGTERM or Ctrl-C under ``run()``, a supervised child's stop message) is
  no error of the function it ends: a :class:`ClosedError` from a supervisor or actor the stop
  closed, and a :class:`ChildExitedError` of a request to a child it stopped (one whose
  handler outlasted ``shutdown_timeout``: ``stopped``; a child that crashed on its own
  meanwhile is still an error), alone or in a group of nothing else
  (:func:`caused_by_shutdown`).
- On asyncio a ``SystemExit`` raised in a task leaves the loop at once (asyncio re-raises it out
  of the task), and the tasks it cut short are cancelled as the loop closes; asyncio then
  reports those that ended with the exit's groups as unhandled. Under ``run()`` such reports are
  dropped (:func:`quiet_exit_reports`): the process is exiting as it was asked to; so are
  Python's warnings of tasks that never ran (:func:`quiet_unstarted_tasks`).
"""

from __future__ import annotations

import warnings

from ._errors import ChildExitedError, ClosedError, ConnectionLostError
from ._transports._backend import drop_loop_reports

__all__ = [
    "caused_by_shutdown",
    "leaving",
    "quiet_exit_reports",
    "quiet_unstarted_tasks",
    "system_exit",
]

#: Beside a SystemExit in a group: the exit's doing, not errors of their own.
_ITS_DOING = (ClosedError, ConnectionLostError)


def _stop_caused(exc: BaseException) -> bool:
    return isinstance(exc, ClosedError) or (isinstance(exc, ChildExitedError) and exc.stopped)


def caused_by_shutdown(exc: BaseException) -> bool:
    """Whether ``exc`` is what a stop caused (see the invariants), or a group of nothing else."""
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(_stop_caused)[1] is None
    return _stop_caused(exc)


def quiet_unstarted_tasks() -> None:
    """The process is leaving through an exit or an interrupt (see the invariants): the tasks
    it left before they first ran (on uvloop, which does not run them to cancel them as
    asyncio does) are said nothing of either, where Python would warn that their coroutines
    were never awaited."""
    warnings.filterwarnings("ignore", r"coroutine '.*' was never awaited", RuntimeWarning)


def quiet_exit_reports() -> None:
    """Have the running loop say nothing of tasks that ended with an exit or an interrupt
    (see the invariants; nothing to do on Trio)."""
    drop_loop_reports(lambda exc: leaving(exc) is not None)


def system_exit(exc: BaseException) -> SystemExit | None:
    """``exc`` if it is a SystemExit, or the first SystemExit of a group made only of them and
    of what they caused (see the invariants)."""
    first = _first_of(exc, SystemExit)
    return first if isinstance(first, SystemExit) else None


def leaving(exc: BaseException) -> SystemExit | KeyboardInterrupt | None:
    """:func:`system_exit`, or the same for KeyboardInterrupt: a handler's Ctrl-C (or its
    ``raise KeyboardInterrupt``) leaves as it would from ``main``, not in groups."""
    first = _first_of(exc, SystemExit) or _first_of(exc, KeyboardInterrupt)
    return first if isinstance(first, SystemExit | KeyboardInterrupt) else None


def _first_of(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    if isinstance(exc, kind):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        matched, rest = exc.split(kind)
        if matched is not None and (rest is None or rest.split(_ITS_DOING)[1] is None):
            first: BaseException = matched
            while isinstance(first, BaseExceptionGroup):
                first = first.exceptions[0]
            return first
    return None
