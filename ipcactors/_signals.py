"""SIGINT, SIGTERM and SIGHUP, kept while no event loop watches them.

Invariants:
- The stop signals are SIGINT (Ctrl-C), SIGTERM and SIGHUP (the terminal or SSH session went
  away; by default it kills the process with its socket files and children's ``finally``
  blocks left behind). SIGHUP is taken only where it has its default disposition: a handler
  of the program's own (a configuration reload, say) stays in place, as an ignored one does;
  one the program sets once the receiver watches takes SIGHUP from then on (asyncio's loop
  still hears of each signal through its wakeup descriptor: ignored then).
- Inside ``with KeptSignals()`` (in the main thread, the only one with signals), neither signal
  meets Python's default (a ``KeyboardInterrupt`` raised wherever the code was, death by
  SIGTERM): one that comes while no receiver watches (the backend being imported, the loop
  starting or ending, a command still setting up) is kept, and :meth:`KeptSignals.receive`
  yields the kept ones first, then those its receiver gets, each one: two of one signal are two
  (Trio's receiver merges those that come before it looks, so on Trio each is counted as it
  comes, and the receiver only wakes the reader; while Trio's receiver opens, before each is
  counted, they are held pending). When the receiver closes (asyncio's restores the default
  handlers), they are kept again until the block ends; while it closes, they are held pending
  (blocked in the main thread), so that none meets the defaults in between (a process with
  more threads can: the kernel gives it to another thread).
- :meth:`KeptSignals.keep_until_exit` leaves them kept after the block (a process about to
  exit): nothing restores the defaults. Inside the block it changes nothing: a receiver that
  closes still puts the keeping handlers back.
- A signal ignored when the block is entered (``SIG_IGN``: a shell's background job ignores
  SIGINT, as ``nohup`` does SIGHUP) stays ignored: neither kept nor received, as Python itself
  and ``asyncio.run`` leave it.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from functools import partial
from types import FrameType, TracebackType
from typing import Any

import anyio

from ._transports._backend import thread_runs_trio

__all__ = ["STOP_SIGNALS", "KeptSignals"]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
#: Stop signals the program keeps when it handles them itself (see the invariants).
_YIELDED = frozenset({signal.SIGHUP})


class KeptSignals:
    """``with KeptSignals() as kept:`` around what runs outside the event loop (``run``, a
    command); inside the loop, ``with kept.receive() as signals: async for signum in ...``."""

    def __init__(self) -> None:
        self.kept: list[int] = []  # signals that came while nothing watched, oldest first
        self._previous: dict[int, object] | None = None  # set while inside the block
        self._restore = True  # put ``_previous`` back when the block ends
        self._watched: tuple[signal.Signals, ...] = STOP_SIGNALS  # not ignored at the start

    def __enter__(self) -> KeptSignals:
        if threading.current_thread() is threading.main_thread():
            previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
            self._watched = tuple(
                s
                for s in STOP_SIGNALS
                if previous[s] != signal.SIG_IGN
                and (s not in _YIELDED or previous[s] == signal.SIG_DFL)
            )
            self._previous = {signum: previous[signum] for signum in self._watched}
            self._keep()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        previous, self._previous = self._previous, None
        if previous is not None and self._restore:
            for signum, handler in previous.items():
                signal.signal(signum, handler)  # type: ignore[arg-type]

    def keep_until_exit(self) -> None:
        """Leave the handlers that keep both signals in place when the block ends: for a
        process about to exit, where a late signal (a second Ctrl-C as it stops) would
        otherwise meet Python's default and kill it after a clean stop."""
        self._restore = False

    def _keep(self) -> None:
        for signum in self._watched:
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.kept.append(signum)

    @contextmanager
    def receive(self) -> Iterator[AsyncIterator[int]]:
        """The kept signals, then those received while this is open (inside the loop)."""
        if not self._watched:  # (every one ignored: nothing will come)
            yield _Signals(self.kept, None)
            return
        mask: set[int] | None = None  # the thread's own, while the receiver closes
        opening: set[int] | None = None  # the thread's own, while Trio's receiver opens
        try:
            if thread_runs_trio():
                # Held pending until each is counted: one whose handler ran as the receiver
                # opened, before ours below, would be in its set and nowhere else (lost).
                opening = signal.pthread_sigmask(signal.SIG_BLOCK, self._watched)
            with anyio.open_signal_receiver(*self._watched) as received:
                try:
                    if opening is not None:
                        # Trio's receiver keeps a set of pending signals: two SIGINTs that
                        # come before it looks (the loop busy) are one. Each is counted here,
                        # in order, and the receiver only wakes us.
                        for signum in self._watched:
                            wake = signal.getsignal(signum)
                            signal.signal(signum, partial(_counted, self.kept, wake))
                        signal.pthread_sigmask(signal.SIG_SETMASK, opening)
                        opening = None
                        yield _Signals(self.kept, received, counted=True)
                    else:
                        ours: dict[int, Any] = {
                            s: signal.getsignal(s) for s in self._watched if s in _YIELDED
                        }
                        yield _Signals(self.kept, received, ours=ours)
                finally:
                    # asyncio's receiver closes by restoring the defaults: one that came
                    # before we keep them again would kill us. Held pending until then (in
                    # this thread: a process with others may still meet them then).
                    mask = signal.pthread_sigmask(signal.SIG_BLOCK, self._watched)
        finally:
            if self._previous is not None:  # still inside the block: keep them again
                self._keep()
            unblocked = opening if opening is not None else mask  # (the receiver failed)
            if unblocked is not None:  # (and what came meanwhile is kept now)
                signal.pthread_sigmask(signal.SIG_SETMASK, unblocked)


def _counted(kept: list[int], wake: Any, signum: int, frame: FrameType | None) -> None:
    kept.append(signum)
    wake(signum, frame)


class _Signals:
    def __init__(
        self,
        kept: list[int],
        received: AsyncIterator[int] | None,
        *,
        counted: bool = False,
        ours: dict[int, Any] | None = None,
    ) -> None:
        self._kept = kept
        self._received = received
        self._counted = counted  # every signal is in kept; the receiver only wakes us
        self._ours = ours or {}  # the handlers the receiver set, of the signals in _YIELDED

    def __aiter__(self) -> _Signals:
        return self

    async def __anext__(self) -> int:
        if self._received is None:
            if not self._kept:
                await anyio.sleep_forever()
            return self._kept.pop(0)
        while not self._kept:
            signum = await self._received.__anext__()
            if self._counted:
                continue
            ours = self._ours.get(signum)
            if ours is not None and signal.getsignal(signum) is not ours:
                continue  # the program's handler took it (see the invariants)
            return signum
        return self._kept.pop(0)
