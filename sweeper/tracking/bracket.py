"""A halving bracket in MLflow: why each configuration stopped or went on.

Every job run gets ``rung_objective`` (one point per rung it ran, at the rung's training step) and the
tags ``halving.decision`` (``stopped`` / ``finished``), ``halving.rung`` and ``halving.step``. A
configuration stopped below the top never runs a final job, so its run is logged here, from its folder
(params, loss, its last rung's pictures), when the rung that stops it is decided. The parent run gets the
bracket as a table (``bracket_table.json``) at the end.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from sweeper.disk.layout import SweepFolder
from sweeper.tracking.tracker import Tracker

TABLE_FILE = "bracket_table.json"


def rung_metrics(bracket, name: str) -> list[tuple[str, float, int]]:
    """``rung_objective`` of one configuration at each rung's step (rungs without a score left out)."""
    return [
        ("rung_objective", scores[name], step)
        for step, scores in zip(bracket.steps, bracket.scores, strict=False)
        if scores.get(name) is not None
    ]


def decision_tags(bracket, name: str) -> dict[str, str]:
    """``halving.decision``, ``halving.rung`` (1-based) and ``halving.step`` of one configuration."""
    reached, what = bracket.decision(name)
    return {
        "halving.decision": what,
        "halving.rung": str(reached + 1),
        "halving.step": str(bracket.steps[reached]),
    }


def bracket_table(bracket) -> dict[str, list]:
    """The bracket as columns: configuration, then each rung's objective, then the decision."""
    table: dict[str, list] = {"configuration": list(bracket.configurations)}
    for step, scores in zip(bracket.steps, [*bracket.scores, *([{}] * len(bracket.steps))], strict=False):
        table[f"step {step}"] = [scores.get(name) for name in bracket.configurations]
    table["decision"] = [bracket.decision(name)[1] for name in bracket.configurations]
    return table


def log_rung(config: DictConfig, sweep_dir: Path, bracket, rung: int) -> None:
    """Log what rung ``rung`` decided: stopped configurations' runs, or, at the top, the whole bracket."""
    from sweeper.planning.plan import parent_run_of

    parent = parent_run_of(sweep_dir)
    if not (config.tracking.enabled and parent):
        return
    tracker = Tracker.for_config(config, sweep_dir)
    if rung < len(bracket.steps) - 1:
        stopped = [n for n in bracket.candidates(rung) if n not in bracket.promoted[rung]]
        for name in stopped:
            _log_stopped(tracker, parent, SweepFolder(sweep_dir).run(name), bracket, config.sweep.name)
        return
    for name in bracket.candidates(rung):
        for run in tracker.find_children(parent, name):
            tracker.log_metrics(run.info.run_id, rung_metrics(bracket, name))
            tracker.set_tags(run.info.run_id, decision_tags(bracket, name))
    logged = (
        tracker.call("listing the parent's files", lambda c: [a.path for a in c.list_artifacts(parent)]) or []
    )
    if TABLE_FILE not in logged:
        tracker.call("logging the bracket", lambda c: c.log_table(parent, bracket_table(bracket), TABLE_FILE))


def _log_stopped(tracker: Tracker, parent: str, run, bracket, sweep_name: str) -> None:
    step = bracket.steps[bracket.decision(run.name)[0]]
    metrics, tags = rung_metrics(bracket, run.name), decision_tags(bracket, run.name)
    log_unfinished_run(tracker, parent, run, step, metrics, tags, sweep_name)


def log_unfinished_run(
    tracker: Tracker, parent: str, run, step: int, metrics: list, tags: dict, sweep_name: str
) -> None:
    """Log a run stopped at checkpoint ``step`` (no final job logged it) from its folder, with ``metrics``.

    Params, loss per step, the given metrics and tags, and the pictures of ``<run>/step-<n>/``; nothing when
    an earlier attempt of the sweep logged it already.
    """
    from sweeper.tracking.replay import run_params, step_metrics

    run_id, finished = tracker.child_run(parent, run.name, {"sweep": sweep_name})
    if finished or run_id is None:
        return  # logged by an earlier attempt of this sweep
    tracker.log_params(run_id, run_params(run))
    tracker.log_metrics(run_id, step_metrics(run) + metrics)
    tracker.set_tags(run_id, tags)
    last = run.step(step)
    if last.path.is_dir():
        tracker.log_artifact(run_id, last.path, last.name)
    tracker.finish(run_id)
    run.update_record(mlflow={"uri": tracker.uri, "run_id": run_id})
