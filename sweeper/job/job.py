"""One job of a sweep: train one LoRA, render its grid, draw its sheets, mirror it to MLflow.

The run folder is the source of truth and every stage skips what is already there: a rerun of a sweep
skips finished trainings and pictures, resumes an interrupted training from its last checkpoint, and
takes the LoRA of a shorter run from a longer run's checkpoint (step-axis reuse). Nothing finished is
rewritten; a folder holding work done under other settings is an error, not an overwrite.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

from omegaconf import DictConfig

from lora_core.models import load_pipeline
from sweeper.config.spec import JobSpec, build_job
from sweeper.disk.layout import RunFolder
from sweeper.job.context import JobContext
from sweeper.job.grids import JobGrids
from sweeper.job.record import save_record, write_config
from sweeper.job.training import JobTraining
from sweeper.planning.plan import SweepPlan, pack_record, pack_tags
from sweeper.tracking.job_run import JobRun


@dataclass
class JobResult:
    """What a job produced (also saved as ``run.json`` in the run folder).

    Attributes:
        run_dir: The run folder.
        trained: Whether this job trained (False: reused or already done).
        resumed_from: Checkpoint the training continued from, if any.
        images_rendered: Pictures rendered by this job.
        images_total: Pictures in the grid.
        sheets: Contact sheets written.
        mlflow_run_id: The job's MLflow run.
        timings: Seconds per stage.
        objective: A number to maximise (metric-driven search), or None.
    """

    run_dir: Path
    trained: bool = False
    resumed_from: str | None = None
    images_rendered: int = 0
    images_total: int = 0
    sheets: list[str] = field(default_factory=list)
    mlflow_run_id: str | None = None
    timings: dict = field(default_factory=dict)
    objective: float | None = None


class Job:
    """Runs the stages of one job: ``training``, ``grids``, the ``record`` and its MLflow run.

    Args:
        spec: The job's checked values (``build_job``), with the device it was placed on.
        cfg: The job's composed config (for what is recorded and logged with the run).
        overrides: The job's Hydra overrides (recorded with the run).
    """

    def __init__(self, spec: JobSpec, cfg: DictConfig, overrides: list[str] | None = None):
        plan = SweepPlan.load(spec.sweep_dir)
        varying = plan.varying if plan else []
        run_dir = spec.run_dir(cfg.sweep.run_dir_template, varying)
        entry = plan.jobs.get(run_dir.name, {}) if plan else {}
        spec.settings.add_checkpoint_steps(entry.get("extra_checkpoint_steps", []))
        self.context = JobContext(spec, cfg, RunFolder(run_dir), list(overrides or []))
        self.training = JobTraining(self.context)
        self.grids = JobGrids(self.context)
        self.pack = pack_record(plan, run_dir.name) if plan else None
        parent = plan.parent_run_id if plan else None
        self.mlflow = JobRun(cfg, spec.sweep_dir, run_dir, parent, pack_tags(self.pack))
        self.result = JobResult(run_dir=run_dir, images_total=len(spec.cells))

    def prepare(self) -> None:
        """Create the run folder, refuse one trained otherwise, and record the config."""
        job = self.context
        job.run_dir.mkdir(parents=True, exist_ok=True)
        self.training.check_folder_matches()
        write_config(job)

    def run(self) -> JobResult:
        """Train (or reuse), render, draw sheets and log; returns the result."""
        self.prepare()
        if self.context.spec.stop_at is not None:
            return self.run_rung()
        # The store opens (in MLflow's helper process, sweeper.tracking.helper) while the pipeline loads.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow-start") as pool:
            tracking = pool.submit(self.mlflow.start)
            pipe = self.load_pipeline()
            already_logged = tracking.result()
        self.result.mlflow_run_id = self.mlflow.run_id
        self.training.train(pipe, self.result, self.mlflow.step_logger())
        return self.finish(pipe, already_logged)

    def load_pipeline(self):
        """The base pipeline (process-wide cached), its load time noted."""
        started = time.perf_counter()
        pipe = load_pipeline(self.context.model)
        self.result.timings["load_seconds"] = time.perf_counter() - started
        return pipe

    def finish(self, pipe, already_logged: bool, rendered: list[Path] | None = None) -> JobResult:
        """After training: render the grids, draw the sheets, score, record and log the run.

        Args:
            pipe: The loaded base pipeline.
            already_logged: Whether its MLflow run holds this run finished already.
            rendered: Pictures of its grid rendered already, with its pack's (they count as new ones).
        """
        job = self.context
        new_pictures = list(rendered or []) + self.grids.render(pipe, self.result)
        for step in job.spec.steps:
            self.grids.render_step(pipe, step, self.result)
        self.result.sheets = [str(p) for p in self.grids.draw_sheets()]
        self.grids.evaluate(self.result)
        self._save_record("done")
        if not already_logged:
            self.mlflow.log(self.result.trained)
        elif new_pictures:  # a rerun rendered cells added to the grid: add them to the logged run
            self.mlflow.log(self.result.trained, pictures=new_pictures)
        return self.result

    def fail(self, reason: str) -> None:
        """Record that this job's training failed (``run.json`` status ``failed``) and close its MLflow run."""
        self.result.timings["failure"] = reason
        self._save_record("failed")
        self.mlflow.fail()

    def run_rung(self) -> JobResult:
        """A halving rung: train to ``sweep.stop_at_step`` only, render and score the grid there.

        The rung's objective is the job's; ``run.json`` says ``status: rung`` until a later rung finishes
        the run. MLflow hears of rungs from the halving sweeper, which decides what they mean.
        """
        pipe = self.load_pipeline()
        self.training.train(pipe, self.result, until=self.context.spec.stop_at)
        return self.finish_rung(pipe)

    def finish_rung(self, pipe) -> JobResult:
        """After a rung's training: render and score its grid, record the rung."""
        job = self.context
        self.result.objective = self.grids.render_step(pipe, job.spec.stop_at, self.result)
        self._save_record("rung")
        job.folder.update_record(rung_step=job.spec.stop_at)
        return self.result

    def _save_record(self, status: str) -> None:
        job = self.context
        cells = self.grids.first_grid_cells()
        save_record(job, status, self.result, self.training.identity, self.mlflow.run_id, self.pack, cells)


def run_job(cfg: DictConfig, overrides: list[str] | None = None, device: str | None = None) -> JobResult:
    """Check the config and run one job (see ``Job``); ``device`` overrides ``model.device`` (placement)."""
    spec = build_job(cfg)
    if device is not None:
        spec.model = replace(spec.model, device=device)
    return Job(spec, cfg, overrides).run()
