"""The forkserver on another host: started over SSH by ``_ssh``, it forks children there.

It is ``_forkserver`` with a byte stream instead of a socketpair: the SSH channel's stdin
carries the supervisor's messages, its stdout ours, each a frame (4-byte big-endian length, then
one msgpack array). Descriptors cannot cross SSH, so the children's stdout and stderr are pipes
read here and sent on as ``["output", pid, 1|2, bytes]``, before that child's ``["exit", pid,
code]``. Forking (``fork_child``) and reaping (``Reaper``) are ``_forkserver``'s own.

Invariants owned here:
- The SSH channel is the lifeline: at EOF on stdin (the supervisor closed it, died, or the SSH
  connection dropped: the SSH server closes the channel), or when nothing, not even the
  supervisor's ping, arrived for ``silence`` seconds (a link that died without a word), this
  process stops every child's group with SIGKILL, reaps them and exits. Each child watches a
  lifeline pipe whose only write end is held here, and PR_SET_PDEATHSIG, so none outlives it
  even if it is SIGKILLed. Its own parent (the SSH server's session) dying sends it SIGTERM.
- Nothing but frames is written to the control stream: fd 1 is pointed at stderr (which the
  supervisor relays, prefixed ``[forkserver@host]``) and frames go to a duplicate of it.
- This loop never blocks on the control stream: frames wait in ``outbox`` while the channel is
  full, so the lifeline and the silence check run whatever the supervisor's side does.
- One child's output never holds up the channel (another child's spawn or exit behind it): a
  child's stdout, and its stderr, may each have at most ``WINDOW`` bytes sent on that the
  supervisor has not yet said it wrote out (``["credit", pid, 1|2, n]``). Past it that pipe is
  not read, and the child waits in its own write, as a local child does. At a child's exit
  what its pipes still hold goes on (at most a pipe's size more), then its ``exit``, and its
  pipes are closed: nothing more is said of that pid.
- The children's sockets live in a private directory made here (``sup-<pid>-...`` under the
  default socket root) and removed on the way out.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import struct
import sys
import time
from typing import Any, Final

from .._proto._msgpack import pack_value, unpack_value
from .._transports._unix import default_socket_root, ensure_socket_dir
from ._forkserver import MAX_MESSAGE, Reaper, fork_child, output_pipes
from ._parentdeath import EXIT_PARENT_LOST, set_parent_death_signal
from ._sockets import make_socket_dir, sweep_socket_dirs

__all__ = ["PROTOCOL", "WINDOW", "FrameReader", "pack_frame", "serve_stream"]

#: Bumped when the messages change: the supervisor refuses a forkserver that speaks another.
PROTOCOL: Final = 2
_HEADER: Final = struct.Struct(">I")
_READ: Final = 65536
MAX_FRAME: Final = MAX_MESSAGE + _READ  # a spawn message, or a chunk of a child's output
#: Bytes of one child stream sent on ahead of the supervisor's credit for them.
WINDOW: Final = 4 * _READ
_DRAIN_READS: Final = 32  # at a child's exit: what its pipe holds (a pipe is 64 KiB-1 MiB)


def pack_frame(message: Any) -> bytes:
    data = pack_value(message)
    return _HEADER.pack(len(data)) + data


class FrameReader:
    """Splits a byte stream into messages."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Any]:
        """The messages completed by ``data``. Raises ValueError on a frame too large."""
        self._buffer += data
        messages = []
        while len(self._buffer) >= _HEADER.size:
            (size,) = _HEADER.unpack_from(self._buffer)
            if size > MAX_FRAME:
                raise ValueError(f"a control frame of {size} bytes (at most {MAX_FRAME})")
            if len(self._buffer) < _HEADER.size + size:
                break
            payload = bytes(self._buffer[_HEADER.size : _HEADER.size + size])
            del self._buffer[: _HEADER.size + size]
            messages.append(unpack_value(payload))
        return messages


def _readable(fd: int) -> bool:
    """Whether ``fd`` has data or its end now (poll: select refuses descriptors >= 1024)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


def _parent_gone(signum: int, frame: object) -> None:
    raise SystemExit(EXIT_PARENT_LOST)


class _Output:
    """A child's stdout or stderr pipe, read here, and the bytes it may still send on."""

    __slots__ = ("credit", "paused", "pid", "stream")

    def __init__(self, pid: int, stream: int) -> None:
        self.pid = pid
        self.stream = stream
        self.credit = WINDOW
        self.paused = False  # out of credit: not polled


class _Server:
    def __init__(self, out_fd: int, lifeline: tuple[int, int], sock_dir: str) -> None:
        self.out_fd = out_fd
        self.lifeline = lifeline
        self.sock_dir = sock_dir
        self.children: set[int] = set()
        self.reaper = Reaper(self.children, self.report)
        self.outputs: dict[int, _Output] = {}  # by read end
        self.streams: dict[tuple[int, int], int] = {}  # (pid, 1 or 2): read end
        self.outbox = bytearray()
        self.polling_out = False  # for room on the channel: while the outbox holds frames
        self.poller = select.poll()

    def send(self, message: Any) -> None:
        self.outbox += pack_frame(message)
        self.flush()

    def flush(self) -> None:
        """Write what the channel takes now; poll for room while some is left."""
        try:
            while self.outbox:
                del self.outbox[: os.write(self.out_fd, self.outbox)]
        except BlockingIOError:
            pass
        if bool(self.outbox) != self.polling_out:
            self.polling_out = bool(self.outbox)
            if self.polling_out:
                self.poller.register(self.out_fd, select.POLLOUT)
            else:
                self.poller.unregister(self.out_fd)

    def forward(self, fd: int, *, drain: bool = False) -> bool:
        """Send on what child output ``fd`` holds, within its credit unless ``drain`` (its
        child exited); False at its end (then it is closed)."""
        output = self.outputs[fd]
        size = _READ if drain else min(_READ, output.credit)
        if size <= 0:
            self._pause(fd, output)
            return True
        try:
            data = os.read(fd, size)
        except BlockingIOError:
            return True
        except OSError:
            data = b""
        if data:
            output.credit -= len(data)
            self.send(["output", output.pid, output.stream, data])
            if output.credit <= 0 and not drain:
                self._pause(fd, output)
            return True
        self._close(fd)
        return False

    def _pause(self, fd: int, output: _Output) -> None:
        if not output.paused:
            output.paused = True
            self.poller.unregister(fd)

    def _close(self, fd: int) -> None:
        output = self.outputs.pop(fd)
        del self.streams[output.pid, output.stream]
        if not output.paused:
            self.poller.unregister(fd)
        os.close(fd)

    def credit(self, pid: int, stream: int, count: int) -> None:
        """The supervisor wrote out ``count`` more bytes of this stream: read on."""
        fd = self.streams.get((pid, stream))
        if fd is None:
            return  # its child exited meanwhile
        output = self.outputs[fd]
        output.credit += count
        if output.paused and output.credit > 0:
            output.paused = False
            self.poller.register(fd, select.POLLIN)

    def report(self, pid: int, code: int) -> None:
        # Its last output first: whatever it wrote before it exited is in the pipes now.
        for stream in (1, 2):
            fd = self.streams.get((pid, stream))
            for _ in range(_DRAIN_READS):
                if fd not in self.outputs or not _readable(fd):
                    break
                self.forward(fd, drain=True)
            if fd in self.outputs:
                self._close(fd)  # a descendant that left its group still holds it
        self.send(["exit", pid, code])

    def handle(self, message: Any, own_fds: tuple[int, ...]) -> None:
        kind = message[0]
        if kind == "spawn":
            _, seq, spec = message
            try:
                spec["config"]["socket_root"] = self.sock_dir
                pipes = output_pipes()
                try:
                    close = (*own_fds, *self.outputs, pipes[0][0], pipes[1][0])
                    pid = fork_child(spec, [pipes[0][1], pipes[1][1]], self.lifeline[0], close)
                finally:
                    for _, write_end in pipes:
                        os.close(write_end)
            except Exception as exc:
                self.send(["error", seq, f"{type(exc).__name__}: {exc}"])
                return
            self.reaper.forked(pid)
            for stream, (read_end, _) in enumerate(pipes, start=1):
                os.set_blocking(read_end, False)
                self.outputs[read_end] = _Output(pid, stream)
                self.streams[pid, stream] = read_end
                self.poller.register(read_end, select.POLLIN)
            self.send(["spawned", seq, pid])
        elif kind == "credit":
            _, pid, stream, count = message
            self.credit(pid, stream, count)
        elif kind == "kill":
            _, pid, sig = message
            if pid in self.children:
                try:
                    os.killpg(pid, sig)
                except ProcessLookupError:
                    pass
        # "ping": only keeps the silence timer from running out


def serve_stream(
    log_level: str,
    preload: list[str],
    silence: float,
    backend: tuple[str, bool] | None = None,
) -> None:
    """Main loop of a remote forkserver: control frames on fd 0, ours on fd 1. ``backend``:
    the children's, rehearsed first (``_rehearsal``)."""
    signal.signal(signal.SIGTERM, _parent_gone)
    signal.signal(signal.SIGHUP, _parent_gone)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    set_parent_death_signal(os.getppid(), signal.SIGTERM)
    out_fd = os.dup(1)
    os.set_inheritable(out_fd, False)
    os.set_blocking(out_fd, False)  # (fd 1 is pointed elsewhere below: the pipe is ours)
    os.dup2(2, 1)  # stray writes to stdout land in stderr, never inside a frame
    import importlib

    for name in preload:
        importlib.import_module(name)
    if backend is not None:
        from ._rehearsal import rehearse

        rehearse(*backend)
    from ._child import setup_logging

    setup_logging(log_level)
    try:
        importlib.import_module("setproctitle").setproctitle(
            "ipcactors forkserver (remote supervisor)"
        )
    except ImportError:
        pass
    root = default_socket_root()
    ensure_socket_dir(root, private=True)
    sweep_socket_dirs(root)  # what forkservers killed here left (their pids are this host's)
    lifeline = os.pipe2(os.O_CLOEXEC)
    server = _Server(out_fd, lifeline, make_socket_dir(root))
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    own_fds = (out_fd, wake_r, wake_w, lifeline[1])  # a child closes these
    reader = FrameReader()
    try:
        server.send(["ready", PROTOCOL, os.getpid(), server.sock_dir])
        os.set_blocking(0, False)
        server.poller.register(0, select.POLLIN)
        server.poller.register(wake_r, select.POLLIN)
        heard = time.monotonic()
        running = True
        while running:
            dying = server.reaper.poll_timeout  # (-1: no group is dying)
            for fd, _ in server.poller.poll(500 if dying < 0 else dying):
                if fd == 0:
                    try:
                        data = os.read(0, _READ)
                    except BlockingIOError:
                        continue
                    if not data:
                        running = False  # the lifeline: the channel is closed
                        break
                    heard = time.monotonic()
                    for message in reader.feed(data):
                        server.handle(message, own_fds)
                elif fd == wake_r:
                    try:
                        while os.read(wake_r, 512):
                            pass
                    except BlockingIOError:
                        pass
                elif fd == out_fd:
                    server.flush()
                elif fd in server.outputs:
                    server.forward(fd)
            server.reaper.reap()
            if time.monotonic() - heard > silence:
                print(
                    f"ipcactors forkserver: nothing from the supervisor for {silence} s; "
                    "stopping every child",
                    file=sys.stderr,
                )
                running = False
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for pid in server.children:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in server.children:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        shutil.rmtree(server.sock_dir, ignore_errors=True)


def _main(argv: list[str]) -> None:
    """``python -c <bootstrap> <log_level> <preload,...> <silence seconds> [<backend>
    <uvloop: 0 or 1>]`` (the backend to rehearse)."""
    log_level, preload, silence = argv[:3]
    backend = (argv[3], argv[4] == "1") if len(argv) >= 5 else None
    try:
        serve_stream(
            log_level, [name for name in preload.split(",") if name], float(silence), backend
        )
    except (BrokenPipeError, ConnectionResetError):
        pass  # the channel is gone: the finally above stopped everything
