"""The report's checkpoint-axis section: each configuration's objective at every rendered step, its best step.

``render.steps=[100,300]`` renders a run's grid from its checkpoints into ``<run>/step-000100/``
(``sweeper.job.grids``); ``step_means`` compares those grids with the final one over the cells scored at
every step, and ``best_step_lines`` writes the section and its plot of DINO and CLIP-T over steps.
"""

from __future__ import annotations

from pathlib import Path

from lora_core.settings import STEP_INDEPENDENT_SCHEDULERS
from sweeper.disk.layout import FIDELITY_PLOT, RunFolder
from sweeper.views.plots import plot_fidelity


def step_means(run: RunFolder, final_step: int) -> dict[int, dict]:
    """Metric means of a run's grid at each rendered step, over the cells scored at every step.

    The final step's pictures are the run folder's own; only cells present at every step count, so a
    step's preview grid and the final grid compare like for like.

    Returns:
        Step -> {metric: mean}; empty when the run has no step folder with scores.
    """
    from lora_core.metrics import mean_scores

    folders = {**run.steps(), final_step: run}
    rows = {step: {r["file"]: r for r in folder.read_scores()} for step, folder in folders.items()}
    scored = [set(r) for r in rows.values() if r]
    if len(scored) < 2:
        return {}
    common = set.intersection(*scored)
    return {step: mean_scores(r[f] for f in common) for step, r in rows.items() if r and common}


def best_step_lines(sweep_dir: Path, runs: list, objective: str) -> list[str]:
    """The report's checkpoint-axis section, and its plot of DINO and CLIP-T over steps.

    Args:
        sweep_dir: The sweep folder (``steps_fidelity.png`` is written there).
        runs: The finished runs (``sweeper.disk.results.RunResult``).
        objective: ``eval.objective``.

    Returns:
        Markdown lines (none when no run rendered more than one step).
    """
    from sweeper.search.objective import objective_value, parse_objective

    terms = parse_objective(objective)
    curves = {}
    for result in runs:
        final = result.settings.get("max_train_steps")
        means = step_means(RunFolder(result.run_dir), int(final)) if final else {}
        if means:
            curves[result.name] = means
    if not curves:
        return []
    lines = [
        "## Best step per configuration",
        "",
        f"`{objective}` over the cells rendered at every step (render.steps); DINO rises as the subject is "
        "learnt, CLIP-T falls where the LoRA starts to override the prompt.",
        "",
        "| configuration | best step | objective at each step |",
        "|---|---|---|",
    ]
    for name, means in curves.items():
        values = {step: objective_value(m, terms) for step, m in means.items()}
        scored = {s: v for s, v in values.items() if v is not None}
        best = max(scored, key=scored.get) if scored else None
        text = ", ".join(f"{s}: {v:.4f}" for s, v in scored.items())
        lines.append(f"| `{name}` | {best if best is not None else '-'} | {text} |")
    # a checkpoint at step k is the weights of a run trained to k only where the schedule ignores the total
    decaying = sorted(
        r.name
        for r in runs
        if r.name in curves and r.settings.get("lr_scheduler", "constant") not in STEP_INDEPENDENT_SCHEDULERS
    )
    if decaying:
        lines += [
            "",
            f"Under a decaying schedule ({', '.join(f'`{n}`' for n in decaying)}) a checkpoint is not "
            "the weights of a run trained to that step (that run would have annealed by then): take its "
            "best step as a guide and confirm it with `train.max_train_steps=...` (`python -m bench "
            "best_step` measured both on the drawn world: they agree exactly under a constant schedule, "
            "not always under cosine).",
        ]
    plot = plot_fidelity(curves, Path(sweep_dir) / FIDELITY_PLOT)
    return [*lines, "", *([f"![DINO and CLIP-T over steps]({plot.name})", ""] if plot else [])]
