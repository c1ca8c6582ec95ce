"""Sealed memfd segments: anonymous shared memory that a peer can map but never resize.

A segment is a ``memfd_create`` file (``MFD_CLOEXEC | MFD_ALLOW_SEALING``), sized once and
sealed with ``F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL``, then mapped. Its descriptor is passed
to the peer once (``_fds``); the peer checks it (:func:`check_segment`), maps it and closes it
at once, so neither side holds a descriptor per array and nothing has a name: when both
processes are gone (even by SIGKILL) the kernel frees the memory.

Invariants:
- :func:`check_segment` is the gate for every descriptor a peer passes: a regular file (not a
  pipe, socket or device), exactly the announced size, within the limit, and sealed against
  shrinking and growing. A file that could shrink under our mapping would SIGBUS us; one that
  could grow, or is sparse beyond its announcement, could make us allocate without bound.
- Mappings are whole segments, made with libc's ``mmap`` (Python's ``mmap`` object keeps a
  duplicate of the descriptor open for its life: one descriptor per array held). A mapping is a
  ``memoryview`` that unmaps itself once nothing refers to it: a receiver's arrays keep it
  alive, so they outlive the connection and the peer.
"""

from __future__ import annotations

import ctypes
import fcntl
import mmap
import os
import stat
import weakref
from typing import Final

from .._errors import DecodeError

__all__ = [
    "PAGE",
    "Mapping",
    "Segment",
    "check_segment",
    "drop_pages",
    "map_segment",
    "memfd_supported",
]

PAGE: Final = mmap.PAGESIZE
_SEALS: Final = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
_ALL_SEALS: Final = _SEALS | fcntl.F_SEAL_SEAL
_MADV_DONTNEED: Final = 4

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_MAP_FAILED: Final = ctypes.c_void_p(-1).value


class Mapping:
    """A mapped segment: ``view`` (bytes, read-only unless mapped writable) and its address."""

    __slots__ = ("address", "view")

    def __init__(self, fd: int, size: int, prot: int, flags: int) -> None:
        address = _libc.mmap(None, size, prot, flags, fd, 0)
        if address is None or address == _MAP_FAILED:
            code = ctypes.get_errno()
            raise OSError(code, f"mmap: {os.strerror(code)}")
        buffer = (ctypes.c_char * size).from_address(address)
        # Unmapped when the last view of it (an array anywhere) is gone.
        weakref.finalize(buffer, _libc.munmap, address, size)
        view = memoryview(buffer).cast("B")
        self.view = view if prot & mmap.PROT_WRITE else view.toreadonly()
        self.address: int = address


def drop_pages(mapping: Mapping, offset: int, size: int) -> None:
    """Forget the private copies of the pages in ``[offset, offset + size)`` of a private
    mapping: they read the file again."""
    start = offset - offset % PAGE
    if size > 0:
        _libc.madvise(mapping.address + start, offset + size - start, _MADV_DONTNEED)


def memfd_supported() -> bool:
    """Whether this system has sealed memfds (Linux): the shared-memory path needs them."""
    return hasattr(os, "memfd_create") and hasattr(fcntl, "F_ADD_SEALS")


class Segment:
    """One sealed memfd, sized and mapped read-write by its owner."""

    __slots__ = ("fd", "map", "size")

    def __init__(self, size: int) -> None:
        if size <= 0 or size % PAGE:
            raise ValueError(f"a segment is a positive multiple of {PAGE} bytes, not {size}")
        fd = os.memfd_create("ipcactors", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(fd, size)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _ALL_SEALS)
            self.map = Mapping(fd, size, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED).view
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        self.size = size

    def close(self) -> None:
        """Close the descriptor; the mapping lives on while arrays use it."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def check_segment(fd: int, size: int, limit: int) -> None:
    """Raise :class:`DecodeError` unless ``fd`` is a regular file of exactly ``size`` bytes
    (a positive multiple of the page size, at most ``limit``) sealed against shrink and grow."""
    if size <= 0 or size % PAGE or size > limit:
        raise DecodeError(
            f"a shared segment of {size} bytes was announced (the limit is {limit} bytes, in "
            f"multiples of {PAGE})"
        )
    try:
        info = os.fstat(fd)
    except OSError as exc:
        raise DecodeError(f"a passed descriptor cannot be inspected: {exc}") from None
    if not stat.S_ISREG(info.st_mode):
        raise DecodeError("a passed descriptor is not a regular file (a pipe, socket or device)")
    if info.st_size != size:
        raise DecodeError(f"a passed segment has {info.st_size} bytes, {size} were announced")
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    except OSError:
        seals = 0  # EINVAL: a file that cannot be sealed at all (not a memfd or shmem)
    if seals & _SEALS != _SEALS:
        raise DecodeError(
            "a passed segment is not sealed against shrinking and growing (it could be "
            "truncated under our mapping)"
        )


def map_segment(fd: int, size: int, *, private: bool = False) -> Mapping:
    """Map a checked segment: read-only and shared, or ``private`` (copy-on-write: writes stay
    in this process). The descriptor may be closed at once."""
    if private:
        return Mapping(fd, size, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_PRIVATE)
    return Mapping(fd, size, mmap.PROT_READ, mmap.MAP_SHARED)
