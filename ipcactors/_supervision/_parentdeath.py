"""How a process started by a supervisor learns that its parent is gone.

Invariant: the second line of defence only (the lifeline pipe is the first, see ``_child`` and
``_forkserver``). Both the forkserver and the children it forks use it, so it lives below both.
"""

from __future__ import annotations

import ctypes
import functools
import os
import signal
import sys
from typing import Final

__all__ = ["EXIT_PARENT_LOST", "set_parent_death_signal"]

_PR_SET_PDEATHSIG: Final = 1
EXIT_PARENT_LOST: Final = 70  # EX_SOFTWARE: the supervisor is gone


@functools.cache
def _libc() -> ctypes.CDLL:
    """Loaded once, in the forkserver: its children inherit it instead of loading it again."""
    return ctypes.CDLL(None, use_errno=True)


def set_parent_death_signal(
    expected_parent: int, sig: int = signal.SIGKILL, *, exit_now: bool = True
) -> bool:
    """Ask Linux to send ``sig`` when our parent dies (when the thread of it that started us
    ends, in fact); exit at once if it already has, or with ``exit_now=False`` return False
    then (True: the parent is there).

    A no-op where prctl is unavailable (the lifeline pipe still ends the process).
    """
    if sys.platform.startswith("linux"):
        try:
            _libc().prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        except (OSError, AttributeError):
            pass
    # The parent may have died before prctl took effect: then we were re-parented already.
    if os.getppid() != expected_parent:
        if exit_now:
            os._exit(EXIT_PARENT_LOST)
        return False
    return True
