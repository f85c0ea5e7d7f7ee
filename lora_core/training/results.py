"""What a training reports: one record per step, the result of a finished training, and a stop on request."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from lora_core.adapters import KOHYA_FILE, weights_file_name
from lora_core.atomic import write_text_atomic
from lora_core.settings import TrainSettings
from lora_core.training.checkpoint import EMA_DIR, list_checkpoints, write_training_files
from lora_core.training.loss_log import LossLog, final_loss, log_row

RESULT_FILE = "train_result.json"


class TrainingStopped(Exception):
    """Training stopped before ``max_train_steps`` because ``should_stop`` asked it to.

    The state at ``step`` is saved in ``checkpoint``; training the same settings again with
    ``resume_from="latest"`` (or ``find_checkpoint``) continues from it to the same final weights.

    Attributes:
        step: Optimizer steps done.
        checkpoint: The checkpoint folder written at ``step``.
    """

    def __init__(self, step: int, checkpoint: Path):
        super().__init__(step, checkpoint)  # the arguments themselves: a pickled copy rebuilds (submitit)
        self.step, self.checkpoint = step, checkpoint

    def __str__(self) -> str:
        return f"training stopped on request at step {self.step}; continue from {self.checkpoint}"


class StepClock:
    """Times one process's step loop: the first step (warm-up) apart from the steady ones."""

    def __init__(self):
        self.started = time.perf_counter()
        self.first_done: float | None = None

    def step_done(self) -> None:
        """Note the end of a step."""
        if self.first_done is None:
            self.first_done = time.perf_counter()

    def elapsed(self) -> float:
        """Seconds since the loop started."""
        return time.perf_counter() - self.started

    def timing(self, steps: int) -> dict[str, float]:
        """``train_seconds``, ``first_step_seconds`` and ``steps_per_second`` (first step left out) of ``steps``."""
        end, first = time.perf_counter(), self.first_done
        steady = steps > 1 and first is not None and end > first
        return {
            "train_seconds": end - self.started,
            "first_step_seconds": first - self.started if first is not None else 0.0,
            "steps_per_second": (steps - 1) / (end - first) if steady else 0.0,
        }


@dataclass
class StepRecord:
    """What the trainer reports after each optimizer step.

    Attributes:
        step: Optimizer steps done (1-based).
        loss: Mean denoising loss of the step (prior loss included, weighted).
        lr: UNet learning rate used for the step.
        text_encoder_lr: Text-encoder learning rate used, or None when it is frozen.
        seconds: Wall time since training (this process) started.
        val_loss: Validation loss after this step, on steps where it was measured (else None).
    """

    step: int
    loss: float
    lr: float
    text_encoder_lr: float | None
    seconds: float
    val_loss: float | None = None

    def log_row(self) -> dict:
        """The step's loss-log row (``lora_core.training.loss_log``)."""
        return log_row(self.step, self.loss, self.lr, self.text_encoder_lr, self.val_loss)


@dataclass
class TrainResult:
    """What a finished training produced.

    Attributes:
        output_dir: The training folder.
        lora_path: The adapter file: diffusers format (LoRA, DoRA) or peft naming (LoHa, LoKr).
        kohya_path: Kohya-format export.
        checkpoints: Step to checkpoint folder (each holds the adapter file as ``lora_path`` names it).
        loss_history: Loss of every step from 1 to ``max_train_steps`` (resumed runs included).
        lr_history: UNet learning rate of every step.
        val_losses: Step to validation loss, for the steps where it was measured.
        steps_per_second: Steady-state speed in this process (first step excluded).
        first_step_seconds: Time of the first step in this process (warm-up).
        peak_memory_mb: Peak GPU memory allocated, or the process's peak RSS on the CPU.
        memory_kind: ``cuda_allocated`` or ``process_rss``.
        resumed_from_step: Step the run continued from (0 for a fresh run).
        train_seconds: Wall time of the step loop in this process.
        ema_lora_path: Adapter file of the EMA weights (``ema/``, named as ``lora_path``), or None without EMA.
    """

    output_dir: Path
    lora_path: Path
    kohya_path: Path
    checkpoints: dict[int, Path] = field(default_factory=dict)
    loss_history: list[float] = field(default_factory=list)
    lr_history: list[float] = field(default_factory=list)
    val_losses: dict[int, float] = field(default_factory=dict)
    steps_per_second: float = 0.0
    first_step_seconds: float = 0.0
    peak_memory_mb: float = 0.0
    memory_kind: str = "process_rss"
    resumed_from_step: int = 0
    train_seconds: float = 0.0
    ema_lora_path: Path | None = None

    def to_json(self) -> dict:
        """JSON-friendly summary (histories left out; they live in the loss log)."""
        skip = {"loss_history", "lr_history", "val_losses"}
        out = {k: v for k, v in self.__dict__.items() if k not in skip}
        out["output_dir"], out["lora_path"], out["kohya_path"] = map(
            str, (self.output_dir, self.lora_path, self.kohya_path)
        )
        out["checkpoints"] = {str(k): str(v) for k, v in self.checkpoints.items()}
        out["ema_lora_path"] = str(self.ema_lora_path) if self.ema_lora_path else None
        out["final_loss"] = final_loss(self.loss_history)
        return out


def finish_folder(
    out: Path, settings: TrainSettings, identity: dict, log: LossLog, ema: bool, **extra
) -> TrainResult:
    """Complete a finished training's folder, its adapter files written: settings, identity, loss log, result.

    Args:
        out: The training folder.
        settings: The training's settings.
        identity: What else its weights depend on.
        log: Its loss log.
        ema: Whether an EMA was kept (``ema/`` holds its files).
        extra: Further ``TrainResult`` fields (speed, memory, resumed step).

    Returns:
        The result, also written as ``train_result.json``.
    """
    write_training_files(out, settings, identity)
    log.rewrite()
    steps = range(1, settings.max_train_steps + 1)
    result = TrainResult(
        output_dir=out,
        lora_path=out / weights_file_name(settings.adapter_kind),
        kohya_path=out / KOHYA_FILE,
        checkpoints=list_checkpoints(out),
        loss_history=[log.losses.get(k, float("nan")) for k in steps],
        lr_history=[log.lrs.get(k, float("nan")) for k in steps],
        val_losses=dict(sorted(log.val_losses.items())),
        ema_lora_path=out / EMA_DIR / weights_file_name(settings.adapter_kind) if ema else None,
        **extra,
    )
    write_text_atomic(out / RESULT_FILE, json.dumps(result.to_json(), indent=2))
    return result
