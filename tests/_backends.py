"""Fixtures for the test modules that run on asyncio, uvloop and Trio (the fast paths differ on
uvloop). Import both into a module to use them there:
``from _backends import _uvloop_global_state, anyio_backend  # noqa: F401``."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture(
    params=[
        pytest.param("asyncio", id="asyncio"),
        pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"),
        pytest.param("trio", id="trio"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    if request.param != "asyncio" and request.param != "trio":
        pytest.importorskip("uvloop")
    return request.param


@pytest.fixture(scope="module", autouse=True)
def _uvloop_global_state() -> None:
    """uvloop opens a process-wide pipe with its first loop: open it before the leak checks
    take their snapshot, so it is not mistaken for ours."""
    try:
        import asyncio

        import uvloop
    except ImportError:
        return
    uvloop.run(asyncio.sleep(0))
