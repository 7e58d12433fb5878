"""The learner's SFT path and blended steps on a tiny model: losses and gradients against hand computations,
and exactly the chosen losses back-propagated."""

from __future__ import annotations

import pytest
import torch

from rlpost.blending import BlendPlan, build_controller
from rlpost.blending.controllers.amft import update_mu
from rlpost.blending.runner import apply_blend, plan_blend
from rlpost.learner.batch import build_train_batch, prepare_update
from tests.blending.helpers import (
    assert_gradients_close,
    capture_gradients,
    demo_ids,
    demonstrations,
    fresh_model,
    gradients_of,
    make_config,
    make_learner,
    rl_loss_by_hand,
    scored_groups,
    sft_loss_by_hand,
)

MIXED = [[True, False, False, True], [False, False, False], [True, True, False, True, False]]


def blended_update(controller, learner, demos, step, groups, batch, targets, validation_prompts=()):
    """One blended step as the loop takes it: plan, the learner's step, then the controller observes."""
    rl_batch, rl_targets, update = plan_blend(
        controller, learner.objective, demos, step, groups, batch, targets, validation_prompts
    )
    metrics, probe = apply_blend(learner, rl_batch, rl_targets, update)
    return {**update.plan.metrics, **metrics, **controller.observe(probe)}


def _count_calls(obj, attribute: str) -> list[int]:
    calls = [0]
    original = getattr(obj, attribute)

    def counting(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    setattr(obj, attribute, counting)
    return calls


@pytest.mark.parametrize("micro_batch_size", [1, 64])
def test_sft_step_matches_a_hand_computed_nll(tiny_model_path, micro_batch_size):
    """Token-mean NLL of solution + EOS after the prompt (prompt masked), the same for any micro-batching."""
    groups = scored_groups(MIXED, seed=1)
    learner = make_learner(make_config(tiny_model_path, micro_batch_size=micro_batch_size))
    rl_calls = _count_calls(learner.objective, "compute_loss")
    captured = capture_gradients(learner)
    metrics = learner.sft_step(demonstrations().batch([g.prompt for g in groups]))

    model = fresh_model(tiny_model_path)
    expected, _ = sft_loss_by_hand(model, groups)
    assert metrics["sft/loss"] == pytest.approx(float(expected.detach()), rel=1e-5)
    assert metrics["sft/nll"] == pytest.approx(float(expected.detach()), rel=1e-5)
    assert metrics["sft/tokens"] == sum(len(demo_ids(g)) for g in groups)
    assert metrics["sft/sequences"] == 3 and metrics["blend/rl_weight"] == 0.0
    assert rl_calls[0] == 0, "an SFT step must not compute the RL loss"
    assert_gradients_close(captured[0], gradients_of(model, expected))


def test_prompt_tokens_are_context_only():
    """The demonstration batch marks exactly the solution and EOS as the response."""
    groups = scored_groups([[True]], seed=3)
    batch = demonstrations().batch([groups[0].prompt])
    n_prompt, demo = len(groups[0].prompt.token_ids), demo_ids(groups[0])
    assert batch.response_mask.sum() == len(demo)
    assert batch.response_ids[0, : len(demo)].tolist() == demo
    assert batch.input_ids[0, : n_prompt].tolist() == groups[0].prompt.token_ids
    assert batch.response_index[0, 0] == n_prompt
    cut = demonstrations(max_tokens=2).batch([groups[0].prompt])
    assert cut.response_mask.sum() == 2 and bool(cut.truncated[0])


def test_missing_solution_is_reported():
    from rlpost.blending.demos import MissingDemonstration
    from rlpost.types import Prompt

    with pytest.raises(MissingDemonstration, match="solution_field"):
        demonstrations().check([Prompt("a", "", [3], {"solution": "4 5"}), Prompt("b", "", [3], {})])


def test_rl_only_plan_is_the_plain_rl_update(tiny_model_path):
    """A blended step that picks only the RL loss gives exactly the update of Learner.train_step."""
    groups = scored_groups(MIXED, seed=2)
    config = make_config(tiny_model_path, micro_batch_size=3)
    plain = make_learner(config)
    batch = build_train_batch(groups, 0)
    plain_metrics = plain.train_step(batch, prepare_update(plain.objective, batch))

    blended = make_learner(config)
    sft_calls = _count_calls(blended.sft_loss, "compute_loss")
    batch = build_train_batch(groups, 0)
    metrics, probe = blended.blended_step(BlendPlan.rl_only(3), batch, prepare_update(blended.objective, batch))
    assert sft_calls[0] == 0, "an RL step must not compute the SFT loss"
    for (name, a), (_, b) in zip(plain.named_weights(), blended.named_weights(), strict=True):
        assert torch.equal(a, b), name
    for key in ("actor/loss", "actor/pg_loss", "actor/grad_norm"):
        assert metrics[key] == plain_metrics[key]
    assert probe.rl_weight == 1.0 and probe.sft_weight == 0.0 and probe.grad_norm == plain_metrics["actor/grad_norm"]


def test_hpt_step_back_propagates_rl_on_kept_groups_plus_weighted_sft(tiny_model_path):
    """HPT (§8.3): L = L_RL(rollouts of solved questions, Dr.GRPO advantages, Σ/T_max, no clip) + 0.3 L_SFT(demos of the others)."""
    groups = scored_groups(MIXED, seed=4)
    config = make_config(
        tiny_model_path, micro_batch_size=2,
        objective={"name": "dr_grpo", "clip": False, "loss_agg": "seq-mean-token-sum-norm"},
        blending={"name": "hpt", "hpt": {"gate": 0, "sft_coef": 0.3}},
    )
    learner = make_learner(config)
    captured = capture_gradients(learner)
    batch = build_train_batch(groups, 0)
    controller = build_controller(config.blending, seed=0)
    metrics = blended_update(controller, learner, demonstrations(), 0, groups, batch, prepare_update(learner.objective, batch))
    assert metrics["hpt/sft_questions"] == 1 and metrics["hpt/rl_questions"] == 2
    assert metrics["blend/rl_sequences"] == 9 and metrics["blend/sft_sequences"] == 1

    model = fresh_model(tiny_model_path)
    rl, _ = rl_loss_by_hand(model, [groups[0], groups[2]], std=False, agg="sum-norm", max_len=8)
    sft, _ = sft_loss_by_hand(model, [groups[1]])
    assert metrics["actor/pg_loss"] == pytest.approx(float(rl.detach()), rel=1e-5, abs=1e-7)
    assert metrics["sft/loss"] == pytest.approx(float(sft.detach()), rel=1e-5)
    assert metrics["actor/loss"] == pytest.approx(float((rl + 0.3 * sft).detach()), rel=1e-5)
    assert_gradients_close(captured[0], gradients_of(model, rl + 0.3 * sft))


def test_sasr_steps_back_propagate_one_loss_each(tiny_model_path):
    """SASR: the warm-up step's gradient is the SFT one; an RL step's is the RL one (GRPO, token-mean)."""
    groups = scored_groups(MIXED, seed=5)
    config = make_config(tiny_model_path, micro_batch_size=4, blending={"name": "sasr", "sasr": {"warmup_steps": 1}})
    learner = make_learner(config)
    captured = capture_gradients(learner)
    controller = build_controller(config.blending, seed=0)
    batch = build_train_batch(groups, 0)
    metrics = blended_update(controller, learner, demonstrations(), 0, groups, batch, prepare_update(learner.objective, batch))
    assert metrics["sasr/step_type"] == 1.0 and metrics["sasr/G_warmup"] == metrics["actor/grad_norm"]
    model = fresh_model(tiny_model_path)
    sft, _ = sft_loss_by_hand(model, groups)
    assert_gradients_close(captured[0], gradients_of(model, sft))

    # Force the next hybrid step to RL and check its gradient against the updated weights.
    controller.rng.random = lambda: 0.999
    with torch.no_grad():
        for (_, p), (_, q) in zip(model.named_parameters(), learner.module.named_parameters(), strict=True):
            p.copy_(q)
    batch = build_train_batch(groups, 0)
    metrics = blended_update(controller, learner, demonstrations(), 1, groups, batch, prepare_update(learner.objective, batch))
    assert metrics["sasr/step_type"] == 0.0 and metrics["blend/sft_weight"] == 0.0 and "sft/loss" not in metrics
    rl, _ = rl_loss_by_hand(model, groups, std=True, agg="token-mean", max_len=8)
    assert_gradients_close(captured[1], gradients_of(model, rl))


def test_amft_step_combines_the_gradients_with_the_decided_mu(tiny_model_path):
    """AMFT hybrid step: mu updated from the measured entropies and the meta-gradient, then (1-mu) g_RL + mu g_SFT."""
    groups = scored_groups(MIXED, seed=6)
    validation = scored_groups([[True], [False]], seed=7, prefix="held-out-")
    section = {"warmup_steps": 0, "initial_mu": 0.5, "meta_update_freq": 1, "entropy_lr": 20.0, "meta_lr": 2.0,
               "policy_lr": 1.0, "mu_min": 0.0, "mu_max": 1.0}
    config = make_config(tiny_model_path, micro_batch_size=2, blending={"name": "amft", "amft": section})
    learner = make_learner(config)
    captured = capture_gradients(learner)
    controller = build_controller(config.blending, seed=0)
    batch = build_train_batch(groups, 0)
    metrics = blended_update(controller, learner, demonstrations(), 0, groups, batch,
                             prepare_update(learner.objective, batch), [g.prompt for g in validation])

    model = fresh_model(tiny_model_path)
    sft, sft_entropy = sft_loss_by_hand(model, groups)
    rl, rl_entropy = rl_loss_by_hand(model, groups, std=True, agg="token-mean", max_len=8)
    val, _ = sft_loss_by_hand(model, validation)
    g_sft, g_rl, g_val = gradients_of(model, sft), gradients_of(model, rl), gradients_of(model, val)
    dot_sft = sum(float((g_val[k].double() * g_sft[k].double()).sum()) for k in g_val)
    dot_rl = sum(float((g_val[k].double() * g_rl[k].double()).sum()) for k in g_val)
    g_meta = -1.0 * (dot_sft - dot_rl)
    mu, _ = update_mu(0.5, g_meta=g_meta, target_entropy=sft_entropy, entropy=rl_entropy,
                      meta_lr=2.0, entropy_lr=20.0, mu_min=0.0, mu_max=1.0)
    assert metrics["amft/H_target"] == pytest.approx(sft_entropy, rel=1e-5)
    assert metrics["amft/entropy"] == pytest.approx(rl_entropy, rel=1e-5)
    assert metrics["amft/meta_grad"] == pytest.approx(g_meta, rel=1e-3)
    assert metrics["amft/val_loss"] == pytest.approx(float(val.detach()), rel=1e-5)
    assert metrics["amft/mu"] == pytest.approx(mu, rel=1e-4)
    assert abs(mu - 0.5) > 1e-3, "the test's mu must move for the weights to be checked"
    assert metrics["blend/sft_weight"] == pytest.approx(mu, rel=1e-4)
    assert metrics["blend/rl_weight"] == pytest.approx(1 - mu, rel=1e-4)
    applied = metrics["blend/sft_weight"]  # mu as decided (checked against the hand value above)
    expected = {k: (1 - applied) * g_rl[k] + applied * g_sft[k] for k in g_rl}
    assert_gradients_close(captured[0], expected)


def test_sasr_post_warmup_reference_is_the_policy_after_warmup(tiny_model_path, tmp_path):
    groups = scored_groups(MIXED, seed=8)
    config = make_config(tiny_model_path, objective={"kl_coef": 0.1}, blending={"name": "sasr", "sasr": {"warmup_steps": 1}})
    learner = make_learner(config)
    initial = {k: v.clone() for k, v in learner.reference.state_dict().items()}
    controller = build_controller(config.blending, seed=0)
    batch = build_train_batch(groups, 0)
    blended_update(controller, learner, demonstrations(), 0, groups, batch, prepare_update(learner.objective, batch))
    assert controller.reference_was_reset
    reference = learner.reference.state_dict()
    for name, tensor in learner.named_weights():
        assert torch.equal(reference[name], tensor), name
    assert any(not torch.equal(initial[k], reference[k]) for k in initial), "the warm-up step must move the weights"
    # Round trip through a checkpoint file.
    learner.save_reference(tmp_path / "reference.safetensors")
    other = make_learner(config)
    other.load_reference(tmp_path / "reference.safetensors")
    for name, tensor in other.reference.state_dict().items():
        assert torch.equal(tensor, reference[name]), name
    # The next RL step's KL term is measured against the post-warm-up policy: 0 before it moves.
    controller.rng.random = lambda: 0.999
    batch = build_train_batch(groups, 0)
    metrics = blended_update(controller, learner, demonstrations(), 1, groups, batch, prepare_update(learner.objective, batch))
    assert metrics["sasr/step_type"] == 0.0 and metrics["sasr/kl_to_reference"] == pytest.approx(0.0, abs=1e-6)


def test_deferred_weights_refuse_partitioned_gradients(tiny_model_path):
    config = make_config(tiny_model_path)
    learner = make_learner(config)
    learner.check_gradient_access()  # the torch backend is fine
    learner.engine = object()
    learner.config = config.model_copy(update={"learner": config.learner.model_copy(update={"zero_stage": 2})})
    with pytest.raises(ValueError, match="zero_stage: 0"):
        learner.check_gradient_access()


@pytest.mark.deepspeed
@pytest.mark.parametrize("name,section,objective", [
    ("amft", {"warmup_steps": 0, "meta_update_freq": 1, "entropy_lr": 20.0, "meta_lr": 2.0, "policy_lr": 1.0}, {}),
    ("hpt", {"sft_coef": 0.3}, {"name": "dr_grpo", "clip": False, "loss_agg": "seq-mean-token-sum-norm"}),
])
def test_deepspeed_stage0_matches_torch(tiny_model_path, name, section, objective):
    """Blended steps (deferred gradient combination for AMFT, two parts for HPT) give the same update on DeepSpeed stage 0."""
    groups = scored_groups(MIXED, seed=9)
    validation = [g.prompt for g in scored_groups([[True]], seed=10, prefix="held-out-")]
    weights = {}
    for backend in ("torch", "deepspeed"):
        config = make_config(tiny_model_path, micro_batch_size=3, backend=backend, objective=objective,
                             blending={"name": name, name: section})
        learner = make_learner(config)
        controller = build_controller(config.blending, seed=0)
        batch = build_train_batch(groups, 0)
        blended_update(controller, learner, demonstrations(), 0, groups, batch,
                       prepare_update(learner.objective, batch), validation)
        weights[backend] = {k: v.clone() for k, v in learner.named_weights()}
    initial = fresh_model(tiny_model_path).state_dict()
    assert max(float((weights["torch"][k] - initial[k]).abs().max()) for k in initial) > 1e-4
    for key, value in weights["torch"].items():
        torch.testing.assert_close(weights["deepspeed"][key], value, rtol=1e-5, atol=1e-7)
