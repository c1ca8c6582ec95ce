"""The runner's child processes: each in a session of its own, read line by line with a
deadline, and always killed and reaped (``stop_all`` runs in the runner's ``finally``).

Invariant: a child's process group is signalled only while its leader is not yet reaped (alive
or a zombie we still hold), so the group id cannot have been reused by another process.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable, Sequence
from typing import Any, Literal, overload

__all__ = ["Child", "ChildError", "stop_all"]

_LIVE: set[Child] = set()
_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


class ChildError(RuntimeError):
    """A child failed, exited early, or did not report in time."""


class Child:
    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        cpus: Iterable[int] | None = None,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
    ) -> None:
        self.name = name
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed by stop()
        self._buffer = b""
        self._eof = False
        self._reaped = False
        cpu_set = set(cpus) if cpus is not None else None

        # No Ctrl-C between starting the child and registering it: it could not be stopped.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)

        def prepare() -> None:  # runs in the child between fork and exec
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            if cpu_set is not None:
                os.sched_setaffinity(0, cpu_set)

        try:
            self.proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=self._stderr,
                env=env,
                cwd=cwd,
                start_new_session=True,
                preexec_fn=prepare,
            )
            _LIVE.add(self)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _exit_code(self) -> int | None:
        """The exit status if the child has exited, without reaping it."""
        if self._reaped:
            return self.proc.returncode
        try:
            info = os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return -1
        return None if info is None else info.si_status

    def stderr_excerpt(self, head: int = 1200, tail: int = 1800) -> str:
        """The start and the end of what the child wrote on stderr (the cause of a failure is
        often at the start, e.g. an exception in a callback, and the traceback at the end)."""
        self._stderr.seek(0)
        text = self._stderr.read().decode(errors="replace").strip()
        if len(text) <= head + tail:
            return text
        return f"{text[:head]}\n[...]\n{text[-tail:]}"

    @overload
    def message(
        self,
        timeout: float,
        kinds: Iterable[str] | None = None,
        *,
        missing_ok: Literal[False] = ...,
    ) -> dict[str, Any]: ...

    @overload
    def message(
        self, timeout: float, kinds: Iterable[str] | None = None, *, missing_ok: bool
    ) -> dict[str, Any] | None: ...

    def message(
        self, timeout: float, kinds: Iterable[str] | None = None, *, missing_ok: bool = False
    ) -> dict[str, Any] | None:
        """The child's next ``BENCH {json}`` report (of one of ``kinds``, if given). After
        ``timeout`` seconds: ``None`` if ``missing_ok``, else :class:`ChildError`."""
        wanted = set(kinds) if kinds is not None else None
        deadline = time.monotonic() + timeout
        stdout = self.proc.stdout
        assert stdout is not None
        fd = stdout.fileno()
        while True:
            newline = self._buffer.find(b"\n")
            if newline >= 0:
                line, self._buffer = self._buffer[:newline], self._buffer[newline + 1 :]
                if line.startswith(b"BENCH "):
                    report: dict[str, Any] = json.loads(line[6:])
                    if wanted is None or report.get("kind") in wanted:
                        return report
                continue
            if self._eof:
                time.sleep(0.05)
                raise ChildError(
                    f"{self.name} exited (status {self._exit_code()}) before reporting"
                    + _tail(self.stderr_excerpt())
                )
            left = deadline - time.monotonic()
            if left <= 0:
                if missing_ok:
                    return None
                raise ChildError(f"{self.name} did not report within {timeout:.0f} s")
            readable, _, _ = select.select([fd], [], [], left)
            if readable:
                chunk = os.read(fd, 65536)
                if chunk:
                    self._buffer += chunk
                else:
                    self._eof = True

    def wait_exit(self, timeout: float) -> int | None:
        """Wait (without reaping) until the child exits; its status, or None on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            code = self._exit_code()
            if code is not None or time.monotonic() >= deadline:
                return code
            time.sleep(0.01)

    def stop(self, grace: float = 2.0) -> None:
        """SIGTERM the child's group, SIGKILL it after ``grace`` seconds, reap the child."""
        if self._reaped:
            return
        try:
            if self._exit_code() is None:
                _signal_group(self.proc.pid, signal.SIGTERM)
                self.wait_exit(grace)
            # Also ends whatever the child started in its session (W6 children, ...).
            _signal_group(self.proc.pid, signal.SIGKILL)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:  # pragma: no cover - a SIGKILLed process exits
                self.proc.kill()
                self.proc.wait()
        finally:
            self._reaped = True
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            self._stderr.close()
            _LIVE.discard(self)


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def _tail(text: str) -> str:
    return f":\n{text}" if text else ""


def stop_all(grace: float = 2.0) -> None:
    """Stop and reap every child still running (the runner calls this in ``finally``)."""
    children = list(_LIVE)
    for child in children:  # signal them all first, then wait: shutting down in parallel
        if not child._reaped and child._exit_code() is None:
            _signal_group(child.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for child in children:
        child.wait_exit(max(0.0, deadline - time.monotonic()))
        child.stop(grace=0.0)
