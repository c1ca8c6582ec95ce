"""Descriptor passing on Unix streams (``_transports._fds``) and the checks on passed segments
(``_transports._memfd``), on asyncio, uvloop and Trio, against a raw socket as the peer."""

from __future__ import annotations

import array
import fcntl
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from _backends import _uvloop_global_state, anyio_backend  # noqa: F401
from anyio.abc import SocketAttribute

from ipcactors import DecodeError
from ipcactors._proto._messages import FdFrame
from ipcactors._transports._fds import MAX_FDS_PER_MESSAGE, FdSocketStream, can_pass_fds
from ipcactors._transports._memfd import PAGE, Segment, check_segment, map_segment
from ipcactors._transports._transport import UnixTransport
from ipcactors._transports._writing import coalesce

pytestmark = pytest.mark.anyio


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    yield ours, theirs
    ours.close()
    theirs.close()


def _send_fds(sock: socket.socket, data: bytes, fds: list[int]) -> None:
    sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])


async def test_bytes_and_a_segment_pass_and_the_fd_arrives_close_on_exec(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    stream = FdSocketStream(ours.dup())
    peer = FdSocketStream(theirs.dup())
    segment = Segment(PAGE)
    segment.map[:5] = b"hello"
    try:
        assert can_pass_fds(stream)
        with anyio.fail_after(5):
            await peer.send(b"plain")
            assert await stream.receive() == b"plain"
            await peer.send(FdFrame(b"with a descriptor", (segment.fd,)))
            assert await stream.receive() == b"with a descriptor"
            (fd,) = stream.take_fds()
            try:
                assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
                check_segment(fd, PAGE, PAGE)
                view = map_segment(fd, PAGE).view
            finally:
                os.close(fd)
            assert view[:5] == b"hello"  # the same memory, mapped after the fd was closed
            assert view.readonly
            segment.map[:5] = b"HELLO"
            assert view[:5] == b"HELLO"
            del view  # unmapped with its last view
            # A large write goes through whole, descriptors on its first byte only.
            blob = os.urandom(3 * 1024 * 1024)
            async with anyio.create_task_group() as tg:
                tg.start_soon(peer.send_fds, blob, [segment.fd])
                got = bytearray()
                while len(got) < len(blob):
                    got += await stream.receive(1 << 20)
            assert got == blob
            assert stream.pending_fds == 1
            # Never claimed: closed with the stream (the leak check would see it otherwise).
    finally:
        segment.close()
        await stream.aclose()
        await peer.aclose()


async def test_a_plain_unix_stream_does_not_pass_fds_and_the_fd_stream_is_opt_in(
    socket_dir: str,
) -> None:
    for pass_fds in (False, True):
        transport = UnixTransport(os.path.join(socket_dir, f"s{pass_fds}"), pass_fds=pass_fds)
        listener = await transport.listen(5)
        try:
            with anyio.fail_after(5):
                client = await transport.connect()
                server, _ = await listener.accept()
                assert can_pass_fds(client) is pass_fds
                assert can_pass_fds(server) is pass_fds
                await client.send(b"ping")
                assert await server.receive() == b"ping"
                await client.aclose()
                await server.aclose()
        finally:
            await listener.aclose()


async def test_more_fds_than_a_message_may_carry_is_a_protocol_error(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    stream = FdSocketStream(ours.dup())
    fds = [os.open("/dev/null", os.O_RDONLY) for _ in range(MAX_FDS_PER_MESSAGE + 2)]
    try:
        _send_fds(theirs, b"x", fds)
        with anyio.fail_after(5), pytest.raises(DecodeError, match="more than 4 file desc"):
            await stream.receive()
        assert stream.pending_fds == 0  # those that fitted were closed (leak check)
    finally:
        for fd in fds:
            os.close(fd)
        await stream.aclose()


async def test_fds_per_connection_are_capped(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair
    stream = FdSocketStream(ours.dup(), max_fds=2)
    fd = os.open("/dev/null", os.O_RDONLY)
    try:
        with anyio.fail_after(5):
            for _ in range(2):
                _send_fds(theirs, b"x", [fd])
                assert await stream.receive() == b"x"
            _send_fds(theirs, b"x", [fd])
            with pytest.raises(DecodeError, match="more than 2 file descriptors over"):
                await stream.receive()
        assert stream.pending_fds == 2  # claimed by nobody: closed with the stream
    finally:
        os.close(fd)
        await stream.aclose()


async def test_credentials_instead_of_fds_are_a_protocol_error(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)  # asks for ancillary we refuse
    stream = FdSocketStream(ours.dup())
    try:
        theirs.send(b"x")
        with anyio.fail_after(5), pytest.raises(DecodeError, match="other than file desc"):
            await stream.receive()
    finally:
        await stream.aclose()


async def test_end_of_stream_and_closed(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair
    stream = FdSocketStream(ours.dup())
    theirs.shutdown(socket.SHUT_WR)
    with anyio.fail_after(5):
        with pytest.raises(anyio.EndOfStream):
            await stream.receive()
        await stream.aclose()
        with pytest.raises(anyio.ClosedResourceError):
            await stream.receive()
        with pytest.raises(anyio.ClosedResourceError):
            await stream.send(b"x")


async def _receive_exactly(stream: FdSocketStream, size: int) -> bytes:
    received = b""
    while len(received) < size:  # (a read ahead asks for what the last receive did)
        received += await stream.receive(size - len(received))
    return received


async def test_a_descriptor_comes_with_the_last_bytes_of_its_read_never_before_its_write(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """The kernel may join the bytes written before a descriptor's write to the read that
    brings the descriptor. Whoever receives the read in parts (``receive(n)`` of a read the
    loop made ahead, on asyncio) must get the descriptor with its last part, never with bytes
    written before it: the frames those bytes end would meet a descriptor they cannot claim."""
    ours, theirs = pair
    stream = FdSocketStream(ours.dup())
    fd = os.open("/dev/null", os.O_RDONLY)
    try:
        with anyio.fail_after(5):
            theirs.send(b"first")
            assert await stream.receive() == b"first"  # (asyncio: reading ahead from here)
            # Back to back: one read brings both writes (on asyncio, the loop's read ahead).
            theirs.send(b"before")
            _send_fds(theirs, b"with", [fd])
            await anyio.sleep(0.02)
            assert await stream.receive(6) == b"before"
            assert stream.pending_fds == 0, "a descriptor came with the bytes before its write"
            assert await stream.receive(4) == b"with"
            assert stream.pending_fds == 1
            for taken in stream.take_fds():
                os.close(taken)
            # A write of its own, received in parts: the descriptor comes with one of them
            # (with the first from the kernel, with the last from a read ahead), never lost.
            _send_fds(theirs, b"again", [fd])
            await anyio.sleep(0.02)
            theirs.send(b"after")
            await anyio.sleep(0.02)
            assert await stream.receive(2) == b"ag"
            assert await _receive_exactly(stream, 3) == b"ain"
            assert stream.pending_fds == 1
            assert await _receive_exactly(stream, 5) == b"after"
            assert stream.pending_fds == 1  # unclaimed: closed with the stream (leak check)
    finally:
        os.close(fd)
        await stream.aclose()


async def test_a_peer_pushes_no_more_than_the_read_ahead_bound_while_nobody_receives(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    stream = FdSocketStream(ours.dup())
    theirs.setblocking(False)
    pattern = bytes(range(256)) * 257  # byte i of the stream is i % 256
    pushed = 0
    try:
        with anyio.fail_after(10):
            theirs.send(b"x")
            assert await stream.receive() == b"x"  # (asyncio: reading ahead from here)
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline and pushed < 64 * 1024 * 1024:
                try:
                    pushed += theirs.send(pattern[pushed % 256 :])
                except BlockingIOError:
                    await anyio.sleep(0.01)  # the loop may read ahead meanwhile
            buffers = theirs.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) + ours.getsockopt(
                socket.SOL_SOCKET, socket.SO_RCVBUF
            )
            assert pushed <= stream.read_ahead + buffers
            received = bytearray()
            while len(received) < pushed:  # all of it, in order
                received += await stream.receive(1 << 20)
            assert received == (pattern[:256] * (pushed // 256 + 1))[:pushed]
    finally:
        await stream.aclose()


async def test_descriptors_read_ahead_and_never_received_are_closed_with_the_stream(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    stream = FdSocketStream(ours.dup())
    fd = os.open("/dev/null", os.O_RDONLY)
    try:
        with anyio.fail_after(5):
            theirs.send(b"x")
            assert await stream.receive() == b"x"
            _send_fds(theirs, b"with", [fd])
            await anyio.sleep(0.05)  # read ahead on asyncio, still in the kernel on Trio
    finally:
        os.close(fd)
        await stream.aclose()  # the received duplicate is closed: the leak check says so


def test_a_frame_with_fds_is_written_on_its_own() -> None:
    frames: list[Any] = [b"a", b"b", FdFrame(b"announce", (7,)), b"c"]
    chunks = list(coalesce(frames))
    assert chunks == [b"ab", b"announce", b"c"]
    assert isinstance(chunks[1], FdFrame)
    assert chunks[1].fds == (7,)


# --- hostile segments -------------------------------------------------------------------------


def test_a_sealed_segment_of_the_announced_size_passes() -> None:
    segment = Segment(4 * PAGE)
    try:
        check_segment(segment.fd, 4 * PAGE, 4 * PAGE)
        with pytest.raises(DecodeError, match="has 16384 bytes, 8192 were announced"):
            check_segment(segment.fd, 2 * PAGE, 4 * PAGE)
        with pytest.raises(DecodeError, match="the limit is 8192"):
            check_segment(segment.fd, 4 * PAGE, 2 * PAGE)
        with pytest.raises(DecodeError, match="multiples"):
            check_segment(segment.fd, 100, 4 * PAGE)
        with pytest.raises(OSError):
            os.ftruncate(segment.fd, PAGE)  # the seal holds against its owner too
    finally:
        segment.close()


def test_a_pipe_a_tmp_file_and_an_unsealed_memfd_are_refused() -> None:
    read_end, write_end = os.pipe()
    with tempfile.TemporaryFile(dir="/tmp") as tmp:
        tmp.truncate(PAGE)
        unsealed = os.memfd_create("unsealed", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        shrinkable = os.memfd_create("grow-only", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(unsealed, PAGE)
            os.ftruncate(shrinkable, PAGE)
            fcntl.fcntl(shrinkable, fcntl.F_ADD_SEALS, fcntl.F_SEAL_GROW)
            with pytest.raises(DecodeError, match="not a regular file"):
                check_segment(read_end, PAGE, PAGE)
            for fd in (tmp.fileno(), unsealed, shrinkable):
                with pytest.raises(DecodeError, match="not sealed"):
                    check_segment(fd, PAGE, PAGE)
        finally:
            for fd in (read_end, write_end, unsealed, shrinkable):
                os.close(fd)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_a_peek_leaves_bytes_and_descriptors_to_the_reader(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """``peek`` (on Trio, a requester looking at the kernel while the reader waits) returns
    plain bytes without taking them; bytes that bring descriptors it declines, closing the
    duplicates a peek makes, so that the reader still gets both bytes and descriptors, and none
    leaks."""
    ours, theirs = pair
    stream = FdSocketStream(ours.dup())
    segment = Segment(PAGE)
    try:
        theirs.sendall(b"plain")
        assert stream.peek(100) == b"plain"
        assert stream.extra(SocketAttribute.raw_socket).recv(3) == b"pla"  # (as a peeker takes)
        assert stream.peek(100) == b"in"
        with anyio.fail_after(5):
            assert await stream.receive() == b"in"
        before = _open_fds()
        _send_fds(theirs, b"with a descriptor", [segment.fd])
        for _ in range(3):
            assert stream.peek(100) == b""
        assert _open_fds() == before
        with anyio.fail_after(5):
            assert await stream.receive() == b"with a descriptor"
        (fd,) = stream.take_fds()
        os.close(fd)
        assert stream.peek(100) == b""  # nothing left
    finally:
        await stream.aclose()
        segment.close()
