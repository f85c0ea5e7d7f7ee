"""The static compare page (``compare.html``): every configuration's pictures side by side in one HTML file.

The page is self-contained (data inlined into ``compare_page.html``, no CDN, no server): open it from
``file://``. Pick a prompt, UNet scale, text scale and guidance (and sampler and sampling steps where the
grid has several, and the grid where a rerun drew a second one) and see that cell for every training
configuration side by side, sorted and coloured by any metric; or pick a configuration and see its
contact sheets.
"""

from __future__ import annotations

import json
from pathlib import Path

from lora_core.atomic import write_text_atomic
from sweeper.disk.layout import PAGE_FILE, RunFolder
from sweeper.disk.naming import differing_keys
from sweeper.disk.results import METRICS, RunResult, first_grid_label, grid_results
from sweeper.planning.grid import first_images

_TEMPLATE = Path(__file__).with_name("compare_page.html")


def page_data(sweep_dir: Path, runs: list[RunResult]) -> dict:
    """Everything the compare page shows, with paths relative to the sweep folder.

    A cell's ``key`` is its picture's stem, prefixed by its grid's folder for a second grid
    (``grid-euler_a/ph_1;1;7.5``): images and scores are looked up by it.
    """
    keys = differing_keys([r.settings for r in runs], settings=True)
    grids = grid_results(runs)
    first = first_grid_label(runs)
    cells: dict[str, dict] = {}
    images: dict[str, dict] = {run.name: {} for run in runs}
    scores: dict[str, dict] = {run.name: {} for run in runs}
    metric_names = sorted(
        {m for r in runs for g in (r, *r.other_grids.values()) for m in g.metric_names()}, key=METRICS.index
    )
    for grid, results in grids.items():
        for run in results:
            prefix = f"{grid}/" if grid else ""
            for cell in first_images(run.cells):
                key = prefix + cell.stem
                cells.setdefault(
                    key,
                    {
                        "key": key,
                        "grid": grid,
                        "prompt_name": cell.prompt_name,
                        "prompt": cell.prompt,
                        "unet": cell.unet_scale,
                        "text": cell.text_scale,
                        "text_2": "" if cell.text_2_scale is None else cell.text_2_scale,
                        "guidance": cell.guidance,
                        "sampler": cell.sampler or "",
                        "steps": cell.steps or 0,
                        "stem": cell.stem,
                    },
                )
                if (run.run_dir / cell.file_name).is_file():
                    images[run.name][key] = f"{run.name}/{prefix}{cell.file_name}"
            scores[run.name].update({prefix + k: v for k, v in _scores_by_stem(run, metric_names).items()})
    labels = {name: next((r.label for r in results if r.label), name) for name, results in grids.items()}
    return {
        "sweep": sweep_dir.name,
        "varying": keys,
        "metric_names": [*metric_names, "final_loss"],
        "grids": [
            {"name": name, "label": f"first grid ({first})" if not name and first else label or "first grid"}
            for name, label in labels.items()
        ],
        "cells": list(cells.values()),
        "images": images,
        "scores": scores,
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
