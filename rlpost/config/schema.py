"""The one typed schema of every rlpost setting. Each field's docstring is its documentation."""

from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from rlpost.config.base import Section
from rlpost.config.blending import BlendingConfig
from rlpost.config.cluster import ClusterConfig
from rlpost.config.objective import ObjectiveConfig
from rlpost.config.sampler import SamplerConfig


class LoraConfig(Section):
    enabled: bool = False
    """Train LoRA adapters (peft) instead of all weights."""
    r: int = Field(16, ge=1)
    """LoRA rank."""
    alpha: float = 32.0
    """LoRA scaling numerator (scale = alpha / r)."""
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    """Dropout on the LoRA branch."""
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    """Module names that get adapters."""


class ModelConfig(Section):
    path: str = "smollm2-135m-instruct"
    """Hugging Face Hub id, local folder, or a built-in alias fetched by `rlpost model fetch` (smollm2-135m-instruct)."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Weights and compute dtype of the learner (the rollout engine has its own `rollout.dtype`)."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward: less memory, about 40% more time."""
    trust_remote_code: bool = False
    """Allow model code from the Hub (off: only transformers' own architectures load)."""
    lora: LoraConfig = LoraConfig()
    """LoRA adapters."""


class ArithmeticConfig(Section):
    levels: list[int] = [1]
    """Difficulty levels of the built-in task: the number of operations in a problem (1 to 3)."""
    train_size: int = Field(4000, ge=1)
    """Problems in the generated train split."""
    test_size: int = Field(500, ge=1)
    """Problems in the generated test split."""
    seed: int = 0
    """Seed of the generator (the test split uses a disjoint seed stream)."""
    max_operand: int = Field(20, ge=2)
    """Largest number appearing in a problem."""

    @field_validator("levels")
    @classmethod
    def _levels_in_range(cls, levels: list[int]) -> list[int]:
        if not levels or any(level not in (1, 2, 3) for level in levels):
            raise ValueError("levels must be a non-empty list of values in 1, 2, 3")
        return levels


class DataConfig(Section):
    train: str = "arithmetic"
    """Training data: `arithmetic` (built-in), a .jsonl/.json/.parquet/.csv file, a saved `datasets` folder, or a Hub dataset id."""
    test: str | None = "arithmetic"
    """Held-out data for evaluation (same forms as `train`); null disables evaluation."""
    split: str = "train"
    """Split name when `train` is a Hub id or a DatasetDict folder."""
    test_split: str = "test"
    """Split name when `test` is a Hub id or a DatasetDict folder."""
    question_field: str = "question"
    """Row field holding the problem text."""
    answer_field: str = "answer"
    """Row field holding the gold final answer."""
    answer_format: Literal["auto", "gsm8k", "boxed", "plain"] = "auto"
    """How the answer field holds the answer: `gsm8k` (text ending in a `#### 42` line), `boxed` (a solution with the answer in its
    last `\\boxed{...}`, e.g. MATH with answer_field: solution), `plain` (the answer itself), or `auto` (detected from the rows, logged)."""
    solution_field: str | None = "solution"
    """Row field holding a worked solution (SFT demonstrations); null if the data has none."""
    system_prompt: str | None = None
    """System message put before every question (null: none)."""
    prompt_template: str = "{question}\nPut your final answer within \\boxed{{}}."
    """User message; `{question}` is replaced by the question (other row fields can be named too)."""
    use_chat_template: bool = True
    """Wrap the prompt in the tokenizer's chat template (with the generation prompt)."""
    max_prompt_tokens: int = Field(512, ge=1)
    """Longest prompt in tokens after templating."""
    overlong_prompts: Literal["skip", "error"] = "skip"
    """What to do with prompts longer than `max_prompt_tokens`: skip them (counted and logged) or stop with an error."""
    arithmetic: ArithmeticConfig = ArithmeticConfig()
    """The built-in arithmetic task."""


RESUME_KEYWORDS = ("auto", "never")
"""`train.resume` values that are not a checkpoint folder."""


class RewardFunctionConfig(Section):
    name: str
    """`math_verify`, `boxed_format`, `path/to/file.py:function` or `package.module:function`."""
    weight: float = 1.0
    """Weight in the total reward (total = sum of weight * score)."""
    kwargs: dict[str, Any] = {}
    """Extra keyword arguments passed to the function on every call."""
    style: Literal["auto", "rlpost", "trl", "verl"] = "auto"
    """How the function is called: `rlpost` fn(prompt, completion, **row_fields) -> float, once per completion;
    `trl` fn(completions, prompts=..., **dataset_columns) -> list[float], once per group (a call may take
    reward.timeout_seconds per completion), every argument a list;
    `verl` compute_score(data_source, solution_str, ground_truth, extra_info) -> float or {"score": ...}, once per
    completion; `auto` is verl for a `solution_str` parameter, trl for a `completions` parameter, else rlpost."""
    data_source: str | None = None
    """verl style: the `data_source` passed for rows without a `data_source` field."""

    @field_validator("weight")
    @classmethod
    def _finite_weight(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be a finite number: the total reward is the weighted sum, so one NaN or inf weight makes every total NaN or inf")
        return value


class RewardConfig(Section):
    functions: list[RewardFunctionConfig] = [RewardFunctionConfig(name="math_verify")]
    """Reward functions summed with their weights."""
    correct_reward: str | None = None
    """Name of the reward whose positive score marks a completion correct (default: the first function)."""
    timeout_seconds: float = Field(5.0, gt=0)
    """Per-call limit; a call that takes longer scores `failure_score` and is counted."""
    failure_score: float = 0.0
    """Score of a call that raised, timed out, or returned a non-number or NaN."""
    num_workers: int = Field(2, ge=1)
    """Worker processes scoring completions."""
    log_failures: int = Field(5, ge=0)
    """How many failures to log in full (with the offending row); later ones are only counted."""


class VllmConfig(Section):
    enforce_eager: bool = True
    """Skip torch.compile/graph capture: starts in ~20 s instead of ~100 s on the CPU, 15-30% slower decoding."""
    kv_cache_space_gib: float = Field(2.0, gt=0)
    """CPU KV-cache size (VLLM_CPU_KVCACHE_SPACE); without it vLLM-CPU reserves most of the RAM."""
    omp_threads_bind: str = "auto"
    """CPU threads vLLM binds (VLLM_CPU_OMP_THREADS_BIND), e.g. `0-1`; `auto` keeps vLLM's default."""
    gpu_memory_utilization: float = Field(0.5, gt=0, le=1)
    """Fraction of GPU memory vLLM may use (GPU only)."""
    tensor_parallel_size: int = Field(1, ge=1)
    """GPUs per engine (GPU only)."""
    max_num_batched_tokens: int = Field(32768, ge=256)
    """Token budget of one engine step. Keep it above the tokens of a step's prompts (prompts x n x length):
    vLLM-CPU 0.32 fails ("CPU Generator does not use offset") when a seeded request's prefill is split across steps."""
    multiprocessing: bool = False
    """Run vLLM's engine core in a child process (False: in the caller's process, faster start on the CPU)."""


class RolloutConfig(Section):
    engine: Literal["hf", "vllm"] = "hf"
    """Rollout engine: `hf` (transformers generate) or `vllm`."""
    n: int = Field(8, ge=1)
    """Completions per prompt (group size) unless the sampler decides otherwise."""
    max_new_tokens: int = Field(256, ge=1)
    """Longest completion; also L_max of length-normalised objectives."""
    temperature: float = Field(1.0, ge=0)
    """Sampling temperature."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus sampling mass."""
    top_k: int = -1
    """Top-k sampling (-1: off)."""
    dtype: Literal["float32", "bfloat16"] = "bfloat16"
    """Rollout dtype. Ratios use learner-recomputed log-probs, so bf16 rollouts stay exact for the loss."""
    batch_size: int = Field(64, ge=1)
    """HF engine: sequences generated together."""
    vllm: VllmConfig = VllmConfig()
    """vLLM engine settings."""


class OptimizerConfig(Section):
    lr: float = 1e-6
    """Peak learning rate of AdamW."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW decoupled weight decay."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    eps: float = 1e-8
    """AdamW epsilon (added to the denominator sqrt(v) + eps; >= 0)."""
    grad_clip: float | None = 1.0
    """Clip the global gradient norm to this value (null: no clipping; the norm is still logged)."""
    warmup_steps: int = Field(0, ge=0)
    """Linear warm-up from 0 to `lr` over this many optimizer steps."""
    schedule: Literal["constant", "cosine", "linear"] = "constant"
    """Decay after warm-up, to `min_lr_ratio * lr` at the last step."""
    min_lr_ratio: float = Field(0.0, ge=0, le=1)
    """Final learning rate as a fraction of `lr` (cosine and linear schedules)."""

    @field_validator("lr")
    @classmethod
    def _positive_finite_lr(cls, value: float) -> float:
        if not (math.isfinite(value) and value > 0):
            raise ValueError("must be a finite number > 0")
        return value

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, betas: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= beta < 1 for beta in betas):
            raise ValueError("each beta must be in [0, 1): they are the decay rates of Adam's moment averages, and at 1 the bias correction 1 - beta^t is 0")
        return betas

    @field_validator("eps")
    @classmethod
    def _non_negative_eps(cls, value: float) -> float:
        if not (math.isfinite(value) and value >= 0):
            raise ValueError("must be a finite number >= 0: it is added to Adam's denominator sqrt(v), which a negative eps can bring to 0")
        return value


class LearnerConfig(Section):
    backend: Literal["deepspeed", "torch"] = "deepspeed"
    """`deepspeed` (ZeRO, multi-rank) or `torch` (one process, plain AdamW)."""
    zero_stage: int = Field(0, ge=0, le=3)
    """DeepSpeed ZeRO stage (0 to 3)."""
    offload_optimizer: bool = False
    """DeepSpeed: keep optimizer states on the CPU (GPU runs)."""
    micro_batch_size: int = Field(8, ge=1)
    """Sequences per forward/backward; gradients accumulate over the step (same update as one big batch).
    With `micro_batching` bucketed or packed it sets the default token budget (`micro_batch_tokens`)."""
    micro_batching: Literal["padded", "bucketed", "packed"] = "bucketed"
    """How a step's sequences are split into micro-batches (the update is the same for all three):
    `padded`: `micro_batch_size` consecutive rows each, padded to their longest row.
    `bucketed`: rows sorted by length (prompt + completion), each micro-batch filled while its rows x its
    longest row stay within `micro_batch_tokens`: rows of similar length together, little padding.
    `packed`: the same sorted rows, each micro-batch's sequences concatenated into one row (per-sequence
    position ids, block-diagonal causal mask) up to `micro_batch_tokens` real tokens: no padding, but the
    attention runs over the packed row's whole length. On the CPU (quickstart shapes, bf16) a bucketed
    step took 0.42x the padded step's time and a packed one 1.06x (docs/results/learner.md)."""
    micro_batch_tokens: int | None = Field(None, ge=1)
    """Token budget of a bucketed or packed micro-batch (padded: rows x longest row; packed: real tokens).
    None: `micro_batch_size` x the step's longest sequence, the most a padded micro-batch can hold, so
    peak memory is no higher than `padded`'s. A row longer than the budget gets a micro-batch of its own."""
    mixed_precision: Literal["no", "bf16"] = "bf16"
    """Run forward/backward under bf16 autocast with fp32 master weights (2-3x faster on CPUs with AMX and on GPUs)."""
    fused_logprobs: bool = True
    """Compute log-probs and entropy from hidden states in chunks, never materialising full logits."""
    logprob_chunk_size: int = Field(1024, ge=1)
    """Tokens per chunk of the fused log-prob op."""
    fused_ops: bool | Literal["auto"] = "auto"
    """Compute every objective's per-token clipped surrogate (loss and gradient) with the fused op
    `rlpost.ops.fused_policy_loss` (one Triton kernel each way on CUDA, no autograd temporaries).
    Same values, gradients and metrics as the eager path. `auto`: on where the policy is on CUDA;
    off on the CPU, where the op runs the eager code plus a recomputation in its backward
    (2.2-2.6x the plain loss's time, measured at 64 x 128 tokens)."""
    compile: bool = False
    """`torch.compile` the policy's decoder body (inductor, dynamic shapes: micro-batch lengths vary from
    step to step). Same values as eager up to float rounding. The first micro-batches compile (minutes on
    a CPU; inductor's on-disk cache shortens later starts), then the body runs fused kernels: on the CPU
    it pays off in runs of tens of steps or more (measured: docs/results/step.md). Not with ZeRO-3,
    whose parameter-gathering hooks would break the graph at every layer."""
    updates_per_batch: int = Field(1, ge=1)
    """Optimizer steps taken on each rollout batch (mini-batches); >1 makes later steps off-policy."""
    mmap_threshold_mib: float | None = Field(None, gt=0, le=32)
    """Heap blocks of at least this many MiB get their own mmap, returned to the OS when freed (glibc
    `mallopt(M_MMAP_THRESHOLD)`, process-wide, set when the learner starts; Linux/glibc only). Pinning the
    threshold stops glibc from raising it after each large free, which otherwise moves activations of
    every size onto a heap that fragments and grows step after step. Measured (docs/results/learner.md):
    1 MiB lowers the step peak by ~17% at about +4% time (noisy; an earlier full-loop run with trimming
    measured +30%, page faults being costly under gVisor), so it is opt-in. None: glibc's dynamic threshold."""
    release_memory: bool = False
    """After each optimizer step, hand the heap memory the step freed back to the OS (glibc `malloc_trim`,
    Linux; a no-op elsewhere). Between steps the learner then holds its weights and optimizer state, not
    its step peak; the next step touches the pages again (~5% slower measured on the CPU, same peak)."""

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _yaml_no(cls, value: object) -> object:
        # YAML 1.1 reads a bare `no` as False.
        return "no" if value is False else value


class TrainConfig(Section):
    steps: int = Field(40, ge=1)
    """Training steps (rollout batch + update each)."""
    prompts_per_step: int = Field(8, ge=1)
    """Prompts sampled per step (each gets a group of completions)."""
    seed: int = 0
    """Seed of data order, sampling and initialisation."""
    output_dir: str = "runs/quickstart"
    """Run folder: metrics, checkpoints, final export."""
    resume: str = "auto"
    """`auto` (newest complete checkpoint in output_dir, if any), `never`, or a checkpoint folder."""
    threads: int | None = None
    """torch intra-op threads (null: torch's default)."""

    @field_validator("resume", mode="before")
    @classmethod
    def _resume_value(cls, value: Any) -> Any:
        allowed = "'auto', 'never' or a checkpoint folder"
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"must be {allowed}")
        if value in RESUME_KEYWORDS or Path(value).exists():
            return value
        # A near-miss of a keyword that is no folder is a typo: resuming from a missing folder is never meant.
        near = difflib.get_close_matches(value.strip().lower(), RESUME_KEYWORDS, n=1, cutoff=0.6)
        if near:
            raise ValueError(f"is not {allowed} (did you mean {near[0]!r}?)")
        return value


class EvalConfig(Section):
    every_steps: int = Field(10, ge=0)
    """Evaluate on the test split every N steps (0: only at the start and end)."""
    num_problems: int = Field(100, ge=1)
    """Test problems per periodic evaluation."""
    max_new_tokens: int | None = None
    """Token limit at evaluation (null: `rollout.max_new_tokens`)."""
    at_start: bool = True
    """Evaluate before the first step (the untrained baseline)."""


class LoggingConfig(Section):
    """Where metrics go. Either list the trackers in `report_to`, or (the older form) switch them with
    `jsonl`, `tensorboard` and `wandb_project`; `report_to` replaces those switches when it is given."""

    report_to: list[Literal["jsonl", "tensorboard", "wandb", "mlflow", "trackio"]] | None = None
    """Trackers that receive every step's metrics and the run config: jsonl (`output_dir/metrics.jsonl`, read by
    `rlpost plot`), tensorboard (`output_dir/tensorboard`), wandb, mlflow (`MLFLOW_TRACKING_URI`, default ./mlruns),
    trackio. Null: the `jsonl`, `tensorboard` and `wandb_project` switches decide; [] logs nowhere."""
    jsonl: bool = True
    """Write metrics per step to `output_dir/metrics.jsonl` (used when `report_to` is null)."""
    tensorboard: bool = True
    """Write TensorBoard events to `output_dir/tensorboard` (used when `report_to` is null)."""
    wandb_project: str | None = None
    """Weights & Biases project (null: off when `report_to` is null; `rlpost` when `report_to` names wandb).
    Also the project (experiment) name of mlflow and trackio."""
    run_name: str | None = None
    """Run name shown by wandb, mlflow and trackio (null: the name of `train.output_dir`)."""
    progress_bar: bool = True
    """Show a progress bar with step, reward, accuracy, tokens/s and ETA."""

    @model_validator(mode="after")
    def _one_way_to_choose(self) -> LoggingConfig:
        switches = sorted({"jsonl", "tensorboard"} & self.model_fields_set)
        if self.report_to is not None and switches:
            raise ValueError(f"set either report_to or {' and '.join(switches)}, not both (report_to replaces them)")
        if self.report_to is not None and len(set(self.report_to)) != len(self.report_to):
            raise ValueError(f"report_to = {self.report_to} names a tracker twice")
        return self

    @property
    def trackers(self) -> list[str]:
        """The trackers this section switches on (the older switches give them in the order jsonl, tensorboard, wandb)."""
        if self.report_to is not None:
            return list(self.report_to)
        chosen = {"jsonl": self.jsonl, "tensorboard": self.tensorboard, "wandb": self.wandb_project is not None}
        return [name for name, on in chosen.items() if on]


class CheckpointConfig(Section):
    every_steps: int = Field(10, ge=0)
    """Save a resumable checkpoint every N steps (0: only at the end)."""
    at_end: bool = True
    """Save a checkpoint after the last step (and always when a run is stopped by SIGTERM), so that a later
    run with more `train.steps` continues from it."""
    keep_last: int = Field(2, ge=1)
    """Complete checkpoints kept; older ones are deleted."""
    export_final: bool = True
    """Export the final policy as a Hugging Face folder (`output_dir/final`)."""


class RLPostConfig(Section):
    """A whole rlpost run."""

    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    reward: RewardConfig = RewardConfig()
    rollout: RolloutConfig = RolloutConfig()
    objective: ObjectiveConfig = ObjectiveConfig()
    blending: BlendingConfig = BlendingConfig()
    sampler: SamplerConfig = SamplerConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    learner: LearnerConfig = LearnerConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    logging: LoggingConfig = LoggingConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    cluster: ClusterConfig = ClusterConfig()

    @model_validator(mode="after")
    def _consistent(self) -> RLPostConfig:
        # learner.micro_batch_size need not divide the batch: the last micro-batch is smaller and the update
        # is the same (losses are normalised over the whole step), so that combination is allowed.
        if self.objective.group_relative and self.rollout.n == 1 and self.sampler.name == "uniform":
            raise ValueError(
                f"rollout.n = 1 gives groups of one completion: objective {self.objective.name}'s advantages are "
                "relative to the group, so they are all zero. Use rollout.n >= 2"
            )
        if self.blending.name != "none" and self.learner.updates_per_batch != 1:
            raise ValueError(
                f"blending.name = {self.blending.name} needs learner.updates_per_batch = 1, "
                f"not {self.learner.updates_per_batch}"
            )
        if self.learner.compile and self.learner.zero_stage == 3:
            raise ValueError("learner.compile needs learner.zero_stage < 3: ZeRO-3 gathers each layer's "
                             "parameters in hooks that torch.compile cannot trace; turn one of them off")
        if self.learner.zero_stage > 0 and self.learner.backend != "deepspeed":
            raise ValueError(
                f"learner.zero_stage = {self.learner.zero_stage} needs learner.backend = deepspeed "
                f"(the {self.learner.backend} backend does not shard); set learner.zero_stage = 0"
            )
        return self
