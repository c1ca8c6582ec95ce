"""Unix socket paths: the private socket directory, and binding without stealing or leaking.

Invariants owned here:
- A live server's path is never taken over: before binding, an existing socket is probed with a
  connect; only a refused connect (a stale leftover) lets us remove it. Probe, unlink and bind
  happen under an exclusive ``flock`` on the directory, so two servers starting at once cannot
  both decide the path is stale.
- A file that is not a socket, or a symlink, is never removed.
- The socket file never exists with a mode wider than 0600: the mode is set on the descriptor
  before ``bind`` (Linux applies it to the new inode) and the umask is irrelevant.
- A server removes its socket file on close only if the file is still the one it bound.
These functions block (briefly): only waiting for the directory's lock can take long, so
``bind_unix_socket(..., wait=False)`` runs in the event loop and returns None when another
process holds the lock; callers then repeat it with ``wait=True`` in a worker thread (a thread
costs about a millisecond to start in a fresh process: a forked child serves at once).
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import stat
import sys
import tempfile
from dataclasses import dataclass

from .._errors import (
    AddressInUseError,
    InsecureSocketDirError,
    SocketPathError,
    SocketPathTooLongError,
    raise_if_exhausted,
    raise_if_out_of_descriptors,
)

__all__ = [
    "MAX_PATH_BYTES",
    "BoundUnixSocket",
    "bind_unix_socket",
    "check_path_length",
    "default_socket_root",
    "ensure_socket_dir",
    "remove_if_ours",
]

# sun_path is 108 bytes on Linux including the terminating NUL (104 on macOS and the BSDs).
MAX_PATH_BYTES = 107 if sys.platform.startswith("linux") else 103


def default_socket_root() -> str:
    """``$XDG_RUNTIME_DIR/ipcactors`` when that is a private directory of ours, else
    ``<tmp>/ipcactors-<uid>``."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        try:
            info = os.stat(runtime)
        except OSError:
            pass
        else:
            if info.st_uid == os.getuid() and not info.st_mode & 0o077:
                return os.path.join(runtime, "ipcactors")
    try:
        tmp = tempfile.gettempdir()  # (its first call probes each candidate with a file)
    except FileNotFoundError as exc:
        raise_if_out_of_descriptors(exc, "cannot find the temporary directory")
        raise
    return os.path.join(tmp, f"ipcactors-{os.getuid()}")


def check_path_length(path: str) -> None:
    size = len(os.fsencode(path))
    if size > MAX_PATH_BYTES:
        raise SocketPathTooLongError(
            f"Unix socket path is {size} bytes, the limit here is {MAX_PATH_BYTES}: {path!r}; "
            "use a shorter socket_root, appspace or actor id"
        )


def ensure_socket_dir(path: str, *, private: bool) -> None:
    """Make sure ``path`` is a directory no other user can write into.

    ``private``: the directory is ours alone (created 0700, and tightened to 0700 if we own it
    with a wider mode). Otherwise an existing shared directory is accepted when only its owner
    (us or root) can write into it, or when it has the sticky bit (like /tmp).
    """
    try:
        if private:
            try:
                os.mkdir(path, 0o700)
            except FileExistsError:
                pass
        info = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):  # (private: its parent is missing)
        raise SocketPathError(
            f"socket directory {path!r} does not exist: create it (mode 0700), or leave "
            "socket_root unset for a private directory of your own"
        ) from None
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise InsecureSocketDirError(f"socket directory {path!r} is not a directory (or a symlink)")
    uid = os.getuid()
    if private:
        if info.st_uid != uid:
            raise InsecureSocketDirError(
                f"socket directory {path!r} belongs to uid {info.st_uid}, not to us ({uid}); "
                "another user may be squatting it: remove it or choose another socket_root"
            )
        if info.st_mode & 0o077:
            os.chmod(path, 0o700)
        return
    if info.st_uid not in (uid, 0):
        raise InsecureSocketDirError(
            f"socket directory {path!r} belongs to uid {info.st_uid}; use a directory of your own"
        )
    if info.st_mode & 0o022 and not info.st_mode & stat.S_ISVTX:
        raise InsecureSocketDirError(
            f"socket directory {path!r} is writable by other users and has no sticky bit: "
            "anyone could replace the socket"
        )


@dataclass(frozen=True, slots=True)
class BoundUnixSocket:
    sock: socket.socket
    path: str
    identity: tuple[int, int]  # (st_dev, st_ino) of the file we bound
    removed_stale: bool


def bind_unix_socket(path: str, backlog: int = 128, *, wait: bool = True) -> BoundUnixSocket | None:
    """Bind and listen on ``path`` safely (see the module's invariants). Blocks briefly; with
    ``wait=False``, returns None instead of waiting for another process's lock. Out of
    descriptors (or memory): :class:`ResourceError`, not a fault of the path's."""
    try:
        return _bind_unix_socket(path, backlog, wait)
    except (OSError, SocketPathError) as exc:
        cause = exc.__cause__ if isinstance(exc, SocketPathError) else exc
        if cause is not None:
            raise_if_exhausted(cause, f"cannot serve on {path!r}")
        raise


def _bind_unix_socket(path: str, backlog: int, wait: bool) -> BoundUnixSocket | None:
    check_path_length(path)
    directory = os.path.dirname(path) or "."
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise SocketPathError(
            f"cannot serve on {path!r}: the directory {directory!r} does not exist"
        ) from exc
    except OSError as exc:
        raise SocketPathError(f"cannot serve on {path!r}: {directory!r}: {exc.strerror}") from exc
    try:
        try:
            fcntl.flock(dir_fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return None
        removed_stale = _clear_stale(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            os.fchmod(sock.fileno(), 0o600)
            sock.bind(path)
            try:
                info = os.stat(path)
                if stat.S_IMODE(info.st_mode) & 0o177:  # a kernel that ignored the fchmod
                    os.chmod(path, 0o600)
                sock.listen(backlog)
            except BaseException:
                os.unlink(path)
                raise
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE:
                raise AddressInUseError(f"{path!r} was taken while binding") from exc
            raise SocketPathError(f"cannot serve on {path!r}: {exc.strerror}") from exc
        except BaseException:
            sock.close()
            raise
    finally:
        os.close(dir_fd)  # releases the lock
    return BoundUnixSocket(sock, path, (info.st_dev, info.st_ino), removed_stale)


def _clear_stale(path: str) -> bool:
    """Remove a stale socket at ``path``; refuse a live one or a non-socket. Holds the lock."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISSOCK(info.st_mode):
        kind = "symlink" if stat.S_ISLNK(info.st_mode) else "file that is not a socket"
        raise AddressInUseError(
            f"{path!r} is a {kind}; it is left alone. Remove it or serve on another path"
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.setblocking(False)
    try:
        code = probe.connect_ex(path)
    finally:
        probe.close()
    if code == errno.ECONNREFUSED:
        os.unlink(path)
        return True
    if code in (0, errno.EAGAIN, errno.EWOULDBLOCK, errno.EINPROGRESS):
        raise AddressInUseError(
            f"a live server is listening on {path!r}; it is left alone. "
            "Stop it first, or use another id, appspace or path"
        )
    raise SocketPathError(f"cannot probe the existing socket at {path!r}: {os.strerror(code)}")


def remove_if_ours(path: str, identity: tuple[int, int]) -> None:
    """Unlink ``path`` if it is still the socket file we bound (another server may own it now)."""
    try:
        info = os.lstat(path)
        if (info.st_dev, info.st_ino) == identity:
            os.unlink(path)
    except FileNotFoundError:
        pass
