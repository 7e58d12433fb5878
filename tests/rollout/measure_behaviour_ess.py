"""Measure VCPO's ESS ratio and lr scale on-policy: engine behaviour log-probs vs the learner's.

Not a test (pytest does not collect it): the numbers of docs/results/offpolicy_logprobs.md.
Fully on-policy (the learner's weights are the engine's), so every importance weight should be 1,
the ESS ratio 1 and the lr scale 1; anything else is a mismatch between the two log-probs.

    python tests/rollout/measure_behaviour_ess.py --engine hf --dtype float32 --learner fp32
    python tests/rollout/measure_behaviour_ess.py --engine vllm --dtype bfloat16 --learner bf16

Prompts: the quickstart's arithmetic training problems (level 1) with its system prompt.
Runs on the code before issue 15 too, whose learner knows no top-p/top-k.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from rollout_testlib import response_tensors  # noqa: E402  (this folder is sys.path[0])
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from rlpost.config.objective import ObjectiveConfig  # noqa: E402
from rlpost.config.schema import DataConfig, RolloutConfig  # noqa: E402
from rlpost.data.arithmetic import generate_arithmetic  # noqa: E402
from rlpost.data.prompts import build_prompts  # noqa: E402
from rlpost.models import resolve_model  # noqa: E402
from rlpost.objectives.registry import get_objective  # noqa: E402
from rlpost.ops import model_token_logprobs  # noqa: E402
from rlpost.rollout.base import SamplingSettings  # noqa: E402

SYSTEM_PROMPT = (
    "You are a careful math tutor. Solve the problem in one or two short sentences, "
    "then give the final answer as \\boxed{number}."
)


@torch.no_grad()
def learner_logprobs(model, batch: dict[str, torch.Tensor], sampling: SamplingSettings, bf16: bool) -> torch.Tensor:
    """The learner's [N, T] log-probs: fused path, bf16 autocast like the quickstart's learner when `bf16`."""
    warp = {}
    if "top_p" in inspect.signature(model_token_logprobs).parameters:  # absent before issue 15
        warp = {"top_p": sampling.top_p, "top_k": sampling.top_k}
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logp, _ = model_token_logprobs(
            model,
            batch["input_ids"],
            batch["attention_mask"],
            batch["response_index"],
            batch["response_mask"],
            temperature=sampling.temperature,
            **warp,
        )
    return logp


def build_engine(args, model_path: str):
    if args.engine == "hf":
        from rlpost.rollout.hf import HFEngine

        return HFEngine(model_path, dtype=args.dtype, batch_size=64, seed=0)
    from rlpost.rollout.vllm import VLLMEngine

    config = RolloutConfig(engine="vllm", dtype=args.dtype, vllm={"multiprocessing": False, "kv_cache_space_gib": 1})
    return VLLMEngine(model_path, config, seed=0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--engine", choices=["hf", "vllm"], default="hf")
    parser.add_argument("--dtype", default="float32", help="engine dtype")
    parser.add_argument("--learner", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=-1)
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    args = parser.parse_args()

    model_path = resolve_model("smollm2-135m-instruct")
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    rows = generate_arithmetic([1], args.prompts, seed=0)
    prompts = build_prompts(rows, tokenizer, DataConfig(system_prompt=SYSTEM_PROMPT)).prompts
    sampling = SamplingSettings(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, seed=1
    )
    engine = build_engine(args, model_path)
    groups = engine.generate(prompts, [args.n] * len(prompts), sampling)
    engine.close()

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()  # fp32 master weights
    batch = response_tensors(groups, tokenizer.pad_token_id or 0)
    logp = learner_logprobs(model, batch, sampling, args.learner == "bf16")
    mask = batch["response_mask"]
    vcpo = get_objective("vcpo")(ObjectiveConfig(name="vcpo"), args.max_new_tokens)
    multiplier, metrics = vcpo.lr_scale({"logp": logp, "behaviour_logp": batch["behaviour_logp"], "mask": mask})
    token_log_ratio = (logp - batch["behaviour_logp"])[mask.bool()]
    seq_weights = torch.exp(((logp - batch["behaviour_logp"]) * mask).sum(-1).double())
    threshold = vcpo.config.vcpo.is_threshold
    result = {
        **{k: v for k, v in vars(args).items()},
        "sequences": int(mask.shape[0]),
        "tokens": int(mask.sum()),
        "ess_ratio": metrics["staleness/minibatch_ess_ratio"],
        "lr_scale": multiplier,
        "max_abs_token_log_ratio": float(token_log_ratio.abs().max()),
        "mean_token_log_ratio": float(token_log_ratio.mean()),
        "seq_weight_min": float(seq_weights.min()),
        "seq_weight_max": float(seq_weights.max()),
        "seq_weights_capped": int((seq_weights > threshold).sum()) if threshold is not None else None,
        "is_threshold": threshold,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
