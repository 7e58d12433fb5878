"""SFT loss: per-token negative log-likelihood of demonstration completions.

A demonstration is a row of a `TrainBatch` whose "response" is the worked solution (tokenised, with
the end-of-sequence token) after the prompt, so the prompt tokens are masked out by construction.
The per-token loss is -log pi_theta(y_t | x, y_<t) (log-probs at temperature 1, the model's own
likelihood), aggregated with the shared `aggregate_loss` over the whole step's demonstration tokens,
so micro-batching does not change the loss or its gradient (the default `token-mean` is the usual
cross-entropy). It has the `compute_loss(LossInputs, StepScale)` signature of every objective, so the
learner micro-batches it like the RL loss; only `logp` and `mask` are read.

Metrics (additive shares, summed by the learner over micro-batches):
`sft/loss` (the aggregated loss), `sft/nll` (token-mean NLL whatever the aggregation),
`sft/tokens` and `sft/sequences` (demonstration tokens and rows in the step).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from rlpost.objectives.base import LossInputs, Metrics, StepScale
from rlpost.objectives.core import aggregate_loss, token_share, valid_sequences

if TYPE_CHECKING:  # see rlpost.objectives.base
    from rlpost.config.objective import LossAggregation


class SFTLoss:
    name = "sft"
    needs_entropy = False
    needs_reference = False

    def __init__(self, loss_agg: LossAggregation = "token-mean"):
        self.loss_agg = loss_agg

    def compute_loss(self, inputs: LossInputs, scale: StepScale) -> tuple[torch.Tensor, Metrics]:
        """This micro-batch's share of the step's SFT loss (scalar) and of its metrics."""
        nll = -inputs.logp
        loss = aggregate_loss(nll, inputs.mask, self.loss_agg, scale)
        metrics: Metrics = {
            "sft/loss": float(loss.detach()),
            "sft/nll": token_share(nll, inputs.mask, scale),
            "sft/tokens": float(inputs.mask.sum()),
            "sft/sequences": float(valid_sequences(inputs.mask).sum()),
        }
        return loss, metrics
