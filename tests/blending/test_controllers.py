"""Controller decisions on hand-made statistics: the worked numbers of ALGORITHMS.md §7.4/§7.5, §8.7, §9.4."""

from __future__ import annotations

import math
import random

import pytest

from rlpost.blending import (
    CONTROLLERS,
    BlendController,
    BlendPlan,
    BlendProbe,
    StepStats,
    build_controller,
    controller_names,
    get_controller,
    register_controller,
)
from rlpost.blending.controllers.amft import meta_gradient, update_mu
from rlpost.blending.controllers.hpt import count_successes
from rlpost.blending.controllers.sasr import switch_probability
from rlpost.config.blending import BlendingConfig
from rlpost.types import Completion, Group, Prompt


def group(correct: list[bool], rewards: list[float] | None = None, prompt_id: str = "q") -> Group:
    completions = [Completion([5, 6], "", [-1.0, -1.0], "stop") for _ in correct]
    rewards = rewards if rewards is not None else [float(c) for c in correct]
    return Group(Prompt(prompt_id, "", [3, 4], {"solution": "x"}), completions, rewards=rewards, correct=list(correct))


def stats(step: int, groups: list[Group]) -> StepStats:
    return StepStats(step=step, groups=groups)


def controller(name: str, seed: int = 0, **section):
    config = BlendingConfig.model_validate({"name": name, name: section})
    return build_controller(config, seed=seed)


def run_step(ctrl, step: int, groups: list[Group], grad_norm: float = 1.0, **probe_fields) -> tuple[BlendPlan, dict]:
    plan = ctrl.plan(stats(step, groups))
    probe = BlendProbe(lr=1e-6, grad_norm=grad_norm, **probe_fields)
    if plan.defer_weights:
        probe.rl_weight, probe.sft_weight = ctrl.decide(probe)
    return plan, ctrl.observe(probe)


# ---------------------------------------------------------------------------------- SASR (§7)


def test_sasr_probability_worked_numbers():
    # §7.4: G_w = 2, g = 2 -> 0.5; g = 6 -> 0.75. §7.5 (gamma 1, G_warmup 2): SFT norm 1 -> 1/3.
    assert switch_probability(2.0, 2.0, gamma=1.0) == pytest.approx(0.5)
    assert switch_probability(6.0, 2.0, gamma=1.0) == pytest.approx(0.75)
    assert switch_probability(1.0, 2.0, gamma=1.0) == pytest.approx(1 / 3)
    # gamma weighs the warm-up norm; the clamps bound p
    assert switch_probability(2.0, 2.0, gamma=3.0) == pytest.approx(0.25)
    assert switch_probability(0.0, 2.0, gamma=1.0, p_min=0.05) == 0.05
    assert switch_probability(5.0, 0.0, gamma=1.0, p_max=0.95) == 0.95


def test_sasr_schedule_follows_the_worked_example_and_the_seeded_draws():
    """W = 2 warm-up SFT steps (the last one's norm 2.0 is G_warmup), then Bernoulli steps with the §7.5 p."""
    sasr = controller("sasr", seed=123, warmup_steps=2, gamma=1.0, p_min=0.0, p_max=1.0)
    groups = [group([True, False]), group([False, False])]
    draws = random.Random(123)

    plan, _ = run_step(sasr, 0, groups, grad_norm=5.0)
    assert (plan.step_type, plan.sft_groups, plan.rl_groups) == ("sft", [0, 1], [])
    assert plan.metrics["sasr/p_sft"] == 1.0
    plan, metrics = run_step(sasr, 1, groups, grad_norm=2.0)
    assert plan.step_type == "sft" and plan.reset_reference, "the KL reference is frozen after warm-up"
    assert sasr.g_warmup == 2.0 and sasr.g_last == 2.0 and metrics["sasr/G_warmup"] == 2.0

    # Hybrid steps: p from (G_last, G_warmup), u from the controller's own seeded RNG.
    norms = iter([1.0, 6.0, 3.0, 0.5, 4.0, 2.5, 1.5, 7.0])
    expected_p = 0.5  # first hybrid step: G_last = G_warmup
    seen_types = set()
    for step in range(2, 12):
        u = draws.random()
        plan = sasr.plan(stats(step, groups))
        assert plan.metrics["sasr/p_sft"] == pytest.approx(expected_p)
        assert plan.metrics["sasr/u"] == u
        is_sft = u < expected_p
        assert plan.step_type == ("sft" if is_sft else "rl")
        # exactly one loss per step: every question on one side, weight 0 on the other
        assert plan.trains_sft != plan.trains_rl
        assert (plan.sft_groups, plan.rl_groups) == (([0, 1], []) if is_sft else ([], [0, 1]))
        norm = next(norms) if is_sft else 99.0  # an RL step's norm must not move G_last
        sasr.observe(BlendProbe(lr=1e-6, grad_norm=norm))
        if is_sft:
            expected_p = norm / (norm + 2.0 + 1e-8)
        seen_types.add(plan.step_type)
    assert seen_types == {"sft", "rl"}, "the seed should give both kinds of step"


def test_sasr_worked_sequence_half_third_three_quarters():
    """§7.5: p = 0.5 after warm-up; an SFT step of norm 1 gives 1/3; a later SFT norm of 6 gives 0.75."""
    sasr = controller("sasr", warmup_steps=1, p_min=0.0, p_max=1.0)
    sasr.rng = _FixedDraws([0.1, 0.9, 0.2])  # SFT, RL, SFT
    groups = [group([False])]
    run_step(sasr, 0, groups, grad_norm=2.0)
    plan, _ = run_step(sasr, 1, groups, grad_norm=1.0)
    assert plan.metrics["sasr/p_sft"] == pytest.approx(0.5) and plan.step_type == "sft"
    plan, _ = run_step(sasr, 2, groups, grad_norm=50.0)
    assert plan.metrics["sasr/p_sft"] == pytest.approx(1 / 3) and plan.step_type == "rl"
    plan, _ = run_step(sasr, 3, groups, grad_norm=6.0)
    assert plan.metrics["sasr/p_sft"] == pytest.approx(1 / 3) and plan.step_type == "sft"
    assert sasr.probability() == pytest.approx(0.75)


def test_sasr_non_finite_norm_keeps_the_last_one():
    sasr = controller("sasr", warmup_steps=1)
    groups = [group([False])]
    run_step(sasr, 0, groups, grad_norm=2.0)
    sasr.rng = _FixedDraws([0.0])
    run_step(sasr, 1, groups, grad_norm=math.nan)
    assert sasr.g_last == 2.0


class _FixedDraws:
    def __init__(self, values):
        self.values = list(values)

    def random(self):
        return self.values.pop(0)


# ---------------------------------------------------------------------------------- HPT (§8)


def test_hpt_routes_per_question_with_gate_zero():
    """§8.7, n = 8, gate 0: c = 0 -> SFT (1 demo, 0 rollouts); c = 1 -> RL (8 rows); c = 8 -> RL (8 rows)."""
    hpt = controller("hpt", gate=0, sft_coef=0.3)
    groups = [group([False] * 8), group([True] + [False] * 7), group([True] * 8)]
    plan = hpt.plan(stats(0, groups))
    assert plan.sft_groups == [0] and plan.rl_groups == [1, 2]
    assert plan.step_type == "mixed" and plan.rl_weight == 1.0 and plan.sft_weight == 0.3
    assert plan.metrics["hpt/demo_rows"] == 1 and plan.metrics["hpt/rollout_rows"] == 16
    assert plan.metrics["hpt/sft_questions"] == 1 and plan.metrics["hpt/rl_questions"] == 2
    assert plan.metrics["hpt/solve_none"] == pytest.approx(1 / 3) and plan.metrics["hpt/solve_all"] == pytest.approx(1 / 3)
    assert hpt.observe(BlendProbe(lr=1.0))["hpt/sft_question_fraction_total"] == pytest.approx(1 / 3)


def test_hpt_gate_and_success_test():
    groups = [group([True, True, False, False]), group([True, False, False, False])]
    plan = controller("hpt", gate=1).plan(stats(0, groups))
    assert (plan.rl_groups, plan.sft_groups) == ([0], [1])
    assert controller("hpt", gate=2).plan(stats(0, groups)).step_type == "sft"
    # success: reward == success_value exactly (the authors' code), independent of the correct flags
    shaped = group([True, True, True], rewards=[1.0, 1.5, 0.99])
    assert count_successes(shaped, "reward", 1.0) == 1
    assert count_successes(shaped, "correct", 1.0) == 3
    plan = controller("hpt", gate=1, success="reward").plan(stats(0, [shaped]))
    assert plan.sft_groups == [0]


def test_hpt_all_rl_or_all_sft_steps_train_one_loss():
    hpt = controller("hpt")
    solved = hpt.plan(stats(0, [group([True, False]), group([False, True])]))
    assert solved.step_type == "rl" and not solved.trains_sft and solved.trains_rl
    failed = hpt.plan(stats(0, [group([False, False])]))
    assert failed.step_type == "sft" and failed.trains_sft and not failed.trains_rl
    # sft_coef 0: the failed questions are dropped, nothing is back-propagated for them
    dropped = controller("hpt", sft_coef=0.0).plan(stats(0, [group([False, False])]))
    assert not dropped.trains_sft and not dropped.trains_rl


# ---------------------------------------------------------------------------------- AMFT (§9)


def test_amft_mu_update_worked_numbers():
    common = dict(meta_lr=1e-4, entropy_lr=5e-4, mu_min=0.05, mu_max=0.95)
    # §9.4: mu 0.5, H_target 1.0, H_t 0.8, g_meta 0 -> 0.5001
    mu, hit = update_mu(0.5, g_meta=0.0, target_entropy=1.0, entropy=0.8, **common)
    assert mu == pytest.approx(0.5001, abs=1e-12) and not hit
    # a dot product of 1000 with eta 1e-6 gives g_meta = -1e-3; the code adds meta_lr * g_meta = -1e-7,
    # rlpost descends the validation loss: mu - meta_lr * g_meta = mu + 1e-7
    g_meta = meta_gradient(val_dot_sft=1000.0, val_dot_rl=0.0, eta=1e-6)
    assert g_meta == pytest.approx(-1e-3)
    mu, _ = update_mu(0.5, g_meta=g_meta, target_entropy=None, entropy=None, **common)
    assert mu - 0.5 == pytest.approx(1e-7, rel=1e-6)
    # clip: mu at 0.95 with a positive update stays at 0.95 and counts as a bound hit
    mu, hit = update_mu(0.95, g_meta=0.0, target_entropy=1.0, entropy=0.8, **common)
    assert mu == 0.95 and hit


def test_amft_descending_sign_lowers_the_lookahead_validation_loss():
    """On a quadratic L_val, the rlpost update of mu lowers L_val(theta') (the code's update raises it)."""
    import numpy as np

    rng = np.random.default_rng(0)
    target, theta = rng.normal(size=5), rng.normal(size=5)
    g_sft, g_rl = rng.normal(size=5), rng.normal(size=5)
    eta, meta_lr, mu = 0.1, 0.5, 0.5

    def val_after(mu_value):
        step = (1 - mu_value) * g_rl + mu_value * g_sft
        return float(((theta - eta * step - target) ** 2).sum())

    g_val = 2 * (theta - target)
    g_meta = meta_gradient(float(g_val @ g_sft), float(g_val @ g_rl), eta)
    exact = (val_after(mu + 1e-6) - val_after(mu - 1e-6)) / 2e-6
    # first order: g_meta is dL_val(theta')/dmu at eta -> 0; here check the sign and rough size
    assert np.sign(g_meta) == np.sign(exact)
    ours, _ = update_mu(mu, g_meta=g_meta, target_entropy=None, entropy=None, meta_lr=meta_lr, entropy_lr=0.0, mu_min=0.0, mu_max=1.0)
    upstream = mu + meta_lr * g_meta
    assert val_after(ours) < val_after(mu) < val_after(upstream)


def test_amft_schedule_warmup_target_entropy_and_meta_steps():
    amft = controller("amft", warmup_steps=2, initial_mu=0.5, meta_update_freq=3, policy_lr=1e-6, meta_lr=1e-4, entropy_lr=5e-4)
    groups = [group([True, False]), group([False, False])]
    for step in range(2):
        plan, metrics = run_step(amft, step, groups)
        assert plan.step_type == "sft" and not plan.defer_weights and metrics["amft/mu"] == 0.5

    # first hybrid step: H_target from the demonstrations, meta-gradient step, mu updated before use
    plan = amft.plan(stats(2, groups))
    assert plan.defer_weights and plan.meta_gradient and plan.sft_entropy and plan.rl_entropy
    assert plan.rl_groups == [0, 1] and plan.sft_groups == [0, 1]
    probe = BlendProbe(lr=3e-5, sft_entropy=1.0, rl_entropy=0.8, val_dot_sft=1000.0, val_dot_rl=0.0)
    rl_weight, sft_weight = amft.decide(probe)
    expected_mu = 0.5 + 5e-4 * 0.2 + 1e-4 * 1e-6 * 1000.0  # policy_lr 1e-6 used, not the probe's lr
    assert sft_weight == pytest.approx(expected_mu, abs=1e-15) and rl_weight == pytest.approx(1 - expected_mu, abs=1e-15)
    metrics = amft.observe(probe)
    assert metrics["amft/H_target"] == 1.0 and metrics["amft/meta_step"] == 1.0
    assert metrics["amft/meta_grad"] == pytest.approx(-1e-3)

    # later hybrid steps: H_target stays, meta-gradient every 3rd hybrid step only
    meta_flags = []
    for step in range(3, 9):
        plan = amft.plan(stats(step, groups))
        assert not plan.sft_entropy
        meta_flags.append(plan.meta_gradient)
        probe = BlendProbe(lr=3e-5, rl_entropy=1.4, val_dot_sft=5.0, val_dot_rl=7.0)
        amft.decide(probe)
        amft.observe(probe)
    assert meta_flags == [False, False, True, False, False, True]
    assert amft.target_entropy == 1.0
    assert amft.mu < expected_mu, "entropy above the target lowers mu (less SFT)"


def test_amft_holds_out_validation_rows_deterministically():
    prompts = [Prompt(f"p{i}", "", [1], {"solution": "s"}) for i in range(20)]
    train, held = controller("amft", seed=7, validation_size=4).split_validation(prompts)
    again, held_again = controller("amft", seed=7, validation_size=4).split_validation(prompts)
    assert len(held) == 4 and len(train) == 16
    assert {p.prompt_id for p in held}.isdisjoint(p.prompt_id for p in train)
    assert [p.prompt_id for p in held] == [p.prompt_id for p in held_again]
    assert [p.prompt_id for p in train] == [p.prompt_id for p in again]
    with pytest.raises(ValueError, match="validation_size"):
        controller("amft", validation_size=20).split_validation(prompts)


# ---------------------------------------------------------------------------------- state


RESUME_SECTIONS = {"sasr": {"warmup_steps": 2}, "hpt": {"gate": 0}, "amft": {"warmup_steps": 1, "meta_update_freq": 2}}
"""Settings that reach each controller's later phases within the resume test's ten steps."""


@pytest.mark.parametrize("name", controller_names())
def test_state_dict_resumes_the_same_schedule(name):
    """A controller rebuilt from state_dict() (through JSON) makes the same decisions as the original."""
    import json

    section = RESUME_SECTIONS.get(name, {})
    rng = random.Random(5)

    def step_groups():
        return [group([rng.random() < 0.4 for _ in range(4)], prompt_id=f"q{i}") for i in range(3)]

    def probe_for(step):
        return dict(grad_norm=1.0 + step % 3, sft_entropy=1.1, rl_entropy=0.7 + 0.1 * step, val_dot_sft=2.0, val_dot_rl=1.0)

    original = controller(name, seed=11, **section)
    schedule = [step_groups() for _ in range(10)]
    for step in range(4):
        run_step(original, step, schedule[step], **probe_for(step))
    restored = controller(name, seed=11, **section)
    restored.load_state_dict(json.loads(json.dumps(original.state_dict())))
    assert restored.state_dict() == original.state_dict()
    for step in range(4, 10):
        a = run_step(original, step, schedule[step], **probe_for(step))
        b = run_step(restored, step, schedule[step], **probe_for(step))
        assert a == b
    fresh = controller(name, seed=11, **section)
    assert fresh.state_dict() != original.state_dict(), "the state must record progress"


def test_the_shipped_controllers_are_registered_with_their_sections():
    assert sorted(controller_names()) == ["amft", "hpt", "sasr", "srft"]
    assert sorted(BlendingConfig.model_fields) == ["amft", "hpt", "name", "sasr", "sft", "srft"]
    for entry in CONTROLLERS.entries():
        assert get_controller(entry.name) is entry.target and entry.target.name == entry.name
        assert BlendingConfig.model_fields[entry.name].annotation is entry.config
    flags = {e.name: (e.target.holds_out_validation, e.target.combines_gradients) for e in CONTROLLERS.entries()}
    assert flags == {"sasr": (False, False), "hpt": (False, False), "amft": (True, True), "srft": (False, True)}
    assert CONTROLLERS.entry("amft").capabilities == {"holds_out_validation": True, "combines_gradients": True}


def test_a_misspelt_capability_is_refused():
    with pytest.raises(ValueError, match="unknown capabilities \\['combine_gradients'\\]"):
        register_controller("test_misspelt", combine_gradients=True)
    assert "test_misspelt" not in CONTROLLERS
    assert not BlendController.combines_gradients


def test_config_validation():
    with pytest.raises(ValueError, match="unknown blending controller 'sars' \\(did you mean 'sasr'\\?\\)"):
        BlendingConfig(name="sars")
    assert BlendingConfig(name="none").name == "none"
    with pytest.raises(ValueError, match="p_min"):
        BlendingConfig.model_validate({"name": "sasr", "sasr": {"p_min": 0.9, "p_max": 0.1}})
    with pytest.raises(ValueError, match="mu_min"):
        BlendingConfig.model_validate({"name": "amft", "amft": {"mu_min": 0.9, "mu_max": 0.1}})
    with pytest.raises(ValueError):
        BlendingConfig.model_validate({"name": "sasr", "sasr": {"warmup_steps": 0}})
    assert build_controller(BlendingConfig(), seed=0) is None


# ------------------------------------------------------------- HPT soft gate, SASR median split


def test_hpt_soft_gate_by_hand():
    """Soft gate, ramp 0 -> 0.25: P = 0, 1/8, 4/8 give alpha = 0, 0.5, 1 (beta = 1, 0.5, 0).
    RL questions {1, 2}: w_rl = (0.5 + 1)/2 = 0.75; SFT questions {0, 1}: w_sft = 0.3 * (1 + 0.5)/2 = 0.225."""
    from rlpost.blending.controllers.hpt import soft_alpha

    hpt = controller("hpt", mode="soft", soft_low=0.0, soft_high=0.25, sft_coef=0.3)
    groups = [group([False] * 8), group([True] + [False] * 7), group([True] * 4 + [False] * 4)]
    plan = hpt.plan(stats(0, groups))
    assert (plan.rl_groups, plan.sft_groups) == ([1, 2], [0, 1])
    assert plan.step_type == "mixed"
    assert plan.rl_weight == pytest.approx(0.75) and plan.sft_weight == pytest.approx(0.225)
    assert plan.metrics["hpt/soft_alpha_mean"] == pytest.approx(0.5)  # (0 + 0.5 + 1)/3
    assert soft_alpha(0.1, 0.0, 0.25) == pytest.approx(0.4)  # 0.1/0.25
    assert soft_alpha(0.5, 0.2, 0.4) == 1.0 and soft_alpha(0.1, 0.2, 0.4) == 0.0


def test_hpt_soft_gate_validation_and_switch_default():
    with pytest.raises(ValueError, match="soft_low"):
        controller("hpt", mode="soft", soft_low=0.5, soft_high=0.25)
    assert BlendingConfig.model_validate({"name": "hpt"}).hpt.mode == "switch"


def test_sasr_median_split_by_hand():
    """Group 0: A = [0.75, -0.25, -0.25, -0.25], median -0.25 -> [1, 0, 0, 0]; group 1: [1, 0, 2], median 1
    -> [0, -1, 1]; an even group [3, 1, 2, 0]: median (1 + 2)/2 = 1.5 -> [1.5, -0.5, 0.5, -1.5]."""
    import torch

    from rlpost.blending.controllers.sasr import median_split_advantages
    from rlpost.learner.batch import PolicyTargets

    advantages = torch.tensor([0.75, -0.25, -0.25, -0.25, 1.0, 0.0, 2.0])
    index = torch.tensor([0, 0, 0, 0, 1, 1, 1])
    assert median_split_advantages(advantages, index).tolist() == pytest.approx([1, 0, 0, 0, 0, -1, 1])
    assert median_split_advantages(torch.tensor([3.0, 1.0, 2.0, 0.0]), torch.zeros(4, dtype=torch.long)).tolist() == [1.5, -0.5, 0.5, -1.5]
    sasr = controller("sasr", median_split=True)
    batch = type("Batch", (), {"group_index": index})()
    targets = sasr.rl_targets(batch, PolicyTargets(advantages, None, {}))
    assert targets.advantages.tolist() == pytest.approx([1, 0, 0, 0, 0, -1, 1])
    # mean |shift| = (0.25*4 + 1*3)/7 = 4/7, logged after the step
    sasr.plan(stats(0, [group([True, False])]))
    assert sasr.observe(BlendProbe(lr=1e-6, grad_norm=1.0))["sasr/median_split_abs_shift"] == pytest.approx(4 / 7)
    plain = PolicyTargets(advantages, None, {})
    assert controller("sasr").rl_targets(batch, plain) is plain


def test_hpt_does_not_count_a_luffy_demonstration():
    # 0 of 3 rollouts right plus a LUFFY demonstration (correct, reward 1): still 0 successes -> SFT at gate 0.
    mixed = group([False, False, False, True], rewards=[0.0, 0.0, 0.0, 1.0])
    mixed.reward_components = {"luffy/off_policy": [0.0, 0.0, 0.0, 1.0]}
    assert count_successes(mixed, "correct", 1.0) == 0 and count_successes(mixed, "reward", 1.0) == 0
    assert controller("hpt", gate=0).plan(stats(0, [mixed])).sft_groups == [0]
