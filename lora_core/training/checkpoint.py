"""Training checkpoints: their names, saving and loading them, and whether saved training is the one asked for.

Saved training is a checkpoint or a finished ``lora/`` folder; both hold the settings and identity files.

A checkpoint ``checkpoints/step-000200/`` holds the trainable weights, Accelerate's state (optimizer,
schedule, the training's random generator and the EMA), the adapter files, the settings and identity it was
trained under, and the loss log up to its step. Continuing it gives the weights of an uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

from lora_core.adapters import find_weights_file, read_training_metadata
from lora_core.atomic import atomic_dir, write_text_atomic
from lora_core.errors import UserInputError
from lora_core.settings import TrainSettings
from lora_core.training.loss_log import read_rows

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
STEP_PREFIX = "step-"
TRAINABLE_FILE = "trainable_params.safetensors"
SETTINGS_FILE = "train_settings.json"
IDENTITY_FILE = "train_identity.json"
# The EMA of the LoRA weights (train.ema_decay), in the same formats as the raw weights, in this subfolder
# of the training folder and of each checkpoint.
EMA_DIR = "ema"


def step_folder_name(step: int) -> str:
    """The name of a step's folder (``step-000200``): checkpoints, and the sweeper's per-step grids."""
    return f"{STEP_PREFIX}{step:06d}"


def parse_step(folder: str | os.PathLike) -> int | None:
    """The step a ``step-<n>`` folder is named for, or None when the name is not one."""
    name = Path(folder).name
    digits = name.removeprefix(STEP_PREFIX)
    return int(digits) if name.startswith(STEP_PREFIX) and digits.isdigit() else None


def checkpoint_dir(output_dir: str | os.PathLike, step: int) -> Path:
    """Folder of the checkpoint at ``step`` (``checkpoints/step-000200``)."""
    return Path(output_dir) / CHECKPOINTS / step_folder_name(step)


def checkpoint_due(settings: TrainSettings, step: int) -> bool:
    """Whether ``train.checkpoint_steps`` or ``train.checkpoint_every`` asks for a checkpoint at ``step``."""
    s = settings
    return step in s.checkpoint_steps or (s.checkpoint_every > 0 and step % s.checkpoint_every == 0)


def list_checkpoints(output_dir: str | os.PathLike) -> dict[int, Path]:
    """Complete checkpoints of a training folder, by step.

    Args:
        output_dir: A training folder.

    Returns:
        Step to folder, for folders that hold both the adapter file and the training state.
    """
    root = Path(output_dir) / CHECKPOINTS
    found = {}
    for folder in root.glob(f"{STEP_PREFIX}*") if root.is_dir() else ():
        step = parse_step(folder)
        if step is not None and find_weights_file(folder) is not None and (folder / TRAINABLE_FILE).is_file():
            found[step] = folder
    return dict(sorted(found.items()))


def write_training_files(folder: Path, settings: TrainSettings, identity: dict) -> None:
    """Write the settings and identity that saved training (a checkpoint, the final folder) was made under."""
    write_text_atomic(folder / SETTINGS_FILE, json.dumps(settings.to_dict(), indent=2))
    write_text_atomic(folder / IDENTITY_FILE, json.dumps(identity, indent=2, sort_keys=True))


def read_checkpoint_settings(folder: str | os.PathLike) -> TrainSettings:
    """The settings saved training (a checkpoint, a finished folder) was made under."""
    return TrainSettings.from_dict(json.loads((Path(folder) / SETTINGS_FILE).read_text()))


def read_checkpoint_identity(folder: str | os.PathLike) -> dict:
    """What else saved weights depend on (base model, pictures), as given by their trainer."""
    path = Path(folder) / IDENTITY_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def _saved_by_adapter(folder: Path) -> tuple[TrainSettings, dict]:
    """Settings and identity from the adapter file's metadata.

    For finished folders written before they held the settings and identity files.
    """
    from dataclasses import fields

    meta = read_training_metadata(find_weights_file(folder))
    names = {f.name for f in fields(TrainSettings)}
    identity = {k.removeprefix("identity."): v for k, v in meta.items() if k.startswith("identity.")}
    return TrainSettings.from_dict({k: v for k, v in meta.items() if k in names}), identity


def _weights_key(settings: TrainSettings) -> dict:
    # alpha as it acts: null and the rank are the same weights (adapter files hold the resolved value)
    return {**settings.weights_key(), "alpha": settings.lora_alpha}


def incompatibility(
    checkpoint: Path, settings: TrainSettings, identity: dict, finished: bool = False
) -> str | None:
    """Why saved training is not the one ``settings`` (on the base model and pictures ``identity`` names) asks for.

    Args:
        checkpoint: A checkpoint folder, or with ``finished`` a finished training folder.
        settings: The settings of the run asked for.
        identity: What else its weights depend on.
        finished: The folder holds finished training: its weights must be the ones asked for (every
            weight-determining setting equal), not only a state the run can continue from.

    Returns:
        None when the saved training gives the weights asked for (continued, or as they are), else the reason.
    """
    try:
        if finished and not (Path(checkpoint) / SETTINGS_FILE).is_file():
            saved, saved_identity = _saved_by_adapter(Path(checkpoint))
        else:
            saved, saved_identity = read_checkpoint_settings(checkpoint), read_checkpoint_identity(checkpoint)
    except (OSError, ValueError, TypeError, UserInputError) as err:
        return f"unreadable settings ({err})"
    key = _weights_key if finished else TrainSettings.weights_key
    mine, theirs = key(settings), key(saved)
    if (mine != theirs) if finished else not settings.can_continue_from(saved):
        diff = {k: (v, mine.get(k)) for k, v in theirs.items() if mine.get(k) != v}
        return f"trained with other settings ({diff}, saved vs now)"
    diff = {k: (saved_identity.get(k), v) for k, v in identity.items() if saved_identity.get(k) != v}
    return f"trained on another base model or other pictures ({diff}, saved vs now)" if diff else None


def find_checkpoint(
    training_dirs: list[Path], settings: TrainSettings, identity: dict | None = None, up_to: int | None = None
) -> Path | None:
    """The furthest checkpoint, in any of ``training_dirs``, that ``settings`` can continue from.

    This is how an interrupted run resumes and how a sweep over ``max_train_steps`` reuses work: a
    checkpoint at exactly ``max_train_steps`` (from a longer run under a step-independent schedule) means
    nothing is left to train; one below it means the run continues from there.

    Args:
        training_dirs: Training folders to search (the run's own first: it wins ties).
        settings: The settings of the run to be trained.
        identity: What else the weights depend on (base model, pictures); must match the checkpoint's.
        up_to: Only checkpoints at or below this step (a rung that stops there); None: ``max_train_steps``.

    Returns:
        A checkpoint folder, or None.
    """
    best: tuple[int, Path] | None = None
    last = settings.max_train_steps if up_to is None else min(up_to, settings.max_train_steps)
    for folder in training_dirs:
        for step, checkpoint in list_checkpoints(folder).items():
            if step > last or (best is not None and step <= best[0]):
                continue
            if incompatibility(checkpoint, settings, identity or {}) is None:
                best = (step, checkpoint)
    return best[1] if best else None


class _Progress:
    """Step counter and the training's own random generator, saved with every checkpoint."""

    def __init__(self, seed: int):
        import torch

        self.step = 0
        self.generator = torch.Generator("cpu").manual_seed(seed)

    def state_dict(self) -> dict:
        return {"step": self.step, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        self.generator.set_state(state["generator"])


class Checkpointer:
    """Saves, finds and loads the checkpoints of one training folder.

    Accelerate saves the objects registered for checkpointing by their index (``custom_checkpoint_<i>``):
    the progress is always 0 and the EMA 1, so a checkpoint loads into the object that saved it.

    Args:
        output_dir: The training folder.
        settings: The training settings (saved with each checkpoint; a checkpoint must match them).
        identity: What else the weights depend on (saved; a checkpoint must match it).
        accelerator: The training's ``Accelerator`` (optimizer and schedule already prepared).
        ema: diffusers' ``EMAModel`` of the trainable weights, or None.
    """

    def __init__(self, output_dir: Path, settings: TrainSettings, identity: dict, accelerator, ema=None):
        self.output_dir, self.settings, self.identity = Path(output_dir), settings, identity
        self.accelerator = accelerator
        self.progress = _Progress(settings.seed)
        for state in [self.progress, ema]:  # the registration order: see the class docstring
            if state is not None:
                accelerator.register_for_checkpointing(state)

    def resume_point(self, resume_from: str | os.PathLike | None) -> Path | None:
        """The checkpoint to continue from.

        Args:
            resume_from: A checkpoint folder, ``"latest"`` for this training folder's newest compatible
                checkpoint (None when there is none), or None.

        Raises:
            UserInputError: The folder is no checkpoint, or was trained under other settings or identity,
                or past ``max_train_steps``.
        """
        if resume_from is None:
            return None
        if str(resume_from) == "latest":
            return find_checkpoint([self.output_dir], self.settings, self.identity)
        folder = Path(resume_from)
        if not (folder / TRAINABLE_FILE).is_file():
            raise UserInputError(f"{folder}: not a training checkpoint (no {TRAINABLE_FILE}).")
        reason = incompatibility(folder, self.settings, self.identity)
        if reason:
            raise UserInputError(
                f"{folder}: this checkpoint was {reason}; continuing it would not give the run you asked "
                "for. Start fresh or match the settings."
            )
        if (parse_step(folder) or 0) > self.settings.max_train_steps:
            raise UserInputError(
                f"{folder}: checkpoint is past train.max_train_steps={self.settings.max_train_steps}."
            )
        return folder

    def save(self, step: int, trainable: dict, write_adapters: Callable[[Path], None], loss_log) -> Path:
        """Write the training state at ``step`` (atomically): what resume continues, then the adapter files.

        Args:
            step: The step just finished.
            trainable: The trainable tensors by their checkpoint name (``trainable_tensors``).
            write_adapters: Writes the adapter files into the folder it is given.
            loss_log: The ``LossLog`` so far.

        Returns:
            The checkpoint folder.
        """
        from safetensors.torch import save_file

        target = checkpoint_dir(self.output_dir, step)
        with atomic_dir(target) as tmp:
            save_file({k: p.detach().contiguous() for k, p in trainable.items()}, str(tmp / TRAINABLE_FILE))
            self.accelerator.save_state(str(tmp))
            write_adapters(tmp)
            write_training_files(tmp, self.settings, self.identity)
            loss_log.write_into(tmp)
        return target

    def load(self, folder: Path, trainable: dict) -> list[dict]:
        """Load a checkpoint's trainable weights and training state.

        Args:
            folder: The checkpoint.
            trainable: The tensors to load into, by their checkpoint name (``trainable_tensors``).

        Returns:
            The checkpoint's loss-log rows.
        """
        import torch
        from safetensors.torch import load_file

        saved = load_file(str(folder / TRAINABLE_FILE))
        if saved.keys() != trainable.keys():
            missing = sorted(saved.keys() ^ trainable.keys())[:3]
            raise UserInputError(f"{folder}: its trainable weights are not this training's ({missing} ...).")
        with torch.no_grad():
            for name, value in saved.items():
                trainable[name].copy_(value)
        self.accelerator.load_state(str(folder))
        log.info("Resumed from %s at step %d", folder, self.progress.step)
        return read_rows(folder)


def trainable_tensors(models: list) -> dict:
    """The trainable parameters of ``models`` by their checkpoint name (``<model index>.<parameter name>``)."""
    return {
        f"{i}.{name}": p
        for i, model in enumerate(models)
        for name, p in model.named_parameters()
        if p.requires_grad
    }
