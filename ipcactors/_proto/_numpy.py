"""numpy arrays on the wire: a msgpack extension type carrying dtype, shape and the raw bytes.

Invariants owned here:
- No pickle, ever: only plain numeric, boolean, complex, datetime, bytes and unicode dtypes are
  carried; object arrays (and structured/void dtypes, whose layout ``dtype.str`` cannot describe)
  are refused with :class:`EncodeError` on the sending side and a :class:`DecodeError` on the
  receiving side.
- Decoding is bounded: the header is parsed with fixed limits (dtype text ≤ 32 bytes, ≤ 32
  dimensions) and the byte count must equal ``prod(shape) × itemsize`` exactly, so an array never
  takes more memory than the frame that carried it.
- This module imports numpy; ``_msgpack`` imports it only when an array is sent (numpy is then
  already loaded) or received, so ``import ipcactors`` stays cheap and numpy stays optional.

Layout of the extension's payload (all integers big-endian)::

    u8 version (1) | u8 n | n bytes dtype.str (ASCII, e.g. "<f8") | u8 ndim | ndim × u64 | data

``data`` is the array in C order. Arrays decode as writable, C-contiguous arrays owning their
memory; numpy scalars (``np.int64(3)``) are sent as plain msgpack numbers.

An array in a shared segment (extension 79, docs/protocol.md 5.4) names its place instead of
carrying its bytes; its header is the same, with no data::

    u8 version (1) | u32 segment | u64 offset | u8 n | dtype.str | u8 ndim | ndim × u64

Large arrays travel out of band (``_msgpack``): :func:`array_parts` gives the header and a flat
byte view of the array's own memory (copied only if it is not C-contiguous), and a receiver that
read the header (:func:`parse_header`) receives the data straight into the array it allocates
(:func:`empty_array`), after checking the byte count against what the frame announced.
Any CPU object with ``__dlpack__`` (a torch tensor, a jax or cupy CPU array) is accepted
through ``np.from_dlpack`` (:func:`from_dlpack`) and arrives as a numpy array.
"""

from __future__ import annotations

import re
import struct
from typing import Any, Final

import msgpack
import numpy as np

from .._errors import DecodeError, EncodeError
from ._extcodes import NUMPY_EXT_CODE, SHARED_EXT_CODE

__all__ = [
    "NUMPY_EXT_CODE",
    "array_parts",
    "decode_array",
    "decode_shared",
    "empty_array",
    "encode_numpy",
    "from_dlpack",
    "header_size",
    "parse_header",
    "shared_reference",
]

_VERSION: Final = 1
_MAX_DTYPE_TEXT: Final = 32
_MAX_NDIM: Final = 32
_DIM: Final = struct.Struct(">Q")
_PLACE: Final = struct.Struct(">BIQ")  # version, segment, offset
# What `dtype.str` looks like for the kinds we carry: byte order, kind, item size, and a unit
# for datetime64/timedelta64 (e.g. "<M8[ns]", "<m8[25s]"). The digits are bounded by the text's
# 32 bytes only (the protocol's rule): "|S1000000" and "<M8[10000000ns]" are numpy's own.
_DTYPE_TEXT: Final = re.compile(r"[<>|=][biufcmMSU][0-9]{1,20}(\[[0-9]{0,20}[A-Za-z]{1,3}\])?")
_KINDS: Final = frozenset("biufcmMSU")
_DLPACK_CPU: Final = 1  # DLDeviceType kDLCPU


def encode_numpy(obj: Any) -> Any:
    """msgpack ``default`` hook for numpy values: arrays become the extension type, numpy
    scalars plain msgpack values. Raises :class:`EncodeError` for what cannot be carried."""
    if isinstance(obj, np.ndarray):
        return msgpack.ExtType(NUMPY_EXT_CODE, _array_payload(obj))
    if isinstance(obj, np.bool_ | np.integer | np.floating):
        return obj.item()
    if isinstance(obj, np.generic):  # complex, datetime64, ...: as a 0-d array
        return msgpack.ExtType(NUMPY_EXT_CODE, _array_payload(np.asarray(obj)))
    raise TypeError(f"can not serialize {type(obj).__name__!r} object")


def from_dlpack(obj: Any) -> np.ndarray[Any, Any]:
    """A numpy array sharing the memory of a CPU object with ``__dlpack__`` (a torch tensor).
    Raises :class:`EncodeError` for what numpy cannot take (a GPU tensor, one needing grad)."""
    device = getattr(obj, "__dlpack_device__", None)
    if device is not None and device()[0] != _DLPACK_CPU:
        raise EncodeError(
            f"cannot send a {type(obj).__name__} on device {device()}: only CPU tensors travel "
            "(call .cpu() on a torch tensor first)"
        )
    try:
        return np.from_dlpack(obj)
    except (BufferError, RuntimeError, TypeError, ValueError) as exc:
        raise EncodeError(
            f"cannot send {type(obj).__name__} through DLPack: {exc}; only CPU tensors travel "
            "(call .detach().cpu() on a torch tensor first)"
        ) from None


def check_sendable(dtype: np.dtype[Any], ndim: int) -> None:
    """:class:`EncodeError` unless arrays of ``dtype`` and ``ndim`` dimensions can be sent."""
    if dtype.kind not in _KINDS or dtype.fields is not None or dtype.subdtype is not None:
        what = "object" if dtype.kind == "O" else f"{dtype} ({dtype.kind!r})"
        raise EncodeError(
            f"numpy arrays of dtype {what} cannot be sent: only numeric, bool, complex, "
            "datetime64/timedelta64, bytes and str arrays travel (never pickle); convert the "
            "data first (e.g. to a list, or to a numeric array)"
        )
    if ndim > _MAX_NDIM:
        raise EncodeError(
            f"a numpy array of {ndim} dimensions cannot be sent: at most {_MAX_NDIM} "
            "travel (reshape it first)"
        )
    if len(dtype.str) > _MAX_DTYPE_TEXT or _DTYPE_TEXT.fullmatch(dtype.str) is None:
        raise EncodeError(  # (what a receiver would refuse: never a closed connection there)
            f"numpy arrays of dtype {dtype.str!r} cannot be sent: its text is not one the "
            f"protocol carries (at most {_MAX_DTYPE_TEXT} bytes)"
        )


def _array_header(array: np.ndarray[Any, Any]) -> bytearray:
    if isinstance(array, np.ma.MaskedArray):
        raise EncodeError(  # (its mask would be lost: the wire carries dtype, shape and data)
            "a numpy masked array cannot be sent: only its data would travel, not its mask; "
            "send array.filled(value), or the data and np.ma.getmaskarray(array) apart"
        )
    dtype = array.dtype
    check_sendable(dtype, array.ndim)
    text = dtype.str.encode("ascii")
    header = bytearray((_VERSION, len(text)))
    header += text
    header.append(array.ndim)
    for dim in array.shape:
        header += _DIM.pack(dim)
    return header


def _array_payload(array: np.ndarray[Any, Any]) -> bytes:
    header = _array_header(array)
    # tobytes() copies into C order whatever the layout (strided, Fortran-ordered, 0-d).
    return b"".join((header, array.tobytes(order="C")))


def array_parts(array: np.ndarray[Any, Any]) -> tuple[bytes, memoryview]:
    """The extension's payload as its header and a flat byte view of the array's memory (no
    copy for a C-contiguous array; others are copied into C order once)."""
    header = bytes(_array_header(array))
    flat = np.ascontiguousarray(array).reshape(-1)  # a view when already contiguous
    return header, memoryview(flat.view(np.uint8))  # type: ignore[arg-type]


def header_size(view: memoryview) -> int | None:
    """How long the header at the start of ``view`` (a payload's first bytes) is, or ``None``
    if ``view`` is too short to tell. Raises :class:`DecodeError` for a bad start."""
    size = len(view)
    if size < 2:
        return None
    if view[0] != _VERSION or view[1] > _MAX_DTYPE_TEXT:
        raise DecodeError("numpy extension: unknown version or bad dtype length")
    if size < 3 + view[1]:
        return None
    ndim = view[2 + view[1]]
    if ndim > _MAX_NDIM:
        raise DecodeError("numpy extension: bad number of dimensions")
    return 3 + view[1] + ndim * _DIM.size


def parse_header(view: memoryview, size: int) -> tuple[np.dtype[Any], tuple[int, ...], int]:
    """The dtype, shape and header length of the payload of ``size`` bytes that ``view``
    starts (holding at least its header). Raises :class:`DecodeError` unless the array's bytes
    are exactly the rest of the payload."""
    if len(view) < 3 or view[0] != _VERSION:
        raise DecodeError("numpy extension: unknown version or truncated header")
    dtype, shape, offset = _parse_header(view, 0, "numpy extension")
    count = 1
    for dim in shape:
        count *= dim
    if count * dtype.itemsize != size - offset:
        raise DecodeError(
            f"numpy extension: shape {shape} of {dtype.str} needs {count * dtype.itemsize} "
            f"bytes, got {size - offset}"
        )
    return dtype, shape, offset


def empty_array(dtype: np.dtype[Any], shape: tuple[int, ...]) -> tuple[Any, memoryview]:
    """A fresh array to receive a payload into, and a flat writable byte view of it."""
    try:
        array = np.empty(shape, dtype)
    except (ValueError, MemoryError) as exc:
        raise DecodeError(f"numpy extension: {exc}") from None
    return array, memoryview(array.reshape(-1).view(np.uint8))  # type: ignore[arg-type]


def shared_reference(array: np.ndarray[Any, Any], segment: int, offset: int) -> msgpack.ExtType:
    """The extension naming ``array``, placed at ``offset`` in our segment ``segment``."""
    header = _array_header(array)
    return msgpack.ExtType(SHARED_EXT_CODE, _PLACE.pack(_VERSION, segment, offset) + header[1:])


def decode_shared(data: bytes, resolve: Any) -> Any:
    """Decode a shared-array extension and return ``resolve(segment, offset, dtype, shape)``
    (``SharedBuffers.array``). Raises :class:`DecodeError` on any flaw."""
    view = memoryview(data)
    if len(view) < _PLACE.size or view[0] != _VERSION:
        raise DecodeError("shared array extension: unknown version or truncated header")
    _, segment, offset = _PLACE.unpack_from(view)
    dtype, shape, end = _parse_header(view, _PLACE.size - 1, "shared array extension")
    if end != len(view):
        raise DecodeError("shared array extension: bytes after the header")
    return resolve(segment, offset, dtype, shape)


def _parse_header(
    view: memoryview, start: int, what: str
) -> tuple[np.dtype[Any], tuple[int, ...], int]:
    """dtype, shape and where the header ends: the header whose dtype length is at
    ``start + 1`` (``start``: the version byte of an array's own extension)."""
    if len(view) < start + 3:
        raise DecodeError(f"{what}: truncated header")
    base = start
    view = view[base:]
    size = len(view)
    text_len = view[1]
    if text_len > _MAX_DTYPE_TEXT or size < 3 + text_len:
        raise DecodeError("numpy extension: bad dtype length")
    try:
        text = bytes(view[2 : 2 + text_len]).decode("ascii")
    except UnicodeDecodeError:
        raise DecodeError("numpy extension: dtype is not ASCII") from None
    if _DTYPE_TEXT.fullmatch(text) is None:
        raise DecodeError(f"numpy extension: dtype {text!r} is not allowed")
    try:
        dtype = np.dtype(text)
    except TypeError:
        raise DecodeError(f"numpy extension: invalid dtype {text!r}") from None
    if dtype.kind not in _KINDS or dtype.fields is not None or dtype.itemsize == 0:
        raise DecodeError(f"numpy extension: dtype {text!r} is not allowed")
    offset = 2 + text_len
    ndim = view[offset]
    offset += 1
    if ndim > _MAX_NDIM or size < offset + ndim * _DIM.size:
        raise DecodeError("numpy extension: bad number of dimensions")
    shape = tuple(_DIM.unpack_from(view, offset + i * _DIM.size)[0] for i in range(ndim))
    offset += ndim * _DIM.size
    return dtype, shape, base + offset


def decode_array(data: bytes) -> np.ndarray[Any, Any]:
    """Decode the payload of a numpy extension. Raises :class:`DecodeError` on any flaw."""
    view = memoryview(data)
    if len(view) < 3 or view[0] != _VERSION:
        raise DecodeError("numpy extension: unknown version or truncated header")
    dtype, shape, offset = _parse_header(view, 0, "numpy extension")
    size = len(view)
    text = dtype.str
    count = 1
    for dim in shape:
        count *= dim
    if count * dtype.itemsize != size - offset:
        raise DecodeError(
            f"numpy extension: shape {shape} of {text} needs {count * dtype.itemsize} bytes, "
            f"got {size - offset}"
        )
    # frombuffer on bytes is read-only; copy once so receivers get an ordinary array.
    try:
        return np.frombuffer(view[offset:], dtype=dtype, count=count).reshape(shape).copy()
    except ValueError as exc:  # anything numpy refuses is a bad frame, nothing else
        raise DecodeError(f"numpy extension: {exc}") from None
