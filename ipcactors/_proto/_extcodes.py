"""msgpack extension type codes on the wire (docs/protocol.md §2): below both the protocol core
and ``_numpy``, so that each can name them without importing the other (and decoding anything
but an array never imports numpy)."""

from __future__ import annotations

from typing import Final

__all__ = ["NUMPY_EXT_CODE", "SHARED_EXT_CODE"]

NUMPY_EXT_CODE: Final = 78  # numpy arrays: dtype, shape, raw bytes
SHARED_EXT_CODE: Final = 79  # numpy arrays in a shared segment: segment, offset, dtype, shape
