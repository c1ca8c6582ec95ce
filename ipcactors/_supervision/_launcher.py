"""How a supervisor starts its children's processes: the launcher interface.

A launcher owns one place where children run (this machine, one SSH host, ...) and everything
the supervisor does to a child's process goes through it: start one, signal it, hear of its
exit. The supervisor never sees more than pids and callbacks, so a launcher for another place
(a Slurm allocation, a Kubernetes pod) can be written outside the package: docs/remote.md
sketches one. ``_spawner.ForkServer`` is the local launcher, the default; ``_ssh.SSHLauncher``
starts a forkserver on another host over SSH.

The contract every launcher keeps (the supervisor relies on each point):
- ``spawn`` returns the new process's pid (an id that means something to this launcher only),
  or raises :class:`SpawnError` saying why it could not start; once it returned, ``on_exit``
  is called exactly once, from the event loop, when that process is gone (possibly before
  ``spawn`` returns). An exit code, or minus the signal that killed it. A ``spawn`` that is
  cancelled, or gives up waiting, leaves no process behind: one that starts anyway is killed
  as soon as the launcher learns its pid (its ``on_exit`` still runs once).
- When the launcher loses its place (its forkserver died, the SSH connection dropped), it sets
  ``dead``, calls every live child's ``on_exit(-SIGKILL)`` at once and makes sure those
  processes end by themselves within a bound it documents (no orphans): the supervisor
  restarts them elsewhere or on a new launcher, it cannot wait for them.
- ``kill(pid, sig)`` signals the child's process group, and only until its ``on_exit`` ran (a
  reused pid is never signalled); it never blocks.
- The child's stdout and stderr go to the two descriptors ``spawn`` is given (write ends of
  pipes the supervisor relays, prefixed with the child's id); the caller closes its copies
  when ``spawn`` returns, so a launcher keeps duplicates if it needs them.
- ``aclose`` ends every child of the launcher and the launcher's own processes, bounded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from anyio.abc import TaskGroup

from .._log import ActorLog

__all__ = ["LaunchContext", "Launcher", "Placement"]


@runtime_checkable
class Launcher(Protocol):
    """Starts, signals and reports the exits of a supervisor's children in one place."""

    @property
    def dead(self) -> bool:
        """True once the launcher lost its place: it starts nothing more and is replaced."""
        ...

    async def wait_ready(self) -> None:
        """Return once children can be spawned; :class:`SpawnError` if they never can."""
        ...

    async def spawn(
        self, spec: dict[str, Any], fds: list[int], name: str, on_exit: Callable[[int], None]
    ) -> int:
        """Start child ``name`` as ``spec`` says, its stdout and stderr on ``fds``; its pid."""
        ...

    def kill(self, pid: int, sig: int) -> None:
        """Send ``sig`` to child ``pid``'s process group, if it was not reported gone."""
        ...

    async def aclose(self) -> None:
        """End every child and the launcher's own processes, within a bound."""
        ...


@dataclass(frozen=True, slots=True)
class LaunchContext:
    """What a supervisor tells a launcher it makes for a host (``Placement.launcher``)."""

    #: Where the launcher runs its tasks (the supervisor's; cancelled when it closes).
    task_group: TaskGroup
    #: The supervisor's log (loguru, quiet when ``silent``).
    log: ActorLog
    #: The children's log level, and modules their forkserver imports first.
    log_level: str
    preload: tuple[str, ...]
    #: The supervisor's TCP address children on another host connect back to (port chosen);
    #: ``None`` when it does not listen beyond this machine.
    connect_back: tuple[str, int] | None
    #: ``relay((stdout_fd, stderr_fd), prefix)``: pass what is written to these read ends on
    #: to the supervisor's stdout and stderr, line by line, prefixed ``[prefix]`` (it closes them).
    relay: Callable[[tuple[int, int], str], None]
    #: The anyio backend the children run and whether it is uvloop's: their forkserver
    #: rehearses a child's way on it before it forks (docs/supervisor.md).
    backend: tuple[str, bool] = ("asyncio", False)


@runtime_checkable
class Placement(Protocol):
    """A place children can be put (``Supervisor(hosts={name: placement})``): makes the
    launcher that starts them there. :class:`SSHHost` is one."""

    def launcher(self, name: str, context: LaunchContext) -> Launcher:
        """A new launcher for host ``name`` (not started: ``wait_ready`` starts it)."""
        ...
