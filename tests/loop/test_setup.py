"""What a checkpoint's config digest depends on, and the seeds of steps and rounds."""

from __future__ import annotations

from rlpost.config import load_config
from rlpost.loop.setup import config_digest, round_seed, step_seed
from tests.e2e.runs import GRPO_CONFIG


def _digest(*overrides: str) -> str:
    return config_digest(load_config(GRPO_CONFIG, list(overrides)))


def test_only_the_chosen_plugin_section_counts():
    base = _digest()
    # The quickstart trains GRPO with the uniform sampler and no blending: other plug-ins' knobs do not matter.
    assert _digest("objective.dapo.overlong_buffer=5") == base
    assert _digest("sampler.vade.pool_factor=2.0") == base
    assert _digest("blending.hpt.sft_coef=0.5") == base
    # The chosen plug-in's own knobs and the shared knobs do.
    assert _digest("objective.name=dapo", "objective.dapo.overlong_buffer=5") != _digest("objective.name=dapo")
    assert _digest("objective.clip_high=0.3") != base


def test_runtime_and_resources_may_change_but_not_what_is_trained():
    base = _digest()
    for resumable in ("cluster.runtime=ray", "cluster.num_cpus=2", "cluster.rollout_cpus=0.5", "train.steps=99",
                      "eval.every_steps=3", "checkpoint.keep_last=5", "train.output_dir=elsewhere"):
        assert _digest(resumable) == base, resumable
    for changes_training in ("cluster.is_correction=token", "cluster.learner_ranks=2", "optimizer.lr=1e-4"):
        assert _digest(changes_training) != base, changes_training


def test_step_and_round_seeds():
    # (seed * 1_000_003 + step) mod (2^31 - 1), and 7919 more per generation round.
    assert step_seed(1, 2) == 1_000_005
    assert step_seed(0, 5) == 5
    assert round_seed(1, 2, 0) == 1_000_005
    assert round_seed(1, 2, 3) == 1_000_005 + 3 * 7919
    assert step_seed(2**31, 0) == (2**31 * 1_000_003) % (2**31 - 1)
