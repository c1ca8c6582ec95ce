"""node-ipc's UDP example in ipcactors: "world" and "hello" each serve UDP on their own port;
hello sends world a message, world answers the sender, and hello asks world a question.

UDP has no connections: peers are (host, port) addresses, a message is one datagram, and
nothing is retried. Run it with ``python examples/udp_hello.py`` (``--backend trio`` for Trio).
"""

from __future__ import annotations

import argparse
from typing import Any

import anyio

import ipcactors


async def main() -> None:
    async with (
        ipcactors.Actor("world") as world_ipc,
        ipcactors.Actor("hello") as hello_ipc,
    ):
        world = await world_ipc.serve_net("127.0.0.1", 0, udp="udp4")
        hello = await hello_ipc.serve_net("127.0.0.1", 0, udp="udp4")

        @world.on("message")
        async def world_got(data: dict[str, Any], peer: ipcactors.DatagramPeer) -> None:
            world_ipc.log(f"got a message from {data['from']}: {data['message']!r}")
            reply = {"from": world_ipc.id, "message": data["message"] + " world!"}
            await world.emit(peer, "message", reply)

        world.on("add", lambda numbers, peer: sum(numbers))
        answered = anyio.Event()

        @hello.on("message")
        def hello_got(data: dict[str, Any], peer: ipcactors.DatagramPeer) -> None:
            hello_ipc.log(f"got a message from {data['from']}: {data['message']!r}")
            answered.set()

        await hello.emit(world.address, "message", {"from": hello_ipc.id, "message": "Hello"})
        with anyio.fail_after(5):
            await answered.wait()
        total = await hello.request(world.address, "add", [1, 2], timeout=5)
        hello_ipc.log(f"world says 1 + 2 = {total}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    ipcactors.run(main, backend=parser.parse_args().backend)
