"""The distributed runtime (`cluster.runtime: ray`): the training loop of `rlpost.trainer`, spread over Ray actors.

Design
------
Actors (`actors.py`, placed by `placement.py`):
  - `RolloutWorker` x `cluster.num_rollout_workers`: one engine each (`rollout.build_engine`; vLLM
    with `tensor_parallel_size` GPUs on GPUs). Generates requests (`WorkUnit`s), loads weights.
    Restarted by Ray when it dies (`max_worker_restarts`).
  - `LearnerRank` x `cluster.learner_ranks`: one `Learner` (DeepSpeed) per rank, all ranks in one
    torch.distributed group (gloo on the CPU, NCCL on GPUs) whose rendezvous binds to
    `cluster.bind_host` (loopback by default). Rank 0 exports the weights.
  - `RewardWorker` x `cluster.num_reward_workers`: a `RewardManager` (its own process pool).
  Placement groups: `split` (learner bundles and rollout bundles apart: what async needs) or
  `colocated` (rank i and worker i share bundle i; on GPUs vLLM sleeps while the learner trains).

The driver (`driver.RayTrainer`, in the user's process) owns the sampler, the advantages (the
objective's group statistics need whole groups), the version counter, the buffer, metrics and
checkpoints. It runs one event loop for sync and async training (`buffer.py` has the rules):
  plan units for batches b <= version + max_staleness -> an idle worker syncs to the newest
  weights, then takes a unit it may generate (engine version >= b - max_staleness) -> scored
  groups wait in the batch's slot -> when batch `version` is complete, groups staler than
  max_staleness are dropped (counted), advantages computed, rows sharded over the ranks, one
  optimizer step, rank 0 publishes version + 1 -> workers pick it up when idle.
max_staleness 0 is synchronous: no batch is planned before the weights it needs exist.

Weight sync (`transport.py`): `object_store` (rank 0 puts the weights, cast to the rollout dtype,
in buckets; each engine fetches them; one copy per version whatever the engine count; engines
may sync at different times) or `nccl` (a torch.distributed broadcast group of rank 0 and every
engine, rebuilt when a worker restarts; gloo on the CPU). ZeRO-3 weights are gathered one tensor
at a time. Every sync has a deadline (`cluster.sync_timeout_seconds`) and fails with an error
naming the engine.

Off-policy correction (`correction.py`): the learner's objective is wrapped so the per-token
policy loss is multiplied by truncated importance weights pi_old / mu from the behaviour
log-probs the engine reported (token, sequence or mask mode), on by default when
max_staleness > 0. IS statistics and the effective sample size are summed over ranks.

Faults: a dead worker's in-flight units go back to the queue (regenerated, same seed, with the
current weights); the restarted worker loads the published weights before new work. A dead
learner rank stops the run with `LearnerCrashed`; checkpoints are atomic and `train.resume: auto`
continues from the last complete one (the sampler state saved is the one before the first
batch not yet trained, so in-flight batches are redrawn).
"""

from rlpost.runtime.driver import LearnerCrashed, RayTrainer, RuntimeHooks
from rlpost.runtime.transport import WeightSyncError

__all__ = ["LearnerCrashed", "RayTrainer", "RuntimeHooks", "WeightSyncError", "train"]


def train(config) -> dict[str, float]:
    """Run `config` with the runtime its `cluster.runtime` names; returns the last step's metrics."""
    if config.cluster.runtime == "ray":
        return RayTrainer(config).fit()
    from rlpost.trainer import Trainer

    return Trainer(config).fit()
