"""Settings of the distributed runtime (Ray actors, placement, weight sync, async off-policy training).

`runtime: local` runs everything in one process (`rlpost.runtime.local.LocalExecutor`). `runtime: ray` runs the
same work on Ray actors (`rlpost.runtime.ray_executor.RayExecutor`): rollout workers, learner ranks,
reward workers; a laptop and a multi-node GPU cluster differ only in this section. See
docs/cluster.md.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from rlpost.config.base import Section
from rlpost.objectives.registry import has_capability

ISCorrection = Literal["auto", "token", "sequence", "mask", "mask_sequence", "mask_geometric", "none"]


class ClusterConfig(Section):
    runtime: Literal["local", "ray"] = "local"
    """`local`: everything in this process. `ray`: rollout workers, learner ranks and reward workers as Ray actors."""

    # ---- the Ray cluster ------------------------------------------------------------------
    address: str | None = None
    """Ray cluster to join (`auto`, or `host:port` of the head's GCS); null starts a private local Ray instance."""
    num_cpus: float | None = Field(None, gt=0)
    """CPUs of the local Ray instance (null: all of the machine's). Ignored when joining a cluster."""
    num_gpus: int | None = Field(None, ge=0)
    """GPUs of the local Ray instance (null: Ray detects them). Ignored when joining a cluster."""
    object_store_memory_gib: float | None = Field(None, gt=0)
    """Object store size of the local Ray instance (null: Ray's default, 30% of RAM). Holds the weights being synced."""
    dashboard: bool = False
    """Start Ray's dashboard (local instance only)."""
    dashboard_host: str = "127.0.0.1"
    """Interface the dashboard binds to (loopback: reach it through an SSH tunnel)."""
    bind_host: str = "127.0.0.1"
    """Address of the ports rlpost itself opens (learner rendezvous MASTER_ADDR, weight-broadcast store).
    Loopback keeps them, and a private local Ray instance, private to the machine; a multi-node run needs
    `auto` (each node's Ray IP) or an IP."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where actors compute: `auto` uses GPUs when the Ray cluster has them."""

    # ---- actors and placement --------------------------------------------------------------
    num_rollout_workers: int = Field(1, ge=1)
    """Rollout workers, each holding one engine (`rollout.engine`); on GPUs each takes `rollout.vllm.tensor_parallel_size` GPUs."""
    learner_ranks: int = Field(1, ge=1)
    """Learner processes in one torch.distributed group (DeepSpeed data parallel, ZeRO stage `learner.zero_stage`); one GPU each on GPUs."""
    num_reward_workers: int = Field(1, ge=1)
    """Reward actors; each runs a RewardManager with `reward.num_workers` processes."""
    placement: Literal["split", "colocated"] = "split"
    """`split`: learner and rollout on separate devices (two placement groups; needed for async). `colocated`:
    learner rank i and rollout worker i share bundle i (and its GPU: the engine sleeps while the learner trains)."""
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    """Ray placement-group strategy of each group of bundles."""
    rollout_cpus: float = Field(1.0, gt=0)
    """CPUs reserved for each rollout worker (fractions allowed)."""
    learner_cpus: float = Field(1.0, gt=0)
    """CPUs reserved for each learner rank."""
    reward_cpus: float = Field(0.5, gt=0)
    """CPUs reserved for each reward actor (its scoring processes run on top of this)."""
    threads_per_actor: int | None = Field(None, ge=1)
    """torch intra-op threads in each rollout/learner actor (null: its CPU reservation rounded up)."""
    rollout_resources: dict[str, float] = {}
    """Extra Ray resources each rollout bundle requires, e.g. `{rollout_node: 1}` to pin engines to nodes started with that resource."""
    learner_resources: dict[str, float] = {}
    """Extra Ray resources each learner bundle requires."""
    prompts_per_unit: int | None = Field(None, ge=1)
    """Prompts per generation request sent to a worker (null: each step's prompts split evenly over the workers)."""

    # ---- async off-policy training ---------------------------------------------------------
    max_staleness: int = Field(0, ge=0)
    """Policy versions a batch may lag behind the learner. 0: synchronous (generate with the newest weights,
    then train). k >= 1: workers generate batch s+1..s+k while the learner trains batch s; older groups are dropped."""
    is_correction: ISCorrection = "auto"
    """Importance-sampling correction of the learner/behaviour log-prob gap r = pi_old / mu (verl's rollout correction).
    Truncated IS multiplies the per-token policy loss by a weight: `token` (clamp(r_t, is_floor, is_cap)),
    `sequence` (clamp(prod_t r_t, is_floor, is_cap) on every token). Rejection removes tokens from the loss and its
    normalisers: `mask` (tokens whose r_t leaves the band [is_floor or 1/is_cap, is_cap]), `mask_sequence`
    (sequences whose prod_t r_t leaves it), `mask_geometric` (sequences whose geometric mean exp(mean_t log r_t)
    leaves it; use a narrow band such as is_cap 1.001). `none`. `auto`: `token` when max_staleness > 0 (`none`
    for objectives that correct themselves, registered with `corrects_off_policy`: vcpo), else `none`."""
    is_cap: float = Field(2.0, ge=1.0)
    """Upper bound C: truncation of the importance weight min(r, C) (token/sequence), or the top of the
    rejection band (mask modes)."""
    is_floor: float | None = Field(None, gt=0.0, le=1.0)
    """Lower bound: truncated IS raises weights below it to it (null: no lower bound); the rejection band's
    bottom (null: 1 / is_cap)."""

    # ---- weight sync -----------------------------------------------------------------------
    sync_transport: Literal["object_store", "nccl", "ipc"] = "object_store"
    """`object_store`: learner rank 0 puts the weights in Ray's object store, engines fetch them (works everywhere).
    `nccl`: a torch.distributed broadcast group of learner rank 0 and every engine (NCCL on GPUs, gloo on the CPU).
    `ipc`: colocated vLLM engines on CUDA (`placement: colocated`, `rollout.engine: vllm`, `runtime: ray`): each
    learner rank shares its tensors with the engine on its GPU through CUDA IPC handles (no copy through the object
    store or the engine's host memory), in buckets of `sync_bucket_mb` (untested on a GPU)."""
    sync_timeout_seconds: float = Field(600.0, gt=0)
    """A weight sync taking longer fails the run with an error naming the engine (never hangs)."""
    sync_bucket_mb: int = Field(256, ge=1)
    """Object-store transport: weights travel in objects of at most this many MiB (ZeRO-3 gathers layer by layer).
    `ipc`: each learner rank's GPU holds one bucket at a time, closed once it reaches this many MiB (so it exceeds it
    by one tensor at most)."""
    sync_dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """dtype of the synced tensors (`auto`: `rollout.dtype`, halving the traffic for bf16 engines)."""

    # ---- faults -----------------------------------------------------------------------------
    max_worker_restarts: int = Field(3, ge=0)
    """Times Ray restarts each rollout worker that dies; its in-flight groups are regenerated."""
    worker_restart_timeout_seconds: float = Field(600.0, gt=0)
    """How long a dead rollout worker may take to come back (Ray restarts it, its engine reloads) before it is given up."""
    max_unit_attempts: int = Field(3, ge=1)
    """Attempts at one generation request (across worker deaths) before the run fails."""

    @model_validator(mode="after")
    def _consistent(self) -> ClusterConfig:
        if self.placement == "colocated" and self.max_staleness > 0:
            raise ValueError(
                "cluster.placement: colocated shares devices between learner and engines, so they cannot overlap: "
                "use cluster.max_staleness: 0, or placement: split for async training"
            )
        if self.placement == "colocated" and self.num_rollout_workers > self.learner_ranks:
            raise ValueError("cluster.placement: colocated needs num_rollout_workers <= learner_ranks (one bundle per rank)")
        return self

    def is_mode(self, objective_name: str) -> str:
        """The importance-sampling correction in force (`auto` resolved) for an objective."""
        if self.is_correction != "auto":
            return self.is_correction
        if self.max_staleness == 0 or has_capability(objective_name, "corrects_off_policy"):
            return "none"
        return "token"
