"""Model-free parts of the rollout package: weight names, seeds, truncation and group assembly."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from rlpost.rollout.common import (
    SampledSequence,
    assemble_groups,
    check_request,
    derive_seed,
    finalize_sequence,
    hf_named_weights,
    hf_weight_name,
)
from rlpost.types import Prompt


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("model.layers.0.mlp.up_proj.weight", "model.layers.0.mlp.up_proj.weight"),
        ("module.model.norm.weight", "model.norm.weight"),
        ("_orig_mod.model.norm.weight", "model.norm.weight"),
        (
            "base_model.model.model.layers.3.self_attn.q_proj.base_layer.weight",
            "model.layers.3.self_attn.q_proj.weight",
        ),
        ("base_model.model.model.layers.3.self_attn.q_proj.lora_A.default.weight", None),
        ("base_model.model.model.layers.3.self_attn.q_proj.lora_B.default.weight", None),
        ("base_model.model.lm_head.modules_to_save.default.weight", "lm_head.weight"),
        ("base_model.model.lm_head.original_module.weight", None),
    ],
)
def test_hf_weight_name(raw: str, expected: str | None) -> None:
    assert hf_weight_name(raw) == expected


def test_tied_lm_head_is_dropped_only_when_tied() -> None:
    weights = [("model.embed_tokens.weight", torch.zeros(2)), ("lm_head.weight", torch.zeros(2))]
    assert [n for n, _ in hf_named_weights(weights, tied_embeddings=True)] == ["model.embed_tokens.weight"]
    assert [n for n, _ in hf_named_weights(weights, tied_embeddings=False)] == [n for n, _ in weights]


def test_derive_seed_is_stable_and_spread() -> None:
    assert derive_seed(0, 1) == derive_seed(0, 1)
    seeds = {derive_seed(0, i) for i in range(1000)}
    assert len(seeds) == 1000
    assert all(0 <= s < 2**31 - 2**16 for s in seeds)
    assert derive_seed(0, 1) != derive_seed(1, 0)


def test_finalize_cuts_after_first_stop_token() -> None:
    cut = finalize_sequence(SampledSequence([5, 6, 2, 2, 2], [-0.1, -0.2, -0.3, -0.4, -0.5]), frozenset({2}))
    assert (cut.token_ids, cut.logprobs, cut.finish_reason) == ([5, 6, 2], [-0.1, -0.2, -0.3], "stop")
    full = finalize_sequence(SampledSequence([5, 6], [-0.1, -0.2]), frozenset({2}))
    assert (full.token_ids, full.finish_reason) == ([5, 6], "length")
    reported = finalize_sequence(SampledSequence([5], [-0.1], finish_reason="stop"), frozenset({2}))
    assert reported.finish_reason == "stop"


class _FakeDecoder:
    """Just enough of a tokenizer for assembly: ids become their decimal strings."""

    def batch_decode(self, sequences: list[list[int]], skip_special_tokens: bool = True) -> list[str]:
        return [" ".join(str(t) for t in seq if not (skip_special_tokens and t == 2)) for seq in sequences]


def test_assemble_groups_unequal_sizes() -> None:
    prompts = [Prompt(f"p{i}", "", [1, i + 10]) for i in range(3)]
    sequences = [SampledSequence([10 + i, 2, 2], [-1.0, -2.0, -3.0]) for i in range(5)]
    groups = assemble_groups(prompts, [2, 0, 3], sequences, _FakeDecoder(), frozenset({2}), policy_version=7)
    assert [g.size for g in groups] == [2, 0, 3]
    assert [c.token_ids for c in groups[2].completions] == [[12, 2], [13, 2], [14, 2]]
    assert groups[0].completions[1].text == "11"
    assert all(c.policy_version == 7 and c.finish_reason == "stop" for g in groups for c in g.completions)
    with pytest.raises(RuntimeError):
        assemble_groups(prompts, [2, 0, 2], sequences, _FakeDecoder(), frozenset({2}), policy_version=0)


def test_check_request_rejects_mismatch() -> None:
    prompts = [Prompt("p", "", [1])]
    with pytest.raises(ValueError):
        check_request(prompts, [1, 2])
    with pytest.raises(ValueError):
        check_request(prompts, [-1])
    check_request(prompts, [0])


def test_rollout_package_imports_without_vllm() -> None:
    """`import rlpost.rollout` (and the vLLM engine module) must not import vLLM: checked in a fresh
    interpreter where `import vllm` fails."""
    code = (
        "import sys; sys.modules['vllm'] = None\n"  # a None entry makes `import vllm` raise ImportError
        "import rlpost.rollout, rlpost.rollout.vllm\n"
        "assert callable(rlpost.rollout.build_engine)\n"
        "print('ok')"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
