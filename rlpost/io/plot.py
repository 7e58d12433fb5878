"""`rlpost plot RUN_DIR`: one PNG with the reward, accuracy, length and loss (KL, SFT NLL) curves of a run."""

from __future__ import annotations

from pathlib import Path

from rlpost.io.metrics import METRICS_FILE, MetricsError, read_metrics

PANELS = [
    ("Reward", ["reward/mean"]),
    ("Accuracy", ["train/accuracy", "eval/accuracy", "eval/boxed_rate"]),
    ("Response length", ["response_length/mean"]),
    # SFT steps (a warm-up, blending) have no rollouts: their NLL is the curve that shows them.
    ("KL and SFT loss", ["actor/kl_loss", "actor/ppo_kl", "sft/nll"]),
]


def plot_run(run_dir: Path, out: Path | None = None) -> Path:
    """Write the curves of `run_dir` to `out` (default RUN_DIR/curves.png); checks both before drawing."""
    records = read_metrics(run_dir)
    if not records:
        raise MetricsError(f"{Path(run_dir) / METRICS_FILE} has no records yet (the run has not finished a step)")
    out = Path(out) if out else Path(run_dir) / "curves.png"
    if not out.parent.is_dir():
        raise MetricsError(f"--out {out}: folder {out.parent} does not exist")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 2, figsize=(11, 7))
    for axis, (title, keys) in zip(axes.flat, PANELS, strict=True):
        for key in keys:
            points = [(r["step"], r[key]) for r in records if r.get(key) is not None]
            if points:
                steps, values = zip(*points, strict=True)
                axis.plot(steps, values, marker="o" if len(points) < 30 else None, markersize=3, label=key)
        axis.set_title(title)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
        if axis.lines:
            axis.legend(fontsize=8)
    figure.suptitle(str(run_dir))
    figure.tight_layout()
    figure.savefig(out, dpi=100)
    plt.close(figure)
    return out
