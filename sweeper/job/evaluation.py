"""Score a run's pictures with the DreamBooth metrics and keep the per-picture table beside them.

``scores.csv`` in the run folder has one row per picture (file, prompt, cell, seed, DINO, CLIP-I,
CLIP-T); a rerun scores only pictures not yet in it. ``reference_scores.json`` holds the subject's
real pictures scored against each other (the paper's "real images" row). Models are loaded once per
process; when they are not available evaluation is skipped with one warning line.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig
from PIL import Image

from lora_core.metrics import EvalModels, ImageScorer, clip_t_prompt, mean_scores, try_load_scorer
from lora_core.models import resolve_device
from sweeper.config.embedded_models import resolve_eval_model
from sweeper.disk.layout import RunFolder
from sweeper.planning.grid import GridCell
from sweeper.search.objective import objective_value, parse_objective

log = logging.getLogger(__name__)

_SCORERS: dict[EvalModels, ImageScorer | None] = {}


def scorer_for(cfg: DictConfig, model_device: str = "auto") -> ImageScorer | None:
    """The process's scorer for ``cfg.eval`` (None, after one warning, when its models are missing).

    ``eval.device=auto`` scores on ``model_device``, the device the job was placed on.
    """
    e = cfg.eval
    device = resolve_device(model_device if e.device == "auto" else e.device)
    models = EvalModels(
        resolve_eval_model(e.dino_model, "dino"),
        resolve_eval_model(e.clip_model, "clip"),
        e.local_files_only,
        device,
    )
    if models not in _SCORERS:
        _SCORERS[models] = try_load_scorer(models, e.batch_size)
    return _SCORERS[models]


def _real_pictures(instance_dir: Path) -> list[Image.Image]:
    from lora_core.data.subject import list_subject_images, open_rgb

    return [open_rgb(p) for p in list_subject_images(instance_dir)]


def reference_scores(scorer: ImageScorer, real: list[Image.Image]) -> dict:
    """DINO and CLIP-I of the real pictures against each other (every pair of different pictures)."""
    if len(real) < 2:
        return {}
    dino = scorer.dino_embeddings(real)
    clip = scorer.clip_image_embeddings(real)
    n = len(real)
    off_diagonal = lambda m: float((m.sum() - m.diagonal().sum()) / (n * (n - 1)))  # noqa: E731
    return {"dino": off_diagonal(dino @ dino.T), "clip_i": off_diagonal(clip @ clip.T), "pictures": n}


def evaluate_run(
    run_dir: Path, cells: list[GridCell], instance_dir: Path, cfg: DictConfig, device: str = "auto"
) -> float | None:
    """Score the run's unscored pictures and return the objective over all of them.

    Args:
        run_dir: The run folder.
        cells: The grid (pictures that exist are scored).
        instance_dir: The real subject pictures.
        cfg: The job's config (``eval``, ``data``).
        device: The device the job runs on (the scorer's, under ``eval.device=auto``).

    Returns:
        ``eval.objective`` over the run's mean scores, or None without scores.
    """
    rows = {row["file"]: row for row in RunFolder(run_dir).read_scores()}
    todo = [c for c in cells if c.file_name not in rows and (run_dir / c.file_name).is_file()]
    if todo:
        scorer = scorer_for(cfg, device)
        if scorer is None:
            return None
        real = _real_pictures(instance_dir)
        scorer.set_references(real)
        if not RunFolder(run_dir).reference_file.is_file():
            RunFolder(run_dir).write_reference(reference_scores(scorer, real))
        pictures = [Image.open(run_dir / c.file_name).convert("RGB") for c in todo]
        prompts = [clip_t_prompt(c.prompt, cfg.data.token, cfg.data.class_name) for c in todo]
        for cell, score in zip(todo, scorer.score(pictures, prompts), strict=True):
            rows[cell.file_name] = {**_cell_columns(cell), **score}
        RunFolder(run_dir).write_scores([rows[c.file_name] for c in cells if c.file_name in rows])
    if not rows:
        return None
    return objective_value(mean_scores(rows.values()), parse_objective(cfg.eval.objective))


def _cell_columns(cell: GridCell) -> dict:
    return {
        "file": cell.file_name,
        "prompt_name": cell.prompt_name,
        "prompt": cell.prompt,
        "unet_scale": cell.unet_scale,
        "text_scale": cell.text_scale,
        "guidance": cell.guidance,
        "seed": cell.seed,
        "index": cell.index,
        "cell": cell.label,
    }
