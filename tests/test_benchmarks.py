"""Smoke test of the benchmark suite (``python -m benchmarks``): a tiny subset runs in real
processes, exits 0 and writes well-formed JSON.

No performance thresholds here: these machines are shared and noisy, so figures are only ever
compared as ratios within one run (see docs/performance.md). Node.js is not needed.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from typing import Any

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_quick_subset_runs_and_writes_json(tmp_path: os.PathLike[str]) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "--quick",
            "--only",
            "w1,w2,ipc-asyncio,raw-asyncio,mpc,unix",
            "--rounds",
            "1",
            "--seconds",
            "0.05",
            "--no-chart",
            "--results-dir",
            os.fspath(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert done.returncode == 0, done.stdout + done.stderr

    with open(os.path.join(tmp_path, "latest.json"), encoding="utf-8") as file:
        document = json.load(file)
    cells = {(cell["row"], cell["transport"], cell["impl"]): cell for cell in document["cells"]}
    assert set(cells) == {
        ("w1", "unix", "ipc-asyncio"),
        ("w1-shm", "unix", "ipc-asyncio"),
        ("w1", "unix", "raw-asyncio"),
        ("w2", "unix", "ipc-asyncio"),
        ("w2", "unix", "raw-asyncio"),
        ("w2x100", "unix", "raw-asyncio"),
        ("w1", "unix", "mpc"),
        ("w2", "unix", "mpc"),
        ("w2-acked", "unix", "ipc-asyncio"),
    }
    for cell in cells.values():
        assert cell["status"] == "ok", cell
        assert math.isfinite(cell["value"]), cell
        assert cell["value"] > 0, cell
    for key in (
        ("w1", "unix", "ipc-asyncio"),
        ("w1-shm", "unix", "ipc-asyncio"),
        ("w1", "unix", "raw-asyncio"),
    ):
        assert cells[key]["p99"] >= cells[key]["value"]
        assert cells[key]["unit"] == "µs"

    anchors = {(line["row"], line["anchor"]) for line in document["ratios"]}
    assert ("w1", "raw anyio") in anchors
    assert ("w2", "raw anyio ×100/write") in anchors
    assert ("w1", "multiprocessing.connection") in anchors
    assert ("w2-acked", "itself, plain") in anchors
    assert ("w1-shm", "itself, shared memory off") in anchors
    for line in document["ratios"]:
        assert all(math.isfinite(v) and v > 0 for v in line["values"].values())
    assert document["targets"], "the targets that apply to the cells run are evaluated"
    assert all(target["met"] in (True, False) for target in document["targets"])
    assert document["machine"]["cpus"] >= 1
    assert document["mode"] == "quick"
    # The table was printed, and the markdown copy written beside the JSON.
    assert "| W1 ping-pong round trip" in done.stdout
    assert os.path.exists(os.path.join(tmp_path, "latest.md"))


@pytest.mark.slow
def test_w8_one_array_beside_a_plain_socket_and_a_memcpy(tmp_path: os.PathLike[str]) -> None:
    """Every path of W8 (the socket, shared memory, zero-copy) on 1 MiB, with the anchors of
    the socket row, the issue's targets and the chart."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "--quick",
            "--only",
            "w8-1,w8-shm-1,w8-zc-1,ipc-asyncio,sock,memcpy,unix",
            "--rounds",
            "1",
            "--results-dir",
            os.fspath(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    with open(os.path.join(tmp_path, "latest.json"), encoding="utf-8") as file:
        document = json.load(file)
    cells = {(cell["row"], cell["impl"]): cell for cell in document["cells"]}
    assert set(cells) == {
        ("w8-1", "ipc-asyncio"),
        ("w8-1", "sock"),
        ("w8-1", "memcpy"),
        ("w8-shm-1", "ipc-asyncio"),
        ("w8-zc-1", "ipc-asyncio"),
    }
    for cell in cells.values():
        assert cell["status"] == "ok", cell
        assert cell["unit"] == "ms"
        assert math.isfinite(cell["value"]), cell
        assert cell["value"] > 0, cell
        assert "warning" not in cell, cell  # no array of the shared rows took the socket
    assert cells[("w8-zc-1", "ipc-asyncio")]["emit_ms"] > 0
    anchors = {(line["row"], line["anchor"]) for line in document["ratios"]}
    assert {anchor for row, anchor in anchors if row == "w8-1"} == {"plain socket", "memcpy"}
    for row in ("w8-shm-1", "w8-zc-1"):
        mine = {anchor for r, anchor in anchors if r == row}
        assert mine == {"plain socket", "memcpy", "itself, socket path"}
    assert [t["target"] for t in document["targets"]] == [
        "W8 asyncio 1 MiB array ≤ 2× plain socket",
        "W8 asyncio 1 MiB zero-copy round trip ≤ 1 ms",
    ]
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "no chart: matplotlib is not installed" in done.stdout
    else:
        assert os.path.getsize(os.path.join(tmp_path, "latest.png")) > 0


def test_w8_tokens_select_a_path_with_its_anchor_rows() -> None:
    from benchmarks import _runner
    from benchmarks._report import ROW_BY_KEY

    rows, _, _ = _runner.select("w8-shm")
    assert [row.key for row in rows] == [f"w8-{mib}" for mib in (1, 16, 64, 256)] + [
        f"w8-shm-{mib}" for mib in (1, 16, 64, 256)
    ]
    rows, _, _ = _runner.select("w8")
    assert len(rows) == 12
    assert ROW_BY_KEY["w8-zc-64"].transports == ("unix",)  # shared memory: Unix sockets only
    assert not _runner._in_params("w8-zc-256", _runner.QUICK)
    assert _runner._in_params("w8-shm-64", _runner.QUICK)


@pytest.mark.slow
def test_compare_runs_both_sides_interleaved(tmp_path: os.PathLike[str]) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "--quick",
            "--compare",
            "HEAD",
            "--only",
            "w1,ipc-asyncio,raw-asyncio,unix",
            "--rounds",
            "1",
            "--seconds",
            "0.05",
            "--passes",
            "2",
            "--results-dir",
            os.fspath(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    with open(os.path.join(tmp_path, "compare.json"), encoding="utf-8") as file:
        document = json.load(file)
    # Only the library's cells are compared: raw anyio does not import it.
    assert [(c["row"], c["impl"]) for c in document["comparison"]] == [
        ("w1", "ipc-asyncio"),
        ("w1-shm", "ipc-asyncio"),
    ]
    for line in document["comparison"]:
        assert line["rounds"] == [2, 2]
        assert line["verdict"] == "too few rounds"
        assert math.isfinite(line["ratio"])
        assert line["ratio"] > 0
    # Two passes a side, the side going first alternating.
    assert [c["side"] for c in document["cells"] if c["row"] == "w1"] in (
        ["current", "ref", "ref", "current"],
        ["ref", "current", "current", "ref"],
    )
    assert "| W1 ping-pong round trip" in done.stdout


def test_compare_noise_test() -> None:
    from benchmarks._compare import mann_whitney_p

    assert mann_whitney_p([1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0]) == 1.0
    assert mann_whitney_p([1.0, 1.1, 1.2, 1.3, 1.4], [2.0, 2.1, 2.2, 2.3, 2.4]) < 0.05
    assert mann_whitney_p([1.0, 2.1, 1.2, 2.3, 1.4], [2.0, 1.1, 2.2, 1.3, 2.4]) > 0.05


def test_curve_clients_share_processes_past_the_limit() -> None:
    """256 clients run as 64 processes of 4 connections, every index once, in order."""
    from benchmarks._runner import client_processes

    assert client_processes(4, 64) == [(0, 1), (1, 1), (2, 1), (3, 1)]
    assert client_processes(4, 2) == [(0, 2), (2, 2)]
    assert client_processes(5, 2) == [(0, 3), (3, 2)]
    shares = client_processes(256, 64)
    assert len(shares) == 64
    assert {n for _, n in shares} == {4}
    assert [i for first, n in shares for i in range(first, first + n)] == list(range(256))


@pytest.mark.slow
def test_cost_curves_quick_points_and_their_chart(tmp_path: os.PathLike[str]) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "--quick",
            "--only",
            "curves,ipc-asyncio,raw-asyncio",
            "--rounds",
            "1",
            "--seconds",
            "0.05",
            "--results-dir",
            os.fspath(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    with open(os.path.join(tmp_path, "latest.json"), encoding="utf-8") as file:
        document = json.load(file)
    cells = {(cell["row"], cell["impl"]): cell for cell in document["cells"]}
    rows = {"pay-64", f"pay-{256 << 10}", "fanout-1", "fanout-4", "fanin-1", "fanin-4"}
    idle = {"idle-1", "idle-100"}
    impls = ("ipc-asyncio", "raw-asyncio")
    assert set(cells) == {(row, impl) for row in rows | idle for impl in impls}
    for (row, _), cell in cells.items():
        assert cell["status"] == "ok", cell
        assert cell["unit"] == ("KiB" if row in idle else "ev/s")
        assert math.isfinite(cell["value"]), cell
        if row not in idle:  # memory per connection: RSS pages, noisy at 1 connection
            assert cell["value"] > 0, cell
    assert cells[("pay-64", "ipc-asyncio")]["note"].endswith("MB/s")
    assert cells[("idle-100", "ipc-asyncio")]["p99_us"] > 0
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "no curve chart: matplotlib is not installed" in done.stdout
    else:
        assert os.path.getsize(os.path.join(tmp_path, "latest-curves.png")) > 0


def test_compare_runs_w8_cells_on_the_refs_tree(monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``--compare``, the ref's W8 processes import the ref's export: they ran in this tree
    (``Group()``), so W8 compared this tree with itself (1.00x whatever the change)."""
    from benchmarks import _runner
    from benchmarks._report import IMPL_BY_KEY, ROW_BY_KEY

    trees: list[str] = []

    class Recorder:
        def __init__(self, tree: str = _runner.ROOT) -> None:
            trees.append(tree)

        def __enter__(self) -> Recorder:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def start(self, name: str, argv: list[str], cpus: set[int] | None = None) -> Any:
            raise LookupError("recorded")

    monkeypatch.setattr(_runner, "Group", Recorder)
    cell = _runner.Cell(
        ROW_BY_KEY["w8-1"],
        "unix",
        IMPL_BY_KEY["ipc-asyncio"],
        _runner.QUICK,
        None,  # type: ignore[arg-type]
        "/nowhere",
        set(),
        tree="/the/ref/export",
    )
    with pytest.raises(LookupError, match="recorded"):
        cell.run()
    assert trees == ["/the/ref/export"]
