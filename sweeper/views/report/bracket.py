"""The report's halving section: each configuration's objective per rung and what happened to it."""

from __future__ import annotations

from pathlib import Path

from sweeper.search.halving import Bracket


def bracket_lines(sweep_dir: Path) -> list[str]:
    """The report's bracket section: each configuration's objective per rung and what happened to it."""
    bracket = Bracket.load(sweep_dir)
    if bracket is None:
        return []
    header = ["configuration", *(f"step {s}" for s in bracket.steps), "decision"]
    lines = [
        f"## Halving bracket (eta {bracket.eta})",
        "",
        "Objective per rung (rungs below the top score the preview grid); the best 1/eta go on.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for name in bracket.configurations:
        cells = [
            f"{v:.4f}" if (v := scores.get(name)) is not None else ("n/a" if name in scores else "")
            for scores in bracket.scores
        ]
        cells += [""] * (len(bracket.steps) - len(cells))
        reached, what = bracket.decision(name)
        decision = f"{what} at step {bracket.steps[reached]}" if reached >= 0 else what
        lines.append(f"| `{name}` | " + " | ".join(cells) + f" | {decision} |")
    return [*lines, ""]
