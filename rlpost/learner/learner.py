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
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from rlpost.config.schema import RLPostConfig
from rlpost.learner.batch import PolicyTargets, TrainBatch, micro_batches
from rlpost.learner.distributed import all_reduce_sum, ensure_process_group, world_size
from rlpost.learner.optim import build_optimizer, build_scheduler
from rlpost.objectives.base import LossInputs, Objective, StepScale
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
        self, model: torch.nn.Module, batch: TrainBatch, compute_entropy: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Response-aligned [N, T] log-probs (and entropy) of `batch` under `model`."""
        autocast = self.config.learner.mixed_precision == "bf16"
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=autocast):
            return model_token_logprobs(
                model,
                batch.input_ids,
                batch.attention_mask,
                batch.response_index,
                batch.response_mask,
                temperature=self.temperature,
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
            step_metrics = self._update(batch, mini_rows, targets, old_logp, ref_logp)
            for key, value in step_metrics.items():
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
        step_metrics: dict[str, float] = defaultdict(float)
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
                step_metrics[key] += float(value)
            current_logp[local, :width] = logp.detach().float()
        lr_factor, lr_metrics = self.objective.lr_scale(
            {"logp": current_logp, "behaviour_logp": batch.behaviour_logp[rows], "mask": batch.response_mask[rows]}
        )
        grad_norm, lr = self._optimizer_step(lr_factor)
        self.steps_taken += 1
        return {"actor/loss": total_loss, "actor/grad_norm": grad_norm, "actor/lr": lr, **step_metrics, **lr_metrics}

    def _backward(self, loss: torch.Tensor, is_last: bool) -> None:
        if self.engine is None:
            loss.backward()
            return
        self.engine.set_gradient_accumulation_boundary(is_last)
        self.engine.backward(loss)

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
        return grad_norm, applied_lr

    # ---- weights out -----------------------------------------------------------------------

    @contextlib.contextmanager
    def _merged(self) -> Iterator[torch.nn.Module]:
        """The policy with LoRA adapters merged in (the plain model otherwise), for reading weights."""
        module = self.module
        if not _is_peft(module):
            yield module
            return
        module.merge_adapter()
        try:
            yield module.get_base_model()
        finally:
            module.unmerge_adapter()

    def named_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(Hugging Face name, tensor) of every policy weight, LoRA merged, gathered one at a time under ZeRO-3."""
        with self._merged() as model:
            for name, tensor in model.state_dict().items():
                if "lora_" in name:
                    continue
                yield name.replace(".base_layer.", "."), self._gathered(tensor)

    def _gathered(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.engine is None or self.config.learner.zero_stage < 3 or not hasattr(tensor, "ds_id"):
            return tensor.detach()
        import deepspeed

        with deepspeed.zero.GatheredParameters([tensor]):
            return tensor.detach().clone()

    def export_hf(self, folder: Path, tokenizer) -> None:
        """Save a Hugging Face folder (config, safetensors, tokenizer) that transformers and vLLM load."""
        folder = Path(folder)
        state = {name: tensor.clone() for name, tensor in self.named_weights()}
        with self._merged() as model:
            model.save_pretrained(folder, state_dict=state, safe_serialization=True)
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
