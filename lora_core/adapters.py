"""Save, export and inspect LoRA adapters.

Diffusers format goes through the library's own chain (``get_peft_model_state_dict`` →
``convert_state_dict_to_diffusers`` → ``save_lora_weights`` with adapter metadata, so alpha != rank
reloads exactly). The kohya export (A1111/ComfyUI) is written here because diffusers'
``convert_state_dict_to_kohya`` writes ``alpha = rank`` as an int and the SDXL-style ``lora_te1_`` prefix;
this writes the true float alpha and SD 1.x's ``lora_te_`` names.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from lora_core.atomic import atomic_path

LORA_FILE = "pytorch_lora_weights.safetensors"
KOHYA_FILE = "lora_kohya.safetensors"
TRAINING_METADATA_KEY = "lora_sweeps_training"


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


def save_diffusers_lora(
    folder: str | os.PathLike,
    unet_peft: dict,
    text_encoder_peft: dict | None,
    unet_config: dict,
    text_encoder_config: dict | None,
    training_metadata: dict,
) -> Path:
    """Write ``pytorch_lora_weights.safetensors`` loadable with ``pipe.load_lora_weights(folder)``.

    Args:
        folder: Destination folder (created).
        unet_peft: UNet LoRA weights in peft naming.
        text_encoder_peft: Text-encoder LoRA weights in peft naming, or None when it was not trained.
        unet_config: The UNet ``LoraConfig.to_dict()`` (rank, alpha, targets) stored as adapter metadata.
        text_encoder_config: The text encoder's, or None.
        training_metadata: Every training hyperparameter, stored as JSON under ``lora_sweeps_training``.

    Returns:
        The written file.
    """
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers

    with tempfile.TemporaryDirectory() as tmp:
        StableDiffusionPipeline.save_lora_weights(
            tmp,
            unet_lora_layers=convert_state_dict_to_diffusers(unet_peft),
            text_encoder_lora_layers=convert_state_dict_to_diffusers(text_encoder_peft)
            if text_encoder_peft
            else None,
            unet_lora_adapter_metadata=_jsonable(unet_config),
            text_encoder_lora_adapter_metadata=_jsonable(text_encoder_config) if text_encoder_peft else None,
        )
        return _rewrite_with_metadata(Path(tmp) / LORA_FILE, Path(folder) / LORA_FILE, training_metadata)


def save_kohya_lora(
    path: str | os.PathLike,
    unet_peft: dict,
    text_encoder_peft: dict | None,
    alpha: float,
    training_metadata: dict,
) -> Path:
    """Write a kohya-format LoRA (``lora_unet_*``/``lora_te_*``, ``lora_down``/``lora_up``, float ``alpha``).

    Args:
        path: Destination ``.safetensors`` file.
        unet_peft: UNet LoRA weights in peft naming.
        text_encoder_peft: Text-encoder LoRA weights in peft naming, or None.
        alpha: The LoRA alpha (the scale is alpha / rank, as in peft).
        training_metadata: Training hyperparameters; also written as kohya's ``ss_*`` keys, which
            A1111's and ComfyUI's LoRA browsers show.

    Returns:
        The written file.
    """
    import torch
    from safetensors.torch import save_file

    tensors = {}
    for prefix, weights in (("lora_unet", unet_peft), ("lora_te", text_encoder_peft or {})):
        for key, value in weights.items():
            module, kind = _split_lora_key(key)
            if prefix == "lora_te" and not module.startswith("text_model."):
                # transformers 5 dropped the ``text_model`` wrapper; A1111 and kohya still name it.
                module = f"text_model.{module}"
            name = f"{prefix}_{module.replace('.', '_')}"
            tensors[f"{name}.{kind}.weight"] = value.detach().contiguous()
            tensors[f"{name}.alpha"] = torch.tensor(float(alpha), dtype=torch.float32)
    metadata = {
        TRAINING_METADATA_KEY: json.dumps(training_metadata, sort_keys=True),
        **_kohya_ss_metadata(training_metadata),
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt", **metadata})
    return Path(path)


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


def _split_lora_key(key: str) -> tuple[str, str]:
    for marker, kind in ((".lora_A.", "lora_down"), (".lora_B.", "lora_up")):
        if marker in key:
            return key.split(marker)[0], kind
    raise ValueError(f"not a LoRA weight name: {key}")


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


def _jsonable(config: dict | None) -> dict | None:
    if config is None:
        return None
    return json.loads(json.dumps(config, default=lambda v: sorted(v) if isinstance(v, set) else str(v)))


def _kohya_ss_metadata(meta: dict) -> dict[str, str]:
    names = {
        "learning_rate": "ss_learning_rate",
        "learning_rate_unet": "ss_unet_lr",
        "text_encoder_lr": "ss_text_encoder_lr",
        "lr_scheduler": "ss_lr_scheduler",
        "lr_warmup_steps": "ss_lr_warmup_steps",
        "max_train_steps": "ss_max_train_steps",
        "rank": "ss_network_dim",
        "alpha": "ss_network_alpha",
        "seed": "ss_seed",
        "train_batch_size": "ss_batch_size_per_device",
        "gradient_accumulation_steps": "ss_gradient_accumulation_steps",
        "noise_offset": "ss_noise_offset",
        "snr_gamma": "ss_min_snr_gamma",
        "prior_loss_weight": "ss_prior_loss_weight",
        "mixed_precision": "ss_mixed_precision",
        "optimizer": "ss_optimizer",
        "base_model": "ss_sd_model_name",
    }
    out = {"ss_network_module": "networks.lora", "ss_v2": "False"}
    if "resolution" in meta:
        out["ss_resolution"] = f"({meta['resolution']}, {meta['resolution']})"
    if "learning_rate" in meta:
        meta = {**meta, "learning_rate_unet": meta["learning_rate"]}
    out.update({ss: str(meta[key]) for key, ss in names.items() if key in meta and meta[key] is not None})
    return out
