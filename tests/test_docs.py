"""The documented examples run, and print what the docs say they print.

Convention: a fenced ```python block right after an ``<!-- example: NAME ... -->`` comment (which
renders as nothing) is a whole program this file runs as a script; any other block is a fragment,
read but not run. Each example's expected output is checked here.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_EXAMPLE = re.compile(r"<!-- example: ([\w-]+)[^>]*-->\n```python\n(.*?)```", re.DOTALL)


def examples(document: str) -> dict[str, str]:
    return dict(_EXAMPLE.findall((ROOT / document).read_text()))


@pytest.fixture
def runtime_dir() -> Iterator[str]:
    """A private XDG_RUNTIME_DIR, so the examples' default socket paths are ours alone."""
    path = tempfile.mkdtemp(prefix="ia-doc-", dir="/tmp")
    os.chmod(path, 0o700)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _run(script: Path, runtime_dir: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(script), *args],
        cwd=script.parent,
        env={**os.environ, "XDG_RUNTIME_DIR": runtime_dir, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_the_readme_marks_its_examples() -> None:
    assert set(examples("README.md")) == {"readme-hello", "readme-supervisor"}


def test_readme_hello_world(tmp_path: Path, runtime_dir: str) -> None:
    script = tmp_path / "hello.py"
    script.write_text(examples("README.md")["readme-hello"])
    world = _run(script, runtime_dir, "world")
    try:
        socket = Path(runtime_dir, "ipcactors", "app.world")
        deadline = time.monotonic() + 20
        while not socket.exists():
            assert world.poll() is None, world.communicate()
            assert time.monotonic() < deadline, "world never served"
            time.sleep(0.02)
        hello = _run(script, runtime_dir)
        out, err = hello.communicate(timeout=30)
        assert hello.returncode == 0, err
        assert out.splitlines() == ["hello world!", "3"]  # the message handler fired
    finally:
        world.send_signal(signal.SIGINT)
        _, err = world.communicate(timeout=30)
    assert world.returncode == 128 + signal.SIGINT, err


def test_readme_supervisor(tmp_path: Path, runtime_dir: str) -> None:
    script = tmp_path / "supervised.py"
    script.write_text(examples("README.md")["readme-supervisor"])
    done = _run(script, runtime_dir)
    out, err = done.communicate(timeout=60)
    assert done.returncode == 0, err
    assert out.splitlines() == ["40"]


def test_supervisor_siblings_show_the_receiving_side(tmp_path: Path, runtime_dir: str) -> None:
    script = tmp_path / "siblings.py"
    script.write_text(examples("docs/supervisor.md")["supervisor-siblings"])
    done = _run(script, runtime_dir)
    out, err = done.communicate(timeout=60)
    assert done.returncode == 0, err
    assert out.splitlines() == ["w1 got 3"]
