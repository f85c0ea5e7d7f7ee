"""Tiny DINO and CLIP folders laid out as the hub ships the real evaluation models.

``lora_core.embedded.tiny_eval`` builds the tiny random models (a DINO-shaped ``ViTModel`` with 16 px patches, a
``CLIPModel`` with tiny vision and text towers and the byte-level CLIP tokenizer) and saves them with
``save_pretrained``. Its processor configs are the modern kind. The real ``facebook/dino-vits16`` and
``openai/clip-vit-base-patch32`` still ship the legacy ``feature_extractor_type`` files with integer
sizes, so these copies carry exactly those files (sizes scaled to the tiny models' 32 px): the tests load
through the same ``from_pretrained`` path, and the same processor config format, as a real evaluation.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from lora_core.embedded.tiny_eval import IMAGE_SIZE, ensure_tiny_clip, ensure_tiny_dino

# facebook/dino-vits16's preprocessor_config.json: squash to a square (no crop), ImageNet statistics.
HUB_DINO_PROCESSOR = {
    "do_normalize": True,
    "do_resize": True,
    "feature_extractor_type": "ViTFeatureExtractor",
    "image_mean": [0.485, 0.456, 0.406],
    "image_std": [0.229, 0.224, 0.225],
    "resample": 2,
    "size": IMAGE_SIZE,
}
# openai/clip-vit-base-patch32's: shortest edge to size (bicubic), centre crop, CLIP statistics.
HUB_CLIP_PROCESSOR = {
    "crop_size": IMAGE_SIZE,
    "do_center_crop": True,
    "do_normalize": True,
    "do_resize": True,
    "feature_extractor_type": "CLIPFeatureExtractor",
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "resample": 3,
    "size": IMAGE_SIZE,
}


def hub_style_eval_models(root: Path) -> tuple[Path, Path]:
    """Folders of a tiny DINO and a tiny CLIP with the real models' processor config files.

    Args:
        root: Where to build them (a test's temporary folder).

    Returns:
        (DINO folder, CLIP folder), each loadable with ``from_pretrained(..., local_files_only=True)``.
    """
    folders = []
    for built, processor in (
        (ensure_tiny_dino(root), HUB_DINO_PROCESSOR),
        (ensure_tiny_clip(root), HUB_CLIP_PROCESSOR),
    ):
        target = root / f"{built.name}-hub"
        shutil.copytree(built, target, dirs_exist_ok=True)
        (target / "preprocessor_config.json").write_text(json.dumps(processor, indent=2))
        folders.append(target)
    return folders[0], folders[1]
