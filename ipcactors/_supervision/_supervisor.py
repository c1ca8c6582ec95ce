"""The supervisor: worker processes that connect back, restarted by OTP rules, never orphaned.

Invariants owned here:
- Only this module (through its forkserver handle in ``_spawner``) starts or signals a process:
  the forkserver, and through it the children; only ``_forkserver`` forks. Nothing forks a
  process that runs an event loop: the forkserver is started with fork + exec from the
  event-loop thread (PR_SET_PDEATHSIG is tied to the thread that forked), and it forks children
  from its own single-threaded, loop-free state.
- Every child is reaped (by the forkserver, its parent, which reports each exit here), and no
  child outlives the supervisor: the lifeline pipe's only write end lives in this process, and
  the forkserver and every child end themselves at its EOF, whatever killed us.
- Each child leads its own process group: SIGTERM and SIGKILL go to the whole group, and what
  is left in it when the child exits (however it exits, the supervisor's death included) is
  SIGKILLed. Only a process that left the group on purpose (``setsid()``) outlives its child.
- Restarts follow OTP: per child ``permanent`` (always), ``transient`` (after an abnormal exit),
  ``temporary`` (never); per supervisor ``one_for_one``, ``one_for_all``, ``rest_for_one``. More
  than ``max_restarts`` restarts within ``max_seconds`` stop every child, and the ``async with``
  raises :class:`RestartIntensityError` (in a child process that exits abnormally, which is how
  the failure escalates to the supervisor above). Its ``chain`` runs from this supervisor down
  to the child that kept failing, as far as each child reported its own give-up before exiting
  (``_child``); a missing report cuts it short, never blocks it.
- At most ``max_children`` children at once; one more ``spawn`` is a :class:`SpawnError` at
  once. The supervisor's own server holds ``max_connections + max_children`` clients, so the
  children never meet ``max_connections``, a limit meant for other actors.
- Every way a target can fail to load ends ``spawn`` with :class:`SpawnError`: in the parent's
  check (``_target``), or in the child, which reports the exception before it exits.
- Stopping a child is bounded at every step: the requests the supervisor sent it are answered
  and the stop message is obeyed within ``shutdown_timeout``, then SIGTERM and
  ``terminate_timeout``, then SIGKILL (both to the child's process group). When the
  supervisor stops (or gives up), every child's grace period starts at once under
  ``one_for_one``; under ``one_for_all`` and ``rest_for_one`` children stop one by one in
  reverse start order (a child still starting is stopped at once under every strategy).
  Leaving the ``async with`` never hangs.
- No lock over all children. Each child has its own (``_Child.lock``): spawn, a restart, stop
  and shutdown start or end its process one at a time, and different children's run side by
  side. A stop (or shutdown) interrupts a start in progress at once (``_Child.halt``,
  ``_halting``) instead of waiting for it. Restarts are decided in ``_on_exit``, with no await
  (decisions never interleave), only for the exit of a running child's current process that
  the supervisor did not cause; a start that fails is reported by its starter (``spawn``
  raises, a restart decides again). A decided restart claims its children (``restarting``); a
  newer decision covering one of them supersedes the older for it. ``one_for_one`` restarts
  run side by side; ``one_for_all`` and ``rest_for_one`` sequences, whose groups overlap, one
  at a time.
- A request to a child fails as soon as the child's process is known to have exited, with
  :class:`ChildExitedError` naming the child and its exit code or signal.
- The children's output never stalls the supervisor: it is written to our stdout and stderr by
  a thread per stream, bounded, with backpressure to the children (``_relay``).
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from types import TracebackType
from typing import Any, Final, Literal

import anyio
from anyio.abc import TaskGroup

from .._actor import Actor
from .._config import Config, check_seconds, request_timeout
from .._core._handlers import Handler
from .._core._server import Client, Server
from .._errors import (
    ChildExit,
    ChildExitedError,
    ClosedError,
    ConfigError,
    ConnectionLostError,
    EncodeError,
    IPCError,
    RemoteError,
    RequestTimeoutError,
    RestartIntensityError,
    SpawnError,
    UnknownPeerError,
)
from .._log import ActorLog
from .._proto._msgpack import pack_value
from .._runtime import current_runtime, end_with_run
from .._transports._unix import check_path_length, default_socket_root, ensure_socket_dir
from ._child import FAILED_EVENT, HELLO_EVENT, READY_EVENT, STOP_EVENT
from ._relay import OutputWriter, Stream, relay
from ._spawner import KILL_WAIT, ForkServer
from ._target import Target, target_of

__all__ = ["ChildInfo", "Supervisor"]

Strategy = Literal["one_for_one", "one_for_all", "rest_for_one"]
RestartType = Literal["permanent", "transient", "temporary"]

_STRATEGIES: Final = ("one_for_one", "one_for_all", "rest_for_one")
_RESTART_TYPES: Final = ("permanent", "transient", "temporary")
_RELAY_DRAIN: Final = 1.0  # seconds relays get to pass on a stopped child's last output
#: Children a supervisor holds at once unless told otherwise: far beyond what a machine runs
#: as worker processes, but a limit that fails with a clear error rather than a hidden one.
DEFAULT_MAX_CHILDREN: Final = 1000
_MAX_CHAIN: Final = 100  # steps of a reported escalation chain kept (deeper trees: cut short)


def describe_exit(code: int | None) -> str:
    """``"exited with code 1"``, ``"was killed by SIGKILL"``, ..."""
    if code is None:
        return "exited (status unknown)"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name}"
    return f"exited with code {code}"


def describe_chain(chain: tuple[ChildExit, ...]) -> str:
    """``"child 'a' of supervisor 'root' -> child 'b' of supervisor 'a-sup' exited with code
    3"``: who failed, down to the child that kept failing, and how it ended."""
    steps = " -> ".join(f"child {step.child!r} of supervisor {step.supervisor!r}" for step in chain)
    return f"{steps} {describe_exit(chain[-1].exitcode)}"


def _chain_of(data: Any) -> tuple[ChildExit, ...]:
    """A chain a child reported (``[[supervisor, child, exitcode], ...]``); empty if malformed."""
    if not isinstance(data, list) or not 0 < len(data) <= _MAX_CHAIN:
        return ()
    chain = []
    for step in data:
        if not (isinstance(step, list) and len(step) == 3):
            return ()
        supervisor, child, code = step
        if not (isinstance(supervisor, str) and isinstance(child, str)):
            return ()
        if not (code is None or type(code) is int):
            return ()
        chain.append(ChildExit(supervisor, child, code))
    return tuple(chain)


#: Where a child is: ``starting`` (a process is on its way to ready), ``running`` (ready),
#: ``restarting`` (a restart is decided: its old process is being stopped, or waits for its turn),
#: ``stopping`` (being stopped for good: ``stop``, shutdown, giving up), ``stopped`` (no process,
#: and none to come).
ChildState = Literal["starting", "running", "restarting", "stopping", "stopped"]


@dataclass(frozen=True, slots=True)
class ChildInfo:
    """A snapshot of one supervised child (``Supervisor.children``)."""

    id: str
    #: The function the child runs, as ``module.qualname``.
    target: str
    restart: RestartType
    #: The current process id; ``None`` while the child is not running.
    pid: int | None
    #: Whether the child is up: started, connected back and ready.
    running: bool
    #: How many times it was restarted.
    restarts: int
    #: Exit code of its last process (negative: killed by that signal); ``None`` if none ended.
    last_exit: int | None
    #: ``"starting"``, ``"running"``, ``"restarting"``, ``"stopping"`` or ``"stopped"``.
    state: ChildState = "running"


class _Incarnation:
    """One process of a child: from spawn to exit."""

    def __init__(self, child: _Child) -> None:
        self.child = child
        self.token = secrets.token_hex(16)
        self.pid: int | None = None
        self.client: Client | None = None
        self.ready = anyio.Event()
        self.exited = anyio.Event()
        self.exitcode: int | None = None
        self.stopping = False  # the supervisor is ending it: its exit is not a crash
        # Why it is about to exit, if it told us (FAILED_EVENT) before it did:
        self.load_error: RemoteError | None = None  # its target did not load
        self.chain: tuple[ChildExit, ...] = ()  # a supervisor in it gave up: down to whom
        self.inflight = 0
        self.idle = anyio.Event()
        self.idle.set()

    @property
    def running(self) -> bool:
        return (
            self.ready.is_set()
            and not self.exited.is_set()
            and not self.stopping
            and self.client is not None
        )


class _Child:
    """A supervised child and its state. Operations that start or end its process (spawn,
    a restart, stop, shutdown) hold its ``lock``: one at a time per child, never one for all
    children."""

    def __init__(self, id: str, target: Target, args: bytes, restart: RestartType) -> None:
        self.id = id
        self.target = target
        self.args = args
        self.restart: RestartType = restart
        self.incarnation: _Incarnation | None = None
        self.state: ChildState = "starting"
        self.restarts = 0
        self.last_exit: int | None = None
        self.removed = False
        self.lock = anyio.Lock()
        # Set when it is stopped for good: interrupts a start in progress at once.
        self.halt = anyio.Event()
        # The restart decided for it that has not started it yet (a newer one supersedes it).
        self.claim: object | None = None
        self._changed = anyio.Event()

    def changed(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_changed(self) -> None:
        await self._changed.wait()


async def _wait_any(*events: anyio.Event) -> None:
    """Return as soon as any of ``events`` is set."""
    if any(event.is_set() for event in events):
        return
    async with anyio.create_task_group() as task_group:

        async def wait(event: anyio.Event) -> None:
            await event.wait()
            task_group.cancel_scope.cancel()

        for event in events:
            task_group.start_soon(wait, event)


@asynccontextmanager
async def _no_lock() -> AsyncIterator[None]:
    yield


def _current_backend() -> tuple[str, bool]:
    """The running anyio backend (``"asyncio"`` or ``"trio"``) and whether asyncio is uvloop's."""
    if "trio" in sys.modules:
        import trio

        try:
            trio.lowlevel.current_task()
            return "trio", False
        except RuntimeError:
            pass
    import asyncio

    loop = asyncio.get_running_loop()
    return "asyncio", type(loop).__module__.startswith("uvloop")


def _sweep(root: str) -> None:
    """Remove the socket directories of supervisors that died without cleaning up."""
    try:
        names = os.listdir(root)
    except OSError:
        return
    uid = os.getuid()
    for name in names:
        if not name.startswith("sup-"):
            continue
        try:
            pid = int(name.split("-")[1])
        except (IndexError, ValueError):
            continue
        try:
            os.kill(pid, 0)
            continue  # alive (or a pid reused: leave it)
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        path = os.path.join(root, name)
        try:
            info = os.lstat(path)
        except OSError:
            continue
        if info.st_uid == uid and os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)


class Supervisor:
    """Spawns worker processes that connect back to it, and restarts them by OTP rules.

    ::

        async with ipcactors.Supervisor(strategy="one_for_one") as sup:
            await sup.spawn(worker, 1, id="w1")         # returns once w1 is connected and ready
            print(await sup.request("w1", "job", {"n": 3}))

    ``worker`` is an ``async def worker(actor, *args)`` importable by module and name; in the
    child, ``actor`` is an :class:`Actor` named by the child's id, serving its own socket (other
    children reach it with ``actor.connect_to(id)``, welcomed once it is ready) and already
    connected to the supervisor (``actor.parent``). Arguments travel as msgpack (numpy arrays
    included), never pickle.

    Parameters (defaults and why):

    - ``strategy``: ``"one_for_one"`` (default: restart only the child that died),
      ``"one_for_all"`` (stop and restart all), ``"rest_for_one"`` (the child and those started
      after it, which usually depend on it).
    - ``max_restarts``, ``max_seconds``: more than 3 restarts within 5 s (Elixir's defaults)
      means restarting does not help: every child is stopped and
      :class:`RestartIntensityError` raised (its ``chain`` names the children down to the one
      that kept failing, through nested supervisors).
    - ``id``: the supervisor's own actor id (children reach it under that name).
    - ``config`` / ``**overrides``: the :class:`Config` of the supervisor's actor and of the
      children (``socket_root`` is where the supervisor makes its private socket directory).
    - ``shutdown_timeout``: seconds a child gets, when stopped, to answer the requests the
      supervisor sent it and to obey the stop message (OTP's default for workers: 5 s).
    - ``terminate_timeout``: seconds between SIGTERM and SIGKILL (1 s).
    - ``start_timeout``: seconds a child gets to connect back and be ready (10 s).
    - ``max_children``: children supervised at once (1,000); one more ``spawn`` fails at once
      with :class:`SpawnError`. The supervisor's own server holds this many connections (one
      per child) on top of ``max_connections``, which bounds its other clients.
    - ``preload``: extra modules the forkserver imports once (e.g. ``["numpy"]``), so children
      start without importing them again.
    - ``log_level``: the children's log level (``"WARNING"``: their lifecycle lines are noise;
      their stdout and stderr are always passed on, prefixed with ``[id]``).

    Shutdown (leaving the ``async with``, ``aclose``, or giving up after too many restarts)
    stops each child in bounded steps: the stop message and ``shutdown_timeout``, SIGTERM and
    ``terminate_timeout``, SIGKILL. Under ``one_for_one`` the children are independent and
    every child's grace period starts at once: N children that ignore SIGTERM cost one
    ``shutdown_timeout + terminate_timeout``, not N. Under ``one_for_all`` and ``rest_for_one``,
    where later children usually depend on earlier ones, they stop one by one in reverse start
    order, each only once the ones started after it are gone (as OTP does).
    """

    def __init__(
        self,
        strategy: Strategy = "one_for_one",
        max_restarts: int = 3,
        max_seconds: float = 5.0,
        *,
        id: str = "supervisor",
        config: Config | None = None,
        shutdown_timeout: float = 5.0,
        terminate_timeout: float = 1.0,
        start_timeout: float = 10.0,
        max_children: int = DEFAULT_MAX_CHILDREN,
        preload: tuple[str, ...] | list[str] = (),
        log_level: str = "WARNING",
        **overrides: Any,
    ) -> None:
        if strategy not in _STRATEGIES:
            raise ConfigError(f"strategy must be one of {', '.join(_STRATEGIES)}, got {strategy!r}")
        if type(max_restarts) is not int or max_restarts < 0:
            raise ConfigError(f"max_restarts must be an integer >= 0, got {max_restarts!r}")
        for name, value in (
            ("max_seconds", max_seconds),
            ("shutdown_timeout", shutdown_timeout),
            ("terminate_timeout", terminate_timeout),
            ("start_timeout", start_timeout),
        ):
            check_seconds(name, value)
        if type(max_children) is not int or max_children < 1:
            raise ConfigError(f"max_children must be an integer >= 1, got {max_children!r}")
        if type(id) is not str or not id:
            raise ConfigError(f"a supervisor id must be a non-empty string, got {id!r}")
        self.id = id
        self.strategy: Strategy = strategy
        self.max_restarts = max_restarts
        self.max_seconds = float(max_seconds)
        self.shutdown_timeout = float(shutdown_timeout)
        self.terminate_timeout = float(terminate_timeout)
        self.start_timeout = float(start_timeout)
        self.max_children = max_children
        self.preload = [str(name) for name in preload]
        self.log_level = log_level
        self.config = (config or Config()).replace(id=id, **overrides)
        self._log = ActorLog(id, self.config.silent)
        self._children: dict[str, _Child] = {}  # in start order
        self._restart_times: deque[float] = deque()
        # Restarts of dependent strategies (one_for_all, rest_for_one) run one sequence at a
        # time: their groups overlap. one_for_one restarts never wait for each other.
        self._sequence = anyio.Lock()
        self._forkserver_lock = anyio.Lock()  # one replacement of a dead forkserver at a time
        # Set when shutting down or giving up: every start in progress is interrupted at once.
        self._halting = anyio.Event()
        self._actor: Actor | None = None
        self._server: Server | None = None
        self._task_group: TaskGroup | None = None
        self._forkserver: ForkServer | None = None
        self._lifeline: tuple[int, int] | None = None
        self._dir: str | None = None
        self._backend = "asyncio"
        self._uvloop = False
        self._relays: set[anyio.CancelScope] = set()
        self._writers: dict[Stream, OutputWriter] = {}  # made with the first child
        self._relays_idle = anyio.Event()
        self._relays_idle.set()
        self._entered = False
        self._closing = False
        self._closed = anyio.Event()
        self._hard = False
        self._failure: RestartIntensityError | None = None

    def __repr__(self) -> str:
        return f"<Supervisor {self.id!r} {self.strategy} children={list(self._children)}>"

    # --- lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> Supervisor:
        if self._entered:
            raise IPCError(f"supervisor {self.id!r} can be entered only once")
        self._entered = True
        self._backend, self._uvloop = _current_backend()
        root = self.config.socket_root or default_socket_root()
        ensure_socket_dir(root, private=self.config.socket_root is None)
        _sweep(root)
        self._dir = tempfile.mkdtemp(prefix=f"sup-{os.getpid()}-", dir=root)
        # Each child holds a connection to our server: they get places of their own, so that
        # neither max_connections (sized for ordinary servers, and the children's) caps the
        # number of children nor do children crowd out the supervisor's other clients.
        actor = Actor(
            self.id,
            self.config.replace(
                socket_root=self._dir,
                max_connections=self.config.max_connections + self.max_children,
            ),
        )
        await actor.__aenter__()
        self._actor = actor
        task_group: TaskGroup | None = None
        try:
            server = self._server = await actor.serve()
            server.on(HELLO_EVENT, self._on_hello)
            server.on(READY_EVENT, self._on_ready)
            server.on(FAILED_EVENT, self._on_failed)
            server.on("connect", self._on_connect)
            self._lifeline = os.pipe2(os.O_CLOEXEC)
            task_group = anyio.create_task_group()
            await task_group.__aenter__()
            self._task_group = task_group
            self._start_forkserver()
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                if task_group is not None:
                    if self._forkserver is not None:
                        await self._forkserver.aclose()
                    await task_group.__aexit__(None, None, None)
                if self._lifeline is not None:
                    for fd in self._lifeline:
                        os.close(fd)
                    self._lifeline = None
                await self._cleanup_files()
                await actor.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        runtime = current_runtime()
        if runtime is not None:
            runtime.supervisors.add(self)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._task_group is not None
        assert self._actor is not None
        try:
            with anyio.CancelScope(shield=True):
                await self._shutdown()
        finally:
            runtime = current_runtime()
            if runtime is not None:
                runtime.supervisors.discard(self)
        # Leave our task group, then the actor's (entered first). A cancellation is shown to
        # them (they swallow their own); any other exception of the body is not, so that it
        # propagates as it is instead of wrapped in exception groups.
        pending = original = exc
        if exc is not None and not isinstance(exc, anyio.get_cancelled_exc_class()):
            exc_type = exc = tb = None
        # A true result means "the exception shown was handled", and only then: Trio's task
        # group returns True when shown none at all, which must not swallow the body's own.
        try:
            if await self._task_group.__aexit__(exc_type, exc, tb) and exc is not None:
                pending = None
        except BaseException as error:
            pending = error
        shown = pending if isinstance(pending, anyio.get_cancelled_exc_class()) else None
        try:
            if (
                await self._actor.__aexit__(
                    type(shown) if shown is not None else None,
                    shown,
                    shown.__traceback__ if shown is not None else None,
                )
                and shown is not None
            ):
                pending = None
        except BaseException as error:
            pending = error
        if pending is None:
            if self._failure is not None:
                raise self._failure from None  # not "during handling of" our own cancellation
            await end_with_run()  # after run()'s signal, the code after the block never runs
            return True if original is not None else None
        if pending is original:
            return False
        raise pending

    async def aclose(self) -> None:
        """Stop every child (each bounded: at once under ``one_for_one``, else one by one in
        reverse start order), the forkserver, and the supervisor's own actor; remove its socket
        directory. Idempotent. Called from another task, it also ends the body of the
        ``async with`` (as ``Actor.aclose`` does)."""
        await self._shutdown()
        if self._actor is not None:
            await self._actor.aclose()

    async def _shutdown(self) -> None:
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        self._halting.set()
        try:
            await self._stop_all()
            if self._forkserver is not None:
                await self._forkserver.aclose()
            if self._lifeline is not None:
                for fd in self._lifeline:
                    os.close(fd)
                self._lifeline = None
            with anyio.move_on_after(_RELAY_DRAIN):
                await self._relays_idle.wait()
            for scope in list(self._relays):
                scope.cancel()
            await self._relays_idle.wait()
            for writer in self._writers.values():
                await writer.aclose(_RELAY_DRAIN)
            self._writers.clear()
        finally:
            await self._cleanup_files()
            self._closed.set()

    async def _cleanup_files(self) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def kill(self) -> None:
        """SIGKILL every child now (``ipcactors.run`` calls this on a second signal). The
        ``async with`` still reaps them and closes; it no longer waits for anyone."""
        self._hard = True
        self._halting.set()  # no restarts, and every start in progress ends now
        if self._forkserver is None:
            return
        for child in self._children.values():
            if child.incarnation is not None:
                child.incarnation.stopping = True
                self._forkserver.kill(child.incarnation, signal.SIGKILL)

    def _check_open(self) -> None:
        if self._failure is not None:
            raise self._failure
        if self._task_group is None:
            raise IPCError(f"use the supervisor inside 'async with' first: async with {self!r}")
        if self._closing:
            raise ClosedError(f"supervisor {self.id!r} is closed")

    # --- the forkserver -----------------------------------------------------------------------

    def _start_forkserver(self) -> None:
        assert self._task_group is not None
        assert self._lifeline is not None
        preload = [
            "anyio",
            f"anyio._backends._{self._backend}",
            "ipcactors._supervision._child",
            "loguru",
        ]
        if self._backend == "trio":
            preload.append("trio")
        elif self._uvloop:
            preload.append("uvloop")
        forkserver = ForkServer(self._log, self._on_exit)
        forkserver.start(
            self._task_group, self._lifeline[0], self.log_level, preload + self.preload
        )
        self._forkserver = forkserver

    async def _ready_forkserver(self) -> ForkServer:
        async with self._forkserver_lock:  # starts racing after its death replace it once
            if self._forkserver is None or self._forkserver.dead:
                if self._forkserver is not None:
                    self._log.warning("the forkserver died; starting a new one")
                    await self._forkserver.aclose()
                self._start_forkserver()
            forkserver = self._forkserver
        assert forkserver is not None
        await forkserver.wait_ready()
        return forkserver

    def _on_exit(self, incarnation: _Incarnation) -> None:
        """From the forkserver's reader: a child process ended (it is reaped). Only the exit
        of a running child's current process is a crash for the restart policy: a starting
        child's exit is its starter's to report, and a restarting or stopping child's exit is
        the one the supervisor is causing (or has already decided on)."""
        incarnation.exited.set()
        child = incarnation.child
        child.last_exit = incarnation.exitcode
        child.changed()
        if (
            self._halting.is_set()
            or incarnation.stopping
            or child.removed
            or child.incarnation is not incarnation
            or child.state != "running"
        ):
            return
        child.incarnation = None
        self._decide(child, incarnation)

    # --- children -----------------------------------------------------------------------------

    @property
    def children(self) -> Mapping[str, ChildInfo]:
        """A snapshot of the children, in start order."""
        return {child.id: self._info(child) for child in self._children.values()}

    @property
    def actor(self) -> Actor:
        """The supervisor's own actor (its server is where children connect)."""
        if self._actor is None:
            raise IPCError("the supervisor is not entered yet")
        return self._actor

    @property
    def server(self) -> Server:
        """The supervisor's server: where its children are connected (``server.clients``)."""
        if self._server is None:
            raise IPCError("the supervisor is not entered yet")
        return self._server

    @property
    def socket_dir(self) -> str | None:
        """The private directory of this supervisor's and its children's sockets."""
        return self._dir

    def _info(self, child: _Child) -> ChildInfo:
        incarnation = child.incarnation
        return ChildInfo(
            id=child.id,
            target=str(child.target),
            restart=child.restart,
            pid=incarnation.pid if incarnation is not None else None,
            running=incarnation is not None and incarnation.running,
            restarts=child.restarts,
            last_exit=child.last_exit,
            state=child.state,
        )

    async def spawn(
        self,
        fn: Callable[..., Any] | str,
        *args: Any,
        id: str,
        restart: RestartType = "permanent",
    ) -> ChildInfo:
        """Start ``fn(actor, *args)`` in a new process as child ``id``; return once it is
        connected back and ready (its first handlers registered).

        ``fn`` is an async function importable by module and name (or ``"module:function"``);
        lambdas, closures, functions of an interactive session and ``"module:function"`` names
        whose import raises (anything), that are missing or are not async functions are refused
        with :class:`SpawnError` before any process starts, as are arguments msgpack cannot
        carry (:class:`EncodeError`). A child beyond ``max_children`` is refused at once with
        :class:`SpawnError`. A target the child cannot load is a :class:`SpawnError` too (its
        ``__cause__`` a :class:`RemoteError` with the child's exception). Raises
        :class:`ChildExitedError` if the child exits before it is ready for another reason; it
        is then not supervised. Spawns of different children run concurrently. ``stop(id)``
        while the child is starting ends the spawn at once with :class:`SpawnError`, and so
        does shutdown, with :class:`ClosedError`; the process is gone before either returns.
        """
        self._check_open()
        if type(id) is not str or not id or "/" in id or "\0" in id:
            raise ConfigError(f"a child id must be a non-empty string without '/', got {id!r}")
        if id == self.id:
            raise ConfigError(f"a child cannot have the supervisor's own id {id!r}")
        if restart not in _RESTART_TYPES:
            raise ConfigError(
                f"restart must be one of {', '.join(_RESTART_TYPES)}, got {restart!r}"
            )
        assert self._dir is not None
        check_path_length(os.path.join(self._dir, f"{self.config.appspace}{id}"))
        target = target_of(fn)
        try:
            packed = pack_value(list(args), numpy=True)
        except EncodeError as exc:
            raise EncodeError(f"the arguments of {id!r} cannot be encoded: {exc}") from exc
        # Checked and taken in one step (no await between): concurrent spawns need no lock.
        self._check_open()
        if id in self._children:
            raise ConfigError(f"a child with id {id!r} is already supervised")
        if len(self._children) >= self.max_children:
            raise SpawnError(
                f"cannot spawn {id!r}: supervisor {self.id!r} already has "
                f"max_children={self.max_children} children; stop one, or raise the limit "
                f"with Supervisor(max_children=...)"
            )
        child = _Child(id, target, packed, restart)
        self._children[id] = child
        try:
            async with child.lock:
                await self._start(child, _Incarnation(child))
        except BaseException:
            self._remove(child)  # its process is gone: _start saw to it
            raise
        return self._info(child)

    async def stop(self, id: str) -> None:
        """Stop child ``id`` (as at shutdown: stop message, SIGTERM, SIGKILL) and stop
        supervising it; it is not restarted. A start in progress (its spawn or a restart) is
        interrupted at once, not waited for; other children are not held up."""
        self._check_open()
        child = self._children.get(id)
        if child is None:
            raise UnknownPeerError(f"supervisor {self.id!r} has no child {id!r}")
        await self._halt(child, remove=True)

    def _remove(self, child: _Child) -> None:
        if self._children.get(child.id) is child:
            del self._children[child.id]
        child.removed = True
        child.state = "stopped"
        child.claim = None
        child.changed()

    def _spec(self, child: _Child, incarnation: _Incarnation) -> dict[str, Any]:
        assert self._dir is not None
        # Every field, none left out (a bytes auth_key once was): the spec travels as msgpack,
        # which carries every type a Config holds.
        config = {
            field.name: getattr(self.config, field.name)
            for field in dataclasses.fields(self.config)
        }
        config.update(id=child.id, socket_root=self._dir)
        return {
            "id": child.id,
            "sup_id": self.id,
            "sup_path": os.path.join(self._dir, f"{self.config.appspace}{self.id}"),
            "config": config,
            "backend": self._backend,
            "uvloop": self._uvloop,
            "module": child.target.module,
            "qualname": child.target.qualname,
            "main_path": child.target.main_path,
            "token": incarnation.token,
            "timeout": self.start_timeout,
            "path": list(sys.path),
            "argv": list(sys.argv),
        }

    async def _start(self, child: _Child, incarnation: _Incarnation) -> None:
        """Start ``incarnation`` of ``child`` and wait until it is ready; the caller holds the
        child's lock. Whatever fails, the process is gone before this raises (ended here if
        need be), and no restart is decided for it: the caller reports the failure."""
        assert self._task_group is not None
        child.incarnation = incarnation
        child.changed()
        started = time.monotonic()
        forkserver = await self._ready_forkserver()
        pipes = [os.pipe2(os.O_CLOEXEC), os.pipe2(os.O_CLOEXEC)]
        try:
            # Shielded: once asked to fork, the pid must come back to us, or nobody could
            # stop that process.
            with anyio.CancelScope(shield=True):
                await forkserver.spawn(
                    self._spec(child, incarnation), [pipes[0][1], pipes[1][1]], incarnation
                )
        except BaseException:
            for read_end, _ in pipes:
                os.close(read_end)
            child.incarnation = None
            raise
        finally:
            for _, write_end in pipes:
                os.close(write_end)
        streams: tuple[Stream, Stream] = ("stdout", "stderr")
        for (read_end, _), stream in zip(pipes, streams, strict=True):
            os.set_blocking(read_end, False)
            scope = anyio.CancelScope()
            self._relays.add(scope)
            self._relays_idle = anyio.Event()
            writer = self._writers.get(stream)
            if writer is None:
                writer = self._writers[stream] = OutputWriter(stream)
            self._task_group.start_soon(self._relay, read_end, writer, child.id, scope)
        try:
            with anyio.move_on_after(self.start_timeout):
                await _wait_any(incarnation.ready, incarnation.exited, child.halt, self._halting)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._end(child, incarnation)
            raise
        halted = child.halt.is_set() or self._halting.is_set()
        if incarnation.ready.is_set() and not halted:
            elapsed = (time.monotonic() - started) * 1000
            self._log.info(f"child {child.id!r} ready (pid {incarnation.pid}, {elapsed:.1f} ms)")
            if child.state == "starting":  # else a restart was decided for it meanwhile
                child.state = "running"
            child.changed()
            if incarnation.exited.is_set() and child.state == "running":
                # It ended right after it was ready (before we woke): the policy decides, as
                # for any exit of a running child.
                child.incarnation = None
                self._decide(child, incarnation)
            return
        exited = incarnation.exited.is_set()
        if not exited:
            # Stopped while starting: the usual bounded steps. Too slow: SIGKILL at once.
            with anyio.CancelScope(shield=True):
                await self._end(child, incarnation, graceful=halted)
        if child.incarnation is incarnation:
            child.incarnation = None
        child.changed()
        if halted:
            self._check_open()
            raise SpawnError(f"child {child.id!r} was stopped before it was ready")
        if exited:
            failed = incarnation.load_error
            if failed is not None:
                hint = ""
                if child.target.main_path is not None:
                    hint = (
                        "; the child runs the main script as __mp_main__: define the function "
                        "at its top level, not under 'if __name__ == \"__main__\":'"
                    )
                raise SpawnError(
                    f"child {child.id!r} could not load its target '{child.target}': "
                    f"{failed.remote_type}: {failed.remote_message} (in the child process; "
                    f"its traceback is the cause, and above with its id){hint}"
                ) from failed
            why = "its output above, prefixed with its id, says why"
            if incarnation.chain:
                why = f"a supervisor in it gave up: {describe_chain(incarnation.chain)}"
            raise ChildExitedError(
                f"child {child.id!r} {describe_exit(incarnation.exitcode)} before it was ready "
                f"({why})",
                child.id,
                incarnation.exitcode,
            )
        raise SpawnError(
            f"child {child.id!r} did not connect back within start_timeout={self.start_timeout} s"
        )

    def _forkserver_kill(self, incarnation: _Incarnation, sig: int) -> None:
        if self._forkserver is not None:
            self._forkserver.kill(incarnation, sig)

    async def _end(self, child: _Child, incarnation: _Incarnation, graceful: bool = True) -> None:
        """End ``incarnation`` in bounded steps (the stop message, SIGTERM, SIGKILL; only the
        last unless ``graceful``); the caller holds the child's lock."""
        incarnation.stopping = True
        child.changed()
        if incarnation.pid is not None:
            await self._end_process(child, incarnation, graceful and not self._hard)
        if child.incarnation is incarnation:
            child.incarnation = None
        child.changed()

    async def _end_process(self, child: _Child, incarnation: _Incarnation, graceful: bool) -> None:
        if not incarnation.exited.is_set() and graceful:
            with anyio.move_on_after(self.shutdown_timeout):
                await incarnation.idle.wait()
                client = incarnation.client
                if client is not None and client.connected:
                    try:
                        await client.emit(STOP_EVENT)
                    except IPCError:
                        pass
                    else:
                        await incarnation.exited.wait()
                # Never connected (or gone): nobody to ask; SIGTERM right away.
        for sig, wait in (
            (signal.SIGTERM, self.terminate_timeout),
            (signal.SIGKILL, KILL_WAIT),
        ):
            if incarnation.exited.is_set():
                break
            if sig == signal.SIGTERM and not graceful:
                continue
            self._log.warning(f"child {child.id!r} did not stop; sending {sig.name}")
            self._forkserver_kill(incarnation, sig)
            with anyio.move_on_after(wait):
                await incarnation.exited.wait()
        if not incarnation.exited.is_set():
            self._log.warning(f"child {child.id!r} (pid {incarnation.pid}) did not report its exit")
        else:
            self._log.info(f"child {child.id!r} stopped ({describe_exit(incarnation.exitcode)})")

    async def _halt(self, child: _Child, *, remove: bool) -> None:
        """Stop ``child`` for good: a start in progress is interrupted at once, a pending
        restart is dropped, its process ends in bounded steps."""
        child.halt.set()
        child.claim = None
        if child.state != "stopped":
            child.state = "stopping"
        child.changed()
        async with child.lock:
            if child.incarnation is not None:
                await self._end(child, child.incarnation)
            child.state = "stopped"
            if remove:
                self._remove(child)
            child.changed()

    async def _stop_all(self) -> None:
        """Stop every child: all at once under ``one_for_one`` (they are independent, so N
        stubborn children cost one grace period, not N); one by one in reverse start order
        otherwise, where later children usually depend on earlier ones (as OTP does). Starts
        in progress are interrupted at once either way (``_halting``): a child that is not
        ready yet has no dependents that rely on it."""
        children = list(reversed(self._children.values()))
        if self.strategy != "one_for_one":
            for child in children:
                await self._halt(child, remove=False)
            return
        async with anyio.create_task_group() as task_group:
            for child in children:
                task_group.start_soon(partial(self._halt, remove=False), child)

    # --- output ------------------------------------------------------------------------------

    async def _relay(
        self, fd: int, writer: OutputWriter, child_id: str, scope: anyio.CancelScope
    ) -> None:
        """Pass a child's stdout or stderr on, line by line, prefixed with ``[id]`` (written by
        the stream's own thread: see ``_relay``)."""
        try:
            with scope:
                await relay(fd, f"[{child_id}] ", writer)
        finally:
            os.close(fd)
            self._relays.discard(scope)
            if not self._relays:
                self._relays_idle.set()

    # --- restarts -----------------------------------------------------------------------------
    #
    # A crash is decided on at once, in _on_exit (no await: decisions never interleave); the
    # restart it decides runs as a task of its own. Each child it covers is claimed (state
    # "restarting"); a newer decision that covers the same child claims it again, and the
    # older restart then leaves that child to the newer one. One_for_one restarts run side
    # by side; the sequences of one_for_all and rest_for_one, whose groups overlap, one at a
    # time, each stopping its group in reverse start order and starting it in start order.

    def _decide(self, child: _Child, incarnation: _Incarnation) -> None:
        """The restart policy, for an exit of ``child`` that it did not ask for."""
        code = incarnation.exitcode
        what = f"child {child.id!r} {describe_exit(code)}"
        if incarnation.chain:
            what += f" (a supervisor in it gave up: {describe_chain(incarnation.chain)})"
        if child.restart == "temporary" or (child.restart == "transient" and code == 0):
            self._log.info(f"{what}; {child.restart}: not restarted")
            self._remove(child)
            return
        now = time.monotonic()
        self._restart_times.append(now)
        while self._restart_times and now - self._restart_times[0] > self.max_seconds:
            self._restart_times.popleft()
        assert self._task_group is not None
        if len(self._restart_times) > self.max_restarts:
            # Down to the child that kept failing, if this one ran a supervisor that gave up
            # and said so before it exited (without its report, the chain stops here).
            chain = (ChildExit(self.id, child.id, code), *incarnation.chain)
            restarts = len(self._restart_times) - 1
            seconds = now - self._restart_times[0]
            self._failure = RestartIntensityError(
                f"{describe_chain(chain)}; supervisor {self.id!r} had restarted its children "
                f"{restarts} time{'' if restarts == 1 else 's'} in {seconds:.1f} s, as many as "
                f"max_restarts={self.max_restarts} within max_seconds={self.max_seconds} "
                "allow: it stopped every child and gave up",
                child.id,
                self.max_restarts,
                self.max_seconds,
                code,
                chain=chain,
                restarts=restarts,
                seconds=seconds,
            )
            self._log.warning(str(self._failure))
            self._halting.set()
            self._task_group.start_soon(self._give_up)
            return
        order = [other for other in self._children.values() if not other.halt.is_set()]
        if self.strategy == "one_for_one":
            group = [child]
        elif self.strategy == "one_for_all":
            group = order
        else:
            group = order[order.index(child) :]
        claim = object()
        for member in group:
            member.claim = claim
            member.state = "restarting"
            member.changed()
        self._log.warning(f"{what}; restarting {[c.id for c in group]} ({self.strategy})")
        self._task_group.start_soon(self._restart, child, group, claim)

    async def _give_up(self) -> None:
        await self._stop_all()
        assert self._task_group is not None
        self._task_group.cancel_scope.cancel()

    async def _restart(self, failed: _Child, group: list[_Child], claim: object) -> None:
        """Carry out a restart decided by ``_decide`` for the children ``group`` still claims."""
        async with self._sequence if self.strategy != "one_for_one" else _no_lock():
            for other in reversed(group):
                if other is not failed and other.claim is claim:
                    async with other.lock:
                        if other.claim is claim and other.incarnation is not None:
                            await self._end(other, other.incarnation)
            for member in group:
                async with member.lock:
                    if member.claim is not claim or self._halting.is_set():
                        continue  # stopped, or left to a newer restart
                    member.claim = None
                    if member is not failed and member.restart == "temporary":
                        self._remove(member)
                        continue
                    member.restarts += 1
                    member.state = "starting"
                    incarnation = _Incarnation(member)
                    try:
                        await self._start(member, incarnation)
                    except IPCError as exc:
                        if self._halting.is_set() or member.halt.is_set():
                            continue
                        self._log.warning(f"restart of {member.id!r} failed: {exc}")
                        if member.claim is None:  # else a newer restart covers it
                            self._decide(member, incarnation)

    # --- children's messages ------------------------------------------------------------------

    def _incarnation_of(self, data: Any, client: Client) -> _Incarnation:
        child = self._children.get(client.id)
        incarnation = child.incarnation if child is not None else None
        token = data.get("token") if isinstance(data, dict) else None
        if incarnation is None or token != incarnation.token:
            raise SpawnError(f"{client.id!r} is not a child this supervisor is starting")
        return incarnation

    def _on_hello(self, data: Any, client: Client) -> dict[str, Any]:
        incarnation = self._incarnation_of(data, client)
        incarnation.client = client
        return {"args": incarnation.child.args}

    def _on_connect(self, client: Client) -> None:
        # A running child whose connection to us dropped and came back (the same process:
        # a new one says hello first): talk to it through the new connection.
        child = self._children.get(client.id)
        incarnation = child.incarnation if child is not None else None
        if incarnation is not None and incarnation.ready.is_set() and incarnation.client:
            incarnation.client = client

    def _on_ready(self, data: Any, client: Client) -> None:
        try:
            incarnation = self._incarnation_of(data, client)
        except SpawnError as exc:
            self._log.warning(str(exc))
            return
        incarnation.ready.set()

    def _on_failed(self, data: Any, client: Client) -> None:
        incarnation = self._incarnation_of(data, client)
        load = data.get("load")
        if isinstance(load, list) and len(load) == 3 and all(isinstance(x, str) for x in load):
            incarnation.load_error = RemoteError(*load)
        incarnation.chain = _chain_of(data.get("chain"))

    def on(self, event: str, handler: Handler | None = None) -> Any:
        """Register ``handler(data, client)`` for events and requests children send to the
        supervisor (``actor.parent.emit(...)`` in a child); ``client.id`` is the child's id.
        Also usable as a decorator."""
        return self.server.on(event, handler)

    # --- talking to children ------------------------------------------------------------------

    def _child(self, id: str) -> _Child:
        child = self._children.get(id)
        if child is None:
            raise UnknownPeerError(f"supervisor {self.id!r} has no child {id!r}")
        return child

    async def _running(self, id: str, timeout: float) -> _Incarnation:
        """The child's ready incarnation; waits (up to ``timeout``) while it is restarting."""
        with anyio.move_on_after(timeout):
            while True:
                self._check_open()
                child = self._child(id)
                incarnation = child.incarnation
                if incarnation is not None and incarnation.running:
                    return incarnation
                await child.wait_changed()
                if child.removed:
                    raise UnknownPeerError(
                        f"child {id!r} {describe_exit(child.last_exit)} and is no longer supervised"
                    )
        raise RequestTimeoutError(f"child {id!r} was not running within {timeout} s")

    async def emit(self, id: str, event: str, data: Any = None) -> None:
        """Send ``event`` to child ``id`` (at most once). While the child is restarting, waits
        for it (up to ``Config.request_timeout``)."""
        incarnation = await self._running(id, self.config.request_timeout)
        assert incarnation.client is not None
        await incarnation.client.emit(event, data)

    async def request(
        self, id: str, event: str, data: Any = None, *, timeout: float | None = None
    ) -> Any:
        """Ask child ``id`` and return its handler's answer.

        Waits for a restarting child within the same ``timeout`` (default
        ``Config.request_timeout``). Raises :class:`ChildExitedError` at once if the child's
        process ends before it answers (the child and its exit code or signal are named), and
        what ``Connection.request`` raises otherwise.
        """
        timeout = request_timeout(timeout, self.config)
        deadline = anyio.current_time() + timeout
        incarnation = await self._running(id, timeout)
        client = incarnation.client
        assert client is not None
        incarnation.inflight += 1
        if incarnation.inflight == 1:
            incarnation.idle = anyio.Event()
        outcome: dict[str, Any] = {}
        try:
            async with anyio.create_task_group() as task_group:

                async def call() -> None:
                    try:
                        remaining = max(deadline - anyio.current_time(), 0.001)
                        outcome["value"] = await client.request(event, data, timeout=remaining)
                    except Exception as exc:
                        outcome["error"] = exc
                    task_group.cancel_scope.cancel()

                async def watch() -> None:
                    await incarnation.exited.wait()
                    task_group.cancel_scope.cancel()

                task_group.start_soon(call)
                task_group.start_soon(watch)
        finally:
            incarnation.inflight -= 1
            if incarnation.inflight == 0:
                incarnation.idle.set()
        if "value" in outcome:
            return outcome["value"]
        error = outcome.get("error")
        if error is not None and not isinstance(error, ClosedError | ConnectionLostError):
            raise error
        if error is not None and not incarnation.exited.is_set():
            # The connection dropped: the exit report follows within moments, if it exited.
            with anyio.move_on_after(1.0):
                await incarnation.exited.wait()
        if incarnation.exited.is_set():
            raise ChildExitedError(
                f"child {id!r} {describe_exit(incarnation.exitcode)} before answering "
                f"request {event!r}",
                id,
                incarnation.exitcode,
            )
        raise ConnectionLostError(
            f"connection to child {id!r} was lost before it answered {event!r}"
        ) from error
