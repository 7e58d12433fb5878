"""Pieces the runtime tests hand to Ray actors (importable by the workers as `tests.runtime.helpers`)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path

import torch

from rlpost.rollout.base import RolloutEngine, SamplingSettings
from rlpost.types import Group, Prompt

RUNTIME_DIR = Path(__file__).parent


def runtime_config(model_path: str, output_dir: Path, *overrides: str):
    """A `cluster.runtime: ray` config: 2 prompts x 2 completions x 16 tokens per step, fp32 everywhere.

    Built on the schema defaults, not on configs/quickstart.yaml (which changes with the project's defaults).
    """
    from rlpost.config.loader import apply_override, parse_override
    from rlpost.config.schema import RLPostConfig

    base = [
        f"model.path={model_path}",
        "data.test=null",
        "data.arithmetic.train_size=64",
        "rollout.n=2",
        "rollout.max_new_tokens=16",
        "rollout.dtype=float32",
        "rollout.batch_size=8",
        "rollout.temperature=1.0",
        "rollout.vllm.kv_cache_space_gib=1",
        "rollout.vllm.enforce_eager=true",
        "rollout.vllm.multiprocessing=false",
        "train.prompts_per_step=2",
        f"train.output_dir={output_dir}",
        "train.resume=never",
        "learner.backend=deepspeed",
        "learner.mixed_precision='no'",
        "learner.micro_batch_size=2",
        "learner.zero_stage=0",
        "optimizer.lr=5e-5",
        "logging.tensorboard=false",
        "logging.progress_bar=false",
        "checkpoint.every_steps=0",
        "checkpoint.at_end=false",
        "checkpoint.export_final=false",
        "reward.num_workers=1",
        # math_verify is the real reward; the length term gives every group reward spread, so a
        # 16-token run always has a policy gradient and the weights really change.
        f"reward.functions=[{{name: math_verify}}, {{name: '{RUNTIME_DIR / 'rewards.py'}:text_length_reward'}}]",
        "cluster.runtime=ray",
        "cluster.num_cpus=2",
        "cluster.object_store_memory_gib=1.5",
        "cluster.rollout_cpus=0.5",
        "cluster.learner_cpus=0.5",
        "cluster.reward_cpus=0.25",
        "cluster.sync_timeout_seconds=300",
    ]
    tree: dict = {}
    for override in [*base, *overrides]:
        keys, value = parse_override(override)
        apply_override(tree, keys, value)
    return RLPostConfig.model_validate(tree)


class EngineWrapper(RolloutEngine):
    """A real engine, wrapped: subclasses change one behaviour and delegate the rest."""

    def __init__(self, inner: RolloutEngine):
        self.inner = inner
        self.policy_version = inner.policy_version

    def generate(self, prompts: list[Prompt], n_per_prompt: list[int], sampling: SamplingSettings) -> list[Group]:
        return self.inner.generate(prompts, n_per_prompt, sampling)

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        self.inner.update_weights(named_tensors, version)
        self.policy_version = version

    def close(self) -> None:
        self.inner.close()


class SlowEngine(EngineWrapper):
    """A real engine whose `generate` takes `delay` seconds longer (an overloaded or slow worker)."""

    def __init__(self, inner: RolloutEngine, delay: float):
        super().__init__(inner)
        self.delay = delay

    def generate(self, prompts: list[Prompt], n_per_prompt: list[int], sampling: SamplingSettings) -> list[Group]:
        time.sleep(self.delay)
        return super().generate(prompts, n_per_prompt, sampling)


class RecordingEngine(EngineWrapper):
    """A real engine that appends what each weight sync delivered to a JSON-lines file: the version,
    each tensor's shape and sum of |w| (in arrival order), and the total as `weights_checksum` computes it."""

    def __init__(self, inner: RolloutEngine, log_file: Path):
        super().__init__(inner)
        self.log_file = log_file

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        from rlpost.runtime.transport import weights_checksum

        received = list(named_tensors)
        record = {
            "version": version,
            "shapes": {name: list(tensor.shape) for name, tensor in received},
            "checksums": {name: weights_checksum([(name, tensor)]) for name, tensor in received},
            "checksum": weights_checksum(received),
        }
        with self.log_file.open("a") as sink:
            sink.write(json.dumps(record) + "\n")
        super().update_weights(received, version)


class RecordingEngineFactory:
    """Engine factory for `RayTrainer(engine_factory=...)`: worker i records its syncs in `folder/worker<i>.jsonl`."""

    def __init__(self, folder: Path):
        self.folder = folder

    def __call__(self, rollout_config, model_path: str, seed: int, worker_index: int) -> RolloutEngine:
        from rlpost.rollout import build_engine

        return RecordingEngine(build_engine(rollout_config, model_path, seed=seed), self.folder / f"worker{worker_index}.jsonl")

    def syncs(self, worker_index: int = 0) -> list[dict]:
        log_file = self.folder / f"worker{worker_index}.jsonl"
        return [json.loads(line) for line in log_file.read_text().splitlines()] if log_file.exists() else []


class SlowEngineFactory:
    """Engine factory for `RayTrainer(engine_factory=...)`: worker i's engine is `delays[i]` seconds slower."""

    def __init__(self, delays: dict[int, float]):
        self.delays = delays

    def __call__(self, rollout_config, model_path: str, seed: int, worker_index: int) -> RolloutEngine:
        from rlpost.rollout import build_engine

        engine = build_engine(rollout_config, model_path, seed=seed)
        delay = self.delays.get(worker_index, 0.0)
        return SlowEngine(engine, delay) if delay else engine


class TransportPeer:
    """An actor on either end of a weight transport."""

    def publish(self, tensors: dict[str, torch.Tensor], version: int, dtype: str | None, bucket_bytes: int):
        from rlpost.runtime.sync_object_store import ObjectStoreTransport
        from rlpost.runtime.transport import DTYPES

        return ObjectStoreTransport.publish(tensors.items(), version, DTYPES[dtype] if dtype else None, bucket_bytes)

    def receive(self, handle, timeout: float) -> dict[str, torch.Tensor]:
        from rlpost.runtime.sync_object_store import ObjectStoreTransport

        return {name: tensor.clone() for name, tensor in ObjectStoreTransport.receive(handle, time.monotonic() + timeout)}

    def rendezvous(self, host: str) -> int:
        """Root: the port of the group's store, listening on `host`."""
        from rlpost.learner.distributed import listening_socket

        self.listener = listening_socket(host)
        return self.listener.getsockname()[1]

    def join(self, host: str, port: int, rank: int, world: int, timeout: float) -> None:
        from rlpost.runtime.sync_broadcast import BroadcastGroup

        listener = self.listener if rank == 0 else None
        self.group = BroadcastGroup(host, port, rank, world, "gloo", timeout, "test", listener=listener)

    def listening_addresses(self) -> list[str]:
        """`address:port` of every TCP socket this process listens on."""
        import psutil

        return [f"{c.laddr.ip}:{c.laddr.port}" for c in psutil.Process().net_connections("tcp") if c.status == psutil.CONN_LISTEN]

    def send(self, tensors: dict[str, torch.Tensor], dtype: str | None) -> tuple[int, int]:
        from rlpost.runtime.transport import DTYPES

        return self.group.send(tensors.items(), DTYPES[dtype] if dtype else None)

    def receive_broadcast(self, meta) -> dict[str, torch.Tensor]:
        return dict(self.group.receive(meta))


class StuckSyncFactory(SlowEngineFactory):
    """Worker `stuck`'s engine hangs for `seconds` whenever it loads weights."""

    def __init__(self, stuck: int = 0, seconds: float = 60.0):
        super().__init__({})
        self.stuck = stuck
        self.seconds = seconds

    def __call__(self, rollout_config, model_path: str, seed: int, worker_index: int) -> RolloutEngine:
        engine = super().__call__(rollout_config, model_path, seed, worker_index)
        if worker_index == self.stuck:
            original, seconds = engine.update_weights, self.seconds

            def stuck(named_tensors, version):
                time.sleep(seconds)
                original(named_tensors, version)

            engine.update_weights = stuck
        return engine
