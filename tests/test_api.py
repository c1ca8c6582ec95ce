"""The public API: exactly these names, typed, documented, one error hierarchy, cheap import."""

from __future__ import annotations

import copy
import inspect
import os
import pickle
import subprocess
import sys
from typing import Any

import anyio
import pytest

import ipcactors

PUBLIC = {
    "Actor", "AddressInUseError", "AuthenticationError", "BlockingActor", "BlockingClient",
    "BlockingConnection", "BlockingInbox", "BlockingServer", "ChildExit", "ChildExitedError",
    "ChildInfo", "Client", "ClosedError", "Config", "ConfigError", "ConnectError", "Connection",
    "ConnectionFailedError", "ConnectionLostError", "ConnectionStatistics", "DatagramPeer",
    "DatagramServer",
    "DatagramStatistics", "DatagramTooLargeError", "DecodeError", "EncodeError", "EventNameError",
    "FrameTooLargeError", "IPCError", "InsecureSocketDirError", "NoHandlerError",
    "ProtocolError", "RejectedError", "RemoteError", "RequestTimeoutError",
    "ReservedEventError", "ResourceError", "RestartIntensityError", "Server", "ServerBusyError",
    "ServerStatistics",
    "SocketPathError", "SocketPathTooLongError", "SpawnError", "Supervisor", "TLSError",
    "UnknownPeerError", "UnsupportedError", "run",
    "Pool", "PoolExecutor", "PoolStatistics", "TaskTimeoutError", "WorkerLostError",
    "UnacknowledgedError",
    "LaunchContext", "Launcher", "Placement", "SSHHost",
}  # fmt: skip


def test_public_names_are_pinned() -> None:
    assert set(ipcactors.__all__) == PUBLIC
    for name in PUBLIC:
        assert getattr(ipcactors, name).__module__.startswith("ipcactors")


def test_one_error_hierarchy() -> None:
    errors = [
        obj
        for obj in vars(ipcactors).values()
        if isinstance(obj, type) and issubclass(obj, BaseException)
    ]
    assert len(errors) > 15
    for error in errors:
        assert issubclass(error, ipcactors.IPCError), error
        assert error.__doc__, f"{error.__name__} has no docstring"


def test_every_error_copies_and_pickles_as_it_is() -> None:
    """copy.copy (how a request's error reaches each of its waiters) and pickle keep an
    error's class, message and attributes; most failed, their __init__ taking other arguments
    than the message their args hold (FrameTooLargeError, RemoteError, ChildExitedError...)."""
    for error in [
        obj(*_arguments(obj), **_arguments(obj, keywords=True))
        for obj in vars(ipcactors).values()
        if isinstance(obj, type) and issubclass(obj, BaseException)
    ]:
        for again in (copy.copy(error), pickle.loads(pickle.dumps(error))):  # noqa: S301
            assert type(again) is type(error)
            assert (str(again), again.args, vars(again)) == (str(error), error.args, vars(error))


def _arguments(error: type[BaseException], *, keywords: bool = False) -> Any:
    """Arguments an error's constructor needs (positional ones, or keyword-only ones): 3 for
    an int, a message for a str, a list for a list..."""
    made = {"list": [(1, "e")], "tuple": ("a", "b"), "int": 3, "float": 1.5, "bool": True}
    try:
        parameters = inspect.signature(error).parameters.values()
    except ValueError:  # (an OSError's own __init__)
        return {} if keywords else ["text"]
    wanted = [
        parameter
        for parameter in parameters
        if parameter.default is parameter.empty
        and parameter.kind
        is (parameter.KEYWORD_ONLY if keywords else parameter.POSITIONAL_OR_KEYWORD)
    ]
    values = [next((v for k, v in made.items() if k in str(p.annotation)), "text") for p in wanted]
    if keywords:
        return {p.name: value for p, value in zip(wanted, values, strict=True)}
    return values


@pytest.mark.anyio
async def test_an_integer_limit_is_at_most_what_the_handshake_carries(socket_dir: str) -> None:
    """Config is validated on construction: a limit of 2**64 or more, which msgpack cannot
    carry, was taken, and every connection failed in its handshake (a client's EncodeError
    about its hello; a server's "connection from '' failed" with a traceback, its clients a
    ConnectionFailedError that blamed another Config). 2**63 - 1 at most, as an integer
    every peer reads."""
    for name in (
        "max_connections",
        "max_handshakes",
        "ack_every",
        "max_shared_bytes",
        "shared_threshold",
        "stop_retrying",
        "max_outbox_bytes",
        "max_decoded_objects",
        "max_inbox_bytes",
        "max_concurrent_requests",
    ):
        with pytest.raises(ipcactors.ConfigError, match=name):
            ipcactors.Config(**{name: 2**63})
    largest = {"max_decoded_objects": 2**63 - 1, "max_shared_bytes": 2**63 - 4096}
    with anyio.fail_after(10):
        async with (
            ipcactors.Actor("world", socket_root=socket_dir, silent=True, **largest) as world,
            ipcactors.Actor("hello", socket_root=socket_dir, silent=True, **largest) as hello,
        ):
            server = await world.serve()
            server.on("add", lambda data, client: sum(data))
            world_link = await hello.connect_to("world")
            assert await world_link.request("add", [1, 2]) == 3


@pytest.mark.anyio
async def test_a_huge_int_where_an_option_goes_is_a_config_error(socket_dir: str) -> None:
    """An int past 4300 digits, which repr() refuses: the message names it by its size. It
    was a bare ValueError from the message itself wherever one still showed the value."""
    big = 10**5000
    from ipcactors import SSHHost

    for make in (
        lambda: ipcactors.Config(id=big),
        lambda: ipcactors.Config(silent=big),
        lambda: ipcactors.Config(slow_consumer=big),
        lambda: ipcactors.Supervisor(max_children=-big),
        lambda: ipcactors.Supervisor(max_restarts=-big),
        lambda: ipcactors.Supervisor(listen=("127.0.0.1", big)),
        lambda: ipcactors.Pool("math:sqrt", max_restarts=-big),
        lambda: SSHHost("127.0.0.1", port=big),
    ):
        with pytest.raises(ipcactors.ConfigError, match="bits"):
            make()
    async with ipcactors.Actor("a", socket_root=socket_dir, silent=True) as actor:
        with pytest.raises(ipcactors.ConfigError, match="bits"):
            await actor.serve_net("127.0.0.1", port=big)
        with pytest.raises(ipcactors.ConfigError, match="bits"):
            await actor.connect_to_net("b", "127.0.0.1", port=big)


def test_an_unknown_option_is_the_same_config_error_wherever_it_is_given() -> None:
    """``Config(bogus=1)`` was the dataclass's own TypeError, where every other way of giving
    an option (``Actor(...)``, ``replace``, a supervisor, a pool) said ConfigError."""
    for make in (
        lambda: ipcactors.Config(bogus=1),
        lambda: ipcactors.Config().replace(bogus=1),
        lambda: ipcactors.Actor("a", bogus=1),
        lambda: ipcactors.Supervisor(bogus=1),
        lambda: ipcactors.Pool("math:sqrt", bogus=1),
    ):
        with pytest.raises(ipcactors.ConfigError, match=r"^unknown config option\(s\): bogus$"):
            make()
    assert "retry" in inspect.signature(ipcactors.Config).parameters  # still its own options


def test_public_api_is_documented() -> None:
    for name in PUBLIC:
        obj = getattr(ipcactors, name)
        assert obj.__doc__, f"{name} has no docstring"
        if inspect.isclass(obj) and not issubclass(obj, BaseException):
            for attribute, member in vars(obj).items():
                if attribute.startswith("_") or not callable(member):
                    continue
                assert member.__doc__, f"{name}.{attribute} has no docstring"


def test_package_is_typed() -> None:
    assert os.path.exists(os.path.join(os.path.dirname(ipcactors.__file__), "py.typed"))


def test_import_stays_light() -> None:
    """``import ipcactors`` pulls in neither numpy nor trio: a spawned child stays fast to
    start, and neither is a dependency."""
    code = "import sys, ipcactors; print(sorted(m for m in ('numpy', 'trio') if m in sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_backend_mistakes_are_config_errors_before_anything_starts() -> None:
    """A backend name or backend_options the backend does not take is a ConfigError where the
    call is made: anyio raised LookupError (run) or a TypeError (Trio given use_uvloop), a
    BlockingActor's only as it started its thread; and a BlockingActor's id is checked as an
    Actor's is, at once."""

    async def main() -> None:
        pass

    with pytest.raises(ipcactors.ConfigError, match="asyncio"):
        ipcactors.run(main, backend="bogus")  # type: ignore[arg-type]
    with pytest.raises(ipcactors.ConfigError, match="use_uvloop"):
        ipcactors.run(main, backend="trio", backend_options={"use_uvloop": True})
    with pytest.raises(ipcactors.ConfigError, match="backend_options"):
        ipcactors.run(main, backend_options=["use_uvloop"])  # type: ignore[arg-type]
    with pytest.raises(ipcactors.ConfigError, match="use_uvloop"):
        ipcactors.BlockingActor("w", backend="trio", backend_options={"use_uvloop": True})
    with pytest.raises(ipcactors.ConfigError, match="nope"):
        ipcactors.BlockingActor("w", backend_options={"nope": 1})
    for bad_id in ("", "nul\0", 5):
        with pytest.raises(ipcactors.ConfigError, match="actor id"):
            ipcactors.BlockingActor(bad_id)  # type: ignore[arg-type]


def test_a_no_handler_error_the_peer_said_nothing_of_still_reads() -> None:
    """A peer's error reply may carry no message: the text began with " on the peer"."""
    error = ipcactors.NoHandlerError("ipcactors.NoHandler", "")
    assert str(error).startswith("no handler for the request on the peer: register one")
    said = ipcactors.NoHandlerError("ipcactors.NoHandler", "no handler for 'x'")
    assert str(said).startswith("no handler for 'x' on the peer")
