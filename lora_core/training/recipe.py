"""DreamBooth-style LoRA training of a Stable Diffusion 1.x pipeline (diffusers + peft + accelerate).

``LoraTrainer`` runs in named stages (``setup``, ``train``, ``save_checkpoint``, ``save_final``,
``cleanup``); ``train_lora`` runs them all. A resumed run ends with the weights of an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable
from pathlib import Path

from lora_core.adapters import (
    adapter_config,
    adapter_weights,
    write_adapter_files,
)
from lora_core.errors import UserInputError
from lora_core.family import SD, SDXL, family_of, text_encoders, training_time_ids
from lora_core.optimizers import check_optimizer, make_optimizer, make_schedule, set_optimizer_mode
from lora_core.settings import TrainSettings
from lora_core.training.checkpoint import (
    EMA_DIR,
    Checkpointer,
    checkpoint_dir,
    checkpoint_due,
    trainable_tensors,
)
from lora_core.training.device import mixed_precision, peak_memory
from lora_core.training.inputs import LatentCache, MicroBatches, PromptTable, training_prompts
from lora_core.training.loss_log import LossLog
from lora_core.training.objective import SnrWeights, denoising_loss_of, denoising_target, draw_noise
from lora_core.training.results import StepClock, StepRecord, TrainingStopped, TrainResult, finish_folder
from lora_core.training.validation import ValidationSet
from lora_core.training.weights import ema_weights, evaluation_weights, make_ema

ADAPTER_NAME = "lora_sweeps_train"


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
            saved with each checkpoint and the final folder; saved training is only continued or reused
            under an equal identity.
        should_stop: Asked after every optimizer step; True makes ``train`` save a checkpoint and raise
            ``TrainingStopped`` (a job asked to give its slot back: time limit, preemption).
        validation_images: Pictures of the validation loss (held-out pictures of the subject, at
            ``settings.resolution``); None uses the subject pictures.
        captions: One caption per subject picture (``lora_core.data.captions.read_captions``); None trains
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
        self.log = LossLog(self.output_dir)
        self._timing: dict[str, float] = {}

    # ---- setup -------------------------------------------------------------------------------------------
    def setup(self, resume_from: str | os.PathLike | None = None) -> None:
        """Attach the LoRA adapters, build the optimizer and schedule, prepare the inputs, maybe resume.

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
        self.unet_dtype = pipe.unet.dtype  # ModelMixin.dtype walks the parameters: read it once
        precision = mixed_precision(self.unet_dtype, s.mixed_precision, self.device.type)
        self.accelerator = Accelerator(mixed_precision=precision, cpu=self.device.type == "cpu")
        self.noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        self.snr_weights = SnrWeights(self.noise_scheduler, s.snr_gamma) if s.snr_gamma is not None else None
        set_seed(s.seed)  # the LoRA init draws from the global generator
        self._setup_adapters()
        self._setup_inputs()
        self.optimizer = self._setup_optimizer()
        self.lr_schedule = make_schedule(self.optimizer, s)
        self.optimizer, self.lr_schedule = self.accelerator.prepare(self.optimizer, self.lr_schedule)
        self.ema = make_ema(self.trainable_params, s.ema_decay) if s.uses_ema else None
        self.checkpointer = Checkpointer(self.output_dir, s, self.identity, self.accelerator, self.ema)
        self.progress = self.checkpointer.progress
        start = self.checkpointer.resume_point(resume_from)
        if start is not None:
            self.log.restore(self.checkpointer.load(start, trainable_tensors(self.models)))
            self.log.rewrite()  # drops what came after the checkpoint
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def _setup_adapters(self) -> None:
        import torch
        from diffusers.training_utils import cast_training_params

        s, pipe = self.settings, self.pipe
        encoders = text_encoders(pipe)
        for model in (pipe.unet, pipe.vae, *(model for _, model in encoders)):
            model.requires_grad_(False)
        self.configs = adapter_configs(s, family_of(pipe))
        add_adapter(pipe.unet, self.configs[0], "train.unet_target_modules")
        self.models = [pipe.unet]
        for (_, encoder), config in zip(encoders, self.configs[1:], strict=False):
            if config is not None:
                add_adapter(encoder, config, "train.text_target_modules")
                self.models.append(encoder)
                if s.gradient_checkpointing:
                    encoder.activation_checkpointing_enable()
        if pipe.unet.dtype != torch.float32:
            cast_training_params(self.models, dtype=torch.float32)  # trainable LoRA weights stay fp32
        if s.gradient_checkpointing:
            pipe.unet.enable_gradient_checkpointing()
        for model in self.models:
            model.train()

    def _setup_inputs(self) -> None:
        """The prompt table and the latent cache (pictures are encoded when a step first draws them)."""
        s, pictures = self.settings, list(self.images) + list(self.class_images or [])
        self.n_instance = len(self.images)
        prompts = training_prompts(s, self.captions, bool(self.class_images), bool(s.caption_dropout))
        frozen = all(config is None for config in self.configs[1:])
        self.prompts = PromptTable(self.pipe, self.device, prompts, self.captions, frozen)
        self.latents = LatentCache(self.pipe.vae, self.device, pictures, s.random_flip)
        self.time_ids = training_time_ids(self.pipe, pictures, s.resolution, self.device)  # SDXL's
        n_class = len(self.class_images or [])
        self.batches = MicroBatches(s, self.prompts, self.latents, self.n_instance, n_class)
        self.validation = None
        if s.validation_every:
            rows = self.prompts.picture_rows
            self.validation = ValidationSet(
                s, self.latents, self.noise_scheduler, self.n_instance, rows, self.validation_images
            )

    def _setup_optimizer(self):
        groups = parameter_groups(self.pipe, self.settings)
        self.trainable_params = [p for group in groups for p in group["params"]]
        return make_optimizer(groups, self.settings, self.device.type)

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
        bar = tqdm(
            total=last,
            initial=self.start_step,
            desc="train",
            unit="step",
            disable=not s.progress_bar,
            dynamic_ncols=True,
        )
        pending: list = []
        set_optimizer_mode(self.optimizer, training=True)
        clock = StepClock()
        while self.progress.step < last:
            loss = self.training_step()
            self.progress.step += 1
            step = self.progress.step
            pending.append((step, loss.detach(), step_sizes(self.optimizer)))
            if s.validation_every and step % s.validation_every == 0:
                self.log.val_losses[step] = self.validation_loss()
            clock.step_done()
            stop = step < last and self.should_stop is not None and self.should_stop()
            save = checkpoint_due(s, step) or (step == until and step < s.max_train_steps) or stop
            if len(pending) >= s.log_every or step == last or save:
                self._report(pending, clock, bar)
                pending = []
            if save:
                folder = self.save_checkpoint(step)
            if stop:
                bar.close()
                raise TrainingStopped(step, folder)
        bar.close()
        set_optimizer_mode(self.optimizer, training=False)  # the trained weights are the evaluation ones
        self._timing = clock.timing(self.progress.step - self.start_step)

    def training_step(self):
        """One optimizer step (all micro-batches). Returns the mean loss as a tensor."""
        s = self.settings
        total = 0.0
        for micro in range(s.gradient_accumulation_steps):
            micro_step = self.progress.step * s.gradient_accumulation_steps + micro
            loss = self._loss_step(micro_step) / s.gradient_accumulation_steps
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

    def micro_batch(self, micro_step: int):
        """Latents and prompt rows of one micro-batch (``inputs.MicroBatches``)."""
        return self.batches.draw(micro_step, self.progress.generator)

    def _loss_step(self, micro_step: int):
        """The loss of one micro-batch: noise its latents, predict, compare with the target."""
        s, scheduler = self.settings, self.noise_scheduler
        latents, prompt_rows = self.micro_batch(micro_step)
        noise, timesteps = draw_noise(
            latents, scheduler, s.noise_offset, self.progress.generator, self.device
        )
        noisy = scheduler.add_noise(latents, noise, timesteps)
        with self.accelerator.autocast():
            embeds, pooled = self.prompts.conditioning(prompt_rows)
            added = added_conditioning(
                pooled, self.time_ids, self.batches.pictures(micro_step), self.unet_dtype
            )
            pred = self.pipe.unet(
                noisy.to(self.unet_dtype), timesteps, embeds.to(self.unet_dtype), added_cond_kwargs=added
            ).sample
        target = denoising_target(scheduler, latents, noise, timesteps)
        prior_weight = s.prior_loss_weight if self.class_images else None
        return denoising_loss_of(pred, target, timesteps, self.snr_weights, prior_weight)

    def validation_loss(self) -> float:
        """Denoising loss on the fixed validation triples, with the weights that are saved (no dropout)."""
        import torch

        with torch.no_grad(), self.evaluation_weights(), self.accelerator.autocast():
            for model in self.models:
                model.eval()  # dropout off: it would draw from the global generator the training uses
            try:
                return self.validation.loss(self.pipe.unet, self.unet_dtype, self.prompts, self.time_ids)
            finally:
                for model in self.models:
                    model.train()

    def evaluation_weights(self):
        """A context holding the weights that are saved and rendered (``weights.evaluation_weights``)."""
        return evaluation_weights(self.trainable_params, self.optimizer)

    def _report(self, pending: list, clock: StepClock, bar) -> None:
        import torch

        losses = torch.stack([loss for _, loss, _ in pending]).float().tolist()  # one device sync per report
        rows = []
        for (step, _, lrs), loss in zip(pending, losses, strict=True):
            text_lr = lrs[1] if len(lrs) > 1 else None
            rows.append(self.log.record(step, loss, lrs[0], text_lr))
            if self.on_step:
                val = self.log.val_losses.get(step)
                self.on_step(StepRecord(step, loss, lrs[0], text_lr, clock.elapsed(), val))
        self.log.append(rows)
        bar.update(len(pending))
        bar.set_postfix(loss=f"{losses[-1]:.4f}", lr=f"{pending[-1][2][0]:.2e}", refresh=False)

    # ---- save --------------------------------------------------------------------------------------------
    def _write_adapters(self, folder: Path, kohya: bool, raw_weights=contextlib.nullcontext) -> None:
        """Write the adapter files of the weights ``raw_weights`` holds, and of their EMA into ``folder/ema/``."""
        ema = (
            functools.partial(ema_weights, self.trainable_params, self.ema) if self.ema is not None else None
        )
        write_trained_adapters(
            folder,
            self.settings.adapter_kind,
            kohya,
            lambda meta: adapter_weights(self.pipe, ADAPTER_NAME, self.configs, meta),
            training_metadata(self.settings, self.metadata, self.progress.step),
            raw_weights,
            ema,
        )

    def save_checkpoint(self, step: int) -> Path:
        """Write the LoRA weights and the full training state at ``step`` (atomically).

        Args:
            step: The step just finished.

        Returns:
            The checkpoint folder.
        """
        # The training weights and state first (what resume continues), then the evaluation weights.
        write = functools.partial(self._write_adapters, kohya=False, raw_weights=self.evaluation_weights)
        target = self.checkpointer.save(step, trainable_tensors(self.models), write, self.log)
        if self.on_checkpoint:
            self.on_checkpoint(step, target)
        return target

    def save_final(self) -> TrainResult:
        """Write the final adapter files and kohya exports, settings, identity, loss log and result file.

        Returns:
            The result, with paths, histories, speed and peak memory.
        """
        out = self.output_dir
        out.mkdir(parents=True, exist_ok=True)
        self._write_adapters(out, kohya=True)
        peak, kind = peak_memory(self.device)
        return finish_folder(
            out,
            self.settings,
            self.identity,
            self.log,
            ema=self.ema is not None,
            peak_memory_mb=peak,
            memory_kind=kind,
            resumed_from_step=getattr(self, "start_step", 0),
            **self._timing,
        )

    # ---- cleanup -----------------------------------------------------------------------------------------
    def cleanup(self) -> None:
        """Remove the training adapter and restore the borrowed pipeline's state."""
        from accelerate.state import AcceleratorState, GradientState

        restore_pipeline(self.pipe, self.settings.gradient_checkpointing)
        # Accelerate keeps one process-wide state and refuses a second Accelerator with another precision;
        # the next job in this process may train with other settings.
        AcceleratorState._reset_state()
        GradientState._reset_state()


def training_metadata(s: TrainSettings, metadata: dict, steps: int) -> dict:
    """What the LoRA files store: every hyperparameter, the caller's metadata and the steps trained."""
    return {**s.to_dict(), "alpha": s.lora_alpha, **metadata, "trained_steps": steps}


def write_trained_adapters(folder: Path, kind: str, kohya: bool, read, meta: dict, raw_held, ema_held=None):
    """Write the adapter files of the raw weights into ``folder`` and of their EMA into ``folder/ema/``.

    Args:
        folder: Where the raw weights' files go.
        kind: ``train.adapter_kind`` (which file holds it).
        kohya: Also write the kohya exports.
        read: ``AdapterWeights`` of the weights in place, given their metadata.
        meta: ``training_metadata``; each file adds ``weights`` (``raw`` or ``ema``).
        raw_held: A context holding the raw weights in place.
        ema_held: A context holding the EMA weights in place, or None without EMA.
    """
    held = [(raw_held, folder, "raw"), *([(ema_held, folder / EMA_DIR, "ema")] if ema_held else [])]
    for weights_held, into, name in held:
        with weights_held():
            write_adapter_files(into, read(meta | {"weights": name}), kind, kohya)


def adapter_configs(s: TrainSettings, family: str = SD) -> tuple:
    """The peft configs of the UNet's adapter and of the text encoder's (None while it is frozen).

    SDXL (``family``) has a third: its second text encoder's (``train.text_encoder_2_lr``), the same targets.
    """
    unet = adapter_config(
        s.adapter_kind,
        s.rank,
        s.lora_alpha,
        s.dropout,
        list(s.unet_target_modules),
        list(s.conv_target_modules),
        s.conv_rank,
        s.conv_alpha,
    )
    text = adapter_config(s.adapter_kind, s.rank, s.lora_alpha, s.dropout, list(s.text_target_modules))
    configs = (unet, text if s.trains_text_encoder else None)
    if family == SDXL:
        configs += (text if s.trains_text_encoder_2 else None,)
    return configs


def parameter_groups(pipe, s: TrainSettings) -> list[dict]:
    """The optimizer's parameter groups: the UNet's trainable weights, then each text encoder's that trains."""
    groups = [{"params": _trainable(pipe.unet), "lr": s.learning_rate}]
    if s.trains_text_encoder:
        groups.append({"params": _trainable(pipe.text_encoder), "lr": s.text_encoder_lr})
    if family_of(pipe) == SDXL and s.trains_text_encoder_2:
        groups.append({"params": _trainable(pipe.text_encoder_2), "lr": s.text_encoder_2_rate})
    return groups


def added_conditioning(pooled, table, rows: list[int], dtype) -> dict | None:
    """SDXL's UNet's added conditioning of a batch: pooled text embeddings and its pictures' time ids."""
    if table is None:
        return None
    return {"text_embeds": pooled.to(dtype), "time_ids": table[rows].to(dtype)}


def restore_pipeline(pipe, gradient_checkpointing: bool) -> None:
    """Take the training adapter out of ``pipe`` and leave its models frozen, in eval mode."""
    encoders = [model for _, model in text_encoders(pipe)]
    if any(ADAPTER_NAME in (getattr(m, "peft_config", None) or {}) for m in (pipe.unet, *encoders)):
        pipe.unload_lora_weights()  # removes the LoRA layers themselves, not just the adapter
    if gradient_checkpointing:
        pipe.unet.disable_gradient_checkpointing()
        for encoder in encoders:
            encoder.activation_checkpointing_disable()
    for model in (pipe.unet, pipe.vae, *encoders):
        model.requires_grad_(False)
        model.eval()


def step_sizes(optimizer) -> list[float]:
    """The learning rate of each parameter group; Prodigy's times its estimated step size ``d``."""
    return [group["lr"] * group.get("d", 1.0) for group in optimizer.param_groups]


def add_adapter(model, config, key: str) -> None:
    """Attach the training adapter (``ADAPTER_NAME``) of peft ``config`` to ``model``; ``key`` names its targets."""
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
        pipe,
        images,
        settings,
        output_dir,
        class_images,
        on_step,
        on_checkpoint,
        metadata,
        identity,
        should_stop=should_stop,
        validation_images=validation_images,
        captions=captions,
    )
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    try:
        trainer.setup(resume_from)
        if trainer.progress.step == 0:
            trainer.log.path.unlink(missing_ok=True)
        trainer.train(until)
        if until is not None and until < settings.max_train_steps:
            if not checkpoint_dir(output_dir, until).is_dir():
                # resumed at ``until`` from another run's checkpoint (step-axis reuse): nothing was trained,
                # and the rung's checkpoint belongs in this training folder too
                trainer.save_checkpoint(until)
            return checkpoint_dir(output_dir, until)
        return trainer.save_final()
    finally:
        trainer.cleanup()
