"""Sampler settings: names, sub-sections, validation, documentation, the factory."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from rlpost.config import RLPostConfig
from rlpost.config.sampler import SamplerConfig
from rlpost.samplers import SAMPLERS, KnapsackConfig, build_sampler
from tests.samplers.sampler_helpers import make_prompts


@pytest.mark.parametrize("section", [SamplerConfig, *(e.config for e in SAMPLERS.entries() if e.config)])
def test_every_field_is_documented(section):
    for name, field in section.model_fields.items():
        assert field.description, f"{section.__name__}.{name} has no docstring"


def test_knapsack_defaults_are_the_reference_script():
    cfg = KnapsackConfig()
    assert (cfg.min_n, cfg.negative_n, cfg.positive_n, cfg.max_n) == (2, 2, 2, 128)
    assert (cfg.alpha, cfg.cost_estimation, cfg.allow_fallback) == (0.9, "probability", True)
    assert (cfg.reward_buffer_length, cfg.min_buffer_length) == (16, 8)


def test_sub_sections_load_from_the_whole_config():
    cfg = RLPostConfig(sampler={"name": "knapsack", "knapsack": {"max_n": 64}, "vade": {"selection": "proportional"}})
    assert cfg.sampler.name == "knapsack"
    assert cfg.sampler.knapsack.max_n == 64
    assert cfg.sampler.vade.selection == "proportional"


@pytest.mark.parametrize(
    "bad",
    [
        {"name": "dapo_dynamic"},
        {"vade": {"pool_factr": 2}},
        {"vade": {"pool_factor": 0.5}},
        {"vade": {"lambda_fast": 1.5}},
        {"knapsack": {"min_n": 0}},
        {"knapsack": {"min_n": 8, "max_n": 4}},
        {"knapsack": {"cost_estimation": "guess"}},
    ],
)
def test_invalid_settings_are_rejected(bad):
    with pytest.raises(ValidationError):
        SamplerConfig(**bad)


def test_the_shipped_samplers_are_registered_with_their_sections():
    assert sorted(SAMPLERS.names()) == ["cures", "knapsack", "uniform", "vade"]
    assert [e.name for e in SAMPLERS.entries() if e.config is None] == ["uniform"]
    assert sorted(SamplerConfig.model_fields) == ["cures", "knapsack", "name", "vade"]
    assert SamplerConfig.model_fields["knapsack"].annotation is KnapsackConfig


def test_unknown_sampler_names_the_closest_one():
    with pytest.raises(ValidationError, match="unknown sampler 'vaed' \\(did you mean 'vade'\\?\\)"):
        SamplerConfig(name="vaed")


@pytest.mark.parametrize("name", SAMPLERS.names())
def test_build_sampler_returns_the_named_sampler(name):
    sampler = build_sampler(SamplerConfig(name=name), make_prompts(10), prompts_per_step=4, default_n=8, seed=0)
    assert type(sampler) is SAMPLERS.get(name)
    assert sampler.name == name
    batch = sampler.next_batch(0)
    assert len(batch) == 4
    assert all(n == 8 for _, n in batch)  # no history yet: every sampler starts uniform


def test_build_sampler_passes_the_sub_section():
    cfg = SamplerConfig(name="vade", vade={"pool_factor": 2.0})
    sampler = build_sampler(cfg, make_prompts(20), prompts_per_step=3, default_n=4, seed=0)
    assert sampler.pool_size == 6


def test_knapsack_base_allocation_must_fit_in_rollout_n():
    cfg = SamplerConfig(name="knapsack", knapsack={"negative_n": 6})
    with pytest.raises(ValueError, match="negative_n"):
        build_sampler(cfg, make_prompts(10), prompts_per_step=2, default_n=4, seed=0)


def test_batch_larger_than_dataset_is_an_error():
    with pytest.raises(ValueError, match="prompts_per_step"):
        build_sampler(SamplerConfig(), make_prompts(3), prompts_per_step=4, default_n=8, seed=0)


def test_duplicate_prompt_ids_are_an_error():
    prompts = make_prompts(3) + make_prompts(1)
    with pytest.raises(ValueError, match="duplicate prompt_id"):
        build_sampler(SamplerConfig(), prompts, prompts_per_step=2, default_n=8, seed=0)
