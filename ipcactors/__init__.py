"""ipcactors: named actors exchanging msgpack events over Unix and TCP sockets, on asyncio and Trio.

    import ipcactors

    async def main() -> None:
        async with ipcactors.Actor("world") as ipc:
            server = await ipc.serve()

            @server.on("message")
            async def on_message(data: str, client: ipcactors.Client) -> None:
                await server.emit(client, "message", data + " world!")

            await ipc.wait_closed()

    if __name__ == "__main__":
        ipcactors.run(main)

See README.md and docs/ for the whole picture.
"""

from ._actor import Actor
from ._blocking import (
    BlockingActor,
    BlockingClient,
    BlockingConnection,
    BlockingInbox,
    BlockingServer,
)
from ._config import Config
from ._core._connection import Connection
from ._core._server import Client, Server
from ._core._stats import ConnectionStatistics, PoolStatistics, ServerStatistics
from ._core._udp import DatagramPeer, DatagramServer, DatagramStatistics
from ._errors import (
    AddressInUseError,
    AuthenticationError,
    ChildExit,
    ChildExitedError,
    ClosedError,
    ConfigError,
    ConnectError,
    ConnectionFailedError,
    ConnectionLostError,
    DatagramTooLargeError,
    DecodeError,
    EncodeError,
    EventNameError,
    FrameTooLargeError,
    InsecureSocketDirError,
    IPCError,
    NoHandlerError,
    ProtocolError,
    RejectedError,
    RemoteError,
    RequestTimeoutError,
    ReservedEventError,
    ResourceError,
    RestartIntensityError,
    ServerBusyError,
    SocketPathError,
    SocketPathTooLongError,
    SpawnError,
    TaskTimeoutError,
    TLSError,
    UnacknowledgedError,
    UnknownPeerError,
    UnsupportedError,
    WorkerLostError,
)
from ._run import run
from ._supervision._executor import PoolExecutor
from ._supervision._launcher import LaunchContext, Launcher, Placement
from ._supervision._pool import Pool
from ._supervision._ssh import SSHHost
from ._supervision._supervisor import ChildInfo, Supervisor

__version__ = "0.1.0"

__all__ = [
    "Actor",
    "AddressInUseError",
    "AuthenticationError",
    "BlockingActor",
    "BlockingClient",
    "BlockingConnection",
    "BlockingInbox",
    "BlockingServer",
    "ChildExit",
    "ChildExitedError",
    "ChildInfo",
    "Client",
    "ClosedError",
    "Config",
    "ConfigError",
    "ConnectError",
    "Connection",
    "ConnectionFailedError",
    "ConnectionLostError",
    "ConnectionStatistics",
    "DatagramPeer",
    "DatagramServer",
    "DatagramStatistics",
    "DatagramTooLargeError",
    "DecodeError",
    "EncodeError",
    "EventNameError",
    "FrameTooLargeError",
    "IPCError",
    "InsecureSocketDirError",
    "LaunchContext",
    "Launcher",
    "NoHandlerError",
    "Placement",
    "Pool",
    "PoolExecutor",
    "PoolStatistics",
    "ProtocolError",
    "RejectedError",
    "RemoteError",
    "RequestTimeoutError",
    "ReservedEventError",
    "ResourceError",
    "RestartIntensityError",
    "SSHHost",
    "Server",
    "ServerBusyError",
    "ServerStatistics",
    "SocketPathError",
    "SocketPathTooLongError",
    "SpawnError",
    "Supervisor",
    "TLSError",
    "TaskTimeoutError",
    "UnacknowledgedError",
    "UnknownPeerError",
    "UnsupportedError",
    "WorkerLostError",
    "run",
]

# Public names print as what users import (ipcactors.ServerBusyError in a traceback), not as the
# private module that defines them.
for _name in __all__:
    _public = globals()[_name]
    if isinstance(_public, type) or callable(_public):
        _public.__module__ = __name__
del _name, _public
