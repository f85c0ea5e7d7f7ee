"""The report's plots (matplotlib, Agg backend): loss curves, DINO / CLIP-T over steps and over the UNet scale."""

from __future__ import annotations

from pathlib import Path

from lora_core.atomic import atomic_path
from sweeper.disk.naming import format_number
from sweeper.disk.results import RunResult


def pyplot():
    """Matplotlib's pyplot on the Agg backend (files only, no display): the report's plots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> Path:
    """Lay out a matplotlib figure, write it to ``path`` as PNG atomically, and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def plot_losses(runs: list[RunResult], path: Path) -> Path | None:
    """All runs' loss curves (smoothed) in one PNG."""
    plt = pyplot()

    if not any(run.loss for run in runs):
        return None
    fig, ax = plt.subplots(figsize=(9, 5), dpi=110)
    for run in runs:
        steps, losses = zip(*run.loss, strict=True) if run.loss else ((), ())
        window = max(1, len(losses) // 50)
        smooth = [
            sum(losses[max(0, i - window + 1) : i + 1]) / len(losses[max(0, i - window + 1) : i + 1])
            for i in range(len(losses))
        ]
        line = ax.plot(steps, smooth, label=run.name, linewidth=1.4)[0]
        if run.val_loss:  # the fixed-triple validation loss: same colour, dashed, with markers
            ax.plot(
                *zip(*run.val_loss, strict=True),
                linestyle="--",
                marker=".",
                color=line.get_color(),
                label=f"{run.name} (validation)",
                linewidth=1.2,
            )
    ax.set_xlabel("step")
    ax.set_ylabel("denoising loss (training: moving average; validation: dashed)")
    ax.set_title("Training loss of every configuration")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    return save_figure(fig, path)


def plot_fidelity(curves: dict[str, dict[int, dict]], path: Path) -> Path | None:
    """DINO and CLIP-T over training steps, a line per configuration (``steps_fidelity.png``)."""
    plt = pyplot()

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), dpi=110)
    for ax, metric, title in (
        (axes[0], "dino", "DINO (subject) ↑"),
        (axes[1], "clip_t", "CLIP-T (prompt) ↑"),
    ):
        for name, means in curves.items():
            points = [(s, m[metric]) for s, m in means.items() if metric in m]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", label=name, linewidth=1.4)
        ax.set_xlabel("training step")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return save_figure(fig, path)


def plot_scales(curves: dict[str, dict[float, dict]], path: Path) -> Path:
    """DINO and CLIP-T over the UNet LoRA scale, and one against the other (``scale_tradeoff.png``)."""
    plt = pyplot()

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5), dpi=110)
    for name, curve in curves.items():
        scales = list(curve)
        dino = [curve[s]["dino"] for s in scales]
        clip_t = [curve[s]["clip_t"] for s in scales]
        axes[0].plot(scales, dino, marker="o", label=name, linewidth=1.4)
        axes[1].plot(scales, clip_t, marker="o", label=name, linewidth=1.4)
        (line,) = axes[2].plot(dino, clip_t, marker="o", label=name, linewidth=1.4)
        for s, x, y in zip(scales, dino, clip_t, strict=True):
            axes[2].annotate(
                format_number(s),
                (x, y),
                fontsize=7,
                color=line.get_color(),
                textcoords="offset points",
                xytext=(3, 3),
            )
    for ax, title, xlabel in (
        (axes[0], "DINO (subject) ↑", "UNet LoRA scale"),
        (axes[1], "CLIP-T (prompt) ↑", "UNet LoRA scale"),
        (axes[2], "trade-off: each point a UNet scale", "DINO (subject)"),
    ):
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[2].set_ylabel("CLIP-T (prompt)")
    axes[0].legend(fontsize=8)
    return save_figure(fig, path)
