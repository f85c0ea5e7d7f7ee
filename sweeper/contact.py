"""Which contact sheets a run and a sweep get, and where they go (the drawing is in ``sweeper.sheets``)."""

from __future__ import annotations

from pathlib import Path

from sweeper.grid import GridCell, first_images
from sweeper.naming import format_number
from sweeper.results import load_results
from sweeper.sheets import grid_sheet, save_sheet

SHEETS_DIR = "sheets"


def draw_run_sheets(run_dir: Path, cells: list[GridCell], thumb: int) -> list[Path]:
    """One sheet per prompt and guidance: rows = UNet scale, columns = text-encoder scale.

    Args:
        run_dir: The run folder (pictures in it, sheets written to ``sheets/``).
        cells: The run's grid.
        thumb: Cell size in pixels.

    Returns:
        The sheet files.
    """
    groups: dict[tuple[str, float], list[GridCell]] = {}
    for cell in first_images(cells):
        groups.setdefault((cell.prompt_name, cell.guidance), []).append(cell)
    written = []
    for (name, guidance), group in groups.items():
        unet = list(dict.fromkeys(c.unet_scale for c in group))
        text = sorted({c.text_scale for c in group})
        pictures = {
            (unet.index(c.unet_scale), text.index(c.text_scale)): run_dir / c.file_name for c in group
        }
        pictures = {k: p if p.is_file() else None for k, p in pictures.items()}
        title = f'"{group[0].prompt}" | {run_dir.name} | guidance {format_number(guidance)}'
        sheet = grid_sheet(
            title=title,
            row_labels=[f"unet {format_number(u)}" for u in unet],
            col_labels=[f"text {format_number(t)}" for t in text],
            cells=pictures,
            thumb=thumb,
        )
        path = run_dir / SHEETS_DIR / f"{name}_g{format_number(guidance)}.png"
        save_sheet(sheet, path)
        written.append(path)
    return written


def draw_sweep_sheets(sweep_dir: Path, thumb: int) -> list[Path]:
    """One sheet per prompt for the whole sweep: a row per run, a column per grid cell (``u;t;g``).

    Args:
        sweep_dir: The sweep folder (sheets written to its ``sheets/``).
        thumb: Cell size in pixels (reduced by ``sweeper.sheets`` for very wide grids).

    Returns:
        The sheet files.
    """
    runs = [(run.run_dir, run.cells) for run in load_results(sweep_dir)]
    prompts: dict[str, str] = {}
    columns: dict[str, list[tuple[float, float, float]]] = {}
    for _, cells in runs:
        for c in first_images(cells):
            prompts.setdefault(c.prompt_name, c.prompt)
            key = (c.unet_scale, c.text_scale, c.guidance)
            if key not in columns.setdefault(c.prompt_name, []):
                columns[c.prompt_name].append(key)
    written = []
    for name, keys in columns.items():
        pictures = {}
        for row, (run_dir, cells) in enumerate(runs):
            by_key = {
                (c.unet_scale, c.text_scale, c.guidance): c
                for c in first_images(cells)
                if c.prompt_name == name
            }
            for col, key in enumerate(keys):
                cell = by_key.get(key)
                pictures[(row, col)] = (
                    run_dir / cell.file_name if cell and (run_dir / cell.file_name).is_file() else None
                )
        sheet = grid_sheet(
            title=f'"{prompts[name]}" | every run of {Path(sweep_dir).name} | columns: unet;text;guidance',
            row_labels=[run_dir.name for run_dir, _ in runs],
            col_labels=[";".join(format_number(v) for v in key) for key in keys],
            cells=pictures,
            thumb=thumb,
        )
        path = Path(sweep_dir) / SHEETS_DIR / f"{name}.png"
        save_sheet(sheet, path)
        written.append(path)
    return written
