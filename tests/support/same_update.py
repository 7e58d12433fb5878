"""One check shared by the tests that two ways of running a learner step give the same update."""

from __future__ import annotations

import torch
from transformers import LlamaForCausalLM


def assert_same_update(model_path: str, expected: tuple[dict, dict], actual: tuple[dict, dict]) -> None:
    """`expected` and `actual` are (metrics, weights after the step) of two steps from `model_path`'s weights.

    The expected step must move the weights; both must move them alike (fp32: relative 1e-5, and 2 ulps
    of a weight in [1, 2) on the deltas read back from updated weights) and report the same metrics."""
    expected_metrics, expected_weights = expected
    metrics, weights = actual
    initial = LlamaForCausalLM.from_pretrained(model_path).state_dict()
    moved = max(float((expected_weights[name] - initial[name]).abs().max()) for name in expected_weights)
    assert moved > 1e-4, "the step must move the weights"
    for name in expected_weights:
        torch.testing.assert_close(weights[name] - initial[name], expected_weights[name] - initial[name], rtol=1e-5, atol=2.5e-7)
    assert metrics.keys() == expected_metrics.keys()
    for key, value in expected_metrics.items():
        torch.testing.assert_close(torch.tensor(metrics[key]), torch.tensor(value), rtol=1e-5, atol=1e-6, equal_nan=True, msg=key)
