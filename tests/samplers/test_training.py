"""End to end: each sampler trains 3 steps through `rlpost.loop` with groups of unequal size.

A random tiny model with SmolLM2's tokenizer (HF engine) and the scripted `level_reward` keep a run to
seconds. The training set is 3 problems, one per level, so every batch holds all three: an always
solved, a coin-flip and a never solved prompt. Knapsack splits its budget unevenly from the second
step on (the always-solved prompt drops to positive_n = 2 rollouts). Uniform and VADE give every
prompt rollout.n rollouts by design; their runs get unequal groups from a wrapper that varies the
budgets they return (n-1, n+1, n-1), which checks that the trainer and their updates use each group's
real size.

Checked at every step: the train batch is exactly the groups (no padding rows), advantages are the
GRPO statistics of each group on its own, and the sampler metrics in metrics.jsonl match the groups.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from rlpost.config import load_config
from rlpost.config.schema import RLPostConfig
from rlpost.io.metrics import read_metrics
from rlpost.learner.batch import PolicyTargets, TrainBatch
from rlpost.loop import TrainingRun
from rlpost.samplers import SAMPLERS, PromptSampler, allocate_budgets, binary_outcomes
from rlpost.samplers.outcomes import budget_histogram
from rlpost.types import Group
from tests.e2e.runs import TINY_RUN

pytestmark = pytest.mark.slow

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
LEVEL_REWARD = Path(__file__).resolve().parent / "level_reward.py"
N = 4
STEPS = 3
RUN = [
    *TINY_RUN,  # later overrides win
    "rollout.engine=hf",
    "train.threads=1",
    "reward.num_workers=1",
    f"rollout.n={N}",
    "train.prompts_per_step=3",
    f"train.steps={STEPS}",
    "data.arithmetic.levels=[1, 2, 3]",
    "data.arithmetic.train_size=3",
    f"reward.functions=[{{name: '{LEVEL_REWARD}:by_level'}}]",
    "reward.correct_reward=null",
    "checkpoint.every_steps=0",
    "checkpoint.at_end=false",
]
CONFIG_FILES = {"uniform": "grpo.yaml", "vade": "vade.yaml", "knapsack": "knapsack.yaml", "cures": "cures.yaml"}
SAMPLER_OVERRIDES = {
    "uniform": [],
    # No decay: each posterior is then the prior plus the prompt's summed successes and failures.
    "vade": ["sampler.vade.lambda_fast=1.0", "sampler.vade.lambda_slow=1.0"],
    # One visit of N rollouts makes a prompt's estimate valid, so Knapsack allocates from step 2.
    "knapsack": [f"sampler.knapsack.min_buffer_length={N}"],
    # A pool of 2 x 3 prompts is capped at the 3-prompt training set: every step rolls out all three.
    "cures": [],
}
UNEQUAL_BY_DESIGN = ("knapsack", "cures")
"""Samplers whose own budgets differ between prompts (the others get `vary_budgets`)."""
VARIED_BUDGETS = [N - 1, N + 1, N - 1]


@dataclass
class Recording:
    groups: list[list[Group]] = field(default_factory=list)
    """Per step, the scored groups as the sampler's `update` received them."""
    updates: list[tuple[TrainBatch, PolicyTargets]] = field(default_factory=list)
    """Per step, what the learner trained on."""


def record(trainer: TrainingRun) -> Recording:
    """Wraps the trainer's sampler update and learner step to keep their inputs."""
    recording = Recording()
    learner = trainer.executor.learner  # the local executor's learner
    update, train_step = trainer.sampler.update, learner.train_step

    def recording_update(groups: list[Group]) -> dict[str, float]:
        recording.groups.append(groups)
        return update(groups)

    def recording_train_step(batch: TrainBatch, targets: PolicyTargets) -> dict[str, float]:
        recording.updates.append((batch, targets))
        return train_step(batch, targets)

    trainer.sampler.update = recording_update
    learner.train_step = recording_train_step
    return recording


def vary_budgets(sampler: PromptSampler) -> None:
    """Replace the sampler's (equal) budgets with `VARIED_BUDGETS`; the prompts stay its choice."""
    draw = sampler.next_batch
    sampler.next_batch = lambda step: [(prompt, VARIED_BUDGETS[i]) for i, (prompt, _) in enumerate(draw(step))]


def per_group_advantages(rewards: np.ndarray, group_index: np.ndarray, *, ddof: int, eps: float) -> np.ndarray:
    """GRPO advantages group by group: (r - mean) / (std + eps), 0 in constant groups."""
    advantages = np.zeros(len(rewards))
    for group in np.unique(group_index):
        rows = group_index == group
        r = rewards[rows].astype(np.float64)
        if r.max() > r.min():
            advantages[rows] = (r - r.mean()) / (r.std(ddof=ddof) + eps)
    return advantages


def check_update(groups: list[Group], batch: TrainBatch, targets: PolicyTargets, config: RLPostConfig) -> None:
    sizes = [g.size for g in groups]
    group_index = batch.group_index.numpy()
    assert batch.size == sum(sizes), "one row per completion, no padding to a fixed group size"
    assert np.bincount(group_index).tolist() == sizes
    rewards = batch.rewards.numpy()
    for g, group in enumerate(groups):
        assert rewards[group_index == g].tolist() == group.rewards
    ddof = 1 if config.objective.std_unbiased else 0
    expected = per_group_advantages(rewards, group_index, ddof=ddof, eps=config.objective.adv_eps)
    np.testing.assert_allclose(targets.advantages.numpy(), expected, rtol=1e-5, atol=1e-6)


def check_step_metrics(groups: list[Group], metrics: dict) -> None:
    sizes = np.array([g.size for g in groups])
    varied = np.array([max(g.rewards) > min(g.rewards) for g in groups])
    assert metrics["sampler/groups"] == len(groups)
    assert metrics["sampler/zero_variance_frac"] == pytest.approx(1.0 - varied.mean())
    assert metrics["sampler/zero_variance_rollout_frac"] == pytest.approx(sizes[~varied].sum() / sizes.sum())
    assert metrics["sampler/effective_prompts"] == varied.sum()
    assert (metrics["sampler/budget_min"], metrics["sampler/budget_max"]) == (sizes.min(), sizes.max())
    assert metrics["sampler/rollouts"] == sizes.sum()
    assert {key: metrics[key] for key in budget_histogram(sizes)} == budget_histogram(sizes)  # bins: unit-tested
    assert metrics["groups/mean_size"] == pytest.approx(sizes.mean())


def sizes_per_step(recording: Recording) -> list[list[int]]:
    return [[g.size for g in groups] for groups in recording.groups]


def check_uniform(trainer: TrainingRun, recording: Recording, records: list[dict]) -> None:
    assert sizes_per_step(recording) == [VARIED_BUDGETS] * STEPS
    for groups in recording.groups:
        assert sorted(g.prompt.row["level"] for g in groups) == [1, 2, 3]  # the whole 3-prompt epoch


def check_vade(trainer: TrainingRun, recording: Recording, records: list[dict]) -> None:
    """Posteriors (and their logged mean) are the prior plus every success and failure, counted on
    the real group sizes."""
    assert sizes_per_step(recording) == [VARIED_BUDGETS] * STEPS
    settings = trainer.config.sampler.vade
    posteriors: dict[str, np.ndarray] = {}
    for groups, metrics in zip(recording.groups, records, strict=True):
        for group in groups:
            outcomes = binary_outcomes(group)
            counts = np.array([sum(outcomes), len(outcomes) - sum(outcomes)], dtype=np.float64)
            prior = np.array([settings.prior_alpha, settings.prior_beta])
            posteriors[group.prompt.prompt_id] = posteriors.get(group.prompt.prompt_id, prior) + counts
        means = [a / (a + b) for a, b in posteriors.values()]
        assert metrics["sampler/vade/visited_posterior_mean"] == pytest.approx(np.mean(means))
        assert metrics["sampler/vade/never_visited_frac"] == 0.0
        assert 0.0 < metrics["sampler/vade/selected_posterior_mean"] < 1.0
    for prompt_id, expected in posteriors.items():
        assert trainer.sampler.posterior(prompt_id) == pytest.approx(tuple(expected))


def check_knapsack(trainer: TrainingRun, recording: Recording, records: list[dict]) -> None:
    """Step 1 is uniform (no history); later steps follow §11.4 from the previous visits' outcomes."""
    settings = trainer.config.sampler.knapsack
    history: dict[str, list[int]] = {}
    for step, (groups, metrics) in enumerate(zip(recording.groups, records, strict=True)):
        ids = [g.prompt.prompt_id for g in groups]
        sizes = [g.size for g in groups]
        assert sum(sizes) == 3 * N, "the same total budget as uniform"
        if step == 0:
            assert sizes == [N] * 3
        else:
            # Every visit so far is shorter than reward_buffer_length (16), so p_hat is the success
            # rate of the prompt's last 16 outcomes (§11.2, robust epoch estimation).
            p_hat = np.array([np.mean(history[i][-settings.reward_buffer_length :]) for i in ids])
            expected = allocate_budgets(np.ones(3, dtype=bool), p_hat, n=N, config=settings).budgets
            assert sizes == expected.tolist()
            assert len(set(sizes)) > 1
            level_of = {g.prompt.prompt_id: g.prompt.row["level"] for g in groups}
            assert [n for i, n in zip(ids, sizes, strict=True) if level_of[i] == 1] == [settings.positive_n]
            assert metrics["sampler/knapsack/p_hat_one"] == np.sum(p_hat == 1.0) >= 1  # level 1 at least
            assert metrics["sampler/knapsack/p_hat_zero"] == np.sum(p_hat == 0.0) >= 1  # level 3 at least
            assert metrics["sampler/knapsack/p_hat_mean"] == pytest.approx(p_hat.mean())
            assert metrics["sampler/knapsack/unknown_prompts"] == 0.0
        assert metrics["sampler/knapsack/covered_prompts"] == 3.0
        for group in groups:
            history.setdefault(group.prompt.prompt_id, []).extend(binary_outcomes(group))


def check_cures(trainer: TrainingRun, recording: Recording, records: list[dict]) -> None:
    """Step 1 splits evenly (every prompt at the prior, p = 1/2); later steps split 3N ∝ sqrt(p(1-p)) with
    p = (s + 1)/(n + 2) from every earlier outcome of the prompt."""
    from rlpost.samplers.cures import proportional_budgets

    settings = trainer.config.sampler.cures
    counts: dict[str, list[int]] = {}
    for step, (groups, metrics) in enumerate(zip(recording.groups, records, strict=True)):
        sizes = [g.size for g in groups]
        assert sum(sizes) == 3 * N, "the same total budget as uniform"
        if step == 0:
            assert sizes == [N] * 3
        else:
            p = np.array([(sum(counts[g.prompt.prompt_id]) + 1) / (len(counts[g.prompt.prompt_id]) + 2) for g in groups])
            expected = proportional_budgets(np.sqrt(p * (1 - p)), 3 * N, settings.min_n, settings.max_n)
            assert sizes == expected.tolist()
            assert metrics["sampler/cures/selected_p_mean"] == pytest.approx(p.mean())
        for group in groups:
            counts.setdefault(group.prompt.prompt_id, []).extend(binary_outcomes(group))


SAMPLER_CHECKS = {"uniform": check_uniform, "vade": check_vade, "knapsack": check_knapsack, "cures": check_cures}


def test_every_registered_sampler_has_a_training_check():
    assert sorted(SAMPLER_CHECKS) == sorted(SAMPLERS.names())


@pytest.mark.parametrize("name", SAMPLERS.names())
def test_sampler_trains_with_groups_of_unequal_size(tmp_path, tiny_chat_model_path, name):
    config = load_config(
        CONFIGS / CONFIG_FILES[name],
        [*RUN, f"model.path={tiny_chat_model_path}", f"train.output_dir={tmp_path}", *SAMPLER_OVERRIDES[name]],
    )
    assert config.sampler.name == name
    trainer = TrainingRun(config)
    if name not in UNEQUAL_BY_DESIGN:
        vary_budgets(trainer.sampler)
    recording = record(trainer)
    trainer.fit()

    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    assert len(recording.groups) == len(recording.updates) == STEPS
    assert any(len(set(sizes)) > 1 for sizes in sizes_per_step(recording))
    for groups, (batch, targets), metrics in zip(recording.groups, recording.updates, records, strict=True):
        check_update(groups, batch, targets, config)
        check_step_metrics(groups, metrics)
    assert any(targets.advantages.abs().max() > 0 for _, targets in recording.updates), "no group had reward variance"
    SAMPLER_CHECKS[name](trainer, recording, records)
