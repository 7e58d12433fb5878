"""`learner.compile`: the torch.compile'd decoder body gives the eager step's update (plain torch, DeepSpeed ZeRO-2), and the config
refuses it where it cannot work.

Tolerances: fp32 throughout; inductor fuses the body's elementwise ops (RMSNorm, rotary, SiLU) into
loops that round intermediate sums in another order than eager, a relative ~1e-6 on a 2-layer model,
inside rtol 1e-5. Weight deltas are read back from updated fp32 weights: 2 ulps of a weight in [1, 2)
(atol 2.5e-7), as in tests/learner/test_micro_batching.py.
"""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from transformers import LlamaForCausalLM

from rlpost.config.schema import RLPostConfig
from rlpost.learner.batch import build_train_batch, prepare_update
from rlpost.learner.learner import Learner
from rlpost.objectives.registry import get_objective
from tests.conftest import make_groups
from tests.support.same_update import assert_same_update


def _step(tiny_model_path: str, compile_body: bool, backend: dict) -> tuple[dict, dict, Learner]:
    torch.manual_seed(0)
    config = RLPostConfig.model_validate({
        "model": {"path": tiny_model_path},
        "learner": {**backend, "mixed_precision": "no", "micro_batch_size": 3, "compile": compile_body},
        "optimizer": {"lr": 1.0, "eps": 1.0, "grad_clip": None},  # Adam's first step ~ lr * grad
        "rollout": {"max_new_tokens": 8},
    })
    objective = get_objective("grpo")(config.objective, config.rollout.max_new_tokens)
    learner = Learner(config, config.model.path, objective, total_steps=2)
    # Groups of different lengths: the bucketed micro-batches have several shapes (dynamic compile).
    batch = build_train_batch(make_groups(3, sizes=[4, 2, 5], seed=7), pad_token_id=0)
    metrics = learner.train_step(batch, prepare_update(objective, batch))
    return metrics, {name: tensor.clone() for name, tensor in learner.named_weights()}, learner


@pytest.mark.slow
@pytest.mark.parametrize("backend", [{"backend": "torch"}, {"backend": "deepspeed", "zero_stage": 2}], ids=["torch", "zero2"])
def test_a_compiled_step_matches_the_eager_step(tiny_model_path, backend):
    torch._dynamo.reset()
    eager_metrics, eager, _ = _step(tiny_model_path, compile_body=False, backend=backend)
    metrics, weights, learner = _step(tiny_model_path, compile_body=True, backend=backend)
    body_forward = learner.module.get_decoder().forward
    assert hasattr(body_forward, "_torchdynamo_orig_callable"), "learner.compile must compile the decoder body"
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1, "the compiled body must have run"
    assert_same_update(tiny_model_path, (eager_metrics, eager), (metrics, weights))
    assert set(learner.module.state_dict()) == set(LlamaForCausalLM.from_pretrained(tiny_model_path).state_dict()), \
        "compiling must not rename the policy's weights (checkpoints, exports)"


def test_compile_is_refused_with_zero3(tiny_model_path):
    with pytest.raises(ValidationError, match="learner.compile needs learner.zero_stage < 3"):
        RLPostConfig.model_validate({"model": {"path": tiny_model_path},
                                     "learner": {"backend": "deepspeed", "zero_stage": 3, "compile": True}})
