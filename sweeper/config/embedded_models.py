"""The models this project makes itself, by the names the config gives them, resolved to folders.

``model.path=tiny``, ``tiny-sdxl`` and ``tiny-sd2`` (random weights of SD 1.x, SDXL and SD 2.x shape, built
into the cache on first use) and ``model.path=world`` (the shipped world model, its files checked against its
manifest) become a ``ModelSource`` whose path is the folder and whose identity is ``tiny-<fingerprint>``,
``tiny-sdxl-<fingerprint>``, ``tiny-sd2-<fingerprint>`` / ``world-<content hash>``. ``eval.dino_model`` and
``eval.clip_model`` set to ``tiny``, ``real-shape`` or ``world`` become the folder of that evaluation model.
lora_core loads folders, hub ids and files and knows none of these names; ``lora_core.embedded`` makes them.
"""

from __future__ import annotations

import os
from dataclasses import replace

from lora_core.embedded.tiny_eval import (
    ensure_real_shape_clip,
    ensure_real_shape_dino,
    ensure_tiny_clip,
    ensure_tiny_dino,
)
from lora_core.embedded.tiny_model import TinyModelSpec, TinySD2Spec, TinySDXLSpec, ensure_tiny_model
from lora_core.embedded.world_weights import verified_world_dir, world_part
from lora_core.family import SD, SDXL
from lora_core.models import ModelSource, model_family

TINY = "tiny"
TINY_SDXL = "tiny-sdxl"
TINY_SD2 = "tiny-sd2"
# The tiny models' names, each with its spec class; all are built offline, none is a folder or hub id.
TINY_SPECS = {TINY: TinyModelSpec, TINY_SDXL: TinySDXLSpec, TINY_SD2: TinySD2Spec}
WORLD = "world"
REAL_SHAPE = "real-shape"


def embedded_family(path: str) -> str | None:
    """The family (``lora_core.family``: ``sd`` or ``sdxl``) of a model this project makes, not building it.

    Args:
        path: ``model.path``.

    Returns:
        ``sdxl`` for ``tiny-sdxl``; ``sd`` for ``tiny``, ``tiny-sd2`` and ``world`` (SD 1.x / 2.x); None for
        any other path (a folder, hub id or file: ``lora_core.models.model_family`` reads it).
    """
    if path == WORLD:
        return SD
    if path in TINY_SPECS:
        return SDXL if TINY_SPECS[path] is TinySDXLSpec else SD
    return None


def configured_family(asked: ModelSource) -> str:
    """The family of the model as configured (``model.*``), without loading or building it.

    The project's own models by name (``embedded_family``), any other by its files
    (``lora_core.models.model_family``).
    """
    return embedded_family(asked.path) or model_family(asked)


def base_model(
    asked: ModelSource, tiny_seed: int = 0, cache_dir: str | os.PathLike | None = None
) -> ModelSource:
    """The model lora_core loads for ``asked``: the tiny models and ``world`` made the folders they name.

    Args:
        asked: The base model as configured (``model.*``); its path may be ``tiny``, ``tiny-sdxl``,
            ``tiny-sd2`` or ``world``.
        tiny_seed: Seed of the tiny models' random weights (``model.tiny_seed``).
        cache_dir: Where the tiny models are built; ``default_cache_dir()`` when None.

    Returns:
        ``asked`` with the folder as its path and the weights' identity (``tiny-<fingerprint>``,
        ``tiny-sdxl-<fingerprint>``, ``tiny-sd2-<fingerprint>``, ``world-<content hash>``); ``asked``
        unchanged for any other path.

    Raises:
        UserInputError: The world model's files are missing or corrupt.
    """
    if asked.path in TINY_SPECS:
        spec = TINY_SPECS[asked.path](seed=tiny_seed)
        folder = ensure_tiny_model(spec, cache_dir)
        # tiny-<fingerprint> for SD 1.x as before, so saved runs keep their identity; tiny-sdxl-... etc.
        return replace(asked, path=str(folder), identity=f"{asked.path}-{spec.fingerprint()}")
    if asked.path == WORLD:
        root, content_hash = verified_world_dir()
        return replace(asked, path=str(root / "sd"), identity=f"world-{content_hash}")
    return asked


def resolve_eval_model(name: str, kind: str, cache_dir: str | os.PathLike | None = None) -> str:
    """``tiny``/``real-shape``/``world`` -> the folder of that evaluation model; anything else unchanged.

    ``tiny`` and ``real-shape`` are built on first use; ``world`` is the world model's identity ViT (``dino``)
    or world CLIP (``clip``), its files checked.

    Args:
        name: ``eval.dino_model`` or ``eval.clip_model``.
        kind: ``dino`` or ``clip``.
        cache_dir: Cache folder (default: ``default_cache_dir()``).
    """
    if name == WORLD:
        return world_part("identity" if kind == "dino" else "clip")
    if name == REAL_SHAPE:
        return str(ensure_real_shape_dino(cache_dir) if kind == "dino" else ensure_real_shape_clip(cache_dir))
    if name != TINY:
        return name
    return str(ensure_tiny_dino(cache_dir) if kind == "dino" else ensure_tiny_clip(cache_dir))
