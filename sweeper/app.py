"""The Hydra entry point: ``python -m sweeper [-m] experiment=<preset> key=value ...``.

A thin ``@hydra.main`` around ``run(cfg)``: everything else takes plain values.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from lora_core.errors import UserInputError
from sweeper.schema import register_configs

log = logging.getLogger(__name__)


def _gpus_per_job(wanted: int = 1) -> int:
    """``${gpus_per_job:1}``: that many GPUs for a job where the machine has them, else 0."""
    import torch

    return min(int(wanted), torch.cuda.device_count())


# conf/ sits beside the packages (the project is installed editable); an absolute path works however
# the entry point is started (python -m sweeper, a launcher's worker, a test).
CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
register_configs()
OmegaConf.register_new_resolver("gpus_per_job", _gpus_per_job, replace=True)


def _quiet_libraries() -> None:
    """Keep the terminal for our own progress: no per-file loading bars from diffusers/transformers."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()


def run(cfg: DictConfig) -> float | None:
    """Run one job of a sweep (train, render, sheets, MLflow).

    Args:
        cfg: The job's composed config.

    Returns:
        The job's objective (for metric-driven search), or None.
    """
    from sweeper.gpu import pin_gpu
    from sweeper.job import run_job

    hydra_cfg = HydraConfig.get() if HydraConfig.initialized() else None
    overrides = list(hydra_cfg.overrides.task) if hydra_cfg else []
    in_process = hydra_cfg is None or "BasicLauncher" in str(hydra_cfg.launcher.get("_target_", ""))
    _quiet_libraries()
    try:
        pin_gpu(cfg)
        return run_job(cfg, overrides).objective
    except UserInputError as err:
        if not in_process:
            raise  # the launcher reports the failed job
        print(f"error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point."""
    return run(cfg)
