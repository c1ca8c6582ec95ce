"""Children on other hosts over SSH (docs/remote.md): a real SSH server (asyncssh's, in a process
of its own: tests/_sshserver.py) on loopback, keys made by the test. The "remote" processes run
on this machine, so the leak checks of conftest.py see them: none may outlive a test."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import anyio
import asyncssh  # in the test group: `make test` installs it
import psutil
import pytest
from _faultproxy import FaultProxy
from _workers import chatty, echo

import ipcactors
from ipcactors import SSHHost

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
KEY = "test-auth-key"
ASYNCIO = [pytest.param("asyncio", id="asyncio")]


@dataclass
class SSHServer:
    """A running tests/_sshserver.py and what a client needs to reach it."""

    process: subprocess.Popen[bytes]
    port: int
    client_key: str
    known_hosts: str
    user: str

    def host(self, **changes: Any) -> SSHHost:
        host = SSHHost(
            "127.0.0.1",
            self.port,
            user=self.user,
            client_keys=(self.client_key,),
            known_hosts=self.known_hosts,
            python=sys.executable,
            cwd=ROOT,
            env={"PYTHONPATH": os.pathsep.join([ROOT, TESTS])},
            connect_timeout=5.0,
            keepalive=0.5,
            lifeline_timeout=3.0,
        )
        return replace(host, **changes)


@pytest.fixture
def ssh_server(tmp_path: Any) -> Iterator[SSHServer]:
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    client_key = asyncssh.generate_private_key("ssh-ed25519")
    host_key.write_private_key(str(tmp_path / "host_key"))
    client_key.write_private_key(str(tmp_path / "client_key"))
    client_key.write_public_key(str(tmp_path / "client_key.pub"))
    user = os.environ.get("USER") or "tester"
    process = subprocess.Popen(
        [
            sys.executable,
            os.path.join(TESTS, "_sshserver.py"),
            "127.0.0.1",
            str(tmp_path / "host_key"),
            str(tmp_path / "client_key.pub"),
            user,
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        known_hosts = tmp_path / "known_hosts"
        public = host_key.export_public_key("openssh").decode().strip()
        known_hosts.write_text(f"[127.0.0.1]:{port} {public}\n")
        yield SSHServer(process, port, str(tmp_path / "client_key"), str(known_hosts), user)
    finally:
        if process.poll() is None:
            process.terminate()
        process.wait(10)
        if process.stdout is not None:
            process.stdout.close()


async def wait_gone(pids: list[int], within: float) -> None:
    """Poll until none of ``pids`` runs (zombies count as gone)."""
    with anyio.fail_after(within):
        while True:
            alive = []
            for pid in pids:
                try:
                    if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                        alive.append(pid)
                except psutil.NoSuchProcess:
                    pass
            if not alive:
                return
            await anyio.sleep(0.05)


def forkserver_of(pid: int) -> int:
    return psutil.Process(pid).ppid()


@pytest.mark.parametrize("anyio_backend", ASYNCIO)
async def test_remote_child_answers_is_killed_and_restarted(
    anyio_backend: str, socket_dir: str, ssh_server: SSHServer
) -> None:
    async with ipcactors.Supervisor(
        socket_root=socket_dir, auth_key=KEY, hosts={"h1": ssh_server.host()}
    ) as sup:
        with anyio.fail_after(20):
            info = await sup.spawn(echo, "remote", id="w1", host="h1")
            assert info.host == "h1"
            assert info.running
            assert await sup.request("w1", "tag") == "remote"
            pid = await sup.request("w1", "pid")
            assert pid == info.pid
            # Its parent is the forkserver the SSH server started, not ours.
            forkserver = forkserver_of(pid)
            assert psutil.Process(forkserver).ppid() == ssh_server.process.pid

            # A pending request fails at once when the child dies, then it is restarted.
            async with anyio.create_task_group() as task_group:

                async def pending() -> None:
                    with pytest.raises(ipcactors.ChildExitedError, match="SIGKILL"):
                        await sup.request("w1", "slow", 30)

                task_group.start_soon(pending)
                await anyio.sleep(0.2)
                os.kill(pid, signal.SIGKILL)
            assert await sup.request("w1", "tag") == "remote"
            new = sup.children["w1"]
            assert new.pid != pid
            assert (new.restarts, new.host) == (1, "h1")
            # The forkserver on the host was reused.
            assert forkserver_of(new.pid) == forkserver  # type: ignore[arg-type]
        pids = [new.pid, forkserver]
    await wait_gone(pids, 5)  # type: ignore[arg-type]


@pytest.mark.parametrize("anyio_backend", ASYNCIO)
async def test_remote_output_is_relayed_with_id_and_host(
    anyio_backend: str, socket_dir: str, ssh_server: SSHServer, capfd: pytest.CaptureFixture[str]
) -> None:
    async with ipcactors.Supervisor(
        socket_root=socket_dir, auth_key=KEY, hosts={"h1": ssh_server.host()}
    ) as sup:
        with anyio.fail_after(20):
            await sup.spawn(chatty, id="talker", host="h1")
            out = err = ""
            with anyio.fail_after(5):
                while "hello on stderr" not in err or "hello on stdout" not in out:
                    await anyio.sleep(0.05)
                    captured = capfd.readouterr()
                    out, err = out + captured.out, err + captured.err
    assert "[talker@h1] hello on stdout" in out
    assert "[talker@h1] hello on stderr" in err


@pytest.mark.parametrize("anyio_backend", ASYNCIO)
async def test_cut_connection_ends_remote_processes_and_restarts(
    anyio_backend: str, socket_dir: str, ssh_server: SSHServer, seed: int
) -> None:
    async with FaultProxy(("127.0.0.1", ssh_server.port), ("127.0.0.1", 0), seed=seed) as proxy:
        assert isinstance(proxy.address, tuple)
        # The host key is the server's, behind the proxy's port.
        known = os.path.join(os.path.dirname(ssh_server.known_hosts), "known_hosts_proxy")
        with open(ssh_server.known_hosts) as file:
            key = file.read().split(" ", 1)[1]
        with open(known, "w") as file:
            file.write(f"[127.0.0.1]:{proxy.address[1]} {key}")
        host = ssh_server.host(port=proxy.address[1], known_hosts=known)
        async with ipcactors.Supervisor(
            socket_root=socket_dir, auth_key=KEY, hosts={"h1": host}
        ) as sup:
            with anyio.fail_after(20):
                await sup.spawn(echo, id="w1", host="h1")
                await sup.spawn(echo, id="w2", host="h1")
                before = [sup.children[id].pid for id in ("w1", "w2")]
                forkserver = forkserver_of(before[0])  # type: ignore[arg-type]
                proxy.reset()
                # Everything on the host is gone within the bound: at once, on the channel's
                # end (well within lifeline_timeout).
                await wait_gone([*before, forkserver], 5)  # type: ignore[list-item]
                # Both restarted, over a new connection, by a new forkserver.
                for id in ("w1", "w2"):
                    assert await sup.request(id, "echo", id) == id
                    assert sup.children[id].restarts == 1
                after = [sup.children[id].pid for id in ("w1", "w2")]
                assert set(after).isdisjoint(before)
                assert forkserver_of(after[0]) != forkserver  # type: ignore[arg-type]


@pytest.mark.parametrize("anyio_backend", ASYNCIO)
async def test_host_lost_for_good_escalates(
    anyio_backend: str, socket_dir: str, ssh_server: SSHServer
) -> None:
    """The SSH server dies: its processes go with it, every restart finds the host unreachable
    and counts, and the supervisor gives up."""
    pids: list[int] = []

    async def supervise() -> None:
        async with ipcactors.Supervisor(
            socket_root=socket_dir,
            auth_key=KEY,
            hosts={"h1": ssh_server.host()},
            max_restarts=2,
            max_seconds=30,
        ) as sup:
            with anyio.fail_after(20):
                await sup.spawn(echo, id="w1", host="h1")
                pid = sup.children["w1"].pid
                assert pid is not None
                pids.extend([pid, forkserver_of(pid)])
                ssh_server.process.kill()
                await anyio.sleep_forever()

    with pytest.raises(ipcactors.RestartIntensityError, match="w1") as caught:
        await supervise()
    assert caught.value.restarts == 2
    await wait_gone(pids, 5)


@pytest.mark.parametrize("anyio_backend", ASYNCIO)
async def test_wrong_host_key_user_or_address_are_refused_clearly(
    anyio_backend: str, socket_dir: str, ssh_server: SSHServer, tmp_path: Any
) -> None:
    stranger = asyncssh.generate_private_key("ssh-ed25519").export_public_key("openssh")
    wrong_known = tmp_path / "wrong_known_hosts"
    wrong_known.write_text(f"[127.0.0.1]:{ssh_server.port} {stranger.decode().strip()}\n")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]  # nothing listens there once closed
    hosts = {
        "spoofed": ssh_server.host(known_hosts=str(wrong_known)),
        "mallory": ssh_server.host(user="mallory"),
        "nowhere": ssh_server.host(port=closed_port),
    }
    async with ipcactors.Supervisor(socket_root=socket_dir, auth_key=KEY, hosts=hosts) as sup:
        with anyio.fail_after(20):
            with pytest.raises(ipcactors.SpawnError, match="host key is not in the known_hosts"):
                await sup.spawn(echo, id="a", host="spoofed")
            with pytest.raises(ipcactors.SpawnError, match="refused the login of user 'mallory'"):
                await sup.spawn(echo, id="b", host="mallory")
            with pytest.raises(ipcactors.SpawnError, match=r"'nowhere'.* is unreachable"):
                await sup.spawn(echo, id="c", host="nowhere")
            assert sup.children == {}


async def test_hosts_need_auth_key_or_tls_and_known_names(anyio_backend: str) -> None:
    host = SSHHost("127.0.0.1")
    with pytest.raises(ipcactors.ConfigError, match="set auth_key"):
        ipcactors.Supervisor(hosts={"h": host})
    with pytest.raises(ipcactors.ConfigError, match="SSHHost port"):
        SSHHost("127.0.0.1", port=0)
    with pytest.raises(ipcactors.ConfigError, match="lifeline_timeout"):
        SSHHost("127.0.0.1", keepalive=5, lifeline_timeout=1)


@pytest.mark.parametrize("anyio_backend", [pytest.param("trio", id="trio")])
async def test_hosts_on_trio_raise_unsupported(anyio_backend: str, socket_dir: str) -> None:
    sup = ipcactors.Supervisor(
        socket_root=socket_dir, auth_key=KEY, hosts={"h": SSHHost("127.0.0.1")}
    )
    with pytest.raises(ipcactors.UnsupportedError, match="asyncio backend"):
        async with sup:
            pass
