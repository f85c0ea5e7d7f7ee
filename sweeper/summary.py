"""What a person sees at the end of a sweep: where the pictures, the sheets and the MLflow store are."""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig

from sweeper.mlflow_ui import experiment_link, ui_base
from sweeper.tracking import PENDING_FILE, default_uri


def ui_command(uri: str) -> str:
    """The command that opens the MLflow UI on this store (on 127.0.0.1)."""
    if uri.startswith(("http://", "https://")):
        return f"open {uri} in a browser"
    return f"make ui   (or: mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000 --workers 1)"


def print_summary(
    config: DictConfig, sweep_dir: Path, sweep_sheets: list[Path], experiment_id: str | None = None
) -> None:
    """Print the end-of-sweep summary to stdout (with the MLflow UI link when ``experiment_id`` is known)."""
    runs = sorted(p.parent for p in sweep_dir.glob("*/run.json"))
    done = [r for r in runs if json.loads((r / "run.json").read_text()).get("status") == "done"]
    uri = config.tracking.uri or default_uri(config.sweep.root)
    lines = [
        "",
        f"Sweep '{config.sweep.name}': {len(done)} finished runs in {sweep_dir}/",
        f"  pictures:    {sweep_dir}/<run>/<prompt>_<unet>;<text>;<guidance>.png   runs: {', '.join(r.name for r in done)}",
        f"  run sheets:  {sweep_dir}/<run>/sheets/",
    ]
    if sweep_sheets:
        lines.append(
            f"  sweep sheets: {sweep_dir}/sheets/ ({len(sweep_sheets)}: one per prompt, a row per run)"
        )
    if (sweep_dir / "report.md").is_file():
        lines.append(f"  report:      {sweep_dir}/report.md")
        lines.append(f"  compare:     file://{(sweep_dir / 'compare.html').resolve()}")
    if not config.tracking.enabled:
        lines.append("  MLflow:      off (tracking.enabled=false)")
    elif (sweep_dir / PENDING_FILE).is_file():
        lines.append(f"  MLflow:      NOT logged - see {sweep_dir / PENDING_FILE}")
    else:
        lines += [f"  MLflow:      {uri}  (experiment '{config.tracking.experiment or config.sweep.name}')",
                  f"  open the UI: {ui_command(uri)}"]  # fmt: skip
        if experiment_id:
            base = ui_base(uri)
            lines += [f"  the jobs:    {experiment_link(base, experiment_id)}",
                      f"  charts:      {experiment_link(base, experiment_id, charts=True)}"]  # fmt: skip
    print("\n".join(lines), flush=True)
