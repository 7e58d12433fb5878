"""Checkpoint round trips: a resumed sampler draws exactly the batches of an uninterrupted one."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rlpost.config.sampler import SamplerConfig
from rlpost.samplers import SAMPLERS, build_sampler
from tests.samplers.sampler_helpers import make_prompts, run_steps

NAMES = SAMPLERS.names()
PROMPTS = make_prompts(14)
# A spread of difficulties so VADE's posteriors and Knapsack's budgets become non-trivial.
RATES = {p.prompt_id: rate for p, rate in zip(PROMPTS, np.linspace(0.0, 1.0, len(PROMPTS)), strict=True)}


def _build(name: str, seed: int = 11):
    cfg = SamplerConfig(name=name, vade={"selection": "proportional"} if name == "vade" else {})
    return build_sampler(cfg, PROMPTS, prompts_per_step=4, default_n=8, seed=seed)


@pytest.mark.parametrize("name", NAMES)
def test_resume_draws_identical_future_batches(name):
    sampler = _build(name)
    run_steps(sampler, RATES, range(9))
    saved = json.loads(json.dumps(sampler.state_dict()))  # must be plain JSON

    expected, expected_metrics = run_steps(sampler, RATES, range(9, 25))

    resumed = _build(name, seed=999)  # the seed comes back from the state
    resumed.load_state_dict(saved)
    got, got_metrics = run_steps(resumed, RATES, range(9, 25))
    assert got == expected
    assert got_metrics == expected_metrics


@pytest.mark.parametrize("name", NAMES)
def test_next_batch_repeats_after_reloading_the_state_saved_before_it(name):
    sampler = _build(name)
    run_steps(sampler, RATES, range(5))
    saved = json.loads(json.dumps(sampler.state_dict()))
    first = [(p.prompt_id, n) for p, n in sampler.next_batch(5)]
    sampler.load_state_dict(saved)
    again = [(p.prompt_id, n) for p, n in sampler.next_batch(5)]
    assert again == first


def test_knapsack_state_is_exercised_by_the_round_trip():
    """Guard for the test above: by the save point Knapsack already allocates unequally."""
    sampler = _build("knapsack")
    batches, _ = run_steps(sampler, RATES, range(12))
    assert any(len({n for _, n in batch}) > 1 for batch in batches)


@pytest.mark.parametrize("name", NAMES)
def test_state_of_another_sampler_or_dataset_is_refused(name):
    sampler = _build(name)
    other = next(n for n in NAMES if n != name)
    with pytest.raises(ValueError, match="sampler state is for"):
        sampler.load_state_dict(_build(other).state_dict())
    different_data = build_sampler(SamplerConfig(name=name), make_prompts(14, prefix="z"), prompts_per_step=4,
                                   default_n=8, seed=11)
    with pytest.raises(ValueError, match="different training set"):
        sampler.load_state_dict(different_data.state_dict())
