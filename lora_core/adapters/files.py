"""Save and load adapters in diffusers' and peft's files, and read the training settings stored in them.

``pytorch_lora_weights.safetensors`` (LoRA, DoRA) and ``adapter_peft.safetensors`` (LoHa, LoKr); which kind
goes in which file is ``lora_core.adapters.config``'s.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from lora_core.adapters.config import (
    DIFFUSERS_KINDS,
    KOHYA_FILE,
    LORA_FILE,
    PEFT_FILE,
    TRAINING_METADATA_KEY,
    AdapterWeights,
)
from lora_core.adapters.kohya import save_kohya_lora
from lora_core.atomic import atomic_path

_PEFT_CONFIG_KEY = "{}_peft_config"  # metadata key of a model's peft config in PEFT_FILE
_COMPONENTS = ("unet", "text_encoder", "text_encoder_2")


def peft_state_dict(model, adapter_name: str) -> dict:
    """The LoRA weights of one adapter of a model, in peft naming without the adapter name.

    Args:
        model: A UNet or text encoder with a peft adapter attached.
        adapter_name: The adapter.

    Returns:
        Parameter name to tensor (``...to_q.lora_A.weight``).
    """
    from peft.utils import get_peft_model_state_dict

    return get_peft_model_state_dict(model, adapter_name=adapter_name)


def adapter_weights(pipe, adapter_name: str, configs: tuple, training_metadata: dict) -> AdapterWeights:
    """The adapter ``adapter_name`` of a pipeline's UNet and text encoder, as the writers take it.

    Args:
        pipe: The pipeline holding the adapter.
        adapter_name: The adapter.
        configs: The peft configs of the UNet's and the text encoder's adapter (None: no text-encoder adapter),
            and of SDXL's second text encoder's when there is a third.
        training_metadata: Stored in the files.
    """
    from lora_core.family import SDXL, family_of

    unet_config, text_config = configs[:2]
    text_2_config = configs[2] if len(configs) > 2 else None
    return AdapterWeights(
        unet=peft_state_dict(pipe.unet, adapter_name),
        unet_config=unet_config.to_dict(),
        training_metadata=training_metadata,
        text_encoder=peft_state_dict(pipe.text_encoder, adapter_name) if text_config else None,
        text_encoder_config=text_config.to_dict() if text_config else None,
        text_encoder_2=peft_state_dict(pipe.text_encoder_2, adapter_name) if text_2_config else None,
        text_encoder_2_config=text_2_config.to_dict() if text_2_config else None,
        family=SDXL if family_of(pipe) == SDXL else "sd",
    )


def write_adapter_files(folder: Path, weights: AdapterWeights, kind: str, kohya: bool) -> None:
    """Write an adapter's file into ``folder`` (which file is the kind's) and, with ``kohya``, its export.

    Args:
        folder: Where to write (created).
        weights: The adapter.
        kind: ``train.adapter_kind``: diffusers' loader reads LoRA and DoRA; the other kinds are kept in
            peft naming.
        kohya: Also write ``lora_kohya.safetensors``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    (save_diffusers_lora if kind in DIFFUSERS_KINDS else save_peft_adapter)(folder, weights)
    if kohya:
        save_kohya_lora(folder / KOHYA_FILE, weights)


def save_diffusers_lora(folder: str | os.PathLike, weights: AdapterWeights) -> Path:
    """Write ``pytorch_lora_weights.safetensors`` loadable with ``pipe.load_lora_weights(folder)``.

    Each model's peft config is stored as diffusers' adapter metadata (so alpha != rank reloads exactly).

    Args:
        folder: Destination folder (created).
        weights: The adapter (LoRA or DoRA).

    Returns:
        The written file.
    """
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    text, text_2 = weights.text_encoder, weights.text_encoder_2
    parts = {
        "unet_lora_layers": weights.unet,
        "text_encoder_lora_layers": _transformers_naming(text) if text else None,
        "unet_lora_adapter_metadata": _jsonable(weights.unet_config),
        "text_encoder_lora_adapter_metadata": _jsonable(weights.text_encoder_config) if text else None,
    }
    if weights.family == "sdxl":
        parts |= {
            "text_encoder_2_lora_layers": _transformers_naming(text_2) if text_2 else None,
            "text_encoder_2_lora_adapter_metadata": _jsonable(weights.text_encoder_2_config)
            if text_2
            else None,
        }
    pipeline = StableDiffusionXLPipeline if weights.family == "sdxl" else StableDiffusionPipeline
    with tempfile.TemporaryDirectory() as tmp:
        pipeline.save_lora_weights(tmp, **parts)
        return _rewrite_with_metadata(
            Path(tmp) / LORA_FILE, Path(folder) / LORA_FILE, weights.training_metadata
        )


def save_peft_adapter(folder: str | os.PathLike, weights: AdapterWeights) -> Path:
    """Write ``adapter_peft.safetensors``: any peft adapter kind, read back by ``load_peft_adapter``.

    For kinds diffusers' ``load_lora_weights`` cannot load (LoHa, LoKr). Keys are ``unet.<peft key>`` and
    ``text_encoder.<peft key>``; each model's peft config is in the metadata.

    Args:
        folder: Destination folder (created).
        weights: The adapter.

    Returns:
        The written file.
    """
    from safetensors.torch import save_file

    tensors = {}
    metadata = {"format": "pt", TRAINING_METADATA_KEY: json.dumps(weights.training_metadata, sort_keys=True)}
    for component, values, config in weights.components():
        tensors |= {f"{component}.{k}": v.detach().contiguous() for k, v in values.items()}
        metadata[_PEFT_CONFIG_KEY.format(component)] = json.dumps(_jsonable(config), sort_keys=True)
    Path(folder).mkdir(parents=True, exist_ok=True)
    with atomic_path(Path(folder) / PEFT_FILE) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return Path(folder) / PEFT_FILE


def is_peft_adapter_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an ``adapter_peft.safetensors`` written by ``save_peft_adapter``."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return _PEFT_CONFIG_KEY.format("unet") in (f.metadata() or {})


def load_peft_adapter(pipe, path: str | os.PathLike, adapter_name: str) -> None:
    """Attach the adapter of an ``adapter_peft.safetensors`` file to a pipeline's UNet and text encoder.

    Afterwards the pipeline's own adapter calls work on it as on a loaded LoRA (``set_adapters``,
    ``fuse_lora``, ``unload_lora_weights``).

    Args:
        pipe: A ``StableDiffusionPipeline``.
        path: The file.
        adapter_name: Name of the adapter in the models.

    Raises:
        ValueError: A weight of the file has no place in the model (another base architecture).
    """
    from peft import PeftConfig
    from peft.utils import set_peft_model_state_dict
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    for component in _COMPONENTS:
        config = metadata.get(_PEFT_CONFIG_KEY.format(component))
        if config is None:
            continue
        model = getattr(pipe, component, None)
        if model is None:
            raise ValueError(f"{path}: holds a {component} adapter, and this pipeline has no {component}")
        model.add_adapter(PeftConfig.from_peft_type(**json.loads(config)), adapter_name=adapter_name)
        prefix = f"{component}."
        weights = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        result = set_peft_model_state_dict(model, weights, adapter_name=adapter_name)
        unexpected = getattr(result, "unexpected_keys", None) or []
        if unexpected:
            raise ValueError(
                f"{path}: {len(unexpected)} weights have no place in the {component}: {unexpected[0]}"
            )


def read_training_metadata(path: str | os.PathLike) -> dict:
    """Read the training hyperparameters stored in a LoRA file written by this project.

    Args:
        path: A ``.safetensors`` LoRA file.

    Returns:
        The hyperparameters, or an empty dict if the file has none.
    """
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    return json.loads(meta[TRAINING_METADATA_KEY]) if TRAINING_METADATA_KEY in meta else {}


def _rewrite_with_metadata(src: Path, dst: Path, training_metadata: dict) -> Path:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), framework="pt") as f:
        metadata = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    metadata[TRAINING_METADATA_KEY] = json.dumps(training_metadata, sort_keys=True)
    with atomic_path(dst) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return dst


def _transformers_naming(weights: dict) -> dict:
    """Text-encoder weights as transformers 5's adapter loader expects them.

    It puts the adapter name after every ``lora_*`` part of a key, so peft's ``lora_magnitude_vector``
    (DoRA) must be saved as ``lora_magnitude_vector.weight`` to land on the parameter; LoRA keys are as peft
    writes them (found with peft 0.21 and transformers 5.23: without this a reloaded DoRA text encoder
    silently keeps freshly initialised magnitudes).
    """
    return {(f"{k}.weight" if k.endswith(".lora_magnitude_vector") else k): v for k, v in weights.items()}


def _jsonable(config: dict | None) -> dict | None:
    if config is None:
        return None
    return json.loads(json.dumps(config, default=lambda v: sorted(v) if isinstance(v, set) else str(v)))
