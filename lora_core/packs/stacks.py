"""A pack's adapters as stacked tensors: each configuration's LoRA as peft makes it, packed into the models.

``initial_adapter`` lets peft initialise one configuration's LoRA under its seed, exactly as ``LoraTrainer``
does, and takes its weights out again; ``pack_model`` puts every configuration's weights of one model into
stacked tensors (views of one flat buffer, ``FlatStacks``) and replaces each adapted layer by its packed
layer; ``peft_named`` gives one configuration's part back under peft's names, for the adapter writers.
"""

from __future__ import annotations

from lora_core.packs.layers import PackRouting, packed_conv_class, packed_linear_class, replace_layer
from lora_core.packs.optim import FlatStacks
from lora_core.training.recipe import ADAPTER_NAME, adapter_configs, add_adapter, restore_pipeline


def initial_adapter(pipe, settings) -> tuple[dict, dict, object]:
    """One configuration's initial LoRA, by layer name, as peft initialises it alone under its seed.

    Returns:
        The UNet's and the text encoder's ``{layer: (A, B, alpha / rank)}`` (empty while it is frozen), and
        the global generator's state after the initialisation (where its adapter dropout starts alone).
    """
    import torch
    from accelerate.utils import set_seed

    set_seed(settings.seed)  # the LoRA init draws from the global generator, as in LoraTrainer.setup
    unet_config, text_config = adapter_configs(settings)
    add_adapter(pipe.unet, unet_config, "train.unet_target_modules")
    if text_config is not None:
        add_adapter(pipe.text_encoder, text_config, "train.text_target_modules")
    weights = (lora_weights(pipe.unet), lora_weights(pipe.text_encoder) if text_config else {})
    state = torch.get_rng_state()
    restore_pipeline(pipe, gradient_checkpointing=False)
    return *weights, state


def lora_weights(model) -> dict:
    """``{layer name: (A, B, alpha / rank)}`` of the training adapter peft attached to ``model``."""
    from peft.tuners.lora import LoraLayer

    return {
        name: (
            m.lora_A[ADAPTER_NAME].weight.detach().clone(),
            m.lora_B[ADAPTER_NAME].weight.detach().clone(),
            float(m.scaling[ADAPTER_NAME]),
        )
        for name, m in model.named_modules()
        if isinstance(m, LoraLayer) and ADAPTER_NAME in m.lora_A
    }


def pack_model(
    model, index: int, weights: list[dict], routing: PackRouting, replaced: list
) -> tuple[FlatStacks | None, list[list]]:
    """Replace each adapted layer of ``model`` by a ``PackedLinear`` (``PackedConv2d``: LoCon) over stacks.

    The stacks are views into one flat buffer (``FlatStacks``: one optimizer step for all of them). Ranks
    below the pack's largest are padded with zeros, which stay zero (their gradient is zero).

    Args:
        model: The UNet or the text encoder.
        index: Its index in a checkpoint's names (``LoraTrainer``'s: 0 the UNet, 1 the text encoder).
        weights: Each configuration's ``{layer: (A, B, alpha / rank)}`` of this model (empty: not adapted).
        routing: The model's routing.
        replaced: Gains what ``restore_layers`` puts back.

    Returns:
        The model's stacks (``A`` then ``B`` of each layer; None when no configuration adapts it), and each
        configuration's own part of them: (checkpoint name, stack, index), what it trains alone: its rank's
        rows of ``A`` and columns of ``B``.
    """
    import torch

    slices: list[list] = [[] for _ in weights]
    names = next((list(w) for w in weights if w), [])
    if not names:
        return None, slices
    shapes = []
    for name in names:
        a, b = next((w[name][0], w[name][1]) for w in weights if w)
        rank = max(w[name][0].shape[0] for w in weights if w)
        shapes += [(rank, *a.shape[1:]), (b.shape[0], rank, *b.shape[2:])]
    flat = FlatStacks(len(weights), shapes, model.get_submodule(names[0]).weight.device)
    for i, name in enumerate(names):
        base = model.get_submodule(name)
        a, b = flat.stacks[2 * i], flat.stacks[2 * i + 1]
        scales = []
        for k, w in enumerate(weights):
            scales.append(w[name][2] if w else 0.0)
            if not w:
                continue
            r = w[name][0].shape[0]  # its rank in this layer (LoCon's convolutions have their own)
            with torch.no_grad():
                a.data[k, :r], b.data[k, :, :r] = w[name][0], w[name][1]
            for part, stack, where in (("A", a, (k, slice(0, r))), ("B", b, (k, slice(None), slice(0, r)))):
                key = f"{index}.{name}.lora_{part}.{ADAPTER_NAME}.weight"  # LoraTrainer's names
                slices[k].append((key, stack, where))
        packed = packed_conv_class() if isinstance(base, torch.nn.Conv2d) else packed_linear_class()
        replaced.append(replace_layer(model, name, packed(base, routing, a, b, scales)))
    return flat, slices


def adapter_weights(settings, layer_names: tuple, params: list, meta: dict):
    """One configuration's ``AdapterWeights`` as the writers take it: its rank's rows and columns, peft names.

    Args:
        settings: Its ``TrainSettings``.
        layer_names: The UNet's and the text encoder's adapted layers, in the pack's order.
        params: Its own parameters (``A`` then ``B`` of each layer: the UNet's, then the text encoder's).
        meta: The files' metadata.
    """
    from lora_core.adapters import AdapterWeights

    unet_config, text_config = adapter_configs(settings)
    unet_names, text_names = layer_names
    n_unet = 2 * len(unet_names)
    return AdapterWeights(
        unet=peft_named(unet_names, params[:n_unet]),
        unet_config=unet_config.to_dict(),
        training_metadata=meta,
        text_encoder=peft_named(text_names, params[n_unet:]) if text_config else None,
        text_encoder_config=text_config.to_dict() if text_config else None,
    )


def peft_named(names: list[str], params: list) -> dict:
    """Peft-named tensors (``<layer>.lora_A.weight``) of one configuration's ``A``, ``B`` per layer."""
    out = {}
    for name, a, b in zip(names, params[0::2], params[1::2], strict=True):
        out[f"{name}.lora_A.weight"] = a.detach().clone()
        out[f"{name}.lora_B.weight"] = b.detach().contiguous().clone()
    return out
