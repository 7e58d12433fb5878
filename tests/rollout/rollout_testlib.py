"""Checks shared by the rollout tests (a uniquely named module: pytest puts this folder on sys.path)."""

from __future__ import annotations

import torch
from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from rlpost.rollout.base import SamplingSettings
from rlpost.types import Completion, Group, Prompt


def reference_warpers(sampling: SamplingSettings | None) -> LogitsProcessorList:
    """transformers' own temperature, top-k and top-p warpers: an implementation independent of
    rlpost's (`rlpost.ops.logprobs.warp_logits`) with the rule vLLM also follows. None: no warping."""
    warpers = LogitsProcessorList()
    if sampling is None or sampling.decodes_greedily:
        return warpers
    if sampling.temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(sampling.temperature))
    if sampling.top_k >= 1:
        warpers.append(TopKLogitsWarper(sampling.top_k))
    if sampling.top_p < 1.0:
        warpers.append(TopPLogitsWarper(sampling.top_p))
    return warpers


@torch.inference_mode()
def teacher_forced_logprobs(
    model, prompt: Prompt, completion: Completion, sampling: SamplingSettings | None = None
) -> torch.Tensor:
    """Log-probs of the completion's tokens from one unpadded forward pass over prompt + completion,
    under the distribution `sampling` samples from (raw logits when None)."""
    ids = torch.tensor([prompt.token_ids + completion.token_ids])
    logits = model(input_ids=ids).logits[0, len(prompt.token_ids) - 1 : -1].float()
    logits = reference_warpers(sampling)(ids, logits)
    targets = torch.tensor(completion.token_ids)[:, None]
    return torch.log_softmax(logits, dim=-1).gather(-1, targets).squeeze(-1)


def max_logprob_error(model, groups: list[Group], sampling: SamplingSettings | None = None) -> float:
    """Largest |engine log-prob - teacher-forced log-prob| over every token of every completion."""
    worst = 0.0
    for group in groups:
        for completion in group.completions:
            reference = teacher_forced_logprobs(model, group.prompt, completion, sampling)
            worst = max(worst, (reference - torch.tensor(completion.logprobs)).abs().max().item())
    return worst


def token_ids(groups: list[Group]) -> list[list[list[int]]]:
    return [[c.token_ids for c in g.completions] for g in groups]


def check_groups(groups: list[Group], prompts: list[Prompt], sizes: list[int], max_new_tokens: int, tokenizer) -> None:
    """Every structural promise of `RolloutEngine.generate`."""
    eos = tokenizer.eos_token_id
    assert [g.prompt.prompt_id for g in groups] == [p.prompt_id for p in prompts]
    assert [g.size for g in groups] == sizes
    for group in groups:
        for c in group.completions:
            assert 1 <= len(c.token_ids) <= max_new_tokens
            assert len(c.logprobs) == len(c.token_ids)
            assert all(lp <= 0.0 for lp in c.logprobs)
            assert eos not in c.token_ids[:-1], "nothing may follow the end-of-sequence token"
            if c.token_ids[-1] == eos:
                assert c.finish_reason == "stop"
            else:
                assert c.finish_reason == "length" and len(c.token_ids) == max_new_tokens
            assert c.text == tokenizer.decode(c.token_ids, skip_special_tokens=True)
            assert c.policy_version == group.policy_version


def perturbed_state_dict(model) -> dict[str, torch.Tensor]:
    """A copy of the weights with every MLP and attention projection scaled: a clearly different policy."""
    scaled = ("mlp", "self_attn")
    return {
        name: tensor.detach().float() * (1.1 if any(part in name for part in scaled) else 1.0)
        for name, tensor in model.state_dict().items()
    }


def all_logprobs(groups: list[Group]) -> list[list[float]]:
    return [c.logprobs for g in groups for c in g.completions]


def response_tensors(groups: list[Group], pad_id: int) -> dict[str, torch.Tensor]:
    """The learner's layout of every completion: input_ids, attention_mask, response_index,
    response_mask (as `model_token_logprobs` takes them) and the engine's behaviour_logp, [N, T]."""
    rows = [(g.prompt.token_ids, c.token_ids, c.logprobs) for g in groups for c in g.completions]
    seq_len = max(len(p) + len(r) for p, r, _ in rows)
    resp_len = max(len(r) for _, r, _ in rows)
    out = {
        "input_ids": torch.full((len(rows), seq_len), pad_id, dtype=torch.long),
        "attention_mask": torch.zeros((len(rows), seq_len), dtype=torch.long),
        "response_index": torch.zeros((len(rows), resp_len), dtype=torch.long),
        "response_mask": torch.zeros((len(rows), resp_len)),
        "behaviour_logp": torch.zeros((len(rows), resp_len)),
    }
    for i, (prompt, response, logprobs) in enumerate(rows):
        p, r = len(prompt), len(response)
        out["input_ids"][i, : p + r] = torch.tensor(prompt + response)
        out["attention_mask"][i, : p + r] = 1
        out["response_index"][i, :r] = torch.arange(p, p + r)
        out["response_mask"][i, :r] = 1.0
        out["behaviour_logp"][i, :r] = torch.tensor(logprobs)
    return out
