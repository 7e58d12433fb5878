"""The learner: policy model, optimizer, micro-batched policy-gradient updates, weight export.

Two backends behind one class: `deepspeed` (ZeRO stage from the config; gloo on the CPU) and
`torch` (one process, plain AdamW). Gradient accumulation gives the same update as one big
batch because every micro-batch loss is divided by the whole step's normalisers (`StepScale`).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from rlpost.blending.base import BlendPlan, BlendProbe
from rlpost.config.schema import RLPostConfig
from rlpost.learner.batch import PolicyTargets, TrainBatch, micro_batches
from rlpost.learner.distributed import (
    all_gather_objects,
    all_gather_rows,
    all_reduce_sum,
    ensure_process_group,
    sum_over_ranks,
    world_size,
)
from rlpost.learner.memory import release_free_heap
from rlpost.learner.opob import accumulate_opob_gradients
from rlpost.learner.optim import build_optimizer, build_scheduler
from rlpost.objectives.base import LossInputs, Objective, StepScale
from rlpost.objectives.sft import SFTLoss
from rlpost.ops import model_token_logprobs

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def load_policy(config: RLPostConfig, model_path: str) -> torch.nn.Module:
    """The trainable policy: a causal LM, optionally wrapped with LoRA adapters."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        model_path,
        dtype=DTYPES[config.model.dtype],
        trust_remote_code=config.model.trust_remote_code,
    )
    model.config.use_cache = False
    if config.model.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lora = config.model.lora
    if lora.enabled:
        from peft import LoraConfig, get_peft_model

        if config.model.gradient_checkpointing:
            model.enable_input_require_grads()
        model = get_peft_model(
            model,
            LoraConfig(
                r=lora.r,
                lora_alpha=lora.alpha,
                lora_dropout=lora.dropout,
                target_modules=list(lora.target_modules),
                task_type="CAUSAL_LM",
            ),
        )
    return model


def _is_peft(model: torch.nn.Module) -> bool:
    return hasattr(model, "get_base_model") and hasattr(model, "merge_adapter")


def hf_model(policy: torch.nn.Module) -> torch.nn.Module:
    """The Hugging Face model inside the policy: peft's wrapper removed (adapted layers stay in it,
    their base weight under `<layer>.base_layer.weight`)."""
    return policy.get_base_model() if _is_peft(policy) else policy


def lora_layers_by_weight_name(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Each LoRA-adapted layer of `model`, keyed by the state-dict name of the base weight it adapts."""
    from peft.tuners.lora import LoraLayer

    return {
        f"{prefix}.base_layer.weight": module
        for prefix, module in model.named_modules()
        if isinstance(module, LoraLayer)
    }


def merged_lora_weight(layer: torch.nn.Module) -> torch.Tensor:
    """The layer's base weight with its active adapters merged (W + scaling·B@A each), as a new tensor.

    The same sum as peft's `merge` (which adds `get_delta_weight` into W), on a copy: merging into
    the live W and unmerging afterwards leaves W off by rounding after every export, and a reader of
    the live W sees the unmerged values again once the export ends. Dropout acts on activations
    only, so it plays no part in the merged weight.
    """
    merged = layer.get_base_layer().weight.detach().clone()
    with torch.no_grad():
        for adapter in layer.active_adapters:
            if adapter in layer.scaling:
                merged += layer.get_delta_weight(adapter)
    return merged


def step_metrics(shares: dict[str, float], global_values: dict[str, float]) -> dict[str, float]:
    """One optimizer step's metrics, the same on every rank.

    `shares`: this rank's additive part of each step value (losses, entropy, KL, clip fractions are
    normalised by the all-reduced `StepScale`), summed over ranks. `global_values`: already the
    same on every rank (gradient norm after the gradient all-reduce, learning rate, values computed
    from every rank's data).
    """
    return {**sum_over_ranks(all_gather_objects(shares)), **global_values}


def lr_scale_inputs(logp: torch.Tensor, behaviour_logp: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """`Objective.lr_scale`'s inputs over every rank's sequences of the step.

    VCPO scales the learning rate by the effective sample size of the whole step: from one rank's
    rows alone, ranks would pick different learning rates and their weights would drift apart.
    """
    return {"logp": all_gather_rows(logp), "behaviour_logp": all_gather_rows(behaviour_logp), "mask": all_gather_rows(mask)}


class Learner:
    """Holds the policy (and the frozen reference when the objective needs one) and updates it."""

    def __init__(self, config: RLPostConfig, model_path: str, objective: Objective, total_steps: int):
        self.config = config
        self.objective = objective
        self.temperature = config.rollout.temperature or 1.0
        self.model = load_policy(config, model_path)
        self.reference = self._load_reference(model_path) if objective.needs_reference else None
        self.optimizer = build_optimizer(self.model.parameters(), config.optimizer)
        self.scheduler = build_scheduler(self.optimizer, total_steps * config.learner.updates_per_batch, config.optimizer)
        self.engine = None
        if config.learner.backend == "deepspeed":
            self._init_deepspeed()
        self.steps_taken = 0

    # ---- set-up ---------------------------------------------------------------------------

    def _load_reference(self, model_path: str) -> torch.nn.Module:
        from transformers import AutoModelForCausalLM

        reference = AutoModelForCausalLM.from_pretrained(model_path, dtype=DTYPES[self.config.model.dtype])
        reference.requires_grad_(False)
        return reference.eval()

    def _init_deepspeed(self) -> None:
        import deepspeed

        ensure_process_group()
        learner = self.config.learner
        zero: dict = {"stage": learner.zero_stage}
        if learner.offload_optimizer and learner.zero_stage > 0:
            zero["offload_optimizer"] = {"device": "cpu"}
        ds_config = {
            # We accumulate ourselves (variable micro-batch counts); DeepSpeed sees one micro-batch per step.
            "train_micro_batch_size_per_gpu": learner.micro_batch_size,
            "gradient_accumulation_steps": 1,
            "zero_optimization": zero,
            "gradient_clipping": self._deepspeed_clip(),
            "bf16": {"enabled": self.config.model.dtype == "bfloat16"},
            "steps_per_print": 10**9,
            "wall_clock_breakdown": False,
        }
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=self.model, optimizer=self.optimizer, config=ds_config, dist_init_required=False
        )

    def _deepspeed_clip(self) -> float:
        # ZeRO partitions gradients, so DeepSpeed clips them; at stage 0 we clip ourselves to read the norm.
        clip = self.config.optimizer.grad_clip
        return float(clip) if clip and self.config.learner.zero_stage > 0 else 0.0

    @property
    def module(self) -> torch.nn.Module:
        return self.engine.module if self.engine is not None else self.model

    # ---- forward ----------------------------------------------------------------------------

    def token_logprobs(
        self, model: torch.nn.Module, batch: TrainBatch, compute_entropy: bool, temperature: float | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Response-aligned [N, T] log-probs (and entropy) of `batch` under `model`.

        `temperature`: None uses the rollout temperature (RL ratios); SFT passes 1.0.
        """
        autocast = self.config.learner.mixed_precision == "bf16"
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=autocast):
            return model_token_logprobs(
                model,
                batch.input_ids,
                batch.attention_mask,
                batch.response_index,
                batch.response_mask,
                temperature=self.temperature if temperature is None else temperature,
                fused=self.config.learner.fused_logprobs,
                chunk_size=self.config.learner.logprob_chunk_size,
                compute_entropy=compute_entropy,
            )

    @torch.no_grad()
    def _frozen_logprobs(self, model: torch.nn.Module, batch: TrainBatch) -> torch.Tensor:
        parts = torch.zeros_like(batch.response_mask)
        for rows in micro_batches(batch.size, self.config.learner.micro_batch_size):
            sub = batch.select(rows)
            logp, _ = self.token_logprobs(model, sub, compute_entropy=False)
            parts[rows, : logp.shape[1]] = logp.float()
        return parts

    # ---- update -----------------------------------------------------------------------------

    def train_step(self, batch: TrainBatch, targets: PolicyTargets) -> dict[str, float]:
        """Policy-gradient update(s) on one rollout batch; returns the step's metrics."""
        self.module.train()
        ref_logp = self._frozen_logprobs(self.reference, batch) if self.reference is not None else None
        # With one update per batch, old == current policy: logp.detach() is exact and saves a forward.
        old_logp = self._frozen_logprobs(self.module, batch) if self.config.learner.updates_per_batch > 1 else None
        metrics: dict[str, list[tuple[float, float]]] = defaultdict(list)
        order = torch.randperm(batch.size) if self.config.learner.updates_per_batch > 1 else torch.arange(batch.size)
        for mini_rows in order.chunk(self.config.learner.updates_per_batch):
            update_metrics = self._update(batch, mini_rows, targets, old_logp, ref_logp)
            for key, value in update_metrics.items():
                metrics[key].append((value, 1.0))
        return {key: sum(v for v, _ in values) / len(values) for key, values in metrics.items()}

    def _step_scale(self, batch: TrainBatch, rows: torch.Tensor) -> StepScale:
        mask = batch.response_mask[rows]
        tokens, sequences = all_reduce_sum([float(mask.sum()), float((mask.sum(dim=1) > 0).sum())])
        return StepScale(tokens=int(tokens), sequences=int(sequences), max_response_length=self.config.rollout.max_new_tokens)

    def _update(
        self,
        batch: TrainBatch,
        rows: torch.Tensor,
        targets: PolicyTargets,
        old_logp: torch.Tensor | None,
        ref_logp: torch.Tensor | None,
    ) -> dict[str, float]:
        scale = self._step_scale(batch, rows)
        advantages, token_weights = targets.advantages, targets.token_weights
        if self.objective.per_trajectory_baseline:
            total_loss, loss_metrics_sum, current_logp = accumulate_opob_gradients(self, batch, rows, scale, old_logp)
        else:
            loss_metrics_sum: dict[str, float] = defaultdict(float)
            total_loss = 0.0
            micro_rows = micro_batches(len(rows), self.config.learner.micro_batch_size)
            current_logp = torch.zeros_like(batch.response_mask[rows])
            for index, local in enumerate(micro_rows):
                picked = rows[local]
                sub = batch.select(picked)
                width = sub.response_mask.shape[1]
                logp, entropy = self.token_logprobs(self.module, sub, compute_entropy=self.objective.needs_entropy)
                inputs = LossInputs(
                    logp=logp,
                    old_logp=old_logp[picked, :width] if old_logp is not None else logp.detach(),
                    advantages=advantages[picked] if advantages.dim() == 1 else advantages[picked, :width],
                    mask=sub.response_mask,
                    ref_logp=ref_logp[picked, :width] if ref_logp is not None else None,
                    entropy=entropy,
                    token_ids=sub.response_ids,
                    group_index=sub.group_index,
                    behaviour_logp=sub.behaviour_logp,
                    token_weights=token_weights[picked, :width] if token_weights is not None else None,
                )
                loss, loss_metrics = self.objective.compute_loss(inputs, scale)
                # DeepSpeed/DDP average gradients over ranks; our loss is already a global sum-normalised value.
                self._backward(loss * world_size(), is_last=index == len(micro_rows) - 1)
                total_loss += float(loss.detach())
                # Loss metrics are this micro-batch's share of the step value: they add up.
                for key, value in loss_metrics.items():
                    loss_metrics_sum[key] += float(value)
                current_logp[local, :width] = logp.detach().float()
        lr_factor, lr_metrics = self.objective.lr_scale(
            lr_scale_inputs(current_logp, batch.behaviour_logp[rows], batch.response_mask[rows])
        )
        grad_norm, lr = self._optimizer_step(lr_factor)
        self.steps_taken += 1
        return step_metrics(
            {"actor/loss": total_loss, **loss_metrics_sum}, {"actor/grad_norm": grad_norm, "actor/lr": lr, **lr_metrics}
        )

    def _backward(self, loss: torch.Tensor, is_last: bool) -> None:
        if self.engine is None:
            loss.backward()
            return
        self.engine.set_gradient_accumulation_boundary(is_last)
        self.engine.backward(loss)
        self._end_micro_step()

    def _end_micro_step(self) -> None:
        """Close a ZeRO micro-step, as `DeepSpeedEngine.forward` does at the start of the next one.

        The log-prob path calls the module's parts, not the engine, so without this ZeRO never
        counts micro-steps and each micro-batch's gradient overwrites the previous one's.
        """
        from deepspeed.runtime.base_optimizer import ZeROOptimizer

        if isinstance(self.engine.optimizer, ZeROOptimizer):
            self.engine.optimizer.clear_backward_seen_flag()

    def _optimizer_step(self, lr_factor: float) -> tuple[float, float]:
        """Clip, step with the learning rate scaled for this step only, restore, advance the schedule."""
        base_lrs = [group["lr"] for group in self.optimizer.param_groups]
        for group in self.optimizer.param_groups:
            group["lr"] *= lr_factor
        applied_lr = self.optimizer.param_groups[0]["lr"]
        grad_norm = float("nan")
        if self.engine is None or self.config.learner.zero_stage == 0:
            params = [p for p in self.module.parameters() if p.grad is not None]
            clip = self.config.optimizer.grad_clip
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, clip if clip else float("inf")))
        if self.engine is None:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        else:
            self.engine.step()
            if self.config.learner.zero_stage > 0:
                norm = self.engine.get_global_grad_norm()
                grad_norm = float(norm) if norm is not None else grad_norm
        for group, base in zip(self.optimizer.param_groups, base_lrs, strict=True):
            group["lr"] = base
        self.scheduler.step()
        if self.config.learner.release_memory:
            release_free_heap()
        return grad_norm, applied_lr

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
        decide: Callable[[BlendProbe], tuple[float, float]] | None = None,
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
        if self.config.learner.updates_per_batch != 1:
            raise ValueError("SFT–RL blending needs learner.updates_per_batch = 1")
        if plan.meta_gradient and not plan.defer_weights:
            raise ValueError("a meta-gradient plan must defer its weights")
        if plan.defer_weights:
            if decide is None:
                raise ValueError("a plan that defers its weights needs decide()")
            self.check_gradient_access()
        self.module.train()
        use_rl = plan.trains_rl and rl_batch is not None and rl_batch.size > 0
        use_sft = plan.trains_sft and sft_batch is not None and sft_batch.size > 0
        if use_rl and rl_targets is None:
            raise ValueError("the RL side needs the PolicyTargets of its batch")
        probe = BlendProbe(lr=float(self.optimizer.param_groups[0]["lr"]))
        val_grads = None
        if plan.meta_gradient and validation_batch is not None and validation_batch.size > 0:
            validation = self._accumulate(validation_batch, self.sft_loss, weight=1.0, is_last=False, temperature=1.0)
            probe.val_loss = validation.loss
            val_grads = self._take_gradients()

        sft = rl = None
        sft_grads = None
        if use_sft:
            weight = 1.0 if plan.defer_weights else plan.sft_weight
            sft = self._accumulate(
                sft_batch, self.sft_loss, weight=weight, is_last=not use_rl, entropy=plan.sft_entropy, temperature=1.0
            )
            probe.sft_loss, probe.sft_entropy = sft.loss, sft.entropy
            if val_grads is not None:
                probe.val_dot_sft = self._dot_gradients(val_grads)
            if plan.defer_weights:
                sft_grads = self._take_gradients()
        if use_rl:
            weight = 1.0 if plan.defer_weights else plan.rl_weight
            rl = self._accumulate(rl_batch, self.objective, weight=weight, is_last=True, entropy=plan.rl_entropy, targets=rl_targets)
            probe.rl_loss, probe.rl_entropy = rl.loss, rl.entropy
            probe.kl = rl.metrics.get("actor/kl_loss")
            if val_grads is not None:
                probe.val_dot_rl = self._dot_gradients(val_grads)

        if plan.defer_weights:
            rl_weight, sft_weight = decide(probe)
            self._combine_gradients(rl_weight if use_rl else 0.0, sft_grads, sft_weight if use_sft else 0.0)
        else:
            rl_weight, sft_weight = plan.rl_weight, plan.sft_weight
        probe.rl_weight = float(rl_weight) if use_rl else 0.0
        probe.sft_weight = float(sft_weight) if use_sft else 0.0
        lr_factor, lr_metrics = 1.0, {}
        if use_rl:
            lr_factor, lr_metrics = self.objective.lr_scale(
                lr_scale_inputs(rl.current_logp, rl_batch.behaviour_logp, rl_batch.response_mask)
            )
        grad_norm, lr = self._optimizer_step(lr_factor)
        self.steps_taken += 1
        probe.grad_norm = grad_norm
        if plan.reset_reference:
            self.reset_reference()
        total = probe.rl_weight * (probe.rl_loss or 0.0) + probe.sft_weight * (probe.sft_loss or 0.0)
        shares = {
            "actor/loss": total,
            "blend/rl_sequences": float(rl_batch.size) if use_rl else 0.0,
            "blend/sft_sequences": float(sft_batch.size) if use_sft else 0.0,
            **(rl.metrics if rl is not None else {}),
            **(sft.metrics if sft is not None else {}),
        }
        if probe.val_loss is not None:
            shares["blend/val_loss"] = probe.val_loss
        metrics = step_metrics(
            shares,
            {"actor/grad_norm": grad_norm, "actor/lr": lr, "blend/rl_weight": probe.rl_weight,
             "blend/sft_weight": probe.sft_weight, **lr_metrics},
        )
        return metrics, probe

    def _accumulate(
        self,
        batch: TrainBatch,
        loss_fn: Objective | SFTLoss,
        *,
        weight: float,
        is_last: bool,
        entropy: bool = False,
        targets: PolicyTargets | None = None,
        temperature: float | None = None,
    ) -> _BlendSide:
        """Back-propagate weight·loss_fn over `batch`, micro-batched (the loop of `_update`, no step).

        `targets` given: an RL side (advantages, token weights, the reference's log-probs);
        otherwise an SFT side (only log-probs and the mask matter). `entropy`: also the policy's
        mean token entropy over the batch (all ranks).
        """
        rows = torch.arange(batch.size)
        scale = self._step_scale(batch, rows)
        is_rl = targets is not None
        ref_logp = self._frozen_logprobs(self.reference, batch) if is_rl and self.reference is not None else None
        side = _BlendSide(current_logp=torch.zeros_like(batch.response_mask))
        entropy_sum = 0.0
        micro_rows = micro_batches(batch.size, self.config.learner.micro_batch_size)
        for index, local in enumerate(micro_rows):
            sub = batch.select(local)
            width = sub.response_mask.shape[1]
            logp, token_entropy = self.token_logprobs(
                self.module, sub, compute_entropy=loss_fn.needs_entropy or entropy, temperature=temperature
            )
            if is_rl:
                advantages = targets.advantages[local] if targets.advantages.dim() == 1 else targets.advantages[local, :width]
                token_weights = targets.token_weights[local, :width] if targets.token_weights is not None else None
            else:
                advantages, token_weights = torch.zeros(len(local)), None
            inputs = LossInputs(
                logp=logp,
                old_logp=logp.detach(),
                advantages=advantages,
                mask=sub.response_mask,
                ref_logp=ref_logp[local, :width] if ref_logp is not None else None,
                entropy=token_entropy if loss_fn.needs_entropy else None,
                token_ids=sub.response_ids,
                group_index=sub.group_index,
                behaviour_logp=sub.behaviour_logp,
                token_weights=token_weights,
            )
            loss, loss_metrics = loss_fn.compute_loss(inputs, scale)
            self._backward(loss * weight * world_size(), is_last=is_last and index == len(micro_rows) - 1)
            side.loss += float(loss.detach())
            for key, value in loss_metrics.items():
                side.metrics[key] = side.metrics.get(key, 0.0) + float(value)
            if entropy:
                entropy_sum += float((token_entropy.detach().double() * sub.response_mask.double()).sum())
            side.current_logp[local, :width] = logp.detach().float()
        if entropy:
            (entropy_sum,) = all_reduce_sum([entropy_sum])
            side.entropy = entropy_sum / max(scale.tokens, 1)
        return side

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

    def _take_gradients(self) -> list[torch.Tensor | None]:
        """The accumulated gradients (one per trainable parameter), leaving them cleared."""
        grads = []
        for param in self.trainable_parameters():
            grads.append(param.grad)
            param.grad = None
        return grads

    def _dot_gradients(self, other: list[torch.Tensor | None]) -> float:
        """<other, current gradients> over all trainable parameters."""
        total = 0.0
        for param, grad in zip(self.trainable_parameters(), other, strict=True):
            if param.grad is not None and grad is not None:
                total += float((param.grad.float() * grad.float()).sum(dtype=torch.float64))
        return total

    def _combine_gradients(self, rl_weight: float, sft_grads: list[torch.Tensor | None] | None, sft_weight: float) -> None:
        """param.grad <- rl_weight·param.grad + sft_weight·sft_grad (the RL gradient is the current one)."""
        params = self.trainable_parameters()
        for param, sft_grad in zip(params, sft_grads if sft_grads is not None else [None] * len(params), strict=True):
            combined = param.grad.mul_(rl_weight) if param.grad is not None else None
            if sft_grad is not None:
                combined = sft_grad.mul_(sft_weight) if combined is None else combined.add_(sft_grad, alpha=sft_weight)
            param.grad = combined

    def reset_reference(self) -> None:
        """Make the current policy (LoRA merged) the frozen KL reference; no-op without a reference."""
        if self.reference is None:
            return
        with torch.no_grad():
            self.reference.load_state_dict({name: tensor for name, tensor in self.named_weights()}, strict=True)

    def save_reference(self, path: Path) -> None:
        save_file({name: t.detach().clone().contiguous() for name, t in self.reference.state_dict().items()}, path)

    def load_reference(self, path: Path) -> None:
        self.reference.load_state_dict(load_file(path), strict=True)

    # ---- weights out -----------------------------------------------------------------------

    def named_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(Hugging Face name, tensor) of every policy weight, LoRA merged, gathered one at a time under ZeRO-3.

        The policy is left untouched: LoRA-merged and ZeRO-3-gathered weights are new tensors; any
        other weight is a detached view of the live parameter, valid until the next optimizer step.
        """
        model = hf_model(self.module)
        adapted = lora_layers_by_weight_name(model)
        # keep_vars: ZeRO-3 parameters keep the attributes GatheredParameters needs (a plain
        # state_dict() holds their empty local shards).
        for name, tensor in model.state_dict(keep_vars=True).items():
            if "lora_" in name:
                continue
            layer = adapted.get(name)
            if layer is None:
                weight = self._gathered(tensor)
            else:
                with self._gathering(list(layer.parameters())):
                    weight = merged_lora_weight(layer)
            yield name.replace(".base_layer.", "."), weight

    def _gathering(self, params: list[torch.nn.Parameter]) -> contextlib.AbstractContextManager:
        """Under ZeRO-3, `params` whole inside the context (collective: every rank enters it); else nothing."""
        if self.engine is None or self.config.learner.zero_stage < 3:
            return contextlib.nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters(params)

    def _gathered(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` whole: a copy of a ZeRO-3 parameter gathered from every rank, else a view of it."""
        if not hasattr(tensor, "ds_id"):
            return tensor.detach()
        with self._gathering([tensor]):
            return tensor.detach().clone()

    def export_hf(self, folder: Path, tokenizer) -> None:
        """Save a Hugging Face folder (config, safetensors, tokenizer) that transformers and vLLM load."""
        folder = Path(folder)
        state = {name: tensor.clone() for name, tensor in self.named_weights()}
        hf_model(self.module).save_pretrained(folder, state_dict=state, safe_serialization=True)
        tokenizer.save_pretrained(folder)

    # ---- checkpoint state ------------------------------------------------------------------

    def _trainable_state(self) -> dict[str, torch.Tensor]:
        return {name: p.detach().contiguous() for name, p in self.module.named_parameters() if p.requires_grad}

    def save_state(self, folder: Path) -> None:
        """Write the trainable weights, optimizer and schedule into `folder` (safe formats only)."""
        folder.mkdir(parents=True, exist_ok=True)
        if self.engine is not None and self.config.learner.zero_stage > 0:
            self.engine.save_checkpoint(str(folder / "deepspeed"), tag="state", save_latest=False)
        else:
            save_file(self._trainable_state(), folder / "policy.safetensors")
            torch.save(self.optimizer.state_dict(), folder / "optimizer.pt")
        (folder / "learner.json").write_text(
            json.dumps({"scheduler": self.scheduler.state_dict(), "steps_taken": self.steps_taken})
        )

    def load_state(self, folder: Path) -> None:
        if self.engine is not None and self.config.learner.zero_stage > 0:
            self.engine.load_checkpoint(str(folder / "deepspeed"), tag="state")
        else:
            weights = load_file(folder / "policy.safetensors")
            missing = set(self._trainable_state()) - set(weights)
            if missing:
                raise ValueError(f"checkpoint {folder} lacks weights {sorted(missing)[:3]}: saved with another model or LoRA setting")
            with torch.no_grad():
                for name, param in self.module.named_parameters():
                    if name in weights:
                        param.copy_(weights[name])
            self.optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
        state = json.loads((folder / "learner.json").read_text())
        self.scheduler.load_state_dict(state["scheduler"])
        self.steps_taken = state["steps_taken"]


@dataclass
class _BlendSide:
    """What one side (RL, SFT or validation) of a blended step measured."""

    current_logp: torch.Tensor
    loss: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)
    entropy: float | None = None
