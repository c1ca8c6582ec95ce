"""Children on other hosts over SSH (docs/remote.md): a real SSH server (asyncssh's, in a process
of its own: tests/_sshserver.py) on loopback, keys made by the test. The "remote" processes run
on this machine, so the leak checks of conftest.py see them: none may outlive a test. The main
guarantees run on both backends (on Trio, the SSH side runs in a helper thread); the rest on
asyncio."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import anyio
import asyncssh  # in the test group: `make test` installs it
import psutil
import pytest
import trustme
from _faultproxy import FaultProxy
from _supervising import output_of_an_unread_flood
from _workers import chatty, echo, leaves_a_holder

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


@contextlib.contextmanager
def running_ssh_server(directory: pathlib.Path) -> Iterator[SSHServer]:
    """tests/_sshserver.py with keys made here: a host key, and one client key it admits."""
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    client_key = asyncssh.generate_private_key("ssh-ed25519")
    host_key.write_private_key(str(directory / "host_key"))
    client_key.write_private_key(str(directory / "client_key"))
    client_key.write_public_key(str(directory / "client_key.pub"))
    user = os.environ.get("USER") or "tester"
    process = subprocess.Popen(
        [
            sys.executable,
            os.path.join(TESTS, "_sshserver.py"),
            "127.0.0.1",
            str(directory / "host_key"),
            str(directory / "client_key.pub"),
            user,
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        known_hosts = directory / "known_hosts"
        public = host_key.export_public_key("openssh").decode().strip()
        known_hosts.write_text(f"[127.0.0.1]:{port} {public}\n")
        yield SSHServer(process, port, str(directory / "client_key"), str(known_hosts), user)
    finally:
        if process.poll() is None:
            process.terminate()
        process.wait(10)
        if process.stdout is not None:
            process.stdout.close()


@pytest.fixture(scope="module")
def ssh_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SSHServer]:
    """One server for the module's tests (what each test starts through it, it must end)."""
    with running_ssh_server(tmp_path_factory.mktemp("ssh")) as server:
        yield server


@pytest.fixture
def own_ssh_server(tmp_path: pathlib.Path) -> Iterator[SSHServer]:
    """A server of the test's own, for a test that kills it."""
    with running_ssh_server(tmp_path) as server:
        yield server


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
            # It rehearsed a child's way on the children's backend, and forks single-threaded.
            assert psutil.Process(forkserver).cmdline()[-2:] == [anyio_backend, "0"]
            assert psutil.Process(forkserver).num_threads() == 1

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


_FLOOD_SCRIPT = """
import json, os, signal, sys
import anyio, ipcactors, _workers

async def main():
    fields = json.loads(sys.argv[3])
    fields["client_keys"] = tuple(fields["client_keys"])
    host = ipcactors.SSHHost(**fields)
    async with ipcactors.Supervisor(
        socket_root=sys.argv[2], auth_key="k", hosts={"h": host}, retry=0.05
    ) as sup:
        await sup.spawn(_workers.echo, id="w", host="h")
        await sup.spawn(_workers.flood, int(sys.argv[4]), id="loud", host="h", restart="temporary")
        # Our stdout is a pipe nobody reads yet: the flood fills it at once.
        await anyio.sleep(0.5)
        for n in range(20):
            assert await sup.request("w", "echo", n, timeout=10) == n
        with anyio.fail_after(10):
            await sup.spawn(_workers.echo, id="late", host="h")
        assert await sup.request("late", "echo", 1, timeout=10) == 1
        async with anyio.create_task_group() as task_group:
            async def pending():
                try:
                    await sup.request("w", "slow", 30, timeout=10)
                except ipcactors.ChildExitedError:
                    pass
            task_group.start_soon(pending)
            await anyio.sleep(0.2)
            os.kill(sup.children["w"].pid, signal.SIGKILL)
        print("IPC OK", file=sys.stderr, flush=True)
        while "loud" in sup.children:
            await anyio.sleep(0.05)

ipcactors.run(main, backend=sys.argv[1], log_level="WARNING")
"""


async def test_an_unread_flood_from_one_remote_child_stalls_no_other(
    anyio_backend: str, socket_dir: str, ssh_server: SSHServer
) -> None:
    """supervisor.md: a slow or unread stdout does not stall the supervisor's IPC, and a child
    that writes faster than the output drains waits in its own write; on a host as locally.
    One child's output must not hold up the host's other messages (a spawn, an exit), and
    none of it is lost."""
    total, line = 10_000_000, 100
    host = ssh_server.host()
    fields = {
        name: getattr(host, name)
        for name in ("address", "port", "user", "client_keys", "known_hosts", "python", "cwd")
    }
    fields.update(env=host.env, keepalive=0.5, lifeline_timeout=3.0)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, TESTS])}
    root = os.path.join(socket_dir, "flood")
    os.mkdir(root, 0o700)
    try:
        out = await output_of_an_unread_flood(
            [
                sys.executable,
                "-c",
                _FLOOD_SCRIPT,
                anyio_backend,
                root,
                json.dumps(fields),
                f"{total}",
            ],
            env,
            answered_within=20,
            ended_within=60,
        )
        lines = [text for text in out.split(b"\n") if text.startswith(b"[loud@h] ")]
        assert len(lines) == total // line, "lines were lost"
        assert lines[0] == b"[loud@h] " + b"0" * (line - 1)
        assert lines[-1] == b"[loud@h] " + str(total // line - 1).zfill(line - 1).encode()
    finally:
        remote = [child.pid for child in psutil.Process(ssh_server.process.pid).children(True)]
        shutil.rmtree(root, ignore_errors=True)
        await wait_gone(remote, 10)  # the channel's end is their lifeline


async def test_a_forkserver_holding_many_descriptors_reports_its_children(
    anyio_backend: str, socket_dir: str, ssh_server: SSHServer, tmp_path: pathlib.Path
) -> None:
    """A host's forkserver with 1,024 descriptors or more open (a few hundred children: two
    pipes each; here a wrapper around python holds them, bash's own 255 aside) still reports
    a child's exit: select.select refused such descriptors, and
    the forkserver ended, with every child of that host."""
    wrapper = tmp_path / "python-holding-descriptors"
    wrapper.write_text(
        "#!/bin/bash\n"
        'for fd in $(seq 3 1100); do [ $fd -eq 255 ] || eval "exec $fd</dev/null"; done\n'
        f'exec {sys.executable} "$@"\n'
    )
    wrapper.chmod(0o755)
    host = ssh_server.host(python=str(wrapper))
    async with ipcactors.Supervisor(
        socket_root=socket_dir, auth_key=KEY, hosts={"h1": host}
    ) as sup:
        with anyio.fail_after(20):
            await sup.spawn(leaves_a_holder, id="w1", host="h1", restart="temporary")
            await sup.spawn(echo, id="w2", host="h1")
            pid = sup.children["w1"].pid
            assert pid is not None
            forkserver = forkserver_of(pid)
            # Its pipes outlive it (held by what it left): the forkserver looks at them.
            holder = await sup.request("w1", "holder")
            try:
                os.kill(pid, signal.SIGKILL)
                while "w1" in sup.children:
                    await anyio.sleep(0.05)
                assert psutil.Process(forkserver).is_running()
                assert await sup.request("w2", "pid") == sup.children["w2"].pid
            finally:
                os.kill(holder, signal.SIGKILL)
                await wait_gone([holder], 5)


async def test_cut_connection_ends_remote_processes_and_restarts(
    anyio_backend: str, socket_dir: str, ssh_server: SSHServer, seed: int, log_lines: list[str]
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
                # The loss is said, with the host.
                assert any(
                    "host 'h1'" in line and ("ended" in line or "lost" in line)
                    for line in log_lines
                ), log_lines


@pytest.mark.parametrize("anyio_backend", ASYNCIO)
async def test_silent_link_is_noticed_on_both_sides(
    anyio_backend: str, socket_dir: str, ssh_server: SSHServer, seed: int
) -> None:
    """A link that goes silent (no FIN, no RST: the proxy holds every byte): the supervisor
    notices through SSH keepalives (about 4 x keepalive = 2 s here) and restarts the child once
    the link heals; the remote side, hearing nothing, stops everything within
    lifeline_timeout (3 s here)."""
    async with FaultProxy(("127.0.0.1", ssh_server.port), ("127.0.0.1", 0), seed=seed) as proxy:
        assert isinstance(proxy.address, tuple)
        known = os.path.join(os.path.dirname(ssh_server.known_hosts), "known_hosts_silent")
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
                pid = sup.children["w1"].pid
                assert pid is not None
                forkserver = forkserver_of(pid)
                proxy.blackhole()
                while sup.children["w1"].state == "running":
                    await anyio.sleep(0.05)
                proxy.heal()
                await wait_gone([pid, forkserver], 10)
                assert await sup.request("w1", "echo", 1) == 1
                assert sup.children["w1"].pid != pid


async def test_host_lost_for_good_escalates(
    anyio_backend: str, socket_dir: str, own_ssh_server: SSHServer
) -> None:
    """The SSH server dies: its processes go with it, every restart finds the host unreachable
    and counts, and the supervisor gives up."""
    pids: list[int] = []

    async def supervise() -> None:
        async with ipcactors.Supervisor(
            socket_root=socket_dir,
            auth_key=KEY,
            hosts={"h1": own_ssh_server.host()},
            max_restarts=2,
            max_seconds=30,
        ) as sup:
            with anyio.fail_after(20):
                await sup.spawn(echo, id="w1", host="h1")
                pid = sup.children["w1"].pid
                assert pid is not None
                pids.extend([pid, forkserver_of(pid)])
                own_ssh_server.process.kill()
                await anyio.sleep_forever()

    with pytest.raises(ipcactors.RestartIntensityError, match="w1") as caught:
        await supervise()
    assert caught.value.restarts == 2
    # it says why the last restart failed (it said "exited (status unknown)")
    assert "status unknown" not in str(caught.value)
    assert "unreachable" in str(caught.value)
    assert isinstance(caught.value.__cause__, ipcactors.SpawnError)
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
    mute = socket.socket(socket.AF_INET6)  # takes connections, never says a word
    mute.bind(("::1", 0))
    mute.listen()
    hosts = {
        "spoofed": ssh_server.host(known_hosts=str(wrong_known)),
        "mallory": ssh_server.host(user="mallory"),
        "nowhere": ssh_server.host(port=closed_port),
        "mute": ssh_server.host(address="::1", port=mute.getsockname()[1], connect_timeout=0.5),
    }
    with mute:
        async with ipcactors.Supervisor(socket_root=socket_dir, auth_key=KEY, hosts=hosts) as sup:
            with anyio.fail_after(20):
                with pytest.raises(ipcactors.SpawnError, match="host key is not in the known_h"):
                    await sup.spawn(echo, id="a", host="spoofed")
                with pytest.raises(ipcactors.SpawnError, match="refused the login of user 'ma"):
                    await sup.spawn(echo, id="b", host="mallory")
                with pytest.raises(ipcactors.SpawnError, match=r"'nowhere'.* is unreachable"):
                    await sup.spawn(echo, id="c", host="nowhere")
                # An address with colons is bracketed before its port; a timeout says so.
                with pytest.raises(
                    ipcactors.SpawnError,
                    match=r"'mute' \(.*@\[::1\]:\d+\) is unreachable: TimeoutError: no answer ",
                ):
                    await sup.spawn(echo, id="d", host="mute")
                assert sup.children == {}


@pytest.mark.parametrize("broken", ["python", "cwd"])
async def test_a_forkserver_that_cannot_start_says_why(
    anyio_backend: str,
    broken: str,
    socket_dir: str,
    ssh_server: SSHServer,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """The SpawnError points at the forkserver's output, prefixed [forkserver@host]: it must be
    there. A command that fails at once (no such python, no such cwd) ends its stdout and its
    stderr together; the stderr still on its way was dropped about one time in two."""
    change = {"python": "no-such-python3"} if broken == "python" else {"cwd": "/no/such/dir"}
    hosts = {"h": ssh_server.host(**change)}
    async with ipcactors.Supervisor(socket_root=socket_dir, auth_key=KEY, hosts=hosts) as sup:
        with anyio.fail_after(20), pytest.raises(ipcactors.SpawnError, match=r"\[forkserver@h\]"):
            await sup.spawn(echo, id="a", host="h")
    said = [line for line in capfd.readouterr().err.splitlines() if "[forkserver@h]" in line]
    assert said, "the forkserver's own output is missing"
    assert ("no-such-python3" if broken == "python" else "/no/such/dir") in "\n".join(said)


async def test_a_forkserver_command_that_exits_silently_gives_its_status(
    anyio_backend: str, socket_dir: str, ssh_server: SSHServer
) -> None:
    """A command that exits at once and prints nothing (python='/bin/false'): the SpawnError
    said its output above would say why, and there was none. It gives the exit status."""
    hosts = {"h": ssh_server.host(python="/bin/false")}
    async with ipcactors.Supervisor(socket_root=socket_dir, auth_key=KEY, hosts=hosts) as sup:
        with anyio.fail_after(20), pytest.raises(ipcactors.SpawnError) as caught:
            await sup.spawn(echo, id="a", host="h")
    assert "exited with status 1)" in str(caught.value)
    assert "says why" not in str(caught.value)  # (nothing printed to say it)


async def test_a_login_that_prints_to_stdout_is_named_as_the_cause(
    anyio_backend: str, socket_dir: str, ssh_server: SSHServer, tmp_path: pathlib.Path
) -> None:
    """A line on stdout before the forkserver's frames (a .bashrc echo, a 'Last login' line, a
    wrapper around python) is a SpawnError that says so and shows the line: it was
    'ExceptionGroup: unhandled errors in a TaskGroup (1 sub-exception)', no cause."""
    wrapper = tmp_path / "noisy-python"
    wrapper.write_text(f'#!/bin/sh\necho "Last login: today"\nexec {sys.executable} "$@"\n')
    wrapper.chmod(0o755)
    hosts = {"h": ssh_server.host(python=str(wrapper))}
    async with ipcactors.Supervisor(socket_root=socket_dir, auth_key=KEY, hosts=hosts) as sup:
        with anyio.fail_after(20), pytest.raises(ipcactors.SpawnError) as caught:
            await sup.spawn(echo, id="a", host="h")
    assert "not its protocol on stdout" in str(caught.value)
    assert "Last login: today" in str(caught.value)
    assert "ExceptionGroup" not in str(caught.value)


async def test_no_ssh_config_turns_the_host_key_check_off(
    anyio_backend: str,
    socket_dir: str,
    ssh_server: SSHServer,
    tmp_path: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """known_hosts=None means ~/.ssh/known_hosts, which must list the host's key, whatever
    ~/.ssh/config says: 'UserKnownHostsFile none' there turned asyncssh's check off, and the
    spawn went through to a host whose key nothing listed. A known_hosts file that cannot be
    read is said to be so (it was 'unreachable')."""
    ssh = tmp_path / ".ssh"
    ssh.mkdir(mode=0o700)
    (ssh / "config").write_text("Host *\n    UserKnownHostsFile none\n")
    monkeypatch.setenv("HOME", str(tmp_path))
    hosts = {"h": ssh_server.host(known_hosts=None)}
    async with ipcactors.Supervisor(socket_root=socket_dir, auth_key=KEY, hosts=hosts) as sup:
        with anyio.fail_after(20):
            with pytest.raises(ipcactors.SpawnError, match="cannot read its known_hosts") as e:
                await sup.spawn(echo, id="a", host="h")
            assert str(ssh / "known_hosts") in str(e.value)
            # Listed there, it is accepted.
            (ssh / "known_hosts").write_text(pathlib.Path(ssh_server.known_hosts).read_text())
            await sup.spawn(echo, id="b", host="h")


@pytest.mark.parametrize("file", ["a client key", "its known_hosts"])
async def test_a_client_key_or_known_hosts_that_is_not_one_is_named(
    anyio_backend: str, file: str, socket_dir: str, ssh_server: SSHServer, tmp_path: Any
) -> None:
    """docs/remote.md: a known_hosts file or client key that cannot be read (or is not a key)
    is a SpawnError naming it. Either one that cannot be parsed was reported as the forkserver
    failing to start, no file named (a known_hosts: 'ValueError: Invalid known hosts entry')."""
    garbage = tmp_path / "garbage"
    garbage.write_text("hello\n")  # neither a key nor a known_hosts line
    if file == "a client key":
        hosts = {"h": ssh_server.host(client_keys=(str(garbage),))}
    else:
        hosts = {"h": ssh_server.host(known_hosts=str(garbage))}
    async with ipcactors.Supervisor(socket_root=socket_dir, auth_key=KEY, hosts=hosts) as sup:
        with anyio.fail_after(20), pytest.raises(ipcactors.SpawnError) as caught:
            await sup.spawn(echo, id="a", host="h")
    assert f"cannot read {file}, {garbage}" in str(caught.value)


@pytest.mark.parametrize("interruption", ["stop", "aclose", "cancel"])
async def test_a_start_waiting_for_its_host_is_interrupted_at_once(
    anyio_backend: str, interruption: str, socket_dir: str, ssh_server: SSHServer
) -> None:
    """A spawn on a host whose SSH server accepts and never answers (connect_timeout=8):
    stop(id), the supervisor's aclose() and a cancellation of the spawn end it at once, as
    they do a local start. They waited for the connect to time out (7 s), and on Trio a
    cancelled spawn went on to raise its SpawnError out of the cancelled scope 8 s later."""
    with socket.socket() as mute:
        mute.bind(("127.0.0.1", 0))
        mute.listen(1)
        hosts = {"h": ssh_server.host(port=mute.getsockname()[1], connect_timeout=8.0)}
        async with ipcactors.Supervisor(socket_root=socket_dir, auth_key=KEY, hosts=hosts) as sup:
            outcome: list[BaseException] = []

            async def spawn() -> None:
                try:
                    await sup.spawn(echo, id="w", host="h")
                except Exception as exc:
                    outcome.append(exc)

            with anyio.fail_after(3):
                if interruption == "cancel":
                    with anyio.move_on_after(0.5) as waited:
                        await spawn()
                    assert waited.cancelled_caught
                    assert outcome == []
                    assert sup.children == {}
                    return
                async with anyio.create_task_group() as task_group:
                    task_group.start_soon(spawn)
                    await anyio.sleep(0.5)
                    await (sup.stop("w") if interruption == "stop" else sup.aclose())
    if interruption == "stop":
        assert isinstance(outcome[0], ipcactors.SpawnError), outcome
        assert "stopped before it was ready" in str(outcome[0])
    else:
        assert isinstance(outcome[0], ipcactors.ClosedError), outcome


@pytest.mark.parametrize("interruption", ["stop", "cancel"])
async def test_a_spawn_its_forkserver_does_not_answer_is_interrupted_at_once(
    anyio_backend: str, interruption: str, socket_dir: str, ssh_server: SSHServer
) -> None:
    """The host's forkserver does not answer a spawn (stopped here; a host swapping): stop(id)
    and a cancellation end it at once, as they do a local start. The spawn was shielded: they
    waited up to 30 s, and a cancelled spawn raised its SpawnError out of the cancelled scope.
    The child that starts once the forkserver answers is killed as its pid comes."""
    hosts = {"h": ssh_server.host()}
    async with ipcactors.Supervisor(socket_root=socket_dir, auth_key=KEY, hosts=hosts) as sup:
        with anyio.fail_after(20):
            first = await sup.spawn(echo, id="a", host="h")
        assert first.pid is not None
        forkserver = forkserver_of(first.pid)
        assert forkserver is not None
        outcome: list[BaseException] = []

        async def spawn() -> None:
            try:
                await sup.spawn(echo, id="b", host="h")
            except Exception as exc:
                outcome.append(exc)

        os.kill(forkserver, signal.SIGSTOP)
        try:
            with anyio.fail_after(3):
                if interruption == "cancel":
                    with anyio.move_on_after(0.5) as waited:
                        await spawn()
                    assert waited.cancelled_caught
                    assert outcome == []
                else:
                    async with anyio.create_task_group() as task_group:
                        task_group.start_soon(spawn)
                        await anyio.sleep(0.5)
                        await sup.stop("b")
                    assert isinstance(outcome[0], ipcactors.SpawnError), outcome
        finally:
            os.kill(forkserver, signal.SIGCONT)
        assert list(sup.children) == ["a"]
        with anyio.fail_after(10):
            assert await sup.request("a", "tag") is None  # the host serves on


async def test_hosts_need_auth_key_or_tls_and_known_names(anyio_backend: str) -> None:
    host = SSHHost("127.0.0.1")
    with pytest.raises(ipcactors.ConfigError, match="set auth_key"):
        ipcactors.Supervisor(hosts={"h": host})
    # Mutual TLS: the children have no certificate to show (each spawn failed, the TLSError
    # CERTIFICATE_REQUIRED the cause of its ChildExitedError).
    mutual = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    trustme.CA().issue_cert("127.0.0.1").configure_cert(mutual)
    mutual.verify_mode = ssl.CERT_REQUIRED
    with pytest.raises(ipcactors.ConfigError, match="client certificate"):
        ipcactors.Supervisor(hosts={"h": host}, tls=mutual)
    for listen in (("", 0), ("h\udce9", 0), ("127.0.0.1", -1), ("127.0.0.1",)):
        with pytest.raises(ipcactors.ConfigError, match="listen="):
            ipcactors.Supervisor(hosts={"h": host}, auth_key="k", listen=listen)  # type: ignore[arg-type]
    # listen= and tls= are the listener's that children on other hosts connect back to: without
    # hosts= there is none, and a tls= that encrypted nothing was taken without a word.
    one_way = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    trustme.CA().issue_cert("127.0.0.1").configure_cert(one_way)
    for options in ({"listen": ("127.0.0.1", 0)}, {"tls": one_way}, {"hosts": {}, "tls": one_way}):
        with pytest.raises(ipcactors.ConfigError, match="with hosts= only"):
            ipcactors.Supervisor(auth_key="k", **options)  # type: ignore[arg-type]
    with pytest.raises(ipcactors.ConfigError, match="SSHHost port"):
        SSHHost("127.0.0.1", port=0)
    with pytest.raises(ipcactors.ConfigError, match="lifeline_timeout"):
        SSHHost("127.0.0.1", keepalive=5, lifeline_timeout=1)
    for seconds in ("connect_timeout", "keepalive", "lifeline_timeout"):
        with pytest.raises(ipcactors.ConfigError, match=seconds):
            SSHHost("127.0.0.1", **{seconds: 10**400})  # (no float holds it)
    # Names env(1) would take as options or split ("-i" failed on the host, as env's usage).
    for env in ({"-i": "x"}, {"A B": "x"}, {"A\nB": "x"}, {"1A": "x"}, {"A": "x\0y"}):
        with pytest.raises(ipcactors.ConfigError, match="SSHHost env"):
            SSHHost("127.0.0.1", env=env)
    assert SSHHost("127.0.0.1", env={"PYTHONPATH": "/a b:/c", "_X1": ""}).env


@pytest.mark.parametrize("anyio_backend", ASYNCIO)
async def test_children_connect_back_over_tls(
    anyio_backend: str, socket_dir: str, ssh_server: SSHServer, tmp_path: Any
) -> None:
    """TLS instead of auth_key: the child verifies the supervisor's certificate with a CA file
    on its host; a CA that did not sign it fails the child's start at once."""
    ca, other = trustme.CA(), trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    other.cert_pem.write_to_path(str(tmp_path / "other.pem"))
    hosts = {
        "h1": ssh_server.host(tls_cafile=str(tmp_path / "ca.pem")),
        "h2": ssh_server.host(tls_cafile=str(tmp_path / "other.pem")),
    }
    async with ipcactors.Supervisor(socket_root=socket_dir, tls=context, hosts=hosts) as sup:
        with anyio.fail_after(20):
            await sup.spawn(echo, "secure", id="w1", host="h1")
            assert await sup.request("w1", "tag") == "secure"
            with pytest.raises(ipcactors.ChildExitedError, match="before it was ready"):
                await sup.spawn(echo, id="w2", host="h2")


@contextlib.contextmanager
def remote_forkserver(
    tmp_path: Any, lifeline_timeout: float
) -> Iterator[tuple[subprocess.Popen[bytes], list[Any]]]:
    """The remote forkserver as SSH starts it, here without SSH (its runtime directory under
    ``tmp_path``): the process and its "ready" message; killed as the block ends."""
    from ipcactors._supervision._remoteserver import FrameReader
    from ipcactors._supervision._ssh import _BOOTSTRAP

    env = {**os.environ, "PYTHONPATH": ROOT, "XDG_RUNTIME_DIR": str(tmp_path)}
    process = subprocess.Popen(
        [sys.executable, "-c", _BOOTSTRAP, "WARNING", "", str(lifeline_timeout)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
    )
    assert process.stdin is not None
    assert process.stdout is not None
    try:
        reader = FrameReader()
        messages: list[Any] = []
        while not messages:
            messages = reader.feed(os.read(process.stdout.fileno(), 4096))
        yield process, messages[0]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdin.close()
        process.stdout.close()


def test_a_remote_forkserver_sweeps_what_a_killed_one_left(short_tmp_path: Any) -> None:
    """A remote forkserver SIGKILLed (the OOM killer) cannot remove its socket directory; the
    next one started on that host removes it (as a local supervisor sweeps what a killed one
    left under its socket_root). It stayed there for good."""
    dirs = []
    for _ in range(2):
        with remote_forkserver(short_tmp_path, lifeline_timeout=10) as (_, ready):
            dirs.append(ready[3])
            assert os.path.isdir(dirs[-1])
    first, second = dirs
    assert not os.path.exists(first)  # swept by the second as it started
    assert os.path.isdir(second)  # (killed too: the next one would sweep it)


def test_remote_forkserver_exits_after_silence(short_tmp_path: Any) -> None:
    """Over a link that died without a word, the remote forkserver stops (and with it every
    child: its way out is the one the other tests see) once it heard nothing, not even a
    ping, for lifeline_timeout seconds; pings keep it alive."""
    from ipcactors._supervision._remoteserver import pack_frame

    with remote_forkserver(short_tmp_path, lifeline_timeout=0.5) as (process, ready):
        assert process.stdin is not None
        kind, _, pid, sock_dir = ready
        assert (kind, pid) == ("ready", process.pid)
        assert os.path.isdir(sock_dir)
        started = time.monotonic()
        while time.monotonic() - started < 1.0:  # twice the timeout, kept alive by pings
            process.stdin.write(pack_frame(["ping"]))
            process.stdin.flush()
            time.sleep(0.1)
            assert process.poll() is None
        process.wait(10)  # silent from here on: it stops by itself
        assert not os.path.exists(sock_dir)


def _sshd() -> str | None:
    found = shutil.which("sshd")
    if found is None and os.path.exists("/usr/sbin/sshd"):
        found = "/usr/sbin/sshd"
    return found


@pytest.fixture
def openssh_server(tmp_path: Any) -> Iterator[SSHServer]:
    """OpenSSH's sshd on loopback, when it is installed and we are root (it needs its
    privilege separation directory); else the test is skipped, saying why."""
    sshd = _sshd()
    if sshd is None:
        pytest.skip(
            "OpenSSH's sshd is not installed (Debian: openssh-server); asyncssh's server "
            "covers the same ground in the tests above"
        )
    if os.geteuid() != 0:
        pytest.skip("sshd runs here only as root (it needs /run/sshd and to switch users)")
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    client_key = asyncssh.generate_private_key("ssh-ed25519")
    host_key.write_private_key(str(tmp_path / "host_key"))
    os.chmod(tmp_path / "host_key", 0o600)
    client_key.write_private_key(str(tmp_path / "client_key"))
    client_key.write_public_key(str(tmp_path / "authorized_keys"))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    user = "root"
    config = tmp_path / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {tmp_path}/host_key\n"
        f"AuthorizedKeysFile {tmp_path}/authorized_keys\nPidFile {tmp_path}/sshd.pid\n"
        "StrictModes no\nUsePAM no\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nPubkeyAuthentication yes\n"
        f"PermitRootLogin prohibit-password\nAllowUsers {user}\n"
    )
    process = subprocess.Popen([sshd, "-D", "-e", "-f", str(config)], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert process.poll() is None, "sshd did not start"
                assert time.monotonic() < deadline, "sshd did not listen within 10 s"
                time.sleep(0.05)
        known_hosts = tmp_path / "known_hosts"
        public = host_key.export_public_key("openssh").decode().strip()
        known_hosts.write_text(f"[127.0.0.1]:{port} {public}\n")
        yield SSHServer(process, port, str(tmp_path / "client_key"), str(known_hosts), user)
    finally:
        process.terminate()
        process.wait(10)


@pytest.mark.parametrize("anyio_backend", ASYNCIO)
async def test_openssh_server(
    anyio_backend: str, socket_dir: str, openssh_server: SSHServer
) -> None:
    """The same launcher against OpenSSH's sshd: spawn, answer, SIGKILL, restart, and nothing
    left on the host after shutdown."""
    async with ipcactors.Supervisor(
        socket_root=socket_dir, auth_key=KEY, hosts={"h1": openssh_server.host()}
    ) as sup:
        with anyio.fail_after(20):
            info = await sup.spawn(echo, "openssh", id="w1", host="h1")
            assert info.pid is not None
            assert await sup.request("w1", "tag") == "openssh"
            forkserver = forkserver_of(info.pid)
            os.kill(info.pid, signal.SIGKILL)
            with anyio.fail_after(10):
                while sup.children["w1"].restarts == 0 or not sup.children["w1"].running:
                    await anyio.sleep(0.05)
            assert await sup.request("w1", "tag") == "openssh"
            new = sup.children["w1"].pid
    await wait_gone([info.pid, new, forkserver], 5)  # type: ignore[list-item]


@pytest.mark.slow
def test_neural_graph_example_places_layers_on_hosts(
    ssh_server: SSHServer, short_tmp_path: Any
) -> None:
    """examples/neural_graph.py --hosts: layers on two hosts (both this SSH server) and here,
    a layer on a host killed and restarted mid-run, every batch still right."""
    host = ssh_server.host()
    fields = (
        f'address = "{host.address}"\nport = {host.port}\nuser = "{host.user}"\n'
        f'client_keys = ["{ssh_server.client_key}"]\nknown_hosts = "{host.known_hosts}"\n'
        f'python = "{host.python}"\ncwd = "{ROOT}"\nenv = {{ PYTHONPATH = "{ROOT}" }}\n'
    )
    config = short_tmp_path / "hosts.toml"
    config.write_text(
        f"[hosts.a]\n{fields}\n[hosts.b]\n{fields}\n"
        '[placement]\nlayer-1 = "a"\nlayer-2 = "a"\nlayer-3 = "b"\n'
    )
    env = {**os.environ, "PYTHONPATH": ROOT, "XDG_RUNTIME_DIR": str(short_tmp_path)}
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "examples", "neural_graph.py"),
            "--hosts",
            str(config),
            "--activation-mib",
            "1",  # the activations phase, small: this test is about placement
        ],
        capture_output=True,
        text=True,
        timeout=90,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    out = result.stdout
    assert result.returncode == 0, f"{out}\n{result.stderr}"
    for layer, where in (("layer-1", " on a"), ("layer-2", " on a"), ("layer-3", " on b")):
        assert f"node {layer} started{where} (pid" in out
    assert "node layer-4 started (pid" in out
    assert "killing node layer-3" in out
    assert "node layer-3 restarted" in out
    assert "all 12 batches match the single-process computation" in out


_SUPERVISOR_SCRIPT = """
import json, sys
import anyio, ipcactors, _workers

async def main(root, fields):
    fields["client_keys"] = tuple(fields["client_keys"])
    host = ipcactors.SSHHost(**fields)
    async with ipcactors.Supervisor(socket_root=root, auth_key="k", hosts={"h": host}) as sup:
        for i in range(2):
            await sup.spawn(_workers.echo, id=f"w{i}", host="h")
        print(json.dumps([sup.children[f"w{i}"].pid for i in range(2)]), flush=True)
        await anyio.sleep_forever()

anyio.run(main, sys.argv[1], json.loads(sys.argv[2]))
"""


@pytest.mark.parametrize("anyio_backend", ASYNCIO)
async def test_supervisor_killed_leaves_nothing_on_the_host(
    anyio_backend: str, ssh_server: SSHServer
) -> None:
    """SIGKILL of the supervisor closes its SSH connection: the remote forkserver and the
    children there are gone within moments (the channel's end is their lifeline)."""
    host = ssh_server.host()
    fields = {
        name: getattr(host, name)
        for name in ("address", "port", "user", "client_keys", "known_hosts", "python", "cwd")
    }
    fields.update(env=host.env, keepalive=5.0, lifeline_timeout=60.0)  # not the silence timer
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, TESTS])}
    # Its own socket root: a killed supervisor leaves its directory (the next one sweeps it).
    socket_root = tempfile.mkdtemp(prefix="ia-", dir="/tmp")
    process = await anyio.open_process(
        [sys.executable, "-c", _SUPERVISOR_SCRIPT, socket_root, json.dumps(fields)], env=env
    )
    async with process:
        try:
            assert process.stdout is not None
            line = b""
            with anyio.fail_after(20):
                while not line.endswith(b"\n"):
                    line += await process.stdout.receive()
            pids = json.loads(line)
            remote = [*pids, forkserver_of(pids[0])]
        finally:
            process.kill()
            await process.wait()
            shutil.rmtree(socket_root, ignore_errors=True)
    await wait_gone(remote, 5)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture
def namespaces() -> Iterator[dict[str, str]]:
    """Three hosts: network namespaces "sup", "h1", "h2", the supervisor's joined to each of
    the others by a veth pair (192.0.2.0/24 to h1, 198.51.100.0/24 to h2: ranges reserved for
    documentation, only inside these namespaces). Needs root and iproute2."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 to create network namespaces")
    names = {role: f"ia{os.getpid()}{role}" for role in ("sup", "h1", "h2")}
    made = []
    try:
        for ns in names.values():
            try:
                _ip("netns", "add", ns)
            except subprocess.CalledProcessError as exc:
                pytest.skip(f"cannot create network namespaces here: {exc.stderr!r}")
            made.append(ns)
        _ip("-n", names["sup"], "link", "set", "lo", "up")
        for host, net in (("h1", "192.0.2"), ("h2", "198.51.100")):
            _ip("-n", names["sup"], "link", "add", f"to-{host}", "type", "veth",
                "peer", "name", "to-sup", "netns", names[host])  # fmt: skip
            _ip("-n", names["sup"], "addr", "add", f"{net}.1/24", "dev", f"to-{host}")
            _ip("-n", names["sup"], "link", "set", f"to-{host}", "up")
            _ip("-n", names[host], "addr", "add", f"{net}.2/24", "dev", "to-sup")
            _ip("-n", names[host], "link", "set", "to-sup", "up")
            _ip("-n", names[host], "link", "set", "lo", "up")
        yield names
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


@pytest.mark.slow
def test_neural_graph_across_network_namespaces(
    namespaces: dict[str, str], short_tmp_path: pathlib.Path
) -> None:
    """The hosts are network namespaces: an SSH server in each of h1 and h2, the example's
    supervisor in a third, layers placed on both hosts from the config; the children connect
    back across the veth links (to the supervisor's address on each SSH connection)."""
    client_key = asyncssh.generate_private_key("ssh-ed25519")
    client_key.write_private_key(str(short_tmp_path / "client_key"))
    client_key.write_public_key(str(short_tmp_path / "client_key.pub"))
    user = os.environ.get("USER") or "tester"
    servers: list[subprocess.Popen[bytes]] = []
    config = ""
    try:
        for host, address in (("h1", "192.0.2.2"), ("h2", "198.51.100.2")):
            host_key = asyncssh.generate_private_key("ssh-ed25519")
            host_key.write_private_key(str(short_tmp_path / f"{host}_key"))
            server = subprocess.Popen(
                ["ip", "netns", "exec", namespaces[host], sys.executable,
                 os.path.join(TESTS, "_sshserver.py"), address, str(short_tmp_path / f"{host}_key"),
                 str(short_tmp_path / "client_key.pub"), user],
                stdout=subprocess.PIPE,
            )  # fmt: skip
            servers.append(server)
            assert server.stdout is not None
            port = int(server.stdout.readline())
            public = host_key.export_public_key("openssh").decode().strip()
            (short_tmp_path / f"{host}_known").write_text(f"[{address}]:{port} {public}\n")
            config += (
                f'[hosts.{host}]\naddress = "{address}"\nport = {port}\nuser = "{user}"\n'
                f'client_keys = ["{short_tmp_path / "client_key"}"]\n'
                f'known_hosts = "{short_tmp_path / f"{host}_known"}"\n'
                f'python = "{sys.executable}"\ncwd = "{ROOT}"\n'
                f'env = {{ PYTHONPATH = "{ROOT}", XDG_RUNTIME_DIR = "{short_tmp_path}" }}\n\n'
            )
        config = (
            'listen = ["0.0.0.0", 0]\n\n' + config
            + '[placement]\nlayer-1 = "h1"\nlayer-2 = "h2"\nlayer-3 = "h2"\n'
        )  # fmt: skip
        (short_tmp_path / "hosts.toml").write_text(config)
        env = {**os.environ, "PYTHONPATH": ROOT, "XDG_RUNTIME_DIR": str(short_tmp_path)}
        result = subprocess.run(
            ["ip", "netns", "exec", namespaces["sup"], sys.executable,
             os.path.join(ROOT, "examples", "neural_graph.py"), "--hosts",
             str(short_tmp_path / "hosts.toml"), "--activation-mib", "1"],
            capture_output=True, text=True, timeout=90, stdin=subprocess.DEVNULL, env=env,
        )  # fmt: skip
    finally:
        for server in servers:
            server.terminate()
            server.wait(10)
            assert server.stdout is not None
            server.stdout.close()
    out = result.stdout
    assert result.returncode == 0, f"{out}\n{result.stderr}"
    for layer, host in (("layer-1", "h1"), ("layer-2", "h2"), ("layer-3", "h2")):
        assert f"node {layer} started on {host} (pid" in out
    assert "killing node layer-3" in out
    assert "node layer-3 restarted" in out
    assert "all 12 batches match the single-process computation" in out
