"""The sweep report: ``report.md`` (a row per configuration, then one section per kind of result) and its plots.

``write_report`` also writes the compare page (``sweeper.views.compare_page``). ``python -m
sweeper.views.report <sweep folder>`` makes both for any sweep folder; a multirun makes them at its end.
Each section is a module of this package returning Markdown lines (none when the sweep has nothing for it):
``dreambooth`` (the paper's table), ``validation``, ``tradeoff`` (DINO / CLIP-T over the UNet scale),
``best_step`` (the checkpoint axis), ``bracket`` (a halving sweep) and ``trials`` (an Optuna search).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lora_core.atomic import write_text_atomic
from lora_core.errors import UserInputError
from sweeper.disk.layout import LOSS_PLOT, PAGE_FILE, REPORT_FILE
from sweeper.disk.naming import differing_keys, format_number
from sweeper.disk.results import METRICS, RunResult, load_results
from sweeper.errors import user_errors
from sweeper.search.objective import DEFAULT_OBJECTIVE, parse_objective
from sweeper.views.compare_page import write_compare_page
from sweeper.views.plots import plot_losses
from sweeper.views.report.best_step import best_step_lines
from sweeper.views.report.bracket import bracket_lines
from sweeper.views.report.dreambooth import dreambooth_table
from sweeper.views.report.tradeoff import scale_lines
from sweeper.views.report.trials import trials_lines
from sweeper.views.report.validation import validation_lines


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
    lines += validation_lines(runs)
    if plot is not None:
        lines += [f"![loss curves]({plot.name})", ""]
    lines += scale_lines(sweep_dir, runs)  # DINO and CLIP-T over the UNet scale: the trade-off
    lines += best_step_lines(sweep_dir, runs, objective)  # render.steps: the best step, DINO/CLIP-T curves
    lines += bracket_lines(sweep_dir)  # a halving sweep's rungs and decisions
    lines += trials_lines(sweep_dir)  # an Optuna search's trials, reports and prunings
    lines += [f"Side by side: open `{PAGE_FILE}` in a browser.", ""]
    return "\n".join(lines)


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
