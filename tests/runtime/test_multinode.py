"""Two Ray nodes on this machine (`ray.cluster_utils.Cluster`), joined through `cluster.address`: the learner
on one, the rollout worker on the other, weights through the broadcast transport (gloo). The learner is killed mid-run: the run stops
with the last complete checkpoint intact, and `train.resume: auto` finishes it."""

from __future__ import annotations

import os
import shutil
import signal

import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("deepspeed")

from ray.cluster_utils import Cluster

from rlpost.io.checkpoint import complete_checkpoints
from rlpost.io.metrics import read_metrics
from rlpost.loop import RunHooks, TrainingRun
from rlpost.runtime import LearnerCrashed
from tests.runtime.helpers import runtime_config

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.deepspeed]


@pytest.fixture(scope="module")
def two_nodes():
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "resources": {"learner_node": 1}, "include_dashboard": False,
                        "object_store_memory": 300 * 2**20},
    )
    cluster.add_node(num_cpus=1, resources={"rollout_node": 1}, object_store_memory=300 * 2**20)
    cluster.wait_for_nodes()
    yield cluster  # the runtime joins it through cluster.address, as on a real cluster
    cluster.shutdown()


class Recorder(RunHooks):
    def __init__(self, kill_at_step: int | None = None) -> None:
        self.kill_at_step = kill_at_step
        self.nodes: dict[str, set[str]] = {}

    def on_start(self, trainer: TrainingRun) -> None:
        self.nodes = {
            "learner": {info["node_id"] for info in trainer.executor.rank_info},
            "rollout": {slot.info["node_id"] for slot in trainer.executor.workers},
        }

    def on_train_start(self, trainer: TrainingRun, step: int) -> None:
        if step == self.kill_at_step:
            os.kill(trainer.executor.rank_info[0]["pid"], signal.SIGKILL)


def _config(cluster, model_path, output_dir, *overrides):
    return runtime_config(
        model_path, output_dir, f"cluster.address={cluster.address}", "rollout.engine=hf", "train.steps=3",
        "checkpoint.every_steps=1",
        "cluster.sync_transport=nccl", "cluster.learner_resources={learner_node: 0.5}",
        "cluster.rollout_resources={rollout_node: 0.5}", "cluster.reward_cpus=0.2", *overrides,
    )


def test_learner_and_rollout_on_separate_nodes_train_and_resume_after_a_learner_crash(two_nodes, tiny_chat_model_path, tmp_path) -> None:
    head, worker = two_nodes.head_node.node_id, next(iter(two_nodes.worker_nodes)).node_id

    crashed = Recorder(kill_at_step=2)
    with pytest.raises(LearnerCrashed, match="ckpt-00000002"):
        TrainingRun(_config(two_nodes, tiny_chat_model_path, tmp_path), hooks=crashed).fit()
    assert crashed.nodes == {"learner": {head}, "rollout": {worker}}
    assert [folder.name for folder in complete_checkpoints(tmp_path / "checkpoints")] == ["ckpt-00000001", "ckpt-00000002"]

    resumed = Recorder()
    trainer = TrainingRun(_config(two_nodes, tiny_chat_model_path, tmp_path, "train.resume=auto"), hooks=resumed)
    trainer.fit()
    assert trainer.start_step == 2
    assert resumed.nodes == {"learner": {head}, "rollout": {worker}}
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [1, 2, 3]
    assert records[-1]["policy/version"] == 3.0
    # The engine generated step 3's batch with the resumed learner's weights (broadcast at start-up).
    assert records[-1]["async/staleness_max"] == 0.0
    assert complete_checkpoints(tmp_path / "checkpoints")[-1].name == "ckpt-00000003"
    shutil.rmtree(tmp_path / "checkpoints")  # 1.6 GB each
