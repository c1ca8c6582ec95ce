"""Targets for tests/test_supervisor_concurrency.py (importable by name in a child)."""

from __future__ import annotations

import os
import time

import _workers

import ipcactors

_GATE_LIMIT = 20.0  # seconds a gated start waits at most (a test that failed never opens it)


async def gated(actor: ipcactors.Actor, gate: str) -> None:
    """A slow start: while the file ``gate`` exists, blocks before its first ``await`` (so it
    is not ready), then answers as ``_workers.echo`` does."""
    deadline = time.monotonic() + _GATE_LIMIT
    while os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.01)
    await _workers.echo(actor)
