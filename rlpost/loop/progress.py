"""The per-step progress bar (both runtimes): reward, accuracy, tokens/s, eval accuracy, ETA."""

from __future__ import annotations

from typing import Any


class ProgressBar:
    """A tqdm bar over `train.steps` when `logging.progress_bar`, else nothing."""

    SHOWN = {"reward": "reward/mean", "acc": "train/accuracy", "tok/s": "perf/tokens_per_second", "eval": "eval/accuracy"}

    def __init__(self, config: Any, start: int):
        self.bar = None
        if config.logging.progress_bar:
            from tqdm import tqdm

            self.bar = tqdm(total=config.train.steps, initial=start, desc="train", unit="step", dynamic_ncols=True)

    def show(self, metrics: dict[str, float]) -> None:
        if self.bar is None:
            return
        shown = {label: metrics.get(key) for label, key in self.SHOWN.items()}
        self.bar.set_postfix({label: f"{value:.3g}" for label, value in shown.items() if value is not None}, refresh=False)
        self.bar.update(1)

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.bar is not None:
            self.bar.close()
