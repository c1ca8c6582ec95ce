"""The restart policy as a pure function (``_policy.decide``): no processes, no event loop.

Restart types, strategies and the intensity window, each decision from its inputs alone.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ipcactors._supervision._policy import Decision, decide

ORDER = ("a", "b", "c")


def _decide(failed: str = "b", **overrides: Any) -> Decision:
    options: dict[str, Any] = {
        "strategy": "one_for_one",
        "order": ORDER,
        "failed": failed,
        "restart": "permanent",
        "exitcode": 1,
        "window": (),
        "now": 100.0,
        "max_restarts": 3,
        "max_seconds": 5.0,
    }
    options.update(overrides)
    return decide(**options)


# --- restart types ----------------------------------------------------------------------------


@pytest.mark.parametrize("code", [0, 1, 3, -9, -15, None])
def test_a_permanent_child_is_restarted_after_any_exit(code: int | None) -> None:
    assert _decide(exitcode=code).action == "restart"


@pytest.mark.parametrize(("code", "action"), [(0, "remove"), (1, "restart"), (-9, "restart"),
                                              (None, "restart")])  # fmt: skip
def test_a_transient_child_is_restarted_after_an_abnormal_exit_only(
    code: int | None, action: str
) -> None:
    assert _decide(restart="transient", exitcode=code).action == action


@pytest.mark.parametrize("code", [0, 1, -9, None])
def test_a_temporary_child_is_never_restarted(code: int | None) -> None:
    decision = _decide(restart="temporary", exitcode=code)
    assert decision == Decision("remove", (), ())


def test_an_exit_that_is_not_restarted_does_not_count() -> None:
    decision = _decide(restart="temporary", window=(98.0, 99.0))
    assert decision.window == (98.0, 99.0)
    # Even with no room left in the window: nothing to restart, nothing to give up.
    full = _decide(restart="transient", exitcode=0, window=(97.0, 98.0, 99.0), max_restarts=3)
    assert full.action == "remove"


# --- strategies -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("strategy", "failed", "group"),
    [
        ("one_for_one", "a", ("a",)),
        ("one_for_one", "b", ("b",)),
        ("one_for_all", "a", ORDER),
        ("one_for_all", "c", ORDER),
        ("rest_for_one", "a", ORDER),
        ("rest_for_one", "b", ("b", "c")),
        ("rest_for_one", "c", ("c",)),
    ],
)
def test_the_strategy_picks_the_group_in_start_order(
    strategy: str, failed: str, group: tuple[str, ...]
) -> None:
    decision = _decide(failed, strategy=strategy)
    assert decision.action == "restart"
    assert decision.group == group


def test_a_group_restart_counts_once() -> None:
    decision = _decide(strategy="one_for_all", window=(99.0,))
    assert decision.window == (99.0, 100.0)


# --- intensity --------------------------------------------------------------------------------


def test_one_restart_too_many_within_max_seconds_gives_up() -> None:
    window: tuple[float, ...] = ()
    for now in (0.0, 1.0, 2.0):
        decision = _decide(window=window, now=now)
        assert decision.action == "restart", now
        window = decision.window
    assert window == (0.0, 1.0, 2.0)
    decision = _decide(window=window, now=3.5)
    assert decision.action == "give_up"
    assert decision.group == ()
    assert (decision.restarts, decision.seconds) == (3, 3.5)


def test_restarts_older_than_max_seconds_leave_the_window() -> None:
    # 0.0 is more than 5 s before 6.0; 1.0 is exactly 5 s before (still inside, as OTP counts).
    decision = _decide(window=(0.0, 1.0, 2.0), now=6.0)
    assert decision.action == "restart"
    assert decision.window == (1.0, 2.0, 6.0)


def test_max_restarts_zero_gives_up_at_the_first_exit() -> None:
    decision = _decide(max_restarts=0)
    assert (decision.action, decision.restarts, decision.seconds) == ("give_up", 0, 0.0)


def test_the_inputs_are_not_changed() -> None:
    window = [97.0, 98.0]
    order = ["a", "b", "c"]
    first = _decide(window=window, order=order, strategy="rest_for_one")
    assert window == [97.0, 98.0]
    assert order == ["a", "b", "c"]
    assert _decide(window=window, order=order, strategy="rest_for_one") == first


@given(
    strategy=st.sampled_from(["one_for_one", "one_for_all", "rest_for_one"]),
    size=st.integers(1, 6),
    pick=st.integers(0, 5),
    gaps=st.lists(st.floats(0.0, 3.0), max_size=12),
    max_restarts=st.integers(0, 5),
    max_seconds=st.floats(0.1, 10.0),
)
def test_decisions_keep_their_invariants(
    strategy: str, size: int, pick: int, gaps: list[float], max_restarts: int, max_seconds: float
) -> None:
    order = tuple(f"c{n}" for n in range(size))
    failed = order[pick % size]
    window: tuple[float, ...] = ()
    now = 0.0
    for gap in gaps:
        now += gap
        decision = _decide(
            failed,
            strategy=strategy,
            order=order,
            window=window,
            now=now,
            max_restarts=max_restarts,
            max_seconds=max_seconds,
        )
        # The window holds only restarts within max_seconds, this one last.
        assert all(now - at <= max_seconds for at in decision.window)
        assert decision.window[-1] == now
        if decision.action == "give_up":
            assert len(decision.window) == max_restarts + 1
            return
        assert len(decision.window) <= max_restarts
        # The failed child and, in start order, the ones the strategy ties to it.
        assert failed in decision.group
        if strategy != "one_for_all":
            assert decision.group[0] == failed
        assert list(decision.group) == [id for id in order if id in decision.group]
        window = decision.window
