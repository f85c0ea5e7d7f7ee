"""``python -m sweeper.log <sweep folder> [--tracking-uri URI]``: log a finished sweep folder to MLflow.

For sweeps that ran while the tracking server could not be reached (they leave ``MLFLOW_PENDING``), or
to copy a sweep into another store. Runs already logged there as finished are skipped.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from omegaconf import OmegaConf

from lora_core.atomic import write_text_atomic
from lora_core.errors import UserInputError
from sweeper.cli import user_errors
from sweeper.contact import SHEETS_DIR
from sweeper.mirror import log_run_folder
from sweeper.mlflow_ui import describe_sweep, experiment_link, summarise_sweep, ui_base
from sweeper.plan import PLAN_FILE, SweepPlan
from sweeper.report import LOSS_PLOT, PAGE_FILE, REPORT_FILE
from sweeper.results import load_results
from sweeper.tracking import PENDING_FILE, Tracker, default_uri


def log_sweep_folder(
    sweep_dir: Path, uri: str | None = None, experiment: str | None = None
) -> tuple[int, str]:
    """Log every finished run of a sweep folder beside one parent run, with the experiment's shared view.

    A store logged by an older version (jobs as MLflow child runs, folded under the parent in the UI) is
    upgraded: its jobs become flat runs, and the view and the parent's summary are written.

    Args:
        sweep_dir: ``<sweep.root>/<sweep.name>``.
        uri: Tracking URI; default: the SQLite store beside the sweep folder.
        experiment: Experiment name; default: the sweep's name.

    Returns:
        (number of runs logged now, the link that opens the sweep's jobs in the MLflow UI).

    Raises:
        UserInputError: Not a sweep folder, or the store cannot be reached.
    """
    sweep_dir = Path(sweep_dir)
    runs = [run.run_dir for run in load_results(sweep_dir)]
    if not runs:
        raise UserInputError(f"{sweep_dir}: no finished run in it (no */run.json with status done).")
    uri = uri or default_uri(sweep_dir.parent)
    tracker = Tracker(uri, experiment or sweep_dir.name, sweep_dir)
    if not tracker.active:
        raise UserInputError(
            f"--tracking-uri {uri}: the store cannot be reached; start it and run this again."
        )
    plan = SweepPlan.load(sweep_dir) or SweepPlan(name=sweep_dir.name, varying=[])
    previous = plan.tracking.get("parent_run_id") if plan.tracking.get("uri") == uri else None
    parent = tracker.parent_run(previous, sweep_dir.name, {"sweep": sweep_dir.name})
    tracker.unfold_children(parent)  # a store logged when jobs were MLflow child runs
    config = OmegaConf.load(runs[-1] / "config.yaml")
    describe_sweep(tracker, parent, config, plan)
    logged = 0
    for run_dir in runs:
        run_id, finished = tracker.child_run(parent, run_dir.name, {"sweep": sweep_dir.name})
        if finished or run_id is None:
            continue
        log_run_folder(tracker, run_id, run_dir, with_steps=True)
        tracker.finish(run_id)
        _record_run_id(run_dir, uri, run_id)
        logged += 1
    for sheet in sorted((sweep_dir / SHEETS_DIR).glob("*.png")):
        tracker.log_artifact(parent, sheet, SHEETS_DIR)
    for name in (PLAN_FILE, REPORT_FILE, LOSS_PLOT, PAGE_FILE):
        tracker.log_artifact(parent, sweep_dir / name)
    summarise_sweep(tracker, parent, sweep_dir, OmegaConf.select(config, "eval.objective") or "dino+clip_t")
    tracker.finish(parent)
    if not tracker.active:
        raise UserInputError(f"--tracking-uri {uri}: the store stopped answering; run this again.")
    plan.tracking = {"uri": uri, "experiment_id": tracker.experiment_id, "parent_run_id": parent}
    plan.save(sweep_dir)
    (sweep_dir / PENDING_FILE).unlink(missing_ok=True)
    return logged, experiment_link(ui_base(uri), tracker.experiment_id)


def _record_run_id(run_dir: Path, uri: str, run_id: str) -> None:
    path = run_dir / "run.json"
    record = json.loads(path.read_text())
    record["mlflow"] = {"uri": uri, "run_id": run_id}
    write_text_atomic(path, json.dumps(record, indent=2))


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m sweeper.log", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path, help="the sweep folder, e.g. outputs/quickstart")
    parser.add_argument(
        "--tracking-uri", default=None, help="default: sqlite:///<sweep folder's parent>/mlflow.db"
    )
    parser.add_argument("--experiment", default=None, help="default: the sweep folder's name")
    args = parser.parse_args(argv)
    with user_errors():
        count, link = log_sweep_folder(args.sweep_dir, args.tracking_uri, args.experiment)
    print(f"Logged {count} runs of {args.sweep_dir} to MLflow.\nThe jobs in the MLflow UI: {link}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
