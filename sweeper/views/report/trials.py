"""The report's Optuna section: each trial's objective at every report step and how it ended."""

from __future__ import annotations

from pathlib import Path

from sweeper.disk.layout import SweepFolder
from sweeper.disk.naming import override_value


def trials_lines(sweep_dir: Path) -> list[str]:
    """The report's Optuna section: each trial's objective at every report step and how it ended, best first."""
    data = SweepFolder(sweep_dir).read_trials()
    if data is None:
        return []
    trials = data["trials"]
    steps = sorted({int(s) for t in trials for s in t["reports"]})
    names = sorted({k for t in trials for k in t["params"]})
    header = ["trial", "configuration", *names, *(f"step {s}" for s in steps), "state"]
    lines = [
        f"## Optuna study `{data['study']}`",
        "",
        "Objective at each report step; the pruner stops a trial whose report is weak against the others' "
        "at the same step. Completed trials first, best first.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]

    def order(t: dict) -> tuple:
        done = t["state"] == "complete" and t["value"] is not None
        last = max(t["reports"].items(), key=lambda kv: int(kv[0]), default=(0, None))
        return (not done, -(t["value"] if done else int(last[0])), -(last[1] or 0.0), t["number"])

    for t in sorted(trials, key=order):
        params = [override_value(t["params"][k]) if k in t["params"] else "" for k in names]
        reports = [f"{v:.4f}" if (v := t["reports"].get(str(s))) is not None else "" for s in steps]
        run = f"`{t['run']}`" if t["run"] else "-"
        lines.append(f"| {t['number']} | {run} | " + " | ".join([*params, *reports, t["state"]]) + " |")
    return [*lines, ""]
