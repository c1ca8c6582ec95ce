"""node-ipc 9.2.1, the anchor ipcactors replaces, installed into ``benchmarks/.node/`` (ignored
by git) on first use.

Only 9.2.1 is ever installed or run: 9.2.2, 10.1.1-10.1.3 and 11.x carried malicious code.
``--ignore-scripts`` keeps any install script from running. Without node or npm, or if the
install fails, the node-ipc cells are reported as unavailable; nothing else depends on them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass

HERE = os.path.dirname(os.path.abspath(__file__))
NODE_DIR = os.path.join(HERE, ".node")
SCRIPT = os.path.join(HERE, "node", "bench.js")
VERSION = "9.2.1"
INSTALL = ["install", "--ignore-scripts", "--no-audit", "--no-fund", f"node-ipc@{VERSION}"]


@dataclass
class NodeIPC:
    node: str | None
    version: str | None  # of Node.js
    reason: str | None  # why node-ipc is unavailable, or None

    @property
    def available(self) -> bool:
        return self.reason is None


def installed_version() -> str | None:
    manifest = os.path.join(NODE_DIR, "node_modules", "node-ipc", "package.json")
    try:
        with open(manifest) as file:
            return str(json.load(file).get("version"))
    except (OSError, ValueError):
        return None


def ensure_node_ipc(log: bool = True) -> NodeIPC:
    node = shutil.which("node")
    if node is None:
        return NodeIPC(None, None, "node is not installed")
    try:
        version = subprocess.run(
            [node, "--version"], capture_output=True, text=True, timeout=20, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        return NodeIPC(node, None, f"node --version failed: {exc}")
    if installed_version() != VERSION:
        npm = shutil.which("npm")
        if npm is None:
            return NodeIPC(node, version, "npm is not installed")
        os.makedirs(NODE_DIR, exist_ok=True)
        manifest = os.path.join(NODE_DIR, "package.json")
        if not os.path.exists(manifest):  # keeps npm from installing into a parent folder
            with open(manifest, "w") as file:
                json.dump({"name": "ipcactors-bench-node", "private": True}, file)
        if log:
            print(f"installing node-ipc@{VERSION} into benchmarks/.node/ ...", flush=True)
        try:
            done = subprocess.run(
                [npm, *INSTALL], cwd=NODE_DIR, capture_output=True, text=True, timeout=300
            )
        except (OSError, subprocess.SubprocessError) as exc:
            return NodeIPC(node, version, f"npm install failed: {exc}")
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            return NodeIPC(node, version, "npm install failed: " + " / ".join(tail))
        if installed_version() != VERSION:
            found = installed_version()
            return NodeIPC(node, version, f"npm installed node-ipc {found}, not {VERSION}")
    return NodeIPC(node, version, None)
