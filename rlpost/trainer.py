"""The in-process training loop: sample prompts, roll out, score, update, sync weights, repeat.

The components talk only through their interfaces (sampler, rollout engine, reward manager,
objective, learner), so the Ray runtime can place each in its own actor without changes here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from rlpost.blending import build_controller
from rlpost.blending.demos import Demonstrations
from rlpost.blending.runner import blended_update
from rlpost.config.loader import dump_config
from rlpost.config.schema import RLPostConfig
from rlpost.data import build_prompts, build_training_prompts, load_rows
from rlpost.evaluation import EVAL_REWARDS, evaluate
from rlpost.io.checkpoint import prune_checkpoints, resume_checkpoint, write_checkpoint
from rlpost.io.metrics import MetricsLogger
from rlpost.learner.batch import build_train_batch, prepare_update
from rlpost.learner.learner import Learner
from rlpost.learner.memory import peak_resident_gib, reset_peak, resident_gib
from rlpost.models import ModelNotFoundError, resolve_model
from rlpost.objectives.registry import get_objective
from rlpost.rewards.manager import RewardManager
from rlpost.rollout import build_engine
from rlpost.rollout.base import SamplingSettings
from rlpost.samplers import build_sampler
from rlpost.types import Group

log = logging.getLogger(__name__)

REFERENCE_FILE = "reference.safetensors"
"""Checkpointed KL reference, written once a blending controller has replaced the initial one."""

# Settings that may change between a checkpoint and its resumption without changing the run.
RESUMABLE_CHANGES = {("train", "steps"), ("train", "resume"), ("train", "threads"), ("logging",), ("eval",), ("checkpoint",)}


def config_digest(config: RLPostConfig) -> str:
    """Hash of the settings a checkpoint depends on (a resumed run must match it)."""
    tree = config.model_dump(mode="json")
    for path in RESUMABLE_CHANGES:
        node = tree
        for key in path[:-1]:
            node = node[key]
        node.pop(path[-1], None)
    tree["train"].pop("output_dir", None)
    return hashlib.sha256(json.dumps(tree, sort_keys=True).encode()).hexdigest()[:16]


def step_seed(seed: int, step: int) -> int:
    """Seed of step `step`'s generation: the same on a resumed run as on an uninterrupted one."""
    return (seed * 1_000_003 + step) % (2**31 - 1)


@dataclass
class StepTimes:
    rollout: float = 0.0
    reward: float = 0.0
    train: float = 0.0
    sync: float = 0.0


class Trainer:
    """Owns one run: builds every component from the config, trains, checkpoints, exports."""

    def __init__(self, config: RLPostConfig):
        self.config = config
        self.output_dir = Path(config.train.output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.digest = config_digest(config)
        # Found (and a checkpoint of another config refused) before any model loads: a mistake fails in seconds.
        self.resume_folder = resume_checkpoint(self.output_dir / "checkpoints", config.train.resume, self.digest)
        if config.train.threads:
            torch.set_num_threads(config.train.threads)
        _seed_everything(config.train.seed)
        self.model_path = resolve_model(config.model.path)
        self.tokenizer = load_tokenizer(self.model_path)
        self.pad_token_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id

        train_rows = load_rows(config.data.train, config.data.split, data_config=config.data)
        self.train_prompts = build_training_prompts(train_rows, self.tokenizer, config.data).prompts
        self.test_prompts = []
        if config.data.test:
            test_rows = load_rows(config.data.test, config.data.test_split, data_config=config.data)
            self.test_prompts = build_prompts(test_rows, self.tokenizer, config.data).prompts
        self._setup_blending()

        self.sampler = build_sampler(
            config.sampler,
            self.train_prompts,
            prompts_per_step=config.train.prompts_per_step,
            default_n=config.rollout.n,
            seed=config.train.seed,
        )
        self.rewards = RewardManager(config.reward)
        # No evaluation data, no evaluation reward workers.
        self.eval_rewards = (
            RewardManager(EVAL_REWARDS.model_copy(update={"num_workers": config.reward.num_workers}))
            if self.test_prompts else None
        )
        self.objective = get_objective(config.objective.name)(config.objective, config.rollout.max_new_tokens)
        self.learner = Learner(config, self.model_path, self.objective, total_steps=config.train.steps)
        if self.blender is not None and self.blender.combines_gradients:
            self.learner.check_gradient_access()
        self.engine = build_engine(config.rollout, self.model_path, seed=config.train.seed)
        self.start_step = self._maybe_resume()
        self.metrics = MetricsLogger(self.output_dir, config.logging, config.model_dump(mode="json"), self.start_step)
        (self.output_dir / "config.yaml").write_text(dump_config(config))
        self._stop_requested = False

    # ---- resume -----------------------------------------------------------------------------

    def _maybe_resume(self) -> int:
        folder = self.resume_folder
        if folder is None:
            return 0
        self.learner.load_state(folder / "learner")
        state = json.loads((folder / "trainer.json").read_text())
        self.sampler.load_state_dict(state["sampler"])
        self.objective.load_state_dict(state["objective"])
        if self.blender is not None:
            self.blender.load_state_dict(state["blending"])
            if (folder / REFERENCE_FILE).is_file():
                self.learner.load_reference(folder / REFERENCE_FILE)
        _load_rng(folder, state["rng"])
        step = state["step"]
        self.engine.update_weights(self.learner.named_weights(), version=step)
        log.info("resumed from %s at step %d", folder, step)
        return step

    def save_checkpoint(self, steps_done: int) -> Path:
        def write(folder: Path) -> None:
            self.learner.save_state(folder / "learner")
            rng = _save_rng(folder)
            state = {
                "step": steps_done,
                "sampler": self.sampler.state_dict(),
                "objective": self.objective.state_dict(),
                "rng": rng,
            }
            if self.blender is not None:
                state["blending"] = self.blender.state_dict()
                if self.blender.reference_was_reset and self.learner.reference is not None:
                    self.learner.save_reference(folder / REFERENCE_FILE)
            (folder / "trainer.json").write_text(json.dumps(state))

        root = self.output_dir / "checkpoints"
        folder = write_checkpoint(root, steps_done, write, self.digest)
        prune_checkpoints(root, self.config.checkpoint.keep_last)
        return folder

    # ---- one step ---------------------------------------------------------------------------

    def _generate_round(self, step: int, round_index: int, min_prompts: int, times: StepTimes) -> tuple[list[Group], dict[str, float]]:
        """Sample at least `min_prompts` prompts, generate and score their groups."""
        requests = []
        while len(requests) < min_prompts:
            requests.extend(self.sampler.next_batch(step))
        sampling = SamplingSettings(
            max_new_tokens=self.config.rollout.max_new_tokens,
            temperature=self.config.rollout.temperature,
            top_p=self.config.rollout.top_p,
            top_k=self.config.rollout.top_k,
            seed=step_seed(self.config.train.seed, step) + 7919 * round_index,
        )
        started = time.perf_counter()
        groups = self.engine.generate([p for p, _ in requests], [n for _, n in requests], sampling)
        times.rollout += time.perf_counter() - started
        started = time.perf_counter()
        metrics = self.rewards.score(groups)
        times.reward += time.perf_counter() - started
        metrics.update(self.sampler.update(groups))
        return groups, metrics

    def rollout(self, step: int, times: StepTimes) -> tuple[list[Group], dict[str, float]]:
        """The step's scored groups; with a group filter (DAPO), rounds repeat until enough are kept."""
        prompts_per_step = self.config.train.prompts_per_step
        group_filter = self.objective.group_filter(prompts_per_step)
        if group_filter is None:
            return self._generate_round(step, 0, 1, times)
        rounds: list[dict[str, float]] = []
        while not group_filter.ready:
            groups, metrics = self._generate_round(step, len(rounds), group_filter.round_size, times)
            group_filter.add_groups(groups)
            rounds.append(metrics)
        kept, filter_metrics = group_filter.take()
        averaged = {key: sum(r.get(key, 0.0) for r in rounds) / len(rounds) for key in rounds[0]}
        return kept, {**averaged, **filter_metrics}

    def train_step(self, step: int) -> dict[str, float]:
        # Where the kernel cannot restart the peak window, the peak reported is the run's so far.
        peak_key = "perf/step_peak_rss_gib" if reset_peak() else "perf/peak_rss_gib"
        times = StepTimes()
        groups, metrics = self.rollout(step, times)
        batch = build_train_batch(groups, self.pad_token_id)
        targets = prepare_update(self.objective, batch)
        started = time.perf_counter()
        if self.blender is None:
            learner_metrics = self.learner.train_step(batch, targets)
        else:
            learner_metrics = blended_update(
                self.blender, self.learner, self.demos, step, groups, batch, targets, self.validation_prompts
            )
        times.train = time.perf_counter() - started
        started = time.perf_counter()
        self.engine.update_weights(self.learner.named_weights(), version=step + 1)
        times.sync = time.perf_counter() - started
        lengths = batch.response_lengths.float()
        generated = float(lengths.sum())
        total_time = times.rollout + times.reward + times.train + times.sync
        return {
            **metrics,
            **targets.metrics,
            **learner_metrics,
            "train/accuracy": float(batch.correct.float().mean()),
            "response_length/mean": float(lengths.mean()),
            "response_length/max": float(lengths.max()),
            "response_length/clip_ratio": float(batch.truncated.float().mean()),
            "perf/tokens_per_second": generated / max(total_time, 1e-9),
            "perf/rollout_seconds": times.rollout,
            "perf/reward_seconds": times.reward,
            "perf/train_seconds": times.train,
            "perf/sync_seconds": times.sync,
            "policy/version": float(step + 1),
            peak_key: peak_resident_gib(),
            "perf/rss_gib": resident_gib(),
        }

    # ---- SFT–RL blending (rlpost.blending) -------------------------------------------------

    def _setup_blending(self) -> None:
        """The blending controller, its held-out validation prompts and the demonstration builder."""
        config = self.config
        self.blender = build_controller(config.blending, seed=config.train.seed)
        self.validation_prompts = []
        self.demos = None
        if self.blender is None:
            return
        if self.tokenizer.eos_token_id is None:
            raise ValueError("SFT demonstrations end with the end-of-sequence token: the tokenizer has none")
        self.train_prompts, self.validation_prompts = self.blender.split_validation(self.train_prompts)
        self.demos = Demonstrations(self.tokenizer, self.tokenizer.eos_token_id, self.pad_token_id,
                                    config.blending.sft.max_demo_tokens)
        self.demos.check(self.train_prompts + self.validation_prompts)

    def evaluate(self, num_problems: int | None = None) -> dict[str, float]:
        prompts = self.test_prompts[: num_problems or self.config.eval.num_problems]
        if not prompts:
            return {}
        result = evaluate(
            self.engine,
            prompts,
            self.eval_rewards,
            max_new_tokens=self.config.eval.max_new_tokens or self.config.rollout.max_new_tokens,
        )
        return result.metrics()

    # ---- the loop ---------------------------------------------------------------------------

    def _request_stop(self, signum, frame) -> None:
        del frame
        log.warning("signal %d: finishing the current step, then checkpointing", signum)
        self._stop_requested = True

    def fit(self) -> dict[str, float]:
        """Train to `train.steps`; returns the last step's metrics (with the final evaluation)."""
        config = self.config
        previous = signal.signal(signal.SIGTERM, self._request_stop)
        last: dict[str, float] = {}
        progress = _progress(config, self.start_step)
        try:
            if self.start_step == 0 and config.eval.at_start and self.test_prompts:
                self.metrics.log(0, self.evaluate())
            for step in range(self.start_step, config.train.steps):
                last = self.train_step(step)
                steps_done = step + 1
                final = steps_done == config.train.steps
                if config.eval.every_steps and steps_done % config.eval.every_steps == 0 or final:
                    last.update(self.evaluate())
                self.metrics.log(steps_done, last)
                _show(progress, last)
                every = config.checkpoint.every_steps
                if final or self._stop_requested or (every and steps_done % every == 0):
                    self.save_checkpoint(steps_done)
                if self._stop_requested:
                    break
            if self.learner_finished() and config.checkpoint.export_final:
                self.learner.export_hf(self.output_dir / "final", self.tokenizer)
        finally:
            signal.signal(signal.SIGTERM, previous)
            if progress is not None:
                progress.close()
            self.close()
        return last

    def learner_finished(self) -> bool:
        return self.learner.steps_taken >= self.config.train.steps * self.config.learner.updates_per_batch

    def close(self) -> None:
        self.metrics.close()
        self.rewards.close()
        if self.eval_rewards is not None:
            self.eval_rewards.close()
        self.engine.close()


def load_tokenizer(model_path: str):
    """The model's tokenizer; a folder without one or an unreachable Hub id is a `ModelNotFoundError`."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model_path)
    except (OSError, ValueError) as exc:  # transformers: OSError when nothing is found, ValueError for no tokenizer files
        reason = str(exc).strip().splitlines()[0]
        raise ModelNotFoundError(
            f"model.path: cannot load a tokenizer from {model_path!r} ({reason}); "
            "a model folder needs the tokenizer files saved with the model"
        ) from exc


def _progress(config: RLPostConfig, start: int):
    if not config.logging.progress_bar:
        return None
    from tqdm import tqdm

    return tqdm(total=config.train.steps, initial=start, desc="train", unit="step", dynamic_ncols=True)


def _show(progress, metrics: dict[str, float]) -> None:
    if progress is None:
        return
    shown = {"reward": metrics.get("reward/mean"), "acc": metrics.get("train/accuracy"),
             "tok/s": metrics.get("perf/tokens_per_second"), "eval": metrics.get("eval/accuracy")}
    progress.set_postfix({k: f"{v:.3g}" for k, v in shown.items() if v is not None}, refresh=False)
    progress.update(1)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _save_rng(folder: Path) -> dict:
    save_file({"torch": torch.get_rng_state()}, folder / "rng.safetensors")
    version, state, gauss = random.getstate()
    numpy_state = np.random.get_state()
    return {
        "python": [version, list(state), gauss],
        "numpy": [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]],
    }


def _load_rng(folder: Path, rng: dict) -> None:
    torch.set_rng_state(load_file(folder / "rng.safetensors")["torch"])
    version, state, gauss = rng["python"]
    random.setstate((version, tuple(state), gauss))
    name, keys, *rest = rng["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), *rest))
