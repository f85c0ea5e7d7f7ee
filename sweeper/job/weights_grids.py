"""The weights axis: a run's grid rendered with the raw LoRA weights, their EMA, or both side by side.

``render.weights=raw`` (default) renders the trained weights, ``ema`` their moving average
(``train.ema_decay``, ``lora/ema/``), each into the run folder itself. ``both`` keeps the raw grid in the run
folder — so the sweep sheets, the compare page, the report and the objective stay those of the raw weights —
and renders the EMA grid into ``<run>/ema/``, laid out like the run folder (pictures, ``scores.csv``,
``sheets/``; ``step-<n>/ema/`` for ``render.steps``); ``sheets/weights_<pr>.png`` shows each prompt's cells
with both (rows), and MLflow gets the EMA grid under ``<run>/ema/``, ``ema_``-prefixed metrics and
``ema/grid/<pr>`` image keys.
"""

from __future__ import annotations

from pathlib import Path

from lora_core.adapters import find_weights_file
from lora_core.errors import UserInputError
from lora_core.training import EMA_DIR
from sweeper.disk.layout import RunFolder


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


def weights_rows(run: RunFolder) -> dict[str, RunFolder]:
    """The rows of a run's weights sheets: ``raw`` -> the run folder, ``ema`` -> its EMA grid.

    Returns:
        The rows; empty when the run has no EMA grid.
    """
    return {"raw": run, "ema": run.ema} if run.ema.pictures() else {}
