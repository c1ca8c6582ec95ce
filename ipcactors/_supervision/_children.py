"""A supervised child's state: the child, its current process (an incarnation), how a process
is stopped, and how a request to it fails when it exits.

Invariants owned here:
- A child's state is one of ``ChildState``. Operations that start or end its process (a spawn,
  a restart, a stop, shutdown) hold the child's own ``lock``: one at a time per child, never one
  for all children. ``halt`` is set once the child is stopped for good, and ends a start in
  progress at once. ``claim`` names the restart decided for it that has not started it yet.
- An incarnation's ``exited`` is set once its process is reaped, with ``exitcode`` (negative:
  the signal). ``stopping`` marks an exit the supervisor causes: never a crash.
- Stopping a process is bounded at every step (``stop_process``): the requests the supervisor
  sent it are answered and the stop message obeyed within ``shutdown_timeout``, then SIGTERM
  and ``terminate_timeout``, then SIGKILL (and ``KILL_WAIT`` for its report).
- A request to a child fails as soon as its process is known to have exited
  (``Incarnation.request``), with :class:`ChildExitedError` naming the child and its exit.
"""

from __future__ import annotations

import math
import secrets
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal

import anyio

from .._core._server import Client
from .._errors import (
    ChildExit,
    ChildExitedError,
    ClosedError,
    ConnectionLostError,
    IPCError,
    RemoteError,
)
from .._log import ActorLog
from ._child import STOP_EVENT
from ._forkserver import GROUP_GONE_WAIT
from ._launcher import Launcher
from ._policy import RestartType
from ._spawner import KILL_WAIT
from ._target import Target

__all__ = [
    "Child",
    "ChildInfo",
    "ChildState",
    "Incarnation",
    "chain_of",
    "describe_chain",
    "describe_exit",
    "stop_process",
]

#: s a process's exit report may trail the end of its connection: its group's wait, and a
#: margin for a loaded machine (the forkserver and the supervisor scheduled late: 1.5 s was
#: outlasted in a CI run). Only a connection lost while its process lives waits it all out.
EXIT_REPORT_WAIT: Final = GROUP_GONE_WAIT + 8.0
_MAX_CHAIN: Final = 100  # steps of a reported escalation chain kept (deeper trees: cut short)
#: How a child the supervisor was stopping ends by the stop's doing: killed by its SIGTERM or
#: SIGKILL, or exiting with 128 + one of them (as run() does).
_STOP_ENDS: Final = frozenset(
    {-signal.SIGTERM, -signal.SIGKILL, 128 + signal.SIGTERM, 128 + signal.SIGKILL}
)

#: Where a child is: ``starting`` (a process is on its way to ready), ``running`` (ready),
#: ``restarting`` (a restart is decided: its old process is being stopped, or waits for its turn),
#: ``stopping`` (being stopped for good: ``stop``, shutdown, giving up), ``stopped`` (no process,
#: and none to come).
ChildState = Literal["starting", "running", "restarting", "stopping", "stopped"]


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


def chain_of(data: Any) -> tuple[ChildExit, ...]:
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
    #: The host it runs on (a name in ``Supervisor(hosts=...)``); ``None``: this machine. Its
    #: ``pid`` is then a pid on that host.
    host: str | None = None


class Incarnation:
    """One process of a child: from spawn to exit."""

    def __init__(self, child: Child) -> None:
        self.child = child
        self.token = secrets.token_hex(16)
        self.pid: int | None = None
        self.launcher: Launcher | None = None  # what started its process: signals go there
        self.client: Client | None = None
        self.ready = anyio.Event()
        self.exited = anyio.Event()
        self.exitcode: int | None = None
        self.stopping = False  # the supervisor is ending it: its exit is not a crash
        # When its stop's grace period and SIGTERM's wait end, from the first stop_process
        # (a stop cancelled part-way and taken again goes on from there, see stop_process).
        self.grace_ends: float | None = None
        self.terminate_ends: float | None = None
        # Why it is about to exit, if it told us (FAILED_EVENT) before it did:
        self.load_error: RemoteError | None = None  # its target did not load
        self.chain: tuple[ChildExit, ...] = ()  # a supervisor in it gave up: down to whom
        self.inflight = 0
        self.idle = anyio.Event()
        self.idle.set()

    @property
    def running(self) -> bool:
        """Ready, not exiting, and connected: a child whose connection dropped (its heartbeats
        stopped) is waited for as a restarting one is, until it connects again."""
        return (
            self.ready.is_set()
            and not self.exited.is_set()
            and not self.stopping
            and self.client is not None
            and self.client.connected
        )

    def on_exit(self, code: int) -> None:
        """Its process ended and was reaped."""
        self.exitcode = code
        self.exited.set()
        self.child.last_exit = code
        self.child.changed()

    async def exited_after_disconnect(self, deadline: float = math.inf) -> bool:
        """Whether this process exited, for a caller whose connection to it just ended: the
        exit report follows that end once what was left of its group is gone (within
        ``GROUP_GONE_WAIT``), and later on a loaded machine; past ``EXIT_REPORT_WAIT``, the
        process lives on and only its connection was lost. Not past ``deadline`` (a request's
        timeout: its caller is told of the loss then)."""
        with anyio.CancelScope(deadline=min(deadline, anyio.current_time() + EXIT_REPORT_WAIT)):
            await self.exited.wait()
        return self.exited.is_set()

    async def request(self, event: str, data: Any, deadline: float) -> Any:
        """Ask this process; fails at once with :class:`ChildExitedError` if it exits first."""
        client = self.client
        assert client is not None
        id = self.child.id
        self.inflight += 1
        if self.inflight == 1:
            self.idle = anyio.Event()
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
                    await self.exited.wait()
                    task_group.cancel_scope.cancel()

                task_group.start_soon(call)
                task_group.start_soon(watch)
        finally:
            self.inflight -= 1
            if self.inflight == 0:
                self.idle.set()
        if "value" in outcome:
            return outcome["value"]
        error = outcome.get("error")
        if error is not None and not isinstance(error, ClosedError | ConnectionLostError):
            raise error
        # The exit seen first (its connection not yet seen to end: unread data before its
        # end, say) stopped the call, or the call's end waits for the exit report.
        if self.exited.is_set() or (
            error is not None and await self.exited_after_disconnect(deadline)
        ):
            raise ChildExitedError(
                f"child {id!r} {describe_exit(self.exitcode)} before answering request {event!r}",
                id,
                self.exitcode,
                stopped=self.stopping and self.exitcode in _STOP_ENDS,
            )
        raise ConnectionLostError(
            f"connection to child {id!r} was lost before it answered {event!r}"
        ) from error


class Child:
    """A supervised child: what it runs, its state, and its current process."""

    def __init__(self, id: str, target: Target, args: bytes, restart: RestartType) -> None:
        self.id = id
        self.target = target
        self.args = args
        self.restart: RestartType = restart
        self.host: str | None = None  # one of the supervisor's hosts; None: this machine
        self.incarnation: Incarnation | None = None
        self.state: ChildState = "starting"
        self.restarts = 0
        self.last_exit: int | None = None
        self.removed = False
        self.lock = anyio.Lock()
        # Set when it is stopped for good: interrupts a start in progress at once.
        self.halt = anyio.Event()
        # While a start waits for its launcher (the forkserver, a host's connection) or for
        # its spawn: the scope that stopping it, or the supervisor's shutdown, cancels.
        self.waiting_for_launcher: anyio.CancelScope | None = None
        # The restart decided for it that has not started it yet (a newer one supersedes it).
        self.claim: object | None = None
        self._changed = anyio.Event()

    def changed(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_changed(self) -> None:
        await self._changed.wait()

    def info(self) -> ChildInfo:
        incarnation = self.incarnation
        return ChildInfo(
            id=self.id,
            target=str(self.target),
            restart=self.restart,
            pid=incarnation.pid if incarnation is not None else None,
            running=incarnation is not None and incarnation.running,
            restarts=self.restarts,
            last_exit=self.last_exit,
            state=self.state,
            host=self.host,
        )


async def stop_process(
    incarnation: Incarnation,
    kill: Callable[[int], None],
    log: ActorLog,
    *,
    graceful: bool,
    shutdown_timeout: float,
    terminate_timeout: float,
) -> None:
    """End the process of ``incarnation`` in bounded steps: the stop message once its requests
    are answered (``shutdown_timeout``), SIGTERM (``terminate_timeout``), SIGKILL; only the
    last unless ``graceful``. ``kill(sig)`` signals its process group. Taken again after a
    cancellation, each wait goes on to the deadline its first start set."""
    id = incarnation.child.id
    asked = False  # (whether it was told to stop: by the stop message, or by SIGTERM)
    answering = False  # (whether its grace ended while it still answered requests)
    if not incarnation.exited.is_set() and graceful:
        if incarnation.grace_ends is None:
            incarnation.grace_ends = anyio.current_time() + shutdown_timeout
        grace_ends = incarnation.grace_ends
        with anyio.move_on_after(max(0.0, grace_ends - anyio.current_time())):
            answering = True
            await incarnation.idle.wait()
            answering = False
            client = incarnation.client
            if client is not None and client.connected:
                try:  # (with the time it has left: its close keeps within it)
                    within = max(0.0, grace_ends - anyio.current_time())
                    await client.emit(STOP_EVENT, {"within": within})
                except IPCError:
                    pass
                else:
                    asked = True
                    await incarnation.exited.wait()
            # Never connected (or gone): nobody to ask; SIGTERM right away.
    for sig, wait in ((signal.SIGTERM, terminate_timeout), (signal.SIGKILL, KILL_WAIT)):
        if incarnation.exited.is_set():
            break
        if sig == signal.SIGTERM:
            if not graceful:
                continue
            if incarnation.terminate_ends is None:
                incarnation.terminate_ends = anyio.current_time() + terminate_timeout
            else:  # sent already, by a stop cancelled since: what is left of its wait
                wait = max(0.0, incarnation.terminate_ends - anyio.current_time())
        if asked:
            log.warning(f"child {id!r} did not stop; sending {sig.name}")
        elif answering:
            log.warning(
                f"child {id!r} was still answering requests when its shutdown_timeout ran "
                f"out; sending {sig.name}"
            )
        elif graceful and incarnation.client is None:  # (a close as a restart begins: usual)
            log.info(f"child {id!r} is still starting (not connected yet); sending {sig.name}")
        elif graceful:
            log.warning(f"child {id!r} cannot be asked to stop (no connection); sending {sig.name}")
        else:
            log.info(f"child {id!r} is stopped at once: sending {sig.name}")
        asked = True
        kill(sig)
        with anyio.move_on_after(wait):
            await incarnation.exited.wait()
    if not incarnation.exited.is_set():
        log.warning(f"child {id!r} (pid {incarnation.pid}) did not report its exit")
    else:
        log.info(f"child {id!r} stopped ({describe_exit(incarnation.exitcode)})")
