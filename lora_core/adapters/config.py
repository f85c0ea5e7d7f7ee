"""The adapter kinds (``lora.kind``: LoRA, DoRA, LoHa, LoKr), their peft configs and the files that hold them.

Every kind comes from peft (``LoraConfig``, ``LoraConfig(use_dora=True)``, ``LoHaConfig``, ``LoKrConfig``);
convolution targets (LoCon) get their own rank and alpha through peft's ``rank_pattern``/``alpha_pattern``.

Which file holds which kind:

- ``pytorch_lora_weights.safetensors`` (LoRA, DoRA): diffusers' ``save_lora_weights`` with adapter metadata
  (so alpha != rank reloads exactly) of ``get_peft_model_state_dict``'s weights in peft naming, which
  ``pipe.load_lora_weights`` reads for every layer type. ``convert_state_dict_to_diffusers`` is left out: it
  renames only attention layers, and diffusers 0.42 drops the attention weights of such a mixed file
  (convolutions kept as ``lora_A``) on loading.
- ``adapter_peft.safetensors`` (LoHa, LoKr): diffusers' ``load_lora_weights`` cannot load these kinds, so
  they are written in peft naming (``unet.<module>.hada_w1_a``) with each model's peft config in the
  metadata; ``files.load_peft_adapter`` reads it back (the renderer uses it).
- ``lora_kohya.safetensors`` (every kind): kohya / LyCORIS naming for A1111 and ComfyUI (``lora_unet_*``,
  ``lora_te_*``; ``lora_down``/``lora_up``/``alpha``, ``dora_scale``, ``hada_w*``, ``lokr_w*``), written by
  ``kohya.save_kohya_lora`` because diffusers' ``convert_state_dict_to_kohya`` writes ``alpha = rank`` as an int and the SDXL-style
  ``lora_te1_`` prefix, and knows no LoHa/LoKr; this writes each module's true float alpha.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

LORA_FILE = "pytorch_lora_weights.safetensors"
PEFT_FILE = "adapter_peft.safetensors"
KOHYA_FILE = "lora_kohya.safetensors"
TRAINING_METADATA_KEY = "lora_sweeps_training"

ADAPTER_KINDS = ("lora", "dora", "loha", "lokr")
# Kinds that diffusers' ``load_lora_weights`` reads from its own format (diffusers 0.42).
DIFFUSERS_KINDS = ("lora", "dora")


@dataclass(frozen=True)
class AdapterWeights:
    """One trained adapter as every writer takes it: each model's tensors and peft config, and the metadata.

    Attributes:
        unet: The UNet's adapter weights in peft naming (``...to_q.lora_A.weight``).
        unet_config: The UNet's peft config (``to_dict()``: rank, alpha, targets, patterns).
        training_metadata: Every training hyperparameter, stored as JSON under ``lora_sweeps_training``.
        text_encoder: The text encoder's adapter weights, or None when it was not trained.
        text_encoder_config: Its peft config, or None.
        text_encoder_2: SDXL's second text encoder's adapter weights, or None.
        text_encoder_2_config: Its peft config, or None.
        family: ``sd`` (SD 1.x / 2.x) or ``sdxl`` (``lora_core.family``): names the text encoders' modules
            in the kohya export (``lora_te_`` or ``lora_te1_`` and ``lora_te2_``).
    """

    unet: dict
    unet_config: dict
    training_metadata: dict
    text_encoder: dict | None = None
    text_encoder_config: dict | None = None
    text_encoder_2: dict | None = None
    text_encoder_2_config: dict | None = None
    family: str = "sd"

    def components(self) -> Iterator[tuple[str, dict, dict]]:
        """``(component, weights, config)`` of each model with an adapter: the UNet, then the text encoders."""
        yield "unet", self.unet, self.unet_config
        if self.text_encoder:
            yield "text_encoder", self.text_encoder, self.text_encoder_config
        if self.text_encoder_2:
            yield "text_encoder_2", self.text_encoder_2, self.text_encoder_2_config


def adapter_config(
    kind: str,
    rank: int,
    alpha: float,
    dropout: float,
    target_modules: list[str],
    conv_target_modules: list[str] = (),
    conv_rank: int | None = None,
    conv_alpha: float | None = None,
):
    """The peft config of one model's adapter.

    Args:
        kind: One of ``ADAPTER_KINDS``.
        rank: Rank of ``target_modules``.
        alpha: Alpha of ``target_modules`` (the scale is alpha / rank for every kind).
        dropout: LoRA/DoRA: dropout of the adapter's input; LoHa/LoKr: peft's ``rank_dropout``.
        target_modules: Module name suffixes that get the adapter (``to_q``, ...).
        conv_target_modules: Further suffixes (the UNet's convolutions: LoCon) with their own rank and alpha.
        conv_rank: Rank of ``conv_target_modules`` (None: ``rank``).
        conv_alpha: Alpha of ``conv_target_modules`` (None: their rank, scale 1).

    Returns:
        A ``peft`` ``LoraConfig``, ``LoHaConfig`` or ``LoKrConfig``.
    """
    from peft import LoHaConfig, LoKrConfig, LoraConfig

    conv_rank = conv_rank or rank
    conv_alpha = float(conv_rank if conv_alpha is None else conv_alpha)
    common = dict(
        r=rank,
        target_modules=[*target_modules, *conv_target_modules],
        rank_pattern={m: conv_rank for m in conv_target_modules},
        alpha_pattern={m: conv_alpha for m in conv_target_modules},
    )
    if kind in ("lora", "dora"):
        return LoraConfig(
            lora_alpha=alpha,
            lora_dropout=dropout,
            init_lora_weights="gaussian",
            use_dora=kind == "dora",
            **common,
        )
    config_class = {"loha": LoHaConfig, "lokr": LoKrConfig}[kind]
    return config_class(alpha=alpha, rank_dropout=dropout, **common)


def weights_file_name(kind: str) -> str:
    """The file the project itself reloads a kind from (render, resume checks): diffusers' or peft's."""
    return LORA_FILE if kind in DIFFUSERS_KINDS else PEFT_FILE


def find_weights_file(folder: str | os.PathLike) -> Path | None:
    """The adapter weights file of a training or checkpoint folder (``LORA_FILE`` or ``PEFT_FILE``), or None."""
    for name in (LORA_FILE, PEFT_FILE):
        if (Path(folder) / name).is_file():
            return Path(folder) / name
    return None


def format_notes(kind: str) -> list[str]:
    """What an export format cannot hold for ``kind``, one line each, said before training.

    Args:
        kind: One of ``ADAPTER_KINDS``.

    Returns:
        The lines (none for plain LoRA).
    """
    if kind in ("loha", "lokr"):
        return [
            f"lora.kind={kind}: diffusers' load_lora_weights cannot load {kind.replace('lo', 'Lo', 1)}, so no "
            f"{LORA_FILE} is written; the run keeps {PEFT_FILE} (peft naming, rendered by this project) and "
            f"{KOHYA_FILE} (LyCORIS naming, for A1111/ComfyUI). Use lora.kind=lora or dora for a diffusers file."
        ]
    if kind == "dora":
        return [
            f"lora.kind=dora: {KOHYA_FILE} holds dora_scale per output channel (peft's and LyCORIS' "
            "wd_on_out layout), which LyCORIS reads exactly; A1111 and ComfyUI normalise DoRA weights their "
            f"own way (per input channel, or by the base weight's norm), so pictures there may differ. "
            f"{LORA_FILE} (diffusers) is exact."
        ]
    return []
