"""The report's section on second grids: the same LoRAs drawn with other render settings, a table each.

A rerun of a finished sweep with another sampler, sampling steps, negative prompt or resolution draws each
run's grid again into ``<run>/grid-<what differs>/`` (``sweeper.job.grids``), training nothing.
"""

from __future__ import annotations

from sweeper.disk.naming import differing_keys
from sweeper.disk.results import RunResult, first_grid_label, grid_results
from sweeper.views.report.table import metrics_table


def grids_lines(runs: list[RunResult], objective: str) -> list[str]:
    """A table per second grid, as the first grid's (none when the runs have no second grid)."""
    grids = {name: results for name, results in grid_results(runs).items() if name}
    if not grids:
        return []
    keys = differing_keys([r.settings for r in runs], settings=True)
    lines = [
        "## Other grids: the same LoRAs drawn with other render settings",
        "",
        f"The tables above are the first grid's ({first_grid_label(runs)}). Each grid below was drawn by a "
        "rerun with the trained LoRAs, into `<run>/<grid>/`.",
        "",
    ]
    for name, results in grids.items():
        label = next((r.label for r in results if r.label), name)
        lines += [f"### `{name}`: {label}", "", *metrics_table(results, objective, keys)]
    return lines
