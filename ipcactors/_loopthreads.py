"""What runs an event loop in a thread of its own (a :class:`BlockingActor`, a
:class:`PoolExecutor`): closed as the interpreter exits if the program left it open, and
started or stopped whole whatever signal comes.

Invariants:
- The close at exit runs in Python's hook for its own executors' threads, before the
  interpreter waits for its threads (``atexit`` runs after that wait: too late, since a loop
  thread left open never ends, and the program would hang at exit). What is registered is held
  weakly: registering keeps nothing alive.
- A call into a Trio loop thread from a thread that runs Trio itself goes through a helper
  thread (:func:`from_this_thread`): Trio refuses it from there, and the caller would wait for
  ever.
- Inside :func:`signals_deferred` (on the main thread) SIGINT and SIGTERM wait until the block
  ends: a ``KeyboardInterrupt`` never lands inside anyio's start or stop of a portal, which
  would then wait for the portal's thread for ever (or leave it running). The blocks are
  short: a start, a stop once the loop's work is done; never a wait for user code. A signal
  that lands as a block begins (before the handlers are swapped) is raised there, as
  elsewhere: what must be done whatever comes takes its work inside the block, so that a
  second try finds it still to do (``BlockingActor._stop_loop``).
"""

from __future__ import annotations

import signal
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar, cast

from ._transports._backend import thread_runs_trio

__all__ = ["close_at_exit", "closed", "from_this_thread", "signals_deferred"]

T = TypeVar("T")

_DEFERRED = (signal.SIGINT, signal.SIGTERM)

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


def from_this_thread(trio_portal: bool, operation: Callable[[], T]) -> T:
    """Run ``operation`` (a call into a portal's loop, or its start or stop) for the caller.
    Trio refuses calls into its loops from any thread that runs Trio itself, another loop
    included: from such a thread, a Trio portal is called from a helper thread, the caller's
    thread blocked meanwhile as by any blocking call."""
    if not (trio_portal and thread_runs_trio()):
        return operation()
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append((True, operation()))
        except BaseException as exc:
            outcome.append((False, exc))

    helper = threading.Thread(target=run, name="ipcactors-trio-call")
    helper.start()
    helper.join()
    returned, value = outcome[0]
    if returned:
        return cast(T, value)
    raise value


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
            try:
                close()
            except Exception:  # (what ended it was logged as it ended: we are exiting)
                pass


@contextmanager
def signals_deferred() -> Iterator[None]:
    """On the main thread: SIGINT and SIGTERM that come during the block are kept, then raised
    again as it ends (handled then as they would have been: a ``KeyboardInterrupt``, the
    program's own handler, or the default action). Their handlers are swapped, not their mask:
    a thread or a process started inside would inherit a mask, and a worker with SIGTERM
    blocked could not be stopped. An ignored signal stays ignored. Elsewhere: nothing (Python
    runs signal handlers on the main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    kept: list[int] = []
    previous: dict[signal.Signals, Any] = {}
    try:  # (from the first swap: one that lands midway leaves no handler swapped)
        for signum in _DEFERRED:
            handler = signal.getsignal(signum)
            if handler is signal.SIG_IGN or handler is None:
                continue  # ignored, or set outside Python: left as it is
            previous[signum] = handler
            signal.signal(signum, lambda received, frame: kept.append(received))
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for received in kept:
            signal.raise_signal(received)
