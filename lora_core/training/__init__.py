"""LoRA training: the recipe (``recipe.LoraTrainer``, ``train_lora``) and the library pieces beside it.

Checkpoints, inputs, validation, weight swaps, the loss log, the denoising objective, device and results.
"""

from lora_core.training.checkpoint import (
    CHECKPOINTS,
    EMA_DIR,
    STEP_PREFIX,
    checkpoint_dir,
    find_checkpoint,
    incompatibility,
    list_checkpoints,
    parse_step,
    step_folder_name,
)
from lora_core.training.loss_log import LOSS_LOG
from lora_core.training.recipe import ADAPTER_NAME, LoraTrainer, train_lora
from lora_core.training.results import RESULT_FILE, StepRecord, TrainingStopped, TrainResult
from lora_core.training.validation import denoising_loss

__all__ = [
    "ADAPTER_NAME",
    "CHECKPOINTS",
    "EMA_DIR",
    "LOSS_LOG",
    "RESULT_FILE",
    "STEP_PREFIX",
    "LoraTrainer",
    "StepRecord",
    "TrainResult",
    "TrainingStopped",
    "checkpoint_dir",
    "denoising_loss",
    "find_checkpoint",
    "incompatibility",
    "list_checkpoints",
    "parse_step",
    "step_folder_name",
    "train_lora",
]
