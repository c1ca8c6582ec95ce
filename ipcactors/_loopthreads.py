"""What runs an event loop in a thread of its own (a :class:`BlockingActor`, a
:class:`PoolExecutor`) is closed as the interpreter exits if the program left it open.

Invariant: the close runs in Python's hook for its own executors' threads, before the
interpreter waits for its threads (``atexit`` runs after that wait: too late, since a loop
thread left open never ends, and the program would hang at exit). What is registered is held
weakly: registering keeps nothing alive.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable

__all__ = ["close_at_exit", "closed"]

_lock = threading.Lock()
_hook_set = False
_open: dict[int, weakref.WeakMethod[Callable[[], object]]] = {}


def close_at_exit(close: Callable[[], object]) -> None:
    """Have the interpreter's exit call ``close`` (a bound method), unless :func:`closed` says
    it ran."""
    global _hook_set
    with _lock:
        if not _hook_set:
            threading._register_atexit(_close_all)  # type: ignore[attr-defined]
            _hook_set = True
        _open[id(close.__self__)] = weakref.WeakMethod(close)  # type: ignore[attr-defined]


def closed(owner: object) -> None:
    """``owner``'s close ran (or runs): nothing to do for it at exit."""
    with _lock:
        _open.pop(id(owner), None)


def _close_all() -> None:
    with _lock:
        closes = [method() for method in _open.values()]
        _open.clear()
    for close in closes:
        if close is not None:
            close()
