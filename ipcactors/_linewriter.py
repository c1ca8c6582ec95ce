"""Lines to a file descriptor, written by a thread of their own (the command line's stdout).

A reader that stops reading (``ipcactors listen | less``, not scrolled) fills the pipe, and a
write to it then blocks until it reads again. Written from the event loop, that write would
hold the loop: no connection served, no signal handled (a SIGTERM would wait for the reader).

Invariants:
- :meth:`LineWriter.write` never blocks: it queues the bytes, and the thread writes them in
  order, all that is queued in one ``os.write`` where the pipe takes it.
- What is queued is bounded by whoever writes: :attr:`full` past ``limit`` bytes, and
  :meth:`room` waits (without holding the loop) until the thread has written below it.
- A write the descriptor refuses (``EPIPE``: the reader went; any ``OSError``) ends the
  thread; :attr:`broken` says so, and what was queued is dropped, as it could go nowhere.
- The thread is a daemon and never touches ``sys.stdout``: a program may exit while it is
  blocked in a write to a reader that stopped, and nothing of Python's is left half-written
  (the interpreter's flush of ``sys.stdout`` at exit does not wait on its lock).
- :meth:`close` lets the thread write what is queued, within a bound, then stops it.
"""

from __future__ import annotations

import os
import threading
from collections import deque

import anyio
import anyio.to_thread

__all__ = ["LineWriter"]


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

    @property
    def full(self) -> bool:
        return self._pending > self.limit

    def write(self, data: bytes) -> None:
        if self.broken:
            return
        with self._wake:
            self._chunks.append(data)
            self._pending += len(data)
            self._wake.notify_all()

    async def room(self) -> None:
        """Return once what is queued is within ``limit`` again (or it can never go): waits in
        a worker thread, which a cancellation leaves behind (``close`` lets it go)."""
        if self.full and not self.broken:
            await anyio.to_thread.run_sync(self._wait_room, abandon_on_cancel=True)

    def _wait_room(self) -> None:
        with self._wake:
            self._wake.wait_for(lambda: not self.full or self.broken or self._closing)

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
                    view = view[os.write(fd, view) :]
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
