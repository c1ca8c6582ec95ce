"""Lines to a file descriptor, written by a thread of their own (the command line's stdout).

A reader that stops reading (``ipcactors listen | less``, not scrolled) fills the pipe, and a
write to it then blocks until it reads again. Written from the event loop, that write would
hold the loop: no connection served, no signal handled (a SIGTERM would wait for the reader).

Invariants:
- :meth:`LineWriter.write` never blocks: it queues the bytes, and the thread writes them in
  order, all that is queued in one ``os.write`` where the pipe takes it.
- What is queued stays within ``limit`` bytes for the lines that respect it
  (:meth:`write_within`, :meth:`write_when_room`, which waits in a worker thread, the loop
  going on), however many write at once: a line is queued only if it fits (or nothing else
  is queued). Lines of our own (:meth:`write`: a few, not a peer's) are queued regardless.
- A descriptor set non-blocking by someone else is waited on when full (``EAGAIN``). A write
  it refuses (``EPIPE``: the reader went; any other ``OSError``) ends the thread;
  :attr:`broken` says so, and what was queued is dropped, as it could go nowhere.
- The thread is a daemon and never touches ``sys.stdout``: a program may exit while it is
  blocked in a write to a reader that stopped, and nothing of Python's is left half-written
  (the interpreter's flush of ``sys.stdout`` at exit does not wait on its lock).
- :meth:`close` lets the thread write what is queued, within a bound, then stops it.
"""

from __future__ import annotations

import os
import select
import threading
from collections import deque
from typing import Final

import anyio
import anyio.to_thread

__all__ = ["LineWriter"]

_FULL_PIPE_POLL: Final = 1.0  # s: a wait for a non-blocking descriptor to take more (bounded)


class LineWriter:
    __slots__ = ("_chunks", "_closing", "_fd", "_pending", "_thread", "_wake", "broken", "limit")

    def __init__(self, fd: int, limit: int = 256 * 1024) -> None:
        self._fd = fd
        self.limit = limit
        self._chunks: deque[bytes] = deque()
        self._pending = 0  # bytes queued or being written
        self._wake = threading.Condition()
        self._closing = False
        self.broken = False
        self._thread = threading.Thread(target=self._run, name="ipcactors-stdout", daemon=True)
        self._thread.start()

    def write(self, data: bytes) -> None:
        """Queue ``data`` whatever is queued already (a line of our own, not a peer's)."""
        with self._wake:
            self._queue(data)

    def write_within(self, data: bytes) -> bool:
        """Queue ``data`` if it fits within ``limit`` (or nothing is queued: a longer line goes
        alone); False if it does not: :meth:`write_when_room`."""
        with self._wake:
            if not self._fits(len(data)) and not self.broken:
                return False
            self._queue(data)
            return True

    async def write_when_room(self, data: bytes) -> None:
        """Queue ``data`` once it fits within ``limit``: waits in a worker thread (the loop goes
        on), which a cancellation leaves behind (:meth:`close` lets it go, unqueued)."""
        await anyio.to_thread.run_sync(self._put_when_room, data, abandon_on_cancel=True)

    def _put_when_room(self, data: bytes) -> None:
        with self._wake:
            self._wake.wait_for(lambda: self._fits(len(data)) or self.broken or self._closing)
            if not self._closing:
                self._queue(data)

    def _fits(self, size: int) -> bool:
        """Whether ``size`` more bytes keep within ``limit`` (a longer line goes alone)."""
        return not self._pending or self._pending + size <= self.limit

    def _queue(self, data: bytes) -> None:
        if self.broken:
            return  # (it could go nowhere)
        self._chunks.append(data)
        self._pending += len(data)
        self._wake.notify_all()

    async def close(self, timeout: float) -> None:
        """Let the thread write what is queued, for at most ``timeout`` seconds; then stop it
        (a thread still blocked in a write is left to the process's exit)."""
        with self._wake:
            self._closing = True
            self._wake.notify_all()
        await anyio.to_thread.run_sync(self._thread.join, timeout, abandon_on_cancel=True)

    def _run(self) -> None:
        fd = self._fd
        while True:
            with self._wake:
                while not self._chunks and not self._closing:
                    self._wake.wait()
                if not self._chunks:
                    return  # closing, all written
                data = b"".join(self._chunks)
                self._chunks.clear()
            view = memoryview(data)
            try:
                while view:
                    try:
                        view = view[os.write(fd, view) :]
                    except BlockingIOError:  # a non-blocking pipe, full: wait until it is not
                        select.select([], [fd], [], _FULL_PIPE_POLL)
            except OSError:
                with self._wake:
                    self.broken = True
                    self._chunks.clear()
                    self._pending = 0
                    self._wake.notify_all()
                return
            with self._wake:
                self._pending -= len(data)
                self._wake.notify_all()  # (who waits for room)
