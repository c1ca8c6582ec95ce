"""The supervisor's private socket directory: made per supervisor, swept when its owner died.

Invariants owned here:
- A supervisor's sockets (its own and its children's) live in ``<root>/sup-<pid>-<random>``,
  made private (``mkdtemp``: mode 0700) and removed when the supervisor closes.
- A directory is swept only when its name says ``sup-<pid>-``, that pid is gone, and it is
  ours: a real directory (not a symlink) owned by our uid. A live (or reused) pid, or one we
  may not signal, is left alone.
"""

from __future__ import annotations

import os
import shutil
import tempfile

__all__ = ["make_socket_dir", "remove_socket_dir", "sweep_socket_dirs"]


def make_socket_dir(root: str) -> str:
    """A new private directory for a supervisor's sockets under ``root``."""
    return tempfile.mkdtemp(prefix=f"sup-{os.getpid()}-", dir=root)


def remove_socket_dir(path: str) -> bool:
    """Remove a supervisor's socket directory and what is in it; whether it is gone. Empty (a
    start that failed early), it goes without a descriptor, which a process out of them could
    not open; with files in it, not while none is free (try again once some are)."""
    try:
        os.rmdir(path)
    except OSError:
        shutil.rmtree(path, ignore_errors=True)
    return not os.path.lexists(path)


def sweep_socket_dirs(root: str) -> None:
    """Remove the socket directories of supervisors that died without cleaning up."""
    try:
        names = os.listdir(root)
    except OSError:
        return
    uid = os.getuid()
    for name in names:
        if not name.startswith("sup-"):
            continue
        try:
            pid = int(name.split("-")[1])
        except (IndexError, ValueError):
            continue
        try:
            os.kill(pid, 0)
            continue  # alive (or a pid reused: leave it)
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        path = os.path.join(root, name)
        try:
            info = os.lstat(path)
        except OSError:
            continue
        if info.st_uid == uid and os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
