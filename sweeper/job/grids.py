"""A job's grids: render the cells missing from each grid folder, draw their sheets, score them.

A run has one grid per ``render.weights`` (the run folder's own and, for ``both``, the EMA grid in
``<run>/ema/``; see ``weight_grids``) and the same again in ``<run>/step-<n>/`` for each of ``render.steps``
(the checkpoint axis). Each is rendered by ``render_missing``: pictures already there are kept as they are.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from tqdm.auto import tqdm

from lora_core.adapters import find_weights_file
from lora_core.atomic import atomic_path
from lora_core.errors import UserInputError
from lora_core.models import model_identity
from lora_core.render import GridRenderer, RenderOptions
from lora_core.training import EMA_DIR, checkpoint_dir
from sweeper.disk.layout import RunFolder
from sweeper.disk.naming import grid_label, grid_name
from sweeper.job.context import JobContext
from sweeper.planning.grid import GridCell

log = logging.getLogger(__name__)


def render_missing(
    pipe,
    folder: RunFolder,
    lora: Path,
    cells: list[GridCell],
    options: RenderOptions,
    progress: str | None = None,
) -> list[Path]:
    """Render the cells whose picture is not in ``folder`` yet, with the adapter in ``lora``.

    Pictures already there are kept as they are; each new one is written atomically.

    Args:
        pipe: The loaded base pipeline (borrowed).
        folder: Where the pictures go (the run folder, one of its step folders, or an EMA grid).
        lora: A folder holding the adapter weights (the training folder, a checkpoint, or its ``ema/``).
        cells: The grid.
        options: Render settings.
        progress: A progress bar's label (``render 1e-4;1e-5``); None for no bar.

    Returns:
        The pictures written now.
    """
    missing = [c for c in cells if not folder.picture(c.file_name).is_file()]
    written: list[Path] = []
    if not missing:
        return written
    folder.path.mkdir(parents=True, exist_ok=True)
    by_render_cell = {c.render_cell(): c for c in missing}
    bar = tqdm(total=len(missing), desc=progress, unit="img", dynamic_ncols=True, disable=progress is None)
    with GridRenderer(pipe, lora, options) as renderer, bar:
        for render_cell, image in renderer.render(by_render_cell):
            path = folder.picture(by_render_cell[render_cell].file_name)
            with atomic_path(path) as tmp:
                image.save(tmp, format="PNG")
            written.append(path)
            bar.update(1)
    return written


def weight_grids(folder: RunFolder, lora: Path, weights: str) -> list[tuple[RunFolder, Path]]:
    """Where each grid of ``folder`` goes and which adapter folder renders it.

    Args:
        folder: The run folder or one of its step folders.
        lora: The adapter folder of the raw weights (``lora/`` or a checkpoint); the EMA's is its ``ema/``.
        weights: ``render.weights``: raw, ema or both.

    Returns:
        (grid folder, adapter folder) pairs, the run folder's own grid first.

    Raises:
        UserInputError: The EMA weights are asked for but the training saved none.
    """
    raw, ema = lora, lora / EMA_DIR
    if weights != "raw" and find_weights_file(ema) is None:
        raise UserInputError(
            f"render.weights={weights}: {ema} holds no adapter weights: this LoRA was trained without "
            "train.ema_decay. Use render.weights=raw, or train with train.ema_decay under another sweep.name."
        )
    if weights == "both":
        return [(folder, raw), (folder.ema, ema)]
    return [(folder, ema if weights == "ema" else raw)]


def render_together(grids: list[JobGrids], pipe, results: list, step: int | None = None) -> list[list[Path]]:
    """Render the missing pictures of several jobs' grids in shared batches (``lora_core.packs.render``).

    The jobs of a pack share the base model and the render settings: each picture is rendered with its own
    job's adapter and scales, several jobs' cells to one denoising call. Adapters that cannot render
    together (LoHa, LoKr, DoRA on convolutions) leave their pictures to each job's own ``render``.

    Args:
        grids: The jobs' grids.
        pipe: The loaded base pipeline (borrowed).
        results: Each job's ``JobResult`` (pictures rendered and the time are added).
        step: Render the grids of the checkpoint at this step (``<run>/step-<n>/``); None: the final LoRA's.

    Returns:
        Per job, the pictures written now.
    """
    from lora_core.packs.render import NotPackable, PackRenderer

    entries = []  # (job index, grid folder, adapter folder, missing cells)
    for i, grid in enumerate(grids):
        job = grid.job
        folder = grid.home if step is None else grid.home.step(step)
        lora_dir = job.lora_dir if step is None else checkpoint_dir(job.lora_dir, step)
        for into, lora in grid._grids(folder, lora_dir):
            missing = [c for c in job.spec.cells if not into.picture(c.file_name).is_file()]
            if missing:
                entries.append((i, into, lora, missing))
    written: list[list[Path]] = [[] for _ in grids]
    if len(entries) < 2:
        return written
    cells = {}
    for e, (i, into, _, missing) in enumerate(entries):
        for cell in missing:
            cells[(e, cell.render_cell())] = (i, into, cell)
    started = time.perf_counter()
    try:
        with (
            PackRenderer(pipe, [lora for _, _, lora, _ in entries], grids[0].job.spec.render) as renderer,
            tqdm(
                total=len(cells), desc=f"render {len(entries)} grids together", unit="img", dynamic_ncols=True
            ) as bar,
        ):
            for e, render_cell, image in renderer.render(cells):
                i, into, cell = cells[(e, render_cell)]
                into.path.mkdir(parents=True, exist_ok=True)
                path = into.picture(cell.file_name)
                with atomic_path(path) as tmp:
                    image.save(tmp, format="PNG")
                written[i].append(path)
                bar.update(1)
    except NotPackable as err:
        log.info("The grids render one job at a time: %s", err)
        return written
    seconds = time.perf_counter() - started
    for result, pictures in zip(results, written, strict=True):
        if pictures:
            result.images_rendered += len(pictures)
            key = "render_seconds" if step is None else f"render_seconds/step-{step}"
            result.timings[key] = seconds  # the pack's: its grids rendered together
    return written


class JobGrids:
    """Renders, draws and scores one job's grids.

    Args:
        job: The job's values.
    """

    def __init__(self, job: JobContext):
        self.job = job
        self._home: RunFolder | None = None

    def render(self, pipe, result) -> list[Path]:
        """Render the grids' missing pictures (existing ones are kept as they are): one per ``render.weights``.

        Returns:
            The pictures written now.
        """
        job, home = self.job, self.home
        started, written = time.perf_counter(), []
        for folder, lora in self._grids(home, job.lora_dir):
            label = (
                job.run_dir.name
                if folder == job.folder
                else f"{job.run_dir.name}/{folder.path.relative_to(job.folder.path)}"
            )
            written += render_missing(pipe, folder, lora, job.spec.cells, job.spec.render, f"render {label}")
        if written:
            seconds = time.perf_counter() - started
            result.images_rendered = len(written)
            result.timings.update(render_seconds=seconds, images_per_second=len(written) / seconds)
        return written

    def render_step(self, pipe, step: int, result) -> float | None:
        """Render, draw and score the grid from the checkpoint at ``step`` into ``step-<n>/``.

        Returns:
            The objective of the step's grid, or None without scores.
        """
        from sweeper.views.sheets import draw_run_sheets

        job = self.job
        started = time.perf_counter()
        grids = self._grids(self.home.step(step), checkpoint_dir(job.lora_dir, step))
        for folder, lora in grids:
            written = render_missing(pipe, folder, lora, job.spec.cells, job.spec.render)
            result.images_rendered += len(written)
            draw_run_sheets(folder.path, job.spec.cells, job.cfg.render.sheet_thumb, *self._sheet_axes())
        objective = self._score_grids([folder for folder, _ in grids])
        result.timings[f"render_seconds/step-{step}"] = time.perf_counter() - started
        return objective

    def evaluate(self, result) -> None:
        """Score every picture not yet in ``scores.csv`` (DINO, CLIP-I, CLIP-T) and set the objective.

        The objective is the run folder's own grid's: a second grid (another sampler, ...) is scored in its
        folder and leaves the configuration's objective, what searches and the sweep's best read, as it was.
        """
        job = self.job
        if job.cfg.eval.enabled and job.spec.cells:
            started = time.perf_counter()
            result.objective = self._score_grids(
                [folder for folder, _ in self._grids(self.home, job.lora_dir)]
            )
            if self.home != job.folder:
                from sweeper.job.evaluation import evaluate_run

                first = [GridCell(**c) for c in job.folder.cells()]  # all scored: nothing loads
                result.objective = evaluate_run(
                    job.folder.path, first, job.instance_dir, job.cfg, job.spec.model.device
                )
            result.timings["eval_seconds"] = time.perf_counter() - started

    def draw_sheets(self) -> list[Path]:
        """One contact sheet per prompt and value of the other axes, and the step and weights sheets.

        A run sheet's rows and columns are ``render.sheet_rows`` and ``render.sheet_cols`` (UNet scale and
        text-encoder scale by default: a sheet per guidance).

        Returns:
            The sheets written: the run's, its steps' and (``render.weights=both``) its weights'.
        """
        from sweeper.views.sheets import draw_rows_sheets, draw_run_sheets, step_rows, weights_rows

        job = self.job
        thumb, cells, folder = job.cfg.render.sheet_thumb, job.spec.cells, self.home
        sheets = draw_run_sheets(folder.path, cells, thumb, *self._sheet_axes())
        steps = step_rows(folder, job.spec.settings.max_train_steps)
        sheets += draw_rows_sheets(folder, steps, cells, thumb, "training step", folder.step_sheet)
        if job.spec.weights == "both":
            sheets += draw_run_sheets(folder.ema.path, cells, thumb, *self._sheet_axes())
            weights = weights_rows(folder)
            sheets += draw_rows_sheets(folder, weights, cells, thumb, "LoRA weights", folder.weights_sheet)
        return sheets

    def _sheet_axes(self) -> tuple[str, str]:
        """The rows' and columns' axes of the run's sheets (``render.sheet_rows``, ``render.sheet_cols``)."""
        from sweeper.planning.grid import sheet_axes

        return sheet_axes(self.job.cfg.render)

    def _score_grids(self, grids: list[RunFolder]) -> float | None:
        """Score the pictures of each grid not yet in its ``scores.csv``; the objective of the first.

        Returns:
            The objective of the run folder's own grid (the first: it decides), or None when evaluation is
            off or the grid is empty.
        """
        from sweeper.job.evaluation import evaluate_run

        job = self.job
        if not (job.cfg.eval.enabled and job.spec.cells):
            return None
        objectives = [
            evaluate_run(folder.path, job.spec.cells, job.instance_dir, job.cfg, job.spec.model.device)
            for folder in grids
        ]
        return objectives[0]  # the run folder's own grid decides

    def _grids(self, folder: RunFolder, lora: Path) -> list[tuple[RunFolder, Path]]:
        """(grid folder, adapter folder) of each grid ``render.weights`` asks for (``weight_grids``)."""
        return weight_grids(folder, lora, self.job.spec.weights)

    @property
    def home(self) -> RunFolder:
        """Where this job's grid goes: the run folder, or one of its second grids (``grid-<...>/``).

        The run folder's pictures were drawn with the settings in its ``render.json``; a rerun that would
        draw them otherwise (another sampler, sampling steps, negative prompt, resolution) draws its grid
        into ``grid-<what differs>/`` with the same LoRA, and the first grid's pictures stay as they are.
        More prompts or scales go into whichever grid has these settings.

        Raises:
            UserInputError: The pictures of the base model's identity differ (a LoRA trained otherwise), or
                the second grid's folder holds pictures drawn otherwise still.
        """
        if self._home is None:
            self._home = self._find_home()
        return self._home

    def first_grid_cells(self) -> list[dict] | None:
        """The cells ``run.json`` keeps for the run folder's own grid.

        Its own when this job draws a second grid (whose cells are in its folder); None (the job's) otherwise.
        """
        if self._home is None or self._home == self.job.folder:
            return None
        return self.job.folder.cells()

    def _render_settings(self) -> dict:
        """Every setting that changes how the pictures are drawn, as ``render.json`` holds them."""
        job = self.job
        # The run folder's own pictures: render.weights raw and both render them with the raw weights.
        weights = "ema" if job.spec.weights == "ema" else "raw"
        drawing = {k: v for k, v in job.spec.render.__dict__.items() if k not in _SAME_PICTURES}
        wanted = {**drawing, "model": model_identity(job.model), "weights": weights}
        for key, values in (
            ("samplers", [c.sampler for c in job.spec.cells]),
            ("sampling_steps", [c.steps for c in job.spec.cells]),
        ):
            values = list(dict.fromkeys(v for v in values if v is not None))
            if len(values) > 1:  # an axis of the grid (its pictures' names say which value)
                wanted[key] = values
        text_2 = list(dict.fromkeys(c.text_2_scale for c in job.spec.cells if c.text_2_scale is not None))
        if text_2:  # SDXL's second text encoder's own scales: one value draws otherwise too
            wanted["text_2_scales"] = text_2
        return wanted

    def _find_home(self) -> RunFolder:
        job = self.job
        wanted = self._render_settings()
        saved = job.folder.read_render()
        if saved is not None and job.folder.pictures():
            saved.setdefault("weights", "raw")  # written before the weights axis existed
            keys = dict.fromkeys(["samplers", "sampling_steps", *wanted, *saved])  # a changed axis first
            differs = {
                k: wanted.get(k) for k in keys if k not in _SAME_PICTURES and saved.get(k) != wanted.get(k)
            }
            if "model" in differs:
                raise UserInputError(
                    f"{job.run_dir}: its pictures were rendered from model {saved.get('model')!r}, not "
                    f"{wanted['model']!r}. Nothing was changed; choose another sweep.name or move the folder away."
                )
            for axis, one in (("samplers", "scheduler"), ("sampling_steps", "num_inference_steps")):
                if wanted.get(axis):  # the one-value form is the axis's first value: the axis names it
                    differs.pop(one, None)
            if differs:
                return self._second_grid(differs, wanted)
        job.folder.write_render(wanted)
        return job.folder

    def _second_grid(self, differs: dict, wanted: dict) -> RunFolder:
        """Set up ``grid-<what differs>/`` for this job's grid (its ``render.json`` and ``run.json``)."""
        job = self.job
        grid = job.folder.other_grid(grid_name(differs))
        saved = grid.read_render()
        if saved is not None and grid.pictures():
            key = next((k for k in dict.fromkeys([*wanted, *saved]) if saved.get(k) != wanted.get(k)), None)
            if key is not None:
                raise UserInputError(
                    f"{grid.path}: its pictures were rendered with render.{key}={saved.get(key)!r}, not "
                    f"{wanted.get(key)!r}. Nothing was changed; move that folder away to render it again."
                )
        label = grid_label(differs)
        grid.path.mkdir(parents=True, exist_ok=True)
        grid.write_render(wanted)
        grid.write_record({"grid": label, "render": differs, "cells": [c.__dict__ for c in job.spec.cells]})
        log.info(
            "%s: its grid was drawn with other render settings: this one (%s) goes to %s/, drawn with the "
            "trained LoRA; the first grid's pictures stay as they are.",
            job.run_dir.name,
            label,
            grid.name,
        )
        return grid


# Render settings that draw the same pictures: the batch size, and fusing (the same within rounding).
_SAME_PICTURES = frozenset({"batch_size", "fuse"})
