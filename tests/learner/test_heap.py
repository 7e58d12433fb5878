"""`learner.mmap_threshold_mib`: the learner pins glibc's mmap threshold when it starts."""

from __future__ import annotations

import sys

import pytest

from rlpost.config.schema import RLPostConfig
from rlpost.learner import learner as learner_module
from rlpost.learner.memory import set_mmap_threshold


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_mallopt_accepts_the_threshold():
    assert set_mmap_threshold(1.0)


@pytest.mark.parametrize("threshold", [None, 2.0])
def test_the_learner_sets_the_configured_threshold(tiny_model_path, monkeypatch, threshold):
    calls = []
    monkeypatch.setattr(learner_module, "set_mmap_threshold", calls.append)
    config = RLPostConfig.model_validate({
        "model": {"path": tiny_model_path},
        "learner": {"backend": "torch", "mixed_precision": "no", "mmap_threshold_mib": threshold},
    })
    from rlpost.objectives.registry import get_objective

    objective = get_objective("grpo")(config.objective, config.rollout.max_new_tokens)
    learner_module.Learner(config, tiny_model_path, objective, total_steps=1)
    assert calls == ([] if threshold is None else [threshold])
