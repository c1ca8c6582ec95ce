"""The README's main example runs, on both backends, and prints the whole exchange."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

EXAMPLE = os.path.join(os.path.dirname(__file__), os.pardir, "examples", "hello_world.py")


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_hello_world(backend: str, tmp_path: os.PathLike[str]) -> None:
    env = {**os.environ, "XDG_RUNTIME_DIR": str(tmp_path)}
    os.chmod(tmp_path, 0o700)
    result = subprocess.run(
        [sys.executable, EXAMPLE, "--backend", backend],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    log = result.stderr
    for transport in ("unix", "tcp"):
        assert f"[world] serving on {transport}" in log
    assert log.count("[world] got 'hello' from 'hello'") == 2
    assert log.count("[hello] world replied 'hello world!'") == 2
    assert log.count("[hello] world says 1 + 2 = 3") == 2
    assert os.listdir(os.path.join(str(tmp_path), "ipcactors")) == []


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_hello_whose_world_is_gone_gives_up(backend: str, tmp_path: os.PathLike[str]) -> None:
    """The example's "hello" process, left alone (its "world" killed: SIGKILL of the example
    leaves it orphaned), gives up within seconds, saying why, instead of retrying for ever."""
    env = {**os.environ, "XDG_RUNTIME_DIR": str(tmp_path)}
    os.chmod(tmp_path, 0o700)
    result = subprocess.run(
        [sys.executable, EXAMPLE, "--as-hello", "unix", "--backend", backend],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode == 1, result.stderr
    assert "[hello] world is not there: giving up" in result.stderr
    assert "Traceback" not in result.stderr
