"""The loss log (``loss_log.jsonl``), the one owner of its format: writing, reading, MLflow metric rows.

It is written by the trainer, read back on resume and by the sweeper.

A row is ``{"step", "loss", "lr", "text_encoder_lr"}`` plus ``"val_loss"`` on the steps where it was measured.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from lora_core.atomic import write_text_atomic

LOSS_LOG = "loss_log.jsonl"


def log_row(
    step: int, loss: float, lr: float, text_encoder_lr: float | None, val_loss: float | None = None
) -> dict:
    """One loss-log row; ``val_loss`` only when it was measured."""
    row = {"step": step, "loss": loss, "lr": lr, "text_encoder_lr": text_encoder_lr}
    if val_loss is not None:
        row["val_loss"] = val_loss
    return row


def final_loss(losses: list[float]) -> float | None:
    """The loss a training ends with: the mean of its last 10% of steps (one step's loss is noise).

    The one definition, used by the training result (MLflow's ``final_loss``) and the report alike.
    None when no step was recorded.
    """
    if not losses:
        return None
    tail = losses[-max(1, len(losses) // 10) :]
    return sum(tail) / len(tail)


def read_rows(folder: str | os.PathLike) -> list[dict]:
    """The rows of the loss log in a training folder or checkpoint; empty when there is none."""
    path = Path(folder) / LOSS_LOG
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def metric_rows(row: dict) -> list[tuple[str, float, int]]:
    """A loss-log row as MLflow metric rows ``(key, value, step)``: loss, lr, and the optional ones set."""
    step = row["step"]
    rows = [("loss", row["loss"], step), ("lr", row["lr"], step)]
    for key in ("text_encoder_lr", "val_loss"):
        if row.get(key) is not None:
            rows.append((key, row[key], step))
    return rows


class LossLog:
    """The loss, learning rates and validation loss of every step reported so far, and their file.

    Args:
        folder: The training folder the log is written into.
    """

    def __init__(self, folder: Path):
        self.path = Path(folder) / LOSS_LOG
        self.losses: dict[int, float] = {}
        self.lrs: dict[int, float] = {}
        self.text_lrs: dict[int, float | None] = {}
        self.val_losses: dict[int, float] = {}

    def record(self, step: int, loss: float, lr: float, text_encoder_lr: float | None) -> dict:
        """Keep one step's values. Returns its row."""
        self.losses[step], self.lrs[step], self.text_lrs[step] = loss, lr, text_encoder_lr
        return self.row(step)

    def row(self, step: int) -> dict:
        """The row of a reported step."""
        return log_row(
            step, self.losses[step], self.lrs[step], self.text_lrs.get(step), self.val_losses.get(step)
        )

    def restore(self, rows: list[dict]) -> None:
        """Take back the rows a checkpoint saved (a resumed run)."""
        for row in rows:
            step = row["step"]
            self.losses[step], self.lrs[step] = row["loss"], row["lr"]
            self.text_lrs[step] = row.get("text_encoder_lr")
            if row.get("val_loss") is not None:
                self.val_losses[step] = row["val_loss"]

    def text(self) -> str:
        """The whole log, one JSON object per step in step order."""
        return "".join(json.dumps(self.row(k)) + "\n" for k in sorted(self.losses))

    def append(self, rows: list[dict]) -> None:
        """Add rows at the end of the file."""
        with self.path.open("a") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)

    def rewrite(self) -> None:
        """Write the whole file again, atomically (drops rows past a resumed checkpoint)."""
        write_text_atomic(self.path, self.text())

    def write_into(self, folder: Path) -> None:
        """Write the whole log into another folder (a checkpoint being made)."""
        (Path(folder) / LOSS_LOG).write_text(self.text())
