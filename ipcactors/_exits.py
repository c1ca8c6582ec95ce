"""How a process leaves through task groups: ``sys.exit()`` called in a task (a handler, say)
reaches the top wrapped in the exception groups of every task group it crossed.

Invariant: a group made only of ``SystemExit`` means the process is exiting, with the status of
the first; anything else in the group keeps it an error.
"""

from __future__ import annotations

__all__ = ["system_exit"]


def system_exit(exc: BaseException) -> SystemExit | None:
    """``exc`` if it is a SystemExit, or the first of a group made only of SystemExits."""
    if isinstance(exc, SystemExit):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        matched, rest = exc.split(SystemExit)
        if matched is not None and rest is None:
            first: BaseException = matched
            while isinstance(first, BaseExceptionGroup):
                first = first.exceptions[0]
            if isinstance(first, SystemExit):
                return first
    return None
