"""The forkserver: a small process, started once per supervisor, that forks its children.

Why: a fresh interpreter importing anyio and ipcactors takes ~100–150 ms; forking a process that
already has them imported readies a child in a few milliseconds. Why not fork the supervisor
itself: it runs an event loop (and maybe threads); a fork of that is unsafe. The forkserver is
started as a fresh interpreter (fork + exec), imports what children need, walks a child's way
to ready a few times on their backend (``_rehearsal``: its children inherit that code warm; an
event loop run to its end, nothing left running), and then never runs an event loop or a second
thread, so each ``fork()`` it makes is of a quiet, single-threaded process.

Invariants owned here:
- Only this module calls ``os.fork()`` (``fork_child``), and only in a forkserver process
  (single-threaded, no event loop): this one, or the one ``_remoteserver`` runs on another
  host, which reuses ``fork_child`` and ``reap``. The supervisor starts the forkserver with
  fork + exec (``subprocess.Popen``) from its event-loop thread: PR_SET_PDEATHSIG fires when
  the *thread* that forked exits.
- The forkserver dies with its supervisor: it watches the lifeline pipe (EOF: the supervisor is
  gone) and its control socket, and asks the kernel for SIGTERM when its parent dies
  (PR_SET_PDEATHSIG, re-checked with ``getppid()`` against the race; SIGTERM, not SIGKILL, so
  that its way out runs). On its way out it SIGKILLs every child's process group and reaps
  the children, and, if the supervisor died, removes its socket directory.
- A supervisor that stops its forkserver removes its socket directory, then says ``["bye"]``
  and shuts its side of the control socket for writing (``say_bye``; it closes the socket once
  the forkserver is gone); a control socket that ends without the bye is a supervisor that
  died. A dying process's files
  close before the kernel sends the parent-death signal or gives its children a new parent,
  so neither can tell a death from a stop when the control socket ends first: the missing
  word does (confirmed by the lifeline's end, within ``LIFELINE_WAIT``).
- Each child leads its own process group (pgid = its pid), set on both sides of the fork
  before the pid is reported, so a signal sent at once finds the group. Terminal signals
  (Ctrl-C, Ctrl-\\, Ctrl-Z) go to the terminal's foreground group, which holds neither the
  forkserver nor a child: the supervisor alone decides how children stop.
- Every child is reaped here (the forkserver is their parent) and its exit reported to the
  supervisor as ``["exit", pid, exitcode]`` (negative: killed by that signal). Signals for a
  child go through the forkserver (``["kill", pid, sig]``) to the child's whole group, and only
  while the child is not reaped: its pid, and so its group id, cannot be recycled before that.
- What a child inherits stays shared with the forkserver as far as the interpreter lets it: the
  child freezes the inherited objects (``gc.freeze()``) first thing, so its garbage collections
  never walk them. A full collection that did would write to the page of each (its gc header)
  and copy them all from the forkserver: ~4-5 MiB per child (500 children: over 2 GiB), for
  modules every child keeps anyway. Objects it inherited and then drops in a reference cycle
  are not collected: at most what the forkserver held when it forked.
- Signal, then reap: when a child exits, what is left of its group (processes it started and
  did not stop) gets SIGKILL while the child is still a zombie holding the group id, and only
  then is the child reaped. Its exit is reported once the group is gone (within
  ``GROUP_GONE_WAIT``): a SIGKILLed process takes a while to die (tens to hundreds of
  milliseconds to free gigabytes), and one forked without exec holds the child's listening
  socket meanwhile, which its restart would meet still listening. Nothing waits for it
  (``Reaper``): spawns, signals and other exits go on meanwhile. A process that left the
  group (``setsid()``, ``setpgid()``) is not signalled: that is how a child hands a daemon off
  on purpose.

- A spare child, at most one: forked when the supervisor says a child is ready (``["spare",
  backend, uvloop]``; not sooner, or its start would compete with that child's for the CPU), it
  starts its event loop and waits on a socketpair of its own for the next spawn's spec and
  output descriptors. Until then it is not a child: its exit is never reported (``_Spares``),
  it is killed with the children when the forkserver ends, and it runs nothing the spec names.
  A spawn without a spare of its backend (the first, or one right after another) forks as
  before.

The control socket is a ``SOCK_SEQPACKET`` socketpair: one msgpack array per message, file
descriptors (the child's stdout and stderr pipes) passed with SCM_RIGHTS.
"""

from __future__ import annotations

import array
import errno
import gc
import importlib
import os
import select
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any, Final, NoReturn, cast

from .._proto._msgpack import pack_value, unpack_value
from ._parentdeath import EXIT_PARENT_LOST, set_parent_death_signal

__all__ = [
    "MAX_MESSAGE",
    "Reaper",
    "fork_child",
    "output_pipes",
    "recv_message",
    "say_bye",
    "send_message",
    "serve",
]

MAX_MESSAGE: Final = 1024 * 1024  # control messages are small: ids, module names, sys.path
LIFELINE_WAIT: Final = 2.0  # s: after the parent-death signal, for the supervisor's end
#: s an exit report waits, at most, for what was left of the child's group to be gone (a
#: request to a child whose connection broke waits for the report a little longer)
GROUP_GONE_WAIT: Final = 2.0
_DYING_POLL_MS: Final = 5  # how often a group still dying is looked at again
_MAX_FDS: Final = 4


def output_pipes() -> list[tuple[int, int]]:
    """A child's stdout and stderr pipes (read end, write end); on ``OSError`` (out of
    descriptors) none is left open."""
    pipes: list[tuple[int, int]] = []
    try:
        for _ in range(2):
            pipes.append(os.pipe2(os.O_CLOEXEC))
    except OSError:
        for pipe in pipes:
            for fd in pipe:
                os.close(fd)
        raise
    return pipes


def send_message(sock: socket.socket, message: Any, fds: list[int] | None = None) -> None:
    """Send one control message (blocking socket). Raises OSError if the peer is gone."""
    data = pack_value(message)
    if fds:
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
        sock.sendmsg([data], ancillary)
    else:
        sock.send(data)


def say_bye(sock: socket.socket) -> None:
    """The supervisor's last word on the control socket: a stop, not a death (see the
    invariants). Then its write side is shut, and the socket closed only once the forkserver
    is gone: closed with a report of ours still unread, it would reset the connection, and
    the forkserver would read the reset, not the bye."""
    try:
        send_message(sock, ["bye"])
    except OSError:
        pass  # gone, or full: then it waits for our lifeline's end, within a bound
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def recv_message(sock: socket.socket) -> tuple[Any, list[int]] | None:
    """Receive one control message and the descriptors passed with it; ``None`` at EOF."""
    fds = array.array("i")
    data, ancdata, flags, _ = sock.recvmsg(MAX_MESSAGE, socket.CMSG_LEN(_MAX_FDS * fds.itemsize))
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    if not data:
        for fd in fds:
            os.close(fd)
        return None
    if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
        for fd in fds:
            os.close(fd)
        raise ValueError("control message truncated")
    message = unpack_value(data)
    return message, list(fds)


# --- the forkserver process -------------------------------------------------------------------


def serve(
    ctl_fd: int,
    lifeline_fd: int,
    parent_pid: int,
    log_level: str,
    preload: list[str],
    backend: tuple[str, bool] | None = None,
    socket_dir: str | None = None,
) -> None:
    """Main loop of the forkserver process. Returns when the supervisor is gone or done.
    ``backend``: the one the children run, rehearsed first (``_rehearsal``). ``socket_dir``:
    the supervisor's, removed once the children are gone if the supervisor died (SIGKILL
    leaves it no time to); a supervisor that stops us removes it itself."""
    # The supervisor's death (SIGTERM) ends the loop through the finally below, which stops
    # every child's group; SIGKILL would skip it and leave what the children started running.
    signal.signal(signal.SIGTERM, _parent_gone)
    # Ctrl-C in a terminal reaches the supervisor, which stops everyone in order; not us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    children: set[int] = set()
    spares: _Spares | None = None
    reaper: Reaper | None = None
    orphaned = False  # the supervisor died: nobody else will remove its socket directory
    state = _RUNNING
    try:
        if not set_parent_death_signal(parent_pid, signal.SIGTERM, exit_now=False):
            orphaned = True
            raise SystemExit(EXIT_PARENT_LOST)
        _start(preload, backend, log_level, parent_pid)
        ctl = socket.socket(fileno=ctl_fd)
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        spares = _Spares(lifeline_fd, (ctl_fd, wake_r, wake_w))
        reaper = _reaper(ctl, children, spares)
        send_message(ctl, ["ready", os.getpid()])
        poller = select.poll()
        poller.register(ctl.fileno(), select.POLLIN)
        poller.register(lifeline_fd, select.POLLIN)
        poller.register(wake_r, select.POLLIN)
        while state == _RUNNING:
            for fd, _ in poller.poll(reaper.poll_timeout):
                if fd == wake_r:
                    _drain(wake_r)
                elif fd == lifeline_fd:
                    state = _GONE  # EOF (the supervisor died) or anything else: stop
                    orphaned = True  # (it may see EOF before the kernel gives us a new parent)
                elif fd == ctl.fileno() and state == _RUNNING:
                    state = _handle(ctl, children, spares, reaper)
            reaper.reap()
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if reaper is not None:
            reaper.report_all()
        doomed = children | (spares.pids if spares is not None else set())
        for pid in doomed:
            _killpg(pid, signal.SIGKILL)  # not reaped yet: the group id is still theirs
        for pid in doomed:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        if socket_dir is not None and (
            orphaned
            or os.getppid() != parent_pid
            or _parent_dying(lifeline_fd, parent_pid, unannounced=state == _GONE)
        ):
            shutil.rmtree(socket_dir, ignore_errors=True)


def _start(
    preload: list[str], backend: tuple[str, bool] | None, log_level: str, parent_pid: int
) -> None:
    """What the forkserver does before it is ready: preload, rehearse, set up its logging."""
    for name in preload:
        importlib.import_module(name)
    if backend is not None:
        from ._rehearsal import rehearse

        rehearse(*backend)
    threads = _thread_count()
    if threads > 1:
        print(
            f"ipcactors forkserver: the preloaded modules started {threads - 1} thread(s); "
            "children are forked from a multi-threaded process, which is safe only for "
            "libraries with fork handlers (for numpy's OpenBLAS, set OPENBLAS_NUM_THREADS=1)",
            file=sys.stderr,
        )
    from ._child import setup_logging

    setup_logging(log_level)
    try:
        module = importlib.import_module("setproctitle")  # optional: never a dependency
        module.setproctitle(f"ipcactors forkserver (supervisor pid {parent_pid})")
    except ImportError:
        pass


_terminated = False  # the parent-death signal (SIGTERM) came: see _parent_dying

# What the control socket said last (``_handle``): nothing yet, ``bye``, or it ended without it.
_RUNNING: Final = "running"
_STOPPED: Final = "stopped"
_GONE: Final = "gone"


def _parent_dying(lifeline_fd: int, parent_pid: int, *, unannounced: bool) -> bool:
    """After the parent-death signal, or a control socket that ended without a ``bye``
    (``unannounced``), whether the supervisor is really going: the signal comes when the
    thread of it that started us ends, which its other threads may outlive for a moment (our
    parent pid unchanged meanwhile), or from someone's ``kill`` while the supervisor lives on.
    Its end closes the lifeline pipe, or, failing that, gives us a new parent: waited for,
    within a bound."""
    if not (_terminated or unannounced):
        return False
    poller = select.poll()
    poller.register(lifeline_fd, select.POLLIN)
    return bool(poller.poll(LIFELINE_WAIT * 1000)) or os.getppid() != parent_pid


def _thread_count() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 1


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


# The signals the forkserver handles with code of its own, which a child must never run.
_HANDLED: Final = {signal.SIGTERM, signal.SIGCHLD}


def _parent_gone(signum: int, frame: object) -> None:
    global _terminated
    _terminated = True
    raise SystemExit(EXIT_PARENT_LOST)


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _reaper(ctl: socket.socket, children: set[int], spares: _Spares) -> Reaper:
    def report(pid: int, code: int) -> None:
        if spares.reaped(pid):
            return  # a spare that never became a child: nobody to tell
        try:
            send_message(ctl, ["exit", pid, code])
        except OSError:
            pass  # the supervisor is gone; we stop on the next poll

    return Reaper(children, report)


class Reaper:
    """Reaps the children that exited, each one's group SIGKILLed first, and calls
    ``report(pid, code)`` once no process of its group runs (or ``GROUP_GONE_WAIT`` passed).
    It never waits: a group still dying is looked at again on the next ``reap``, which the
    caller's poll makes within ``poll_timeout`` ms.

    A reaped child leaves ``children`` at once, so no signal reaches its group id after that.
    Its pid is not given out again while a member of its group is left; past that, a new
    child may get it before the exit is reported: ``forked`` reports it first. A zombie member
    does not count: it holds nothing open, and it lasts until whoever adopted it (init, or a
    subreaper) reaps it, which may be late."""

    __slots__ = ("_children", "_dying", "_report")

    def __init__(self, children: set[int], report: Callable[[int, int], None]) -> None:
        self._children = children
        self._report = report
        self._dying: dict[int, tuple[int, float]] = {}  # pid: its exit code, the wait's end

    @property
    def poll_timeout(self) -> int:
        return _DYING_POLL_MS if self._dying else -1

    def reap(self) -> None:
        children = self._children
        while children:
            # Look without reaping: the zombie keeps its pid, and so its group id, ours.
            try:
                found = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                break
            if found is None:
                break
            pid = found.si_pid
            ours = pid in children
            if ours:
                _killpg(pid, signal.SIGKILL)  # what it started and left behind
            _, status = os.waitpid(pid, 0)
            children.discard(pid)
            code = os.waitstatus_to_exitcode(status)
            if ours and _group_runs(pid):
                self._dying[pid] = (code, time.monotonic() + GROUP_GONE_WAIT)
            else:
                self._report(pid, code)
        if self._dying:
            now = time.monotonic()
            for pid, (code, deadline) in list(self._dying.items()):
                if now >= deadline or not _group_runs(pid):
                    del self._dying[pid]
                    self._report(pid, code)

    def forked(self, pid: int) -> None:
        """A new child has ``pid``: an earlier child's exit under that pid, not reported
        yet, is reported first."""
        self._children.add(pid)
        dying = self._dying.pop(pid, None)
        if dying is not None:
            self._report(pid, dying[0])

    def report_all(self) -> None:
        """Report the exits still waiting for their groups, at once (we are going)."""
        dying, self._dying = self._dying, {}
        for pid, (code, _) in dying.items():
            self._report(pid, code)


def _group_runs(pgid: int) -> bool:
    """Whether a process of group ``pgid`` runs (a zombie does not)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False  # (the common case: nothing was left)
    except PermissionError:
        pass  # (a member that changed its user: it is there all the same)
    try:
        entries = os.listdir("/proc")
    except OSError:
        return False  # (no /proc to look in: not waited for)
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as file:
                stat = file.read()
        except OSError:
            continue  # (gone meanwhile)
        # "pid (comm) state ppid pgrp ...": comm may hold anything, even ") ".
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            return True
    return False


def _handle(ctl: socket.socket, children: set[int], spares: _Spares, reaper: Reaper) -> str:
    """Handle one control message. Returns ``_STOPPED`` when the supervisor said ``bye``,
    ``_GONE`` when the socket ended without it, ``_RUNNING`` otherwise."""
    try:
        received = recv_message(ctl)
    except ConnectionResetError:
        return _GONE  # the supervisor went with our last report unread, as at EOF
    except (OSError, ValueError) as exc:
        print(f"ipcactors forkserver: bad control message: {exc}", file=sys.stderr)
        return _RUNNING
    if received is None:
        return _GONE
    message, fds = received
    try:
        if message[0] == "bye":
            return _STOPPED
        if message[0] == "spawn":
            _, seq, spec = message
            pid = spares.hand_over(spec, fds)
            if pid is None:
                pid = fork_child(spec, fds, spares.lifeline_fd, spares.close_fds())
            reaper.forked(pid)
            send_message(ctl, ["spawned", seq, pid])
        elif message[0] == "spare":
            _, backend, uvloop = message
            spares.refill((backend, bool(uvloop)))
        elif message[0] == "kill":
            _, pid, sig = message
            if pid in children:
                _killpg(pid, sig)
    except Exception as exc:
        if message and message[0] == "spawn":
            send_message(ctl, ["error", message[1], f"{type(exc).__name__}: {exc}"])
    finally:
        for fd in fds:
            os.close(fd)
    return _RUNNING


def fork_child(
    spec: dict[str, Any], fds: list[int], lifeline_fd: int, close_fds: tuple[int, ...]
) -> int:
    """Fork child ``spec`` (stdout and stderr on ``fds``, stdin on /dev/null), which closes
    ``close_fds`` (the forkserver's own) and watches ``lifeline_fd``; its pid."""
    if len(fds) != 2:
        raise ValueError("a spawn request carries the child's stdout and stderr")
    forkserver_pid = os.getpid()
    pid = _fork()
    if pid:
        return pid
    # --- in the child: never return from here -------------------------------------------------
    code = 1
    try:
        _start_child(close_fds)
        _take_output(fds)
        from ._child import run_child

        code = run_child(spec, lifeline_fd, forkserver_pid)
    finally:
        _exit_child(code)
    raise AssertionError("unreachable")  # pragma: no cover


def _fork() -> int:
    """``os.fork()`` with the forkserver's handled signals blocked across it: the child starts
    with them blocked and unblocks them only once its own handling is in place
    (:func:`_start_child`). A SIGTERM that came in between (the supervisor stopping a child
    at once) ran the forkserver's handler in the child, a ``SystemExit`` raised wherever it
    was (a traceback in its output, exit status 70); it now waits and ends the child as
    SIGTERM does. The parent's mask is restored at once."""
    sys.stdout.flush()
    sys.stderr.flush()
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _HANDLED)
    try:
        pid = os.fork()
    except BaseException:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        raise
    if pid:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        # Here too, as shells do: the group exists before its pid is reported, so a signal
        # sent at once reaches it. An error means the child is gone already.
        try:
            os.setpgid(pid, pid)
        except OSError:
            pass
    return pid


def _start_child(close_fds: tuple[int, ...]) -> None:
    """In a child, first thing: its own group, its inheritance frozen, the forkserver's
    signal handling and descriptors dropped, stdin on /dev/null."""
    os.setpgid(0, 0)  # its own group before anything runs: see the module docstring
    gc.freeze()  # what it inherited stays shared: see the module docstring
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _HANDLED)  # blocked by _fork
    for fd in close_fds:
        os.close(fd)
    null = os.open(os.devnull, os.O_RDONLY)
    if null != 0:
        os.dup2(null, 0)
        os.close(null)


def _take_output(fds: list[int]) -> None:
    """The child's stdout and stderr: the pipes the supervisor relays."""
    stdout_fd, stderr_fd = fds
    os.dup2(stdout_fd, 1)
    os.dup2(stderr_fd, 2)
    os.close(stdout_fd)
    os.close(stderr_fd)


def _exit_child(code: int) -> NoReturn:
    """End a forked child with ``code``, whatever happened (its traceback printed first)."""
    exc = sys.exc_info()[1]
    try:
        if exc is not None:
            import traceback

            traceback.print_exception(exc)
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:
        pass
    os._exit(code)


class _Spares:
    """The spare child: forked ahead of the next spawn, its event loop already running,
    waiting for the spec of the child it will become (see the module docstring). At most one;
    there is none before the first spawn (its backend comes with the spec)."""

    def __init__(self, lifeline_fd: int, own_fds: tuple[int, ...]) -> None:
        self.lifeline_fd = lifeline_fd
        self._own_fds = own_fds
        self._spare: tuple[int, socket.socket, tuple[str, bool]] | None = None
        #: Spares forked and not reaped, that never became children.
        self.pids: set[int] = set()

    def close_fds(self) -> tuple[int, ...]:
        """What a new child must close: ours, and our end of the spare's socket."""
        if self._spare is None:
            return self._own_fds
        return (*self._own_fds, self._spare[1].fileno())

    def hand_over(self, spec: dict[str, Any], fds: list[int]) -> int | None:
        """Give ``spec`` and its output descriptors to the spare; its pid, or None if there is
        no spare for the spec's backend (or it died meanwhile): fork one then."""
        spare, self._spare = self._spare, None
        if spare is None:
            return None
        pid, sock, backend = spare
        try:
            if backend != _backend_of(spec):
                return None
            send_message(sock, ["spec", spec], fds)
        except OSError:
            return None  # it died: reaped later, and never reported
        finally:
            sock.close()  # a spare that did not get a spec exits at EOF
        self.pids.discard(pid)
        return pid

    def refill(self, backend: tuple[str, bool]) -> None:
        """Fork a spare for ``backend`` unless one is waiting (best effort: none if fork
        fails). The supervisor asks once a child is ready: not sooner, or the spare's start
        would compete with that child's for the CPU."""
        if self._spare is not None:
            if self._spare[2] == backend:
                return
            self._spare[1].close()  # the wrong backend (never, in practice): it exits at EOF
            self._spare = None
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            pid = fork_spare(theirs, backend, self.lifeline_fd, (*self._own_fds, mine.fileno()))
        except OSError:
            mine.close()
            return
        finally:
            theirs.close()
        self.pids.add(pid)
        self._spare = (pid, mine, backend)

    def reaped(self, pid: int) -> bool:
        """Whether ``pid``, just reaped, was a spare (not a child: no exit to report)."""
        if pid not in self.pids:
            return False
        self.pids.discard(pid)
        if self._spare is not None and self._spare[0] == pid:
            self._spare[1].close()
            self._spare = None
        return True


def _backend_of(spec: dict[str, Any]) -> tuple[str, bool]:
    return (spec["backend"], bool(spec.get("uvloop")))


def fork_spare(
    sock: socket.socket, backend: tuple[str, bool], lifeline_fd: int, close_fds: tuple[int, ...]
) -> int:
    """Fork a spare child that starts ``backend``'s event loop and waits on ``sock`` for
    ``["spec", spec]`` and the child's stdout and stderr (EOF: it exits); its pid."""
    forkserver_pid = os.getpid()
    pid = _fork()
    if pid:
        return pid
    # --- in the spare: never return from here -------------------------------------------------
    code = 1
    try:
        _start_child(close_fds)

        async def wait_spec() -> dict[str, Any] | None:
            import anyio

            await anyio.wait_readable(sock)
            received = recv_message(sock)
            sock.close()
            if received is None:
                return None
            (_, spec), fds = received
            _take_output(fds)
            return cast("dict[str, Any]", spec)

        from ._child import run_spare

        code = run_spare(wait_spec, lifeline_fd, forkserver_pid, *backend)
    finally:
        _exit_child(code)
    raise AssertionError("unreachable")  # pragma: no cover


def _main(argv: list[str]) -> None:
    """``python -c <bootstrap> <ctl_fd> <lifeline_fd> <parent_pid> <log_level> <preload,...>
    [<backend> <uvloop: 0 or 1> [<socket_dir>]]`` (the backend to rehearse; the supervisor's
    socket directory, removed if the supervisor dies first)."""
    ctl_fd, lifeline_fd, parent_pid = (int(x) for x in argv[:3])
    log_level = argv[3]
    preload = [name for name in argv[4].split(",") if name]
    backend = (argv[5], argv[6] == "1") if len(argv) >= 7 else None
    socket_dir = argv[7] if len(argv) >= 8 else None
    try:
        serve(ctl_fd, lifeline_fd, parent_pid, log_level, preload, backend, socket_dir)
    except OSError as exc:
        if exc.errno not in (errno.EPIPE, errno.ECONNRESET):
            raise
