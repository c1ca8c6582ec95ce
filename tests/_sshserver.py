"""An SSH server for the tests (asyncssh's own), run as a process of its own:

    python tests/_sshserver.py HOST HOST_KEY AUTHORIZED_KEY USER

It listens on HOST (a free port), prints the port on stdout, and then runs each command it is
asked to with ``/bin/sh -c`` as this process's child, its stdin, stdout and stderr on the SSH
channel, as sshd does (when the channel or the connection ends, the command's stdin is closed).
It admits only USER with the one AUTHORIZED_KEY (a public key file). It stops on SIGTERM, at
once (the commands it runs see their channel end, or their parent die).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import asyncssh


class _Server(asyncssh.SSHServer):
    def __init__(self, user: str, key: asyncssh.SSHKey) -> None:
        self._user = user
        self._key = key

    def begin_auth(self, username: str) -> bool:
        return True  # always ask: a wrong user is refused like a wrong key

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        return username == self._user and key.public_data == self._key.public_data


async def _run_command(process: asyncssh.SSHServerProcess[bytes]) -> None:
    child = await asyncio.create_subprocess_exec(
        "/bin/sh",
        "-c",
        process.command or "",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    await process.redirect(stdin=child.stdin)
    try:
        # All it wrote goes out before its exit status, as sshd does it (a redirect of its
        # output would let the exit overtake what is still on its way).
        assert child.stdout is not None
        assert child.stderr is not None
        await asyncio.gather(
            _copy(child.stdout, process.stdout), _copy(child.stderr, process.stderr)
        )
        code = await child.wait()
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
    process.exit(code)


async def _copy(source: asyncio.StreamReader, sink: asyncssh.SSHWriter[bytes]) -> None:
    try:
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
    except (asyncssh.Error, BrokenPipeError, ConnectionError):
        pass  # the channel is gone: what is left has nowhere to go


async def main() -> None:
    host, host_key, authorized, user = sys.argv[1:5]
    key = asyncssh.read_public_key(authorized)
    server = await asyncssh.create_server(
        lambda: _Server(user, key),
        host,
        0,
        server_host_keys=[host_key],
        process_factory=_run_command,
        encoding=None,
        allow_scp=False,
    )
    port = server.sockets[0].getsockname()[1]
    print(port, flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    server.close()
    # At once: what the connections left (asyncssh's pending writes) is not ours to flush, and
    # would only warn at interpreter exit.
    os._exit(0)


if __name__ == "__main__":
    asyncio.run(main())
