"""Random evaluation models built offline from config: tiny ones, and the paper's architectures at real size.

The same role as ``tiny_model`` for the metrics: ``eval.dino_model=tiny`` / ``eval.clip_model=tiny`` run
the whole evaluation path (``from_pretrained``, processors, batching, arithmetic) with no download.
``eval.dino_model=real-shape`` / ``eval.clip_model=real-shape`` are DINO ViT-S/16 and CLIP ViT-B/32 as
their hub configurations define them (depth, width, heads, patch size, 224 px input, the hub's legacy
processor files), with random weights: the real metrics' code path at real size, memory and speed, on
a machine that cannot download. Their scores measure nothing about pictures. ``sweeper.config.embedded_models``
turns these names (and ``world``) into folders.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from lora_core.atomic import atomic_dir
from lora_core.cache import default_cache_dir
from lora_core.embedded.tiny_model import byte_level_vocab

REAL_SIZE = 224
_VERSION = 1
IMAGE_SIZE = 32
# The preprocessing of the real models (facebook/dino-vits16, openai/clip-vit-base-patch32), at 32 px.
_IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
_CLIP = ([0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711])


def _text_config(vocab: dict, rows: int, hidden: int, intermediate: int, layers: int, heads: int) -> dict:
    """A CLIP text tower's config for the byte-level tokenizer (``rows`` embedding rows, 77 positions)."""
    return {
        "vocab_size": rows,
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "max_position_embeddings": 77,
        "bos_token_id": vocab["<|startoftext|>"],
        "eos_token_id": vocab["<|endoftext|>"],
        "pad_token_id": vocab["<|endoftext|>"],
    }


def _seeded(seed: int, build):
    """``build()`` under ``torch.manual_seed(seed)``, leaving the caller's random state as it was."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def ensure_tiny_dino(cache_dir: str | os.PathLike | None = None, seed: int = 0) -> Path:
    """Folder of a tiny ViT with a ViT image processor, built on first use."""
    import torch
    from transformers import ViTConfig, ViTImageProcessorPil, ViTModel

    target = Path(cache_dir or default_cache_dir()) / f"tiny-dino-v{_VERSION}-s{seed}"
    if (target / "config.json").is_file():
        return target
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ViTModel(
            ViTConfig(
                image_size=IMAGE_SIZE,
                patch_size=16,
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=37,
            ),
            add_pooling_layer=False,
        )
    processor = ViTImageProcessorPil(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, image_mean=_IMAGENET[0], image_std=_IMAGENET[1]
    )
    with atomic_dir(target, replace=False) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
    return target


def ensure_tiny_clip(cache_dir: str | os.PathLike | None = None, seed: int = 0) -> Path:
    """Folder of a tiny CLIP (byte-level tokenizer, CLIP image processor), built on first use."""
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPTokenizer

    target = Path(cache_dir or default_cache_dir()) / f"tiny-clip-v{_VERSION}-s{seed}"
    if (target / "config.json").is_file():
        return target
    vocab = byte_level_vocab()
    text = _text_config(vocab, len(vocab), hidden=32, intermediate=37, layers=2, heads=2)
    vision = {
        "image_size": IMAGE_SIZE,
        "patch_size": 16,
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
    }
    model = _seeded(
        seed, lambda: CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
    )
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)
    processor = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE},
        image_mean=_CLIP[0],
        image_std=_CLIP[1],
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
    )
    with atomic_dir(target, replace=False) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        processor.save_pretrained(tmp)
    return target


def ensure_real_shape_dino(cache_dir: str | os.PathLike | None = None, seed: int = 0) -> Path:
    """Folder of a randomly initialised DINO ViT-S/16 (``facebook/dino-vits16``'s configuration and files).

    22 M parameters, 224 px input, 384-wide CLS embedding; the processor file is the hub's own format
    (``ViTFeatureExtractor``, squash to 224 x 224, ImageNet statistics).
    """
    import torch
    from transformers import ViTConfig, ViTModel

    target = Path(cache_dir or default_cache_dir()) / f"real-shape-dino-vits16-v{_VERSION}-s{seed}"
    if (target / "config.json").is_file():
        return target
    config = ViTConfig(
        image_size=REAL_SIZE,
        patch_size=16,
        hidden_size=384,
        num_hidden_layers=12,
        num_attention_heads=6,
        intermediate_size=1536,
        qkv_bias=True,
        layer_norm_eps=1e-6,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ViTModel(config, add_pooling_layer=False)
    processor = {
        "feature_extractor_type": "ViTFeatureExtractor",
        "do_resize": True,
        "size": REAL_SIZE,
        "resample": 2,
        "do_normalize": True,
        "image_mean": _IMAGENET[0],
        "image_std": _IMAGENET[1],
    }
    with atomic_dir(target, replace=False) as tmp:
        model.save_pretrained(tmp)
        (tmp / "preprocessor_config.json").write_text(json.dumps(processor, indent=2))
    return target


def ensure_real_shape_clip(cache_dir: str | os.PathLike | None = None, seed: int = 0) -> Path:
    """Folder of a randomly initialised CLIP ViT-B/32 (``openai/clip-vit-base-patch32``'s configuration).

    151 M parameters: a 12-layer 768-wide vision tower on 32 px patches of a 224 px picture, a 12-layer
    512-wide text tower over 49408 token rows, 512-wide projections. The tokenizer is the byte-level CLIP
    tokenizer (the real BPE merges are a download); the processor file is the hub's own format
    (``CLIPFeatureExtractor``: shortest edge to 224, bicubic, centre crop, CLIP statistics).
    """
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    target = Path(cache_dir or default_cache_dir()) / f"real-shape-clip-vitb32-v{_VERSION}-s{seed}"
    if (target / "config.json").is_file():
        return target
    vocab = byte_level_vocab()
    text = _text_config(vocab, 49408, hidden=512, intermediate=2048, layers=12, heads=8)
    vision = {
        "image_size": REAL_SIZE,
        "patch_size": 32,
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
    }
    model = _seeded(
        seed, lambda: CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=512))
    )
    processor = {
        "feature_extractor_type": "CLIPFeatureExtractor",
        "do_resize": True,
        "size": REAL_SIZE,
        "resample": 3,
        "do_center_crop": True,
        "crop_size": REAL_SIZE,
        "do_normalize": True,
        "image_mean": _CLIP[0],
        "image_std": _CLIP[1],
    }
    with atomic_dir(target, replace=False) as tmp:
        model.save_pretrained(tmp)
        CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77).save_pretrained(tmp)
        (tmp / "preprocessor_config.json").write_text(json.dumps(processor, indent=2))
    return target
