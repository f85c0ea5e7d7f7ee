"""Read a sweep folder's finished runs back: settings, grid, per-picture scores, loss curve.

The compare page, the report and the sweep sheets all start from here; disk is the source of truth.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lora_core.errors import UserInputError
from lora_core.metrics import METRICS, mean_scores
from lora_core.training.loss_log import final_loss
from sweeper.disk.layout import RunFolder, SweepFolder
from sweeper.disk.naming import cell_label
from sweeper.planning.grid import GridCell
from sweeper.search.objective import objective_value


@dataclass
class RunResult:
    """One finished run of a sweep.

    Attributes:
        run_dir: Its folder.
        settings: Its training settings (``run.json``).
        cells: Its grid.
        scores: Per-picture scores (``scores.csv`` rows, numbers parsed), empty when not evaluated.
        loss: (step, loss) of every step.
        val_loss: (step, validation loss) where it was measured (``train.validation_every``).
        grid: For a second grid of the run (``<run>/grid-<...>/``), its folder name; '' for the run's own.
        label: What the second grid draws otherwise (``render.scheduler=euler_a``); '' for the run's own.
        other_grids: The run's second grids, by folder name, each as a ``RunResult`` of the same run.
    """

    run_dir: Path
    settings: dict
    cells: list[GridCell]
    scores: list[dict] = field(default_factory=list)
    loss: list[tuple[int, float]] = field(default_factory=list)
    val_loss: list[tuple[int, float]] = field(default_factory=list)
    grid: str = ""
    label: str = ""
    other_grids: dict[str, RunResult] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The run folder's name (``3e-4;1e-5``), for a second grid too."""
        return self.run_dir.parent.name if self.grid else self.run_dir.name

    @property
    def final_loss(self) -> float | None:
        """Mean loss of the last 10% of steps (``lora_core.training.loss_log.final_loss``)."""
        return final_loss([v for _, v in self.loss])

    @property
    def val_rise_step(self) -> int | None:
        """The step where the validation loss starts rising: its minimum, when a later value is higher.

        None when it was not measured or never rose (the minimum is the last measurement).
        """
        if len(self.val_loss) < 2:
            return None
        best = min(range(len(self.val_loss)), key=lambda i: self.val_loss[i][1])
        return self.val_loss[best][0] if best < len(self.val_loss) - 1 else None

    def metric_names(self) -> list[str]:
        """The metrics present in the scores."""
        return [m for m in METRICS if self.scores and m in self.scores[0]]

    def means(self, group: str | None = None) -> dict:
        """Mean of every metric: over the run (``group=None``), or per prompt / per cell.

        Args:
            group: None, ``"prompt"`` or ``"cell"``.

        Returns:
            ``{metric: mean}``, or ``{key: {metric: mean}}`` when grouped (cell keys are file stems).
        """
        by = None if group is None else {"prompt": "prompt_name", "cell": cell_key}[group]
        return mean_scores(self.scores, by)

    def best_cells(self, terms: list[tuple[float, str]]) -> dict[str, tuple[str, float]]:
        """Per prompt, the cell (``unet;text;guidance``) whose pictures score highest by ``terms``.

        Prompts are told apart by the short name each score row carries, never by parsing file names
        (``purple`` is not a prefix match of ``purple_rug``).

        Returns:
            ``{prompt short name: (cell, objective)}``; prompts without scores are left out.
        """
        best: dict[str, tuple[str, float]] = {}
        by_prompt = mean_scores(self.scores, lambda r: (r["prompt_name"], cell_scales(r)))
        for (prompt, cell), means in by_prompt.items():
            value = objective_value(means, terms)
            if value is not None and (prompt not in best or value > best[prompt][1]):
                best[prompt] = (cell, value)
        return best


def cell_scales(row: dict) -> str:
    """A scored picture's cell as ``unet;text;guidance`` (``0.9;0.5;3.6``), with its other axes' values."""
    return row.get("cell") or cell_label(row["unet_scale"], row["text_scale"], row["guidance"])


def cell_key(row: dict) -> str:
    """The grid cell a scored picture belongs to, whatever its seed and index: ``sf_0.9;0.5;3.6``."""
    return f"{row['prompt_name']}_{cell_scales(row)}"


def read_loss(run_dir: Path, key: str = "loss") -> list[tuple[int, float]]:
    """(step, value) pairs of a run's training: ``loss``, or ``val_loss`` where it was measured."""
    rows = RunFolder(run_dir).read_loss_log()
    return [(r["step"], r[key]) for r in rows if r.get(key) is not None]


def load_results(sweep_dir: str | Path) -> list[RunResult]:
    """Every finished run of a sweep folder, by folder name.

    Raises:
        UserInputError: The folder does not exist.
    """
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise UserInputError(f"{sweep_dir}: no such sweep folder.")
    return [load_run(run.path) for run in SweepFolder(sweep_dir).done_runs()]


def load_run(run_dir: Path) -> RunResult:
    """One run folder's results (whatever its status), with its second grids'."""
    folder = RunFolder(run_dir)
    record = folder.read_record()
    settings = record.get("settings", {})
    loss, val_loss = read_loss(run_dir), read_loss(run_dir, "val_loss")
    grids = {
        name: RunResult(
            grid.path,
            settings,
            [GridCell(**c) for c in grid.cells()],
            grid.read_scores(),
            loss,
            val_loss,
            grid=name,
            label=grid.grid_label(),
        )
        for name, grid in folder.other_grids().items()
    }
    cells = [GridCell(**c) for c in record.get("cells", [])]
    return RunResult(run_dir, settings, cells, folder.read_scores(), loss, val_loss, other_grids=grids)


def first_grid_label(runs: list[RunResult]) -> str:
    """What the runs' own grids were drawn with, for the settings their second grids change.

    ``render.scheduler=default`` where a second grid has ``render.scheduler=euler_a``; '' without second grids.
    """
    from sweeper.disk.naming import grid_label

    keys = dict.fromkeys(
        k
        for r in runs
        for g in r.other_grids.values()
        for k in RunFolder(g.run_dir).read_record().get("render", {})
    )
    if not keys:
        return ""
    saved = (
        next((RunFolder(r.run_dir).read_render() for r in runs if RunFolder(r.run_dir).read_render()), {})
        or {}
    )
    return grid_label({k: saved.get(k) for k in keys})


def grid_results(runs: list[RunResult]) -> dict[str, list[RunResult]]:
    """Every grid of the sweep: '' -> the runs' own grids, ``grid-<...>`` -> the runs that have that one."""
    grids: dict[str, list[RunResult]] = {"": list(runs)}
    for run in runs:
        for name, grid in run.other_grids.items():
            grids.setdefault(name, []).append(grid)
    return grids
