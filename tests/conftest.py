"""Shared fixtures: both backends, short private socket directories, and leak checks.

After every test: no child process of ours is left, no socket file is left in the test's socket
directory, and no socket (Unix or TCP) that the test opened is still open. At the session's end:
no process a test started is left anywhere, whoever its parent is by then (a script that died
leaves its children to init, out of the first check's sight): every process inherits a tag in
its environment (``ORPHAN_TAG``), looked for in every process on the machine.

``make test`` runs the suite in three processes (pytest-xdist): every check above looks at this
process's own children, sockets and descriptors, so each worker checks its own tests; a test id
must be the same in every worker (no object address in it: test_protocol.py's ``stable_id``),
and a path for sockets must be short in every worker (``socket_dir``, ``short_tmp_path``).

Randomised tests take the ``seed`` fixture (``FAULT_SEED=<n>`` in the environment replays a run);
a failing test's report shows its seed. ``fault_proxy`` makes a fault-injecting proxy
(tests/_faultproxy.py) seeded from it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import psutil
import pytest
from _faultproxy import FaultProxy, proxy_factory, random_seed
from loguru import logger

pytest_plugins = ["pytester"]

BACKENDS = [
    pytest.param("asyncio", id="asyncio"),
    pytest.param("trio", id="trio"),
]


@pytest.fixture(params=BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session", autouse=True)
def _quiet_logs() -> None:
    # Tests read logs only when they ask for them (see `log_lines`); keep pytest output short.
    logger.remove()


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    """Every log line ipcactors writes during the test, as text."""
    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(str(message)), level="DEBUG")
    yield lines
    logger.remove(sink)


@pytest.fixture
def socket_dir() -> Iterator[str]:
    """A short private directory for socket files (sun_path is only 107 bytes)."""
    path = tempfile.mkdtemp(prefix="ia-", dir="/tmp")
    os.chmod(path, 0o700)
    yield path
    left = sorted(os.listdir(path))
    shutil.rmtree(path, ignore_errors=True)
    assert not left, f"files left behind in the socket directory: {left}"


@pytest.fixture
def short_tmp_path() -> Iterator[Path]:
    """``tmp_path`` for a test whose processes put sockets in it (as XDG_RUNTIME_DIR, TMPDIR):
    short, as pytest's is not under pytest-xdist (``.../popen-gw1/<test name>/``)."""
    path = tempfile.mkdtemp(prefix="ia-", dir="/tmp")
    yield Path(path)
    shutil.rmtree(path, ignore_errors=True)


_SEED = pytest.StashKey[int]()


@pytest.fixture
def seed(request: pytest.FixtureRequest) -> int:
    """The seed of this test's random choices: ``FAULT_SEED`` from the environment, else a new
    one. A failing test's report shows it (see ``pytest_runtest_makereport``)."""
    value = random_seed()
    request.node.stash[_SEED] = value
    return value


@pytest.fixture
def fault_proxy(socket_dir: str, seed: int) -> Callable[..., FaultProxy]:
    """``fault_proxy(upstream)``: a :class:`FaultProxy` to use as ``async with``, in front of a
    server's ``address`` (Unix path or ``(host, port)``), listening the same way."""
    return proxy_factory(socket_dir, seed)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed and _SEED in item.stash:
        seed = item.stash[_SEED]
        report.sections.append(("seed", f"FAULT_SEED={seed} replays this test's random choices"))
    return report


def _open_sockets() -> set[tuple[str, object, object]]:
    me = psutil.Process()
    found: set[tuple[str, object, object]] = set()
    for kind in ("inet", "unix"):
        for conn in me.net_connections(kind=kind):
            found.add((kind, conn.fd, conn.laddr))
    return found


def _children() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True) if p.status() != "zombie"]


def _open_fds() -> set[str]:
    fds = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            fds.add(f"{fd} -> {os.readlink(f'/proc/self/fd/{fd}')}")
        except OSError:
            pass  # the descriptor listdir itself used
    return fds


#: The environment variable that marks the processes this session's tests start (see above).
ORPHAN_TAG = "IPCACTORS_TEST_SESSION"


def _tagged(tag: str) -> list[psutil.Process]:
    """The live processes, but this one, whose environment carries ``tag``."""
    found = []
    for process in psutil.process_iter():
        try:
            if (
                process.pid != os.getpid()
                and process.environ().get(ORPHAN_TAG) == tag
                and process.status() != psutil.STATUS_ZOMBIE
            ):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return found


@pytest.fixture(autouse=True, scope="session")
def _no_orphans() -> Iterator[None]:
    tag = os.environ[ORPHAN_TAG] = uuid.uuid4().hex
    yield
    deadline = time.monotonic() + 5.0  # (a parent's death takes its children a moment)
    while (left := _tagged(tag)) and time.monotonic() < deadline:
        time.sleep(0.1)
    commands = [" ".join(process.cmdline())[:200] for process in left]
    for process in left:
        process.kill()
    assert not left, f"processes outlived their tests, orphaned: {commands}"


@pytest.fixture(autouse=True)
def _no_leaks() -> Iterator[None]:
    before_sockets = _open_sockets()
    before_fds = _open_fds()
    before_children = {p.pid for p in _children()}
    yield
    deadline = time.monotonic() + 2.0
    while True:
        leaked_children = [p for p in _children() if p.pid not in before_children]
        leaked_sockets = _open_sockets() - before_sockets
        leaked_fds = _open_fds() - before_fds
        if not (leaked_children or leaked_sockets or leaked_fds) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    for child in leaked_children:
        child.kill()
    assert not leaked_children, f"processes left running: {leaked_children}"
    assert not leaked_sockets, f"sockets left open: {sorted(map(str, leaked_sockets))}"
    assert not leaked_fds, f"file descriptors left open: {sorted(leaked_fds)}"
