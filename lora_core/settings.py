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
# The UNet's convolutions (LoCon): resnet convolutions and shortcuts, down/upsamplers, and the
# transformer blocks' projections (1x1 convolutions in SD 1.x).
UNET_CONV = (
    "conv1",
    "conv2",
    "conv_shortcut",
    "downsamplers.0.conv",
    "upsamplers.0.conv",
    "proj_in",
    "proj_out",
)
# Adapter kinds (``lora.kind``), each from peft; lora_core.adapters builds them.
ADAPTER_KINDS = ("lora", "dora", "loha", "lokr")
# TrainSettings fields that come from other config groups than ``train``, by their config key (for messages).
FIELD_SOURCES = {
    "caption_mode": "data.caption_mode",
    "adapter_kind": "lora.kind",
    "conv_target_modules": "lora.conv_target_modules",
    "conv_rank": "lora.conv_rank",
    "conv_alpha": "lora.conv_alpha",
}

# Optimizers by name; each comes from its maintained library (see lora_core.optimizers).
OPTIMIZERS = ("adamw", "adamw8bit", "prodigy", "adafactor", "schedulefree_adamw")

# Fields that only say when to save or report; they never change the trained weights.
# Validation reads the weights without touching the training's random state, so it is bookkeeping too.
BOOKKEEPING_FIELDS = frozenset(
    {
        "checkpoint_steps",
        "checkpoint_every",
        "log_every",
        "progress_bar",
        "validation_every",
        "validation_samples",
    }
)


@dataclass
class ProdigyOptions:
    """Prodigy's options (``train.optim.prodigy.*``, ``prodigyopt.Prodigy``).

    Prodigy estimates the step size ``d`` itself, one for both models (prodigyopt refuses different rates
    per group), so it takes its own rate, ``lr`` (1.0, the authors' recommendation), for the UNet and the
    text encoder alike; ``train.learning_rate`` and ``train.text_encoder_lr`` are not used (except that
    ``text_encoder_lr=0`` still keeps the text encoder frozen). That way ``train.optimizer=adamw,prodigy``
    sweeps with one command. ``d_coef`` shrinks or grows the step of both models.

    Attributes:
        lr: Multiplier of the estimated step size (1.0 recommended); the loss log's ``lr`` is ``d * lr``.
        d_coef: Multiplier of the estimated step size (< 1 for a gentler fit; 0.5-2 is the useful range).
        d0: Initial step-size estimate (raise it when the run barely moves for hundreds of steps).
        use_bias_correction: Adam-style bias correction of ``d`` (recommended for diffusion models).
        safeguard_warmup: Keep ``d`` from overshooting while a warm-up schedule holds the rate low
            (recommended whenever ``train.lr_warmup_steps > 0``).
    """

    lr: float = 1.0
    d_coef: float = 1.0
    d0: float = 1e-6
    use_bias_correction: bool = True
    safeguard_warmup: bool = True


@dataclass
class AdafactorOptions:
    """Adafactor's options (``train.optim.adafactor.*``, ``transformers.optimization.Adafactor``).

    The learning rate is ``train.learning_rate`` (Adafactor's own relative step is off).

    Attributes:
        scale_parameter: Scale the step by each weight's RMS.
        clip_threshold: Threshold of the update's RMS clipping.
        decay_rate: Exponent of the second-moment decay (-0.8 is the paper's value).
        beta1: First-moment decay; None keeps no first moment (Adafactor's memory saving).
    """

    scale_parameter: bool = False
    clip_threshold: float = 1.0
    decay_rate: float = -0.8
    beta1: float | None = None


@dataclass
class ScheduleFreeOptions:
    """Schedule-free AdamW's options (``train.optim.schedulefree.*``, ``schedulefree.AdamWScheduleFree``).

    It replaces the schedule: use ``train.lr_scheduler=constant``; ``train.lr_warmup_steps`` becomes its
    own warm-up.

    Attributes:
        r: Polynomial weighting of the averaged iterates (0 is the paper's default).
        weight_lr_power: How strongly later, larger-rate iterates weigh in the average.
    """

    r: float = 0.0
    weight_lr_power: float = 2.0


@dataclass
class OptimizerOptions:
    """Each optimizer's own options (``train.optim.<optimizer>.*``); only the chosen one's apply.

    The Adam-family values (``train.adam_beta1``, ``adam_beta2``, ``adam_epsilon``, ``adam_weight_decay``)
    are shared by ``adamw``, ``adamw8bit``, ``prodigy`` and ``schedulefree_adamw``; Adafactor takes only
    the weight decay.
    """

    prodigy: ProdigyOptions = field(default_factory=ProdigyOptions)
    adafactor: AdafactorOptions = field(default_factory=AdafactorOptions)
    schedulefree: ScheduleFreeOptions = field(default_factory=ScheduleFreeOptions)

    @classmethod
    def from_dict(cls, values: dict) -> OptimizerOptions:
        """Build options from nested dicts (unknown keys are an error).

        Raises:
            UserInputError: A key is not an option of that optimizer.
        """
        kinds = {f.name: f.default_factory for f in fields(cls)}
        out = {}
        for name, options in values.items():
            if name not in kinds:
                raise UserInputError(
                    f"train.optim.{name}: no such optimizer options; known: {', '.join(kinds)}."
                )
            known = {f.name for f in fields(kinds[name])}
            unknown = sorted(set(options) - known)
            if unknown:
                raise UserInputError(
                    f"train.optim.{name}.{unknown[0]}: not an option of {name}. Known: {', '.join(sorted(known))}."
                )
            out[name] = kinds[name](**options)
        return cls(**out)


@dataclass
class Hyperparameters:
    """The training hyperparameters: the schema of the config's ``train`` node, every field sweepable.

    Hydra's typed config (``sweeper.config.schema``) uses this class as it is, so a key, its type and its default
    are defined once, here. ``TrainSettings`` adds what a run takes from the subject and the LoRA targets.

    Every field can be set or swept on the command line (``python -m sweeper -m
    train.learning_rate=1e-4,3e-4 train.lr_scheduler=constant,cosine``) or in a ``conf/train/`` option;
    ``python -m sweeper --cfg job -p train`` prints them all with their values. Prodigy and schedule-free
    AdamW need ``pip install 'lora-sweeps[optimizers]'``.

    Attributes:
        learning_rate: UNet LoRA learning rate.
        text_encoder_lr: Text-encoder LoRA learning rate; 0 keeps the text encoder frozen (no LoRA on it).
        text_encoder_2_lr: SDXL's second text encoder's LoRA learning rate; None: ``text_encoder_lr``; 0 keeps
            it frozen. SD 1.x / 2.x models have no second text encoder and ignore it.
        lr_scheduler: One of ``SCHEDULERS`` (from ``diffusers.optimization.get_scheduler``).
        lr_warmup_steps: Warm-up steps of the schedule.
        lr_num_cycles: Restarts of ``cosine_with_restarts``.
        lr_power: Power of ``polynomial``.
        max_train_steps: Optimizer steps.
        train_batch_size: Subject pictures per micro-batch.
        gradient_accumulation_steps: Micro-batches per optimizer step.
        max_grad_norm: Gradient clipping norm (0 disables clipping).
        optimizer: One of ``OPTIMIZERS``: ``adamw`` (torch), ``adamw8bit`` (bitsandbytes, CUDA only),
            ``prodigy`` (prodigyopt; its own rate ``optim.prodigy.lr``), ``adafactor`` (transformers),
            ``schedulefree_adamw`` (schedulefree; constant schedule).
        optim: Each optimizer's own options (``train.optim.prodigy.d_coef`` ...).
        adam_beta1: Beta1 of the Adam-family optimizers.
        adam_beta2: Beta2 of the Adam-family optimizers.
        adam_weight_decay: Decoupled weight decay (every optimizer).
        adam_epsilon: Epsilon of the Adam-family optimizers.
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
        validation_every: Every this many steps, the denoising loss on a fixed set of (picture, timestep,
            noise) triples (``val_loss`` in the loss log, MLflow and ``loss_curves.png``); 0 disables.
            Being fixed, it is free of the sampling noise that hides a trend in the training loss.
        validation_samples: Size of that set; timesteps spread evenly over the schedule, pictures in turn.
        caption_dropout: Probability that a step trains a subject picture under the empty caption (0
            disables; 0.05-0.1 is typical): the LoRA learns the subject's look apart from its words. Drawn
            from the step and the seed, so a resumed run drops the same captions.
        ema_decay: Keep an exponential moving average of the LoRA weights with this decay (null or 0: off;
            0.99-0.999 is typical for a few thousand steps). Warm-up: the ``t``-th optimizer step uses
            ``min(ema_decay, (1 + n) / (10 + n))`` with ``n = t - 1`` (0 at the first step, so the average
            starts at the first step's weights; diffusers' ``EMAModel``). Saved in ``lora/ema/`` beside the
            raw weights and in every checkpoint; ``render.weights=ema|both`` renders it.
    """

    learning_rate: float = 1e-4
    text_encoder_lr: float = 1e-5
    text_encoder_2_lr: float | None = None
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    lr_num_cycles: int = 1
    lr_power: float = 1.0
    max_train_steps: int = 500
    train_batch_size: int = 1
    gradient_accumulation_steps: int = 1
    max_grad_norm: float = 1.0
    optimizer: str = "adamw"
    optim: OptimizerOptions = field(default_factory=OptimizerOptions)
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
    validation_every: int = 0
    validation_samples: int = 8
    caption_dropout: float = 0.0
    ema_decay: float | None = None


@dataclass
class TrainSettings(Hyperparameters):
    """Everything that determines a LoRA training run: the hyperparameters and what they are applied to.

    Attributes:
        instance_prompt: The prompt the subject pictures are trained under (``a photo of ktn cat``);
            in a sweep, ``data.instance_prompt`` with the token and class filled in.
        class_prompt: Prompt of the class pictures (``a photo of a cat``; ``data.class_prompt``).
        center_crop: Crop pictures to the centre square, else stretch (``data.center_crop``).
        caption_mode: Where each picture's caption comes from (``data.caption_mode``,
            ``lora_core.data.captions.CAPTION_MODES``); the captions themselves are given to the trainer.
        unet_target_modules: UNet modules that get LoRA layers (``lora.unet_target_modules``).
        text_target_modules: Text-encoder modules that get LoRA layers when it trains
            (``lora.text_target_modules``).
        adapter_kind: One of ``ADAPTER_KINDS`` (``lora.kind``): ``lora``, ``dora`` (LoRA with a learned
            magnitude per output channel), ``loha`` (Hadamard product of two low-rank pairs), ``lokr``
            (Kronecker product).
        conv_target_modules: UNet convolutions that get the adapter too, with their own rank and alpha
            (``lora.conv_target_modules``; LoCon). Empty: none.
        conv_rank: Rank of the convolutions (``lora.conv_rank``); None: ``rank``.
        conv_alpha: Alpha of the convolutions (``lora.conv_alpha``); None: their rank (scale 1).
        progress_bar: Show a tqdm bar.
    """

    instance_prompt: str = "a photo of ktn cat"
    class_prompt: str = ""
    center_crop: bool = True
    caption_mode: str = "instance_prompt"
    unet_target_modules: tuple[str, ...] = UNET_ATTENTION
    text_target_modules: tuple[str, ...] = TEXT_ATTENTION
    adapter_kind: str = "lora"
    conv_target_modules: tuple[str, ...] = ()
    conv_rank: int | None = None
    conv_alpha: float | None = None
    progress_bar: bool = True

    @property
    def trains_text_encoder(self) -> bool:
        """Whether the text encoder gets a LoRA (``text_encoder_lr > 0``)."""
        return self.text_encoder_lr > 0

    @property
    def text_encoder_2_rate(self) -> float:
        """SDXL's second text encoder's learning rate: ``text_encoder_2_lr``, else ``text_encoder_lr``."""
        return self.text_encoder_lr if self.text_encoder_2_lr is None else self.text_encoder_2_lr

    @property
    def trains_text_encoder_2(self) -> bool:
        """Whether SDXL's second text encoder gets a LoRA (its learning rate above 0)."""
        return self.text_encoder_2_rate > 0

    @property
    def uses_ema(self) -> bool:
        """Whether an EMA of the LoRA weights is kept (``ema_decay`` set and above 0)."""
        return bool(self.ema_decay)

    @property
    def lora_alpha(self) -> float:
        """The alpha actually used: ``alpha`` or, when unset, the rank."""
        return float(self.rank if self.alpha is None else self.alpha)

    def add_checkpoint_steps(self, steps) -> None:
        """Also save checkpoints at ``steps`` (those past ``max_train_steps`` are left out).

        The one place a job's checkpoint steps are assembled: its own ``checkpoint_steps``, the sweep's
        checkpoint axis and rung stops (``sweeper.config.spec``), and the steps the sweep plan asks for.
        """
        wanted = {int(s) for s in steps if int(s) <= self.max_train_steps}
        self.checkpoint_steps = tuple(sorted({*self.checkpoint_steps, *wanted}))

    def to_dict(self) -> dict:
        """All fields as JSON-friendly values (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def weights_key(self) -> dict:
        """The fields that determine the trained weights (not when to save or report).

        Returns:
            A dict; two settings with equal keys train equal weights.
        """
        key = {k: v for k, v in self.to_dict().items() if k not in BOOKKEEPING_FIELDS}
        # Only the chosen optimizer's options shape the weights.
        chosen = self.optimizer.removesuffix("_adamw")
        key["optim"] = {k: v for k, v in key["optim"].items() if k == chosen}
        key["ema_decay"] = self.ema_decay if self.uses_ema else None  # null and 0 both mean no EMA
        return key

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
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        if isinstance(values.get("optim"), dict):
            values["optim"] = OptimizerOptions.from_dict(values["optim"])
        return cls(**values)

    def validate(self, prefix: str = "train") -> None:
        """Check every value; the first problem raises.

        Args:
            prefix: Config path shown in messages (``train`` gives ``train.learning_rate``).

        Raises:
            UserInputError: One line naming the key, the value and what is allowed.
        """
        for problem in self._problems():
            key, message = problem
            value = self
            for part in key.split("."):  # nested keys: optim.prodigy.d_coef
                value = getattr(value, part)
            raise UserInputError(f"{FIELD_SOURCES.get(key, f'{prefix}.{key}')}={value!r}: {message}")

    def _problems(self):
        def finite(v):
            return isinstance(v, int | float) and math.isfinite(v)

        if not self.instance_prompt.strip():
            yield "instance_prompt", "must not be empty (it names the subject, e.g. 'a photo of ktn cat')."
        if self.resolution is None or self.resolution < 8 or self.resolution % 8:
            yield "resolution", "must be a positive multiple of 8 (512 for Stable Diffusion 1.5)."
        yield from self._learning_rate_problems()
        yield from self._optimizer_problems()
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
        if (self.trains_text_encoder or self.trains_text_encoder_2) and not self.text_target_modules:
            yield "text_target_modules", "must name at least one module when text_encoder_lr > 0."
        yield from self._adapter_problems()
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
        if self.validation_every < 0:
            yield "validation_every", "must be >= 0 (0: no validation loss; 50 costs under 5 % of the steps)."
        if self.validation_samples < 1:
            yield "validation_samples", "must be at least 1 (8 is the default)."
        if self.checkpoint_every < 0:
            yield "checkpoint_every", "must be >= 0 (0: no periodic checkpoints)."
        for key in ("adam_beta1", "adam_beta2"):
            if not 0 <= getattr(self, key) < 1:
                yield key, "must be in [0, 1)."
        yield from self._caption_and_ema_problems()

    def _caption_and_ema_problems(self):
        from lora_core.data.captions import CAPTION_MODES

        if self.caption_mode not in CAPTION_MODES:
            yield "caption_mode", f"use one of {', '.join(CAPTION_MODES)}."
        if not (math.isfinite(self.caption_dropout) and 0 <= self.caption_dropout < 1):
            yield "caption_dropout", "must be in [0, 1) (0 disables; 0.05-0.1 is typical)."
        if self.ema_decay is not None and not (math.isfinite(self.ema_decay) and 0 <= self.ema_decay < 1):
            yield "ema_decay", "must be in [0, 1) (null or 0: no EMA; 0.99-0.999 is typical)."
        if self.uses_ema and self.optimizer == "schedulefree_adamw":
            yield (
                "ema_decay",
                "schedulefree_adamw already saves an average of its iterates; set train.ema_decay=null "
                "or use another optimizer.",
            )

    def _adapter_problems(self):
        if self.adapter_kind not in ADAPTER_KINDS:
            yield "adapter_kind", f"unknown adapter kind; use one of {', '.join(ADAPTER_KINDS)}."
        if self.conv_rank is not None and self.conv_rank < 1:
            yield "conv_rank", "must be at least 1 (or null for train.rank)."
        if self.conv_alpha is not None and (not math.isfinite(self.conv_alpha) or self.conv_alpha <= 0):
            yield "conv_alpha", "must be > 0 (or null for alpha = conv rank)."
        both = sorted(set(self.conv_target_modules) & set(self.unet_target_modules))
        if both:
            yield (
                "conv_target_modules",
                f"{both[0]} is also in lora.unet_target_modules; name each module in one list only.",
            )

    def _learning_rate_problems(self):
        finite = math.isfinite
        if not finite(self.learning_rate) or not 0 < self.learning_rate < 1:
            yield "learning_rate", "must be > 0 and < 1 (typical LoRA values: 1e-5 to 1e-3)."
        if not finite(self.text_encoder_lr) or not 0 <= self.text_encoder_lr < 1:
            yield "text_encoder_lr", "must be >= 0 and < 1 (0 keeps the text encoder frozen)."
        rate = self.text_encoder_2_lr
        if rate is not None and (not finite(rate) or not 0 <= rate < 1):
            yield "text_encoder_2_lr", "must be >= 0 and < 1 (0 keeps SDXL's second text encoder frozen)."

    def _optimizer_problems(self):
        if self.optimizer not in OPTIMIZERS:
            yield "optimizer", f"unknown optimizer; use one of {', '.join(OPTIMIZERS)}."
            return
        if self.adam_weight_decay < 0:
            yield "adam_weight_decay", "must be >= 0."
        if self.adam_epsilon <= 0:
            yield "adam_epsilon", "must be > 0."
        if self.optimizer == "schedulefree_adamw" and self.lr_scheduler != "constant":
            yield (
                "lr_scheduler",
                "must be constant with schedulefree_adamw (it is its own schedule; "
                "train.lr_warmup_steps becomes its warm-up).",
            )
        p, a = self.optim.prodigy, self.optim.adafactor
        for key, value, message in (
            ("prodigy.lr", min(p.lr, 10 - p.lr), "must be > 0 and <= 10 (1.0 is recommended)."),
            ("prodigy.d_coef", p.d_coef, "must be > 0 (0.5-2 is the useful range; 1.0 by default)."),
            ("prodigy.d0", p.d0, "must be > 0 (1e-6 by default)."),
            ("adafactor.clip_threshold", a.clip_threshold, "must be > 0 (1.0 by default)."),
            ("adafactor.decay_rate", -a.decay_rate, "must be < 0 (-0.8 is the paper's value)."),
        ):
            if key.startswith(self.optimizer.split("_")[0] + ".") and not value > 0:
                yield f"optim.{key}", message
        if a.beta1 is not None and not 0 <= a.beta1 < 1 and self.optimizer == "adafactor":
            yield "optim.adafactor.beta1", "must be in [0, 1) or null."
