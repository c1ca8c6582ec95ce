"""``python -m benchmarks.amplification``: how much hostile frames stall and grow a server.

A server (its own process) answers ``echo``. A good client asks it every 10 ms and records each
round trip, while 4 hostile peers (threads, blocking sockets) keep connecting, saying hello and
sending 3 legal 1 MiB frames of empty maps each (~75 MiB apiece once decoded, without an object
budget). Printed: the good client's latency (median, p99, max) without and with the attack, the
server's peak RSS, and how many hostile frames the server took before dropping the peer.

With ``--heavy`` (and ``--small``) the 4 peers flood legal traffic instead, as fast as they can:
how much a busy server makes a quiet client wait.

Not a test: the figures depend on the machine (docs/protocol.md quotes the ones measured on
ours). Run it on two checkouts to compare.
"""

from __future__ import annotations

import multiprocessing
import socket
import statistics
import struct
import sys
import tempfile
import threading
import time
from typing import Any

import anyio
import msgpack
import psutil

import ipcactors

# --heavy: the peers stay connected and flood legal events instead: frames at the object budget
# (each checked and decoded in ~20 ms), or with --small too, small events 4,096 to a write.
HEAVY = "--heavy" in sys.argv
SMALL = "--small" in sys.argv
PEERS = 4
FRAMES = 3
DURATION = 4.0  # seconds of attack
INTERVAL = 0.01  # between the good client's requests


def framed(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def hostile_frame() -> bytes:
    count = 2**20 - 16
    return framed(b"\x93\x00\xa4echo\xdd" + struct.pack(">I", count) + b"\x80" * count)


def heavy_frame() -> bytes:
    """A legal event that passes every limit: the most objects the budget allows, decoded."""
    count = (1 << 17) - 16
    return framed(b"\x93\x00\xa5heavy\xdd" + struct.pack(">I", count) + b"\x01" * count)


def serve(root: str, ready: Any) -> None:
    async def main() -> None:
        async with ipcactors.Actor("srv", socket_root=root, silent=True) as actor:
            server = await actor.serve()
            server.on("echo", lambda data, client: data)
            server.on("heavy", lambda data, client: None)
            ready.send(server.address)
            await actor.wait_closed()

    ipcactors.run(main)


def attack(path: str, stop: threading.Event, sent: list[int]) -> None:
    if HEAVY:
        return flood(path, stop, sent)
    frame = hostile_frame()
    n = 0
    while not stop.is_set():
        n += 1
        hello = framed(msgpack.packb([4, {"v": 1, "id": f"hostile-{threading.get_ident()}-{n}"}]))
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(10)
            try:
                sock.connect(path)
                sock.sendall(hello)
                for _ in range(FRAMES):
                    sock.sendall(frame)
                    sent[0] += 1
                while sock.recv(65536):
                    pass  # until the server closes (or never, without a budget: timeout)
            except OSError:
                pass


def flood(path: str, stop: threading.Event, sent: list[int]) -> None:
    """A peer that stays connected and sends heavy but legal events as fast as it can."""
    if SMALL:
        frame = b"".join(framed(msgpack.packb([0, "heavy", i])) for i in range(4096))
    else:
        frame = heavy_frame()
    hello = framed(msgpack.packb([4, {"v": 1, "id": f"heavy-{threading.get_ident()}"}]))
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(1)
        try:
            sock.connect(path)
            sock.sendall(hello)
            while not stop.is_set():
                try:
                    sock.sendall(frame)
                except TimeoutError:
                    continue
                sent[0] += 1
        except OSError:
            pass


async def latencies(path: str, seconds: float) -> list[float]:
    root = path.rsplit("/", 1)[0]
    async with ipcactors.Actor("good", socket_root=root, silent=True) as actor:
        srv = await actor.connect_to("srv", path)
        samples = []
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            start = time.perf_counter()
            await srv.request("echo", 1, timeout=30)
            samples.append(time.perf_counter() - start)
            await anyio.sleep(INTERVAL)
        return samples


def describe(name: str, samples: list[float]) -> str:
    ms = sorted(s * 1000 for s in samples)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return (
        f"{name:>14}: {len(ms)} requests, median {statistics.median(ms):.2f} ms, "
        f"p99 {p99:.1f} ms, max {ms[-1]:.1f} ms"
    )


def peak_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    context = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="amp-") as root:
        receive, send = context.Pipe(duplex=False)
        server = context.Process(target=serve, args=(root, send), daemon=True)
        server.start()
        path = receive.recv()
        try:
            quiet = anyio.run(latencies, path, 2.0)
            rss_before = psutil.Process(server.pid).memory_info().rss / 2**20
            stop = threading.Event()
            sent = [0]
            threads = [
                threading.Thread(target=attack, args=(path, stop, sent), daemon=True)
                for _ in range(PEERS)
            ]
            for thread in threads:
                thread.start()
            attacked = anyio.run(latencies, path, DURATION)
            stop.set()
            for thread in threads:
                thread.join(15)
            assert server.pid is not None
            print(f"ipcactors from {ipcactors.__file__}")
            print(describe("quiet", quiet))
            print(describe("under attack", attacked))
            print(
                f"server RSS before the attack {rss_before:.0f} MiB, "
                f"peak {peak_rss_mib(server.pid):.0f} MiB; "
                f"{sent[0]} hostile 1 MiB frames sent by {PEERS} peers"
            )
        finally:
            server.terminate()
            server.join(5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
