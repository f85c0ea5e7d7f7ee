"""The checkpoint axis: a run's grid at chosen training steps, side by side with the final one.

``render.steps=[100,300]`` renders the run's grid from the checkpoints at those steps into
``<run>/step-000100/`` (pictures, ``scores.csv`` and sheets laid out as in the run folder), so the run
folder itself keeps the final step's ``pr_u;t;g.png`` names; ``sheets/steps_<pr>.png`` shows each prompt's
cells (columns) at every step (rows). A halving rung (``sweep.stop_at_step``) renders its preview grid the
same way.
"""

from __future__ import annotations

from pathlib import Path

from lora_core.atomic import atomic_path
from lora_core.render import GridRenderer, RenderOptions
from sweeper.drawing import save_sheet, sweep_sheet
from sweeper.grid import GridCell, first_images
from sweeper.layout import RunFolder


def render_grid(
    pipe, lora: Path, folder: RunFolder, cells: list[GridCell], options: RenderOptions
) -> list[Path]:
    """Render the cells whose picture is not in ``folder`` yet, with the LoRA ``lora``.

    Args:
        pipe: The loaded base pipeline (borrowed).
        lora: A folder holding a diffusers-format LoRA (the training folder or a checkpoint).
        folder: Where the pictures go (the run folder or one of its step folders).
        cells: The grid.
        options: Render settings.

    Returns:
        The pictures written now.
    """
    missing = [c for c in cells if not folder.picture(c.file_name).is_file()]
    written: list[Path] = []
    if not missing:
        return written
    folder.path.mkdir(parents=True, exist_ok=True)
    by_render_cell = {c.render_cell(): c for c in missing}
    with GridRenderer(pipe, lora, options) as renderer:
        for render_cell, image in renderer.render(by_render_cell):
            path = folder.picture(by_render_cell[render_cell].file_name)
            with atomic_path(path) as tmp:
                image.save(tmp, format="PNG")
            written.append(path)
    return written


def step_label(step: int) -> str:
    """A sheet row's label: ``step 400``."""
    return f"step {step}"


def draw_step_sheets(run: RunFolder, cells: list[GridCell], final_step: int, thumb: int) -> list[Path]:
    """One sheet per prompt: a row per rendered step (the final one from the run folder), a column per cell.

    Args:
        run: The run folder.
        cells: The grid (the same at every step).
        final_step: The run's last training step (its pictures are in the run folder itself).
        thumb: Cell size in pixels.

    Returns:
        The sheet files (none when no step folder holds pictures).
    """
    folders = {**run.steps(), final_step: run}
    if len(folders) < 2:
        return []
    rows = [step_label(step) for step in folders]
    written = []
    for prompt in dict.fromkeys(c.prompt_name for c in cells):
        group = [c for c in first_images(cells) if c.prompt_name == prompt]
        columns = list(dict.fromkeys((c.unet_scale, c.text_scale, c.guidance) for c in group))
        pictures = {
            (step_label(step), (c.unet_scale, c.text_scale, c.guidance)): path
            for step, folder in folders.items()
            for c in group
            if (path := folder.picture(c.file_name)).is_file()
        }
        title = f'"{group[0].prompt}" | {run.name} | rows: training step, columns: unet;text;guidance'
        written.append(save_sheet(sweep_sheet(pictures, rows, columns, title, thumb), run.step_sheet(prompt)))
    return written
