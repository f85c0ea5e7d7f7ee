"""Log a run folder, or a whole finished sweep folder, into MLflow from disk.

Every job logs its own folder at its end (``log_run_folder``); the sweep's end logs the sweep-wide files
and the summary (``close_sweep``); ``python -m sweeper.tracking <sweep folder>`` logs a sweep that ran while
the store could not be reached (``log_sweep_folder``). What is read comes from ``sweeper.disk.layout``.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from lora_core.errors import UserInputError
from lora_core.training.loss_log import metric_rows
from sweeper.disk.layout import RunFolder, SweepFolder
from sweeper.search.objective import DEFAULT_OBJECTIVE
from sweeper.tracking.store import default_uri
from sweeper.tracking.tracker import Tracker, flatten, image_key
from sweeper.tracking.ui import (
    describe_sweep,
    experiment_link,
    image_chart_key,
    note_for_job,
    summarise_sweep,
    ui_base,
)


def run_params(run: RunFolder) -> dict[str, str]:
    """Every config value of a run, flattened (``train.learning_rate`` ...), and the base weights.

    The values come from its ``config.yaml``; ``model.identity`` (``world-<content hash>``, a path or hub
    id) from its ``run.json``.
    """
    config = run.read_config()
    if config is None:
        return {}
    params = flatten(OmegaConf.to_container(config, resolve=False))
    if base := run.read_record().get("base_model"):
        params["model.identity"] = str(base)
    return params


# The EMA grid's metrics (render.weights=both) beside the raw grid's: ema_dino, ema_clip_t/<pr>, ...
EMA_PREFIX = "ema_"
_TRAIN_SUMMARY = ("steps_per_second", "first_step_seconds", "peak_memory_mb", "train_seconds", "final_loss")


def run_summary_metrics(run: RunFolder) -> list[tuple[str, float, int]]:
    """Speed, memory and render-time metrics of a run, from its ``train_result.json`` and ``run.json``."""
    train = run.read_train_result()
    rows = [(k, train[k], 0) for k in _TRAIN_SUMMARY if isinstance(train.get(k), int | float) and train[k]]
    result = run.read_record().get("result", {})
    rows += [(k, v, 0) for k, v in result.get("timings", {}).items() if isinstance(v, int | float)]
    if isinstance(result.get("objective"), int | float):
        rows.append(("objective", result["objective"], 0))
    return rows


def score_metrics(run: RunFolder) -> list[tuple[str, float, int]]:
    """DreamBooth metric means of a run: overall, per prompt (``dino/ph``) and per cell (``dino/cell/ph_1_1_3``)."""
    from sweeper.disk.results import RunResult

    result = RunResult(run.path, {}, [], run.read_scores())
    if not result.scores:
        return []
    rows = [(m, v, 0) for m, v in result.means().items()]
    for prompt, means in result.means("prompt").items():
        rows += [(f"{m}/{image_key(prompt)}", v, 0) for m, v in means.items()]
    for cell, means in result.means("cell").items():
        rows += [(f"{m}/cell/{image_key(cell)}", v, 0) for m, v in means.items()]
    real = run.read_reference()
    rows += [(f"real_{m}", real[m], 0) for m in ("dino", "clip_i") if m in real]
    return rows


def step_metrics(run: RunFolder) -> list[tuple[str, float, int]]:
    """Loss, learning rates and (where measured) the validation loss per step, from the run's loss log."""
    rows: list[tuple[str, float, int]] = []
    for row in run.read_loss_log():
        rows += metric_rows(row)
    return rows


def image_chart_steps(run: RunFolder) -> dict[str, tuple[str, int, str, str]]:
    """Picture stem -> (MLflow image key, step, cell as ``unet;text;guidance``, prompt), from ``run.json``.

    A prompt's pictures take steps 0, 1, ... in grid order.
    """
    from sweeper.disk.naming import cell_label

    seen: dict[str, int] = {}
    steps = {}
    for cell in run.cells():
        prompt = cell["prompt_name"]
        scales = {k: cell[k] for k in ("unet_scale", "text_scale", "guidance")}
        label = cell_label(*scales.values(), cell.get("axes", ()))
        steps[cell["stem"]] = (image_chart_key(prompt), seen.get(prompt, 0), label, prompt)
        seen[prompt] = seen.get(prompt, 0) + 1
    return steps


def job_note(run: RunFolder, chart_steps: dict[str, tuple[str, int, str, str]]) -> str:
    """The job run's description: its settings, best cell per prompt, and the image charts' steps."""
    from sweeper.disk.results import load_run
    from sweeper.planning.plan import SweepPlan
    from sweeper.search.objective import parse_objective

    result = load_run(run.path)
    config = run.read_config()
    objective = OmegaConf.select(config, "eval.objective", default=None) if config else None
    plan = SweepPlan.load(run.path.parent)
    cells_by_prompt: dict[str, list[str]] = {}
    for _key, _step, cell, prompt in chart_steps.values():
        cells_by_prompt.setdefault(prompt, []).append(cell)
    terms = parse_objective(objective or DEFAULT_OBJECTIVE)
    best = result.best_cells(terms)
    note = note_for_job(run.name, result.settings, plan.varying if plan else [], best, cells_by_prompt)
    for name, grid in result.other_grids.items():  # reruns that drew the LoRA with other render settings
        cells = ", ".join(f"`{p}`: `{c}`" for p, (c, _) in grid.best_cells(terms).items())
        note += (
            f"\n\nSecond grid `{name}` ({grid.label}): pictures and sheets under `{name}/`, image charts "
            f"`{name}/grid/<prompt>`, metrics `{name}/<metric>`"
            + (f"; best cells {cells}" if cells else "")
            + "."
        )
    return note


def grid_folders(run: RunFolder) -> dict[str, RunFolder]:
    """The grids of a run folder, by the prefix of their MLflow metrics.

    '' the run's own, ``ema_`` its EMA grid, ``grid-euler_a/`` a second grid (a rerun with other render
    settings) and ``grid-euler_a/ema_`` its EMA grid.
    """
    grids = {"": run, EMA_PREFIX: run.ema}
    for name, grid in run.other_grids().items():
        grids |= {f"{name}/": grid, f"{name}/{EMA_PREFIX}": grid.ema}
    return grids


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
    from sweeper.planning.plan import pack_tags

    run = RunFolder(Path(run_dir))
    if pictures is None:  # MLflow refuses changed params; a run that only gains pictures keeps its own
        tracker.log_params(run_id, run_params(run))
        tags = pack_tags(run.read_record().get("pack")) if run.record_file.is_file() else {}
        if tags:
            tracker.set_tags(run_id, tags)
    else:
        tracker.set_tags(run_id, {"grid_extended": "true"})
    metrics = run_summary_metrics(run) + score_metrics(run) + (step_metrics(run) if with_steps else [])
    grids = grid_folders(run)
    for prefix, grid in grids.items():
        if prefix:  # ema_dino, grid-euler_a/dino, grid-euler_a/ema_dino
            metrics += [
                (prefix + name, value, step)
                for name, value, step in score_metrics(grid)
                if not name.startswith("real_")
            ]
    tracker.log_metrics(run_id, metrics)
    chart_steps = {
        folder.path: image_chart_steps(folder if folder.record_file.is_file() else run)
        for folder in grids.values()
    }
    where = {folder.path: folder.path.relative_to(run.path).as_posix() for folder in grids.values()}
    wanted = [p for folder in grids.values() for p in folder.pictures()] if pictures is None else pictures
    for picture in wanted:
        sub = where.get(picture.parent, ".")
        tracker.log_artifact(run_id, picture, run.name if sub == "." else f"{run.name}/{sub}")
        steps = chart_steps.get(picture.parent, {})
        if log_images and picture.stem in steps:
            key, step, _cell, _prompt = steps[picture.stem]
            tracker.log_image(run_id, picture, key if sub == "." else f"{sub}/{key}", step)
    for folder in grids.values():
        if folder.sheets_dir.is_dir():
            sub = where[folder.path]
            tracker.log_artifact(
                run_id,
                folder.sheets_dir,
                folder.sheets_dir.name if sub == "." else f"{sub}/{folder.sheets_dir.name}",
            )
    chart_steps = chart_steps[run.path]
    for path in run.config_artifacts():
        tracker.log_artifact(run_id, path, "config" if path.suffix == ".yaml" else None)
    tracker.set_tags(run_id, {"mlflow.note.content": job_note(run, chart_steps)})
    tracker.log_artifact(run_id, run.loss_log, run.lora_dir.name)
    if log_adapters:
        for path in [*run.adapter_files(), run.train_result_file]:
            tracker.log_artifact(run_id, path, run.lora_dir.name)
        for path in run.ema_adapter_files():
            tracker.log_artifact(run_id, path, f"{run.lora_dir.name}/{run.ema_lora_dir.name}")


def log_finished_runs(tracker: Tracker, parent: str | None, sweep: SweepFolder) -> int:
    """Log every finished run of the sweep folder that the store does not hold finished yet.

    Returns:
        How many runs were logged now.
    """
    logged = 0
    for run in sweep.done_runs():
        run_id, finished = tracker.child_run(parent, run.name, {"sweep": sweep.name})
        if finished or run_id is None:
            continue
        log_run_folder(tracker, run_id, run.path, with_steps=True)
        tracker.finish(run_id)
        run.update_record(mlflow={"uri": tracker.uri, "run_id": run_id})
        logged += 1
    return logged


def close_sweep(tracker: Tracker, parent: str | None, sweep: SweepFolder, objective: str) -> None:
    """Log the sweep-wide files (plan, sheets, report, loss plot, compare page) and the summary; finish."""
    for sheet in sweep.sheets():
        tracker.log_artifact(parent, sheet, sweep.sheets_dir.name)
    for path in sweep.outputs():
        tracker.log_artifact(parent, path)
    summarise_sweep(tracker, parent, sweep.path, objective)
    tracker.finish(parent)


def log_sweep_folder(
    sweep_dir: Path, uri: str | None = None, experiment: str | None = None
) -> tuple[int, str]:
    """Log every finished run of a sweep folder beside one parent run, with the experiment's shared view.

    A store logged by an older version (jobs as MLflow child runs, folded under the parent in the UI) is
    upgraded: its jobs become flat runs, and the view and the parent's summary are written.

    Args:
        sweep_dir: ``<sweep.root>/<sweep.name>``.
        uri: Tracking URI; default: the SQLite store beside the sweep folder.
        experiment: Experiment name; default: the sweep's name.

    Returns:
        (number of runs logged now, the link that opens the sweep's jobs in the MLflow UI).

    Raises:
        UserInputError: Not a sweep folder, or the store cannot be reached.
    """
    from sweeper.planning.plan import SweepPlan, TrackingIds

    sweep = SweepFolder(Path(sweep_dir))
    runs = sweep.done_runs() if sweep.path.is_dir() else []
    if not runs:
        raise UserInputError(f"{sweep.path}: no finished run in it (no */run.json with status done).")
    uri = uri or default_uri(sweep.path.parent)
    tracker = Tracker(uri, experiment or sweep.name, sweep.path)
    if not tracker.active:
        raise UserInputError(
            f"--tracking-uri {uri}: the store cannot be reached; start it and run this again."
        )
    plan = SweepPlan.load(sweep.path) or SweepPlan(name=sweep.name, varying=[])
    previous = plan.tracking.parent_in(uri)
    parent = tracker.parent_run(previous, sweep.name, {"sweep": sweep.name})
    tracker.unfold_children(parent)  # a store logged when jobs were MLflow child runs
    config: DictConfig = runs[-1].read_config()
    describe_sweep(tracker, parent, config, plan)
    logged = log_finished_runs(tracker, parent, sweep)
    close_sweep(tracker, parent, sweep, OmegaConf.select(config, "eval.objective") or DEFAULT_OBJECTIVE)
    if not tracker.active:
        raise UserInputError(f"--tracking-uri {uri}: the store stopped answering; run this again.")
    plan.tracking = TrackingIds(uri=uri, experiment_id=tracker.experiment_id, parent_run_id=parent)
    plan.save(sweep.path)
    sweep.pending_file.unlink(missing_ok=True)
    return logged, experiment_link(ui_base(uri), tracker.experiment_id)
