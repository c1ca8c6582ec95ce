"""The supervisor: worker processes that connect back, restarted by OTP rules, never orphaned.

This module ties the parts together: the restart policy (``_policy``, a pure function), each
child's state and how its process is stopped (``_children``), the launchers that start the
children's processes (``_launcher``; the local forkserver handle in ``_spawner`` is the default),
the output relay (``_relay``) and the socket directory (``_sockets``). It owns
the lifecycle, spawning, the restarts' sequencing, the children's messages and requests.

Invariants owned here:
- Only this module (through a launcher: its forkserver handle in ``_spawner``) starts or
  signals a process: the forkserver, and through it the children; each incarnation is
  signalled only through the launcher that started it (``Incarnation.launcher``); only
  ``_forkserver`` forks. Nothing forks a process that runs an event loop: the forkserver is
  started with fork + exec from the event-loop thread (PR_SET_PDEATHSIG is tied to the thread
  that forked), and it forks children from its own single-threaded, loop-free state.
- Every child is reaped (by the forkserver, its parent, which reports each exit here), and no
  child outlives the supervisor: the lifeline pipe's only write end lives in this process, and
  the forkserver and every child end themselves at its EOF, whatever killed us.
- Each child leads its own process group: SIGTERM and SIGKILL go to the whole group, and what
  is left in it when the child exits (however it exits, the supervisor's death included) is
  SIGKILLed. Only a process that left the group on purpose (``setsid()``) outlives its child.
- Restarts follow OTP, as ``_policy.decide`` says. Giving up stops every child, and the
  ``async with`` raises :class:`RestartIntensityError` (in a child process that exits
  abnormally, which is how the failure escalates to the supervisor above). Its ``chain`` runs
  from this supervisor down to the child that kept failing, as far as each child reported its
  own give-up before exiting (``_child``); a missing report cuts it short, never blocks it.
- At most ``max_children`` children at once; one more ``spawn`` is a :class:`SpawnError` at
  once. The supervisor's own server holds ``max_connections + max_children`` clients, so the
  children never meet ``max_connections``, a limit meant for other actors.
- Every way a target can fail to load ends ``spawn`` with :class:`SpawnError`: in the parent's
  check (``_target``), or in the child, which reports the exception before it exits.
- Stopping a child is bounded at every step (``_children.stop_process``), its signals going
  to its process group. When the supervisor stops (or gives up), every child's grace period
  starts at once under ``one_for_one``; under ``one_for_all`` and ``rest_for_one`` children
  stop one by one in reverse start order (the stop of a child still starting begins
  at once under every strategy). Leaving the ``async with`` never hangs: a shutdown cancelled
  part-way (``aclose()`` under a deadline) is finished by the next, each of its steps safe to
  take again.
- No lock over all children. Each child has its own (``Child.lock``): spawn, a restart, stop
  and shutdown start or end its process one at a time, and different children's run side by
  side. A stop (or shutdown) interrupts a start in progress at once (``Child.halt``,
  ``_halting``) instead of waiting for it. Restarts are decided in ``_on_exit``, with no await
  (decisions never interleave), only for the exit of a running child's current process that
  the supervisor did not cause; a start that fails is reported by its starter (``spawn``
  raises, a restart decides again). A decided restart claims its children (``restarting``); a
  newer decision covering one of them supersedes the older for it. ``one_for_one`` restarts
  run side by side; ``one_for_all`` and ``rest_for_one`` sequences, whose groups overlap, one
  at a time.
- A request to a child fails as soon as the child's process is known to have exited
  (``Incarnation.request``).
- The children's output never stalls the supervisor: it is written to our stdout and stderr by
  a thread per stream, bounded, with backpressure to the children (``_relay``).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import ssl
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from functools import partial
from types import TracebackType
from typing import Any, Final, TypeVar, overload

import anyio
from anyio.abc import TaskGroup

from .._actor import Actor, check_actor_id
from .._config import Config, check_seconds, config_of, is_utf8, request_timeout, shown
from .._core._handlers import Handler
from .._core._server import Client, Server
from .._errors import (
    ChildExit,
    ChildExitedError,
    ClosedError,
    ConfigError,
    EncodeError,
    IPCError,
    RemoteError,
    RequestTimeoutError,
    RestartIntensityError,
    SpawnError,
    UnknownPeerError,
    UnsupportedError,
    exhaustion_raised_as_resource_error,
)
from .._log import ActorLog
from .._proto._msgpack import pack_value
from .._runtime import current_runtime, end_with_run
from .._transports._backend import current_backend
from .._transports._tls import TLSTransport, check_server_context
from .._transports._transport import TCPTransport
from .._transports._unix import check_path_length, default_socket_root, ensure_socket_dir
from ._child import FAILED_EVENT, HELLO_EVENT, READY_EVENT
from ._children import (
    Child,
    ChildInfo,
    Incarnation,
    chain_of,
    describe_chain,
    describe_exit,
    stop_process,
)
from ._forkserver import output_pipes
from ._launcher import LaunchContext, Launcher, Placement
from ._policy import RESTART_TYPES, STRATEGIES, RestartType, Strategy, decide
from ._relay import ChildOutput
from ._sockets import make_socket_dir, remove_socket_dir, sweep_socket_dirs
from ._spawner import ForkServer
from ._target import refuse_in_main_script, target_of

__all__ = ["ChildInfo", "Supervisor"]

H = TypeVar("H", bound=Handler)
T = TypeVar("T")

#: The levels a child can log at: loguru's own (a child starts afresh, without levels added here).
CHILD_LOG_LEVELS: Final = ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL")


def check_module_name(name: object, option: str) -> str:
    """``name`` if it is a module's dotted name, else a ``ConfigError`` naming ``option``."""
    if type(name) is not str or not all(part.isidentifier() for part in name.split(".")):
        raise ConfigError(f"{option} takes module names such as 'numpy', got {name!r}")
    return name


_RELAY_DRAIN: Final = 1.0  # seconds relays get to pass on a stopped child's last output
#: Children a supervisor holds at once unless told otherwise: far beyond what a machine runs
#: as worker processes, but a limit that fails with a clear error rather than a hidden one.
DEFAULT_MAX_CHILDREN: Final = 1000


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


def _check_hosts(
    hosts: Mapping[str, Placement] | None,
    auth_key: object,
    tls: ssl.SSLContext | None,
    listen: tuple[str, int] | None,
) -> dict[str, Placement]:
    """``hosts`` checked: names, placements, and how their children prove who they are."""
    if tls is not None:
        if not isinstance(tls, ssl.SSLContext):
            raise ConfigError(f"tls= takes a server ssl.SSLContext, got {tls!r}")
        check_server_context(tls)
        if tls.verify_mode == ssl.CERT_REQUIRED:
            raise ConfigError(
                "tls= requires a client certificate (verify_mode CERT_REQUIRED), and the "
                "children have none to show: mutual TLS is not supported for children; leave "
                "verify_mode CERT_NONE (a server context's default) and set auth_key to "
                "authenticate them"
            )
    if listen is not None and not (
        isinstance(listen, tuple)
        and len(listen) == 2
        and isinstance(listen[0], str)
        and listen[0]
        and is_utf8(listen[0])  # (a host name goes through IDNA: no lone surrogate)
        and type(listen[1]) is int
        and 0 <= listen[1] <= 65535
    ):
        raise ConfigError(f"listen= takes (host, port), got {shown(listen)}")
    if not hosts:
        if listen is not None or tls is not None:
            raise ConfigError(
                "listen= and tls= set up the listener children on other hosts connect back "
                "to, with hosts= only: without hosts there is none (a supervisor's own "
                "children connect over a Unix socket in a private directory)"
            )
        return {}
    if not isinstance(hosts, Mapping):
        raise ConfigError(f"hosts= maps names to SSHHost(...), got {hosts!r}")
    for name, placement in hosts.items():
        if type(name) is not str or not name or "/" in name:
            raise ConfigError(f"a host name must be a non-empty string without '/', got {name!r}")
        if not isinstance(placement, Placement):
            raise ConfigError(
                f"host {name!r} must be an SSHHost(...) (or have a launcher() method), "
                f"got {placement!r}"
            )
    if auth_key is None and tls is None:
        raise ConfigError(
            "children on other hosts connect back over TCP, which anyone who reaches the port "
            "could use: set auth_key (Supervisor(..., auth_key=...)) or tls= (or both) to "
            "use hosts="
        )
    return dict(hosts)


def _check_remote_support() -> None:
    try:
        import asyncssh  # noqa: F401
    except ImportError as exc:
        raise UnsupportedError(
            "children on other hosts (hosts=) need asyncssh: install ipcactors[ssh]"
        ) from exc


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
    - ``id``: the supervisor's own actor id (children reach it under that name), checked as
      :class:`Actor` checks one, when the supervisor is made.
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
    - ``log_level``: the children's log level, one of loguru's (``"WARNING"``: their lifecycle
      lines are noise; their stdout and stderr are always passed on, prefixed with ``[id]``).
    - ``hosts``: other hosts children can be put on (``spawn(..., host=name)``), by name:
      :class:`SSHHost` (docs/remote.md), or any :class:`Placement`. Children there connect
      back over TCP, so ``auth_key`` (in ``config``) or ``tls`` is required.
    - ``listen``: ``(host, port)`` of the TCP listener remote children connect back to (with
      ``hosts`` only; default ``(Config.network_host, 0)``: loopback, a free port). Listen on
      an address the hosts can reach.
    - ``tls``: a server ``ssl.SSLContext`` for that listener (the hosts verify it with
      ``SSHHost.tls_cafile``); ``None``: plain TCP, authenticated by ``auth_key``.

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
        hosts: Mapping[str, Placement] | None = None,
        listen: tuple[str, int] | None = None,
        tls: ssl.SSLContext | None = None,
        **overrides: Any,
    ) -> None:
        if strategy not in STRATEGIES:
            raise ConfigError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
        if type(max_restarts) is not int or max_restarts < 0:
            raise ConfigError(f"max_restarts must be an integer >= 0, got {shown(max_restarts)}")
        if type(max_children) is not int or max_children < 1:
            raise ConfigError(f"max_children must be an integer >= 1, got {shown(max_children)}")
        check_actor_id(id)  # its actor's id: refused here, before entering makes anything
        if "/" in id:
            raise ConfigError(
                f"a supervisor's id names its socket file in its private directory; "
                f"id {id!r} has '/', which names none"
            )
        self.id = id
        self.strategy: Strategy = strategy
        self.max_restarts = max_restarts
        self.max_seconds = check_seconds("max_seconds", max_seconds)
        self.shutdown_timeout = check_seconds("shutdown_timeout", shutdown_timeout)
        self.terminate_timeout = check_seconds("terminate_timeout", terminate_timeout)
        self.start_timeout = check_seconds("start_timeout", start_timeout)
        self.max_children = max_children
        if not isinstance(preload, list | tuple):
            raise ConfigError(f"preload takes a list of module names, got {preload!r:.80}")
        self.preload = [check_module_name(name, "preload") for name in preload]
        if log_level not in CHILD_LOG_LEVELS:
            raise ConfigError(
                f"log_level must be one of loguru's levels {', '.join(CHILD_LOG_LEVELS)}, "
                f"got {log_level!r} (children start afresh: levels added here are not theirs)"
            )
        self.log_level = log_level
        self.config = config_of(config, id=id, **overrides)
        if not self.config.wire_codec.handshake:
            # Children connect back with hello, report ready and answer requests.
            raise ConfigError(
                f"a supervisor needs a codec with a handshake and requests, and "
                f"{self.config.codec!r} has neither: keep codec='msgpack' for the supervisor; "
                "a child can still serve other codecs from actors of its own"
            )
        self.hosts = _check_hosts(hosts, self.config.auth_key, tls, listen)
        self.listen = listen
        self.tls = tls
        self._log = ActorLog(id, self.config.silent)
        self._children: dict[str, Child] = {}  # in start order
        self._restart_window: tuple[float, ...] = ()  # times of recent restarts (_policy)
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
        self._remote: dict[str, Launcher] = {}  # the hosts' launchers, made when first needed
        self._remote_locks: dict[str, anyio.Lock] = {}
        self._net: Server | None = None  # where children on other hosts connect back
        self._lifeline: tuple[int, int] | None = None
        self._dir: str | None = None
        self._backend = "asyncio"
        self._uvloop = False
        self._output = ChildOutput()
        self._entered = False
        self._closing = False
        self._closed = anyio.Event()
        self._shutdown_lock = anyio.Lock()
        self._hard = False
        self._leaving = False  # (see _leave_if_a_handler_exited)
        self._grace_until: float | None = None  # when shutdown's grace period ends
        self._failure: RestartIntensityError | None = None

    def __repr__(self) -> str:
        return f"<Supervisor {self.id!r} {self.strategy} children={list(self._children)}>"

    # --- lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> Supervisor:
        # Out of descriptors (or memory) anywhere in the start: said as such, all undone.
        with exhaustion_raised_as_resource_error(f"cannot start supervisor {self.id!r}"):
            return await self._enter()

    async def _enter(self) -> Supervisor:
        if self._entered:
            raise IPCError(f"supervisor {self.id!r} can be entered only once")
        refuse_in_main_script(f"Supervisor {self.id!r}")  # the script's anyio.run(), unguarded
        self._backend, self._uvloop = current_backend()
        if self.hosts:
            _check_remote_support()
        self._entered = True
        # Where a relative root is now: the program may change its directory in the block.
        root = os.path.abspath(self.config.socket_root or default_socket_root())
        ensure_socket_dir(root, private=not self.config.socket_root)  # ("" as None)
        sweep_socket_dirs(root)
        self._dir = make_socket_dir(root)
        try:
            # Each child holds a connection to our server: they get places of their own, so
            # that neither max_connections (sized for ordinary servers, and the children's)
            # caps the number of children nor do children crowd out the supervisor's other
            # clients.
            actor = Actor(
                self.id,
                self.config.replace(
                    socket_root=self._dir,
                    max_connections=self.config.max_connections + self.max_children,
                ),
            )
            await actor.__aenter__()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._cleanup_files()  # the directory made above, and nothing else yet
            raise
        self._actor = actor
        task_group: TaskGroup | None = None
        try:
            server = self._server = await actor.serve()
            server._logged_elsewhere = self._children.__contains__  # we log ready and stopped
            server._claims = self._claims
            server.on(HELLO_EVENT, self._on_hello)
            server.on(READY_EVENT, self._on_ready)
            server.on(FAILED_EVENT, self._on_failed)
            # A restarted child's reports do not wait for the handlers of its previous
            # process's events (the server holds a reconnecting id's events behind those).
            server._control_events = frozenset({HELLO_EVENT, READY_EVENT, FAILED_EVENT})
            server.on("connect", self._on_connect)
            server.on("disconnect", self._on_disconnect)
            if self.hosts:
                await self._listen_net(actor, server)
            self._lifeline = os.pipe2(os.O_CLOEXEC)
            task_group = anyio.create_task_group()
            await task_group.__aenter__()
            self._task_group = task_group
            self._start_forkserver()
        except BaseException as exc:
            # Scopes are left in the reverse order of their entry, each from where it is the
            # innermost: the task group's here (cancelled, so leaving it waits for nothing),
            # then the actor's (it shields its own close); only then are the files gone.
            try:
                if task_group is not None:
                    task_group.cancel_scope.cancel()
                    if self._forkserver is not None:
                        with anyio.CancelScope(shield=True):
                            await self._forkserver.aclose()
                    await task_group.__aexit__(None, None, None)
            finally:
                if self._lifeline is not None:
                    for fd in self._lifeline:
                        os.close(fd)
                    self._lifeline = None
                try:
                    await actor.__aexit__(type(exc), exc, exc.__traceback__)
                finally:
                    with anyio.CancelScope(shield=True):
                        await self._cleanup_files()
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
        if self._task_group is None or self._actor is None:
            raise IPCError(f"supervisor {self.id!r} is not entered: __aexit__ follows __aenter__")
        try:
            with anyio.CancelScope(shield=True):
                await self._shutdown()
        finally:
            await self._cleanup_files()  # even if a step failed
            runtime = current_runtime()
            if runtime is not None:
                runtime.supervisors.discard(self)
        # Leave our task group, then the actor's (entered first). A cancellation is shown to
        # them (they swallow their own), and so is a group holding one (a task group in the
        # block failed as a close cancelled it: they take their own out of it); any other
        # exception of the body is not, so that it propagates as it is instead of wrapped in
        # exception groups.
        pending = original = exc
        if exc is not None and not _holds_cancellation(exc):
            exc_type = exc = tb = None
        # A true result means "the exception shown was handled", and only then: Trio's task
        # group returns True when shown none at all, which must not swallow the body's own.
        try:
            if await self._task_group.__aexit__(exc_type, exc, tb) and exc is not None:
                pending = None
        except BaseException as error:
            pending = error
        shown = pending if pending is not None and _holds_cancellation(pending) else None
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
        if self._failure is not None:
            # Giving up ended the block: what the body raised meanwhile came of it (a request
            # to a child that the giving up stopped), and a cancellation from outside that came
            # as it unwound does not change how it ended.
            raise self._failure from self._failure.__cause__
        cancelled = anyio.get_cancelled_exc_class()
        if (
            isinstance(pending, cancelled)
            and pending is not original
            and original is not None
            and not isinstance(original, cancelled)
        ):
            # A cancellation from outside (run()'s signal) that came while the block unwound
            # does not replace the body's own error.
            return False
        if pending is None:
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
        """Stop everything, once. Every step can be taken again: a call cancelled (or failed)
        part-way leaves the rest to the next, and leaving the ``async with`` makes one,
        shielded. A call made meanwhile waits, and takes over if the running one is cancelled."""
        self._closing = True
        self._leave_if_a_handler_exited()
        self._halt_starts()
        async with self._shutdown_lock:
            if self._closed.is_set():
                return
            await self._stop_all()
            # The children are gone: our socket directory goes now, before the forkserver
            # hears bye (it removes the directory only when we die: dying after the bye and
            # before this, we left it behind).
            await self._cleanup_files()
            if self._forkserver is not None:
                await self._forkserver.aclose()
            for launcher in self._remote.values():
                await launcher.aclose()
            if self._net is not None:
                await self._net.aclose()
            if self._lifeline is not None:
                for fd in self._lifeline:
                    os.close(fd)
                self._lifeline = None
            await self._output.aclose(_RELAY_DRAIN)
            await self._cleanup_files()
            self._closed.set()

    def _leave_if_a_handler_exited(self) -> None:
        """If a handler's exit or interrupt left one of our servers (``sup.on``), it ends our
        actor at once (guide.md), and the program unless caught: no restarts, and the children
        stop without the stop message (the connections it would go on are ending), as a
        warning says once."""
        if self._leaving or not any(
            server is not None and server._exited_by_handler for server in (self._server, self._net)
        ):
            return
        self._leaving = True
        self._halt_starts()
        if self._children:
            self._log.warning(
                "an exit or interrupt in a handler of the supervisor ends it: the children "
                "are stopped without the stop message (SIGTERM, or SIGKILL), so their "
                "finally blocks do not run"
            )

    def _halt_starts(self) -> None:
        """No more restarts, and every start in progress ends now, one that waits for its
        launcher included."""
        self._halting.set()
        for child in self._children.values():
            if child.waiting_for_launcher is not None:
                child.waiting_for_launcher.cancel()

    async def _cleanup_files(self) -> None:
        if self._dir is not None and remove_socket_dir(self._dir):
            self._dir = None  # (else tried again at the end, the forkserver's descriptors free)

    def kill(self) -> None:
        """SIGKILL every child now (``ipcactors.run`` calls this on a second signal). The
        ``async with`` still reaps them and closes; it no longer waits for any child to stop
        on its own (but a child on another host whose link is silent, not yet noticed, is
        heard of only once that is: up to about ``4 × keepalive``, see remote.md). From then
        on ``spawn``, ``stop``, ``request`` and ``emit`` raise :class:`ClosedError`, and each
        child shows ``"stopped"`` once its process is gone."""
        self._hard = True
        self._halt_starts()  # no restarts, and every start in progress ends now
        for child in self._children.values():
            incarnation = child.incarnation
            if incarnation is not None:
                incarnation.stopping = True
                if incarnation.pid is not None and incarnation.launcher is not None:
                    incarnation.launcher.kill(incarnation.pid, signal.SIGKILL)
            if incarnation is None or incarnation.exited.is_set():
                child.state = "stopped"  # no process to wait for (dead, its restart undone)
            elif child.state != "stopped":
                child.state = "stopping"
            child.changed()

    def _check_open(self) -> None:
        if self._failure is not None:
            raise self._failure
        if self._task_group is None:
            raise IPCError(f"use the supervisor inside 'async with' first: async with {self!r}")
        if self._closing:
            raise ClosedError(f"supervisor {self.id!r} is closed")
        if self._hard:
            raise ClosedError(f"supervisor {self.id!r} was killed (kill()): its children are gone")

    # --- the forkserver -----------------------------------------------------------------------

    def _start_forkserver(self) -> None:
        assert self._task_group is not None
        assert self._lifeline is not None
        forkserver = ForkServer(self._log)
        assert self._dir is not None
        forkserver.start(
            self._task_group,
            self._lifeline[0],
            self.log_level,
            self._preload(),
            (self._backend, self._uvloop),
            self._dir,
        )
        self._forkserver = forkserver

    def _preload(self) -> list[str]:
        """What a forkserver imports before its first fork: what every child imports on its
        way to ready (its backend's modules too), then what the user asked for."""
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
        return preload + self.preload

    async def _ready_launcher(self, child: Child) -> Launcher:
        """The launcher that starts ``child``'s processes, ready (a new one if it died: on
        another host, a new connection, whose failure is this start's)."""
        host = child.host
        if host is None:
            return await self._ready_forkserver()
        lock = self._remote_locks.setdefault(host, anyio.Lock())
        async with lock:  # starts racing after its loss replace it once
            launcher = self._remote.get(host)
            if launcher is None or launcher.dead:
                if launcher is not None:
                    await launcher.aclose()
                launcher = self._remote[host] = self.hosts[host].launcher(host, self._context())
        await launcher.wait_ready()
        return launcher

    def _context(self) -> LaunchContext:
        assert self._task_group is not None
        task_group = self._task_group
        address = self._net.address if self._net is not None else None

        def relay(fds: tuple[int, int], prefix: str) -> None:
            self._output.start(task_group, fds, prefix)

        return LaunchContext(
            task_group=task_group,
            log=self._log,
            log_level=self.log_level,
            preload=tuple(self._preload()),
            connect_back=address if isinstance(address, tuple) else None,
            relay=relay,
            backend=(self._backend, self._uvloop),
        )

    async def _listen_net(self, actor: Actor, server: Server) -> None:
        """The TCP (or TLS) listener children on other hosts connect back to: the same
        handlers as the Unix socket's, and its own share of clients."""
        host, port = self.listen or (self.config.network_host, 0)
        transport = (
            TCPTransport(host, port) if self.tls is None else TLSTransport(host, port, self.tls)
        )
        net = Server(self.id, actor.config, actor._log, transport, actor._watchdog)
        net._handlers = server._handlers
        net._logged_elsewhere = server._logged_elsewhere
        net._claims = server._claims
        await net._start(actor._group())
        self._net = net

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

    def _on_exit(self, incarnation: Incarnation, code: int) -> None:
        """From the forkserver's reader: a child process ended (it is reaped). Only the exit
        of a running child's current process is a crash for the restart policy: a starting
        child's exit is its starter's to report, and a restarting or stopping child's exit is
        the one the supervisor is causing (or has already decided on)."""
        incarnation.on_exit(code)
        child = incarnation.child
        self._leave_if_a_handler_exited()
        if self._hard and child.incarnation is incarnation and child.state == "stopping":
            child.incarnation = None  # killed (see kill): gone, and never started again
            child.state = "stopped"
            child.changed()
            return
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
        return {child.id: child.info() for child in self._children.values()}

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

    async def spawn(
        self,
        fn: Callable[..., Any] | str,
        *args: Any,
        id: str,
        restart: RestartType = "permanent",
        host: str | None = None,
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

        ``host``: one of the supervisor's ``hosts`` to run the child on (docs/remote.md);
        ``None``: this machine. A host that cannot be reached is a :class:`SpawnError` naming
        the cause (and, for a restart, counts toward the restart intensity).
        """
        self._check_open()
        if type(id) is not str or not id or "/" in id or "\0" in id:
            raise ConfigError(f"a child id must be a non-empty string without '/', got {id!r}")
        if id == self.id:
            raise ConfigError(f"a child cannot have the supervisor's own id {id!r}")
        if restart not in RESTART_TYPES:
            raise ConfigError(f"restart must be one of {', '.join(RESTART_TYPES)}, got {restart!r}")
        if host is not None and host not in self.hosts:
            known = ", ".join(map(repr, self.hosts)) or "none"
            raise ConfigError(
                f"no host {host!r} in Supervisor(hosts=...) (it has {known}); describe it there"
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
        existing = self._children.get(id)
        if existing is not None:
            if existing.state == "stopping":  # (a spawn that failed as it was stopped too)
                raise ConfigError(
                    f"a child with id {id!r} is being stopped: spawn it again once its "
                    "process is gone (stop() returns then)"
                )
            raise ConfigError(f"a child with id {id!r} is already supervised")
        if len(self._children) >= self.max_children:
            raise SpawnError(
                f"cannot spawn {id!r}: supervisor {self.id!r} already has "
                f"max_children={self.max_children} children; stop one, or raise the limit "
                f"with Supervisor(max_children=...)"
            )
        child = Child(id, target, packed, restart)
        child.host = host
        self._children[id] = child
        try:
            async with child.lock:
                await self._start(child, Incarnation(child))
        except BaseException:
            if child.incarnation is None:  # its process is gone: _start saw to it
                self._remove(child)
            # (else stopped while starting: the _halt that stopped it ends it, removes it)
            raise
        return child.info()

    async def stop(self, id: str) -> None:
        """Stop child ``id`` (as at shutdown: stop message, SIGTERM, SIGKILL) and stop
        supervising it; it is not restarted. A start in progress (its spawn or a restart) is
        interrupted at once, not waited for; other children are not held up. Cancelled, this
        returns at once and the stop goes on in the supervisor's own task: a child is never
        left half stopped."""
        self._check_open()
        child = self._children.get(id)
        if child is None:
            raise UnknownPeerError(f"supervisor {self.id!r} has no child {id!r}")
        assert self._task_group is not None
        done = anyio.Event()
        failed: list[Exception] = []
        waiting = True

        async def halt() -> None:
            try:
                await self._halt(child, remove=True)
            except Exception as exc:  # the caller's, if it still waits
                if not waiting:
                    self._log.exception(f"stopping child {id!r} failed", exc)
                failed.append(exc)
            finally:
                done.set()

        self._task_group.start_soon(halt)
        try:
            await done.wait()
        finally:
            waiting = False
        if failed:
            raise failed[0]

    def _remove(self, child: Child) -> None:
        if self._children.get(child.id) is child:
            del self._children[child.id]
        child.removed = True
        child.state = "stopped"
        child.claim = None
        child.changed()

    def _spec(self, child: Child, incarnation: Incarnation) -> dict[str, Any]:
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

    async def _start(self, child: Child, incarnation: Incarnation) -> None:
        """Start ``incarnation`` of ``child`` and wait until it is ready; the caller holds the
        child's lock. Whatever fails, the process is gone before this raises (ended here if
        need be), and no restart is decided for it: the caller reports the failure. Except a
        start stopped (``stop``, shutdown), which fails at once: its process is the
        ``_halt``'s that stopped it, which ends it once the caller releases the lock."""
        # Its connection back is expected: a burst of children starting is not a flood of
        # handshakes, and none of theirs is dropped for max_handshakes.
        server = self._net if child.host is not None and self._net is not None else self.server
        server._expect_handshakes(1)
        try:
            await self._launch(child, incarnation)
        finally:
            server._expect_handshakes(-1)

    async def _unless_stopped(self, child: Child, step: Callable[[], Awaitable[T]]) -> T:
        """``step()`` of a child's start, ended at once if the child is stopped meanwhile (or
        the supervisor shuts down: ``waiting_for_launcher``): then :class:`SpawnError` (or
        :class:`ClosedError`), the child without an incarnation."""
        with anyio.CancelScope() as waiting:
            child.waiting_for_launcher = waiting
            if child.halt.is_set() or self._halting.is_set():
                waiting.cancel()
            try:
                return await step()
            finally:
                child.waiting_for_launcher = None
        child.incarnation = None
        child.changed()
        self._check_open()
        raise SpawnError(f"child {child.id!r} was stopped before it was ready")

    async def _launch(self, child: Child, incarnation: Incarnation) -> None:
        """:meth:`_start`'s work."""
        assert self._task_group is not None
        child.incarnation = incarnation
        child.changed()
        started = time.monotonic()
        try:
            launcher = await self._unless_stopped(child, partial(self._ready_launcher, child))
        except BaseException:  # (a host that cannot be reached, a cancelled spawn)
            child.incarnation = None
            child.changed()
            raise
        try:
            self._output.prepare()
            pipes = output_pipes()
        except OSError as exc:  # out of descriptors: nothing was started, nothing is left open
            child.incarnation = None
            child.changed()
            raise SpawnError(
                f"could not start child {child.id!r}: its output's pipes: {exc}"
            ) from exc
        try:
            # Not shielded: a spawn given up (stopped, cancelled, a host that does not answer)
            # leaves the launcher to kill that process as soon as its pid comes.
            incarnation.launcher = launcher
            spec = self._spec(child, incarnation)
            fds = [pipes[0][1], pipes[1][1]]
            on_exit = partial(self._on_exit, incarnation)
            incarnation.pid = await self._unless_stopped(
                child, partial(launcher.spawn, spec, fds, child.id, on_exit)
            )
        except BaseException:
            for read_end, _ in pipes:
                os.close(read_end)
            child.incarnation = None
            child.changed()
            raise
        finally:
            for _, write_end in pipes:
                os.close(write_end)
        where = child.id if child.host is None else f"{child.id}@{child.host}"
        self._output.start(self._task_group, (pipes[0][0], pipes[1][0]), where)
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
            if isinstance(launcher, ForkServer):  # the next spawn or restart is readied
                launcher.prepare_spare(self._backend, self._uvloop)
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
        if halted:
            # Stopped while starting: the spawn fails now. Its process ends in the usual
            # bounded steps, taken by the _halt that stopped it (stop, shutdown), which waits
            # for the child's lock the caller releases as this raises.
            if exited and child.incarnation is incarnation:
                child.incarnation = None
            else:
                child.state = "stopping"
            child.changed()
            self._check_open()
            raise SpawnError(f"child {child.id!r} was stopped before it was ready")
        if not exited:  # too slow to start: SIGKILL at once
            with anyio.CancelScope(shield=True):
                await self._end(child, incarnation, graceful=False)
        if child.incarnation is incarnation:
            child.incarnation = None
        child.changed()
        if exited:
            failed = incarnation.load_error
            if failed is not None:
                raise SpawnError(
                    f"child {child.id!r} could not load its target '{child.target}': "
                    f"{failed.remote_type}: {failed.remote_message} (in the child process; "
                    f"its traceback is the cause, and above with its id)"
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
        if incarnation.client is None:
            raise SpawnError(
                f"child {child.id!r} did not connect back within "
                f"start_timeout={self.start_timeout} s"
            )
        raise SpawnError(
            f"child {child.id!r} connected back but was not ready within start_timeout="
            f"{self.start_timeout} s: its fn did not reach its first suspension (a blocking "
            "call before its first await?)"
        )

    async def _end(self, child: Child, incarnation: Incarnation, graceful: bool = True) -> None:
        """End ``incarnation`` in bounded steps (``stop_process``; only SIGKILL unless
        ``graceful``); the caller holds the child's lock."""
        incarnation.stopping = True
        child.changed()
        pid = incarnation.pid
        launcher = incarnation.launcher
        if pid is not None and launcher is not None:

            def kill(sig: int) -> None:
                launcher.kill(pid, sig)

            grace = self.shutdown_timeout
            if self._grace_until is not None:  # (shutdown's, begun in _stop_all)
                grace = max(0.0, self._grace_until - anyio.current_time())
            await stop_process(
                incarnation,
                kill,
                self._log,
                graceful=graceful and not self._hard,
                shutdown_timeout=grace,
                terminate_timeout=self.terminate_timeout,
            )
        if child.incarnation is incarnation:
            child.incarnation = None
        child.changed()

    async def _halt(self, child: Child, *, remove: bool) -> None:
        """Stop ``child`` for good: a start in progress is interrupted at once, a pending
        restart is dropped, its process ends in bounded steps."""
        child.halt.set()
        if child.waiting_for_launcher is not None:
            child.waiting_for_launcher.cancel()
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
            # Those still starting go beside the first: nothing depends on them yet, and one
            # deaf while it starts (its loop blocked) must not hold back the others' turns.
            starting = [child for child in children if child.state == "starting"]
            async with anyio.create_task_group() as task_group:
                for child in starting:
                    task_group.start_soon(partial(self._halt, remove=False), child)
                for child in children:
                    if child not in starting:
                        await self._halt(child, remove=False)
            return
        # The requests in flight to every child are answered before any child is stopped: an
        # answer may need a sibling (a pipeline's next stage), which must still be there. One
        # grace period for both steps (see _end).
        if self._grace_until is None:  # (a shutdown cancelled and taken again goes on)
            self._grace_until = anyio.current_time() + self.shutdown_timeout
        with anyio.move_on_after(max(0.0, self._grace_until - anyio.current_time())):
            for child in children:
                incarnation = child.incarnation
                if incarnation is not None and not incarnation.exited.is_set():
                    await incarnation.idle.wait()
        async with anyio.create_task_group() as task_group:
            for child in children:
                task_group.start_soon(partial(self._halt, remove=False), child)

    # --- restarts -----------------------------------------------------------------------------
    #
    # A crash is decided on at once, in _on_exit (no await: decisions never interleave); the
    # restart it decides runs as a task of its own. Each child it covers is claimed (state
    # "restarting"); a newer decision that covers the same child claims it again, and the
    # older restart then leaves that child to the newer one. One_for_one restarts run side
    # by side; the sequences of one_for_all and rest_for_one, whose groups overlap, one at a
    # time, each stopping its group in reverse start order and starting it in start order.

    def _decide(
        self, child: Child, incarnation: Incarnation, failed: IPCError | None = None
    ) -> None:
        """The restart policy, for an exit of ``child`` that it did not ask for, or for a restart
        of it that ``failed`` (its process may never have started)."""
        code = incarnation.exitcode
        chain = (ChildExit(self.id, child.id, code), *incarnation.chain)
        if failed is not None:  # its error says how (and names the chain, if there is one)
            how = f"child {child.id!r} of supervisor {self.id!r} could not be restarted: {failed}"
            what = how
        else:
            what = f"child {child.id!r} {describe_exit(code)}"
            if incarnation.chain:
                what += f" (a supervisor in it gave up: {describe_chain(incarnation.chain)})"
            how = describe_chain(chain)
        assert self._task_group is not None
        now = time.monotonic()
        order = [other for other in self._children.values() if not other.halt.is_set()]
        decision = decide(
            strategy=self.strategy,
            order=[other.id for other in order],
            failed=child.id,
            restart=child.restart,
            exitcode=code,
            window=self._restart_window,
            now=now,
            max_restarts=self.max_restarts,
            max_seconds=self.max_seconds,
        )
        self._restart_window = decision.window
        if decision.action == "remove":
            self._log.info(f"{what}; {child.restart}: not restarted")
            self._remove(child)
            return
        if decision.action == "give_up":
            # Down to the child that kept failing, if this one ran a supervisor that gave up
            # and said so before it exited (without its report, the chain stops here).
            restarts = decision.restarts
            self._failure = RestartIntensityError(
                f"{how}; supervisor {self.id!r} had restarted its children "
                f"{restarts} time{'' if restarts == 1 else 's'} in {decision.seconds:.1f} s, "
                f"as many as max_restarts={self.max_restarts} within "
                f"max_seconds={self.max_seconds} allow: it stopped every child and gave up",
                child.id,
                self.max_restarts,
                self.max_seconds,
                code,
                chain=chain,
                restarts=restarts,
                seconds=decision.seconds,
            )
            self._failure.__cause__ = failed
            self._log.warning(str(self._failure))
            self._halt_starts()
            self._task_group.start_soon(self._give_up)
            return
        by_id = {other.id: other for other in order}
        group = [by_id[id] for id in decision.group]
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

    async def _restart(self, failed: Child, group: list[Child], claim: object) -> None:
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
                    incarnation = Incarnation(member)
                    try:
                        await self._start(member, incarnation)
                    except IPCError as exc:
                        if self._halting.is_set() or member.halt.is_set():
                            continue
                        self._log.warning(f"restart of {member.id!r} failed: {exc}")
                        if member.claim is None:  # else a newer restart covers it
                            self._decide(member, incarnation, exc)

    # --- children's messages ------------------------------------------------------------------

    def _incarnation_of(self, data: Any, client: Client) -> Incarnation:
        child = self._children.get(client.id)
        incarnation = child.incarnation if child is not None else None
        token = data.get("token") if isinstance(data, dict) else None
        if incarnation is None or token != incarnation.token:
            raise SpawnError(f"{client.id!r} is not a child this supervisor is starting")
        return incarnation

    def _claims(self, id: str, token: Any) -> str | None:
        """Why a connection may not take ``id`` (see ``Server._claims``): a child's id is its
        process's, which proves it with its incarnation's token in its hello. Anyone else who
        reaches our sockets (over TLS without client certificates, anyone who reaches the
        port; with auth_key, any other child) took over a child's connection with its id:
        the child cut off, its requests answered by the impostor, never restarted."""
        child = self._children.get(id)
        if child is None:
            return None
        incarnation = child.incarnation
        if incarnation is not None and token == incarnation.token:
            return None
        return f"{id!r} is a child of supervisor {self.id!r}: only its own process connects so"

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
            incarnation.child.changed()  # an emit that met the closed connection goes on

    def _on_disconnect(self, client: Client) -> None:
        # A running child's connection dropped: what waits for it to run waits on (see
        # Incarnation.running) until it exits or connects again.
        child = self._children.get(client.id)
        incarnation = child.incarnation if child is not None else None
        if incarnation is not None and incarnation.client is client:
            incarnation.child.changed()

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
        incarnation.chain = chain_of(data.get("chain"))

    @overload
    def on(self, event: str, handler: None = None) -> Callable[[H], H]: ...

    @overload
    def on(self, event: str, handler: H) -> H: ...

    def on(self, event: str, handler: H | None = None) -> H | Callable[[H], H]:
        """Register ``handler(data, client)`` for events and requests children send to the
        supervisor (``actor.parent.emit(...)`` in a child); ``client.id`` is the child's id.
        Also usable as a decorator."""
        return self.server.on(event, handler)

    # --- talking to children ------------------------------------------------------------------

    def _child(self, id: str) -> Child:
        child = self._children.get(id)
        if child is None:
            raise UnknownPeerError(f"supervisor {self.id!r} has no child {id!r}")
        return child

    async def _running(self, id: str, deadline: float, timeout: float) -> Incarnation:
        """The child's ready incarnation; waits (until ``deadline``, which the caller's
        ``timeout`` set) while it is restarting."""
        with anyio.CancelScope(deadline=deadline):
            while True:
                self._check_open()
                child = self._child(id)
                if child.halt.is_set():  # stop() is stopping it: nothing to wait for
                    raise UnknownPeerError(f"child {id!r} is being stopped (stop())")
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
        """Send ``event`` to child ``id``: at most once, or with ``acked="on"`` at least once
        (exactly once while the child's process lives). While the child is restarting, waits
        for it (up to ``Config.request_timeout``, then :class:`RequestTimeoutError`), also
        when it dies in the middle of this call."""
        deadline = anyio.current_time() + self.config.request_timeout
        while True:
            incarnation = await self._running(id, deadline, self.config.request_timeout)
            client = incarnation.client
            assert client is not None
            try:
                await client.emit(event, data)
                return
            except ClosedError:
                # Its connection closed before we knew (the child is exiting, or reconnects):
                # nothing was queued. Wait for its exit or its new connection, then go on as
                # for a child restarting.
                with anyio.move_on_after(max(0.0, deadline - anyio.current_time())):
                    while incarnation.client is client and not incarnation.exited.is_set():
                        await incarnation.child.wait_changed()
                if anyio.current_time() >= deadline:
                    raise RequestTimeoutError(
                        f"child {id!r} was not running within {self.config.request_timeout} s"
                    ) from None

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
        incarnation = await self._running(id, deadline, timeout)
        try:
            return await incarnation.request(event, data, deadline)
        except RequestTimeoutError:  # (it says what was left of the timeout: say the timeout)
            raise RequestTimeoutError(
                f"no reply to request {event!r} from child {id!r} within {timeout} s; "
                "a late reply is ignored"
            ) from None


def _holds_cancellation(exc: BaseException) -> bool:
    """Whether ``exc`` is the backend's cancellation, or a group holding one."""
    cancelled = anyio.get_cancelled_exc_class()
    if isinstance(exc, BaseExceptionGroup):
        return exc.subgroup(cancelled) is not None
    return isinstance(exc, cancelled)
