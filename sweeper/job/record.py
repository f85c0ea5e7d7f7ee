"""A job's record in its run folder: the composed config and overrides it ran with, and ``run.json``."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from sweeper.job.context import JobContext
from sweeper.tracking.store import tracking_uri


def write_config(job: JobContext) -> None:
    """Write the job's composed config (without ``hydra``) and its overrides into the run folder."""
    cfg = {
        k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
        for k, v in job.cfg.items()
        if k != "hydra"
    }
    job.folder.write_config(cfg, job.overrides)


def save_record(
    job: JobContext,
    status: str,
    result,
    identity: dict,
    mlflow_run: str | None,
    pack: dict | None = None,
    cells: list[dict] | None = None,
) -> None:
    """Write ``run.json``: the job's status, settings, grid, result and MLflow run.

    Args:
        job: The job's values.
        status: ``done``, ``rung`` for a halving rung, ``failed`` for a training that diverged in a pack.
        result: The job's ``JobResult``.
        identity: What the weights depend on besides the settings (``JobTraining.identity``).
        mlflow_run: The job's MLflow run id, if it has one.
        pack: The pack it trained in (``plan.pack_record``), if any.
        cells: The run folder's grid cells (default: the job's; a job that drew a second grid keeps the
            first grid's, ``JobGrids.first_grid_cells``).
    """
    spec = job.spec
    record = {
        "status": status,
        "run_dir": job.run_dir.name,
        "sweep": job.cfg.sweep.name,
        "overrides": job.overrides,
        "base_model": identity["base_model"],  # the weights' content hash for world / tiny
        "settings": spec.settings.to_dict(),
        "render_weights": spec.weights,
        **(
            {"captions": _captions_by_picture(job)} if spec.settings.caption_mode != "instance_prompt" else {}
        ),
        "cells": cells if cells is not None else [c.__dict__ for c in spec.cells],
        "result": {k: str(v) if isinstance(v, Path) else v for k, v in result.__dict__.items()},
        "mlflow": {"uri": tracking_uri(job.cfg), "run_id": mlflow_run},
        **({"pack": pack} if pack else {}),
    }
    job.folder.write_record(record)


def _captions_by_picture(job: JobContext) -> dict[str, str]:
    from lora_core.data.subject import list_subject_images

    pictures = list_subject_images(job.instance_dir)
    return {p.name: c for p, c in zip(pictures, job.spec.read_captions(job.instance_dir), strict=True)}
