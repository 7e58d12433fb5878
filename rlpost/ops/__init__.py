"""rlpost.ops: fused per-token kernels for the learner.

- `fused_token_logprobs`: log-prob (+ entropy) of target tokens from hidden states and the LM head,
  chunked over tokens, never materialising [N, V] logits or their gradient.
- `token_logprobs_from_logits`: the plain reference path from full logits.
- `model_token_logprobs`: response-aligned [B, T] log-probs of a batch under a causal LM.
- `fused_policy_loss`: masked per-token clipped-surrogate + KL loss as one custom op.
- `policy_loss_terms`: every objective's per-token surrogate, its loss through that op when the
  learner's `fused_ops` is on (the objectives call it; the same values and gradients either way).

Custom ops (CPU: torch; CUDA: Triton, imported lazily): `rlpost::token_logprob_entropy`,
`rlpost::token_logprob_entropy_scratch`, `rlpost::logprob_grad_inplace`, `rlpost::policy_loss`,
`rlpost::policy_loss_backward` (CUDA only; elsewhere the autograd formula differentiates the torch code).
"""

from rlpost.ops.logprobs import DEFAULT_CHUNK_SIZE, fused_token_logprobs, token_logprobs_from_logits
from rlpost.ops.model_logprobs import model_token_logprobs
from rlpost.ops.policy_loss import fused_policy_loss, policy_loss_terms

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "fused_policy_loss",
    "fused_token_logprobs",
    "model_token_logprobs",
    "policy_loss_terms",
    "token_logprobs_from_logits",
]
