"""What a person sees at the end of a sweep: where the pictures, the sheets and the MLflow store are."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from sweeper.disk.layout import SweepFolder
from sweeper.tracking.store import tracking_uri
from sweeper.tracking.ui import experiment_link, ui_base


def ui_command(uri: str) -> str:
    """The command that opens the MLflow UI on this store (on 127.0.0.1)."""
    if uri.startswith(("http://", "https://")):
        return f"open {uri} in a browser"
    return f"make ui   (or: mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000 --workers 1)"


def print_summary(
    config: DictConfig, sweep_dir: Path, sweep_sheets: list[Path], experiment_id: str | None = None
) -> None:
    """Print the end-of-sweep summary to stdout (with the MLflow UI link when ``experiment_id`` is known)."""
    sweep = SweepFolder(sweep_dir)
    done = sweep.done_runs()
    uri = tracking_uri(config)
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
    if sweep.report_file.is_file():
        lines.append(f"  report:      {sweep.report_file}")
        lines.append(f"  compare:     file://{sweep.page_file.resolve()}")
    if not config.tracking.enabled:
        lines.append("  MLflow:      off (tracking.enabled=false)")
    elif sweep.pending_file.is_file():
        lines.append(f"  MLflow:      NOT logged - see {sweep.pending_file}")
    else:
        lines += [
            f"  MLflow:      {uri}  (experiment '{config.tracking.experiment or config.sweep.name}')",
            f"  open the UI: {ui_command(uri)}",
        ]
        if experiment_id:
            base = ui_base(uri)
            lines += [
                f"  the jobs:    {experiment_link(base, experiment_id)}",
                f"  charts:      {experiment_link(base, experiment_id, charts=True)}",
            ]
    print("\n".join(lines), flush=True)
