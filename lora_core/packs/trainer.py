"""Train a pack: several configurations of one sweep with one forward and backward a step.

Each configuration trains exactly as ``LoraTrainer`` would train it alone: its LoRA initialised by peft under
its own seed, its own generator for pictures, noise and timesteps (drawn in the same order), its own loss
mean, gradient clipping, optimizer, schedule and EMA. Only the UNet (and the text encoder, for the
configurations that train it) runs once for the whole pack, through ``PackedLinear`` layers. A configuration
with fewer steps writes its final files when it reaches them and leaves the batch.

The first pack trainer is for LoRA on linear layers in fp32 (``pack_refusal`` says what else runs alone);
checkpoints and resume are the next step.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

from lora_core.adapters import AdapterWeights
from lora_core.optimizers import make_optimizer, make_schedule, set_optimizer_mode
from lora_core.packs.layers import PackRouting, packed_linear_class
from lora_core.packs.optim import PackAdamW, clip_pack_gradients
from lora_core.settings import BOOKKEEPING_FIELDS, TrainSettings
from lora_core.training.inputs import LatentCache, MicroBatches, PromptTable
from lora_core.training.loss_log import LossLog
from lora_core.training.objective import SnrWeights, denoising_target, draw_noise, pack_losses
from lora_core.training.recipe import (
    ADAPTER_NAME,
    adapter_configs,
    add_adapter,
    restore_pipeline,
    step_sizes,
    training_metadata,
    write_trained_adapters,
)
from lora_core.training.results import StepClock, StepRecord, TrainResult, finish_folder
from lora_core.training.weights import ema_weights, make_ema

log = logging.getLogger(__name__)

# Settings that may differ between the configurations of one pack; every other field must be equal.
PACKABLE_FIELDS = BOOKKEEPING_FIELDS | {
    "learning_rate",
    "text_encoder_lr",
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
    "seed",
    "noise_offset",
    "snr_gamma",
    "prior_loss_weight",
    "caption_dropout",
    "ema_decay",
}


def pack_refusal(settings: list[TrainSettings]) -> str | None:
    """Why these configurations cannot train as one pack, in one line; None when they can.

    Args:
        settings: The configurations, in pack order.
    """
    first = settings[0]
    for s in settings:
        if s.adapter_kind != "lora" or s.conv_target_modules:
            what = "LoCon" if s.conv_target_modules else s.adapter_kind
            return f"lora.kind={what}: packs train LoRA on linear layers; this configuration runs alone"
        if s.dropout:
            return (
                f"train.dropout={s.dropout}: packed layers have no dropout yet; this configuration runs alone"
            )
        if s.validation_every:
            return (
                "train.validation_every: validation in packs is not built yet; this configuration runs alone"
            )
        if s.gradient_checkpointing:
            return "train.gradient_checkpointing: packs run without it; this configuration runs alone"
        for f in fields(TrainSettings):
            if f.name not in PACKABLE_FIELDS and getattr(s, f.name) != getattr(first, f.name):
                return f"train.{f.name} differs ({getattr(first, f.name)!r} and {getattr(s, f.name)!r}): a pack shares it"
    ranks = {s.rank for s in settings}
    if len(ranks) > 1 and any(s.optimizer == "adafactor" for s in settings):
        return "train.optimizer=adafactor with different ranks: its factored moments see the zero padding"
    return None


class PackTrainer:
    """Trains several configurations on one borrowed pipeline, one forward and backward a step.

    Args:
        pipe: A ``StableDiffusionPipeline`` (no adapter active; left as found by ``cleanup``).
        images: Subject pictures at the shared resolution.
        settings: One validated ``TrainSettings`` per configuration (``pack_refusal`` is None for them).
        output_dirs: One training folder per configuration.
        class_images: Class pictures when prior preservation is on.
        captions: One caption per subject picture, or None for the instance prompt.
        on_step: Called with (configuration index, ``StepRecord``) after each of its steps.
        metadata: Extra values stored with each configuration's LoRA files.
        identity: What else the weights depend on (saved beside them, as ``LoraTrainer`` does).
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
        metadata: dict | None = None,
        identity: dict | None = None,
    ):
        for s in settings:
            s.validate()
        reason = pack_refusal(settings)
        if reason is not None:
            raise ValueError(f"these configurations cannot share a pack: {reason}")
        if len(output_dirs) != len(settings):
            raise ValueError(f"{len(output_dirs)} output folders for {len(settings)} configurations")
        self.pipe, self.images, self.settings = pipe, images, list(settings)
        self.output_dirs = [Path(d) for d in output_dirs]
        shared = settings[0]
        self.class_images = class_images if shared.with_prior_preservation else None
        self.captions = list(captions) if captions is not None else [shared.instance_prompt] * len(images)
        self.on_step, self.metadata, self.identity = on_step, metadata or {}, identity or {}
        self.logs = [LossLog(d) for d in self.output_dirs]
        self.results: list[TrainResult | None] = [None] * len(settings)
        self.failures: dict[int, str] = {}

    # ---- setup -------------------------------------------------------------------------------------------
    def setup(self) -> None:
        """Initialise every configuration's LoRA as peft does alone, pack them into the models, build the rest."""
        import torch
        from diffusers import DDPMScheduler

        pipe, device = self.pipe, self.pipe.unet.device
        if pipe.unet.dtype != torch.float32:
            raise ValueError("packs train in fp32 for now: load the pipeline in float32")
        self.device = device
        for model in (pipe.unet, pipe.vae, pipe.text_encoder):
            model.requires_grad_(False)
        self.noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        self.snr = [
            SnrWeights(self.noise_scheduler, s.snr_gamma) if s.snr_gamma else None for s in self.settings
        ]
        initial = [self._initial_weights(s) for s in self.settings]
        self.unet_routing, self.text_routing, self._replaced = PackRouting(), PackRouting(), []
        # the adapted layers' names, in the order peft made them (every configuration adapts the same ones)
        self.layer_names = (list(initial[0][0]), next((list(w[1]) for w in initial if w[1]), []))
        unet_stacks, self.unet_params = self._pack_model(
            pipe.unet, [w[0] for w in initial], self.unet_routing
        )
        text_stacks, self.text_params = self._pack_model(
            pipe.text_encoder, [w[1] for w in initial], self.text_routing
        )
        self.stacks = [unet_stacks, text_stacks]
        self.optimizers, self.schedules, self.emas, self.params = [], [], [], []
        for k, s in enumerate(self.settings):
            groups = [{"params": self.unet_params[k], "lr": s.learning_rate}]
            if s.trains_text_encoder:
                groups.append({"params": self.text_params[k], "lr": s.text_encoder_lr})
            optimizer = make_optimizer(groups, s, device.type)
            self.optimizers.append(optimizer)
            self.schedules.append(make_schedule(optimizer, s))
            self.params.append([p for g in groups for p in g["params"]])
            self.emas.append(make_ema(self.params[k], s.ema_decay) if s.uses_ema else None)
        # AdamW without EMA (a sweep's usual case) steps the whole stack at once; else each its own optimizer.
        batched = all(s.optimizer == "adamw" and not s.uses_ema for s in self.settings) and all(
            hasattr(schedule, "lr_lambdas") for schedule in self.schedules
        )
        self.pack_adamw = PackAdamW(self.stacks, self.settings) if batched else None
        self.generators = [torch.Generator("cpu").manual_seed(s.seed) for s in self.settings]
        self.steps = [0] * len(self.settings)
        self._setup_inputs()
        for model in (pipe.unet, pipe.text_encoder):
            model.train()

    def _initial_weights(self, s: TrainSettings) -> tuple[dict, dict]:
        """One configuration's initial LoRA weights, by layer name: peft's own init under its seed, as alone."""
        from accelerate.utils import set_seed

        pipe = self.pipe
        set_seed(s.seed)  # the LoRA init draws from the global generator, as in LoraTrainer.setup
        unet_config, text_config = adapter_configs(s)
        add_adapter(pipe.unet, unet_config, "train.unet_target_modules")
        if text_config is not None:
            add_adapter(pipe.text_encoder, text_config, "train.text_target_modules")
        weights = (_lora_weights(pipe.unet), _lora_weights(pipe.text_encoder) if text_config else {})
        restore_pipeline(pipe, gradient_checkpointing=False)
        return weights

    def _pack_model(self, model, weights: list[dict], routing: PackRouting) -> tuple[list, list[list]]:
        """Replace each adapted linear layer of ``model`` by a ``PackedLinear`` over stacked adapters.

        Returns:
            The stacked parameters (``A`` then ``B`` of each layer) and, per configuration, its own
            parameters: views of its slices (sharing their memory), for its own optimizer and EMA; empty
            for a configuration that does not adapt ``model``.
        """
        import torch

        names = next((list(w) for w in weights if w), [])
        stacks, views = [], [[] for _ in weights]
        packed_linear = packed_linear_class()
        for name in names:
            base = model.get_submodule(name)
            rank = max(w[name][0].shape[0] for w in weights if w)
            a = torch.zeros(len(weights), rank, base.in_features)
            b = torch.zeros(len(weights), base.out_features, rank)
            scales = []
            for k, w in enumerate(weights):
                scales.append(self.settings[k].lora_alpha / self.settings[k].rank if w else 0.0)
                if w:
                    r = w[name][0].shape[0]
                    a[k, :r], b[k, :, :r] = w[name][0], w[name][1]
            device = base.weight.device
            a, b = torch.nn.Parameter(a.to(device)), torch.nn.Parameter(b.to(device))
            stacks += [a, b]
            for k, w in enumerate(weights):
                if w:
                    views[k] += [torch.nn.Parameter(a.data[k]), torch.nn.Parameter(b.data[k])]
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, packed_linear(base, routing, a, b, scales))
            self._replaced.append((parent, child, base))
        return stacks, views

    def _setup_inputs(self) -> None:
        s = self.settings[0]
        prompts = [
            s.instance_prompt,
            *self.captions,
            *([s.class_prompt] if self.class_images else []),
            "",  # a dropped caption (configurations with caption dropout)
        ]
        n_instance, n_class = len(self.images), len(self.class_images or [])
        frozen = [not c.trains_text_encoder for c in self.settings]
        self.frozen_prompts = (
            PromptTable(self.pipe, self.device, prompts, self.captions, True) if any(frozen) else None
        )
        self.live_prompts = (
            PromptTable(self.pipe, self.device, prompts, self.captions, False) if not all(frozen) else None
        )
        pictures = list(self.images) + list(self.class_images or [])
        self.latents = LatentCache(self.pipe.vae, self.device, pictures, s.random_flip)
        table = self.frozen_prompts or self.live_prompts
        self.batches = [MicroBatches(c, table, self.latents, n_instance, n_class) for c in self.settings]

    # ---- train -------------------------------------------------------------------------------------------
    def train(self) -> list[TrainResult]:
        """Train every configuration to its ``max_train_steps``; each writes its final files as it ends.

        A configuration whose loss stops being finite fails alone (``failures`` says why; no final files)
        while the others train on: its samples are its own slice of the batch and its gradient its own.

        Returns:
            One ``TrainResult`` per configuration, in pack order; None for one that failed.
        """
        for optimizer in self.optimizers:
            set_optimizer_mode(optimizer, training=True)
        clock = StepClock()
        while active := [
            k
            for k, s in enumerate(self.settings)
            if self.steps[k] < s.max_train_steps and k not in self.failures
        ]:
            losses = self.training_step(active)
            for k, loss in zip(active, losses, strict=True):
                if not math.isfinite(loss):  # its slice alone went bad: it fails, the rest train on
                    self.failures[k] = (
                        f"the loss became {loss} at step {self.steps[k] + 1}: training diverged"
                    )
                    log.warning("configuration %d of the pack: %s", k, self.failures[k])
                    self.logs[k].rewrite()
                    continue
                self.steps[k] += 1
                step = self.steps[k]
                lrs = self.logged_lrs[k] if self.pack_adamw is not None else step_sizes(self.optimizers[k])
                text_lr = lrs[1] if len(lrs) > 1 else None
                self.logs[k].record(step, loss, lrs[0], text_lr)
                if self.on_step:
                    self.on_step(k, StepRecord(step, loss, lrs[0], text_lr, clock.elapsed()))
                if step == self.settings[k].max_train_steps:
                    set_optimizer_mode(self.optimizers[k], training=False)
                    self.results[k] = self.save_final(k, clock)
        return self.results

    def training_step(self, active: list[int]) -> list[float]:
        """One optimizer step of every active configuration, one forward and backward per micro-batch.

        Returns:
            Each active configuration's mean loss of the step.
        """
        accumulation = self.settings[0].gradient_accumulation_steps
        totals = 0.0
        for micro in range(accumulation):
            losses = self._loss_step(active, self.steps[active[0]] * accumulation + micro)
            (losses.sum() / accumulation).backward()  # each configuration's gradient is its own loss's
            totals = totals + losses.detach() / accumulation
        if self.pack_adamw is not None:
            self._pack_step(active)
        else:
            self._separate_steps(active)
        for stack in (p for group in self.stacks for p in group):
            stack.grad = None
        return totals.float().tolist()

    def _pack_step(self, active: list[int]) -> None:
        """Clip and step every configuration at once (``PackAdamW``), each at its schedule's rate."""
        clip_pack_gradients([p for g in self.stacks for p in g], [s.max_grad_norm for s in self.settings])
        now = [_scheduled_rates(schedule, self.steps[k]) for k, schedule in enumerate(self.schedules)]
        # group g's rate of each configuration (0 for the text encoder of one that keeps it frozen)
        self.pack_adamw.step([[r[g] if g < len(r) else 0.0 for r in now] for g in range(len(self.stacks))])
        # what the loss log records, as LoraTrainer does: the groups' rates once the schedule has stepped
        self.logged_lrs = [
            _scheduled_rates(schedule, self.steps[k] + 1) for k, schedule in enumerate(self.schedules)
        ]

    def _separate_steps(self, active: list[int]) -> None:
        """Each active configuration's own clipping, optimizer, schedule and EMA, on its views."""
        import torch

        for k in active:
            s = self.settings[k]
            for view, stack in zip(self.params[k], self._stacks_of(k), strict=True):
                view.grad = None if stack.grad is None else stack.grad[k]
            if s.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(self.params[k], s.max_grad_norm)
            self.optimizers[k].step()
            self.schedules[k].step()
            self.optimizers[k].zero_grad(set_to_none=True)
            if self.emas[k] is not None:
                self.emas[k].step(self.params[k])

    def _stacks_of(self, k: int) -> list:
        """The stacked tensors behind configuration ``k``'s views, in the order of ``self.params[k]``."""
        return self.stacks[0] + (self.stacks[1] if self.settings[k].trains_text_encoder else [])

    def _loss_step(self, active: list[int], micro_step: int):
        """The ``(K,)`` losses of the active configurations' own micro-batches, from one UNet forward."""
        import torch

        scheduler, parts = self.noise_scheduler, []
        for k in active:
            latents, rows = self.batches[k].draw(micro_step, self.generators[k])
            noise, timesteps = draw_noise(
                latents, scheduler, self.settings[k].noise_offset, self.generators[k], self.device
            )
            parts.append((latents, rows, noise, timesteps))
        embeds = self._embeddings(active, [rows for _, rows, _, _ in parts])
        latents, noise, timesteps = (torch.cat([part[i] for part in parts]) for i in (0, 2, 3))
        self.unet_routing.active = list(active)
        pred = self.pipe.unet(scheduler.add_noise(latents, noise, timesteps), timesteps, embeds).sample
        target = denoising_target(scheduler, latents, noise, timesteps)
        prior = [self.settings[k].prior_loss_weight for k in active] if self.class_images else None
        return pack_losses(pred, target, timesteps, len(active), [self.snr[k] for k in active], prior)

    def _embeddings(self, active: list[int], rows: list[list[int]]):
        """The prompt embeddings of each configuration's rows, in slice order (text encoder packed too)."""
        import torch

        live = [k for k in active if self.settings[k].trains_text_encoder]
        by_config = {}
        if live:
            self.text_routing.active = live
            ids = [rows[active.index(k)] for k in live]
            out = self.live_prompts.embeddings([r for part in ids for r in part])
            by_config |= dict(zip(live, out.split([len(p) for p in ids]), strict=True))
        for k, part in zip(active, rows, strict=True):
            if k not in by_config:
                by_config[k] = self.frozen_prompts.embeddings(part)
        return torch.cat([by_config[k] for k in active])

    # ---- save --------------------------------------------------------------------------------------------
    def adapter_weights(self, k: int, meta: dict) -> AdapterWeights:
        """Configuration ``k``'s adapter as the writers take it: its rank's rows and columns, peft naming."""
        s = self.settings[k]
        unet_config, text_config = adapter_configs(s)
        unet_names, text_names = self.layer_names
        return AdapterWeights(
            unet=_unpadded(unet_names, self.unet_params[k], s.rank),
            unet_config=unet_config.to_dict(),
            training_metadata=meta,
            text_encoder=_unpadded(text_names, self.text_params[k], s.rank) if text_config else None,
            text_encoder_config=text_config.to_dict() if text_config else None,
        )

    def save_final(self, k: int, clock: StepClock) -> TrainResult:
        """Write configuration ``k``'s final files, as ``LoraTrainer.save_final`` lays them out."""
        s, out, ema = self.settings[k], self.output_dirs[k], self.emas[k]
        out.mkdir(parents=True, exist_ok=True)
        write_trained_adapters(
            out,
            s.adapter_kind,
            True,
            lambda meta: self.adapter_weights(k, meta),
            training_metadata(s, self.metadata, self.steps[k]),
            contextlib.nullcontext,
            functools.partial(ema_weights, self.params[k], ema) if ema is not None else None,
        )
        return finish_folder(
            out, s, self.identity, self.logs[k], ema=ema is not None, **clock.timing(self.steps[k])
        )

    # ---- cleanup -----------------------------------------------------------------------------------------
    def cleanup(self) -> None:
        """Put the base layers back and leave the borrowed pipeline frozen, in eval mode."""
        for parent, child, base in reversed(getattr(self, "_replaced", [])):
            setattr(parent, child, base)
        self._replaced = []
        for model in (self.pipe.unet, self.pipe.vae, self.pipe.text_encoder):
            model.requires_grad_(False)
            model.eval()


def _scheduled_rates(schedule, done: int) -> list[float]:
    """Each group's learning rate for the step after ``done`` steps: what ``schedule.step()`` would set."""
    return [base * rate(done) for base, rate in zip(schedule.base_lrs, schedule.lr_lambdas, strict=True)]


def _lora_weights(model) -> dict:
    """``{layer name: (A, B)}`` of the training adapter peft attached to ``model``."""
    from peft.tuners.lora import LoraLayer

    return {
        name: (m.lora_A[ADAPTER_NAME].weight.detach().clone(), m.lora_B[ADAPTER_NAME].weight.detach().clone())
        for name, m in model.named_modules()
        if isinstance(m, LoraLayer) and ADAPTER_NAME in m.lora_A
    }


def _unpadded(names: list[str], params: list, rank: int) -> dict:
    """Peft-named tensors (``<layer>.lora_A.weight``) of one configuration, cut to its rank."""
    out = {}
    for name, a, b in zip(names, params[0::2], params[1::2], strict=True):
        out[f"{name}.lora_A.weight"] = a.detach()[:rank].clone()
        out[f"{name}.lora_B.weight"] = b.detach()[:, :rank].clone()
    return out


def train_pack(pipe, images, settings, output_dirs, **kwargs) -> list[TrainResult]:
    """Set up, train and clean up a ``PackTrainer``; returns each configuration's result."""
    trainer = PackTrainer(pipe, images, settings, output_dirs, **kwargs)
    try:
        trainer.setup()
        return trainer.train()
    finally:
        trainer.cleanup()
