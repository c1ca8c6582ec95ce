"""Every code example in README.md and docs/ runs, prints what the docs say it prints, and passes
``mypy --strict``.

Convention: each fenced ```python block follows an HTML comment (which renders as nothing):
- ``<!-- example: NAME ... -->``: a whole program. This file runs it as a script and checks its
  output (OUTPUT below, or a test of its own for the programs in two processes), and
  ``mypy --strict`` checks it.
- ``<!-- fragment: WHY -->``: a part of a program (a handler, a line), or a program that
  cannot run here (it needs a second host, or certificates you have); WHY says so. It is
  compiled (top-level ``await`` allowed), not run.
A block with neither fails ``test_every_python_block_is_marked``.
"""

from __future__ import annotations

import ast
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
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").rglob("*.md"))]
_BLOCK = re.compile(r"(?:<!-- (example|fragment): ([^>]*?)\s*-->\n)?```python\n(.*?)```", re.DOTALL)


class Block(NamedTuple):
    document: str
    line: int
    kind: str  # "example", "fragment", or "" when unmarked
    label: str  # the example's name, or why a fragment is not run
    code: str


def blocks() -> list[Block]:
    found = []
    for document in DOCUMENTS:
        text = (ROOT / document).read_text()
        for match in _BLOCK.finditer(text):
            line = text.count("\n", 0, match.start(3))
            kind, label, code = match.group(1) or "", match.group(2) or "", match.group(3)
            found.append(Block(document, line, kind, label, code))
    return found


def examples(document: str | None = None) -> dict[str, str]:
    """The whole programs, by name (of one document, or of all)."""
    return {
        b.label.split()[0]: b.code
        for b in blocks()
        if b.kind == "example" and document in (None, b.document)
    }


# The examples this file runs as they are, and the lines each prints (in order; a line ending
# in "..." matches any line that starts with what comes before).
OUTPUT: dict[str, list[str]] = {
    "readme-supervisor": ["40"],
    "readme-pool": ["9", "332833500", "[0, 1, 4, 9, 16, 25, 36, 49, 64, 81]"],
    "supervisor-typed": ["40"],
    "supervisor-siblings": ["w1 got 3"],
    "pool-quickstart": ["9", "Pool..."],
    "pool-executor": ["9", "[0, 1, 4, 9, 16, 25, 36, 49, 64, 81]"],
    "blocking-quickstart": ["hello world!", "3"],
    "protocol-raw-client": ["[2, 1, 3]"],
    "tutorial-unix": ["got a message from world : hello world!"],
    "tutorial-request": ["1 + 2 = 3", "NoHandlerError: no handler for 'divide'"],
    "tutorial-tcp": ["got a message from world : hello world!"],
    "tutorial-udp": ["got a message from world : Hello world!"],
    "howto-tls": [
        "world answers over TLS: hello world! (to hello@example.org)",
        "refused: TLSError...",
    ],
    "howto-udp": ["pong from ('127.0.0.1', ...", "3", "timed out: RequestTimeoutError"],
    "howto-siblings": ["w1 asked w2: 3", "w2 got 'hello from w1' from w1"],
    "howto-graph": ["[[4.0, 1.0]]", "[[6.5, 2.5]]"],
    "howto-node-ipc": ["hello world!"],
    "guide-shared-memory": [],
    "howto-catch-all": [
        "hello sent 'anything' 1",
        "hello asked 'what?' 2",
        "answered ['what?', 2]",
    ],
}
# Examples with a test of their own below (two processes).
OWN_TEST = {"readme-hello"}


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


def test_every_python_block_is_marked() -> None:
    unmarked = [f"{b.document}:{b.line}" for b in blocks() if not b.kind]
    assert unmarked == [], "mark each block <!-- example: NAME --> or <!-- fragment: WHY -->"
    names = [b.label.split()[0] for b in blocks() if b.kind == "example"]
    assert len(names) == len(set(names)), "example names must be unique"
    assert set(names) == set(OUTPUT) | OWN_TEST, "every example is run by this file"
    for b in blocks():
        assert b.kind != "fragment" or len(b.label) > 10, (
            f"say why {b.document}:{b.line} is not run"
        )


@pytest.mark.parametrize(
    "block", [b for b in blocks() if b.kind == "fragment"], ids=lambda b: f"{b.document}:{b.line}"
)
def test_fragments_compile(block: Block) -> None:
    compile(block.code, f"{block.document}:{block.line}", "exec", ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


def _matches(lines: list[str], expected: list[str]) -> bool:
    if len(lines) != len(expected):
        return False
    return all(
        got.startswith(want[:-3]) if want.endswith("...") else got == want
        for got, want in zip(lines, expected, strict=True)
    )


@pytest.mark.parametrize("name", sorted(OUTPUT))
def test_example_prints_what_the_docs_say(name: str, tmp_path: Path, runtime_dir: str) -> None:
    script = tmp_path / f"{name.replace('-', '_')}.py"
    script.write_text(examples()[name])
    if name == "protocol-raw-client":  # a client of any server answering "add" on port 8000
        server = subprocess.Popen(
            [sys.executable, "-m", "ipcactors", "listen", "tcp://127.0.0.1:0", "--reply", "3"],
            env={**os.environ, "PYTHONPATH": str(ROOT), "XDG_RUNTIME_DIR": runtime_dir},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            listening = server.stdout.readline()  # type: ignore[union-attr]
            port = listening.rsplit(":", 1)[-1].split()[0]
            assert port.isdigit(), (listening, server.stderr.read())  # type: ignore[union-attr]
            script.write_text(script.read_text().replace("8000", port))
            done = _run(script, runtime_dir)
            out, err = done.communicate(timeout=60)
        finally:
            server.send_signal(signal.SIGINT)
            server.communicate(timeout=30)
    else:
        done = _run(script, runtime_dir)
        out, err = done.communicate(timeout=60)
    assert done.returncode == 0, err
    assert _matches(out.splitlines(), OUTPUT[name]), (out, OUTPUT[name])


def test_examples_pass_mypy_strict(tmp_path: Path) -> None:
    """What a newcomer copies type-checks, the docs' examples and examples/ alike:
    ``actor.parent`` is Optional, ``serve_net`` is overloaded on ``udp``, ``run(backend=)``
    takes a Literal."""
    for name, code in examples().items():
        (tmp_path / f"{name.replace('-', '_')}.py").write_text(code)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-error-summary",
            "--cache-dir",
            str(ROOT / ".mypy_cache"),
            "--python-version",
            "3.11",
            str(tmp_path),
            str(ROOT / "examples"),
        ],
        cwd=ROOT,
        env={**os.environ, "MYPYPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr


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


def test_the_docs_site_lists_every_page() -> None:
    """mkdocs.yml's nav names every page in docs/ (``make docs`` builds it with --strict)."""
    nav = (ROOT / "mkdocs.yml").read_text()
    pages = {str(p.relative_to(ROOT / "docs")) for p in (ROOT / "docs").rglob("*.md")}
    missing = sorted(page for page in pages if page not in nav)
    assert missing == []


def test_the_reference_has_every_public_name() -> None:
    import ipcactors

    reference = (ROOT / "docs" / "reference.md").read_text().split("\n")
    missing = [name for name in ipcactors.__all__ if f"::: ipcactors.{name}" not in reference]
    assert missing == [], "add them to docs/reference.md"


def test_every_test_the_docs_cite_exists() -> None:
    """`test_x.py::test_name` and the `::test_name` that follow it name tests that exist (a
    trailing `*` matches a prefix): a promise's proof that was renamed away is a dead link."""
    defined: dict[str, set[str]] = {}
    for path in (ROOT / "tests").glob("test_*.py"):
        defined[path.name] = set(re.findall(r"^(?:async )?def (test_\w+)", path.read_text(), re.M))
    missing = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        current: str | None = None
        for match in re.finditer(
            r"(test_\w+\.py)(?:::(test_\w+\*?))?|::(test_\w+\*?)", doc.read_text()
        ):
            if match.group(1):
                current = match.group(1)
            name = match.group(2) or match.group(3)
            if name is None or current is None:
                continue
            names = defined.get(current, set())
            found = (
                any(n.startswith(name[:-1]) for n in names) if name.endswith("*") else name in names
            )
            if not found:
                missing.append(f"{doc.relative_to(ROOT)}: {current}::{name}")
    assert not missing, missing
