"""Warnings about floods, once per burst instead of once per socket.

Invariant: a burst of the same kind of trouble (sockets dropped, handshakes failed, peers timed
out) writes one WARNING when it starts and one a minute while it lasts, each saying how many
were not logged one by one; nothing is lost from the counts in ``statistics()``.
"""

from __future__ import annotations

import math
import time

from ._log import ActorLog

__all__ = ["WarningBursts"]

QUIET = 5.0  # seconds without one that end a burst
REPORT_EVERY = 60.0  # seconds between warnings while a burst lasts


class WarningBursts:
    """One actor's warnings, grouped by kind (any short string)."""

    __slots__ = ("_log", "_state")

    def __init__(self, log: ActorLog) -> None:
        self._log = log
        # kind -> (when the last one happened, when one was last logged, how many not logged)
        self._state: dict[str, tuple[float, float, int]] = {}

    def warn(self, kind: str, message: str) -> None:
        now = time.monotonic()
        last, logged, held = self._state.get(kind, (-math.inf, -math.inf, 0))
        if now - last >= QUIET or now - logged >= REPORT_EVERY:
            if held:
                message += f" ({held} more like it since the last such warning, not logged)"
            self._log.warning(message)
            logged, held = now, 0
        else:
            held += 1
        self._state[kind] = (now, logged, held)
