"""What every benchmark role process shares: its arguments, its reports, its hard deadline.

A role runs as ``python -m benchmarks.<module> ROLE CONFIG_JSON``. It reports to the runner by
printing ``BENCH {json}`` lines on stdout (everything else on stdout is ignored; logs go to
stderr). Every role arms ``SIGALRM`` at start, so a role that hangs dies by itself even if the
runner is gone.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import sys
import time
from typing import Any

import anyio
import msgpack

HEADER = struct.Struct(">I")
SMALL_EVENT = {"s": "x" * 64}  # W2/W4: a dict with a 64-byte string
# W2 nested: records as a program sends them, a list of small maps with a list in each
NESTED_EVENT = [{"id": 1, "v": 0.5, "tags": ["a", "b"]}, {"id": 2, "v": 1.5, "tags": []}]
# Count bounds behind the time bounds: no loop of a role runs forever, whatever the clock says.
MAX_EVENTS = 100_000_000  # events sent in one round
MAX_READS = 10_000_000  # reads from one stream


def parse_args() -> tuple[str, dict[str, Any]]:
    if len(sys.argv) != 3:
        raise SystemExit(f"usage: python -m {sys.argv[0]} ROLE CONFIG_JSON")
    role, config = sys.argv[1], json.loads(sys.argv[2])
    # The hard bound: the default action of SIGALRM ends the process.
    signal.alarm(max(1, int(config.get("deadline", 60)) + 5))
    return role, config


def say(kind: str, **fields: Any) -> None:
    """Report to the runner (one line of JSON)."""
    sys.stdout.write("BENCH " + json.dumps({"kind": kind, **fields}) + "\n")
    sys.stdout.flush()


def rss_bytes(pid: int | str = "self") -> int:
    """Resident set size of a process, from /proc (0 if it cannot be read)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def now() -> float:
    return time.perf_counter()


def payload(config: dict[str, Any]) -> Any:
    """The event data of a stream workload: W2's small dict (its nested records with
    ``nested``) or W3's ``bytes`` payload."""
    size = config.get("payload_bytes")
    if size:
        return bytes(size)
    return NESTED_EVENT if config.get("nested") else SMALL_EVENT


def connection_names(prefix: str, config: dict[str, Any]) -> list[str]:
    """The ids of the ``connections`` clients one process of a fan-in or fan-out curve runs:
    ``index`` is its first (the runner gives each process a contiguous range)."""
    first = config.get("index", 0)
    return [f"{prefix}{first + k}" for k in range(config.get("connections", 1))]


def merge_rounds(per_connection: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One process's rounds over its connections: all their events over the longest time."""
    return [
        {"count": sum(r["count"] for r in rounds), "seconds": max(r["seconds"] for r in rounds)}
        for rounds in zip(*per_connection, strict=True)
    ]


async def wait_for_start(config: dict[str, Any]) -> None:
    """The fan-in curve: each client process says ``ready`` once connected, then waits (bounded
    by the deadline) for the runner's ``start_file``, so that all of them emit at the same time."""
    deadline = _say_ready(config)
    while deadline is not None and not _started(config, deadline):
        await anyio.sleep(0.005)


def wait_for_start_blocking(config: dict[str, Any]) -> None:
    """:func:`wait_for_start` for the blocking Python peers."""
    deadline = _say_ready(config)
    while deadline is not None and not _started(config, deadline):
        time.sleep(0.005)


def _say_ready(config: dict[str, Any]) -> float | None:
    if config.get("start_file") is None:
        return None  # not a fan-in client: nothing to wait for
    say("ready")
    return now() + config["deadline"]


def _started(config: dict[str, Any], deadline: float) -> bool:
    if os.path.exists(config["start_file"]):
        return True
    if now() > deadline:
        raise RuntimeError("the runner never started the fan-in clients")
    return False


def backend_options(config: dict[str, Any]) -> tuple[str, dict[str, Any] | None]:
    backend = config.get("backend", "asyncio")
    if backend == "uvloop":
        return "asyncio", {"use_uvloop": True}
    return backend, None


def exit_now(code: int = 0) -> None:
    """Leave at once (after a role reported): skip tearing down hundreds of connections."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


# --- raw framing (the floor): u32 big-endian length + msgpack body -----------------------------


def frame(packer: msgpack.Packer, message: Any) -> bytes:
    body = packer.pack(message)
    return HEADER.pack(len(body)) + body


class FrameBuffer:
    """The naive receive side: append what arrives, cut complete frames, decode each."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Any]:
        buffer = self._buffer
        buffer += data
        messages = []
        offset = 0
        end = len(buffer)
        while end - offset >= 4:
            (size,) = HEADER.unpack_from(buffer, offset)
            start = offset + 4
            if end - start < size:
                break
            messages.append(msgpack.unpackb(buffer[start : start + size]))
            offset = start + size
        if offset:
            del buffer[:offset]
        return messages
