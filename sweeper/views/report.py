"""Decide: the sweep report (``report.md`` + loss curves) and the static compare page (``compare.html``).

``python -m sweeper.views.report <sweep folder>`` makes both for any sweep folder; a multirun makes them at its
end. The compare page is one self-contained HTML file (data inlined, no CDN, no server): open it from
``file://``. Pick a prompt, UNet scale, text scale and guidance and see that cell for every training
configuration side by side, sorted and coloured by any metric; or pick a configuration and see its
contact sheets.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lora_core.atomic import write_text_atomic
from lora_core.errors import UserInputError
from sweeper.disk.layout import LOSS_PLOT, PAGE_FILE, REPORT_FILE, RunFolder
from sweeper.disk.naming import differing_keys, format_number
from sweeper.disk.results import METRICS, RunResult, load_results
from sweeper.errors import user_errors
from sweeper.job.step_grids import best_step_lines
from sweeper.planning.grid import first_images
from sweeper.search.halving import bracket_lines
from sweeper.search.objective import DEFAULT_OBJECTIVE, parse_objective
from sweeper.search.optuna import trials_lines
from sweeper.views.drawing import pyplot, save_figure
from sweeper.views.tradeoff import scale_lines

_TEMPLATE = Path(__file__).with_name("compare_page.html")


# ---- compare page ------------------------------------------------------------------------------------------
def page_data(sweep_dir: Path, runs: list[RunResult]) -> dict:
    """Everything the compare page shows, with paths relative to the sweep folder."""
    keys = differing_keys([r.settings for r in runs], settings=True)
    cells: dict[str, dict] = {}
    images: dict[str, dict] = {}
    for run in runs:
        images[run.name] = {}
        for cell in first_images(run.cells):
            cells.setdefault(
                cell.stem,
                {
                    "prompt_name": cell.prompt_name,
                    "prompt": cell.prompt,
                    "unet": cell.unet_scale,
                    "text": cell.text_scale,
                    "guidance": cell.guidance,
                    "stem": cell.stem,
                },
            )
            if (run.run_dir / cell.file_name).is_file():
                images[run.name][cell.stem] = f"{run.name}/{cell.file_name}"
    metric_names = sorted({m for run in runs for m in run.metric_names()}, key=METRICS.index)
    return {
        "sweep": sweep_dir.name,
        "varying": keys,
        "metric_names": [*metric_names, "final_loss"],
        "cells": list(cells.values()),
        "images": images,
        "scores": {run.name: _scores_by_stem(run, metric_names) for run in runs},
        "runs": [
            {
                "name": run.name,
                "params": {k: run.settings.get(k) for k in keys},
                "metrics": {**run.means(), "final_loss": run.final_loss},
                "sheets": RunFolder(run.run_dir).sheet_links(),
            }
            for run in runs
        ],
    }


def _scores_by_stem(run: RunResult, metric_names: list[str]) -> dict:
    return {Path(r["file"]).stem: {m: r[m] for m in metric_names if m in r} for r in run.scores}


def write_compare_page(sweep_dir: Path, runs: list[RunResult]) -> Path:
    """Write ``compare.html`` (self-contained) into the sweep folder."""
    data = json.dumps(page_data(sweep_dir, runs), allow_nan=False, default=str).replace("</", "<\\/")
    html = _TEMPLATE.read_text(encoding="utf-8").replace("/*SWEEP_DATA*/", data)
    path = sweep_dir / PAGE_FILE
    write_text_atomic(path, html)
    return path


# ---- report ------------------------------------------------------------------------------------------------
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


def _best_cell(run: RunResult, prompt: str, terms: list[tuple[float, str]]) -> str:
    best = run.best_cells(terms).get(prompt)
    return f"`{best[0]}` ({best[1]:.3f})" if best else "-"


def report_markdown(sweep_dir: Path, runs: list[RunResult], objective: str, plot: Path | None) -> str:
    """The report: a row per configuration, best per metric in bold, best cell per prompt."""
    terms = parse_objective(objective)
    keys = differing_keys([r.settings for r in runs], settings=True)
    metrics = sorted({m for r in runs for m in r.metric_names()}, key=METRICS.index)
    columns = [*metrics, "final_loss"]
    values = {r.name: {**r.means(), "final_loss": r.final_loss} for r in runs}
    best = {}
    for m in columns:
        scored = [(values[r.name][m], r.name) for r in runs if values[r.name].get(m) is not None]
        if scored:
            best[m] = (min if m == "final_loss" else max)(scored)[1]
    # A prompt with one cell has no best cell to pick: no column for it.
    prompts = [p for p, n in _cells_per_prompt(runs).items() if n > 1]
    lines = [
        f"# Sweep report: {sweep_dir.name}",
        "",
        f"{len(runs)} finished configurations. Metrics are means over every rendered picture "
        f"(DreamBooth protocol: DINO and CLIP-I against the subject pictures, CLIP-T against the prompt); "
        f"final_loss is the mean training loss of the last 10% of steps (lower is better). "
        f"Best per metric in **bold**. Best cell per prompt by `{objective}` (unet;text;guidance).",
        "",
    ]
    header = ["configuration", *keys, *columns, *(f"best {p}" for p in prompts)]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run in runs:
        row = [f"`{run.name}`", *(_cell_text(run.settings.get(k)) for k in keys)]
        for m in columns:
            text = _cell_text(values[run.name].get(m))
            row.append(f"**{text}**" if best.get(m) == run.name else text)
        row += [_best_cell(run, p, terms) if metrics else "-" for p in prompts]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "Best configuration per metric: " + ", ".join(f"{m}: `{n}`" for m, n in best.items()), ""]
    if metrics:
        lines += dreambooth_table(runs)
    else:
        lines += [
            "No picture scores: evaluation was off or its models were not available (eval.enabled).",
            "",
        ]
    lines += _validation_lines(runs)
    if plot is not None:
        lines += [f"![loss curves]({plot.name})", ""]
    lines += scale_lines(sweep_dir, runs)  # DINO and CLIP-T over the UNet scale: the trade-off
    lines += best_step_lines(sweep_dir, runs, objective)  # render.steps: the best step, DINO/CLIP-T curves
    lines += bracket_lines(sweep_dir)  # a halving sweep's rungs and decisions
    lines += trials_lines(sweep_dir)  # an Optuna search's trials, reports and prunings
    lines += [f"Side by side: open `{PAGE_FILE}` in a browser.", ""]
    return "\n".join(lines)


def _validation_lines(runs: list[RunResult]) -> list[str]:
    """Where each run's validation loss starts rising (its minimum, when later values are higher)."""
    measured = [r for r in runs if r.val_loss]
    if not measured:
        return []
    lines = [
        "## Validation loss",
        "",
        "Denoising loss on a fixed set of (picture, timestep, noise) triples (`train.validation_every`). "
        "Past the step where it starts rising, more steps fit the training draws, not the subject.",
        "",
        "| configuration | lowest validation loss | starts rising at step |",
        "|---|---|---|",
    ]
    for run in measured:
        rise = run.val_rise_step
        where = str(rise) if rise is not None else f"not rising (last measured: step {run.val_loss[-1][0]})"
        lines.append(f"| `{run.name}` | {min(v for _, v in run.val_loss):.4f} | {where} |")
    return [*lines, ""]


def _cells_per_prompt(runs: list[RunResult]) -> dict[str, int]:
    """Prompt short name -> most distinct (unet, text, guidance) cells any run has for it."""
    counts: dict[str, int] = {}
    for run in runs:
        cells: dict[str, set] = {}
        for c in run.cells:
            cells.setdefault(c.prompt_name, set()).add((c.unet_scale, c.text_scale, c.guidance))
        for prompt, found in cells.items():
            counts[prompt] = max(counts.get(prompt, 0), len(found))
    return counts


def dreambooth_table(runs: list[RunResult]) -> list[str]:
    """The paper's Table 1 layout: real images and DreamBooth (SD) as reported, then this subject and each run."""
    from sweeper.config.dreambooth_prompts import PAPER_FIGURES

    lines = [
        "## DreamBooth metrics (the paper's layout)",
        "",
        "| method | DINO ↑ | CLIP-I ↑ | CLIP-T ↑ |",
        "|---|---|---|---|",
    ]
    rows = dict(PAPER_FIGURES)
    reference = next((real for r in runs if (real := RunFolder(r.run_dir).read_reference())), None)
    if reference is not None:
        rows["Real images (this subject)"] = {**reference, "clip_t": None}
    rows.update({f"`{run.name}`": run.means() for run in runs})
    for name, values in rows.items():
        cells = [f"{values[m]:.3f}" if values.get(m) is not None else "N/A" for m in METRICS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _cell_text(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not value.is_integer():
        return format_number(value) if abs(value) < 1e-2 else f"{value:.4f}".rstrip("0")
    return format_number(value) if isinstance(value, int | float) else str(value)


def write_report(sweep_dir: str | Path, objective: str = DEFAULT_OBJECTIVE) -> tuple[Path, Path]:
    """Write ``report.md``, ``loss_curves.png`` and ``compare.html`` for a sweep folder.

    Args:
        sweep_dir: The sweep folder.
        objective: How the best cell is chosen (``eval.objective``).

    Returns:
        (report path, compare page path).

    Raises:
        UserInputError: Not a sweep folder, or no finished run in it.
    """
    sweep_dir = Path(sweep_dir)
    runs = load_results(sweep_dir)
    if not runs:
        raise UserInputError(f"{sweep_dir}: no finished run in it (no */run.json with status done).")
    plot = plot_losses(runs, sweep_dir / LOSS_PLOT)
    report = sweep_dir / REPORT_FILE
    write_text_atomic(report, report_markdown(sweep_dir, runs, objective, plot))
    return report, write_compare_page(sweep_dir, runs)


def main(argv: list[str] | None = None) -> int:
    """``python -m sweeper.views.report <sweep folder> [--objective dino+clip_t]``."""
    parser = argparse.ArgumentParser(
        prog="python -m sweeper.views.report", description=__doc__.splitlines()[0]
    )
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--objective", default=DEFAULT_OBJECTIVE)
    args = parser.parse_args(argv)
    with user_errors():
        report, page = write_report(args.sweep_dir, args.objective)
    print(f"report:       {report}\ncompare page: {page}  (open it in a browser: file://{page.resolve()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
