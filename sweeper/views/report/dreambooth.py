"""The report's DreamBooth section: the paper's Table 1 layout with this subject and each run."""

from __future__ import annotations

from sweeper.disk.layout import RunFolder
from sweeper.disk.results import METRICS, RunResult


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
