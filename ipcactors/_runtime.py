"""What ``ipcactors.run`` shares with the actors started under it (through a context variable)."""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._actor import Actor
    from ._supervisor import Supervisor

__all__ = ["Runtime", "current_runtime", "set_runtime"]


class Runtime:
    __slots__ = ("actors", "signal", "supervisors")

    def __init__(self) -> None:
        self.actors: set[Actor] = set()  # closed gracefully on the first signal
        # Stopped first on the first signal (their children in order); killed on the second.
        self.supervisors: set[Supervisor] = set()
        self.signal: int | None = None  # the signal that started the shutdown


_current: ContextVar[Runtime | None] = ContextVar("ipcactors_runtime", default=None)


def current_runtime() -> Runtime | None:
    return _current.get()


def set_runtime(runtime: Runtime) -> None:
    _current.set(runtime)
