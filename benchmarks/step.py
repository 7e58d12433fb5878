"""One step of the quickstart workload, taken apart: phases, learner utilisation, rollout and end-to-end speed.

Runs `configs/grpo.yaml`, the quickstart's RL step (8 prompts x 8 completions, <= 128 new tokens, SmolLM2-135M-Instruct,
vLLM bf16 rollouts, DeepSpeed bf16 learner, local runtime) for a few steps, the first left out as
warm-up, and prints, all measured in this one process:

(a) phases: rollout, reward, train and sync seconds per step (the run's `perf/*` metrics) and the rest;
(b) learner utilisation: the model FLOP/s the train phase achieves over the FLOP/s of a bf16 matmul
    of the learner's shapes ([tokens of a micro-batch, hidden] x [hidden, intermediate]) timed here
    with the learner's thread count after the run and again after the vLLM baseline (the better of
    the two: contention only slows a matmul). Model FLOPs of one step:
        sum over the learner's passes of  k * (2 * N_body * T + 2 * V * H * R)
    T: real (unpadded) tokens of the pass, R: its response tokens (the only positions that go
    through the LM head), N_body: parameters other than the embedding and the LM head, V * H: the
    LM head's weight; k = 3 for a gradient pass (forward + backward), 1 for a no-grad log-prob
    forward (reference or old-policy log-probs, when the step runs them). Attention's score and
    value products (~3% here) and padding are not counted: padded tokens are reported separately.
    The train phase (`perf/train_seconds`) includes the optimizer step, also timed on its own.
    A second ceiling, the one the learner could reach if it did nothing but its matmuls: the bf16
    products of a gradient pass at their own shapes and layouts (each linear layer's forward, input-
    gradient and weight-gradient matmuls, the LM head's on the response rows), FLOP-weighted;
(c) rollout: completion tokens/s of rlpost's rollout phase over standalone `vllm.LLM` built with
    the engine arguments rlpost uses (`rlpost.rollout.vllm.engine_kwargs`) replaying the very
    requests (token-id prompts, SamplingParams) rlpost sent, after one warm-up request;
(d) end to end: completion tokens/s (completion tokens / seconds per step) over TRL's
    `GRPOTrainer` on the same model, prompts, group size, length limit, temperature, micro-batch
    and rewards, with the CPU settings the transformers docs recommend (`use_cpu`, `bf16`);
(e) overlap (`--overlap`): seconds per step of the same workload run again with
    `cluster.max_staleness: 1` (rollout of step k+1 while the learner trains step k) over the
    synchronous run's, both from the wall-clock times at which steps end, the first step (warm-up,
    pipeline fill) and the last (nothing left to generate beside it) left out: use --steps 5 or more.

Every completion is forced to the length limit (EOS ignored) in all three engines, so they process
the same tokens: vLLM `min_tokens = max_tokens` (also in rlpost's engine, whose requests this
script rewrites: the rollout config has no such knob), HF `min_new_tokens` in TRL.

    python benchmarks/step.py                       # 4 steps (1 warm-up), vLLM and TRL baselines
    python benchmarks/step.py --quick --skip-trl    # smoke test: 2 prompts x 2 completions x 16 tokens
    python benchmarks/step.py --steps 6 --threads 2
    python benchmarks/step.py --steps 5 --overlap --set learner.compile=true --set rollout.vllm.enforce_eager=false

TRL is a benchmark-only extra: `pip install -e .[bench]`. No wall-clock limits: read the ratios,
each measured against a baseline in the same run (the machine may be shared). Ends with a JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PHASES = ("rollout", "reward", "train", "sync")


# ----------------------------------------------------------------------------- the workload


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "grpo.yaml"))
    parser.add_argument("--steps", type=int, default=4, help="training steps; the first is warm-up (default 4)")
    parser.add_argument("--quick", action="store_true", help="tiny workload: 2 prompts x 2 completions x 16 tokens")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads of the learner, the matmul baseline and TRL (default: torch's)")
    parser.add_argument("--skip-trl", action="store_true", help="leave out the TRL GRPOTrainer baseline")
    parser.add_argument("--skip-vllm-baseline", action="store_true", help="leave out standalone vLLM")
    parser.add_argument("--overlap", action="store_true",
                        help="also run the workload with cluster.max_staleness=1 and compare seconds per step")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for rlpost's runs, e.g. learner.compile=true (repeatable)")
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps must be at least 2 (the first step is warm-up)")
    return args


def build_config(args: argparse.Namespace, output_dir: str, extra: list[str] | None = None):
    from rlpost.config.loader import load_config
    from rlpost.models import resolve_model

    overrides = [
        "data.test=null",  # no evaluation inside the timed steps
        f"train.steps={args.steps}",
        f"train.output_dir={output_dir}",
        "train.resume=never",
        "cluster.runtime=local",
        "checkpoint.every_steps=0",
        "checkpoint.at_end=false",
        "checkpoint.export_final=false",
        "logging.tensorboard=false",
        "logging.progress_bar=false",
    ]
    if args.threads:
        overrides.append(f"train.threads={args.threads}")
    if args.quick:
        overrides += ["train.prompts_per_step=2", "rollout.n=2", "rollout.max_new_tokens=16"]
    config = load_config(args.config, overrides + list(args.set) + (extra or []))
    return config.model_copy(update={"model": config.model.model_copy(update={"path": resolve_model(config.model.path)})})


def force_length(params: Any) -> Any:
    """Sampled requests generate exactly `max_tokens`: stop tokens are masked until then."""
    if params.temperature > 0 and params.max_tokens:
        params.min_tokens = params.max_tokens
    return params


# ----------------------------------------------------------------------------- instruments


@dataclass
class Passes:
    """Tokens through the learner's model, by pass kind (gradient or no-grad log-prob forward)."""

    real: dict[str, int] = field(default_factory=lambda: {"grad": 0, "nograd": 0})
    response: dict[str, int] = field(default_factory=lambda: {"grad": 0, "nograd": 0})
    padded: dict[str, int] = field(default_factory=lambda: {"grad": 0, "nograd": 0})
    micro_batches: dict[str, int] = field(default_factory=lambda: {"grad": 0, "nograd": 0})
    optimizer_seconds: float = 0.0
    """Time in the optimizer step (gradient clipping, AdamW, DeepSpeed's step), part of the train phase."""


class LearnerTokens:
    """Counts what goes through `Learner.token_logprobs` (every forward of the learner: the gradient
    passes and the no-grad log-prob passes) and times `Learner._optimizer_step`, one `Passes` per step."""

    def __init__(self) -> None:
        from rlpost.learner.learner import Learner

        self.current = Passes()
        self.steps: dict[int, Passes] = {}
        self._original, self._original_step = Learner.token_logprobs, Learner._optimizer_step
        counter = self

        def token_logprobs(learner, model, batch, compute_entropy, temperature=None):
            import torch

            kind = "grad" if torch.is_grad_enabled() else "nograd"
            counter.current.real[kind] += int(batch.attention_mask.sum())
            counter.current.response[kind] += int(batch.response_mask.sum())
            counter.current.padded[kind] += batch.input_ids.numel()
            counter.current.micro_batches[kind] += 1
            return counter._original(learner, model, batch, compute_entropy, temperature)

        def optimizer_step(learner, lr_factor):
            started = time.perf_counter()
            try:
                return counter._original_step(learner, lr_factor)
            finally:
                counter.current.optimizer_seconds += time.perf_counter() - started

        Learner.token_logprobs, Learner._optimizer_step = token_logprobs, optimizer_step

    def close_step(self, step: int) -> None:
        self.steps[step], self.current = self.current, Passes()

    def restore(self) -> None:
        from rlpost.learner.learner import Learner

        Learner.token_logprobs, Learner._optimizer_step = self._original, self._original_step


@dataclass
class Call:
    """One `vllm.LLM.generate` call of rlpost's engine."""

    version: int
    prompts: list[Any]
    params: list[Any]
    seconds: float
    tokens: int


class EngineRecorder:
    """Wraps rlpost's `VLLMEngine` instance: forces the length limit on its requests and records them
    (and the `Prompt`s behind them) for the standalone vLLM and TRL baselines."""

    def __init__(self, engine: Any) -> None:
        if not hasattr(engine, "llm"):
            raise SystemExit(f"benchmarks/step.py needs rollout.engine: vllm (got {type(engine).__name__})")
        self.engine = engine
        self.calls: list[Call] = []
        self.prompts: list[tuple[int, list[Any]]] = []  # (policy version, prompts) per engine call
        engine_generate, llm_generate = engine.generate, engine.llm.generate

        def generate(prompts, n_per_prompt, sampling):
            self.prompts.append((engine.policy_version, list(prompts)))
            return engine_generate(prompts, n_per_prompt, sampling)

        def llm_call(prompts, params, **kwargs):
            params = [force_length(p) for p in params]
            kept = [p.clone() for p in params]  # before vLLM adds the generation config's stop ids
            started = time.perf_counter()
            outputs = llm_generate(prompts, params, **kwargs)
            seconds = time.perf_counter() - started
            tokens = sum(len(out.token_ids) for request in outputs for out in request.outputs)
            self.calls.append(Call(engine.policy_version, list(prompts), kept, seconds, tokens))
            return outputs

        engine.generate, engine.llm.generate = generate, llm_call


# ----------------------------------------------------------------------------- rlpost's run


@dataclass
class RlpostRun:
    records: list[dict]
    """Each step's metrics, in step order."""
    recorder: EngineRecorder
    threads: int
    """The learner's torch threads."""
    ended: list[float]
    """perf_counter() when each step ended."""

    def seconds_per_step(self) -> float:
        """Wall seconds between step ends, the first step (warm-up, pipeline fill) and the last left out:
        with max_staleness 1 the last step trains while nothing is generated (there is no next step)."""
        if len(self.ended) < 3:
            raise SystemExit("--overlap needs --steps 3 or more (the first and last steps are not timed)")
        return (self.ended[-2] - self.ended[0]) / (len(self.ended) - 2)


def run_rlpost(config: Any, learner_tokens: LearnerTokens) -> RlpostRun:
    """Train `train.steps` steps with every completion forced to the length limit."""
    import torch

    from rlpost.io.metrics import read_metrics
    from rlpost.loop import TrainingRun
    from rlpost.loop.run import RunHooks

    class Hooks(RunHooks):
        def on_step(self, run, step, metrics):
            learner_tokens.close_step(step)
            ended.append(time.perf_counter())
            print(f"  rlpost step {step}: {metrics['perf/step_seconds']:.1f} s", flush=True)

    ended: list[float] = []
    started = time.perf_counter()
    run = TrainingRun(config, hooks=Hooks())
    threads = torch.get_num_threads()
    recorder = EngineRecorder(run.executor.engine)
    print(f"rlpost ready in {time.perf_counter() - started:.0f} s (learner threads: {threads})", flush=True)
    run.fit()
    records = [r for r in read_metrics(Path(config.train.output_dir)) if "perf/step_seconds" in r]
    return RlpostRun(sorted(records, key=lambda r: r["step"]), recorder, threads, ended)


def overlap_report(args: argparse.Namespace, synchronous: RlpostRun) -> dict[str, float]:
    """Seconds per step of the same workload with `cluster.max_staleness: 1` (the local runtime generates
    step k+1 while the learner trains step k), over the synchronous run's, both from step-end times."""
    output_dir = tempfile.mkdtemp(prefix="rlpost-step-bench-overlap-")
    tokens = LearnerTokens()
    try:
        config = build_config(args, output_dir, ["cluster.max_staleness=1"])
        print("overlapped run (cluster.max_staleness=1):", flush=True)
        overlapped = run_rlpost(config, tokens)
    finally:
        tokens.restore()
        shutil.rmtree(output_dir, ignore_errors=True)
    sync, over = synchronous.seconds_per_step(), overlapped.seconds_per_step()
    return {"synchronous_seconds_per_step": sync, "overlapped_seconds_per_step": over, "ratio": over / sync}


def phase_table(records: list[dict]) -> dict[str, float]:
    """Mean seconds per timed step of each phase, the rest, and the step."""
    timed = records[1:]
    table = {name: statistics.fmean(r[f"perf/{name}_seconds"] for r in timed) for name in PHASES}
    table["step"] = statistics.fmean(r["perf/step_seconds"] for r in timed)
    table["other"] = table["step"] - sum(table[name] for name in PHASES)
    return table


# ----------------------------------------------------------------------------- (b) learner FLOP/s


def model_shapes(model_path: str) -> dict[str, int]:
    """Parameter counts and matmul sizes of the model, from its config (built on the meta device)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    hf_config = AutoConfig.from_pretrained(model_path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config)
    total = sum(p.numel() for p in model.parameters())  # a tied weight counts once
    embedding = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    body = total - embedding.numel() - (0 if head is embedding else head.numel())
    return {"params": total, "body_params": body, "head_params": head.numel(),
            "hidden": hf_config.hidden_size, "intermediate": hf_config.intermediate_size}


def learner_flops(passes: Passes, shapes: dict[str, int]) -> float:
    """Model FLOPs of one step (module docstring): 3x forward for gradient passes, 1x for no-grad ones."""
    total = 0.0
    for kind, factor in (("grad", 3), ("nograd", 1)):
        forward = 2 * shapes["body_params"] * passes.real[kind] + 2 * shapes["head_params"] * passes.response[kind]
        total += factor * forward
    return total


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def median_matmul_seconds(a: Any, b: Any, budget_seconds: float = 0.0) -> float:
    """Median time of `a @ b` over at least 5 timed products (more until `budget_seconds`), after 3 untimed."""
    import torch

    for _ in range(3):
        torch.matmul(a, b)
    times: list[float] = []
    while len(times) < 5 or sum(times) < budget_seconds:
        started = time.perf_counter()
        torch.matmul(a, b)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def matmul_flops_per_second(m: int, k: int, n: int, threads: int, budget_seconds: float) -> float:
    """bf16 [m, k] x [k, n] on `threads` threads: 2mkn / the median time of the products timed
    within `budget_seconds` (at least 5), after 3 untimed ones."""
    import torch

    with torch_threads(threads):
        a = torch.randn(m, k).to(torch.bfloat16)
        b = torch.randn(k, n).to(torch.bfloat16)
        return 2 * m * k * n / median_matmul_seconds(a, b, budget_seconds)


def linear_shapes(model_path: str) -> list[tuple[int, int, int]]:
    """(in features, out features, how many) of the model's linear layers (the LM head excluded), from its config."""
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(model_path)
    hidden, inter, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    head_dim = getattr(cfg, "head_dim", None) or hidden // cfg.num_attention_heads
    q = head_dim * cfg.num_attention_heads
    kv = head_dim * getattr(cfg, "num_key_value_heads", cfg.num_attention_heads)
    per_layer = [(hidden, q), (hidden, kv), (hidden, kv), (q, hidden), (hidden, inter), (hidden, inter), (inter, hidden)]
    return [(fan_in, fan_out, layers) for fan_in, fan_out in per_layer]


def training_matmul_rate(m: int, m_head: int, model_path: str, shapes: dict[str, int], threads: int) -> float:
    """FLOP/s of the bf16 products of one gradient pass of the learner, each at its own shape and layout:
    for each linear layer [out, in] on [m, in] inputs, the forward x @ W^T, the input gradient g @ W and
    the weight gradient g^T @ x (the slowest layout here); the LM head the same three on its m_head
    response rows. The set's FLOPs over its time, each product counted as often as the model runs it
    (median of 5 timings each, after 3 untimed)."""
    import torch

    vocab = shapes["head_params"] // shapes["hidden"]
    products = [(m, fan_in, fan_out, count) for fan_in, fan_out, count in linear_shapes(model_path)]
    products.append((m_head, shapes["hidden"], vocab, 1))
    flops = seconds = 0.0
    with torch_threads(threads):
        for rows, fan_in, fan_out, count in products:
            x = torch.randn(rows, fan_in).to(torch.bfloat16)
            weight = torch.randn(fan_out, fan_in).to(torch.bfloat16)
            grad = torch.randn(rows, fan_out).to(torch.bfloat16)
            for a, b in ((x, weight.t()), (grad, weight), (grad.t(), x)):
                flops += count * 2 * rows * fan_in * fan_out
                seconds += count * median_matmul_seconds(a, b)
    return flops / seconds


def learner_report(records: list[dict], tokens: LearnerTokens, shapes: dict[str, int],
                   ceilings: list[float], training: list[float]) -> dict[str, float]:
    """`ceilings`: timings of the one-shape matmul baseline; `training`: of `training_matmul_rate`."""
    timed = [(r, tokens.steps[r["step"]]) for r in records[1:]]
    flops = sum(learner_flops(passes, shapes) for _, passes in timed)
    seconds = sum(r["perf/train_seconds"] for r, _ in timed)
    achieved = flops / seconds
    ceiling = max(ceilings)  # contention only slows it: the better timing is the machine's rate
    real = sum(p.real["grad"] + p.real["nograd"] for _, p in timed)
    padded = sum(p.padded["grad"] + p.padded["nograd"] for _, p in timed)
    optimizer = sum(p.optimizer_seconds for _, p in timed)
    return {
        "model_tflops_per_step": flops / len(timed) / 1e12,
        "optimizer_seconds_per_step": optimizer / len(timed),
        "utilisation_without_optimizer": flops / (seconds - optimizer) / ceiling,
        "achieved_tflops": achieved / 1e12,
        "matmul_bf16_tflops": ceiling / 1e12,
        "matmul_bf16_tflops_runs": [c / 1e12 for c in ceilings],
        "utilisation": achieved / ceiling,
        "training_matmul_tflops": max(training) / 1e12,
        "utilisation_of_training_matmuls": achieved / max(training),
        "grad_tokens_per_step": sum(p.real["grad"] for _, p in timed) / len(timed),
        "response_tokens_per_step": sum(p.response["grad"] for _, p in timed) / len(timed),
        "nograd_tokens_per_step": sum(p.real["nograd"] for _, p in timed) / len(timed),
        "nograd_passes_per_step": sum(p.micro_batches["nograd"] for _, p in timed) / len(timed),
        "padding_efficiency": real / max(padded, 1),
    }


def per_grad_micro_batch(tokens: LearnerTokens, kind: str) -> int:
    """Mean `kind` tokens (`padded`: the M of the matmul baselines; `response`: the LM head's rows) of a
    gradient micro-batch."""
    passes = list(tokens.steps.values())
    count = sum(p.micro_batches["grad"] for p in passes)
    return max(1, round(sum(getattr(p, kind)["grad"] for p in passes) / max(count, 1)))


# ----------------------------------------------------------------------------- (c) standalone vLLM


def standalone_vllm(config: Any, calls: list[Call]) -> dict[str, float]:
    """Replay the timed steps' requests on a fresh `vllm.LLM` with rlpost's engine arguments
    (environment already set by rlpost's engine); one warm-up request (the warm-up step's) first."""
    from vllm import LLM
    from vllm.platforms import current_platform

    from rlpost.rollout.vllm import engine_kwargs

    started = time.perf_counter()
    kwargs = engine_kwargs(config.rollout, current_platform.is_cpu())
    llm = LLM(model=config.model.path, seed=config.train.seed, **kwargs)
    print(f"standalone vLLM ready in {time.perf_counter() - started:.0f} s", flush=True)
    try:
        warmup = [c for c in calls if c.version == 0]
        for call in warmup:
            llm.generate(call.prompts, [p.clone() for p in call.params], use_tqdm=False)
        seconds = tokens = 0.0
        for call in calls:
            if call.version == 0:
                continue
            begun = time.perf_counter()
            outputs = llm.generate(call.prompts, [p.clone() for p in call.params], use_tqdm=False)
            seconds += time.perf_counter() - begun
            tokens += sum(len(out.token_ids) for request in outputs for out in request.outputs)
    finally:
        core = getattr(llm.llm_engine, "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
    return {"tokens": tokens, "seconds": seconds, "tokens_per_second": tokens / seconds}


def rollout_report(records: list[dict], recorder: EngineRecorder, standalone: dict | None) -> dict[str, Any]:
    timed = [c for c in recorder.calls if c.version > 0]
    tokens = sum(c.tokens for c in timed)
    phase_seconds = sum(r["perf/rollout_seconds"] for r in records[1:])
    report: dict[str, Any] = {
        "tokens": tokens,
        "rlpost_tokens_per_second": tokens / phase_seconds,
        "rlpost_vllm_call_tokens_per_second": tokens / sum(c.seconds for c in timed),
        "forced_to_limit": statistics.fmean(r["response_length/clip_ratio"] for r in records),
    }
    if standalone is not None:
        report["standalone_tokens_per_second"] = standalone["tokens_per_second"]
        report["ratio"] = report["rlpost_tokens_per_second"] / standalone["tokens_per_second"]
    return report


# ----------------------------------------------------------------------------- (d) TRL GRPOTrainer


def trl_missing() -> str | None:
    try:
        import trl  # noqa: F401
    except ImportError:
        return "trl is not installed (pip install -e .[bench])"
    return None


class RewardBridge:
    """TRL reward function scoring with rlpost's reward functions (the run's `reward` section)."""

    __name__ = "rlpost_rewards"

    def __init__(self, reward_config: Any, prompts: list[Any]) -> None:
        from rlpost.rewards.manager import RewardManager

        self.manager = RewardManager(reward_config)
        self.by_text = {prompt.text: prompt for prompt in prompts}

    def __call__(self, prompts: list[str], completions: list[str], completion_ids: list[list[int]], **_: Any):
        from rlpost.types import Completion, Group

        groups = [
            Group(self.by_text[prompt], [Completion(list(ids), text, [0.0] * len(ids), "length")])
            for prompt, text, ids in zip(prompts, completions, completion_ids, strict=True)
        ]
        self.manager.score(groups)
        return [group.rewards[0] for group in groups]


def trl_arguments(config: Any, output_dir: str) -> Any:
    """GRPOConfig of the same workload: one generation of prompts x n completions per optimizer step,
    in micro-batches of the learner's size, forced to the length limit."""
    from trl import GRPOConfig

    rollout, per_step = config.rollout, config.train.prompts_per_step * config.rollout.n
    micro = min(config.learner.micro_batch_size, per_step)
    return GRPOConfig(
        output_dir=output_dir, use_cpu=True, bf16=True,  # the transformers docs' CPU training settings
        per_device_train_batch_size=micro, gradient_accumulation_steps=per_step // micro,
        num_generations=rollout.n, max_completion_length=rollout.max_new_tokens,
        temperature=rollout.temperature, top_p=rollout.top_p,
        generation_kwargs={"min_new_tokens": rollout.max_new_tokens},
        learning_rate=config.optimizer.lr, max_steps=config.train.steps, shuffle_dataset=False,
        logging_steps=1, report_to="none", save_strategy="no", seed=config.train.seed,
        dataloader_num_workers=0, disable_tqdm=True,
    )


def run_trl(config: Any, prompts: list[Any], threads: int) -> dict[str, float]:
    """TRL's GRPOTrainer on the prompts rlpost trained on, in the same order; seconds between step ends."""
    import torch
    from datasets import Dataset
    from transformers import PrinterCallback, TrainerCallback
    from trl import GRPOTrainer

    class Clock(TrainerCallback):
        def __init__(self) -> None:
            self.ends: list[float] = []
            self.lengths: list[float] = []

        def on_train_begin(self, args, state, control, **kwargs):
            self.ends.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            self.ends.append(time.perf_counter())
            print(f"  TRL step {state.global_step}: {self.ends[-1] - self.ends[-2]:.1f} s", flush=True)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "completions/mean_length" in logs:
                self.lengths.append(float(logs["completions/mean_length"]))

    torch.set_num_threads(threads)
    output_dir = tempfile.mkdtemp(prefix="rlpost-step-trl-")
    reward = RewardBridge(config.reward, prompts)
    clock = Clock()
    try:
        dataset = Dataset.from_list([{"prompt": p.text} for p in prompts])
        trainer = GRPOTrainer(model=config.model.path, reward_funcs=reward, train_dataset=dataset,
                              args=trl_arguments(config, output_dir), callbacks=[clock])
        trainer.remove_callback(PrinterCallback)  # its per-step log dicts; the clock prints the times
        trainer.train()
    finally:
        reward.manager.close()
        shutil.rmtree(output_dir, ignore_errors=True)
    seconds = [b - a for a, b in zip(clock.ends, clock.ends[1:])][1:]
    per_step = config.train.prompts_per_step * config.rollout.n
    tokens = sum(length * per_step for length in clock.lengths[1 : 1 + len(seconds)])
    return {"seconds_per_step": statistics.fmean(seconds), "tokens_per_second": tokens / sum(seconds),
            "mean_length": statistics.fmean(clock.lengths[1:]) if len(clock.lengths) > 1 else float("nan")}


# ----------------------------------------------------------------------------- the report


def print_report(phases: dict, learner: dict, shapes: dict, rollout: dict, end_to_end: dict) -> None:
    print()
    print(f"(a) phases, seconds per step (mean of {end_to_end['timed_steps']} steps after the warm-up):")
    for name in (*PHASES, "other", "step"):
        print(f"    {name:<8}{phases[name]:>9.2f}{phases[name] / phases['step']:>8.0%}")
    print(f"(b) learner: {learner['achieved_tflops']:.3f} TFLOP/s of model arithmetic "
          f"({learner['model_tflops_per_step']:.3f} TFLOP/step: 3 x 2 x {shapes['body_params'] / 1e6:.1f}M x "
          f"{learner['grad_tokens_per_step']:.0f} tokens + 3 x 2 x {shapes['head_params'] / 1e6:.1f}M x "
          f"{learner['response_tokens_per_step']:.0f} response tokens; no-grad forwards: "
          f"{learner['nograd_tokens_per_step']:.0f} tokens)")
    print(f"    bf16 matmul [{learner['matmul_m']}, {shapes['hidden']}] x [{shapes['hidden']}, "
          f"{shapes['intermediate']}] on {learner['threads']} threads: {learner['matmul_bf16_tflops']:.3f} TFLOP/s "
          f"-> utilisation {learner['utilisation']:.2f} (padding efficiency {learner['padding_efficiency']:.2f})")
    print(f"    the learner's own bf16 products (each linear layer's forward, input-gradient and weight-gradient "
          f"matmuls at [{learner['matmul_m']}, in], the LM head's at [{learner['matmul_m_head']}, {shapes['hidden']}]): "
          f"{learner['training_matmul_tflops']:.3f} TFLOP/s -> utilisation {learner['utilisation_of_training_matmuls']:.2f}")
    print(f"    of the train phase, {learner['optimizer_seconds_per_step']:.2f} s/step is the optimizer step "
          f"(clip + AdamW); without it: utilisation {learner['utilisation_without_optimizer']:.2f}")
    line = (f"(c) rollout: rlpost {rollout['rlpost_tokens_per_second']:.1f} completion tok/s "
            f"(its vLLM calls alone {rollout['rlpost_vllm_call_tokens_per_second']:.1f})")
    if "ratio" in rollout:
        line += f", standalone vLLM {rollout['standalone_tokens_per_second']:.1f} -> {rollout['ratio']:.2f}x"
    else:
        line += f"; standalone vLLM {rollout['skipped']}"
    print(line + f"  [completions at the limit: {rollout['forced_to_limit']:.0%}]")
    line = f"(d) end to end: rlpost {end_to_end['rlpost_tokens_per_second']:.1f} completion tok/s"
    if "ratio" in end_to_end:
        line += (f", TRL GRPOTrainer {end_to_end['trl_tokens_per_second']:.1f} "
                 f"({end_to_end['trl_seconds_per_step']:.1f} s/step) -> {end_to_end['ratio']:.2f}x")
    else:
        line += f"; TRL {end_to_end['skipped']}"
    print(line)


def print_overlap(overlap: dict) -> None:
    if "ratio" not in overlap:
        print(f"(e) overlap: {overlap['skipped']}")
        return
    print(f"(e) overlap: {overlap['overlapped_seconds_per_step']:.2f} s/step with cluster.max_staleness=1, "
          f"{overlap['synchronous_seconds_per_step']:.2f} synchronous -> {overlap['ratio']:.2f}")


def end_to_end_report(records: list[dict], recorder: EngineRecorder, trl: dict | None, skipped: str) -> dict:
    timed = records[1:]
    tokens = sum(c.tokens for c in recorder.calls if c.version > 0)
    report: dict[str, Any] = {"timed_steps": len(timed),
                              "rlpost_tokens_per_second": tokens / sum(r["perf/step_seconds"] for r in timed)}
    if trl is None:
        report["skipped"] = f"skipped: {skipped}"
    else:
        report.update(trl_tokens_per_second=trl["tokens_per_second"], trl_seconds_per_step=trl["seconds_per_step"],
                      trl_mean_length=trl["mean_length"], ratio=report["rlpost_tokens_per_second"] / trl["tokens_per_second"])
    return report


def main() -> int:
    args = parse_args()
    output_dir = tempfile.mkdtemp(prefix="rlpost-step-bench-")
    config = build_config(args, output_dir)
    shapes = model_shapes(config.model.path)
    tokens = LearnerTokens()
    try:
        synchronous = run_rlpost(config, tokens)
    finally:
        tokens.restore()
        shutil.rmtree(output_dir, ignore_errors=True)
    records, recorder, threads = synchronous.records, synchronous.recorder, synchronous.threads
    m, budget = per_grad_micro_batch(tokens, "padded"), 0.5 if args.quick else 3.0
    m_head = per_grad_micro_batch(tokens, "response")

    def baselines() -> tuple[float, float]:
        return (matmul_flops_per_second(m, shapes["hidden"], shapes["intermediate"], threads, budget),
                training_matmul_rate(m, m_head, config.model.path, shapes, threads))

    timings = [baselines()]
    standalone = None if args.skip_vllm_baseline else standalone_vllm(config, recorder.calls)
    timings.append(baselines())
    ceilings, training = [t[0] for t in timings], [t[1] for t in timings]
    skipped = "--skip-trl" if args.skip_trl else trl_missing()
    trl = None
    if skipped is None:
        prompts = [prompt for _, batch in sorted(recorder.prompts, key=lambda item: item[0]) for prompt in batch]
        trl = run_trl(config, prompts, threads)

    phases = phase_table(records)
    learner = {**learner_report(records, tokens, shapes, ceilings, training), "matmul_m": m, "matmul_m_head": m_head,
               "threads": threads}
    rollout = rollout_report(records, recorder, standalone)
    if standalone is None:
        rollout["skipped"] = "skipped: --skip-vllm-baseline"
    end_to_end = end_to_end_report(records, recorder, trl, skipped or "")
    overlap = overlap_report(args, synchronous) if args.overlap else {"skipped": "skipped: no --overlap"}
    print_report(phases, learner, shapes, rollout, end_to_end)
    print_overlap(overlap)
    workload = {"config": args.config, "steps": args.steps, "quick": args.quick, "threads": threads,
                "prompts": config.train.prompts_per_step, "n": config.rollout.n,
                "max_new_tokens": config.rollout.max_new_tokens}
    ratios = {"learner_utilisation": learner["utilisation"], "rollout_vs_vllm": rollout.get("ratio"),
              "end_to_end_vs_trl": end_to_end.get("ratio"), "overlapped_vs_synchronous": overlap.get("ratio")}
    print(json.dumps({"workload": {**workload, "overrides": args.set}, "ratios": ratios, "phases": phases,
                      "learner": learner, "rollout": rollout, "end_to_end": end_to_end, "overlap": overlap,
                      "shapes": shapes}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
