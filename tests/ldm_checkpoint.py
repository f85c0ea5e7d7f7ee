"""Write a diffusers Stable Diffusion 1.x pipeline as one original CompVis/LDM checkpoint file.

That is the layout of ``v1-5-pruned-emaonly.safetensors`` and of most community models: the UNet under
``model.diffusion_model.``, the VAE under ``first_stage_model.``, the CLIP text encoder under
``cond_stage_model.transformer.text_model.``. Tests use it to feed ``from_single_file`` a checkpoint built
offline from the tiny pipeline.

Hand-written because diffusers only ships the other direction as a library function
(``diffusers.loaders.single_file_utils.convert_ldm_{unet,vae,clip}_checkpoint``); every rename here is the
inverse of one made there, so the round trip through diffusers' loader is exact.
"""

from __future__ import annotations

import re
from pathlib import Path

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.transformer.text_model."

_UNET_TOP = {
    "time_embedding.linear_1.": "time_embed.0.",
    "time_embedding.linear_2.": "time_embed.2.",
    "conv_in.": "input_blocks.0.0.",
    "conv_norm_out.": "out.0.",
    "conv_out.": "out.2.",
}
_UNET_RESNET = {
    "norm1.": "in_layers.0.",
    "conv1.": "in_layers.2.",
    "norm2.": "out_layers.0.",
    "conv2.": "out_layers.3.",
    "time_emb_proj.": "emb_layers.1.",
    "conv_shortcut.": "skip_connection.",
}
_VAE_TOP = {"conv_in.": "conv_in.", "conv_out.": "conv_out.", "conv_norm_out.": "norm_out."}
_VAE_RESNET = {"conv_shortcut.": "nin_shortcut."}
_VAE_ATTENTION = {
    "group_norm.": "norm.",
    "to_q.": "q.",
    "to_k.": "k.",
    "to_v.": "v.",
    "to_out.0.": "proj_out.",
}

_BLOCK = re.compile(
    r"(?P<side>down|up)_blocks\.(?P<block>\d+)\.(?P<kind>resnets|attentions|downsamplers|upsamplers)"
    r"\.(?P<index>\d+)\.(?P<rest>.+)"
)
_MID = re.compile(r"mid_block\.(?P<kind>resnets|attentions)\.(?P<index>\d+)\.(?P<rest>.+)")


def _rename_start(name: str, table: dict[str, str]) -> str | None:
    """``name`` with its first matching prefix from ``table`` replaced; None when no prefix matches."""
    for old, new in table.items():
        if name.startswith(old):
            return new + name[len(old) :]
    return None


def unet_key_to_ldm(key: str, layers_per_block: int, up_blocks_with_attention: set[int]) -> str:
    """The LDM name (without ``model.diffusion_model.``) of one diffusers UNet parameter.

    LDM numbers the UNet's layers flat: ``input_blocks.0`` is ``conv_in``, then each down block takes
    ``layers_per_block + 1`` slots (one per ResNet with its attention at ``.1``, one for the downsampler),
    and each up block takes ``layers_per_block + 1`` slots whose last also holds the upsampler, at ``.2``
    after an attention or ``.1`` without one.

    Args:
        key: A key of ``UNet2DConditionModel.state_dict()``.
        layers_per_block: ``unet.config.layers_per_block``.
        up_blocks_with_attention: Indices of the diffusers up blocks that have cross-attention.

    Returns:
        The key in the LDM layout.

    Raises:
        ValueError: The key has no SD 1.x counterpart (an extra embedding, say).
    """
    slot = layers_per_block + 1
    if block := _BLOCK.fullmatch(key):
        side, kind, rest = block["side"], block["kind"], block["rest"]
        first = int(block["block"]) * slot  # first flat slot of this block
        layer = first + int(block["index"])
        if kind == "resnets":
            rest = _rename_start(rest, _UNET_RESNET) or rest
        if side == "down":
            if kind == "downsamplers":
                return f"input_blocks.{1 + first + layers_per_block}.0.op.{rest.removeprefix('conv.')}"
            return f"input_blocks.{1 + layer}.{0 if kind == 'resnets' else 1}.{rest}"
        if kind == "upsamplers":
            at = 2 if int(block["block"]) in up_blocks_with_attention else 1
            return f"output_blocks.{first + layers_per_block}.{at}.{rest}"
        return f"output_blocks.{layer}.{0 if kind == 'resnets' else 1}.{rest}"
    if mid := _MID.fullmatch(key):
        rest = mid["rest"]
        if mid["kind"] == "resnets":  # middle_block is resnet, attention, resnet
            return f"middle_block.{2 * int(mid['index'])}.{_rename_start(rest, _UNET_RESNET) or rest}"
        return f"middle_block.1.{rest}"
    renamed = _rename_start(key, _UNET_TOP)
    if renamed is None:
        raise ValueError(f"UNet key {key!r} has no place in an SD 1.x LDM checkpoint.")
    return renamed


def vae_key_to_ldm(key: str, num_blocks: int) -> str:
    """The LDM name (without ``first_stage_model.``) of one diffusers ``AutoencoderKL`` parameter.

    LDM numbers the decoder's levels by resolution, as the encoder's, so diffusers' first up block (the
    lowest resolution) is LDM's last ``up`` level.

    Args:
        key: A key of ``AutoencoderKL.state_dict()``.
        num_blocks: Number of VAE levels (``len(vae.config.up_block_types)``).

    Returns:
        The key in the LDM layout.

    Raises:
        ValueError: The key has no SD 1.x counterpart.
    """
    coder, _, inner = key.partition(".")
    if coder in ("quant_conv", "post_quant_conv"):
        return key
    if coder not in ("encoder", "decoder"):
        raise ValueError(f"VAE key {key!r} has no place in an SD 1.x LDM checkpoint.")
    if block := _BLOCK.fullmatch(inner):
        level = int(block["block"]) if block["side"] == "down" else num_blocks - 1 - int(block["block"])
        side, kind, rest = block["side"], block["kind"], block["rest"]
        if kind == "resnets":
            return f"{coder}.{side}.{level}.block.{block['index']}.{_rename_start(rest, _VAE_RESNET) or rest}"
        if kind in ("downsamplers", "upsamplers"):
            return f"{coder}.{side}.{level}.{kind.removesuffix('rs')}.{rest}"  # downsample / upsample
    elif mid := _MID.fullmatch(inner):
        rest = mid["rest"]
        if mid["kind"] == "resnets":
            return f"{coder}.mid.block_{int(mid['index']) + 1}.{_rename_start(rest, _VAE_RESNET) or rest}"
        if mid["index"] == "0" and (renamed := _rename_start(rest, _VAE_ATTENTION)):
            return f"{coder}.mid.attn_1.{renamed}"
    elif renamed := _rename_start(inner, _VAE_TOP):
        return f"{coder}.{renamed}"
    raise ValueError(f"VAE key {key!r} has no place in an SD 1.x LDM checkpoint.")


def text_key_to_ldm(key: str) -> str:
    """The LDM name of one CLIP text-encoder parameter, prefix included.

    transformers 5 flattened ``CLIPTextModel`` (keys start at ``embeddings.``); older versions wrap it in
    ``text_model.``. LDM keeps the wrapper, so both come out as ``cond_stage_model.transformer.text_model.*``.

    Args:
        key: A key of ``CLIPTextModel.state_dict()``.

    Returns:
        The full key in the LDM checkpoint.
    """
    return TEXT_PREFIX + key.removeprefix("text_model.")


def ldm_state_dict(pipe) -> dict:
    """The UNet, VAE and text encoder of a Stable Diffusion 1.x pipeline as one LDM state dict.

    Args:
        pipe: A ``StableDiffusionPipeline`` (any SD 1.x-shaped config; ``layers_per_block`` an int).

    Returns:
        Full LDM keys to detached, contiguous tensors (VAE attention projections as 1x1 convolutions,
        which is how LDM stores them).

    Raises:
        ValueError: A parameter has no LDM name, or two parameters would get the same one.
    """
    unet, vae = pipe.unet, pipe.vae
    layers_per_block = unet.config.layers_per_block
    if not isinstance(layers_per_block, int):
        raise ValueError(
            f"layers_per_block={layers_per_block!r}: LDM checkpoints need one value for all blocks."
        )
    unet_state = unet.state_dict()
    with_attention = {
        int(k.split(".")[1]) for k in unet_state if k.startswith("up_blocks.") and ".attentions." in k
    }
    out = {}
    for key, value in unet_state.items():
        out[UNET_PREFIX + unet_key_to_ldm(key, layers_per_block, with_attention)] = value
    num_vae_blocks = len(vae.config.up_block_types)
    for key, value in vae.state_dict().items():
        ldm_key = vae_key_to_ldm(key, num_vae_blocks)
        if ".mid.attn_1." in ldm_key and value.ndim == 2:
            value = value[:, :, None, None]  # Linear (out, in) -> Conv2d 1x1 (out, in, 1, 1)
        out[VAE_PREFIX + ldm_key] = value
    for key, value in pipe.text_encoder.state_dict().items():
        out[text_key_to_ldm(key)] = value
    expected = len(unet_state) + len(vae.state_dict()) + len(pipe.text_encoder.state_dict())
    if len(out) != expected:
        raise ValueError(f"{expected - len(out)} parameters collided on the same LDM key.")
    return {key: value.detach().contiguous() for key, value in out.items()}


def save_ldm_checkpoint(pipe, path: str | Path) -> Path:
    """Save a pipeline's weights as one LDM checkpoint file.

    Args:
        pipe: A ``StableDiffusionPipeline``.
        path: ``*.safetensors``, or ``*.ckpt`` for a torch pickle wrapped in ``{"state_dict": ...}`` as
            the original CompVis checkpoints are.

    Returns:
        The path written.
    """
    import torch
    from safetensors.torch import save_file

    path = Path(path)
    state = {key: value.cpu() for key, value in ldm_state_dict(pipe).items()}
    if path.suffix == ".safetensors":
        save_file(state, str(path), metadata={"format": "pt"})
    else:
        torch.save({"state_dict": state}, path)
    return path
