"""`cluster.sync_transport: ipc` without a GPU: the merge of the ranks' handles, the learner's bucketing on
CPU tensors (shared through `reduce_tensor`'s file-descriptor form), the refusals, and `IpcSync.schedule`'s
orchestration with stand-in actors (no Ray). The CUDA handles themselves are untested here."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from rlpost.config.errors import ConfigError
from rlpost.preflight import check_combinations
from rlpost.rollout.vllm_weights import rebuild_ipc_tensor
from rlpost.runtime.placement import check_device_settings
from rlpost.runtime.rollout_pool import WorkerSlot
from rlpost.runtime.sync_ipc import IpcSync, ipc_buckets, merge_ipc_parts
from rlpost.runtime.transport import TensorMeta, WeightSyncError
from tests.runtime.helpers import runtime_config

IPC = ("cluster.sync_transport=ipc", "cluster.placement=colocated", "rollout.engine=vllm")


def _entry(name: str, uuid: str, shape: tuple[int, ...] = (2, 3), dtype: str = "torch.bfloat16") -> dict[str, Any]:
    return {"name": name, "dtype": dtype, "shape": list(shape), "handles": {uuid: ("rebuild", (name, uuid))}}


# ------------------------------------------------------------------ merging the ranks' parts


def test_merge_gives_each_tensor_the_handles_of_every_rank() -> None:
    rank0 = [_entry("a.weight", "GPU-0"), _entry("b.weight", "GPU-0", (4,))]
    rank1 = [_entry("a.weight", "GPU-1"), _entry("b.weight", "GPU-1", (4,))]
    merged = merge_ipc_parts([rank0, rank1])
    assert [e["name"] for e in merged] == ["a.weight", "b.weight"]
    assert [e["shape"] for e in merged] == [[2, 3], [4]]
    assert merged[0]["handles"] == {"GPU-0": ("rebuild", ("a.weight", "GPU-0")), "GPU-1": ("rebuild", ("a.weight", "GPU-1"))}
    assert sorted(merged[1]["handles"]) == ["GPU-0", "GPU-1"]
    assert list(rank0[0]["handles"]) == ["GPU-0"], "the ranks' own entries are left as they were"
    assert merge_ipc_parts([None, None]) is None, "every rank exhausted: the sync is complete"
    single = merge_ipc_parts([rank0])
    assert [sorted(e["handles"]) for e in single] == [["GPU-0"], ["GPU-0"]]


def test_merge_names_the_first_mismatch() -> None:
    rank0 = [_entry("a.weight", "GPU-0"), _entry("b.weight", "GPU-0")]
    with pytest.raises(WeightSyncError, match=r"tensor 1 .*rank 0 sent \('b.weight'.*rank 1 sent \('c.weight'"):
        merge_ipc_parts([rank0, [_entry("a.weight", "GPU-1"), _entry("c.weight", "GPU-1")]])
    with pytest.raises(WeightSyncError, match=r"tensor 0 .*'a.weight'.*rank 1 sent \('b.weight'"):
        merge_ipc_parts([rank0, [_entry("b.weight", "GPU-1"), _entry("a.weight", "GPU-1")]])
    with pytest.raises(WeightSyncError, match=r"tensor 1 .*rank 2 sent None"):
        merge_ipc_parts([rank0, [_entry("a.weight", "GPU-1"), _entry("b.weight", "GPU-1")], [_entry("a.weight", "GPU-2")]])
    with pytest.raises(WeightSyncError, match=r"tensor 0 .*\[2, 3\].*\[3, 2\]"):
        merge_ipc_parts([rank0[:1], [_entry("a.weight", "GPU-1", (3, 2))]])
    with pytest.raises(WeightSyncError, match="rank 1 has no more weights while rank 0 sent 'a.weight'"):
        merge_ipc_parts([rank0, None])
    with pytest.raises(WeightSyncError, match="GPU-0, which an earlier rank already uses"):
        merge_ipc_parts([rank0, [_entry("a.weight", "GPU-0"), _entry("b.weight", "GPU-0")]])


# ------------------------------------------------------------------ the learner's buckets


def _weights() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {
        "embed.weight": torch.randn(8, 16),  # 512 B in fp32, 256 B in bf16
        "layer.q.weight": torch.randn(4, 16),  # 128 B in bf16
        "layer.k.weight": torch.randn(4, 16),  # 128 B
        "norm.weight": torch.randn(16),  # 32 B
        "steps": torch.tensor([3, 4], dtype=torch.int64),  # 16 B, not cast
        "head.weight": torch.randn(8, 16),  # 256 B
    }


def test_buckets_close_by_bytes_and_rebuild_to_the_cast_originals() -> None:
    weights = _weights()
    buckets = list(ipc_buckets(weights.items(), 300, torch.bfloat16, torch.device("cpu"), "cpu-test"))
    names = [[entry["name"] for entry in entries] for entries, _ in buckets]
    # A bucket closes once it holds >= 300 bytes: 256 + 128, then 128 + 32 + 16 + 256, then nothing left.
    assert names == [["embed.weight", "layer.q.weight"], ["layer.k.weight", "norm.weight", "steps", "head.weight"]]
    sizes = [sum(t.numel() * t.element_size() for t in keep) for _, keep in buckets]
    assert sizes == [384, 432]
    for entries, keep in buckets:
        for entry, kept in zip(entries, keep, strict=True):
            original = weights[entry["name"]]
            expected_dtype = torch.int64 if entry["name"] == "steps" else torch.bfloat16
            assert entry["dtype"] == str(expected_dtype) and entry["shape"] == list(original.shape)
            assert list(entry["handles"]) == ["cpu-test"]
            rebuilt = rebuild_ipc_tensor(entry, "cpu-test", None)
            assert rebuilt.dtype == expected_dtype and torch.equal(rebuilt, original.to(expected_dtype))
            assert kept.data_ptr() != original.data_ptr(), "always a copy: gathered ZeRO-3 params are freed"


def test_buckets_copy_even_without_a_cast_and_pull_lazily() -> None:
    weights = _weights()
    pulled: list[str] = []

    def source() -> Iterator[tuple[str, torch.Tensor]]:
        for name, tensor in weights.items():
            pulled.append(name)
            yield name, tensor

    stream = ipc_buckets(source(), 1, None, torch.device("cpu"), "cpu-test")
    entries, keep = next(stream)
    assert pulled == ["embed.weight"], "one tensor reaches a 1-byte bucket; nothing is pulled ahead"
    assert [e["name"] for e in entries] == ["embed.weight"] and entries[0]["dtype"] == "torch.float32"
    keep[0].zero_()
    assert weights["embed.weight"].abs().sum() > 0, "the bucket holds a copy, not the learner's tensor"
    rest = [entries[0]["name"] for entries, _ in stream]
    assert rest == list(weights)[1:] and pulled == list(weights), "every tensor once, in order"


# ------------------------------------------------------------------ refusals


def _config(*overrides: str):
    return runtime_config("unused", "unused", "cluster.rollout_cpus=0.1", "cluster.learner_cpus=0.1", *overrides)


def test_ipc_needs_cuda_and_colocated_placement_at_runtime() -> None:
    colocated = _config(*IPC).cluster
    check_device_settings(colocated, 1, "cuda")  # the supported case
    with pytest.raises(ConfigError, match=r"cluster.sync_transport: ipc needs cluster.device: cuda \(this run computes on cpu\)"):
        check_device_settings(colocated, 1, "cpu")
    split = _config("cluster.sync_transport=ipc", "rollout.engine=vllm").cluster
    with pytest.raises(ConfigError, match="cluster.sync_transport: ipc needs cluster.placement: colocated \\(not split\\)"):
        check_device_settings(split, 1, "cuda")
    nccl = _config("cluster.placement=colocated", "cluster.sync_transport=nccl").cluster
    with pytest.raises(ConfigError, match="use sync_transport: ipc"):
        check_device_settings(nccl, 1, "cuda")


def test_preflight_refuses_ipc_without_its_setting() -> None:
    check_combinations(_config(*IPC))
    cases = {
        "rollout.engine: vllm \\(not hf\\)": ("cluster.sync_transport=ipc", "cluster.placement=colocated", "rollout.engine=hf"),
        "cluster.placement: colocated \\(not split\\)": ("cluster.sync_transport=ipc", "rollout.engine=vllm"),
        "cluster.runtime: ray": (*IPC, "cluster.runtime=local"),
        "not cluster.device: cpu": (*IPC, "cluster.device=cpu"),
    }
    for message, overrides in cases.items():
        with pytest.raises(ConfigError, match=f"cluster.sync_transport: ipc needs .*{message}"):
            check_combinations(_config(*overrides))


# ------------------------------------------------------------------ the schedule, with stand-in actors

LATE = object()
"""A call still running when the stand-in `wait` is asked."""


class Failed:
    def __init__(self, exc: Exception):
        self.exc = exc


class Actor:
    """A stand-in Ray actor: `actor.method.remote(*args)` runs the method at once, logs (who, method) and
    returns its result (or `Failed`) as the ref."""

    def __init__(self, who: str, impl: Any, log: list[tuple[str, str]]):
        self.who, self.impl, self.log = who, impl, log

    def __getattr__(self, method: str) -> Any:
        def remote(*args: Any) -> Any:
            self.log.append((self.who, method))
            try:
                return getattr(self.impl, method)(*args)
            except Exception as exc:  # noqa: BLE001 - delivered like a Ray task error
                return Failed(exc)

        return SimpleNamespace(remote=remote)


def _get(ref: Any) -> Any:
    if isinstance(ref, list):
        return [_get(r) for r in ref]
    if isinstance(ref, Failed):
        raise ref.exc
    return ref


class Rank:
    def __init__(self, rank: int, buckets: list[list[str]], late_at: int | None = None):
        self.rank, self.buckets, self.late_at, self.calls = rank, buckets, late_at, 0

    def weight_meta(self):
        return [TensorMeta(name, (2, 3), "torch.bfloat16") for bucket in self.buckets for name in bucket] if self.rank == 0 else None

    def ipc_bucket(self, bucket_bytes: int):
        assert bucket_bytes == 2**20
        self.calls += 1
        if self.late_at == self.calls:
            return LATE
        return [_entry(n, f"GPU-{self.rank}") for n in self.buckets[self.calls - 1]] if self.calls <= len(self.buckets) else None

    def ipc_release(self) -> None:
        self.calls = 0


class Engine:
    def __init__(self, fail_load: bool = False):
        self.loaded: list[list[str]] = []
        self.handles: list[list[str]] = []
        self.fail_load = fail_load
        self.begun: tuple | None = None

    def begin_ipc_update(self, version: int, names: list[str] | None) -> None:
        self.begun = (version, names)

    def load_ipc(self, payload: list[dict]) -> int:
        if self.fail_load:
            raise WeightSyncError("rollout worker 1 failed loading a bucket: out of memory")
        self.loaded.append([e["name"] for e in payload])
        self.handles.append(sorted(payload[0]["handles"]))
        return len(payload)

    def finish_ipc_update(self, version: int) -> dict:
        return {"version": version}


def _executor(ranks: list[Rank], engines: list[Engine], versions: list[int]):
    log: list[tuple[str, str]] = []
    workers = [WorkerSlot(index=i, actor=Actor(f"worker{i}", e, log), version=v)
               for i, (e, v) in enumerate(zip(engines, versions, strict=True))]
    executor = SimpleNamespace(
        ranks=[Actor(f"rank{r.rank}", r, log) for r in ranks], workers=workers, published_version=3, training=None,
        cluster=SimpleNamespace(sync_timeout_seconds=5.0, sync_bucket_mb=1), times=SimpleNamespace(sync=0.0, learner=0.0),
    )

    def await_sync(refs: list, slots: list, version: int) -> None:
        """As `RayExecutor.await_sync`: refs of every rank, then one per slot; errors name who failed."""
        assert len(refs) == len(ranks) + len(slots) and version == 3
        for position, ref in enumerate(refs):
            if isinstance(ref, Failed):
                who = slots[position - len(ranks)].describe() if position >= len(ranks) else f"learner rank {position}"
                raise WeightSyncError(f"weight sync of version {version} to {who} failed: {ref.exc}")

    executor.await_sync = await_sync
    sync = IpcSync(executor, wait=lambda refs, timeout: [i for i, ref in enumerate(refs) if ref is LATE], get=_get)
    sync.start()
    log.clear()
    return sync, executor, log


BUCKETS = [["a", "b"], ["c"]]


def test_schedule_begins_loads_every_bucket_finishes_and_releases() -> None:
    engines = [Engine(), Engine(), Engine()]
    sync, executor, log = _executor([Rank(0, BUCKETS), Rank(1, BUCKETS)], engines, versions=[2, 2, 3])
    assert sync.names == ["a", "b", "c"] and sync.blocks_training()
    sync.schedule()
    ranks, behind = ["rank0", "rank1"], ["worker0", "worker1"]  # worker 2 is up to date: left alone
    expected = [(r, "ipc_release") for r in ranks] + [(w, "begin_ipc_update") for w in behind]
    for _ in BUCKETS:
        expected += [(r, "ipc_bucket") for r in ranks] + [(w, "load_ipc") for w in behind]
    expected += [(r, "ipc_bucket") for r in ranks]  # both exhausted
    expected += [(r, "ipc_release") for r in ranks] + [(w, "finish_ipc_update") for w in behind]
    assert log == expected
    assert engines[0].begun == (3, ["a", "b", "c"]) and engines[2].begun is None
    assert engines[0].loaded == engines[1].loaded == BUCKETS and engines[2].loaded == []
    assert engines[0].handles == [["GPU-0", "GPU-1"]] * 2, "each bucket carries both ranks' handles"
    assert [slot.version for slot in executor.workers] == [3, 3, 3] and not sync.blocks_training()
    assert executor.times.sync == pytest.approx(2 * executor.times.learner) and executor.times.learner > 0
    log.clear()
    sync.schedule()
    assert log == [], "nothing behind: no sync"


def test_schedule_waits_for_idle_engines_and_the_learner() -> None:
    sync, executor, log = _executor([Rank(0, BUCKETS)], [Engine(), Engine()], versions=[2, 2])
    executor.workers[1].task = "generate"
    sync.schedule()
    executor.workers[1].task, executor.training = None, {"refs": []}
    sync.schedule()
    assert log == [] and [slot.version for slot in executor.workers] == [2, 2]


def test_a_late_rank_fails_the_sync_by_name_and_the_ranks_release() -> None:
    engines = [Engine(), Engine()]
    sync, executor, log = _executor([Rank(0, BUCKETS), Rank(1, BUCKETS, late_at=2)], engines, versions=[2, 2])
    with pytest.raises(WeightSyncError, match=r"learner rank 1 did not export its IPC weight bucket of version 3 within 5 s"):
        sync.schedule()
    assert log[-2:] == [("rank0", "ipc_release"), ("rank1", "ipc_release")], "released after the failure"
    assert not any(method == "finish_ipc_update" for _, method in log)
    assert engines[0].loaded == [["a", "b"]] and [slot.version for slot in executor.workers] == [2, 2]


def test_a_failed_rank_or_engine_fails_the_sync_by_name_and_the_ranks_release() -> None:
    class Broken(Rank):
        def ipc_bucket(self, bucket_bytes: int):
            raise RuntimeError("CUDA out of memory")

    sync, executor, log = _executor([Rank(0, BUCKETS), Broken(1, BUCKETS)], [Engine()], versions=[2])
    with pytest.raises(WeightSyncError, match="learner rank 1 failed to export an IPC weight bucket of version 3: CUDA out of memory"):
        sync.schedule()
    assert log[-2:] == [("rank0", "ipc_release"), ("rank1", "ipc_release")]

    sync, executor, log = _executor([Rank(0, BUCKETS)], [Engine(), Engine(fail_load=True)], versions=[2, 2])
    with pytest.raises(WeightSyncError, match=r"to rollout worker 1 .*failed: rollout worker 1 failed loading a bucket"):
        sync.schedule()
    assert log[-1] == ("rank0", "ipc_release") and [slot.version for slot in executor.workers] == [2, 2]
    assert not any(method == "finish_ipc_update" for _, method in log)


# ------------------------------------------------------------------ the actors' IPC methods


def test_rollout_worker_names_itself_when_a_step_fails(monkeypatch) -> None:
    from rlpost.runtime.actors import RolloutWorker

    monkeypatch.setenv("DS_ACCELERATOR", "cpu")

    class FakeEngine:
        def begin_weight_update(self, names):
            self.names = names

        def load_ipc_bucket(self, payload):
            raise RuntimeError("no IPC handle of a for device GPU-7")

        def finish_weight_update(self, version):
            return 4

    worker = RolloutWorker(2, _config(*IPC), "unused", 0, None, "cpu", engine_factory=lambda *args: FakeEngine())
    worker.begin_ipc_update(5, ["a"])
    assert worker.engine.names == ["a"] and worker.ipc_version == 5
    with pytest.raises(WeightSyncError, match=r"version 5 to rollout worker 2 \(FakeEngine, pid \d+\) failed loading a bucket: no IPC handle"):
        worker.load_ipc([_entry("a", "GPU-0")])
    assert worker.version == 0
    assert worker.finish_ipc_update(5) == {"version": 5, "loaded": 4} and worker.version == 5


def test_learner_rank_refuses_ipc_off_cuda(monkeypatch) -> None:
    from rlpost.runtime.actors import LearnerRank

    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    rank = LearnerRank(1, 2, _config(*IPC), "unused", None, "cpu", "127.0.0.1")
    with pytest.raises(RuntimeError, match="cluster.sync_transport: ipc needs CUDA; learner rank 1 runs on cpu"):
        rank.ipc_bucket(2**20)
    rank.ipc_release()
    assert rank.ipc_stream is None and rank.ipc_keep is None
