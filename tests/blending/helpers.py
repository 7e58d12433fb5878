"""Tiny-model helpers of the blending tests: a word tokenizer, configs, hand-computed losses, gradient capture."""

from __future__ import annotations

import random

import torch
from transformers import LlamaForCausalLM

from rlpost.blending.demos import Demonstrations
from rlpost.config.schema import RLPostConfig
from rlpost.learner.learner import Learner
from rlpost.objectives.registry import get_objective
from rlpost.types import Completion, Group, Prompt

EOS, PAD = 1, 0  # the tiny_model_path model's ids


class WordTokenizer:
    """Solutions written as space-separated token ids: "5 17 33" -> [5, 17, 33]."""

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        assert not add_special_tokens
        return {"input_ids": [int(word) for word in text.split()]}


def demonstrations(max_tokens: int | None = None) -> Demonstrations:
    return Demonstrations(WordTokenizer(), EOS, PAD, max_tokens)


def make_config(model_path: str, *, blending: dict | None = None, objective: dict | None = None, **learner) -> RLPostConfig:
    return RLPostConfig.model_validate(
        {
            "model": {"path": model_path},
            "learner": {"backend": "torch", "mixed_precision": "no", **learner},
            "optimizer": {"lr": 1.0, "eps": 1.0, "grad_clip": None},
            "rollout": {"max_new_tokens": 8},
            "objective": objective or {},
            "blending": blending or {},
        }
    )


def make_learner(config: RLPostConfig) -> Learner:
    torch.manual_seed(0)
    objective = get_objective(config.objective.name)(config.objective, config.rollout.max_new_tokens)
    return Learner(config, config.model.path, objective, total_steps=4)


def scored_groups(correct: list[list[bool]], seed: int = 0, vocab: int = 128, prefix: str = "p") -> list[Group]:
    """Groups with the given correct flags (reward = correct), random token ids, and a worked solution each."""
    rng = random.Random(seed)
    groups = []
    for g, flags in enumerate(correct):
        prompt_ids = [rng.randrange(3, vocab) for _ in range(rng.randint(3, 6))]
        solution = " ".join(str(rng.randrange(3, vocab)) for _ in range(rng.randint(2, 6)))
        completions = []
        for _ in flags:
            ids = [rng.randrange(3, vocab) for _ in range(rng.randint(1, 7))]
            completions.append(Completion(ids, "", [-1.0] * len(ids), "stop"))
        rewards = [float(f) for f in flags]
        groups.append(
            Group(Prompt(f"{prefix}{g}", "", prompt_ids, {"solution": solution}), completions, rewards=rewards,
                  reward_components={"math_verify": list(rewards)}, correct=list(flags))
        )
    return groups


def capture_gradients(learner: Learner) -> list[dict[str, torch.Tensor]]:
    """Records the gradients the learner is about to apply, at every optimizer step."""
    captured: list[dict[str, torch.Tensor]] = []
    original = learner._optimizer_step

    def recording(lr_factor: float):
        captured.append({name: p.grad.detach().clone() for name, p in learner.module.named_parameters() if p.grad is not None})
        return original(lr_factor)

    learner._optimizer_step = recording
    return captured


# ---------------------------------------------------------------------------------- by hand


def fresh_model(model_path: str) -> LlamaForCausalLM:
    model = LlamaForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    model.config.use_cache = False
    return model


def completion_logps(model, prompt_ids: list[int], completion_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """log pi(completion token t | prompt, earlier tokens) and the entropy of that distribution, one row, no padding."""
    ids = torch.tensor([prompt_ids + completion_ids])
    logits = model(input_ids=ids).logits[0].float()
    start = len(prompt_ids) - 1
    logp_all = torch.log_softmax(logits[start : start + len(completion_ids)], dim=-1)
    logp = logp_all.gather(-1, torch.tensor(completion_ids)[:, None])[:, 0]
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy


def demo_ids(group: Group) -> list[int]:
    return [int(w) for w in group.prompt.row["solution"].split()] + [EOS]


def sft_loss_by_hand(model, groups: list[Group]) -> tuple[torch.Tensor, float]:
    """Token-mean NLL of the groups' demonstrations, and the mean token entropy on them."""
    logps, entropies = zip(*(completion_logps(model, g.prompt.token_ids, demo_ids(g)) for g in groups))
    logp, entropy = torch.cat(logps), torch.cat(entropies)
    return -logp.sum() / logp.numel(), float(entropy.detach().mean())


def rl_loss_by_hand(model, groups: list[Group], *, std: bool, agg: str, max_len: int) -> tuple[torch.Tensor, float]:
    """GRPO / Dr.GRPO loss at ratio 1 (value -A per token, gradient -A grad logp), and the mean token entropy.

    agg: `token-mean` (sum / tokens) or `sum-norm` (sum / max_len).
    """
    terms, tokens, entropies = [], 0, []
    for group in groups:
        rewards = torch.tensor(group.rewards, dtype=torch.float64)
        centred = rewards - rewards.mean()
        if std:
            spread = rewards.std() if rewards.numel() > 1 else torch.tensor(0.0, dtype=torch.float64)
            advantages = centred / (spread + 1e-6) if spread > 0 else torch.zeros_like(centred)
        else:
            advantages = centred
        for completion, advantage in zip(group.completions, advantages.float(), strict=True):
            logp, entropy = completion_logps(model, group.prompt.token_ids, completion.token_ids)
            terms.append((-advantage * torch.exp(logp - logp.detach())).sum())
            tokens += logp.numel()
            entropies.append(entropy)
    total = torch.stack(terms).sum()
    loss = total / tokens if agg == "token-mean" else total / max_len
    return loss, float(torch.cat(entropies).detach().mean())


def gradients_of(model, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    params = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, [p for _, p in params], allow_unused=True)
    return {name: (g if g is not None else torch.zeros_like(p)) for (name, p), g in zip(params, grads, strict=True)}


def assert_gradients_close(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], rtol=1e-4, atol=1e-6) -> None:
    assert set(actual) <= set(expected)
    moved = max(float(g.abs().max()) for g in expected.values())
    assert moved > 1e-4, "the expected gradient must be non-trivial for the comparison to mean anything"
    for name, grad in expected.items():
        torch.testing.assert_close(actual.get(name, torch.zeros_like(grad)), grad, rtol=rtol, atol=atol, msg=name)
