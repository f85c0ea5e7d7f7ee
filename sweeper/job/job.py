"""One job of a sweep: train one LoRA, render its grid, draw its sheets, mirror it to MLflow.

The run folder is the source of truth and every stage skips what is already there: a rerun of a sweep
skips finished trainings and pictures, resumes an interrupted training from its last checkpoint, and
takes the LoRA of a shorter run from a longer run's checkpoint (step-axis reuse). Nothing finished is
rewritten; a folder holding work done under other settings is an error, not an overwrite.
"""

from __future__ import annotations

import functools
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from lora_core.adapters import find_weights_file
from lora_core.cache import default_cache_dir
from lora_core.data.captions import captions_digest
from lora_core.errors import UserInputError
from lora_core.models import ModelSource, dtype_name, load_pipeline, model_identity
from lora_core.training import checkpoint_dir, find_checkpoint, incompatibility, list_checkpoints, train_lora
from lora_core.training.loss_log import read_rows
from sweeper.config.spec import JobSpec, build_job
from sweeper.disk.layout import RunFolder, SweepFolder
from sweeper.job.preemption import HeldSignals
from sweeper.planning.plan import SweepPlan
from sweeper.tracking.helper import TrackerProxy, open_tracker
from sweeper.tracking.store import tracking_uri
from sweeper.tracking.tracker import StepLogger, Tracker

log = logging.getLogger(__name__)


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
    """Runs the stages of one job.

    Args:
        spec: The job's checked values (``build_job``), with the device it was placed on.
        cfg: The job's composed config (for what is recorded and logged with the run).
        overrides: The job's Hydra overrides (recorded with the run).
    """

    def __init__(self, spec: JobSpec, cfg: DictConfig, overrides: list[str] | None = None):
        self.cfg = cfg
        self.overrides = list(overrides or [])
        self.spec = spec
        self.plan = SweepPlan.load(self.spec.sweep_dir)
        varying = self.plan.varying if self.plan else []
        self.run_dir = self.spec.run_dir(cfg.sweep.run_dir_template, varying)
        entry = self.plan.jobs.get(self.run_dir.name, {}) if self.plan else {}
        extra = [
            s for s in entry.get("extra_checkpoint_steps", []) if s <= self.spec.settings.max_train_steps
        ]
        if extra:
            s = self.spec.settings
            s.checkpoint_steps = tuple(sorted(set(s.checkpoint_steps) | set(extra)))
        self.folder = RunFolder(self.run_dir)
        self.lora_dir = self.folder.lora_dir
        self.result = JobResult(run_dir=self.run_dir, images_total=len(self.spec.cells))
        self.tracker: Tracker | TrackerProxy | None = None
        self.new_pictures: list[Path] = []
        self.mlflow_run: str | None = None

    # ---- the stages --------------------------------------------------------------------------------------
    def run(self) -> JobResult:
        """Train (or reuse), render, draw sheets and log; returns the result."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._check_folder_matches()
        self._write_config()
        if self.spec.stop_at is not None:
            return self.run_rung()
        # The store opens (in MLflow's helper process, sweeper.tracking.helper) while the pipeline loads.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow-start") as pool:
            tracking = pool.submit(self._start_tracking)
            started = time.perf_counter()
            pipe = load_pipeline(self.model)
            self.result.timings["load_seconds"] = time.perf_counter() - started
            already_logged = tracking.result()
        self.train(pipe)
        self.render(pipe)
        for step in self.spec.steps:
            self.render_step(pipe, step)
        self.draw_sheets()
        self.evaluate()
        self._save_record("done")
        if not already_logged:
            self.log_to_mlflow()
        elif self.new_pictures:  # a rerun rendered cells added to the grid: add them to the logged run
            self.log_to_mlflow(pictures=self.new_pictures)
        return self.result

    def run_rung(self) -> JobResult:
        """A halving rung: train to ``sweep.stop_at_step`` only, render and score the grid there.

        The rung's objective is the job's; ``run.json`` says ``status: rung`` until a later rung finishes
        the run. MLflow hears of rungs from the halving sweeper, which decides what they mean.
        """
        pipe = load_pipeline(self.model)
        self.train(pipe, until=self.spec.stop_at)
        self.result.objective = self.render_step(pipe, self.spec.stop_at)
        self._save_record("rung")
        self.folder.update_record(rung_step=self.spec.stop_at)
        return self.result

    def render_step(self, pipe, step: int) -> float | None:
        """Render, draw and score the grid from the checkpoint at ``step`` into ``step-<n>/``.

        Returns:
            The objective of the step's grid, or None without scores.
        """
        from sweeper.job.grids import render_missing
        from sweeper.views.sheets import draw_run_sheets

        started = time.perf_counter()
        grids = self._grids(self.folder.step(step), checkpoint_dir(self.lora_dir, step))
        for folder, lora in grids:
            written = render_missing(pipe, folder, lora, self.spec.cells, self.spec.render)
            self.result.images_rendered += len(written)
            draw_run_sheets(folder.path, self.spec.cells, self.cfg.render.sheet_thumb)
        objective = self._score_grids([folder for folder, _ in grids])
        self.result.timings[f"render_seconds/step-{step}"] = time.perf_counter() - started
        return objective

    def train(self, pipe, until: int | None = None) -> None:
        """Train the LoRA (to step ``until`` only, if given) unless that is already in the run folder."""
        if until is not None and until in list_checkpoints(self.lora_dir):
            log.info("%s: checkpoint at step %d already trained.", self.run_dir.name, until)
            return
        if (
            until is None
            and self.folder.train_result_file.is_file()
            and find_weights_file(self.lora_dir) is not None
        ):
            log.info("%s: LoRA already trained, skipping training.", self.run_dir.name)
            return
        from lora_core.data.subject import load_subject_images

        started = time.perf_counter()
        images = load_subject_images(
            self._instance_dir(), self.spec.settings.resolution, self.spec.settings.center_crop
        )
        captions = self.spec.read_captions(self._instance_dir())
        class_images = self._class_images(pipe)
        checkpoint = find_checkpoint(self._training_dirs(), self.spec.settings, self._identity, up_to=until)
        steps = StepLogger(self.tracker, self.mlflow_run) if self.tracker else None
        if checkpoint is not None:
            log.info("%s: continuing from %s", self.run_dir.name, checkpoint)
            self.result.resumed_from = str(checkpoint)
            if steps:
                steps.add_history(read_rows(checkpoint))
        with HeldSignals() as should_stop:  # a time limit or preemption stops training between two steps
            train_lora(
                pipe,
                images,
                self.spec.settings,
                self.lora_dir,
                resume_from=checkpoint,
                class_images=class_images,
                on_step=steps,
                metadata=self._lora_metadata(),
                identity=self._identity,
                until=until,
                should_stop=should_stop,
                captions=captions,
            )
        if steps:
            steps.flush()
        self.result.trained = True
        self.result.timings["train_seconds"] = time.perf_counter() - started

    def render(self, pipe) -> None:
        """Render the grids' missing pictures (existing ones are kept as they are): one per ``render.weights``."""
        from sweeper.job.grids import render_missing

        self._check_render_settings()
        started, rendered = time.perf_counter(), 0
        for folder, lora in self._grids(self.folder, self.lora_dir):
            label = self.run_dir.name if folder == self.folder else f"{self.run_dir.name}/{folder.name}"
            written = render_missing(pipe, folder, lora, self.spec.cells, self.spec.render, f"render {label}")
            self.new_pictures += written
            rendered += len(written)
        if rendered:
            seconds = time.perf_counter() - started
            self.result.images_rendered = rendered
            self.result.timings.update(render_seconds=seconds, images_per_second=rendered / seconds)

    def evaluate(self) -> None:
        """Score every picture not yet in ``scores.csv`` (DINO, CLIP-I, CLIP-T) and set the objective."""
        if self.cfg.eval.enabled and self.spec.cells:
            started = time.perf_counter()
            self.result.objective = self._score_grids(
                [folder for folder, _ in self._grids(self.folder, self.lora_dir)]
            )
            self.result.timings["eval_seconds"] = time.perf_counter() - started

    def _score_grids(self, grids: list[RunFolder]) -> float | None:
        """Score the pictures of each grid not yet in its ``scores.csv``; the objective of the first.

        Returns:
            The objective of the run folder's own grid (the first: it decides), or None when evaluation is
            off or the grid is empty.
        """
        from sweeper.job.evaluation import evaluate_run

        if not (self.cfg.eval.enabled and self.spec.cells):
            return None
        objectives = [
            evaluate_run(folder.path, self.spec.cells, self._instance_dir(), self.cfg, self.spec.model.device)
            for folder in grids
        ]
        return objectives[0]  # the run folder's own grid decides

    def draw_sheets(self) -> None:
        """One contact sheet per prompt and guidance: rows UNet scale, columns text-encoder scale."""
        from sweeper.job.step_grids import step_rows
        from sweeper.job.weights_grids import weights_rows
        from sweeper.views.sheets import draw_rows_sheets, draw_run_sheets

        thumb, cells = self.cfg.render.sheet_thumb, self.spec.cells
        sheets = draw_run_sheets(self.run_dir, cells, thumb)
        steps = step_rows(self.folder, self.spec.settings.max_train_steps)
        sheets += draw_rows_sheets(self.folder, steps, cells, thumb, "training step", self.folder.step_sheet)
        if self.spec.weights == "both":
            sheets += draw_run_sheets(self.folder.ema.path, cells, thumb)
            weights = weights_rows(self.folder)
            sheets += draw_rows_sheets(
                self.folder, weights, cells, thumb, "LoRA weights", self.folder.weights_sheet
            )
        self.result.sheets = [str(p) for p in sheets]

    # ---- helpers -----------------------------------------------------------------------------------------
    @functools.cached_property
    def model(self) -> ModelSource:
        """The base model this job loads: ``tiny``/``world`` resolved on first use (built or checked)."""
        return self.spec.base_model()

    def _grids(self, folder: RunFolder, lora: Path) -> list[tuple[RunFolder, Path]]:
        """(grid folder, adapter folder) of each grid ``render.weights`` asks for (``weight_grids``)."""
        from sweeper.job.weights_grids import weight_grids

        return weight_grids(folder, lora, self.spec.weights)

    def _instance_dir(self) -> Path:
        if self.spec.instance_dir is not None:
            return self.spec.instance_dir
        from lora_core.embedded.drawn_subject import ensure_drawn_subject

        data = self.cfg.data
        return ensure_drawn_subject(default_cache_dir(), count=data.drawn_count, seed=data.drawn_seed)

    def _class_images(self, pipe) -> list | None:
        spec = self.spec.class_images
        if spec is None:
            return None
        from lora_core.data.class_images import ensure_class_images
        from lora_core.data.subject import load_subject_images

        paths = ensure_class_images(pipe, spec, model_identity(self.model), default_cache_dir())
        return load_subject_images(paths[0].parent, spec.resolution)[: spec.count]

    def _training_dirs(self) -> list[Path]:
        """This run's training folder first, then the other runs' of the sweep (for step-axis reuse)."""
        others = [
            p.parent for p in SweepFolder(self.spec.sweep_dir).checkpoint_dirs() if p.parent != self.lora_dir
        ]
        return [self.lora_dir, *others] if self.cfg.sweep.reuse_steps else [self.lora_dir]

    @functools.cached_property
    def _identity(self) -> dict:
        """What the weights depend on besides the training settings: base model and pictures."""
        spec, base = self.spec.class_images, model_identity(self.model)
        identity = {
            "base_model": base,
            "instance_dir": str(self._instance_dir().resolve()),
            "class_images": spec.cache_key(base, dtype_name(self.model)) if spec else None,
        }
        if self.spec.settings.caption_mode != "instance_prompt":  # captions are read from files: hash them
            identity["captions"] = captions_digest(self.spec.read_captions(self._instance_dir()))
        return identity

    def _lora_metadata(self) -> dict:
        return {
            **{f"identity.{k}": v for k, v in self._identity.items()},
            "base_model_path": self.spec.model.path,
            "token": self.cfg.data.token,
            "class_name": self.cfg.data.class_name,
            "sweep": self.cfg.sweep.name,
            "run_dir": self.run_dir.name,
        }

    def _check_folder_matches(self) -> None:
        """Refuse to mix work of other settings into a folder that already holds a trained LoRA."""
        if find_weights_file(self.lora_dir) is None:
            return
        reason = incompatibility(self.lora_dir, self.spec.settings, self._identity, finished=True)
        if reason:
            raise UserInputError(
                f"{self.run_dir}: holds a LoRA {reason}. "
                "Nothing was changed; choose another sweep.name or move that folder away."
            )

    def _check_render_settings(self) -> None:
        # The run folder's own pictures: render.weights raw and both render them with the raw weights.
        weights = "ema" if self.spec.weights == "ema" else "raw"
        wanted = {**self.spec.render.__dict__, "model": model_identity(self.model), "weights": weights}
        saved = self.folder.read_render()
        if saved is not None:
            saved.setdefault("weights", "raw")  # written before the weights axis existed
            differs = [k for k in wanted if saved.get(k) != wanted[k]]
            if differs and self.folder.pictures():
                key = differs[0]
                raise UserInputError(
                    f"{self.run_dir}: its pictures were rendered with render.{key}={saved.get(key)!r}, not "
                    f"{wanted[key]!r}. Nothing was changed; choose another sweep.name or move the pictures away."
                )
        self.folder.write_render(wanted)

    def _write_config(self) -> None:
        cfg = {
            k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
            for k, v in self.cfg.items()
            if k != "hydra"
        }
        self.folder.write_config(cfg, self.overrides)

    def _save_record(self, status: str) -> None:
        record = {
            "status": status,
            "run_dir": self.run_dir.name,
            "sweep": self.cfg.sweep.name,
            "overrides": self.overrides,
            "base_model": self._identity["base_model"],  # the weights' content hash for world / tiny
            "settings": self.spec.settings.to_dict(),
            "render_weights": self.spec.weights,
            **(
                {"captions": self._captions_by_picture()}
                if self.spec.settings.caption_mode != "instance_prompt"
                else {}
            ),
            "cells": [c.__dict__ for c in self.spec.cells],
            "result": {k: str(v) if isinstance(v, Path) else v for k, v in self.result.__dict__.items()},
            "mlflow": {"uri": tracking_uri(self.cfg), "run_id": self.mlflow_run},
        }
        self.folder.write_record(record)

    def _captions_by_picture(self) -> dict[str, str]:
        from lora_core.data.subject import list_subject_images

        pictures = list_subject_images(self._instance_dir())
        return {
            p.name: c for p, c in zip(pictures, self.spec.read_captions(self._instance_dir()), strict=True)
        }

    # ---- MLflow ------------------------------------------------------------------------------------------
    def _start_tracking(self) -> bool:
        """Open the child run; returns True when a finished run for this folder is already logged."""
        if not (self.cfg.tracking.enabled and self.cfg.tracking.live):
            return True  # nothing to log here (tracking.live=false: the sweep's end logs this run)
        self.tracker = open_tracker(self.cfg, self.spec.sweep_dir)
        parent = self.plan.parent_run_id if self.plan else None
        tags = {"sweep": self.cfg.sweep.name, "experiment_preset": str(self.cfg.experiment)}
        self.mlflow_run, finished = self.tracker.child_run(parent, self.run_dir.name, tags)
        self.result.mlflow_run_id = self.mlflow_run
        return finished

    def log_to_mlflow(self, pictures: list[Path] | None = None) -> None:
        """Mirror the run folder (or just ``pictures`` of it) into the job's MLflow run, then close it."""
        from sweeper.tracking.replay import log_run_folder

        if self.tracker is None or not self.tracker.active or not self.mlflow_run:
            return
        # Steps trained by this job went out live; a reused or already-trained LoRA's come from disk.
        log_run_folder(
            self.tracker,
            self.mlflow_run,
            self.run_dir,
            with_steps=not self.result.trained,
            log_images=self.cfg.tracking.log_images,
            log_adapters=self.cfg.tracking.log_adapters,
            pictures=pictures,
        )
        self.tracker.finish(self.mlflow_run)


def run_job(cfg: DictConfig, overrides: list[str] | None = None, device: str | None = None) -> JobResult:
    """Check the config and run one job (see ``Job``); ``device`` overrides ``model.device`` (placement)."""
    spec = build_job(cfg)
    if device is not None:
        spec.model = replace(spec.model, device=device)
    return Job(spec, cfg, overrides).run()
