"""The report's subject-against-prompt trade-off over the UNet LoRA scale.

DreamBooth's tension, measured: as the LoRA's UNet scale grows the subject appears (DINO rises) and,
past some scale, the prompt is overridden (CLIP-T falls). For every run that scored at least two UNet
scales, this section gives DINO and CLIP-T per scale (means over the run's other axes: prompts, text
scales, guidance, seeds), the scale where CLIP-T is highest, what going from there to the largest scale
gains in DINO and costs in CLIP-T, and a plot of the curves (``scale_tradeoff.png``).
"""

from __future__ import annotations

from pathlib import Path

from lora_core.metrics import mean_scores
from sweeper.disk.layout import SCALE_PLOT
from sweeper.disk.naming import format_number
from sweeper.views.drawing import pyplot, save_figure

_METRICS = ("dino", "clip_t")


def scale_curves(runs: list) -> dict[str, dict[float, dict]]:
    """Per run, ``{unet scale: {"dino": mean, "clip_t": mean}}`` for runs scored at 2+ UNet scales."""
    curves = {}
    for run in runs:
        by_scale = mean_scores(run.scores, "unet_scale")
        by_scale = {s: m for s, m in by_scale.items() if all(k in m for k in _METRICS)}
        if len(by_scale) >= 2:
            curves[run.name] = dict(sorted(by_scale.items()))
    return curves


def knee(curve: dict[float, dict]) -> dict:
    """Where CLIP-T peaks on a run's curve, and what the largest scale gains and costs from there.

    Returns:
        ``{"peak": scale, "top": largest scale, "dino_gain": DINO(top) - DINO(peak),
        "clip_t_cost": CLIP-T(peak) - CLIP-T(top)}``.
    """
    peak = max(curve, key=lambda s: curve[s]["clip_t"])
    top = max(curve)
    return {
        "peak": peak,
        "top": top,
        "dino_gain": curve[top]["dino"] - curve[peak]["dino"],
        "clip_t_cost": curve[peak]["clip_t"] - curve[top]["clip_t"],
    }


def scale_lines(sweep_dir: Path, runs: list) -> list[str]:
    """Markdown lines of the section (none when no run scored two UNet scales); writes the plot."""
    curves = scale_curves(runs)
    if not curves:
        return []
    scales = sorted({s for c in curves.values() for s in c})
    lines = [
        "## Subject against prompt over the UNet scale",
        "",
        "Means over each run's prompts, text scales, guidance values and seeds at each UNet LoRA scale: "
        "DINO (subject) / CLIP-T (prompt). As the scale grows the subject appears; past the scale where "
        "CLIP-T peaks, more subject costs prompt.",
        "",
        "| configuration | "
        + " | ".join(format_number(s) for s in scales)
        + " | CLIP-T peaks at | from there to the largest scale |",
        "|---|" + "---|" * (len(scales) + 2),
    ]
    for name, curve in curves.items():
        cells = [f"{curve[s]['dino']:.3f} / {curve[s]['clip_t']:.3f}" if s in curve else "-" for s in scales]
        k = knee(curve)
        change = (
            f"DINO {k['dino_gain']:+.3f}, CLIP-T {-k['clip_t_cost']:+.3f}" if k["peak"] != k["top"] else "-"
        )
        lines.append(f"| `{name}` | " + " | ".join(cells) + f" | {format_number(k['peak'])} | {change} |")
    plot = _plot(curves, Path(sweep_dir) / SCALE_PLOT)
    return [*lines, "", f"![DINO and CLIP-T over the UNet scale]({plot.name})", ""]


def _plot(curves: dict[str, dict[float, dict]], path: Path) -> Path:
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
