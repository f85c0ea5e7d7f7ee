"""Which contact sheets a run and a sweep get, and where they go (the drawing is in ``sweeper.views.drawing``)."""

from __future__ import annotations

from pathlib import Path

from sweeper.disk.layout import EMA_GRID_DIR, GRID_PREFIX, RunFolder, SweepFolder
from sweeper.disk.naming import TEXT_2_PREFIX, axis_name, format_number, text_2_label
from sweeper.disk.results import grid_results, load_results
from sweeper.planning.grid import SHEET_AXES, GridCell, first_images
from sweeper.views.drawing import axes_sheet, save_sheet, sweep_sheet


def draw_run_sheets(
    run_dir: Path, cells: list[GridCell], thumb: int, rows: str = "unet", cols: str = "text"
) -> list[Path]:
    """One sheet per prompt and value of the other axes: rows and columns two axes of the grid.

    The default (rows UNet scale, columns text scale) gives a sheet per guidance too
    (``sheets/<pr>_g<guidance>.png``); other axes name the sheet after them and the other axes' values
    that vary (``sheets/be_sampler-unet_t1.png``).

    Args:
        run_dir: The run folder (pictures in it, sheets written to ``sheets/``).
        cells: The run's grid.
        thumb: Cell size in pixels.
        rows: The rows' axis (``render.sheet_rows``: a key of ``sweeper.planning.grid.SHEET_AXES``).
        cols: The columns' axis (``render.sheet_cols``).

    Returns:
        The sheet files.
    """
    run = RunFolder(run_dir)
    default = (rows, cols) == ("unet", "text")
    others = [a for a in SHEET_AXES if a not in (rows, cols)]
    shown = first_images(cells)
    varying = [a for a in others if len({SHEET_AXES[a](c) for c in shown}) > 1]
    groups: dict[tuple, list[GridCell]] = {}
    for cell in shown:
        groups.setdefault((cell.prompt_name, *(SHEET_AXES[a](cell) for a in others)), []).append(cell)
    written = []
    for (name, *values), group in groups.items():
        fixed = dict(zip(others, values, strict=True))
        row_values = _axis_values(rows, group)
        col_values = _axis_values(cols, group)
        pictures = {
            (SHEET_AXES[rows](c), SHEET_AXES[cols](c)): run.existing_picture(c.file_name) for c in group
        }
        if default:
            words = [f"guidance {format_number(fixed['guidance'])}", *_axes_words(group[0])]
            path = run.guidance_sheet(name, fixed["guidance"], group[0].axes)
        else:
            words = [_axis_word(a, fixed[a]) for a in varying] + [f"rows {rows}, columns {cols}"]
            path = run.axes_sheet(name, rows, cols, [_axis_short(a, fixed[a]) for a in varying])
        title = " | ".join([f'"{group[0].prompt}"', grid_title(run), *words])
        sheet = axes_sheet(pictures, row_values, col_values, title, thumb, rows, cols)
        save_sheet(sheet, path)
        written.append(path)
    return written


def _axis_values(axis: str, cells: list[GridCell]) -> list:
    """An axis's values in the order of the grid; numbers other than the UNet scale's sorted."""
    values = list(dict.fromkeys(SHEET_AXES[axis](c) for c in cells))
    return values if axis in ("unet", "sampler") else sorted(values)


def _axis_word(axis: str, value) -> str:
    """A value of an axis in words, for a title: ``sampler euler_a``, ``30 steps``, ``guidance 4``."""
    text = format_number(value) if isinstance(value, int | float) else str(value)
    if axis == "text_2":
        return f"second text encoder {text}"
    return f"{text} steps" if axis == "steps" else f"{axis} {text}"


def _axis_short(axis: str, value) -> str:
    """A value of an axis in a sheet's file name: ``u0.5``, ``t1``, ``g4``, ``euler_a``, ``30``."""
    if axis in ("sampler", "steps"):
        return str(value)
    if axis == "text_2":
        return text_2_label(value)
    return f"{axis[0]}{format_number(value)}"


def grid_title(folder: RunFolder) -> str:
    """How a sheet's title names its grid: the run (``1e-4;1e-5``), or a second or EMA grid with its label.

    A second grid by what it draws otherwise (``1e-4;1e-5 | render.scheduler=euler_a``), the EMA grid as
    ``... | EMA weights``.
    """
    if folder.name == EMA_GRID_DIR:
        return f"{grid_title(RunFolder(folder.path.parent))} | EMA weights"
    label = folder.grid_label() if folder.name.startswith(GRID_PREFIX) else ""
    return f"{folder.path.parent.name} | {label}" if label else folder.name


def _axes_words(cell: GridCell) -> list[str]:
    """The cell's values of its grid's other axes, in words for a title (``sampler euler_a``, ``30 steps``)."""
    return [_axis_word(axis_name(v), v.removeprefix(TEXT_2_PREFIX)) for v in cell.axes]


def draw_sweep_sheets(sweep_dir: Path, thumb: int) -> list[Path]:
    """One sheet per prompt for the whole sweep: a row per run, a column per grid cell (``u;t;g``).

    A second grid's (``<run>/grid-<...>/``) go to ``sheets/grid-<...>/``, labelled with what it draws otherwise.

    Args:
        sweep_dir: The sweep folder (sheets written to its ``sheets/``).
        thumb: Cell size in pixels (reduced by ``sweeper.views.drawing`` for very wide grids).

    Returns:
        The sheet files.
    """
    sweep = SweepFolder(Path(sweep_dir))
    written = []
    for grid, results in grid_results(load_results(sweep_dir)).items():
        label = next((r.label for r in results if r.label), "")
        runs = [(run.name, RunFolder(run.run_dir), run.cells) for run in results]
        sheet_file = sweep.prompt_sheet if not grid else lambda name, grid=grid: sweep.grid_sheet(grid, name)
        written += _sweep_grid_sheets(sweep.name, runs, label, thumb, sheet_file)
    return written


def _sweep_grid_sheets(sweep: str, runs: list, label: str, thumb: int, sheet_file) -> list[Path]:
    """A sheet per prompt of one grid: a row per run (``runs``: name, grid folder, cells), a column per cell."""
    prompts: dict[str, str] = {}
    columns: dict[str, list[str]] = {}
    for _, _, cells in runs:
        for c in first_images(cells):
            prompts.setdefault(c.prompt_name, c.prompt)
            if c.label not in columns.setdefault(c.prompt_name, []):
                columns[c.prompt_name].append(c.label)
    written = []
    for name, labels in columns.items():
        pictures = {
            (row, c.label): folder.existing_picture(c.file_name)
            for row, folder, cells in runs
            for c in first_images(cells)
            if c.prompt_name == name
        }
        what = next(c.label_keys for _, _, cells in runs for c in cells if c.prompt_name == name)
        grid = f" | {label}" if label else ""
        title = f'"{prompts[name]}" | every run of {sweep}{grid} | columns: {what}'
        sheet = sweep_sheet(pictures, [row for row, _, _ in runs], labels, title, thumb)
        path = sheet_file(name)
        save_sheet(sheet, path)
        written.append(path)
    return written


def draw_rows_sheets(
    run: RunFolder, rows: dict[str, RunFolder], cells: list[GridCell], thumb: int, what: str, sheet_file
) -> list[Path]:
    """One sheet per prompt: a row per grid folder of the run, a column per cell (``u;t;g``).

    Args:
        run: The run folder (named in the titles).
        rows: Row label -> the grid folder its pictures come from, top to bottom (``step 100``, ``ema``).
        cells: The grid (the same in every row).
        thumb: Cell size in pixels.
        what: What the rows are, for the title (``training step``, ``LoRA weights``).
        sheet_file: Prompt short name -> the sheet's file (``RunFolder.step_sheet``, ``weights_sheet``).

    Returns:
        The sheet files (none without rows).
    """
    written = []
    for prompt in dict.fromkeys(c.prompt_name for c in cells) if rows else ():
        group = [c for c in first_images(cells) if c.prompt_name == prompt]
        columns = list(dict.fromkeys(c.label for c in group))
        pictures = {
            (label, c.label): path
            for label, folder in rows.items()
            for c in group
            if (path := folder.existing_picture(c.file_name)) is not None
        }
        title = f'"{group[0].prompt}" | {grid_title(run)} | rows: {what}, columns: {group[0].label_keys}'
        written.append(
            save_sheet(sweep_sheet(pictures, list(rows), columns, title, thumb), sheet_file(prompt))
        )
    return written


def step_label(step: int) -> str:
    """A sheet row's label: ``step 400``."""
    return f"step {step}"


def step_rows(run: RunFolder, final_step: int) -> dict[str, RunFolder]:
    """The rows of a run's step sheets: ``step 100`` -> its step folder, the final step -> the run folder.

    Returns:
        The rows in step order; empty when no step folder was rendered (nothing to compare).
    """
    folders = {**run.steps(), final_step: run}
    return {step_label(step): folder for step, folder in folders.items()} if len(folders) > 1 else {}


def weights_rows(run: RunFolder) -> dict[str, RunFolder]:
    """The rows of a run's weights sheets: ``raw`` -> the run folder, ``ema`` -> its EMA grid.

    Returns:
        The rows; empty when the run has no EMA grid.
    """
    return {"raw": run, "ema": run.ema} if run.ema.pictures() else {}
