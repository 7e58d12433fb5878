"""Weight transports between real Ray actors: object store buckets and the gloo broadcast group."""

from __future__ import annotations

import pytest
import torch

ray = pytest.importorskip("ray")

from rlpost.runtime.transport import WeightSyncError, weight_meta
from tests.runtime.helpers import TransportPeer

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def ray_session():
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=300 * 2**20)
    yield
    ray.shutdown()


def _weights() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {
        "model.layers.0.weight": torch.randn(64, 64),
        "model.norm.weight": torch.randn(1000),
        "model.positions": torch.arange(10),
    }


def test_object_store_ships_buckets_cast_to_the_wire_dtype(ray_session) -> None:
    peer = ray.remote(num_cpus=0.1)(TransportPeer)
    learner, engine = peer.remote(), peer.remote()
    weights = _weights()
    handle = ray.get(learner.publish.remote(weights, 7, "bfloat16", 8192))
    assert handle.version == 7 and handle.num_tensors == 3
    assert len(handle.refs) >= 2, "8 KiB buckets must split 64x64 + 1000 bf16 values"
    received = ray.get(engine.receive.remote(handle, 60.0))
    assert list(received) == list(weights)
    for name, tensor in weights.items():
        expected = tensor.to(torch.bfloat16) if tensor.is_floating_point() else tensor
        assert received[name].dtype == expected.dtype
        assert torch.equal(received[name], expected)
    with pytest.raises(WeightSyncError, match="timed out"):
        ray.get(engine.receive.remote(handle, 0.0))


def test_broadcast_group_delivers_every_tensor_and_times_out_cleanly(ray_session) -> None:
    peer = ray.remote(num_cpus=0.1)(TransportPeer)
    root, first, second = peer.remote(), peer.remote(), peer.remote()
    peers = (root, first, second)
    before = ray.get([p.listening_addresses.remote() for p in peers])
    port = ray.get(root.rendezvous.remote("127.0.0.1"))
    # 20 s: three actors starting on a loaded 2-core machine can take seconds to meet.
    ray.get([p.join.remote("127.0.0.1", port, rank, 3, 20.0) for rank, p in enumerate(peers)])
    # What the group opened (the root's store, gloo's pair sockets) listens on loopback only.
    opened = [set(now) - set(then) for now, then in zip(ray.get([p.listening_addresses.remote() for p in peers]), before)]
    assert f"127.0.0.1:{port}" in opened[0]
    assert all(address.startswith("127.0.0.1:") for addresses in opened for address in addresses), opened
    weights = _weights()
    meta = weight_meta(weights.items(), torch.bfloat16)
    receiving = [p.receive_broadcast.remote(meta) for p in (first, second)]
    count, nbytes = ray.get(root.send.remote(weights, "bfloat16"))
    assert count == 3 and nbytes == (64 * 64 + 1000) * 2 + 10 * 8
    for received in ray.get(receiving):
        for name, tensor in weights.items():
            expected = tensor.to(torch.bfloat16) if tensor.is_floating_point() else tensor
            assert torch.equal(received[name], expected)
    # The root never sends: receivers give up after the group's timeout with a WeightSyncError.
    with pytest.raises(WeightSyncError, match="broadcast failed"):
        ray.get(first.receive_broadcast.remote(meta))
