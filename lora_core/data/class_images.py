"""DreamBooth prior preservation: class images generated with the base model, cached on disk.

The cache key holds everything that determines the pictures (base weights, dtype, prompt, resolution,
sampling settings, seed), so every job of a sweep over the same base model shares one set and a rerun
generates nothing. Image ``i`` is drawn from seed ``seed + i``: an interrupted generation continues where it
stopped and gives the same pictures as an uninterrupted one (up to float rounding between batch sizes).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm.auto import tqdm

from lora_core.atomic import atomic_path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClassImageSpec:
    """What to generate.

    Attributes:
        prompt: The class prompt (``a photo of a cat``).
        count: How many pictures.
        resolution: Side in pixels.
        num_inference_steps: Sampling steps.
        guidance_scale: Classifier-free guidance.
        negative_prompt: Negative prompt ('' for none).
        seed: Seed of picture 0 (picture i uses seed + i).
        batch_size: Pictures per pipeline call (speed only; does not change the pictures).
    """

    prompt: str
    count: int = 100
    resolution: int = 512
    num_inference_steps: int = 25
    guidance_scale: float = 7.5
    negative_prompt: str = ""
    seed: int = 0
    batch_size: int = 4

    def cache_key(self, model_identity: str, dtype: str) -> str:
        """Hash of everything that determines the pictures (not the count or batch size).

        Args:
            model_identity: Identity of the base weights (``lora_core.models.model_identity``).
            dtype: The pipeline's dtype name.

        Returns:
            A short hex string.
        """
        fields = {k: v for k, v in asdict(self).items() if k not in ("count", "batch_size")}
        payload = json.dumps({**fields, "model": model_identity, "dtype": dtype}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def ensure_class_images(
    pipe, spec: ClassImageSpec, model_identity: str, cache_dir: str | os.PathLike
) -> list[Path]:
    """Return ``spec.count`` class images, generating only the ones the cache does not hold yet.

    Args:
        pipe: The base pipeline, with no adapter active.
        spec: What to generate.
        model_identity: Identity of the base weights, for the cache key.
        cache_dir: Parent folder of the class image sets.

    Returns:
        The image paths, in order.
    """
    import torch

    folder = Path(cache_dir) / "class-images" / spec.cache_key(model_identity, str(pipe.unet.dtype))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spec.json").write_text(json.dumps({**asdict(spec), "model": model_identity}, indent=2))
    paths = [folder / f"{i:05d}.png" for i in range(spec.count)]
    missing = [i for i, p in enumerate(paths) if not p.is_file()]
    if not missing:
        return paths
    log.info("Generating %d class images for %r into %s", len(missing), spec.prompt, folder)
    with tqdm(total=len(missing), desc="class images", unit="img") as bar:
        for start in range(0, len(missing), spec.batch_size):
            chunk = missing[start : start + spec.batch_size]
            images = pipe(
                [spec.prompt] * len(chunk),
                negative_prompt=[spec.negative_prompt] * len(chunk) if spec.negative_prompt else None,
                height=spec.resolution,
                width=spec.resolution,
                num_inference_steps=spec.num_inference_steps,
                guidance_scale=spec.guidance_scale,
                generator=[torch.Generator("cpu").manual_seed(spec.seed + i) for i in chunk],
            ).images
            for i, image in zip(chunk, images, strict=True):
                with atomic_path(paths[i]) as tmp:
                    image.save(tmp, format="PNG")
            bar.update(len(chunk))
    return paths
