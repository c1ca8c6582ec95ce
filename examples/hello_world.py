"""node-ipc's basic example in ipcactors: actor "world" serves, actor "hello" (another process)
connects, says hello, gets "hello world!" back and asks world to add two numbers.

It runs twice: over a Unix socket (in the private per-user socket directory), then over TCP on
loopback. Run it with ``python examples/hello_world.py`` (``--backend trio`` for Trio).
"""

from __future__ import annotations

import argparse
import sys

import anyio

import ipcactors


async def world(backend: str) -> None:
    for transport in ("unix", "tcp"):
        await serve_one_hello(transport, backend)


async def serve_one_hello(transport: str, backend: str) -> None:
    async with ipcactors.Actor("world") as ipc:
        server = await (ipc.serve() if transport == "unix" else ipc.serve_net(port=0))

        @server.on("message")
        async def on_message(data: str, client: ipcactors.Client) -> None:
            ipc.log(f"got {data!r} from {client.id!r}")
            await server.emit(client, "message", data + " world!")

        @server.on("add")
        def add(numbers: list[int], client: ipcactors.Client) -> int:
            return sum(numbers)

        # "hello" runs in another process; this returns when it has finished.
        where = ["--port", str(server.address[1])] if transport == "tcp" else []
        command = [sys.executable, __file__, "--as-hello", transport, "--backend", backend]
        with anyio.fail_after(30):
            done = await anyio.run_process(command + where, stdout=None, stderr=None, check=False)
        if done.returncode:  # it said why; or Ctrl-C, which the terminal sends us both, ended it
            sys.exit(128 - done.returncode if done.returncode < 0 else done.returncode)


async def hello(transport: str, port: int | None) -> None:
    # A few retries, and a bound on the exchange: a hello whose world is gone (killed, say)
    # gives up instead of waiting for ever.
    async with ipcactors.Actor("hello", stop_retrying=3) as ipc:
        try:
            with anyio.fail_after(10):
                await greet(ipc, transport, port)
        except (ipcactors.IPCError, TimeoutError) as exc:
            ipc.log(f"world is not there: giving up ({exc})")
            sys.exit(1)


async def greet(ipc: ipcactors.Actor, transport: str, port: int | None) -> None:
    if transport == "unix":
        world = await ipc.connect_to("world")
    else:
        world = await ipc.connect_to_net("world", port=port)
    replied = anyio.Event()

    @world.on("message")
    def on_message(data: str) -> None:
        ipc.log(f"world replied {data!r}")
        replied.set()

    await world.emit("message", "hello")
    await replied.wait()
    total = await world.request("add", [1, 2], timeout=5)
    ipc.log(f"world says 1 + 2 = {total}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--as-hello", choices=["unix", "tcp"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.as_hello:
        ipcactors.run(hello, args.as_hello, args.port, backend=args.backend)
    else:
        ipcactors.run(world, args.backend, backend=args.backend)


if __name__ == "__main__":
    main()
