"""Passing supervised children's output on to our own stdout and stderr, off the event loop.

Our stdout may be a pipe that is slow, or not read at all for a while; a write to it can block.
The supervisor's event loop must never wait for it: that would stall every connection.

Invariants owned here:
- Nothing here blocks the event loop. One writer thread per stream (stdout, stderr) does the
  writing; the loop only queues text (and waits, asynchronously, while the queue is full).
- Memory is bounded: each stream queues at most ``RELAY_BUFFER`` characters (a single larger
  piece is let in when nothing else is queued). While the queue is full, the readers stop
  reading the children's pipes, so a child that writes faster than our output drains waits in
  its own write: nothing is lost.
- Each child's output keeps its order; whole lines are written together (a line longer than
  ``RELAY_LINE`` is passed on in pieces).
- ``ChildOutput`` holds every child's two relays; closing it gives them a bounded time to pass
  on a stopped child's last output, then ends them.
- Closing waits, bounded, for what is queued to be written. A stream that never drains leaves
  only its (daemon) thread blocked in its write, never the loop.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Final, Literal

import anyio
from anyio.abc import TaskGroup

__all__ = ["RELAY_BUFFER", "RELAY_LINE", "ChildOutput", "OutputWriter", "Stream", "relay"]

RELAY_BUFFER: Final = 1024 * 1024  # characters queued per stream before readers wait
RELAY_LINE: Final = 64 * 1024  # a longer line is passed on in pieces
_READ_SIZE: Final = 64 * 1024

Stream = Literal["stdout", "stderr"]


def _drain(fd: int) -> bool:
    """Read the wake-up bytes; True at end of file (the writer thread is gone)."""
    try:
        while True:
            data = os.read(fd, 4096)
            if not data:
                return True
            if len(data) < 4096:
                return False
    except BlockingIOError:
        return False


class OutputWriter:
    """Writes text to ``sys.stdout`` or ``sys.stderr`` from a thread of its own."""

    def __init__(self, stream: Stream, limit: int = RELAY_BUFFER) -> None:
        self._stream: Stream = stream
        self._limit = limit
        self._condition = threading.Condition()
        self._queue: list[str] = []
        self._queued = 0  # characters queued or being written
        self._closed = False
        # The thread writes a byte here after each write: the loop waits on the read end.
        # The thread owns the write end (closes it when it ends); the loop the read end.
        self._wake_read, self._wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._waiting = anyio.Lock()  # one task at a time waits on the wake-up pipe
        self._thread: threading.Thread | None = None

    def _fits(self, size: int) -> bool:
        return self._queued == 0 or self._queued + size <= self._limit

    def write_nowait(self, text: str) -> None:
        """Queue ``text`` whatever the limit (for a last piece that must not wait)."""
        with self._condition:
            if self._closed:
                return
            self._queue.append(text)
            self._queued += len(text)
            self._condition.notify()
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name=f"ipcactors-relay-{self._stream}", daemon=True
                )
                self._thread.start()

    async def write(self, text: str) -> None:
        """Queue ``text``; while the queue is full, wait (without blocking the loop)."""
        while True:
            with self._condition:
                if self._fits(len(text)):
                    break
            async with self._waiting:
                with self._condition:
                    full = not self._fits(len(text))
                if full:
                    await anyio.wait_readable(self._wake_read)
                    _drain(self._wake_read)
        self.write_nowait(text)

    async def aclose(self, timeout: float) -> None:
        """Let the thread write what is queued (within ``timeout``), then stop it. Cancelled
        while it waits, it closes nothing yet: the next call waits again and closes."""
        with self._condition:
            self._closed = True
            self._condition.notify()
            thread = self._thread
        if self._wake_read < 0:
            return  # closed already
        if thread is None:
            os.close(self._wake_write)  # no thread ever owned it
        else:
            with anyio.move_on_after(timeout):
                async with self._waiting:
                    while thread.is_alive():
                        await anyio.wait_readable(self._wake_read)
                        if _drain(self._wake_read):
                            break
        os.close(self._wake_read)
        self._wake_read = -1

    def _run(self) -> None:
        try:
            while True:
                with self._condition:
                    while not self._queue and not self._closed:
                        self._condition.wait()
                    if not self._queue:
                        return
                    text = "".join(self._queue)
                    self._queue.clear()
                _write(self._stream, text)
                with self._condition:
                    self._queued -= len(text)
                try:
                    os.write(self._wake_write, b"\0")
                except OSError:
                    pass  # wake-ups are pending already, or the loop side gave up on us
        finally:
            os.close(self._wake_write)


def _write(stream: Stream, text: str) -> None:
    out = sys.stdout if stream == "stdout" else sys.stderr
    if out is None:
        return
    try:
        out.write(text)
        out.flush()
    except (OSError, ValueError):
        pass  # our own stdout is gone; the child's output has nowhere to go


async def relay(fd: int, prefix: str, writer: OutputWriter) -> None:
    """Pass what a child writes to ``fd`` (non-blocking) on to ``writer``, line by line, each
    line prefixed. Returns at end of file; closing ``fd`` is the caller's."""
    pending = b""
    try:
        while True:
            await anyio.wait_readable(fd)
            try:
                data = os.read(fd, _READ_SIZE)
            except BlockingIOError:
                continue
            except OSError:
                break
            if not data:
                break
            *lines, pending = (pending + data).split(b"\n")
            if len(pending) > RELAY_LINE:
                lines.append(pending)
                pending = b""
            if lines:
                await writer.write(_text(prefix, lines))
    finally:
        if pending:
            writer.write_nowait(_text(prefix, [pending]))  # even when cancelled


def _text(prefix: str, lines: list[bytes]) -> str:
    return "".join(f"{prefix}{line.decode(errors='replace')}\n" for line in lines)


_STREAMS: tuple[Stream, Stream] = ("stdout", "stderr")


class ChildOutput:
    """The relays of every child's stdout and stderr to ours, through one writer thread per
    stream (made with the first child)."""

    def __init__(self) -> None:
        self._relays: set[anyio.CancelScope] = set()
        self._writers: dict[Stream, OutputWriter] = {}
        self._idle = anyio.Event()
        self._idle.set()

    def prepare(self) -> None:
        """Make the writers, with the first child: an ``OSError`` (out of descriptors) comes
        here, before a relay is counted or the caller has a process whose output needs them."""
        for stream in _STREAMS:
            if stream not in self._writers:
                self._writers[stream] = OutputWriter(stream)

    def start(self, task_group: TaskGroup, fds: tuple[int, int], child_id: str) -> None:
        """Relay the read ends ``fds`` (the child's stdout, stderr; closed here at their end,
        or by the caller if this raises: then nothing was started)."""
        self.prepare()
        for fd, stream in zip(fds, _STREAMS, strict=True):
            os.set_blocking(fd, False)
            scope = anyio.CancelScope()
            self._relays.add(scope)
            self._idle = anyio.Event()
            task_group.start_soon(self._relay, fd, self._writers[stream], f"[{child_id}] ", scope)

    async def _relay(
        self, fd: int, writer: OutputWriter, prefix: str, scope: anyio.CancelScope
    ) -> None:
        try:
            with scope:
                await relay(fd, prefix, writer)
        finally:
            os.close(fd)
            self._relays.discard(scope)
            if not self._relays:
                self._idle.set()

    async def aclose(self, drain: float) -> None:
        """Give the relays ``drain`` seconds to pass on the last output of children that are
        gone, end them, then let the writers write what is queued (``drain`` again)."""
        with anyio.move_on_after(drain):
            await self._idle.wait()
        for scope in list(self._relays):
            scope.cancel()
        await self._idle.wait()
        for writer in self._writers.values():
            await writer.aclose(drain)
        self._writers.clear()
