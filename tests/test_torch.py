"""torch without depending on it (issue 12, part 5): a CPU tensor is sent through DLPack and
arrives as a numpy array, which ``torch.from_numpy`` makes a tensor again without a copy.

Runs only where torch is installed (the optional ``torch`` dependency group:
``pip install --group torch``); ``make test`` does not install it."""

from __future__ import annotations

import anyio
import pytest

import ipcactors

torch = pytest.importorskip("torch")
np = pytest.importorskip("numpy")
pytestmark = pytest.mark.anyio


async def test_a_cpu_tensor_travels_and_becomes_a_tensor_again(socket_dir: str) -> None:
    weights = torch.randn(256, 256)

    def layer(x: np.ndarray, client: object) -> object:
        tensor = torch.from_numpy(x)  # the received array's memory, no copy
        assert tensor.data_ptr() == x.ctypes.data
        return torch.relu(tensor @ weights)  # a CPU tensor back, through DLPack

    x = torch.randn(1024, 256)  # 1 MiB: out of band
    with anyio.fail_after(10):
        async with ipcactors.Actor("server", socket_root=socket_dir, silent=True) as server:
            (await server.serve()).on("layer", layer)
            async with ipcactors.Actor("client", socket_root=socket_dir, silent=True) as client:
                connection = await client.connect_to("server")
                result = await connection.request("layer", x)
                assert isinstance(result, np.ndarray)
                torch.testing.assert_close(torch.from_numpy(result), torch.relu(x @ weights))
                with pytest.raises(ipcactors.EncodeError, match="detach"):
                    await connection.request("layer", x.requires_grad_())
