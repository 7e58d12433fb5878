"""The runtime's rules without Ray: staleness gating and dropping, reward-metric merging,
importance-sampling weights and the objective wrapper, cluster config validation."""

from __future__ import annotations

import math

import pytest
import torch

from rlpost.config import load_config
from rlpost.config.errors import ConfigError
from rlpost.config.objective import ObjectiveConfig
from rlpost.objectives.base import LossInputs
from rlpost.objectives.core import step_scale_of
from rlpost.objectives.offpolicy import ISCorrectedObjective, combine_stats, importance_weights, wrap_objective
from rlpost.objectives.registry import get_objective
from rlpost.runtime.buffer import RolloutBuffer, may_generate, merge_reward_metrics, plannable
from rlpost.types import Completion, Group, Prompt


def _group(version: int, name: str = "p") -> Group:
    return Group(Prompt(name, "", [1, 2]), [Completion([3], "x", [-1.0], "stop", policy_version=version)], rewards=[1.0])


# ---------------------------------------------------------------------------------- staleness


def test_generation_gate_bounds_the_lag_between_engine_and_batch() -> None:
    # Synchronous: batch b needs exactly the weights of version b.
    assert may_generate(3, 3, 0) and not may_generate(3, 2, 0)
    # max_staleness 2: versions 1..3 may generate batch 3.
    assert may_generate(3, 1, 2) and not may_generate(3, 0, 2)
    # Look-ahead: at learner version 4 with k = 1, batches up to 5 are planned, never past the end.
    assert plannable(5, 4, 1, total_steps=10) and not plannable(6, 4, 1, total_steps=10)
    assert not plannable(10, 9, 2, total_steps=10)


def test_buffer_drops_groups_older_than_max_staleness_and_counts_them() -> None:
    buffer = RolloutBuffer(max_staleness=1)
    kept, metrics = buffer.take([_group(5), _group(4), _group(3), _group(2)], learner_version=5)
    assert [g.policy_version for g in kept] == [5, 4]
    assert metrics["async/dropped_groups"] == 2 and metrics["async/dropped_groups_total"] == 2
    assert metrics["async/staleness/0"] == 0.5 and metrics["async/staleness/1"] == 0.5
    assert metrics["async/staleness_max"] == 1 and metrics["async/staleness_mean"] == 0.5
    _, metrics = buffer.take([_group(6)], learner_version=6)
    assert metrics["async/dropped_groups"] == 0 and metrics["async/dropped_groups_total"] == 2
    assert buffer.histogram() == {0: 2, 1: 1}


def test_reward_metrics_of_units_merge_into_the_batch_values() -> None:
    # Unit A: rewards [1, 0] (mean .5, std .5); unit B: rewards [1, 1, 1, 0] (mean .75, std ~.433).
    a = {"reward/mean": 0.5, "reward/std": 0.5, "reward/accuracy": 0.5, "reward/failures": 1.0}
    b = {"reward/mean": 0.75, "reward/std": math.sqrt(0.1875), "reward/accuracy": 0.75, "reward/failures": 2.0}
    merged = merge_reward_metrics([(2, a), (4, b)])
    everything = torch.tensor([1.0, 0, 1, 1, 1, 0])
    assert merged["reward/mean"] == pytest.approx(float(everything.mean()))
    assert merged["reward/std"] == pytest.approx(float(everything.std(unbiased=False)))
    assert merged["reward/accuracy"] == pytest.approx(4 / 6)
    assert merged["reward/failures"] == 3.0


# ---------------------------------------------------------------------------------- importance weights


def _logps():
    old = torch.tensor([[-1.0, -2.0, -0.5], [-1.0, -1.0, 0.0]])
    behaviour = torch.tensor([[-1.0, -3.0, -0.4], [-0.2, -1.5, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    return old, behaviour, mask


def test_token_weights_are_truncated_ratios() -> None:
    old, behaviour, mask = _logps()
    weights, _, truncated = importance_weights(old, behaviour, mask, "token", cap=2.0)
    expected = torch.tensor([[1.0, 2.0, math.exp(-0.1)], [math.exp(-0.8), math.exp(0.5), 0.0]], dtype=torch.float64)
    torch.testing.assert_close(weights, expected)
    assert truncated.tolist() == [[False, True, False], [False, False, False]]


def test_sequence_weights_share_one_truncated_ratio_per_sequence() -> None:
    old, behaviour, mask = _logps()
    weights, log_ratio, truncated = importance_weights(old, behaviour, mask, "sequence", cap=2.0)
    torch.testing.assert_close(log_ratio, torch.tensor([0.9, -0.3], dtype=torch.float64))
    # exp(0.9) = 2.46 is truncated at the cap; padding gets 0.
    expected = torch.tensor([[2.0] * 3, [math.exp(-0.3)] * 2 + [0.0]], dtype=torch.float64)
    torch.testing.assert_close(weights, expected)
    assert truncated.tolist() == [True, False]


def test_mask_mode_drops_tokens_outside_the_band() -> None:
    old, behaviour, mask = _logps()
    weights, _, masked = importance_weights(old, behaviour, mask, "mask", cap=2.0)
    # |log ratio| > log 2 = 0.693: token (0,1) at +1.0 and token (1,0) at -0.8.
    assert weights.tolist() == [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]
    assert int(masked.sum()) == 2


def test_truncated_weights_take_a_lower_bound() -> None:
    # Log-ratios [[0, 1.0, -0.1], [-0.8, 0.5, pad]]; band [0.5, 2]: 1.0 > log 2 is capped at 2,
    # -0.8 < log 0.5 = -0.693 is raised to 0.5.
    old, behaviour, mask = _logps()
    weights, _, flagged = importance_weights(old, behaviour, mask, "token", cap=2.0, floor=0.5)
    expected = torch.tensor([[1.0, 2.0, math.exp(-0.1)], [0.5, math.exp(0.5), 0.0]], dtype=torch.float64)
    torch.testing.assert_close(weights, expected)
    assert flagged.tolist() == [[False, True, False], [True, False, False]]
    # Sequence level: sums 0.9 and -0.3, band [0.8, 2]: exp(0.9) -> 2, exp(-0.3) = 0.741 -> 0.8.
    weights, _, _ = importance_weights(old, behaviour, mask, "sequence", cap=2.0, floor=0.8)
    torch.testing.assert_close(weights, torch.tensor([[2.0] * 3, [0.8, 0.8, 0.0]], dtype=torch.float64))


def test_sequence_and_geometric_rejection_drop_whole_sequences() -> None:
    # Sequence log-ratios: 0 + 1.0 - 0.1 = 0.9 and -0.8 + 0.5 = -0.3; geometric (mean) 0.3 and -0.15.
    # Band [1/1.3, 1.3], log 1.3 = 0.2624: the product rejects both (0.9 and -0.3 outside), the
    # geometric mean only the first (0.3 outside, -0.15 inside).
    old, behaviour, mask = _logps()
    weights, log_ratio, rejected = importance_weights(old, behaviour, mask, "mask_sequence", cap=1.3)
    torch.testing.assert_close(log_ratio, torch.tensor([0.9, -0.3], dtype=torch.float64))
    assert weights.tolist() == [[0.0] * 3, [0.0] * 3] and rejected.tolist() == [True, True]
    weights, log_ratio, rejected = importance_weights(old, behaviour, mask, "mask_geometric", cap=1.3)
    torch.testing.assert_close(log_ratio, torch.tensor([0.3, -0.15], dtype=torch.float64))
    assert weights.tolist() == [[0.0] * 3, [1.0, 1.0, 0.0]] and rejected.tolist() == [True, False]
    # A floor replaces 1/cap as the band's bottom: [0.9, 2] rejects -0.3 (exp = 0.741) only.
    weights, _, _ = importance_weights(old, behaviour, mask, "mask_sequence", cap=2.5, floor=0.9)
    assert weights.tolist() == [[1.0] * 3, [0.0] * 3]


def test_mask_mode_removes_rejected_tokens_from_the_denominators() -> None:
    """Token mask (cap 2) rejects tokens (0,1) and (1,0); ratio 1 and A = 1 give loss -1 per token.

    seq-mean-token-mean: row 0 keeps 2 tokens -> -2/2, row 1 keeps 1 -> -1/1; mean over 2 sequences
    = -1 (counting the rejected tokens it was (-2/3 - 1/2)/2 = -7/12). token-mean over the step mask
    from `loss_mask`: 3 kept tokens, -3/3 = -1.
    """
    old, behaviour, mask = _logps()
    advantages = torch.ones(2)
    inputs = LossInputs(logp=old.clone(), old_logp=old, advantages=advantages, mask=mask, behaviour_logp=behaviour)
    seq_mean = get_objective("grpo")(ObjectiveConfig(loss_agg="seq-mean-token-mean"), 8)
    loss, _ = ISCorrectedObjective(seq_mean, "mask", cap=2.0).compute_loss(inputs, step_scale_of(mask, 8))
    assert float(loss) == pytest.approx(-1.0)

    wrapped = ISCorrectedObjective(get_objective("grpo")(ObjectiveConfig(loss_agg="token-mean"), 8), "mask", cap=2.0)
    step_mask = wrapped.loss_mask(old, behaviour, mask)
    assert step_mask.tolist() == [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]
    loss, _ = wrapped.compute_loss(inputs, step_scale_of(step_mask, 8))
    assert float(loss) == pytest.approx(-1.0)
    truncating = ISCorrectedObjective(seq_mean, "token", cap=2.0)
    assert truncating.loss_mask(old, behaviour, mask) is mask, "truncation keeps every token"


def test_wrapper_multiplies_the_per_token_policy_loss_by_the_weights() -> None:
    """GRPO (clipped, dual clip) with the wrapper == GRPO whose per-token loss is scaled by hand."""
    torch.manual_seed(0)
    config = ObjectiveConfig(name="dapo", kl_coef=0.0, loss_agg="token-mean")
    inner = get_objective("dapo")(config, 8)
    old, behaviour, mask = _logps()
    logp = (old + 0.3 * torch.randn_like(old)).requires_grad_(True)
    advantages = torch.tensor([1.5, -2.0])
    inputs = LossInputs(logp=logp, old_logp=old, advantages=advantages, mask=mask, behaviour_logp=behaviour)
    scale = step_scale_of(mask, 8)

    wrapped = ISCorrectedObjective(inner, "token", cap=2.0)
    loss, _ = wrapped.compute_loss(inputs, scale)
    weights, _, _ = importance_weights(old, behaviour, mask, "token", cap=2.0)
    terms = inner.policy_terms(inputs)
    expected = (terms.loss * weights.float() * mask).sum() / mask.sum()
    torch.testing.assert_close(loss, expected)
    grad, = torch.autograd.grad(loss, logp)
    grad_expected, = torch.autograd.grad(expected, logp)
    torch.testing.assert_close(grad, grad_expected)

    stats = wrapped.take_stats()
    assert stats["count"] == 5 and stats["flagged"] == 1
    assert wrapped.take_stats()["count"] == 0, "stats reset after each step"
    # The wrapper is transparent for everything else.
    assert wrapped.name == "dapo" and wrapped.needs_reference == inner.needs_reference
    assert wrap_objective(inner, "none", 2.0) is inner


def test_effective_sample_size_combines_ranks_exactly() -> None:
    old, behaviour, mask = _logps()
    weights, _, _ = importance_weights(old, behaviour, mask, "token", cap=10.0)
    objective = get_objective("grpo")(ObjectiveConfig(), 8)
    per_rank = []
    for rows in ([0], [1]):  # each rank sees one sequence
        wrapped = ISCorrectedObjective(objective, "token", cap=10.0)
        sub = LossInputs(logp=old[rows].clone(), old_logp=old[rows], advantages=torch.ones(1), mask=mask[rows],
                         behaviour_logp=behaviour[rows])
        wrapped.compute_loss(sub, step_scale_of(mask, 8))
        per_rank.append(wrapped.take_stats())
    metrics = combine_stats(per_rank, "token")
    w = weights[mask.bool()]
    assert metrics["is/ess_ratio"] == pytest.approx(float(w.sum() ** 2 / (w.numel() * (w * w).sum())))
    assert metrics["is/weight_mean"] == pytest.approx(float(w.mean()))
    assert metrics["is/weight_max"] == pytest.approx(float(w.max()))


# ---------------------------------------------------------------------------------- config


def test_cluster_config_defaults_and_errors_name_the_keys(tmp_path) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("{}\n")
    config = load_config(empty, ["cluster.runtime=ray", "cluster.max_staleness=2"])
    assert config.cluster.is_mode("grpo") == "token"
    assert config.cluster.is_mode("vcpo") == "none", "VCPO corrects itself"
    assert load_config(empty, ["cluster.runtime=ray"]).cluster.is_mode("grpo") == "none"
    assert load_config(empty, ["cluster.max_staleness=1"]).cluster.is_mode("grpo") == "token"  # local overlap
    with pytest.raises(ConfigError, match="colocated"):
        load_config(empty, ["cluster.runtime=ray", "cluster.placement=colocated", "cluster.max_staleness=1"])
    with pytest.raises(ConfigError, match="sync_transport"):
        load_config(empty, ["cluster.sync_transport=carrier_pigeon"])


def test_cluster_config_takes_the_rejection_modes_and_a_floor(tmp_path) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("{}\n")
    config = load_config(empty, ["cluster.is_correction=mask_geometric", "cluster.is_cap=1.001", "cluster.is_floor=0.999"])
    assert config.cluster.is_mode("grpo") == "mask_geometric" and config.cluster.is_floor == 0.999
    assert load_config(empty, ["cluster.is_correction=mask_sequence"]).cluster.is_floor is None
    with pytest.raises(ConfigError, match="cluster.is_floor"):
        load_config(empty, ["cluster.is_floor=1.5"])


def test_the_cluster_template_is_a_valid_async_config() -> None:
    from pathlib import Path

    template = Path(__file__).resolve().parents[2] / "configs" / "cluster_async.yaml"
    config = load_config(template)
    cluster = config.cluster
    assert cluster.runtime == "ray" and cluster.placement == "split" and cluster.max_staleness == 1
    assert cluster.is_mode(config.objective.name) == "token"
    assert cluster.bind_host == "auto", "a multi-node run cannot rendezvous on loopback"
    assert config.train.prompts_per_step * config.rollout.n % cluster.learner_ranks == 0
