"""Train a pack: several configurations of one sweep with one forward and backward a step.

Each configuration trains exactly as ``LoraTrainer`` would train it alone: its LoRA initialised by peft under
its own seed, its own generator for pictures, noise and timesteps (drawn in the same order), its own loss
mean, gradient clipping, optimizer, schedule and EMA. Only the UNet (and the text encoder, for the
configurations that train it) runs once for the whole pack, through ``PackedLinear`` layers. A configuration
with fewer steps writes its final files when it reaches them and leaves the batch.

Each configuration checkpoints and resumes on its own, in ``LoraTrainer``'s format. The pack trainer is for
LoRA, LoCon and DoRA (``pack_refusal`` says what else runs alone), on a float32, float16 or bfloat16 base model as
``LoraTrainer``: the adapters train in float32 under the accelerator's autocast. Under fp16 each configuration
has its own gradient scaler: an overflow in its gradients skips its own step alone.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import warnings
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

from lora_core.family import family_of, text_encoders, training_time_ids
from lora_core.optimizers import make_optimizer, make_schedule, set_optimizer_mode
from lora_core.packs.layers import dropout_generators, restore_layers
from lora_core.packs.optim import PackAdamW, step_alone, step_together
from lora_core.packs.prompts import PackPrompts
from lora_core.packs.stacks import adapter_weights, initial_adapter, pack_models
from lora_core.settings import BOOKKEEPING_FIELDS, FIELD_SOURCES, TrainSettings
from lora_core.training.checkpoint import Checkpointer, checkpoint_due
from lora_core.training.device import mixed_precision, peak_memory
from lora_core.training.inputs import LatentCache, MicroBatches, training_prompts
from lora_core.training.loss_log import LossLog
from lora_core.training.objective import SnrWeights, denoising_target, draw_noise, pack_losses
from lora_core.training.recipe import (
    added_conditioning,
    restore_pipeline,
    step_sizes,
    training_metadata,
    write_trained_adapters,
)
from lora_core.training.results import StepClock, StepRecord, TrainingStopped, TrainResult, finish_folder
from lora_core.training.validation import ValidationSet
from lora_core.training.weights import ema_weights, evaluation_weights, make_ema

log = logging.getLogger(__name__)

# Settings that may differ between the configurations of one pack; every other field must be equal.
PACKABLE_FIELDS = BOOKKEEPING_FIELDS | {
    "learning_rate",
    "text_encoder_lr",
    "text_encoder_2_lr",
    "lr_scheduler",
    "lr_warmup_steps",
    "lr_num_cycles",
    "lr_power",
    "max_train_steps",
    "max_grad_norm",
    "optimizer",
    "optim",
    "adam_beta1",
    "adam_beta2",
    "adam_weight_decay",
    "adam_epsilon",
    "rank",
    "alpha",
    "conv_rank",
    "conv_alpha",
    "seed",
    "noise_offset",
    "snr_gamma",
    "dropout",
    "prior_loss_weight",
    "caption_dropout",
    "ema_decay",
}


def pack_refusal(settings: list[TrainSettings], half_precision: bool = False) -> str | None:
    """Why these configurations cannot train as one pack, in one line; None when they can.

    Args:
        settings: The configurations, in pack order.
        half_precision: The base model is float16 or bfloat16.
    """
    first = settings[0]
    for s in settings:
        if s.adapter_kind == "dora" and half_precision:
            # measured (bfloat16, 6 steps): 22 % of a tensor's norm from the lone run, far outside the bounds
            return (
                "lora.kind=dora on a half-precision model: DoRA's row norms, taken in half precision as peft "
                "does, round otherwise in a pack than alone; this configuration runs alone"
            )
        if s.adapter_kind not in ("lora", "dora"):
            return (
                f"lora.kind={s.adapter_kind}: packs train LoRA, LoCon and DoRA; this configuration runs alone"
            )
        if s.adapter_kind == "dora" and s.conv_target_modules:
            return "lora.kind=dora on convolutions: packs train DoRA on linear layers; this configuration runs alone"
        if s.gradient_checkpointing and s.dropout:
            return (
                "train.gradient_checkpointing with lora.dropout: a pack's dropout masks come from each "
                "configuration's own generator, which the recomputed forward would draw again; it runs alone"
            )
        for f in fields(TrainSettings):
            if f.name not in PACKABLE_FIELDS and getattr(s, f.name) != getattr(first, f.name):
                key = FIELD_SOURCES.get(f.name, f"train.{f.name}")
                return (
                    f"{key} differs ({getattr(first, f.name)!r} and {getattr(s, f.name)!r}): a pack shares it"
                )
    ranks = {s.rank for s in settings}
    if len(ranks) > 1 and any(s.optimizer == "adafactor" for s in settings):
        return "train.optimizer=adafactor with different ranks: its factored moments see the zero padding"
    return None


class PackTrainer:
    """Trains several configurations on one borrowed pipeline, one forward and backward a step.

    Each configuration keeps its own checkpoints, in the layout and format ``LoraTrainer`` writes: a pack's
    checkpoint continues alone and a lone run's checkpoint continues in a pack.

    Args:
        pipe: A ``StableDiffusionPipeline`` (no adapter active; left as found by ``cleanup``).
        images: Subject pictures at the shared resolution.
        settings: One validated ``TrainSettings`` per configuration (``pack_refusal`` is None for them).
        output_dirs: One training folder per configuration.
        class_images: Class pictures when prior preservation is on.
        captions: One caption per subject picture, or None for the instance prompt.
        on_step: Called with (configuration index, ``StepRecord``) after each of its steps.
        metadata: Extra values stored with the LoRA files: one dict for all, or one per configuration.
        identity: What else the weights depend on (saved beside them, as ``LoraTrainer`` does).
        should_stop: Asked after every pack step; True saves a checkpoint of every configuration still
            training and raises ``TrainingStopped`` (a time limit, a preemption).
    """

    def __init__(
        self,
        pipe,
        images: list,
        settings: list[TrainSettings],
        output_dirs: list[str | os.PathLike],
        class_images: list | None = None,
        captions: list[str] | None = None,
        on_step: Callable[[int, StepRecord], None] | None = None,
        metadata: dict | list[dict] | None = None,
        identity: dict | None = None,
        should_stop: Callable[[], bool] | None = None,
    ):
        for s in settings:
            s.validate()
        reason = pack_refusal(settings, half_precision=pipe.unet.dtype.itemsize < 4)
        if reason is not None:
            raise ValueError(f"these configurations cannot share a pack: {reason}")
        if len(output_dirs) != len(settings):
            raise ValueError(f"{len(output_dirs)} output folders for {len(settings)} configurations")
        self.pipe, self.images, self.settings = pipe, images, list(settings)
        self.output_dirs = [Path(d) for d in output_dirs]
        shared = settings[0]
        self.class_images = class_images if shared.with_prior_preservation else None
        self.captions = list(captions) if captions is not None else [shared.instance_prompt] * len(images)
        self.on_step, self.identity, self.should_stop = on_step, identity or {}, should_stop
        self.metadata = list(metadata) if isinstance(metadata, list) else [metadata or {}] * len(settings)
        self.logs = [LossLog(d) for d in self.output_dirs]
        self.results: list[TrainResult | None] = [None] * len(settings)
        self.checkpoints: list[Path | None] = [None] * len(settings)
        self.failures: dict[int, str] = {}

    # ---- setup -------------------------------------------------------------------------------------------
    def setup(self, resume_from: list | None = None) -> None:
        """Initialise every configuration's LoRA as peft does alone, pack them into the models, build the rest.

        Args:
            resume_from: Per configuration, a checkpoint to continue from (its own or a lone run's) or None.
        """
        import torch
        from diffusers import DDPMScheduler

        pipe, device = self.pipe, self.pipe.unet.device
        self.device, self.unet_dtype = device, pipe.unet.dtype
        self.family = family_of(pipe)
        self.precision = mixed_precision(self.unet_dtype, self.settings[0].mixed_precision, device.type)
        self.models = [pipe.unet, *(model for _, model in text_encoders(pipe))]  # LoraTrainer's order
        for model in (*self.models, pipe.vae):
            model.requires_grad_(False)
        self.noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        self.snr = [
            SnrWeights(self.noise_scheduler, s.snr_gamma) if s.snr_gamma else None for s in self.settings
        ]
        initial = [initial_adapter(pipe, s) for s in self.settings]
        dropout = dropout_generators([s.dropout for s in self.settings], [state for _, state in initial])
        self._replaced = []
        self.packed = pack_models(self.models, [w for w, _ in initial], dropout, self._replaced)
        self.unet_routing, self.text_routings = self.packed.routings[0], self.packed.routings[1:]
        self.params = [
            [torch.nn.Parameter(stack.data[where]) for _, stack, where in self.packed.slices[k]]
            for k in range(len(self.settings))
        ]
        if self.settings[0].gradient_checkpointing:  # shared by the pack; as LoraTrainer sets it up
            pipe.unet.enable_gradient_checkpointing()
            for m, encoder in enumerate(self.models[1:], start=1):
                if any(adapts[m] for adapts in self.packed.adapts):
                    encoder.activation_checkpointing_enable()
        self._setup_training_state()
        self._setup_inputs()
        for k, checkpoint in enumerate(resume_from or []):
            if checkpoint is not None:
                self._resume(k, checkpoint)
        for k, folder in enumerate(self.output_dirs):
            folder.mkdir(parents=True, exist_ok=True)
            if self.steps[k] == 0:
                self.logs[k].path.unlink(missing_ok=True)  # a fresh start's log starts empty
        self.start_steps = list(self.steps)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        for model in self.models:
            model.train()

    def _setup_training_state(self) -> None:
        """Each configuration's optimizer, schedule, EMA and checkpointer (step counter and generator)."""
        from accelerate import Accelerator

        self.optimizers, self.schedules, self.emas, self.checkpointers, self.accelerators = [], [], [], [], []
        for k, s in enumerate(self.settings):
            groups = self.packed.parameter_groups(k, s, self.params[k])
            accelerator = Accelerator(mixed_precision=self.precision, cpu=self.device.type == "cpu")
            optimizer = make_optimizer(groups, s, self.device.type)
            optimizer, schedule = accelerator.prepare(optimizer, make_schedule(optimizer, s))
            ema = make_ema(self.params[k], s.ema_decay) if s.uses_ema else None
            self.optimizers.append(optimizer)
            self.schedules.append(schedule)
            self.emas.append(ema)
            self.accelerators.append(accelerator)
            self.checkpointers.append(Checkpointer(self.output_dirs[k], s, self.identity, accelerator, ema))
        # AdamW without EMA nor loss scaling (a sweep's usual case) steps the whole stack at once; else each
        # configuration its own optimizer (its own scaler skips its step on an overflow).
        batched = all(s.optimizer == "adamw" and not s.uses_ema for s in self.settings)
        batched = batched and not any(self.scalers)
        self.pack_adamw = PackAdamW(self.packed.flats, self.settings) if batched else None

    @property
    def scalers(self) -> list:
        """Each configuration's gradient scaler (fp16 on CUDA) or None: its accelerated optimizer's."""
        return [optimizer.scaler for optimizer in self.optimizers]

    @property
    def steps(self) -> list[int]:
        """Each configuration's optimizer steps done."""
        return [c.progress.step for c in self.checkpointers]

    def _setup_inputs(self) -> None:
        s = self.settings[0]
        # with "" whatever the first one's caption dropout: another configuration may drop captions
        prompts = training_prompts(s, self.captions, bool(self.class_images), dropped=True)
        n_instance, n_class = len(self.images), len(self.class_images or [])
        trains_text = [any(adapts[1:]) for adapts in self.packed.adapts]
        self.prompts = PackPrompts(
            self.pipe, self.device, prompts, self.captions, trains_text, self.text_routings
        )
        pictures = list(self.images) + list(self.class_images or [])
        self.latents = LatentCache(self.pipe.vae, self.device, pictures, s.random_flip)
        self.time_ids = training_time_ids(self.pipe, pictures, s.resolution, self.device)  # SDXL's
        table = self.prompts.rows
        self.batches = [MicroBatches(c, table, self.latents, n_instance, n_class) for c in self.settings]
        self.validations = [
            ValidationSet(c, self.latents, self.noise_scheduler, n_instance, table.picture_rows)
            if c.validation_every
            else None
            for c in self.settings
        ]

    def _resume(self, k: int, checkpoint: Path) -> None:
        """Continue configuration ``k`` from a checkpoint: weights, optimizer, schedule, generator, EMA, log."""
        folder = self.checkpointers[k].resume_point(checkpoint)
        trainable = self._trainable(k)
        with self.unet_routing.dropout_as_global(k):  # the checkpoint's global generator is its dropout's
            self.logs[k].restore(self.checkpointers[k].load(folder, trainable))
        self.logs[k].rewrite()  # drops what came after the checkpoint
        if self.pack_adamw is not None:  # its moments move into the pack's buffers
            self.pack_adamw.load_from(
                k, self.steps[k], self.optimizers[k], self.params[k], self.packed.slices[k]
            )

    # ---- train -------------------------------------------------------------------------------------------
    def train(self, until: int | None = None) -> list[TrainResult | None]:
        """Train every configuration to its ``max_train_steps``; each writes its final files as it ends.

        A configuration whose loss stops being finite fails alone (``failures`` says why; no final files)
        while the others train on: its samples are its own slice of the batch and its gradient its own.

        Args:
            until: Stop every configuration after this step with a checkpoint there (a halving rung), under
                the schedule of its whole run; None trains to ``max_train_steps``.

        Returns:
            One ``TrainResult`` per configuration, in pack order; None for one that failed or stopped at
            ``until`` (``checkpoints`` holds its checkpoint there).

        Raises:
            TrainingStopped: ``should_stop`` said so; every configuration still training saved a checkpoint.
        """
        from tqdm.auto import tqdm

        last = [s.max_train_steps if until is None else min(until, s.max_train_steps) for s in self.settings]
        for optimizer in self.optimizers:
            set_optimizer_mode(optimizer, training=True)
        bar = tqdm(
            total=sum(last),
            initial=sum(self.steps),
            desc=f"train a pack of {len(self.settings)}",
            unit="step",
            disable=not self.settings[0].progress_bar,
            dynamic_ncols=True,
        )
        self.clock = StepClock()
        pending: list[list[dict]] = [[] for _ in self.settings]
        while active := [
            k for k in range(len(self.settings)) if self.steps[k] < last[k] and k not in self.failures
        ]:
            losses = self.training_step(active)
            self.clock.step_done()
            stop = self.should_stop is not None and self.should_stop()
            for k, loss in zip(active, losses, strict=True):
                if not math.isfinite(loss):  # its slice alone went bad: it fails, the rest train on
                    self._fail(k, f"the loss became {loss} at step {self.steps[k] + 1}: training diverged")
                    continue
                self.checkpointers[k].progress.step += 1
                every = self.settings[k].validation_every
                if every and self.steps[k] % every == 0:
                    self.logs[k].val_losses[self.steps[k]] = self.validation_loss(k)
                self._record(k, loss, pending[k])
                self._after_step(k, last[k], stop, pending[k])
            bar.update(len(active))
            bar.set_postfix(configurations=len(active), refresh=False)
            if stop and any(self.steps[k] < last[k] for k in active if k not in self.failures):
                bar.close()
                k = next(k for k in active if k not in self.failures and self.steps[k] < last[k])
                raise TrainingStopped(self.steps[k], self.checkpoints[k])
        bar.close()
        return self.results

    def _record(self, k: int, loss: float, pending: list[dict]) -> None:
        step = self.steps[k]
        lrs = step_sizes(self.optimizers[k])
        text_lr = lrs[1] if len(lrs) > 1 else None
        pending.append(self.logs[k].record(step, loss, lrs[0], text_lr))
        if self.on_step:
            val = self.logs[k].val_losses.get(step)
            self.on_step(k, StepRecord(step, loss, lrs[0], text_lr, self.clock.elapsed(), val))

    def _after_step(self, k: int, last: int, stop: bool, pending: list[dict]) -> None:
        """Configuration ``k``'s log, checkpoint and final files after its step, as ``LoraTrainer`` writes them."""
        s, step = self.settings[k], self.steps[k]
        save = checkpoint_due(s, step) or (step == last < s.max_train_steps) or (stop and step < last)
        if len(pending) >= s.log_every or step == last or save:
            self.logs[k].append(pending)
            pending.clear()
        if save:
            self.checkpoints[k] = self.save_checkpoint(k)
        if step == s.max_train_steps:
            set_optimizer_mode(self.optimizers[k], training=False)
            self.results[k] = self.save_final(k)

    def validation_loss(self, k: int) -> float:
        """Configuration ``k``'s validation loss, as ``LoraTrainer`` measures it: its saved weights, no dropout."""
        import torch

        self.unet_routing.active = [k]
        table = self.prompts.table_of(k)
        models = self.models
        with (
            torch.no_grad(),
            evaluation_weights(self.params[k], self.optimizers[k]),
            self.accelerators[k].autocast(),
        ):
            for model in models:
                model.eval()
            try:
                return self.validations[k].loss(self.pipe.unet, self.unet_dtype, table, self.time_ids)
            finally:
                for model in models:
                    model.train()

    def _fail(self, k: int, reason: str) -> None:
        self.failures[k] = reason
        log.warning("configuration %d of the pack (%s): %s", k, self.output_dirs[k], reason)
        self.logs[k].rewrite()

    def training_step(self, active: list[int]) -> list[float]:
        """One optimizer step of every active configuration, one forward and backward per micro-batch.

        Returns:
            Each active configuration's mean loss of the step.
        """
        accumulation = self.settings[0].gradient_accumulation_steps
        totals = 0.0
        for micro in range(accumulation):
            micro_steps = [self.steps[k] * accumulation + micro for k in active]
            losses = self._loss_step(active, micro_steps) / accumulation
            total = losses.sum()  # each configuration's gradient is its own loss's
            if any(scalers := self.scalers):  # fp16: each loss scaled by its own scaler, as alone
                total = sum(scalers[k].scale(loss) for k, loss in zip(active, losses.unbind(), strict=True))
            with (
                warnings.catch_warnings()
            ):  # the stacks and their gradients are strided views of flat buffers
                warnings.filterwarnings("ignore", message="grad and param do not obey the gradient layout")
                total.backward()
            totals = totals + losses.detach()
        if self.pack_adamw is not None:
            packed = self.packed
            groups = [[packed.group_of(k, m) for k in range(len(self.settings))] for m in packed.flat_models]
            step_together(
                self.pack_adamw, packed.flats, groups, self.settings, self.optimizers, self.schedules, active
            )
        else:
            for k in active:
                parts = (self.optimizers, self.schedules, self.emas, self.params, self.packed.slices)
                step_alone(self.settings[k], *(part[k] for part in parts))
        for flat in self.packed.flats:
            flat.grad.zero_()  # the stacks' gradients stay views of it
        return totals.float().tolist()

    def _loss_step(self, active: list[int], micro_steps: list[int]):
        """The ``(K,)`` losses of the active configurations' own micro-batches, from one UNet forward."""
        import torch

        scheduler, parts = self.noise_scheduler, []
        for k, micro_step in zip(active, micro_steps, strict=True):
            generator = self.checkpointers[k].progress.generator
            latents, rows = self.batches[k].draw(micro_step, generator)
            noise, timesteps = draw_noise(
                latents, scheduler, self.settings[k].noise_offset, generator, self.device
            )
            parts.append((latents, rows, noise, timesteps))
        latents, noise, timesteps = (torch.cat([part[i] for part in parts]) for i in (0, 2, 3))
        noisy = scheduler.add_noise(latents, noise, timesteps)
        self.unet_routing.active = list(active)
        with self.accelerators[0].autocast():  # every configuration's accelerator has the same precision
            embeds, pooled = self.prompts.conditioning(active, [rows for _, rows, _, _ in parts])
            dtype = self.unet_dtype
            added = None
            if self.time_ids is not None:  # SDXL: each sample's picture's time ids
                steps = zip(active, micro_steps, strict=True)
                pictures = [row for k, step in steps for row in self.batches[k].pictures(step)]
                added = added_conditioning(pooled, self.time_ids, pictures, dtype)
            pred = self.pipe.unet(
                noisy.to(dtype), timesteps, embeds.to(dtype), added_cond_kwargs=added
            ).sample
        target = denoising_target(scheduler, latents, noise, timesteps)
        prior = [self.settings[k].prior_loss_weight for k in active] if self.class_images else None
        return pack_losses(pred, target, timesteps, len(active), [self.snr[k] for k in active], prior)

    # ---- save --------------------------------------------------------------------------------------------
    def _write_adapters(self, k: int, folder: Path, kohya: bool) -> None:
        ema = self.emas[k]
        write_trained_adapters(
            folder,
            self.settings[k].adapter_kind,
            kohya,
            functools.partial(
                adapter_weights, self.settings[k], self.family, self.packed.layer_names, self.params[k]
            ),
            training_metadata(self.settings[k], self.metadata[k], self.steps[k]),
            contextlib.nullcontext,
            functools.partial(ema_weights, self.params[k], ema) if ema is not None else None,
        )

    def save_checkpoint(self, k: int) -> Path:
        """Write configuration ``k``'s checkpoint at its current step, in ``LoraTrainer``'s format."""
        if self.pack_adamw is not None:
            self.pack_adamw.save_into(k, self.optimizers[k], self.params[k], self.packed.slices[k])
        trainable = self._trainable(k)
        write = functools.partial(self._write_adapters, k, kohya=False)
        with self.unet_routing.dropout_as_global(
            k
        ):  # a lone run's checkpoint keeps its dropout's generator there
            return self.checkpointers[k].save(self.steps[k], trainable, write, self.logs[k])

    def _trainable(self, k: int) -> dict:
        """Configuration ``k``'s parameters by their checkpoint names (``LoraTrainer``'s)."""
        return {key: param for (key, _, _), param in zip(self.packed.slices[k], self.params[k], strict=True)}

    def save_final(self, k: int) -> TrainResult:
        """Write configuration ``k``'s final files, as ``LoraTrainer.save_final`` lays them out."""
        s, out = self.settings[k], self.output_dirs[k]
        out.mkdir(parents=True, exist_ok=True)
        self._write_adapters(k, out, kohya=True)
        peak, kind = peak_memory(self.device)
        return finish_folder(
            out,
            s,
            self.identity,
            self.logs[k],
            ema=self.emas[k] is not None,
            peak_memory_mb=peak,
            memory_kind=kind,
            resumed_from_step=self.start_steps[k],
            **self.clock.timing(self.steps[k] - self.start_steps[k]),
        )

    # ---- cleanup -----------------------------------------------------------------------------------------
    def cleanup(self) -> None:
        """Put the base layers back and leave the borrowed pipeline frozen, in eval mode."""
        from accelerate.state import AcceleratorState, GradientState

        restore_layers(getattr(self, "_replaced", []))
        restore_pipeline(self.pipe, self.settings[0].gradient_checkpointing)  # frozen, eval mode, as alone
        AcceleratorState._reset_state()  # as LoraTrainer.cleanup: the next job may train otherwise
        GradientState._reset_state()


def train_pack(
    pipe, images, settings, output_dirs, resume_from: list | None = None, until: int | None = None, **kwargs
) -> list[TrainResult | None]:
    """Set up, train and clean up a ``PackTrainer``; returns each configuration's result (see ``train``)."""
    trainer = PackTrainer(pipe, images, settings, output_dirs, **kwargs)
    try:
        trainer.setup(resume_from)
        return trainer.train(until)
    finally:
        trainer.cleanup()
