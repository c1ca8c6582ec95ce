"""The README's hello/world without async: ``ipcactors.BlockingActor`` runs the event loop in a
background thread, and every call blocks until it is done.

"world" answers a message and adds numbers; "hello" sends one, reads the answer from an inbox
(in this thread), and asks for a sum. Run it with ``python examples/blocking_hello.py``
(``--backend trio`` for Trio).
"""

from __future__ import annotations

import argparse
from typing import Literal

import ipcactors


def main(backend: Literal["asyncio", "trio"], socket_root: str | None) -> None:
    config = ipcactors.Config(socket_root=socket_root, silent=True)
    with (
        ipcactors.BlockingActor("world", config, backend=backend) as world_ipc,
        ipcactors.BlockingActor("hello", config, backend=backend) as ipc,
    ):
        server = world_ipc.serve()

        # A plain handler runs in a worker thread: it may call the blocking API.
        @server.on("message")
        def on_message(data: str, client: ipcactors.BlockingClient) -> None:
            client.emit("message", data + " world!")

        server.on("add", lambda numbers, client: sum(numbers))

        world = ipc.connect_to("world")
        with world.inbox("message") as inbox:  # collect "message" events for this thread
            world.emit("message", "hello")
            _event, data, _peer = inbox.get(timeout=5)
            print(data)
        print("1 + 2 =", world.request("add", [1, 2], timeout=5))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--socket-root", help="directory of the sockets (default: Config's)")
    args = parser.parse_args()
    main(args.backend, args.socket_root)
