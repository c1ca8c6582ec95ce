"""The real node-ipc, for the interop tests: installs it once, runs tests/node/*.mjs as peers.

node-ipc 9.2.1, @achrinza/node-ipc 10.1.11 and node-ipc 14.0.0 (aliased ``node-ipc-14``) are
installed into tests/node/node_modules (git-ignored) by ``npm ci --ignore-scripts`` from the
committed lock, and reused while their versions match it (``make test`` installs them first). A
test skips, saying why, only when ``node`` or ``npm`` is missing; a failed install fails it.

A :class:`NodePeer` is one Node process (server.mjs or client.mjs): what it prints (JSON lines:
``{"ev": "recv", "type": ..., "data": ...}``, ``{"ev": "connect"}``, ...) is collected by a task;
:meth:`NodePeer.expect` waits for a line that matches; :meth:`NodePeer.command` writes one.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from anyio.abc import Process

NODE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "node")
VERSIONS = ("9", "10", "14")
PACKAGES = {"9": "node-ipc", "10": "@achrinza/node-ipc", "14": "node-ipc-14"}
EXPECTED = {"9": "9.2.1", "10": "10.1.11", "14": "14.0.0"}

_lock = threading.Lock()
_ready: str | None = None  # the node executable, once the packages are in place


def _installed() -> bool:
    for version, package in PACKAGES.items():
        manifest = os.path.join(NODE_DIR, "node_modules", *package.split("/"), "package.json")
        try:
            with open(manifest, encoding="utf-8") as file:
                if json.load(file).get("version") != EXPECTED[version]:
                    return False
        except (OSError, ValueError):
            return False
    return True


def node_ipc() -> str:
    """The ``node`` executable, with the three node-ipc versions installed (skips the test if
    node or npm is missing; fails it if the install fails)."""
    global _ready
    with _lock:
        if _ready is not None:
            return _ready
        node, npm = shutil.which("node"), shutil.which("npm")
        if node is None or npm is None:
            missing = "node" if node is None else "npm"
            pytest.skip(f"the node-ipc interop tests need node and npm; {missing} is not installed")
        if not _installed():
            result = subprocess.run(
                [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"],
                cwd=NODE_DIR,
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
            )
            if result.returncode != 0 or not _installed():
                pytest.fail(
                    "installing node-ipc for the interop tests failed (npm ci in tests/node):\n"
                    + result.stdout[-2000:]
                    + result.stderr[-2000:],
                    pytrace=False,
                )
        _ready = node
        return node


def free_port(kind: socket.SocketKind = socket.SOCK_STREAM) -> int:
    """A port nothing listens on now (node-ipc takes port 0 as its default, 8000)."""
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class NodePeer:
    """One Node process running a script of tests/node; see the module docstring."""

    def __init__(self, process: Process, name: str) -> None:
        self.process = process
        self.name = name
        self.lines: list[dict[str, Any]] = []
        self.stderr = bytearray()
        self._changed = anyio.Event()
        self._eof = False

    async def _collect(self) -> None:
        assert self.process.stdout is not None
        pending = b""
        async for chunk in self.process.stdout:
            pending += chunk
            *complete, pending = pending.split(b"\n")
            for line in complete:
                self.lines.append(json.loads(line))
            self._changed.set()
            self._changed = anyio.Event()
        self._eof = False

    async def _collect_stderr(self) -> None:
        assert self.process.stderr is not None
        async for chunk in self.process.stderr:
            self.stderr += chunk

    def received(self, type: str) -> list[Any]:
        """The data of every event of that type received so far, in order."""
        return [
            line["data"] for line in self.lines if line["ev"] == "recv" and line["type"] == type
        ]

    def count(self, ev: str) -> int:
        return sum(1 for line in self.lines if line["ev"] == ev)

    async def wait_for(self, condition: Callable[[], bool], what: str, timeout: float = 10) -> None:
        """Wait until ``condition()`` holds (checked after each line the peer prints)."""
        try:
            with anyio.fail_after(timeout):
                while not condition():
                    if self._eof:
                        raise AssertionError("it exited")
                    await self._changed.wait()
        except (TimeoutError, AssertionError) as exc:
            raise AssertionError(
                f"{self.name}: {what} did not happen ({exc or 'timeout'}); it printed "
                f"{self.lines[-20:]}; stderr: {self.stderr[-2000:].decode(errors='replace')}"
            ) from None

    async def expect(self, ev: str, count: int = 1, timeout: float = 10) -> None:
        """Wait until the peer printed ``count`` lines with that ``ev`` in all."""
        await self.wait_for(lambda: self.count(ev) >= count, f"{count} x {ev!r}", timeout)

    async def expect_received(self, type: str, count: int = 1, timeout: float = 10) -> list[Any]:
        await self.wait_for(
            lambda: len(self.received(type)) >= count, f"{count} x {type!r}", timeout
        )
        return self.received(type)

    async def command(self, **command: Any) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send(json.dumps(command).encode() + b"\n")


@asynccontextmanager
async def node_peer(
    script: str, *args: str, name: str | None = None, tls: dict[str, str] | None = None
) -> AsyncIterator[NodePeer]:
    """Run ``node tests/node/<script> args...``; on exit close its stdin (it exits), or kill
    it after a few seconds. ``tls`` is node-ipc's ``ipc.config.tls`` (file names)."""
    node = node_ipc()
    env = dict(os.environ)
    if tls is not None:
        env["NODE_IPC_TLS"] = json.dumps(tls)
    process = await anyio.open_process(
        [node, os.path.join(NODE_DIR, script), *args],
        cwd=NODE_DIR,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    peer = NodePeer(process, name or f"{script} {' '.join(args)}")
    try:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(peer._collect)
            tasks.start_soon(peer._collect_stderr)
            try:
                yield peer
            finally:
                with anyio.CancelScope(shield=True):
                    await stop(peer)
    finally:
        await process.aclose()


async def stop(peer: NodePeer) -> None:
    """End the peer: close its stdin (it exits), kill it if it has not within 5 s."""
    process = peer.process
    if process.returncode is None:
        assert process.stdin is not None
        await process.stdin.aclose()
        with anyio.move_on_after(5):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()
