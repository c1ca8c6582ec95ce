"""The sdist: built by the declared backend without warnings, with everything the README links to
and the files its own tests need; the metadata says MIT (SPDX) and the supported platforms."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_SKIP = shutil.ignore_patterns(
    ".venv", "node_modules", "*.egg-info", "build", "dist", "__pycache__", ".*_cache", ".git"
)


def test_the_sdist_ships_docs_examples_benchmarks_tests_and_license(tmp_path: Path) -> None:
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=_SKIP)  # the checkout stays untouched
    build = textwrap.dedent(
        """
        import sys, warnings
        warnings.simplefilter("error")  # a BuildBackendWarning (license as a table) fails here
        from setuptools import build_meta
        print(build_meta.build_sdist(sys.argv[1]))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", build, str(tmp_path)],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )
    assert done.returncode == 0, done.stderr
    assert "Warning" not in done.stderr, done.stderr
    name = done.stdout.strip().splitlines()[-1]
    with tarfile.open(tmp_path / name) as sdist:
        names = {member.split("/", 1)[1] for member in sdist.getnames() if "/" in member}
        metadata = sdist.extractfile(f"{name.removesuffix('.tar.gz')}/PKG-INFO")
        assert metadata is not None
        info = metadata.read().decode()
    for path in (
        "LICENSE",
        "README.md",
        "docs/guide.md",
        "docs/protocol.md",
        "examples/hello_world.py",
        "benchmarks/__main__.py",
        "tests/conftest.py",
        "tests/node/package-lock.json",
        "ipcactors/py.typed",
    ):
        assert path in names, f"{path} is missing from the sdist"
    assert not any("node_modules" in path or "__pycache__" in path for path in names)
    assert "License-Expression: MIT" in info
    assert "License-File: LICENSE" in info
    assert "Classifier: Operating System :: POSIX :: Linux" in info
