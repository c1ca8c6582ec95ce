"""A description of the machine and the software a run measured."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
from typing import Any


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as file:
            for line in file:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float | None:
    try:
        with open("/proc/meminfo") as file:
            for line in file:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    # Set it when running from an exported tree (e.g. `git archive`), which has no .git.
    if os.environ.get("IPCACTORS_BENCH_COMMIT"):
        return os.environ["IPCACTORS_BENCH_COMMIT"]
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        done = subprocess.run(
            ["git", "-C", here, "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def describe(node_version: str | None) -> dict[str, Any]:
    return {
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "os": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "node": node_version,
        "packages": {
            name: _version(name) for name in ("ipcactors", "anyio", "msgpack", "trio", "uvloop")
        },
        "node_ipc": "9.2.1" if node_version else None,
        "commit": _git_commit(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "executable": os.path.basename(sys.executable),
    }


def summary(machine: dict[str, Any]) -> str:
    packages = ", ".join(f"{k} {v}" for k, v in machine["packages"].items() if v)
    node = f"Node.js {machine['node']} + node-ipc 9.2.1" if machine["node"] else "no Node.js"
    load = " ".join(str(x) for x in machine["load_average"])
    return (
        f"{machine['cpu']}, {machine['cpus']} CPUs, {machine['memory_gib']} GiB, {machine['os']}; "
        f"{machine['python']} ({packages}); {node}; commit {machine['commit']}; "
        f"load average at start {load}"
    )
