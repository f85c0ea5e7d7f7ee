"""Render the cells of a grid that are missing from a folder: the run folder, a step folder, an EMA grid."""

from __future__ import annotations

from pathlib import Path

from tqdm.auto import tqdm

from lora_core.atomic import atomic_path
from lora_core.render import GridRenderer, RenderOptions
from sweeper.disk.layout import RunFolder
from sweeper.planning.grid import GridCell


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
