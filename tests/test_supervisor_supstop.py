"""The supervisor sized for its children (``max_children``), and how shutdown stops them.

Every test runs on asyncio and trio; children run on the same backend as their supervisor.
"""

from __future__ import annotations

import time
from typing import Any

import _workers
import anyio
import pytest
from _supervising import supervisor

from ipcactors import ConfigError, SpawnError, Supervisor

pytestmark = pytest.mark.anyio


# --- max_children -----------------------------------------------------------------------------


async def test_a_spawn_beyond_max_children_fails_at_once(socket_dir: str) -> None:
    with anyio.fail_after(20):
        async with supervisor(socket_dir, max_children=3, start_timeout=10.0) as sup:
            for id in ("a", "b", "c"):
                await sup.spawn(_workers.echo, id=id)
            started = time.monotonic()
            with pytest.raises(SpawnError, match=r"max_children=3") as caught:
                await sup.spawn(_workers.echo, id="d")
            assert time.monotonic() - started < 1.0  # not after start_timeout
            assert "Supervisor(max_children=...)" in str(caught.value)
            assert list(sup.children) == ["a", "b", "c"]
            # A stopped child frees its place.
            await sup.stop("b")
            await sup.spawn(_workers.echo, id="d")
            assert await sup.request("d", "echo", 1) == 1


async def test_the_supervisors_server_is_sized_for_its_children(socket_dir: str) -> None:
    # max_connections=2 holds for the children's servers and for other clients of the
    # supervisor's actor, not for its own children: a third child still connects back.
    with anyio.fail_after(20):
        async with supervisor(socket_dir, max_connections=2, start_timeout=5.0) as sup:
            for id in ("a", "b", "c"):
                await sup.spawn(_workers.echo, id=id)
            for id in ("a", "b", "c"):
                assert await sup.request(id, "echo", id) == id


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "10", None])
def test_max_children_is_validated(value: Any) -> None:
    with pytest.raises(ConfigError, match="max_children"):
        Supervisor(max_children=value)
