"""Rollouts with Hugging Face transformers `generate`: no extra dependency, works everywhere."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, LogitsProcessor, LogitsProcessorList

from rlpost.ops.logprobs import warp_logits
from rlpost.rollout.base import RolloutEngine, SamplingSettings
from rlpost.rollout.common import (
    SampledSequence,
    assemble_groups,
    check_request,
    derive_seed,
    hf_named_weights,
    stop_token_ids,
)
from rlpost.types import Group, Prompt

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """`"bfloat16"` (the config spelling) or a torch dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise ValueError(f"unsupported dtype {dtype!r}; use one of {', '.join(_DTYPES)}") from None


class SampledLogprobRecorder(LogitsProcessor):
    """Applies temperature, top-k and top-p itself and records the log-prob of every sampled token
    under that warped distribution: the one `generate` samples from, scored by the learner's rule.

    `HFEngine` turns transformers' own warpers off and installs this as the only processor, so the
    logits returned here are what `generate` samples from, and the learner's
    `model_token_logprobs(..., temperature, top_p, top_k)` computes the same log-probs
    (`rlpost.ops.logprobs.warp_logits`, one implementation for both).

    `generate` calls its logits processors once per step with the step's raw logits (float32) and
    the ids so far, whose last column is the token sampled from the previous step's logits. So each
    call gathers the previous step's log-prob and keeps only the current step's `[batch, vocab]`
    log-softmax: memory O(batch x vocab) instead of `output_logits=True`'s O(steps x batch x vocab)
    (3 GiB for 64 x 256 tokens with a 49k vocabulary), and no second forward pass.
    """

    def __init__(self, temperature: float = 1.0, top_p: float = 1.0, top_k: int = -1) -> None:
        self.warps = (temperature, top_p, top_k)
        self._pending: torch.Tensor | None = None
        self._gathered: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self._pending is not None:
            self._gathered.append(self._gather(self._pending, input_ids[:, -1]))
        warped = warp_logits(scores, *self.warps)
        self._pending = torch.log_softmax(warped, dim=-1)
        return warped

    @staticmethod
    def _gather(logprobs: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return logprobs.gather(-1, tokens[:, None].to(logprobs.device)).squeeze(-1)

    def finish(self, generated: torch.Tensor) -> torch.Tensor:
        """`[batch, steps]` log-probs of the generated ids `[batch, steps]` (the ids without the prompt)."""
        steps = generated.shape[1]
        gathered = list(self._gathered)
        # The last step's token is only known now; if generate ran ahead and undid steps, the
        # surplus entries are cut below (each entry still belongs to its own step).
        if len(gathered) < steps and self._pending is not None:
            gathered.append(self._gather(self._pending, generated[:, -1]))
        if len(gathered) < steps:
            raise RuntimeError(f"recorded {len(gathered)} log-prob steps for {steps} generated tokens")
        return torch.stack(gathered[:steps], dim=1)


class HFEngine(RolloutEngine):
    """Batched `generate` with left padding; behaviour log-probs are those of the sampled
    distribution (after temperature, top-k and top-p; `SampledLogprobRecorder`).

    Groups of unequal size are flattened into one list of sequences, sorted by prompt length (less
    padding) and generated `batch_size` at a time. A fixed `seed` repeats every call's output: each
    call derives its seed from `sampling.seed` (or the engine seed and a call counter) and each
    batch its own from that, in a forked RNG so the caller's torch RNG is untouched.
    """

    def __init__(
        self,
        model_path: str,
        dtype: str | torch.dtype = "float32",
        batch_size: int = 64,
        seed: int = 0,
        device: str | torch.device = "cpu",
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model_path = model_path
        self.dtype = resolve_dtype(dtype)
        self.batch_size = batch_size
        self.seed = seed
        self.device = torch.device(device)
        self.policy_version = 0
        self._calls = 0
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=self.dtype).to(self.device).eval()
        self.model.requires_grad_(False)
        self.stop_ids = stop_token_ids(model_path, self.tokenizer.eos_token_id)
        self.pad_id = self._pad_id()
        self.tied_embeddings = bool(getattr(self.model.config.get_text_config(), "tie_word_embeddings", False))
        # Replace the checkpoint's generation defaults (repetition penalty, suppressed tokens, ...):
        # generate fills unset fields from them, and any such processor would both change the
        # sampling distribution away from vLLM's and sit before SampledLogprobRecorder.
        self.model.generation_config = GenerationConfig(
            eos_token_id=sorted(self.stop_ids), pad_token_id=self.pad_id, bos_token_id=self.tokenizer.bos_token_id
        )

    def _pad_id(self) -> int:
        """Any id works for padding (it is masked); prefer the model's own, then EOS."""
        for candidate in (self.tokenizer.pad_token_id, self.model.generation_config.pad_token_id):
            if isinstance(candidate, int):
                return candidate
        return min(self.stop_ids)

    # ------------------------------------------------------------------ generation

    def generate(self, prompts: list[Prompt], n_per_prompt: list[int], sampling: SamplingSettings) -> list[Group]:
        check_request(prompts, n_per_prompt)
        call_seed = sampling.seed if sampling.seed is not None else derive_seed(self.seed, self._calls)
        self._calls += 1
        # One row per completion, prompt-major; generation order sorts rows by prompt length.
        rows = [i for i, n in enumerate(n_per_prompt) for _ in range(n)]
        order = sorted(range(len(rows)), key=lambda r: len(prompts[rows[r]].token_ids))
        by_row: dict[int, SampledSequence] = {}
        for batch_index, start in enumerate(range(0, len(order), self.batch_size)):
            batch_rows = order[start : start + self.batch_size]
            batch_prompts = [prompts[rows[r]].token_ids for r in batch_rows]
            outputs = self._generate_batch(batch_prompts, sampling, derive_seed(call_seed, batch_index))
            by_row.update(zip(batch_rows, outputs, strict=True))
        sequences = [by_row[row] for row in range(len(rows))]
        return assemble_groups(prompts, n_per_prompt, sequences, self.tokenizer, self.stop_ids, self.policy_version)

    def _generation_config(self, sampling: SamplingSettings) -> GenerationConfig:
        """Every field generate would otherwise fill from its defaults is set (its default top-k is 50).

        transformers' warpers stay off: `SampledLogprobRecorder` applies temperature, top-k and top-p.
        """
        return GenerationConfig(
            max_new_tokens=sampling.max_new_tokens,
            do_sample=not sampling.decodes_greedily,
            temperature=1.0,
            top_p=1.0,
            top_k=0,
            repetition_penalty=1.0,
            num_beams=1,
            eos_token_id=sorted(self.stop_ids),
            pad_token_id=self.pad_id,
        )

    @torch.inference_mode()
    def _generate_batch(
        self, token_ids: Sequence[list[int]], sampling: SamplingSettings, seed: int
    ) -> list[SampledSequence]:
        input_ids, attention_mask = left_pad(token_ids, self.pad_id, self.device)
        recorder = _recorder(sampling)
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(seed)
            sequences = self.model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                generation_config=self._generation_config(sampling),
                logits_processor=LogitsProcessorList([recorder]),
            )
        generated = sequences[:, input_ids.shape[1] :]
        logprobs = recorder.finish(generated)
        # Rows are cut after their first stop token in assemble_groups (generate pads finished rows).
        return [
            SampledSequence(token_ids=ids, logprobs=lps)
            for ids, lps in zip(generated.tolist(), logprobs.tolist(), strict=True)
        ]

    # ------------------------------------------------------------------ weights

    @torch.no_grad()
    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        """Copy learner tensors into the engine's model (cast to its dtype and device).

        Names may come from a plain, DDP/compiled or merged-peft model (see `hf_weight_name`). A
        subset of the weights is fine; an unknown name is an error, since a silently skipped tensor
        would leave the engine sampling from the wrong policy.
        """
        targets: dict[str, torch.Tensor] = dict(self.model.named_parameters(remove_duplicate=False))
        targets.update(self.model.named_buffers(remove_duplicate=False))
        loaded = 0
        for name, tensor in hf_named_weights(named_tensors, self.tied_embeddings):
            target = targets.get(name)
            if target is None:
                raise KeyError(f"update_weights: {name!r} is not a weight of {self.model_path}")
            if target.shape != tensor.shape:
                raise ValueError(
                    f"update_weights: {name!r} has shape {tuple(tensor.shape)}, expected {tuple(target.shape)}"
                )
            target.copy_(tensor)  # copy_ casts dtype and moves device
            loaded += 1
        log.debug("HF engine loaded %d tensors, policy version %d", loaded, version)
        self.policy_version = version

    def close(self) -> None:
        """Drop the model so its memory can be reclaimed."""
        self.model = None  # type: ignore[assignment]


def _recorder(sampling: SamplingSettings) -> SampledLogprobRecorder:
    """Greedy decoding takes the argmax of the raw logits and reports their log-probs (as vLLM does)."""
    if sampling.decodes_greedily:
        return SampledLogprobRecorder()
    return SampledLogprobRecorder(sampling.temperature, sampling.top_p, sampling.top_k)


def left_pad(token_ids: Sequence[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """`[batch, longest]` ids and attention mask, padded on the left so every row ends where generation starts."""
    longest = max(len(ids) for ids in token_ids)
    input_ids = torch.full((len(token_ids), longest), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(token_ids), longest), dtype=torch.long)
    for row, ids in enumerate(token_ids):
        input_ids[row, longest - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, longest - len(ids) :] = 1
    return input_ids.to(device), attention_mask.to(device)
