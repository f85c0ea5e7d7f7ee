"""The tiny stand-in model (``model.path=tiny``): a tiny SD-1.x-shaped pipeline built offline from config.

It has the real architecture classes (UNet2DConditionModel, AutoencoderKL, CLIPTextModel, CLIPTokenizer)
at a few MB, random weights drawn from a seed, and a byte-level CLIP tokenizer, so every code path that a
real Stable Diffusion 1.5 takes runs here without a download. It is saved once to a cache folder and then
loaded through the same ``from_pretrained`` path as a real model.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from lora_core.atomic import atomic_dir
from lora_core.cache import default_cache_dir

# Bump when the saved layout changes, so old caches are rebuilt rather than misread.
_FORMAT_VERSION = 2


@dataclass(frozen=True)
class TinyModelSpec:
    """Sizes of the tiny pipeline. The defaults match diffusers' own tiny test pipelines.

    Attributes:
        seed: Seed of the random weights; the same seed gives the same weights, bit for bit.
        unet_channels: UNet block widths (one down/up block per entry, cross-attention on all but the first).
        layers_per_block: ResNet layers per UNet block.
        attention_head_dim: UNet attention head size.
        cross_attention_dim: Width of the text embeddings the UNet attends to (= text hidden size).
        text_layers: CLIP text encoder layers.
        text_heads: CLIP text encoder attention heads.
        text_intermediate: CLIP text encoder MLP width.
        vae_channels: VAE block widths; the VAE downsamples by 2 ** (len - 1).
        vae_layers_per_block: ResNet layers per VAE block.
        resolution: Default image size in pixels.
        sd_layout: Use Stable Diffusion's block order (cross-attention in every block but the deepest)
            instead of diffusers' tiny-test order (cross-attention in every block but the first).
        vocab_size: Text-embedding rows; None for exactly the byte-level vocabulary (514). Only the first
            514 rows are ever used by the byte-level tokenizer; more rows give a real-size embedding table.
    """

    seed: int = 0
    unet_channels: tuple[int, ...] = (32, 64)
    layers_per_block: int = 2
    attention_head_dim: int = 8
    cross_attention_dim: int = 32
    text_layers: int = 5
    text_heads: int = 4
    text_intermediate: int = 37
    vae_channels: tuple[int, ...] = (32, 64)
    vae_layers_per_block: int = 1
    resolution: int = 64
    sd_layout: bool = False
    vocab_size: int | None = None

    def fingerprint(self) -> str:
        """Short hash of the spec and the saved-layout version; names the cache folder."""
        payload = json.dumps({**asdict(self), "format": _FORMAT_VERSION}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]


def sd15_shaped_spec(seed: int = 0) -> TinyModelSpec:
    """The real Stable Diffusion 1.5 architecture with random weights.

    UNet 860M, VAE 84M and CLIP ViT-L/14 text encoder 123M parameters: for measuring speed and memory at
    real size without downloading anything.

    Args:
        seed: Seed of the random weights.

    Returns:
        A spec that builds an SD-1.5-shaped pipeline (512 px).
    """
    return TinyModelSpec(
        seed=seed,
        unet_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
        attention_head_dim=8,
        cross_attention_dim=768,
        text_layers=12,
        text_heads=12,
        text_intermediate=3072,
        vae_channels=(128, 256, 512, 512),
        vae_layers_per_block=2,
        resolution=512,
        sd_layout=True,
        vocab_size=49408,
    )


def byte_level_vocab() -> dict[str, int]:
    """A CLIP vocabulary with one token per byte (and per byte at a word end) and no merges.

    The byte-to-character table is GPT-2's reversible byte encoding, which CLIP's BPE shares: printable
    bytes map to themselves, the rest to code points from 256 up, so every string encodes.

    Returns:
        Token to id: 256 characters, the same 256 with ``</w>``, then ``<|startoftext|>`` and
        ``<|endoftext|>``.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    extra = iter(range(256, 512))
    chars = [chr(b) if b in printable else chr(next(extra)) for b in range(256)]
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    return {token: i for i, token in enumerate(tokens)}


def sd15_scheduler():
    """The scheduler SD 1.5 ships with (PNDM), config and all, so renders go through the same code.

    Its config says ``clip_sample: false`` as SD 1.5's does, although PNDM ignores it: a DDIM or DDPM
    scheduler made ``from_config`` inherits it, and their default (clip x0 to [-1, 1]) applied to latents
    wrecks sampling — washed-out averages that follow no prompt.
    """
    from diffusers import PNDMScheduler

    scheduler = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        set_alpha_to_one=False,
        skip_prk_steps=True,
        steps_offset=1,
    )
    scheduler.register_to_config(clip_sample=False)
    return scheduler


def build_tiny_pipeline(spec: TinyModelSpec):
    """Build the tiny pipeline in memory, weights drawn from ``spec.seed``.

    Args:
        spec: Sizes and seed.

    Returns:
        A ``StableDiffusionPipeline`` (no safety checker) on the CPU in float32.
    """
    import torch
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    vocab = byte_level_vocab()
    n_attn = len(spec.unet_channels) - 1
    if spec.sd_layout:
        down = ("CrossAttnDownBlock2D",) * n_attn + ("DownBlock2D",)
        up = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * n_attn
    else:
        down = ("DownBlock2D",) + ("CrossAttnDownBlock2D",) * n_attn
        up = ("CrossAttnUpBlock2D",) * n_attn + ("UpBlock2D",)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        unet = UNet2DConditionModel(
            sample_size=spec.resolution // 2 ** (len(spec.vae_channels) - 1),
            in_channels=4,
            out_channels=4,
            block_out_channels=spec.unet_channels,
            layers_per_block=spec.layers_per_block,
            down_block_types=down,
            up_block_types=up,
            cross_attention_dim=spec.cross_attention_dim,
            attention_head_dim=spec.attention_head_dim,
            norm_num_groups=min(32, min(spec.unet_channels)),
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            block_out_channels=spec.vae_channels,
            down_block_types=("DownEncoderBlock2D",) * len(spec.vae_channels),
            up_block_types=("UpDecoderBlock2D",) * len(spec.vae_channels),
            latent_channels=4,
            layers_per_block=spec.vae_layers_per_block,
            norm_num_groups=min(32, min(spec.vae_channels)),
            sample_size=spec.resolution,
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=spec.vocab_size or len(vocab),
                hidden_size=spec.cross_attention_dim,
                intermediate_size=spec.text_intermediate,
                num_hidden_layers=spec.text_layers,
                num_attention_heads=spec.text_heads,
                max_position_embeddings=77,
                bos_token_id=vocab["<|startoftext|>"],
                eos_token_id=vocab["<|endoftext|>"],
                pad_token_id=vocab["<|endoftext|>"],
                layer_norm_eps=1e-5,
            )
        )
    # model_max_length=77: without it the pipeline pads prompts to ~1e30 tokens.
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)
    scheduler = sd15_scheduler()
    return StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def ensure_tiny_model(spec: TinyModelSpec | None = None, cache_dir: str | os.PathLike | None = None) -> Path:
    """Return the folder of the tiny pipeline, building and saving it on first use.

    The folder is a regular diffusers pipeline folder, loaded with ``from_pretrained`` like any other.
    Concurrent callers are safe: each builds into a private temporary folder and the first to finish
    moves it into place.

    Args:
        spec: Sizes and seed; the defaults when None.
        cache_dir: Where built models live; ``default_cache_dir()`` when None.

    Returns:
        The pipeline folder.
    """
    spec = spec or TinyModelSpec()
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = root / f"tiny-sd-{spec.fingerprint()}"
    if (target / "model_index.json").is_file():
        return target
    pipe = build_tiny_pipeline(spec)
    # replace=False: a concurrent builder that finished first wrote the same weights (same spec and seed).
    with atomic_dir(target, replace=False) as tmp:
        pipe.save_pretrained(tmp)
        (tmp / "tiny_spec.json").write_text(json.dumps(asdict(spec), indent=2))
    return target
