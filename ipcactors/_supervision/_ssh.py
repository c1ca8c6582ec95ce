"""Children on another host: a launcher that starts a forkserver there over SSH (asyncssh).

``SSHHost`` describes the host (address, user, keys, known_hosts, the Python environment);
``Supervisor(hosts={"gpu-2": SSHHost(...)})`` and ``sup.spawn(worker, id=..., host="gpu-2")``
put a child there. The supervisor makes one ``SSHLauncher`` per host, when it first needs it.

Invariants owned here:
- One SSH connection per host and launcher, one forkserver (``_remoteserver``) run over it as
  a command, started once and reused by every child of that host; it forks the children
  there. A launcher whose connection or forkserver is lost is dead: a new spawn or restart on
  that host makes a new one (a new connection), which fails with a :class:`SpawnError` naming
  the cause (unreachable, host key not trusted, login refused) and so counts toward the
  supervisor's restart intensity like any failed restart.
- The SSH channel is the remote side's lifeline: when this launcher closes it, when the
  supervisor dies (the TCP connection closes with the process) or when the connection drops,
  the remote forkserver sees EOF and SIGKILLs every child's group at once; over a link that
  died silently, it stops them once it heard nothing (not even our ping, every
  ``keepalive`` s) for ``lifeline_timeout`` s. On our side a lost connection is noticed at
  once when it closes, else within about ``4 * keepalive`` s (three unanswered asyncssh
  keepalives), and every child of the host is reported killed (``on_exit(-SIGKILL)``) then:
  the supervisor restarts them.
- Each child connects back to the supervisor over TCP: TLS when the host names a CA file,
  and the supervisor's ``auth_key`` (a supervisor with hosts refuses to start with neither).
- The children's output arrives in frames and is written into the pipes the supervisor
  relays, prefixed ``[id@host]``; the forkserver's own stderr as ``[forkserver@host]``. The
  channel's reader never waits for a pipe: what a pipe cannot take yet waits in its
  ``_ChildStream``, and each byte written out is credited back to the forkserver, which sends
  at most ``WINDOW`` bytes a stream ahead of its credit; so what waits here is bounded, and a
  child whose output is not read waits in its own write, as a local one does, while the
  host's other children are spawned, answer and exit.
- asyncssh runs on asyncio, and so does this launcher: for a supervisor on Trio it runs in a
  helper thread with an asyncio loop of its own (``_asyncio_thread``), one per host. asyncssh
  is imported only here, only when a launcher starts.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Final

import anyio
from anyio.abc import TaskGroup

from .._config import check_seconds, shown
from .._errors import ConfigError, SpawnError
from .._transports._backend import current_backend
from ._asyncio_thread import AsyncioThreadLauncher
from ._launcher import LaunchContext, Launcher
from ._remoteserver import PROTOCOL, WINDOW, FrameReader, pack_frame
from ._spawner import KILL_WAIT, wait_either

__all__ = ["SSHHost", "SSHLauncher"]

_BOOTSTRAP: Final = (
    "import sys;from ipcactors._supervision._remoteserver import _main;_main(sys.argv[1:])"
)
_START: Final = 30.0  # seconds the remote interpreter gets to import and report ready


# A variable name env(1) and every shell take as one (POSIX's portable names).
_VARIABLE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True, slots=True)
class SSHHost:
    """A host the supervisor starts children on over SSH (``Supervisor(hosts={name: ...})``).

    The remote host needs the same version of ipcactors (and the children's code) importable by
    ``python``; ``cwd`` and ``env`` complete the environment (``PYTHONPATH`` for example).
    """

    #: The host's name or address, as ``ssh`` would take it.
    address: str
    #: The SSH server's port.
    port: int = 22
    #: The user to log in as; ``None``: the local user's name (or ``~/.ssh/config``).
    user: str | None = None
    #: Private key files to log in with; ``None``: ``~/.ssh/id_*`` and the SSH agent.
    client_keys: tuple[str, ...] | None = None
    #: The known_hosts file that must list the host's key; ``None``: ``~/.ssh/known_hosts``.
    #: There is no way to skip the check: an unknown host key is refused.
    known_hosts: str | None = None
    #: The Python interpreter on the host (a path, or a name its PATH finds).
    python: str = "python3"
    #: The working directory of the forkserver and the children there; ``None``: the login's.
    cwd: str | None = None
    #: Environment variables for the forkserver and the children (on top of the login's).
    env: Mapping[str, str] = field(default_factory=dict)
    #: The supervisor's address as the host reaches it; ``None``: this machine's address on
    #: the SSH connection to it (the one the host sees).
    connect_back: str | None = None
    #: A CA file on that host to verify the supervisor's TLS certificate (``Supervisor(tls=)``)
    #: with; ``None``: the children connect back over plain TCP, with ``auth_key``.
    tls_cafile: str | None = None
    #: Seconds the SSH connection may take (then: unreachable).
    connect_timeout: float = 10.0
    #: Seconds between pings on the SSH channel (asyncssh's keepalive too): a dead link is
    #: noticed here within about 4 of them (3 unanswered keepalives).
    keepalive: float = 2.0
    #: Seconds the remote forkserver waits without hearing from us before it stops every
    #: child and exits: the bound on a remote orphan's life over a link that died silently.
    lifeline_timeout: float = 10.0

    def __post_init__(self) -> None:
        if not isinstance(self.address, str) or not self.address:
            raise ConfigError(
                f"SSHHost address must be a host name or address, got {shown(self.address)}"
            )
        if type(self.port) is not int or not 0 < self.port < 65536:
            raise ConfigError(f"SSHHost port must be 1-65535, got {shown(self.port)}")
        for name in ("user", "known_hosts", "cwd", "connect_back", "tls_cafile"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ConfigError(
                    f"SSHHost {name} must be a non-empty string or None, got {shown(value)}"
                )
        if not isinstance(self.python, str) or not self.python:
            raise ConfigError(f"SSHHost python must name an interpreter, got {shown(self.python)}")
        keys = self.client_keys
        if keys is not None and (
            isinstance(keys, str) or not all(isinstance(key, str) and key for key in keys)
        ):
            raise ConfigError(
                f"SSHHost client_keys must be a tuple of file paths, got {shown(keys)}"
            )
        if keys is not None:
            object.__setattr__(self, "client_keys", tuple(keys))
        if not isinstance(self.env, Mapping) or not all(
            isinstance(k, str) and _VARIABLE.fullmatch(k) and isinstance(v, str) and "\0" not in v
            for k, v in self.env.items()
        ):
            raise ConfigError(
                "SSHHost env must map variable names (letters, digits and _, not first a digit) "
                f"to strings, got {self.env!r:.200}"
            )
        object.__setattr__(self, "env", dict(self.env))
        check_seconds("SSHHost connect_timeout", self.connect_timeout)
        check_seconds("SSHHost keepalive", self.keepalive)
        check_seconds("SSHHost lifeline_timeout", self.lifeline_timeout)
        if self.lifeline_timeout <= self.keepalive:
            raise ConfigError(
                f"SSHHost lifeline_timeout ({self.lifeline_timeout} s) must exceed keepalive "
                f"({self.keepalive} s): the remote side would stop between two pings"
            )

    def where(self) -> str:
        """``user@address:port``, for messages."""
        user = f"{self.user}@" if self.user else ""
        address = f"[{self.address}]" if ":" in self.address else self.address  # IPv6
        return f"{user}{address}:{self.port}"

    def command(
        self, log_level: str, preload: tuple[str, ...], backend: tuple[str, bool] | None = None
    ) -> str:
        """The shell command that starts the forkserver (any sshd runs it with the login's
        shell; the environment goes through ``env``, which needs no AcceptEnv); ``backend``:
        the children's, which it rehearses first."""
        words = ["env", *(f"{k}={v}" for k, v in self.env.items()), self.python, "-c"]
        words += [_BOOTSTRAP, log_level, ",".join(preload), str(self.lifeline_timeout)]
        if backend is not None:
            words += [backend[0], "1" if backend[1] else "0"]
        command = "exec " + " ".join(shlex.quote(word) for word in words)
        if self.cwd is not None:
            command = f"cd {shlex.quote(self.cwd)} && {command}"
        return command

    def launcher(self, name: str, context: LaunchContext) -> Launcher:
        """A new launcher for this host, known to the supervisor as ``name`` (on Trio, run
        in a helper thread with an asyncio loop of its own: asyncssh runs on asyncio)."""
        if current_backend()[0] != "asyncio":
            return AsyncioThreadLauncher(partial(SSHLauncher, name, self), context)
        return SSHLauncher(name, self, context)


def _first_error(exc: BaseException) -> BaseException:
    """``exc``, or the first error a task group's group of them holds (the rest of a lost
    connection are its echoes)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


@dataclass(eq=False)
class _Spawning:
    on_exit: Callable[[int], None]
    fds: list[int]
    done: anyio.Event = field(default_factory=anyio.Event)
    pid: int | None = None
    error: str | None = None
    abandoned: bool = False  # its spawn gave up waiting: a pid that comes is killed at once


class _ChildStream:
    """Our end of the pipe a remote child's stdout (1) or stderr (2) is relayed from: what
    the channel brings is written in as the relay takes it, the rest waits here (at most
    about ``WINDOW``: the forkserver sends no more ahead of our credit)."""

    def __init__(self, fd: int, pid: int, stream: int, send: Callable[[Any], bool]) -> None:
        self.fd = fd
        self.pid = pid
        self.stream = stream
        self._send = send
        self._pending = bytearray()
        self._owed = 0  # written out, not credited yet
        self._draining = False
        self._ended = False  # its child exited: closed once what waits is written

    def take(self, data: bytes, task_group: TaskGroup) -> None:
        if self.fd < 0:
            return
        if not self._pending:
            written = self._write(data)
            if written == len(data):
                return
            data = data[written:]
        self._pending += data
        if not self._draining:
            self._draining = True
            task_group.start_soon(self._drain)

    def _write(self, data: bytes | bytearray) -> int:
        try:
            written = os.write(self.fd, data)
        except BlockingIOError:
            return 0
        except OSError:
            written = len(data)  # nobody reads it any more: dropped, as locally
        self._owed += written
        if self._owed >= WINDOW // 4 or written == len(data):
            self._credit()
        return written

    def _credit(self) -> None:
        if self._owed and not self._ended:  # (after its exit the forkserver forgot it)
            self._send(["credit", self.pid, self.stream, self._owed])
        self._owed = 0

    async def _drain(self) -> None:
        try:
            while self._pending and self.fd >= 0:
                await anyio.wait_writable(self.fd)
                del self._pending[: self._write(self._pending)]
        finally:
            self._draining = False
            if self._ended:
                self.close()

    def end(self) -> None:
        """Its child exited: close once what waits is written out."""
        self._ended = True
        if not self._draining:
            self.close()

    def close(self) -> None:
        self._pending.clear()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class SSHLauncher:
    """Children on one host: an SSH connection, a forkserver run over it (``_remoteserver``)."""

    def __init__(self, name: str, host: SSHHost, context: LaunchContext) -> None:
        self.name = name
        self.host = host
        self._context = context
        self._log = context.log
        self.dead = False
        self._started = False
        self._ready = anyio.Event()
        self._gone = anyio.Event()
        self._done = anyio.Event()
        self._scope = anyio.CancelScope()
        self._error: SpawnError | None = None
        self._process: Any = None
        self._connect_back: str | None = None
        self._seq = 0
        self._pending: dict[int, _Spawning] = {}
        self._live: dict[int, Callable[[int], None]] = {}
        self._streams: dict[tuple[int, int], _ChildStream] = {}  # (pid, 1 or 2)
        self._task_group: TaskGroup | None = None  # _serve's: the streams' drains
        self._stderr = -1
        self._closing = False

    def __repr__(self) -> str:
        return f"<SSHLauncher {self.name!r} {self.host.where()}>"

    async def wait_ready(self) -> None:
        if not self._started:
            self._started = True
            self._context.task_group.start_soon(self._run)
        with anyio.move_on_after(self.host.connect_timeout + _START):
            await wait_either(self._ready, self._gone)
        if self._error is not None:
            raise self._error
        where = f"the forkserver on host {self.name!r} ({self.host.where()})"
        if self.dead:
            status = getattr(self._process, "exit_status", None)
            exited = f" (its command exited with status {status})" if status is not None else ""
            raise SpawnError(
                f"{where} did not start{exited}; what it printed, if anything, is above, "
                f"prefixed [forkserver@{self.name}]"
            )
        if not self._ready.is_set():
            bound = self.host.connect_timeout + _START
            raise SpawnError(
                f"{where} did not report ready within {bound:g} s (connect_timeout + "
                f"{_START:g} s): its command runs, but never started it (an interpreter that "
                "hangs, a login script waiting for input?); what it printed, if anything, is "
                f"above, prefixed [forkserver@{self.name}]"
            )

    # --- the connection -----------------------------------------------------------------------

    async def _run(self) -> None:
        connection = None
        try:
            with self._scope:
                connection = await self._connect()
                await self._serve(connection)
            if self._ready.is_set() and not self._closing:
                self._log.warning(
                    f"the forkserver on host {self.name!r} ended (the SSH channel closed); "
                    "its children are gone"
                )
        except Exception as caught:  # asyncssh's errors, OSError, ours (a task's: in a group)
            exc = _first_error(caught)
            if isinstance(exc, SpawnError):
                self._error = exc
            elif not self._ready.is_set():
                self._error = SpawnError(
                    f"could not start the forkserver on host {self.name!r} "
                    f"({self.host.where()}): {type(exc).__name__}: {exc}"
                )
                self._error.__cause__ = exc
            else:
                self._log.warning(
                    f"SSH connection to host {self.name!r} lost: {type(exc).__name__}: {exc}"
                )
        finally:
            self._lost()
            if connection is not None:
                connection.abort()
                with anyio.move_on_after(KILL_WAIT, shield=True):
                    await connection.wait_closed()
            self._done.set()

    async def _connect(self) -> Any:
        try:
            import asyncssh
        except ImportError as exc:  # checked when the supervisor starts; kept for a clear error
            raise SpawnError("SSH hosts need asyncssh: install ipcactors[ssh]") from exc
        host = self.host
        where = f"host {self.name!r} ({host.where()})"
        options: dict[str, Any] = {
            "port": host.port,
            "connect_timeout": host.connect_timeout,
            "keepalive_interval": host.keepalive,
            "keepalive_count_max": 3,
        }
        if host.user is not None:
            options["username"] = host.user
        if host.client_keys is not None:
            options["client_keys"] = list(host.client_keys)
            options["agent_path"] = None  # these keys, and only these
        # Named, never left to asyncssh's default: that reads ~/.ssh/config, where
        # 'UserKnownHostsFile none' would turn the host key check off. Read here, so that a
        # file that cannot be read or parsed is named (asyncssh's ValueError names no file).
        known_hosts = host.known_hosts or os.path.expanduser("~/.ssh/known_hosts")
        try:
            options["known_hosts"] = asyncssh.read_known_hosts(known_hosts)
        except (OSError, ValueError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else str(exc)
            raise SpawnError(f"{where}: cannot read its known_hosts, {known_hosts}: {why}") from exc
        try:
            with anyio.fail_after(host.connect_timeout):
                return await asyncssh.connect(host.address, **options)
        except asyncssh.HostKeyNotVerifiable as exc:
            raise SpawnError(
                f"{where} refused: its host key is not in the known_hosts ({known_hosts}): "
                f"{exc}. Add the host's key there (ssh-keyscan) after checking it"
            ) from exc
        except asyncssh.KeyImportError as exc:  # (not a key, or one asyncssh cannot take)
            path = _unimportable(asyncssh, host.client_keys or ())
            raise SpawnError(f"{where}: cannot read a client key, {path}: {exc}") from exc
        except asyncssh.PermissionDenied as exc:
            raise SpawnError(
                f"{where} refused the login of user {host.user or '(default)'!r}: {exc}. "
                "Check the user and that its authorized_keys holds one of client_keys"
            ) from exc
        except (OSError, TimeoutError, asyncssh.Error) as exc:
            keys = host.client_keys or ()
            if isinstance(exc, OSError) and exc.filename is not None and exc.filename in keys:
                raise SpawnError(
                    f"{where}: cannot read a client key, {exc.filename}: {exc.strerror}"
                ) from exc
            raise SpawnError(
                f"{where} is unreachable: {type(exc).__name__}: {str(exc) or 'no answer'} "
                f"(connect_timeout={host.connect_timeout} s)"
            ) from exc

    async def _serve(self, connection: Any) -> None:
        context = self._context
        sockname = connection.get_extra_info("sockname")
        self._connect_back = self.host.connect_back or (sockname[0] if sockname else None)
        command = self.host.command(context.log_level, context.preload, context.backend)
        process = self._process = await connection.create_process(command, encoding=None)
        quiet_read, quiet_write = os.pipe2(os.O_CLOEXEC)
        os.close(quiet_write)
        try:
            read_end, self._stderr = os.pipe2(os.O_CLOEXEC)
        except OSError:
            os.close(quiet_read)
            raise
        os.set_blocking(self._stderr, False)
        try:
            context.relay((quiet_read, read_end), f"forkserver@{self.name}")
        except OSError:  # (out of descriptors: the relay took neither)
            for fd in (quiet_read, read_end, self._stderr):
                os.close(fd)
            self._stderr = -1
            raise
        try:
            async with anyio.create_task_group() as task_group:
                self._task_group = task_group
                task_group.start_soon(self._relay_stderr, process.stderr)
                task_group.start_soon(self._ping)
                await self._read(process.stdout)
                task_group.cancel_scope.cancel()
        finally:
            os.close(self._stderr)
            self._stderr = -1

    async def _read(self, stdout: Any) -> None:
        reader = FrameReader()
        first = b""  # the stream's first bytes, to show what it was if it is not frames
        while True:
            data = await stdout.read(65536)
            if not data:
                return
            first = first or data[:60]
            try:
                messages = reader.feed(data)
            except Exception as exc:  # a frame too large, or not msgpack
                raise SpawnError(
                    f"the forkserver on host {self.name!r} ({self.host.where()}) wrote what is "
                    f"not its protocol on stdout ({exc}), starting {first!r}: a login script "
                    "or a wrapper around python that prints to stdout (a .bashrc echo, a "
                    "'Last login' line) must not"
                ) from exc
            for message in messages:
                if not self._dispatch(message):
                    return

    async def _relay_stderr(self, stderr: Any) -> None:
        while True:
            data = await stderr.read(65536)
            if not data:
                return
            await _write(self._stderr, data)

    async def _ping(self) -> None:
        while True:
            await anyio.sleep(self.host.keepalive)
            self._send(["ping"])

    def _send(self, message: Any) -> bool:
        process = self._process
        if process is None or self.dead:
            return False
        try:
            process.stdin.write(pack_frame(message))
        except Exception:  # the channel is closing: its end is being reported
            return False
        return True

    def _dispatch(self, message: Any) -> bool:
        """Act on one message of the forkserver's; False: stop talking to it."""
        kind = message[0]
        if kind == "output":
            _, pid, stream, data = message
            child_stream = self._streams.get((pid, stream))
            if child_stream is not None:
                assert self._task_group is not None
                child_stream.take(data, self._task_group)
        elif kind == "exit":
            _, pid, code = message
            for stream in (1, 2):
                child_stream = self._streams.pop((pid, stream), None)
                if child_stream is not None:
                    child_stream.end()
            on_exit = self._live.pop(pid, None)
            if on_exit is not None:
                on_exit(code)
        elif kind == "spawned":
            spawning = self._pending.get(message[1])
            if spawning is not None:
                spawning.pid = pid = message[2]
                self._live[pid] = spawning.on_exit
                spawning.done.set()
                if spawning.abandoned:  # nobody waits for it (its output goes nowhere)
                    del self._pending[message[1]]
                    self.kill(pid, signal.SIGKILL)
                else:
                    for stream, fd in enumerate(spawning.fds, start=1):
                        self._streams[pid, stream] = _ChildStream(fd, pid, stream, self._send)
                    spawning.fds = []
        elif kind == "error":
            spawning = self._pending.get(message[1])
            if spawning is not None:
                spawning.error = str(message[2])
                spawning.done.set()
                if spawning.abandoned:
                    del self._pending[message[1]]
        elif kind == "ready":
            if message[1] != PROTOCOL:
                self._error = SpawnError(
                    f"the forkserver on host {self.name!r} speaks protocol {message[1]}, we "
                    f"speak {PROTOCOL}: install the same ipcactors version there"
                )
                return False
            self._ready.set()
        return True

    def _lost(self) -> None:
        """The connection or the forkserver is gone: so are the children (the remote side
        stops them at the channel's end)."""
        self.dead = True
        self._gone.set()
        live, self._live = self._live, {}
        for on_exit in live.values():
            on_exit(-signal.SIGKILL)
        for child_stream in self._streams.values():
            child_stream.close()
        self._streams.clear()

    # --- the launcher interface ---------------------------------------------------------------

    async def spawn(
        self, spec: dict[str, Any], fds: list[int], name: str, on_exit: Callable[[int], None]
    ) -> int:
        connect_back = self._context.connect_back
        if connect_back is None or self._connect_back is None:
            raise SpawnError(f"could not start child {name!r}: no address to connect back to")
        remote = dict(spec)
        remote.update(
            sup_path=None,
            sup_addr=[self._connect_back, connect_back[1]],
            sup_tls=self.host.tls_cafile,
            path=None,  # the host's own interpreter, cwd and PYTHONPATH find the code
        )
        self._seq += 1
        seq = self._seq
        copies = [os.dup(fd) for fd in fds]
        for fd in copies:
            os.set_blocking(fd, False)
        spawning = self._pending[seq] = _Spawning(on_exit, copies)
        sent = returned = False
        try:
            if not self._send(["spawn", seq, remote]):
                raise SpawnError(f"could not start child {name!r}: host {self.name!r} is gone")
            sent = True
            with anyio.move_on_after(_START):
                await wait_either(spawning.done, self._gone)
            returned = True
        finally:
            if sent and not spawning.done.is_set() and not self.dead:
                spawning.abandoned = True  # (cancelled, or no answer yet): see _dispatch
            else:
                self._pending.pop(seq, None)
                if not returned and spawning.pid is not None:
                    self.kill(spawning.pid, signal.SIGKILL)  # (as in ForkServer.spawn)
            for fd in spawning.fds:  # not handed on to _streams: not started
                os.close(fd)
            spawning.fds = []
        if spawning.error is not None or spawning.pid is None:
            reason = spawning.error or f"host {self.name!r} did not answer"
            raise SpawnError(f"could not start child {name!r} on host {self.name!r}: {reason}")
        return spawning.pid

    def kill(self, pid: int, sig: int) -> None:
        if pid in self._live:
            self._send(["kill", pid, int(sig)])

    async def aclose(self) -> None:
        """Close the channel's stdin (the forkserver stops every child and exits), wait for
        its end (bounded), then close the connection."""
        self._closing = True
        if self._started and not self._done.is_set():
            process = self._process
            if process is not None and not self.dead:
                try:
                    process.stdin.write_eof()
                except Exception:
                    pass
                with anyio.move_on_after(KILL_WAIT):
                    await self._gone.wait()
            self._scope.cancel()
            await self._done.wait()


async def _write(fd: int, data: bytes) -> None:
    """Write ``data`` to the non-blocking pipe ``fd``, waiting while it is full (the relay
    reads it: backpressure to the host); dropped once nobody reads it."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            await anyio.wait_writable(fd)
        except OSError:
            return


def _unimportable(asyncssh: Any, paths: tuple[str, ...]) -> str:
    """The first of ``paths`` asyncssh cannot import as a private key (which its
    ``KeyImportError`` does not name)."""
    for path in paths:
        try:
            asyncssh.read_private_key(path)
        except (asyncssh.KeyImportError, OSError):
            return path
    return "(one of client_keys)"
