"""``--compare REF``: this tree and a git ref side by side, interleaved, in one run.

The ref's ``ipcactors`` package is exported (``git archive``) into a temporary tree. The ref's
processes run in that tree (their working directory, first on ``sys.path``) and import this
tree's ``benchmarks`` through ``PYTHONPATH``: the roles are the same on both sides, only the
library differs. Only ipcactors cells are compared (the anchors do not import the library).

Each cell runs ``passes`` times per side, the side that goes first alternating (A B, B A, ...), so
a change in the machine's load falls on both sides alike. A side's figure is the median of all
its rounds (W1/W5: of the rounds' medians); the ratio is this tree ÷ the ref. A difference is
*beyond noise* when a two-sided Mann-Whitney U test over the two sides' rounds gives p < 0.05;
with fewer than 4 rounds a side no test can say that, and the verdict is ``too few rounds``.
"""

from __future__ import annotations

import math
import os
import statistics
import subprocess
import tempfile
from typing import Any

from ._report import ROW_BY_KEY, Row, fmt_value

P_BEYOND_NOISE = 0.05
MIN_ROUNDS = 4


class RefError(RuntimeError):
    """The ref could not be resolved or exported."""


def export(root: str, ref: str, into: str) -> str:
    """Export ``ref``'s ``ipcactors`` package into a new directory under ``into``; its commit."""
    try:
        commit = subprocess.run(
            ["git", "-C", root, "rev-parse", "--verify", f"{ref}^{{commit}}"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        raise RefError(f"--compare: {ref!r} is not a commit of {root}: {exc}") from exc
    tree = tempfile.mkdtemp(prefix="ref-", dir=into)
    archive = subprocess.Popen(
        ["git", "-C", root, "archive", "--format=tar", commit, "ipcactors"],
        stdout=subprocess.PIPE,
    )
    assert archive.stdout is not None
    try:
        subprocess.run(["tar", "-x", "-C", tree], stdin=archive.stdout, check=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        raise RefError(f"--compare: exporting {commit[:12]} failed: {exc}") from exc
    finally:
        archive.stdout.close()
        if archive.wait(timeout=60) != 0:
            raise RefError(f"--compare: git archive of {commit[:12]} failed")
    if not os.path.isdir(os.path.join(tree, "ipcactors")):
        raise RefError(f"--compare: {commit[:12]} has no ipcactors package")
    return tree


def mann_whitney_p(a: list[float], b: list[float]) -> float:
    """Two-sided p of the Mann-Whitney U test (normal approximation, ties corrected)."""
    n1, n2 = len(a), len(b)
    pooled = sorted([(v, 0) for v in a] + [(v, 1) for v in b])
    ranks = [0.0] * len(pooled)
    tie_term = 0.0
    i = 0
    while i < len(pooled):
        j = i
        while j + 1 < len(pooled) and pooled[j + 1][0] == pooled[i][0]:
            j += 1
        for k in range(i, j + 1):
            ranks[k] = (i + j) / 2 + 1
        t = j - i + 1
        tie_term += t**3 - t
        i = j + 1
    r1 = sum(rank for rank, (_, side) in zip(ranks, pooled, strict=True) if side == 0)
    u1 = r1 - n1 * (n1 + 1) / 2
    n = n1 + n2
    variance = n1 * n2 / 12 * ((n + 1) - tie_term / (n * (n - 1)))
    if variance <= 0:
        return 1.0
    z = max(0.0, abs(u1 - n1 * n2 / 2) - 0.5) / math.sqrt(variance)
    return math.erfc(z / math.sqrt(2))


def rounds_of(cell: dict[str, Any]) -> list[float]:
    values = cell.get("round_values")
    if values:
        return [float(v) for v in values]
    return [float(cell["value"])] if cell.get("status") == "ok" else []


def compare(mine: list[dict[str, Any]], theirs: list[dict[str, Any]]) -> dict[str, Any]:
    """One line of the comparison, from the passes of one cell on each side."""
    first = mine[0] if mine else theirs[0]
    row = ROW_BY_KEY[first["row"]]
    line: dict[str, Any] = {
        "row": row.key,
        "transport": first["transport"],
        "impl": first["impl"],
        "unit": row.unit,
    }
    failed = [c for c in [*mine, *theirs] if c.get("status") != "ok"]
    if failed:
        line.update(verdict="failed", reason=str(failed[0].get("reason"))[:500])
        return line
    a = [v for c in mine for v in rounds_of(c)]
    b = [v for c in theirs for v in rounds_of(c)]
    line.update(current=statistics.median(a), ref=statistics.median(b), rounds=[len(a), len(b)])
    line["ratio"] = line["current"] / line["ref"] if line["ref"] else math.inf
    if min(len(a), len(b)) < MIN_ROUNDS:
        line.update(p=None, verdict="too few rounds")
        return line
    p = mann_whitney_p(a, b)
    line["p"] = p
    if p >= P_BEYOND_NOISE:
        line["verdict"] = "noise"
    else:
        better = (line["ratio"] > 1) == row.higher_is_better
        line["verdict"] = "better" if better else "worse"
    return line


def table(lines: list[dict[str, Any]]) -> str:
    from ._report import _table

    out = []
    for line in lines:
        row: Row = ROW_BY_KEY[line["row"]]
        if line["verdict"] == "failed":
            out.append([row.label, line["transport"], line["impl"], "—", "—", "—", "failed"])
            continue
        p = line.get("p")
        verdict = line["verdict"] + (f" (p={p:.3f})" if p is not None else "")
        out.append(
            [
                row.label,
                line["transport"],
                line["impl"],
                f"{fmt_value(line['ref'], row.unit)} {row.unit}",
                f"{fmt_value(line['current'], row.unit)} {row.unit}",
                f"{line['ratio']:.2f}×",
                verdict,
            ]
        )
    header = ["workload", "transport", "impl", "ref", "this tree", "ratio", "difference"]
    return _table(header, out) if out else "(nothing compared)"
