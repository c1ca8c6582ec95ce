"""For scripts that run short of file descriptors: take all but a few."""

from __future__ import annotations

import os


def take_all_but(free: int) -> list[int]:
    """Open ``os.devnull`` until the process may open no more (at most 4,096), then close
    ``free`` of them; the rest, returned, are the caller's to close."""
    fillers: list[int] = []
    try:
        while len(fillers) < 4096:
            fillers.append(os.open(os.devnull, os.O_RDONLY))
    except OSError:
        pass
    for _ in range(min(free, len(fillers))):
        os.close(fillers.pop())
    return fillers
