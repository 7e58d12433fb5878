"""SRFT: single-stage supervised and reinforcement fine-tuning (Fu et al. 2025, arXiv 2506.19767;
ALGORITHMS.md §12.5, from the HPT authors' re-implementation and a third-party note; no SRFT code read).

Every step trains on both sides at once: SFT on every question's demonstration and RL on every
question's rollouts, L = w_rl·L_RL + w_sft·L_SFT, with the entropy-aware SFT weight

    w_sft = sft_coef · exp(-H_demo)      (sft_coef 0.5 in the paper; H detached)

where H_demo is the policy's mean token entropy on the step's demonstrations, measured before the
update: demonstrations weigh more while the policy is confident, and less when its entropy is high
(SFT would flatten an uncertain policy further). w_rl = `rl_coef`. The weights are decided after both
gradients are computed at unit weight (`defer_weights`), so the entropy is the current policy's on
this step's demonstrations: the learner must combine gradients (learner.backend: torch, or DeepSpeed
stage 0 with float32 weights).

Not in this controller (documented, by design):
- SRFT's off-policy RL term on the demonstrations (LUFFY's shaped importance weight, §12.4) is the
  `luffy` objective: `objective.name: luffy` puts each demonstration into its group, so SRFT =
  LUFFY's mixed-group RL + this entropy-weighted SFT term (configs/srft.yaml).
- SRFT's RL on self-generated samples weights positive samples by 0.1·exp(+H) per sequence and
  negatives by -1 (the re-implementation's `srft_type="paper"`); a per-sequence weight belongs to the
  objective's loss, which a controller (one weight per side) cannot set. The RL part is `objective`.
- The entropy is a token mean over the step's demonstration tokens, not per demonstration.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import Field

from rlpost.blending.base import BlendController, BlendPlan, BlendProbe, Metrics, StepStats, register_controller
from rlpost.config.base import Section


class SrftConfig(Section):
    """SRFT (arXiv 2506.19767): SFT on every question's demonstration and RL on its rollouts in one
    step, L = rl_coef·L_RL + sft_coef·exp(-H)·L_SFT with H the policy's token entropy on the step's
    demonstrations (detached, measured before the update). Combine with `objective.name: luffy` for
    SRFT's off-policy RL term on demonstrations."""

    sft_coef: float = Field(0.5, ge=0)
    """Scale of the entropy-aware SFT weight w_sft = sft_coef · exp(-H) (the paper: 0.5)."""
    rl_coef: float = Field(1.0, ge=0)
    """Weight of the RL loss."""


def sft_weight(entropy: float | None, coef: float) -> float:
    """w_sft = coef · exp(-H); coef when the entropy was not measured (no demonstration tokens)."""
    if entropy is None or not math.isfinite(entropy):
        return coef
    return coef * math.exp(-entropy)


@register_controller("srft", config=SrftConfig, combines_gradients=True)
class SRFT(BlendController):
    def __init__(self, config, seed: int):
        super().__init__(config, seed)
        self.settings = config.srft
        self.steps_done = 0
        self._last: Metrics = {}

    def plan(self, stats: StepStats) -> BlendPlan:
        everything = list(range(len(stats.groups)))
        return BlendPlan(
            "mixed", everything, everything,
            rl_weight=self.settings.rl_coef, sft_weight=self.settings.sft_coef,
            defer_weights=True, rl_entropy=True, sft_entropy=True,
            metrics={"srft/questions": float(len(everything))},
        )

    def decide(self, probe: BlendProbe) -> tuple[float, float]:
        w_sft = sft_weight(probe.sft_entropy, self.settings.sft_coef)
        self._last = {"srft/sft_weight": w_sft, "srft/rl_weight": self.settings.rl_coef}
        if probe.sft_entropy is not None:
            self._last["srft/sft_entropy"] = probe.sft_entropy
        return self.settings.rl_coef, w_sft

    def observe(self, probe: BlendProbe) -> Metrics:
        metrics = dict(self._last) or {"srft/sft_weight": probe.sft_weight, "srft/rl_weight": probe.rl_weight}
        self._last = {}
        if probe.rl_entropy is not None:
            metrics["srft/rl_entropy"] = probe.rl_entropy
        self.steps_done += 1
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {"steps_done": self.steps_done}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps_done = int(state["steps_done"])
