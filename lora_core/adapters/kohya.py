"""Export an adapter of any kind in kohya / LyCORIS naming (``lora_kohya.safetensors``), for A1111 and ComfyUI.

Written here because diffusers' ``convert_state_dict_to_kohya`` writes ``alpha = rank`` as an int and the
SDXL-style ``lora_te1_`` prefix, and knows no LoHa/LoKr; this writes each module's true float alpha.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from lora_core.adapters.config import TRAINING_METADATA_KEY, AdapterWeights
from lora_core.atomic import atomic_path


def save_kohya_lora(path: str | os.PathLike, weights: AdapterWeights) -> Path:
    """Write an adapter of any kind in kohya / LyCORIS naming for A1111 and ComfyUI.

    Modules are ``lora_unet_*`` / ``lora_te_*`` (SDXL: ``lora_te1_*`` and ``lora_te2_*``); each has its float ``alpha`` (the scale is alpha / rank) and
    its kind's tensors: ``lora_down.weight`` / ``lora_up.weight`` (LoRA, LoCon), plus ``dora_scale`` (DoRA,
    one magnitude per output channel, shaped ``(out, 1[, 1, 1])`` as LyCORIS' ``wd_on_out``), ``hada_w1_a``,
    ``hada_w1_b``, ``hada_w2_a``, ``hada_w2_b`` (LoHa) or ``lokr_w1`` with ``lokr_w2`` or ``lokr_w2_a`` /
    ``lokr_w2_b`` (LoKr). A LoKr module with no low-rank factor is read with scale 1 by LyCORIS, A1111 and
    ComfyUI, so peft's alpha / rank is folded into its ``lokr_w1``.

    Args:
        path: Destination ``.safetensors`` file.
        weights: The adapter. Each module's rank and alpha come from its model's peft config
            (convolutions' from its ``rank_pattern`` / ``alpha_pattern``); the training metadata is also
            written as kohya's ``ss_*`` keys, which A1111's and ComfyUI's LoRA browsers show.

    Returns:
        The written file.
    """
    from safetensors.torch import save_file

    tensors = {}
    prefixes = _KOHYA_PREFIX | (_KOHYA_SDXL_PREFIX if weights.family == "sdxl" else {})
    for component, values, config in weights.components():
        prefix = prefixes[component]
        for module, parts in _group_by_module(values).items():
            name = module
            if prefix.startswith("lora_te") and not module.startswith("text_model."):
                # transformers 5 dropped the ``text_model`` wrapper; A1111 and kohya still name it.
                name = f"text_model.{module}"
            name = f"{prefix}_{name.replace('.', '_')}"
            for kind, value in _kohya_tensors(parts, *_rank_and_alpha(config, module)).items():
                tensors[f"{name}.{kind}"] = value.detach().contiguous()
    metadata = {
        TRAINING_METADATA_KEY: json.dumps(weights.training_metadata, sort_keys=True),
        **_kohya_ss_metadata(weights.training_metadata),
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt", **metadata})
    return Path(path)


# Kohya's module-name prefix of each model.
_KOHYA_PREFIX = {"unet": "lora_unet", "text_encoder": "lora_te"}
# SDXL's two text encoders (kohya's sd-scripts, A1111 and ComfyUI read these).
_KOHYA_SDXL_PREFIX = {"text_encoder": "lora_te1", "text_encoder_2": "lora_te2"}
# peft's tensor names (after the module name) -> kohya / LyCORIS names.
_KOHYA_NAMES = {
    "lora_A.weight": "lora_down.weight",
    "lora_B.weight": "lora_up.weight",
    "lora_magnitude_vector": "dora_scale",
    **{n: n for n in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")},
    **{n: n for n in ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b")},
}


def _group_by_module(weights: dict) -> dict[str, dict]:
    """``{"a.to_q.lora_A.weight": t}`` -> ``{"a.to_q": {"lora_A.weight": t}}``."""
    out: dict[str, dict] = {}
    for key, value in weights.items():
        for tail in _KOHYA_NAMES:
            if key.endswith(f".{tail}"):
                out.setdefault(key[: -len(tail) - 1], {})[tail] = value
                break
        else:
            raise ValueError(f"not an adapter weight name this export knows: {key}")
    return out


def _rank_and_alpha(config: dict, module: str) -> tuple[int, float]:
    """A module's rank and alpha under a peft config, patterns first (as peft itself resolves them)."""
    from peft.utils.other import get_pattern_key

    rank_key = get_pattern_key(config.get("rank_pattern") or {}, module)
    alpha_key = get_pattern_key(config.get("alpha_pattern") or {}, module)
    alpha = config["lora_alpha"] if "lora_alpha" in config else config["alpha"]
    return (
        int((config.get("rank_pattern") or {}).get(rank_key, config["r"])),
        float((config.get("alpha_pattern") or {}).get(alpha_key, alpha)),
    )


def _kohya_tensors(parts: dict, rank: int, alpha: float) -> dict:
    """One module's tensors under kohya / LyCORIS names, with its ``alpha``."""
    import torch

    out = {_KOHYA_NAMES[k]: v for k, v in parts.items()}
    if "dora_scale" in out:
        dims = parts["lora_A.weight"].dim()  # 2: linear, 4: convolution
        magnitude = out["dora_scale"]
        out["dora_scale"] = magnitude.reshape(magnitude.numel(), *[1] * (dims - 1))
    if "lokr_w1" in out and "lokr_w2" in out:  # no low-rank factor: readers take scale 1
        out["lokr_w1"] = out["lokr_w1"] * (alpha / rank)
        alpha = float(rank)
    out["alpha"] = torch.tensor(float(alpha), dtype=torch.float32)
    return out


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
    kind = meta.get("adapter_kind", "lora")
    if kind != "lora" or meta.get("conv_target_modules"):  # what LyCORIS' kohya network would record
        args = {"algo": "lora" if kind == "dora" else kind}
        if kind == "dora":
            args["dora_wd"] = "True"
        if meta.get("conv_target_modules"):
            args["conv_dim"] = str(meta.get("conv_rank") or meta.get("rank"))
            args["conv_alpha"] = str(meta.get("conv_alpha") or meta.get("conv_rank") or meta.get("rank"))
        out |= {"ss_network_module": "lycoris.kohya", "ss_network_args": json.dumps(args)}
    if "resolution" in meta:
        out["ss_resolution"] = f"({meta['resolution']}, {meta['resolution']})"
    if "learning_rate" in meta:
        meta = {**meta, "learning_rate_unet": meta["learning_rate"]}
    out.update({ss: str(meta[key]) for key, ss in names.items() if key in meta and meta[key] is not None})
    return out
