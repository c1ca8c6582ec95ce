"""What the supervisor tests share: a supervisor with test timings, polling, process liveness."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import psutil

from ipcactors import Supervisor


def supervisor(socket_dir: str, **options: Any) -> Supervisor:
    """A supervisor in ``socket_dir`` with short stop timeouts and fast retries."""
    options.setdefault("shutdown_timeout", 2.0)
    options.setdefault("terminate_timeout", 0.5)
    return Supervisor(socket_root=socket_dir, retry=0.05, retry_cap=0.2, **options)


async def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    with anyio.fail_after(timeout):
        while not condition():
            await anyio.sleep(0.01)


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
