"""Mirror a run folder (or a whole finished sweep folder) into MLflow, from disk.

Used by every job at its end, and by ``python -m sweeper.log <sweep folder>`` to log a sweep that ran
while the tracking server could not be reached.
"""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import OmegaConf

from lora_core.adapters import KOHYA_FILE, LORA_FILE
from lora_core.training import LOSS_LOG, RESULT_FILE
from sweeper.tracking import Tracker, flatten, image_key

SHEETS_DIR = "sheets"


def run_params(run_dir: Path) -> dict[str, str]:
    """Every config value of a run, flattened (``train.learning_rate`` ...), and the base weights.

    The values come from its ``config.yaml``; ``model.identity`` (``world-<content hash>``, a path or hub
    id) from its ``run.json``.
    """
    path = run_dir / "config.yaml"
    if not path.is_file():
        return {}
    params = flatten(OmegaConf.to_container(OmegaConf.load(path), resolve=False))
    record = run_dir / "run.json"
    if record.is_file() and (base := json.loads(record.read_text()).get("base_model")):
        params["model.identity"] = str(base)
    return params


def run_summary_metrics(run_dir: Path) -> list[tuple[str, float, int]]:
    """Speed, memory and render-time metrics of a run, from its ``train_result.json`` and ``run.json``."""
    rows: list[tuple[str, float, int]] = []
    result = run_dir / "lora" / RESULT_FILE
    if result.is_file():
        train = json.loads(result.read_text())
        for key in (
            "steps_per_second",
            "first_step_seconds",
            "peak_memory_mb",
            "train_seconds",
            "final_loss",
        ):
            if isinstance(train.get(key), int | float) and train[key]:
                rows.append((key, train[key], 0))
    record = run_dir / "run.json"
    if record.is_file():
        result = json.loads(record.read_text()).get("result", {})
        rows += [(k, v, 0) for k, v in result.get("timings", {}).items() if isinstance(v, int | float)]
        if isinstance(result.get("objective"), int | float):
            rows.append(("objective", result["objective"], 0))
    return rows


def score_metrics(run_dir: Path) -> list[tuple[str, float, int]]:
    """DreamBooth metric means of a run: overall, per prompt (``dino/ph``) and per cell (``dino/cell/ph_1_1_3``)."""
    from sweeper.results import RunResult, read_scores

    run = RunResult(run_dir, {}, [], read_scores(run_dir))
    if not run.scores:
        return []
    rows = [(m, v, 0) for m, v in run.means().items()]
    for prompt, means in run.means("prompt").items():
        rows += [(f"{m}/{image_key(prompt)}", v, 0) for m, v in means.items()]
    for cell, means in run.means("cell").items():
        rows += [(f"{m}/cell/{image_key(cell)}", v, 0) for m, v in means.items()]
    reference = run_dir / "reference_scores.json"
    if reference.is_file():
        real = json.loads(reference.read_text())
        rows += [(f"real_{m}", real[m], 0) for m in ("dino", "clip_i") if m in real]
    return rows


def step_metrics(run_dir: Path) -> list[tuple[str, float, int]]:
    """Loss and learning rate per step from the run's loss log."""
    path = run_dir / "lora" / LOSS_LOG
    rows: list[tuple[str, float, int]] = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        row = json.loads(line)
        rows += [("loss", row["loss"], row["step"]), ("lr", row["lr"], row["step"])]
        if row.get("text_encoder_lr") is not None:
            rows.append(("text_encoder_lr", row["text_encoder_lr"], row["step"]))
        if row.get("val_loss") is not None:
            rows.append(("val_loss", row["val_loss"], row["step"]))
    return rows


def image_chart_steps(run_dir: Path) -> dict[str, tuple[str, int, str, str]]:
    """Picture stem -> (MLflow image key, step, cell as ``unet;text;guidance``, prompt), from ``run.json``.

    A prompt's pictures take steps 0, 1, ... in grid order.
    """
    from sweeper.mlflow_ui import image_chart_key
    from sweeper.results import cell_scales

    record = run_dir / "run.json"
    cells = json.loads(record.read_text()).get("cells", []) if record.is_file() else []
    seen: dict[str, int] = {}
    steps = {}
    for cell in cells:
        prompt = cell["prompt_name"]
        scales = {
            "unet_scale": cell["unet_scale"],
            "text_scale": cell["text_scale"],
            "guidance": cell["guidance"],
        }
        steps[cell["stem"]] = (image_chart_key(prompt), seen.get(prompt, 0), cell_scales(scales), prompt)
        seen[prompt] = seen.get(prompt, 0) + 1
    return steps


def job_note(run_dir: Path) -> str:
    """The job run's description: its settings, best cell per prompt, and the image charts' steps."""
    from sweeper.mlflow_ui import note_for_job
    from sweeper.objective import parse_objective
    from sweeper.plan import SweepPlan
    from sweeper.results import load_run

    run = load_run(run_dir)
    config = OmegaConf.load(run_dir / "config.yaml") if (run_dir / "config.yaml").is_file() else None
    objective = OmegaConf.select(config, "eval.objective", default=None) if config else None
    plan = SweepPlan.load(run_dir.parent)
    cells_by_prompt: dict[str, list[str]] = {}
    for _key, _step, cell, prompt in image_chart_steps(run_dir).values():
        cells_by_prompt.setdefault(prompt, []).append(cell)
    best = run.best_cells(parse_objective(objective or "dino+clip_t"))
    return note_for_job(run_dir.name, run.settings, plan.varying if plan else [], best, cells_by_prompt)


def log_run_folder(
    tracker: Tracker,
    run_id: str,
    run_dir: Path,
    with_steps: bool,
    log_images: bool = True,
    log_adapters: bool = True,
    pictures: list[Path] | None = None,
) -> None:
    """Log params, metrics, pictures, sheets, adapters and config of a run folder to ``run_id``.

    Pictures keep the folder's layout as artifacts (``<run_dir>/<pr>_<u>;<t>;<g>.png``) and are also logged
    as MLflow images, one key per prompt (``grid/<pr>``) with the cell's position as the step, so one
    image chart per prompt compares the runs and its slider walks through the cells. The run's
    description (``mlflow.note.content``) says what the run is, its best cells and which step is which cell.

    Args:
        tracker: The tracker.
        run_id: The job's MLflow run.
        run_dir: The run folder.
        with_steps: Also log loss/lr per step (when they were not sent live).
        log_images: Log the pictures as MLflow images too.
        log_adapters: Upload the LoRA files.
        pictures: The pictures to log (default: all of the folder's; a rerun that rendered more cells into
            a run already logged passes just the new ones).
    """
    if pictures is None:  # MLflow refuses changed params; a run that only gains pictures keeps its own
        tracker.log_params(run_id, run_params(run_dir))
    else:
        tracker.set_tags(run_id, {"grid_extended": "true"})
    metrics = (
        run_summary_metrics(run_dir) + score_metrics(run_dir) + (step_metrics(run_dir) if with_steps else [])
    )
    tracker.log_metrics(run_id, metrics)
    chart_steps = image_chart_steps(run_dir)
    for picture in sorted(run_dir.glob("*.png")) if pictures is None else pictures:
        tracker.log_artifact(run_id, picture, run_dir.name)
        if log_images and picture.stem in chart_steps:
            key, step, _cell, _prompt = chart_steps[picture.stem]
            tracker.log_image(run_id, picture, key, step)
    tracker.log_artifact(run_id, run_dir / SHEETS_DIR, SHEETS_DIR)
    for name in (
        "config.yaml",
        "overrides.yaml",
        "run.json",
        "render.json",
        "scores.csv",
        "reference_scores.json",
    ):
        tracker.log_artifact(run_id, run_dir / name, "config" if name.endswith(".yaml") else None)
    tracker.set_tags(run_id, {"mlflow.note.content": job_note(run_dir)})
    lora = run_dir / "lora"
    tracker.log_artifact(run_id, lora / LOSS_LOG, "lora")
    if log_adapters:
        for name in (LORA_FILE, KOHYA_FILE, RESULT_FILE):
            tracker.log_artifact(run_id, lora / name, "lora")
