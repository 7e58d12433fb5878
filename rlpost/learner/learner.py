"""The learner: policy model, optimizer, micro-batched policy-gradient updates, weight export.

Two backends behind one class: `deepspeed` (ZeRO stage from the config; gloo on the CPU, NCCL on
GPUs) and `torch` (one process, plain AdamW, on the GPU when there is one). Every gradient pass
goes through one micro-batch engine (`rlpost.learner.accumulate`): RL updates, blended steps and
VCPO's OPOB are strategies plugged into it. Gradient accumulation gives the same update as one big
batch because every micro-batch loss is divided by the whole step's normalisers (`StepScale`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from rlpost.blending.base import BlendPlan, BlendProbe
from rlpost.config.schema import RLPostConfig
from rlpost.learner import blend, export, state
from rlpost.learner.accumulate import Accumulated, PolicyGradient, accumulate, padded_count, step_scale
from rlpost.learner.batch import PolicyTargets, TrainBatch, split_micro_batches
from rlpost.learner.distributed import (
    all_reduce_max,
    all_reduce_sum,
    ensure_process_group,
    lr_scale_inputs,
    step_metrics,
    world_size,
)
from rlpost.learner.memory import set_mmap_threshold
from rlpost.learner.opob import OpobGradient
from rlpost.learner.optim import build_optimizer, build_scheduler
from rlpost.learner.policy import compute_device, load_policy, load_reference, model_device
from rlpost.learner.step import backward, deepspeed_config, init_deepspeed, optimizer_step
from rlpost.objectives.base import Objective, StepScale
from rlpost.objectives.kl_reward import KLController, k1_kl, penalized_advantages, sequence_mean_sums
from rlpost.objectives.sft import SFTLoss
from rlpost.ops import model_token_logprobs

KL_REWARD_FILE = "kl_reward.json"
"""The KL-in-reward controller's state in the learner's checkpoint folder (beside `learner.json`)."""


class Learner:
    """Holds the policy (and the frozen reference when the objective needs one) and updates it."""

    def __init__(self, config: RLPostConfig, model_path: str, objective: Objective, total_steps: int):
        self.config = config
        self.objective = objective
        self.temperature = config.rollout.temperature or 1.0
        self.engine = None
        if config.learner.mmap_threshold_mib is not None:
            set_mmap_threshold(config.learner.mmap_threshold_mib)
        ds_config = None
        if config.learner.backend == "deepspeed":
            ensure_process_group()  # ZeRO-3 partitions the weights as they load
            ds_config = deepspeed_config(config)
        device = compute_device()
        if device.type == "cuda":
            torch.cuda.set_device(device)  # NCCL collectives and DeepSpeed use the current device
        self.model = load_policy(config, model_path, ds_config)
        if ds_config is None:
            self.model.to(device)  # before the optimizer: its state follows the parameters
        self.kl_reward = KLController.from_config(config.objective.kl_in_reward)
        """The KL-in-reward coefficient (`objective.kl_in_reward`), or None when that penalty is off."""
        if self.kl_reward is not None and objective.per_trajectory_baseline:
            raise ValueError("objective.kl_in_reward changes the advantages, which VCPO's per-trajectory (OPOB) "
                             "gradient does not use: turn one of them off")
        needs_reference = objective.needs_reference or self.kl_reward is not None
        self.reference = load_reference(config, model_path, device) if needs_reference else None
        self.optimizer = build_optimizer(self.model.parameters(), config.optimizer)
        self.scheduler = build_scheduler(self.optimizer, total_steps * config.learner.updates_per_batch, config.optimizer)
        if ds_config is not None:
            self.engine, self.optimizer = init_deepspeed(self.model, self.optimizer, ds_config)
        self.steps_taken = 0

    @property
    def module(self) -> torch.nn.Module:
        return self.engine.module if self.engine is not None else self.model

    @property
    def device(self) -> torch.device:
        """The policy's device: every tensor that meets it is moved there first."""
        return model_device(self.module)

    @property
    def micro_batch_size(self) -> int:
        return self.config.learner.micro_batch_size

    def micro_batch_rows(self, batch: TrainBatch, rows: torch.Tensor) -> list[torch.Tensor]:
        """Positions within `rows` of each micro-batch over `rows` of `batch` (`learner.micro_batching`)."""
        learner = self.config.learner
        return split_micro_batches(batch, rows, learner.micro_batching, learner.micro_batch_size, learner.micro_batch_tokens)

    @property
    def zero_partitioned(self) -> bool:
        """Whether DeepSpeed partitions the optimizer state (ZeRO stage >= 1)."""
        return self.engine is not None and self.config.learner.zero_stage > 0

    # ---- forward ----------------------------------------------------------------------------

    def token_logprobs(
        self, model: torch.nn.Module, batch: TrainBatch, compute_entropy: bool, temperature: float | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Response-aligned [N, T] log-probs (and entropy) of `batch` under `model`, on the model's device.

        `temperature`: None gives the rollout's sampling distribution (its temperature, top-p and
        top-k: RL ratios against the engine's log-probs); SFT passes 1.0, the model's own distribution.
        """
        sampling = temperature is None
        rollout = self.config.rollout
        device = model_device(model)
        batch = batch.to(device)
        autocast = self.config.learner.mixed_precision == "bf16"
        context = torch.autocast(device.type, dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
        with context:
            return model_token_logprobs(
                model,
                batch.input_ids,
                batch.attention_mask,
                batch.response_index,
                batch.response_mask,
                temperature=self.temperature if sampling else temperature,
                fused=self.config.learner.fused_logprobs,
                chunk_size=self.config.learner.logprob_chunk_size,
                compute_entropy=compute_entropy,
                top_p=rollout.top_p if sampling else 1.0,
                top_k=rollout.top_k if sampling else -1,
                packed=self.config.learner.micro_batching == "packed",
            )

    @torch.no_grad()
    def frozen_logprobs(self, model: torch.nn.Module, batch: TrainBatch) -> torch.Tensor:
        """[N, T] fp32 CPU log-probs of `batch` under `model`, no gradient (old and reference log-probs).

        Every rank runs as many forwards as the busiest one: the policy's forwards are collectives under ZeRO-3."""
        parts = torch.zeros_like(batch.response_mask)
        chunks = self.micro_batch_rows(batch, torch.arange(batch.size))
        total = padded_count(len(chunks)) if world_size() > 1 else len(chunks)
        for index in range(total):
            rows = chunks[index] if index < len(chunks) else torch.zeros(1, dtype=torch.long)
            logp, _ = self.token_logprobs(model, batch.select(rows), compute_entropy=False)
            if index < len(chunks):
                parts[rows, : logp.shape[1]] = logp.float().cpu()
        return parts

    # ---- update -----------------------------------------------------------------------------

    def train_step(self, batch: TrainBatch, targets: PolicyTargets) -> dict[str, float]:
        """Policy-gradient update(s) on one rollout batch; returns the step's metrics (means over updates)."""
        self.module.train()
        ref_logp = self.frozen_logprobs(self.reference, batch) if self.reference is not None else None
        updates = self.config.learner.updates_per_batch
        # With one update per batch, old == current policy: logp.detach() is exact and saves a forward,
        # unless an off-policy rejection must know the whole step's old log-probs before counting its tokens.
        rejects = self.objective.rejects_tokens
        old_logp = self.frozen_logprobs(self.module, batch) if updates > 1 or rejects else None
        if rejects:  # rejected tokens leave the step's normalisers as well as the loss
            mask = self.objective.loss_mask(old_logp, batch.behaviour_logp, batch.response_mask)
            batch = dataclasses.replace(batch, response_mask=mask)
        targets, kl_metrics = self.kl_reward_targets(batch, targets, ref_logp, old_logp)
        metrics: dict[str, list[float]] = defaultdict(list)
        order = torch.randperm(batch.size) if updates > 1 else torch.arange(batch.size)
        for mini_rows in update_rows(order, updates_per_rank(batch.size, updates)):
            for key, value in self._update(batch, mini_rows, targets, old_logp, ref_logp).items():
                metrics[key].append(value)
        return {**{key: sum(values) / len(values) for key, values in metrics.items()}, **kl_metrics}

    def kl_reward_targets(
        self, batch: TrainBatch, targets: PolicyTargets, ref_logp: torch.Tensor | None, old_logp: torch.Tensor | None,
    ) -> tuple[PolicyTargets, dict[str, float]]:
        """`targets` with the KL-in-reward penalty folded into the advantages, and its metrics; then beta's update.

        A_t = A - beta * sum_{s>=t} (old_logp_s - ref_logp_s) per token (`rlpost.objectives.kl_reward`),
        with the beta of this step; the step's mean KL (over every rank's sequences) then moves the
        controller. The old log-probs are the policy's before this step (one extra forward when the
        step does not compute them anyway). Unchanged when `objective.kl_in_reward` is off.
        """
        if self.kl_reward is None:
            return targets, {}
        if ref_logp is None:
            ref_logp = self.frozen_logprobs(self.reference, batch)
        if old_logp is None:
            old_logp = self.frozen_logprobs(self.module, batch)
        mask = batch.response_mask
        kl = k1_kl(old_logp, ref_logp, mask)
        coef = self.kl_reward.value
        advantages = penalized_advantages(targets.advantages, kl, mask, coef)
        kl_sum, sequences = sequence_mean_sums(kl, mask)
        if world_size() > 1:
            kl_sum, sequences = all_reduce_sum([kl_sum, float(sequences)])
        mean_kl = kl_sum / max(sequences, 1)
        self.kl_reward.update(mean_kl, int(sequences))
        metrics = {"kl_reward/coef": coef, "kl_reward/mean_kl": mean_kl}
        return dataclasses.replace(targets, advantages=advantages), metrics

    def step_scale(self, batch: TrainBatch, rows: torch.Tensor) -> StepScale:
        return step_scale(batch, rows, self.config.rollout.max_new_tokens)

    def _update(
        self, batch: TrainBatch, rows: torch.Tensor, targets: PolicyTargets,
        old_logp: torch.Tensor | None, ref_logp: torch.Tensor | None,
    ) -> dict[str, float]:
        """One optimizer step on `rows` of `batch`."""
        scale = self.step_scale(batch, rows)
        if self.objective.per_trajectory_baseline:
            self.check_gradient_access()
            strategy = OpobGradient(self.objective, self.trainable_parameters(), batch.rewards, old_logp)
        else:
            strategy = PolicyGradient(self.objective, targets, old_logp, ref_logp)
        result = accumulate(self, batch, rows, scale, strategy)
        lr_factor, lr_metrics = self.objective.lr_scale(
            lr_scale_inputs(result.current_logp, batch.behaviour_logp[rows], batch.response_mask[rows])
        )
        grad_norm, lr = self._optimizer_step(lr_factor)
        self.steps_taken += 1
        return step_metrics(
            {"actor/loss": result.loss, **result.metrics}, {"actor/grad_norm": grad_norm, "actor/lr": lr, **lr_metrics}
        )

    def backward(self, loss: torch.Tensor, is_last: bool) -> None:
        backward(self.engine, loss, is_last)

    def _optimizer_step(self, lr_factor: float) -> tuple[float, float]:
        """Clip, step with the learning rate scaled for this step only, restore, advance the schedule."""
        return optimizer_step(self.optimizer, self.scheduler, self.engine, self.module, self.config, lr_factor)

    # ---- SFT and SFT–RL blending (rlpost.blending) -------------------------------------------

    _sft_loss: SFTLoss | None = None

    @property
    def sft_loss(self) -> SFTLoss:
        """The SFT loss on demonstrations (`blending.sft`), built on first use."""
        if self._sft_loss is None:
            self._sft_loss = SFTLoss(self.config.blending.sft.loss_agg)
        return self._sft_loss

    def sft_step(self, demos: TrainBatch) -> dict[str, float]:
        """One optimizer step on the SFT loss of the demonstration batch `demos` alone."""
        metrics, _ = self.blended_step(BlendPlan.sft_only(demos.size), sft_batch=demos)
        return metrics

    def blended_step(
        self,
        plan: BlendPlan,
        rl_batch: TrainBatch | None = None,
        rl_targets: PolicyTargets | None = None,
        sft_batch: TrainBatch | None = None,
        validation_batch: TrainBatch | None = None,
        decide: blend.Decide | None = None,
    ) -> tuple[dict[str, float], BlendProbe]:
        """One optimizer step on w_rl·L_RL(rl_batch) + w_sft·L_SFT(sft_batch), as `plan` says.

        Only the losses the plan picks are computed and back-propagated: a side without rows, or
        with weight 0 in a plan that does not defer its weights, is skipped entirely. Each side is
        micro-batched and normalised over its own whole batch (`StepScale`), so the update does not
        depend on the micro-batch size. With `plan.defer_weights` both gradients are computed at
        unit weight, `decide(probe)` returns (w_rl, w_sft), and the gradients are combined before
        the one clip and optimizer step. With `plan.meta_gradient` (deferred plans only) the
        gradient of the SFT loss of `validation_batch` is computed first and its dot products with
        the SFT and RL gradients go into the probe. Returns the metrics and the probe, whose
        `grad_norm` is the pre-clip norm of the combined gradient.
        """
        blend.check_plan(self, plan, decide)
        self.module.train()
        kl_metrics = {}
        if rl_batch is not None and rl_targets is not None:
            rl_targets, kl_metrics = self.kl_reward_targets(rl_batch, rl_targets, None, None)
        sides = blend.gradient_passes(self, plan, (rl_batch, rl_targets), sft_batch, validation_batch, decide)
        lr_factor, lr_metrics = self._blend_lr_scale(sides.rl, rl_batch)
        grad_norm, lr = self._optimizer_step(lr_factor * plan.lr_scale)
        self.steps_taken += 1
        probe = sides.probe
        probe.grad_norm = grad_norm
        if plan.reset_reference:
            self.reset_reference()
        metrics = step_metrics(
            blend.blend_shares(sides, rl_batch, sft_batch),
            {"actor/grad_norm": grad_norm, "actor/lr": lr, "blend/rl_weight": probe.rl_weight,
             "blend/sft_weight": probe.sft_weight, **lr_metrics, **kl_metrics},
        )
        return metrics, probe

    def _blend_lr_scale(self, rl: Accumulated | None, rl_batch: TrainBatch | None) -> tuple[float, dict]:
        if rl is None:
            return 1.0, {}
        return self.objective.lr_scale(lr_scale_inputs(rl.current_logp, rl_batch.behaviour_logp, rl_batch.response_mask))

    def check_gradient_access(self) -> None:
        """Deferred weights rewrite `param.grad` between backward passes: plain torch, or DeepSpeed
        stage 0 with fp32 weights on one rank (where `param.grad` is the whole, local gradient)."""
        if self.engine is None:
            return
        if self.config.learner.zero_stage > 0 or self.config.model.dtype != "float32" or world_size() > 1:
            raise ValueError(
                "combining gradients outside DeepSpeed (a blending controller that weighs gradients, VCPO's OPOB) "
                "needs learner.backend: torch, or deepspeed "
                "with learner.zero_stage: 0, model.dtype: float32 and a single learner rank"
            )

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.module.parameters() if p.requires_grad]

    # ---- reference ---------------------------------------------------------------------------

    def reset_reference(self) -> None:
        """Make the current policy (LoRA merged) the frozen KL reference; no-op without a reference."""
        if self.reference is None:
            return
        with torch.no_grad():
            self.reference.load_state_dict({name: tensor for name, tensor in self.named_weights()}, strict=True)

    def save_reference(self, path: Path) -> None:
        save_file({name: t.detach().clone().contiguous().cpu() for name, t in self.reference.state_dict().items()}, path)

    def load_reference(self, path: Path) -> None:
        self.reference.load_state_dict(load_file(path), strict=True)

    # ---- weights out and checkpoint state ------------------------------------------------------

    def named_weights(self, on_device: bool = False) -> Iterator[tuple[str, torch.Tensor]]:
        """(Hugging Face name, tensor) of every policy weight, LoRA merged, gathered one at a time under
        ZeRO-3; CPU tensors, or with `on_device` tensors left on the model's device."""
        zero3 = self.engine is not None and self.config.learner.zero_stage >= 3
        return export.named_weights(self.module, zero3, on_device)

    def export_hf(self, folder: Path, tokenizer) -> None:
        """Save a Hugging Face folder (config, safetensors, tokenizer) that transformers and vLLM load."""
        export.export_hf(self.module, self.engine is not None and self.config.learner.zero_stage >= 3, folder, tokenizer)

    def save_state(self, folder: Path) -> None:
        """Write the trainable weights, optimizer and schedule into `folder` (safe formats only), and the
        KL-in-reward coefficient (`KL_REWARD_FILE`, the same on every rank: rank 0 writes it)."""
        state.save_state(self, folder)
        if self.kl_reward is not None and not (dist.is_initialized() and dist.get_rank() != 0):
            (folder / KL_REWARD_FILE).write_text(json.dumps(self.kl_reward.state_dict()))

    def load_state(self, folder: Path) -> None:
        state.load_state(self, folder)
        if self.kl_reward is not None and (folder / KL_REWARD_FILE).is_file():
            self.kl_reward.load_state_dict(json.loads((folder / KL_REWARD_FILE).read_text()))


def updates_per_rank(rows: int, updates: int) -> int:
    """How many updates every rank runs on a batch: `updates`, or fewer when no rank holds that many
    rows. The same on every rank (each update is a round of collectives), whatever its share of rows."""
    most_rows = int(all_reduce_max([float(rows)])[0]) if world_size() > 1 else rows
    return max(min(updates, most_rows), 1)


def update_rows(order: torch.Tensor, count: int) -> list[torch.Tensor]:
    """The rows of each of `count` updates: consecutive parts of `order` whose sizes differ by at most
    one (empty parts on a rank with fewer rows than updates)."""
    return list(order.tensor_split(count))
