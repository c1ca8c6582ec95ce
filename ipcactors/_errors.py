"""The one error hierarchy of ipcactors.

Every error the library raises derives from :class:`IPCError`, which is itself raised only for
a misuse of the API (a call in the wrong state, a handler that is not callable). The other bases
(``ConnectError``, ``ProtocolError``, ``SocketPathError``) are never raised directly; catch them
to handle a whole family. Where an error also means something to Python code that knows nothing of
ipcactors, it derives from the matching builtin too (``TimeoutError``, ``ValueError``, ...).
"""

from __future__ import annotations

import errno
import os
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Final, NamedTuple

__all__ = [
    "AddressInUseError",
    "AuthenticationError",
    "ChildExit",
    "ChildExitedError",
    "ClosedError",
    "ConfigError",
    "ConnectError",
    "ConnectionFailedError",
    "ConnectionLostError",
    "DatagramTooLargeError",
    "DecodeError",
    "EncodeError",
    "EventNameError",
    "FrameTooLargeError",
    "IPCError",
    "InsecureSocketDirError",
    "NoHandlerError",
    "ProtocolError",
    "RejectedError",
    "RemoteError",
    "RequestTimeoutError",
    "ReservedEventError",
    "ResourceError",
    "RestartIntensityError",
    "ServerBusyError",
    "SocketPathError",
    "SocketPathTooLongError",
    "SpawnError",
    "TLSError",
    "TaskTimeoutError",
    "UnacknowledgedError",
    "UnknownPeerError",
    "UnsupportedError",
    "WorkerLostError",
]


class IPCError(Exception):
    """Base of every error raised by ipcactors."""

    def __reduce__(self) -> tuple[Any, ...]:
        # Copied and pickled as it is (its args, its attributes), without calling __init__
        # again: many take other arguments than the message their args hold, so the default
        # (cls(*args)) failed, and with it copy.copy of a request's error.
        return (_rebuilt, (type(self), self.args, self.__dict__))


def _rebuilt(cls: type[IPCError], args: tuple[Any, ...], state: dict[str, Any]) -> IPCError:
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


class ConfigError(IPCError, ValueError):
    """A configuration value, or an argument such as a request's ``timeout``, is of the wrong
    type or out of range."""


class UnknownPeerError(IPCError, KeyError):
    """No connected peer has that id (it never connected, or it is gone).

    A :class:`KeyError`, so ``id in actor.of`` and ``actor.of.get(id)`` work as for a dict."""

    def __str__(self) -> str:
        return Exception.__str__(self)  # the message, not KeyError's quoted repr of it


# --- connecting -------------------------------------------------------------------------------


class ConnectError(IPCError):
    """Base of the errors raised when a connection cannot be made or kept."""


class ConnectionFailedError(ConnectError, ConnectionError):
    """Connecting failed and the retries allowed by ``stop_retrying`` are used up.

    The last underlying error is chained as ``__cause__``.
    """


class RejectedError(ConnectionFailedError):
    """The server answered the handshake with a refusal that retrying will not change.

    ``reason`` is the server's reason code (``"version"``, ``"auth"``, ``"protocol"``, ...).
    """

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        # copy and pickle rebuild it with its reason (each failed request gets its own copy).
        return (type(self), (str(self), self.reason), self.__dict__)


class ServerBusyError(RejectedError):
    """The server is at ``max_connections`` and refused the connection with ``busy``.

    A busy refusal counts as a failed attempt: the client backs off and retries as
    ``stop_retrying`` allows; this error is raised when no retries are left.
    """


class AuthenticationError(RejectedError):
    """The peer could not be authenticated (wrong shared key, refused certificate, ...).

    Never retried: the same credentials would fail the same way.
    """


class TLSError(AuthenticationError):
    """TLS failed: the server's certificate did not verify, ours was refused, or the two sides
    share no TLS version. Never retried (a connection that ends during the TLS handshake is
    not one: that attempt failed, and is retried). ``reason`` is ``"tls"``."""


class ConnectionLostError(ConnectError, ConnectionError):
    """The connection dropped while a request was waiting for its reply.

    The request may or may not have run on the peer; the caller decides whether to retry.
    """


class ChildExitedError(ConnectionLostError):
    """A supervised child's process ended before it answered (or before it was ready).

    Attributes:
        child_id: the child's id.
        exitcode: its exit code; negative when a signal killed it (``-9``: SIGKILL); ``None``
            when unknown.
        stopped: whether its supervisor ended it (it was stopping the child, and the child
            died of the stop's SIGTERM or SIGKILL): no crash of its own.
    """

    def __init__(
        self, message: str, child_id: str, exitcode: int | None, *, stopped: bool = False
    ) -> None:
        super().__init__(message)
        self.child_id = child_id
        self.exitcode = exitcode
        self.stopped = stopped


class WorkerLostError(ChildExitedError):
    """A :class:`Pool` task's worker died (or its connection was lost) on every attempt it was
    given: ``max_retries`` ran out.

    Attributes (besides ``child_id`` and ``exitcode``, those of the last worker lost):
        attempts: how many times the task was sent to a worker.
    """

    def __init__(self, message: str, child_id: str, exitcode: int | None, attempts: int) -> None:
        super().__init__(message, child_id, exitcode)
        self.attempts = attempts


class ClosedError(IPCError):
    """The actor, server or connection was closed; nothing more can be sent through it."""


class UnacknowledgedError(ClosedError):
    """A connection in the acknowledged mode (``Config.acked``) was given up or closed with
    events the server never acknowledged: they may or may not have been handled.

    ``events`` lists them as ``(seq, event name)`` pairs, in order; the same list stays in
    ``Connection.unacknowledged``.
    """

    def __init__(self, message: str, events: list[tuple[int, str]]) -> None:
        super().__init__(message)
        self.events = events


# --- sockets and addresses --------------------------------------------------------------------


class SocketPathError(IPCError, OSError):
    """Base of the errors about a Unix socket's path or its directory."""


class SocketPathTooLongError(SocketPathError):
    """The Unix socket path is longer than the operating system allows (107 bytes on Linux).

    Use a shorter ``socket_root`` or ``appspace``, or a shorter actor id.
    """


class AddressInUseError(SocketPathError):
    """The address is taken: a live server listens there (a Unix socket's path, a TCP or UDP
    port), or a file that is not a socket is there.

    ipcactors never takes over a live server's path and never removes a file that is not a socket.
    """


class InsecureSocketDirError(SocketPathError):
    """The socket directory could be written by other users, or belongs to another user."""


class ResourceError(IPCError, OSError):
    """The system is out of what the operation needs: file descriptors (``errno`` EMFILE, this
    process's ``ulimit -n``; ENFILE, the whole system's) or memory (ENOMEM, ENOBUFS). Nothing was
    left half-made: close what you can spare, or raise the limit, and try again."""


#: What an ``OSError`` says when the system, not the call, is at fault.
_EXHAUSTED: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})


def raise_if_exhausted(exc: BaseException, doing: str) -> None:
    """Raise :class:`ResourceError` (``doing``: what could not be done) from ``exc`` if it
    says the system is out of something; else return."""
    if isinstance(exc, OSError) and not isinstance(exc, IPCError) and exc.errno in _EXHAUSTED:
        error = ResourceError(f"{doing}: [Errno {exc.errno}] {exc.strerror}")
        error.errno = exc.errno  # (its strerror left unset: str() is then the message)
        raise error from exc


@contextmanager
def exhaustion_raised_as_resource_error(doing: str) -> Iterator[None]:
    """Around a start made of many system calls (a loop thread, a supervisor): an ``OSError``
    in it that says the system is out of something comes out as :class:`ResourceError`."""
    try:
        yield
    except OSError as exc:
        raise_if_exhausted(exc, doing)
        raise


def raise_if_out_of_descriptors(exc: BaseException, doing: str) -> None:
    """For a call that hides why it failed (the standard library's ``tempfile`` says "No
    usable temporary directory" when it could open no file to probe one): raise
    :class:`ResourceError` from ``exc`` if this process cannot open a file now; else return."""
    try:
        os.close(os.open(os.devnull, os.O_RDONLY))
    except OSError as probe:
        probe.__cause__ = exc
        raise_if_exhausted(probe, doing)


# --- the wire ---------------------------------------------------------------------------------


class ProtocolError(IPCError):
    """Base of the errors about bytes received from a peer. The peer's connection is closed.
    (One of them is also raised on sending: :class:`FrameTooLargeError`, see there.)"""

    #: The reason a server gives in its ``reject`` when this ends a handshake.
    reject_reason = "protocol"


class FrameTooLargeError(ProtocolError):
    """A frame is larger than ``max_frame_size``. On receive (decided from its header alone)
    the peer's connection is closed; raised by ``emit``, ``request`` or ``broadcast``, for a
    frame we would send (over our own limit, or over the smaller one the peer announced in
    its handshake), nothing was sent and the connection is unaffected. Raised by a UDP
    ``request`` whose reply came over our limit (dropped unread)."""

    def __init__(
        self,
        size: int,
        limit: int,
        *,
        handshake: bool = False,
        peers: bool = False,
        reply: bool = False,
    ) -> None:
        if reply:  # a UDP reply: the answering side does not know our limit
            message = (
                f"the reply is a datagram of {size} bytes, over max_frame_size={limit}: dropped "
                "unread; raise max_frame_size here if such replies are expected"
            )
        elif handshake:  # (a fixed limit: no setting raises it)
            message = (
                f"frame of {size} bytes before the handshake is done, over the {limit} bytes "
                "such a frame may have (a hello or its answer is far smaller: is the peer an "
                "ipcactors actor, with the same codec?)"
            )
        elif peers:  # the smaller limit the peer announced in its handshake
            message = (
                f"frame of {size} bytes exceeds the peer's max_frame_size={limit}; "
                "raise max_frame_size on both sides if such frames are expected"
            )
        else:
            message = (
                f"frame of {size} bytes exceeds max_frame_size={limit}; "
                "raise max_frame_size on both sides if such frames are expected"
            )
        super().__init__(message)
        self.size = size
        self.limit = limit


class DecodeError(ProtocolError):
    """A frame's body is not valid msgpack, breaks a limit, or is not a valid envelope."""


class EncodeError(IPCError, TypeError):
    """The data given to ``emit``/``request`` cannot be encoded as msgpack. Nothing was sent."""


class UnsupportedError(IPCError, TypeError):
    """What was asked cannot be carried. The connection's codec (``Config.codec``) cannot
    carry it, e.g. a request on an event-only wire such as node-ipc's: nothing was sent; emit
    an event instead, and have the peer emit its answer back. Or keyword arguments were given
    to :meth:`PoolExecutor.submit`: a task's arguments travel as a msgpack list."""


class DatagramTooLargeError(IPCError, ValueError):
    """A UDP datagram would exceed what IP carries (65,507 bytes over IPv4, 65,527 over IPv6)
    or ``max_frame_size``. Nothing was sent."""


class EventNameError(IPCError, ValueError):
    """The event name is not a non-empty ``str``, or it is reserved (see
    :class:`ReservedEventError`). Raised by ``on``, ``emit``, ``request`` and ``broadcast``."""


class ReservedEventError(EventNameError):
    """The event name is reserved for local lifecycle events (``connect``, ``disconnect``,
    ``destroy``, ``error``) or for ipcactors itself (names starting with ``ipcactors.``)."""


# --- requests ---------------------------------------------------------------------------------


class RequestTimeoutError(IPCError, TimeoutError):
    """No reply arrived within the request's timeout. A late reply is ignored."""


class TaskTimeoutError(RequestTimeoutError):
    """A :class:`Pool` task ran past the pool's ``task_timeout``: its worker was killed and is
    being replaced.

    Attributes:
        worker: the id of the worker that was running it.
    """

    def __init__(self, message: str, worker: str) -> None:
        super().__init__(message)
        self.worker = worker


class RemoteError(IPCError):
    """The peer's handler raised. Carries the remote exception's type, message and traceback.

    Attributes:
        remote_type: the qualified name of the remote exception type, e.g. ``"ValueError"``.
        remote_message: ``str()`` of the remote exception.
        remote_traceback: the remote traceback as text (may be empty).
    """

    def __init__(self, remote_type: str, remote_message: str, remote_traceback: str = "") -> None:
        super().__init__(f"{remote_type}: {remote_message}")
        self.remote_type = remote_type
        self.remote_message = remote_message
        self.remote_traceback = remote_traceback

    def __str__(self) -> str:
        text = f"{self.remote_type}: {self.remote_message}"
        if self.remote_traceback:
            text += "\n\nRemote traceback:\n" + self.remote_traceback.rstrip()
        return text


class NoHandlerError(RemoteError):
    """The peer has no handler for the requested event."""

    def __str__(self) -> str:  # the wire's type name (ipcactors.NoHandler) is no class to look up
        said = self.remote_message or "no handler for the request"  # (a peer may say nothing)
        return (
            f"{said} on the peer: register one there with on(event); a "
            "supervised child gets its siblings' requests on actor.server, not actor.parent"
        )


# --- supervision ------------------------------------------------------------------------------


class SpawnError(IPCError):
    """A child process could not be started: its target cannot be imported by name in a fresh
    process (a lambda, a closure, a function of an interactive session, ...), its module raised
    while it was imported (in the parent's check or in the child), the name is missing or is not
    an async function, or the child did not connect back in time. Nothing was left running.

    The message names the cause's type and message. ``__cause__`` is the original exception when
    the parent's check failed, and a :class:`RemoteError` (type, message, traceback) when the
    child failed to load its target.
    """


class ChildExit(NamedTuple):
    """One step of an escalation (:attr:`RestartIntensityError.chain`): child ``child`` of
    supervisor ``supervisor`` exited with ``exitcode`` (negative: killed by that signal;
    ``None``: unknown)."""

    supervisor: str
    child: str
    exitcode: int | None


class RestartIntensityError(IPCError):
    """A supervisor restarted its children more than ``max_restarts`` times within
    ``max_seconds``; it stopped every child and gave up. In a child process this escalates: the
    child tells its supervisor why (the chain below), exits abnormally, and its supervisor
    applies its strategy.

    Attributes:
        child_id: this supervisor's child whose exit was one too many.
        exitcode: that exit's code (negative: killed by that signal).
        chain: the :class:`ChildExit` steps from this supervisor down to the child that kept
            failing: ``chain[0]`` is ``(this supervisor, child_id, exitcode)``; when that child
            ran a supervisor that gave up in turn, its chain follows, and so on.
            ``chain[-1].exitcode`` is the exit status of the child that kept failing. The chain
            stops early at a child whose report did not arrive (it was killed, say).
        restarts: the restarts this supervisor made within the window (``max_restarts``).
        seconds: the time from the first exit of that window to the fatal one.
        max_restarts, max_seconds: the supervisor's limits.
    """

    def __init__(
        self,
        message: str,
        child_id: str,
        max_restarts: int,
        max_seconds: float,
        exitcode: int | None,
        *,
        chain: tuple[ChildExit, ...],
        restarts: int,
        seconds: float,
    ) -> None:
        super().__init__(message)
        self.child_id = child_id
        self.max_restarts = max_restarts
        self.max_seconds = max_seconds
        self.exitcode = exitcode
        self.chain = chain
        self.restarts = restarts
        self.seconds = seconds


def remote_type_of(exc: BaseException) -> str:
    """What :attr:`RemoteError.remote_type` says of ``exc``, wherever it was raised (a handler,
    a pool task, a child's import): a builtin's name, ``ipcactors.`` and the public name of
    ours, else the module and qualified name."""
    kind = type(exc)
    # Read as type itself reads them: a metaclass of the exception's cannot make naming it
    # fail (the reply would never go); a made class may have a __module__ that is no str.
    module = _TYPE_MODULE.__get__(kind)
    name: str = _TYPE_QUALNAME.__get__(kind)  # (always a str: type requires it)
    if type(module) is not str or module == "builtins":
        return name
    if module.startswith("ipcactors."):
        return f"ipcactors.{name}"  # the public name, not the private module
    return f"{module}.{name}"


_TYPE_MODULE = type.__dict__["__module__"]
_TYPE_QUALNAME = type.__dict__["__qualname__"]


def message_of(exc: BaseException) -> str:
    """``str(exc)``, or a placeholder if that raises: an error report must never fail on the
    error it reports (a handler's, a pool task's)."""
    try:
        return str(exc)
    except Exception:
        return f"<unprintable {type(exc).__name__}: str() raised>"


def traceback_of(exc: BaseException) -> str:
    """``exc``'s traceback as text, or a placeholder if formatting it raises (an exception
    whose class refuses its own attributes): as :func:`message_of`."""
    try:
        return "".join(traceback.format_exception(exc))
    except Exception:
        return f"<the traceback of {type(exc).__name__} could not be formatted>"


def fit_text(text: str, size: int) -> str:
    """``text`` as it can travel in at most ``size`` bytes of UTF-8: what has no UTF-8 form (a
    lone surrogate, as ``os.fsdecode`` makes of a file name) escaped as ``\\udce9``, and what
    does not fit cut, with a note of how much (an error report must reach its reader whatever
    the error said)."""
    data = text.encode("utf-8", "backslashreplace")
    if len(data) <= size:
        return data.decode("utf-8")
    kept = data[: max(size - 40, 0)].decode("utf-8", "ignore")  # (a cut character is dropped)
    return f"{kept} [... {len(data) - len(kept.encode('utf-8'))} bytes more]"
