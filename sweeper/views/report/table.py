"""The report's first section: a row per configuration, the best per metric in bold, the best cell per prompt."""

from __future__ import annotations

from pathlib import Path

from sweeper.disk.naming import differing_keys, format_number
from sweeper.disk.results import METRICS, RunResult
from sweeper.search.objective import parse_objective


def _best_cell(run: RunResult, prompt: str, terms: list[tuple[float, str]]) -> str:
    best = run.best_cells(terms).get(prompt)
    return f"`{best[0]}` ({best[1]:.3f})" if best else "-"


def configuration_table(sweep_dir: Path, runs: list[RunResult], objective: str) -> list[str]:
    """The report's title and its table: a row per configuration, best per metric in bold, best cell per prompt."""
    cell_keys = next((c.label_keys for r in runs for c in r.cells), "unet;text;guidance")
    lines = [
        f"# Sweep report: {sweep_dir.name}",
        "",
        f"{len(runs)} finished configurations. Metrics are means over every rendered picture "
        f"(DreamBooth protocol: DINO and CLIP-I against the subject pictures, CLIP-T against the prompt); "
        f"final_loss is the mean training loss of the last 10% of steps (lower is better). "
        f"Best per metric in **bold**. Best cell per prompt by `{objective}` ({cell_keys}).",
        "",
    ]
    return lines + metrics_table(runs, objective, differing_keys([r.settings for r in runs], settings=True))


def metrics_table(runs: list[RunResult], objective: str, keys: list[str]) -> list[str]:
    """A row per configuration: its ``keys``, metric means (best in bold), best cell per prompt."""
    terms = parse_objective(objective)
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
    header = ["configuration", *keys, *columns, *(f"best {p}" for p in prompts)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run in runs:
        row = [f"`{run.name}`", *(_cell_text(run.settings.get(k)) for k in keys)]
        for m in columns:
            text = _cell_text(values[run.name].get(m))
            row.append(f"**{text}**" if best.get(m) == run.name else text)
        row += [_best_cell(run, p, terms) if metrics else "-" for p in prompts]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "Best configuration per metric: " + ", ".join(f"{m}: `{n}`" for m, n in best.items()), ""]
    return lines


def _cells_per_prompt(runs: list[RunResult]) -> dict[str, int]:
    """Prompt short name -> most distinct (unet, text, guidance) cells any run has for it."""
    counts: dict[str, int] = {}
    for run in runs:
        cells: dict[str, set] = {}
        for c in run.cells:
            cells.setdefault(c.prompt_name, set()).add(c.label)
        for prompt, found in cells.items():
            counts[prompt] = max(counts.get(prompt, 0), len(found))
    return counts


def _cell_text(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not value.is_integer():
        return format_number(float(f"{value:.4g}")) if abs(value) < 1e-2 else f"{value:.4f}".rstrip("0")
    return format_number(value) if isinstance(value, int | float) else str(value)
