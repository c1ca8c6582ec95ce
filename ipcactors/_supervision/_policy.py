"""The restart policy (OTP's): what a child's exit leads to. A pure function, no processes.

Invariants owned here:
- ``decide`` depends only on its arguments (the clock is passed in as ``now``, the restart
  history as ``window``) and changes nothing: the same inputs give the same decision.
- Restart type, per child: ``permanent`` (restarted after any exit), ``transient`` (after an
  abnormal exit only: code != 0, or a signal), ``temporary`` (never: removed when it ends).
- Strategy, per supervisor: ``one_for_one`` restarts the child alone, ``one_for_all`` every
  child, ``rest_for_one`` the child and those started after it; the group comes in start order.
- Intensity: more than ``max_restarts`` restarts within ``max_seconds`` means restarting does
  not help: the decision is to give up. A group restart counts once, as in OTP; an exit that
  is not restarted does not count.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

__all__ = ["RESTART_TYPES", "STRATEGIES", "Decision", "RestartType", "Strategy", "decide"]

Strategy = Literal["one_for_one", "one_for_all", "rest_for_one"]
RestartType = Literal["permanent", "transient", "temporary"]

STRATEGIES: Final = ("one_for_one", "one_for_all", "rest_for_one")
RESTART_TYPES: Final = ("permanent", "transient", "temporary")


@dataclass(frozen=True, slots=True)
class Decision:
    """What an exit leads to."""

    #: ``"remove"`` (not restarted: no longer supervised), ``"restart"`` (``group``, in start
    #: order), or ``"give_up"`` (too many restarts: stop every child and fail).
    action: Literal["remove", "restart", "give_up"]
    #: The children to restart (``"restart"``), the failed one among them; empty otherwise.
    group: tuple[str, ...]
    #: The restart history to pass to the next decision (times of the restarts still within
    #: ``max_seconds``, this one included if it counted).
    window: tuple[float, ...]
    #: Restarts made within the window before this exit, and the time from the first of them
    #: to this exit (for the message of a supervisor that gives up).
    restarts: int = 0
    seconds: float = 0.0


def decide(
    *,
    strategy: Strategy,
    order: Sequence[str],
    failed: str,
    restart: RestartType,
    exitcode: int | None,
    window: Sequence[float],
    now: float,
    max_restarts: int,
    max_seconds: float,
) -> Decision:
    """Decide what the exit (``exitcode``: negative for a signal, ``None`` if unknown) of child
    ``failed`` leads to. ``order`` is the supervised children in start order (``failed``
    among them); ``window`` the times of earlier restarts (``Decision.window`` of the last
    decision)."""
    if restart == "temporary" or (restart == "transient" and exitcode == 0):
        return Decision("remove", (), tuple(window))
    recent = [at for at in (*window, now) if now - at <= max_seconds]
    if len(recent) > max_restarts:
        return Decision(
            "give_up", (), tuple(recent), restarts=len(recent) - 1, seconds=now - recent[0]
        )
    if strategy == "one_for_one":
        group: tuple[str, ...] = (failed,)
    elif strategy == "one_for_all":
        group = tuple(order)
    else:
        group = tuple(order[order.index(failed) :])
    return Decision("restart", group, tuple(recent))
