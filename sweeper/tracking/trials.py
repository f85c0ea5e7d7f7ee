"""An Optuna study in MLflow: each trial's reports and what the pruner decided.

Every trial's job run gets ``intermediate_objective`` (one point per report, at its training step, the last
at the trial's end) and the tags ``optuna.decision`` (``completed`` / ``pruned`` / ``failed``),
``optuna.trial`` (its number in the study) and ``optuna.step`` (the last step it reported). A pruned
trial never runs a final job, so its run is logged here from its folder (params, loss, the pictures of its
last report step) when it is pruned.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from sweeper.disk.layout import SweepFolder
from sweeper.tracking.tracker import Tracker

METRIC = "intermediate_objective"


def trial_metrics(reported: dict[int, float]) -> list[tuple[str, float, int]]:
    """``intermediate_objective`` at each reported training step."""
    return [(METRIC, float(value), int(step)) for step, value in sorted(reported.items())]


def trial_tags(number: int, reported: dict[int, float], decision: str) -> dict[str, str]:
    """``optuna.decision``, ``optuna.trial`` and ``optuna.step`` of one trial."""
    return {
        "optuna.decision": decision,
        "optuna.trial": str(number),
        "optuna.step": str(max(reported)) if reported else "",
    }


def log_trial(
    config: DictConfig, sweep_dir: Path, name: str, reported: dict[int, float], decision: str, number: int
) -> None:
    """Log one decided trial to the job run of its folder ``name`` (created from the folder if pruned)."""
    from sweeper.planning.plan import parent_run_of
    from sweeper.tracking.bracket import log_unfinished_run

    parent = parent_run_of(sweep_dir)
    if not (config.tracking.enabled and parent):
        return
    tracker = Tracker.for_config(config, sweep_dir)
    metrics, tags = trial_metrics(reported), trial_tags(number, reported, decision)
    if decision == "pruned" and reported:
        run = SweepFolder(sweep_dir).run(name)
        log_unfinished_run(tracker, parent, run, max(reported), metrics, tags, config.sweep.name)
        return
    for found in tracker.find_children(parent, name):
        tracker.log_metrics(found.info.run_id, metrics)
        tracker.set_tags(found.info.run_id, tags)
