"""VADE: §10.3 / §10.5 worked numbers, exploration, decay, and its effect on zero-variance groups."""

from __future__ import annotations

import numpy as np
import pytest

from rlpost.samplers import UniformSampler, VadeConfig, VadeSampler, information_score
from rlpost.samplers.vade import beta_update, choose, decay_toward_prior
from rlpost.types import Prompt
from tests.samplers.sampler_helpers import make_group, make_prompts, run_steps

NO_DECAY = {"lambda_fast": 1.0, "lambda_slow": 1.0}


def _sampler_with_posteriors(posteriors: dict[str, tuple[float, float]], *, seed: int, **cfg) -> VadeSampler:
    """A VADE sampler whose prompts have the given (already visited) posteriors."""
    prompts = [Prompt(prompt_id=pid, text=pid, token_ids=[0]) for pid in posteriors]
    sampler = VadeSampler(prompts, prompts_per_step=1, default_n=8, seed=seed, config=VadeConfig(**cfg))
    state = sampler.state_dict()
    state["posteriors"] = {pid: [a, b, 1] for pid, (a, b) in posteriors.items()}
    sampler.load_state_dict(state)
    return sampler


def test_informative_prompt_beats_hopeless_one_with_fixed_rng():
    # §10.3: (50, 50) is picked over (1, 99); the pool holds both prompts.
    for seed in range(20):
        sampler = _sampler_with_posteriors({"even": (50, 50), "hopeless": (1, 99)}, seed=seed, pool_factor=2.0)
        [(prompt, n)] = sampler.next_batch(0)
        assert prompt.prompt_id == "even"
        assert n == 8


def test_count_update_from_flat_prior():
    # §10.3: (1, 1) plus 3 successes of 8 gives (4, 6).
    assert beta_update(1.0, 1.0, 3, 8, lam=1.0, prior_a=1.0, prior_b=1.0) == (4.0, 6.0)


def test_decay_halfway_to_prior():
    # §10.3: lambda = 0.5 from (4, 6) toward (1, 1) gives (2.5, 3.5).
    assert decay_toward_prior(np.array([4.0, 6.0]), 1.0, 0.5).tolist() == [2.5, 3.5]


def test_mopps_example():
    # §10.5: lambda = 0.9, s = 2/8, n = 8: (1, 1) -> (3, 7).
    a, b = beta_update(1.0, 1.0, 2, 8, lam=0.9, prior_a=1.0, prior_b=1.0)
    assert (a, b) == pytest.approx((3.0, 7.0), abs=1e-12)


def test_information_scores_and_choice():
    # §10.5: draws 0.40, 0.10, 0.80 score 0.144, 0.081, 0.032; the first is chosen.
    scores = information_score(np.array([0.40, 0.10, 0.80]))
    assert scores == pytest.approx([0.144, 0.081, 0.032], abs=1e-12)
    assert choose(scores, 1, "top", np.random.default_rng(0)).tolist() == [0]
    grid = np.linspace(0.0, 1.0, 3001)
    assert grid[np.argmax(information_score(grid))] == pytest.approx(1 / 3, abs=1e-3)
    assert information_score(1 / 3) == pytest.approx(4 / 27)


def test_sampler_update_applies_the_counts():
    prompts = make_prompts(4)
    sampler = VadeSampler(prompts, prompts_per_step=1, default_n=8, seed=0, config=VadeConfig(**NO_DECAY))
    sampler.update([make_group(prompts[2], [1, 0, 1, 0, 0, 1, 0, 0])])
    assert sampler.posterior("q2") == (4.0, 6.0)
    assert sampler.posterior("q1") == (1.0, 1.0)


def test_slow_decay_reaches_every_prompt_fast_decay_only_the_visited():
    prompts = make_prompts(3)
    cfg = VadeConfig(lambda_fast=0.5, lambda_slow=0.5)
    sampler = VadeSampler(prompts, prompts_per_step=1, default_n=4, seed=0, config=cfg)
    sampler.update([make_group(prompts[0], [1, 1, 1, 0])])  # (1,1) -> (4, 2)
    assert sampler.posterior("q0") == (4.0, 2.0)
    sampler.update([make_group(prompts[1], [0, 0])])
    # q0 not visited: slow decay only, halfway back to the prior.
    assert sampler.posterior("q0") == (2.5, 1.5)
    # q1 visited: slow and fast decay leave the prior unchanged, then the counts are added.
    assert sampler.posterior("q1") == (1.0, 3.0)
    assert sampler.posterior("q2") == (1.0, 1.0)


def test_unseen_prompts_are_explored_first():
    prompts = make_prompts(16)
    rates = {p.prompt_id: 0.4 for p in prompts}
    sampler = VadeSampler(prompts, prompts_per_step=4, default_n=8, seed=2, config=VadeConfig(pool_factor=4.0))
    batches, metrics = run_steps(sampler, rates, range(4))
    visited = [pid for batch in batches for pid, _ in batch]
    assert sorted(visited) == sorted(p.prompt_id for p in prompts)  # pool = all 16; unseen go first
    assert [m["sampler/vade/unseen_selected"] for m in metrics] == [4, 4, 4, 4]
    assert metrics[-1]["sampler/vade/never_visited_frac"] == 0.0


@pytest.mark.parametrize("selection", ["top", "proportional"])
def test_batches_hold_distinct_prompts_from_the_pool(selection):
    prompts = make_prompts(40)
    rates = {p.prompt_id: i / 40 for i, p in enumerate(prompts)}
    sampler = VadeSampler(prompts, prompts_per_step=5, default_n=4, seed=1, config=VadeConfig(selection=selection))
    batches, metrics = run_steps(sampler, rates, range(30))
    for batch, step_metrics in zip(batches, metrics, strict=True):
        assert len({pid for pid, _ in batch}) == 5
        assert all(n == 4 for _, n in batch)
        assert step_metrics["sampler/vade/pool_size"] == 20
        assert 0.0 <= step_metrics["sampler/vade/selection_entropy"] <= 1.0


def test_selection_metrics_describe_the_selected_posteriors():
    prompts = make_prompts(6)
    sampler = VadeSampler(prompts, prompts_per_step=2, default_n=4, seed=4, config=VadeConfig(**NO_DECAY))
    sampler.update([make_group(p, [1, 0, 0, 0]) for p in prompts])  # every posterior (2, 4)
    batch = sampler.next_batch(1)
    metrics = sampler.update([make_group(p, [1, 1, 0, 0]) for p, _ in batch])
    assert metrics["sampler/vade/selected_posterior_mean"] == pytest.approx(2 / 6)
    assert metrics["sampler/vade/selected_posterior_var"] == pytest.approx(2 * 4 / (6**2 * 7))
    assert metrics["sampler/vade/unseen_selected"] == 0
    # After the update: the 2 selected prompts at (4, 6), the 4 others still at (2, 4).
    assert metrics["sampler/vade/visited_posterior_mean"] == pytest.approx((4 * 2 / 6 + 2 * 4 / 10) / 6)
    assert metrics["sampler/vade/visited_posterior_var"] == pytest.approx(
        (4 * 2 * 4 / (6**2 * 7) + 2 * 4 * 6 / (10**2 * 11)) / 6
    )


def test_vade_produces_fewer_zero_variance_groups_than_uniform():
    """A third of the prompts always solved, a third never, a third at 40%: VADE should learn to
    spend its batches on the informative third."""
    prompts = make_prompts(60)
    rates = {p.prompt_id: (0.0, 1.0, 0.4)[i % 3] for i, p in enumerate(prompts)}
    steps = range(60)
    _, uniform = run_steps(UniformSampler(prompts, prompts_per_step=6, default_n=8, seed=0), rates, steps)
    _, vade = run_steps(VadeSampler(prompts, prompts_per_step=6, default_n=8, seed=0), rates, steps)
    late_uniform = np.mean([m["sampler/zero_variance_frac"] for m in uniform[30:]])
    late_vade = np.mean([m["sampler/zero_variance_frac"] for m in vade[30:]])
    assert late_vade < late_uniform - 0.3, (late_vade, late_uniform)
