"""One job's MLflow run: opened as a child of the sweep's run, fed live steps, then mirrored from disk."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from sweeper.tracking.helper import TrackerProxy, open_tracker
from sweeper.tracking.tracker import StepLogger, Tracker


class JobRun:
    """The MLflow run of one job (nothing is logged while ``tracking.enabled`` or ``tracking.live`` is off).

    Args:
        cfg: The job's composed config (``tracking.*``, ``sweep.name``, ``experiment``).
        sweep_dir: The sweep folder (where the store's helper runs from).
        run_dir: The job's run folder.
        parent_run_id: The sweep's MLflow run, if the sweep opened one.
        tags: More tags of the run (its pack: ``pack``, ``pack_size``).
    """

    def __init__(
        self,
        cfg: DictConfig,
        sweep_dir: Path,
        run_dir: Path,
        parent_run_id: str | None,
        tags: dict | None = None,
    ):
        self.cfg, self.sweep_dir, self.run_dir, self.parent_run_id = cfg, sweep_dir, run_dir, parent_run_id
        self.tags = dict(tags or {})
        self.tracker: Tracker | TrackerProxy | None = None
        self.run_id: str | None = None

    def start(self) -> bool:
        """Open the child run; returns True when a finished run for this folder is already logged."""
        if not (self.cfg.tracking.enabled and self.cfg.tracking.live):
            return True  # nothing to log here (tracking.live=false: the sweep's end logs this run)
        self.tracker = open_tracker(self.cfg, self.sweep_dir)
        tags = {"sweep": self.cfg.sweep.name, "experiment_preset": str(self.cfg.experiment), **self.tags}
        self.run_id, finished = self.tracker.child_run(self.parent_run_id, self.run_dir.name, tags)
        return finished

    def step_logger(self) -> StepLogger | None:
        """What sends each training step to the run, or None when the run is not open."""
        return StepLogger(self.tracker, self.run_id) if self.tracker else None

    def log(self, trained: bool, pictures: list[Path] | None = None) -> None:
        """Mirror the run folder (or just ``pictures`` of it) into the job's MLflow run, then close it.

        Args:
            trained: Whether this job trained: its steps went out live, so they are not sent again.
            pictures: Only these pictures (a rerun's new cells); None: the whole run folder.
        """
        from sweeper.tracking.replay import log_run_folder

        if self.tracker is None or not self.tracker.active or not self.run_id:
            return
        # Steps trained by this job went out live; a reused or already-trained LoRA's come from disk.
        log_run_folder(
            self.tracker,
            self.run_id,
            self.run_dir,
            with_steps=not trained,
            log_images=self.cfg.tracking.log_images,
            log_adapters=self.cfg.tracking.log_adapters,
            pictures=pictures,
        )
        self.tracker.finish(self.run_id)

    def fail(self) -> None:
        """Close the run as failed (its training diverged)."""
        if self.tracker is not None and self.tracker.active and self.run_id:
            self.tracker.finish(self.run_id, status="FAILED")
