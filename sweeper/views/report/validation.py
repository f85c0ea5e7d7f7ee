"""The report's validation-loss section: where each run's validation loss starts rising."""

from __future__ import annotations

from sweeper.disk.results import RunResult


def validation_lines(runs: list[RunResult]) -> list[str]:
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
