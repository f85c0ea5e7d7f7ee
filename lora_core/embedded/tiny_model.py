"""The tiny stand-in models (``model.path=tiny``, ``tiny-sdxl``, ``tiny-sd2``): pipelines built from config.

They have the real architecture classes (UNet2DConditionModel, AutoencoderKL, CLIPTextModel, CLIPTokenizer,
and for SDXL CLIPTextModelWithProjection) at a few MB, random weights drawn from a seed, and a byte-level CLIP
tokenizer, so every code path that a real Stable Diffusion 1.5, SDXL or SD 2.x model takes runs here without
a download. Each is saved once to a cache folder and then loaded through the same ``from_pretrained`` path
as a real model. ``sd15_shaped_spec``, ``sdxl_shaped_spec`` and ``sd21_shaped_spec`` give the real
architectures, with random weights, for measuring speed and memory at real size.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

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

    # The cache folder's family name (tiny-sd-<fingerprint>); a class constant, so not in the fingerprint.
    family: ClassVar[str] = "sd"

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


@dataclass(frozen=True)
class TinySDXLSpec:
    """Sizes of the tiny SDXL-shaped pipeline: two text encoders; a UNet also fed pooled text and sizes.

    The defaults match diffusers' own tiny SDXL test pipeline. The UNet attends to both text encoders'
    hidden states side by side (``cross_attention_dim = text_hidden + text2_hidden``) and adds an embedding
    of the second encoder's projected pooled output and of six size numbers (original size, crop corner,
    target size), each embedded at ``addition_time_embed_dim`` (SDXL's ``text_time`` embedding).

    Attributes:
        seed: Seed of the random weights; the same seed gives the same weights, bit for bit.
        unet_channels: UNet block widths (one down/up block per entry, cross-attention on all but the first,
            as in SDXL).
        layers_per_block: ResNet layers per UNet block.
        attention_head_dim: UNet attention per block, as SDXL's config gives it; diffusers reads it as the
            number of heads (SDXL: 5, 10, 20 heads of 64).
        transformer_layers_per_block: Transformer layers in each block's attention (SDXL: 1, 2, 10).
        addition_time_embed_dim: Width of each of the six size numbers' embedding.
        text_hidden: Width of the first text encoder (CLIPTextModel; SDXL: CLIP ViT-L, 768).
        text_layers: Layers of the first text encoder.
        text_heads: Attention heads of the first text encoder.
        text_intermediate: MLP width of the first text encoder.
        text2_hidden: Width of the second text encoder (CLIPTextModelWithProjection; SDXL: OpenCLIP bigG,
            1280).
        text2_layers: Layers of the second text encoder.
        text2_heads: Attention heads of the second text encoder.
        text2_intermediate: MLP width of the second text encoder.
        projection_dim: Width of the second text encoder's projected pooled output.
        vae_channels: VAE block widths; the VAE downsamples by 2 ** (len - 1).
        vae_layers_per_block: ResNet layers per VAE block.
        resolution: Default image size in pixels.
        vocab_size: Text-embedding rows of both encoders; None for exactly the byte-level vocabulary (514).
    """

    seed: int = 0
    unet_channels: tuple[int, ...] = (32, 64)
    layers_per_block: int = 2
    attention_head_dim: tuple[int, ...] = (2, 4)
    transformer_layers_per_block: tuple[int, ...] = (1, 2)
    addition_time_embed_dim: int = 8
    text_hidden: int = 32
    text_layers: int = 5
    text_heads: int = 4
    text_intermediate: int = 37
    text2_hidden: int = 32
    text2_layers: int = 5
    text2_heads: int = 4
    text2_intermediate: int = 37
    projection_dim: int = 32
    vae_channels: tuple[int, ...] = (32, 64)
    vae_layers_per_block: int = 1
    resolution: int = 64
    vocab_size: int | None = None

    family: ClassVar[str] = "sdxl"

    @property
    def cross_attention_dim(self) -> int:
        """Width of the text embeddings the UNet attends to: both encoders' hidden states concatenated."""
        return self.text_hidden + self.text2_hidden

    @property
    def projection_class_embeddings_input_dim(self) -> int:
        """Input width of the UNet's added embedding: six embedded size numbers and the pooled text."""
        return self.addition_time_embed_dim * 6 + self.projection_dim

    def fingerprint(self) -> str:
        """Short hash of the spec, its family and the saved-layout version; names the cache folder."""
        return _fingerprint(self)


def sdxl_shaped_spec(seed: int = 0) -> TinySDXLSpec:
    """The real SDXL base 1.0 architecture with random weights.

    UNet 2.57B, VAE 84M, CLIP ViT-L/14 (123M) and OpenCLIP ViT-bigG/14 (695M) text encoders: about 10 GB
    in float32. For measuring speed and memory at real size without downloading anything.

    Args:
        seed: Seed of the random weights.

    Returns:
        A spec that builds an SDXL-shaped pipeline (1024 px).
    """
    return TinySDXLSpec(
        seed=seed,
        unet_channels=(320, 640, 1280),
        layers_per_block=2,
        attention_head_dim=(5, 10, 20),
        transformer_layers_per_block=(1, 2, 10),
        addition_time_embed_dim=256,
        text_hidden=768,
        text_layers=12,
        text_heads=12,
        text_intermediate=3072,
        text2_hidden=1280,
        text2_layers=32,
        text2_heads=20,
        text2_intermediate=5120,
        projection_dim=1280,
        vae_channels=(128, 256, 512, 512),
        vae_layers_per_block=2,
        resolution=1024,
        vocab_size=49408,
    )


@dataclass(frozen=True)
class TinySD2Spec(TinyModelSpec):
    """Sizes of the tiny SD-2.x-shaped pipeline: the SD 1.x one (``TinyModelSpec``) with SD 2's differences.

    Linear projections in the UNet's transformers, attention heads per block, an OpenCLIP-style text encoder
    (``gelu`` instead of ``quick_gelu``, a tokenizer that pads with ``!``), and a v-prediction scheduler.

    Attributes (besides ``TinyModelSpec``'s):
        attention_head_dim: UNet attention per block, as SD 2's config gives it; diffusers reads it as the
            number of heads (SD 2: 5, 10, 20, 20 heads of 64).
        upcast_attention: Compute attention scores in float32 (SD 2.1's UNet asks for it; a no-op in float32).
    """

    attention_head_dim: tuple[int, ...] = (2, 4)
    upcast_attention: bool = True

    family: ClassVar[str] = "sd2"

    def fingerprint(self) -> str:
        """Short hash of the spec, its family and the saved-layout version; names the cache folder."""
        return _fingerprint(self)


def sd21_shaped_spec(seed: int = 0) -> TinySD2Spec:
    """The real Stable Diffusion 2.1 architecture with random weights.

    UNet 866M, VAE 84M and OpenCLIP ViT-H/14 text encoder 340M parameters: for measuring speed and memory at
    real size without downloading anything.

    Args:
        seed: Seed of the random weights.

    Returns:
        A spec that builds an SD-2.1-shaped pipeline (768 px).
    """
    return TinySD2Spec(
        seed=seed,
        unet_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
        attention_head_dim=(5, 10, 20, 20),
        cross_attention_dim=1024,
        text_layers=23,
        text_heads=16,
        text_intermediate=4096,
        vae_channels=(128, 256, 512, 512),
        vae_layers_per_block=2,
        resolution=768,
        sd_layout=True,
        upcast_attention=True,
        vocab_size=49408,
    )


# Any of the tiny pipelines' specs; build_tiny_pipeline and ensure_tiny_model take each.
TinySpec = TinyModelSpec | TinySDXLSpec | TinySD2Spec


def _fingerprint(spec: TinySDXLSpec | TinySD2Spec) -> str:
    """Short hash of a spec's fields, its family and the saved-layout version."""
    payload = json.dumps({**asdict(spec), "family": spec.family, "format": _FORMAT_VERSION}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


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


def sdxl_scheduler():
    """The scheduler SDXL base 1.0 ships with (Euler, ``leading`` spacing, epsilon), config and all.

    Like ``sd15_scheduler``, its config also carries SDXL's ``clip_sample: false`` and
    ``set_alpha_to_one: false``, which Euler ignores but a DDIM or DDPM scheduler made ``from_config`` reads.
    """
    import torch
    from diffusers import EulerDiscreteScheduler

    # On the CPU also under a torch.device('meta') context (counting parameters): it computes its tables.
    with torch.device("cpu"):
        scheduler = EulerDiscreteScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            num_train_timesteps=1000,
            prediction_type="epsilon",
            steps_offset=1,
            timestep_spacing="leading",
            interpolation_type="linear",
            use_karras_sigmas=False,
        )
    scheduler.register_to_config(clip_sample=False, set_alpha_to_one=False, skip_prk_steps=True)
    return scheduler


def sd21_scheduler():
    """The scheduler SD 2.1 ships with (DDIM, v-prediction), config and all."""
    import torch
    from diffusers import DDIMScheduler

    # On the CPU also under a torch.device('meta') context (counting parameters): it computes its tables.
    with torch.device("cpu"):
        scheduler = DDIMScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            num_train_timesteps=1000,
            clip_sample=False,
            set_alpha_to_one=False,
            steps_offset=1,
            prediction_type="v_prediction",
        )
    scheduler.register_to_config(skip_prk_steps=True)
    return scheduler


def build_tiny_pipeline(spec: TinySpec):
    """Build the tiny pipeline in memory, weights drawn from ``spec.seed``.

    Args:
        spec: Sizes and seed; its class picks the family.

    Returns:
        On the CPU in float32: a ``StableDiffusionPipeline`` (no safety checker) for a ``TinyModelSpec`` or a
        ``TinySD2Spec``, a ``StableDiffusionXLPipeline`` (no watermarker) for a ``TinySDXLSpec``.
    """
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        if isinstance(spec, TinySDXLSpec):
            return _build_sdxl(spec)
        if isinstance(spec, TinySD2Spec):
            return _build_sd2(spec)
        return _build_sd(spec)


def _block_types(count: int, attention_first: bool) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """UNet down and up block types: cross-attention in all blocks but the deepest, or all but the first."""
    n_attn = count - 1
    if attention_first:
        down = ("CrossAttnDownBlock2D",) * n_attn + ("DownBlock2D",)
        up = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * n_attn
    else:
        down = ("DownBlock2D",) + ("CrossAttnDownBlock2D",) * n_attn
        up = ("CrossAttnUpBlock2D",) * n_attn + ("UpBlock2D",)
    return down, up


def _vae(spec: TinySpec, **extra):
    """The VAE of ``spec`` (``extra``: further AutoencoderKL arguments, e.g. SDXL's scaling factor)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=spec.vae_channels,
        down_block_types=("DownEncoderBlock2D",) * len(spec.vae_channels),
        up_block_types=("UpDecoderBlock2D",) * len(spec.vae_channels),
        latent_channels=4,
        layers_per_block=spec.vae_layers_per_block,
        norm_num_groups=min(32, min(spec.vae_channels)),
        sample_size=spec.resolution,
        **extra,
    )


def _text_config(vocab_size: int | None, hidden: int, intermediate: int, layers: int, heads: int, **extra):
    """A CLIP text encoder config over the byte-level vocabulary (``extra``: more CLIPTextConfig fields)."""
    from transformers import CLIPTextConfig

    vocab = byte_level_vocab()
    extra.setdefault("pad_token_id", vocab["<|endoftext|>"])
    return CLIPTextConfig(
        vocab_size=vocab_size or len(vocab),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=77,
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"],
        layer_norm_eps=1e-5,
        **extra,
    )


def _tokenizer(pad_token: str | None = None):
    """The byte-level CLIP tokenizer; it pads with ``<|endoftext|>``, or with ``pad_token`` when given."""
    from transformers import CLIPTokenizer

    extra = {"pad_token": pad_token} if pad_token else {}
    # model_max_length=77: without it the pipeline pads prompts to ~1e30 tokens.
    return CLIPTokenizer(vocab=byte_level_vocab(), merges=[], model_max_length=77, **extra)


def _sd_unet(spec: TinyModelSpec | TinySD2Spec, **extra):
    """The UNet of an SD 1.x or 2.x spec (``extra``: further UNet2DConditionModel arguments)."""
    from diffusers import UNet2DConditionModel

    down, up = _block_types(len(spec.unet_channels), attention_first=spec.sd_layout)
    return UNet2DConditionModel(
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
        **extra,
    )


def _build_sd(spec: TinyModelSpec):
    """The SD 1.x pipeline; weights drawn in a fixed order (UNet, VAE, text encoder) from the current seed."""
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTextModel

    unet = _sd_unet(spec)
    vae = _vae(spec)
    text_encoder = CLIPTextModel(
        _text_config(
            spec.vocab_size,
            spec.cross_attention_dim,
            spec.text_intermediate,
            spec.text_layers,
            spec.text_heads,
        )
    )
    return StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=_tokenizer(),
        scheduler=sd15_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _build_sd2(spec: TinySD2Spec):
    """The SD 2.x pipeline; weights drawn in a fixed order (UNet, VAE, text encoder) from the current seed."""
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTextModel

    unet = _sd_unet(spec, use_linear_projection=True, upcast_attention=spec.upcast_attention)
    vae = _vae(spec)
    # OpenCLIP's text encoder: gelu, and SD 2's tokenizer pads with "!".
    text_encoder = CLIPTextModel(
        _text_config(
            spec.vocab_size,
            spec.cross_attention_dim,
            spec.text_intermediate,
            spec.text_layers,
            spec.text_heads,
            hidden_act="gelu",
            pad_token_id=byte_level_vocab()["!"],
        )
    )
    return StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=_tokenizer(pad_token="!"),
        scheduler=sd21_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _build_sdxl(spec: TinySDXLSpec):
    """The SDXL pipeline; weights drawn in a fixed order (UNet, VAE, text encoders) from the current seed."""
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    down, up = _block_types(len(spec.unet_channels), attention_first=False)
    unet = UNet2DConditionModel(
        sample_size=spec.resolution // 2 ** (len(spec.vae_channels) - 1),
        in_channels=4,
        out_channels=4,
        block_out_channels=spec.unet_channels,
        layers_per_block=spec.layers_per_block,
        down_block_types=down,
        up_block_types=up,
        attention_head_dim=spec.attention_head_dim,
        transformer_layers_per_block=spec.transformer_layers_per_block,
        use_linear_projection=True,
        cross_attention_dim=spec.cross_attention_dim,
        addition_embed_type="text_time",
        addition_time_embed_dim=spec.addition_time_embed_dim,
        projection_class_embeddings_input_dim=spec.projection_class_embeddings_input_dim,
        norm_num_groups=min(32, min(spec.unet_channels)),
    )
    # SDXL's VAE: its own latent scale, and float16 too unstable to decode in (force_upcast).
    vae = _vae(spec, scaling_factor=0.13025, force_upcast=True)
    # CLIP ViT-L-like (quick_gelu), then OpenCLIP bigG-like (gelu, projected pooled output; pads with "!").
    text_encoder = CLIPTextModel(
        _text_config(
            spec.vocab_size,
            spec.text_hidden,
            spec.text_intermediate,
            spec.text_layers,
            spec.text_heads,
            projection_dim=spec.text_hidden,
        )
    )
    text_encoder_2 = CLIPTextModelWithProjection(
        _text_config(
            spec.vocab_size,
            spec.text2_hidden,
            spec.text2_intermediate,
            spec.text2_layers,
            spec.text2_heads,
            hidden_act="gelu",
            projection_dim=spec.projection_dim,
            pad_token_id=byte_level_vocab()["!"],
        )
    )
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=_tokenizer(),
        tokenizer_2=_tokenizer(pad_token="!"),
        unet=unet,
        scheduler=sdxl_scheduler(),
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )


def ensure_tiny_model(spec: TinySpec | None = None, cache_dir: str | os.PathLike | None = None) -> Path:
    """Return the folder of the tiny pipeline, building and saving it on first use.

    The folder is a regular diffusers pipeline folder, loaded with ``from_pretrained`` like any other, and
    named ``tiny-<family>-<fingerprint>``: ``tiny-sd-``, ``tiny-sdxl-`` or ``tiny-sd2-``. Concurrent callers
    are safe: each builds into a private temporary folder and the first to finish moves it into place.

    Args:
        spec: Sizes and seed (its class picks the family); the SD 1.x defaults when None.
        cache_dir: Where built models live; ``default_cache_dir()`` when None.

    Returns:
        The pipeline folder.
    """
    spec = spec or TinyModelSpec()
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = root / f"tiny-{spec.family}-{spec.fingerprint()}"
    if (target / "model_index.json").is_file():
        return target
    pipe = build_tiny_pipeline(spec)
    # replace=False: a concurrent builder that finished first wrote the same weights (same spec and seed).
    with atomic_dir(target, replace=False) as tmp:
        pipe.save_pretrained(tmp)
        (tmp / "tiny_spec.json").write_text(json.dumps(asdict(spec), indent=2))
    return target
