"""A job that trains a pack: several configurations of the sweep in one process, then finishes each.

The configurations take one forward and backward a step together (``lora_core.packs``); then each gets its
grid, sheets, scores, record and MLflow run.

The pack sweeper launches it with the first configuration's overrides and ``sweep.pack_job``; the others'
configs are composed here from their overrides in ``sweep.json``, exactly as the launcher composes a job's.
Every configuration keeps its own run folder, checkpoints and MLflow run, as if it had been a job of its own.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from omegaconf import DictConfig, OmegaConf

from sweeper.config.spec import build_job, sweep_dir_of
from sweeper.job.job import Job, JobResult
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


def pack_jobs(cfg: DictConfig, device: str | None) -> list[Job]:
    """The jobs of the pack ``cfg.sweep.pack_job`` names, in plan order."""
    plan = SweepPlan.load(sweep_dir_of(cfg))
    members = plan.packs[int(cfg.sweep.pack_job)]
    jobs = []
    for name in members:
        overrides = list(plan.jobs[name]["overrides"])
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


def run_pack(jobs: list[Job]) -> list[JobResult]:
    """Train the jobs together, then finish each (grid, sheets, scores, record, MLflow).

    Raises:
        PackTrainingFailed: A configuration's training diverged; the others finished first.
    """
    for job in jobs:
        job.prepare()
    log.info(
        "Training %d configurations together: %s", len(jobs), ", ".join(j.context.run_dir.name for j in jobs)
    )
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow-start") as pool:
        tracking = pool.submit(lambda: [job.mlflow.start() for job in jobs])
        pipe = jobs[0].load_pipeline()
        logged = tracking.result()
    for job in jobs:
        job.result.mlflow_run_id = job.mlflow.run_id
    failures = train_together(
        [job.training for job in jobs],
        pipe,
        [job.result for job in jobs],
        [job.mlflow.step_logger() for job in jobs],
    )
    for index, (job, already_logged) in enumerate(zip(jobs, logged, strict=True)):
        if index in failures:
            job.fail(failures[index])
        else:
            job.finish(pipe, already_logged)
    if failures:
        raise PackTrainingFailed(
            "; ".join(f"{jobs[i].context.run_dir.name}: {reason}" for i, reason in failures.items())
        )
    return [job.result for job in jobs]
