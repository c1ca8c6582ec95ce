"""numpy arrays as a msgpack extension type: round trips through the frame encoder and decoder
(dtypes, shapes, layouts, 0-d arrays), refusal of object arrays, and over a real connection on
both backends."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

import ipcactors
from ipcactors._proto._extcodes import NUMPY_EXT_CODE
from ipcactors._proto._messages import Event, Limits
from ipcactors._proto._msgpack import MsgpackDecoder, MsgpackEncoder

np = pytest.importorskip("numpy")


def round_trip(value: Any) -> Any:
    limits = Limits()
    frame = MsgpackEncoder(limits).event("e", value)
    data = frame if isinstance(frame, bytes) else b"".join(frame)
    decoder = MsgpackDecoder(limits)
    decoder.handshake_done()
    (message,) = decoder.feed(data)
    assert isinstance(message, Event)
    return message.data


def assert_same(back: Any, sent: Any) -> None:
    assert isinstance(back, np.ndarray)
    assert back.dtype == sent.dtype
    assert back.shape == sent.shape
    assert back.flags.c_contiguous
    assert back.flags.writeable
    np.testing.assert_array_equal(back, sent)


DTYPES = [
    "bool",
    "int8",
    "uint8",
    "<i2",
    ">i2",
    "<u4",
    "<i8",
    ">u8",
    "<f2",
    "<f4",
    ">f8",
    "<c8",
    "<c16",
    "<M8[ns]",
    "<m8[s]",
    "S5",
    "<U3",
]


@pytest.mark.parametrize("dtype", DTYPES)
def test_dtypes_round_trip(dtype: str) -> None:
    array = np.arange(6).astype(dtype).reshape(2, 3)
    assert_same(round_trip(array), array)


@pytest.mark.parametrize("shape", [(), (0,), (1,), (7,), (3, 0, 2), (2, 3, 4), (1,) * 10])
def test_shapes_round_trip(shape: tuple[int, ...]) -> None:
    array = np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)
    assert_same(round_trip(array), array)


def test_zero_dimensional_arrays_and_numpy_scalars() -> None:
    array = np.array(2.5)
    back = round_trip(array)
    assert_same(back, array)
    assert back.ndim == 0
    # Numbers become plain msgpack numbers; other numpy scalars travel as 0-d arrays.
    assert round_trip(np.int64(7)) == 7
    assert type(round_trip(np.int64(7))) is int
    assert round_trip(np.float32(0.5)) == 0.5
    assert round_trip(np.bool_(True)) is True
    complex_back = round_trip(np.complex64(1 + 2j))
    assert complex_back.shape == ()
    assert complex_back == 1 + 2j


@pytest.mark.parametrize(
    "make",
    [
        lambda: np.arange(24, dtype=np.int32).reshape(4, 6)[:, ::2],  # strided
        lambda: np.arange(24, dtype=np.float64).reshape(4, 6).T,  # Fortran order
        lambda: np.asfortranarray(np.arange(12.0).reshape(3, 4)),
        lambda: np.arange(10)[::-1],  # negative stride
        lambda: np.broadcast_to(np.arange(3), (4, 3)),  # zero stride, read-only
    ],
    ids=["strided", "transposed", "fortran", "reversed", "broadcast"],
)
def test_non_contiguous_arrays_are_sent_in_c_order(make: Any) -> None:
    array = make()
    assert not array.flags.c_contiguous
    assert_same(round_trip(array), array)


def test_arrays_nested_in_containers() -> None:
    value = {"w": [np.ones((2, 2)), {"b": np.zeros(3, dtype=np.int16)}], "n": 1}
    back = round_trip(value)
    assert back["n"] == 1
    assert_same(back["w"][0], value["w"][0])
    assert_same(back["w"][1]["b"], value["w"][1]["b"])


@pytest.mark.parametrize(
    "array",
    [
        np.array([object(), 1], dtype=object),
        np.array([{"a": 1}], dtype=object),
        np.zeros(2, dtype=[("a", "<i4"), ("b", "<f8")]),  # structured: layout would be lost
        np.zeros(2, dtype="V4"),
    ],
    ids=["object", "object-dict", "structured", "void"],
)
def test_object_and_structured_arrays_are_refused(array: Any) -> None:
    encoder = MsgpackEncoder(Limits())
    with pytest.raises(ipcactors.EncodeError, match="cannot be sent"):
        encoder.event("e", array)
    # The encoder is still usable afterwards.
    assert_same(round_trip(np.arange(3)), np.arange(3))


def test_decoding_is_bounded_by_the_payload() -> None:
    from ipcactors._proto._numpy import decode_array, encode_numpy

    payload = encode_numpy(np.arange(4, dtype="<i8")).data
    assert encode_numpy(np.arange(4)).code == NUMPY_EXT_CODE
    # A header claiming a huge shape needs that many bytes: refused, nothing allocated.
    huge = bytearray(payload)
    huge[-32 - 8 : -32] = (2**40).to_bytes(8, "big")
    with pytest.raises(ipcactors.DecodeError, match="needs"):
        decode_array(bytes(huge))
    with pytest.raises(ipcactors.DecodeError):
        decode_array(payload[:-1])
    with pytest.raises(ipcactors.DecodeError, match="not allowed"):
        decode_array(payload.replace(b"<i8", b"|O8"))


@asynccontextmanager
async def echoing(socket_dir: str, **options: Any) -> AsyncIterator[ipcactors.Connection]:
    """A connection to a server that answers "echo" with what it got; both with ``options``."""
    async with ipcactors.Actor("server", socket_root=socket_dir, **options) as server_actor:
        server = await server_actor.serve()
        server.on("echo", lambda x, client: x)
        async with ipcactors.Actor("client", socket_root=socket_dir, **options) as client:
            yield await client.connect_to("server")


@pytest.mark.anyio
@pytest.mark.parametrize("shared", [False, True])
async def test_a_masked_array_is_refused_not_stripped_of_its_mask(
    shared: bool, socket_dir: str
) -> None:
    """A masked array would arrive without its mask (masked slots as their fill value, or the
    raw data under them): it is an EncodeError, nothing sent, the connection serving on."""
    masked = np.ma.masked_array(np.arange(100_000.0), mask=np.arange(100_000) % 2 == 0)
    options = {"max_shared_bytes": 64 << 20, "shared_threshold": 1024} if shared else {}
    with anyio.fail_after(20):
        async with echoing(socket_dir, **options) as connection:
            for value in (masked, masked[:10], {"nested": [masked[:3]]}):
                with pytest.raises(ipcactors.EncodeError, match="masked"):
                    await connection.request("echo", value)
            assert await connection.request("echo", 1) == 1


@pytest.mark.anyio
@pytest.mark.parametrize("shared", [False, True])
async def test_every_dtype_numpy_writes_in_few_bytes_travels(shared: bool, socket_dir: str) -> None:
    """Item sizes and datetime units of more than six digits are dtypes like any other: the
    protocol takes any dtype text up to 32 bytes. The receiver refused them (a closed
    connection, the sender none the wiser: a pool retried its task to WorkerLostError)."""
    arrays = [
        np.array([b"x" * 1_000_000, b"y"], dtype="|S1000000"),
        np.array(["z" * 1000], dtype="<U1000000"),
        np.array([0, 5], dtype="<M8[10000000ns]"),
        np.array([7], dtype=">m8[1234567us]"),
    ]
    options = {"max_shared_bytes": 64 << 20} if shared else {}
    with anyio.fail_after(20):
        async with echoing(socket_dir, **options) as connection:
            for array in arrays:
                back = await connection.request("echo", array)
                assert back.dtype == array.dtype  # (read-only from shared memory)
                np.testing.assert_array_equal(back, array)


@pytest.mark.anyio
async def test_arrays_over_a_connection(socket_dir: str) -> None:
    weights = np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)
    with anyio.fail_after(10):
        async with ipcactors.Actor("server", socket_root=socket_dir) as server_actor:
            server = await server_actor.serve()
            server.on("matmul", lambda x, client: x @ weights)
            async with ipcactors.Actor("client", socket_root=socket_dir) as client_actor:
                connection = await client_actor.connect_to("server")
                x = np.random.default_rng(1).standard_normal((8, 64)).astype(np.float32)
                result = await connection.request("matmul", x)
                np.testing.assert_allclose(result, x @ weights, rtol=1e-6)
                big = np.zeros((1024, 1024), dtype=np.float32)  # 4 MiB: a separate body
                assert (await connection.request("matmul", big[:, :64])).shape == (1024, 32)
