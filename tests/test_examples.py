"""The supervisor examples run as scripts (their functions live in ``__main__``), finish by
themselves in a few seconds, and print correct results, on both backends."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("numpy")

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


def run_example(name: str, backend: str, *args: str) -> str:
    env = dict(os.environ)  # the package of this checkout, not whichever one is installed
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(EXAMPLES), env.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, os.path.join(EXAMPLES, name), "--backend", backend, *args],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    assert result.returncode == 0, f"{name} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_worker_pool(backend: str) -> None:
    out = run_example("worker_pool.py", backend)
    assert "started pool-0" in out
    assert "killing pool-1" in out
    assert "pool-1 restarted" in out
    assert "40/40 tasks done, all results correct (1 retried)" in out


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_neural_graph(backend: str) -> None:
    out = run_example("neural_graph.py", backend, "--activation-mib", "16")
    for layer in ("layer-1", "layer-2", "layer-3", "layer-4"):
        assert f"node {layer} started" in out
    assert "killing node layer-3" in out
    assert "attempt 1 failed" in out
    assert "node layer-3 restarted" in out
    assert "all 12 batches match the single-process computation" in out
    assert "activations: 4 batches of 16 MiB (1024x4096 float32) through 4 layer processes" in out
    assert "all checksums match" in out


def test_neural_graph_hosts_file_as_its_docstring_shows_it(tmp_path: Path) -> None:
    """The TOML its docstring gives for ``--hosts`` says what the docstring says: ``listen``
    reaches the supervisor (it sat below ``[placement]``, so TOML read it as a layer placed on
    a host named by a list, and the layers would have connected back to loopback); a
    placement naming an unknown layer or host is refused, not ignored."""
    spec = importlib.util.spec_from_file_location("neural_graph", f"{EXAMPLES}/neural_graph.py")
    assert spec is not None
    assert spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    shown = textwrap.dedent(example.__doc__.split("::\n", 1)[1].split("\n\nThen", 1)[0])
    hosts_file = tmp_path / "hosts.toml"
    hosts_file.write_text(shown)
    hosts, placement, extra = example.read_hosts(str(hosts_file))
    assert list(hosts) == ["gpu-1"]
    assert placement == {"layer-1": "gpu-1", "layer-2": "gpu-1"}
    assert extra["listen"] == ("10.0.0.1", 0)
    hosts_file.write_text(shown + '\n[placement.more]\nlayer-9 = "gpu-1"\n')
    with pytest.raises(SystemExit, match="placement"):
        example.read_hosts(str(hosts_file))
    hosts_file.write_text(shown.replace('layer-2 = "gpu-1"', 'layer-2 = "gpu-2"'))
    with pytest.raises(SystemExit, match="gpu-2"):
        example.read_hosts(str(hosts_file))


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_acked_pipeline(backend: str) -> None:
    out = run_example("acked_pipeline.py", backend)
    for layer in ("layer-1", "layer-2"):
        assert f"node {layer} started" in out
    assert "killing node layer-1" in out
    assert "node layer-1 restarted" in out
    assert "arrive flagged as redelivered" in out
    assert "all 40 batches arrived and match the single-process computation" in out
    assert "none lost" in out
