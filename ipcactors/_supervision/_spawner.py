"""The supervisor's handle on its forkserver: start it, spawn and signal children through it,
hear of their exits. The forkserver's own side (the process) is ``_forkserver``.

Invariants: the forkserver is started with fork + exec from the event-loop thread (see
``_forkserver`` for why), and reaped here; a lost connection to it counts every child it had as
killed (they die with it). It deals in pids and callbacks only: each spawn's ``on_exit`` is
called once, when that child is reaped (or lost with the forkserver), and a child is signalled
only until then, so a pid reused after it is never signalled. A signal is never dropped: one
the control socket cannot take now (a burst of stops) waits its turn, in order (``_backlog``).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import anyio
from anyio.abc import TaskGroup

from .._errors import SpawnError
from .._log import ActorLog
from ._forkserver import recv_message, say_bye, send_message

__all__ = ["KILL_WAIT", "ForkServer", "wait_either"]

KILL_WAIT: Final = 5.0  # SIGKILL cannot be ignored; this only guards against a lost report
_FORKSERVER_START: Final = 30.0
_BOOTSTRAP: Final = (
    "import sys,json;sys.path[:]=json.loads(sys.argv[1]);"
    "from ipcactors._supervision._forkserver import _main;_main(sys.argv[2:])"
)


async def wait_either(first: anyio.Event, second: anyio.Event) -> None:
    """Return as soon as either event is set."""
    if first.is_set() or second.is_set():
        return
    async with anyio.create_task_group() as task_group:

        async def wait(event: anyio.Event) -> None:
            await event.wait()
            task_group.cancel_scope.cancel()

        task_group.start_soon(wait, first)
        task_group.start_soon(wait, second)


async def _wait_process(process: subprocess.Popen[bytes]) -> None:
    """Wait for a child process of ours to exit and reap it, without a thread."""
    if process.poll() is not None:
        return
    try:
        pidfd = os.pidfd_open(process.pid)
    except (AttributeError, OSError):
        pidfd = -1
    try:
        while process.poll() is None:
            if pidfd >= 0:
                await anyio.wait_readable(pidfd)
            else:
                await anyio.sleep(0.01)
    finally:
        if pidfd >= 0:
            os.close(pidfd)


@dataclass(eq=False)
class _Spawning:
    """A spawn the forkserver has not answered yet."""

    on_exit: Callable[[int], None]
    done: anyio.Event = field(default_factory=anyio.Event)
    pid: int | None = None
    error: str | None = None
    abandoned: bool = False  # its spawn gave up waiting: a pid that comes is killed at once


class ForkServer:
    """The supervisor's handle on its forkserver process (see ``_forkserver``)."""

    def __init__(self, log: ActorLog) -> None:
        self._log = log
        self._process: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._ready = anyio.Event()
        self._gone = anyio.Event()
        self._reader_done = anyio.Event()
        # Shielded: only aclose ends them. A cancellation of the supervisor's block (a timeout
        # around it) must not make its forkserver look dead: that counted every child as
        # killed, and closing then killed them, instead of stopping them as its exit does.
        self._reader_scope = anyio.CancelScope(shield=True)
        self._seq = 0
        self._sending = anyio.Lock()  # spawns run concurrently: one waits on the socket at a time
        self._backlog: deque[list[int | str]] = deque()  # kills the socket could not take yet
        self._backlog_scope = anyio.CancelScope(shield=True)
        self._flushing = False
        self._task_group: TaskGroup | None = None
        self._pending: dict[int, _Spawning] = {}
        self._live: dict[int, Callable[[int], None]] = {}  # pid: its on_exit, until reaped
        self.dead = False

    def start(
        self,
        task_group: TaskGroup,
        lifeline: int,
        log_level: str,
        preload: list[str],
        backend: tuple[str, bool],
        socket_dir: str,
    ) -> None:
        """Start the process (fork + exec, a few ms; from the event-loop thread on purpose);
        it rehearses a child's way on ``backend`` (the children's) before it is ready, and
        removes ``socket_dir`` (the supervisor's) if it outlives the supervisor."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            command = [
                sys.executable,
                # -O, -X dev, -W ... as in this interpreter (multiprocessing does the same)
                *subprocess._args_from_interpreter_flags(),  # type: ignore[attr-defined]
                "-c",
                _BOOTSTRAP,
                json.dumps(sys.path),
                str(theirs.fileno()),
                str(lifeline),
                str(os.getpid()),
                log_level,
                ",".join(preload),
                backend[0],
                "1" if backend[1] else "0",
                socket_dir,
            ]
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                pass_fds=(theirs.fileno(), lifeline),
                process_group=0,  # Ctrl-C reaches the supervisor, which stops children in order
            )
        except OSError as exc:  # no interpreter at sys.executable, no descriptors, no memory
            ours.close()
            raise SpawnError(f"could not start the forkserver ({sys.executable}): {exc}") from exc
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        self._sock = ours
        self._task_group = task_group
        task_group.start_soon(self._read_loop)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    async def wait_ready(self) -> None:
        with anyio.move_on_after(_FORKSERVER_START):
            await wait_either(self._ready, self._gone)
        if not self._ready.is_set() or self.dead:
            raise SpawnError("the forkserver process did not start; see its output above")

    async def _send(self, message: Any, fds: list[int] | None = None) -> None:
        async with self._sending:
            while True:
                sock = self._sock
                if sock is None or self.dead:
                    raise SpawnError("the forkserver is gone")
                try:
                    send_message(sock, message, fds)
                    return
                except BlockingIOError:
                    await anyio.wait_writable(sock)
                except OSError as exc:
                    raise SpawnError(f"the forkserver is gone: {exc}") from exc

    async def spawn(
        self, spec: dict[str, Any], fds: list[int], name: str, on_exit: Callable[[int], None]
    ) -> int:
        """Have the forkserver fork child ``name`` (``spec``, with ``fds`` as its stdout and
        stderr); return its pid. ``on_exit(code)`` is called once it is reaped, possibly
        before this returns."""
        self._seq += 1
        seq = self._seq
        spawning = self._pending[seq] = _Spawning(on_exit)
        sent = returned = False
        try:
            await self._send(["spawn", seq, spec], fds)
            sent = True
            with anyio.move_on_after(_FORKSERVER_START):
                await wait_either(spawning.done, self._gone)
            returned = True
        finally:
            if sent and not spawning.done.is_set() and not self.dead:
                spawning.abandoned = True  # (cancelled, or no answer yet): see _dispatch
            else:
                self._pending.pop(seq, None)
                if not returned and spawning.pid is not None:
                    # Cancelled with its pid in (a stop, as the answer came): nobody will
                    # know that process, so it must not run on.
                    self.kill(spawning.pid, signal.SIGKILL)
        if spawning.error is not None or spawning.pid is None:
            reason = spawning.error or "the forkserver did not answer"
            raise SpawnError(f"could not start child {name!r}: {reason}")
        return spawning.pid

    def prepare_spare(self, backend: str, uvloop: bool) -> None:
        """Have the forkserver fork a spare child for ``backend`` (the next spawn becomes it,
        its event loop already running: ``_forkserver``). Called once a child is ready, so the
        spare does not compete with it for the CPU. A hint, best effort: dropped if the socket
        is full."""
        if self._sock is None or self.dead or self._backlog:
            return
        try:
            send_message(self._sock, ["spare", backend, uvloop])
        except OSError:
            pass  # full or gone: the next spawn forks as usual

    def kill(self, pid: int, sig: int) -> None:
        """Send ``sig`` to the process group of child ``pid`` if it was not reaped yet (the
        forkserver checks too)."""
        if pid not in self._live or self._sock is None or self.dead:
            return
        message: list[int | str] = ["kill", pid, int(sig)]
        if not self._backlog:
            try:
                send_message(self._sock, message)
                return
            except BlockingIOError:
                pass  # full: queued below, sent as soon as the forkserver reads
            except OSError:
                return  # gone: its children die with it
        self._backlog.append(message)
        if not self._flushing and self._task_group is not None:
            self._flushing = True
            self._task_group.start_soon(self._flush_backlog)

    async def _flush_backlog(self) -> None:
        try:
            with self._backlog_scope:
                while self._backlog:
                    try:
                        await self._send(self._backlog.popleft())
                    except SpawnError:
                        self._backlog.clear()  # gone: its children die with it
        finally:
            self._flushing = False

    async def _read_loop(self) -> None:
        sock = self._sock
        assert sock is not None
        try:
            with self._reader_scope:
                while True:
                    await anyio.wait_readable(sock)
                    try:
                        received = recv_message(sock)
                    except BlockingIOError:
                        continue
                    except (OSError, ValueError) as exc:
                        self._log.warning(f"forkserver connection failed: {exc}")
                        break
                    if received is None:
                        break
                    message, fds = received
                    for fd in fds:
                        os.close(fd)
                    self._dispatch(message)
        finally:
            self._lost()
            self._reader_done.set()

    def _dispatch(self, message: Any) -> None:
        kind = message[0]
        if kind == "ready":
            self._ready.set()
        elif kind == "spawned":
            spawning = self._pending.get(message[1])
            if spawning is not None:
                spawning.pid = message[2]
                self._live[message[2]] = spawning.on_exit
                spawning.done.set()
                if spawning.abandoned:  # nobody waits for it: it must not run on
                    del self._pending[message[1]]
                    self.kill(message[2], signal.SIGKILL)
        elif kind == "error":
            spawning = self._pending.get(message[1])
            if spawning is not None:
                spawning.error = str(message[2])
                spawning.done.set()
                if spawning.abandoned:
                    del self._pending[message[1]]
        elif kind == "exit":
            on_exit = self._live.pop(message[1], None)
            if on_exit is not None:
                on_exit(message[2])

    def _lost(self) -> None:
        """The forkserver is gone: its children die with it (PR_SET_PDEATHSIG). If it was
        SIGKILLed, what they started is not signalled (their pids are no longer ours to
        signal: docs/supervisor.md states the bound)."""
        self.dead = True
        self._gone.set()
        live, self._live = self._live, {}
        for on_exit in live.values():
            on_exit(-signal.SIGKILL)

    async def aclose(self) -> None:
        """Close the control socket (the forkserver kills what children remain and exits),
        then reap it; SIGKILL if it takes longer than a few seconds."""
        self._reader_scope.cancel()
        self._backlog_scope.cancel()
        sock, self._sock = self._sock, None
        try:
            if sock is not None:
                await self._reader_done.wait()
                say_bye(sock)
            process = self._process
            if process is None:
                return
            with anyio.move_on_after(KILL_WAIT):
                await _wait_process(process)
            if process.poll() is None:
                process.kill()
                with anyio.move_on_after(KILL_WAIT, shield=True):
                    await _wait_process(process)
            self._process = None
        finally:
            if sock is not None:
                sock.close()
