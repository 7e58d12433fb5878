"""The Hugging Face `generate` engine on the real SmolLM2-135M model (fp32 unless stated)."""

from __future__ import annotations

import pytest
import torch
from rollout_testlib import all_logprobs, check_groups, max_logprob_error, perturbed_state_dict, token_ids

from rlpost.config.schema import RolloutConfig
from rlpost.rollout import build_engine
from rlpost.rollout.base import SamplingSettings
from rlpost.rollout.hf import HFEngine

SAMPLED = SamplingSettings(max_new_tokens=12, temperature=0.8, top_p=0.9, top_k=50, seed=123)
GREEDY = SamplingSettings(max_new_tokens=12, greedy=True)
TEACHER_FORCED = SamplingSettings(max_new_tokens=16, temperature=0.7, top_k=20, top_p=0.9, seed=5)


def test_groups_have_the_requested_structure(hf_engine, prompts, tokenizer) -> None:
    sizes = [3, 1, 2]
    groups = hf_engine.generate(prompts, sizes, SAMPLED)
    check_groups(groups, prompts, sizes, SAMPLED.max_new_tokens, tokenizer)
    assert all(c.policy_version == hf_engine.policy_version for g in groups for c in g.completions)


def test_logprobs_equal_a_teacher_forced_forward(hf_engine, prompts) -> None:
    """Log-probs of the sampled distribution (after temperature, top-k and top-p) from padded batched
    generation match an unpadded forward through transformers' own warpers."""
    # batch_size 4 for 6 rows: two batches, each mixing prompt lengths, i.e. with left padding.
    groups = hf_engine.generate(prompts, [2, 2, 2], TEACHER_FORCED)
    assert max_logprob_error(hf_engine.model, groups, TEACHER_FORCED) < 1e-4


def test_tiny_token_limit_finishes_with_length(hf_engine, prompts, tokenizer) -> None:
    groups = hf_engine.generate(prompts, [2, 1, 1], SamplingSettings(max_new_tokens=2, seed=1))
    check_groups(groups, prompts, [2, 1, 1], 2, tokenizer)
    assert all(c.finish_reason == "length" and len(c.token_ids) == 2 for g in groups for c in g.completions)


def test_some_completions_stop_at_eos(hf_engine, prompts, tokenizer) -> None:
    """The model answers the short question within 24 tokens: EOS is kept and ends the completion."""
    groups = hf_engine.generate(prompts[:1], [1], SamplingSettings(max_new_tokens=24, greedy=True))
    (completion,) = groups[0].completions
    assert completion.finish_reason == "stop"
    assert completion.token_ids[-1] == tokenizer.eos_token_id


def test_greedy_is_deterministic_and_seeds_repeat(hf_engine, prompts) -> None:
    first = hf_engine.generate(prompts, [2, 1, 1], GREEDY)
    again = hf_engine.generate(prompts, [2, 1, 1], SamplingSettings(max_new_tokens=12, greedy=True, seed=99))
    assert token_ids(first) == token_ids(again)
    assert first[0].completions[0].token_ids == first[0].completions[1].token_ids

    sampled = hf_engine.generate(prompts, [2, 1, 1], SAMPLED)
    repeated = hf_engine.generate(prompts, [2, 1, 1], SAMPLED)
    other_seed = hf_engine.generate(prompts, [2, 1, 1], SamplingSettings(**{**SAMPLED.__dict__, "seed": 124}))
    assert token_ids(sampled) == token_ids(repeated)
    assert token_ids(sampled) != token_ids(other_seed)


def test_unseeded_calls_repeat_per_engine_seed(model_path, prompts) -> None:
    """Without `sampling.seed`, call k of two engines built with the same seed gives the same output."""
    settings = SamplingSettings(max_new_tokens=6, temperature=1.0)
    a, b = (HFEngine(model_path, dtype="float32", batch_size=8, seed=7) for _ in range(2))
    first_a, first_b = a.generate(prompts, [2, 1, 1], settings), b.generate(prompts, [2, 1, 1], settings)
    second_a = a.generate(prompts, [2, 1, 1], settings)
    assert token_ids(first_a) == token_ids(first_b)
    assert token_ids(second_a) != token_ids(first_a)


def test_weight_update_changes_generation_and_restores(hf_engine, prompts) -> None:
    original = {name: t.detach().clone() for name, t in hf_engine.model.state_dict().items()}
    baseline = hf_engine.generate(prompts, [1, 1, 1], GREEDY)
    try:
        # Names as a peft model with merged adapters reports them: prefixed, `.base_layer.`, plus LoRA tensors.
        peft_style = []
        for name, tensor in perturbed_state_dict(hf_engine.model).items():
            if name.endswith("q_proj.weight"):
                peft_style.append(("base_model.model." + name.replace("q_proj.", "q_proj.base_layer."), tensor))
                lora_name = "base_model.model." + name.replace("weight", "lora_A.default.weight")
                peft_style.append((lora_name, torch.zeros(4, 4)))
            else:
                peft_style.append(("base_model.model." + name, tensor))
        hf_engine.update_weights(peft_style, version=1)
        changed = hf_engine.generate(prompts, [1, 1, 1], GREEDY)
        assert hf_engine.policy_version == 1
        assert all(c.policy_version == 1 for g in changed for c in g.completions)
        assert token_ids(changed) != token_ids(baseline)
    finally:
        hf_engine.update_weights(original.items(), version=2)
    restored = hf_engine.generate(prompts, [1, 1, 1], GREEDY)
    assert token_ids(restored) == token_ids(baseline)
    assert all_logprobs(restored) == all_logprobs(baseline)
    assert restored[0].completions[0].policy_version == 2


def test_update_rejects_unknown_names(hf_engine) -> None:
    with pytest.raises(KeyError):
        hf_engine.update_weights([("model.no_such_layer.weight", torch.zeros(1))], version=9)
    assert hf_engine.policy_version != 9


def test_bf16_engine_takes_fp32_weights(model_path, prompts, hf_engine) -> None:
    """build_engine from the config; fp32 learner tensors are cast into the bf16 engine."""
    engine = build_engine(RolloutConfig(engine="hf", dtype="bfloat16", batch_size=8), model_path, seed=0)
    assert isinstance(engine, HFEngine) and engine.model.dtype == torch.bfloat16
    baseline = engine.generate(prompts, [1, 1, 1], GREEDY)
    engine.update_weights(perturbed_state_dict(hf_engine.model).items(), version=3)
    changed = engine.generate(prompts, [1, 1, 1], GREEDY)
    assert token_ids(changed) != token_ids(baseline)
    engine.update_weights(((n, t.float()) for n, t in hf_engine.model.state_dict().items()), version=4)
    assert token_ids(engine.generate(prompts, [1, 1, 1], GREEDY)) == token_ids(baseline)
    assert engine.model.dtype == torch.bfloat16
    engine.close()
