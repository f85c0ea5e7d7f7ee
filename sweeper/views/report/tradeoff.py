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
from sweeper.views.plots import plot_scales

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
    plot = plot_scales(curves, Path(sweep_dir) / SCALE_PLOT)
    return [*lines, "", f"![DINO and CLIP-T over the UNet scale]({plot.name})", ""]
