"""The sweep report: ``report.md`` (a row per configuration, then one section per kind of result) and its plots.

``write_report`` also writes the compare page (``sweeper.views.compare_page``). ``python -m
sweeper.views.report <sweep folder>`` makes both for any sweep folder; a multirun makes them at its end.
Each section is a module of this package returning Markdown lines (none when the sweep has nothing for it):
``table`` (a row per configuration), ``dreambooth`` (the paper's table), ``grids`` (second grids), ``validation``, ``tradeoff`` (DINO / CLIP-T over the UNet scale),
``best_step`` (the checkpoint axis), ``bracket`` (a halving sweep) and ``trials`` (an Optuna search).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lora_core.atomic import write_text_atomic
from lora_core.errors import UserInputError
from sweeper.disk.layout import LOSS_PLOT, PAGE_FILE, REPORT_FILE
from sweeper.disk.results import RunResult, load_results
from sweeper.errors import user_errors
from sweeper.search.objective import DEFAULT_OBJECTIVE
from sweeper.views.compare_page import write_compare_page
from sweeper.views.plots import plot_losses
from sweeper.views.report.best_step import best_step_lines
from sweeper.views.report.bracket import bracket_lines
from sweeper.views.report.dreambooth import dreambooth_table
from sweeper.views.report.grids import grids_lines
from sweeper.views.report.table import configuration_table
from sweeper.views.report.tradeoff import scale_lines
from sweeper.views.report.trials import trials_lines
from sweeper.views.report.validation import validation_lines


def report_markdown(sweep_dir: Path, runs: list[RunResult], objective: str, plot: Path | None) -> str:
    """The report: the configuration table, then each section that has something to show."""
    lines = configuration_table(sweep_dir, runs, objective)
    metrics = any(r.metric_names() for r in runs)
    if metrics:
        lines += dreambooth_table(runs)
    else:
        lines += [
            "No picture scores: evaluation was off or its models were not available (eval.enabled).",
            "",
        ]
    lines += grids_lines(runs, objective)  # second grids: the LoRAs drawn with other render settings
    lines += validation_lines(runs)
    if plot is not None:
        lines += [f"![loss curves]({plot.name})", ""]
    lines += scale_lines(sweep_dir, runs)  # DINO and CLIP-T over the UNet scale: the trade-off
    lines += best_step_lines(sweep_dir, runs, objective)  # render.steps: the best step, DINO/CLIP-T curves
    lines += bracket_lines(sweep_dir)  # a halving sweep's rungs and decisions
    lines += trials_lines(sweep_dir)  # an Optuna search's trials, reports and prunings
    lines += [f"Side by side: open `{PAGE_FILE}` in a browser.", ""]
    return "\n".join(lines)


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
