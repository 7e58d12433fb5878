"""Where the training loop's work runs: executors behind one interface (`executor.Executor`).

- `local.LocalExecutor` (`cluster.runtime: local`): everything in this process.
- `ray_executor.RayExecutor` (`cluster.runtime: ray`): Ray actors (`actors.py`, placed by
  `placement.py`): rollout workers (`rollout_pool.py`: dispatch, restarts), learner ranks (one
  DeepSpeed group), reward workers; weight sync behind `transport.WeightSync`, one file per
  transport (`sync_object_store.py`, `sync_broadcast.py`).
- `buffer.py`: generation requests, the staleness rule and the bounded buffer (pure rules);
  `work.py`: the work both executors run (a generation unit, an optimizer step, an evaluation).
  The importance-sampling correction the learner applies is math, in `rlpost.objectives.offpolicy`.

The step itself (batches, advantages, blending, metrics, checkpoints) is `rlpost.loop`.
"""

from rlpost.runtime.ray_executor import LearnerCrashed, RayExecutor
from rlpost.runtime.transport import WeightSyncError

__all__ = ["LearnerCrashed", "RayExecutor", "WeightSyncError"]
