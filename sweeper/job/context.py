"""What one job works on: its checked values, its composed config and its run folder.

The job's stages (``training``, ``grids``, ``record``) and its MLflow run read these values from one
``JobContext`` instead of each keeping a copy; the base model and the subject folder are resolved on first use.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig

from lora_core.cache import default_cache_dir
from lora_core.models import ModelSource
from sweeper.config.spec import JobSpec
from sweeper.disk.layout import RunFolder


@dataclass
class JobContext:
    """The values every stage of one job reads.

    Attributes:
        spec: The job's checked values (``build_job``), with the device it was placed on.
        cfg: The job's composed config (for what is recorded and logged with the run).
        folder: The job's run folder.
        overrides: The job's Hydra overrides (recorded with the run).
    """

    spec: JobSpec
    cfg: DictConfig
    folder: RunFolder
    overrides: list[str] = field(default_factory=list)

    @property
    def run_dir(self) -> Path:
        """The run folder's path."""
        return self.folder.path

    @property
    def lora_dir(self) -> Path:
        """The training folder (``<run>/lora/``)."""
        return self.folder.lora_dir

    @functools.cached_property
    def model(self) -> ModelSource:
        """The base model this job loads: ``tiny``/``world`` resolved on first use (built or checked)."""
        return self.spec.base_model()

    @functools.cached_property
    def instance_dir(self) -> Path:
        """The subject pictures: ``data.instance_dir``, or the drawn default subject (drawn on first use)."""
        if self.spec.instance_dir is not None:
            return self.spec.instance_dir
        from lora_core.embedded.drawn_subject import ensure_drawn_subject

        data = self.cfg.data
        return ensure_drawn_subject(default_cache_dir(), count=data.drawn_count, seed=data.drawn_seed)
