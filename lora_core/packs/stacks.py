"""A pack's adapters as stacked tensors: each configuration's LoRA as peft makes it, packed into the models.

``initial_adapter`` lets peft initialise one configuration's LoRA under its seed, exactly as ``LoraTrainer``
does, and takes its weights out again; ``pack_model`` puts every configuration's weights of one model into
stacked tensors (views of one flat buffer, ``FlatStacks``) and replaces each adapted layer by its packed
layer; ``peft_named`` gives one configuration's part back under peft's names, for the adapter writers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lora_core.family import SDXL, family_of, text_encoders
from lora_core.packs.layers import PackRouting, packed_conv_class, packed_linear_class, replace_layer
from lora_core.packs.optim import FlatStacks
from lora_core.training.recipe import ADAPTER_NAME, adapter_configs, add_adapter, restore_pipeline


def initial_adapter(pipe, settings) -> tuple[list[dict], object]:
    """One configuration's initial LoRA, by layer name, as peft initialises it alone under its seed.

    Returns:
        Per model (the UNet, then each text encoder: ``lora_core.family.text_encoders``), its
        ``{layer: (A, B, alpha / rank[, magnitude])}`` (empty while it is frozen); and the global generator's
        state after the initialisation (where its adapter dropout starts alone).
    """
    import torch
    from accelerate.utils import set_seed

    encoders = [model for _, model in text_encoders(pipe)]
    set_seed(settings.seed)  # the LoRA init draws from the global generator, as in LoraTrainer.setup
    configs = adapter_configs(settings, family_of(pipe))
    add_adapter(pipe.unet, configs[0], "train.unet_target_modules")
    for encoder, config in zip(encoders, configs[1:], strict=True):
        if config is not None:
            add_adapter(encoder, config, "train.text_target_modules")
    weights = [lora_weights(pipe.unet)]
    weights += [
        lora_weights(encoder) if config else {} for encoder, config in zip(encoders, configs[1:], strict=True)
    ]
    state = torch.get_rng_state()
    restore_pipeline(pipe, gradient_checkpointing=False)
    return weights, state


def lora_weights(model) -> dict:
    """``{layer name: (A, B, alpha / rank[, magnitude])}`` of the training adapter peft attached to ``model``.

    DoRA's layers have a fourth entry: the magnitude of each output row, ``(out,)``.
    """
    from peft.tuners.lora import LoraLayer

    out = {}
    for name, m in model.named_modules():
        if isinstance(m, LoraLayer) and ADAPTER_NAME in m.lora_A:
            a, b = (part[ADAPTER_NAME].weight.detach().clone() for part in (m.lora_A, m.lora_B))
            out[name] = (a, b, float(m.scaling[ADAPTER_NAME]))
            if ADAPTER_NAME in m.lora_magnitude_vector:
                out[name] += (m.lora_magnitude_vector[ADAPTER_NAME].weight.detach().clone(),)
    return out


def pack_model(
    model, indices: list[int | None], weights: list[dict], routing: PackRouting, replaced: list
) -> tuple[FlatStacks | None, list[list]]:
    """Replace each adapted layer of ``model`` by a ``PackedLinear`` (``PackedConv2d``: LoCon) over stacks.

    The stacks are views into one flat buffer (``FlatStacks``: one optimizer step for all of them). Ranks
    below the pack's largest are padded with zeros, which stay zero (their gradient is zero). DoRA's layers
    have a third stack, the magnitudes ``(K, out)``; a configuration that does not adapt the model has the
    base weight's own row norms there, so that its (never routed) row is the base layer too.

    Args:
        model: The UNet or a text encoder.
        indices: Per configuration, the model's index in its checkpoint's names (``LoraTrainer``'s: 0 the
            UNet, then 1, 2 for the text encoders it trains, in order); None where it does not adapt it.
        weights: Each configuration's ``{layer: (A, B, alpha / rank)}`` of this model (empty: not adapted).
        routing: The model's routing.
        replaced: Gains what ``restore_layers`` puts back.

    Returns:
        The model's stacks (``A``, ``B`` and DoRA's magnitudes of each layer; None when no configuration
        adapts it), and each configuration's own part of them: (checkpoint name, stack, index), what it
        trains alone: its rank's rows of ``A`` and columns of ``B``, and its magnitudes.
    """
    import torch

    slices: list[list] = [[] for _ in weights]
    names = next((list(w) for w in weights if w), [])
    if not names:
        return None, slices
    dora = len(next(w for w in weights if w)[names[0]]) == 4
    shapes = []
    for name in names:
        a, b = next((w[name][0], w[name][1]) for w in weights if w)
        rank = max(w[name][0].shape[0] for w in weights if w)
        shapes += [(rank, *a.shape[1:]), (b.shape[0], rank, *b.shape[2:]), *([(b.shape[0],)] if dora else [])]
    flat = FlatStacks(len(weights), shapes, model.get_submodule(names[0]).weight.device)
    per_layer = 3 if dora else 2
    for i, name in enumerate(names):
        base = model.get_submodule(name)
        a, b, *magnitude = flat.stacks[per_layer * i : per_layer * (i + 1)]
        scales = []
        for k, w in enumerate(weights):
            scales.append(w[name][2] if w else 0.0)
            if not w:
                if dora:
                    with torch.no_grad():
                        magnitude[0].data[k] = torch.linalg.norm(base.weight.float(), dim=1)
                continue
            r = w[name][0].shape[0]  # its rank in this layer (LoCon's convolutions have their own)
            parts = [("lora_A", a, (k, slice(0, r))), ("lora_B", b, (k, slice(None), slice(0, r)))]
            with torch.no_grad():
                a.data[k, :r], b.data[k, :, :r] = w[name][0], w[name][1]
                if dora:
                    magnitude[0].data[k] = w[name][3]
                    parts.append(("lora_magnitude_vector", magnitude[0], (k,)))
            for part, stack, where in parts:
                key = f"{indices[k]}.{name}.{part}.{ADAPTER_NAME}.weight"  # LoraTrainer's names
                slices[k].append((key, stack, where))
        if isinstance(base, torch.nn.Conv2d):
            layer = packed_conv_class()(base, routing, a, b, scales)
        else:
            layer = packed_linear_class()(base, routing, a, b, scales, *magnitude)
        replaced.append(replace_layer(model, name, layer))
    return flat, slices


@dataclass
class PackedModels:
    """Every configuration's adapters packed into the pipeline's models (``pack_models``).

    Attributes:
        adapts: Per configuration, whether it adapts each model (the UNet, then each text encoder).
        routings: Each model's routing.
        layer_names: Each model's adapted layers, in the order peft made them (every configuration that
            adapts a model adapts the same ones).
        flats: The stacks of each model some configuration adapts; ``flat_models``: which model each is.
        slices: Per configuration, its own part of the stacks: (checkpoint name, stack, index).
    """

    adapts: list[list[bool]]
    routings: list[PackRouting]
    layer_names: list[list[str]]
    flats: list[FlatStacks] = field(default_factory=list)
    flat_models: list[int] = field(default_factory=list)
    slices: list[list] = field(default_factory=list)

    def group_of(self, k: int, m: int) -> int | None:
        """Configuration ``k``'s optimizer group of model ``m``'s parameters; None where it does not adapt it."""
        return sum(self.adapts[k][:m]) if self.adapts[k][m] else None

    def parameter_groups(self, k: int, settings, params: list) -> list[dict]:
        """Configuration ``k``'s optimizer groups of its ``params``, as ``LoraTrainer``'s.

        The UNet's parameters, then each text encoder's that it trains, each at its own rate.
        """
        rates = [settings.learning_rate, settings.text_encoder_lr, settings.text_encoder_2_rate]
        groups, start = [], 0
        for m, names in enumerate(self.layer_names):
            if self.adapts[k][m]:
                end = start + params_per_layer(settings) * len(names)
                groups.append({"params": params[start:end], "lr": rates[m]})
                start = end
        return groups


def pack_models(models: list, initial: list[list[dict]], dropout: dict, replaced: list) -> PackedModels:
    """Pack every configuration's initial adapters into ``models`` (``pack_model`` for each).

    Args:
        models: The UNet, then each text encoder (``LoraTrainer``'s order).
        initial: Per configuration, each model's weights (``initial_adapter``; empty where it is frozen).
        dropout: ``dropout_generators``' dict; each model's routing takes the configurations adapting it.
        replaced: Gains what ``restore_layers`` puts back.
    """
    adapts = [[bool(w) for w in weights] for weights in initial]
    routings = [PackRouting() for _ in models]
    for m, routing in enumerate(routings):  # dropout masks only where a configuration has adapters
        routing.dropout = {k: d for k, d in dropout.items() if adapts[k][m]}
    layer_names = [next((list(w[m]) for w in initial if w[m]), []) for m in range(len(models))]
    packed = PackedModels(adapts, routings, layer_names, slices=[[] for _ in initial])
    for m, (model, routing) in enumerate(zip(models, routings, strict=True)):
        indices = [packed.group_of(k, m) for k in range(len(initial))]  # the model's index in its names
        flat, slices = pack_model(model, indices, [w[m] for w in initial], routing, replaced)
        if flat is not None:
            packed.flats.append(flat)
            packed.flat_models.append(m)
        for mine, more in zip(packed.slices, slices, strict=True):
            mine += more
    return packed


def adapter_weights(settings, family: str, layer_names: list, params: list, meta: dict):
    """One configuration's ``AdapterWeights`` as the writers take it: its rank's rows and columns, peft names.

    Args:
        settings: Its ``TrainSettings``.
        family: The base model's (``lora_core.family``): SDXL's has a second text encoder.
        layer_names: Each model's adapted layers (the UNet's, then each text encoder's), in the pack's order.
        params: Its own parameters (``A``, ``B`` and DoRA's magnitudes of each layer: the UNet's, then each
            text encoder's that it trains).
        meta: The files' metadata.
    """
    from lora_core.adapters import AdapterWeights

    configs = adapter_configs(settings, family)
    named, start = [], 0
    for names, config in zip(layer_names, configs, strict=False):
        if config is None:
            named.append(None)
            continue
        end = start + params_per_layer(settings) * len(names)
        named.append(peft_named(names, params[start:end]))
        start = end
    named += [None] * (3 - len(named))
    configs = (*configs, *[None] * (3 - len(configs)))
    return AdapterWeights(
        unet=named[0],
        unet_config=configs[0].to_dict(),
        training_metadata=meta,
        text_encoder=named[1],
        text_encoder_config=configs[1].to_dict() if configs[1] else None,
        text_encoder_2=named[2],
        text_encoder_2_config=configs[2].to_dict() if configs[2] else None,
        family=SDXL if family == SDXL else "sd",
    )


def params_per_layer(settings) -> int:
    """A configuration's trainable tensors per adapted layer: ``A`` and ``B``, and DoRA's magnitudes."""
    return 3 if settings.adapter_kind == "dora" else 2


def peft_named(names: list[str], params: list) -> dict:
    """Peft-named tensors (``<layer>.lora_A.weight``) of one configuration's ``A``, ``B`` (, magnitude) per layer."""
    out = {}
    if not names:
        return out
    per_layer = len(params) // len(names)
    for i, name in enumerate(names):
        a, b, *magnitude = params[per_layer * i : per_layer * (i + 1)]
        out[f"{name}.lora_A.weight"] = a.detach().clone()
        out[f"{name}.lora_B.weight"] = b.detach().contiguous().clone()
        if magnitude:
            out[f"{name}.lora_magnitude_vector"] = magnitude[0].detach().clone()  # peft's name for it
    return out
