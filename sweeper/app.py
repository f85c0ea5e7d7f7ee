"""The Hydra entry point: ``python -m sweeper [-m] experiment=<preset> key=value ...``.

A thin ``@hydra.main`` around ``run(cfg)``: everything else takes plain values.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from lora_core.models import quiet_libraries
from sweeper.config.schema import register_configs
from sweeper.errors import FAILURE_EXIT, exit_with, job_errors
from sweeper.plugins import LauncherKind, SweeperKind, launcher_kind, parallel_jobs, sweeper_kind
from sweeper.search.objective import objective_or_nan

log = logging.getLogger(__name__)


def _gpus_per_job(wanted: int = 1) -> int:
    """``${gpus_per_job:1}``: that many GPUs for a job where the machine has them, else 0."""
    import torch

    return min(int(wanted), torch.cuda.device_count())


# conf/ sits beside the packages (the project is installed editable); an absolute path works however
# the entry point is started (python -m sweeper, a launcher's worker, a test).
CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")


def _safe_name(name: str) -> str:
    """``${safe_name:${sweep.name}}``: the sweep name made harmless for Hydra's own log folder.

    Hydra creates that folder before any of our code runs; an unsafe name (``../x``) is then refused with
    a clear message by the sweep itself, and Hydra's folder never lands outside ``sweep.root``.
    """
    from sweeper.disk.naming import format_value

    return format_value(str(name))


def _slurm_gpus(partition: str | None, wanted: int = 1) -> int:
    """``${slurm_gpus:${hydra.launcher.partition},1}``: that many GPUs where the partition has them, else 0."""
    from sweeper.launch.slurm import slurm_gpus

    return slurm_gpus(partition, wanted)


def _dreambooth_prompts(kind: str) -> list:
    """``${dreambooth_prompts:${data.kind}}``: the DreamBooth dataset's 25 evaluation prompts."""
    from sweeper.config.dreambooth_prompts import dreambooth_prompts

    return dreambooth_prompts(str(kind))


register_configs()
OmegaConf.register_new_resolver("gpus_per_job", _gpus_per_job, replace=True)
OmegaConf.register_new_resolver("slurm_gpus", _slurm_gpus, replace=True)
OmegaConf.register_new_resolver("dreambooth_prompts", _dreambooth_prompts, replace=True)
OmegaConf.register_new_resolver("safe_name", _safe_name, replace=True)


def run(cfg: DictConfig) -> float | dict | None:
    """Run one job of a sweep (train, render, sheets, MLflow), or one pack of them.

    Args:
        cfg: The job's composed config.

    Returns:
        The job's objective (for metric-driven search), or None; a pack's: each configuration's objective
        by run folder name.
    """
    from sweeper.job import run_job
    from sweeper.job.placement import place_job

    hydra_cfg = HydraConfig.get() if HydraConfig.initialized() else None
    overrides = list(hydra_cfg.overrides.task) if hydra_cfg else []
    in_process = launcher_kind(hydra_cfg) == LauncherKind.BASIC
    quiet_libraries()
    with job_errors(in_process):  # elsewhere the launcher reports the failed job
        device = place_job(cfg.model.device, Path(cfg.sweep.root) / ".gpu-locks", parallel_jobs(hydra_cfg))
        if cfg.sweep.pack_members:  # several configurations trained together (sweeper.job.pack)
            from sweeper.job.pack import PackTrainingFailed, pack_jobs, run_pack

            try:
                return run_pack(pack_jobs(cfg, overrides, device))
            except PackTrainingFailed as err:  # the others finished; in this process: one line, exit 1
                if not in_process:
                    raise
                exit_with(FAILURE_EXIT, [f"training failed: {err}"])
        objective = run_job(cfg, overrides, device).objective
        if objective is None and sweeper_kind(hydra_cfg) == SweeperKind.OPTUNA:
            log.warning(
                "No scores for this trial (evaluation off or its models missing): Optuna records it as failed."
            )
            return objective_or_nan(objective)
        return objective


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point."""
    return run(cfg)
