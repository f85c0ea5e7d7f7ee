"""A job that trains a pack: several configurations of the sweep in one process, then finishes each.

The configurations take one forward and backward a step together (``lora_core.packs``); then each gets its
grid, sheets, scores, record and MLflow run.

The sweeper launches it with the first configuration's overrides and ``sweep.pack_members``; the others'
configs are composed here from their overrides in ``sweep.json`` (with what the sweeper added, such as a
halving rung's), exactly as the launcher composes a job's.
Every configuration keeps its own run folder, checkpoints and MLflow run, as if it had been a job of its own.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from omegaconf import DictConfig, OmegaConf

from sweeper.config.spec import build_job, sweep_dir_of
from sweeper.job.grids import render_together
from sweeper.job.job import Job
from sweeper.job.training import train_together
from sweeper.planning.plan import SweepPlan

log = logging.getLogger(__name__)


class PackTrainingFailed(RuntimeError):
    """Some configurations of a pack failed to train (the others finished); one line each."""


def compose_member(overrides: list[str]) -> DictConfig:
    """One configuration's config, composed from its overrides as the launcher composes a job's."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    master = OmegaConf.create(
        {
            "hydra": {
                "overrides": {"hydra": list(hydra_cfg.overrides.hydra)},
                "job": {"config_name": hydra_cfg.job.config_name},
            }
        }
    )
    return GlobalHydra.instance().config_loader().load_sweep_config(master, list(overrides))


def pack_jobs(cfg: DictConfig, task_overrides: list[str], device: str | None) -> list[Job]:
    """The jobs of the pack ``cfg.sweep.pack_members`` names, in its order.

    Args:
        cfg: The pack job's config (its first configuration's).
        task_overrides: The pack job's overrides: the first configuration's, what the sweeper added to
            every member (a rung's stop and preview), and ``sweep.pack_members``.
        device: Where the job was placed.
    """
    plan = SweepPlan.load(sweep_dir_of(cfg))
    members = list(cfg.sweep.pack_members)
    own = plan.jobs[members[0]]["overrides"]
    added = [o for o in task_overrides if o not in own and not o.startswith("sweep.pack_members=")]
    jobs = []
    for name in members:
        overrides = [*plan.jobs[name]["overrides"], *added]
        member_cfg = compose_member(overrides)
        spec = build_job(member_cfg)
        if device is not None:
            spec.model = replace(spec.model, device=device)
        job = Job(spec, member_cfg, overrides)
        if job.context.run_dir.name != name:
            raise RuntimeError(
                f"pack member {name} composed to {job.context.run_dir.name}: the plan is stale"
            )
        jobs.append(job)
    return jobs


def _render_together(jobs: list[Job], pipe, until: int | None) -> list[list]:
    """The jobs' final grids (or a rung's) and their checkpoint grids, each rendered as one pack."""
    grids, results = [job.grids for job in jobs], [job.result for job in jobs]
    if until is not None:
        return render_together(grids, pipe, results, step=until)
    rendered = render_together(grids, pipe, results)
    for step in jobs[0].context.spec.steps if jobs else []:
        render_together(grids, pipe, results, step=step)
    return rendered


def run_pack(jobs: list[Job]) -> dict[str, float | None]:
    """Train the jobs together, then finish each (grid, sheets, scores, record, MLflow).

    A halving rung (``sweep.stop_at_step``) trains each to that step and renders and scores its preview.

    Returns:
        Each job's objective by run folder name (what a search reads).

    Raises:
        PackTrainingFailed: A configuration's training diverged; the others finished first.
    """
    for job in jobs:
        job.prepare()
    until = jobs[0].context.spec.stop_at
    todo = [job.context.run_dir.name for job in jobs if not job.training.is_trained(until)]
    if len(todo) > 1:  # a rerun whose LoRAs are trained says so per job (train_together), not this
        log.info("Training %d configurations together: %s", len(todo), ", ".join(todo))
    loggers: list = [None] * len(jobs)
    logged = [True] * len(jobs)
    if until is None:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow-start") as pool:
            tracking = pool.submit(lambda: [job.mlflow.start() for job in jobs])
            pipe = jobs[0].load_pipeline()
            logged = tracking.result()
        for job in jobs:
            job.result.mlflow_run_id = job.mlflow.run_id
        loggers = [job.mlflow.step_logger() for job in jobs]
    else:  # MLflow hears of rungs from the halving sweeper
        pipe = jobs[0].load_pipeline()
    failures = train_together(
        [job.training for job in jobs], pipe, [job.result for job in jobs], loggers, until
    )
    trained = [k for k in range(len(jobs)) if k not in failures]
    rendered = _render_together([jobs[k] for k in trained], pipe, until)
    for index, (job, already_logged) in enumerate(zip(jobs, logged, strict=True)):
        if index in failures:
            job.fail(failures[index])
        elif until is None:
            job.finish(pipe, already_logged, rendered[trained.index(index)])
        else:
            job.finish_rung(pipe)
    if failures:
        raise PackTrainingFailed(
            "; ".join(f"{jobs[i].context.run_dir.name}: {reason}" for i, reason in failures.items())
        )
    return {job.context.run_dir.name: job.result.objective for job in jobs}
