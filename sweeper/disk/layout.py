"""The sweep folder and its run folders on disk: every file name, and the one reader or writer of each.

Disk is the source of truth (MLflow, the report and the compare page are rebuilt from it)::

    <sweep.root>/optuna.db                     Optuna searches' studies, one per sweep name (sweeper.search.optuna)
    <sweep.root>/mlflow.db  mlartifacts/       the default MLflow store and its artifacts (sweeper.tracking)
    <sweep.root>/<sweep.name>/                 SweepFolder
        sweep.json                             the plan: varying keys, jobs, MLflow ids (sweeper.planning.plan)
        bracket.json                           a halving sweep's rungs, scores and decisions (sweeper.search.halving)
        trials.json                            an Optuna search's trials, reports and states (sweeper.search.optuna)
        report.md  compare.html  loss_curves.png  sheets/<prompt>.png  sheets/grid-<...>/<prompt>.png
        MLFLOW_PENDING                         the store could not be reached; how to log later
        <learning_rate>;<text_encoder_lr>/     RunFolder (name: sweep.run_dir_template)
            run.json                           status, settings, grid cells, timings, MLflow run id
            config.yaml  overrides.yaml        the job's composed config and its command-line overrides
            render.json                        what the pictures were rendered with (reused on resume)
            <pr>_<unet>;<text>;<guidance>[-i].png   one picture per grid cell (and seed / index)
            scores.csv  reference_scores.json  DreamBooth metrics of each picture; of the real pictures
            sheets/<pr>_g<guidance>.png        contact sheets of this run: rows UNet scale, columns text scale
            lora/                              adapter, kohya export, train_result.json, loss log,
                                               checkpoints/step-<n>/ (resumable states)
            step-<n>/                          the grid at training step n (render.steps, halving rungs):
                                               pictures, scores.csv, sheets/ as in the run folder
            ema/                               render.weights=both: the grid of the EMA weights, laid out
                                               as the run folder (its own step-<n>/ too); lora/ema/ holds
                                               the EMA adapter files (train.ema_decay)
            sheets/weights_<pr>.png            a prompt's cells (columns) with the raw and EMA weights (rows)
            sheets/steps_<pr>.png              a prompt's cells (columns) at every rendered step (rows)
            grid-<what differs>/               the same LoRA's grid drawn with other render settings (a rerun
                                               with another sampler, steps, negative prompt, resolution):
                                               run.json (its label and cells), render.json, pictures,
                                               scores.csv, sheets/, as in the run folder

A picture's file name is made once (``sweeper.planning.grid.GridCell.stem`` through ``sweeper.disk.naming.image_stem``)
and never parsed back: ``RunFolder.cells`` maps names to cells from ``run.json``, so prompt short names
that share a prefix (``purple``, ``purple_rug``) cannot be confused.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from lora_core.adapters import KOHYA_FILE, LORA_FILE, PEFT_FILE
from lora_core.atomic import write_text_atomic
from lora_core.metrics import METRICS
from lora_core.training import (
    CHECKPOINTS,
    EMA_DIR,
    LOSS_LOG,
    RESULT_FILE,
    STEP_PREFIX,
    parse_step,
    step_folder_name,
)
from lora_core.training.loss_log import read_rows
from sweeper.disk.naming import format_number

# Run folder.
RECORD_FILE = "run.json"
CONFIG_FILE = "config.yaml"
OVERRIDES_FILE = "overrides.yaml"
RENDER_FILE = "render.json"
SCORES_FILE = "scores.csv"
REFERENCE_FILE = "reference_scores.json"
SHEETS_DIR = "sheets"
GRID_PREFIX = "grid-"  # <run>/grid-<what differs>/: the LoRA's grid drawn with other render settings
EMA_GRID_DIR = "ema"  # <run>/ema/: the EMA weights' grid (the EMA adapter itself is lora/<EMA_DIR>/)
LORA_DIR = "lora"
# Sweep root.
OPTUNA_FILE = "optuna.db"
MLFLOW_DB = "mlflow.db"  # the default MLflow store (SQLite)
MLFLOW_ARTIFACTS = "mlartifacts"  # the default store's artifacts
# Sweep folder.
PLAN_FILE = "sweep.json"
BRACKET_FILE = "bracket.json"
TRIALS_FILE = "trials.json"
REPORT_FILE = "report.md"
PAGE_FILE = "compare.html"
LOSS_PLOT = "loss_curves.png"
FIDELITY_PLOT = "steps_fidelity.png"
SCALE_PLOT = "scale_tradeoff.png"
PENDING_FILE = "MLFLOW_PENDING"

DONE = "done"
# scores.csv: a picture's cell, then its metrics (lora_core.metrics.METRICS).
SCORE_COLUMNS = (
    "file",
    "prompt_name",
    "prompt",
    "unet_scale",
    "text_scale",
    "guidance",
    "seed",
    "index",
    "cell",  # the cell's label (GridCell.label); absent from files written before the sampler axes
)
_NUMERIC_SCORES = {"unet_scale", "text_scale", "guidance", *METRICS}


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def default_store(root: str | Path) -> Path:
    """``<root>/mlflow.db``: the default MLflow store of the sweeps under ``root`` (``sweep.root``)."""
    return Path(root) / MLFLOW_DB


def artifacts_dir(root: Path) -> Path:
    """``<root>/mlartifacts``: where the default store keeps the artifacts of the sweeps under ``root``."""
    return root / MLFLOW_ARTIFACTS


@dataclass(frozen=True)
class RunFolder:
    """One job's folder. Its properties are paths; its methods read and write the files in it."""

    path: Path

    @property
    def name(self) -> str:
        """The folder name (``1e-3;1e-4``)."""
        return self.path.name

    # ---- paths -----------------------------------------------------------------------------------------
    @property
    def record_file(self) -> Path:
        """``run.json``."""
        return self.path / RECORD_FILE

    @property
    def config_file(self) -> Path:
        """``config.yaml``: the job's composed config."""
        return self.path / CONFIG_FILE

    @property
    def overrides_file(self) -> Path:
        """``overrides.yaml``: the job's command-line overrides."""
        return self.path / OVERRIDES_FILE

    @property
    def render_file(self) -> Path:
        """``render.json``: the render settings the pictures were made with."""
        return self.path / RENDER_FILE

    @property
    def scores_file(self) -> Path:
        """``scores.csv``: DreamBooth metrics per picture."""
        return self.path / SCORES_FILE

    @property
    def reference_file(self) -> Path:
        """``reference_scores.json``: the same metrics among the real subject pictures."""
        return self.path / REFERENCE_FILE

    @property
    def sheets_dir(self) -> Path:
        """``sheets/``: this run's contact sheets."""
        return self.path / SHEETS_DIR

    @property
    def lora_dir(self) -> Path:
        """``lora/``: the trained adapter, its exports, the loss log and the checkpoints."""
        return self.path / LORA_DIR

    @property
    def checkpoints_dir(self) -> Path:
        """``lora/checkpoints/``: resumable training states, one ``step-<n>`` folder each."""
        return self.lora_dir / CHECKPOINTS

    @property
    def loss_log(self) -> Path:
        """``lora/loss_log.jsonl``: one row per logged step."""
        return self.lora_dir / LOSS_LOG

    @property
    def train_result_file(self) -> Path:
        """``lora/train_result.json``: speed, memory and the final loss of the training."""
        return self.lora_dir / RESULT_FILE

    def adapter_files(self) -> list[Path]:
        """The exported adapter files (diffusers / peft format and kohya format), those that exist."""
        names = (LORA_FILE, PEFT_FILE, KOHYA_FILE)
        return [self.lora_dir / n for n in names if (self.lora_dir / n).is_file()]

    @property
    def ema_lora_dir(self) -> Path:
        """``lora/ema/``: the EMA of the LoRA weights (``train.ema_decay``), in the raw weights' formats."""
        return self.lora_dir / EMA_DIR

    def ema_adapter_files(self) -> list[Path]:
        """The EMA weights' exported adapter files, those that exist."""
        names = (LORA_FILE, PEFT_FILE, KOHYA_FILE)
        return [self.ema_lora_dir / n for n in names if (self.ema_lora_dir / n).is_file()]

    @property
    def ema(self) -> RunFolder:
        """``ema/``: the grid rendered with the EMA weights beside the raw one (``render.weights=both``)."""
        return RunFolder(self.path / EMA_GRID_DIR)

    def other_grid(self, name: str) -> RunFolder:
        """``grid-<...>/``: a second grid of this run's LoRA, drawn with other render settings.

        Laid out like the run folder; ``sweeper.disk.naming.grid_name`` names it.
        """
        if not name.startswith(GRID_PREFIX):
            raise ValueError(f"{name}: a second grid's folder starts with {GRID_PREFIX}")
        return RunFolder(self.path / name)

    def other_grids(self) -> dict[str, RunFolder]:
        """The run's second grids that were set up (``grid-*/`` with a ``render.json``), by name."""
        found = sorted(p for p in self.path.glob(f"{GRID_PREFIX}*") if (p / RENDER_FILE).is_file())
        return {p.name: RunFolder(p) for p in found}

    def grid_label(self) -> str:
        """What this grid draws otherwise than the run's first grid (``run.json``'s ``grid``); '' for the first."""
        return str(self.read_record().get("grid", ""))

    def guidance_sheet(self, prompt_name: str, guidance: float, axes=()) -> Path:
        """``sheets/<pr>_g<guidance>.png``: a prompt's cells at one guidance (rows UNet, columns text scale).

        With more axes, at one value of each that has several: ``ph_g4_euler_a_30.png``.
        """
        extra = "".join(f"_{value}" for value in axes)
        return self.sheets_dir / f"{prompt_name}_g{format_number(guidance)}{extra}.png"

    def axes_sheet(self, prompt_name: str, rows: str, cols: str, values=()) -> Path:
        """``sheets/<pr>_<rows>-<cols>[_<value>...].png``: a prompt's cells on two chosen axes.

        ``render.sheet_rows`` / ``sheet_cols`` other than UNet x text: ``be_sampler-unet_t1.png``, one per value
        of the other axes that vary.
        """
        extra = "".join(f"_{value}" for value in values)
        return self.sheets_dir / f"{prompt_name}_{rows}-{cols}{extra}.png"

    def sheet_links(self) -> list[str]:
        """This run's sheets as paths from the sweep folder (``1e-4;1e-5/sheets/ph_g4.png``), by name.

        Then those of its second grids (``1e-4;1e-5/grid-euler_a/sheets/ph_g4.png``).
        """
        links = [f"{self.name}/{SHEETS_DIR}/{p.name}" for p in sorted(self.sheets_dir.glob("*.png"))]
        for name, grid in self.other_grids().items():
            links += [
                f"{self.name}/{name}/{SHEETS_DIR}/{p.name}" for p in sorted(grid.sheets_dir.glob("*.png"))
            ]
        return links

    def weights_sheet(self, prompt_name: str) -> Path:
        """``sheets/weights_<pr>.png``: a prompt's cells with the raw weights and with their EMA."""
        return self.sheets_dir / f"weights_{prompt_name}.png"

    def picture(self, file_name: str) -> Path:
        """A grid picture's path from its file name (``ph_1;0;4.png``)."""
        return self.path / file_name

    def existing_picture(self, file_name: str) -> Path | None:
        """A grid picture's path, or None when it was not rendered."""
        path = self.picture(file_name)
        return path if path.is_file() else None

    def pictures(self) -> list[Path]:
        """Every picture in the folder, by name."""
        return sorted(self.path.glob("*.png"))

    def config_artifacts(self) -> list[Path]:
        """The small files that describe the run (logged beside it in MLflow)."""
        return [
            self.config_file,
            self.overrides_file,
            self.record_file,
            self.render_file,
            self.scores_file,
            self.reference_file,
        ]

    def step(self, step: int) -> RunFolder:
        """The folder of the grid rendered at training ``step`` (``step-000400``), laid out like this one."""
        return RunFolder(self.path / step_folder_name(step))

    def steps(self) -> dict[int, RunFolder]:
        """The step folders that hold pictures, by step."""
        found = {}
        for folder in self.path.glob(f"{STEP_PREFIX}*"):
            step = parse_step(folder)
            if step is not None and folder.is_dir() and any(folder.glob("*.png")):
                found[step] = RunFolder(folder)
        return dict(sorted(found.items()))

    def step_sheet(self, prompt_name: str) -> Path:
        """``sheets/steps_<pr>.png``: a prompt's grid at every rendered step."""
        return self.sheets_dir / f"steps_{prompt_name}.png"

    # ---- readers / writers -----------------------------------------------------------------------------
    def read_record(self) -> dict:
        """``run.json`` as a dict ({} when absent)."""
        return _read_json(self.record_file)

    def write_record(self, record: dict) -> None:
        """Write ``run.json`` atomically (a job killed mid-write leaves the previous one)."""
        self.path.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.record_file, json.dumps(record, indent=2, default=str))

    def update_record(self, **values) -> None:
        """Set top-level keys of ``run.json``, keeping the rest."""
        self.write_record(self.read_record() | values)

    @property
    def done(self) -> bool:
        """Whether the job finished (``run.json`` status ``done``)."""
        return self.read_record().get("status") == DONE

    def cells(self) -> list[dict]:
        """The grid cells recorded in ``run.json`` (each with its file ``stem``), in grid order."""
        return list(self.read_record().get("cells", []))

    def cell_of(self, stem: str) -> dict | None:
        """The recorded cell a picture name (without ``.png``) belongs to, or None."""
        return next((c for c in self.cells() if c.get("stem") == stem), None)

    def read_config(self) -> DictConfig | None:
        """``config.yaml``, or None when absent."""
        return OmegaConf.load(self.config_file) if self.config_file.is_file() else None

    def write_config(self, config: dict, overrides: list[str]) -> None:
        """Write ``config.yaml`` and ``overrides.yaml``."""
        self.path.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.config_file, OmegaConf.to_yaml(OmegaConf.create(config)))
        write_text_atomic(self.overrides_file, OmegaConf.to_yaml(OmegaConf.create(overrides)))

    def read_render(self) -> dict | None:
        """``render.json``, or None when absent."""
        return _read_json(self.render_file) if self.render_file.is_file() else None

    def write_render(self, settings: dict) -> None:
        """Write ``render.json``."""
        write_text_atomic(self.render_file, json.dumps(settings, indent=2))

    def read_reference(self) -> dict:
        """``reference_scores.json`` ({} when absent)."""
        return _read_json(self.reference_file)

    def write_reference(self, scores: dict) -> None:
        """Write ``reference_scores.json``."""
        write_text_atomic(self.reference_file, json.dumps(scores, indent=2))

    def read_scores(self) -> list[dict]:
        """Rows of ``scores.csv``, numbers parsed (empty when the run was not evaluated)."""
        if not self.scores_file.is_file():
            return []
        with self.scores_file.open(newline="") as f:
            rows = list(csv.DictReader(f))
        for row in rows:
            for key in _NUMERIC_SCORES & row.keys():
                row[key] = float(row[key])
            row["seed"], row["index"] = int(row["seed"]), int(row["index"])
        return rows

    def write_scores(self, rows: list[dict]) -> None:
        """Write ``scores.csv`` atomically: ``SCORE_COLUMNS`` then every metric, one row per picture."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=[*SCORE_COLUMNS, *METRICS], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        write_text_atomic(self.scores_file, buffer.getvalue())

    def read_train_result(self) -> dict:
        """``lora/train_result.json`` ({} when absent)."""
        return _read_json(self.train_result_file)

    def read_loss_log(self) -> list[dict]:
        """The loss log's rows ({step, loss, lr, ...}), empty when absent."""
        return read_rows(self.lora_dir)


@dataclass(frozen=True)
class SweepFolder:
    """``<sweep.root>/<sweep.name>``: the run folders, the plan and the sweep-wide outputs."""

    path: Path

    @property
    def name(self) -> str:
        """The sweep's name."""
        return self.path.name

    @property
    def plan_file(self) -> Path:
        """``sweep.json``."""
        return self.path / PLAN_FILE

    @property
    def bracket_file(self) -> Path:
        """``bracket.json``: a halving sweep's rungs (``sweeper.search.halving.Bracket``)."""
        return self.path / BRACKET_FILE

    @property
    def trials_file(self) -> Path:
        """``trials.json``: an Optuna search's trials, their reports and states (``sweeper.search.optuna``)."""
        return self.path / TRIALS_FILE

    @property
    def report_file(self) -> Path:
        """``report.md``."""
        return self.path / REPORT_FILE

    @property
    def page_file(self) -> Path:
        """``compare.html``."""
        return self.path / PAGE_FILE

    @property
    def loss_plot(self) -> Path:
        """``loss_curves.png``."""
        return self.path / LOSS_PLOT

    @property
    def sheets_dir(self) -> Path:
        """``sheets/``: one sheet per prompt, a row per run."""
        return self.path / SHEETS_DIR

    def prompt_sheet(self, prompt_name: str) -> Path:
        """``sheets/<pr>.png``: a prompt's cells (columns) for every run (rows)."""
        return self.sheets_dir / f"{prompt_name}.png"

    def grid_sheet(self, grid: str, prompt_name: str) -> Path:
        """``sheets/grid-<...>/<pr>.png``: a prompt's cells for every run, in the runs' second grid ``grid``."""
        return self.sheets_dir / grid / f"{prompt_name}.png"

    def read_bracket(self) -> dict | None:
        """``bracket.json`` (``sweeper.search.halving.Bracket``'s fields), or None when absent."""
        return _read_json(self.bracket_file) if self.bracket_file.is_file() else None

    def write_bracket(self, bracket: dict) -> None:
        """Write ``bracket.json`` atomically."""
        write_text_atomic(self.bracket_file, json.dumps(bracket, indent=2))

    def read_trials(self) -> dict | None:
        """``trials.json`` ({"study": name, "trials": [...]}), or None when absent."""
        return _read_json(self.trials_file) if self.trials_file.is_file() else None

    def write_trials(self, study: str, trials: list[dict]) -> None:
        """Write ``trials.json`` atomically: the study's name and its trials."""
        self.path.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.trials_file, json.dumps({"study": study, "trials": trials}, indent=1))

    @property
    def pending_file(self) -> Path:
        """``MLFLOW_PENDING``: present while the sweep is not logged to its store."""
        return self.path / PENDING_FILE

    def run(self, name: str) -> RunFolder:
        """The run folder called ``name``."""
        return RunFolder(self.path / name)

    def runs(self) -> Iterator[RunFolder]:
        """Every run folder that has a ``run.json`` (finished or not), by name."""
        for record in sorted(self.path.glob(f"*/{RECORD_FILE}")):
            yield RunFolder(record.parent)

    def done_runs(self) -> list[RunFolder]:
        """The finished run folders, by name."""
        return [run for run in self.runs() if run.done]

    def checkpoint_dirs(self) -> list[Path]:
        """Every run folder's checkpoint folder (where resume and step reuse look)."""
        return sorted(self.path.glob(f"*/{LORA_DIR}/{CHECKPOINTS}"))

    def sheets(self) -> list[Path]:
        """The sweep-wide sheets."""
        return sorted(self.sheets_dir.glob("*.png"))

    def outputs(self) -> list[Path]:
        """The sweep-wide files logged to the MLflow parent run (those that exist)."""
        files = (
            self.plan_file,
            self.bracket_file,
            self.trials_file,
            self.report_file,
            self.loss_plot,
            self.path / FIDELITY_PLOT,
            self.path / SCALE_PLOT,
            self.page_file,
        )
        return [p for p in files if p.is_file()]
