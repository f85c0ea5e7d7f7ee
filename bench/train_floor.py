"""The compute floor of one LoRA training step, in a process of its own.

Only what a step cannot do without: the UNet forward and backward on pre-made tensors (latents, noise,
timesteps, and prompt embeddings or, when the text encoder trains, token ids through its forward and
backward), gradient clipping and the AdamW step. The LoRA layers and the optimizer are made by the trainer's
own pieces (``lora_core.training.recipe.adapter_configs`` and ``parameter_groups``,
``lora_core.optimizers.make_optimizer``), so the only difference left is a trainer's overhead.

Besides torch, diffusers, transformers and peft it imports only those pure-Python pieces of ``lora_core``
(from this checkout), so the reference environment can run it too (then it measures what that
environment's torch costs for the same work). Usage::

    python -m bench.train_floor --model DIR --settings '{"rank": 4, ...}' --steps 60 --warmup 5 --out clock.json
"""

from __future__ import annotations

import argparse
import json
import sys

from bench.step_clock import StepClock

# The timestep of every floor step: any fixed value costs the same.
_TIMESTEP = 500


def load_models(model_dir: str, settings: dict, device: str, half: bool = False):
    """Load the UNet (and the text encoder when it trains) and attach the LoRA layers.

    Args:
        model_dir: A diffusers Stable Diffusion folder.
        settings: ``TrainSettings.to_dict()`` of the training being compared.
        device: Torch device.
        half: Base weights in float16 and LoRA weights in float32 (as ``lora_core`` trains in fp16 mixed
            precision); else everything in float32.

    Returns:
        ``(unet, text_encoder)``; ``text_encoder`` is None when it is frozen.
    """
    import torch
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    from lora_core.settings import TrainSettings
    from lora_core.training.recipe import adapter_configs

    unet_config, text_config = adapter_configs(TrainSettings.from_dict(settings))
    torch.manual_seed(settings["seed"])
    dtype = torch.float16 if half else torch.float32
    unet = UNet2DConditionModel.from_pretrained(model_dir, subfolder="unet", torch_dtype=dtype).to(device)
    unet.requires_grad_(False)
    unet.add_adapter(unet_config)
    unet.train()
    text_encoder = None
    if text_config is not None:
        text_encoder = CLIPTextModel.from_pretrained(model_dir, subfolder="text_encoder", dtype=dtype).to(
            device
        )
        text_encoder.requires_grad_(False)
        text_encoder.add_adapter(text_config)
        text_encoder.train()
    for model in (unet, text_encoder):
        for param in model.parameters() if model is not None else []:
            if param.requires_grad:
                param.data = param.data.float()
    if settings.get("gradient_checkpointing"):
        unet.enable_gradient_checkpointing()
    return unet, text_encoder


def make_optimizer(unet, text_encoder, settings: dict):
    """The optimizer as the trainer builds it (``parameter_groups`` and ``lora_core.optimizers.make_optimizer``).

    Args:
        unet: The UNet with LoRA layers.
        text_encoder: The text encoder with LoRA layers, or None.
        settings: ``TrainSettings.to_dict()``.

    Returns:
        ``(optimizer, trainable parameters)``.
    """
    from lora_core.optimizers import make_optimizer as trainer_optimizer
    from lora_core.settings import TrainSettings
    from lora_core.training.recipe import parameter_groups

    s = TrainSettings.from_dict(settings)
    from types import SimpleNamespace

    groups = parameter_groups(SimpleNamespace(unet=unet, text_encoder=text_encoder), s)
    device_type = next(unet.parameters()).device.type
    return trainer_optimizer(groups, s, device_type), [p for group in groups for p in group["params"]]


def vae_scale_factor(model_dir: str) -> int:
    """How many pixels one latent stands for along a side: 8 in SD 1.x, 2 in the tiny model."""
    from diffusers import AutoencoderKL

    return 2 ** (len(AutoencoderKL.load_config(model_dir, subfolder="vae")["block_out_channels"]) - 1)


def make_step(model_dir: str, settings: dict, device: str, half: bool = False):
    """Build the models, pre-made inputs and optimizer, and return a function that runs one step.

    Args:
        model_dir: A diffusers Stable Diffusion folder.
        settings: ``TrainSettings.to_dict()``.
        device: Torch device.
        half: fp16 mixed precision: float16 base weights, float32 LoRA weights, autocast and a gradient
            scaler (what Accelerate's ``mixed_precision="fp16"`` does for ``lora_core``).

    Returns:
        A no-argument function doing forward, backward, clipping and the optimizer step.
    """
    import torch
    import torch.nn.functional as F
    from transformers import CLIPTextConfig

    unet, text_encoder = load_models(model_dir, settings, device, half)
    optimizer, params = make_optimizer(unet, text_encoder, settings)
    side = settings["resolution"] // vae_scale_factor(model_dir)
    batch = settings["train_batch_size"]
    noisy = torch.randn(batch, unet.config.in_channels, side, side, device=device)
    target = torch.randn_like(noisy)
    timesteps = torch.full((batch,), _TIMESTEP, device=device)
    text_config = CLIPTextConfig.from_pretrained(model_dir, subfolder="text_encoder")
    token_ids = torch.randint(0, text_config.vocab_size, (batch, 77), device=device)
    embeds = torch.randn(batch, 77, unet.config.cross_attention_dim, device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    scaler = torch.amp.GradScaler("cuda", enabled=half)

    def step() -> None:
        with torch.autocast(device.split(":")[0], dtype=torch.float16, enabled=half):
            hidden = text_encoder(token_ids)[0] if text_encoder is not None else embeds
            pred = unet(noisy.to(unet.dtype), timesteps, hidden.to(unet.dtype)).sample
            loss = F.mse_loss(pred.float(), target.float())
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        if settings["max_grad_norm"] > 0:
            torch.nn.utils.clip_grad_norm_(params, settings["max_grad_norm"])
        sync()  # so the clock after the optimizer step sees the work done, not just queued
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    return step


def main(argv: list[str] | None = None) -> int:
    """Run ``--warmup`` + ``--steps`` floor steps and write their step clock.

    Args:
        argv: Command-line arguments (see the module docstring).

    Returns:
        0.
    """
    parser = argparse.ArgumentParser(prog="python -m bench.train_floor", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="diffusers Stable Diffusion folder")
    parser.add_argument("--settings", required=True, help="TrainSettings.to_dict() as JSON")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=60, help="timed steps")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--out", required=True, help="JSON file for the step clock")
    args = parser.parse_args(argv)
    clock = StepClock()
    step = make_step(args.model, json.loads(args.settings), args.device)
    for _ in range(args.warmup + args.steps):
        step()
    clock.write(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
