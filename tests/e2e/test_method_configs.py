"""Each registered objective's shipped config trains 3 steps end to end (tiny budget, the tiny random model
on the parity reward, so every method sees reward spread): finite losses, the method's own metrics logged,
and the policy's weights changed.

The method list comes from the objective registry: a new objective is covered by adding its
`configs/<name>.yaml` (and, if its metrics are not named `<name>/...`, a line in OWN_METRICS)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlpost.config import load_config
from rlpost.io.metrics import read_metrics
from rlpost.loop import TrainingRun
from rlpost.objectives.registry import objective_names
from tests.e2e.runs import TINY_RUN, on_tiny_model

pytestmark = pytest.mark.slow

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
# grpo's config is the quickstart; every other method ships configs/<name>.yaml.
METHOD_CONFIGS = {name: CONFIGS / f"{name}.yaml" for name in objective_names()}
SCALED_DOWN = {
    # The tiny run's 12-token limit is shorter than DAPO's 32-token overlong buffer.
    "dapo": ["objective.dapo.overlong_buffer=4"],
    # At 12 tokens every completion was truncated (dr_grpo/truncated_frac 1.0) and, scored 0 as in the
    # recipe, no group had reward variance: grad_norm 0 and the policy never moved.
    "dr_grpo": ["objective.dr_grpo.truncated_reward=null"],
    # The random model's completions have a mean token entropy near ln(49152) = 10.8 nats: above the 0.7
    # threshold every advantage would be filtered to 0.
    "gtpo": ["objective.gtpo.entropy_threshold=20.0"],
}
OWN_METRICS = {
    "grpo": ["adv/mean", "groups/zero_std_frac"],
    "dr_grpo": ["dr_grpo/truncated_frac"],
    "dapo": ["dapo/kept_group_frac", "dapo/groups_generated", "dapo/overlong_frac"],  # dynamic sampling + overlong shaping
    "gspo": ["gspo/abs_log_ratio_mean"],
    "bnpo": ["bnpo/alpha", "bnpo/beta", "bnpo/fallback"],
    "gtpo": ["gtpo/conflict_frac_pos", "gtpo/entropy_filtered_frac", "gtpo/n_conf_mean"],
    "vcpo": ["staleness/minibatch_ess", "staleness/ess_lr_scale", "vcpo/opob_baseline_mean"],  # ESS lr scaling + OPOB
    "rloo": ["rloo/baseline_mean"],
}
"""Metrics only the method logs; a method missing here must log some `<name>/...` metric."""


def own_metrics_present(method: str, record: dict) -> list[str]:
    """The method's own metrics missing from one step's record (empty when all are there)."""
    if method in OWN_METRICS:
        return [key for key in OWN_METRICS[method] if key not in record]
    return [] if any(key.startswith(f"{method}/") for key in record) else [f"{method}/*"]


def weights_changed(before: Path, after: Path) -> tuple[int, int]:
    """(tensors that differ, tensors compared) between two safetensors files, by shared name. Same
    dtypes are required (a cast alone would count as a change); every tensor of `after` must be finite."""
    old, new = load_file(before), load_file(after)
    shared = sorted(set(old) & set(new))
    assert all(old[name].dtype == new[name].dtype for name in shared), "export dtype differs from the model's"
    assert all(torch.isfinite(new[name]).all() for name in shared), "non-finite weights after training"
    return sum(not torch.equal(old[name], new[name]) for name in shared), len(shared)


@pytest.mark.parametrize("method", list(METHOD_CONFIGS))
def test_method_config_trains_three_steps(tmp_path, tiny_chat_model_path, method):
    config = load_config(
        METHOD_CONFIGS[method],
        [*TINY_RUN, *on_tiny_model(tiny_chat_model_path), "train.steps=3", "checkpoint.every_steps=0", "checkpoint.at_end=false", f"train.output_dir={tmp_path}",
         *SCALED_DOWN.get(method, [])],
    )
    assert config.objective.name == method
    TrainingRun(config).fit()
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [1, 2, 3]
    for record in records:
        assert math.isfinite(record["actor/loss"])
        assert math.isfinite(record["actor/grad_norm"])
        assert record["policy/version"] == record["step"]
        assert own_metrics_present(method, record) == [], f"{method} step {record['step']}"
    changed, compared = weights_changed(Path(tiny_chat_model_path) / "model.safetensors", tmp_path / "final" / "model.safetensors")
    assert compared >= 10 and changed > 0, f"{method}: no weight changed in 3 steps"
