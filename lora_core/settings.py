"""Training hyperparameters as a plain dataclass, validated before any model loads."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

from lora_core.errors import UserInputError

SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")
# Schedules whose learning rate at step k does not depend on max_train_steps: a shorter run is a prefix
# of a longer one, so a sweep over steps can train once and cut checkpoints.
STEP_INDEPENDENT_SCHEDULERS = ("constant", "constant_with_warmup")
MIXED_PRECISION = ("auto", "no", "fp16", "bf16")
UNET_ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")
UNET_FEED_FORWARD = ("ff.net.0.proj", "ff.net.2")
TEXT_ATTENTION = ("q_proj", "k_proj", "v_proj", "out_proj")
TEXT_MLP = ("fc1", "fc2")

# Fields that only say when to save or report; they never change the trained weights.
BOOKKEEPING_FIELDS = frozenset({"checkpoint_steps", "checkpoint_every", "log_every", "progress_bar"})


@dataclass
class Hyperparameters:
    """The training hyperparameters: the schema of the config's ``train`` node, every field sweepable.

    Hydra's typed config (``sweeper.schema``) uses this class as it is, so a key, its type and its default
    are defined once, here. ``TrainSettings`` adds what a run takes from the subject and the LoRA targets.

    Attributes:
        learning_rate: UNet LoRA learning rate.
        text_encoder_lr: Text-encoder LoRA learning rate; 0 keeps the text encoder frozen (no LoRA on it).
        lr_scheduler: One of ``SCHEDULERS`` (from ``diffusers.optimization.get_scheduler``).
        lr_warmup_steps: Warm-up steps of the schedule.
        lr_num_cycles: Restarts of ``cosine_with_restarts``.
        lr_power: Power of ``polynomial``.
        max_train_steps: Optimizer steps.
        train_batch_size: Subject pictures per micro-batch.
        gradient_accumulation_steps: Micro-batches per optimizer step.
        max_grad_norm: Gradient clipping norm (0 disables clipping).
        adam_beta1: AdamW beta1.
        adam_beta2: AdamW beta2.
        adam_weight_decay: AdamW weight decay.
        adam_epsilon: AdamW epsilon.
        rank: LoRA rank.
        alpha: LoRA alpha (scale = alpha / rank); None means alpha = rank (scale 1).
        dropout: LoRA dropout.
        seed: Seed of the LoRA init, the noise, the timesteps and the picture order.
        resolution: Training side in pixels; None means the base model's native side (the sweep fills it
            in; training itself needs a number).
        random_flip: Flip each sampled picture horizontally with probability 0.5.
        mixed_precision: ``auto`` (follow the model's dtype), ``no``, ``fp16`` or ``bf16``.
        gradient_checkpointing: Trade compute for memory in the UNet (and text encoder).
        noise_offset: Offset noise strength (0 disables); helps very dark or bright pictures.
        snr_gamma: Min-SNR-gamma loss weighting (None disables; 5.0 is the paper's value).
        with_prior_preservation: DreamBooth prior preservation with class pictures.
        num_class_images: Number of class pictures.
        prior_loss_weight: Weight of the class-picture loss.
        class_sample_steps: Sampler steps when the base model draws the class pictures.
        class_guidance: Guidance when the base model draws the class pictures.
        checkpoint_steps: Steps at which the LoRA weights and the training state are saved.
        checkpoint_every: Also save a resumable checkpoint every this many steps. 0: resumable
            checkpoints only at ``checkpoint_steps``; the end of training always writes the final LoRA
            weights, which are not a resumable checkpoint (no optimizer state).
        log_every: Report loss and learning rate every this many steps (reading the loss syncs the GPU).
    """

    learning_rate: float = 1e-4
    text_encoder_lr: float = 1e-5
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    lr_num_cycles: int = 1
    lr_power: float = 1.0
    max_train_steps: int = 500
    train_batch_size: int = 1
    gradient_accumulation_steps: int = 1
    max_grad_norm: float = 1.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    rank: int = 4
    alpha: float | None = None
    dropout: float = 0.0
    seed: int = 0
    resolution: int | None = None
    random_flip: bool = False
    mixed_precision: str = "auto"
    gradient_checkpointing: bool = False
    noise_offset: float = 0.0
    snr_gamma: float | None = None
    with_prior_preservation: bool = False
    num_class_images: int = 100
    prior_loss_weight: float = 1.0
    class_sample_steps: int = 25
    class_guidance: float = 7.5
    checkpoint_steps: tuple[int, ...] = field(default_factory=tuple)
    checkpoint_every: int = 0
    log_every: int = 10


@dataclass
class TrainSettings(Hyperparameters):
    """Everything that determines a LoRA training run: the hyperparameters and what they are applied to.

    Attributes:
        instance_prompt: The prompt the subject pictures are trained under (``a photo of ktn cat``);
            in a sweep, ``data.instance_prompt`` with the token and class filled in.
        class_prompt: Prompt of the class pictures (``a photo of a cat``; ``data.class_prompt``).
        center_crop: Crop pictures to the centre square, else stretch (``data.center_crop``).
        unet_target_modules: UNet modules that get LoRA layers (``lora.unet_target_modules``).
        text_target_modules: Text-encoder modules that get LoRA layers when it trains
            (``lora.text_target_modules``).
        progress_bar: Show a tqdm bar.
    """

    instance_prompt: str = "a photo of ktn cat"
    class_prompt: str = ""
    center_crop: bool = True
    unet_target_modules: tuple[str, ...] = UNET_ATTENTION
    text_target_modules: tuple[str, ...] = TEXT_ATTENTION
    progress_bar: bool = True

    @property
    def trains_text_encoder(self) -> bool:
        """Whether the text encoder gets a LoRA (``text_encoder_lr > 0``)."""
        return self.text_encoder_lr > 0

    @property
    def lora_alpha(self) -> float:
        """The alpha actually used: ``alpha`` or, when unset, the rank."""
        return float(self.rank if self.alpha is None else self.alpha)

    def to_dict(self) -> dict:
        """All fields as JSON-friendly values (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def weights_key(self) -> dict:
        """The fields that determine the trained weights (not when to save or report).

        Returns:
            A dict; two settings with equal keys train equal weights.
        """
        return {k: v for k, v in self.to_dict().items() if k not in BOOKKEEPING_FIELDS}

    def can_continue_from(self, other: TrainSettings) -> bool:
        """Whether a training state saved under ``other`` can be continued under these settings.

        Equal weight-determining fields, except that ``max_train_steps`` may differ when the schedule
        does not depend on it (then the first k steps of any run are the same).

        Args:
            other: Settings of the saved state.

        Returns:
            True if continuing gives the same weights as training from scratch under these settings.
        """
        mine, theirs = self.weights_key(), other.weights_key()
        if self.lr_scheduler in STEP_INDEPENDENT_SCHEDULERS:
            mine.pop("max_train_steps")
            theirs.pop("max_train_steps")
        return mine == theirs

    @classmethod
    def from_dict(cls, values: dict) -> TrainSettings:
        """Build settings from a dict (unknown keys are an error, lists become tuples).

        Args:
            values: Field values.

        Returns:
            The settings (not yet validated).

        Raises:
            UserInputError: A key is not a training setting.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UserInputError(
                f"train.{unknown[0]}: not a training setting. Known: {', '.join(sorted(known))}."
            )
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})

    def validate(self, prefix: str = "train") -> None:
        """Check every value; the first problem raises.

        Args:
            prefix: Config path shown in messages (``train`` gives ``train.learning_rate``).

        Raises:
            UserInputError: One line naming the key, the value and what is allowed.
        """
        for problem in self._problems():
            key, message = problem
            raise UserInputError(f"{prefix}.{key}={getattr(self, key)!r}: {message}")

    def _problems(self):
        def finite(v):
            return isinstance(v, int | float) and math.isfinite(v)

        if not self.instance_prompt.strip():
            yield "instance_prompt", "must not be empty (it names the subject, e.g. 'a photo of ktn cat')."
        if self.resolution is None or self.resolution < 8 or self.resolution % 8:
            yield "resolution", "must be a positive multiple of 8 (512 for Stable Diffusion 1.5)."
        if not finite(self.learning_rate) or not 0 < self.learning_rate < 1:
            yield "learning_rate", "must be > 0 and < 1 (typical LoRA values: 1e-5 to 1e-3)."
        if not finite(self.text_encoder_lr) or not 0 <= self.text_encoder_lr < 1:
            yield "text_encoder_lr", "must be >= 0 and < 1 (0 keeps the text encoder frozen)."
        if self.lr_scheduler not in SCHEDULERS:
            yield "lr_scheduler", f"unknown schedule; use one of {', '.join(SCHEDULERS)}."
        if self.max_train_steps < 1:
            yield "max_train_steps", "must be at least 1."
        if not 0 <= self.lr_warmup_steps <= self.max_train_steps:
            yield "lr_warmup_steps", "must be between 0 and max_train_steps."
        for key in ("train_batch_size", "gradient_accumulation_steps", "rank", "log_every", "lr_num_cycles"):
            if getattr(self, key) < 1:
                yield key, "must be at least 1."
        if self.alpha is not None and (not finite(self.alpha) or self.alpha <= 0):
            yield "alpha", "must be > 0 (or null for alpha = rank)."
        if not 0 <= self.dropout < 1:
            yield "dropout", "must be in [0, 1)."
        if not self.unet_target_modules:
            yield (
                "unet_target_modules",
                "must name at least one UNet module (e.g. to_q, to_k, to_v, to_out.0).",
            )
        if self.trains_text_encoder and not self.text_target_modules:
            yield "text_target_modules", "must name at least one module when text_encoder_lr > 0."
        if self.mixed_precision not in MIXED_PRECISION:
            yield "mixed_precision", f"use one of {', '.join(MIXED_PRECISION)}."
        if self.max_grad_norm < 0:
            yield "max_grad_norm", "must be >= 0 (0 disables clipping)."
        if not 0 <= self.noise_offset <= 1:
            yield "noise_offset", "must be in [0, 1] (0.05-0.1 is typical)."
        if self.snr_gamma is not None and self.snr_gamma <= 0:
            yield "snr_gamma", "must be > 0 (5.0 is the Min-SNR paper's value) or null."
        if self.with_prior_preservation and not self.class_prompt.strip():
            yield "class_prompt", "must be set when with_prior_preservation is on (e.g. 'a photo of a cat')."
        if self.with_prior_preservation and self.num_class_images < 1:
            yield "num_class_images", "must be at least 1 with prior preservation."
        if self.prior_loss_weight < 0:
            yield "prior_loss_weight", "must be >= 0."
        if any(s < 1 or s > self.max_train_steps for s in self.checkpoint_steps):
            yield (
                "checkpoint_steps",
                f"every step must be between 1 and max_train_steps ({self.max_train_steps}).",
            )
        if self.checkpoint_every < 0:
            yield "checkpoint_every", "must be >= 0 (0: no periodic checkpoints)."
        for key in ("adam_beta1", "adam_beta2"):
            if not 0 <= getattr(self, key) < 1:
                yield key, "must be in [0, 1)."
