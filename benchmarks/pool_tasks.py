"""The functions the W7 pool benchmark runs in worker processes (importable by name by every
pool: ipcactors, ProcessPoolExecutor, loky)."""

from __future__ import annotations

from typing import Any


def tiny(n: int) -> int:
    return n + 1


def scale(array: Any) -> Any:
    """A 1 MiB array in, a 1 MiB array out."""
    return array * 2


async def first_attempt_hangs(n: int, path: str) -> int:
    """The first attempt writes its pid to ``path`` and waits to be killed; a retry answers."""
    import os

    import anyio

    if not os.path.exists(path):
        with open(path + ".tmp", "w") as file:
            file.write(str(os.getpid()))
        os.rename(path + ".tmp", path)
        await anyio.sleep(30)
    return n
