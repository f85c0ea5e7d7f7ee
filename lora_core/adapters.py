"""Build, save, export, load and inspect adapters of every kind (``lora.kind``): LoRA, DoRA, LoHa, LoKr.

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
  metadata; ``load_peft_adapter`` reads it back (the renderer uses it).
- ``lora_kohya.safetensors`` (every kind): kohya / LyCORIS naming for A1111 and ComfyUI (``lora_unet_*``,
  ``lora_te_*``; ``lora_down``/``lora_up``/``alpha``, ``dora_scale``, ``hada_w*``, ``lokr_w*``). Written here
  because diffusers' ``convert_state_dict_to_kohya`` writes ``alpha = rank`` as an int and the SDXL-style
  ``lora_te1_`` prefix, and knows no LoHa/LoKr; this writes each module's true float alpha.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from lora_core.atomic import atomic_path

LORA_FILE = "pytorch_lora_weights.safetensors"
PEFT_FILE = "adapter_peft.safetensors"
KOHYA_FILE = "lora_kohya.safetensors"
TRAINING_METADATA_KEY = "lora_sweeps_training"
_PEFT_CONFIG_KEY = "{}_peft_config"  # metadata key of a model's peft config in PEFT_FILE
_COMPONENTS = ("unet", "text_encoder")

ADAPTER_KINDS = ("lora", "dora", "loha", "lokr")
# Kinds that diffusers' ``load_lora_weights`` reads from its own format (diffusers 0.42).
DIFFUSERS_KINDS = ("lora", "dora")


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
            lora_alpha=alpha, lora_dropout=dropout, init_lora_weights="gaussian", use_dora=kind == "dora",
            **common,
        )  # fmt: skip
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

    with tempfile.TemporaryDirectory() as tmp:
        StableDiffusionPipeline.save_lora_weights(
            tmp,
            unet_lora_layers=unet_peft,
            text_encoder_lora_layers=_transformers_naming(text_encoder_peft) if text_encoder_peft else None,
            unet_lora_adapter_metadata=_jsonable(unet_config),
            text_encoder_lora_adapter_metadata=_jsonable(text_encoder_config) if text_encoder_peft else None,
        )
        return _rewrite_with_metadata(Path(tmp) / LORA_FILE, Path(folder) / LORA_FILE, training_metadata)


def save_peft_adapter(
    folder: str | os.PathLike,
    unet_peft: dict,
    text_encoder_peft: dict | None,
    unet_config: dict,
    text_encoder_config: dict | None,
    training_metadata: dict,
) -> Path:
    """Write ``adapter_peft.safetensors``: any peft adapter kind, read back by ``load_peft_adapter``.

    For kinds diffusers' ``load_lora_weights`` cannot load (LoHa, LoKr). Keys are ``unet.<peft key>`` and
    ``text_encoder.<peft key>``; each model's peft config is in the metadata.

    Args:
        folder: Destination folder (created).
        unet_peft: UNet adapter weights in peft naming.
        text_encoder_peft: Text-encoder adapter weights in peft naming, or None when it was not trained.
        unet_config: The UNet's peft config (``to_dict()``).
        text_encoder_config: The text encoder's, or None.
        training_metadata: Every training hyperparameter, stored as JSON under ``lora_sweeps_training``.

    Returns:
        The written file.
    """
    from safetensors.torch import save_file

    tensors, metadata = (
        {},
        {"format": "pt", TRAINING_METADATA_KEY: json.dumps(training_metadata, sort_keys=True)},
    )
    for component, weights, config in (
        ("unet", unet_peft, unet_config),
        ("text_encoder", text_encoder_peft, text_encoder_config),
    ):
        if weights:
            tensors |= {f"{component}.{k}": v.detach().contiguous() for k, v in weights.items()}
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
        model = getattr(pipe, component)
        model.add_adapter(PeftConfig.from_peft_type(**json.loads(config)), adapter_name=adapter_name)
        prefix = f"{component}."
        weights = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        result = set_peft_model_state_dict(model, weights, adapter_name=adapter_name)
        unexpected = getattr(result, "unexpected_keys", None) or []
        if unexpected:
            raise ValueError(
                f"{path}: {len(unexpected)} weights have no place in the {component}: {unexpected[0]}"
            )


def save_kohya_lora(
    path: str | os.PathLike,
    unet_peft: dict,
    text_encoder_peft: dict | None,
    unet_config: dict,
    text_encoder_config: dict | None,
    training_metadata: dict,
) -> Path:
    """Write an adapter of any kind in kohya / LyCORIS naming for A1111 and ComfyUI.

    Modules are ``lora_unet_*`` / ``lora_te_*``; each has its float ``alpha`` (the scale is alpha / rank) and
    its kind's tensors: ``lora_down.weight`` / ``lora_up.weight`` (LoRA, LoCon), plus ``dora_scale`` (DoRA,
    one magnitude per output channel, shaped ``(out, 1[, 1, 1])`` as LyCORIS' ``wd_on_out``), ``hada_w1_a``,
    ``hada_w1_b``, ``hada_w2_a``, ``hada_w2_b`` (LoHa) or ``lokr_w1`` with ``lokr_w2`` or ``lokr_w2_a`` /
    ``lokr_w2_b`` (LoKr). A LoKr module with no low-rank factor is read with scale 1 by LyCORIS, A1111 and
    ComfyUI, so peft's alpha / rank is folded into its ``lokr_w1``.

    Args:
        path: Destination ``.safetensors`` file.
        unet_peft: UNet adapter weights in peft naming.
        text_encoder_peft: Text-encoder adapter weights in peft naming, or None.
        unet_config: The UNet's peft config (``to_dict()``): each module's rank and alpha, convolutions'
            from its ``rank_pattern`` / ``alpha_pattern``.
        text_encoder_config: The text encoder's, or None.
        training_metadata: Training hyperparameters; also written as kohya's ``ss_*`` keys, which
            A1111's and ComfyUI's LoRA browsers show.

    Returns:
        The written file.
    """
    from safetensors.torch import save_file

    tensors = {}
    for prefix, weights, config in (
        ("lora_unet", unet_peft, unet_config),
        ("lora_te", text_encoder_peft or {}, text_encoder_config),
    ):
        for module, parts in _group_by_module(weights).items():
            name = module
            if prefix == "lora_te" and not module.startswith("text_model."):
                # transformers 5 dropped the ``text_model`` wrapper; A1111 and kohya still name it.
                name = f"text_model.{module}"
            name = f"{prefix}_{name.replace('.', '_')}"
            for kind, value in _kohya_tensors(parts, *_rank_and_alpha(config, module)).items():
                tensors[f"{name}.{kind}"] = value.detach().contiguous()
    metadata = {
        TRAINING_METADATA_KEY: json.dumps(training_metadata, sort_keys=True),
        **_kohya_ss_metadata(training_metadata),
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt", **metadata})
    return Path(path)


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
