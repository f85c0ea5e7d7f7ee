"""DreamBooth-style LoRA training of a Stable Diffusion 1.x pipeline (diffusers + peft + accelerate).

The trainer has named stages — ``setup``, ``train``, ``save_checkpoint``, ``save_final``, ``cleanup`` —
and ``train_lora`` runs them. What makes it fast is what the best trainers do: the VAE latents of a
picture are encoded once, the first time a step draws it (in each orientation it is drawn in when
flipping), so the first step starts without waiting for every picture's encoding; the prompt embeddings
are encoded once while the text encoder is frozen, and the step loop does nothing but the forward,
backward and optimizer step. Everything random in a step (picture order, flips, latent
sampling, noise, timesteps) is drawn from state that the training checkpoint saves, so a resumed run ends
with the same weights as an uninterrupted one; caption dropout is a pure function of the step and seed, and
the EMA of the LoRA weights (``train.ema_decay``) is part of the checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from lora_core.adapters import (
    DIFFUSERS_KINDS,
    KOHYA_FILE,
    adapter_config,
    find_weights_file,
    peft_state_dict,
    save_diffusers_lora,
    save_kohya_lora,
    save_peft_adapter,
    weights_file_name,
)
from lora_core.atomic import atomic_dir, write_text_atomic
from lora_core.captions import caption_dropped
from lora_core.errors import UserInputError
from lora_core.optimizers import check_optimizer, make_optimizer, set_optimizer_mode
from lora_core.settings import TrainSettings

log = logging.getLogger(__name__)

ADAPTER_NAME = "lora_sweeps_train"
CHECKPOINTS = "checkpoints"
_TRAINABLE_FILE = "trainable_params.safetensors"
_SETTINGS_FILE = "train_settings.json"
_IDENTITY_FILE = "train_identity.json"
LOSS_LOG = "loss_log.jsonl"
RESULT_FILE = "train_result.json"
# The EMA of the LoRA weights (train.ema_decay), in the same formats as the raw weights, in this subfolder
# of the training folder and of each checkpoint.
EMA_DIR = "ema"


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


@dataclass
class TrainResult:
    """What a finished training produced.

    Attributes:
        output_dir: The training folder.
        lora_path: The adapter file: diffusers format (LoRA, DoRA) or peft naming (LoHa, LoKr).
        kohya_path: Kohya-format export.
        checkpoints: Step to checkpoint folder (each holds a diffusers-format LoRA file).
        loss_history: Loss of every step from 1 to ``max_train_steps`` (resumed runs included).
        lr_history: UNet learning rate of every step.
        val_losses: Step to validation loss, for the steps where it was measured.
        steps_per_second: Steady-state speed in this process (first step excluded).
        first_step_seconds: Time of the first step in this process (warm-up).
        peak_memory_mb: Peak GPU memory allocated, or the process's peak RSS on the CPU.
        memory_kind: ``cuda_allocated`` or ``process_rss``.
        resumed_from_step: Step the run continued from (0 for a fresh run).
        train_seconds: Wall time of the step loop in this process.
        ema_lora_path: Diffusers-format LoRA file of the EMA weights (``ema/``), or None without EMA.
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
        out["final_loss"] = self.loss_history[-1] if self.loss_history else None
        return out


def checkpoint_dir(output_dir: str | os.PathLike, step: int) -> Path:
    """Folder of the checkpoint at ``step`` (``checkpoints/step-000200``)."""
    return Path(output_dir) / CHECKPOINTS / f"step-{step:06d}"


def list_checkpoints(output_dir: str | os.PathLike) -> dict[int, Path]:
    """Complete checkpoints of a training folder, by step.

    Args:
        output_dir: A training folder.

    Returns:
        Step to folder, for folders that hold both the adapter file and the training state.
    """
    root = Path(output_dir) / CHECKPOINTS
    found = {}
    for folder in root.glob("step-*") if root.is_dir() else ():
        if find_weights_file(folder) is not None and (folder / _TRAINABLE_FILE).is_file():
            found[int(folder.name.split("-")[1])] = folder
    return dict(sorted(found.items()))


def read_checkpoint_settings(folder: str | os.PathLike) -> TrainSettings:
    """The settings a checkpoint was trained under."""
    return TrainSettings.from_dict(json.loads((Path(folder) / _SETTINGS_FILE).read_text()))


def read_checkpoint_identity(folder: str | os.PathLike) -> dict:
    """What else a checkpoint's weights depend on (base model, pictures), as given by its trainer."""
    path = Path(folder) / _IDENTITY_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def incompatibility(checkpoint: Path, settings: TrainSettings, identity: dict) -> str | None:
    """Why ``settings`` (on the base model and pictures ``identity`` names) cannot continue ``checkpoint``.

    Returns:
        None when continuing gives the same weights as training from scratch, else the reason.
    """
    try:
        saved = read_checkpoint_settings(checkpoint)
    except (OSError, ValueError, UserInputError) as err:
        return f"unreadable settings ({err})"
    if not settings.can_continue_from(saved):
        mine = settings.weights_key()
        diff = {k: (v, mine.get(k)) for k, v in saved.weights_key().items() if mine.get(k) != v}
        return f"trained with other settings ({diff}, saved vs now)"
    saved_identity = read_checkpoint_identity(checkpoint)
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


@lru_cache(maxsize=64)
def _epoch_order(seed: int, epoch: int, n: int) -> tuple[int, ...]:
    import torch

    return tuple(torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist())


def picture_indices(micro_step: int, batch_size: int, n: int, seed: int) -> list[int]:
    """Pictures of one micro-batch: each epoch visits every picture once, in a seeded order.

    A pure function of the step, so a resumed run sees the same pictures as an uninterrupted one.

    Args:
        micro_step: Index of the micro-batch since step 0.
        batch_size: Pictures per micro-batch.
        n: Number of pictures.
        seed: Training seed.

    Returns:
        ``batch_size`` picture indices.
    """
    out = []
    for k in range(micro_step * batch_size, (micro_step + 1) * batch_size):
        epoch, position = divmod(k, n)
        out.append(_epoch_order(seed, epoch, n)[position])
    return out


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


class LoraTrainer:
    """Trains one LoRA on a loaded pipeline, in stages.

    The pipeline is borrowed: ``cleanup`` removes the adapter and restores the models' modes, so a
    process-wide cached pipeline can serve the next job unchanged.

    Args:
        pipe: A ``StableDiffusionPipeline`` (no adapter active).
        images: Subject pictures, already at ``settings.resolution``.
        settings: Validated training settings.
        output_dir: Training folder (LoRA files, checkpoints, loss log).
        class_images: Class pictures at ``settings.resolution`` when prior preservation is on.
        on_step: Called with a ``StepRecord`` for every step, in bursts: the records of the last
            ``settings.log_every`` steps together (one device sync each), and the rest at the end.
        on_checkpoint: Called with (step, folder) after each checkpoint is written.
        metadata: Extra values stored with the LoRA files (e.g. base model id, data folder).
        identity: What else the weights depend on (base model, pictures, class pictures), JSON values:
            saved with each checkpoint, and a checkpoint is only continued under an equal identity.
        should_stop: Asked after every optimizer step; True makes ``train`` save a checkpoint and raise
            ``TrainingStopped`` (a job asked to give its slot back: time limit, preemption).
        validation_images: Pictures of the validation loss (held-out pictures of the subject, at
            ``settings.resolution``); None uses the subject pictures.
        captions: One caption per subject picture (``lora_core.captions.read_captions``); None trains
            every picture under ``settings.instance_prompt``.
    """

    def __init__(
        self,
        pipe,
        images: list,
        settings: TrainSettings,
        output_dir: str | os.PathLike,
        class_images: list | None = None,
        on_step: Callable[[StepRecord], None] | None = None,
        on_checkpoint: Callable[[int, Path], None] | None = None,
        metadata: dict | None = None,
        identity: dict | None = None,
        should_stop: Callable[[], bool] | None = None,
        validation_images: list | None = None,
        captions: list[str] | None = None,
    ):
        settings.validate()
        if captions is not None and len(captions) != len(images):
            raise ValueError(f"{len(captions)} captions for {len(images)} pictures")
        if settings.with_prior_preservation and not class_images:
            raise UserInputError("train.with_prior_preservation is on but no class images were given.")
        self.pipe, self.images, self.settings = pipe, images, settings
        self.class_images = class_images if settings.with_prior_preservation else None
        self.output_dir = Path(output_dir)
        self.on_step, self.on_checkpoint = on_step, on_checkpoint
        self.metadata = metadata or {}
        self.identity = identity or {}
        self.should_stop = should_stop
        self.validation_images = validation_images
        self.captions = list(captions) if captions is not None else [settings.instance_prompt] * len(images)
        self.val_losses: dict[int, float] = {}
        self.losses: dict[int, float] = {}
        self.lrs: dict[int, float] = {}
        self.text_lrs: dict[int, float | None] = {}
        self._timing: dict[str, float] = {}

    # ---- setup -------------------------------------------------------------------------------------------
    def setup(self, resume_from: str | os.PathLike | None = None) -> None:
        """Attach the LoRA adapters, build the optimizer and schedule, cache latents and embeddings.

        Args:
            resume_from: A checkpoint folder to continue from, ``"latest"`` for this training folder's
                newest compatible checkpoint (fresh start when there is none), or None.

        Raises:
            UserInputError: The checkpoint was trained under incompatible settings.
        """
        import torch
        from accelerate import Accelerator
        from accelerate.utils import set_seed
        from diffusers import DDPMScheduler

        s, pipe = self.settings, self.pipe
        self.device = pipe.unet.device
        check_optimizer(s, self.device.type)  # a missing library or a CUDA-only optimizer: fail first
        # ModelMixin.dtype walks the parameters (~1.5 ms on the tiny model with LoRA): read it once.
        self.unet_dtype = pipe.unet.dtype
        self.mixed_precision = self._mixed_precision()
        self.accelerator = Accelerator(mixed_precision=self.mixed_precision, cpu=self.device.type == "cpu")
        self.noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        self._snr_table = None  # min-SNR weights by timestep, made on first use
        set_seed(s.seed)  # the LoRA init draws from the global generator
        self._attach_adapters()
        self._cache_inputs()
        self.validation_set = self._make_validation_set() if s.validation_every else None
        self.optimizer = self._make_optimizer()
        self.lr_schedule = self._make_schedule()
        self.optimizer, self.lr_schedule = self.accelerator.prepare(self.optimizer, self.lr_schedule)
        self.progress = _Progress(s.seed)
        self.accelerator.register_for_checkpointing(self.progress)
        self.ema = self._make_ema()
        start = self._find_resume_point(resume_from)
        if start is not None:
            self._load_checkpoint(start)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def _mixed_precision(self) -> str:
        import torch

        by_dtype = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "no"}
        model_mp = by_dtype[self.pipe.unet.dtype]
        wanted = self.settings.mixed_precision
        if wanted == "auto":
            return model_mp
        if wanted == "fp16" and self.device.type != "cuda":
            raise UserInputError("train.mixed_precision=fp16 needs a CUDA device; use no or bf16 on the CPU.")
        if model_mp != "no" and wanted != model_mp:
            raise UserInputError(
                f"train.mixed_precision={wanted} does not match the model's dtype {self.pipe.unet.dtype}; "
                f"set model.dtype to float32 or train.mixed_precision to {model_mp} (or auto)."
            )
        return wanted

    def _attach_adapters(self) -> None:
        import torch
        from diffusers.training_utils import cast_training_params

        s, pipe = self.settings, self.pipe
        for model in (pipe.unet, pipe.vae, pipe.text_encoder):
            model.requires_grad_(False)
        self.unet_config = adapter_config(
            s.adapter_kind, s.rank, s.lora_alpha, s.dropout, list(s.unet_target_modules),
            list(s.conv_target_modules), s.conv_rank, s.conv_alpha,
        )  # fmt: skip
        _add_adapter(pipe.unet, self.unet_config, "train.unet_target_modules")
        self.models = [pipe.unet]
        self.text_config = None
        if s.trains_text_encoder:
            self.text_config = adapter_config(
                s.adapter_kind, s.rank, s.lora_alpha, s.dropout, list(s.text_target_modules)
            )
            _add_adapter(pipe.text_encoder, self.text_config, "train.text_target_modules")
            self.models.append(pipe.text_encoder)
        if pipe.unet.dtype != torch.float32:
            cast_training_params(self.models, dtype=torch.float32)  # trainable LoRA weights stay fp32
        if s.gradient_checkpointing:
            pipe.unet.enable_gradient_checkpointing()
            if s.trains_text_encoder:
                pipe.text_encoder.gradient_checkpointing_enable()
        for model in self.models:
            model.train()

    def _cache_inputs(self) -> None:
        """Prompts to embeddings, once; pictures are encoded when a step first draws them (``_latent_stats``).

        The embedding table is keyed by the caption text itself (``prompt_rows``): a picture's row is its
        caption's, so a changed caption can only ever meet its own embedding.
        """
        import torch

        s = self.settings
        self._pictures = list(self.images) + list(self.class_images or [])
        self.n_instance = len(self.images)
        self._encoded: dict[tuple[int, int], tuple] = {}  # (flipped, picture) -> (mean, std)
        tok = self.pipe.tokenizer
        prompts = list(dict.fromkeys(
            [s.instance_prompt, *self.captions, *([s.class_prompt] if self.class_images else []),
             *([""] if s.caption_dropout else [])]
        ))  # fmt: skip
        self.prompt_rows = {prompt: row for row, prompt in enumerate(prompts)}
        self.picture_prompt = [self.prompt_rows[c] for c in self.captions]
        self.prompt_ids = tok(prompts, padding="max_length", max_length=tok.model_max_length,
                              truncation=True, return_tensors="pt").input_ids.to(self.device)  # fmt: skip
        self.prompt_embeds = None
        if not s.trains_text_encoder:
            with torch.no_grad():
                self.prompt_embeds = self.pipe.text_encoder(self.prompt_ids)[0]

    def _latent_stats(self, flips: list[int], rows: list[int]):
        """Latent mean and std of each (orientation, picture), encoding the ones no step has drawn yet.

        Each picture is encoded on its own, so its latents are the same whichever pictures a step draws
        with it and whether the run was resumed (batched convolutions may round differently).
        """
        import torch

        for key in dict.fromkeys(zip(flips, rows, strict=True)):
            if key not in self._encoded:
                self._encoded[key] = self._encode_one(self._pictures[key[1]], bool(key[0]))
        pairs = [self._encoded[key] for key in zip(flips, rows, strict=True)]
        return torch.stack([m for m, _ in pairs]), torch.stack([sd for _, sd in pairs])

    def _encode_one(self, picture, flip: bool = False):
        """One picture's latent distribution (mean, std), encoded on its own."""
        import torch

        from lora_core.subject import to_tensor

        vae, pixels = self.pipe.vae, to_tensor(picture)[None]
        with torch.no_grad():
            dist = vae.encode((pixels.flip(-1) if flip else pixels).to(self.device, vae.dtype)).latent_dist
        return dist.mean[0], dist.std[0]

    @property
    def latent_mean(self):
        """Every picture's latent mean, (orientations, pictures, C, H, W), encoding what is not yet."""
        return self._all_latents()[0]

    @property
    def latent_std(self):
        """Every picture's latent std, shaped as ``latent_mean``."""
        return self._all_latents()[1]

    def _all_latents(self):
        orientations = (0, 1) if self.settings.random_flip else (0,)
        n = len(self._pictures)
        mean, std = self._latent_stats(
            [f for f in orientations for _ in range(n)], list(range(n)) * len(orientations)
        )
        return mean.unflatten(0, (len(orientations), n)), std.unflatten(0, (len(orientations), n))

    def _make_validation_set(self) -> dict:
        """The fixed (picture, timestep, noise) triples of the validation loss, drawn once.

        They come from a generator of their own, so measuring never moves the training's random state; the
        timesteps are spread evenly over the schedule so each measurement weighs every noise level alike.
        """
        import torch

        s = self.settings
        if self.validation_images:
            pairs = [self._encode_one(picture) for picture in self.validation_images]
            mean, std = torch.stack([m for m, _ in pairs]), torch.stack([sd for _, sd in pairs])
        else:
            mean, std = self.latent_mean[0, : self.n_instance], self.latent_std[0, : self.n_instance]
        gen = torch.Generator("cpu").manual_seed(s.seed + 7_919)
        rows = [k % mean.shape[0] for k in range(s.validation_samples)]
        eps = torch.randn(mean[rows].shape, generator=gen).to(self.device, mean.dtype)
        latents = ((mean[rows] + std[rows] * eps) * self.pipe.vae.config.scaling_factor).float()
        total = self.noise_scheduler.config.num_train_timesteps
        timesteps = torch.tensor([int((k + 0.5) * total / len(rows)) for k in range(len(rows))])
        noise = torch.randn(latents.shape, generator=gen).to(self.device)
        # Subject pictures are scored under their own captions, held-out ones under the instance prompt.
        prompts = [0] * len(rows) if self.validation_images else [self.picture_prompt[r] for r in rows]
        return {
            "latents": latents,
            "timesteps": timesteps.to(self.device),
            "noise": noise,
            "prompts": prompts,
        }

    def validation_loss(self) -> float:
        """Denoising loss on the fixed validation triples, with the weights that are saved (no dropout).

        Returns:
            The mean squared error of the predicted noise (or velocity), without loss weighting.
        """
        import torch
        import torch.nn.functional as F

        v = self.validation_set
        latents, noise, timesteps = v["latents"], v["noise"], v["timesteps"]
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        if self.noise_scheduler.config.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        total = 0.0
        with torch.no_grad(), self.evaluation_weights(), self.accelerator.autocast():
            for model in self.models:
                model.eval()  # dropout off: it would draw from the global generator the training uses
            try:
                for rows in torch.arange(latents.shape[0]).split(8):
                    embeds = self._prompt_embeddings([v["prompts"][r] for r in rows.tolist()]).to(
                        self.unet_dtype
                    )
                    pred = self.pipe.unet(noisy[rows].to(self.unet_dtype), timesteps[rows], embeds).sample
                    total = total + F.mse_loss(pred.float(), target[rows].float(), reduction="sum")
            finally:
                for model in self.models:
                    model.train()
        return (total / target.numel()).item()

    def _make_optimizer(self):
        s = self.settings
        groups = [{"params": _trainable(self.pipe.unet), "lr": s.learning_rate}]
        if s.trains_text_encoder:
            groups.append({"params": _trainable(self.pipe.text_encoder), "lr": s.text_encoder_lr})
        self.trainable_params = [p for group in groups for p in group["params"]]
        return make_optimizer(groups, s, self.device.type)

    @contextmanager
    def evaluation_weights(self) -> Iterator[None]:
        """Hold the weights that are saved and rendered, then give the training weights back exactly.

        Schedule-free AdamW evaluates at an average of its iterates (``set_optimizer_mode``); its swap back
        is not bit-exact, so the training weights are restored from a copy and a run that saves
        checkpoints trains exactly like one that does not.
        """
        import torch

        snapshot = [p.detach().clone() for p in self.trainable_params]
        set_optimizer_mode(self.optimizer, training=False)
        try:
            yield
        finally:
            set_optimizer_mode(self.optimizer, training=True)
            with torch.no_grad():
                for p, saved in zip(self.trainable_params, snapshot, strict=True):
                    p.copy_(saved)

    def _make_ema(self):
        """The EMA (diffusers' ``EMAModel``) over the trainable LoRA weights only, kept in every checkpoint; or None.

        Its warm-up is ``min(ema_decay, (1 + n) / (10 + n))`` at the optimizer step after ``n`` earlier
        ones (0 at the first: the average starts at the first step's weights).
        """
        if not self.settings.uses_ema:
            return None
        from diffusers.training_utils import EMAModel

        ema = EMAModel(self.trainable_params, decay=self.settings.ema_decay, foreach=True)
        self.accelerator.register_for_checkpointing(ema)  # after the progress: its file index stays 0
        return ema

    @contextmanager
    def ema_weights(self) -> Iterator[None]:
        """Hold the EMA weights in the models, then give the training weights back exactly."""
        import torch

        snapshot = [p.detach().clone() for p in self.trainable_params]
        with torch.no_grad():
            for p, average in zip(self.trainable_params, self.ema.shadow_params, strict=True):
                p.copy_(average)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, saved in zip(self.trainable_params, snapshot, strict=True):
                    p.copy_(saved)

    def _make_schedule(self):
        from diffusers.optimization import get_scheduler

        s = self.settings
        return get_scheduler(
            s.lr_scheduler, optimizer=self.optimizer, num_warmup_steps=s.lr_warmup_steps,
            num_training_steps=s.max_train_steps, num_cycles=s.lr_num_cycles, power=s.lr_power,
        )  # fmt: skip

    # ---- resume ------------------------------------------------------------------------------------------
    def _find_resume_point(self, resume_from) -> Path | None:
        if resume_from is None:
            return None
        if str(resume_from) != "latest":
            folder = Path(resume_from)
            if not (folder / _TRAINABLE_FILE).is_file():
                raise UserInputError(f"{folder}: not a training checkpoint (no {_TRAINABLE_FILE}).")
            self._check_compatible(folder)
            return folder
        return find_checkpoint([self.output_dir], self.settings, self.identity)

    def _check_compatible(self, folder: Path) -> None:
        reason = incompatibility(folder, self.settings, self.identity)
        if reason:
            raise UserInputError(
                f"{folder}: this checkpoint was {reason}; continuing it would not give the run you asked "
                "for. Start fresh or match the settings."
            )
        step = int(folder.name.split("-")[-1]) if folder.name.startswith("step-") else 0
        if step > self.settings.max_train_steps:
            raise UserInputError(
                f"{folder}: checkpoint is past train.max_train_steps={self.settings.max_train_steps}."
            )

    def _load_checkpoint(self, folder: Path) -> None:
        from safetensors.torch import load_file

        saved = load_file(str(folder / _TRAINABLE_FILE), device=str(self.device))
        for index, model in enumerate(self.models):
            params = dict(model.named_parameters())
            prefix = f"{index}."
            for name, value in saved.items():
                if name.startswith(prefix):
                    params[name[len(prefix) :]].data.copy_(value)
        self.accelerator.load_state(str(folder))
        log_path = folder / LOSS_LOG
        if log_path.is_file():
            for line in log_path.read_text().splitlines():
                row = json.loads(line)
                step = row["step"]
                self.losses[step], self.lrs[step] = row["loss"], row["lr"]
                self.text_lrs[step] = row.get("text_encoder_lr")
                if row.get("val_loss") is not None:
                    self.val_losses[step] = row["val_loss"]
        write_text_atomic(
            self.output_dir / LOSS_LOG, self._loss_log()
        )  # drops what came after the checkpoint
        log.info("Resumed from %s at step %d", folder, self.progress.step)

    # ---- train -------------------------------------------------------------------------------------------
    def train(self, until: int | None = None) -> None:
        """Run optimizer steps from the current step, saving checkpoints on the way.

        Args:
            until: Stop after this step with a resumable checkpoint there (a rung of a halving sweep);
                None trains to ``max_train_steps``. The schedule is always the one of ``max_train_steps``,
                so continuing later gives the weights of one uninterrupted run.

        Raises:
            TrainingStopped: ``should_stop`` said so; the checkpoint to continue from is saved.
        """
        from tqdm.auto import tqdm

        s = self.settings
        last = s.max_train_steps if until is None else min(until, s.max_train_steps)
        self.start_step = self.progress.step
        bar = tqdm(total=last, initial=self.start_step, desc="train", unit="step",
                   disable=not s.progress_bar, dynamic_ncols=True)  # fmt: skip
        pending: list = []
        set_optimizer_mode(self.optimizer, training=True)
        started = time.perf_counter()
        first_done = None
        while self.progress.step < last:
            loss = self.training_step()
            self.progress.step += 1
            step = self.progress.step
            pending.append((step, loss.detach(), self._step_sizes()))
            if s.validation_every and step % s.validation_every == 0:
                self.val_losses[step] = self.validation_loss()
            if first_done is None:
                first_done = time.perf_counter()
            stop = step < last and self.should_stop is not None and self.should_stop()
            save = self._is_checkpoint_step(step) or (step == until and step < s.max_train_steps) or stop
            if len(pending) >= s.log_every or step == last or save:
                self._report(pending, started, bar)
                pending = []
            if save:
                folder = self.save_checkpoint(step)
            if stop:
                bar.close()
                raise TrainingStopped(step, folder)
        bar.close()
        set_optimizer_mode(self.optimizer, training=False)  # the trained weights are the evaluation ones
        end = time.perf_counter()
        steps = self.progress.step - self.start_step
        self._timing = {
            "train_seconds": end - started,
            "first_step_seconds": (first_done - started) if first_done else 0.0,
            "steps_per_second": (steps - 1) / (end - first_done)
            if first_done and steps > 1 and end > first_done
            else 0.0,
        }

    def _step_sizes(self) -> list[float]:
        """The learning rate of each parameter group; Prodigy's times its estimated step size ``d``."""
        return [group["lr"] * group.get("d", 1.0) for group in self.optimizer.param_groups]

    def training_step(self):
        """One optimizer step (all micro-batches). Returns the mean loss as a tensor."""
        s = self.settings
        total = 0.0
        for micro in range(s.gradient_accumulation_steps):
            micro_step = self.progress.step * s.gradient_accumulation_steps + micro
            loss = self._loss(micro_step) / s.gradient_accumulation_steps
            self.accelerator.backward(loss)
            total = total + loss.detach()
        if s.max_grad_norm > 0:
            self.accelerator.clip_grad_norm_(self.trainable_params, s.max_grad_norm)
        self.optimizer.step()
        self.lr_schedule.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.step(self.trainable_params)
        return total

    def _loss(self, micro_step: int):
        import torch
        import torch.nn.functional as F

        s, gen = self.settings, self.progress.generator
        latents, prompt_index = self._sample_latents(micro_step)
        noise = torch.randn(latents.shape, generator=gen)
        if s.noise_offset:
            noise += s.noise_offset * torch.randn((latents.shape[0], latents.shape[1], 1, 1), generator=gen)
        timesteps = torch.randint(
            0, self.noise_scheduler.config.num_train_timesteps, (latents.shape[0],), generator=gen
        )
        noise, timesteps = self._to_device(noise), self._to_device(timesteps)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        with self.accelerator.autocast():
            embeds = self._prompt_embeddings(prompt_index)
            pred = self.pipe.unet(noisy.to(self.unet_dtype), timesteps, embeds.to(self.unet_dtype)).sample
        if self.noise_scheduler.config.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        if s.snr_gamma is not None:
            per_sample = per_sample * self._snr_weights(timesteps)
        if self.class_images:
            half = per_sample.shape[0] // 2
            return per_sample[:half].mean() + s.prior_loss_weight * per_sample[half:].mean()
        return per_sample.mean()

    def _sample_latents(self, micro_step: int):
        """Latents of one micro-batch (instance pictures, then as many class pictures) from the cache."""
        import torch

        s, gen = self.settings, self.progress.generator
        rows = picture_indices(micro_step, s.train_batch_size, self.n_instance, s.seed)
        dropped = caption_dropped(micro_step, len(rows), s.seed, s.caption_dropout)
        prompt_index = [self.prompt_rows[""] if drop else self.picture_prompt[row]
                        for row, drop in zip(rows, dropped, strict=True)]  # fmt: skip
        if self.class_images:
            n_class = len(self.class_images)
            rows += [
                self.n_instance + (micro_step * s.train_batch_size + k) % n_class
                for k in range(s.train_batch_size)
            ]
            prompt_index += [self.prompt_rows[s.class_prompt]] * s.train_batch_size
        flips = (
            torch.randint(0, 2, (len(rows),), generator=gen).tolist() if s.random_flip else [0] * len(rows)
        )
        mean, std = self._latent_stats(flips, rows)
        eps = self._to_device(torch.randn(mean.shape, generator=gen)).to(mean.dtype)
        latents = (mean + std * eps) * self.pipe.vae.config.scaling_factor
        return latents.float(), prompt_index

    def _prompt_embeddings(self, prompt_index: list[int]):
        import torch

        # A list index would be copied to the device with a synchronising copy: pass a device tensor.
        rows = self._to_device(torch.tensor(prompt_index, dtype=torch.long))
        if self.prompt_embeds is not None:
            return self.prompt_embeds[rows]
        return self.pipe.text_encoder(self.prompt_ids[rows])[0]

    def _to_device(self, tensor):
        """A step's host-made tensor (noise, timesteps, indices) on the training device, asynchronously.

        The random numbers are drawn on the CPU so that a run is the same on every device. A plain
        ``.to("cuda")`` of pageable memory waits for the GPU to drain its queue, which at real size left
        the GPU idle between steps; a pinned copy does not wait (the pinned block is reused only once
        the copy is done: torch's caching host allocator records it on the stream).
        """
        if self.device.type != "cuda":
            return tensor.to(self.device)
        return tensor.pin_memory().to(self.device, non_blocking=True)

    def _snr_weights(self, timesteps):
        import torch
        from diffusers.training_utils import compute_snr

        if self._snr_table is None:
            # Once for every timestep: compute_snr copies the scheduler's table to the device on each call.
            every = torch.arange(self.noise_scheduler.config.num_train_timesteps, device=timesteps.device)
            self._snr_table = compute_snr(self.noise_scheduler, every)
        snr = self._snr_table[timesteps]
        clipped = torch.clamp(snr, max=self.settings.snr_gamma)
        if self.noise_scheduler.config.prediction_type == "v_prediction":
            return clipped / (snr + 1)
        return clipped / snr

    def _is_checkpoint_step(self, step: int) -> bool:
        s = self.settings
        return step in s.checkpoint_steps or (s.checkpoint_every > 0 and step % s.checkpoint_every == 0)

    def _report(self, pending: list, started: float, bar) -> None:
        import torch

        losses = torch.stack([loss for _, loss, _ in pending]).float().tolist()  # one device sync per report
        rows = []
        for (step, _, lrs), loss in zip(pending, losses, strict=True):
            text_lr = lrs[1] if len(lrs) > 1 else None
            self.losses[step], self.lrs[step], self.text_lrs[step] = loss, lrs[0], text_lr
            val = self.val_losses.get(step)
            record = StepRecord(step, loss, lrs[0], text_lr, time.perf_counter() - started, val)
            rows.append(self._log_row(step))
            if self.on_step:
                self.on_step(record)
        with (self.output_dir / LOSS_LOG).open("a") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
        bar.update(len(pending))
        bar.set_postfix(loss=f"{losses[-1]:.4f}", lr=f"{pending[-1][2][0]:.2e}", refresh=False)

    # ---- save --------------------------------------------------------------------------------------------
    def _log_row(self, step: int) -> dict:
        """One loss-log row; ``val_loss`` only on the steps where it was measured."""
        row = {"step": step, "loss": self.losses[step], "lr": self.lrs[step],
               "text_encoder_lr": self.text_lrs.get(step)}  # fmt: skip
        if step in self.val_losses:
            row["val_loss"] = self.val_losses[step]
        return row

    def _loss_log(self) -> str:
        """The loss log (one JSON object per step) of every step reported so far."""
        return "".join(json.dumps(self._log_row(k)) + "\n" for k in sorted(self.losses))

    def training_metadata(self) -> dict:
        """Every training hyperparameter, plus the caller's metadata, as stored in the LoRA files."""
        return {**self.settings.to_dict(), "alpha": self.settings.lora_alpha, **self.metadata}

    def _write_lora(self, folder: Path, kohya: bool, weights: str = "raw") -> None:
        """Write the LoRA adapter files: the models' weights (``raw``) or their EMA into ``folder/ema/``."""
        if weights == "ema":
            with self.ema_weights():
                self._write_adapter(folder / EMA_DIR, kohya, weights)
        else:
            self._write_adapter(folder, kohya, weights)

    def _write_adapter(self, folder: Path, kohya: bool, weights: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        unet_peft = peft_state_dict(self.pipe.unet, ADAPTER_NAME)
        text_peft = peft_state_dict(self.pipe.text_encoder, ADAPTER_NAME) if self.text_config else None
        meta = {**self.training_metadata(), "trained_steps": self.progress.step, "weights": weights}
        configs = (self.unet_config.to_dict(), self.text_config.to_dict() if self.text_config else None)
        # diffusers' loader reads LoRA and DoRA; the other kinds are kept in peft naming (adapters.py)
        save = save_diffusers_lora if self.settings.adapter_kind in DIFFUSERS_KINDS else save_peft_adapter
        save(folder, unet_peft, text_peft, *configs, meta)
        if kohya:
            save_kohya_lora(folder / KOHYA_FILE, unet_peft, text_peft, *configs, meta)

    def save_checkpoint(self, step: int) -> Path:
        """Write the LoRA weights and the full training state at ``step`` (atomically).

        Args:
            step: The step just finished.

        Returns:
            The checkpoint folder.
        """
        from safetensors.torch import save_file

        target = checkpoint_dir(self.output_dir, step)
        with atomic_dir(target) as tmp:
            # The training weights and state first (what resume continues), then the evaluation weights.
            trainable = {f"{i}.{name}": p.detach().contiguous() for i, model in enumerate(self.models)
                         for name, p in model.named_parameters() if p.requires_grad}  # fmt: skip
            save_file(trainable, str(tmp / _TRAINABLE_FILE))
            self.accelerator.save_state(str(tmp))
            with self.evaluation_weights():
                self._write_lora(tmp, kohya=False)
            if self.ema is not None:
                self._write_lora(tmp, kohya=False, weights="ema")
            (tmp / _SETTINGS_FILE).write_text(json.dumps(self.settings.to_dict(), indent=2))
            (tmp / _IDENTITY_FILE).write_text(json.dumps(self.identity, indent=2, sort_keys=True))
            (tmp / LOSS_LOG).write_text(self._loss_log())
        if self.on_checkpoint:
            self.on_checkpoint(step, target)
        return target

    def save_final(self) -> TrainResult:
        """Write the final LoRA (diffusers and kohya formats), the loss log and ``train_result.json``.

        Returns:
            The result, with paths, histories, speed and peak memory.
        """
        import torch

        s = self.settings
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self._write_lora(self.output_dir, kohya=True)
        if self.ema is not None:
            self._write_lora(self.output_dir, kohya=True, weights="ema")
        steps = range(1, s.max_train_steps + 1)
        write_text_atomic(self.output_dir / LOSS_LOG, self._loss_log())
        if self.device.type == "cuda":
            peak, kind = torch.cuda.max_memory_allocated(self.device) / 2**20, "cuda_allocated"
        else:
            peak, kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process_rss"
        result = TrainResult(
            output_dir=self.output_dir,
            lora_path=self.output_dir / weights_file_name(s.adapter_kind),
            kohya_path=self.output_dir / KOHYA_FILE,
            checkpoints=list_checkpoints(self.output_dir),
            loss_history=[self.losses.get(k, float("nan")) for k in steps],
            lr_history=[self.lrs.get(k, float("nan")) for k in steps],
            val_losses=dict(sorted(self.val_losses.items())),
            peak_memory_mb=peak,
            memory_kind=kind,
            resumed_from_step=getattr(self, "start_step", 0),
            ema_lora_path=(self.output_dir / EMA_DIR / weights_file_name(s.adapter_kind))
            if self.ema is not None
            else None,
            **self._timing,
        )
        write_text_atomic(self.output_dir / RESULT_FILE, json.dumps(result.to_json(), indent=2))
        return result

    # ---- cleanup -----------------------------------------------------------------------------------------
    def cleanup(self) -> None:
        """Remove the training adapter and restore the borrowed pipeline's state."""
        from accelerate.state import AcceleratorState, GradientState

        pipe = self.pipe
        if any(
            ADAPTER_NAME in (getattr(m, "peft_config", None) or {}) for m in (pipe.unet, pipe.text_encoder)
        ):
            pipe.unload_lora_weights()  # removes the LoRA layers themselves, not just the adapter
        if self.settings.gradient_checkpointing:
            pipe.unet.disable_gradient_checkpointing()
            pipe.text_encoder.gradient_checkpointing_disable()
        for model in (pipe.unet, pipe.vae, pipe.text_encoder):
            model.requires_grad_(False)
            model.eval()
        # Accelerate keeps one process-wide state and refuses a second Accelerator with another precision;
        # the next job in this process may train with other settings.
        AcceleratorState._reset_state()
        GradientState._reset_state()


def _add_adapter(model, config, key: str) -> None:
    try:
        model.add_adapter(config, adapter_name=ADAPTER_NAME)
    except ValueError as err:
        if not getattr(model, "peft_config", None):
            # diffusers marks the model as holding adapters before injecting; undo it, or the next job's
            # add_adapter on this (cached) model fails.
            model._hf_peft_config_loaded = None
        raise UserInputError(
            f"{key}={list(config.target_modules)}: no such module in the model ({err})."
        ) from err


def _trainable(model) -> list:
    return [p for p in model.parameters() if p.requires_grad]


def train_lora(
    pipe,
    images: list,
    settings: TrainSettings,
    output_dir: str | os.PathLike,
    resume_from: str | os.PathLike | None = None,
    class_images: list | None = None,
    on_step: Callable[[StepRecord], None] | None = None,
    on_checkpoint: Callable[[int, Path], None] | None = None,
    metadata: dict | None = None,
    identity: dict | None = None,
    until: int | None = None,
    should_stop: Callable[[], bool] | None = None,
    validation_images: list | None = None,
    captions: list[str] | None = None,
) -> TrainResult | Path:
    """Train a LoRA on ``pipe`` with the subject ``images`` and save it to ``output_dir``.

    Args:
        pipe: A loaded ``StableDiffusionPipeline`` (borrowed; left as found).
        images: Subject pictures at ``settings.resolution``.
        settings: Training settings.
        output_dir: Training folder.
        resume_from: Checkpoint folder, ``"latest"``, or None for a fresh start.
        class_images: Class pictures for prior preservation.
        on_step: Per-step report callback.
        on_checkpoint: Called after each checkpoint.
        metadata: Extra values for the LoRA files' metadata.
        identity: What else the weights depend on (see ``LoraTrainer``).
        until: Stop after this step (below ``max_train_steps``) with a resumable checkpoint there, under
            the schedule of the whole run: a successive-halving rung.
        should_stop: Asked after every step; True saves a checkpoint and stops (see ``LoraTrainer``).
        validation_images: Pictures of the validation loss (see ``LoraTrainer``).
        captions: One caption per picture (see ``LoraTrainer``); None: ``settings.instance_prompt``.

    Returns:
        The ``TrainResult``; with ``until`` below ``max_train_steps``, the checkpoint folder at ``until``.

    Raises:
        TrainingStopped: ``should_stop`` asked for a stop; the checkpoint to continue from is saved.
    """
    trainer = LoraTrainer(
        pipe, images, settings, output_dir, class_images, on_step, on_checkpoint, metadata, identity,
        should_stop=should_stop, validation_images=validation_images, captions=captions,
    )  # fmt: skip
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    try:
        trainer.setup(resume_from)
        if trainer.progress.step == 0:
            (Path(output_dir) / LOSS_LOG).unlink(missing_ok=True)
        trainer.train(until)
        if until is not None and until < settings.max_train_steps:
            return checkpoint_dir(output_dir, until)
        return trainer.save_final()
    finally:
        trainer.cleanup()


def denoising_loss(pipe, images: list, prompt: str, seed: int = 0, samples_per_image: int = 4) -> float:
    """Mean denoising loss of ``pipe`` on ``images`` under fixed noise and timesteps.

    The same seed gives the same noise, timesteps and latent samples, so two calls compare models, not
    luck: the loss before and after training tells whether training fitted the pictures.

    Args:
        pipe: A pipeline (any adapters active are used).
        images: Pictures at the training resolution.
        prompt: The prompt the pictures are scored under.
        seed: Seed of the noise and timesteps.
        samples_per_image: (noise, timestep) draws per picture.

    Returns:
        The mean squared error of the predicted noise (or velocity).
    """
    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler

    from lora_core.subject import to_tensor

    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    device, dtype = pipe.unet.device, pipe.unet.dtype
    gen = torch.Generator("cpu").manual_seed(seed)
    ids = pipe.tokenizer([prompt], padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         truncation=True, return_tensors="pt").input_ids.to(device)  # fmt: skip
    with torch.no_grad():
        embeds = pipe.text_encoder(ids)[0]
        pixels = torch.stack([to_tensor(img) for img in images]).repeat(samples_per_image, 1, 1, 1)
        dist = pipe.vae.encode(pixels.to(device, dtype)).latent_dist
        eps = torch.randn(dist.mean.shape, generator=gen).to(device, dtype)
        latents = (dist.mean + dist.std * eps) * pipe.vae.config.scaling_factor
        noise = torch.randn(latents.shape, generator=gen).to(device, dtype)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), generator=gen).to(
            device
        )
        pred = pipe.unet(
            scheduler.add_noise(latents, noise, t), t, embeds.expand(latents.shape[0], -1, -1)
        ).sample
        target = (
            scheduler.get_velocity(latents, noise, t)
            if scheduler.config.prediction_type == "v_prediction"
            else noise
        )
        return F.mse_loss(pred.float(), target.float()).item()
