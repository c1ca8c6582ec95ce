"""TCP, TLS and UDP between two hosts: two network namespaces joined by a veth pair.

The namespaces and their addresses (192.0.2.0/24, a range reserved for documentation) exist
only inside this test; nothing leaves the machine. Needs root and iproute2; skipped otherwise,
with the reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator

import pytest
import trustme

PEER = os.path.join(os.path.dirname(__file__), "_netns_peer.py")
SERVER_IP, CLIENT_IP = "192.0.2.1", "192.0.2.2"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture
def two_hosts() -> Iterator[tuple[str, str]]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 to create network namespaces")
    server_ns, client_ns = f"ia{os.getpid()}s", f"ia{os.getpid()}c"
    try:
        _ip("netns", "add", server_ns)
        _ip("netns", "add", client_ns)
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot create network namespaces here: {exc.stderr!r}")
    try:
        _ip("link", "add", "ia-veth-s", "netns", server_ns, "type", "veth",
            "peer", "name", "ia-veth-c", "netns", client_ns)  # fmt: skip
        for ns, dev, ip in (
            (server_ns, "ia-veth-s", SERVER_IP),
            (client_ns, "ia-veth-c", CLIENT_IP),
        ):
            _ip("-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        yield server_ns, client_ns
    finally:
        for ns in (server_ns, client_ns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


def test_tcp_tls_and_udp_between_two_hosts(
    two_hosts: tuple[str, str], tmp_path: os.PathLike[str]
) -> None:
    server_ns, client_ns = two_hosts
    ca = trustme.CA()
    cert = ca.issue_cert(SERVER_IP)
    cert_file, key_file, ca_file = (
        os.path.join(str(tmp_path), n) for n in ("c.pem", "k.pem", "ca.pem")
    )
    cert.cert_chain_pems[0].write_to_path(cert_file)
    cert.private_key_pem.write_to_path(key_file)
    ca.cert_pem.write_to_path(ca_file)
    in_server_ns = ["ip", "netns", "exec", server_ns, sys.executable, PEER]
    server = subprocess.Popen(
        [*in_server_ns, "server", SERVER_IP, cert_file, key_file], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        assert server.stdout.readline().strip() == "READY"
        result = subprocess.run(
            ["ip", "netns", "exec", client_ns, sys.executable, PEER, "client", SERVER_IP, ca_file],
            capture_output=True,
            text=True,
            timeout=60,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        for name in ("tcp", "tls", "udp"):
            assert f"{name} {{'echo': '{name}', 'seen_from': '{CLIENT_IP}'}}" in lines
    finally:
        server.terminate()
        assert server.wait(10) == 143
        assert server.stdout is not None
        server.stdout.close()
