"""Hydra callback around a sweep: plan and check before any job, close up and summarise after the last.

Runs in the launching process, whichever launcher runs the jobs (in-process, joblib, submitit/SLURM).
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from lora_core.errors import UserInputError
from lora_core.models import quiet_libraries
from sweeper.config.spec import build_job, sweep_dir_of
from sweeper.disk.layout import SweepFolder
from sweeper.disk.naming import train_short_keys
from sweeper.errors import exit_on_error
from sweeper.launch.slurm import check_slurm_request
from sweeper.planning.plan import SweepPlan, TrackingIds, check_inputs, compose_job, expand_jobs, plan_sweep
from sweeper.plugins import (
    LauncherKind,
    SweeperKind,
    launcher_kind,
    launches_packs,
    parallel_jobs,
    sweeper_kind,
)
from sweeper.search.halving import plan_halving
from sweeper.search.optuna import check_search, search_space
from sweeper.tracking.helper import open_tracker, prefetch_mlflow
from sweeper.tracking.store import tracking_uri
from sweeper.tracking.ui import describe_sweep

log = logging.getLogger(__name__)


def searched_train_keys(config: DictConfig) -> list[str]:
    """Keys a non-basic sweeper (Optuna) searches over, as they name run folders."""
    params = config.hydra.sweeper.get("params") or {}
    return train_short_keys(params)


def _fixed_overrides(config: DictConfig) -> list[str]:
    """The command line's overrides that are one value each (a search's ``choice(...)`` left out)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
    return [o.input_line for o in parsed if not o.is_sweep_override()]


def _plan_grid(config: DictConfig, bracket: bool = False) -> SweepPlan:
    """The basic sweeper's jobs (every combination of the comma lists), each checked and named.

    With ``bracket`` (the halving sweeper) the same jobs, checkpointed at the rungs.
    """
    jobs = expand_jobs(config)
    plan = plan_sweep(config, jobs, launches_packs(config.hydra) or bracket, parallel_jobs(config.hydra))
    if bracket:
        plan_halving(config, plan)  # checks eta, rungs, preview; checkpoints at the rungs
    log.info("Sweep %s: %d jobs, folders %s", config.sweep.name, len(jobs), ", ".join(plan.jobs))
    return plan


def _plan_search(config: DictConfig) -> SweepPlan:
    """An Optuna search: its trials are not known yet, so the search space and the rest are checked."""
    check_search(config, list(config.hydra.overrides.task))
    space = search_space(config, list(config.hydra.overrides.task))
    check_inputs([build_job(compose_job(config, space.fixed))])
    return SweepPlan(name=config.sweep.name, varying=space.train_keys())


def _plan_other(config: DictConfig) -> SweepPlan:
    """Another search: its trials are not known yet; the values outside the search space are checked."""
    check_inputs([build_job(compose_job(config, _fixed_overrides(config)))])
    return SweepPlan(name=config.sweep.name, varying=searched_train_keys(config))


PLANNERS = {
    SweeperKind.BASIC: _plan_grid,
    SweeperKind.HALVING: functools.partial(_plan_grid, bracket=True),
    SweeperKind.OPTUNA: _plan_search,
    SweeperKind.OTHER: _plan_other,
}


def _make_sweep_dir(sweep_dir: Path, root: str) -> None:
    """Create the sweep's folder; an output root that cannot be written is the user's ``sweep.root``."""
    try:
        sweep_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserInputError(
            f"sweep.root={root}: cannot create the sweep folder {sweep_dir} ({err.strerror or err}); "
            "choose a folder you can write to"
        ) from None


class SweepCallback(Callback):
    """Plans the multirun, opens its MLflow parent run, and closes and summarises it at the end."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        """Check every job and write ``sweep.json`` before the launcher starts any of them."""
        with exit_on_error():
            sweep_dir = sweep_dir_of(config)
            if config.tracking.enabled:
                prefetch_mlflow()  # the helper process imports MLflow while the sweep is planned
            check_slurm_request(OmegaConf.to_container(config.hydra.launcher, resolve=True))
            plan = PLANNERS[sweeper_kind(config.hydra)](config)
            _make_sweep_dir(sweep_dir, config.sweep.root)
            self._plan = plan
            if config.tracking.enabled and launcher_kind(config.hydra) == LauncherKind.BASIC:
                quiet_libraries()  # the jobs' libraries load here while MLflow opens the sweep's run
            plan.tracking = self._open_parent(config, sweep_dir, SweepPlan.load(sweep_dir))
            plan.save(sweep_dir)

    def _open_parent(self, config: DictConfig, sweep_dir: Path, previous: SweepPlan | None) -> TrackingIds:
        if not config.tracking.enabled:
            return TrackingIds()
        uri = tracking_uri(config)
        tracker = open_tracker(config, sweep_dir)  # in-process jobs share its helper process
        reuse = previous.tracking.parent_in(uri) if previous else None
        parent = tracker.parent_run(reuse, config.sweep.name, {"sweep": config.sweep.name})
        describe_sweep(tracker, parent, config, self._plan)
        return TrackingIds(uri=uri, experiment_id=tracker.experiment_id, parent_run_id=parent)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        """Sweep-wide sheets, report and compare page; the parent run closed with them; where to look."""
        from sweeper.tracking.replay import close_sweep, log_finished_runs
        from sweeper.views.report import write_report
        from sweeper.views.sheets import draw_sweep_sheets
        from sweeper.views.summary import print_summary

        sweep_dir = sweep_dir_of(config)
        sheets = draw_sweep_sheets(sweep_dir, config.render.sheet_thumb)
        with exit_on_error():
            write_report(sweep_dir, config.eval.objective)
        plan = SweepPlan.load(sweep_dir)
        parent = plan.parent_run_id if plan else None
        if parent and config.tracking.enabled:
            tracker = open_tracker(config, sweep_dir)
            if not config.tracking.live:  # the jobs left MLflow to the sweep's end
                log_finished_runs(tracker, parent, SweepFolder(sweep_dir))
            close_sweep(tracker, parent, SweepFolder(sweep_dir), config.eval.objective)
        if config.sweep.print_summary:
            print_summary(config, sweep_dir, sheets, plan.tracking.experiment_id if plan else None)

    def on_run_end(self, config: DictConfig, **kwargs) -> None:
        """A single run (no ``-m``): its report and compare page, the MLflow view, and where all of it is."""
        from sweeper.disk.results import load_results
        from sweeper.views.report import write_report
        from sweeper.views.summary import print_summary

        sweep_dir = sweep_dir_of(config)
        if not sweep_dir.is_dir() or not load_results(sweep_dir):
            return  # the run failed and said why
        with exit_on_error():
            write_report(sweep_dir, config.eval.objective)
        experiment = None
        if config.tracking.enabled:
            tracker = open_tracker(config, sweep_dir)  # the job's helper process, if it has one
            if not config.tracking.live:  # the job left MLflow to here
                from sweeper.tracking.replay import log_finished_runs

                log_finished_runs(tracker, None, SweepFolder(sweep_dir))
            describe_sweep(tracker, None, config, SweepPlan(name=config.sweep.name, varying=[]))
            experiment = tracker.experiment_id
        if config.sweep.print_summary:
            print_summary(config, sweep_dir, [], experiment)
