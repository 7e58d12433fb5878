"""Fixtures of the rollout tests: the real SmolLM2-135M model, chat prompts, a teacher-forced reference."""

from __future__ import annotations

import os

# Before torch starts its OpenMP pool: busy-waiting threads slow a shared 2-core machine 10x.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from rlpost.models import resolve_model  # noqa: E402
from rlpost.types import Prompt  # noqa: E402

QUESTIONS = [
    "What is 2 + 3?",
    "Name one colour of the rainbow.",
    "Tom has 4 apples and buys 7 more. How many apples does he have now? Explain briefly.",
]


@pytest.fixture(scope="session")
def model_path() -> str:
    return resolve_model("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def tokenizer(model_path: str):
    return AutoTokenizer.from_pretrained(model_path)


@pytest.fixture(scope="session")
def prompts(tokenizer) -> list[Prompt]:
    """Three chat prompts of different lengths (so batches need padding)."""
    out = []
    for i, question in enumerate(QUESTIONS):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
        )
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        out.append(Prompt(prompt_id=f"p{i}", text=text, token_ids=ids, row={"question": question}))
    assert len({len(p.token_ids) for p in out}) == len(out)
    return out


@pytest.fixture(scope="session")
def hf_engine(model_path: str):
    """The fp32 HF engine; its model doubles as the teacher-forcing reference."""
    from rlpost.rollout.hf import HFEngine

    engine = HFEngine(model_path, dtype="float32", batch_size=4, seed=0)
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def vllm_engine(model_path):
    """One fp32 eager vLLM engine for every test that needs it (each start costs 20-30 s)."""
    pytest.importorskip("vllm")
    from rlpost.config.schema import RolloutConfig, VllmConfig
    from rlpost.rollout import build_engine
    from rlpost.rollout.vllm import VLLMEngine

    config = RolloutConfig(engine="vllm", dtype="float32", vllm=VllmConfig(enforce_eager=True, kv_cache_space_gib=1))
    engine = build_engine(config, model_path, seed=0)
    assert isinstance(engine, VLLMEngine)
    yield engine
    engine.close()
