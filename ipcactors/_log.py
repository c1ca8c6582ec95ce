"""Logging through loguru, per actor, silenced by ``Config.silent``.

Levels: INFO for lifecycle (serving, connected, lost), WARNING for a peer's misbehaviour, a
handler's exception, or a connection that cannot be made (the first failure, then a reminder
now and then), DEBUG for each retry, TRACE for per-message detail. Every line starts with the
actor's id. User data is never used as a format string.

An exception is logged as its plain traceback text, never handed to loguru as an exception: a
sink with ``diagnose=True`` (loguru's default) would print the values of local variables, and a
library must not put its users' data (keys, payloads) into logs that way. A cancellation it was
raised while handling (a handler run as its actor closes) is left out of that text.
"""

from __future__ import annotations

import traceback
from typing import Any

from loguru import logger

from ._transports._backend import is_cancellation

__all__ = ["ActorLog"]


def _traceback(exc: BaseException) -> traceback.TracebackException:
    """``exc``'s traceback, without the cancellation it was raised while handling (a handler
    run as its actor closes): that is ours, not the user's (the exception is not changed)."""
    formatted = traceback.TracebackException.from_exception(exc)
    if not exc.__suppress_context__ and is_cancellation(exc.__context__):
        formatted.__suppress_context__ = True
    return formatted


class ActorLog:
    """A logger for one actor; every call is a no-op when ``silent``."""

    __slots__ = ("_logger", "_prefix", "silent")

    def __init__(self, actor_id: str, silent: bool) -> None:
        self._logger = logger.bind(actor=actor_id)
        self._prefix = f"[{actor_id}] "
        self.silent = silent

    def trace(self, message: str) -> None:
        if not self.silent:
            self._logger.opt(depth=1).trace(self._prefix + message)

    def debug(self, message: str) -> None:
        if not self.silent:
            self._logger.opt(depth=1).debug(self._prefix + message)

    def info(self, message: str) -> None:
        if not self.silent:
            self._logger.opt(depth=1).info(self._prefix + message)

    def warning(self, message: str) -> None:
        if not self.silent:
            self._logger.opt(depth=1).warning(self._prefix + message)

    def exception(self, message: str, exc: BaseException) -> None:
        if not self.silent:
            text = "".join(_traceback(exc).format()).rstrip()
            self._logger.opt(depth=1).error(f"{self._prefix}{message}\n{text}")

    def user(self, *args: Any) -> None:
        """node-ipc's ``ipc.log(...)``: the arguments joined by spaces, non-strings repr'd."""
        if not self.silent:
            text = " ".join(a if isinstance(a, str) else repr(a) for a in args)
            self._logger.opt(depth=1).info(self._prefix + text)
